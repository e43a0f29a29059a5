//! `starmesh local`: the whole mesh on one machine, for a first look and for
//! game development: a replicant on the embedded store, game servers, a
//! gateway and bots as one supervised group on loopback, with the live web
//! map and `/metrics` on `--listen`.
//!
//! Order matters and is the point of this file: validate the resources and
//! check the folder and the port before anything starts; start the
//! replicant and let it load what the last run committed; then the map, the
//! servers, the gateway, the bots; at the end stop the writers, flush the
//! store, and only then print the summary and stop the replicant.

pub mod args;
pub mod autoscaler;
pub mod defaults;
pub mod duration;
pub mod preflight;
pub mod progress;
pub mod roles;
pub mod summary;
pub mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use starmesh_api::{LayoutMode, Resource, ServerLayout, StarSystem, yaml};

use crate::replicant::{self, Config};
use crate::resources::{self, Mesh};
use crate::store::embedded::EmbeddedStore;
use crate::web_map::{self, WebState, feed::Feed};

pub use args::LocalArgs;
use progress::Progress;
use summary::Summary;
use supervisor::{Group, Servers};

/// Exit code for invalid resources (the replicant uses the same).
pub const EXIT_INVALID: i32 = 2;
/// Exit code for an environment problem (folder, port).
pub const EXIT_ENVIRONMENT: i32 = 1;
/// Exit code when the summary reports anything lost (the run itself completed).
pub const EXIT_LOST: i32 = 3;
/// How long loading the embedded store may take before giving up.
const STORE_LOAD_LIMIT: Duration = Duration::from_secs(60);

/// The subcommand: runs the mesh and exits with its code.
pub fn main(args: LocalArgs) -> anyhow::Result<()> {
    let code = tokio::runtime::Runtime::new()?.block_on(run(args))?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// The resources, loaded and validated, plus the specs the map draws.
struct Loaded {
    mesh: Mesh,
    system: StarSystem,
    layout: ServerLayout,
}

/// Where a resource comes from: a user's file, or a compiled-in example
/// (checked from memory: nothing is written before everything is valid).
enum Input {
    File(PathBuf),
    Builtin { name: &'static str, text: &'static str },
}

/// What `local` loads: the user's files, with the compiled-in example
/// standing in for what was not given (`--layout` alone pairs the user's
/// layout with the example StarSystem).
fn inputs(args: &LocalArgs) -> Vec<Input> {
    match (&args.system, &args.layout) {
        (Some(system), layout) => {
            std::iter::once(system).chain(layout).cloned().map(Input::File).collect()
        }
        (None, layout) => vec![
            Input::Builtin { name: "compiled-in stanton.yaml", text: defaults::STANTON },
            match layout {
                Some(l) => Input::File(l.clone()),
                None => Input::Builtin {
                    name: "compiled-in stanton-layout.yaml",
                    text: defaults::STANTON_LAYOUT,
                },
            },
        ],
    }
}

/// Loads and validates through `resources::from_resources` (the replicant's
/// validation: the same field-naming errors as the operator), keeping the
/// specs the map draws.
fn load(inputs: &[Input]) -> Result<Loaded, String> {
    let mut sources = Vec::new();
    for i in inputs {
        let source = match i {
            Input::File(f) => yaml::load_path(f)
                .map(|rs| (f.display().to_string(), rs))
                .map_err(|e| format!("{}: {e}", f.display()))?,
            Input::Builtin { name, text } => yaml::load_resources(text)
                .map(|rs| (name.to_string(), rs))
                .map_err(|e| format!("{name}: {e}"))?,
        };
        sources.push(source);
    }
    let mesh = resources::from_resources(&sources, "0").map_err(|e| e.to_string())?;
    let mut system = None;
    let mut layout = None;
    for r in sources.into_iter().flat_map(|(_, rs)| rs) {
        match r {
            Resource::StarSystem(s) => system = Some(s),
            Resource::ServerLayout(l) => layout = Some(l),
        }
    }
    match (system, layout) {
        (Some(system), Some(layout)) => Ok(Loaded { mesh, system, layout }),
        // `from_resources` already required exactly one of each.
        _ => Err("expected one StarSystem and one ServerLayout".into()),
    }
}

fn fail(code: i32, why: impl std::fmt::Display) -> anyhow::Result<i32> {
    eprintln!("starmesh local: {why}");
    Ok(code)
}

pub async fn run(args: LocalArgs) -> anyhow::Result<i32> {
    let progress = Progress::new();
    // Everything is checked before the data folder is touched, the
    // compiled-in example included (from memory): a typo in a manifest
    // should leave the machine exactly as it was.
    let loaded = match load(&inputs(&args)) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_INVALID, format!("invalid resources:\n{e}")),
    };
    if let Err(e) = preflight::data_dir(&args.data) {
        return fail(EXIT_ENVIRONMENT, e);
    }
    // The roles load files (as their subcommands do): the example is written
    // into the data folder, the very text just validated.
    let files: Vec<PathBuf> = match (&args.system, &args.layout) {
        (Some(system), layout) => std::iter::once(system).chain(layout).cloned().collect(),
        (None, layout) => {
            let (system, default_layout) = match defaults::materialize(&args.data) {
                Ok(p) => p,
                Err(e) => return fail(EXIT_ENVIRONMENT, format!("data folder: {e}")),
            };
            vec![system, layout.clone().unwrap_or(default_layout)]
        }
    };
    let listener = match preflight::listen(args.listen).await {
        Ok(l) => l,
        Err(e) => return fail(EXIT_ENVIRONMENT, e),
    };
    let web_addr = listener.local_addr()?;
    if args.tls {
        let dir = args.data.join("tls");
        if let Err(e) =
            crate::tls_dev::mint_dir(&dir).and_then(|()| crate::tls::init_process(Some(&dir)))
        {
            return fail(EXIT_ENVIRONMENT, format!("--tls: {e}"));
        }
    }
    let gates = loaded.system.spec.jump_gates.len();
    progress.step(format!(
        "resources valid: StarSystem {} ({} locations, {gates} jump gates{}), ServerLayout {}",
        loaded.mesh.system,
        loaded.system.spec.locations.len(),
        // One system and no peers: ships that fly into a gate are turned back.
        if gates > 0 { ", closed in local" } else { "" },
        loaded.layout.metadata.name.as_deref().unwrap_or(""),
    ));

    let store = match EmbeddedStore::open(&args.data) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            return fail(
                EXIT_ENVIRONMENT,
                format!(
                    "cannot open the store in {}: {e} (is another starmesh using this --data folder?)",
                    args.data.display()
                ),
            );
        }
    };
    let tick_hz = loaded.layout.spec.tick_rate.clamp(1, 1000);
    let cfg = Config { tick_hz, ..Config::default() };
    // The replicant's own endpoints stay on ephemeral loopback ports: players
    // and tools see the one --listen address.
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let running = replicant::start(&loaded.mesh, cfg, store, loopback, loopback).await?;
    progress.step(format!("replicant: loading the world from {}", args.data.display()));
    // The replicant retries a store it cannot read forever (right for a
    // service); a developer at a terminal is better served by an answer.
    if tokio::time::timeout(STORE_LOAD_LIMIT, running.loaded()).await.is_err() {
        running.shutdown().await;
        return fail(
            EXIT_ENVIRONMENT,
            format!(
                "could not load the store in {} within {}s (see the log above)",
                args.data.display(),
                STORE_LOAD_LIMIT.as_secs()
            ),
        );
    }
    let resumed = {
        let core = running.shared.lock();
        (core.world.len() + core.world.evicted_len()) as u64
    };
    progress.step(format!(
        "replicant: ready on {} ({resumed} entities resumed from the store)",
        running.grpc_addr
    ));

    let feed = Arc::new(Feed::new());
    let feed_task = tokio::spawn(feed.clone().run(running.shared.clone()));
    let servers = Arc::new(Servers::new(running.grpc_addr, tick_hz, web_addr));
    let territories: Vec<String> = loaded.mesh.map.names().iter().map(|t| t.to_string()).collect();
    let system_json = web_map::system::system_json(
        &loaded.mesh.system,
        &loaded.system.spec,
        &loaded.layout.spec,
        &territories,
    );
    let web = WebState {
        shared: running.shared.clone(),
        feed: feed.clone(),
        system: system_json.to_string().into(),
        control: servers.clone(),
    };
    let web_server = web_map::Server::start(listener, web);
    progress.step(format!("web map: http://{web_addr}/   metrics: http://{web_addr}/metrics"));

    let names = server_names(&loaded.layout, args.servers);
    for n in &names {
        servers.start(n);
    }
    let mut group = Group { replicant: running, servers, gateway: None, bots: None };
    let live = group.wait_servers(names.len(), Duration::from_secs(10)).await;
    progress.step(format!("game servers: {live}/{} connected ({})", names.len(), names.join(", ")));

    if args.bots > 0 || args.servers != Some(0) {
        // A fresh player token key in memory, shared by the gateway and the bots: the
        // local mesh runs with real authentication and nothing to set up.
        let key = crate::gateway::auth::TokenKey::random()?;
        match roles::start_gateway(group.replicant.grpc_addr, &files, &key).await {
            Ok((addr, hub)) => {
                // Players are let in only once the gateway's link to the
                // replicant is up: a join before that would wait on retries.
                let linked = wait_until(Duration::from_secs(10), || hub.connected()).await;
                group.gateway = Some(hub);
                progress.step(format!(
                    "gateway: players connect on {addr}{}",
                    if linked { "" } else { " (not linked to the replicant yet)" }
                ));
                if args.bots > 0 {
                    // Without --duration the bots fly until Ctrl-C.
                    let fly = args
                        .bots_for
                        .or(args.duration)
                        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
                    group.bots = Some(roles::spawn_bots(addr, args.bots, fly, &key));
                    progress.step(format!("bots: {} players logging in and flying", args.bots));
                }
            }
            Err(e) => {
                progress.step(format!("gateway: failed to start: {e:#}; running without players"))
            }
        }
    }
    // A dynamic layout follows its players: splits, merges, servers up and down.
    let autoscale = (loaded.layout.spec.mode == LayoutMode::Dynamic)
        .then(|| loaded.layout.spec.dynamic.clone().unwrap_or_default());
    let decisions = Arc::new(autoscaler::Decisions::default());
    feed.show_decisions(decisions.clone());
    let (autoscale_stop, autoscale_stopped) = tokio::sync::watch::channel(false);
    let autoscale_task = autoscale.map(|cfg| {
        progress.step(format!(
            "autoscaler: split above {} players, merge below {}, {}..={} servers, cooldown {}s",
            cfg.split_above_players,
            cfg.merge_below_players,
            cfg.min_servers,
            cfg.max_servers,
            cfg.cooldown_seconds
        ));
        tokio::spawn(autoscaler::run(
            group.replicant.shared.clone(),
            group.servers.clone(),
            cfg,
            autoscaler::INTERVAL,
            decisions.clone(),
            progress,
            autoscale_stopped,
        ))
    });
    match args.duration {
        Some(d) => {
            progress.step(format!("running for {:.1}s (Ctrl-C stops early)", d.as_secs_f64()))
        }
        None => progress.step("running; Ctrl-C stops and prints the summary"),
    }

    let reason = wait(args.duration).await;
    let _ = autoscale_stop.send(true);
    if let Some(t) = autoscale_task {
        let _ = t.await;
    }
    progress.step(format!("{reason}: stopping bots and servers, flushing the store"));
    let (bots, flush) =
        group.stop_writers_and_flush(reason == INTERRUPTED, Duration::from_secs(15)).await;
    if let Some(r) = &bots {
        for v in &r.violations {
            progress.step(format!("bots: invariant violated: {v}"));
        }
    }
    progress.step(format!(
        "store: flushed in {:.0} ms ({} changes not committed)",
        flush.took.as_secs_f64() * 1e3,
        flush.unflushed
    ));
    // One last sample so the summary counts everything up to the stop.
    feed.step(web_map::feed::Sample::take(&group.replicant.shared));
    let summary = summarize(&group, &feed, &bots, flush.unflushed, resumed, &args, &progress);

    feed.close();
    web_server.stop(Duration::from_secs(3)).await;
    feed_task.abort();
    group.replicant.shutdown().await;
    println!("{summary}");
    Ok(if summary.lost() == 0 { 0 } else { EXIT_LOST })
}

/// The static layout's servers (the first N), then spares that own nothing
/// until a takeover; a dynamic layout's servers are numbered, `minServers`
/// of them unless told (the autoscaler adds more as players come).
fn server_names(layout: &ServerLayout, n: Option<u32>) -> Vec<String> {
    let named: Vec<String> = match layout.spec.mode {
        LayoutMode::Static => layout.spec.servers.iter().map(|s| s.name.clone()).collect(),
        LayoutMode::Dynamic => Vec::new(),
    };
    let min = layout.spec.dynamic.as_ref().map_or(1, |d| d.min_servers.max(1));
    let want = n.unwrap_or(if named.is_empty() { min } else { named.len() as u32 }) as usize;
    let prefix = if named.is_empty() { "server" } else { "spare" };
    named.into_iter().chain((1..).map(|i| format!("{prefix}-{i}"))).take(want).collect()
}

const INTERRUPTED: &str = "interrupted (Ctrl-C or SIGTERM)";

/// Polls `ready` until it holds or `limit` passes; whether it held.
async fn wait_until(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !ready() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Until the duration passes, Ctrl-C, or SIGTERM (what `timeout`, systemd
/// and container runtimes send): all three stop the same clean way.
async fn wait(duration: Option<Duration>) -> &'static str {
    let signal = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if r.is_err() {
                    // No handler could be installed (unusual): only the others can end the run.
                    std::future::pending::<()>().await;
                }
            }
            _ = term => {}
        }
    };
    match duration {
        Some(d) => tokio::select! {
            _ = tokio::time::sleep(d) => "duration reached",
            _ = signal => INTERRUPTED,
        },
        None => {
            signal.await;
            INTERRUPTED
        }
    }
}

fn summarize(
    group: &Group,
    feed: &Feed,
    bots: &Option<crate::bots::Report>,
    unflushed: u64,
    resumed: u64,
    args: &LocalArgs,
    progress: &Progress,
) -> Summary {
    let shared = &group.replicant.shared;
    let core = shared.lock();
    let players = core.players.len() as u64;
    let entities = (core.world.len() + core.world.evicted_len()) as u64;
    let mut evicted = Vec::new();
    for t in core.world.map.names() {
        core.world.evicted_in(&t, &mut evicted);
    }
    let present: std::collections::HashSet<u64> =
        core.world.entities().map(|e| e.id).chain(evicted).collect();
    drop(core);
    // Read by name from the replicant's registry (what /metrics shows), so
    // the summary counts exactly what an operator would scrape.
    let registry = &shared.metrics.registry;
    let gates = summary::by_label(registry, "starmesh_gate_transfers_total", "result");
    let in_transit = summary::by_label(registry, "starmesh_gate_in_transit_entities", "")
        .map_or(0, |m| m.values().sum());
    let gate = |r: &str| gates.as_ref().and_then(|m| m.get(r).copied()).unwrap_or(0);
    // A labelled family with no sample yet is not exposed at all: no ship
    // took a gate, which is zero, not "unknown".
    let gate_transfers = Ok(summary::Gates {
        departed: gate("departed"),
        arrived: gate("arrived"),
        returned: gate("returned"),
        in_transit,
    });
    // A ship that left through a gate (or is on its way) has not vanished.
    let vanished = (feed.vanished(&present) as u64).saturating_sub(gate("departed") + in_transit);
    let hists: Vec<_> = group.servers.metrics().iter().map(|m| m.tick_duration.clone()).collect();
    Summary {
        ran: progress.elapsed(),
        data: args.data.display().to_string(),
        players: bots.as_ref().map_or(players, |r| r.connected as u64),
        peak_players: feed.peak_players(),
        entities,
        resumed,
        handoffs: shared.metrics.handoffs.get(),
        gate_transfers,
        takeovers: feed.takeovers(),
        tick_p99: summary::p99(&hists).ok_or("no server ticked"),
        unflushed,
        vanished,
        bots_lost: bots
            .as_ref()
            .map(|r| r.entities_lost + r.entities_duplicated)
            .ok_or(if args.bots == 0 { "no bots" } else { "bots stopped early" }),
    }
}
