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

#[path = "../tests/mesh_support/mod.rs"]
mod mesh_support;

use std::time::{Duration, Instant};

use mesh_support::*;

const TICK_HZ: f64 = 30.0;

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    let bots_n = env_or("BENCH_BOTS", 300);
    let kills = env_or("BENCH_KILLS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut mesh = Mesh::start(&["hurston", "cities", "deep-space"]);
    // Warm-up (logins, spawns), kills 5 s apart, then a quiet tail.
    let duration = 6 + 5 * kills as u64 + 4;
    let mut bots = mesh.bots(bots_n, &format!("{duration}s"), "bench");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let mut takeovers = Vec::new();
    for k in 0..kills {
        mesh.kill_server("hurston");
        let took = rt.block_on(wait_reassigned(mesh.grpc, "hurston", Duration::from_secs(10)));
        takeovers.push(took);
        eprintln!("kill {}: territories owned again after {took:?}", k + 1);
        std::thread::sleep(Duration::from_secs(2));
        mesh.restart_server("hurston");
        let deadline = started + Duration::from_secs(6 + 5 * (k as u64 + 1));
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
    let (code, r) = bots_report(&mut bots, Duration::from_secs(120));
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let mut t: Vec<f64> = takeovers.iter().map(ms).collect();
    t.sort_by(f64::total_cmp);
    println!(
        "handoff and takeover, {bots_n} bots, 3 servers, Stanton, {duration} s, debug={}",
        cfg!(debug_assertions)
    );
    println!(
        "  handoff latency      p50 {} ticks, p99 {} ticks ({} handoffs seen by bots)",
        r["handoff_latency_ticks_p50"],
        r["handoff_latency_ticks_p99"],
        r["handoff_latency_samples"]
    );
    println!(
        "  takeover after kill -9: min {:.1} ms, max {:.1} ms ({:.1} ticks at 30 Hz) over {} kills",
        t.first().copied().unwrap_or(0.0),
        t.last().copied().unwrap_or(0.0),
        t.last().copied().unwrap_or(0.0) / 1000.0 * TICK_HZ,
        t.len()
    );
    println!(
        "  longest own-ship stall {:.0} ms (bots probe every 250 ms; docked ships only change on input)",
        r["max_stall_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  input -> bubble latency p50 {:.1} ms, p99 {:.1} ms",
        r["update_latency_ms_p50"].as_f64().unwrap_or(0.0),
        r["update_latency_ms_p99"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  invariants: lost {}, duplicated {}, reconnects {}, connected {}/{} (bots exit code {:?})",
        r["entities_lost"],
        r["entities_duplicated"],
        r["reconnects"],
        r["connected"],
        r["players"],
        code
    );
}
