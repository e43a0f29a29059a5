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
        if s.tx.capacity() <= CONTROL_HEADROOM {
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

    wanted.retain(|id| core.streaming_in.insert(*id));
    wanted
}

async fn stream_in(shared: Arc<Shared>, ids: Vec<EntityId>) {
    let loaded = shared.store.load(&ids).await;
    let mut core = shared.lock();
    for id in &ids {
        core.streaming_in.remove(id);
    }
    match loaded {
        Ok(entities) => {
            let n = core.world.stream_in(entities);
            shared.metrics.stream_ins.inc_by(n as u64);
        }
        // Left evicted; the next tick that needs them asks again.
        Err(e) => tracing::warn!(error = %e, "stream-in from store failed"),
    }
}

pub fn update_gauges(shared: &Shared, core: &Core) {
    let m = &shared.metrics;
    let (sys, shard) = (shared.system.as_str(), shared.shard.as_str());
    for (t, n) in core.world.counts_per_territory() {
        m.entities.with_label_values(&[sys, shard, &t]).set(n as i64);
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
