//! `starmesh`: one binary, a subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use starmesh_node::mesh_map::{self, MeshMap};
use starmesh_node::replicant::{self, Config};
use starmesh_node::resources;
use starmesh_node::store::{Store, embedded::EmbeddedStore, postgres::PostgresStore};

/// Bubble batches are allocated and freed per player per tick; glibc's malloc was
/// ~15% of the gateway's and replicant's CPU at 1,000 players (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "starmesh",
    version,
    about = "Open-source server meshing for massive multiplayer worlds"
)]
// pub(crate): node/src/bin/node-reference.rs includes this file to render the CLI reference.
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The shard's source of truth: entities, authority, streaming, persistence.
    Replicant(Box<ReplicantArgs>),
    /// A game server: a fixed-rate tick over the entities it has authority over.
    Server(Box<starmesh_node::server::ServerArgs>),
    /// The player-facing gateway: players connect, play, and stay connected.
    Gateway(Box<starmesh_node::gateway::GatewayArgs>),
    /// A load generator and invariant checker: N players through a gateway.
    Bots(Box<starmesh_node::bots::BotsArgs>),
    /// The whole mesh on one machine: replicant, game servers, gateway, bots,
    /// a live web map and `/metrics`, on the embedded store.
    Local(Box<starmesh_node::local::LocalArgs>),
    /// Mints a signed player token for a name (SREs, tests, a login service's model).
    Token(Box<starmesh_node::gateway::auth::TokenArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreKind {
    Embedded,
    Postgres,
}

#[derive(clap::Args)]
struct ReplicantArgs {
    #[arg(long, env = "STARMESH_GRPC_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    #[arg(long, env = "STARMESH_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    metrics_listen: SocketAddr,
    #[arg(long, env = "STARMESH_STORE", value_enum, default_value = "embedded")]
    store: StoreKind,
    /// Folder of the embedded store.
    #[arg(long, env = "STARMESH_DATA_DIR", default_value = "./starmesh-data")]
    data_dir: PathBuf,
    /// e.g. "host=127.0.0.1 port=5432 user=starmesh dbname=starmesh"
    #[arg(long, env = "STARMESH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// StarSystem YAML (the file `kubectl apply` takes); may also hold the ServerLayout.
    #[arg(long, env = "STARMESH_SYSTEM_FILE")]
    system: PathBuf,
    /// ServerLayout YAML, when not in the --system file.
    #[arg(long, env = "STARMESH_LAYOUT_FILE")]
    layout: Option<PathBuf>,
    /// Which shard of the system this replicant holds (the `shard` metric label).
    #[arg(long, env = "STARMESH_SHARD", default_value = "0")]
    shard: String,
    #[arg(long, env = "STARMESH_TICK_RATE", default_value_t = 30)]
    tick_hz: u32,
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    #[arg(long, default_value_t = 65536)]
    budget_bytes: usize,
    #[arg(long, default_value_t = 1_000_000)]
    backlog_bound: usize,
    /// Most entities one player's bubble holds, nearest first (0: no cap): the nearest 32
    /// update every tick, the rest every 4th tick; the player's own ship is always held.
    #[arg(long, env = "STARMESH_BUBBLE_MAX_ENTITIES", default_value_t = 128)]
    bubble_max_entities: usize,
    /// Seconds an entity nobody needs stays in memory before it is evicted to the store.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    evict_after: f64,
    #[arg(long, default_value_t = 100.0)]
    cell_size_km: f64,
    /// The replicant of another StarSystem a jump gate leads to, as SYSTEM=HOST:PORT
    /// (repeatable; in the environment, comma-separated).
    #[arg(long = "gate-peer", env = "STARMESH_GATE_PEERS", value_delimiter = ',', value_parser = parse_gate_peer)]
    gate_peers: Vec<(String, String)>,
    /// The operator's mesh map (mesh-map.json), in a cluster: its gate peers for this
    /// shard are added to --gate-peer (which wins) and followed while running.
    #[arg(long, env = "STARMESH_MESH_MAP")]
    mesh_map: Option<PathBuf>,
    /// Mesh mTLS: a folder with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret plus
    /// the CA), reloaded when it changes. Every link to this replicant and its gate links
    /// then need a certificate of that CA. Without it, plaintext.
    #[arg(long, env = "STARMESH_TLS_DIR")]
    tls_dir: Option<PathBuf>,
}

/// The log level when `RUST_LOG` is not set. `local` is a terminal tool for a
/// first look: its progress lines, the map's address and the summary are the
/// output, and the roles' per-event `info` lines (well over a hundred in a
/// short run) would bury them; warnings still show. The services keep `info`:
/// their logs go to a collector, where those lines are the record.
fn default_log_level(cmd: &Cmd) -> &'static str {
    match cmd {
        // `local` runs one system with no peers, so every jump gate leads
        // nowhere by construction: the replicant's warning about each one says
        // nothing the user can act on (the progress line says it once).
        Cmd::Local(_) => "warn,starmesh_node::replicant::gate=error",
        _ => "info",
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_level(&cli.cmd))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Replicant(a) => tokio::runtime::Runtime::new()?.block_on(run_replicant(*a)),
        Cmd::Local(a) => starmesh_node::local::main(*a),
        Cmd::Server(a) => starmesh_node::server::main(*a),
        Cmd::Gateway(a) => starmesh_node::gateway::main(*a),
        Cmd::Bots(a) => starmesh_node::bots::main(*a),
        Cmd::Token(a) => starmesh_node::gateway::auth::main(*a),
    }
}

fn parse_gate_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((system, addr)) if !system.is_empty() && system.len() <= 63 && !addr.is_empty() => {
            Ok((system.to_string(), addr.to_string()))
        }
        _ => Err(format!("{s:?} is not SYSTEM=HOST:PORT")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds > 0")),
    }
}

async fn run_replicant(a: ReplicantArgs) -> anyhow::Result<()> {
    starmesh_node::tls::init_process(a.tls_dir.as_deref())?;
    let files: Vec<PathBuf> = std::iter::once(a.system.clone()).chain(a.layout.clone()).collect();
    let mesh = match resources::load(&files, &a.shard) {
        Ok(m) => m,
        Err(e) => {
            // One problem per line, each with its field path, before anything starts.
            eprintln!("starmesh replicant: invalid resources:\n{e}");
            std::process::exit(2);
        }
    };
    let store: Arc<dyn Store> = match a.store {
        StoreKind::Embedded => Arc::new(EmbeddedStore::open(&a.data_dir)?),
        StoreKind::Postgres => {
            let url = a
                .postgres_url
                .as_deref()
                .context("--postgres-url is required with --store postgres")?;
            // Connects lazily: a store that is down at startup is retried by the replicant.
            Arc::new(PostgresStore::new(url))
        }
    };
    // The mesh map's gate peers: read now, then followed (the target layout may come later).
    let from_map = match &a.mesh_map {
        Some(path) => {
            let shard: i32 = a.shard.parse().context("--shard must be a number with --mesh-map")?;
            let peers = match MeshMap::load(path).and_then(|m| m.gate_peers(shard)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "no gate peers from the mesh map yet");
                    Vec::new()
                }
            };
            Some((path.clone(), shard, peers))
        }
        None => None,
    };
    let cfg = Config {
        tick_hz: a.tick_hz,
        lease: Duration::from_millis(a.lease_ms),
        budget_bytes: a.budget_bytes,
        backlog_bound: a.backlog_bound,
        bubble_cap: replicant::interest::BubbleCap::with_max(a.bubble_max_entities),
        evict_after: Duration::from_secs_f64(a.evict_after),
        cell_size_km: a.cell_size_km,
        gate_peers: mesh_map::merge_peers(
            &a.gate_peers,
            from_map.as_ref().map_or(&[], |f| f.2.as_slice()),
        ),
        ..Config::default()
    };
    let running = replicant::start(&mesh, cfg, store, a.listen, a.metrics_listen).await?;
    if let Some((path, shard, initial)) = from_map {
        // Every shard of the layout: a draining shard moves its players' ships away.
        let loads = MeshMap::load(&path).map(|m| m.shard_loads()).unwrap_or_default();
        running.shared.gates.set_shards(shard, loads.clone());
        let shared = running.shared.clone();
        mesh_map::follow(
            path.clone(),
            mesh_map::FOLLOW_INTERVAL,
            loads,
            |m| Ok(m.shard_loads()),
            move |s: &Vec<mesh_map::ShardLoad>| shared.gates.set_shards(shard, s.clone()),
        );
        let (shared, explicit) = (running.shared.clone(), a.gate_peers.clone());
        mesh_map::follow(
            path,
            mesh_map::FOLLOW_INTERVAL,
            initial,
            move |m| m.gate_peers(shard),
            move |peers| {
                if let Err(e) = shared.gates.set_peers(&mesh_map::merge_peers(&explicit, peers)) {
                    tracing::warn!(error = %e, "mesh map: gate peers not usable; keeping the old ones");
                }
            },
        );
    }
    // Tests and tools parse this line to learn the bound addresses; readiness
    // (the world loaded from the store) is `/readyz` on the metrics address.
    println!(
        "starmesh replicant listening grpc={} metrics={}",
        running.grpc_addr, running.metrics_addr
    );
    starmesh_node::signal::terminate().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
