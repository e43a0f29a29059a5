//! PostgreSQL store against a REAL server: Debian's postgresql 15, started by
//! this harness (initdb into a temp dir, loopback port, run as the `postgres`
//! user) and stopped by PID. If PostgreSQL cannot be started the test fails.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use starmesh_node::replicant::Config;
use starmesh_node::store::Store;
use starmesh_node::store::postgres::PostgresStore;
use starmesh_node::territory::builtin_test_config;
use starmesh_node::wire::pb::{self, replicant_message::Msg};

const BIN: &str = "/usr/lib/postgresql/15/bin";

struct Pg {
    dir: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id(1)");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a `postgres` user exists (apt-get install -y postgresql)");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id(1)");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres gid");
    (uid, gid)
}

impl Pg {
    fn init() -> Pg {
        assert!(
            Path::new(BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed: apt-get install -y postgresql"
        );
        let (uid, gid) = ids();
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid)).unwrap();
        let dir = tmp.path().join("data");
        let st = Command::new(Path::new(BIN).join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&dir)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(st.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Pg { dir, port, uid, gid, child: None, _tmp: tmp }
    }

    fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(Path::new(BIN).join("postgres"))
            .arg("-D")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .uid(self.uid)
            .gid(self.gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("PostgreSQL did not start on port {}", self.port);
    }

    /// Fast shutdown (SIGINT) of the postmaster by its PID.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_buffers_then_drains_and_loses_nothing() {
    let mut pg = Pg::init();
    pg.start().await;
    let store = Arc::new(PostgresStore::connect(&pg.url()).await.expect("schema"));
    // A long lease: this test sends no heartbeats.
    let cfg = Config { backlog_bound: 2_000, lease: Duration::from_secs(60), ..fast_config() };
    let r = start(&builtin_test_config(), cfg, store.clone()).await;
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
            Msg::Rejected(r) => Some(r.reason),
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
    let fresh = PostgresStore::connect(&pg.url()).await.unwrap();
    let mut stored = fresh.load_all().await.unwrap();
    stored.sort_by_key(|e| e.id);
    assert_eq!(stored.len(), truth.len());
    assert_eq!(stored, truth);
    drop(store);
    pg.stop();
}
