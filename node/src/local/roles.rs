//! The seam to the roles' library entry points: the same functions the
//! `starmesh server` / `gateway` / `bots` subcommands call, run as tasks.
//!
//! Why in-process tasks rather than child processes of the same binary: one
//! Ctrl-C handler stops everything in order (bots, servers, then the store
//! flush) with no orphaned process possible; the map and the summary read
//! the roles' counters directly instead of scraping N metrics endpoints; and
//! "kill a server" is aborting its task, which drops its stream with no
//! goodbye — what the replicant sees of a `kill -9`. The multi-process
//! behaviour is what the `mesh_*` tests cover.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::bots::{self, BotsConfig};
use crate::gateway::{self, GatewayConfig, Hub, placement::World};
use crate::server::{self, ServerConfig, game::ExampleGame, metrics::Metrics as ServerMetrics};

pub struct ServerTask {
    pub task: JoinHandle<()>,
    pub metrics: Arc<ServerMetrics>,
}

/// One game server running the built-in example game.
pub fn spawn_server(name: &str, replicant: SocketAddr, tick_hz: u32) -> ServerTask {
    let cfg = ServerConfig { replicant: replicant.to_string(), name: name.to_string(), tick_hz };
    let metrics = Arc::new(ServerMetrics::new(cfg.period().as_secs_f64()));
    let task = tokio::spawn(server::run(cfg, ExampleGame, metrics.clone()));
    ServerTask { task, metrics }
}

/// The gateway on an ephemeral loopback port, with the `starmesh gateway`
/// defaults, knowing the system's destinations and spawn points.
pub async fn start_gateway(
    replicant: SocketAddr,
    files: &[PathBuf],
    key: &gateway::auth::TokenKey,
) -> anyhow::Result<(SocketAddr, Arc<Hub>)> {
    let world = World::load(files)?;
    let cfg = GatewayConfig {
        replicant: replicant.to_string(),
        input_rate: 20.0,
        input_burst: 40.0,
        bubble_radius: 5000.0,
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let links = gateway::DEFAULT_LINKS;
    let r =
        gateway::serve_with_auth(cfg, world, loopback, loopback, links, Some(key.clone())).await?;
    Ok((r.grpc_addr, r.hub))
}

/// N bots flying for `duration` (they report when it ends). Names are fixed
/// (`local-0`, `local-1`, ...) so a resumed run flies the same ships again.
pub fn spawn_bots(
    gateway: SocketAddr,
    n: u32,
    duration: Duration,
    key: &gateway::auth::TokenKey,
) -> super::supervisor::Bots {
    let cfg = BotsConfig {
        gateway: gateway.to_string(),
        n: n as usize,
        duration,
        prefix: "local".to_string(),
        // Fast enough to cross a planet's sphere of influence in seconds, so
        // a short run shows handoffs (the `starmesh bots` default).
        speed: 200_000.0,
        probe_interval: Duration::from_millis(250),
        token_key: Some(key.clone()),
    };
    let (stop, on_stop) = bots::Stop::new();
    super::supervisor::Bots { task: tokio::spawn(bots::run(cfg, on_stop)), stop }
}
