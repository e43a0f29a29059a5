//! A real `kill -9` of a spawned replicant process under write load, then a
//! restart on the same data folder: every write acknowledged as committed is there.
//!
//! "Acknowledged" means: the replicant sent `Committed{seq}` on the writer's
//! stream, which it does only after the store commit containing every
//! accepted write with a seq <= `seq` has returned (redb, fsync'd).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::process::Replicant;
use common::*;
use starmesh_node::wire::pb;
use starmesh_node::wire::pb::{entity_update::Change, replicant_message::Msg, server_message};

fn spawn(dir: &std::path::Path) -> (Replicant, SocketAddr) {
    let sol = sol_path();
    let r = Replicant::spawn(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sol.as_os_str(),
            "--tick-hz".as_ref(),
            "50".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
        ],
    );
    r.wait_ready(Duration::from_secs(30));
    let addr = r.grpc;
    (r, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path());
    let mut s = ServerClient::connect(addr, "s1").await;
    let earth = s.grant_for("earth").await;

    // Writer: 40 entities, x grows with seq so a later write is recognisable.
    let tx = s.tx.clone();
    let writer = tokio::spawn(async move {
        let mut log: Vec<(u64, u64, f64)> = Vec::new();
        for seq in 1..=200_000u64 {
            let id = seq % 40 + 1;
            let x = 1000.0 + seq as f64 * 1e-4;
            if tx.send(write(seq, earth, id, (x, 0.0, 0.0))).await.is_err() {
                break;
            }
            log.push((seq, id, x));
            if seq % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        log
    });
    let mut acked = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_millis(100), s.rx.message()).await
            && let Some(Msg::Committed(c)) = m.msg
        {
            acked = acked.max(c.seq);
        }
    }
    child.kill_9();
    let log = writer.await.unwrap();
    assert!(acked > 100, "load was acknowledged before the kill (acked {acked})");

    // Last acknowledged x per entity.
    let mut want: HashMap<u64, f64> = HashMap::new();
    for (seq, id, x) in &log {
        if *seq <= acked {
            want.insert(*id, *x);
        }
    }

    let (child, addr) = spawn(dir.path());
    let mut s = ServerClient::connect(addr, "s1").await;
    s.send(msg(server_message::Msg::Neighbourhood(pb::Interest {
        center: v(1000.0, 0.0, 0.0),
        radius: 299.0,
    })))
    .await;
    let mut seen: HashMap<u64, f64> = HashMap::new();
    while seen.len() < want.len() {
        if let Msg::Neighbourhood(b) = s.next().await {
            for u in b.updates {
                if let Some(Change::Enter(e)) = u.change {
                    seen.insert(e.id, e.position.unwrap().x);
                }
            }
        }
    }
    for (id, x) in &want {
        let got = seen[id];
        assert!(got >= *x, "entity {id}: acknowledged x={x}, recovered x={got}");
    }
    drop(child);
}
