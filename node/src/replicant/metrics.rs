//! Prometheus metrics, conventional names (`_total`, `_seconds`), served on `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use starmesh_api::reference::{MetricCatalog, MetricDoc};

pub struct Metrics {
    pub registry: Registry,
    /// Every family registered, for the metric reference (`node-reference`).
    pub described: Vec<MetricDoc>,
    pub players: IntGaugeVec,
    pub entities: IntGaugeVec,
    pub handoffs: IntCounter,
    pub stale_epoch_rejections: IntCounter,
    pub rejected_writes: IntCounterVec,
    pub writes_applied: IntCounter,
    pub stream_bytes: IntCounterVec,
    pub stream_messages: IntCounterVec,
    pub commit_latency: Histogram,
    pub tick_duration: Histogram,
    pub tick_lateness: Histogram,
    pub commits: IntCounter,
    pub commit_failures: IntCounter,
    pub evictions: IntCounter,
    pub stream_ins: IntCounter,
    pub store_backlog: IntGauge,
    pub store_up: IntGauge,
    pub subscriber_deferred_ticks: IntCounter,
    pub subscribers_dropped: IntCounter,
    pub rejection_summaries_deferred: IntCounter,
    pub bad_messages: IntCounter,
    pub stream_disconnects: IntCounterVec,
    pub gate_transfers: IntCounterVec,
    pub gate_in_transit: IntGauge,
    pub gate_arrive_retries: IntCounter,
    /// Leaf cells of the shard's partition (a static layout: its territories).
    pub cells: IntGaugeVec,
    pub partition_changes: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &MetricCatalog, c: T) -> T {
    // Names are static and unique, so registration cannot fail at runtime.
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = MetricCatalog::new();
        let loc = &["system", "shard", "territory"];
        Self {
            players: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("starmesh_players", "Players attached, by territory of their entity"),
                    loc,
                )
                .expect("valid"),
            ),
            entities: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "starmesh_entities",
                        "Entities by territory; state=resident (in memory) or evicted (only in the store)",
                    ),
                    &["system", "shard", "territory", "state"],
                )
                .expect("valid"),
            ),
            handoffs: reg(
                &r,
                IntCounter::new(
                    "starmesh_handoffs_total",
                    "Entities handed to another territory at a tick boundary",
                )
                .expect("valid"),
            ),
            stale_epoch_rejections: reg(
                &r,
                IntCounter::new(
                    "starmesh_stale_epoch_rejections_total",
                    "Writes rejected because their epoch was stale (fencing)",
                )
                .expect("valid"),
            ),
            rejected_writes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("starmesh_rejected_writes_total", "Writes rejected, by reason"),
                    &["reason"],
                )
                .expect("valid"),
            ),
            writes_applied: reg(
                &r,
                IntCounter::new("starmesh_writes_applied_total", "Entity writes applied")
                    .expect("valid"),
            ),
            stream_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("starmesh_stream_bytes_total", "Protobuf bytes on streams"),
                    &["link", "direction"],
                )
                .expect("valid"),
            ),
            stream_messages: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("starmesh_stream_messages_total", "Messages on streams"),
                    &["link", "direction"],
                )
                .expect("valid"),
            ),
            commit_latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "starmesh_commit_latency_seconds",
                        "Time to commit one group to the store",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("valid"),
            ),
            // Buckets around the 30 Hz tick budget (33 ms), so "how close to
            // overrunning" is visible; `_count` over time is the achieved tick rate.
            tick_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "starmesh_replicant_tick_duration_seconds",
                        "Time one replicant tick took (lock wait, handoffs, streaming to every subscriber)",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 1.0 / 30.0, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )
                .expect("valid"),
            ),
            // A late start shortens the gap to the next tick: subscribers then get
            // two ticks' updates close together (the gateway merges them).
            tick_lateness: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "starmesh_replicant_tick_lateness_seconds",
                        "How late a replicant tick started against its fixed-rate schedule",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 1.0 / 30.0, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )
                .expect("valid"),
            ),
            commits: reg(
                &r,
                IntCounter::new("starmesh_commits_total", "Group commits to the store")
                    .expect("valid"),
            ),
            commit_failures: reg(
                &r,
                IntCounter::new(
                    "starmesh_commit_failures_total",
                    "Failed commit attempts (retried)",
                )
                .expect("valid"),
            ),
            evictions: reg(
                &r,
                IntCounter::new("starmesh_evictions_total", "Entities evicted from memory")
                    .expect("valid"),
            ),
            stream_ins: reg(
                &r,
                IntCounter::new(
                    "starmesh_stream_ins_total",
                    "Entities streamed back in from the store",
                )
                .expect("valid"),
            ),
            store_backlog: reg(
                &r,
                IntGauge::new(
                    "starmesh_store_backlog_entities",
                    "Entity changes accepted but not yet committed",
                )
                .expect("valid"),
            ),
            store_up: reg(
                &r,
                IntGauge::new("starmesh_store_up", "1 if the last commit succeeded")
                    .expect("valid"),
            ),
            subscriber_deferred_ticks: reg(
                &r,
                IntCounter::new(
                    "starmesh_subscriber_deferred_ticks_total",
                    "Ticks a subscriber's updates were held back because its queue was full",
                )
                .expect("valid"),
            ),
            subscribers_dropped: reg(
                &r,
                IntCounter::new(
                    "starmesh_subscribers_dropped_total",
                    "Streams closed for being too slow",
                )
                .expect("valid"),
            ),
            rejection_summaries_deferred: reg(
                &r,
                IntCounter::new(
                    "starmesh_rejection_summaries_deferred_total",
                    "Ticks a server's rejection summary waited (merged into the next) because its queue was full",
                )
                .expect("valid"),
            ),
            bad_messages: reg(
                &r,
                IntCounter::new(
                    "starmesh_bad_messages_total",
                    "Streams ended by an undecodable or invalid message",
                )
                .expect("valid"),
            ),
            // Kept apart from `bad_messages`: a peer that crashes or goes away
            // is an operational event, a bad message is a bug or an attack.
            stream_disconnects: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "starmesh_stream_disconnects_total",
                        "Streams that ended without a bad message, by link and how: closed (the peer ended it) or reset (the connection broke: reset, cancelled, broken pipe, GOAWAY)",
                    ),
                    &["link", "how"],
                )
                .expect("valid"),
            ),
            gate_transfers: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "starmesh_gate_transfers_total",
                        "Jump-gate transfers by result: source side departed, returned (target refused) or rejected (GateEnter refused); target side arrived, replayed (a retry answered again) or refused",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            gate_in_transit: reg(
                &r,
                IntGauge::new(
                    "starmesh_gate_in_transit_entities",
                    "Entities that left through a jump gate and are not yet confirmed by the target system",
                )
                .expect("valid"),
            ),
            gate_arrive_retries: reg(
                &r,
                IntCounter::new(
                    "starmesh_gate_arrive_retries_total",
                    "Failed GateLink.Arrive attempts (retried until answered)",
                )
                .expect("valid"),
            ),
            cells: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "starmesh_cells",
                        "Leaf cells (units of authority) of the shard's partition; a static layout's territories",
                    ),
                    &["system", "shard"],
                )
                .expect("valid"),
            ),
            partition_changes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "starmesh_partition_changes_total",
                        "Cells split or merged (a dynamic layout's partition changes), by kind",
                    ),
                    &["system", "shard", "kind"],
                )
                .expect("valid"),
            ),
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

    pub fn count(&self, link: &str, direction: &str, bytes: usize) {
        self.stream_bytes.with_label_values(&[link, direction]).inc_by(bytes as u64);
        self.stream_messages.with_label_values(&[link, direction]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
