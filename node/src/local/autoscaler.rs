//! `starmesh local` with a dynamic layout follows its players as the operator
//! does in a cluster: every couple of seconds this task reads the in-process
//! replicant's players per cell, asks the same pure decision function
//! (`starmesh_api::autoscale::plan_cells`), applies splits and merges through
//! the same path as Admin `SetPartition` (`replicant::partition::request`),
//! starts game-server tasks up to the plan at once, and drains one (Admin
//! `Drain`'s code, `replicant::service::drain`) before stopping it. Every
//! decision is logged with its reason and numbers, and kept for the web map.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starmesh_api::DynamicLayout;
use starmesh_api::autoscale::{AutoscaleMemory, CellLoad, plan_cells};

use crate::replicant::{Shared, partition, service};

use super::progress::Progress;
use super::supervisor::Servers;

/// How often the autoscaler looks ("every couple of seconds").
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Decisions kept for the web map.
const KEPT: usize = 50;

/// One decision, as the web map lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub at_unix: i64,
    /// `split`, `merge`, `servers_up`, `servers_down`, `drained`, `refused`.
    pub action: String,
    pub subject: String,
    pub message: String,
}

/// The latest decisions, newest last.
#[derive(Default)]
pub struct Decisions(Mutex<VecDeque<Decision>>);

impl Decisions {
    pub(crate) fn push(&self, d: Decision) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= KEPT {
            q.pop_front();
        }
        q.push_back(d);
    }

    pub fn list(&self) -> Vec<Decision> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The number in a local server's name (`server-3` -> 3).
fn ordinal(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Pure: names for `n` more servers after `existing` (`server-<k>`, numbered
/// past the highest in use, so a name is never reused while its old server
/// may still be known to the replicant).
pub fn next_names(existing: &[String], n: usize) -> Vec<String> {
    let top = existing.iter().filter_map(|s| ordinal(s)).max().unwrap_or(0);
    (1..=n).map(|i| format!("server-{}", top as usize + i)).collect()
}

/// Pure: the server to drain when scaling down: the highest-numbered one not
/// already draining (as a StatefulSet removes its highest ordinal).
pub fn to_drain(running: &[String], draining: &[String]) -> Option<String> {
    running
        .iter()
        .filter(|s| !draining.contains(s))
        .max_by_key(|s| (ordinal(s).unwrap_or(0), (*s).clone()))
        .cloned()
}

/// Runs until `stop` flips. `interval` is `INTERVAL` except in tests.
pub async fn run(
    shared: Arc<Shared>,
    servers: Arc<Servers>,
    cfg: DynamicLayout,
    interval: Duration,
    decisions: Arc<Decisions>,
    progress: Progress,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut memory = AutoscaleMemory::default();
    let mut draining: Vec<String> = Vec::new();
    // Drained servers seen owning nothing at the last round.
    let mut empty: Vec<String> = Vec::new();
    let mut clock = tokio::time::interval(interval);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let log = |action: &str, subject: &str, message: String| {
        tracing::info!(target: "starmesh::autoscale", action, subject, "{message}");
        // On the terminal too (the log is quiet in local), but not the retries
        // of a split the replicant could not make.
        if action != "refused" {
            progress.step(format!("autoscaler: {action} {subject}: {message}"));
        }
        decisions.push(Decision {
            at_unix: now_unix(),
            action: action.to_string(),
            subject: subject.to_string(),
            message,
        });
    };
    loop {
        tokio::select! {
            _ = clock.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let (cells, loads) = {
            let core = shared.lock();
            let loads: Vec<CellLoad> = partition::loads(&core)
                .into_iter()
                .map(|(cell, n)| CellLoad { cell, players: u32::try_from(n).unwrap_or(u32::MAX) })
                .collect();
            (core.world.map.partition().clone(), loads)
        };
        let running = servers.names();
        let serving = running.iter().filter(|s| !draining.contains(s)).count() as u32;
        let plan = plan_cells(&cfg, &cells, &loads, serving, &memory, now_unix());
        memory = plan.memory.clone();
        for e in &plan.events {
            log(
                e.action.as_str(),
                &e.subject,
                format!("{} (players {}, threshold {})", e.message, e.players, e.threshold),
            );
        }

        if !plan.split.is_empty() || !plan.merge.is_empty() {
            let req = partition::Request { split: plan.split.clone(), merge: plan.merge.clone() };
            match partition::request(&shared, req).await {
                Ok(state) => {
                    for r in &state.refused {
                        log("refused", "cells", format!("not applied: {r}"));
                    }
                    tracing::info!(
                        target: "starmesh::autoscale",
                        version = state.version,
                        cells = state.cells.len(),
                        "partition applied"
                    );
                }
                Err(e) => {
                    log("refused", "cells", format!("partition change failed: {}", e.message()))
                }
            }
        }

        if plan.servers > serving {
            let names = next_names(&running, (plan.servers - serving) as usize);
            for n in &names {
                servers.start(n);
            }
            log(
                "servers_up",
                "servers",
                format!("started {} ({serving} -> {} serving)", names.join(", "), plan.servers),
            );
        } else if plan.servers < serving
            && let Some(victim) = to_drain(&running, &draining)
        {
            draining.push(victim.clone());
            log(
                "servers_down",
                &victim,
                format!("draining {victim} ({serving} -> {} serving)", plan.servers),
            );
        }

        // Drain before stop: a server goes only once it has owned nothing for
        // a whole round, so the handoffs of its last cells are long done (and
        // nobody mistakes them for a takeover from a dead server).
        let mut still = Vec::new();
        for d in draining.drain(..) {
            let left = service::drain(&shared, &d);
            if left == 0 && empty.contains(&d) {
                servers.stop(&d).await;
                empty.retain(|e| e != &d);
                log("drained", &d, format!("{d} owns no cell any more; stopped"));
                continue;
            }
            if left == 0 {
                empty.push(d.clone());
            } else {
                empty.retain(|e| e != &d);
                tracing::info!(target: "starmesh::autoscale", server = %d, cells = left, "still draining");
            }
            still.push(d);
        }
        draining = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn new_servers_are_numbered_past_the_highest() {
        assert_eq!(next_names(&v(&["server-1", "server-4"]), 2), v(&["server-5", "server-6"]));
        assert_eq!(next_names(&[], 1), v(&["server-1"]));
    }

    #[test]
    fn the_highest_server_not_draining_is_drained_first() {
        let running = v(&["server-1", "server-10", "server-2"]);
        assert_eq!(to_drain(&running, &[]).as_deref(), Some("server-10"));
        assert_eq!(to_drain(&running, &v(&["server-10"])).as_deref(), Some("server-2"));
        assert_eq!(to_drain(&v(&["server-1"]), &v(&["server-1"])), None);
    }

    #[test]
    fn decisions_keep_the_latest() {
        let d = Decisions::default();
        for i in 0..(KEPT + 5) {
            d.push(Decision {
                at_unix: i as i64,
                action: "split".into(),
                subject: "x".into(),
                message: String::new(),
            });
        }
        let l = d.list();
        assert_eq!(l.len(), KEPT);
        assert_eq!(l.last().map(|x| x.at_unix), Some((KEPT + 4) as i64));
    }
}
