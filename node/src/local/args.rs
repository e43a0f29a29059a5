//! The flags of `starmesh local`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// StarSystem YAML (the file `kubectl apply` takes); may also hold the
    /// ServerLayout. Default: the Stanton example, compiled in.
    #[arg(long)]
    pub system: Option<PathBuf>,
    /// ServerLayout YAML. Default: the Stanton example's static layout
    /// (or the one in --system, when that file holds both).
    #[arg(long)]
    pub layout: Option<PathBuf>,
    /// Game servers to run. Default: one per server the layout names (a
    /// dynamic layout: its `minServers`; the autoscaler then adds and drains
    /// servers as its players come and go).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub servers: Option<u32>,
    /// Bot players to fly around.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub bots: u32,
    /// How long the bots fly. Default: the whole run. Shorter shows a
    /// dynamic layout scaling back down once they have left.
    #[arg(long, value_parser = super::duration::parse)]
    pub bots_for: Option<Duration>,
    /// Folder of the embedded store; the same folder resumes the same world.
    #[arg(long, default_value = "./starmesh-local")]
    pub data: PathBuf,
    /// Address of the web map and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Run this long (e.g. 90s, 5m, 1h30m), then stop cleanly and print the
    /// summary. Default: until Ctrl-C.
    #[arg(long, value_parser = super::duration::parse)]
    pub duration: Option<Duration>,
    /// Mesh links over mutual TLS, with a throwaway CA and certificate minted
    /// into `<data>/tls` at each start (as in a cluster with `meshTLS.enabled`).
    #[arg(long)]
    pub tls: bool,
}
