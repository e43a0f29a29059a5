//! The replicant's truth: every entity, the spatial index over them, and the
//! territory authority. Pure: no I/O, no clocks except those passed in.
//!
//! Writes are applied as they arrive (after fencing); territory changes, and
//! so handoffs, happen only in `end_tick`, which makes the tick boundary the
//! one place where an entity changes hands.

use std::collections::{BTreeSet, HashMap};

use starmesh_api::partition::{self as cells, Partition};

use crate::model::{Entity, EntityId, EntityWrite, ServerName, TerritoryName, Vec3};
use crate::territory::{TerritoryError, TerritoryMap};

use super::authority::{Authority, Fence};
use super::spatial_index::{FastMap, GridIndex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// `created`: the write brought the entity into existence here (it was
    /// neither in memory nor evicted). The writer may have dropped it in the
    /// meantime, on a rejection of an earlier write of it, so the replicant
    /// confirms creations to the writer (`tick::confirm_created`).
    Applied {
        version: u64,
        created: bool,
    },
    Rejected(Fence),
}

/// An entity that crossed into another territory at a tick boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct Handoff {
    pub entity: Entity,
    pub from: TerritoryName,
    pub to: TerritoryName,
    pub from_owner: Option<ServerName>,
    pub to_owner: Option<ServerName>,
    pub to_epoch: u64,
}

#[derive(Debug, Default)]
pub struct TickChanges {
    pub tick: u64,
    pub handoffs: Vec<Handoff>,
    /// Every entity changed during the tick, as of its end: one group commit.
    pub changed: Vec<Entity>,
}

#[derive(Clone, Debug, Default)]
struct Meta {
    /// `None` for state read from the store (committed by definition), so
    /// recovered and streamed-in entities can be evicted before any commit.
    last_write_tick: Option<u64>,
    last_needed_tick: u64,
    /// The server whose write was applied at `last_write_tick`.
    writer: Option<ServerName>,
}

/// All an evicted entity keeps in memory: enough to fence a write to it and
/// continue its version line, and (in `evicted_index`) its position, so a
/// subscriber coming near can be noticed. Everything else is in the store.
#[derive(Clone, Debug)]
struct Evicted {
    version: u64,
    components_version: u64,
    territory: TerritoryName,
}

/// What a partition change did to the territories (`World::repartition`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Repartitioned {
    /// Leaf cells that no longer exist (split or merged away).
    pub removed: Vec<TerritoryName>,
    /// New leaf cells, each with the server it is first offered to: the
    /// owner of the cell it came from (a split's parent, a merge's first
    /// owned child).
    pub added: Vec<(TerritoryName, Option<ServerName>)>,
    /// Resident entities now in another cell (version bumped, to be committed).
    pub relocated: usize,
    /// Evicted entities now in another cell.
    pub relocated_evicted: usize,
}

/// Entities of one territory, in memory and evicted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub resident: u64,
    pub evicted: u64,
}

#[derive(Debug)]
pub struct World {
    pub map: TerritoryMap,
    pub authority: Authority,
    // The fast hasher: looked up per entity in range per subscriber per tick.
    entities: FastMap<EntityId, Entity>,
    pub index: GridIndex,
    dirty: BTreeSet<EntityId>,
    meta: FastMap<EntityId, Meta>,
    /// Evicted entities: only their position (to know when someone comes
    /// near) and version (so a write to one continues its version line).
    evicted: HashMap<EntityId, Evicted>,
    evicted_index: GridIndex,
    tick: u64,
    /// Entities that left through a gate during this tick after being written
    /// in it: their last state still goes into this tick's group commit, so
    /// every write acknowledged is in the store even if the gate record is not.
    departing: Vec<Entity>,
}

impl World {
    pub fn new(map: TerritoryMap, authority: Authority, cell_size: f64) -> Self {
        Self {
            map,
            authority,
            entities: FastMap::default(),
            index: GridIndex::new(cell_size),
            dirty: BTreeSet::new(),
            meta: FastMap::default(),
            evicted: HashMap::new(),
            evicted_index: GridIndex::new(cell_size),
            tick: 0,
            departing: Vec::new(),
        }
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn entity(&self, id: EntityId) -> Option<&Entity> {
        self.entities.get(&id)
    }

    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values()
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub fn evicted_len(&self) -> usize {
        self.evicted.len()
    }

    /// Where an evicted entity is (position, territory): it exists, only not
    /// in memory, so a player's bubble must go there to stream it back in,
    /// and nothing may create it again.
    pub fn evicted_at(&self, id: EntityId) -> Option<(Vec3, &TerritoryName)> {
        let e = self.evicted.get(&id)?;
        Some((self.evicted_index.position(id)?, &e.territory))
    }

    /// Loads recovered entities at startup (their territory is recomputed from
    /// the current map, which may have changed since they were written).
    pub fn load(&mut self, mut e: Entity) {
        e.territory = self.map.locate(e.position);
        self.index.upsert(e.id, e.position);
        self.meta.insert(
            e.id,
            Meta { last_write_tick: None, last_needed_tick: self.tick, writer: None },
        );
        self.entities.insert(e.id, e);
    }

    /// Applies a write if `server` holds the current epoch of the entity's
    /// territory (for a new entity: of the territory at its position).
    pub fn apply_write(&mut self, server: &str, w: &EntityWrite) -> WriteOutcome {
        let territory = match (self.entities.get(&w.id), self.evicted.get(&w.id)) {
            (Some(e), _) => e.territory.clone(),
            (None, Some(ev)) => ev.territory.clone(),
            (None, None) => self.map.locate(w.position),
        };
        if let Err(f) = self.authority.check_write(&territory, server, w.epoch) {
            return WriteOutcome::Rejected(f);
        }
        // One server per entity per tick. A takeover (crash, lease expiry, a
        // static owner reconnecting, a drain) moves authority at once, mid-tick,
        // and the old owner may already have written the entity in this tick:
        // the new owner's writes count from the next tick, or the entity would
        // be stepped twice in one tick (found by `tests/authority_simulation.rs`).
        if let Some(m) = self.meta.get(&w.id)
            && m.last_write_tick == Some(self.tick)
            && m.writer.as_deref().is_some_and(|s| s != server)
        {
            let current = self.authority.grant(&territory).map_or(0, |g| g.epoch);
            return WriteOutcome::Rejected(Fence::NotOwner { current });
        }
        let created = !self.entities.contains_key(&w.id) && !self.evicted.contains_key(&w.id);
        let e = match self.entities.get_mut(&w.id) {
            Some(e) => e,
            None => {
                // A write to an evicted entity continues its version line; the
                // write carries full state, so nothing needs loading first.
                let (version, components_version) = match self.evicted.remove(&w.id) {
                    Some(ev) => {
                        self.evicted_index.remove(w.id);
                        (ev.version, ev.components_version)
                    }
                    None => (0, 0),
                };
                self.entities.entry(w.id).or_insert(Entity {
                    id: w.id,
                    kind: w.kind,
                    position: w.position,
                    velocity: w.velocity,
                    location: w.location.clone(),
                    version,
                    components: bytes::Bytes::new(),
                    components_version,
                    territory,
                })
            }
        };
        e.kind = w.kind;
        e.position = w.position;
        e.velocity = w.velocity;
        e.location = w.location.clone();
        if e.components != w.components || e.version == 0 {
            e.components = w.components.clone();
            e.components_version += 1;
        }
        e.version += 1;
        let version = e.version;
        self.index.upsert(w.id, w.position);
        self.dirty.insert(w.id);
        let tick = self.tick;
        let m = self.meta.entry(w.id).or_default();
        m.last_write_tick = Some(tick);
        m.last_needed_tick = m.last_needed_tick.max(tick);
        if m.writer.as_deref() != Some(server) {
            m.writer = Some(server.into());
        }
        WriteOutcome::Applied { version, created }
    }

    /// The tick boundary: entities written this tick that now lie in another
    /// territory move to it (and to its owner), then the tick's changes are
    /// returned as one group for persistence.
    pub fn end_tick(&mut self) -> TickChanges {
        let tick = self.tick;
        self.tick += 1;
        let mut out = TickChanges { tick, ..Default::default() };
        out.changed.append(&mut self.departing);
        for id in std::mem::take(&mut self.dirty) {
            let Some(e) = self.entities.get_mut(&id) else { continue };
            let to = self.map.locate(e.position);
            if to != e.territory {
                let from = std::mem::replace(&mut e.territory, to.clone());
                // The territory is observable state, so it gets a version too.
                e.version += 1;
                let from_owner = self.authority.grant(&from).and_then(|g| g.owner.clone());
                let (to_owner, to_epoch) =
                    self.authority.grant(&to).map_or((None, 0), |g| (g.owner.clone(), g.epoch));
                out.handoffs.push(Handoff {
                    entity: e.clone(),
                    from,
                    to,
                    from_owner,
                    to_owner,
                    to_epoch,
                });
            }
            out.changed.push(e.clone());
        }
        out
    }

    /// Changes the partition (at a tick boundary: call it right after
    /// `end_tick`, before any write of the new tick): every entity, resident
    /// or evicted, in a cell that is gone is placed in its new cell. A
    /// resident one gets a new version (its territory is observable state)
    /// and is committed with the next tick. Authority is not touched here:
    /// the caller hands `removed`/`added` to `Authority::repartition`, whose
    /// grants bring each new owner every entity of its cells. Nothing is
    /// lost or copied: each entity keeps its one state, only its cell changes.
    pub fn repartition(&mut self, partition: Partition) -> Result<Repartitioned, TerritoryError> {
        let before: BTreeSet<TerritoryName> = self.map.names().into_iter().collect();
        self.map.set_partition(partition)?;
        let after: BTreeSet<TerritoryName> = self.map.names().into_iter().collect();
        let removed: Vec<TerritoryName> = before.difference(&after).cloned().collect();
        let gone: BTreeSet<&str> = removed.iter().map(|t| &**t).collect();
        let related = |a: &str, b: &str| {
            let inside = |x: &str, y: &str| {
                x.len() > y.len() && x.starts_with(y) && x[y.len()..].starts_with(cells::SEPARATOR)
            };
            inside(a, b) || inside(b, a)
        };
        let added = after
            .difference(&before)
            .map(|t| {
                let first = removed
                    .iter()
                    .filter(|r| related(t, r))
                    .find_map(|r| self.authority.grant(r).and_then(|g| g.owner.clone()));
                (t.clone(), first)
            })
            .collect();
        let mut out = Repartitioned { removed: removed.clone(), added, ..Default::default() };
        if gone.is_empty() {
            return Ok(out);
        }
        for e in self.entities.values_mut() {
            if !gone.contains(&*e.territory) {
                continue;
            }
            e.territory = self.map.locate(e.position);
            e.version += 1;
            self.dirty.insert(e.id);
            out.relocated += 1;
        }
        for (id, ev) in self.evicted.iter_mut() {
            if !gone.contains(&*ev.territory) {
                continue;
            }
            // Every evicted entity is in the index; a base lookup is the fallback.
            let p = self.evicted_index.position(*id).unwrap_or_default();
            ev.territory = self.map.locate(p);
            out.relocated_evicted += 1;
        }
        Ok(out)
    }

    /// Positions of the entities in a cell (resident and evicted), to choose
    /// its split plane from.
    pub fn positions_in(&self, territory: &str) -> Vec<[f64; 3]> {
        let mut out: Vec<[f64; 3]> = self
            .entities_in(territory)
            .map(|e| [e.position.x, e.position.y, e.position.z])
            .collect();
        for (id, ev) in &self.evicted {
            if &*ev.territory == territory
                && let Some(p) = self.evicted_index.position(*id)
            {
                out.push([p.x, p.y, p.z]);
            }
        }
        out
    }

    /// Resident or evicted: this world holds the entity.
    pub fn contains(&self, id: EntityId) -> bool {
        self.entities.contains_key(&id) || self.evicted.contains_key(&id)
    }

    /// Takes a resident entity out of the world for a jump gate: no territory,
    /// no subscription and no server has it any more (subscribers see it
    /// leave). If it was written this tick, that state still reaches the store
    /// with this tick's group.
    pub fn remove_for_gate(&mut self, id: EntityId) -> Option<Entity> {
        let e = self.entities.remove(&id)?;
        self.index.remove(id);
        self.meta.remove(&id);
        if self.dirty.remove(&id) {
            self.departing.push(e.clone());
        }
        Some(e)
    }

    /// Records that subscriptions currently need these entities.
    pub fn mark_needed(&mut self, ids: &[EntityId]) {
        for id in ids {
            if let Some(m) = self.meta.get_mut(id) {
                m.last_needed_tick = self.tick;
            }
        }
    }

    /// Evicts entities nobody has needed for `idle_ticks` whose latest state
    /// is committed (written at or before `committed_tick`). Returns their ids.
    pub fn evict_idle(&mut self, idle_ticks: u64, committed_tick: Option<u64>) -> Vec<EntityId> {
        let now = self.tick;
        let victims: Vec<EntityId> = self
            .meta
            .iter()
            .filter(|(id, m)| {
                m.last_needed_tick + idle_ticks < now
                    && m.last_write_tick.is_none_or(|w| committed_tick.is_some_and(|c| w <= c))
                    && !self.dirty.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &victims {
            self.meta.remove(id);
            self.index.remove(*id);
            if let Some(e) = self.entities.remove(id) {
                self.evicted_index.upsert(*id, e.position);
                self.evicted.insert(
                    *id,
                    Evicted {
                        version: e.version,
                        components_version: e.components_version,
                        territory: e.territory,
                    },
                );
            }
        }
        victims
    }

    /// Evicted entities within `radius` of `center` (to stream back in).
    pub fn evicted_near(&self, center: Vec3, radius: f64, out: &mut Vec<EntityId>) {
        self.evicted_index.query(center, radius, out);
    }

    /// Evicted entities of a territory (a new owner needs them back).
    pub fn evicted_in(&self, territory: &str, out: &mut Vec<EntityId>) {
        out.extend(
            self.evicted.iter().filter(|(_, e)| &*e.territory == territory).map(|(id, _)| *id),
        );
    }

    /// Brings entities loaded from the store back into memory, exactly as
    /// they were committed (territory included, so authority does not move).
    /// An entity written meanwhile (no longer evicted) keeps its newer
    /// in-memory state. Returns the ids brought back.
    pub fn stream_in(&mut self, loaded: Vec<Entity>) -> Vec<EntityId> {
        let mut back = Vec::new();
        for e in loaded {
            let Some(ev) = self.evicted.remove(&e.id) else { continue };
            self.evicted_index.remove(e.id);
            let id = e.id;
            self.index.upsert(id, e.position);
            self.meta.insert(
                id,
                Meta { last_write_tick: None, last_needed_tick: self.tick, writer: None },
            );
            // The version line continues from what players last saw: a recovered entity's
            // version was raised to this incarnation's floor (see `recovered_version`) while the
            // store may still hold the older one.
            let version = e.version.max(ev.version);
            let components_version = e.components_version.max(ev.components_version);
            self.entities
                .insert(id, Entity { territory: ev.territory, version, components_version, ..e });
            back.push(id);
        }
        back
    }

    /// Entity counts per territory, resident and evicted.
    pub fn counts_per_territory(&self) -> HashMap<TerritoryName, Count> {
        let mut m: HashMap<TerritoryName, Count> =
            self.map.names().into_iter().map(|t| (t, Count::default())).collect();
        for e in self.entities.values() {
            m.entry(e.territory.clone()).or_default().resident += 1;
        }
        for e in self.evicted.values() {
            m.entry(e.territory.clone()).or_default().evicted += 1;
        }
        m
    }

    pub fn entities_in(&self, territory: &str) -> impl Iterator<Item = &Entity> {
        self.entities.values().filter(move |e| &*e.territory == territory)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::territory::tests::sol_map;
    use std::time::{Duration, Instant};

    pub(crate) fn world_with(servers: &[&str]) -> World {
        let map = sol_map();
        let mut auth =
            Authority::new(map.names(), map.static_owners().clone(), 1, Duration::from_secs(3));
        for (i, s) in servers.iter().enumerate() {
            auth.connect((*s).into(), i as u64, Instant::now());
        }
        World::new(map, auth, 50.0)
    }

    fn write(w: &World, id: u64, p: Vec3, epoch_of: &str) -> EntityWrite {
        EntityWrite {
            seq: 0,
            epoch: w.authority.grant(epoch_of).unwrap().epoch,
            id,
            kind: 1,
            position: p,
            velocity: Vec3::default(),
            location: "".into(),
            components: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn handoff_happens_at_tick_boundary_to_new_owner() {
        let map = sol_map();
        let mut auth =
            Authority::new(map.names(), map.static_owners().clone(), 1, Duration::from_secs(3));
        auth.connect("s-earth".into(), 1, Instant::now());
        auth.connect("s-moon".into(), 2, Instant::now());
        let mut w = World::new(map, auth, 50.0);
        let earth_pos = Vec3::new(1000.0, 0.0, 0.0);
        let wr = write(&w, 7, earth_pos, "earth");
        assert_eq!(
            w.apply_write("s-earth", &wr),
            WriteOutcome::Applied { version: 1, created: true }
        );
        let t = w.end_tick();
        assert!(t.handoffs.is_empty());
        // Move into the moon: still earth's until the tick boundary.
        let wr = write(&w, 7, Vec3::new(1200.0, 0.0, 0.0), "earth");
        assert_eq!(
            w.apply_write("s-earth", &wr),
            WriteOutcome::Applied { version: 2, created: false }
        );
        assert_eq!(&*w.entity(7).unwrap().territory, "earth");
        let t = w.end_tick();
        assert_eq!(t.handoffs.len(), 1);
        let h = &t.handoffs[0];
        assert_eq!((&*h.from, &*h.to), ("earth", "moon"));
        assert_eq!(h.to_owner.as_deref(), Some("s-moon"));
        assert_eq!(h.entity.version, 3);
        // The old owner is now fenced off; the new one writes with its epoch.
        let wr = write(&w, 7, Vec3::new(1201.0, 0.0, 0.0), "earth");
        assert!(matches!(
            w.apply_write("s-earth", &wr),
            WriteOutcome::Rejected(Fence::StaleEpoch { .. })
        ));
        let wr = write(&w, 7, Vec3::new(1201.0, 0.0, 0.0), "moon");
        assert_eq!(
            w.apply_write("s-moon", &wr),
            WriteOutcome::Applied { version: 4, created: false }
        );
        assert_eq!(t.changed.len(), 1);
    }

    #[test]
    fn a_mid_tick_takeover_writes_from_the_next_tick() {
        let mut w = world_with(&["s1", "s2"]);
        let p = Vec3::new(0.0, 0.0, 0.0);
        let wr = write(&w, 1, p, "deep-space");
        assert_eq!(w.apply_write("s1", &wr), WriteOutcome::Applied { version: 1, created: true });
        // s1's stream closes mid-tick: s2 gets deep-space at once, but s1
        // already moved the entity in this tick.
        w.authority.disconnect("s1", 0);
        let wr = write(&w, 1, p, "deep-space");
        assert!(matches!(w.apply_write("s2", &wr), WriteOutcome::Rejected(Fence::NotOwner { .. })));
        w.end_tick();
        assert_eq!(w.apply_write("s2", &wr), WriteOutcome::Applied { version: 2, created: false });
    }

    #[test]
    fn gate_removal_still_commits_the_ticks_last_write() {
        let mut w = world_with(&["s1"]);
        let p = Vec3::new(0.0, 0.0, 0.0);
        let wr = write(&w, 9, p, "deep-space");
        w.apply_write("s1", &wr);
        // Left through a gate in the same tick it was written: the write was
        // (or will be) acknowledged, so its state must reach the group commit.
        let gone = w.remove_for_gate(9).unwrap();
        assert!(!w.contains(9) && w.entity(9).is_none());
        let mut near = vec![];
        w.index.query(p, 1.0, &mut near);
        assert!(near.is_empty(), "subscribers see it leave");
        let t = w.end_tick();
        assert_eq!(t.changed, vec![gone]);
        assert!(w.end_tick().changed.is_empty());
        // Not written this tick: nothing extra to commit.
        let wr = write(&w, 10, p, "deep-space");
        w.apply_write("s1", &wr);
        w.end_tick();
        w.remove_for_gate(10).unwrap();
        assert!(w.end_tick().changed.is_empty());
        assert_eq!(w.remove_for_gate(10), None);
    }

    #[test]
    fn eviction_and_stream_in_keep_version_line() {
        let mut w = world_with(&["s1"]);
        let p = Vec3::new(0.0, 0.0, 0.0);
        let wr = write(&w, 1, p, "deep-space");
        w.apply_write("s1", &wr);
        let ch = w.end_tick();
        for _ in 0..5 {
            w.end_tick();
        }
        // Not committed yet: nothing may be evicted.
        assert!(w.evict_idle(2, None).is_empty());
        assert_eq!(w.evict_idle(2, Some(ch.tick)), vec![1]);
        assert!(w.entity(1).is_none());
        let mut near = vec![];
        w.evicted_near(p, 1.0, &mut near);
        assert_eq!(near, vec![1]);
        assert_eq!(w.stream_in(ch.changed.clone()), vec![1]);
        assert_eq!(w.entity(1), ch.changed.first(), "streamed back exactly as committed");
        assert_eq!(w.entity(1).unwrap().version, 1);
        // Streamed-in (like recovered) state is committed: evictable before any new commit.
        for _ in 0..5 {
            w.end_tick();
        }
        assert_eq!(w.evict_idle(2, None), vec![1]);
        assert_eq!(w.stream_in(ch.changed.clone()), vec![1]);
        // Evict again, then a write continues the version line without loading.
        for _ in 0..5 {
            w.end_tick();
        }
        w.evict_idle(2, Some(ch.tick));
        let wr = write(&w, 1, p, "deep-space");
        assert_eq!(w.apply_write("s1", &wr), WriteOutcome::Applied { version: 2, created: false });
        assert_eq!(
            w.stream_in(ch.changed),
            Vec::<EntityId>::new(),
            "stale store copy must not overwrite the newer write"
        );
    }
}
