//! A real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: one WebSocket, JSON commands with ids, events collected as they
//! arrive. Only what the web map test needs: open a page, evaluate
//! JavaScript, collect console errors and exceptions, take a screenshot.
//!
//! The browser runs in its own process group with a fresh profile, and the
//! whole group is killed when this is dropped, so no renderer outlives a test.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every protocol event received so far (method, params, sessionId).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the web map test needs a real Chromium; run e2e/install-deps.sh"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1440,900",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // Its own process group: the drop kills the browser and every helper it forked.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the URL so the browser never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("ws://") {
                    let _ = tx.send(line[i..].trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                kill_group(&mut child);
                panic!("chromium did not print its DevTools URL within 60s");
            }
        };
        let (mut ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        }
        Browser { child, ws, next_id: 0, events: Vec::new(), _profile: profile }
    }

    /// Sends a command (to a page session, or the browser) and waits for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(msg.to_string().into())).expect("send to DevTools");
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools read during {method}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools sends JSON");
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// A new tab with console, log and exception reporting on; its session id.
    pub fn new_page(&mut self) -> String {
        let t = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a =
            self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        let session = a["sessionId"].as_str().expect("sessionId").to_string();
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(Some(&session), m, json!({}));
        }
        session
    }

    pub fn navigate(&mut self, session: &str, url: &str) {
        let r = self.call(Some(session), "Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Evaluates an expression (promises awaited) and returns its JSON value.
    pub fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is `true`, failing after `limit`.
    pub fn wait_for(&mut self, session: &str, expr: &str, limit: Duration) {
        let t = Instant::now();
        while self.eval(session, expr) != json!(true) {
            assert!(
                t.elapsed() < limit,
                "{expr} not true after {limit:?}; errors: {:?}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Console errors, uncaught exceptions and error log entries so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        Some(format!("exception: {}", p["exceptionDetails"]))
                    }
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        Some(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    pub fn screenshot(&mut self, session: &str, path: &std::path::Path) {
        use base64::Engine;
        let r = self.call(Some(session), "Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Closes the browser politely, then makes sure its whole group is gone.
    pub fn close(mut self) {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": "Browser.close", "params": {}});
        let _ = self.ws.send(Message::Text(msg.to_string().into()));
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drop kills whatever is left of the group.
    }
}

fn kill_group(child: &mut Child) {
    // The group id is the browser's pid (process_group(0)); helpers share it.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
