//! Jump gates end to end, as real processes on loopback: two StarSystems
//! (`alpha`, `beta`), each with its replicant (`--gate-peer` to the other),
//! two game servers (`--system`, so they take gates and re-route arrivals)
//! and a gateway (`--gateway-peer` to the other's), and a `starmesh bots`
//! process whose ships fly a route that ends in alpha's gate. The bots follow
//! their ships to beta's gateway (`Transferred`). Checked through the bots'
//! report and through both replicants' Admin `Lookup`/`Counts`: every ship
//! is in exactly one system, none lost, none duplicated, state intact.
//!
//! The second test does the same while beta's replicant is `kill -9`ed (ships
//! wait in transit, then arrive after it restarts on the same data), while
//! the alpha server that owns the gate's territory is `kill -9`ed, and while
//! the beta server that owns the gate's exit is `kill -9`ed as ships arrive.
//! The third stops a bots run with SIGINT (Ctrl-C): it still reports.
//! Every child is SIGKILLed by PID when its guard drops.

mod mesh_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_support::{Proc, addr, bots_report, wait_ready};
use prost::Message;
use starmesh_node::gateway::placement;
use starmesh_node::wire::pb;

const ALPHA: &str = r#"
apiVersion: starmesh.dev/v1alpha1
kind: StarSystem
metadata: {name: alpha}
spec:
  star: {name: alpha-star, radius: 10}
  locations:
    - {name: home, kind: planet, position: [100000, 0, 0], radius: 30000}
    - {name: home-port, kind: station, parent: home, position: [5000, 0, 0], radius: 50}
    - {name: far-port, kind: station, position: [0, 100000, 0], radius: 50}
  jumpGates:
    - name: alpha-beta
      position: [-100000, 0, 0]
      target: {system: beta, gate: beta-alpha}
---
apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata: {name: alpha}
spec:
  systemRef: alpha
  servers:
    - {name: a-home, territories: [home]}
    - {name: a-deep, territories: [deep-space]}
"#;

const BETA: &str = r#"
apiVersion: starmesh.dev/v1alpha1
kind: StarSystem
metadata: {name: beta}
spec:
  star: {name: beta-star, radius: 10}
  locations:
    - {name: rock, kind: planet, position: [0, -100000, 0], radius: 30000}
    - {name: rock-port, kind: station, parent: rock, position: [0, 3000, 0], radius: 50}
    - {name: drift-port, kind: station, position: [-80000, 0, 0], radius: 50}
  jumpGates:
    - name: beta-alpha
      position: [100000, 0, 0]
      target: {system: alpha, gate: alpha-beta}
---
apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata: {name: beta}
spec:
  systemRef: beta
  servers:
    - {name: b-rock, territories: [rock]}
    - {name: b-deep, territories: [deep-space]}
"#;

const BETA_DOCKS: [&str; 2] = ["rock-port", "drift-port"];

fn s(v: &str) -> String {
    v.to_string()
}

fn free_port() -> u16 {
    // Released at once and reused by the process we start (and by its restart,
    // so the peers' `--gate-peer` / `--gateway-peer` stay right).
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One StarSystem: its replicant (restartable on the same port and data),
/// servers and gateway.
struct System {
    name: &'static str,
    file: PathBuf,
    dir: PathBuf,
    grpc: SocketAddr,
    gateway_addr: SocketAddr,
    replicant: Option<Proc>,
    restarts: u32,
    servers: Vec<(String, Proc, SocketAddr)>,
    gateway: Option<Proc>,
}

impl System {
    fn new(dir: &Path, name: &'static str, yaml: &str) -> System {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).expect("write the system");
        let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
        System {
            name,
            file,
            dir: dir.to_path_buf(),
            grpc: lo(free_port()),
            gateway_addr: lo(free_port()),
            replicant: None,
            restarts: 0,
            servers: Vec::new(),
            gateway: None,
        }
    }

    fn start_replicant(&mut self, peer: (&str, SocketAddr)) {
        let data = self.dir.join(format!("{}-data", self.name)).display().to_string();
        let label = format!("{}-replicant-{}", self.name, self.restarts);
        self.restarts += 1;
        let (p, line) = Proc::spawn(
            &self.dir,
            &label,
            &[
                s("replicant"),
                s("--listen"),
                self.grpc.to_string(),
                s("--metrics-listen"),
                s("127.0.0.1:0"),
                s("--data-dir"),
                data,
                s("--system"),
                self.file.display().to_string(),
                s("--gate-peer"),
                format!("{}={}", peer.0, peer.1),
            ],
        );
        wait_ready(&p, addr(&line, "metrics="), Duration::from_secs(30));
        self.replicant = Some(p);
    }

    fn start_servers(&mut self, names: &[&str]) {
        for name in names {
            let (p, line) = Proc::spawn(
                &self.dir,
                &format!("{}-server-{name}", self.name),
                &[
                    s("server"),
                    s("--replicant"),
                    self.grpc.to_string(),
                    s("--name"),
                    s(name),
                    s("--metrics"),
                    s("127.0.0.1:0"),
                    s("--system"),
                    self.file.display().to_string(),
                ],
            );
            let metrics = addr(&line, "metrics=");
            wait_ready(&p, metrics, Duration::from_secs(30));
            self.servers.push((s(name), p, metrics));
        }
    }

    fn start_gateway(&mut self, peer: &System) {
        let (p, line) = Proc::spawn(
            &self.dir,
            &format!("{}-gateway", self.name),
            &[
                s("gateway"),
                s("--replicant"),
                self.grpc.to_string(),
                s("--listen"),
                self.gateway_addr.to_string(),
                s("--metrics"),
                s("127.0.0.1:0"),
                s("--system"),
                self.file.display().to_string(),
                s("--gateway-peer"),
                format!("{}={}", peer.name, peer.gateway_addr),
                // Few players: a few links are plenty (and start fast).
                s("--replicant-links"),
                s("4"),
            ],
        );
        wait_ready(&p, addr(&line, "metrics="), Duration::from_secs(30));
        self.gateway = Some(p);
    }

    fn kill_server(&mut self, name: &str) {
        let (_, p, _) = self.servers.iter_mut().find(|(n, _, _)| n == name).expect("server");
        p.kill_9();
    }

    /// Each server's jump-gate events, from its `/metrics` (none for a dead one).
    fn gate_events(&self) -> String {
        let mut out = String::new();
        for (name, _, metrics) in &self.servers {
            let (_, text) = mesh_support::http_get(*metrics, "/metrics");
            let events: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("starmesh_server_gate_events_total"))
                .collect();
            out += &format!("{name}: {events:?}\n");
        }
        out
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.replicant.iter().chain(self.gateway.iter()) {
            out += &format!("--- {}\n{}\n", p.name, p.log_tail());
        }
        for (_, p, _) in &self.servers {
            out += &format!("--- {}\n{}\n", p.name, p.log_tail());
        }
        out
    }
}

struct World {
    dir: tempfile::TempDir,
    alpha: System,
    beta: System,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut alpha = System::new(dir.path(), "alpha", ALPHA);
        let mut beta = System::new(dir.path(), "beta", BETA);
        alpha.start_replicant((beta.name, beta.grpc));
        beta.start_replicant((alpha.name, alpha.grpc));
        alpha.start_servers(&["a-home", "a-deep"]);
        beta.start_servers(&["b-rock", "b-deep"]);
        alpha.start_gateway(&beta);
        beta.start_gateway(&alpha);
        World { dir, alpha, beta }
    }

    /// `starmesh bots` on alpha's gateway; `gate_share` of the routes end in the gate.
    fn bots(&self, n: usize, duration: &str, prefix: &str, gate_share: &str) -> Proc {
        let log = self.dir.path().join(format!("bots-{prefix}.log"));
        let mut child = Command::new(mesh_support::BIN)
            .args([
                s("bots"),
                s("--gateway"),
                self.alpha.gateway_addr.to_string(),
                s("-n"),
                n.to_string(),
                s("--duration"),
                s(duration),
                s("--prefix"),
                s(prefix),
                s("--gate-share"),
                s(gate_share),
                s("--gate-bound"),
                s("25s"),
                s("--json"),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("create log")))
            .spawn()
            .expect("spawn bots");
        let stdout = child.stdout.take().map(std::io::BufReader::new);
        Proc { name: format!("bots-{prefix}"), child, stdout, log }
    }

    fn logs(&self) -> String {
        format!("{}{}", self.alpha.logs(), self.beta.logs())
    }
}

async fn admin(grpc: SocketAddr) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    let t = Instant::now();
    loop {
        match pb::admin_client::AdminClient::connect(format!("http://{grpc}")).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "admin {grpc}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn counts(grpc: SocketAddr) -> pb::CountsResponse {
    admin(grpc).await.counts(pb::CountsRequest {}).await.expect("counts").into_inner()
}

async fn lookup(grpc: SocketAddr, id: u64) -> pb::LookupResponse {
    admin(grpc).await.lookup(pb::LookupRequest { id }).await.expect("lookup").into_inner()
}

/// The ships of bots `prefix-0..n` (the gateway's development identities).
fn ships(prefix: &str, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .map(|i| {
            let p = placement::player_id(&format!("{prefix}-{i}"));
            (p, placement::ship_of(p))
        })
        .collect()
}

/// Waits until no ship is in transit in alpha, then checks every ship is in
/// exactly one system: in beta (alpha holds its departed tombstone), intact.
async fn every_ship_in_exactly_one_system(w: &World, prefix: &str, n: usize) {
    let t = Instant::now();
    loop {
        let c = counts(w.alpha.grpc).await;
        if c.in_transit_entities == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "still in transit: {c:?}\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut in_beta = 0;
    for (player, id) in ships(prefix, n) {
        let a = lookup(w.alpha.grpc, id).await;
        let b = lookup(w.beta.grpc, id).await;
        assert!(
            a.present != b.present,
            "ship {id} must be in exactly one system: alpha {a:?} beta {b:?}\n{}",
            w.logs()
        );
        assert!(!a.in_transit && !b.in_transit, "{a:?} {b:?}");
        if b.present {
            in_beta += 1;
            assert!(a.departed, "alpha keeps the tombstone of a departed ship: {a:?}");
            let e = b.entity.expect("resident in beta");
            let st = pb::ShipState::decode(e.components.as_ref()).expect("ship state");
            assert_eq!(st.player_id, player, "components crossed intact");
            assert!(st.last_input_seq > 0, "the inputs applied in alpha came along: {st:?}");
            assert!(
                st.route.iter().all(|w| BETA_DOCKS.contains(&w.name.as_str())),
                "a new route in beta: {:?}",
                st.route
            );
        }
    }
    assert_eq!(in_beta, n, "every ship flew through the gate\n{}", w.logs());
    let ca = counts(w.alpha.grpc).await;
    let cb = counts(w.beta.grpc).await;
    eprintln!(
        "alpha: {} entities, beta: {} entities, in transit: {}",
        ca.entities, cb.entities, ca.in_transit_entities
    );
    assert_eq!(cb.entities, n as u64, "nothing duplicated in beta: {cb:?}");
    assert_eq!(ca.entities, 0, "nothing left behind in alpha: {ca:?}");
}

async fn report(bots: Proc) -> (Option<i32>, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let mut bots = bots;
        let r = bots_report(&mut bots, Duration::from_secs(90));
        drop(bots);
        r
    })
    .await
    .expect("join")
}

fn check_report(w: &World, code: Option<i32>, r: &serde_json::Value, n: usize) {
    eprintln!("bots report: {r:#}");
    let num = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(num("players"), n as u64);
    assert_eq!(num("connected"), n as u64, "{}", w.logs());
    assert_eq!(num("entities_lost"), 0, "no ship lost\n{}", w.logs());
    assert_eq!(num("entities_duplicated"), 0, "no ship duplicated\n{}", w.logs());
    assert_eq!(num("gate_transfers"), n as u64, "every bot followed its ship\n{}", w.logs());
    assert_eq!(num("gate_gaps_over_bound"), 0);
    assert_eq!(num("gate_unfollowed"), 0);
    assert_eq!(num("gate_seen_in_both"), 0, "never in both systems");
    assert_eq!(code, Some(0), "bots exit 0 when every invariant holds");
}

/// Bots per test; `STARMESH_GATE_BOTS` raises it for a heavier run.
fn bots_n() -> usize {
    std::env::var("STARMESH_GATE_BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_jump_and_their_players_follow_them() {
    let w = World::start();
    let n = bots_n();
    let bots = w.bots(n, "15s", "jump", "1");
    let (code, r) = report(bots).await;
    check_report(&w, code, &r, n);
    let gap = r["gate_gap_ms_max"].as_f64().unwrap_or(f64::MAX);
    eprintln!("longest jump (last sight in alpha to first in beta): {gap:.0} ms");
    every_ship_in_exactly_one_system(&w, "jump", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jumps_survive_kill_9_of_the_target_replicant_and_a_server() {
    let mut w = World::start();
    let n = bots_n();
    let bots = w.bots(n, "30s", "crash", "1");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The target replicant dies before any ship gets there.
    if let Some(p) = w.beta.replicant.as_mut() {
        p.kill_9();
    }
    // Ships enter the gate meanwhile: alpha holds them in transit (in neither
    // system's world), retrying the arrival.
    let t = Instant::now();
    loop {
        let c = counts(w.alpha.grpc).await;
        if c.in_transit_entities > 0 {
            eprintln!(
                "{} ships in transit while beta is down ({:?})",
                c.in_transit_entities,
                t.elapsed()
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no ship entered the gate\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While ships are entering the gate, the server that owns alpha's deep
    // space (where the gate is) dies: a-home takes the territory over and
    // sends the GateEnter of the ships still to come.
    w.alpha.kill_server("a-deep");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    w.beta.start_replicant((w.alpha.name, w.alpha.grpc));
    eprintln!("beta's replicant restarted on its data, ready in {:?}", restarted.elapsed());
    // And the beta server that owns the gate's exit (deep space) dies while
    // ships arrive: b-rock takes it over, with the ships that came through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.beta.kill_server("b-deep");
    let (code, r) = report(bots).await;
    check_report(&w, code, &r, n);
    eprint!("{}{}", w.alpha.gate_events(), w.beta.gate_events());
    every_ship_in_exactly_one_system(&w, "crash", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_stopped_by_ctrl_c_still_report() {
    let w = World::start();
    // No gate: a ship mid-jump at the stop would be between systems.
    let bots = w.bots(4, "120s", "stop", "0");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-INT", &bots.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not send SIGINT");
    let (code, r) = report(bots).await;
    eprintln!("report {:?} after SIGINT: {r:#}", sent.elapsed());
    assert!(sent.elapsed() < Duration::from_secs(10), "bots stop promptly");
    assert_eq!(r["stopped_early"].as_bool(), Some(true));
    assert_eq!(r["connected"].as_u64(), Some(4));
    assert_eq!(r["entities_lost"].as_u64(), Some(0), "{r}\n{}", w.logs());
    assert_eq!(code, Some(0));
}
