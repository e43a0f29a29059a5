//! Any language can be a starmesh game server: the Python example
//! (`node/sdk/examples/python/starmesh_server.py`, grpcio with stubs generated
//! here from the project's .proto files) joins a mesh of real processes on
//! loopback (a replicant on the test world `sol`, and `starmesh server` in Rust
//! as `s-deep`), takes authority over earth as `s-earth`, creates and flies
//! ships there, and hands them to the Rust server (deep space) and back, their
//! state continuing on both sides. Then it is `kill -9`ed and the Rust server
//! takes earth over: every ship in the replicant exactly once.
//!
//! And with players: bots fly through the Stanton mesh whose `hurston` server
//! is the Python one and the rest Rust, with no ship lost or duplicated.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (e2e/install-deps.sh
//! installs them); fails, never skips, without them.

mod common;
mod mesh_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::process::{Replicant, http_get};
use starmesh_node::wire::pb;

const SHIPS: u64 = 5;
const ID_BASE: u64 = 1000;

/// A child process killed (SIGKILL) and reaped when dropped, also on panic.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python_with_grpc() {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools; print(grpc.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is required for this test (e2e/install-deps.sh): {e}"));
    assert!(
        out.status.success(),
        "python3 needs grpcio and grpcio-tools (e2e/install-deps.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python stubs, generated from the same .proto files the node compiles.
fn generate_stubs(out: &Path) {
    let st = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(node_dir().join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args([
            "starmesh/v1/entity.proto",
            "starmesh/v1/server_link.proto",
            "starmesh/v1/player_link.proto",
        ])
        .status()
        .expect("run grpc_tools.protoc");
    assert!(st.success(), "grpc_tools.protoc failed");
    assert!(out.join("starmesh/v1/server_link_pb2_grpc.py").exists());
}

/// `starmesh server` (the Rust runner with the example game); its metrics address.
fn rust_server(replicant: SocketAddr, name: &str, log: &Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starmesh"))
        .args(["server", "--replicant", &replicant.to_string(), "--name", name])
        .args(["--metrics", "127.0.0.1:0", "--tick-rate", "30"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn starmesh server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line).expect("the server's first line");
    let metrics = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics="))
        .unwrap_or_else(|| panic!("no metrics= in {line:?}"))
        .parse()
        .expect("an address");
    (Proc(child), metrics)
}

fn metric(addr: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn admin(r: &Replicant) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    pb::admin_client::AdminClient::connect(format!("http://{}", r.grpc)).await.expect("admin")
}

async fn owner(r: &Replicant, territory: &str) -> String {
    let a = admin(r).await.assignments(pb::AssignmentsRequest {}).await.expect("assignments");
    let a = a.into_inner().assignments.into_iter().find(|a| a.territory == territory);
    a.map(|a| a.server).unwrap_or_default()
}

async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default, Debug)]
struct Trip {
    created: bool,
    out_to_rust: u32,
    /// (version, arrivals) at each handoff back from the Rust server.
    back: Vec<(u64, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_game_server_hands_ships_to_a_rust_server_and_back() {
    python_with_grpc();
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    generate_stubs(&stubs);

    let sol = common::sol_path();
    let data = dir.path().join("data");
    let r = Replicant::spawn_logged(
        env!("CARGO_BIN_EXE_starmesh"),
        &["--system".as_ref(), sol.as_os_str(), "--data-dir".as_ref(), data.as_os_str()],
        Some(&dir.path().join("replicant.log")),
    );
    r.wait_ready(Duration::from_secs(30));
    let (_rust, rust_metrics) = rust_server(r.grpc, "s-deep", &dir.path().join("server.log"));
    wait_for("s-deep to own deep space", Duration::from_secs(20), || async {
        owner(&r, "deep-space").await == "s-deep"
    })
    .await;

    let mut py = Proc(
        Command::new("python3")
            .arg(node_dir().join("sdk/examples/python/starmesh_server.py"))
            .arg("--stubs")
            .arg(&stubs)
            .args(["--replicant", &r.grpc.to_string(), "--name", "s-earth"])
            .args(["--ships", &SHIPS.to_string(), "--id-base", &ID_BASE.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("python.log")).unwrap())
            .spawn()
            .expect("spawn python3"),
    );
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = py.0.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("python printed a non-JSON line {line:?}: {e}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });

    // Every ship: created by Python in earth, out to deep space (Rust), back twice.
    let mut trips: BTreeMap<u64, Trip> = BTreeMap::new();
    let mut welcome_version = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = |t: &BTreeMap<u64, Trip>| {
        t.len() as u64 == SHIPS && t.values().all(|t| t.created && t.back.len() >= 2)
    };
    while !done(&trips) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no round trips within 90 s: {trips:?}; python log: {}",
                std::fs::read_to_string(dir.path().join("python.log")).unwrap_or_default()
            )
        });
        let id = ev["id"].as_u64().unwrap_or(0);
        match ev["event"].as_str().unwrap_or("") {
            "welcome" => welcome_version = ev["protocol_version"].as_u64(),
            "error" => panic!("the python server's stream ended: {ev}"),
            "created" => trips.entry(id).or_default().created = true,
            "handoff_out" if ev["to"] == "deep-space" => {
                trips.entry(id).or_default().out_to_rust += 1
            }
            "handoff_in" if ev["from"] == "deep-space" => {
                let t = trips.entry(id).or_default();
                t.back.push((ev["version"].as_u64().unwrap(), ev["arrivals"].as_u64().unwrap()));
            }
            _ => {}
        }
    }
    assert_eq!(welcome_version, Some(1), "the replicant says its protocol version");
    for (id, t) in &trips {
        assert!((ID_BASE..ID_BASE + SHIPS).contains(id), "unexpected id {id}");
        assert!(t.out_to_rust >= 2, "ship {id}: {t:?}");
        // The Rust server flew and docked it (arrivals counted in its components),
        // and the state went on growing from where each side left it.
        let (v0, a0) = t.back[0];
        let (v1, a1) = t.back[1];
        assert!(a0 >= 1 && a1 > a0, "ship {id} docked on both sides: {t:?}");
        assert!(v1 > v0, "versions only grow: {t:?}");
    }
    assert!(metric(rust_metrics, "starmesh_server_handoffs_total", "\"in\"") >= 2.0 * SHIPS as f64);
    assert_eq!(owner(&r, "earth").await, "s-earth", "earth is the Python server's");

    // A crash of the Python server costs nothing: Rust takes earth over and
    // holds every ship, each exactly once in the replicant.
    drop(py);
    wait_for("s-deep to take earth over", Duration::from_secs(20), || async {
        owner(&r, "earth").await == "s-deep"
    })
    .await;
    wait_for("the Rust server to hold every ship", Duration::from_secs(20), || async {
        metric(rust_metrics, "starmesh_server_entities", "") == SHIPS as f64
    })
    .await;
    let counts = admin(&r).await.counts(pb::CountsRequest {}).await.unwrap().into_inner();
    assert_eq!(counts.entities, SHIPS, "no ship lost or duplicated: {counts:?}");
    let mut seen = BTreeSet::new();
    for id in ID_BASE..ID_BASE + SHIPS {
        let l = admin(&r).await.lookup(pb::LookupRequest { id }).await.unwrap().into_inner();
        assert!(l.present && !l.in_transit && !l.departed, "ship {id}: {l:?}");
        seen.insert(id);
    }
    assert_eq!(seen.len() as u64, SHIPS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_fly_through_a_mesh_of_python_and_rust_servers_with_nothing_lost() {
    const BOTS: u64 = 60;
    python_with_grpc();
    let mesh = mesh_support::Mesh::start(&["cities", "deep-space"]);
    let stubs = mesh.dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    generate_stubs(&stubs);
    let mut py = Proc(
        Command::new("python3")
            .arg(node_dir().join("sdk/examples/python/starmesh_server.py"))
            .arg("--stubs")
            .arg(&stubs)
            .args(["--replicant", &mesh.grpc.to_string(), "--name", "hurston"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(mesh.dir.path().join("python.log")).unwrap())
            .spawn()
            .expect("spawn python3"),
    );
    let stdout = py.0.stdout.take().expect("piped");
    let events = std::thread::spawn(move || {
        let mut n: BTreeMap<String, u64> = BTreeMap::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("python printed a non-JSON line {line:?}: {e}"));
            let ev = v["event"].as_str().unwrap_or("").to_string();
            let crossed = ev == "handoff_in" && v["from"].as_str().is_some_and(|f| !f.is_empty());
            *n.entry(if crossed { "crossed_in".into() } else { ev }).or_default() += 1;
        }
        n
    });
    let grpc = mesh.grpc;
    wait_for("the Python server to own hurston", Duration::from_secs(20), || async move {
        let a = mesh_support::assignments(grpc).await;
        a.assignments.iter().any(|a| a.territory == "hurston" && a.server == "hurston")
    })
    .await;

    let mut bots = mesh.bots(BOTS as usize, "15s", "py");
    let (code, r) = tokio::task::spawn_blocking(move || {
        let r = mesh_support::bots_report(&mut bots, Duration::from_secs(60));
        drop(bots);
        r
    })
    .await
    .expect("join");
    drop(py);
    let seen = events.join().expect("python's events");
    eprintln!("bots report: {r:#}\npython events: {seen:?}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connected"), BOTS, "every bot connected\n{}", mesh.logs());
    assert_eq!(n("entities_lost"), 0, "no ship lost\n{}", mesh.logs());
    assert_eq!(n("entities_duplicated"), 0, "no entity duplicated\n{}", mesh.logs());
    assert!(n("handoffs_seen") > 0, "routes cross territory boundaries: {r}");
    assert_eq!(code, Some(0), "bots exit 0 when every invariant holds");
    let k = |e: &str| seen.get(e).copied().unwrap_or(0);
    assert_eq!(k("error"), 0, "the Python server's stream never failed: {seen:?}");
    assert!(k("crossed_in") > 0 && k("handoff_out") > 0, "ships crossed Python <-> Rust: {seen:?}");
}
