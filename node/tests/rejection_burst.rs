//! A burst of stale writes (a buggy server) is reported as one coalesced
//! `WritesRejected` per tick: every rejection is counted, the server's queue
//! never fills with them, and the server stays connected and keeps its territory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::wire::pb::{self, replicant_message::Msg};

const BURST: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_stale_writes_is_coalesced_and_does_not_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let r = start(&sol(), fast_config(), store).await;
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s.grant_for("earth").await;

    // Far more rejections than the outbound queue (256 messages) holds, sent
    // without reading a single reply.
    for seq in 1..=BURST {
        s.send(write(seq, earth - 1, seq, (1000.0, 0.0, 0.0))).await;
    }
    // A valid write after the burst is still applied and committed.
    s.send(write(BURST + 1, earth, 1, (1000.0, 0.0, 0.0))).await;

    let mut counted = 0u64;
    let mut summaries = 0u64;
    let mut committed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while counted < BURST || !committed {
        assert!(tokio::time::Instant::now() < deadline, "counted {counted}, committed {committed}");
        match s.next().await {
            Msg::Rejected(r) => {
                summaries += 1;
                assert!(r.first.len() <= 32, "samples are bounded");
                assert!(
                    r.first.iter().all(|f| f.reason == pb::RejectReason::StaleEpoch as i32
                        && f.current_epoch == earth)
                );
                counted += r.counts.iter().map(|c| c.count).sum::<u64>();
            }
            Msg::Committed(c) if c.seq == BURST + 1 => committed = true,
            _ => {}
        }
    }
    assert_eq!(counted, BURST, "every rejection counted exactly once");
    assert!(summaries < BURST / 10, "coalesced: {summaries} messages for {BURST} rejections");
    assert_eq!(r.shared.metrics.stale_epoch_rejections.get(), BURST);
    assert_eq!(r.shared.metrics.subscribers_dropped.get(), 0, "not disconnected");
    let a = pb::admin_client::AdminClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap()
        .assignments(pb::AssignmentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let owner =
        a.assignments.iter().find(|a| a.territory == "earth").map(|a| (a.server.as_str(), a.epoch));
    assert_eq!(owner, Some(("s1", earth)), "kept its territory and epoch");
    r.shutdown().await;
}
