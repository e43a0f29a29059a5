//! The replicant's clock. Each tick: close the tick (handoffs), queue its
//! changes for the store, expire leases, stream every subscription, evict
//! idle entities and stream in evicted ones that someone came near.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Status;

use crate::model::{EntityId, TerritoryName};
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
        tokio::select! {
            _ = interval.tick() => {}
            _ = shared.shutdown.notified() => return,
        }
        let wanted = {
            let mut core = shared.lock();
            step(&shared, &mut core, Instant::now())
        };
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

    let acks: Vec<(u64, u64)> = core.tick_acks.drain().collect();
    if !changes.changed.is_empty() || !acks.is_empty() {
        core.wb.push(TickGroup { tick: changes.tick, entities: changes.changed, acks });
        m.store_backlog.set(core.wb.buffered() as i64);
        shared.commit_notify.notify_one();
    }

    send_rejections(core, changes.tick, m);

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
    let mut needed: Vec<EntityId> = Vec::new();
    let mut wanted: Vec<EntityId> = Vec::new();

    // Server neighbourhoods.
    let mut too_slow = Vec::new();
    let Core { world, servers, players, gateways, .. } = core;
    for (conn, s) in servers.iter_mut() {
        let Some(sub) = s.sub.as_mut() else { continue };
        let plan = sub.plan(world);
        world.evicted_near(sub.interest.center, sub.interest.radius, &mut wanted);
        needed.extend_from_slice(&plan.in_range);
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
        let msg = pb::ReplicantMessage {
            msg: Some(Msg::Neighbourhood(pb::UpdateBatch {
                tick: changes.tick,
                updates: plan.updates.clone(),
            })),
        };
        let len = msg.encoded_len();
        if s.tx.try_send(Ok(msg)).is_ok() {
            m.count("server", "out", len);
            sub.commit(&plan);
            s.slow_ticks = 0;
        }
    }

    // Player bubbles follow their entity.
    let mut slow_players = Vec::new();
    for (pid, p) in players.iter_mut() {
        if let Some(e) = world.entity(p.entity) {
            p.sub.interest.center = e.position;
        }
        let plan = p.sub.plan(world);
        world.evicted_near(p.sub.interest.center, p.sub.interest.radius, &mut wanted);
        needed.extend_from_slice(&plan.in_range);
        if plan.is_empty() {
            continue;
        }
        let Some(g) = gateways.get(&p.conn) else { continue };
        if g.tx.capacity() <= CONTROL_HEADROOM {
            m.subscriber_deferred_ticks.inc();
            p.slow_ticks += 1;
            if p.slow_ticks > slow_limit {
                slow_players.push((*pid, p.conn));
            }
            continue;
        }
        let msg = pb::GatewayUpdate {
            player_id: *pid,
            batch: Some(pb::UpdateBatch { tick: changes.tick, updates: plan.updates.clone() }),
        };
        let len = msg.encoded_len();
        if g.tx.try_send(Ok(msg)).is_ok() {
            m.count("gateway", "out", len);
            p.sub.commit(&plan);
            p.slow_ticks = 0;
        }
    }
    world.mark_needed(&needed);
    for conn in too_slow {
        m.subscribers_dropped.inc();
        core.drop_server(conn, Status::resource_exhausted("starmesh: subscriber too slow"), m);
    }
    for (_pid, conn) in slow_players {
        m.subscribers_dropped.inc();
        core.drop_gateway(conn, Some(Status::resource_exhausted("starmesh: subscriber too slow")));
    }

    // Eviction is a scan over entity metadata: once a second is plenty.
    if changes.tick.is_multiple_of(u64::from(cfg.tick_hz)) {
        let evicted = core.world.evict_idle(cfg.ticks(cfg.evict_after), core.committed_tick);
        m.evictions.inc_by(evicted.len() as u64);
        update_gauges(shared, core);
    }

    wanted.append(&mut core.stream_in_wanted);
    wanted.retain(|id| core.streaming_in.insert(*id));
    wanted
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
