//! Changing a dynamic layout's cells: Admin `GetPartition`/`SetPartition` and
//! the local autoscaler both come here.
//!
//! A request is queued (`request`) and applied by the clock at the next tick
//! boundary (`apply_pending`, right after `World::end_tick`), so no write of
//! a tick ever sees two partitions: the world relocates every entity of a
//! cell that is gone (`World::repartition`), the authority revokes the old
//! cells and grants the new ones with fresh epochs (`Authority::repartition`)
//! and the grants bring each owner every entity of its cells, exactly as in a
//! takeover. The change is then saved in the store, and only then answered.
//!
//! What a request may ask is decided by `plan`, a pure function.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use starmesh_api::partition::{self as cells, MAX_SPLIT_DEPTH, Partition};
use tokio::sync::oneshot;
use tonic::Status;

use crate::store::{PartitionRecord, Store};
use crate::wire::pb;

use super::{Core, Shared};

/// Cells to split and parents to merge (already wire-validated).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    pub split: Vec<String>,
    pub merge: Vec<String>,
}

/// Why a whole request is refused (nothing changes).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("this layout is static: its territories are never split into cells")]
    Static,
    #[error("{0:?} is not a cell of this layout")]
    Unknown(String),
    #[error("cell {0:?} is not a leaf cell (it is split already)")]
    NotLeaf(String),
    #[error("cell {0:?} cannot merge: it is not split into two leaf cells")]
    NotMergeable(String),
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Static => Status::failed_precondition(format!("starmesh: {e}")),
            _ => Status::invalid_argument(format!("starmesh: {e}")),
        }
    }
}

/// What a request comes to: the new partition, the changes made and those refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub partition: Partition,
    pub split: Vec<String>,
    pub merged: Vec<String>,
    /// "cell: reason".
    pub refused: Vec<String>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        !self.split.is_empty() || !self.merged.is_empty()
    }
}

/// Pure: checks a request against the current partition and works out the
/// new one. `positions(cell)` gives the positions a split plane is chosen
/// from (the players in the cell, else every entity in it). Merges are
/// applied first; a split of a cell whose parent merges in the same request
/// is refused rather than guessed at.
pub fn plan(
    dynamic: bool,
    partition: &Partition,
    bases: &BTreeSet<String>,
    req: &Request,
    positions: impl Fn(&str) -> Vec<Vec<[f64; 3]>>,
) -> Result<Plan, RequestError> {
    if !dynamic {
        return Err(RequestError::Static);
    }
    let leaves: BTreeSet<String> =
        partition.leaves(bases.iter().map(String::as_str)).into_iter().collect();
    let known = |c: &str| {
        bases.contains(cells::base_territory(c))
            && c.split(cells::SEPARATOR).skip(1).all(|s| s == "0" || s == "1")
    };
    for c in &req.merge {
        if !known(c) {
            return Err(RequestError::Unknown(c.clone()));
        }
        let both_leaves =
            leaves.contains(&cells::child(c, 0)) && leaves.contains(&cells::child(c, 1));
        if !partition.is_split(c) || !both_leaves {
            return Err(RequestError::NotMergeable(c.clone()));
        }
    }
    for c in &req.split {
        if leaves.contains(c) {
            continue;
        }
        return Err(if known(c) && partition.is_split(c) {
            RequestError::NotLeaf(c.clone())
        } else {
            RequestError::Unknown(c.clone())
        });
    }
    let mut next = partition.clone();
    let mut out =
        Plan { partition: Partition::default(), split: vec![], merged: vec![], refused: vec![] };
    for c in &req.merge {
        if next.merge(c) {
            out.merged.push(c.clone());
        }
    }
    for c in &req.split {
        if cells::parent(c).is_some_and(|p| out.merged.iter().any(|m| m == p)) {
            out.refused.push(format!("{c}: its parent merges in this change"));
            continue;
        }
        if cells::depth(c) >= MAX_SPLIT_DEPTH {
            out.refused.push(format!("{c}: already {MAX_SPLIT_DEPTH} splits deep"));
            continue;
        }
        let plane = positions(c).iter().find_map(|p| cells::choose_plane(p));
        match plane {
            Some(plane) => {
                next.split(c, plane);
                out.split.push(c.clone());
            }
            None => out
                .refused
                .push(format!("{c}: fewer than two distinct positions in it, nothing to halve")),
        }
    }
    out.partition = next;
    Ok(out)
}

/// A queued request and who waits for its answer.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Result<pb::PartitionState, Status>>,
}

/// The partition's version (bumped by every change) and the requests waiting
/// for the next tick boundary.
#[derive(Default)]
pub struct Book {
    pub version: u64,
    pub pending: Vec<Pending>,
}

/// Queues a change for the next tick boundary and waits until it is applied
/// and saved. The same path for Admin `SetPartition` and the local autoscaler.
pub async fn request(shared: &Shared, request: Request) -> Result<pb::PartitionState, Status> {
    let (tx, rx) = oneshot::channel();
    shared.lock().partition.pending.push(Pending { request, reply: tx });
    // The clock answers within a tick (plus the save); not at all only when
    // the replicant is stopping.
    match tokio::time::timeout(std::time::Duration::from_secs(60), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => Err(Status::unavailable(
            "starmesh: no answer within 60s (the replicant is stopping, or its store is down)",
        )),
    }
}

/// The partition with every leaf cell's owner and counts.
pub fn state(core: &Core, refused: Vec<String>) -> pb::PartitionState {
    let map = &core.world.map;
    let players = super::tick::player_counts(core);
    let entities = core.world.counts_per_territory();
    let auth = &core.world.authority;
    let mut s =
        pb::PartitionState { version: core.partition.version, refused, ..Default::default() };
    for (cell, plane) in map.partition().splits() {
        s.splits.push(pb::CellSplit {
            cell: cell.clone(),
            axis: plane.axis.as_str().to_string(),
            at: plane.at,
        });
    }
    for t in map.names() {
        let c = entities.get(&t).copied().unwrap_or_default();
        s.cells.push(pb::CellState {
            cell: t.to_string(),
            server: auth.grant(&t).and_then(|g| g.owner.as_deref()).unwrap_or_default().to_string(),
            players: players.get(&t).copied().unwrap_or(0),
            entities: c.resident + c.evicted,
        });
    }
    for (name, draining) in auth.live_servers() {
        if draining {
            s.draining_servers.push(name.to_string());
        } else {
            s.live_servers.push(name.to_string());
        }
    }
    s
}

/// Tells the authority how many players each cell has (what balancing weighs).
pub fn refresh_players(core: &mut Core) {
    let counts = super::tick::player_counts(core);
    core.world.authority.set_players(counts);
}

/// Positions to choose a cell's split plane from: its players', then every entity's.
fn positions(core: &Core, cell: &str) -> Vec<Vec<[f64; 3]>> {
    let mut players = Vec::new();
    for p in core.players.values() {
        let (t, pos) = match core.world.entity(p.entity) {
            Some(e) => (e.territory.clone(), e.position),
            None => (core.world.map.locate(p.sub.interest.center), p.sub.interest.center),
        };
        if &*t == cell {
            players.push([pos.x, pos.y, pos.z]);
        }
    }
    vec![players, core.world.positions_in(cell)]
}

/// What `apply` did.
pub struct Applied {
    pub state: pb::PartitionState,
    /// To save before answering (`None` when nothing changed).
    pub record: Option<PartitionRecord>,
}

/// Applies one request now (the caller is at a tick boundary). Everything
/// under the lock, so it is atomic for every other task.
pub fn apply(shared: &Shared, core: &mut Core, req: &Request) -> Result<Applied, RequestError> {
    let map = &core.world.map;
    let plan = plan(map.is_dynamic(), map.partition(), map.bases(), req, |c| positions(core, c))?;
    if !plan.changed() {
        return Ok(Applied { state: state(core, plan.refused), record: None });
    }
    let m = &shared.metrics;
    let done = match core.world.repartition(plan.partition.clone()) {
        Ok(d) => d,
        // `plan` only builds valid partitions; kept so a bug refuses, never half-applies.
        Err(e) => {
            tracing::error!(error = %e, "a planned partition did not validate; unchanged");
            return Err(RequestError::Unknown(e.to_string()));
        }
    };
    refresh_players(core);
    let changes = core.world.authority.repartition(&done.removed, &done.added);
    core.apply_changes(changes, m);
    core.partition.version += 1;
    let (sys, shard) = (shared.system.as_str(), shared.shard.as_str());
    // Gone cells' series would otherwise stay at their last value for ever.
    for t in &done.removed {
        let _ = m.players.remove_label_values(&[sys, shard, t]);
        for kind in ["resident", "evicted"] {
            let _ = m.entities.remove_label_values(&[sys, shard, t, kind]);
        }
    }
    m.partition_changes.with_label_values(&[sys, shard, "split"]).inc_by(plan.split.len() as u64);
    m.partition_changes.with_label_values(&[sys, shard, "merge"]).inc_by(plan.merged.len() as u64);
    m.cells.with_label_values(&[sys, shard]).set(core.world.map.names().len() as i64);
    tracing::info!(
        version = core.partition.version,
        split = ?plan.split,
        merged = ?plan.merged,
        refused = ?plan.refused,
        relocated = done.relocated,
        relocated_evicted = done.relocated_evicted,
        cells = core.world.map.names().len(),
        "partition changed"
    );
    let record =
        PartitionRecord { version: core.partition.version, partition: plan.partition.clone() };
    Ok(Applied { state: state(core, plan.refused), record: Some(record) })
}

/// Called by the clock right after `end_tick`: applies every queued request
/// in order, then saves and answers each in the background.
pub fn apply_pending(shared: &Shared, core: &mut Core) {
    if core.partition.pending.is_empty() {
        return;
    }
    for p in std::mem::take(&mut core.partition.pending) {
        match apply(shared, core, &p.request) {
            Err(e) => {
                let _ = p.reply.send(Err(e.into()));
            }
            Ok(Applied { state, record: None }) => {
                let _ = p.reply.send(Ok(state));
            }
            Ok(Applied { state, record: Some(record) }) => {
                tokio::spawn(save_then_reply(shared.store.clone(), record, state, p.reply));
            }
        }
    }
}

/// Saves a changed partition (retrying while the store is down) and answers.
/// Losing it to a crash loses no entity: the cells only say who simulates
/// what, and a restart relocates every entity in whatever partition it loads.
/// A store down for longer than the retries (about a minute) gets the change
/// answered `UNAVAILABLE`: applied, not yet saved.
async fn save_then_reply(
    store: Arc<dyn Store>,
    record: PartitionRecord,
    state: pb::PartitionState,
    reply: oneshot::Sender<Result<pb::PartitionState, Status>>,
) {
    let mut backoff = std::time::Duration::from_millis(50);
    for _ in 0..40 {
        match store.save_partition(&record).await {
            Ok(()) => {
                let _ = reply.send(Ok(state));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, version = record.version, "cannot save the partition yet; retrying");
                if reply.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    let _ = reply.send(Err(Status::unavailable(
        "starmesh: the partition changed but the store did not take it; it will be lost on restart",
    )));
}

/// The partition loaded at recovery: checked against this layout. One that
/// does not fit (the layout changed: a territory gone, or now static) is
/// dropped with a warning: the base territories are always a valid start.
pub fn recovered(map: &mut crate::territory::TerritoryMap, record: Option<PartitionRecord>) -> u64 {
    let Some(r) = record else { return 0 };
    if r.partition.is_empty() {
        return r.version;
    }
    match map.set_partition(r.partition) {
        Ok(()) => r.version,
        Err(e) => {
            tracing::warn!(error = %e, version = r.version, "stored partition does not fit this layout; starting from its base territories");
            r.version
        }
    }
}

/// Players per cell, for the local autoscaler (`starmesh_api::autoscale::CellLoad`).
pub fn loads(core: &Core) -> BTreeMap<String, u64> {
    super::tick::player_counts(core).into_iter().map(|(t, n)| (t.to_string(), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starmesh_api::partition::{Axis, Plane};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    use tokio::sync::{Notify, mpsc, watch};

    use crate::model::{EntityWrite, Vec3};
    use crate::replicant::authority::Authority;
    use crate::replicant::state::World;
    use crate::replicant::{Config, ServerConn, gate, metrics::Metrics};
    use crate::territory::TerritoryMap;
    use crate::wire::pb::replicant_message::Msg;

    type Rx = mpsc::Receiver<Result<pb::ReplicantMessage, Status>>;
    /// What a server holds: territory -> epoch, entity -> territory.
    type Held = (BTreeMap<String, u64>, HashMap<u64, String>);

    fn dynamic_shared(dir: &std::path::Path) -> Shared {
        let (sys, mut layout) = crate::territory::tests::sol();
        layout.mode = starmesh_api::LayoutMode::Dynamic;
        layout.servers.clear();
        let map = TerritoryMap::new(&sys, &layout).expect("map");
        let mut auth = Authority::new(map.names(), BTreeMap::new(), 1, Duration::from_secs(3));
        auth.set_balanced(true);
        let cfg = Config::default();
        Shared {
            core: std::sync::Mutex::new(Core::new(World::new(map, auth, 50.0), cfg.backlog_bound)),
            metrics: Metrics::new(),
            store: Arc::new(crate::store::embedded::EmbeddedStore::open(dir).expect("store")),
            cfg,
            system: "sol".into(),
            shard: "0".into(),
            commit_notify: Notify::new(),
            shutdown: Notify::new(),
            store_ok: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            gates: gate::Gates::new(&[], &[]).expect("no gates"),
            loaded: watch::Sender::new(true),
        }
    }

    fn connect(core: &mut Core, m: &Metrics, name: &str) -> Rx {
        let (tx, rx) = mpsc::channel(10_000);
        let conn = core.next_conn();
        core.servers.insert(
            conn,
            ServerConn {
                name: name.into(),
                tx,
                kill: Arc::new(Notify::new()),
                committed: watch::Sender::new((0, 0)),
                sub: None,
                slow_ticks: 0,
            },
        );
        refresh_players(core);
        let ch = core.world.authority.connect(name.into(), conn, Instant::now());
        core.apply_changes(ch, m);
        rx
    }

    /// What a server holds after reading its queue: territory -> epoch, entity -> territory.
    fn follow(rx: &mut Rx, held: &mut Held) {
        while let Ok(Ok(msg)) = rx.try_recv() {
            match msg.msg {
                Some(Msg::Grant(g)) => {
                    held.0.insert(g.territory, g.epoch);
                }
                Some(Msg::Revoke(r)) if held.0.get(&r.territory) == Some(&r.epoch) => {
                    held.0.remove(&r.territory);
                    held.1.retain(|_, t| *t != r.territory);
                }
                Some(Msg::HandoffIn(h)) if held.0.get(&h.to_territory) == Some(&h.epoch) => {
                    let id = h.entity.map_or(0, |e| e.id);
                    held.1.insert(id, h.to_territory);
                }
                Some(Msg::HandoffOut(h)) => {
                    held.1.remove(&h.entity.map_or(0, |e| e.id));
                }
                _ => {}
            }
        }
    }

    /// Split, a second server, merge, drain: every entity is held by exactly
    /// one server, through the cell it lies in, at that cell's current epoch.
    #[tokio::test]
    async fn splits_and_merges_move_every_entity_to_exactly_one_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dynamic_shared(dir.path());
        let m = &shared.metrics;
        let mut core = shared.lock();
        let mut rx1 = connect(&mut core, m, "s1");
        let epoch = core.world.authority.grant("earth").expect("earth").epoch;
        for id in 1..=20u64 {
            let w = EntityWrite {
                seq: id,
                epoch,
                id,
                kind: 1,
                position: Vec3::new(800.0 + id as f64 * 20.0, 0.0, 0.0),
                velocity: Vec3::default(),
                location: "".into(),
                components: bytes::Bytes::from_static(b"x"),
            };
            assert!(matches!(
                core.world.apply_write("s1", &w),
                crate::replicant::state::WriteOutcome::Applied { .. }
            ));
        }
        core.world.end_tick();
        let mut h1: Held = Default::default();
        let mut h2 = Default::default();
        follow(&mut rx1, &mut h1);
        // s1 created them itself (adopted through earth).
        h1.1.extend((1..=20u64).map(|id| (id, "earth".to_string())));
        let check = |core: &Core, holders: &[&Held]| {
            for id in 1..=20u64 {
                let e = core.world.entity(id).expect("resident");
                assert_eq!(
                    e.territory,
                    core.world.map.locate(e.position),
                    "entity {id} in its cell"
                );
                let g = core.world.authority.grant(&e.territory).expect("a grant");
                let n = holders
                    .iter()
                    .filter(|h| {
                        h.1.get(&id) == Some(&e.territory.to_string())
                            && h.0.get(&*e.territory) == Some(&g.epoch)
                    })
                    .count();
                assert_eq!(n, 1, "entity {id} held by exactly one server at the current epoch");
            }
        };
        check(&core, &[&h1]);

        let before = core.world.entity(1).expect("e").version;
        let out = apply(&shared, &mut core, &req(&["earth"], &[])).expect("applied");
        assert_eq!(out.state.version, 1);
        assert_eq!(out.record.as_ref().map(|r| r.version), Some(1));
        assert!(out.state.cells.iter().any(|c| c.cell == "earth/0" && c.entities == 10));
        assert!(out.state.cells.iter().any(|c| c.cell == "earth/1" && c.entities == 10));
        assert_eq!(core.world.entity(1).expect("e").version, before + 1, "territory is state");
        follow(&mut rx1, &mut h1);
        check(&core, &[&h1]);
        assert_eq!(m.cells.with_label_values(&["sol", "0"]).get(), 4);
        // The relocated entities are committed with the next tick.
        assert_eq!(core.world.end_tick().changed.len(), 20);

        // A second server joins: one half moves to it.
        let mut rx2 = connect(&mut core, m, "s2");
        follow(&mut rx1, &mut h1);
        follow(&mut rx2, &mut h2);
        assert!(!h2.1.is_empty() && !h1.1.is_empty(), "both simulate some");
        check(&core, &[&h1, &h2]);

        // Merge back, then drain s2: s1 holds everything.
        apply(&shared, &mut core, &req(&[], &["earth"])).expect("merged");
        follow(&mut rx1, &mut h1);
        follow(&mut rx2, &mut h2);
        check(&core, &[&h1, &h2]);
        refresh_players(&mut core);
        let (ch, left) = core.world.authority.drain("s2");
        core.apply_changes(ch, m);
        assert_eq!(left, 0);
        follow(&mut rx1, &mut h1);
        follow(&mut rx2, &mut h2);
        check(&core, &[&h1, &h2]);
        assert!(h2.1.is_empty());
        assert_eq!(m.partition_changes.with_label_values(&["sol", "0", "merge"]).get(), 1);
        assert_eq!(state(&core, vec![]).cells.len(), 3);
    }

    fn bases() -> BTreeSet<String> {
        ["earth", "station", "deep-space"].into_iter().map(String::from).collect()
    }

    fn req(split: &[&str], merge: &[&str]) -> Request {
        Request {
            split: split.iter().map(|s| s.to_string()).collect(),
            merge: merge.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn crowd(_: &str) -> Vec<Vec<[f64; 3]>> {
        vec![vec![[0.0, 0.0, 0.0], [4.0, 1.0, 0.0], [8.0, 0.0, 0.0]]]
    }

    #[test]
    fn splits_at_the_crowd_and_merges_back() {
        let p = Partition::default();
        let out = plan(true, &p, &bases(), &req(&["earth"], &[]), crowd).unwrap();
        assert_eq!(out.split, ["earth"]);
        assert_eq!(out.partition.plane("earth"), Some(&Plane { axis: Axis::X, at: 4.0 }));
        let back = plan(true, &out.partition, &bases(), &req(&[], &["earth"]), crowd).unwrap();
        assert_eq!(back.merged, ["earth"]);
        assert!(back.partition.is_empty());
    }

    #[test]
    fn invalid_requests_change_nothing_and_say_why() {
        let mut p = Partition::default();
        p.split("earth", Plane { axis: Axis::X, at: 0.0 });
        let b = bases();
        let e = |r: Request| plan(true, &p, &b, &r, crowd).unwrap_err();
        assert_eq!(e(req(&["mars"], &[])), RequestError::Unknown("mars".into()));
        assert_eq!(e(req(&["earth/2"], &[])), RequestError::Unknown("earth/2".into()));
        assert_eq!(e(req(&["earth"], &[])), RequestError::NotLeaf("earth".into()));
        assert_eq!(e(req(&[], &["station"])), RequestError::NotMergeable("station".into()));
        assert_eq!(e(req(&[], &["earth/0"])), RequestError::NotMergeable("earth/0".into()));
        assert_eq!(e(req(&["station"], &["mars"])), RequestError::Unknown("mars".into()));
        assert_eq!(
            plan(false, &p, &b, &req(&["earth/0"], &[]), crowd).unwrap_err(),
            RequestError::Static
        );
        assert_eq!(Status::from(RequestError::Static).code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            Status::from(RequestError::Unknown("x".into())).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn unsplittable_cells_are_refused_with_a_reason() {
        let mut p = Partition::default();
        p.split("earth", Plane { axis: Axis::X, at: 0.0 });
        // Nothing to halve in an empty cell; a split under a merging parent is refused.
        let out = plan(true, &p, &bases(), &req(&["station", "earth/0"], &["earth"]), |c| {
            if c == "station" { vec![vec![], vec![[1.0, 1.0, 1.0]]] } else { crowd(c) }
        })
        .unwrap();
        assert_eq!(out.merged, ["earth"]);
        assert!(out.split.is_empty());
        assert_eq!(out.refused.len(), 2, "{:?}", out.refused);
        assert!(out.refused[0].starts_with("station: fewer than two"));
        assert!(out.refused[1].starts_with("earth/0: its parent merges"));
        // The deepest cells cannot split again.
        let mut deep = Partition::default();
        let mut cell = "earth".to_string();
        for _ in 0..MAX_SPLIT_DEPTH {
            deep.split(&cell, Plane { axis: Axis::X, at: 0.0 });
            cell = cells::child(&cell, 0);
        }
        let out = plan(true, &deep, &bases(), &req(&[&cell], &[]), crowd).unwrap();
        assert!(!out.changed());
        assert!(out.refused[0].contains("splits deep"));
    }
}
