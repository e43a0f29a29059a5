//! Handoff and takeover benchmark (not a test):
//! `cargo bench -p starmesh-node --bench handoff`.
//!
//! Runs the real mesh on loopback (replicant serving Stanton, three game
//! servers, a gateway, N bots whose routes cross territory boundaries) and
//! prints:
//! - handoff latency in replicant ticks, p50/p99, as the bots saw it: from
//!   the tick their ship's territory changed to the tick the new owner's
//!   first write showed in their bubble;
//! - takeover time after a server `kill -9`: from the kill until the Admin
//!   service shows every territory of the dead server owned by a live one
//!   (several kills, the server restarted in between);
//! - the longest any ship went without an update, and input latency.
//!
//! Environment: BENCH_BOTS (default 300), BENCH_KILLS (default 3).
//! `-- --short`: 30 bots, one kill, shorter phases (CI keeps it working).

#[path = "../tests/mesh_support/mod.rs"]
mod mesh_support;
#[path = "support/report.rs"]
mod report;

use std::time::{Duration, Instant};

use mesh_support::*;

const TICK_HZ: f64 = 30.0;

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    let short = report::short();
    let bots_n = env_or("BENCH_BOTS", if short { 30 } else { 300 });
    let kills = env_or("BENCH_KILLS", if short { 1 } else { 3 }).max(1);
    // Warm-up (logins, spawns), then one kill per period, then a quiet tail.
    let (warm, period, tail) = if short { (4, 4, 3) } else { (6, 5, 4) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut mesh = Mesh::start(&["hurston", "cities", "deep-space"]);
    let duration = warm + period * kills as u64 + tail;
    let mut bots = mesh.bots(bots_n, &format!("{duration}s"), "bench");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(warm));
    let mut takeovers = Vec::new();
    for k in 0..kills {
        mesh.kill_server("hurston");
        let took = rt.block_on(wait_reassigned(mesh.grpc, "hurston", Duration::from_secs(10)));
        takeovers.push(took);
        eprintln!("kill {}: territories owned again after {took:?}", k + 1);
        std::thread::sleep(Duration::from_secs(1));
        mesh.restart_server("hurston");
        let deadline = started + Duration::from_secs(warm + period * (k as u64 + 1));
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
    let (code, r) = bots_report(&mut bots, Duration::from_secs(120));
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let mut t: Vec<f64> = takeovers.iter().map(ms).collect();
    t.sort_by(f64::total_cmp);
    eprintln!(
        "handoff and takeover, {bots_n} bots, 3 servers, Stanton, {duration} s, debug={}; invariants: lost {}, duplicated {}, reconnects {}, connected {}/{} (bots exit code {:?})",
        cfg!(debug_assertions),
        r["entities_lost"],
        r["entities_duplicated"],
        r["reconnects"],
        r["connected"],
        r["players"],
        code
    );
    let num =
        |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("bots report has no number {k}: {r}"));
    assert!(num("handoff_latency_samples") > 0.0, "the bots saw no handoff: {r}");
    report::figure(
        &format!("handoff latency p50 ({bots_n} bots, as the bots see it)"),
        num("handoff_latency_ticks_p50"),
        "ticks",
    );
    report::figure(
        &format!("handoff latency p99 ({} handoffs)", num("handoff_latency_samples")),
        num("handoff_latency_ticks_p99"),
        "ticks",
    );
    report::figure(
        &format!("takeover: kill -9 -> territories owned again, max of {}", t.len()),
        t.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
    report::figure(
        "takeover: in ticks at 30 Hz",
        t.last().copied().unwrap_or(f64::NAN) / 1000.0 * TICK_HZ,
        "ticks",
    );
    report::figure("input -> bubble latency p99", num("update_latency_ms_p99"), "ms");
    report::figure(
        "ships lost + duplicated",
        num("entities_lost") + num("entities_duplicated"),
        "ships",
    );
}
