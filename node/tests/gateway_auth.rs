//! Player authentication at a real gateway process: `starmesh replicant` on the test
//! world, its four game servers, and `starmesh gateway --player-token-key`, all child
//! processes on loopback; tokens minted by `starmesh token`. A valid token joins and
//! plays; missing, expired, forged and truncated tokens are refused with
//! `UNAUTHENTICATED` and the machine reason in `starmesh-auth-error`, and change nothing
//! (no join counted, no player, no ship); a player steers only its own ship.

mod mesh_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_support::{BIN, Proc, addr, http_get, wait_ready};
use prost::Message;
use starmesh_node::gateway::auth::TokenKey;
use starmesh_node::gateway::placement;
use starmesh_node::wire::pb::{self, player_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Client = pb::player_link_client::PlayerLinkClient<tonic::transport::Channel>;
type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

const KEY: &[u8] = b"an-example-player-token-key-of-40-bytes!";

fn s(v: &str) -> String {
    v.to_string()
}

struct World {
    _procs: Vec<Proc>,
    gateway: SocketAddr,
    gateway_metrics: SocketAddr,
    replicant: SocketAddr,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let sol = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml");
    let sol = sol.display().to_string();
    let key_file = dir.path().join("player-token-key");
    // A trailing newline, as `kubectl create secret --from-file` of an edited file has.
    std::fs::write(&key_file, [KEY, b"\n"].concat()).expect("key file");
    let data = dir.path().join("data").display().to_string();
    let (replicant, line) = Proc::spawn(
        dir.path(),
        "replicant",
        &[
            s("replicant"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--metrics-listen"),
            s("127.0.0.1:0"),
            s("--data-dir"),
            data,
            s("--system"),
            sol.clone(),
        ],
    );
    let (grpc, metrics) = (addr(&line, "grpc="), addr(&line, "metrics="));
    wait_ready(&replicant, metrics, Duration::from_secs(30));
    let mut procs = vec![replicant];
    for name in ["s-earth", "s-moon", "s-station", "s-deep"] {
        let (p, line) = Proc::spawn(
            dir.path(),
            name,
            &[
                s("server"),
                s("--replicant"),
                grpc.to_string(),
                s("--name"),
                s(name),
                s("--metrics"),
                s("127.0.0.1:0"),
            ],
        );
        wait_ready(&p, addr(&line, "metrics="), Duration::from_secs(30));
        procs.push(p);
    }
    let (gw, line) = Proc::spawn(
        dir.path(),
        "gateway",
        &[
            s("gateway"),
            s("--replicant"),
            grpc.to_string(),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--metrics"),
            s("127.0.0.1:0"),
            s("--system"),
            sol,
            s("--player-token-key"),
            key_file.display().to_string(),
        ],
    );
    let (gateway, gateway_metrics) = (addr(&line, "grpc="), addr(&line, "metrics="));
    wait_ready(&gw, gateway_metrics, Duration::from_secs(30));
    procs.push(gw);
    World { _procs: procs, gateway, gateway_metrics, replicant: grpc, key_file, _dir: dir }
}

/// `starmesh token NAME --player-token-key FILE`: the token on stdout.
fn mint_cli(key_file: &Path, name: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["token", name, "--player-token-key"])
        .arg(key_file)
        .args(["--ttl", "600s"])
        .output()
        .expect("run starmesh token");
    assert!(
        out.status.success(),
        "starmesh token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

fn metric(w: &World, name: &str) -> f64 {
    let (code, body) = http_get(w.gateway_metrics, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn join_req(token: &str) -> pb::JoinRequest {
    pb::JoinRequest { name: String::new(), token: token.to_string() }
}

/// The refusal is UNAUTHENTICATED with the expected machine reason.
fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, reason: &str, what: &str) {
    let st = r.expect_err(what);
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{what}: {st:?}");
    let got = st.metadata().get("starmesh-auth-error").and_then(|v| v.to_str().ok());
    assert_eq!(got, Some(reason), "{what}: {st:?}");
}

async fn play(
    c: &mut Client,
    token: &str,
) -> Result<tonic::Streaming<pb::PlayerUpdate>, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let hello = player_message::Msg::Hello(pb::PlayHello { token: token.to_string() });
    tx.send(pb::PlayerMessage { msg: Some(hello) }).await.expect("queue hello");
    // The sender lives as long as the stream: keep it in a task that holds it.
    tokio::spawn(async move {
        tx.closed().await;
    });
    c.play(ReceiverStream::new(rx)).await.map(|r| r.into_inner())
}

async fn lookup(a: &mut Admin, id: u64) -> pb::LookupResponse {
    a.lookup(pb::LookupRequest { id }).await.expect("lookup").into_inner()
}

async fn wait_ship(a: &mut Admin, id: u64) -> pb::EntityState {
    let t = Instant::now();
    loop {
        if let Some(e) = lookup(a, id).await.entity {
            return e;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "ship {id} never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_tokens_join_and_a_player_steers_only_its_own_ship() {
    let w = start();
    let mut c = Client::connect(format!("http://{}", w.gateway)).await.expect("connect gateway");
    let mut admin = Admin::connect(format!("http://{}", w.replicant)).await.expect("connect admin");
    let key = TokenKey::new(KEY.to_vec()).expect("key");
    let alice = mint_cli(&w.key_file, "alice");
    let now = starmesh_node::gateway::auth::now_unix();

    // Refused, each with its reason; none counts as a join or creates anything.
    refused(c.join(join_req("")).await, "Missing", "no token");
    refused(
        c.join(pb::JoinRequest { name: s("mallory"), token: String::new() }).await,
        "Missing",
        "a bare name",
    );
    refused(c.join(join_req(&key.mint("bob", now - 1).expect("mint"))).await, "Expired", "expired");
    let other = TokenKey::new(vec![7; 32]).expect("key");
    refused(
        c.join(join_req(&other.mint("bob", now + 600).expect("mint"))).await,
        "BadSignature",
        "another key",
    );
    // alice's signature on a payload naming bob.
    let bob_payload = key.mint("bob", now + 600).expect("mint");
    let forged = format!(
        "{}.{}",
        bob_payload.rsplit_once('.').expect("dot").0,
        alice.rsplit_once('.').expect("dot").1
    );
    refused(c.join(join_req(&forged)).await, "BadSignature", "forged");
    refused(c.join(join_req(&alice[..alice.len() - 5])).await, "Malformed", "truncated tag");
    refused(c.join(join_req(&alice[..10])).await, "Malformed", "truncated to 10");
    refused(c.join(join_req("dev.bob")).await, "Malformed", "a development token");
    refused(play(&mut c, &forged).await, "BadSignature", "forged at Play");
    refused(play(&mut c, "dev.bob").await, "Malformed", "a development token at Play");
    assert_eq!(metric(&w, "starmesh_gateway_joins_total"), 0.0, "no join counted");
    assert_eq!(metric(&w, "starmesh_gateway_players"), 0.0, "no player");
    assert_eq!(metric(&w, "starmesh_gateway_auth_refused_total"), 10.0);
    let bob_ship = placement::ship_of(placement::player_id("bob"));
    assert!(!lookup(&mut admin, bob_ship).await.present, "no ship for refused tokens");

    // A token names one player: another name with it is refused.
    let st = c
        .join(pb::JoinRequest { name: s("bob"), token: alice.clone() })
        .await
        .expect_err("alice's token for bob");
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");

    // Valid tokens join: the player and ship come from the token.
    let ja = c.join(join_req(&alice)).await.expect("alice joins").into_inner();
    assert_eq!(ja.player_id, placement::player_id("alice"));
    assert_eq!(ja.entity_id, placement::ship_of(ja.player_id));
    let bob = mint_cli(&w.key_file, "bob");
    let jb = c.join(join_req(&bob)).await.expect("bob joins").into_inner();
    assert_eq!(jb.entity_id, bob_ship);

    // Both play; alice thrusts. Only alice's ship moves; bob's holds still.
    let _sa = play(&mut c, &ja.token).await.expect("alice plays");
    let _sb = play(&mut c, &jb.token).await.expect("bob plays");
    wait_ship(&mut admin, ja.entity_id).await;
    let bob_before = wait_ship(&mut admin, bob_ship).await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::PlayerMessage {
        msg: Some(player_message::Msg::Hello(pb::PlayHello { token: ja.token.clone() })),
    })
    .await
    .expect("hello");
    let thrust = pb::ShipCommand {
        seq: 1,
        route: vec![],
        max_speed: 100.0,
        thrust: Some(pb::Vec3 { x: 50.0, y: 0.0, z: 0.0 }),
    };
    tx.send(pb::PlayerMessage { msg: Some(player_message::Msg::Input(thrust)) })
        .await
        .expect("thrust");
    let _s = c.play(ReceiverStream::new(rx)).await.expect("alice plays again").into_inner();
    let t = Instant::now();
    let moved = loop {
        let e = wait_ship(&mut admin, ja.entity_id).await;
        if e.velocity.as_ref().is_some_and(|v| (v.x - 50.0).abs() < 1e-9) {
            break e;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "alice's ship never took the thrust: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state = pb::ShipState::decode(moved.components.as_ref()).expect("ship state");
    assert_eq!((state.player_id, state.last_input_seq), (ja.player_id, 1));
    let bob_after = wait_ship(&mut admin, bob_ship).await;
    let bob_state = pb::ShipState::decode(bob_after.components.as_ref()).expect("ship state");
    assert_eq!(bob_state.last_input_seq, 0, "bob's ship took no command");
    assert_eq!(bob_after.velocity, bob_before.velocity, "bob's ship was not steered");
    assert_eq!(metric(&w, "starmesh_gateway_joins_total"), 2.0);

    // `starmesh bots --player-token-key` mints each bot's token from the same key file.
    let log = w.key_file.with_file_name("bots.log");
    let child = std::process::Command::new(BIN)
        .args(["bots", "--gateway", &w.gateway.to_string(), "-n", "3", "--duration", "3s"])
        .args(["--prefix", "authbot", "--json", "--player-token-key"])
        .arg(&w.key_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn bots");
    let mut bots = Proc { name: s("bots"), stdout: None, log, child };
    bots.stdout = bots.child.stdout.take().map(std::io::BufReader::new);
    let (code, report) = mesh_support::bots_report(&mut bots, Duration::from_secs(60));
    assert_eq!(code, Some(0), "bots: {report}");
    assert_eq!(report["connected"], 3, "every bot joined with its minted token: {report}");
    assert_eq!(metric(&w, "starmesh_gateway_joins_total"), 5.0);
}

/// Waits for the gateway to close a raw connection; returns how long that took.
fn closed_after(mut c: std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let t = Instant::now();
    c.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            // The server's own SETTINGS may come first; the close is what counts.
            Ok(n) if n > 0 => continue,
            Ok(_) => return t.elapsed(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {limit:?}")
            }
            Err(_) => return t.elapsed(),
        }
    }
}

/// A connection that never completes the HTTP/2 handshake (silent, or a few bytes then
/// nothing: slowloris) is closed after the handshake deadline; a real client that
/// connected and then idles past it keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_are_closed() {
    use starmesh_node::gateway::deadline::HANDSHAKE_TIMEOUT;
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).expect("key file");
    // No replicant: Join and the handshake need none.
    let (_gw, line) = Proc::spawn(
        dir.path(),
        "gateway",
        &[
            s("gateway"),
            s("--replicant"),
            s("127.0.0.1:9"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--metrics"),
            s("127.0.0.1:0"),
            s("--player-token-key"),
            key_file.display().to_string(),
        ],
    );
    let gw = addr(&line, "grpc=");
    let mut c = Client::connect(format!("http://{gw}")).await.expect("connect");
    let limit = HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    let silent = std::net::TcpStream::connect(gw).expect("tcp");
    let mut dribble = std::net::TcpStream::connect(gw).expect("tcp");
    dribble.write_all(b"PRI * HT").expect("a few bytes");
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = std::thread::spawn(move || closed_after(silent, limit));
        let b = closed_after(dribble, limit);
        (a.join().expect("join"), b)
    })
    .await
    .expect("blocking");
    for (what, took) in [("silent", a), ("slowloris", b)] {
        assert!(
            took + Duration::from_millis(500) >= HANDSHAKE_TIMEOUT,
            "{what} closed early: {took:?}"
        );
    }
    // The client connected before: its connection outlived the deadline and still works.
    let key = TokenKey::new(KEY.to_vec()).expect("key");
    let token = key.mint("carol", starmesh_node::gateway::auth::now_unix() + 60).expect("mint");
    let j = c.join(join_req(&token)).await.expect("an idle client still joins").into_inner();
    assert_eq!(j.player_id, placement::player_id("carol"));
}

/// A session lasts no longer than its token: at the expiry the gateway ends the Play stream
/// with `Unauthenticated` (reason `Expired`), and the player must rejoin with a fresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_ends_when_its_token_expires() {
    let w = start();
    let mut c = Client::connect(format!("http://{}", w.gateway)).await.expect("connect gateway");
    let key = TokenKey::new(KEY.to_vec()).expect("key");
    let now = starmesh_node::gateway::auth::now_unix();
    // Whole seconds: the expiry is at a second boundary 3 to 4 s from now.
    let token = key.mint("dora", now + 4).expect("mint");
    c.join(join_req(&token)).await.expect("joins while the token holds");
    let started = std::time::Instant::now();
    let mut stream = play(&mut c, &token).await.expect("plays while the token holds");
    let mut bubbles = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
            Ok(Ok(Some(u))) => {
                if matches!(u.msg, Some(pb::player_update::Msg::Bubble(_))) {
                    bubbles += 1;
                }
            }
            Ok(Ok(None)) => panic!("the stream ended without a status after {bubbles} bubbles"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the session outlived its token by more than 10 s"),
        }
    };
    let lasted = started.elapsed();
    assert!(bubbles > 0, "the player was served before the expiry");
    refused(Err::<(), _>(ended), "Expired", "a session past its token's expiry");
    assert!(
        lasted >= Duration::from_secs(2) && lasted < Duration::from_secs(8),
        "ended at the expiry, not before or long after: {lasted:?}"
    );
    // A fresh token plays again.
    let fresh = key.mint("dora", starmesh_node::gateway::auth::now_unix() + 600).expect("mint");
    let mut again = play(&mut c, &fresh).await.expect("a fresh token plays");
    let first = tokio::time::timeout(Duration::from_secs(10), again.message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "served again: {first:?}");
}
