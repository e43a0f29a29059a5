//! The supervised group: one replicant, the game servers, the gateway and the
//! bots, started in dependency order and stopped in reverse, with the store
//! flushed before the replicant goes away.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::replicant::Running;
use crate::server::metrics::Metrics as ServerMetrics;
use crate::web_map::Control;

use crate::bots::Report;
use crate::gateway::Hub;

use super::roles::{self, ServerTask};

/// The game servers, by name; shared with the web map (its kill button).
pub struct Servers {
    replicant: SocketAddr,
    tick_hz: u32,
    running: Mutex<BTreeMap<String, ServerTask>>,
    /// Metrics of servers that were killed: their ticks still count in the summary.
    dead: Mutex<Vec<Arc<ServerMetrics>>>,
    /// Killing from the map is a development tool: only when the map is not
    /// reachable from other machines.
    allow_kill: bool,
}

impl Servers {
    pub fn new(replicant: SocketAddr, tick_hz: u32, web: SocketAddr) -> Self {
        let allow_kill = match web.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        };
        Self {
            replicant,
            tick_hz,
            running: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(Vec::new()),
            allow_kill,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServerTask>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, name: &str) {
        let t = roles::spawn_server(name, self.replicant, self.tick_hz);
        if let Some(old) = self.running().insert(name.to_string(), t) {
            old.task.abort();
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.running().keys().cloned().collect()
    }

    /// Every server's tick histogram, dead ones included.
    pub fn metrics(&self) -> Vec<Arc<ServerMetrics>> {
        let mut all: Vec<_> = self.running().values().map(|t| t.metrics.clone()).collect();
        all.extend(self.dead.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        all
    }

    fn remove(&self, name: &str) -> Option<ServerTask> {
        let t = self.running().remove(name)?;
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).push(t.metrics.clone());
        Some(t)
    }

    /// Stops one server the autoscaler drained (it owns nothing any more, so
    /// its stream closing moves no authority).
    pub async fn stop(&self, name: &str) -> bool {
        match self.remove(name) {
            Some(t) => {
                t.task.abort();
                let _ = t.task.await;
                true
            }
            None => false,
        }
    }

    pub async fn stop_all(&self) {
        let all: Vec<String> = self.names();
        for name in all {
            if let Some(t) = self.remove(&name) {
                t.task.abort();
                let _ = t.task.await;
            }
        }
    }
}

impl Control for Servers {
    fn kill_allowed(&self) -> bool {
        self.allow_kill
    }

    fn kill_server(&self, name: &str) -> bool {
        if !self.allow_kill {
            return false;
        }
        match self.remove(name) {
            Some(t) => {
                // Abort, not a graceful close: the replicant must notice the
                // stream dying the way it would a crashed process.
                t.task.abort();
                tracing::warn!(server = name, "killed from the web map (simulated crash)");
                true
            }
            None => false,
        }
    }
}

pub struct Group {
    pub replicant: Running,
    pub servers: Arc<Servers>,
    /// The gateway's tasks live as long as the runtime; it writes nothing
    /// the flush waits for (servers write), so it is not stopped separately.
    pub gateway: Option<Arc<Hub>>,
    pub bots: Option<Bots>,
}

/// The bots' task and the switch that ends their flight early (Ctrl-C).
pub struct Bots {
    pub task: JoinHandle<anyhow::Result<Report>>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// How the store flush at the end went.
pub struct Flush {
    pub unflushed: u64,
    pub took: Duration,
}

impl Group {
    /// Waits until `want` servers are connected to the replicant (each has
    /// said hello and holds its lease), or the deadline passes.
    pub async fn wait_servers(&self, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let live = self.replicant.shared.lock().world.authority.live_servers().count();
            if live >= want || Instant::now() >= deadline {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers first (bots, gateway, servers), lets the replicant
    /// close its last ticks, and waits for the store to commit everything
    /// queued: what is in memory at the end is what the next run loads.
    pub async fn stop_writers_and_flush(
        &mut self,
        interrupted: bool,
        limit: Duration,
    ) -> (Option<Report>, Flush) {
        let report = match self.bots.take() {
            Some(bots) => {
                // At the end of --duration the bots end on their own; on Ctrl-C they
                // are told to land now. Either way they report what they saw.
                if interrupted {
                    let _ = bots.stop.send(true);
                }
                match tokio::time::timeout(Duration::from_secs(15), bots.task).await {
                    Ok(Ok(Ok(r))) => Some(r),
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(error = %e, "bots failed");
                        None
                    }
                    _ => None,
                }
            }
            None => None,
        };
        self.servers.stop_all().await;
        let started = Instant::now();
        let shared = &self.replicant.shared;
        // Two ticks so the last writes leave the tick's dirty set for the queue.
        let tick = Duration::from_secs_f64(2.0 / f64::from(shared.cfg.tick_hz.max(1)));
        tokio::time::sleep(tick).await;
        let deadline = started + limit;
        let unflushed = loop {
            let left = shared.lock().wb.buffered() as u64;
            if left == 0 || Instant::now() >= deadline {
                break left;
            }
            shared.commit_notify.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (report, Flush { unflushed, took: started.elapsed() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killing_from_the_map_only_on_loopback_and_only_known_servers() {
        let replicant: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let open = Servers::new(replicant, 30, "0.0.0.0:8080".parse().expect("addr"));
        assert!(!open.allow_kill, "a map reachable from other machines cannot kill");
        assert!(!open.kill_server("hurston"));
        let local = Servers::new(replicant, 30, "127.0.0.1:8080".parse().expect("addr"));
        assert!(local.allow_kill);
        assert!(!local.kill_server("nobody"), "unknown server");
        assert!(Servers::new(replicant, 30, "[::1]:8080".parse().expect("addr")).allow_kill);
    }
}
