//! One active replica through a coordination.k8s.io/v1 Lease (kube-lease-manager).
//!
//! [`run`] waits for the Lease, runs the controllers while it holds it, stops them when
//! the Lease is lost (and waits for it again), and on shutdown stops them and releases
//! the Lease so a standby takes over at once instead of after the lease duration.

use std::{future::Future, time::Duration};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a Lease stays valid without renewal: how long a standby waits after the
    /// leader died without releasing it.
    pub duration_seconds: u64,
    /// The holder renews this many seconds before expiry.
    pub grace_seconds: u64,
}

/// Runs `controllers(stop)` whenever this replica leads. `controllers` must return once
/// `stop` fires. Returns when `shutdown` resolves (after releasing the Lease), or with an
/// error when the Lease can no longer be managed.
pub async fn run<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
    controllers: F,
) -> anyhow::Result<()>
where
    F: Fn(oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let params = LeaseParams::new(cfg.identity.clone(), cfg.duration_seconds, cfg.grace_seconds)
        .with_field_manager(format!("starmesh-operator-lease-{}", cfg.identity));
    let manager = LeaseManagerBuilder::new(client, cfg.name.clone())
        .with_namespace(cfg.namespace.clone())
        .with_parameters(params)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for the leader lease");
    tokio::pin!(shutdown);

    loop {
        // Standby.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() {
                    anyhow::bail!("lease manager stopped: {:?}", lease_task.await);
                },
                () = &mut shutdown => {
                    drop(leading);
                    release(lease_task).await;
                    return Ok(());
                }
            }
        }

        tracing::info!(identity = %cfg.identity, "acquired the leader lease: starting controllers");
        metrics.leader.set(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut running = tokio::spawn(controllers(stop_rx));

        let outcome = loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() { break Outcome::LeaseManagerGone; }
                    if !*leading.borrow_and_update() { break Outcome::Lost; }
                }
                () = &mut shutdown => break Outcome::Shutdown,
                res = &mut running => {
                    tracing::error!(?res, "controllers ended on their own");
                    break Outcome::ControllersEnded;
                }
            }
        };
        metrics.leader.set(0);
        let _ = stop_tx.send(());
        if !matches!(outcome, Outcome::ControllersEnded) {
            // Bounded: a controller stuck in an API call must not hold up a shutdown
            // past the pod's grace period.
            if tokio::time::timeout(Duration::from_secs(20), &mut running).await.is_err() {
                tracing::warn!("controllers did not stop within 20s; abandoning them");
                running.abort();
            }
        }
        match outcome {
            Outcome::Lost => {
                tracing::warn!("lost the leader lease: controllers stopped, waiting to lead again");
            }
            Outcome::Shutdown => {
                drop(leading);
                release(lease_task).await;
                return Ok(());
            }
            Outcome::LeaseManagerGone => {
                anyhow::bail!("lease manager stopped: {:?}", lease_task.await)
            }
            Outcome::ControllersEnded => {
                drop(leading);
                release(lease_task).await;
                anyhow::bail!("controllers ended unexpectedly");
            }
        }
    }
}

enum Outcome {
    Lost,
    Shutdown,
    LeaseManagerGone,
    ControllersEnded,
}

/// Dropping the receiver makes the lease task release the Lease and exit; wait for it.
async fn release(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader lease failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "lease task panicked"),
        Err(_) => tracing::warn!("releasing the leader lease timed out"),
    }
}
