//! PostgreSQL store against a REAL server: Debian's postgresql 15, started by
//! this harness (initdb into a temp dir, loopback port, run as the `postgres`
//! user) and stopped by PID. If PostgreSQL cannot be started the test fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::Pg;
use common::*;
use starmesh_node::replicant::Config;
use starmesh_node::store::Store;
use starmesh_node::store::postgres::PostgresStore;
use starmesh_node::wire::pb::{self, replicant_message::Msg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_buffers_then_drains_and_loses_nothing() {
    let mut pg = Pg::init();
    pg.start().await;
    let store = Arc::new(PostgresStore::new(&pg.url()));
    // A long lease: this test sends no heartbeats.
    let cfg = Config { backlog_bound: 2_000, lease: Duration::from_secs(60), ..fast_config() };
    let r = start(&sol(), cfg, store.clone()).await;
    let mut s = ServerClient::connect(r.grpc_addr, "s1").await;
    let earth = s.grant_for("earth").await;
    let mut seq = 0;
    for _ in 0..200 {
        seq += 1;
        s.send(write(seq, earth, seq % 20 + 1, (1000.0 + seq as f64 * 0.01, 0.0, 0.0))).await;
    }
    s.committed(seq).await;

    // PostgreSQL goes away mid-run: the replicant keeps accepting into memory.
    pg.stop();
    let accepted_during_outage = seq;
    for _ in 0..300 {
        seq += 1;
        s.send(write(seq, earth, seq % 20 + 1, (1000.0 + seq as f64 * 0.01, 0.0, 0.0))).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.shared.ready(), "readiness reports the store outage");
    assert_eq!(r.shared.metrics.store_up.get(), 0);
    assert!(r.shared.metrics.store_backlog.get() > 0);
    assert!(accepted_during_outage < seq);

    // Past the bound writes are refused loudly (not dropped silently).
    let mut id = 100;
    while !r.shared.lock().wb.is_full() {
        for _ in 0..100 {
            seq += 1;
            id += 1;
            s.send(write(seq, earth, id, (1000.0, 1.0, 0.0))).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        seq += 1;
        s.send(write(seq, earth, 1, (1000.0, 2.0, 0.0))).await;
    }
    let rej = s
        .until(|m| match m {
            Msg::Rejected(r) => r.first.first().map(|f| f.reason),
            _ => None,
        })
        .await;
    assert_eq!(rej, pb::RejectReason::BacklogFull as i32);

    // PostgreSQL comes back: the backlog drains and acks resume.
    pg.start().await;
    let last_acked = s
        .until(|m| match m {
            Msg::Committed(c) if c.seq > accepted_during_outage => Some(c.seq),
            _ => None,
        })
        .await;
    assert!(last_acked > accepted_during_outage);
    for _ in 0..100 {
        if r.shared.metrics.store_backlog.get() == 0 && r.shared.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.shared.metrics.store_backlog.get(), 0, "backlog drained");
    assert!(r.shared.ready());

    // Nothing lost: the store holds exactly the in-memory truth.
    let truth: Vec<_> = {
        let core = r.shared.lock();
        let mut v: Vec<_> = core.world.entities().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    };
    r.shutdown().await;
    let fresh = PostgresStore::new(&pg.url());
    let mut stored = fresh.load_all().await.unwrap();
    stored.sort_by_key(|e| e.id);
    assert_eq!(stored.len(), truth.len());
    assert_eq!(stored, truth);
    drop(store);
    pg.stop();
}

/// A replicant started while PostgreSQL is down must not serve an empty
/// world as the truth: it stays not-ready (saying why, in `/readyz` and its
/// log) and retries; once PostgreSQL is up it loads everything and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_waits_for_postgres_then_serves_the_stored_world() {
    use common::process::Replicant;
    use starmesh_node::model::{Entity, Vec3};
    use starmesh_node::store::CommitBatch;

    let mut pg = Pg::init();
    pg.start().await;
    let entities: Vec<Entity> = (1..=50)
        .map(|id| Entity {
            id,
            kind: 1,
            position: Vec3::new(1000.0, id as f64, 0.0),
            velocity: Vec3::default(),
            location: "earth".into(),
            version: 3,
            components: bytes::Bytes::from(vec![id as u8; 16]),
            components_version: 1,
            territory: "earth".into(),
        })
        .collect();
    PostgresStore::new(&pg.url())
        .commit(&CommitBatch { tick: 9, entities: entities.clone() })
        .await
        .expect("seed the store");
    pg.stop();

    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("replicant.log");
    let sol = sol_path();
    let url = pg.url();
    let rep = Replicant::spawn_logged(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sol.as_os_str(),
            "--store".as_ref(),
            "postgres".as_ref(),
            "--postgres-url".as_ref(),
            url.as_ref(),
        ],
        Some(&log),
    );
    // Down: not ready, for a reason, for as long as PostgreSQL is down.
    for _ in 0..10 {
        let (status, body) = rep.readyz();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("loading"), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("not serving an empty world"), "log says why: {text}");

    pg.start().await;
    rep.wait_ready(Duration::from_secs(30));
    let mut a =
        pb::admin_client::AdminClient::connect(format!("http://{}", rep.grpc)).await.unwrap();
    let c = a.counts(pb::CountsRequest {}).await.unwrap().into_inner();
    assert_eq!(c.entities, 50, "the stored world, not an empty one");
    let earth = c.territories.iter().find(|t| t.territory == "earth").unwrap();
    assert_eq!(earth.entities, 50);
    drop(rep);
    pg.stop();
}

/// The store's password is a secret: it never reaches the replicant's log, neither when
/// PostgreSQL refuses it (the error path, retried and logged) nor when it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_password_never_reaches_the_log() {
    use common::process::Replicant;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let password = format!("pw{nanos:x}Secret");
    let wrong = format!("wrong{nanos:x}Secret");
    let mut pg = Pg::init_with_password(&password);
    pg.start().await;
    let sol = sol_path();
    let logdir = tempfile::tempdir().unwrap();

    // Refused: the replicant keeps retrying and logging why, never with the password.
    let refused_log = logdir.path().join("refused.log");
    let refused_url = pg.url().replace(&password, &wrong);
    let rep = Replicant::spawn_logged(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sol.as_os_str(),
            "--store".as_ref(),
            "postgres".as_ref(),
            "--postgres-url".as_ref(),
            refused_url.as_ref(),
        ],
        Some(&refused_log),
    );
    let mut refused_text = String::new();
    for _ in 0..50 {
        refused_text = std::fs::read_to_string(&refused_log).unwrap_or_default();
        if refused_text.contains("password authentication failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused_text.contains("password authentication failed"),
        "the log says why the store is down: {refused_text}"
    );
    assert_eq!(rep.readyz().0, 503, "not ready without its store");
    drop(rep);

    // Accepted: serves, and still nothing of the password in the log.
    let served_log = logdir.path().join("served.log");
    let url = pg.url();
    let rep = Replicant::spawn_logged(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sol.as_os_str(),
            "--store".as_ref(),
            "postgres".as_ref(),
            "--postgres-url".as_ref(),
            url.as_ref(),
        ],
        Some(&served_log),
    );
    rep.wait_ready(Duration::from_secs(30));
    drop(rep);
    pg.stop();
    let refused_text = std::fs::read_to_string(&refused_log).unwrap();
    let served_text = std::fs::read_to_string(&served_log).unwrap();
    assert!(served_text.contains("recovered from store"), "{served_text}");
    for (name, text) in [("refused", &refused_text), ("served", &served_text)] {
        for secret in [&password, &wrong] {
            assert!(!text.contains(secret.as_str()), "{name} log holds a password: {text}");
        }
    }
}
