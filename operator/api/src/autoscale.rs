//! Scaling decisions: pure functions from player counts (and what was remembered from
//! the previous call) to what should change. The operator calls them each reconcile of
//! a dynamic layout and `starmesh local` from its autoscaler task; both do the I/O
//! (reading counts, `SetPartition`, scaling, draining) themselves, so every rule here is
//! tested on load traces without a cluster.
//!
//! Cells ([`plan_cells`], per shard):
//! - split a leaf cell when it holds more than `splitAbovePlayers`, unless it is at
//!   [`MAX_SPLIT_DEPTH`] or it (or an ancestor) changed within `cooldownSeconds`;
//! - merge two sibling leaves when together they hold fewer than `mergeBelowPlayers`,
//!   continuously for `cooldownSeconds`, and neither changed within the cooldown;
//! - servers wanted = clamp(ceil(players / targetPlayersPerServer), min, max): up at
//!   once, down by one only after the lower need held for `cooldownSeconds` (and again
//!   after another cooldown for the next one).
//!
//! Shards ([`plan_shards`], per layout): shards wanted = clamp(ceil(players /
//! targetPlayersPerShard), min, max); up at once; down only after the lower need held for
//! the cooldown, and then in two steps: first the highest shard is marked draining (the
//! gateway places no new player there), then, once it holds no player, it is removed.
//!
//! Hysteresis: validation keeps `mergeBelowPlayers < splitAbovePlayers`, so a merged
//! cell is never over the split threshold; a count hovering at a threshold resets the
//! "held low since" clocks each time it comes back, so nothing flaps.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::partition::{self, MAX_SPLIT_DEPTH, Partition};
use crate::{DynamicLayout, ShardAutoscaling};

/// Players in one leaf cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellLoad {
    pub cell: String,
    pub players: u32,
}

/// What the cell decider remembers between calls. Timestamps are Unix seconds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleMemory {
    /// When each cell was last split or merged back (entries older than the cooldown
    /// are dropped). A leaf's last change is the latest of itself and its ancestors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changed: BTreeMap<String, i64>,
    /// Since when the two leaf children of each split cell have together held fewer
    /// than `mergeBelowPlayers`, without interruption.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub merge_low_since: BTreeMap<String, i64>,
    /// Since when fewer servers than there are would do, without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_low_since: Option<i64>,
    /// The last split, merge or server count change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<i64>,
}

/// What the shard decider remembers between calls. Timestamps are Unix seconds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardMemory {
    /// Since when fewer shards than there are would do, without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<i64>,
    /// The last shard count change or drain mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScalingAction {
    Split,
    Merge,
    ServersUp,
    ServersDown,
    ShardsUp,
    ShardsDown,
    /// The highest shard is marked so no new player is placed there (first step of
    /// `ShardsDown`), or the mark is lifted because load came back.
    ShardDrain,
    ShardDrainCancelled,
}

impl ScalingAction {
    pub const ALL: [ScalingAction; 8] = [
        ScalingAction::Split,
        ScalingAction::Merge,
        ScalingAction::ServersUp,
        ScalingAction::ServersDown,
        ScalingAction::ShardsUp,
        ScalingAction::ShardsDown,
        ScalingAction::ShardDrain,
        ScalingAction::ShardDrainCancelled,
    ];

    /// Metric label value and Event reason suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            ScalingAction::Split => "split",
            ScalingAction::Merge => "merge",
            ScalingAction::ServersUp => "servers_up",
            ScalingAction::ServersDown => "servers_down",
            ScalingAction::ShardsUp => "shards_up",
            ScalingAction::ShardsDown => "shards_down",
            ScalingAction::ShardDrain => "shard_drain",
            ScalingAction::ShardDrainCancelled => "shard_drain_cancelled",
        }
    }

    /// CamelCase Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            ScalingAction::Split => "CellSplit",
            ScalingAction::Merge => "CellsMerged",
            ScalingAction::ServersUp => "ServersUp",
            ScalingAction::ServersDown => "ServersDown",
            ScalingAction::ShardsUp => "ShardsUp",
            ScalingAction::ShardsDown => "ShardsDown",
            ScalingAction::ShardDrain => "ShardDraining",
            ScalingAction::ShardDrainCancelled => "ShardDrainCancelled",
        }
    }
}

/// One decision with the numbers behind it (an Event, a metric increment, a log line).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingEvent {
    pub action: ScalingAction,
    /// The cell, the parent cell merged back, `servers` or `shards`.
    pub subject: String,
    /// The players the decision was taken on.
    pub players: u64,
    /// The threshold they crossed.
    pub threshold: u64,
    pub message: String,
}

/// What [`plan_cells`] decided for one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct CellPlan {
    /// Leaf cells to split (the replicant picks the planes).
    pub split: Vec<String>,
    /// Parent cells whose two leaf children merge back.
    pub merge: Vec<String>,
    /// Game servers the shard should have.
    pub servers: u32,
    pub events: Vec<ScalingEvent>,
    /// To pass to the next call.
    pub memory: AutoscaleMemory,
}

fn elapsed(since: i64, now: i64) -> i64 {
    now.saturating_sub(since)
}

/// Latest change of `cell` or any of its ancestors.
fn last_change(memory: &AutoscaleMemory, cell: &str) -> Option<i64> {
    let mut latest = memory.changed.get(cell).copied();
    let mut c = cell;
    while let Some(p) = partition::parent(c) {
        latest = latest.max(memory.changed.get(p).copied());
        c = p;
    }
    latest
}

fn servers_needed(players: u64, per_server: u32, min: u32, max: u32) -> u32 {
    let per = u64::from(per_server.max(1));
    let need = players.div_ceil(per);
    let need = u32::try_from(need).unwrap_or(u32::MAX);
    need.clamp(min.min(max), max.max(min))
}

/// Decides one shard's splits, merges and server count. `loads` are the players per
/// leaf cell (a leaf missing from it has none; entries that are not leaves of
/// `partition` are ignored); `servers_now` is how many game servers the shard has.
pub fn plan_cells(
    cfg: &DynamicLayout,
    partition: &Partition,
    loads: &[CellLoad],
    servers_now: u32,
    memory: &AutoscaleMemory,
    now_unix_secs: i64,
) -> CellPlan {
    let now = now_unix_secs;
    let cooldown = i64::from(cfg.cooldown_seconds);
    let mut mem = memory.clone();
    // Forget what no longer matters, so the status stays small.
    mem.changed.retain(|_, t| elapsed(*t, now) < cooldown);

    let is_leaf = |cell: &str| {
        !partition.is_split(cell) && partition::parent(cell).is_none_or(|p| partition.is_split(p))
    };
    let mut players: BTreeMap<&str, u64> = BTreeMap::new();
    for l in loads.iter().filter(|l| is_leaf(&l.cell)) {
        *players.entry(l.cell.as_str()).or_default() += u64::from(l.players);
    }
    let count = |cell: &str| players.get(cell).copied().unwrap_or(0);
    let cooled = |mem: &AutoscaleMemory, cell: &str| {
        last_change(mem, cell).is_none_or(|t| elapsed(t, now) >= cooldown)
    };

    let mut events = Vec::new();
    let mut split = Vec::new();
    let split_above = u64::from(cfg.split_above_players);
    for (&cell, &n) in &players {
        if n <= split_above || partition::depth(cell) >= MAX_SPLIT_DEPTH || !cooled(&mem, cell) {
            continue;
        }
        split.push(cell.to_string());
        events.push(ScalingEvent {
            action: ScalingAction::Split,
            subject: cell.to_string(),
            players: n,
            threshold: split_above,
            message: format!(
                "cell {cell} holds {n} players, above splitAbovePlayers {split_above}"
            ),
        });
    }

    let mut merge = Vec::new();
    let merge_below = u64::from(cfg.merge_below_players);
    let mut low_since = BTreeMap::new();
    for (parent, _) in partition.splits() {
        let (c0, c1) = (partition::child(parent, 0), partition::child(parent, 1));
        if partition.is_split(&c0) || partition.is_split(&c1) {
            continue;
        }
        let together = count(&c0) + count(&c1);
        if together >= merge_below {
            continue;
        }
        let since = mem.merge_low_since.get(parent).copied().unwrap_or(now);
        if elapsed(since, now) >= cooldown && cooled(&mem, &c0) && cooled(&mem, &c1) {
            merge.push(parent.clone());
            events.push(ScalingEvent {
                action: ScalingAction::Merge,
                subject: parent.clone(),
                players: together,
                threshold: merge_below,
                message: format!(
                    "cells {c0} and {c1} held {together} players together, below mergeBelowPlayers {merge_below}, for {}s",
                    elapsed(since, now)
                ),
            });
        } else {
            low_since.insert(parent.clone(), since);
        }
    }
    mem.merge_low_since = low_since;
    for cell in split.iter().chain(&merge) {
        mem.changed.insert(cell.clone(), now);
    }

    let total: u64 = players.values().sum();
    let per = cfg.target_players_per_server;
    let need = servers_needed(total, per, cfg.min_servers, cfg.max_servers);
    let servers = if need > servers_now {
        mem.servers_low_since = None;
        events.push(ScalingEvent {
            action: ScalingAction::ServersUp,
            subject: "servers".to_string(),
            players: total,
            threshold: u64::from(servers_now) * u64::from(per),
            message: format!(
                "{total} players need {need} servers at targetPlayersPerServer {per} (bounds {}..={}); {servers_now} now",
                cfg.min_servers, cfg.max_servers
            ),
        });
        need
    } else if need < servers_now {
        let since = mem.servers_low_since.unwrap_or(now);
        // Above maxServers (the bound was lowered): no reason to wait.
        if servers_now > cfg.max_servers.max(cfg.min_servers) || elapsed(since, now) >= cooldown {
            let to = servers_now - 1;
            // The next step down waits another full cooldown.
            mem.servers_low_since = (need < to).then_some(now);
            events.push(ScalingEvent {
                action: ScalingAction::ServersDown,
                subject: "servers".to_string(),
                players: total,
                threshold: u64::from(to) * u64::from(per),
                message: format!(
                    "{total} players need {need} servers at targetPlayersPerServer {per} (bounds {}..={}) for {}s; {servers_now} -> {to}",
                    cfg.min_servers,
                    cfg.max_servers,
                    elapsed(since, now)
                ),
            });
            to
        } else {
            mem.servers_low_since = Some(since);
            servers_now
        }
    } else {
        mem.servers_low_since = None;
        servers_now
    };
    if !events.is_empty() {
        mem.last_scale = Some(now);
    }
    CellPlan { split, merge, servers, events, memory: mem }
}

/// What [`plan_shards`] decided for a layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// Shards the layout should have (`spec.shards`, written through the scale
    /// subresource).
    pub shards: i32,
    /// The shard (index) marked so that no new player is placed there, if any.
    pub draining: Option<i32>,
    pub events: Vec<ScalingEvent>,
    pub memory: ShardMemory,
}

/// Decides the shard count. `shard_players[i]` are the players of shard `i`
/// (`shards_now` entries; a missing one counts as unknown, which blocks removal);
/// `draining` is the shard marked by the previous call.
pub fn plan_shards(
    cfg: &ShardAutoscaling,
    shard_players: &[Option<u64>],
    shards_now: i32,
    draining: Option<i32>,
    memory: &ShardMemory,
    now_unix_secs: i64,
) -> ShardPlan {
    let now = now_unix_secs;
    let cooldown = i64::from(cfg.cooldown_seconds);
    let mut mem = memory.clone();
    let mut events = Vec::new();
    let (min, max) = (cfg.min_shards.min(cfg.max_shards), cfg.max_shards.max(cfg.min_shards));
    let total: u64 = shard_players.iter().flatten().sum();
    let per = u64::from(cfg.target_players_per_shard.max(1));
    let need = i32::try_from(total.div_ceil(per)).unwrap_or(i32::MAX).clamp(min, max);
    // A mark on a shard that no longer is the highest (count changed by hand) is void.
    let mut draining = draining.filter(|d| *d == shards_now - 1 && *d >= 0);
    let mut shards = shards_now;

    if need >= shards_now {
        mem.low_since = None;
        if let Some(d) = draining.take() {
            mem.last_scale = Some(now);
            events.push(ScalingEvent {
                action: ScalingAction::ShardDrainCancelled,
                subject: format!("shard {d}"),
                players: total,
                threshold: u64::try_from(shards_now - 1).unwrap_or(0) * per,
                message: format!(
                    "{total} players need {need} shards at targetPlayersPerShard {per}; shard {d} takes players again"
                ),
            });
        }
        if need > shards_now {
            shards = need;
            mem.last_scale = Some(now);
            events.push(ScalingEvent {
                action: ScalingAction::ShardsUp,
                subject: "shards".to_string(),
                players: total,
                threshold: u64::try_from(shards_now).unwrap_or(0) * per,
                message: format!(
                    "{total} players need {need} shards at targetPlayersPerShard {per} (bounds {min}..={max}); {shards_now} -> {need}"
                ),
            });
        }
    } else if let Some(d) = draining {
        // Marked: remove once its players have left (unknown counts as not empty).
        let left = shard_players.get(usize::try_from(d).unwrap_or(usize::MAX)).copied().flatten();
        if left == Some(0) {
            shards = shards_now - 1;
            draining = None;
            mem.low_since = None;
            mem.last_scale = Some(now);
            events.push(ScalingEvent {
                action: ScalingAction::ShardsDown,
                subject: format!("shard {d}"),
                players: total,
                threshold: u64::try_from(shards).unwrap_or(0) * per,
                message: format!(
                    "shard {d} is empty and {total} players need {need} shards at targetPlayersPerShard {per}; {shards_now} -> {shards}"
                ),
            });
        }
    } else {
        let since = mem.low_since.unwrap_or(now);
        let over_max = shards_now > max;
        if over_max || elapsed(since, now) >= cooldown {
            let d = shards_now - 1;
            draining = Some(d);
            mem.last_scale = Some(now);
            events.push(ScalingEvent {
                action: ScalingAction::ShardDrain,
                subject: format!("shard {d}"),
                players: total,
                threshold: u64::try_from(d).unwrap_or(0) * per,
                message: format!(
                    "{total} players need {need} shards at targetPlayersPerShard {per} (bounds {min}..={max}) for {}s; shard {d} takes no new players and goes once empty",
                    elapsed(since, now)
                ),
            });
        }
        mem.low_since = Some(since);
    }
    ShardPlan { shards, draining, events, memory: mem }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::partition::Plane;

    fn cfg() -> DynamicLayout {
        DynamicLayout {
            min_servers: 1,
            max_servers: 4,
            target_players_per_server: 20,
            split_above_players: 24,
            merge_below_players: 8,
            cooldown_seconds: 30,
        }
    }

    fn bases() -> BTreeSet<String> {
        ["hurston", "deep-space"].iter().map(|s| s.to_string()).collect()
    }

    fn loads(l: &[(&str, u32)]) -> Vec<CellLoad> {
        l.iter().map(|(c, p)| CellLoad { cell: c.to_string(), players: *p }).collect()
    }

    /// Runs a load trace one call per second through the decider, applying its
    /// splits and merges like the replicant would (plane at 0), and returns what
    /// happened each second.
    struct Sim {
        cfg: DynamicLayout,
        partition: Partition,
        servers: u32,
        memory: AutoscaleMemory,
        log: Vec<(i64, ScalingAction, String)>,
    }

    impl Sim {
        fn new(cfg: DynamicLayout) -> Self {
            let servers = cfg.min_servers;
            Sim {
                cfg,
                partition: Partition::default(),
                servers,
                memory: AutoscaleMemory::default(),
                log: Vec::new(),
            }
        }

        /// `players(cell)` gives the players in each current leaf.
        fn step(&mut self, t: i64, players: impl Fn(&str) -> u32) -> CellPlan {
            let bases = bases();
            let leaves = self.partition.leaves(bases.iter().map(String::as_str));
            let l: Vec<CellLoad> =
                leaves.iter().map(|c| CellLoad { cell: c.clone(), players: players(c) }).collect();
            let plan = plan_cells(&self.cfg, &self.partition, &l, self.servers, &self.memory, t);
            for c in &plan.split {
                self.partition.split(c, Plane { axis: partition::Axis::X, at: 0.0 });
            }
            for c in &plan.merge {
                assert!(self.partition.merge(c), "merge of {c} must apply");
            }
            self.partition.validate(&bases).expect("the decider keeps the partition valid");
            assert!(plan.servers >= self.cfg.min_servers && plan.servers <= self.cfg.max_servers);
            self.servers = plan.servers;
            self.memory = plan.memory.clone();
            for e in &plan.events {
                self.log.push((t, e.action, e.subject.clone()));
            }
            plan
        }

        fn count(&self, action: ScalingAction) -> usize {
            self.log.iter().filter(|(_, a, _)| *a == action).count()
        }
    }

    /// Players spread evenly over the leaves of `hurston` (`total` of them).
    fn even(partition: &Partition, total: u32) -> impl Fn(&str) -> u32 + '_ {
        move |cell: &str| {
            if partition::base_territory(cell) != "hurston" {
                return 0;
            }
            let leaves = partition.leaves(["hurston"]);
            let n = u32::try_from(leaves.len()).unwrap_or(1);
            let i = u32::try_from(leaves.iter().position(|c| c == cell).unwrap_or(0)).unwrap_or(0);
            total / n + u32::from(i < total % n)
        }
    }

    #[test]
    fn ramp_splits_and_adds_servers_then_merges_back_to_the_minimum() {
        let mut sim = Sim::new(cfg());
        // Ramp: one player more per second up to 70.
        for t in 0..=70 {
            let p = sim.partition.clone();
            sim.step(t, even(&p, u32::try_from(t).unwrap_or(0)));
        }
        assert_eq!(sim.servers, 4, "70 players at 20 per server need 4 servers (max 4)");
        let first_split = sim.log.iter().find(|(_, a, _)| *a == ScalingAction::Split).cloned();
        assert_eq!(first_split, Some((25, ScalingAction::Split, "hurston".to_string())));
        // 25 players: ceil(25/20) = 2 servers at once, the same second.
        assert!(sim.log.contains(&(21, ScalingAction::ServersUp, "servers".to_string())));
        assert!(sim.partition.leaves(["hurston"]).len() >= 3, "{:?}", sim.partition);
        // Each leaf at or below the threshold once split settled.
        let leaves = sim.partition.leaves(["hurston"]);
        let p = sim.partition.clone();
        assert!(leaves.iter().all(|c| even(&p, 70)(c) <= 24), "{leaves:?}");

        // Everyone leaves at once: merges and servers down only after the cooldown,
        // one step per cooldown, until the base territory and minServers are back.
        for t in 71..=400 {
            sim.step(t, |_| 0);
        }
        assert!(sim.partition.is_empty(), "{:?}", sim.partition);
        assert_eq!(sim.servers, 1);
        let downs: Vec<i64> = sim
            .log
            .iter()
            .filter(|(_, a, _)| *a == ScalingAction::ServersDown)
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!(downs, vec![101, 131, 161], "one step per 30 s cooldown");
        let merges: Vec<i64> = sim
            .log
            .iter()
            .filter(|(_, a, _)| *a == ScalingAction::Merge)
            .map(|(t, ..)| *t)
            .collect();
        assert!(merges.iter().all(|t| *t >= 101), "no merge before the cooldown: {merges:?}");
    }

    #[test]
    fn oscillation_around_the_split_threshold_splits_once_and_never_flaps() {
        let mut sim = Sim::new(cfg());
        for t in 0..600 {
            // 23, 25, 23, 25... around splitAbovePlayers = 24.
            let total = if t % 2 == 0 { 23 } else { 25 };
            let p = sim.partition.clone();
            sim.step(t, even(&p, total));
        }
        assert_eq!(sim.count(ScalingAction::Split), 1, "{:?}", sim.log);
        assert_eq!(sim.count(ScalingAction::Merge), 0, "{:?}", sim.log);
        // 23 and 25 players need 2 servers at 20 each: up once, never down.
        assert_eq!(sim.count(ScalingAction::ServersUp), 1, "{:?}", sim.log);
        assert_eq!(sim.count(ScalingAction::ServersDown), 0, "{:?}", sim.log);
    }

    #[test]
    fn oscillation_around_the_merge_threshold_shorter_than_the_cooldown_never_merges() {
        let mut sim = Sim::new(cfg());
        sim.step(0, |c| if c == "hurston" { 30 } else { 0 });
        assert_eq!(sim.partition.len(), 1);
        for t in 1..600 {
            // Together 7 then 9 around mergeBelowPlayers = 8, changing every 10 s.
            let per_cell = if (t / 10) % 2 == 0 { 3 } else { 5 };
            sim.step(t, |c| if c.starts_with("hurston/") { per_cell } else { 0 });
        }
        assert_eq!(sim.count(ScalingAction::Merge), 0, "{:?}", sim.log);
        assert_eq!(sim.partition.len(), 1);
    }

    #[test]
    fn oscillation_around_a_server_boundary_scales_up_once_and_down_never() {
        let mut sim = Sim::new(DynamicLayout { split_above_players: 1000, ..cfg() });
        for t in 0..600 {
            // 39 and 41 players around 2 * targetPlayersPerServer, every 5 s.
            let total = if (t / 5) % 2 == 0 { 39 } else { 41 };
            sim.step(t, |c| if c == "hurston" { total } else { 0 });
        }
        assert_eq!(sim.log.iter().filter(|(_, a, _)| *a == ScalingAction::ServersUp).count(), 2);
        assert_eq!(sim.count(ScalingAction::ServersDown), 0, "{:?}", sim.log);
        assert_eq!(sim.servers, 3);
    }

    #[test]
    fn a_spike_scales_up_at_once_and_back_down_one_cooldown_per_server() {
        let mut sim = Sim::new(DynamicLayout { split_above_players: 1000, ..cfg() });
        sim.step(0, |_| 0);
        assert_eq!(sim.servers, 1);
        let plan = sim.step(1, |c| if c == "hurston" { 500 } else { 0 });
        assert_eq!(plan.servers, 4, "clamped to maxServers");
        let e = &plan.events[0];
        assert_eq!((e.action, e.players, e.threshold), (ScalingAction::ServersUp, 500, 20));
        assert!(e.message.contains("500 players need 4 servers"), "{}", e.message);
        // Gone the next second: hold 30 s, then one server per 30 s.
        for t in 2..=200 {
            sim.step(t, |_| 0);
        }
        let downs: Vec<i64> = sim
            .log
            .iter()
            .filter(|(_, a, _)| *a == ScalingAction::ServersDown)
            .map(|(t, ..)| *t)
            .collect();
        assert_eq!(downs, vec![32, 62, 92]);
        assert_eq!(sim.servers, 1);
    }

    #[test]
    fn bounds_are_kept_even_when_servers_start_outside_them() {
        let c = DynamicLayout { min_servers: 2, max_servers: 3, ..cfg() };
        let p = Partition::default();
        let m = AutoscaleMemory::default();
        // Below min: up at once, whatever the load.
        assert_eq!(plan_cells(&c, &p, &[], 0, &m, 0).servers, 2);
        // Above max (bound lowered): down by one without waiting, every call.
        let plan = plan_cells(&c, &p, &loads(&[("hurston", 1000)]), 5, &m, 0);
        assert_eq!(plan.servers, 4);
        let plan = plan_cells(&c, &p, &loads(&[("hurston", 1000)]), 4, &plan.memory, 1);
        assert_eq!(plan.servers, 3);
        let plan = plan_cells(&c, &p, &loads(&[("hurston", 1000)]), 3, &plan.memory, 2);
        assert_eq!(plan.servers, 3);
    }

    #[test]
    fn split_cooldown_applies_to_the_new_children_and_depth_is_bounded() {
        let c = cfg();
        let mut p = Partition::default();
        let mut m = AutoscaleMemory::default();
        let plan = plan_cells(&c, &p, &loads(&[("hurston", 100)]), 1, &m, 0);
        assert_eq!(plan.split, vec!["hurston".to_string()]);
        p.split("hurston", Plane { axis: partition::Axis::X, at: 0.0 });
        m = plan.memory;
        let heavy = loads(&[("hurston/0", 50), ("hurston/1", 50)]);
        let plan = plan_cells(&c, &p, &heavy, 4, &m, 29);
        assert!(plan.split.is_empty(), "children cool down first");
        let plan = plan_cells(&c, &p, &heavy, 4, &m, 30);
        assert_eq!(plan.split, vec!["hurston/0".to_string(), "hurston/1".to_string()]);

        // A leaf at the deepest level is never split.
        let mut deep = Partition::default();
        let mut cell = "hurston".to_string();
        for _ in 0..MAX_SPLIT_DEPTH {
            deep.split(&cell, Plane { axis: partition::Axis::X, at: 0.0 });
            cell = partition::child(&cell, 0);
        }
        deep.validate(&bases()).expect("valid");
        let plan =
            plan_cells(&c, &deep, &loads(&[(&cell, 1000)]), 4, &AutoscaleMemory::default(), 0);
        assert!(plan.split.is_empty(), "{:?}", plan.split);
    }

    #[test]
    fn merge_needs_the_whole_cooldown_low_and_ignores_non_leaf_loads() {
        let c = cfg();
        let mut p = Partition::default();
        p.split("hurston", Plane { axis: partition::Axis::X, at: 0.0 });
        let m = AutoscaleMemory::default();
        let low =
            loads(&[("hurston/0", 3), ("hurston/1", 4), ("hurston", 999), ("nowhere/1", 999)]);
        let plan = plan_cells(&c, &p, &low, 1, &m, 100);
        assert!(plan.merge.is_empty() && plan.split.is_empty(), "{plan:?}");
        assert_eq!(plan.memory.merge_low_since.get("hurston"), Some(&100));
        let plan2 = plan_cells(&c, &p, &low, 1, &plan.memory, 129);
        assert!(plan2.merge.is_empty());
        // One reading at the threshold resets the clock.
        let at = loads(&[("hurston/0", 4), ("hurston/1", 4)]);
        let plan3 = plan_cells(&c, &p, &at, 1, &plan2.memory, 129);
        assert!(plan3.memory.merge_low_since.is_empty());
        let plan4 = plan_cells(&c, &p, &low, 1, &plan3.memory, 130);
        let plan5 = plan_cells(&c, &p, &low, 1, &plan4.memory, 160);
        assert_eq!(plan5.merge, vec!["hurston".to_string()]);
        let e = &plan5.events[0];
        assert_eq!((e.action, e.players, e.threshold), (ScalingAction::Merge, 7, 8));
        // Memory of the merge blocks an immediate re-split of the parent.
        p.merge("hurston");
        let plan6 = plan_cells(&c, &p, &loads(&[("hurston", 100)]), 1, &plan5.memory, 161);
        assert!(plan6.split.is_empty());
        let plan7 = plan_cells(&c, &p, &loads(&[("hurston", 100)]), 1, &plan6.memory, 190);
        assert_eq!(plan7.split, vec!["hurston".to_string()]);
    }

    #[test]
    fn a_parent_with_a_split_child_does_not_merge() {
        let mut p = Partition::default();
        p.split("hurston", Plane { axis: partition::Axis::X, at: 0.0 });
        p.split("hurston/1", Plane { axis: partition::Axis::Y, at: 0.0 });
        let mut m = AutoscaleMemory::default();
        let mut merged = Vec::new();
        for t in 0..100 {
            let plan = plan_cells(&cfg(), &p, &[], 1, &m, t);
            m = plan.memory;
            merged.extend(plan.merge.clone());
            for c in &plan.merge {
                assert!(p.merge(c));
            }
        }
        // The deeper pair first, a cooldown later the top one.
        assert_eq!(merged, vec!["hurston/1".to_string(), "hurston".to_string()]);
        assert!(p.is_empty());
    }

    fn shard_cfg() -> ShardAutoscaling {
        ShardAutoscaling {
            min_shards: 1,
            max_shards: 3,
            target_players_per_shard: 50,
            cooldown_seconds: 60,
        }
    }

    #[test]
    fn shards_go_up_at_once_and_down_through_a_drain_mark_once_empty() {
        let c = shard_cfg();
        let m = ShardMemory::default();
        let plan = plan_shards(&c, &[Some(80)], 1, None, &m, 0);
        assert_eq!((plan.shards, plan.draining), (2, None));
        assert_eq!(plan.events[0].action, ScalingAction::ShardsUp);
        // Load falls: nothing for the cooldown, then shard 1 is marked.
        let plan = plan_shards(&c, &[Some(30), Some(5)], 2, None, &plan.memory, 10);
        assert_eq!((plan.shards, plan.draining), (2, None));
        let plan2 = plan_shards(&c, &[Some(30), Some(5)], 2, None, &plan.memory, 69);
        assert_eq!(plan2.draining, None);
        let plan3 = plan_shards(&c, &[Some(30), Some(5)], 2, None, &plan2.memory, 70);
        assert_eq!((plan3.shards, plan3.draining), (2, Some(1)));
        assert_eq!(plan3.events[0].action, ScalingAction::ShardDrain);
        // Still players (or unknown): stays marked.
        let plan4 = plan_shards(&c, &[Some(31), Some(2)], 2, Some(1), &plan3.memory, 80);
        assert_eq!((plan4.shards, plan4.draining), (2, Some(1)));
        let plan4 = plan_shards(&c, &[Some(31), None], 2, Some(1), &plan4.memory, 81);
        assert_eq!((plan4.shards, plan4.draining), (2, Some(1)));
        // Empty: removed.
        let plan5 = plan_shards(&c, &[Some(33), Some(0)], 2, Some(1), &plan4.memory, 90);
        assert_eq!((plan5.shards, plan5.draining), (1, None));
        assert_eq!(plan5.events[0].action, ScalingAction::ShardsDown);
        // At the minimum nothing more happens.
        let plan6 = plan_shards(&c, &[Some(0)], 1, None, &plan5.memory, 1000);
        assert_eq!((plan6.shards, plan6.draining), (1, None));
        assert!(plan6.events.is_empty());
    }

    #[test]
    fn a_drain_mark_is_lifted_when_load_returns_and_shards_never_exceed_max() {
        let c = shard_cfg();
        let plan = plan_shards(&c, &[Some(40), Some(5)], 2, Some(1), &ShardMemory::default(), 0);
        assert_eq!(plan.draining, Some(1));
        let plan = plan_shards(&c, &[Some(60), Some(45)], 2, Some(1), &plan.memory, 1);
        assert_eq!((plan.shards, plan.draining), (3, None));
        let actions: Vec<_> = plan.events.iter().map(|e| e.action).collect();
        assert_eq!(actions, vec![ScalingAction::ShardDrainCancelled, ScalingAction::ShardsUp]);
        let plan = plan_shards(&c, &[Some(900), Some(900), Some(900)], 3, None, &plan.memory, 2);
        assert_eq!(plan.shards, 3);
        // Oscillating around one shard's worth with a period under the cooldown.
        let mut m = ShardMemory::default();
        for t in 0..600 {
            let p = if (t / 20) % 2 == 0 { 49 } else { 51 };
            let plan = plan_shards(&c, &[Some(p), Some(0)], 2, None, &m, t);
            assert_eq!((plan.shards, plan.draining), (2, None), "t={t}");
            m = plan.memory;
        }
    }
}
