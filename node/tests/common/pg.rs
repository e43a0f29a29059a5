//! A real PostgreSQL for tests and the benchmark: Debian's postgresql 15,
//! initdb into a temp dir, listening on a loopback port, run as the
//! `postgres` user, stopped by PID. Shared by `tests/` (through
//! `common`) and `benches/` (through `#[path]`), so both measure and test the
//! same server the same way. If PostgreSQL cannot be started, callers fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Pg {
    dir: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    child: Option<Child>,
    /// With a password, the server asks for it (scram-sha-256) instead of trusting loopback.
    password: Option<String>,
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
    pub fn init() -> Pg {
        Self::init_with(None)
    }

    /// A server that requires `password` for the `postgres` user (scram-sha-256).
    pub fn init_with_password(password: &str) -> Pg {
        Self::init_with(Some(password))
    }

    fn init_with(password: Option<&str>) -> Pg {
        assert!(
            Path::new(BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed: apt-get install -y postgresql"
        );
        let (uid, gid) = ids();
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid)).unwrap();
        let dir = tmp.path().join("data");
        let mut initdb = Command::new(Path::new(BIN).join("initdb"));
        initdb.args(["-U", "postgres", "-D"]).arg(&dir);
        match password {
            None => {
                initdb.arg("--auth=trust");
            }
            Some(pw) => {
                let pwfile = tmp.path().join("pwfile");
                std::fs::write(&pwfile, pw).unwrap();
                std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
                initdb.arg("--auth=scram-sha-256").arg("--pwfile").arg(&pwfile);
            }
        }
        let st = initdb
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(st.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Pg { dir, port, uid, gid, child: None, password: password.map(str::to_string), _tmp: tmp }
    }

    pub fn url(&self) -> String {
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.port
        );
        match &self.password {
            Some(pw) => format!("{url} password={pw}"),
            None => url,
        }
    }

    pub async fn start(&mut self) {
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
    pub fn stop(&mut self) {
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
