//! Jump gates across two real `starmesh replicant` processes (StarSystems
//! `alpha` and `beta`, tests/fixtures/gates-*.yaml) on loopback, with raw
//! ServerLink clients standing in for the game servers, on the embedded store
//! and on a real PostgreSQL. Faults are real: `STARMESH_CRASH_AT` makes a
//! replicant abort at a named step of the transfer (test-only fault
//! injection, see `replicant::gate`), `kill -9` by PID, server streams dropped.
//! "Exactly one" is always checked through both replicants' Admin service.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::http_get;
use common::{ServerClient, msg, write};
use starmesh_node::replicant::gate::{EXIT_OFFSET_KM, GATE_RADIUS_KM};
use starmesh_node::wire::pb::{self, replicant_message::Msg, server_message};

const BIN: &str = env!("CARGO_BIN_EXE_starmesh");
const SHIP: u64 = 42;
/// Absolute gate positions of the fixtures.
const ALPHA_GATE: (f64, f64, f64) = (5000.0, 0.0, 0.0);
const BETA_GATE: (f64, f64, f64) = (-8000.0, 0.0, 0.0);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn free_port() -> u16 {
    // The port is released at once and reused by the replicant we start (and
    // by its restarts, so its peer's `--gate-peer` stays right).
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One replicant process serving one StarSystem, restartable on the same
/// port and data; killed (SIGKILL by PID) when dropped.
struct Node {
    system: &'static str,
    store: Vec<String>,
    port: u16,
    peers: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    metrics: Option<SocketAddr>,
}

impl Node {
    fn new(system: &'static str, store: Vec<String>, dir: &Path) -> Node {
        Node {
            system,
            store,
            port: free_port(),
            peers: Vec::new(),
            log: dir.join(format!("{system}.log")),
            child: None,
            metrics: None,
        }
    }

    fn embedded(system: &'static str, dir: &Path) -> Node {
        let data = dir.join(format!("{system}-data")).display().to_string();
        Node::new(system, vec!["--data-dir".into(), data], dir)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn peer(&mut self, other: &Node) {
        self.peers.push(format!("{}={}", other.system, other.addr()));
    }

    /// Starts the replicant (optionally set to abort at `crash_at`) and waits
    /// until it has loaded its store.
    fn start(&mut self, crash_at: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log");
        let mut cmd = Command::new(BIN);
        cmd.arg("replicant")
            .arg("--system")
            .arg(fixture(&format!("gates-{}.yaml", self.system)))
            .args(["--listen", &self.addr().to_string(), "--metrics-listen", "127.0.0.1:0"])
            .args(&self.store)
            .env_remove("STARMESH_CRASH_AT")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for p in &self.peers {
            cmd.args(["--gate-peer", p]);
        }
        if let Some(step) = crash_at {
            cmd.env("STARMESH_CRASH_AT", step);
        }
        let mut child = cmd.spawn().expect("spawn starmesh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let metrics = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {line:?}; log:\n{}", self.logs()));
        self.child = Some(child);
        self.metrics = Some(metrics);
        let t = Instant::now();
        while http_get(metrics, "/readyz").0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{} not ready:\n{}",
                self.system,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to abort by itself (at its `STARMESH_CRASH_AT` step).
    fn wait_crashed(&mut self) {
        let child = self.child.as_mut().expect("running");
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                assert!(!st.success(), "{} exited cleanly instead of crashing", self.system);
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} did not crash at its step:\n{}",
                self.system,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
        assert!(self.logs().contains("STARMESH_CRASH_AT: aborting here on purpose"));
    }

    /// `kill -9` by PID.
    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = http_get(self.metrics.expect("started"), "/metrics");
        body.lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    async fn admin(&self) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
        pb::admin_client::AdminClient::connect(format!("http://{}", self.addr()))
            .await
            .expect("admin connects")
    }

    async fn lookup(&self, id: u64) -> pb::LookupResponse {
        self.admin().await.lookup(pb::LookupRequest { id }).await.expect("lookup").into_inner()
    }

    async fn counts(&self) -> pb::CountsResponse {
        self.admin().await.counts(pb::CountsRequest {}).await.expect("counts").into_inner()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn gate_enter(seq: u64, epoch: u64, id: u64, gate: &str) -> pb::ServerMessage {
    msg(server_message::Msg::GateEnter(pb::GateEnter { seq, epoch, id, gate: gate.into() }))
}

/// Polls `f` until it returns true, failing after 20 s with `what`.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ship is in exactly one of the two systems, and in transit in neither.
/// Returns which one holds it, checked by Lookup and by Counts.
async fn exactly_one(a: &Node, b: &Node, id: u64) -> &'static str {
    let (la, lb) = (a.lookup(id).await, b.lookup(id).await);
    assert!(!la.in_transit && !lb.in_transit, "still in transit: {la:?} {lb:?}");
    assert_eq!(
        u8::from(la.present) + u8::from(lb.present),
        1,
        "the ship must be in exactly one system: alpha {la:?}, beta {lb:?}"
    );
    let (ca, cb) = (a.counts().await, b.counts().await);
    assert_eq!(ca.entities + cb.entities, 1, "one entity in all: {ca:?} {cb:?}");
    assert_eq!(ca.in_transit_entities + cb.in_transit_entities, 0);
    if la.present { "alpha" } else { "beta" }
}

/// A server on `node` holding deep-space writes the ship at `at` and waits
/// until it is committed. Returns (client, epoch, seq, components written).
async fn ship_at(
    node: &Node,
    server: &str,
    at: (f64, f64, f64),
) -> (ServerClient, u64, u64, bytes::Bytes) {
    let mut s = ServerClient::connect(node.addr(), server).await;
    let epoch = s.grant_for("deep-space").await;
    s.send(write(1, epoch, SHIP, (at.0 - 500.0, at.1, at.2))).await;
    s.send(write(2, epoch, SHIP, (at.0, at.1 + 30.0, at.2))).await;
    s.committed(2).await;
    (s, epoch, 2, bytes::Bytes::from("state-2"))
}

async fn handoff_out(s: &mut ServerClient, id: u64) -> pb::EntityHandoff {
    s.until(|m| match m {
        Msg::HandoffOut(h) if h.entity.as_ref().is_some_and(|e| e.id == id) => Some(h.clone()),
        _ => None,
    })
    .await
}

async fn handoff_in(s: &mut ServerClient, id: u64) -> pb::EntityHandoff {
    s.until(|m| match m {
        Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == id) => Some(h.clone()),
        _ => None,
    })
    .await
}

async fn rejection(s: &mut ServerClient, seq: u64) -> i32 {
    s.until(|m| match m {
        Msg::Rejected(r) => r.first.iter().find(|f| f.seq == seq).map(|f| f.reason),
        _ => None,
    })
    .await
}

fn dist(p: &Option<pb::Vec3>, q: (f64, f64, f64)) -> f64 {
    let p = p.unwrap_or_default();
    ((p.x - q.0).powi(2) + (p.y - q.1).powi(2) + (p.z - q.2).powi(2)).sqrt()
}

fn pair(dir: &Path) -> (Node, Node) {
    let mut a = Node::embedded("alpha", dir);
    let mut b = Node::embedded("beta", dir);
    a.peer(&b);
    b.peer(&a);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_jumps_there_and_back_with_its_state_and_is_fenced_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(None);
    let mut sb = ServerClient::connect(b.addr(), "b-1").await;
    let b_epoch = sb.grant_for("deep-space").await;
    let (mut sa, epoch, _, _) = ship_at(&a, "a-1", ALPHA_GATE).await;

    // Refused, nothing changes: stale epoch, unknown gate, too far away.
    sa.send(gate_enter(10, epoch - 1, SHIP, "alpha-beta")).await;
    assert_eq!(rejection(&mut sa, 10).await, pb::RejectReason::StaleEpoch as i32);
    sa.send(gate_enter(11, epoch, SHIP, "nowhere")).await;
    assert_eq!(rejection(&mut sa, 11).await, pb::RejectReason::GateUnknown as i32);
    sa.send(write(12, epoch, SHIP, (ALPHA_GATE.0 + GATE_RADIUS_KM + 50.0, 0.0, 0.0))).await;
    sa.send(gate_enter(13, epoch, SHIP, "alpha-beta")).await;
    assert_eq!(rejection(&mut sa, 13).await, pb::RejectReason::GateTooFar as i32);
    assert!(a.lookup(SHIP).await.present);
    assert_eq!(b.lookup(SHIP).await, pb::LookupResponse::default());

    // Into the gate: the old owner is told to let go at once...
    sa.send(write(14, epoch, SHIP, (ALPHA_GATE.0, 40.0, 0.0))).await;
    sa.send(gate_enter(15, epoch, SHIP, "alpha-beta")).await;
    let out = handoff_out(&mut sa, SHIP).await;
    assert_eq!(out.to_territory, "gate:beta/beta-alpha");
    let left = out.entity.expect("state");
    // ...and the ship appears at beta's gate with its state, handed to beta's owner.
    let arrived = handoff_in(&mut sb, SHIP).await;
    assert_eq!(arrived.from_territory, "gate:alpha/alpha-beta");
    assert_eq!((arrived.to_territory.as_str(), arrived.epoch), ("deep-space", b_epoch));
    let e = arrived.entity.expect("state");
    assert_eq!((e.kind, &e.components), (1, &bytes::Bytes::from("state-14")));
    assert_eq!(e.components_version, left.components_version, "components untouched");
    assert!(e.version > left.version, "the version line continues");
    assert!((dist(&e.position, BETA_GATE) - EXIT_OFFSET_KM).abs() < 1e-6, "{e:?}");
    assert_eq!(e.location, "beta-alpha");
    eventually("alpha records the departure", || async { a.lookup(SHIP).await.departed }).await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    let la = a.lookup(SHIP).await;
    assert_eq!(la.transfer_id, format!("alpha/0/{SHIP}@{}", left.version));

    // The departed id stays fenced in alpha: a late write cannot re-create it.
    sa.send(write(16, epoch, SHIP, (0.0, 0.0, 0.0))).await;
    assert_eq!(rejection(&mut sa, 16).await, pb::RejectReason::GateInTransit as i32);
    sa.send(gate_enter(17, epoch, SHIP, "alpha-beta")).await;
    assert_eq!(rejection(&mut sa, 17).await, pb::RejectReason::GateInTransit as i32);
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");

    // And back: beta's server flies it into beta's gate; alpha takes it again
    // (the tombstone goes) and hands it to alpha's server.
    sb.send(write(1, b_epoch, SHIP, (BETA_GATE.0, 10.0, 0.0))).await;
    sb.send(gate_enter(2, b_epoch, SHIP, "beta-alpha")).await;
    assert_eq!(handoff_out(&mut sb, SHIP).await.to_territory, "gate:alpha/alpha-beta");
    let back = handoff_in(&mut sa, SHIP).await;
    assert_eq!(back.from_territory, "gate:beta/beta-alpha");
    let e = back.entity.expect("state");
    assert_eq!(e.components, bytes::Bytes::from("state-1"));
    assert!((dist(&e.position, ALPHA_GATE) - EXIT_OFFSET_KM).abs() < 1e-6);
    eventually("beta records the departure", || async { b.lookup(SHIP).await.departed }).await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "alpha");
    // Alpha's server simulates it again under its epoch.
    sa.send(write(18, back.epoch, SHIP, (4000.0, 0.0, 0.0))).await;
    sa.committed(18).await;
    assert!(!a.lookup(SHIP).await.departed);

    assert_eq!(a.metric("starmesh_gate_transfers_total{result=\"departed\"}"), 1.0);
    assert_eq!(a.metric("starmesh_gate_transfers_total{result=\"arrived\"}"), 1.0);
    assert_eq!(a.metric("starmesh_gate_transfers_total{result=\"rejected\"}"), 4.0);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"arrived\"}"), 1.0);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"departed\"}"), 1.0);
    assert_eq!(a.metric("starmesh_gate_in_transit_entities"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_crash_after_marking_in_transit_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(Some("gate-after-mark"));
    let (sa, epoch, _, components) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    // The transfer record is durable; alpha dies before calling beta.
    a.wait_crashed();
    drop(sa);
    assert!(!b.lookup(SHIP).await.present, "beta was never asked");
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"arrived\"}"), 0.0);

    // Restarted, alpha finds the record in transit and finishes the transfer.
    a.start(None);
    eventually("alpha resumes and the ship departs", || async { a.lookup(SHIP).await.departed })
        .await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    let e = b.lookup(SHIP).await.entity.expect("resident in beta");
    assert_eq!(e.components, components);
    assert!(a.logs().contains("resuming gate transfers left in transit"));

    // A server reconnecting to alpha is not handed the ship.
    let mut sa = ServerClient::connect(a.addr(), "a-1").await;
    sa.grant_for("deep-space").await;
    sa.send(write(1, 0, 7, (0.0, 0.0, 0.0))).await; // a marker: its rejection ends the wait
    let mut handed = false;
    sa.until(|m| match m {
        Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == SHIP) => {
            handed = true;
            None
        }
        Msg::Rejected(_) => Some(()),
        _ => None,
    })
    .await;
    assert!(!handed, "the departed ship must not be handed to alpha's server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_crash_before_the_record_is_written_keeps_the_ship_home() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(Some("gate-before-mark"));
    let (sa, epoch, _, components) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    // Out of alpha's world, but nothing durable yet: alpha dies.
    a.wait_crashed();
    drop(sa);
    a.start(None);
    // The transfer never happened: the ship is home, as last committed.
    assert_eq!(exactly_one(&a, &b, SHIP).await, "alpha");
    let la = a.lookup(SHIP).await;
    assert!(!la.departed && la.transfer_id.is_empty(), "{la:?}");
    assert_eq!(la.entity.expect("resident").components, components);
    // And it can still take the gate.
    let mut sa = ServerClient::connect(a.addr(), "a-1").await;
    let epoch = sa.grant_for("deep-space").await;
    sa.send(gate_enter(1, epoch, SHIP, "alpha-beta")).await;
    handoff_out(&mut sa, SHIP).await;
    eventually("the ship departs", || async { a.lookup(SHIP).await.departed }).await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_crash_after_the_ack_is_answered_again_by_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(Some("gate-after-ack"));
    let (sa, epoch, _, _) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    // Beta inserted and answered; alpha dies before recording the departure.
    a.wait_crashed();
    drop(sa);
    assert!(b.lookup(SHIP).await.present);
    a.start(None);
    eventually("alpha retries and records the departure", || async {
        a.lookup(SHIP).await.departed
    })
    .await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"arrived\"}"), 1.0);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"replayed\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_coming_back_before_the_source_settled_is_still_one_ship() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(Some("gate-after-ack"));
    let mut sb = ServerClient::connect(b.addr(), "b-1").await;
    let b_epoch = sb.grant_for("deep-space").await;
    let (sa, epoch, _, _) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    // Beta has the ship; alpha died before recording that it departed.
    a.wait_crashed();
    drop(sa);
    handoff_in(&mut sb, SHIP).await;
    // Beta's server flies it straight back while alpha is down: beta keeps
    // it in transit and retries.
    sb.send(write(1, b_epoch, SHIP, (BETA_GATE.0, 0.0, 20.0))).await;
    sb.send(gate_enter(2, b_epoch, SHIP, "beta-alpha")).await;
    handoff_out(&mut sb, SHIP).await;
    eventually("beta retries alpha", || async {
        b.metric("starmesh_gate_arrive_retries_total") >= 1.0
    })
    .await;
    // Alpha restarts with its own transfer still in transit and, in either
    // order, settles it and takes the ship back: one ship, home.
    a.start(None);
    eventually("beta records the departure", || async { b.lookup(SHIP).await.departed }).await;
    eventually("alpha holds the ship", || async { a.lookup(SHIP).await.present }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "alpha");
    let la = a.lookup(SHIP).await;
    assert!(!la.departed && la.transfer_id.is_empty(), "no tombstone left: {la:?}");
    // The ship is alive in alpha: a server there is handed it and may write it.
    let mut sa = ServerClient::connect(a.addr(), "a-1").await;
    let h = handoff_in(&mut sa, SHIP).await;
    sa.send(write(1, h.epoch, SHIP, (4000.0, 0.0, 0.0))).await;
    sa.committed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_crash_after_inserting_before_the_ack_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(Some("gate-after-arrive-commit"));
    a.start(None);
    let (sa, epoch, _, components) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    // Beta committed the ship and died before answering.
    b.wait_crashed();
    // Alpha keeps it in transit and retries while beta is down.
    let la = a.lookup(SHIP).await;
    assert!(la.in_transit && !la.present, "{la:?}");
    assert_eq!(a.counts().await.in_transit_entities, 1);
    eventually("alpha retries", || async { a.metric("starmesh_gate_arrive_retries_total") >= 2.0 })
        .await;
    assert!(!a.lookup(SHIP).await.departed);

    b.start(None);
    eventually("the retry is answered and alpha records the departure", || async {
        a.lookup(SHIP).await.departed
    })
    .await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    assert_eq!(b.lookup(SHIP).await.entity.expect("resident").components, components);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"replayed\"}"), 1.0);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"arrived\"}"), 0.0);
    drop(sa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transfer_and_target_down_still_one_ship() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    a.start(None);
    let (mut sa, epoch, _, components) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    handoff_out(&mut sa, SHIP).await;
    // The server dies mid-transfer (its stream closes), and beta is not even up.
    drop(sa);
    eventually("alpha notices the server is gone", || async {
        a.admin()
            .await
            .assignments(pb::AssignmentsRequest {})
            .await
            .is_ok_and(|r| r.into_inner().live_servers.is_empty())
    })
    .await;
    let la = a.lookup(SHIP).await;
    assert!(la.in_transit && !la.present, "{la:?}");
    // A kill -9 of alpha now changes nothing either: the record is durable.
    eventually("the record is durable", || async {
        a.metric("starmesh_gate_arrive_retries_total") >= 1.0
    })
    .await;
    a.kill_9();
    a.start(None);
    assert!(a.lookup(SHIP).await.in_transit);

    b.start(None);
    eventually("the transfer completes once beta is up", || async {
        a.lookup(SHIP).await.departed
    })
    .await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    assert_eq!(b.lookup(SHIP).await.entity.expect("resident").components, components);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_refuses_a_taken_id_and_the_ship_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(dir.path());
    b.start(None);
    a.start(None);
    // Beta already has a (different) entity with the ship's id.
    let (_sb, _, _, _) = ship_at(&b, "b-1", (0.0, 0.0, 0.0)).await;
    let (mut sa, epoch, _, _) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    handoff_out(&mut sa, SHIP).await;
    let back = handoff_in(&mut sa, SHIP).await;
    assert_eq!(back.from_territory, "gate:beta/beta-alpha");
    let e = back.entity.expect("state");
    assert!((dist(&e.position, ALPHA_GATE) - EXIT_OFFSET_KM).abs() < 1e-6, "outside the gate");
    assert_eq!(e.components, bytes::Bytes::from("state-2"));
    let la = a.lookup(SHIP).await;
    assert!(la.present && !la.in_transit && !la.departed, "{la:?}");
    assert_eq!(a.metric("starmesh_gate_transfers_total{result=\"returned\"}"), 1.0);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"refused\"}"), 1.0);
    // Beta's own entity is untouched.
    assert_eq!(b.lookup(SHIP).await.entity.expect("beta's").position, common::v(0.0, 30.0, 0.0));
    // The returned ship is simulated again.
    sa.send(write(4, back.epoch, SHIP, (4500.0, 0.0, 0.0))).await;
    sa.committed(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_survive_crashes_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = common::pg::Pg::init();
    pg.start().await;
    let (admin, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    // One statement each: CREATE DATABASE cannot run inside a (implicit) transaction.
    admin.batch_execute("CREATE DATABASE alpha").await.unwrap();
    admin.batch_execute("CREATE DATABASE beta").await.unwrap();
    drop(admin);
    let _ = conn.await;
    let store = |db: &str| {
        vec![
            "--store".to_string(),
            "postgres".into(),
            "--postgres-url".into(),
            pg.url().replace("dbname=postgres", &format!("dbname={db}")),
        ]
    };
    let mut a = Node::new("alpha", store("alpha"), dir.path());
    let mut b = Node::new("beta", store("beta"), dir.path());
    a.peer(&b);
    b.peer(&a);
    b.start(Some("gate-after-arrive-commit"));
    a.start(Some("gate-after-mark"));
    let (sa, epoch, _, components) = ship_at(&a, "a-1", ALPHA_GATE).await;
    sa.send(gate_enter(3, epoch, SHIP, "alpha-beta")).await;
    a.wait_crashed();
    drop(sa);
    a.start(None);
    // Alpha resumed from PostgreSQL and called beta, which committed and crashed.
    b.wait_crashed();
    assert!(a.lookup(SHIP).await.in_transit);
    b.start(None);
    eventually("the transfer completes", || async { a.lookup(SHIP).await.departed }).await;
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    // kill -9 both: what each committed is what each has.
    a.kill_9();
    b.kill_9();
    a.start(None);
    b.start(None);
    assert_eq!(exactly_one(&a, &b, SHIP).await, "beta");
    assert!(a.lookup(SHIP).await.departed);
    assert_eq!(b.lookup(SHIP).await.entity.expect("resident").components, components);
    assert_eq!(b.metric("starmesh_gate_transfers_total{result=\"replayed\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrive_requests_are_validated_and_unknown_gates_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, mut b) = pair(dir.path());
    b.start(None);
    let mut link = pb::gate_link_client::GateLinkClient::connect(format!("http://{}", b.addr()))
        .await
        .expect("connect");
    let good = pb::ArriveRequest {
        transfer_id: "alpha/0/42@3".into(),
        source_system: "alpha".into(),
        source_gate: "alpha-beta".into(),
        target_gate: "beta-alpha".into(),
        entity: Some(pb::EntityState {
            id: SHIP,
            kind: 1,
            position: common::v(5000.0, 0.0, 0.0),
            velocity: common::v(0.0, 0.0, 0.0),
            version: 3,
            components: bytes::Bytes::from_static(b"cargo"),
            ..Default::default()
        }),
    };
    // Invalid: a typed InvalidArgument, nothing inserted.
    let mut bad = good.clone();
    if let Some(e) = bad.entity.as_mut() {
        e.position = common::v(f64::NAN, 0.0, 0.0);
    }
    let s = link.arrive(bad).await.expect_err("NaN position");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("entity.position"), "{}", s.message());
    let s = link
        .arrive(pb::ArriveRequest { transfer_id: "has space".into(), ..good.clone() })
        .await
        .expect_err("bad transfer id");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = link.arrive(pb::ArriveRequest { entity: None, ..good.clone() }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // Valid but for a gate beta does not have: refused, nothing inserted.
    let r = link
        .arrive(pb::ArriveRequest { target_gate: "nowhere".into(), ..good.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.result, pb::ArriveResult::Refused as i32);
    assert!(!b.lookup(SHIP).await.present);
    // Valid: accepted once, then answered again without a second insert.
    let r = link.arrive(good.clone()).await.unwrap().into_inner();
    assert_eq!((r.result, r.replayed), (pb::ArriveResult::Accepted as i32, false));
    let r = link.arrive(good).await.unwrap().into_inner();
    assert_eq!((r.result, r.replayed), (pb::ArriveResult::Accepted as i32, true));
    assert_eq!(b.counts().await.entities, 1);
    assert_eq!(b.lookup(SHIP).await.entity.expect("resident").version, 4);
}
