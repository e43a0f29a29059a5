//! The whole mesh as real child processes on loopback: a `starmesh replicant`
//! serving the Stanton example, game servers, a gateway and a bots process.
//! Every child is killed by PID when its guard drops (also when a test
//! panics), so nothing is left running. Shared by `tests/mesh_*.rs` and
//! `benches/handoff.rs` (through `#[path]`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use starmesh_node::wire::pb;

pub const BIN: &str = env!("CARGO_BIN_EXE_starmesh");

pub fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples").join(name)
}

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Kept open so the child never writes to a closed pipe.
    pub stdout: Option<BufReader<ChildStdout>>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `starmesh ARGS`, stderr to `dir/NAME.log`, and returns it with
    /// its first stdout line (the one announcing its addresses).
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> (Proc, String) {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("create log")))
            .spawn()
            .expect("spawn starmesh");
        let mut p = Proc { name: name.to_string(), child, stdout: None, log };
        let mut out = BufReader::new(p.child.stdout.take().expect("piped"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        p.stdout = Some(out);
        assert!(!line.is_empty(), "{name} printed nothing; log: {}", p.log_tail());
        (p, line)
    }

    /// SIGKILL (a real `kill -9`) and reap.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for the process to exit; returns (exit code, the rest of stdout).
    pub fn wait_output(&mut self, limit: Duration) -> (Option<i32>, String) {
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut rest = String::new();
                if let Some(out) = self.stdout.as_mut() {
                    let _ = out.read_to_string(&mut rest);
                }
                return (status.code(), rest);
            }
            assert!(t.elapsed() < limit, "{} still running after {limit:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn addr(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .expect("an address")
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn wait_ready(p: &Proc, metrics: SocketAddr, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if http_get(metrics, "/readyz").0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} not ready after {limit:?}; log:\n{}", p.name, p.log_tail());
}

pub struct Server {
    pub name: String,
    pub proc: Proc,
    pub metrics: SocketAddr,
}

/// Replicant (Stanton, embedded store in a temp dir), servers, gateway.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub replicant: Proc,
    pub grpc: SocketAddr,
    pub replicant_metrics: SocketAddr,
    pub servers: Vec<Server>,
    pub gateway: Proc,
    pub gateway_addr: SocketAddr,
    pub gateway_metrics: SocketAddr,
}

fn s(v: &str) -> String {
    v.to_string()
}

impl Mesh {
    pub fn start(servers: &[&str]) -> Mesh {
        Mesh::start_with(&manifest("stanton.yaml"), &manifest("stanton-layout.yaml"), servers)
    }

    /// The mesh of another StarSystem and ServerLayout (e.g. a dynamic one).
    pub fn start_with(system: &Path, layout: &Path, servers: &[&str]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        Mesh::start_in(dir, system, layout, servers, &[])
    }

    /// The mesh with its files in `dir`, and `extra` flags given to every process (e.g.
    /// `--tls-dir`).
    pub fn start_in(
        dir: tempfile::TempDir,
        system: &Path,
        layout: &Path,
        servers: &[&str],
        extra: &[String],
    ) -> Mesh {
        let with_extra = |args: Vec<String>| -> Vec<String> { [args, extra.to_vec()].concat() };
        let system = system.display().to_string();
        let layout = layout.display().to_string();
        let data = dir.path().join("data").display().to_string();
        let (replicant, line) = Proc::spawn(
            dir.path(),
            "replicant",
            &with_extra(vec![
                s("replicant"),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--metrics-listen"),
                s("127.0.0.1:0"),
                s("--data-dir"),
                data,
                s("--system"),
                system.clone(),
                s("--layout"),
                layout.clone(),
            ]),
        );
        let (grpc, replicant_metrics) = (addr(&line, "grpc="), addr(&line, "metrics="));
        wait_ready(&replicant, replicant_metrics, Duration::from_secs(30));
        let servers: Vec<Server> = servers
            .iter()
            .map(|name| {
                let (proc, line) = Proc::spawn(
                    dir.path(),
                    &format!("server-{name}"),
                    &with_extra(vec![
                        s("server"),
                        s("--replicant"),
                        grpc.to_string(),
                        s("--name"),
                        s(name),
                        s("--metrics"),
                        s("127.0.0.1:0"),
                    ]),
                );
                Server { name: s(name), metrics: addr(&line, "metrics="), proc }
            })
            .collect();
        for sv in &servers {
            wait_ready(&sv.proc, sv.metrics, Duration::from_secs(30));
        }
        let (gateway, line) = Proc::spawn(
            dir.path(),
            "gateway",
            &with_extra(vec![
                s("gateway"),
                s("--replicant"),
                grpc.to_string(),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--metrics"),
                s("127.0.0.1:0"),
                s("--system"),
                system,
                s("--layout"),
                layout,
            ]),
        );
        let (gateway_addr, gateway_metrics) = (addr(&line, "grpc="), addr(&line, "metrics="));
        wait_ready(&gateway, gateway_metrics, Duration::from_secs(30));
        Mesh {
            dir,
            replicant,
            grpc,
            replicant_metrics,
            servers,
            gateway,
            gateway_addr,
            gateway_metrics,
        }
    }

    /// Starts `starmesh bots ... --json` as a child; read it with `bots_report`.
    pub fn bots(&self, n: usize, duration: &str, prefix: &str) -> Proc {
        let args = [
            s("bots"),
            s("--gateway"),
            self.gateway_addr.to_string(),
            s("-n"),
            n.to_string(),
            s("--duration"),
            s(duration),
            s("--prefix"),
            s(prefix),
            s("--json"),
        ];
        let log = self.dir.path().join("bots.log");
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("create log")))
            .spawn()
            .expect("spawn bots");
        let stdout = child.stdout.take().map(BufReader::new);
        Proc { name: s("bots"), child, stdout, log }
    }

    pub fn kill_server(&mut self, name: &str) -> Instant {
        let sv = self.servers.iter_mut().find(|sv| sv.name == name).expect("a server by that name");
        let t = Instant::now();
        sv.proc.kill_9();
        t
    }

    /// Starts one more game server (e.g. the capacity a split asks for).
    pub fn add_server(&mut self, name: &str) {
        let (proc, line) = Proc::spawn(
            self.dir.path(),
            &format!("server-{name}"),
            &[
                s("server"),
                s("--replicant"),
                self.grpc.to_string(),
                s("--name"),
                s(name),
                s("--metrics"),
                s("127.0.0.1:0"),
            ],
        );
        let metrics = addr(&line, "metrics=");
        wait_ready(&proc, metrics, Duration::from_secs(30));
        self.servers.push(Server { name: s(name), metrics, proc });
    }

    /// Starts a killed server again under the same name.
    pub fn restart_server(&mut self, name: &str) {
        let grpc = self.grpc.to_string();
        let dir = self.dir.path().to_path_buf();
        let sv = self.servers.iter_mut().find(|sv| sv.name == name).expect("a server by that name");
        let (proc, line) = Proc::spawn(
            &dir,
            &format!("server-{name}-again"),
            &[
                s("server"),
                s("--replicant"),
                grpc,
                s("--name"),
                s(name),
                s("--metrics"),
                s("127.0.0.1:0"),
            ],
        );
        sv.metrics = addr(&line, "metrics=");
        sv.proc = proc;
        wait_ready(&sv.proc, sv.metrics, Duration::from_secs(30));
    }

    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- replicant\n{}\n--- gateway\n{}\n",
            self.replicant.log_tail(),
            self.gateway.log_tail()
        );
        for sv in &self.servers {
            out += &format!("--- {}\n{}\n", sv.name, sv.proc.log_tail());
        }
        out
    }
}

/// The replicant's assignments over the Admin service.
pub async fn assignments(grpc: SocketAddr) -> pb::AssignmentsResponse {
    let mut c = pb::admin_client::AdminClient::connect(format!("http://{grpc}"))
        .await
        .expect("admin connect");
    c.assignments(pb::AssignmentsRequest {}).await.expect("assignments").into_inner()
}

/// Polls until no territory is owned by `dead` and every one has an owner.
pub async fn wait_reassigned(grpc: SocketAddr, dead: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut c = pb::admin_client::AdminClient::connect(format!("http://{grpc}"))
        .await
        .expect("admin connect");
    loop {
        let a = c.assignments(pb::AssignmentsRequest {}).await.expect("assignments").into_inner();
        if a.assignments.iter().all(|x| !x.server.is_empty() && x.server != dead) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "territories of {dead} not reassigned within {limit:?}: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The bots' JSON report (`starmesh bots --json`).
pub fn bots_report(bots: &mut Proc, limit: Duration) -> (Option<i32>, serde_json::Value) {
    let (code, out) = bots.wait_output(limit);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("bots printed no JSON ({e}): {out:?}\nlog: {}", bots.log_tail())
    });
    (code, v)
}
