//! End-to-end over real loopback gRPC: authority, fencing, handoff,
//! takeover, streaming, gateways, admin, and hostile input.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::*;
use prost::Message;
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::wire::pb::{
    self, entity_update::Change, replicant_message::Msg, server_message,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

fn store(dir: &tempfile::TempDir) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(dir.path()).unwrap())
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn writes_are_acked_after_commit_and_stale_epochs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let mut s1 = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s1.grant_for("earth").await;
    s1.send(write(1, earth, 7, (1000.0, 0.0, 0.0))).await;
    // `Committed.tick` is the tick of the group commit that made seq 1 durable.
    let tick = s1
        .until(|m| match m {
            Msg::Committed(c) if c.seq >= 1 => Some(c.tick),
            _ => None,
        })
        .await;
    let now = r.shared.lock().world.tick();
    assert!(tick > 0 && tick < now, "committed tick {tick} is a real past tick (now {now})");
    s1.send(write(2, earth - 1, 7, (1001.0, 0.0, 0.0))).await;
    let r2 = s1
        .until(|m| match m {
            Msg::Rejected(r) => r.first.first().map(|f| (f.seq, f.reason, f.current_epoch)),
            _ => None,
        })
        .await;
    assert_eq!(r2, (2, pb::RejectReason::StaleEpoch as i32, earth));
    let text = metrics(r.metrics_addr).await;
    assert_eq!(metric(&text, "starmesh_stale_epoch_rejections_total"), 1.0);
    assert!(text.contains("starmesh_commit_latency_seconds_bucket"));
    assert!(
        text.contains(
            "starmesh_entities{shard=\"0\",state=\"resident\",system=\"sol\",territory=\"earth\"} 1"
        ) || metric(&text, "starmesh_writes_applied_total") == 1.0
    );
    r.shutdown().await;
}

#[tokio::test]
async fn handoff_at_tick_boundary_and_takeover_when_a_stream_closes() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let mut earth_srv = ServerClient::connect(r.grpc_addr, "s-earth").await;
    let earth = earth_srv.grant_for("earth").await;
    let mut moon_srv = ServerClient::connect(r.grpc_addr, "s-moon").await;
    let moon = moon_srv.grant_for("moon").await;
    // The static owner took the moon back from the stand-in.
    earth_srv.until(|m| matches!(m, Msg::Revoke(rv) if rv.territory == "moon").then_some(())).await;

    earth_srv.send(write(1, earth, 7, (1000.0, 0.0, 0.0))).await;
    earth_srv.send(write(2, earth, 7, (1200.0, 0.0, 0.0))).await;
    let out = earth_srv
        .until(|m| match m {
            Msg::HandoffOut(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    let inn = moon_srv
        .until(|m| match m {
            Msg::HandoffIn(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!((out.from_territory.as_str(), out.to_territory.as_str()), ("earth", "moon"));
    assert_eq!(
        inn.entity, out.entity,
        "both sides see the same state: nothing lost or applied twice"
    );
    assert_eq!(inn.epoch, moon);
    let v = inn.entity.as_ref().unwrap().version;
    // The old owner is fenced; the new owner continues.
    earth_srv.send(write(3, earth, 7, (1201.0, 0.0, 0.0))).await;
    earth_srv.until(|m| matches!(m, Msg::Rejected(r) if r.highest_seq == 3).then_some(())).await;
    moon_srv.send(write(1, moon, 7, (1202.0, 0.0, 0.0))).await;
    moon_srv.committed(1).await;

    // The moon server dies: its territory goes to s-earth at once, with a new
    // epoch, and s-earth receives the entity's current state.
    drop(moon_srv);
    let new_moon = earth_srv.grant_for("moon").await;
    assert!(new_moon > moon);
    let h = earth_srv
        .until(|m| match m {
            Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == 7) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(h.entity.unwrap().version, v + 1);
    earth_srv.send(write(4, new_moon, 7, (1203.0, 0.0, 0.0))).await;
    earth_srv.committed(4).await;
    let text = metrics(r.metrics_addr).await;
    assert!(metric(&text, "starmesh_handoffs_total") >= 1.0);
    r.shutdown().await;
}

#[tokio::test]
async fn lease_expiry_moves_territories() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let mut a = ServerClient::connect(r.grpc_addr, "a").await;
    a.grant_for("earth").await;
    let mut b = ServerClient::connect(r.grpc_addr, "b").await;
    b.until(|m| matches!(m, Msg::Welcome(_)).then_some(())).await;
    // `b` heartbeats, `a` stays silent past its 800 ms lease.
    let hb = b.tx.clone();
    let beat = tokio::spawn(async move {
        loop {
            if hb.send(msg(server_message::Msg::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    b.grant_for("earth").await;
    let status = loop {
        match a.rx.message().await {
            Ok(Some(_)) => continue,
            Err(s) => break s,
            Ok(None) => panic!("expected an error status"),
        }
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    beat.abort();
    r.shutdown().await;
}

#[tokio::test]
async fn subscriptions_and_gateway_players() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s.grant_for("earth").await;
    s.send(msg(server_message::Msg::Neighbourhood(pb::Interest {
        center: v(1000.0, 0.0, 0.0),
        radius: 50.0,
    })))
    .await;
    s.send(write(1, earth, 7, (1000.0, 0.0, 0.0))).await;
    s.until(|m| match m {
        Msg::Neighbourhood(b) => b
            .updates
            .iter()
            .any(|u| matches!(&u.change, Some(Change::Enter(e)) if e.id == 7))
            .then_some(()),
        _ => None,
    })
    .await;
    // Gateway: a player riding entity 7 gets a bubble and its inputs reach the owner.
    let mut g =
        pb::gateway_link_client::GatewayLinkClient::connect(format!("http://{}", r.grpc_addr))
            .await
            .unwrap();
    let (gtx, grx) = tokio::sync::mpsc::channel(16);
    let gmsg = |m| pb::GatewayMessage { msg: Some(m) };
    gtx.send(gmsg(pb::gateway_message::Msg::Attach(pb::PlayerAttach {
        player_id: 42,
        entity_id: 7,
        radius: 10.0,
        position: v(0.0, 0.0, 0.0),
    })))
    .await
    .unwrap();
    let mut gin =
        g.session(tokio_stream::wrappers::ReceiverStream::new(grx)).await.unwrap().into_inner();
    let u = tokio::time::timeout(Duration::from_secs(10), gin.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(u.player_id, 42);
    assert!(matches!(&u.batch.unwrap().updates[0].change, Some(Change::Enter(e)) if e.id == 7));
    gtx.send(gmsg(pb::gateway_message::Msg::Input(pb::PlayerInput {
        player_id: 42,
        seq: 1,
        input: Bytes::from_static(b"thrust"),
        entity_id: 0,
    })))
    .await
    .unwrap();
    let inp = s
        .until(|m| match m {
            Msg::PlayerInput(i) => Some(i.clone()),
            _ => None,
        })
        .await;
    assert_eq!((inp.player_id, inp.entity_id, &inp.input[..]), (42, 7, &b"thrust"[..]));
    // Leaving the neighbourhood yields a removal.
    s.send(write(2, earth, 7, (1100.0, 0.0, 0.0))).await;
    s.until(|m| match m {
        Msg::Neighbourhood(b) => {
            b.updates.iter().any(|u| u.change == Some(Change::Leave(7))).then_some(())
        }
        _ => None,
    })
    .await;
    // Admin: counts and drain.
    let mut admin =
        pb::admin_client::AdminClient::connect(format!("http://{}", r.grpc_addr)).await.unwrap();
    let c = admin.counts(pb::CountsRequest {}).await.unwrap().into_inner();
    assert_eq!((c.players, c.entities), (1, 1));
    let earth_count = c.territories.iter().find(|t| t.territory == "earth").unwrap();
    assert_eq!((earth_count.players, earth_count.entities), (1, 1));
    let d = admin.drain(pb::DrainRequest { server: "s1".into() }).await.unwrap().into_inner();
    assert_eq!(
        d.territories_remaining, 4,
        "no other server: the drained one keeps them and says so"
    );
    let mut s2 = ServerClient::connect(r.grpc_addr, "s2").await;
    s2.grant_for("earth").await;
    let d = admin.drain(pb::DrainRequest { server: "s1".into() }).await.unwrap().into_inner();
    assert_eq!(d.territories_remaining, 0);
    let a = admin.assignments(pb::AssignmentsRequest {}).await.unwrap().into_inner();
    assert!(a.assignments.iter().all(|x| x.server == "s2"));
    assert_eq!(a.draining_servers, vec!["s1".to_string()]);
    r.shutdown().await;
}

/// Sends raw bytes as gRPC messages (to forge garbage and truncated ones).
#[derive(Clone, Default)]
struct RawCodec;
struct RawEnc;
struct RawDec;

impl Encoder for RawEnc {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

async fn hostile(addr: std::net::SocketAddr, frames: Vec<Bytes>) -> tonic::Status {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/starmesh.v1.ServerLink/Session");
    let req = tonic::Request::new(futures::stream::iter(frames).chain(futures::stream::pending()));
    let resp = grpc.streaming(req, path, RawCodec).await;
    let mut rx = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .expect("hostile stream must be ended")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error status"),
            Err(s) => return s,
        }
    }
}

use futures::StreamExt;

#[tokio::test]
async fn hostile_input_ends_only_its_own_stream() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let mut good = ServerClient::connect(r.grpc_addr, "good").await;
    let earth = good.grant_for("earth").await;
    good.send(msg(server_message::Msg::Neighbourhood(pb::Interest {
        center: v(1000.0, 0.0, 0.0),
        radius: 50.0,
    })))
    .await;

    let hello = msg(server_message::Msg::Hello(pb::Hello {
        server_name: "evil".into(),
        protocol_version: 1,
        components: vec![],
    }))
    .encode_to_vec();
    let valid_write = write(1, earth, 9, (1000.0, 0.0, 0.0)).encode_to_vec();
    let nan = write(1, earth, 9, (f64::NAN, 0.0, 0.0)).encode_to_vec();
    let cases: Vec<(&str, Vec<Bytes>)> = vec![
        ("garbage", vec![Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02])]),
        (
            "truncated",
            vec![
                Bytes::from(hello.clone()),
                Bytes::from(valid_write[..valid_write.len() - 3].to_vec()),
            ],
        ),
        ("oversized", vec![Bytes::from(vec![0u8; 200 * 1024])]),
        ("nan", vec![Bytes::from(hello.clone()), Bytes::from(nan)]),
        ("no hello", vec![Bytes::from(valid_write.clone())]),
    ];
    for (name, frames) in cases {
        let status = hostile(r.grpc_addr, frames).await;
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::OutOfRange
            ),
            "{name}: {status:?}"
        );
        assert!(
            status.message().starts_with("starmesh.wire")
                || status.code() != tonic::Code::InvalidArgument,
            "{name}: typed error: {status:?}"
        );
    }
    // A well-formed stale-epoch write from the hostile client is rejected and counted.
    let mut evil = ServerClient::connect(r.grpc_addr, "evil").await;
    evil.until(|m| matches!(m, Msg::Welcome(_)).then_some(())).await;
    evil.send(write(1, earth, 9, (1000.0, 0.0, 0.0))).await;
    let rej = evil
        .until(|m| match m {
            Msg::Rejected(r) => r.first.first().map(|f| f.reason),
            _ => None,
        })
        .await;
    assert_ne!(rej, pb::RejectReason::Unspecified as i32);

    // The good server kept its territory and is still served.
    good.send(write(1, earth, 7, (1001.0, 0.0, 0.0))).await;
    good.until(|m| match m {
        Msg::Neighbourhood(b) => b
            .updates
            .iter()
            .any(|u| matches!(&u.change, Some(Change::Enter(e)) if e.id == 7))
            .then_some(()),
        _ => None,
    })
    .await;
    good.committed(1).await;
    let text = metrics(r.metrics_addr).await;
    assert!(metric(&text, "starmesh_bad_messages_total") >= 4.0, "{text}");
    r.shutdown().await;
}

/// Sum of every sample of a (labelled) counter whose labels contain `labels`.
fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A game server that crashes (its task aborted, as `starmesh local`'s kill
/// button does) is a disconnect: counted in `starmesh_stream_disconnects_total`,
/// never in `starmesh_bad_messages_total`. Several rounds, because an abort
/// reaches the replicant either as a reset stream (h2 error) or as a stream
/// ended with no goodbye, depending on which half is dropped first; both must
/// be disconnects.
#[tokio::test]
async fn a_crashed_server_is_a_disconnect_not_a_bad_message() {
    use starmesh_node::server::{self, ServerConfig, game::ExampleGame, metrics::Metrics};
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let live = |r: &starmesh_node::replicant::Running| {
        r.shared.lock().world.authority.live_servers().any(|(n, _)| n.as_ref() == "s-earth")
    };
    let wait = |want: bool| {
        let r = &r;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while live(r) != want {
                assert!(tokio::time::Instant::now() < deadline, "s-earth live={want} in time");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    const ROUNDS: u32 = 6;
    for _ in 0..ROUNDS {
        let cfg = ServerConfig {
            replicant: r.grpc_addr.to_string(),
            name: "s-earth".into(),
            tick_hz: 50,
        };
        let m = Arc::new(Metrics::new(cfg.period().as_secs_f64()));
        let task = tokio::spawn(server::run(cfg, ExampleGame, m));
        wait(true).await;
        // Let it tick and write for a moment, so the crash comes mid-stream.
        tokio::time::sleep(Duration::from_millis(60)).await;
        task.abort();
        let _ = task.await;
        wait(false).await;
    }
    let text = metrics(r.metrics_addr).await;
    assert_eq!(metric(&text, "starmesh_bad_messages_total"), 0.0, "{text}");
    let ended = metric_sum(&text, "starmesh_stream_disconnects_total", "link=\"server\"");
    assert_eq!(ended, f64::from(ROUNDS), "every crash is one disconnect:\n{text}");
    r.shutdown().await;
}

/// A TCP relay to `upstream` whose connections can be cut with a reset (RST,
/// not FIN): what the replicant sees when a server's host or network dies
/// under a live stream.
async fn cuttable_relay(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<tokio::sync::Notify>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cut = Arc::new(tokio::sync::Notify::new());
    let cut2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = l.accept().await {
            let cut = cut2.clone();
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    _ = cut.notified() => {
                        // Linger 0: closing sends RST, so the replicant's read fails mid-stream.
                        let _ = up.set_zero_linger();
                    }
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn a_connection_reset_is_a_disconnect_not_a_bad_message() {
    use starmesh_node::server::{self, ServerConfig, game::ExampleGame, metrics::Metrics};
    let dir = tempfile::tempdir().unwrap();
    let r = start(&sol(), fast_config(), store(&dir)).await;
    let (relay, cut) = cuttable_relay(r.grpc_addr).await;
    let cfg = ServerConfig { replicant: relay.to_string(), name: "s-earth".into(), tick_hz: 50 };
    let m = Arc::new(Metrics::new(cfg.period().as_secs_f64()));
    let task = tokio::spawn(server::run(cfg, ExampleGame, m));
    let live =
        || r.shared.lock().world.authority.live_servers().any(|(n, _)| n.as_ref() == "s-earth");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !live() {
        assert!(tokio::time::Instant::now() < deadline, "s-earth connects through the relay");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    cut.notify_waiters();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics(r.metrics_addr).await;
        if metric_sum(&text, "starmesh_stream_disconnects_total", "how=\"reset\"") >= 1.0 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reset is counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    task.abort();
    assert_eq!(metric(&text, "starmesh_bad_messages_total"), 0.0, "{text}");
    r.shutdown().await;
}

/// A player comes back after its ship was evicted (nobody near it for
/// `evict_after`): the bubble goes to the ship, which streams back in and is
/// handed to its territory's owner; inputs meanwhile are not routed to the
/// owner of the player's placement (which would create a second ship there).
#[tokio::test]
async fn a_returning_player_gets_its_evicted_ship_back_not_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = starmesh_node::replicant::Config {
        evict_after: Duration::from_millis(200),
        ..fast_config()
    };
    let r = start(&sol(), cfg, store(&dir)).await;
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    // Alive throughout (the lease is short), so it stays the owner.
    let beat = s.tx.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            let hb = msg(server_message::Msg::Heartbeat(pb::Heartbeat {}));
            if beat.send(hb).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let earth = s.grant_for("earth").await;
    s.send(write(1, earth, 7, (1000.0, 0.0, 0.0))).await;
    s.committed(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.shared.lock().world.evicted_len() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle ship is evicted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The player is placed at the station, far from where its ship is.
    let mut g =
        pb::gateway_link_client::GatewayLinkClient::connect(format!("http://{}", r.grpc_addr))
            .await
            .unwrap();
    let (gtx, grx) = tokio::sync::mpsc::channel(16);
    let gmsg = |m| pb::GatewayMessage { msg: Some(m) };
    gtx.send(gmsg(pb::gateway_message::Msg::Attach(pb::PlayerAttach {
        player_id: 42,
        entity_id: 7,
        radius: 10.0,
        position: v(-500.0, 0.0, 0.0),
    })))
    .await
    .unwrap();
    gtx.send(gmsg(pb::gateway_message::Msg::Input(pb::PlayerInput {
        player_id: 42,
        seq: 0,
        input: Bytes::from_static(b"spawn"),
        entity_id: 0,
    })))
    .await
    .unwrap();
    let mut gin =
        g.session(tokio_stream::wrappers::ReceiverStream::new(grx)).await.unwrap().into_inner();
    let ship = loop {
        let u = tokio::time::timeout(Duration::from_secs(10), gin.message())
            .await
            .expect("the ship shows in the bubble")
            .unwrap()
            .unwrap();
        let found = u.batch.unwrap().updates.into_iter().find_map(|x| match x.change {
            Some(Change::Enter(e)) if e.id == 7 => Some(e),
            _ => None,
        });
        if let Some(e) = found {
            break e;
        }
    };
    assert_eq!(ship.position.map(|p| p.x), Some(1000.0), "the same ship, where it was");
    assert_eq!(ship.version, 1, "its version line continues (not a new ship)");
    // Its owner got it back, and the spawn request never reached anyone.
    let (handed, spawned) = {
        let mut handed = false;
        let mut spawned = false;
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_millis(300), s.rx.message()).await
        {
            match m.msg {
                Some(Msg::HandoffIn(h)) if h.entity.as_ref().is_some_and(|e| e.id == 7) => {
                    handed = true
                }
                Some(Msg::PlayerInput(i)) if i.input == Bytes::from_static(b"spawn") => {
                    spawned = true
                }
                _ => {}
            }
        }
        (handed, spawned)
    };
    assert!(handed, "the owner resumes the ship");
    assert!(!spawned, "no spawn request for a ship that exists");
    heartbeat.abort();
    r.shutdown().await;
}
