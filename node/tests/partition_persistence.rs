//! A dynamic layout's cells survive a replicant restart, on a real PostgreSQL
//! (started by the harness, stopped by PID): a split through Admin
//! `SetPartition` is answered only once saved, and the restarted replicant
//! loads the cells before the entities, so every entity is back in its cell
//! and the server is granted the cells, not the territory they replaced.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::Pg;
use common::*;
use starmesh_node::replicant::Config;
use starmesh_node::store::Store;
use starmesh_node::store::postgres::PostgresStore;
use starmesh_node::wire::pb::{self, replicant_message::Msg};

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

fn sol_dynamic() -> starmesh_node::resources::Mesh {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sol-dynamic.yaml");
    starmesh_node::resources::load(&[p], "0").expect("the dynamic test world is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_survive_a_restart_on_postgres() {
    let mut pg = Pg::init();
    pg.start().await;
    let store = Arc::new(PostgresStore::new(&pg.url()));
    let cfg = Config { lease: Duration::from_secs(60), ..fast_config() };
    let mesh = sol_dynamic();

    let r = start(&mesh, cfg.clone(), store.clone()).await;
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s.grant_for("earth").await;
    // Twenty ships along x through earth (700..1300 km).
    for id in 1..=20u64 {
        s.send(write(id, earth, id, (700.0 + id as f64 * 30.0, 0.0, 0.0))).await;
    }
    s.committed(20).await;
    let mut admin = Admin::connect(format!("http://{}", r.grpc_addr)).await.expect("admin");
    let before = admin.get_partition(pb::GetPartitionRequest {}).await.expect("get").into_inner();
    assert_eq!(before.version, 0);
    assert_eq!(before.cells.len(), 3, "{before:?}");
    // A cell that does not exist (yet) is refused and changes nothing.
    let e = admin
        .set_partition(pb::SetPartitionRequest { split: vec!["earth/0".into()], merge: vec![] })
        .await
        .expect_err("earth/0 does not exist yet");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let after = admin
        .set_partition(pb::SetPartitionRequest { split: vec!["earth".into()], merge: vec![] })
        .await
        .expect("split")
        .into_inner();
    assert_eq!(after.version, 1);
    assert_eq!(after.splits.len(), 1);
    let plane = after.splits[0].clone();
    assert_eq!((plane.cell.as_str(), plane.axis.as_str()), ("earth", "x"));
    let halves: Vec<(String, u64)> = after
        .cells
        .iter()
        .filter(|c| c.cell.starts_with("earth/"))
        .map(|c| (c.cell.clone(), c.entities))
        .collect();
    assert_eq!(halves, vec![("earth/0".to_string(), 10), ("earth/1".to_string(), 10)]);
    // Answered once saved: the store already has it.
    let saved = store.load_partition().await.expect("load").expect("saved");
    assert_eq!(saved.version, 1);
    assert!(saved.partition.is_split("earth"));
    // The owner was told: the old territory revoked, the halves granted.
    s.until(|m| matches!(m, Msg::Revoke(r) if r.territory == "earth").then_some(())).await;
    s.grant_for("earth/1").await;
    drop(s);
    // The relocated entities (new versions) reach the store before the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.shutdown().await;

    let r = start(&mesh, cfg, store.clone()).await;
    let mut admin = Admin::connect(format!("http://{}", r.grpc_addr)).await.expect("admin");
    let back = admin.get_partition(pb::GetPartitionRequest {}).await.expect("get").into_inner();
    assert_eq!(back.version, 1, "{back:?}");
    assert_eq!(back.splits, after.splits);
    let cells: Vec<(String, u64)> =
        back.cells.iter().map(|c| (c.cell.clone(), c.entities)).collect();
    assert_eq!(
        cells,
        vec![
            ("deep-space".to_string(), 0),
            ("earth/0".to_string(), 10),
            ("earth/1".to_string(), 10),
            ("station".to_string(), 0)
        ]
    );
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    s.grant_for("earth/0").await;
    // Merge back: one territory again, saved as version 2.
    let merged = admin
        .set_partition(pb::SetPartitionRequest { split: vec![], merge: vec!["earth".into()] })
        .await
        .expect("merge")
        .into_inner();
    assert_eq!(merged.version, 2);
    assert!(merged.splits.is_empty());
    assert!(merged.cells.iter().any(|c| c.cell == "earth" && c.entities == 20 && c.server == "s1"));
    assert_eq!(store.load_partition().await.expect("load").map(|p| p.version), Some(2));
    r.shutdown().await;
    pg.stop();
}
