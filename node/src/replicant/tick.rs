//! The replicant's clock. Each tick: close the tick (handoffs), queue its
//! changes for the store, expire leases, stream every subscription, evict
//! idle entities and stream in evicted ones that someone came near.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Status;

use crate::model::{EntityId, PlayerId, TerritoryName};
use crate::wire::pb::{self, replicant_message::Msg};
use crate::wire::validate::entity_to_pb;

use super::persistence::TickGroup;
use super::{Core, Shared};

/// Room kept in each outbound queue for control messages: neighbourhood
/// batches are only queued while at least this many slots are free.
const CONTROL_HEADROOM: usize = 16;

pub async fn run(shared: Arc<Shared>) {
    let period = Duration::from_secs_f64(1.0 / f64::from(shared.cfg.tick_hz));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let scheduled = tokio::select! {
            at = interval.tick() => at,
            _ = shared.shutdown.notified() => return,
        };
        let started = Instant::now();
        shared.metrics.tick_lateness.observe(
            tokio::time::Instant::now().saturating_duration_since(scheduled).as_secs_f64(),
        );
        let wanted = {
            let mut core = shared.lock();
            step(&shared, &mut core, Instant::now())
        };
        shared.metrics.tick_duration.observe(started.elapsed().as_secs_f64());
        if !wanted.is_empty() {
            tokio::spawn(stream_in(shared.clone(), wanted));
        }
    }
}

/// One tick under the lock. Returns evicted entities to stream back in.
pub fn step(shared: &Shared, core: &mut Core, now: Instant) -> Vec<EntityId> {
    let m = &shared.metrics;
    let cfg = &shared.cfg;
    let changes = core.world.end_tick();

    for h in changes.handoffs {
        m.handoffs.inc();
        let state = entity_to_pb(&h.entity);
        let msg = |s| pb::EntityHandoff {
            entity: Some(s),
            from_territory: h.from.to_string(),
            to_territory: h.to.to_string(),
            epoch: h.to_epoch,
            tick: changes.tick,
        };
        if let Some(conn) = h.from_owner.as_deref().and_then(|s| core.world.authority.conn_of(s)) {
            core.send_control(conn, Msg::HandoffOut(msg(state.clone())), m);
        }
        if let Some(conn) = h.to_owner.as_deref().and_then(|s| core.world.authority.conn_of(s)) {
            core.send_control(conn, Msg::HandoffIn(msg(state)), m);
        }
    }
    // Cell splits and merges happen here, at the boundary, before any write of the new tick.
    super::partition::apply_pending(shared, core);

    let acks: Vec<(u64, u64)> = core.tick_acks.drain().collect();
    if !changes.changed.is_empty() || !acks.is_empty() {
        core.wb.push(TickGroup { tick: changes.tick, entities: changes.changed, acks });
        m.store_backlog.set(core.wb.buffered() as i64);
        shared.commit_notify.notify_one();
    }

    send_rejections(core, changes.tick, m);
    confirm_created(core, changes.tick, m);

    let (expired, auth_changes) = core.world.authority.expire(now);
    for (name, conn) in expired {
        tracing::warn!(server = %name, "heartbeat lease expired; territories reassigned");
        if let Some(s) = core.servers.remove(&conn) {
            let _ =
                s.tx.try_send(Err(Status::deadline_exceeded("starmesh: heartbeat lease expired")));
            s.kill.notify_one();
        }
    }
    core.apply_changes(auth_changes, m);

    let slow_limit = cfg.ticks(cfg.slow_subscriber_timeout);
    // Entities in someone's view are marked needed (kept from eviction) only on the
    // ticks that evict, right before evicting: what is in view then is what must
    // stay. Marking every tick cost a lookup per player per entity in view.
    let evicting = changes.tick.is_multiple_of(u64::from(cfg.tick_hz));
    let mut needed: Vec<EntityId> = Vec::new();
    let mut wanted: Vec<EntityId> = Vec::new();

    // Server neighbourhoods.
    let mut too_slow = Vec::new();
    let Core { world, servers, players, gateways, .. } = core;
    for (conn, s) in servers.iter_mut() {
        let Some(sub) = s.sub.as_mut() else { continue };
        let mut plan = sub.plan(world);
        world.evicted_near(sub.interest.center, sub.interest.radius, &mut wanted);
        if evicting {
            needed.extend_from_slice(&plan.in_range);
        }
        if plan.is_empty() {
            continue;
        }
        // Only `queue_capacity` slots may hold neighbourhood batches; the rest of
        // the (larger) server queue is for control messages such as grants.
        let queued = s.tx.max_capacity() - s.tx.capacity();
        if queued + CONTROL_HEADROOM >= cfg.queue_capacity {
            m.subscriber_deferred_ticks.inc();
            s.slow_ticks += 1;
            if s.slow_ticks > slow_limit {
                too_slow.push(*conn);
            }
            continue;
        }
        // Moved, not cloned: `commit` reads only the plan's view, and an
        // undelivered plan is recomputed next tick anyway.
        let msg = pb::ReplicantMessage {
            msg: Some(Msg::Neighbourhood(pb::UpdateBatch {
                tick: changes.tick,
                updates: std::mem::take(&mut plan.updates),
            })),
        };
        let len = msg.encoded_len();
        if s.tx.try_send(Ok(msg)).is_ok() {
            m.count("server", "out", len);
            sub.commit(&plan);
            s.slow_ticks = 0;
        }
    }

    // Player bubbles follow their entity. Many players share one gateway
    // link, and its queue has room for only so many batches a tick: the
    // players of a link take turns, longest-waiting first (`fair_turns`), so
    // none starves however many share it. A player not served this tick keeps
    // nothing queued: its plan is not committed, and next tick's plan is
    // recomputed from the truth, merging whatever changed meanwhile. So a
    // link's memory here is its queue (at most `queue_capacity` batches, each
    // within the player's byte budget), whatever the number of players.
    //
    // Only as many players as the link has room for are planned: a plan that
    // cannot be queued would be thrown away and recomputed next tick, and with
    // many players on a backed-up link planning them all was most of the tick
    // (the fan-out collapse at 256 subscribers, BENCHMARKS.md). A player not
    // planned this tick counts as deferred, and waits in `fair_turns` order.
    let mut links: HashMap<u64, Vec<(u64, PlayerId, ())>> = HashMap::new();
    for (pid, p) in players.iter_mut() {
        if let Some(e) = world.entity(p.entity) {
            p.sub.interest.center = e.position;
        }
        world.evicted_near(p.sub.interest.center, p.sub.interest.radius, &mut wanted);
        links.entry(p.conn).or_default().push((p.slow_ticks, *pid, ()));
    }
    let mut slow_links = Vec::new();
    for (conn, mut turns) in links {
        let Some(g) = gateways.get_mut(&conn) else { continue };
        let room = g.tx.capacity().saturating_sub(CONTROL_HEADROOM);
        // A link is too slow when its queue stays full (nothing taken off it),
        // not when it merely carries more players than fit in one tick.
        if room == 0 {
            g.stalled_ticks += 1;
            if g.stalled_ticks > slow_limit {
                slow_links.push(conn);
            }
        } else {
            g.stalled_ticks = 0;
        }
        fair_turns(&mut turns);
        let mut served = 0;
        for (_, pid, ()) in turns {
            let Some(p) = players.get_mut(&pid) else { continue };
            if served >= room {
                m.subscriber_deferred_ticks.inc();
                p.slow_ticks += 1;
                continue;
            }
            let mut plan = p.sub.plan(world);
            if evicting {
                needed.extend_from_slice(&plan.in_range);
            }
            if plan.is_empty() {
                p.slow_ticks = 0;
                continue;
            }
            served += 1;
            let own = own_ship(&plan.updates, p.entity);
            let len = gateway_update_len(pid, changes.tick, plan.updates_wire_len, own.as_ref());
            let msg = pb::GatewayUpdate {
                player_id: pid,
                batch: Some(pb::UpdateBatch {
                    tick: changes.tick,
                    updates: std::mem::take(&mut plan.updates),
                }),
                own,
            };
            if g.tx.try_send(Ok(msg)).is_ok() {
                m.count("gateway", "out", len);
                p.sub.commit(&plan);
                p.slow_ticks = 0;
            } else {
                p.slow_ticks += 1;
            }
        }
    }
    world.mark_needed(&needed);
    for conn in too_slow {
        m.subscribers_dropped.inc();
        core.drop_server(conn, Status::resource_exhausted("starmesh: subscriber too slow"), m);
    }
    for conn in slow_links {
        m.subscribers_dropped.inc();
        core.drop_gateway(conn, Some(Status::resource_exhausted("starmesh: subscriber too slow")));
    }

    // Eviction is a scan over entity metadata: once a second is plenty.
    if evicting {
        let evicted = core.world.evict_idle(cfg.ticks(cfg.evict_after), core.committed_tick);
        m.evictions.inc_by(evicted.len() as u64);
        update_gauges(shared, core);
    }

    wanted.append(&mut core.stream_in_wanted);
    wanted.retain(|id| core.streaming_in.insert(*id));
    wanted
}

/// The encoded size of a `GatewayUpdate` carrying a plan's updates, from the
/// plan's running total: measuring the message again was ~5% of a tick.
fn gateway_update_len(
    player: PlayerId,
    tick: u64,
    updates_wire_len: usize,
    own: Option<&pb::OwnShip>,
) -> usize {
    use prost::encoding::{encoded_len_varint, key_len, message};
    // proto3 leaves zero scalars out.
    let scalar = |tag, v: u64| if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v) };
    let batch = scalar(1, tick) + updates_wire_len;
    scalar(1, player)
        + key_len(2)
        + encoded_len_varint(batch as u64)
        + batch
        + own.map_or(0, |o| message::encoded_len(3, o))
}

/// The player's own ship in its batch, if the batch has an update of it: the
/// gateway follows the ship from this without decoding the batch it forwards.
fn own_ship(updates: &[pb::EntityUpdate], ship: EntityId) -> Option<pb::OwnShip> {
    use pb::entity_update::Change;
    updates.iter().find_map(|u| match u.change.as_ref()? {
        Change::Enter(s) if s.id == ship => {
            Some(pb::OwnShip { present: true, position: s.position })
        }
        Change::Delta(d) if d.id == ship => {
            Some(pb::OwnShip { present: true, position: d.position })
        }
        Change::Leave(id) if *id == ship => Some(pb::OwnShip { present: false, position: None }),
        _ => None,
    })
}

/// Orders one link's waiting players for this tick: longest-waiting first,
/// then by id. A player served goes back to zero and so behind everyone still
/// waiting, which makes the turns a round-robin: with room for `r` batches a
/// tick, each of `n` players on the link is served within `ceil(n / r)` ticks.
fn fair_turns<T>(turns: &mut [(u64, PlayerId, T)]) {
    turns.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
}

/// One `WritesRejected` per server per tick. A full queue keeps the summary
/// for the next tick instead of disconnecting the server: rejections are the
/// server's own doing, and its memory here is bounded by the sample size.
///
/// Each sample's `current_epoch` is re-read now, not kept from when the write
/// was refused: a server compares it with what it holds when the summary
/// arrives, which includes every grant and handoff sent before the summary
/// (this tick's handoffs among them). An epoch from refusal time can be older
/// than a handoff-in the server already has, and make it drop an entity it
/// now rightly holds, which nobody would then simulate (found by
/// `tests/authority_simulation.rs`).
fn send_rejections(core: &mut Core, tick: u64, m: &super::metrics::Metrics) {
    let Core { tick_rejections, servers, world, .. } = core;
    tick_rejections.retain(|conn, r| {
        let Some(s) = servers.get(conn) else { return false };
        let mut summary = r.to_pb(tick);
        for f in &mut summary.first {
            let fenced = f.reason == pb::RejectReason::StaleEpoch as i32
                || f.reason == pb::RejectReason::NotOwner as i32;
            if fenced && let Some(e) = world.entity(f.id) {
                f.current_epoch = world.authority.grant(&e.territory).map_or(0, |g| g.epoch);
            }
        }
        let msg = pb::ReplicantMessage { msg: Some(Msg::Rejected(summary)) };
        let len = msg.encoded_len();
        match s.tx.try_send(Ok(msg)) {
            Ok(()) => {
                m.count("server", "out", len);
                false
            }
            Err(_) => {
                m.rejection_summaries_deferred.inc();
                true
            }
        }
    });
}

/// Tells the writer of every entity created this tick that it holds it: a
/// `HandoffIn` with an empty `from_territory`, at the territory's current epoch.
///
/// Why: a server writes an entity the replicant does not have yet (a spawn
/// whose first write was lost, or one kept across a reconnect) every tick.
/// While the entity lies in a territory the server does not own those writes
/// are refused, and on the refusal the server rightly drops it; but writes
/// already in flight can still create it once it is back in the server's
/// territory. Without this the replicant would then have it owned by a live
/// server that no longer simulates it (found by `tests/authority_simulation.rs`).
/// Sent after `send_rejections`, so on the FIFO stream it follows every
/// refusal of an earlier write; `send_rejections` reports the epoch of the
/// entity's territory once it exists, so later refusals do not drop it again.
/// A server already simulating it keeps its own (newer) state.
fn confirm_created(core: &mut Core, tick: u64, m: &super::metrics::Metrics) {
    for (conn, id) in std::mem::take(&mut core.tick_created) {
        let (Some(s), Some(e)) = (core.servers.get(&conn), core.world.entity(id)) else {
            continue;
        };
        // Only to a writer that still owns its territory on this connection:
        // if the tick moved it to another owner, that owner got the handoff.
        let Some(g) = core.world.authority.grant(&e.territory) else { continue };
        if g.owner.as_deref() != Some(&*s.name)
            || core.world.authority.conn_of(&s.name) != Some(conn)
        {
            continue;
        }
        let h = pb::EntityHandoff {
            entity: Some(entity_to_pb(e)),
            from_territory: String::new(),
            to_territory: e.territory.to_string(),
            epoch: g.epoch,
            tick,
        };
        core.send_control(conn, Msg::HandoffIn(h), m);
    }
}

async fn stream_in(shared: Arc<Shared>, ids: Vec<EntityId>) {
    let loaded = shared.store.load(&ids).await;
    let mut core = shared.lock();
    for id in &ids {
        core.streaming_in.remove(id);
    }
    match loaded {
        Ok(entities) => {
            let loaded = core.world.stream_in(entities);
            shared.metrics.stream_ins.inc_by(loaded.len() as u64);
            // The territory's owner resumes simulating it, exactly as after a handoff.
            let tick = core.world.tick();
            for id in loaded {
                let Some(e) = core.world.entity(id) else { continue };
                let Some(g) = core.world.authority.grant(&e.territory) else { continue };
                let Some(conn) = g.owner.as_deref().and_then(|o| core.world.authority.conn_of(o))
                else {
                    continue;
                };
                let h = pb::EntityHandoff {
                    entity: Some(entity_to_pb(e)),
                    from_territory: e.territory.to_string(),
                    to_territory: e.territory.to_string(),
                    epoch: g.epoch,
                    tick,
                };
                core.send_control(conn, Msg::HandoffIn(h), &shared.metrics);
            }
        }
        // Left evicted. A subscriber's need is noticed again next tick; a
        // takeover's is not, so those ids are asked for again too.
        Err(e) => {
            tracing::warn!(error = %e, "stream-in from store failed; retrying");
            core.stream_in_wanted.extend_from_slice(&ids);
        }
    }
}

pub fn update_gauges(shared: &Shared, core: &Core) {
    let m = &shared.metrics;
    let (sys, shard) = (shared.system.as_str(), shared.shard.as_str());
    for (t, c) in core.world.counts_per_territory() {
        m.entities.with_label_values(&[sys, shard, &t, "resident"]).set(c.resident as i64);
        m.entities.with_label_values(&[sys, shard, &t, "evicted"]).set(c.evicted as i64);
    }
    for (t, n) in player_counts(core) {
        m.players.with_label_values(&[sys, shard, &t]).set(n as i64);
    }
}

pub fn player_counts(core: &Core) -> HashMap<TerritoryName, u64> {
    let mut out: HashMap<TerritoryName, u64> =
        core.world.map.names().into_iter().map(|t| (t, 0)).collect();
    for p in core.players.values() {
        let t = match core.world.entity(p.entity) {
            Some(e) => e.territory.clone(),
            None => core.world.map.locate(p.sub.interest.center),
        };
        *out.entry(t).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    use tokio::sync::{Notify, mpsc, watch};

    use super::*;
    use crate::model::{EntityWrite, Interest, Vec3};
    use crate::replicant::interest::Subscription;
    use crate::replicant::state::tests::world_with;
    use crate::replicant::{Config, GatewayConn, Player, gate, metrics::Metrics};
    use crate::store::embedded::EmbeddedStore;
    use crate::wire::pb::entity_update::Change;

    fn shared(cfg: Config, dir: &std::path::Path) -> Shared {
        Shared {
            core: std::sync::Mutex::new(Core::new(world_with(&["s1"]), cfg.backlog_bound)),
            metrics: Metrics::new(),
            store: Arc::new(EmbeddedStore::open(dir).expect("store")),
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

    /// Every ship moves every tick, so every player always has something new.
    fn move_ships(core: &mut Core, n: u64, tick: u64) {
        let epoch = core.world.authority.grant("deep-space").expect("deep-space").epoch;
        for id in 1..=n {
            let w = EntityWrite {
                seq: tick,
                epoch,
                id,
                kind: 1,
                position: Vec3::new(10_000.0 + id as f64 * 100.0, tick as f64 * 0.01, 0.0),
                velocity: Vec3::default(),
                location: "".into(),
                components: bytes::Bytes::from_static(b"ship"),
            };
            core.world.apply_write("s1", &w);
        }
    }

    /// One gateway link carrying 1000 players, each with its own ship that
    /// changes every tick, and a gateway that takes only 50 batches a tick off
    /// the link (less than a fifth of the room in its queue): every player
    /// gets its own ship within a bound, keeps getting updates at a steady
    /// rate (nobody starves), the queue never holds more than its capacity,
    /// and the link is not dropped as slow, since it drains.
    #[test]
    fn one_link_many_players_every_player_is_served_in_turn_with_bounded_memory() {
        const PLAYERS: u64 = 1000;
        const DRAIN_PER_TICK: usize = 50;
        const TICKS: u64 = 120;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config { queue_capacity: 256, ..Config::default() };
        let capacity = cfg.queue_capacity;
        let budget = cfg.budget_bytes;
        let shared = shared(cfg, dir.path());
        let (tx, mut rx) = mpsc::channel(capacity);
        {
            let mut core = shared.lock();
            move_ships(&mut core, PLAYERS, 0);
            let conn = core.next_conn();
            core.gateways.insert(
                conn,
                GatewayConn {
                    tx,
                    kill: Arc::new(Notify::new()),
                    players: (1..=PLAYERS).collect::<BTreeSet<_>>(),
                    stalled_ticks: 0,
                },
            );
            for pid in 1..=PLAYERS {
                let center = Vec3::new(10_000.0 + pid as f64 * 100.0, 0.0, 0.0);
                let sub = Subscription::new(Interest { center, radius: 10.0 }, budget);
                core.players.insert(pid, Player { conn, entity: pid, sub, slow_ticks: 0 });
            }
        }
        let mut first_own: HashMap<u64, u64> = HashMap::new();
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut longest_gap = 0u64;
        let mut most_queued = 0usize;
        let mut most_queued_bytes = 0usize;
        for tick in 1..=TICKS {
            {
                let mut core = shared.lock();
                move_ships(&mut core, PLAYERS, tick);
                step(&shared, &mut core, Instant::now());
            }
            let queued =
                capacity - shared.lock().gateways.values().map(|g| g.tx.capacity()).sum::<usize>();
            most_queued = most_queued.max(queued);
            for _ in 0..DRAIN_PER_TICK {
                let Ok(Ok(u)) = rx.try_recv() else { break };
                most_queued_bytes = most_queued_bytes.max(u.encoded_len());
                let batch = u.batch.expect("a batch");
                let own = batch
                    .updates
                    .iter()
                    .any(|x| matches!(&x.change, Some(Change::Enter(e)) if e.id == u.player_id));
                if own {
                    first_own.entry(u.player_id).or_insert(tick);
                }
                if let Some(prev) = last.insert(u.player_id, tick) {
                    longest_gap = longest_gap.max(tick - prev);
                }
            }
        }
        // Throughput is DRAIN_PER_TICK players a tick, plus the time a batch
        // waits in a full queue: 1000/50 + 256/50 ≈ 26 ticks. Twice that
        // leaves room for the turn order's warm-up, and none for starvation.
        let bound = 2 * (PLAYERS / DRAIN_PER_TICK as u64 + capacity as u64 / DRAIN_PER_TICK as u64);
        let missing: Vec<u64> = (1..=PLAYERS).filter(|p| !first_own.contains_key(p)).collect();
        assert!(
            missing.is_empty(),
            "{} players never got their ship: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        let slowest = first_own.values().max().copied().unwrap_or(0);
        assert!(slowest <= bound, "every ship within {bound} ticks; the last took {slowest}");
        assert!(longest_gap <= bound, "steady updates: longest gap {longest_gap} > {bound}");
        assert!(most_queued <= capacity, "queue bounded: {most_queued} > {capacity}");
        assert!(most_queued_bytes <= budget, "each batch within the player's budget");
        let core = shared.lock();
        assert_eq!(core.gateways.len(), 1, "a link that drains is not dropped as slow");
        assert!(core.players.values().all(|p| p.sub.known() <= 1), "views hold only the bubble");
    }

    #[test]
    fn turns_go_to_the_longest_waiting_then_by_id() {
        let mut t = vec![(0, 5, ()), (3, 9, ()), (0, 1, ()), (3, 2, ())];
        fair_turns(&mut t);
        let order: Vec<u64> = t.iter().map(|(_, p, _)| *p).collect();
        assert_eq!(order, vec![2, 9, 1, 5]);
    }

    #[test]
    fn the_own_ship_is_found_in_a_batch_whatever_its_change() {
        use crate::wire::pb::{self, entity_update::Change};
        let at = Some(pb::Vec3 { x: 1.0, y: 0.0, z: 0.0 });
        let u = |c| pb::EntityUpdate { change: Some(c) };
        let other = u(Change::Leave(1));
        let enter = u(Change::Enter(pb::EntityState { id: 7, position: at, ..Default::default() }));
        let delta = u(Change::Delta(pb::EntityDelta { id: 7, position: at, ..Default::default() }));
        let present = Some(pb::OwnShip { present: true, position: at });
        assert_eq!(own_ship(&[other.clone(), enter], 7), present);
        assert_eq!(own_ship(&[delta, other.clone()], 7), present);
        assert_eq!(
            own_ship(&[other.clone(), u(Change::Leave(7))], 7),
            Some(pb::OwnShip { present: false, position: None })
        );
        assert_eq!(own_ship(&[other], 7), None, "no update of the ship: nothing to tell");
    }

    #[test]
    fn a_gateway_update_is_measured_without_encoding_it() {
        use crate::wire::pb::{self, entity_update::Change};
        let updates = vec![
            pb::EntityUpdate { change: Some(Change::Leave(3)) },
            pb::EntityUpdate {
                change: Some(Change::Enter(pb::EntityState {
                    id: 300,
                    territory: "hurston".into(),
                    ..Default::default()
                })),
            },
        ];
        let wire = pb::UpdateBatch { tick: 0, updates: updates.clone() }.encoded_len();
        let own =
            pb::OwnShip { present: true, position: Some(pb::Vec3 { x: 1.5, y: 0.0, z: 0.0 }) };
        for (player, tick, own) in
            [(0, 0, None), (7, 1, Some(own)), (1 << 40, 1 << 33, None), (9, 0, Some(own))]
        {
            let msg = pb::GatewayUpdate {
                player_id: player,
                batch: Some(pb::UpdateBatch { tick, updates: updates.clone() }),
                own,
            };
            assert_eq!(gateway_update_len(player, tick, wire, own.as_ref()), msg.encoded_len());
        }
    }
}
