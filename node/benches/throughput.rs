//! Throughput benchmark (not a test): `cargo bench -p starmesh-node --bench throughput`.
//! Prints entity writes/s ingested, fan-out updates/s and bytes/s to N
//! subscribers, store commit throughput for both stores (PostgreSQL started
//! here, by the same harness the tests use), and replicant restart time
//! (`kill -9` -> ready with every entity loaded) by store and entity count,
//! beside same-run baselines (raw loopback TCP; fsync'd appends of the same bytes).
//! `-- --short`: the same measurements, smaller and shorter (CI keeps them working).

// The test harnesses, shared rather than copied: a real PostgreSQL, and the
// replicant binary as a child process.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;
#[path = "support/report.rs"]
mod report;

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
const BATCH: usize = 500;
const TICK_HZ: u32 = 30;

/// Rounds of store commits / fsync'd appends.
fn rounds() -> u64 {
    if report::short() { 20 } else { 200 }
}

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
    let total: usize = if report::short() { 64 << 20 } else { 512 << 20 };
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
    let rounds = rounds() as usize;
    for _ in 0..rounds {
        f.write_all(&bytes).unwrap();
        f.sync_data().unwrap();
    }
    (rounds * BATCH) as f64 / t.elapsed().as_secs_f64()
}

async fn store_commits(store: &dyn Store) -> f64 {
    let t = Instant::now();
    let rounds = rounds();
    for r in 0..rounds {
        let entities = (0..BATCH as u64).map(|i| entity(i + 1, r + 1)).collect();
        store.commit(&CommitBatch { tick: r, entities }).await.unwrap();
    }
    (rounds as usize * BATCH) as f64 / t.elapsed().as_secs_f64()
}

/// A bench server: `Hello`, the grant for `earth`, and a task recording the
/// highest committed seq.
struct BenchServer {
    tx: tokio::sync::mpsc::Sender<pb::ServerMessage>,
    epoch: u64,
    committed: Arc<AtomicU64>,
    seq: u64,
}

impl BenchServer {
    async fn connect(url: &str) -> BenchServer {
        let mut client =
            pb::server_link_client::ServerLinkClient::connect(url.to_string()).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        tx.send(pb::ServerMessage {
            msg: Some(server_message::Msg::Hello(pb::Hello {
                server_name: "bench".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inb = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
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
        BenchServer { tx, epoch, committed, seq: 0 }
    }

    /// Writes entity `id` (every write moves it, so every write is a change).
    async fn write(&mut self, id: u64) {
        self.seq += 1;
        let seq = self.seq;
        let w = pb::EntityWrite {
            seq,
            epoch: self.epoch,
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
            custom: vec![],
        };
        self.tx.send(pb::ServerMessage { msg: Some(server_message::Msg::Write(w)) }).await.unwrap();
    }

    async fn wait_committed(&self) {
        while self.committed.load(Ordering::Relaxed) < self.seq {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `GatewayUpdate` as the bench reads it: the batch's updates left as bytes,
/// so counting what arrives costs the bench almost nothing (a full decode of
/// every update would put the subscribers' CPU into the replicant's figure:
/// they share this process).
#[derive(Clone, PartialEq, prost::Message)]
struct RawGatewayUpdate {
    #[prost(uint64, tag = "1")]
    player_id: u64,
    #[prost(message, optional, tag = "2")]
    batch: Option<RawBatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(uint64, tag = "1")]
    tick: u64,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    updates: Vec<bytes::Bytes>,
}

/// Attaches `n` players with bubbles around the written entities on one
/// gateway link; returns (updates, bytes) counters of what arrives.
async fn subscribe(
    url: &str,
    n: u64,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let updates = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let channel =
        tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (gtx, grx) = tokio::sync::mpsc::channel(1024);
    for p in 1..=n {
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
    let codec = tonic_prost::ProstCodec::<pb::GatewayMessage, RawGatewayUpdate>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/starmesh.v1.GatewayLink/Session");
    let mut gin = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(grx)),
            path,
            codec,
        )
        .await
        .unwrap()
        .into_inner();
    let (u2, b2) = (updates.clone(), bytes.clone());
    let task = tokio::spawn(async move {
        // Holds the sender: the link lives until this task is aborted.
        let _keep = gtx;
        while let Ok(Some(m)) = gin.message().await {
            b2.fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
            u2.fetch_add(m.batch.map_or(0, |b| b.updates.len() as u64), Ordering::Relaxed);
        }
    });
    (updates, bytes, task)
}

async fn replicant_bench(dir: &std::path::Path, tcp: f64) {
    let store = Arc::new(EmbeddedStore::open(&dir.join("replicant")).unwrap());
    // A long lease: the bench writer sends no heartbeats.
    let cfg = Config {
        tick_hz: TICK_HZ,
        budget_bytes: 1 << 20,
        queue_capacity: 1024,
        lease: Duration::from_secs(600),
        // The raw fan-out against the wire: every subscriber asks for every entity
        // every tick, so no level of detail (`benches/hot_crowd.rs` measures the cap).
        bubble_cap: replicant::interest::BubbleCap::UNLIMITED,
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
    let mut server = BenchServer::connect(&url).await;
    let short = report::short();

    // Ingest: one server stream writing as fast as it can, no subscribers.
    let secs = if short { 1.0 } else { 5.0 };
    let t = Instant::now();
    let seq0 = server.seq;
    while t.elapsed().as_secs_f64() < secs {
        let id = server.seq % ENTITIES + 1;
        server.write(id).await;
    }
    let sent_elapsed = t.elapsed().as_secs_f64();
    server.wait_committed().await;
    let elapsed = t.elapsed().as_secs_f64();
    let n = (server.seq - seq0) as f64;
    report::figure(
        "replicant ingest: writes/s sent (1 stream, 1000 entities)",
        n / sent_elapsed,
        "writes/s",
    );
    report::figure("replicant ingest: writes/s acknowledged as committed", n / elapsed, "writes/s");

    // Fan-out: every entity written once a tick (paced), so each subscriber's
    // bubble has all ENTITIES changed every tick; what arrives is measured
    // against what the tick rate asks for and against the wire.
    let counts: &[u64] = if short { &[1, 8] } else { &[1, 8, 64, 256] };
    for &subs in counts {
        let (updates, bytes, task) = subscribe(&url, subs).await;
        // Let the bubbles fill (enters) before measuring deltas.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(TICK_HZ)));
        for _ in 0..TICK_HZ / 2 {
            tick.tick().await;
            for id in 1..=ENTITIES {
                server.write(id).await;
            }
        }
        let secs = if short { 1.0 } else { 4.0 };
        let (u0, b0) = (updates.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
        // The replicant's own counters over the window: where its ticks go.
        let rm = &r.shared.metrics;
        let (ts0, tc0) = (rm.tick_duration.get_sample_sum(), rm.tick_duration.get_sample_count());
        let d0 = rm.subscriber_deferred_ticks.get();
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < secs {
            tick.tick().await;
            for id in 1..=ENTITIES {
                server.write(id).await;
            }
        }
        let elapsed = t.elapsed().as_secs_f64();
        let (u1, b1) = (updates.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
        let ticks = (rm.tick_duration.get_sample_count() - tc0) as f64;
        let tick_ms = (rm.tick_duration.get_sample_sum() - ts0) / ticks.max(1.0) * 1e3;
        let deferred = (rm.subscriber_deferred_ticks.get() - d0) as f64;
        task.abort();
        let ups = (u1 - u0) as f64 / elapsed;
        let bps = (b1 - b0) as f64 / elapsed;
        let asked = (subs * ENTITIES) as f64 * f64::from(TICK_HZ);
        report::against(
            &format!("fan-out to {subs} subscribers: bytes/s vs loopback TCP"),
            bps / 1e6,
            "MB/s",
            tcp / 1e6,
            "MB/s raw loopback TCP",
        );
        report::against(
            &format!("fan-out to {subs} subscribers: entity updates/s vs asked"),
            ups,
            "updates/s",
            asked,
            "subscribers x 1000 changed x 30 Hz",
        );
        report::figure(
            &format!("fan-out to {subs} subscribers: replicant ticks/s"),
            ticks / elapsed,
            "Hz",
        );
        report::figure(
            &format!("fan-out to {subs} subscribers: replicant tick, mean"),
            tick_ms,
            "ms",
        );
        report::figure(
            &format!("fan-out to {subs} subscribers: player-ticks held back (link full), share"),
            deferred / (ticks.max(1.0) * subs as f64),
            "of player-ticks",
        );
    }
    server.wait_committed().await;
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

fn restart_sizes() -> &'static [u64] {
    if report::short() { &[10_000] } else { &[10_000, 100_000, 1_000_000] }
}

async fn restart_bench(dir: &std::path::Path, pg: &pg::Pg) {
    for &n in restart_sizes() {
        let data = dir.join(format!("restart-{n}"));
        fill(&EmbeddedStore::open(&data).unwrap(), n).await;
        let took = restart_time(&["--data-dir".as_ref(), data.as_os_str()], n).await;
        report::figure(
            &format!("restart, embedded: kill -9 -> ready, {n} entities loaded"),
            took.as_secs_f64(),
            "s",
        );
    }
    for &n in restart_sizes() {
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
        report::figure(
            &format!("restart, PostgreSQL: kill -9 -> ready, {n} entities loaded"),
            took.as_secs_f64(),
            "s",
        );
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let tcp = tcp_baseline().await;
        report::figure("baseline: raw loopback TCP", tcp / 1e6, "MB/s");
        // BENCH_FANOUT_ONLY=1: ingest and fan-out alone (for before/after runs of them).
        if std::env::var_os("BENCH_FANOUT_ONLY").is_some() {
            replicant_bench(dir.path(), tcp).await;
            return;
        }
        let fsync = fsync_baseline(dir.path());
        let fsync_what = "entities/s fsync'd appends, same bytes";
        let emb = EmbeddedStore::open(&dir.path().join("emb")).unwrap();
        report::against(
            &format!("persistence: embedded (redb) commits, {BATCH} entities each"),
            store_commits(&emb).await,
            "entities/s",
            fsync,
            fsync_what,
        );
        let mut pg = pg::Pg::init();
        pg.start().await;
        let store = PostgresStore::new(&pg.url());
        report::against(
            &format!("persistence: PostgreSQL 15 commits, {BATCH} entities each (fsync on)"),
            store_commits(&store).await,
            "entities/s",
            fsync,
            fsync_what,
        );
        replicant_bench(dir.path(), tcp).await;
        restart_bench(dir.path(), &pg).await;
        pg.stop();
    });
}
