//! The game server's Prometheus metrics and its `/metrics` `/healthz`
//! `/readyz` endpoint (ready = connected to the replicant).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use starmesh_api::reference::{MetricCatalog, MetricDoc};

pub struct Metrics {
    pub registry: Registry,
    /// Every family registered, for the metric reference (`node-reference`).
    pub described: Vec<MetricDoc>,
    pub tick_duration: Histogram,
    pub tick_overruns: IntCounter,
    pub ticks_skipped: IntCounter,
    pub entities: IntGauge,
    pub territories: IntGauge,
    pub writes: IntCounter,
    pub writes_dropped: IntCounter,
    pub writes_rejected: IntCounter,
    pub handoffs: IntCounterVec,
    /// Jump-gate events: entered (GateEnter sent), accepted, refused, arrived.
    pub gates: IntCounterVec,
    pub inputs: IntCounter,
    pub reconnects: IntCounter,
    pub connected: AtomicBool,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &MetricCatalog, c: T) -> T {
    // Names are static and unique, so registration cannot fail at runtime.
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn counter(r: &MetricCatalog, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(r: &MetricCatalog, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid metric"))
}

impl Metrics {
    pub fn new(tick_period_s: f64) -> Self {
        let r = MetricCatalog::new();
        // Buckets around the tick budget, so "how close to overrunning" is visible.
        let buckets: Vec<f64> = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
            .iter()
            .map(|f| f * tick_period_s)
            .collect();
        Self {
            tick_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "starmesh_tick_duration_seconds",
                        "Time one server tick took (simulation and writes)",
                    )
                    .buckets(buckets),
                )
                .expect("valid metric"),
            ),
            tick_overruns: counter(
                &r,
                "starmesh_tick_overruns_total",
                "Ticks that took longer than the tick period",
            ),
            ticks_skipped: counter(
                &r,
                "starmesh_ticks_skipped_total",
                "Ticks skipped after an overrun (the server never bursts to catch up)",
            ),
            entities: gauge(
                &r,
                "starmesh_server_entities",
                "Entities this server has authority over",
            ),
            territories: gauge(
                &r,
                "starmesh_server_territories",
                "Territories granted to this server",
            ),
            writes: counter(&r, "starmesh_server_writes_total", "Entity writes sent"),
            writes_dropped: counter(
                &r,
                "starmesh_server_writes_dropped_total",
                "Writes not sent because the outbound queue was full (the next tick sends full state)",
            ),
            writes_rejected: counter(
                &r,
                "starmesh_server_writes_rejected_total",
                "Writes the replicant refused",
            ),
            handoffs: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "starmesh_server_handoffs_total",
                        "Entities received (in) or given up (out)",
                    ),
                    &["direction"],
                )
                .expect("valid metric"),
            ),
            gates: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "starmesh_server_gate_events_total",
                        "Jump gates: GateEnter sent (entered), accepted, refused; ships arrived",
                    ),
                    &["event"],
                )
                .expect("valid metric"),
            ),
            inputs: counter(&r, "starmesh_server_player_inputs_total", "Player inputs received"),
            reconnects: counter(
                &r,
                "starmesh_server_reconnects_total",
                "Replicant stream reconnects",
            ),
            connected: AtomicBool::new(false),
            described: r.described(),
            registry: r.registry(),
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which we never produce.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics`, `/healthz` (the process is alive) and `/readyz` (connected).
pub async fn serve(m: Arc<Metrics>, listener: tokio::net::TcpListener) {
    let m2 = m.clone();
    serve_http(listener, move || m.render(), move || m2.connected.load(Ordering::Relaxed)).await
}

/// The HTTP endpoint every non-replicant role serves: `/metrics`, `/healthz`
/// (alive) and `/readyz` (`ready()`: connected to what it needs).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(render())))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(if ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not connected to the replicant")
                })
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server ended");
    }
}
