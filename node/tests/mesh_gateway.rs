//! The gateway in process over loopback gRPC: a replicant on the test world,
//! its four game servers (the example game), and a gateway. Floods are
//! rate-limited (and reported to the flooder) without ending its stream; an
//! invalid or oversized message ends only its own stream, with a typed error;
//! a player that stops reading does not slow anyone else, and its pending
//! bubble stays bounded; a replicant restart is hidden from players (their
//! streams stay open, their ships come back).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use starmesh_node::gateway::{self, GatewayConfig, placement::World};
use starmesh_node::server::{self, ServerConfig, game::ExampleGame, metrics::Metrics};
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::wire::pb::{self, player_message, player_update};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Client = pb::player_link_client::PlayerLinkClient<tonic::transport::Channel>;

struct Mesh {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    replicant: starmesh_node::replicant::Running,
    servers: Vec<tokio::task::JoinHandle<()>>,
    gateway: gateway::Running,
}

async fn mesh(input_rate: f64) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let replicant = start(&sol(), fast_config(), store.clone()).await;
    let servers = ["s-earth", "s-moon", "s-station", "s-deep"]
        .iter()
        .map(|name| {
            let cfg = ServerConfig {
                replicant: replicant.grpc_addr.to_string(),
                name: name.to_string(),
                tick_hz: 50,
            };
            let m = Arc::new(Metrics::new(cfg.period().as_secs_f64()));
            tokio::spawn(server::run(cfg, ExampleGame, m))
        })
        .collect();
    let cfg = GatewayConfig {
        replicant: replicant.grpc_addr.to_string(),
        input_rate,
        input_burst: input_rate,
        bubble_radius: 2000.0,
    };
    let world = World::load(&[sol_path()]).unwrap();
    let lo = "127.0.0.1:0".parse().unwrap();
    let gateway = gateway::serve(cfg, world, lo, lo).await.unwrap();
    let t = Instant::now();
    while !gateway.hub.connected() {
        assert!(t.elapsed() < Duration::from_secs(10), "gateway never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Mesh { _dir: dir, store, replicant, servers, gateway }
}

impl Mesh {
    async fn client(&self) -> Client {
        pb::player_link_client::PlayerLinkClient::connect(format!(
            "http://{}",
            self.gateway.grpc_addr
        ))
        .await
        .unwrap()
    }

    async fn stop(self) {
        for s in self.servers {
            s.abort();
        }
        self.replicant.shutdown().await;
    }
}

/// Joins and opens the Play stream; returns the input sender and the updates.
async fn play(
    c: &mut Client,
    name: &str,
) -> (pb::JoinResponse, mpsc::Sender<pb::PlayerMessage>, tonic::Streaming<pb::PlayerUpdate>) {
    let j = c
        .join(pb::JoinRequest { name: name.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::PlayerMessage {
        msg: Some(player_message::Msg::Hello(pb::PlayHello { token: j.token.clone() })),
    })
    .await
    .unwrap();
    let s = c.play(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (j, tx, s)
}

fn cmd(seq: u64) -> pb::PlayerMessage {
    pb::PlayerMessage {
        msg: Some(player_message::Msg::Input(pb::ShipCommand {
            seq,
            route: vec![],
            max_speed: 100.0,
            thrust: None,
        })),
    }
}

/// Reads until the own ship shows up in the bubble.
async fn until_own_ship(s: &mut tonic::Streaming<pb::PlayerUpdate>, ship: u64) {
    use pb::entity_update::Change;
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(15), "own ship never appeared");
        let m = tokio::time::timeout(Duration::from_secs(15), s.message()).await.unwrap().unwrap();
        if let Some(pb::PlayerUpdate { msg: Some(player_update::Msg::Bubble(b)) }) = m
            && b.updates.iter().any(|u| matches!(&u.change, Some(Change::Enter(e)) if e.id == ship))
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_and_bad_messages_end_only_their_stream() {
    let m = mesh(10.0).await;
    let mut c = m.client().await;

    // A flood: far more than 10 inputs/s. The stream stays up, the excess is
    // dropped and the flooder is told how much.
    let (j, tx, mut s) = play(&mut c, "flooder").await;
    until_own_ship(&mut s, j.entity_id).await;
    for seq in 1..=500 {
        tx.send(cmd(seq)).await.unwrap();
    }
    let mut dropped = 0;
    let t = Instant::now();
    while dropped < 400 && t.elapsed() < Duration::from_secs(10) {
        if let Ok(Ok(Some(u))) = tokio::time::timeout(Duration::from_secs(1), s.message()).await
            && let Some(player_update::Msg::InputsDropped(n)) = u.msg
        {
            dropped += n;
        }
    }
    assert!(dropped >= 400, "the flooder is told its inputs were dropped ({dropped})");
    let limited = m.gateway.hub.metrics.inputs_rate_limited.get();
    assert!(limited >= 400, "{limited}");
    // Still connected: more bubble updates arrive.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.message()).await.unwrap().unwrap().is_some()
    );

    // An invalid command (a NaN waypoint) ends that stream with InvalidArgument...
    let (_, tx2, mut s2) = play(&mut c, "vandal").await;
    let bad = pb::ShipCommand {
        seq: 1,
        route: vec![pb::Waypoint {
            name: "x".into(),
            position: Some(pb::Vec3 { x: f64::NAN, y: 0.0, z: 0.0 }),
            radius: 1.0,
        }],
        max_speed: 1.0,
        thrust: None,
    };
    tx2.send(pb::PlayerMessage { msg: Some(player_message::Msg::Input(bad)) }).await.unwrap();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), s2.message()).await.unwrap() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(st) => break st,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // ...an oversized one ends its stream too...
    let (_, tx3, mut s3) = play(&mut c, "giant").await;
    let huge = pb::ShipCommand {
        seq: 1,
        route: vec![pb::Waypoint { name: "x".repeat(64 * 1024), position: None, radius: 0.0 }],
        max_speed: 1.0,
        thrust: None,
    };
    tx3.send(pb::PlayerMessage { msg: Some(player_message::Msg::Input(huge)) }).await.unwrap();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), s3.message()).await.unwrap() {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(st) => break Some(st.code()),
        }
    };
    assert!(ended.is_some_and(|c| c != tonic::Code::Ok), "{ended:?}");

    // ...bad credentials and names are refused...
    let (tx4, rx4) = mpsc::channel(4);
    tx4.send(pb::PlayerMessage {
        msg: Some(player_message::Msg::Hello(pb::PlayHello { token: "forged".into() })),
    })
    .await
    .unwrap();
    let st = c.play(ReceiverStream::new(rx4)).await.expect_err("refused");
    assert_eq!(st.code(), tonic::Code::Unauthenticated);
    let st = c
        .join(pb::JoinRequest { name: "".into(), ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(st.code(), tonic::Code::InvalidArgument);

    // ...and the flooder was never disturbed by any of it.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.message()).await.unwrap().unwrap().is_some()
    );
    drop(tx);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_slows_nobody_and_stays_bounded() {
    let m = mesh(50.0).await;
    // A tiny HTTP/2 stream window: the sloth's unread bytes back up into the
    // gateway after 1 KiB instead of after the default 64 KiB.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", m.gateway.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut c = pb::player_link_client::PlayerLinkClient::new(ch);
    // The sloth's bubble keeps changing (the reader's ship moves next to it)
    // but it never reads a byte after its ship appears.
    let (js, _txs, mut sloth) = play(&mut c, "sloth").await;
    until_own_ship(&mut sloth, js.entity_id).await;
    let mut c2 = m.client().await; // its own connection: HTTP/2 flow control is per connection too
    let (jr, txr, mut reader) = play(&mut c2, "reader").await;
    until_own_ship(&mut reader, jr.entity_id).await;
    // Keep the reader's ship changing (every probe changes its components).
    let probe = tokio::spawn(async move {
        for seq in 1..=200u64 {
            if txr.send(cmd(seq)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let u =
            tokio::time::timeout(Duration::from_secs(2), reader.message()).await.unwrap().unwrap();
        assert!(u.is_some(), "the reader stays connected");
        gaps.push(last.elapsed());
        last = Instant::now();
    }
    probe.abort();
    gaps.sort();
    let worst = gaps.last().copied().unwrap_or_default();
    assert!(worst < Duration::from_millis(1000), "the reader was slowed down: worst gap {worst:?}");
    assert!(gaps.len() > 40, "the reader kept getting updates: {}", gaps.len());
    let coalesced = m.gateway.hub.metrics.batches_coalesced.get();
    assert!(coalesced > 0, "the sloth's stale updates were merged, not queued");
    assert_eq!(m.gateway.hub.metrics.bubbles_overflowed.get(), 0);
    drop(sloth);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicant_restart_is_hidden_from_players() {
    use pb::entity_update::Change;
    let mut m = mesh(50.0).await;
    let mut c = m.client().await;
    let (j, tx, mut s) = play(&mut c, "survivor").await;
    until_own_ship(&mut s, j.entity_id).await;
    // Let the ship's creation be committed before the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = m.replicant.grpc_addr;
    m.replicant.shutdown().await;
    let metrics = "127.0.0.1:0".parse().unwrap();
    // The same store and port: servers and gateway reconnect on their own.
    let r = starmesh_node::replicant::start(&sol(), fast_config(), m.store.clone(), addr, metrics)
        .await
        .expect("restart on the same port");
    tokio::time::timeout(Duration::from_secs(30), r.loaded()).await.expect("reloads");
    m.replicant = r;
    // The player's stream never ended; its ship is back in its bubble, and
    // inputs reach it again.
    let t = Instant::now();
    let mut seq = 0;
    let mut applied = false;
    while !applied {
        assert!(t.elapsed() < Duration::from_secs(20), "ship or inputs never came back");
        seq += 1;
        tx.send(cmd(seq)).await.unwrap();
        let u = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("updates resume")
            .expect("the player's stream survives a replicant restart");
        let Some(pb::PlayerUpdate { msg: Some(player_update::Msg::Bubble(b)) }) = u else {
            continue;
        };
        for up in &b.updates {
            let comps = match &up.change {
                Some(Change::Enter(e)) if e.id == j.entity_id => Some(e.components.clone()),
                Some(Change::Delta(d)) if d.id == j.entity_id => d.components.clone(),
                _ => None,
            };
            if let Some(c) = comps
                && let Ok(st) = <pb::ShipState as prost::Message>::decode(c.as_ref())
                && st.last_input_seq > 0
                && m.gateway.hub.metrics.replicant_reconnects.get() > 0
            {
                applied = true;
            }
        }
    }
    assert!(m.gateway.hub.metrics.replicant_reconnects.get() > 0);
    drop(tx);
    m.stop().await;
}
