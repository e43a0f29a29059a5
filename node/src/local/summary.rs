//! The table printed when a run ends, from real counters: the replicant's
//! metrics and world, the map feed's observations, and the roles' reports.
//! A value nobody measured is shown as `n/a` with the reason, never as 0.

use std::fmt;
use std::time::Duration;

/// Jump-gate transfers as the replicant counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gates {
    pub departed: u64,
    pub arrived: u64,
    /// Came back: the target system refused the ship.
    pub returned: u64,
    /// Left this system, not yet confirmed by the target (in local mode
    /// there is no other system running, so these wait for one).
    pub in_transit: u64,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub ran: Duration,
    pub data: String,
    /// Players attached at the end, and the most seen at once.
    pub players: u64,
    pub peak_players: u64,
    /// Resident + evicted at the end (what the store now holds).
    pub entities: u64,
    pub resumed: u64,
    /// The replicant's `starmesh_handoffs_total`.
    pub handoffs: u64,
    pub gate_transfers: Result<Gates, &'static str>,
    /// Territories moved off a server that was gone (seen by the map feed).
    pub takeovers: u64,
    pub tick_p99: Result<Duration, &'static str>,
    /// Entity changes the store had not committed when the run ended.
    pub unflushed: u64,
    /// Entities that were in the world during the run and are neither
    /// resident nor in the store at the end, minus gate departures.
    pub vanished: u64,
    /// What the bots reported lost or duplicated, when they ran.
    pub bots_lost: Result<u64, &'static str>,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            ran: Duration::ZERO,
            data: String::new(),
            players: 0,
            peak_players: 0,
            entities: 0,
            resumed: 0,
            handoffs: 0,
            gate_transfers: Err("not measured"),
            takeovers: 0,
            tick_p99: Err("not measured"),
            unflushed: 0,
            vanished: 0,
            bots_lost: Err("not measured"),
        }
    }
}

impl Summary {
    pub fn lost(&self) -> u64 {
        self.unflushed + self.vanished + self.bots_lost.unwrap_or(0)
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let na = |why: &str| format!("n/a ({why})");
        vec![
            ("players", format!("{} (peak {})", self.players, self.peak_players)),
            ("entities", format!("{} ({} resumed from the store)", self.entities, self.resumed)),
            ("handoffs", self.handoffs.to_string()),
            (
                "gate transfers",
                self.gate_transfers.map_or_else(na, |g| {
                    format!(
                        "{} ({} departed, {} arrived, {} returned, {} in transit)",
                        g.departed + g.arrived,
                        g.departed,
                        g.arrived,
                        g.returned,
                        g.in_transit
                    )
                }),
            ),
            ("takeovers", self.takeovers.to_string()),
            (
                "tick p99",
                self.tick_p99.map_or_else(na, |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
            ),
            (
                "lost",
                format!(
                    "{} (unflushed {}, vanished {}, bots {})",
                    self.lost(),
                    self.unflushed,
                    self.vanished,
                    self.bots_lost.map_or_else(na, |n| n.to_string())
                ),
            ),
        ]
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.rows();
        let kw = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let vw = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let line = format!("+-{}-+-{}-+", "-".repeat(kw), "-".repeat(vw));
        writeln!(
            f,
            "starmesh local: summary after {:.1}s (data: {})",
            self.ran.as_secs_f64(),
            self.data
        )?;
        writeln!(f, "{line}")?;
        for (k, v) in rows {
            writeln!(f, "| {k:<kw$} | {v:<vw$} |")?;
        }
        write!(f, "{line}")
    }
}

/// A metric family's values by one label (`""`: summed into one entry),
/// from a registry's exposition; `None` when the family is not registered.
pub fn by_label(
    registry: &prometheus::Registry,
    name: &str,
    label: &str,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let family = registry.gather().into_iter().find(|f| f.name() == name)?;
    let mut out = std::collections::BTreeMap::new();
    for m in family.get_metric() {
        let key = m
            .get_label()
            .iter()
            .find(|l| l.name() == label)
            .map_or(String::new(), |l| l.value().to_string());
        let v = match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
            _ => continue,
        };
        // Counts are whole and non-negative; anything else is a bug shown as 0.
        *out.entry(key).or_default() += if v.is_finite() && v > 0.0 { v as u64 } else { 0 };
    }
    Some(out)
}

/// The 99th percentile of several histograms with the same buckets (every
/// server's `starmesh_tick_duration_seconds`), as the upper bound of the
/// bucket it falls in: an upper estimate, never an optimistic one.
pub fn p99(hists: &[prometheus::Histogram]) -> Option<Duration> {
    use prometheus::core::Metric;
    let mut total = 0u64;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for h in hists {
        let m = h.metric();
        let h = m.get_histogram();
        total += h.get_sample_count();
        for (i, b) in h.get_bucket().iter().enumerate() {
            match buckets.get_mut(i) {
                Some(acc) => acc.1 += b.cumulative_count(),
                None => buckets.push((b.upper_bound(), b.cumulative_count())),
            }
        }
    }
    if total == 0 {
        return None;
    }
    let want = (total as f64 * 0.99).ceil() as u64;
    let bound = buckets.iter().find(|(_, c)| *c >= want).map_or(f64::INFINITY, |(b, _)| *b);
    // Past the last bucket: report the last bound, marked by the table as a floor.
    let bound = if bound.is_finite() { bound } else { buckets.last().map_or(0.0, |b| b.0) };
    Some(Duration::from_secs_f64(bound.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_bound_across_servers() {
        let h = |obs: &[f64]| {
            let h = prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new("t", "t").buckets(vec![0.001, 0.01, 0.1]),
            )
            .expect("valid");
            for o in obs {
                h.observe(*o);
            }
            h
        };
        assert_eq!(p99(&[]), None);
        let fast = h(&[0.0005; 99]);
        let slow = h(&[0.05]);
        assert_eq!(p99(std::slice::from_ref(&fast)), Some(Duration::from_millis(1)));
        // 1 slow tick in 100: p99 is still in the fast bucket; two in 100 is not.
        assert_eq!(p99(&[fast.clone(), slow.clone()]), Some(Duration::from_millis(1)));
        assert_eq!(p99(&[fast, slow.clone(), slow]), Some(Duration::from_millis(100)));
    }

    #[test]
    fn by_label_reads_counters_and_gauges_from_a_registry() {
        let r = prometheus::Registry::new();
        let c = prometheus::IntCounterVec::new(prometheus::Opts::new("c_total", "c"), &["result"])
            .expect("valid");
        r.register(Box::new(c.clone())).expect("register");
        c.with_label_values(&["departed"]).inc_by(3);
        c.with_label_values(&["arrived"]).inc();
        let g = prometheus::IntGauge::new("g", "g").expect("valid");
        r.register(Box::new(g.clone())).expect("register");
        g.set(2);
        let m = by_label(&r, "c_total", "result").expect("registered");
        assert_eq!((m["departed"], m["arrived"]), (3, 1));
        assert_eq!(by_label(&r, "g", "").map(|m| m.values().sum::<u64>()), Some(2));
        assert_eq!(by_label(&r, "missing", ""), None);
    }

    #[test]
    fn renders_every_row_and_says_why_when_unmeasured() {
        let s = Summary {
            players: 20,
            entities: 20,
            handoffs: 3,
            gate_transfers: Ok(Gates { departed: 2, arrived: 1, returned: 0, in_transit: 1 }),
            tick_p99: Ok(Duration::from_micros(1500)),
            unflushed: 1,
            bots_lost: Ok(0),
            ..Summary::default()
        };
        let t = s.to_string();
        for k in
            ["players", "entities", "handoffs", "gate transfers", "takeovers", "tick p99", "lost"]
        {
            assert!(t.lines().any(|l| l.starts_with(&format!("| {k} "))), "{k} in\n{t}");
        }
        assert!(
            t.contains("| gate transfers | 3 (2 departed, 1 arrived, 0 returned, 1 in transit)"),
            "{t}"
        );
        assert!(t.contains("1.50 ms"), "{t}");
        assert!(t.contains("| lost           | 1 (unflushed 1"), "{t}");
    }
}
