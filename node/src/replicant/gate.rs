//! Jump gates, replicant side: a ship that enters a gate leaves this
//! StarSystem's shard and appears at the target gate of another system's
//! shard, through a two-step transfer with an idempotency key.
//!
//! # The protocol
//!
//! Source replicant A, on a fenced `GateEnter` from the ship's owner:
//! 1. *Mark.* The entity leaves A's world at once (no server simulates it;
//!    writes to its id are rejected `GATE_IN_TRANSIT`; the owner gets a
//!    `HandoffOut` to `gate:<system>/<gate>`), and A durably records the
//!    transfer `InTransit` under the transfer id `<system>/<shard>/<id>@<version>`
//!    — unique because an entity's version only grows over its whole life,
//!    across systems too (the target continues the version line).
//! 2. *Arrive.* A calls `GateLink.Arrive` on the target system's replicant B
//!    until it gets an answer. B commits the entity (placed at its gate's
//!    exit point) and the transfer id in one transaction; a transfer id it has
//!    already committed is answered `ACCEPTED` again without writing anything.
//! 3. *Settle.* Accepted: A durably marks the record `Departed` (a tombstone
//!    that keeps fencing the id, so a late write or a respawn cannot duplicate
//!    the ship). Refused (e.g. the id is taken in B): A durably puts the entity
//!    back just outside its own gate and hands it to the territory's owner.
//!
//! # Why a crash anywhere leaves the ship in exactly one system
//!
//! - A dies before the mark is durable: its store still has the entity row and
//!   no record, so A restarts with the ship (its latest acknowledged write
//!   included: a write applied in the tick of the `GateEnter` is still queued
//!   for the group commit); B never heard of it.
//! - A dies after the mark: the record carries the full state; recovery skips
//!   entity rows that have a record and resumes every `InTransit` record at
//!   step 2. B either never applied it (inserts now) or did (answers again).
//! - B dies before its transaction: nothing there; A retries. After it: the
//!   ship is in B's store with the transfer id, and A's retry is answered from
//!   the transfer id, so it is never inserted twice. B commits *before* it puts
//!   the ship in memory or answers, and does both in a task a cancelled RPC
//!   cannot interrupt.
//! - The server dies at any point: it only ever triggers step 1; the rest is
//!   between the replicants (a takeover server is never handed an in-transit
//!   entity: it is in no territory).
//!
//! Entity ids must be unique across systems. Player ships are by construction
//! (`gateway::placement::ship_of`); B refuses an arrival whose id it already
//! holds rather than overwrite a different entity, and A then keeps the ship.
//! An arrival of an id that is `InTransit` *from* B is accepted: it can only be
//! the same ship coming back before B's own ack arrived (it reached the other
//! side, so B's transfer was applied).
//!
//! Fault injection (test-only): `STARMESH_CRASH_AT=<step>` makes the process
//! abort at that step, like `kill -9` at the worst moment. Steps:
//! `gate-before-mark` (A: out of the world, record not yet written),
//! `gate-after-mark` (A: record durable, before `Arrive`), `gate-after-ack`
//! (A: `Arrive` answered, before settling), `gate-after-arrive-commit` (B:
//! committed, before it answers). Never set it in production.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::mesh_map::ShardLoad;
use crate::model::{Entity, EntityId, ServerName, Vec3};
use crate::resources::MeshGate;
use crate::store::{Arrived, Outbound, OutboundPhase};
use crate::wire::pb::{self, replicant_message::Msg};
use crate::wire::validate::{self, GateEnter, entity_to_pb};

use super::authority::Fence;
use super::service::Svc;
use super::{Core, Shared};

/// How close (km) to a gate's centre a ship must be for `GateEnter`.
pub const GATE_RADIUS_KM: f64 = 100.0;
/// Where an arriving (or returned) ship is put: this far from the gate's
/// centre towards the star, outside the radius, so it does not re-enter the
/// gate the moment it appears.
pub const EXIT_OFFSET_KM: f64 = 2.0 * GATE_RADIUS_KM;
/// Test-only fault injection (see the module docs).
pub const CRASH_ENV: &str = "STARMESH_CRASH_AT";
/// One `Arrive` attempt may take this long before it is retried.
const ARRIVE_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Aborts the process if `STARMESH_CRASH_AT` names `step` (test-only).
pub fn crash_point(step: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(CRASH_ENV).ok()).as_deref() == Some(step) {
        tracing::error!(step, "{CRASH_ENV}: aborting here on purpose (test-only fault injection)");
        std::process::abort();
    }
}

type GateClient = pb::gate_link_client::GateLinkClient<Channel>;

/// This system's gates and the replicants of the systems they lead to.
pub struct Gates {
    by_name: HashMap<Arc<str>, MeshGate>,
    /// System → (address, client). Replaced while running ([`Gates::set_peers`]: the
    /// mesh map in a cluster); never held across an await or while taking the core lock.
    peers: RwLock<HashMap<String, (String, GateClient)>>,
    /// This shard's index and every shard of the layout (the mesh map), for shard moves
    /// out of a draining shard ([`super::shard_move`]).
    shards: RwLock<(i32, Vec<ShardLoad>)>,
    /// Replicant address of a shard → its client (kept while the address is unchanged).
    shard_clients: RwLock<HashMap<std::net::SocketAddr, GateClient>>,
}

fn gate_client(system: &str, addr: &str) -> anyhow::Result<GateClient> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ep = Endpoint::from_shared(url)
        .map_err(|e| anyhow::anyhow!("--gate-peer {system}={addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(ARRIVE_TIMEOUT);
    let channel = crate::tls::connect_lazy(ep, crate::tls::process().as_ref());
    Ok(GateClient::new(channel).max_decoding_message_size(validate::MAX_MESSAGE_BYTES))
}

impl Gates {
    /// `peers`: (system, `host:port` of its replicant's gRPC). Connections are
    /// lazy: a peer that is down now is retried by the transfers that need it.
    pub fn new(gates: &[MeshGate], peers: &[(String, String)]) -> anyhow::Result<Self> {
        let by_name = gates.iter().map(|g| (g.name.clone(), g.clone())).collect();
        let g = Self {
            by_name,
            peers: RwLock::new(HashMap::new()),
            shards: RwLock::new((0, Vec::new())),
            shard_clients: RwLock::new(HashMap::new()),
        };
        g.set_peers(peers)?;
        Ok(g)
    }

    /// Replaces the peers (a changed mesh map): a system whose address is unchanged
    /// keeps its client (and connection); a system no longer listed is dropped, so
    /// ships entering its gates are refused (`GATE_NO_PEER`) and transfers already in
    /// transit wait, durably recorded, until it is back. Nothing changes on an error.
    pub fn set_peers(&self, peers: &[(String, String)]) -> anyhow::Result<()> {
        let old = self.peers.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut next = HashMap::new();
        for (system, addr) in peers {
            let client = match old.get(system) {
                Some((a, c)) if a == addr => c.clone(),
                _ => {
                    tracing::info!("gate peer: the replicant of {system} is at {addr}");
                    gate_client(system, addr)?
                }
            };
            next.insert(system.clone(), (addr.clone(), client));
        }
        for system in old.keys().filter(|s| !next.contains_key(*s)) {
            tracing::warn!(%system, "gate peer removed: ships entering gates to {system} are refused until it is back");
        }
        for g in self.by_name.values() {
            if !next.contains_key(&*g.target_system) {
                // Not fatal: the peer may come with a mesh map update or a restart.
                tracing::warn!(
                    gate = %g.name,
                    system = %g.target_system,
                    "jump gate leads to a system without a peer (--gate-peer or the mesh map): ships entering it are refused (GATE_NO_PEER)"
                );
            }
        }
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// This replicant is shard `own` of a layout whose shards are `shards` (the mesh map,
    /// re-read while running). When its own entry is draining, its players' ships move.
    pub fn set_shards(&self, own: i32, shards: Vec<ShardLoad>) {
        let mut cur = self.shards.write().unwrap_or_else(|p| p.into_inner());
        let was = super::shard_move::target(cur.0, &cur.1).map(|s| s.index);
        let now = super::shard_move::target(own, &shards).map(|s| s.index);
        if was != now {
            match now {
                Some(to) => tracing::info!(
                    shard = own,
                    to,
                    "shard draining: moving its players' ships to shard {to}"
                ),
                None => {
                    tracing::info!(shard = own, "no shard move (not draining, or no open shard)")
                }
            }
        }
        *cur = (own, shards);
    }

    /// (this shard's index, the shard its ships move to now); `None`: not draining.
    pub fn drain_target(&self) -> Option<(i32, i32)> {
        let cur = self.shards.read().unwrap_or_else(|p| p.into_inner());
        super::shard_move::target(cur.0, &cur.1).map(|s| (cur.0, s.index))
    }

    /// The replicant of shard `index` of this layout, if the map lists it.
    fn shard_peer(&self, index: i32) -> Option<GateClient> {
        let addr = {
            let cur = self.shards.read().unwrap_or_else(|p| p.into_inner());
            cur.1.iter().find(|s| s.index == index)?.replicant
        };
        if let Some(c) = self.shard_clients.read().unwrap_or_else(|p| p.into_inner()).get(&addr) {
            return Some(c.clone());
        }
        let c = gate_client(&format!("shard {index}"), &addr.to_string()).ok()?;
        self.shard_clients.write().unwrap_or_else(|p| p.into_inner()).insert(addr, c.clone());
        Some(c)
    }

    fn has_peer(&self, system: &str) -> bool {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).contains_key(system)
    }

    fn peer(&self, system: &str) -> Option<GateClient> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).get(system).map(|(_, c)| c.clone())
    }
}

/// Gate bookkeeping inside `Core` (under the one lock).
#[derive(Debug, Default)]
pub struct GateBook {
    /// Transfers started here, in transit or departed, by entity id.
    pub outbound: HashMap<EntityId, Outbound>,
    /// Arrivals being committed right now (their ids are fenced meanwhile).
    pub arriving: HashSet<EntityId>,
}

impl GateBook {
    /// Writes to these ids are rejected: the entity is not in this world.
    pub fn fences(&self, id: EntityId) -> bool {
        self.outbound.contains_key(&id) || self.arriving.contains(&id)
    }

    pub fn in_transit(&self) -> usize {
        self.outbound.values().filter(|o| o.phase == OutboundPhase::InTransit).count()
    }
}

/// Just outside `gate`, towards the star (or +x for a gate at the star).
fn exit_point(gate: Vec3) -> Vec3 {
    let d = gate.dist(Vec3::default());
    if d < 1e-9 {
        return Vec3::new(EXIT_OFFSET_KM, 0.0, 0.0);
    }
    let k = 1.0 - EXIT_OFFSET_KM / d;
    Vec3::new(gate.x * k, gate.y * k, gate.z * k)
}

fn gate_label(system: &str, gate: &str) -> String {
    format!("gate:{system}/{gate}")
}

fn reject(
    core: &mut Core,
    m: &super::metrics::Metrics,
    conn: u64,
    g: &GateEnter,
    reason: pb::RejectReason,
    current: u64,
) {
    m.gate_transfers.with_label_values(&["rejected"]).inc();
    let r =
        pb::WriteRejected { seq: g.seq, id: g.id, reason: reason as i32, current_epoch: current };
    core.tick_rejections.entry(conn).or_default().add(r);
}

/// `GateEnter` from server `server` on connection `conn` (under the lock).
/// Either rejects it (nothing changes) or takes the entity out of the world
/// and starts the transfer task.
pub fn enter(shared: &Arc<Shared>, core: &mut Core, conn: u64, server: &ServerName, g: GateEnter) {
    let m = &shared.metrics;
    if core.gates.fences(g.id) {
        return reject(core, m, conn, &g, pb::RejectReason::GateInTransit, 0);
    }
    let Some(e) = core.world.entity(g.id) else {
        return reject(core, m, conn, &g, pb::RejectReason::GateNoEntity, 0);
    };
    let (position, territory) = (e.position, e.territory.clone());
    match core.world.authority.check_write(&territory, server, g.epoch) {
        Ok(()) => {}
        Err(Fence::StaleEpoch { current }) => {
            m.stale_epoch_rejections.inc();
            return reject(core, m, conn, &g, pb::RejectReason::StaleEpoch, current);
        }
        Err(Fence::NotOwner { current }) => {
            return reject(core, m, conn, &g, pb::RejectReason::NotOwner, current);
        }
    }
    let epoch = g.epoch;
    let Some(gate) = shared.gates.by_name.get(&g.gate) else {
        return reject(core, m, conn, &g, pb::RejectReason::GateUnknown, epoch);
    };
    if position.dist(gate.position) > GATE_RADIUS_KM {
        return reject(core, m, conn, &g, pb::RejectReason::GateTooFar, epoch);
    }
    if !shared.gates.has_peer(&gate.target_system) {
        return reject(core, m, conn, &g, pb::RejectReason::GateNoPeer, epoch);
    }
    if core.wb.is_full() {
        // Departing needs the store like a write does.
        return reject(core, m, conn, &g, pb::RejectReason::BacklogFull, 0);
    }
    let Some(entity) = core.world.remove_for_gate(g.id) else {
        return reject(core, m, conn, &g, pb::RejectReason::GateNoEntity, 0);
    };
    let transfer_id: Arc<str> =
        Arc::from(format!("{}/{}/{}@{}", shared.system, shared.shard, entity.id, entity.version));
    let to = gate_label(&gate.target_system, &gate.target_gate);
    tracing::info!(id = g.id, %transfer_id, gate = %gate.name, target = %to, "gate entered: ship in transit");
    let h = pb::EntityHandoff {
        entity: Some(entity_to_pb(&entity)),
        from_territory: territory.to_string(),
        to_territory: to,
        // No territory (and so no epoch) to stamp writes with: it is gone.
        epoch: 0,
        tick: core.world.tick(),
    };
    let t = Outbound {
        transfer_id: transfer_id.clone(),
        entity,
        source_gate: gate.name.clone(),
        target_system: gate.target_system.clone(),
        target_gate: gate.target_gate.clone(),
        server: server.clone(),
        phase: OutboundPhase::InTransit,
    };
    core.gates.outbound.insert(g.id, t.clone());
    m.gate_in_transit.set(core.gates.in_transit() as i64);
    core.send_control(conn, Msg::HandoffOut(h), m);
    tokio::spawn(run_outbound(shared.clone(), t, false));
}

/// Is `transfer_id` still the entity's current transfer here? (It stops being
/// so when the entity arrives back through a gate before the ack reached us.)
fn current(shared: &Shared, id: EntityId, transfer_id: &str) -> bool {
    shared.lock().gates.outbound.get(&id).is_some_and(|o| &*o.transfer_id == transfer_id)
}

/// Sleeps `backoff` (doubling it) unless the replicant is shutting down.
async fn pause(shared: &Shared, backoff: &mut Duration) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    if shared.stopping.load(Ordering::Relaxed) {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !shared.stopping.load(Ordering::Relaxed),
        _ = shared.shutdown.notified() => false,
    }
}

enum Answer {
    Accepted,
    Refused(String),
}

/// Steps 1 (unless `durable`: resumed from the store) to 3 of one transfer.
/// Every store step is retried until it succeeds: giving up would strand the ship.
pub async fn run_outbound(shared: Arc<Shared>, t: Outbound, durable: bool) {
    let (id, tid) = (t.entity.id, t.transfer_id.clone());
    let mut backoff = MIN_BACKOFF;
    if !durable {
        crash_point("gate-before-mark");
        while let Err(e) = shared.store.gate_depart(&t).await {
            tracing::warn!(error = %e, %tid, "cannot record the gate transfer yet; retrying");
            if !pause(&shared, &mut backoff).await {
                return;
            }
        }
        tracing::info!(%tid, "gate transfer recorded");
    }
    crash_point("gate-after-mark");

    let req = pb::ArriveRequest {
        transfer_id: tid.to_string(),
        source_system: shared.system.clone(),
        source_gate: t.source_gate.to_string(),
        target_gate: t.target_gate.to_string(),
        entity: Some(entity_to_pb(&t.entity)),
    };
    let mut backoff = MIN_BACKOFF;
    let answer = loop {
        if !current(&shared, id, &tid) {
            tracing::info!(%tid, "gate transfer overtaken (the ship came back); stopping");
            return;
        }
        let to_shard = super::shard_move::shard_of_gate(&t.target_gate);
        let peer = match to_shard {
            Some(i) => shared.gates.shard_peer(i),
            None => shared.gates.peer(&t.target_system),
        };
        let Some(mut client) = peer else {
            // The flag was dropped across a restart: keep the record, keep asking.
            tracing::error!(%tid, system = %t.target_system, "no --gate-peer for the target system; ship held in transit");
            if !pause(&shared, &mut backoff).await {
                return;
            }
            continue;
        };
        match client.arrive(Request::new(req.clone())).await.map(Response::into_inner) {
            Ok(r) if r.result == pb::ArriveResult::Accepted as i32 => break Answer::Accepted,
            Ok(r) if r.result == pb::ArriveResult::Refused as i32 => {
                break Answer::Refused(r.reason);
            }
            Ok(r) => tracing::warn!(%tid, result = r.result, "unknown Arrive answer; retrying"),
            Err(s) => {
                tracing::warn!(%tid, code = ?s.code(), error = %s.message(), "Arrive failed; retrying")
            }
        }
        shared.metrics.gate_arrive_retries.inc();
        if !pause(&shared, &mut backoff).await {
            return;
        }
    };
    crash_point("gate-after-ack");

    let mut backoff = MIN_BACKOFF;
    match answer {
        Answer::Accepted => {
            while let Err(e) = shared.store.gate_departed(id, &tid).await {
                tracing::warn!(error = %e, %tid, "cannot record the departure yet; retrying");
                if !pause(&shared, &mut backoff).await {
                    return;
                }
            }
            let mut core = shared.lock();
            let Some(o) = core.gates.outbound.get_mut(&id).filter(|o| o.transfer_id == tid) else {
                // Overtaken meanwhile: the ship is already back here.
                return;
            };
            o.phase = OutboundPhase::Departed;
            shared.metrics.gate_transfers.with_label_values(&["departed"]).inc();
            shared.metrics.gate_in_transit.set(core.gates.in_transit() as i64);
            tracing::info!(%tid, system = %t.target_system, "gate transfer done: ship departed");
        }
        Answer::Refused(reason) => {
            tracing::warn!(%tid, %reason, "target system refused the ship; bringing it back");
            let Some(gate) = shared.gates.by_name.get(&t.source_gate) else {
                // The gate was removed from the StarSystem meanwhile: put the ship where it left.
                return bring_back(&shared, &t, t.entity.position).await;
            };
            bring_back(&shared, &t, exit_point(gate.position)).await;
        }
    }
}

/// The target refused: the ship returns to this world at `at`, at rest.
async fn bring_back(shared: &Arc<Shared>, t: &Outbound, at: Vec3) {
    let (id, tid) = (t.entity.id, &t.transfer_id);
    let mut e = Entity {
        position: at,
        velocity: Vec3::default(),
        location: t.source_gate.clone(),
        version: t.entity.version + 1,
        ..t.entity.clone()
    };
    let mut backoff = MIN_BACKOFF;
    while let Err(err) = shared.store.gate_return(tid, &e).await {
        tracing::warn!(error = %err, %tid, "cannot record the return yet; retrying");
        if !pause(shared, &mut backoff).await {
            return;
        }
    }
    let mut core = shared.lock();
    if core.gates.outbound.get(&id).is_none_or(|o| o.transfer_id != *tid) {
        return;
    }
    core.gates.outbound.remove(&id);
    e.territory = core.world.map.locate(e.position);
    core.world.load(e);
    let from = gate_label(&t.target_system, &t.target_gate);
    hand_to_owner(&mut core, id, &from, &shared.metrics);
    shared.metrics.gate_transfers.with_label_values(&["returned"]).inc();
    shared.metrics.gate_in_transit.set(core.gates.in_transit() as i64);
}

/// The owner of the entity's territory resumes simulating it, as after a stream-in.
fn hand_to_owner(core: &mut Core, id: EntityId, from: &str, m: &super::metrics::Metrics) {
    let tick = core.world.tick();
    let Some(e) = core.world.entity(id) else { return };
    let Some(g) = core.world.authority.grant(&e.territory) else { return };
    let Some(conn) = g.owner.as_deref().and_then(|o| core.world.authority.conn_of(o)) else {
        // No owner now: the next grant of the territory hands it over.
        return;
    };
    let h = pb::EntityHandoff {
        entity: Some(entity_to_pb(e)),
        from_territory: from.to_string(),
        to_territory: e.territory.to_string(),
        epoch: g.epoch,
        tick,
    };
    core.send_control(conn, Msg::HandoffIn(h), m);
}

/// Resumes every transfer that was in transit when the replicant stopped.
pub fn resume(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let pending: Vec<Outbound> = shared
        .lock()
        .gates
        .outbound
        .values()
        .filter(|o| o.phase == OutboundPhase::InTransit)
        .cloned()
        .collect();
    if !pending.is_empty() {
        tracing::info!(transfers = pending.len(), "resuming gate transfers left in transit");
    }
    pending.into_iter().map(|t| tokio::spawn(run_outbound(shared.clone(), t, true))).collect()
}

fn answer(result: pb::ArriveResult, reason: &str, replayed: bool) -> Response<pb::ArriveResponse> {
    Response::new(pb::ArriveResponse {
        result: result as i32,
        reason: reason.to_string(),
        replayed,
    })
}

/// Removes an id from `arriving` however the arrival ends.
struct ArrivingGuard(Arc<Shared>, EntityId);

impl Drop for ArrivingGuard {
    fn drop(&mut self) {
        self.0.lock().gates.arriving.remove(&self.1);
    }
}

/// The target side of a transfer (see the module docs). Runs as its own task
/// so that a caller giving up (timeout) cannot cut it between the commit and
/// putting the ship into the world.
async fn arrive(
    shared: Arc<Shared>,
    a: validate::Arrival,
) -> Result<Response<pb::ArriveResponse>, Status> {
    let m = &shared.metrics;
    let id = a.entity.id;
    // A shard move (same system, another shard draining) keeps the ship where it was.
    let shard_move = super::shard_move::shard_of_gate(&a.target_gate).is_some()
        && *a.source_system == *shared.system;
    let gate = shared.gates.by_name.get(&a.target_gate);
    if gate.is_none() && !shard_move {
        m.gate_transfers.with_label_values(&["refused"]).inc();
        return Ok(answer(pb::ArriveResult::Refused, "unknown gate in this system", false));
    }
    {
        let mut core = shared.lock();
        if !core.gates.arriving.insert(id) {
            return Err(Status::unavailable("starmesh: this entity is arriving right now; retry"));
        }
    }
    let _guard = ArrivingGuard(shared.clone(), id);
    // A retry of a transfer already applied (here, before a crash or a lost
    // answer) gets the same answer, whatever happened to the ship since.
    match shared.store.gate_arrival_seen(&a.transfer_id).await {
        Ok(true) => {
            m.gate_transfers.with_label_values(&["replayed"]).inc();
            tracing::info!(transfer_id = %a.transfer_id, "gate arrival replayed (already applied)");
            return Ok(answer(pb::ArriveResult::Accepted, "", true));
        }
        Ok(false) => {}
        Err(e) => return Err(Status::unavailable(format!("starmesh: store: {e}"))),
    }
    let e = {
        let core = shared.lock();
        // An id in transit *from* here is not in the world: that ship may come back.
        if core.world.contains(id) {
            drop(core);
            m.gate_transfers.with_label_values(&["refused"]).inc();
            tracing::warn!(id, transfer_id = %a.transfer_id, "gate arrival refused: entity id in use here");
            return Ok(answer(pb::ArriveResult::Refused, "entity id in use in this system", false));
        }
        let (position, velocity, location) = match gate {
            Some(g) if !shard_move => (exit_point(g.position), Vec3::default(), g.name.clone()),
            _ => (a.entity.position, a.entity.velocity, a.entity.location.clone()),
        };
        Entity {
            position,
            velocity,
            location,
            // The jump is a change: the version line continues from the source's.
            version: a.entity.version + 1,
            territory: core.world.map.locate(position),
            ..a.entity.clone()
        }
    };
    match shared.store.gate_arrive(&a.transfer_id, &e).await {
        Ok(Arrived::Inserted) => {}
        Ok(Arrived::Replayed) => {
            m.gate_transfers.with_label_values(&["replayed"]).inc();
            return Ok(answer(pb::ArriveResult::Accepted, "", true));
        }
        Err(err) => return Err(Status::unavailable(format!("starmesh: store: {err}"))),
    }
    crash_point("gate-after-arrive-commit");
    let mut core = shared.lock();
    // It is here now: any tombstone (or a transfer it overtook) is void.
    core.gates.outbound.remove(&id);
    core.world.load(e);
    // A shard move is an ordinary handoff to the server (`shard:<from>`), not a gate
    // arrival: the game keeps the ship's route.
    let from = if shard_move {
        a.source_gate.to_string()
    } else {
        gate_label(&a.source_system, &a.source_gate)
    };
    hand_to_owner(&mut core, id, &from, m);
    m.gate_transfers.with_label_values(&["arrived"]).inc();
    m.gate_in_transit.set(core.gates.in_transit() as i64);
    tracing::info!(id, transfer_id = %a.transfer_id, gate = %a.target_gate, shard_move, "ship arrived through a gate");
    Ok(answer(pb::ArriveResult::Accepted, "", false))
}

#[tonic::async_trait]
impl pb::gate_link_server::GateLink for Svc {
    async fn arrive(
        &self,
        req: Request<pb::ArriveRequest>,
    ) -> Result<Response<pb::ArriveResponse>, Status> {
        let a = validate::arrive_request(req.into_inner()).inspect_err(|_| {
            self.0.metrics.bad_messages.inc();
        })?;
        match tokio::spawn(arrive(self.0.clone(), a)).await {
            Ok(r) => r,
            Err(e) => Err(Status::internal(format!("starmesh: arrival task: {e}"))),
        }
    }
}

/// Admin `Lookup`: where one entity is in this replicant.
pub fn lookup(core: &Core, id: EntityId) -> pb::LookupResponse {
    let mut r = pb::LookupResponse {
        present: core.world.contains(id),
        entity: core.world.entity(id).map(entity_to_pb),
        ..Default::default()
    };
    if let Some(o) = core.gates.outbound.get(&id) {
        r.in_transit = o.phase == OutboundPhase::InTransit;
        r.departed = o.phase == OutboundPhase::Departed;
        r.transfer_id = o.transfer_id.to_string();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_point_is_outside_the_radius_towards_the_star() {
        let g = Vec3::new(1000.0, 0.0, 0.0);
        let p = exit_point(g);
        assert!((p.dist(g) - EXIT_OFFSET_KM).abs() < 1e-6);
        assert!(p.dist(g) > GATE_RADIUS_KM);
        assert!(p.x < g.x, "towards the star");
        assert_eq!(exit_point(Vec3::default()), Vec3::new(EXIT_OFFSET_KM, 0.0, 0.0));
    }

    #[test]
    fn book_fences_in_transit_departed_and_arriving_ids() {
        let mut b = GateBook::default();
        assert!(!b.fences(1));
        b.arriving.insert(1);
        assert!(b.fences(1));
        assert_eq!(b.in_transit(), 0);
    }
}
