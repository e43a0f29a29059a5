//! The live half of the map: a sampler reads the in-process replicant's state
//! a few times a second, diffs it against the previous sample and broadcasts
//! only what changed (moved or new entities, removed ids, changed
//! assignments, player counts, handoff and takeover events) to every browser.
//!
//! Why sample rather than subscribe as a spectator through `GatewayLink`: the
//! map runs in the replicant's process, so reading `Core` under its mutex
//! (a copy of a few numbers per resident entity, never held across an await)
//! needs no hook in the replicant, no budget accounting for a subscriber that
//! would want the whole system, and sees authority changes that the entity
//! stream does not carry. The browser still only ever receives deltas.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::local::autoscaler::{Decision, Decisions};
use crate::replicant::{Shared, tick};

/// One entity as the map needs it: kind, position (km, rounded) and territory.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub kind: u32,
    pub pos: [f64; 3],
    pub territory: Arc<str>,
}

/// Everything the map shows that changes, read under the replicant's lock.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub tick: u64,
    pub entities: HashMap<u64, Row>,
    /// territory -> (owner, epoch)
    pub assignments: BTreeMap<String, (Option<String>, u64)>,
    pub live: BTreeSet<String>,
    pub players: BTreeMap<String, u64>,
    pub evicted: u64,
    /// The replicant's `starmesh_handoffs_total`.
    pub handoffs_total: u64,
    /// A dynamic layout's partition: its version and every split (cell, axis, plane).
    pub cells: Cells,
}

/// The partition as the map draws it (`replicant::partition`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cells {
    pub version: u64,
    pub splits: Vec<(String, &'static str, f64)>,
}

impl Sample {
    pub fn take(shared: &Shared) -> Sample {
        let core = shared.lock();
        let entities = core
            .world
            .entities()
            .map(|e| {
                // Metres are invisible at any zoom of a star system; rounding
                // to 1 km keeps deltas (and the JSON) small.
                let pos = [e.position.x.round(), e.position.y.round(), e.position.z.round()];
                (e.id, Row { kind: e.kind, pos, territory: e.territory.clone() })
            })
            .collect();
        let assignments = core
            .world
            .authority
            .grants()
            .map(|(t, g)| (t.to_string(), (g.owner.as_ref().map(|o| o.to_string()), g.epoch)))
            .collect();
        let live = core.world.authority.live_servers().map(|(n, _)| n.to_string()).collect();
        let players =
            tick::player_counts(&core).into_iter().map(|(t, n)| (t.to_string(), n)).collect();
        let cells = Cells {
            version: core.partition.version,
            splits: core
                .world
                .map
                .partition()
                .splits()
                .map(|(c, p)| (c.clone(), p.axis.as_str(), p.at))
                .collect(),
        };
        Sample {
            tick: core.world.tick(),
            entities,
            assignments,
            live,
            players,
            evicted: core.world.evicted_len() as u64,
            handoffs_total: shared.metrics.handoffs.get(),
            cells,
        }
    }
}

/// A thing worth telling the operator about, newest last.
#[derive(Clone, Debug, PartialEq)]
pub struct MapEvent {
    pub tick: u64,
    /// "handoff" (an entity changed owner), "takeover" (a territory moved
    /// away from a server that is gone), "reassign" (moved away from a live
    /// server: a drain or a rebalance), "grant" (an unowned territory got an
    /// owner), "unowned", "server-up", "server-down".
    pub kind: &'static str,
    pub text: String,
    pub territory: Option<String>,
}

const MAX_EVENTS: usize = 50;
/// Events per delta; the counters still count every one.
const MAX_EVENTS_PER_DELTA: usize = 25;

/// The last sample plus what the run has seen, for the summary and new browsers.
#[derive(Default)]
pub struct State {
    pub seq: u64,
    pub last: Sample,
    pub events: VecDeque<MapEvent>,
    pub ever_seen: HashSet<u64>,
    pub peak_players: u64,
    pub takeovers: u64,
    /// The local autoscaler's decisions as last sent.
    pub decisions: Vec<Decision>,
}

/// What one step observed, before it is encoded for browsers.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub moved: Vec<(u64, Row)>,
    pub gone: Vec<u64>,
    pub assignments: BTreeMap<String, (Option<String>, u64)>,
    pub live_changed: bool,
    pub players_changed: bool,
    pub events: Vec<MapEvent>,
    pub handoffs: u64,
    pub takeovers: u64,
    /// The partition changed: cells came and went, so the browser replaces
    /// its assignments (sent whole) instead of merging them.
    pub cells_changed: bool,
}

impl State {
    /// Folds a new sample in and returns what changed. Pure, so the event
    /// classification is unit-tested without a replicant.
    pub fn step(&mut self, next: Sample) -> Diff {
        let prev = &self.last;
        let mut d = Diff::default();
        let owner = |s: &Sample, t: &str| s.assignments.get(t).and_then(|(o, _)| o.clone());
        for (id, row) in &next.entities {
            match prev.entities.get(id) {
                Some(old) if old == row => {}
                Some(old) => {
                    if old.territory != row.territory {
                        let (from, to) =
                            (owner(prev, &old.territory), owner(&next, &row.territory));
                        if from != to {
                            d.handoffs += 1;
                            d.events.push(MapEvent {
                                tick: next.tick,
                                kind: "handoff",
                                text: format!(
                                    "entity {id}: {} ({}) -> {} ({})",
                                    old.territory,
                                    from.as_deref().unwrap_or("unowned"),
                                    row.territory,
                                    to.as_deref().unwrap_or("unowned"),
                                ),
                                territory: Some(row.territory.to_string()),
                            });
                        }
                    }
                    d.moved.push((*id, row.clone()));
                }
                None => d.moved.push((*id, row.clone())),
            }
        }
        d.gone =
            prev.entities.keys().filter(|id| !next.entities.contains_key(id)).copied().collect();
        d.gone.sort_unstable();
        d.moved.sort_by_key(|(id, _)| *id);
        for s in next.live.difference(&prev.live) {
            d.events.push(MapEvent {
                tick: next.tick,
                kind: "server-up",
                text: format!("server {s} connected"),
                territory: None,
            });
        }
        for s in prev.live.difference(&next.live) {
            d.events.push(MapEvent {
                tick: next.tick,
                kind: "server-down",
                text: format!("server {s} is gone"),
                territory: None,
            });
        }
        d.cells_changed = prev.cells != next.cells
            || prev.assignments.keys().any(|t| !next.assignments.contains_key(t));
        if d.cells_changed {
            d.events.push(MapEvent {
                tick: next.tick,
                kind: "cells",
                text: format!(
                    "partition v{}: {} cells",
                    next.cells.version,
                    next.assignments.len()
                ),
                territory: None,
            });
        }
        for (t, (o, epoch)) in &next.assignments {
            let before = prev.assignments.get(t);
            if before == Some(&(o.clone(), *epoch)) {
                continue;
            }
            d.assignments.insert(t.clone(), (o.clone(), *epoch));
            let was = before.and_then(|(o, _)| o.clone());
            if was == *o || (before.is_none() && d.cells_changed) {
                // A new cell's first owner is part of the partition change.
                continue;
            }
            let epoch = EpochText(*epoch);
            let (kind, text) = match (&was, o) {
                (Some(a), Some(b)) if !next.live.contains(a) => {
                    d.takeovers += 1;
                    ("takeover", format!("{t}: {a} is gone, {b} took over (epoch {epoch})"))
                }
                (Some(a), Some(b)) => ("reassign", format!("{t}: {a} -> {b} (epoch {epoch})")),
                (None, Some(b)) => ("grant", format!("{t}: granted to {b} (epoch {epoch})")),
                (Some(a), None) => ("unowned", format!("{t}: {a} lost it; no live server")),
                (None, None) => continue,
            };
            d.events.push(MapEvent { tick: next.tick, kind, text, territory: Some(t.clone()) });
        }
        d.live_changed = prev.live != next.live;
        d.players_changed = prev.players != next.players;
        self.ever_seen.extend(next.entities.keys().copied());
        self.peak_players = self.peak_players.max(next.players.values().sum());
        self.takeovers += d.takeovers;
        for e in &d.events {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e.clone());
        }
        self.last = next;
        d
    }

    pub fn snapshot_json(&self) -> Value {
        let s = &self.last;
        let mut rows: Vec<_> = s.entities.iter().collect();
        rows.sort_by_key(|(id, _)| **id);
        json!({
            "seq": self.seq,
            "tick": s.tick,
            "entities": rows.iter().map(|(id, r)| row_json(**id, r)).collect::<Vec<_>>(),
            "assignments": assignments_json(&s.assignments),
            "live": s.live,
            "players": s.players,
            "evicted": s.evicted,
            "events": self.events.iter().map(event_json).collect::<Vec<_>>(),
            "totals": self.totals_json(),
            "cells": cells_json(&s.cells),
            "decisions": self.decisions,
        })
    }

    fn totals_json(&self) -> Value {
        json!({"handoffs": self.last.handoffs_total, "takeovers": self.takeovers})
    }
}

/// Epochs are `generation << 32 | counter`; shown as `generation·counter`.
struct EpochText(u64);

impl std::fmt::Display for EpochText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}·{}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Ids are strings: entity ids use all 64 bits, and JavaScript numbers
/// are exact only up to 2^53.
fn row_json(id: u64, r: &Row) -> Value {
    json!([id.to_string(), r.kind, r.pos[0], r.pos[1], r.pos[2], &*r.territory])
}

fn cells_json(c: &Cells) -> Value {
    json!({
        "version": c.version,
        "splits": c.splits.iter().map(|(cell, axis, at)| json!({"cell": cell, "axis": axis, "at": at})).collect::<Vec<_>>(),
    })
}

fn event_json(e: &MapEvent) -> Value {
    json!({"tick": e.tick, "kind": e.kind, "text": e.text, "territory": e.territory})
}

fn assignments_json(a: &BTreeMap<String, (Option<String>, u64)>) -> Value {
    a.iter()
        .map(|(t, (o, epoch))| (t.clone(), json!({"server": o, "epoch": epoch})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn delta_json(seq: u64, tick: u64, d: &Diff, st: &State) -> Value {
    let next = &st.last;
    let mut v = json!({
        "totals": st.totals_json(),
        "seq": seq,
        "tick": tick,
        "moved": d.moved.iter().map(|(id, r)| row_json(*id, r)).collect::<Vec<_>>(),
        "gone": d.gone.iter().map(u64::to_string).collect::<Vec<_>>(),
        "events": d.events.iter().take(MAX_EVENTS_PER_DELTA).map(event_json).collect::<Vec<_>>(),
        "evicted": next.evicted,
    });
    if d.cells_changed {
        v["cells"] = cells_json(&next.cells);
        v["assignments"] = assignments_json(&next.assignments);
    } else if !d.assignments.is_empty() {
        v["assignments"] = assignments_json(&d.assignments);
    }
    if d.live_changed {
        v["live"] = json!(next.live);
    }
    if d.players_changed {
        v["players"] = json!(next.players);
    }
    v
}

/// The sampler and its subscribers.
pub struct Feed {
    state: Mutex<State>,
    tx: Mutex<Option<broadcast::Sender<Arc<str>>>>,
    /// The local autoscaler's decision log, when the layout is dynamic.
    decisions: Mutex<Option<Arc<Decisions>>>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        // A browser more than this many deltas behind gets a fresh snapshot instead.
        let (tx, _) = broadcast::channel(64);
        Self {
            state: Mutex::new(State::default()),
            tx: Mutex::new(Some(tx)),
            decisions: Mutex::new(None),
        }
    }

    /// Shows the local autoscaler's decisions on the map.
    pub fn show_decisions(&self, d: Arc<Decisions>) {
        *self.decisions.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` once the feed is closed (the run is ending).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<str>>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.subscribe())
    }

    pub fn snapshot(&self) -> String {
        self.state().snapshot_json().to_string()
    }

    /// Entities seen during the run that are not in `present` now.
    pub fn vanished(&self, present: &HashSet<u64>) -> usize {
        self.state().ever_seen.iter().filter(|id| !present.contains(id)).count()
    }

    pub fn peak_players(&self) -> u64 {
        self.state().peak_players
    }

    /// Territories seen moving off a server that was gone.
    pub fn takeovers(&self) -> u64 {
        self.state().takeovers
    }

    /// Ends every event stream, so the HTTP server can shut down gracefully.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// One sampling step; returns the encoded delta (also broadcast).
    pub fn step(&self, next: Sample) -> Option<Arc<str>> {
        let tick = next.tick;
        let decisions =
            self.decisions.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|d| d.list());
        let encoded: Arc<str> = {
            let mut st = self.state();
            st.seq += 1;
            let seq = st.seq;
            let d = st.step(next);
            let mut v = delta_json(seq, tick, &d, &st);
            if let Some(list) = decisions
                && list != st.decisions
            {
                v["decisions"] = json!(list);
                st.decisions = list;
            }
            v.to_string().into()
        };
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            // No receiver is fine: nobody has the page open.
            let _ = tx.send(encoded.clone());
        }
        Some(encoded)
    }

    /// Samples until the replicant shuts down. 10 Hz: smooth enough to watch
    /// ships move, and a copy of the resident entities ten times a second
    /// is nothing next to the replicant's own 30 Hz tick.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shared.shutdown.notified() => return,
            }
            if !*shared.loaded.borrow() {
                continue;
            }
            self.step(Sample::take(&shared));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        tick: u64,
        entities: &[(u64, &str)],
        owners: &[(&str, &str)],
        live: &[&str],
    ) -> Sample {
        Sample {
            tick,
            entities: entities
                .iter()
                .map(|(id, t)| {
                    (*id, Row { kind: 1, pos: [*id as f64, 0.0, 0.0], territory: (*t).into() })
                })
                .collect(),
            assignments: owners
                .iter()
                .map(|(t, o)| (t.to_string(), (Some(o.to_string()), 1)))
                .collect(),
            live: live.iter().map(|s| s.to_string()).collect(),
            players: BTreeMap::new(),
            evicted: 0,
            handoffs_total: 0,
            cells: Cells::default(),
        }
    }

    #[test]
    fn entities_that_cross_to_another_owner_are_handoffs() {
        let mut st = State::default();
        st.step(sample(1, &[(1, "a"), (2, "a")], &[("a", "s1"), ("b", "s2")], &["s1", "s2"]));
        let d = st.step(sample(2, &[(1, "b")], &[("a", "s1"), ("b", "s2")], &["s1", "s2"]));
        assert_eq!(d.handoffs, 1);
        assert_eq!(d.gone, vec![2]);
        assert_eq!(d.moved.len(), 1);
        assert!(d.assignments.is_empty(), "unchanged assignments are not resent");
        let d = st.step(sample(3, &[(1, "b")], &[("a", "s1"), ("b", "s2")], &["s1", "s2"]));
        assert_eq!(d, Diff::default(), "nothing changed, nothing sent");
    }

    #[test]
    fn browsers_get_a_snapshot_then_only_deltas_with_ids_as_strings() {
        let feed = Feed::new();
        let mut rx = feed.subscribe().expect("open");
        let big = u64::MAX - 1; // not representable as a JavaScript number
        feed.step(sample(1, &[(big, "a"), (2, "a")], &[("a", "s1")], &["s1"]));
        let first: Value = serde_json::from_str(&rx.try_recv().expect("delta")).expect("json");
        assert_eq!(first["moved"][0][0], json!("2"));
        assert_eq!(first["moved"][1][0], json!(big.to_string()));
        assert_eq!(first["assignments"]["a"]["server"], json!("s1"));
        feed.step(sample(2, &[(2, "a")], &[("a", "s1")], &["s1"]));
        let second: Value = serde_json::from_str(&rx.try_recv().expect("delta")).expect("json");
        assert_eq!(second["moved"], json!([]), "nothing moved, nothing sent");
        assert_eq!(second["gone"], json!([big.to_string()]));
        assert!(second.get("assignments").is_none() && second.get("live").is_none());
        let snap: Value = serde_json::from_str(&feed.snapshot()).expect("json");
        assert_eq!(snap["seq"], json!(2));
        assert_eq!(snap["entities"].as_array().map(Vec::len), Some(1));
        feed.close();
        assert!(feed.subscribe().is_none(), "closed: event streams end");
    }

    #[test]
    fn a_partition_change_sends_the_cells_and_every_assignment_whole() {
        let feed = Feed::new();
        let mut rx = feed.subscribe().expect("open");
        feed.step(sample(1, &[(1, "a")], &[("a", "s1"), ("b", "s1")], &["s1"]));
        let _ = rx.try_recv();
        let mut next =
            sample(2, &[(1, "a/0")], &[("a/0", "s1"), ("a/1", "s2"), ("b", "s1")], &["s1", "s2"]);
        next.cells = Cells { version: 1, splits: vec![("a".into(), "x", 2.5)] };
        feed.step(next);
        let d: Value = serde_json::from_str(&rx.try_recv().expect("delta")).expect("json");
        assert_eq!(d["cells"]["version"], json!(1));
        assert_eq!(d["cells"]["splits"][0], json!({"cell": "a", "axis": "x", "at": 2.5}));
        let a = d["assignments"].as_object().expect("assignments");
        assert_eq!(a.len(), 3, "whole, so the browser drops `a`: {a:?}");
        assert!(!a.contains_key("a"));
        let kinds: Vec<&str> = d["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"cells") && !kinds.contains(&"takeover"), "{kinds:?}");
        // The autoscaler's decisions go out when they change.
        let log = Arc::new(Decisions::default());
        feed.show_decisions(log.clone());
        log.push(Decision {
            at_unix: 1,
            action: "split".into(),
            subject: "a".into(),
            message: "a holds 9 players".into(),
        });
        let mut same =
            sample(3, &[(1, "a/0")], &[("a/0", "s1"), ("a/1", "s2"), ("b", "s1")], &["s1", "s2"]);
        same.cells = Cells { version: 1, splits: vec![("a".into(), "x", 2.5)] };
        feed.step(same.clone());
        let d: Value = serde_json::from_str(&rx.try_recv().expect("delta")).expect("json");
        assert_eq!(d["decisions"][0]["action"], json!("split"));
        assert!(d.get("cells").is_none(), "unchanged partition not resent");
        same.tick = 4;
        feed.step(same);
        let d: Value = serde_json::from_str(&rx.try_recv().expect("delta")).expect("json");
        assert!(d.get("decisions").is_none(), "unchanged decisions not resent");
        let snap: Value = serde_json::from_str(&feed.snapshot()).expect("json");
        assert_eq!(snap["decisions"].as_array().map(Vec::len), Some(1));
        assert_eq!(snap["cells"]["version"], json!(1));
    }

    #[test]
    fn a_territory_leaving_a_dead_server_is_a_takeover() {
        let mut st = State::default();
        st.step(sample(1, &[], &[("a", "s1"), ("b", "s2")], &["s1", "s2"]));
        let mut next = sample(2, &[], &[("a", "s2"), ("b", "s2")], &["s2"]);
        next.assignments.insert("a".into(), (Some("s2".into()), 2));
        let d = st.step(next);
        assert_eq!(d.takeovers, 1);
        let kinds: Vec<_> = d.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["server-down", "takeover"]);
        assert_eq!(d.assignments.get("a"), Some(&(Some("s2".to_string()), 2)));
        // A drain to a live server is not a takeover.
        let d = st.step(sample(3, &[], &[("a", "s3"), ("b", "s2")], &["s2", "s3"]));
        assert_eq!(d.takeovers, 0);
        assert!(d.events.iter().any(|e| e.kind == "reassign"));
    }
}
