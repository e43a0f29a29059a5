//! Eviction and stream-in end to end, over loopback with the embedded store:
//! entities nobody needs are dropped from memory, then come back complete
//! (components included) when a player bubble comes near or when a takeover
//! needs them, identical to what they were before.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use starmesh_node::replicant::Config;
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::wire::pb::{self, entity_update::Change, replicant_message::Msg};
use starmesh_node::wire::validate::entity_to_pb;

async fn counts(addr: std::net::SocketAddr) -> pb::CountsResponse {
    let mut a = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await.unwrap();
    a.counts(pb::CountsRequest {}).await.unwrap().into_inner()
}

async fn wait_counts(
    addr: std::net::SocketAddr,
    resident: u64,
    evicted: u64,
) -> pb::CountsResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = counts(addr).await;
        if (c.resident_entities, c.evicted_entities) == (resident, evicted) {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted resident={resident} evicted={evicted}, have {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_entities_stream_back_complete_for_a_bubble_and_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let cfg = Config {
        evict_after: Duration::from_millis(300),
        lease: Duration::from_secs(60),
        ..fast_config()
    };
    let r = start(&sol(), cfg, store).await;
    let mut s1 = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s1.grant_for("earth").await;
    let station = {
        let a = pb::admin_client::AdminClient::connect(format!("http://{}", r.grpc_addr))
            .await
            .unwrap()
            .assignments(pb::AssignmentsRequest {})
            .await
            .unwrap()
            .into_inner();
        a.assignments.iter().find(|a| a.territory == "station").map(|a| a.epoch).unwrap()
    };
    s1.send(write(1, earth, 7, (1000.0, 0.0, 0.0))).await;
    s1.send(write(2, station, 8, (-500.0, 0.0, 0.0))).await;
    s1.committed(2).await;
    let before: Vec<pb::EntityState> = {
        let core = r.shared.lock();
        [7, 8].iter().map(|id| entity_to_pb(core.world.entity(*id).expect("resident"))).collect()
    };
    assert_eq!(before[0].components.as_ref(), b"state-1");

    // Nobody subscribes: both are evicted, and counted as such.
    let c = wait_counts(r.grpc_addr, 0, 2).await;
    assert_eq!(c.entities, 2);
    let earth_c = c.territories.iter().find(|t| t.territory == "earth").unwrap();
    assert_eq!((earth_c.resident_entities, earth_c.evicted_entities), (0, 1));
    assert!(r.shared.lock().world.entity(7).is_none(), "dropped from memory");
    assert_eq!(r.shared.metrics.evictions.get(), 2);
    let text = common::process::http_get(r.metrics_addr, "/metrics").1;
    assert!(
        text.contains(
            "starmesh_entities{shard=\"0\",state=\"evicted\",system=\"sol\",territory=\"earth\"} 1"
        ),
        "{text}"
    );

    // A player bubble comes near entity 7: it streams in and the player gets it whole.
    let mut g =
        pb::gateway_link_client::GatewayLinkClient::connect(format!("http://{}", r.grpc_addr))
            .await
            .unwrap();
    let (gtx, grx) = tokio::sync::mpsc::channel(16);
    gtx.send(pb::GatewayMessage {
        msg: Some(pb::gateway_message::Msg::Attach(pb::PlayerAttach {
            player_id: 1,
            entity_id: 999,
            radius: 20.0,
            position: v(1005.0, 0.0, 0.0),
        })),
    })
    .await
    .unwrap();
    let mut gin =
        g.session(tokio_stream::wrappers::ReceiverStream::new(grx)).await.unwrap().into_inner();
    let entered = loop {
        let u = tokio::time::timeout(Duration::from_secs(10), gin.message())
            .await
            .expect("bubble update in time")
            .unwrap()
            .unwrap();
        let enter = u.batch.unwrap().updates.into_iter().find_map(|u| match u.change {
            Some(Change::Enter(e)) if e.id == 7 => Some(e),
            _ => None,
        });
        if let Some(e) = enter {
            break e;
        }
    };
    assert_eq!(entered, before[0], "streamed in identical, components included");
    // The owner resumes simulating it, from the same state.
    let h = s1
        .until(|m| match m {
            Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == 7) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!((h.entity.as_ref(), h.epoch), (Some(&before[0]), earth));

    // A takeover needs entity 8 (still evicted): the new owner gets it whole.
    let c = counts(r.grpc_addr).await;
    assert_eq!((c.resident_entities, c.evicted_entities), (1, 1));
    drop(s1);
    let mut s2 = ServerClient::connect(r.grpc_addr, "s2").await;
    let new_station = s2.grant_for("station").await;
    assert_ne!(new_station, station);
    let h = s2
        .until(|m| match m {
            Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == 8) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!((h.entity.as_ref(), h.epoch), (Some(&before[1]), new_station));
    // Its writes with the new epoch continue the version line.
    s2.send(write(1, new_station, 8, (-501.0, 0.0, 0.0))).await;
    s2.committed(1).await;
    let v = r.shared.lock().world.entity(8).map(|e| e.version);
    assert_eq!(v, Some(before[1].version + 1));
    assert_eq!(r.shared.metrics.stream_ins.get(), 2);
    r.shutdown().await;
}
