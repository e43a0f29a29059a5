//! A dynamic layout as real processes on loopback: a replicant serving Pyro
//! (`mode: Dynamic`), two game servers, a gateway and bots flying. While they
//! fly, a crowded cell is split through the Admin service, a third server
//! joins and takes a share of the cells, the halves are split and merged
//! back, and the third server is drained (`Drain` returns 0) and killed: the
//! bots report no ship lost or duplicated and no disconnect, and every cell
//! is owned throughout.

mod mesh_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_support::*;
use starmesh_node::wire::pb;

const BOTS: usize = 120;

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

async fn admin(grpc: SocketAddr) -> Admin {
    Admin::connect(format!("http://{grpc}")).await.expect("admin connect")
}

async fn partition(c: &mut Admin) -> pb::PartitionState {
    c.get_partition(pb::GetPartitionRequest {}).await.expect("get partition").into_inner()
}

async fn set(c: &mut Admin, split: &[&str], merge: &[&str]) -> pb::PartitionState {
    let req = pb::SetPartitionRequest {
        split: split.iter().map(|s| s.to_string()).collect(),
        merge: merge.iter().map(|s| s.to_string()).collect(),
    };
    c.set_partition(req).await.expect("set partition").into_inner()
}

fn owned_everywhere(p: &pb::PartitionState) {
    for c in &p.cells {
        assert!(!c.server.is_empty(), "cell {} unowned: {p:?}", c.cell);
    }
}

/// Waits until `server` owns at least one cell; returns how long it took.
async fn wait_owns(c: &mut Admin, server: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let p = partition(c).await;
        if p.cells.iter().any(|x| x.server == server) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{server} owns no cell after {limit:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_add_a_server_merge_and_drain_while_bots_fly() {
    let mut mesh = Mesh::start_with(
        &manifest("pyro.yaml"),
        &manifest("pyro-layout.yaml"),
        &["pyro-server-0", "pyro-server-1"],
    );
    let mut c = admin(mesh.grpc).await;
    let base = partition(&mut c).await;
    assert_eq!(base.version, 0);
    assert!(base.splits.is_empty());
    owned_everywhere(&base);

    // A bad request changes nothing and says what is wrong.
    let bad = c
        .set_partition(pb::SetPartitionRequest { split: vec!["nowhere".into()], merge: vec![] })
        .await
        .expect_err("an unknown cell is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let bad = c
        .set_partition(pb::SetPartitionRequest { split: vec![], merge: vec!["monox".into()] })
        .await
        .expect_err("a leaf cannot merge");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert_eq!(partition(&mut c).await.version, 0);

    let mut bots = mesh.bots(BOTS, "40s", "cells");
    // Let every bot spawn and start flying.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let p = partition(&mut c).await;
    let crowded = p.cells.iter().max_by_key(|x| x.players).expect("cells").clone();
    assert!(crowded.players > 1, "bots are in the system: {p:?}");
    eprintln!("crowded cell before the split: {crowded:?}");

    let t = Instant::now();
    let p = set(&mut c, &[&crowded.cell], &[]).await;
    let split_took = t.elapsed();
    assert_eq!(p.version, 1, "{p:?}");
    assert!(p.refused.is_empty(), "{p:?}");
    let halves = [format!("{}/0", crowded.cell), format!("{}/1", crowded.cell)];
    for h in &halves {
        assert!(p.cells.iter().any(|x| &x.cell == h), "{h} is a cell: {p:?}");
    }
    let in_halves: u64 =
        p.cells.iter().filter(|x| halves.contains(&x.cell)).map(|x| x.players).sum();
    assert_eq!(in_halves, crowded.players, "the split keeps every player: {p:?}");
    owned_everywhere(&p);
    eprintln!("split applied and answered in {split_took:?}: {p:?}");

    // New capacity: a third server joins and is given a share at once.
    mesh.add_server("pyro-server-2");
    let took = wait_owns(&mut c, "pyro-server-2", Duration::from_secs(10)).await;
    eprintln!("the new server owned a cell {took:?} after it was ready");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Split a half again, then merge everything back.
    let p = set(&mut c, &[&halves[0]], &[]).await;
    owned_everywhere(&p);
    let quarters = p.cells.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    if p.refused.is_empty() {
        assert_eq!(p.version, 2, "{p:?}");
        let p = set(&mut c, &[], &[&halves[0]]).await;
        assert_eq!(p.cells.len(), quarters - 1);
        owned_everywhere(&p);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = set(&mut c, &[], &[&crowded.cell]).await;
    assert!(p.splits.is_empty(), "merged back to the base territories: {p:?}");
    assert_eq!(p.cells.len(), base.cells.len());
    owned_everywhere(&p);

    // Drain the third server: it gives everything away, then it can go.
    let r = c
        .drain(pb::DrainRequest { server: "pyro-server-2".into() })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(r.territories_remaining, 0);
    let p = partition(&mut c).await;
    assert!(p.draining_servers.iter().any(|s| s == "pyro-server-2"), "{p:?}");
    assert!(p.cells.iter().all(|x| x.server != "pyro-server-2"), "{p:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.kill_server("pyro-server-2");

    let (code, r) = tokio::task::spawn_blocking(move || {
        let r = bots_report(&mut bots, Duration::from_secs(90));
        drop(bots);
        r
    })
    .await
    .expect("join");
    eprintln!("bots report: {r:#}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("players"), BOTS as u64);
    assert_eq!(n("connected"), BOTS as u64, "every bot connected\n{}", mesh.logs());
    assert_eq!(n("reconnects"), 0, "no bot was disconnected\n{}", mesh.logs());
    assert_eq!(n("entities_lost"), 0, "no ship lost\n{}", mesh.logs());
    assert_eq!(n("entities_duplicated"), 0, "no entity duplicated\n{}", mesh.logs());
    assert!(n("update_latency_samples") > 0, "inputs reached the ships: {r}");
    assert_eq!(code, Some(0), "bots exit 0 when every invariant holds");

    // The metrics name the cells and count the changes.
    let (_, text) = http_get(mesh.replicant_metrics, "/metrics");
    assert!(text.contains("starmesh_cells{"), "starmesh_cells exported");
    let splits = text
        .lines()
        .find(|l| l.starts_with("starmesh_partition_changes_total") && l.contains("kind=\"split\""))
        .unwrap_or_default()
        .to_string();
    assert!(splits.ends_with(" 1") || splits.ends_with(" 2"), "{splits}");
    assert!(
        !text.lines().any(|l| l.starts_with("starmesh_players{")
            && l.contains(&format!("territory=\"{}\"", halves[0]))),
        "a merged cell's series is gone"
    );
}
