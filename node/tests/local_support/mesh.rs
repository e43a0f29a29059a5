//! `starmesh local` as a real child process: its stdout collected line by
//! line (progress, then the summary), plain HTTP to its listener, Ctrl-C as
//! a real SIGINT, and a SIGKILL on drop so no process outlives a failed test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LocalMesh {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// A port that was free a moment ago (the binary must be given a fixed
/// address: that is the flag under test).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>, echo: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            eprintln!("{echo} {line}");
            into.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}

impl LocalMesh {
    pub fn spawn(data: &Path, args: &[&str]) -> LocalMesh {
        LocalMesh::spawn_logging(data, args, "warn")
    }

    /// With `RUST_LOG` set to `log` (e.g. to read the autoscaler's decisions).
    pub fn spawn_logging(data: &Path, args: &[&str], log: &str) -> LocalMesh {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_starmesh"))
            .arg("local")
            .arg("--data")
            .arg(data)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn starmesh local");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("stdout"), lines.clone(), "[local]");
        collect(child.stderr.take().expect("stderr"), stderr.clone(), "[local:err]");
        LocalMesh { child, addr, lines, stderr }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(l) = self.stdout().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "starmesh local exited ({st}) before printing {needle:?}:\n{}",
                    self.stdout().join("\n")
                );
            }
            assert!(
                t.elapsed() < limit,
                "no {needle:?} after {limit:?}:\n{}",
                self.stdout().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, as a terminal would send it.
    pub fn interrupt(&self) {
        let st = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -INT failed");
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(t.elapsed() < limit, "starmesh local still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path)
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 request over loopback; (status, body), (0, "") if unreachable.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The summary table's rows: `| key | value |` -> (key, value).
pub fn summary_rows(lines: &[String]) -> Vec<(String, String)> {
    let start = lines
        .iter()
        .position(|l| l.starts_with("starmesh local: summary"))
        .unwrap_or_else(|| panic!("no summary in:\n{}", lines.join("\n")));
    lines[start..]
        .iter()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            match cells.as_slice() {
                ["", k, v, ""] => Some((k.to_string(), v.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// The leading number of a summary value ("20 (peak 20)" -> 20).
pub fn leading_number(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number at the start of {v:?}"))
}
