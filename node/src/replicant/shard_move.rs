//! Draining a shard: its players' ships move to another shard of the same layout.
//!
//! A shard being drained away (the mesh map's `draining: true`, from the operator's
//! `status.drainingShard`) does not wait for its players to leave: every few hundred
//! milliseconds its replicant takes a few player ships out of its world and sends them to
//! the least-loaded open shard's replicant. A move is a jump-gate transfer (see
//! [`super::gate`]) to the same system, position and velocity unchanged: the same durable
//! `InTransit` record, idempotent `Arrive` and `Departed` tombstone, resumed after a
//! restart, so a ship is never lost or duplicated. The transfer is told apart from a gate
//! jump by its target gate, `shard:<index>` (no gate has that name). The player's gateway
//! sees the ship departed, finds it in the other shard and tells the player to continue at
//! that shard's gateway (`Transferred`, as after a gate jump): no forced disconnect.
//!
//! Player ships evicted to the store (their players away) are streamed in and moved
//! too. Only player ships move: the game's own entities stay in the draining shard's store
//! (its volume outlives the shard's pods) and come back with the shard if it scales up
//! again. The decisions ([`target`], [`batch`]) are pure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::gateway::placement::PLAYER_ENTITY_BASE;
use crate::mesh_map::ShardLoad;
use crate::model::EntityId;
use crate::store::{Outbound, OutboundPhase};
use crate::wire::pb::{self, replicant_message::Msg};
use crate::wire::validate::entity_to_pb;

use super::Shared;

/// How often a draining replicant looks for ships to move.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// At most this many moves in flight at once: a drain must not flood the target
/// replicant's store or the players' gateways with reconnects all at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Target-gate prefix that marks a transfer as a shard move.
pub const SHARD_GATE_PREFIX: &str = "shard:";

/// The target gate of a move to shard `index`.
pub fn shard_gate(index: i32) -> String {
    format!("{SHARD_GATE_PREFIX}{index}")
}

/// The shard a transfer's target gate names, if it is a shard move.
pub fn shard_of_gate(gate: &str) -> Option<i32> {
    gate.strip_prefix(SHARD_GATE_PREFIX)?.parse().ok()
}

/// Is this entity a player's ship (the id range the gateway gives them)?
pub fn is_player_ship(id: EntityId) -> bool {
    id >= PLAYER_ENTITY_BASE
}

/// Pure: where the ships of shard `own` go, or `None` when it is not draining (or is
/// not in the map, or no other shard is open). The open shard with the fewest known
/// players wins (lowest index on a tie); one with an unknown count only when none is
/// known.
pub fn target(own: i32, shards: &[ShardLoad]) -> Option<&ShardLoad> {
    let me = shards.iter().find(|s| s.index == own)?;
    if !me.draining {
        return None;
    }
    let open = shards.iter().filter(|s| s.index != own && !s.draining);
    open.clone()
        .filter(|s| s.players.is_some())
        .min_by_key(|s| (s.players, s.index))
        .or_else(|| open.min_by_key(|s| s.index))
}

/// Pure: how many more moves to start now, with `in_flight` already running and
/// `waiting` player ships still here.
pub fn batch(in_flight: usize, waiting: usize) -> usize {
    MAX_IN_FLIGHT.saturating_sub(in_flight).min(waiting)
}

/// Shard moves in transit from here now.
fn in_flight(core: &super::Core) -> usize {
    core.gates
        .outbound
        .values()
        .filter(|o| o.phase == OutboundPhase::InTransit && shard_of_gate(&o.target_gate).is_some())
        .count()
}

/// Runs until shutdown: while this shard drains, moves its player ships away.
pub async fn run(shared: Arc<Shared>) {
    let mut t = tokio::time::interval(INTERVAL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = t.tick() => {}
            _ = shared.shutdown.notified() => return,
        }
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Some((own, to)) = shared.gates.drain_target() else { continue };
        for o in start_moves(&shared, own, to) {
            tokio::spawn(super::gate::run_outbound(shared.clone(), o, false));
        }
    }
}

/// Under the lock: takes up to [`batch`] player ships out of the world, tells their
/// servers, and returns the transfers to run.
fn start_moves(shared: &Arc<Shared>, own: i32, to: i32) -> Vec<Outbound> {
    let m = &shared.metrics;
    let mut core = shared.lock();
    if core.wb.is_full() {
        // Departing needs the store like a write does: try again next round.
        return Vec::new();
    }
    let mut ships: Vec<EntityId> = core
        .world
        .entities()
        .map(|e| e.id)
        .filter(|id| is_player_ship(*id) && !core.gates.fences(*id))
        .collect();
    ships.sort_unstable();
    let waiting = ships.len();
    let n = batch(in_flight(&core), waiting);
    let mut started = Vec::with_capacity(n);
    for id in ships.into_iter().take(n) {
        let Some(entity) = core.world.remove_for_gate(id) else { continue };
        let territory = entity.territory.clone();
        let transfer_id: Arc<str> = Arc::from(format!(
            "{}/{}/{}@{}",
            shared.system, shared.shard, entity.id, entity.version
        ));
        let gate: Arc<str> = Arc::from(shard_gate(to));
        tracing::info!(id, %transfer_id, to_shard = to, "shard draining: moving a player's ship");
        let owner = core
            .world
            .authority
            .grant(&territory)
            .and_then(|g| g.owner.as_deref())
            .and_then(|o| core.world.authority.conn_of(o));
        let server = core
            .world
            .authority
            .grant(&territory)
            .and_then(|g| g.owner.clone())
            // No owner now: the record still needs a name (the store refuses an empty one).
            .unwrap_or_else(|| Arc::from(shard_gate(own)));
        if let Some(conn) = owner {
            let h = pb::EntityHandoff {
                entity: Some(entity_to_pb(&entity)),
                from_territory: territory.to_string(),
                to_territory: gate.to_string(),
                epoch: 0,
                tick: core.world.tick(),
            };
            core.send_control(conn, Msg::HandoffOut(h), m);
        }
        let o = Outbound {
            transfer_id,
            entity,
            // The `from` the target's server is told: this shard.
            source_gate: Arc::from(shard_gate(own)),
            target_system: Arc::from(shared.system.as_str()),
            target_gate: gate,
            server,
            phase: OutboundPhase::InTransit,
        };
        core.gates.outbound.insert(id, o.clone());
        started.push(o);
    }
    m.gate_in_transit.set(core.gates.in_transit() as i64);
    if started.len() >= waiting {
        // Ships of players away long enough to be evicted live only in the store: they
        // move too (else the player would come back to a deleted shard). Streamed in
        // (the tick loads them), they are moved like the others in a later round.
        let mut evicted = Vec::new();
        for t in core.world.map.names() {
            core.world.evicted_in(&t, &mut evicted);
        }
        evicted.retain(|id| is_player_ship(*id) && !core.streaming_in.contains(id));
        evicted.sort_unstable();
        evicted.truncate(MAX_IN_FLIGHT);
        core.stream_in_wanted.extend(evicted);
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(index: i32, players: Option<u64>, draining: bool) -> ShardLoad {
        ShardLoad::fixture(index, players, draining)
    }

    #[test]
    fn only_a_draining_shard_moves_ships_to_the_least_loaded_open_one() {
        let s = [shard(0, Some(9), false), shard(1, Some(4), true), shard(2, Some(3), false)];
        assert_eq!(target(1, &s).map(|s| s.index), Some(2));
        assert_eq!(target(0, &s), None, "not draining");
        assert_eq!(target(2, &s), None, "not draining");
        // Ties: the lowest index.
        let s = [shard(0, Some(3), false), shard(1, Some(4), true), shard(2, Some(3), false)];
        assert_eq!(target(1, &s).map(|s| s.index), Some(0));
    }

    #[test]
    fn no_open_shard_or_not_in_the_map_means_no_move() {
        let s = [shard(0, Some(3), true), shard(1, Some(4), true)];
        assert_eq!(target(1, &s), None, "everything drains: nowhere to go");
        assert_eq!(target(5, &s), None, "not in the map");
        assert_eq!(target(0, &[]), None);
    }

    #[test]
    fn unknown_counts_only_when_no_known_one_is_open() {
        let s = [shard(0, None, false), shard(1, Some(4), true), shard(2, Some(50), false)];
        assert_eq!(target(1, &s).map(|s| s.index), Some(2));
        let s = [shard(0, None, false), shard(1, Some(4), true), shard(2, None, false)];
        assert_eq!(target(1, &s).map(|s| s.index), Some(0));
    }

    #[test]
    fn batches_are_bounded_by_what_is_in_flight_and_waiting() {
        assert_eq!(batch(0, 100), MAX_IN_FLIGHT);
        assert_eq!(batch(MAX_IN_FLIGHT - 3, 100), 3);
        assert_eq!(batch(MAX_IN_FLIGHT, 100), 0);
        assert_eq!(batch(MAX_IN_FLIGHT + 5, 100), 0, "never negative");
        assert_eq!(batch(0, 2), 2);
        assert_eq!(batch(0, 0), 0);
    }

    #[test]
    fn shard_gates_round_trip_and_real_gates_are_not_shards() {
        assert_eq!(shard_of_gate(&shard_gate(3)), Some(3));
        assert_eq!(shard_of_gate("gate-a"), None);
        assert_eq!(shard_of_gate("shard:x"), None);
        assert!(is_player_ship(PLAYER_ENTITY_BASE | 7));
        assert!(!is_player_ship(42));
    }
}
