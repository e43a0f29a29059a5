//! `starmesh-operator`: reconciles StarSystem and ServerLayout resources. One active
//! replica (a Lease); `/metrics`, `/healthz`, `/readyz` on `--listen`.

use std::{
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
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use starmesh_api::{ServerLayout, StarSystem};
use starmesh_operator::{
    Context, Ctx, builders, leader,
    metrics::{self, Metrics},
    server_layout, star_system,
    telemetry::{self, LogFormat},
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

/// Both controllers, until `stop` fires.
async fn run_controllers(ctx: Ctx, namespace: Option<String>, stop: oneshot::Receiver<()>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    // One stop signal fans out to both controllers' graceful shutdown.
    let (stop_all, _) = watch::channel(false);
    let stopper = stop_all.clone();
    tokio::spawn(async move {
        let _ = stop.await;
        let _ = stopper.send(true);
    });
    let trigger = |tx: &watch::Sender<bool>| {
        let mut rx = tx.subscribe();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = rx.wait_for(|v| *v).await;
            let _ = done_tx.send(());
        });
        async move {
            let _ = done_rx.await;
        }
    };

    // Never `streaming_lists()`: Kubernetes 1.20 answers 422 and the watcher retries forever.
    // A short watch timeout: after a kube-apiserver restart a custom-resource watch can be
    // accepted and then never sent an event (1.20: new ServerLayouts went unseen for ~3 min,
    // e2e/tests/chaos.rs); each watch ending after WATCH_TIMEOUT_S and resuming from its
    // resourceVersion (no re-list) bounds that.
    let wc = watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT_S);
    let systems = Controller::new(api::<StarSystem>(&client, ns), wc.clone())
        .graceful_shutdown_on(trigger(&stop_all))
        .run(star_system::reconcile, star_system::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let children = watcher::Config::default()
        .any_semantic()
        .timeout(WATCH_TIMEOUT_S)
        .labels(&format!("{}={}", builders::LABEL_MANAGED_BY, builders::FIELD_MANAGER));
    let layouts_ctl = Controller::new(api::<ServerLayout>(&client, ns), wc.clone());
    let layouts_store = layouts_ctl.store();
    let layouts = layouts_ctl
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children)
        // A layout re-reconciles when its StarSystem appears, changes or goes away.
        .watches(api::<StarSystem>(&client, ns), wc, move |system: StarSystem| {
            let ns = system.metadata.namespace.clone();
            let name = system.metadata.name.clone();
            layouts_store
                .state()
                .into_iter()
                .filter(|l| l.metadata.namespace == ns && Some(&l.spec.system_ref) == name.as_ref())
                .map(|l| ObjectRef::from_obj(&*l))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(trigger(&stop_all))
        .run(server_layout::reconcile, server_layout::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    tokio::join!(systems, layouts);
    tracing::info!("controllers stopped");
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

    let client = Client::try_default().await.context("configuring the Kubernetes client")?;
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
    let ctx: Ctx = Arc::new(Context {
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
        move |stop| run_controllers(ctx.clone(), namespace.clone(), stop),
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
