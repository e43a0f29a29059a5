//! `starmesh`: one binary, a subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use starmesh_node::replicant::{self, Config};
use starmesh_node::store::{Store, embedded::EmbeddedStore, postgres::PostgresStore};
use starmesh_node::territory::{MeshConfig, builtin_test_config};

#[derive(Parser)]
#[command(
    name = "starmesh",
    version,
    about = "Open-source server meshing for massive multiplayer worlds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The shard's source of truth: entities, authority, streaming, persistence.
    Replicant(ReplicantArgs),
    /// A game server (not implemented yet).
    Server,
    /// The player-facing gateway (not implemented yet).
    Gateway,
    /// A load generator (not implemented yet).
    Bots,
    /// The whole mesh on one machine (not implemented yet).
    Local,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreKind {
    Embedded,
    Postgres,
}

#[derive(clap::Args)]
struct ReplicantArgs {
    #[arg(long, env = "STARMESH_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    #[arg(long, env = "STARMESH_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    metrics_listen: SocketAddr,
    #[arg(long, value_enum, default_value = "embedded")]
    store: StoreKind,
    /// Folder of the embedded store.
    #[arg(long, env = "STARMESH_DATA_DIR", default_value = "./starmesh-data")]
    data_dir: PathBuf,
    /// e.g. "host=127.0.0.1 port=5432 user=starmesh dbname=starmesh"
    #[arg(long, env = "STARMESH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Territory map (JSON): {"system","shard","territories":[{name,center,radius}],"static_owners":{server:[territory]}}
    #[arg(long, conflicts_with = "builtin_territories")]
    territories: Option<PathBuf>,
    /// Use the built-in test map (earth, moon, station, deep-space).
    #[arg(long)]
    builtin_territories: bool,
    #[arg(long, default_value_t = 30)]
    tick_hz: u32,
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    #[arg(long, default_value_t = 65536)]
    budget_bytes: usize,
    #[arg(long, default_value_t = 1_000_000)]
    backlog_bound: usize,
    #[arg(long, default_value_t = 60)]
    evict_after_s: u64,
    #[arg(long, default_value_t = 100.0)]
    cell_size_km: f64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Replicant(a) => tokio::runtime::Runtime::new()?.block_on(run_replicant(a)),
        Cmd::Server | Cmd::Gateway | Cmd::Bots | Cmd::Local => {
            anyhow::bail!("this role is not implemented yet")
        }
    }
}

async fn run_replicant(a: ReplicantArgs) -> anyhow::Result<()> {
    let mesh: MeshConfig = match (&a.territories, a.builtin_territories) {
        (Some(p), _) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        (None, true) => builtin_test_config(),
        (None, false) => anyhow::bail!("give --territories FILE or --builtin-territories"),
    };
    let store: Arc<dyn Store> = match a.store {
        StoreKind::Embedded => Arc::new(EmbeddedStore::open(&a.data_dir)?),
        StoreKind::Postgres => {
            let url = a
                .postgres_url
                .as_deref()
                .context("--postgres-url is required with --store postgres")?;
            Arc::new(PostgresStore::connect(url).await?)
        }
    };
    let cfg = Config {
        tick_hz: a.tick_hz,
        lease: Duration::from_millis(a.lease_ms),
        budget_bytes: a.budget_bytes,
        backlog_bound: a.backlog_bound,
        evict_after: Duration::from_secs(a.evict_after_s),
        cell_size_km: a.cell_size_km,
        ..Config::default()
    };
    let running = replicant::start(&mesh, cfg, store, a.listen, a.metrics_listen).await?;
    // Tests and tools parse this line to learn the bound addresses.
    println!(
        "starmesh replicant ready grpc={} metrics={}",
        running.grpc_addr, running.metrics_addr
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
