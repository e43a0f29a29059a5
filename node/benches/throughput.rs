//! Throughput benchmark (not a test): `cargo bench -p starmesh-node --bench throughput`.
//! Prints entity writes/s ingested, fan-out updates/s and bytes/s to N
//! subscribers, store commit throughput for both stores (PostgreSQL started
//! here, by the same harness the tests use), and replicant restart time
//! (`kill -9` -> ready with every entity loaded) by store and entity count,
//! beside same-run baselines (raw loopback TCP; fsync'd appends of the same bytes).

// The test harnesses, shared rather than copied: a real PostgreSQL, and the
// replicant binary as a child process.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use starmesh_node::model::{Entity, Vec3};
use starmesh_node::replicant::{self, Config};
use starmesh_node::resources;
use starmesh_node::store::{CommitBatch, Store, embedded::EmbeddedStore, postgres::PostgresStore};
use starmesh_node::wire::pb::{self, replicant_message::Msg, server_message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENTITIES: u64 = 1000;
const SUBSCRIBERS: u64 = 8;
const BATCH: usize = 500;

fn entity(id: u64, version: u64) -> Entity {
    Entity {
        id,
        kind: 1,
        position: Vec3::new(1000.0 + id as f64 * 0.1, 0.0, 0.0),
        velocity: Vec3::new(1.0, 0.0, 0.0),
        location: "earth".into(),
        version,
        components: bytes::Bytes::from(vec![7u8; 64]),
        components_version: 1,
        territory: "earth".into(),
    }
}

async fn tcp_baseline() -> f64 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let total: usize = 512 << 20;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        while n < total {
            n += s.read(&mut buf).await.unwrap();
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = vec![1u8; 64 << 10];
    let t = Instant::now();
    for _ in 0..total / chunk.len() {
        s.write_all(&chunk).await.unwrap();
    }
    reader.await.unwrap();
    total as f64 / t.elapsed().as_secs_f64()
}

fn fsync_baseline(dir: &std::path::Path) -> f64 {
    let bytes: Vec<u8> = (0..BATCH as u64)
        .flat_map(|i| starmesh_node::wire::validate::entity_to_pb(&entity(i, 1)).encode_to_vec())
        .collect();
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("append.log")).unwrap();
    let t = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        f.write_all(&bytes).unwrap();
        f.sync_data().unwrap();
    }
    (rounds * BATCH) as f64 / t.elapsed().as_secs_f64()
}

async fn store_commits(store: &dyn Store) -> f64 {
    let t = Instant::now();
    let rounds = 200u64;
    for r in 0..rounds {
        let entities = (0..BATCH as u64).map(|i| entity(i + 1, r + 1)).collect();
        store.commit(&CommitBatch { tick: r, entities }).await.unwrap();
    }
    (rounds as usize * BATCH) as f64 / t.elapsed().as_secs_f64()
}

async fn replicant_bench(dir: &std::path::Path) {
    let store = Arc::new(EmbeddedStore::open(&dir.join("replicant")).unwrap());
    // A long lease: the bench writer sends no heartbeats.
    let cfg = Config {
        tick_hz: 30,
        budget_bytes: 1 << 20,
        queue_capacity: 1024,
        lease: Duration::from_secs(600),
        ..Config::default()
    };
    let mesh = resources::load(&[sol_path()], "0").unwrap();
    let r = replicant::start(
        &mesh,
        cfg,
        store,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    r.loaded().await;
    let url = format!("http://{}", r.grpc_addr);

    let updates = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut gw = pb::gateway_link_client::GatewayLinkClient::connect(url.clone()).await.unwrap();
    let (gtx, grx) = tokio::sync::mpsc::channel(64);
    for p in 1..=SUBSCRIBERS {
        let a = pb::PlayerAttach {
            player_id: p,
            entity_id: 0,
            radius: 400.0,
            position: Some(pb::Vec3 { x: 1000.0, y: 0.0, z: 0.0 }),
        };
        gtx.send(pb::GatewayMessage { msg: Some(pb::gateway_message::Msg::Attach(a)) })
            .await
            .unwrap();
    }
    let mut gin =
        gw.session(tokio_stream::wrappers::ReceiverStream::new(grx)).await.unwrap().into_inner();
    let (u2, b2) = (updates.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok(Some(m)) = gin.message().await {
            b2.fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
            u2.fetch_add(m.batch.map_or(0, |b| b.updates.len() as u64), Ordering::Relaxed);
        }
    });

    let mut client = pb::server_link_client::ServerLinkClient::connect(url).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    tx.send(pb::ServerMessage {
        msg: Some(server_message::Msg::Hello(pb::Hello { server_name: "bench".into() })),
    })
    .await
    .unwrap();
    let mut inb =
        client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let epoch = loop {
        if let Ok(Some(pb::ReplicantMessage { msg: Some(Msg::Grant(g)) })) = inb.message().await
            && g.territory == "earth"
        {
            break g.epoch;
        }
    };
    let committed = Arc::new(AtomicU64::new(0));
    let c2 = committed.clone();
    tokio::spawn(async move {
        loop {
            match inb.message().await {
                Ok(Some(m)) => {
                    if let Some(Msg::Committed(c)) = m.msg {
                        c2.store(c.seq, Ordering::Relaxed);
                    }
                }
                other => {
                    eprintln!("server stream ended: {other:?}");
                    return;
                }
            }
        }
    });
    let secs = 5.0;
    let t = Instant::now();
    let mut seq = 0u64;
    let (u0, b0) = (updates.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    while t.elapsed().as_secs_f64() < secs {
        seq += 1;
        let id = seq % ENTITIES + 1;
        let w = pb::EntityWrite {
            seq,
            epoch,
            id,
            kind: 1,
            position: Some(pb::Vec3 {
                x: 1000.0 + (seq % 997) as f64 * 0.1,
                y: id as f64 * 0.1,
                z: 0.0,
            }),
            velocity: Some(pb::Vec3 { x: 1.0, y: 0.0, z: 0.0 }),
            location: "earth".into(),
            components: bytes::Bytes::from(vec![7u8; 64]),
        };
        tx.send(pb::ServerMessage { msg: Some(server_message::Msg::Write(w)) }).await.unwrap();
    }
    let sent_elapsed = t.elapsed().as_secs_f64();
    while committed.load(Ordering::Relaxed) < seq {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let (u1, b1) = (updates.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    println!(
        "replicant ingest: {:.0} entity writes/s sent, {:.0} writes/s acknowledged-as-committed ({seq} writes, {ENTITIES} entities)",
        seq as f64 / sent_elapsed,
        seq as f64 / elapsed
    );
    println!(
        "fan-out to {SUBSCRIBERS} subscribers: {:.0} updates/s, {:.1} MB/s",
        (u1 - u0) as f64 / elapsed,
        (b1 - b0) as f64 / elapsed / 1e6
    );
    r.shutdown().await;
}

fn sol_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml")
}

/// Fills a store with `n` entities (spread over the test world), 10k per commit.
async fn fill(store: &dyn Store, n: u64) {
    let per = 10_000u64;
    for start in (0..n).step_by(per as usize) {
        let entities = (start..(start + per).min(n))
            .map(|i| Entity {
                position: Vec3::new(-2000.0 + (i % 4000) as f64, (i / 4000) as f64 * 0.01, 0.0),
                ..entity(i + 1, 1)
            })
            .collect();
        store.commit(&CommitBatch { tick: start, entities }).await.unwrap();
    }
}

/// Starts the replicant binary on a filled store, `kill -9`s it, starts it
/// again and times kill -> `/readyz` 200, then checks every entity is loaded.
async fn restart_time(store_args: &[&std::ffi::OsStr], n: u64) -> Duration {
    let sol = sol_path();
    let mut args: Vec<&std::ffi::OsStr> = vec!["--system".as_ref(), sol.as_os_str()];
    args.extend_from_slice(store_args);
    let bin = env!("CARGO_BIN_EXE_starmesh");
    let mut first = process::Replicant::spawn(bin, &args);
    first.wait_ready(Duration::from_secs(600));
    let t = Instant::now();
    first.kill_9();
    let second = process::Replicant::spawn(bin, &args);
    second.wait_ready(Duration::from_secs(600));
    let took = t.elapsed();
    let mut admin =
        pb::admin_client::AdminClient::connect(format!("http://{}", second.grpc)).await.unwrap();
    let c = admin.counts(pb::CountsRequest {}).await.unwrap().into_inner();
    assert_eq!(c.entities, n, "every persisted entity is loaded");
    took
}

async fn restart_bench(dir: &std::path::Path, pg: &pg::Pg) {
    for n in [10_000u64, 100_000, 1_000_000] {
        let data = dir.join(format!("restart-{n}"));
        fill(&EmbeddedStore::open(&data).unwrap(), n).await;
        let took = restart_time(&["--data-dir".as_ref(), data.as_os_str()], n).await;
        println!(
            "restart (embedded, kill -9 -> ready, all loaded): {n} entities in {:.2} s",
            took.as_secs_f64()
        );
    }
    for n in [10_000u64, 100_000, 1_000_000] {
        let store = PostgresStore::new(&pg.url());
        // One table per database: start from an empty one for each size.
        let url = pg.url();
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute("DROP TABLE IF EXISTS starmesh_entities").await.unwrap();
        fill(&store, n).await;
        let took = restart_time(
            &["--store".as_ref(), "postgres".as_ref(), "--postgres-url".as_ref(), url.as_ref()],
            n,
        )
        .await;
        println!(
            "restart (postgres, kill -9 -> ready, all loaded): {n} entities in {:.2} s",
            took.as_secs_f64()
        );
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        println!("baseline loopback TCP: {:.1} MB/s", tcp_baseline().await / 1e6);
        println!(
            "baseline fsync'd appends ({BATCH} encoded entities per fsync): {:.0} entities/s",
            fsync_baseline(dir.path())
        );
        let emb = EmbeddedStore::open(&dir.path().join("emb")).unwrap();
        println!(
            "embedded (redb) commits ({BATCH} entities per commit): {:.0} entities/s",
            store_commits(&emb).await
        );
        let mut pg = pg::Pg::init();
        pg.start().await;
        let store = PostgresStore::new(&pg.url());
        println!(
            "postgres 15 commits ({BATCH} entities per commit, loopback, default fsync on): {:.0} entities/s",
            store_commits(&store).await
        );
        replicant_bench(dir.path()).await;
        restart_bench(dir.path(), &pg).await;
        pg.stop();
    });
}
