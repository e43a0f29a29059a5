//! The jump-gate store operations, the same sequence against both stores
//! (redb in a temp folder and a REAL PostgreSQL): the transfer record, the
//! conditional settle steps, and the target's idempotency on the transfer id.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use starmesh_node::model::{Entity, Vec3};
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::store::postgres::PostgresStore;
use starmesh_node::store::{Arrived, CommitBatch, Outbound, OutboundPhase, Store};

fn ent(id: u64, version: u64) -> Entity {
    Entity {
        id,
        kind: 1,
        position: Vec3::new(5000.0, 0.0, 0.0),
        velocity: Vec3::default(),
        location: "".into(),
        version,
        components: Bytes::from(format!("v{version}")),
        components_version: 1,
        territory: "deep-space".into(),
    }
}

fn transfer(e: &Entity) -> Outbound {
    Outbound {
        transfer_id: Arc::from(format!("alpha/0/{}@{}", e.id, e.version)),
        entity: e.clone(),
        source_gate: "alpha-beta".into(),
        target_system: "beta".into(),
        target_gate: "beta-alpha".into(),
        server: "a-1".into(),
        phase: OutboundPhase::InTransit,
    }
}

async fn row(s: &dyn Store, id: u64) -> Option<u64> {
    s.load(&[id]).await.unwrap().first().map(|e| e.version)
}

async fn exercise(s: &dyn Store) {
    // Source: depart. The record holds the state; the entity row goes.
    let e = ent(42, 5);
    s.commit(&CommitBatch { tick: 1, entities: vec![e.clone()] }).await.unwrap();
    let t = transfer(&e);
    s.gate_depart(&t).await.unwrap();
    assert_eq!(s.gate_load().await.unwrap(), vec![t.clone()]);
    assert_eq!(row(s, 42).await, None);
    // A racing group commit may write the old row back: the record still wins
    // at recovery (the replicant skips rows that have a record).
    s.commit(&CommitBatch { tick: 2, entities: vec![e.clone()] }).await.unwrap();
    assert_eq!(s.gate_load().await.unwrap().len(), 1);

    // Settling is conditional on the transfer id.
    s.gate_departed(42, "alpha/0/42@1").await.unwrap();
    assert_eq!(s.gate_load().await.unwrap()[0].phase, OutboundPhase::InTransit);
    s.gate_departed(42, &t.transfer_id).await.unwrap();
    assert_eq!(s.gate_load().await.unwrap()[0].phase, OutboundPhase::Departed);

    // Target: the transfer id makes the insert idempotent.
    let tid = "beta/0/42@9";
    assert!(!s.gate_arrival_seen(tid).await.unwrap());
    assert_eq!(s.gate_arrive(tid, &ent(42, 10)).await.unwrap(), Arrived::Inserted);
    assert!(s.gate_arrival_seen(tid).await.unwrap());
    assert_eq!(row(s, 42).await, Some(10));
    assert!(s.gate_load().await.unwrap().is_empty(), "an arrival voids the tombstone");
    assert_eq!(s.gate_arrive(tid, &ent(42, 11)).await.unwrap(), Arrived::Replayed);
    assert_eq!(row(s, 42).await, Some(10), "a replay writes nothing");

    // Source: the target refused; only the current transfer brings it back.
    let e7 = ent(7, 3);
    let t7 = transfer(&e7);
    s.gate_depart(&t7).await.unwrap();
    s.gate_return("alpha/0/7@1", &ent(7, 4)).await.unwrap();
    assert_eq!((row(s, 7).await, s.gate_load().await.unwrap().len()), (None, 1));
    s.gate_return(&t7.transfer_id, &ent(7, 4)).await.unwrap();
    assert_eq!((row(s, 7).await, s.gate_load().await.unwrap().len()), (Some(4), 0));
}

#[tokio::test]
async fn embedded_store_gate_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path()).unwrap();
        exercise(&s).await;
        s.gate_depart(&transfer(&ent(9, 1))).await.unwrap();
    }
    // Durable across a reopen.
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(s.gate_load().await.unwrap(), vec![transfer(&ent(9, 1))]);
    assert!(s.gate_arrival_seen("beta/0/42@9").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_gate_records() {
    let mut pg = common::pg::Pg::init();
    pg.start().await;
    let s = PostgresStore::new(&pg.url());
    exercise(&s).await;
    s.gate_depart(&transfer(&ent(9, 1))).await.unwrap();
    let s = PostgresStore::new(&pg.url());
    assert_eq!(s.gate_load().await.unwrap(), vec![transfer(&ent(9, 1))]);
    assert!(s.gate_arrival_seen("beta/0/42@9").await.unwrap());
}
