//! `starmesh-operator`: reconciles StarSystem and ServerLayout resources. One active
//! replica (a Lease); `/metrics`, `/healthz`, `/readyz` on `--listen`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Service},
};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::{ObjectRef, Store},
        utils::ResetTimerBackoff,
        watcher,
    },
};
use starmesh_api::{ServerLayout, StarSystem};
use starmesh_operator::{
    Context, Ctx, builders, leader,
    metrics::{self, Metrics},
    server_layout, star_system,
    telemetry::{self, LogFormat},
    watch_check::{CappedBackoff, Disagreement, Versions, disagreements, persistent},
};
use tokio::sync::{oneshot, watch};

#[derive(Parser, Debug)]
#[command(name = "starmesh-operator", version, about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STARMESH_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, default_value = "0.0.0.0:8080", env = "STARMESH_LISTEN")]
    listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "starmesh-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: --namespace, else POD_NAMESPACE, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Identity in the Lease (default: POD_NAME, else hostname-pid).
    #[arg(long)]
    identity: Option<String>,
    /// Seconds the Lease stays valid without renewal (how long a standby waits after the
    /// leader died without releasing it).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Renew the Lease this many seconds before it expires.
    #[arg(long, default_value_t = 5)]
    lease_grace_seconds: u64,
    /// Node image used by layouts that leave spec.image at its default.
    #[arg(long, default_value = concat!("starmesh/node:", env!("CARGO_PKG_VERSION")), env = "STARMESH_NODE_IMAGE")]
    node_image: String,
    /// Read live player counts from each ready replicant's metrics port into the status.
    /// Default: on when running in a cluster (KUBERNETES_SERVICE_HOST set), since only
    /// there are the Services' cluster IPs reachable.
    #[arg(long, env = "STARMESH_PLAYER_COUNTS")]
    player_counts: Option<bool>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "STARMESH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Seconds between checks of the controllers' caches against a LIST from etcd; a cache
    /// that misses a change for a whole period restarts the controllers. 0: no check.
    #[arg(long, default_value_t = WATCH_CHECK_S, env = "STARMESH_WATCH_CHECK_SECONDS")]
    watch_check_seconds: u64,
    /// Longest sleep, in seconds, after an error of a controller's watches; kube-runtime's
    /// default, 30, left the operator deaf for minutes after a kube-apiserver restart.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=300))]
    watch_backoff_max_seconds: u64,
    /// Mesh mTLS: the Secret (tls.crt, tls.key, ca.crt) that replicant, server and gateway
    /// pods mount, by name in each layout's namespace. Without it, the mesh is plaintext.
    #[arg(long, env = "STARMESH_MESH_TLS_SECRET")]
    mesh_tls_secret: Option<String>,
    /// The same material mounted into the operator, for its Admin client to the replicants
    /// (reloaded when it changes).
    #[arg(long, env = "STARMESH_TLS_DIR")]
    tls_dir: Option<std::path::PathBuf>,
}

fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Seconds each watch of the operator lasts before it resumes (see `controllers`).
const WATCH_TIMEOUT_S: u32 = 30;

/// Client read timeout: ends a request whose answer stops arriving. kube 5 sets none, and
/// a watch request waits for its response headers with no other bound (kube-runtime's
/// idle timeout only covers a stream once it is open). Above WATCH_TIMEOUT_S plus
/// kube-runtime's 5 s idle margin, so a quiet watch that the server ends on time is never cut.
const READ_TIMEOUT_S: u64 = 45;

/// Default seconds between two consistency checks of the controllers' stores against a
/// LIST read from etcd (`watch_check`): a store that misses a change for a whole period
/// restarts the controllers (a re-list), so a deaf watch costs about two periods, not minutes.
const WATCH_CHECK_S: u64 = 15;

/// The backoff of each controller's trigger stream. kube-runtime applies ONE backoff to
/// the merged stream of all of a controller's watches (the layout controller has six), and
/// while it sleeps no watch is read. Its default grows to 30 s per error and resets only on
/// an event or after 120 s without errors, so the burst of errors from six watches during a
/// kube-apiserver restart (refused connections, 503, then 410 Gone for watches resuming
/// from an old resourceVersion) left ServerLayouts unseen for minutes. A short cap keeps
/// the retry rate low (one attempt per sleep) without leaving the controller deaf.
fn trigger_backoff(max_s: u64) -> ResetTimerBackoff<CappedBackoff> {
    let max = std::time::Duration::from_secs(max_s);
    // Also reset after a while without errors: 30 s, or 4 sleeps (kube-runtime: 120 s).
    ResetTimerBackoff::new(
        CappedBackoff::new(std::time::Duration::from_millis(250), max),
        (max * 4).max(std::time::Duration::from_secs(30)),
    )
}

/// Resolves once `tx` holds `true`.
fn fired(tx: &watch::Sender<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = tx.subscribe();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.wait_for(|v| *v).await;
        let _ = done_tx.send(());
    });
    async move {
        let _ = done_rx.await;
    }
}

/// Both controllers, until `stop` fires; restarted (fresh watchers, a re-list) whenever
/// `watch_lag` finds a store that stopped following the API server.
async fn run_controllers(
    ctx: Ctx,
    namespace: Option<String>,
    (check_s, backoff_s): (u64, u64),
    stop: oneshot::Receiver<()>,
) {
    let (stop_all, _) = watch::channel(false);
    let stopper = stop_all.clone();
    tokio::spawn(async move {
        let _ = stop.await;
        let _ = stopper.send(true);
    });
    while !*stop_all.borrow() {
        if !run_controllers_once(ctx.clone(), namespace.as_deref(), (check_s, backoff_s), &stop_all)
            .await
        {
            break;
        }
        tracing::warn!("restarting the controllers: a watch stopped delivering changes");
    }
    tracing::info!("controllers stopped");
}

/// One run of both controllers. Returns true when stopped because a store lagged (the
/// caller starts them again), false when `stop_all` fired.
async fn run_controllers_once(
    ctx: Ctx,
    ns: Option<&str>,
    (check_s, backoff_s): (u64, u64),
    stop_all: &watch::Sender<bool>,
) -> bool {
    let client = ctx.client.clone();
    // This round ends on the global stop or on a detected lag.
    let (round, _) = watch::channel(false);
    let forward = {
        let round = round.clone();
        let mut all = stop_all.subscribe();
        tokio::spawn(async move {
            let _ = all.wait_for(|v| *v).await;
            let _ = round.send(true);
        })
    };

    // Never `streaming_lists()`: Kubernetes 1.20 answers 422 and the watcher retries forever.
    // A short watch timeout: a watch that stops delivering is renewed (from its
    // resourceVersion, no re-list) after WATCH_TIMEOUT_S. New ServerLayouts once went unseen
    // for minutes after a kube-apiserver restart: the trigger backoff (`trigger_backoff`),
    // not the watches themselves; `watch_lag` is the safety net for anything else.
    let wc = watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT_S);
    let systems_ctl = Controller::new(api::<StarSystem>(&client, ns), wc.clone());
    let systems_store = systems_ctl.store();
    let systems = systems_ctl
        .trigger_backoff(trigger_backoff(backoff_s))
        .graceful_shutdown_on(fired(&round))
        .run(star_system::reconcile, star_system::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let children = watcher::Config::default()
        .any_semantic()
        .timeout(WATCH_TIMEOUT_S)
        .labels(&format!("{}={}", builders::LABEL_MANAGED_BY, builders::FIELD_MANAGER));
    let layouts_ctl = Controller::new(api::<ServerLayout>(&client, ns), wc.clone());
    let layouts_store = layouts_ctl.store();
    let layouts_index = layouts_store.clone();
    let layouts = layouts_ctl
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children)
        // A layout re-reconciles when its StarSystem appears, changes or goes away.
        .watches(api::<StarSystem>(&client, ns), wc, move |system: StarSystem| {
            let ns = system.metadata.namespace.clone();
            let name = system.metadata.name.clone();
            layouts_index
                .state()
                .into_iter()
                .filter(|l| l.metadata.namespace == ns && Some(&l.spec.system_ref) == name.as_ref())
                .map(|l| ObjectRef::from_obj(&*l))
                .collect::<Vec<_>>()
        })
        .trigger_backoff(trigger_backoff(backoff_s))
        .graceful_shutdown_on(fired(&round))
        .run(server_layout::reconcile, server_layout::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    let controllers = async {
        tokio::join!(systems, layouts);
    };
    tokio::pin!(controllers);
    let lag = watch_lag(
        check_s,
        (api::<ServerLayout>(&client, ns), layouts_store),
        (api::<StarSystem>(&client, ns), systems_store),
    );
    let restart = tokio::select! {
        () = &mut controllers => false,
        () = lag => {
            let _ = round.send(true);
            controllers.await;
            true
        }
    };
    forward.abort();
    restart
}

/// uid → resourceVersion of objects.
fn versions<'a, K: kube::Resource + 'a>(objs: impl IntoIterator<Item = &'a K>) -> Versions {
    objs.into_iter()
        .filter_map(|o| Some((o.meta().uid.clone()?, o.meta().resource_version.clone()?)))
        .collect()
}

/// What a consistent LIST (no resourceVersion: read from etcd, not from the API server's
/// watch cache) and `store` disagree on; `None` when the LIST fails (the API server is
/// down: nothing to compare, and the watchers retry on their own).
async fn store_disagreements<K>(api: &Api<K>, store: &Store<K>) -> Option<BTreeSet<Disagreement>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // The list first, then the store (see `watch_check::disagreements`).
    let listed = match api.list(&ListParams::default()).await {
        Ok(list) => versions(&list.items),
        Err(e) => {
            tracing::debug!(error = %e, "watch check: list failed");
            return None;
        }
    };
    let state = store.state();
    let stored = versions(state.iter().map(|o| o.as_ref()));
    Some(disagreements(&listed, &stored))
}

/// Resolves when the layouts' or the systems' store misses a change for a whole
/// period of `period_s` seconds (see `watch_check`); never when `period_s` is 0.
async fn watch_lag(
    period_s: u64,
    layouts: (Api<ServerLayout>, Store<ServerLayout>),
    systems: (Api<StarSystem>, Store<StarSystem>),
) {
    if period_s == 0 {
        return std::future::pending().await;
    }
    let mut previous: [Option<BTreeSet<Disagreement>>; 2] = [None, None];
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(period_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = [
            store_disagreements(&layouts.0, &layouts.1).await,
            store_disagreements(&systems.0, &systems.1).await,
        ];
        for (kind, (prev, cur)) in
            ["ServerLayout", "StarSystem"].iter().zip(previous.iter().zip(&current))
        {
            if let (Some(prev), Some(cur)) = (prev, cur) {
                let lagging = persistent(prev, cur);
                if !lagging.is_empty() {
                    tracing::warn!(
                        kind,
                        lagging = ?lagging,
                        period_s,
                        "watch check: the store missed changes for a whole period \
                         (uid, listed version, stored version)"
                    );
                    return;
                }
            }
        }
        previous = current;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    if args.lease_grace_seconds == 0 || args.lease_grace_seconds >= args.lease_duration_seconds {
        anyhow::bail!("--lease-grace-seconds must be > 0 and < --lease-duration-seconds");
    }

    let metrics = Metrics::new().context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let http = tokio::spawn(metrics::serve(
        listener,
        metrics::HttpState { metrics: metrics.clone(), ready: ready.clone() },
        async move {
            let _ = http_stop_rx.await;
        },
    ));

    let mut config = kube::Config::infer().await.context("configuring the Kubernetes client")?;
    config.read_timeout = Some(std::time::Duration::from_secs(READ_TIMEOUT_S));
    // The timeout counts from the request, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "default".into());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: builders::FIELD_MANAGER.into(), instance: Some(identity.clone()) },
    );
    starmesh_operator::tls::init_process(args.tls_dir.as_deref())?;
    let ctx: Ctx = Arc::new(Context {
        mesh_tls_secret: args.mesh_tls_secret.clone().filter(|s| !s.is_empty()),
        client: client.clone(),
        recorder,
        metrics: metrics.clone(),
        node_image: args.node_image.clone(),
        player_counts: args
            .player_counts
            .unwrap_or_else(|| std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()),
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(namespace = ?args.namespace, identity = %identity, "starmesh-operator starting");

    let namespace = args.namespace.clone();
    let watch_s = (args.watch_check_seconds, args.watch_backoff_max_seconds);
    let result = leader::run(
        client,
        leader::LeaseConfig {
            name: args.lease_name.clone(),
            namespace: lease_namespace,
            identity,
            duration_seconds: args.lease_duration_seconds,
            grace_seconds: args.lease_grace_seconds,
        },
        metrics,
        shutdown_signal(),
        move |stop| run_controllers(ctx.clone(), namespace.clone(), watch_s, stop),
    )
    .await;

    let _ = http_stop_tx.send(());
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
        Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
    }
    tracing::info!("starmesh-operator stopped");
    result
}
