//! `starmesh server`: a game server. It holds one ServerLink stream to its
//! shard's replicant, follows the grants, revokes and handoffs it is sent
//! (`authority`), and runs a fixed-rate tick over the entities it holds,
//! writing each changed one back stamped with its territory's epoch. It keeps
//! nothing the replicant does not also have: when the stream breaks it drops
//! everything and reconnects, and the replicant hands it whatever it then owns.
//!
//! The simulation is a `Game` (`game.rs`): the built-in one is the example
//! game, and a studio's own links this runner through `starmesh-sdk`
//! (node/sdk/) with the same flags, environment and metrics (`main_with`).

pub mod authority;
pub mod custom;
pub mod game;
pub mod metrics;
pub mod system;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;

use crate::model::{Entity, EntityId};
use crate::wire::pb::{self, replicant_message::Msg, server_message};
use crate::wire::validate::{
    self, MAX_COMPONENT_BYTES, MAX_COORD_KM, MAX_NAME_LEN, MAX_SPEED_KM_S, vec3_to_pb,
};

use authority::Owned;
use game::{Game, Neighbour, Slot};
use metrics::Metrics;
use system::SystemView;

/// How close (km) to a gate's centre a ship must be for `GateEnter` (the
/// replicant's `GATE_RADIUS_KM`). The server asks a little inside it, so the
/// replicant's check of the same position never disagrees by rounding.
pub const GATE_RADIUS_KM: f64 = crate::replicant::gate::GATE_RADIUS_KM;
const GATE_ENTER_KM: f64 = GATE_RADIUS_KM * 0.99;
/// Prefix of the territory a gate handoff names (`gate:<system>/<gate>`).
pub const GATE_PREFIX: &str = "gate:";

/// Messages the replicant may send us; generous (handoffs carry components),
/// but bounded like everything else off the network.
pub const MAX_INBOUND_BYTES: usize = 4 * 1024 * 1024;
/// Outbound writes in flight. Writes carry full state, so one dropped when
/// the queue is full is repaired by the next tick's write.
const OUT_QUEUE: usize = 8192;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// host:port of the replicant's gRPC endpoint.
    pub replicant: String,
    pub name: String,
    pub tick_hz: u32,
}

impl ServerConfig {
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.tick_hz.clamp(1, 1000)))
    }
}

/// Runs forever: one session after another, with backoff between them.
/// Without a StarSystem: no jump gates.
pub async fn run<G: Game>(cfg: ServerConfig, game: G, m: Arc<Metrics>) {
    run_in(cfg, game, m, None).await
}

/// `run` for a server that knows its StarSystem: ships it holds take the
/// system's jump gates, and ships arriving through one get a new route.
pub async fn run_in<G: Game>(
    cfg: ServerConfig,
    mut game: G,
    m: Arc<Metrics>,
    system: Option<Arc<SystemView>>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        if !first {
            m.reconnects.inc();
        }
        first = false;
        match session(&cfg, &mut game, &m, system.clone()).await {
            Ok(welcomed) => {
                tracing::warn!(replicant = %cfg.replicant, "replicant stream ended; reconnecting");
                if welcomed {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(e) => {
                tracing::warn!(replicant = %cfg.replicant, error = %e, "cannot reach the replicant")
            }
        }
        m.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Starts the metrics endpoint; returns its bound address.
pub async fn serve_metrics(m: Arc<Metrics>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    tokio::spawn(metrics::serve(m, l));
    Ok(bound)
}

/// Whether the replicant would accept this entity as a write. A game bug that
/// produced a bad value must cost one write, not the whole stream (a bad
/// message ends the stream and with it every territory).
pub fn sendable(e: &Entity) -> bool {
    let ok = |v: crate::model::Vec3, bound: f64| {
        [v.x, v.y, v.z].iter().all(|c| c.is_finite() && c.abs() <= bound)
    };
    e.id != 0
        && ok(e.position, MAX_COORD_KM)
        && ok(e.velocity, MAX_SPEED_KM_S)
        && e.location.len() <= MAX_NAME_LEN
        && e.components.len() <= MAX_COMPONENT_BYTES
}

/// Ticks that were skipped between two ticks `gap` apart (after an overrun,
/// `MissedTickBehavior::Skip` moves on to the next slot instead of bursting).
/// Half a period of jitter is not a skipped tick.
pub fn ticks_skipped(gap: Duration, period: Duration) -> u64 {
    let slots = gap.as_secs_f64() / period.as_secs_f64().max(1e-9);
    if slots > 1.5 { slots.round() as u64 - 1 } else { 0 }
}

/// `typed`: the game declared component types (`Game::components`), so a
/// canonical `ComponentSet` in `components` goes out as `custom`, for the
/// replicant's registry to check; otherwise the bytes go as they are.
fn write_msg(seq: u64, epoch: u64, e: &Entity, typed: bool) -> pb::ServerMessage {
    let set = if typed { custom::typed(&e.components) } else { None };
    pb::ServerMessage {
        msg: Some(server_message::Msg::Write(pb::EntityWrite {
            seq,
            epoch,
            id: e.id,
            kind: e.kind,
            position: Some(vec3_to_pb(e.position)),
            velocity: Some(vec3_to_pb(e.velocity)),
            location: e.location.to_string(),
            components: if set.is_some() { Default::default() } else { e.components.clone() },
            custom: set.unwrap_or_default(),
        })),
    }
}

struct Session<'a, G> {
    game: &'a mut G,
    m: &'a Metrics,
    owned: Owned,
    /// Changed by an input since the last tick: written even if `step` says no.
    dirty: BTreeSet<EntityId>,
    tx: mpsc::Sender<pb::ServerMessage>,
    seq: u64,
    lease: Option<Duration>,
    system: Option<Arc<SystemView>>,
    /// Ships that sent `GateEnter` and have not left the gate radius since:
    /// no second `GateEnter` until they leave and enter again.
    at_gate: HashSet<EntityId>,
    /// The neighbourhood last sent (`Game::neighbourhood`), to send only changes.
    interest: Option<(crate::model::Vec3, f64)>,
    /// Writes carry typed components (`write_msg`).
    typed: bool,
}

/// One connection. Returns whether the replicant welcomed us (for backoff).
async fn session<G: Game>(
    cfg: &ServerConfig,
    game: &mut G,
    m: &Metrics,
    system: Option<Arc<SystemView>>,
) -> anyhow::Result<bool> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.replicant))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let channel = crate::tls::connect(ep, crate::tls::process().as_ref()).await?;
    let mut client = pb::server_link_client::ServerLinkClient::new(channel)
        .max_decoding_message_size(MAX_INBOUND_BYTES);
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let components = game.components().declarations();
    let typed = !components.is_empty();
    let hello = server_message::Msg::Hello(pb::Hello {
        server_name: cfg.name.clone(),
        protocol_version: validate::PROTOCOL_VERSION,
        components,
    });
    tx.send(pb::ServerMessage { msg: Some(hello) }).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut s = Session {
        game,
        m,
        owned: Owned::default(),
        dirty: BTreeSet::new(),
        tx,
        seq: 0,
        lease: None,
        system,
        at_gate: HashSet::new(),
        interest: None,
        typed,
    };

    let period = cfg.period();
    let mut tick = tokio::time::interval(period);
    // Skip: after an overrun the next tick is simply the next slot; the server
    // never bursts to catch up, so it cannot fall ever further behind (the
    // game slows down instead: time dilation, measured as skipped ticks).
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_tick: Option<Instant> = None;
    let end = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    if let Some(lease) = s.handle(msg) {
                        // Three heartbeats per lease: one lost or late one costs nothing.
                        heartbeat = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
                        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            _ = tick.tick() => {
                // Authority first: everything the replicant already said is applied
                // before simulating, so a revoked entity is not stepped once more.
                // (`message()` is cancel-safe, so polling it once is harmless.)
                let mut ended = None;
                while let Some(r) = inbound.message().now_or_never() {
                    match r {
                        Ok(Some(msg)) => {
                            if let Some(lease) = s.handle(msg) {
                                heartbeat = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
                                heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            }
                        }
                        Ok(None) => {
                            ended = Some(Ok(()));
                            break;
                        }
                        Err(e) => {
                            ended = Some(Err(e));
                            break;
                        }
                    }
                }
                if let Some(end) = ended {
                    break end;
                }
                let now = Instant::now();
                if let Some(prev) = last_tick {
                    s.m.ticks_skipped.inc_by(ticks_skipped(now.duration_since(prev), period));
                }
                last_tick = Some(now);
                s.tick(period.as_secs_f64());
                let took = now.elapsed();
                s.m.tick_duration.observe(took.as_secs_f64());
                if took > period {
                    s.m.tick_overruns.inc();
                }
            }
            _ = heartbeat.tick() => {
                if s.lease.is_some() {
                    let hb = pb::ServerMessage { msg: Some(server_message::Msg::Heartbeat(pb::Heartbeat {})) };
                    // A full queue means the writes ahead are not getting out either;
                    // the lease will tell. Never block the tick on it.
                    let _ = s.tx.try_send(hb);
                }
            }
        }
    };
    let welcomed = s.lease.is_some();
    for id in s.owned.clear() {
        s.game.left(id);
    }
    m.entities.set(0);
    m.territories.set(0);
    if let Err(e) = end {
        if e.code() == tonic::Code::FailedPrecondition {
            // E.g. a protocol version the replicant does not speak: retrying
            // will not help, so say it loudly (the loop still retries, in case
            // the replicant is upgraded under us).
            tracing::error!(status = %e.message(), "the replicant refused this server");
        } else {
            tracing::warn!(status = %e.message(), code = ?e.code(), "replicant stream error");
        }
    }
    Ok(welcomed)
}

impl<G: Game> Session<'_, G> {
    /// Applies one replicant message. Returns the lease when welcomed.
    fn handle(&mut self, msg: pb::ReplicantMessage) -> Option<Duration> {
        let m = self.m;
        match msg.msg? {
            Msg::Welcome(w) => {
                let lease = Duration::from_millis(w.lease_ms.clamp(30, 600_000));
                self.lease = Some(lease);
                m.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    lease_ms = w.lease_ms,
                    protocol_version = w.protocol_version,
                    "welcomed by the replicant"
                );
                return Some(lease);
            }
            Msg::Grant(g) => {
                tracing::info!(territory = %g.territory, epoch = g.epoch, "granted");
                self.owned.grant(&g.territory, g.epoch);
            }
            Msg::Revoke(r) => {
                tracing::info!(territory = %r.territory, epoch = r.epoch, "revoked");
                for id in self.owned.revoke(&r.territory, r.epoch) {
                    self.dirty.remove(&id);
                    self.game.left(id);
                    m.handoffs.with_label_values(&["out"]).inc();
                }
            }
            Msg::HandoffIn(h) => {
                let state = h.entity?;
                // No `from_territory`: our write created the entity and the replicant
                // confirms we hold it (`replicant::tick::confirm_created`). Still
                // simulating it: keep our newer state. Dropped meanwhile on a
                // rejection of an earlier write: take it back, like any handoff.
                if h.from_territory.is_empty()
                    && self.owned.holds(state.id, &h.to_territory, h.epoch)
                {
                    return None;
                }
                match validate::entity_from_pb(state) {
                    Ok(e) => {
                        let id = e.id;
                        if self.owned.handoff_in(e, &h.to_territory, h.epoch) {
                            m.handoffs.with_label_values(&["in"]).inc();
                            // The first write under the new epoch confirms the takeover
                            // at once (also for an entity at rest), so the world sees its
                            // new owner within a tick.
                            self.dirty.insert(id);
                            self.at_gate.remove(&id);
                            if let Some(held) = self.owned.get_mut(id) {
                                self.game.entered(&held.entity);
                                // Arrived through a jump gate (or came back from one the
                                // target refused): its route may be another system's.
                                if let Some(sys) = &self.system
                                    && (h.from_territory.starts_with(GATE_PREFIX)
                                        || self.game.misplaced(&held.entity, sys))
                                {
                                    m.gates.with_label_values(&["arrived"]).inc();
                                    tracing::info!(id, from = %h.from_territory, "ship arrived through a jump gate");
                                    self.game.arrived(&mut held.entity, sys);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "invalid entity in a handoff; ignored"),
                }
            }
            Msg::HandoffOut(h) => {
                let id = h.entity.map_or(0, |e| e.id);
                self.at_gate.remove(&id);
                if h.to_territory.starts_with(GATE_PREFIX) {
                    m.gates.with_label_values(&["accepted"]).inc();
                    tracing::info!(id, to = %h.to_territory, "ship left through a jump gate");
                }
                if self.owned.handoff_out(id) {
                    self.dirty.remove(&id);
                    self.game.left(id);
                    m.handoffs.with_label_values(&["out"]).inc();
                }
            }
            Msg::Rejected(r) => {
                let n: u64 = r.counts.iter().map(|c| c.count).sum();
                m.writes_rejected.inc_by(n);
                for f in &r.first {
                    tracing::debug!(
                        id = f.id,
                        seq = f.seq,
                        reason = f.reason,
                        current_epoch = f.current_epoch,
                        "write rejected"
                    );
                    // Rejected under an epoch we do not hold for it: the replicant
                    // places the entity elsewhere, so we are not its authority
                    // whatever we believed (e.g. a handoff-out still in flight).
                    // Stop at once; if it is ours after all, a handoff brings it back.
                    let fenced = f.reason == pb::RejectReason::StaleEpoch as i32
                        || f.reason == pb::RejectReason::NotOwner as i32;
                    let stale = fenced
                        && self.owned.write_epoch(f.id).is_some_and(|e| e != f.current_epoch);
                    // Left (or leaving) through a jump gate: not in this system.
                    let gone = f.reason == pb::RejectReason::GateInTransit as i32;
                    if gate_refusal(f.reason) {
                        // A GateEnter refused before anything changed: keep simulating.
                        m.gates.with_label_values(&["refused"]).inc();
                        tracing::info!(id = f.id, reason = f.reason, "GateEnter refused");
                    }
                    if (stale || gone) && self.owned.handoff_out(f.id) {
                        self.dirty.remove(&f.id);
                        self.game.left(f.id);
                    }
                }
            }
            Msg::Committed(_) => {}
            Msg::Neighbourhood(batch) => self.neighbours(batch),
            Msg::PlayerInput(pi) => {
                m.inputs.inc();
                let id = pi.entity_id;
                if let Some(held) = self.owned.get_mut(id) {
                    if self.game.input(&mut held.entity, pi.player_id, &pi.input) {
                        self.dirty.insert(id);
                    }
                } else if let Some(sp) = self.game.spawn(id, pi.player_id, &pi.input)
                    && sp.entity.id == id
                {
                    // Routed here because we own the territory the player was
                    // placed in and the entity does not exist yet.
                    let entity = sp.entity;
                    let adopted = self.owned.adopt(entity.clone(), &sp.territory);
                    tracing::debug!(id, territory = %sp.territory, ?adopted, "spawn");
                    if let Some(epoch) = adopted {
                        self.game.entered(&entity);
                        // Written now, where it was created: if the first write came
                        // after a tick had moved it across a boundary, the replicant
                        // would place it in another territory and fence it off.
                        if sendable(&entity) {
                            self.seq += 1;
                            if self
                                .tx
                                .try_send(write_msg(self.seq, epoch, &entity, self.typed))
                                .is_ok()
                            {
                                m.writes.inc();
                            } else {
                                m.writes_dropped.inc();
                            }
                        }
                    }
                }
            }
        }
        m.entities.set(self.owned.len() as i64);
        m.territories.set(self.owned.territory_count() as i64);
        None
    }

    /// Neighbours (entities we do not hold) reported by the subscription.
    fn neighbours(&mut self, batch: pb::UpdateBatch) {
        use pb::entity_update::Change;
        for u in batch.updates {
            match u.change {
                Some(Change::Enter(st)) if self.owned.get(st.id).is_none() => {
                    match validate::entity_from_pb(st) {
                        Ok(e) => self.game.neighbour(Neighbour::Entered(&e)),
                        Err(e) => tracing::debug!(error = %e, "invalid neighbour ignored"),
                    }
                }
                Some(Change::Delta(d)) if self.owned.get(d.id).is_none() => {
                    let (Some(position), Some(velocity)) =
                        (finite(d.position.as_ref()), finite(d.velocity.as_ref()))
                    else {
                        continue;
                    };
                    self.game.neighbour(Neighbour::Moved { id: d.id, position, velocity });
                    if let Some(c) = d.components.filter(|c| c.len() <= MAX_COMPONENT_BYTES) {
                        self.game.component_changed(d.id, &c);
                    }
                }
                Some(Change::Leave(id)) if self.owned.get(id).is_none() => {
                    self.game.neighbour(Neighbour::Left(id));
                }
                _ => {}
            }
        }
    }

    /// Sends the game's neighbourhood when it changed (radius 0 clears it).
    fn subscribe(&mut self) {
        let want = self.game.neighbourhood().filter(|(c, r)| {
            let ok = |x: f64, b: f64| x.is_finite() && x.abs() <= b;
            ok(*r, validate::MAX_RADIUS_KM)
                && *r > 0.0
                && [c.x, c.y, c.z].iter().all(|x| ok(*x, MAX_COORD_KM))
        });
        if want == self.interest {
            return;
        }
        let (center, radius) = want.unwrap_or_default();
        let msg = pb::ServerMessage {
            msg: Some(server_message::Msg::Neighbourhood(pb::Interest {
                center: Some(vec3_to_pb(center)),
                radius,
            })),
        };
        if self.tx.try_send(msg).is_ok() {
            self.interest = want;
        }
    }

    /// One tick: the game simulates every held entity, every changed one is written.
    fn tick(&mut self, dt: f64) {
        let mut changed = std::mem::take(&mut self.dirty);
        let mut held: Vec<&mut authority::Held> = self.owned.held_mut().collect();
        held.sort_unstable_by_key(|h| h.entity.id);
        let mut slots: Vec<Slot<'_>> = held.into_iter().map(|h| Slot::new(&mut h.entity)).collect();
        self.game.tick(&mut slots, dt);
        changed.extend(slots.iter().filter(|s| s.changed()).map(|s| s.entity().id));
        drop(slots);
        for id in changed {
            let (Some(epoch), Some(h)) = (self.owned.write_epoch(id), self.owned.get(id)) else {
                continue;
            };
            if !sendable(&h.entity) {
                self.m.writes_dropped.inc();
                tracing::warn!(id, "the game produced an invalid entity; write skipped");
                continue;
            }
            self.seq += 1;
            match self.tx.try_send(write_msg(self.seq, epoch, &h.entity, self.typed)) {
                Ok(()) => self.m.writes.inc(),
                Err(_) => self.m.writes_dropped.inc(),
            }
        }
        self.gates();
        self.subscribe();
    }

    /// Ships within a gate's radius enter it: after this tick's writes (so the
    /// replicant checks the position just written), on the same stream.
    fn gates(&mut self) {
        let Some(sys) = self.system.clone() else { return };
        if sys.gates.is_empty() {
            return;
        }
        let mut enter = Vec::new();
        for h in self.owned.held_mut() {
            let id = h.entity.id;
            match sys.gate_at(h.entity.position, GATE_ENTER_KM) {
                Some(g) if !self.at_gate.contains(&id) && self.game.takes_gate(&h.entity) => {
                    enter.push((id, g.name.clone()));
                }
                Some(_) => {}
                None => {
                    self.at_gate.remove(&id);
                }
            }
        }
        for (id, gate) in enter {
            let (Some(epoch), Some(h)) = (self.owned.write_epoch(id), self.owned.get(id)) else {
                continue;
            };
            // The final write first, on the same stream: the replicant checks the
            // gate radius against it and moves exactly this state.
            if sendable(&h.entity) {
                self.seq += 1;
                if self.tx.try_send(write_msg(self.seq, epoch, &h.entity, self.typed)).is_err() {
                    self.m.writes_dropped.inc();
                    continue;
                }
                self.m.writes.inc();
            }
            self.at_gate.insert(id);
            self.seq += 1;
            let msg = pb::ServerMessage {
                msg: Some(server_message::Msg::GateEnter(pb::GateEnter {
                    seq: self.seq,
                    epoch,
                    id,
                    gate: gate.clone(),
                })),
            };
            if self.tx.try_send(msg).is_ok() {
                self.m.gates.with_label_values(&["entered"]).inc();
                tracing::info!(id, %gate, epoch, "ship entered a jump gate");
            } else {
                // Not sent: try again next tick.
                self.at_gate.remove(&id);
            }
        }
    }
}

fn finite(v: Option<&pb::Vec3>) -> Option<crate::model::Vec3> {
    let v = v?;
    [v.x, v.y, v.z].iter().all(|c| c.is_finite()).then(|| crate::model::Vec3::new(v.x, v.y, v.z))
}

/// A `REJECT_REASON_GATE_*` refusal of a `GateEnter` (not the in-transit fence).
fn gate_refusal(reason: i32) -> bool {
    [
        pb::RejectReason::GateUnknown,
        pb::RejectReason::GateTooFar,
        pb::RejectReason::GateNoPeer,
        pb::RejectReason::GateNoEntity,
    ]
    .iter()
    .any(|r| *r as i32 == reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn skipped_ticks_are_counted_not_replayed() {
        let p = Duration::from_millis(33);
        assert_eq!(ticks_skipped(Duration::from_millis(33), p), 0);
        assert_eq!(ticks_skipped(Duration::from_millis(45), p), 0, "jitter");
        assert_eq!(ticks_skipped(Duration::from_millis(66), p), 1);
        assert_eq!(ticks_skipped(Duration::from_millis(330), p), 9);
    }

    #[tokio::test]
    async fn an_overrun_never_makes_the_tick_fall_further_behind() {
        // The tick loop's interval: after a stall of ten periods (a tick that
        // overran), the next ticks come a period apart again, not as a burst
        // of ten catch-up ticks that would overrun again. (A lower bound only:
        // a loaded machine makes the gap longer, never shorter.)
        let p = Duration::from_millis(10);
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t.tick().await;
        std::thread::sleep(p * 10);
        t.tick().await;
        let a = Instant::now();
        t.tick().await;
        t.tick().await;
        // Skip realigns to the period grid: at least one full period for two
        // ticks (a burst would return both at once).
        assert!(a.elapsed() >= p - Duration::from_millis(1), "{:?}", a.elapsed());
    }

    fn gate_world() -> Arc<SystemView> {
        Arc::new(SystemView {
            name: "alpha".into(),
            gates: vec![system::GateSpot {
                name: "g".into(),
                position: crate::model::Vec3::new(1000.0, 0.0, 0.0),
                target_system: "beta".into(),
                target_gate: "h".into(),
            }],
            docks: vec![pb::Waypoint {
                name: "dock".into(),
                position: Some(pb::Vec3 { x: 0.0, y: 0.0, z: 0.0 }),
                radius: 1.0,
            }],
        })
    }

    fn at(x: f64) -> pb::EntityState {
        let comps = pb::ShipState {
            route: vec![pb::Waypoint { name: "elsewhere".into(), ..Default::default() }],
            player_id: 7,
            ..Default::default()
        };
        pb::EntityState {
            id: 5,
            kind: game::SHIP_KIND,
            position: Some(pb::Vec3 { x, y: 0.0, z: 0.0 }),
            velocity: Some(pb::Vec3::default()),
            version: 3,
            components: comps.encode_to_vec().into(),
            territory: "t".into(),
            ..Default::default()
        }
    }

    fn handoff(e: pb::EntityState, from: &str, epoch: u64) -> Msg {
        Msg::HandoffIn(pb::EntityHandoff {
            entity: Some(e),
            from_territory: from.into(),
            to_territory: "t".into(),
            epoch,
            tick: 1,
        })
    }

    fn drain(rx: &mut mpsc::Receiver<pb::ServerMessage>) -> Vec<server_message::Msg> {
        std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|m| m.msg).collect()
    }

    fn gate_enters(v: &[server_message::Msg]) -> Vec<(u64, u64, String)> {
        v.iter()
            .filter_map(|m| match m {
                server_message::Msg::GateEnter(g) => Some((g.id, g.epoch, g.gate.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_ship_at_a_gate_enters_it_once_after_its_final_write() {
        let mut g = game::ExampleGame;
        let m = Metrics::new(0.033);
        let (tx, mut rx) = mpsc::channel(64);
        let mut s = Session {
            game: &mut g,
            m: &m,
            owned: Owned::default(),
            dirty: BTreeSet::new(),
            tx,
            seq: 0,
            lease: None,
            system: Some(gate_world()),
            at_gate: HashSet::new(),
            interest: None,
            typed: false,
        };
        let msg = |m| pb::ReplicantMessage { msg: Some(m) };
        s.handle(msg(Msg::Grant(pb::AuthorityGrant { territory: "t".into(), epoch: 4 })));
        s.handle(msg(handoff(at(1050.0), "t", 4)));
        s.tick(0.0);
        let out = drain(&mut rx);
        assert_eq!(gate_enters(&out), vec![(5, 4, "g".to_string())]);
        let pos = |m: &server_message::Msg| matches!(m, server_message::Msg::Write(w) if w.id == 5);
        let (w, e) = (
            out.iter().rposition(pos),
            out.iter().position(|m| matches!(m, server_message::Msg::GateEnter(_))),
        );
        assert!(w < e, "the final write goes first: {out:?}");
        s.tick(0.0);
        assert!(gate_enters(&drain(&mut rx)).is_empty(), "no second GateEnter while inside");

        // Refused (e.g. no peer): keeps simulating, still no resend while inside.
        s.handle(msg(Msg::Rejected(pb::WritesRejected {
            first: vec![pb::WriteRejected {
                seq: 2,
                id: 5,
                reason: pb::RejectReason::GateNoPeer as i32,
                current_epoch: 4,
            }],
            ..Default::default()
        })));
        assert!(s.owned.get(5).is_some());
        s.tick(0.0);
        assert!(gate_enters(&drain(&mut rx)).is_empty());
        // Out of the radius and back in: a new GateEnter.
        if let Some(h) = s.owned.get_mut(5) {
            h.entity.position.x = 1500.0;
        }
        s.tick(0.0);
        if let Some(h) = s.owned.get_mut(5) {
            h.entity.position.x = 990.0;
        }
        s.tick(0.0);
        assert_eq!(gate_enters(&drain(&mut rx)).len(), 1);

        // Accepted: the handoff-out to the gate stops simulation.
        s.handle(msg(Msg::HandoffOut(pb::EntityHandoff {
            entity: Some(at(990.0)),
            to_territory: "gate:beta/h".into(),
            ..Default::default()
        })));
        assert!(s.owned.get(5).is_none());

        // A ship that arrives through a gate gets a route in this system.
        s.handle(msg(handoff(at(1300.0), "gate:beta/h", 4)));
        let held = s.owned.get(5).map(|h| game::ship_state(&h.entity)).unwrap_or_default();
        assert_eq!(held.route.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["dock"]);
        assert_eq!(held.player_id, 7);

        // A ship fenced as in transit elsewhere is dropped at once.
        s.handle(msg(Msg::Rejected(pb::WritesRejected {
            first: vec![pb::WriteRejected {
                seq: 9,
                id: 5,
                reason: pb::RejectReason::GateInTransit as i32,
                current_epoch: 0,
            }],
            ..Default::default()
        })));
        assert!(s.owned.get(5).is_none());
    }

    #[test]
    fn a_creation_confirmation_keeps_our_state_or_brings_a_dropped_entity_back() {
        let mut g = game::ExampleGame;
        let m = Metrics::new(0.033);
        let (tx, _rx) = mpsc::channel(64);
        let mut s = Session {
            game: &mut g,
            m: &m,
            owned: Owned::default(),
            dirty: BTreeSet::new(),
            tx,
            seq: 0,
            lease: None,
            system: None,
            at_gate: HashSet::new(),
            interest: None,
            typed: false,
        };
        let msg = |m| pb::ReplicantMessage { msg: Some(m) };
        let x = |s: &Session<'_, game::ExampleGame>| s.owned.get(5).map(|h| h.entity.position.x);
        s.handle(msg(Msg::Grant(pb::AuthorityGrant { territory: "t".into(), epoch: 4 })));
        s.handle(msg(handoff(at(100.0), "t", 4)));
        if let Some(h) = s.owned.get_mut(5) {
            h.entity.position.x = 150.0;
        }
        // Still simulated: the confirmation carries older state, ours is kept.
        s.handle(msg(handoff(at(100.0), "", 4)));
        assert_eq!(x(&s), Some(150.0));
        // Dropped on the rejection of an earlier write (placed elsewhere then)...
        s.handle(msg(Msg::Rejected(pb::WritesRejected {
            first: vec![pb::WriteRejected {
                seq: 1,
                id: 5,
                reason: pb::RejectReason::StaleEpoch as i32,
                current_epoch: 9,
            }],
            ..Default::default()
        })));
        assert_eq!(x(&s), None);
        // ...then a write already in flight created it here: taken back.
        s.handle(msg(handoff(at(100.0), "", 4)));
        assert_eq!(x(&s), Some(100.0));
        assert!(s.dirty.contains(&5));
    }

    #[test]
    fn invalid_entities_are_not_sendable() {
        let mut e = Entity {
            id: 1,
            kind: 1,
            position: Default::default(),
            velocity: Default::default(),
            location: "".into(),
            version: 0,
            components: Default::default(),
            components_version: 0,
            territory: "t".into(),
        };
        assert!(sendable(&e));
        e.position.x = f64::NAN;
        assert!(!sendable(&e));
        e.position.x = 0.0;
        e.velocity.y = 2.0 * MAX_SPEED_KM_S;
        assert!(!sendable(&e));
        e.velocity.y = 0.0;
        e.location = "x".repeat(MAX_NAME_LEN + 1).into();
        assert!(!sendable(&e));
    }
}

/// `starmesh server` flags.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The shard's replicant (host:port of its gRPC endpoint); else read from --mesh-map.
    #[arg(long, env = "STARMESH_REPLICANT")]
    pub replicant: Option<String>,
    /// This server's name: the ServerLayout's server name for static territories; else
    /// `servers[k]` of --mesh-map, k the ordinal of POD_NAME (or the host name).
    #[arg(long, env = "STARMESH_SERVER_NAME")]
    pub name: Option<String>,
    /// The operator's mesh map (mesh-map.json), in a cluster.
    #[arg(long, env = "STARMESH_MESH_MAP")]
    pub mesh_map: Option<std::path::PathBuf>,
    /// Which shard of the mesh map this server belongs to.
    #[arg(long, env = "STARMESH_SHARD", default_value_t = 0)]
    pub shard: i32,
    /// This pod's name (the StatefulSet's `<name>-<k>`), for the name from --mesh-map.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Ticks per second (the ServerLayout's `tickRate`).
    #[arg(long, env = "STARMESH_TICK_RATE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tick_rate: u32,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "STARMESH_METRICS_LISTEN", default_value = "127.0.0.1:9101")]
    pub metrics: SocketAddr,
    /// StarSystem YAML (the one the replicant serves): its jump gates, and routes for
    /// ships arriving through one. Without it, ships take no gates.
    #[arg(long, env = "STARMESH_SYSTEM_FILE")]
    pub system: Option<std::path::PathBuf>,
    /// Mesh mTLS: a folder with tls.crt, tls.key and ca.crt (reloaded when it changes).
    /// Without it, plaintext.
    #[arg(long, env = "STARMESH_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

/// The `starmesh server` role with the example game.
pub fn main(a: ServerArgs) -> anyhow::Result<()> {
    main_with(a, game::ExampleGame)
}

/// The `starmesh server` role with any game: the same flags and environment
/// (mesh map, identity, ports), metrics endpoint and shutdown on SIGTERM, so a
/// studio's server is a drop-in replacement for ours (`starmesh-sdk`).
pub fn main_with<G: Game>(a: ServerArgs, game: G) -> anyhow::Result<()> {
    let mesh_map = a.mesh_map.as_deref();
    let replicant = crate::mesh_map::resolve_replicant(a.replicant.as_deref(), mesh_map, a.shard)?;
    let name =
        crate::mesh_map::resolve_server_name(a.name.as_deref(), mesh_map, a.pod_name.as_deref())?;
    anyhow::ensure!(
        !name.is_empty() && name.len() <= MAX_NAME_LEN,
        "--name must be 1..={MAX_NAME_LEN} bytes"
    );
    let system = match &a.system {
        Some(p) => Some(Arc::new(SystemView::load(p)?)),
        None => None,
    };
    crate::tls::init_process(a.tls_dir.as_deref())?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let cfg = ServerConfig { replicant, name, tick_hz: a.tick_rate };
        let m = Arc::new(Metrics::new(cfg.period().as_secs_f64()));
        let bound = serve_metrics(m.clone(), a.metrics).await?;
        // Tests and tools parse this line to learn the bound address.
        println!("starmesh server name={} metrics={bound}", cfg.name);
        tokio::select! {
            _ = run_in(cfg, game, m, system) => {}
            r = crate::signal::terminate() => r?,
        }
        Ok(())
    })
}
