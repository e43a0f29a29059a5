//! The operator's own Prometheus metrics and the `/metrics` `/healthz` `/readyz` server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use starmesh_api::reference::{MetricCatalog, MetricDoc};

/// Counters, the duration histogram and the leader gauge, in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Every family registered, for the metric reference (`operator-reference`).
    pub described: Vec<MetricDoc>,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pub leader: IntGauge,
    scaling_decisions: IntCounterVec,
    oldest_drain: GaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        // Registers like a Registry and remembers each family for the reference.
        let registry = MetricCatalog::new();
        let reconciles = IntCounterVec::new(
            Opts::new("starmesh_operator_reconciles_total", "Reconciliations started, by resource"),
            &["resource"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "starmesh_operator_reconcile_errors_total",
                "Reconciliations that failed, by resource and error reason",
            ),
            &["resource", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "starmesh_operator_reconcile_duration_seconds",
                "Time spent in one reconciliation, by resource",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["resource"],
        )?;
        let leader = IntGauge::new(
            "starmesh_operator_leader",
            "1 while this replica holds the leader Lease and runs the controllers",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let scaling_decisions = IntCounterVec::new(
            Opts::new(
                "starmesh_operator_scaling_decisions_total",
                "Autoscaling decisions (split, merge, servers_up, servers_down, shards_up, shards_down, shard_drain, shard_drain_cancelled), by layout",
            ),
            &["namespace", "layout", "action"],
        )?;
        let oldest_drain = GaugeVec::new(
            Opts::new(
                "starmesh_operator_oldest_drain_seconds",
                "Age of the oldest unfinished game-server drain of a layout (0: none)",
            ),
            &["namespace", "layout"],
        )?;
        registry.register(Box::new(scaling_decisions.clone()))?;
        registry.register(Box::new(oldest_drain.clone()))?;
        Ok(Metrics {
            described: registry.described(),
            registry: registry.registry(),
            reconciles,
            errors,
            duration,
            leader,
            scaling_decisions,
            oldest_drain,
        })
    }

    pub fn scaling_decision(&self, namespace: &str, layout: &str, action: &str) {
        self.scaling_decisions.with_label_values(&[namespace, layout, action]).inc();
    }

    pub fn set_oldest_drain(&self, namespace: &str, layout: &str, seconds: f64) {
        self.oldest_drain.with_label_values(&[namespace, layout]).set(seconds);
    }

    /// A deleted layout's series go away with it.
    pub fn forget_layout(&self, namespace: &str, layout: &str) {
        let _ = self.oldest_drain.remove_label_values(&[namespace, layout]);
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile(&self, resource: &'static str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[resource]).inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.with_label_values(&[resource]),
        }
    }

    pub fn reconcile_failure(&self, resource: &str, reason: &str) {
        self.errors.with_label_values(&[resource, reason]).inc();
    }

    fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Observes the elapsed time into the histogram when dropped (also on `?` early returns).
pub struct ReconcileTimer {
    start: Instant,
    histogram: prometheus::Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Shared with the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    /// Set once the client is configured and the lease loop runs; a standby is ready too
    /// (it is doing its job: waiting).
    pub ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    match s.metrics.render() {
        Ok(body) => {
            (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves on an already bound listener (so a taken port fails at startup, not later)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics /healthz /readyz");
    }
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new().expect("metrics");
        drop(m.reconcile("ServerLayout"));
        m.reconcile_failure("ServerLayout", "api_409");
        m.leader.set(1);
        m.scaling_decision("ns", "pyro", "split");
        m.set_oldest_drain("ns", "pyro", 3.0);
        let text = m.render().expect("render");
        for name in [
            "starmesh_operator_scaling_decisions_total{action=\"split\",layout=\"pyro\",namespace=\"ns\"} 1",
            "starmesh_operator_oldest_drain_seconds{layout=\"pyro\",namespace=\"ns\"} 3",
            "starmesh_operator_reconciles_total{resource=\"ServerLayout\"} 1",
            "starmesh_operator_reconcile_errors_total{reason=\"api_409\",resource=\"ServerLayout\"} 1",
            "starmesh_operator_reconcile_duration_seconds_count{resource=\"ServerLayout\"} 1",
            "starmesh_operator_leader 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
