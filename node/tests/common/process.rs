//! The `starmesh replicant` binary as a real child process: spawned with
//! arguments, addresses read from its first stdout line, readiness from
//! `/readyz`, killed by PID (SIGKILL: a real `kill -9`) when dropped. Shared by
//! `tests/` and `benches/` (through `#[path]`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the replicant when dropped (also when a test panics), so no process is left behind.
pub struct Replicant {
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl Replicant {
    /// Spawns `bin replicant ARGS --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0`.
    pub fn spawn(bin: &str, args: &[&std::ffi::OsStr]) -> Replicant {
        Self::spawn_logged(bin, args, None)
    }

    /// Like `spawn`, with the replicant's log (stderr) written to `log`.
    pub fn spawn_logged(
        bin: &str,
        args: &[&std::ffi::OsStr],
        log: Option<&std::path::Path>,
    ) -> Replicant {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("create the log file")),
            None => Stdio::null(),
        };
        let mut child = Command::new(bin)
            .args(["replicant", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn starmesh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .expect("an address")
        };
        let (grpc, metrics) = (addr("grpc="), addr("metrics="));
        Replicant { child, grpc, metrics }
    }

    /// `/readyz`: (HTTP status, body).
    pub fn readyz(&self) -> (u16, String) {
        http_get(self.metrics, "/readyz")
    }

    /// Waits until `/readyz` says 200, failing after `limit`.
    pub fn wait_ready(&self, limit: Duration) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.readyz().0 == 200 {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("replicant not ready after {limit:?}: {:?}", self.readyz());
    }

    /// SIGKILL by PID and reap.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Replicant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET over loopback (no client library needed for two endpoints).
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
