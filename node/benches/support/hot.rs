//! Hot paths counted in instructions by `valgrind --tool=callgrind`, which is
//! repeatable on a shared, noisy machine where wall time is not.
//!
//! Each `hot_*` bench binary is its own driver: run plainly, it runs itself
//! twice under callgrind (`--measure subject`, `--measure baseline`) with
//! collection switched on only inside `callgrind_region` (so setup is not
//! counted), reads the totals and prints the figure against the baseline.
//! The world built here is the replicant's own (`World`, `Core`, `Shared`)
//! from the test fixture, with the same configuration the replicant uses.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use starmesh_node::model::{EntityWrite, Vec3};
use starmesh_node::replicant::authority::Authority;
use starmesh_node::replicant::state::World;
use starmesh_node::replicant::{Config, Core, Shared, gate, metrics::Metrics};
use starmesh_node::store::embedded::EmbeddedStore;
use tokio::sync::{Notify, watch};

/// The only code callgrind counts. Never inlined, so the toggle sees it.
#[inline(never)]
pub fn callgrind_region<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

pub enum Mode {
    Subject,
    Baseline,
}

/// What the binary was asked to do: `Some((mode, iterations))` when
/// measuring, `None` when it should drive callgrind over itself.
pub fn mode() -> Option<(Mode, u64)> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--measure")?;
    let mode = match args.get(i + 1).map(String::as_str) {
        Some("subject") => Mode::Subject,
        Some("baseline") => Mode::Baseline,
        other => panic!("--measure subject|baseline, got {other:?}"),
    };
    let iters = args.get(i + 2).and_then(|s| s.parse().ok()).expect("--measure MODE ITERATIONS");
    Some((mode, iters))
}

/// Runs this binary under callgrind in `mode` and returns the instructions
/// counted inside `callgrind_region`, per iteration.
fn count(mode: &str, iters: u64, extra: &[&str]) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("callgrind.out");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg("--toggle-collect=*callgrind_region*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--measure", mode, &iters.to_string()])
        .args(extra);
    if crate::report::short() {
        cmd.arg("--short");
    }
    let o = cmd.output().unwrap_or_else(|e| {
        panic!("valgrind could not be run ({e}); e2e/install-deps.sh installs it")
    });
    assert!(
        o.status.success(),
        "callgrind run failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let total = totals(&out);
    assert!(total > 0, "callgrind counted nothing inside callgrind_region (toggle did not match)");
    total as f64 / iters as f64
}

/// The `summary:` (or `totals:`) line of a callgrind output file: Ir.
fn totals(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("callgrind output");
    text.lines()
        .filter_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or_else(|| panic!("no summary line in {}", path.display()))
}

/// Drives callgrind over this binary and prints the figure.
pub fn drive(figure: &str, baseline_what: &str, iters: u64) {
    drive_with(figure, baseline_what, iters, &[]);
}

/// [`drive`], passing `extra` arguments to both measuring runs (a binary with
/// more than one figure tells them apart by these). Returns (subject, baseline).
pub fn drive_with(figure: &str, baseline_what: &str, iters: u64, extra: &[&str]) -> (f64, f64) {
    let t = Instant::now();
    let subject = count("subject", iters, extra);
    let baseline = count("baseline", iters, extra);
    crate::report::against(figure, subject, "instructions", baseline, baseline_what);
    eprintln!("{figure}: callgrind took {:.1} s", t.elapsed().as_secs_f64());
    (subject, baseline)
}

/// The replicant's shared state around a world built from the test fixture,
/// one server (`s1`) connected, so it holds every territory.
pub fn shared(dir: &Path) -> Shared {
    let cfg = Config::default();
    let mesh = starmesh_node::resources::load(
        &[Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml")],
        "0",
    )
    .expect("the test world is valid");
    let map = mesh.map.clone();
    let mut auth = Authority::new(map.names(), map.static_owners().clone(), 1, cfg.lease);
    auth.connect("s1".into(), 1, Instant::now());
    let world = World::new(map, auth, cfg.cell_size_km);
    Shared {
        core: std::sync::Mutex::new(Core::new(world, cfg.backlog_bound)),
        metrics: Metrics::new(),
        store: Arc::new(EmbeddedStore::open(dir).expect("store")),
        cfg,
        system: "sol".into(),
        shard: "0".into(),
        commit_notify: Notify::new(),
        shutdown: Notify::new(),
        store_ok: AtomicBool::new(true),
        stopping: AtomicBool::new(false),
        gates: gate::Gates::new(&[], &[]).expect("no gates"),
        loaded: watch::Sender::new(true),
    }
}

/// Entity `i` of `n`, spread evenly through a cube of `side` km in deep
/// space, moved a little each `round`.
pub fn position(i: u64, n: u64, side: f64, round: u64) -> Vec3 {
    let per = (n as f64).cbrt().ceil() as u64;
    let step = side / per as f64;
    let (x, y, z) = (i % per, (i / per) % per, i / (per * per));
    Vec3::new(50_000.0 + x as f64 * step + round as f64 * 0.01, y as f64 * step, z as f64 * step)
}

/// Writes entities `1..=n` through `s1` (all of them changed this tick).
pub fn write_all(world: &mut World, n: u64, side: f64, round: u64) {
    for i in 0..n {
        write_one(world, i + 1, position(i, n, side, round), round);
    }
}

/// Writes entity `id` at `p` through `s1`, under its territory's current epoch.
pub fn write_one(world: &mut World, id: u64, p: Vec3, round: u64) {
    let territory = match world.entity(id) {
        Some(e) => e.territory.clone(),
        None => world.map.locate(p),
    };
    let epoch = world.authority.grant(&territory).expect("a territory").epoch;
    let w = EntityWrite {
        seq: round,
        epoch,
        id,
        kind: 1,
        position: p,
        velocity: Vec3::new(1.0, 0.0, 0.0),
        location: "".into(),
        components: bytes::Bytes::from(vec![7u8; 64]),
    };
    world.apply_write("s1", &w);
}
