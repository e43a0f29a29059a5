//! # starmesh-sdk: bring your own game to a starmesh mesh
//!
//! A starmesh game server simulates the part of a world its replicant gives
//! it: territories, granted with an *epoch*, and the entities inside them.
//! Entities cross to other servers at tick boundaries, servers crash and are
//! replaced, and none of that is the game's business. This crate splits a
//! game server in two:
//!
//! - **your [`Game`]**: simulate one tick over the entities you own
//!   ([`Game::tick`], or per entity [`Game::step`]), apply a player's input
//!   ([`Game::input`], [`Game::spawn`]), hear that an entity entered or left
//!   your authority ([`Game::entered`], [`Game::left`]) and that a
//!   neighbour's custom components changed ([`Game::component_changed`]);
//! - **the runner** ([`main`], [`run`]): the ServerLink session to the
//!   replicant (reconnecting with backoff), the protocol version handshake,
//!   leases and heartbeats, grants and revokes, handoffs in and out, stamping
//!   every write with its territory's epoch and dropping an entity the moment
//!   it is fenced, the fixed-rate tick (overruns skip, never burst), jump
//!   gates, the neighbourhood stream, and `/metrics` `/healthz` `/readyz`.
//!
//! `starmesh server` is exactly this runner with [`ExampleGame`]; a studio's
//! binary built with [`main`] takes the same flags and environment
//! (`STARMESH_REPLICANT`, `STARMESH_SERVER_NAME`, `STARMESH_MESH_MAP`,
//! `POD_NAME`, `STARMESH_TICK_RATE`, `STARMESH_METRICS_LISTEN`, ...), so it
//! runs wherever ours runs.
//!
//! ## The rules your game must keep
//!
//! - **All state lives in the entity.** The replicant is the source of truth;
//!   when an entity is handed to another server (or your server crashes), the
//!   next owner resumes from the last state you *wrote*. Keep game data in
//!   [`Entity::components`] (at most [`MAX_COMPONENT_BYTES`] bytes), not in
//!   your `Game` struct; a cache there must be rebuilt from `entered`.
//! - **Only touch what you are given.** `tick` gets exactly the entities you
//!   hold, this tick. Changing one through [`Slot::entity_mut`] makes the
//!   runner write it; [`Slot::quiet_mut`] changes it without a write of its
//!   own (it goes out with the next one).
//! - **Never block.** The tick runs on the runner's task; an overrun skips
//!   ticks (`starmesh_ticks_skipped_total`).
//! - **Typed data: custom components.** A game's own entity data as bytes
//!   with a registered type name and schema version: register the types in a
//!   [`custom::Registry`] and set them with [`custom::Registry::set`]; read
//!   them (also a neighbour's, in [`Game::component_changed`]) with
//!   [`custom::get`]. They are validated exactly as the replicant validates
//!   them and replicate, persist and stream like positions.
//! - **Invalid values cost one write, not the server.** A non-finite or
//!   out-of-range entity is not sent ([`sendable`]) and counted in
//!   `starmesh_server_writes_dropped_total`.
//!
//! ## Example
//!
//! A game where every entity drifts along its velocity and a player's input
//! of one byte `0` stops it:
//!
//! ```no_run
//! use starmesh_sdk::{Entity, Game, PlayerId, Slot};
//!
//! struct Drift;
//!
//! impl Game for Drift {
//!     fn tick(&mut self, entities: &mut [Slot<'_>], dt: f64) {
//!         for s in entities {
//!             let v = s.entity().velocity;
//!             if v.x == 0.0 && v.y == 0.0 && v.z == 0.0 {
//!                 continue; // at rest: nothing to write
//!             }
//!             let e = s.entity_mut(); // changed: written at the end of the tick
//!             e.position.x += v.x * dt;
//!             e.position.y += v.y * dt;
//!             e.position.z += v.z * dt;
//!         }
//!     }
//!
//!     fn input(&mut self, e: &mut Entity, _player: PlayerId, input: &[u8]) -> bool {
//!         if input == [0] {
//!             e.velocity = Default::default();
//!             return true;
//!         }
//!         false
//!     }
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     // `drift --replicant 127.0.0.1:7000 --name s-earth`, or the environment
//!     // the operator gives a game-server pod.
//!     starmesh_sdk::main(Drift)
//! }
//! ```
//!
//! A fuller one is `examples/beacons.rs` (`cargo run -p starmesh-sdk
//! --example beacons -- --help`). The wire itself is a public, versioned
//! contract (`node/proto/PROTOCOL.md`), so a game server can also be written
//! in any language with gRPC: `examples/python/` is one.

pub use starmesh_node::model::{Entity, EntityId, PlayerId, Vec3};
/// Typed custom components: [`custom::Registry`] (the types a game writes, with
/// their schema versions), [`custom::get`], [`custom::components`].
pub use starmesh_node::server::custom;
pub use starmesh_node::server::game::{ExampleGame, Game, Neighbour, Slot, Spawned};
pub use starmesh_node::server::metrics::Metrics;
pub use starmesh_node::server::system::SystemView;
pub use starmesh_node::server::{
    ServerArgs, ServerConfig, main_with, run, run_in, sendable, serve_metrics,
};
/// The generated protobuf types (`starmesh.v1`), for games that encode their
/// components or inputs with them (as the example game does).
pub use starmesh_node::wire::pb;
pub use starmesh_node::wire::validate::{
    MAX_COMPONENT_BYTES, MAX_COORD_KM, MAX_INPUT_BYTES, MAX_NAME_LEN, MAX_SPEED_KM_S,
    PROTOCOL_VERSION,
};

#[derive(clap::Parser, Debug)]
#[command(about = "A starmesh game server")]
struct Cli {
    /// The role, `server`, as the operator passes it to game-server pods
    /// (`starmesh server`): accepted so a studio's image is a drop-in one.
    #[arg(hide = true, value_parser = ["server"])]
    role: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// A game server's whole `main`: parses the flags and environment of
/// `starmesh server` (`--help` lists them), logs to stderr (`RUST_LOG`,
/// default `info`), serves `/metrics`, and runs `game` against the replicant
/// until SIGTERM or Ctrl-C. Prints `starmesh server name=… metrics=…` once
/// the metrics endpoint is bound.
pub fn main<G: Game>(game: G) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = Cli::parse();
    // Ignore a second init (a host program that set up its own subscriber).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    main_with(cli.server, game)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_of_starmesh_server_with_or_without_its_role_argument() {
        use clap::Parser;
        for argv in [&["game", "server", "--name", "s-1"][..], &["game", "--name", "s-1"]] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            assert_eq!(cli.server.name.as_deref(), Some("s-1"));
        }
        assert!(Cli::try_parse_from(["game", "replicant"]).is_err(), "only the server role");
    }

    fn entity(id: EntityId, vx: f64) -> Entity {
        Entity {
            id,
            kind: 1,
            position: Vec3::default(),
            velocity: Vec3::new(vx, 0.0, 0.0),
            location: "".into(),
            version: 1,
            components: Default::default(),
            components_version: 1,
            territory: "t".into(),
        }
    }

    struct Stepper;
    impl Game for Stepper {
        fn step(&mut self, e: &mut Entity, dt: f64) -> bool {
            e.position.x += e.velocity.x * dt;
            e.velocity.x != 0.0
        }
    }

    #[test]
    fn the_default_tick_steps_each_entity_and_marks_only_the_changed() {
        let (mut a, mut b) = (entity(1, 2.0), entity(2, 0.0));
        let mut slots = vec![Slot::new(&mut a), Slot::new(&mut b)];
        Stepper.tick(&mut slots, 0.5);
        assert_eq!(slots.iter().map(Slot::changed).collect::<Vec<_>>(), [true, false]);
        drop(slots);
        assert_eq!((a.position.x, b.position.x), (1.0, 0.0));
    }

    #[test]
    fn entity_mut_asks_for_a_write_and_quiet_mut_does_not() {
        let mut a = entity(1, 0.0);
        let mut s = Slot::new(&mut a);
        s.quiet_mut().position.y = 3.0;
        assert!(!s.changed());
        s.entity_mut().position.y = 4.0;
        assert!(s.changed());
        assert_eq!(s.entity().position.y, 4.0);
    }
}
