//! The replicant's truth: every entity, the spatial index over them, and the
//! territory authority. Pure: no I/O, no clocks except those passed in.
//!
//! Writes are applied as they arrive (after fencing); territory changes, and
//! so handoffs, happen only in `end_tick`, which makes the tick boundary the
//! one place where an entity changes hands.

use std::collections::{BTreeSet, HashMap};

use crate::model::{Entity, EntityId, EntityWrite, ServerName, TerritoryName, Vec3};
use crate::territory::TerritoryMap;

use super::authority::{Authority, Fence};
use super::spatial_index::GridIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied { version: u64 },
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

#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    last_write_tick: u64,
    last_needed_tick: u64,
}

#[derive(Clone, Copy, Debug)]
struct Evicted {
    version: u64,
    components_version: u64,
}

#[derive(Debug)]
pub struct World {
    pub map: TerritoryMap,
    pub authority: Authority,
    entities: HashMap<EntityId, Entity>,
    pub index: GridIndex,
    dirty: BTreeSet<EntityId>,
    meta: HashMap<EntityId, Meta>,
    /// Evicted entities: only their position (to know when someone comes
    /// near) and version (so a write to one continues its version line).
    evicted: HashMap<EntityId, Evicted>,
    evicted_index: GridIndex,
    tick: u64,
}

impl World {
    pub fn new(map: TerritoryMap, authority: Authority, cell_size: f64) -> Self {
        Self {
            map,
            authority,
            entities: HashMap::new(),
            index: GridIndex::new(cell_size),
            dirty: BTreeSet::new(),
            meta: HashMap::new(),
            evicted: HashMap::new(),
            evicted_index: GridIndex::new(cell_size),
            tick: 0,
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

    /// Loads recovered entities at startup (their territory is recomputed from
    /// the current map, which may have changed since they were written).
    pub fn load(&mut self, mut e: Entity) {
        e.territory = self.map.locate(e.position);
        self.index.upsert(e.id, e.position);
        self.meta.insert(e.id, Meta { last_write_tick: 0, last_needed_tick: self.tick });
        self.entities.insert(e.id, e);
    }

    /// Applies a write if `server` holds the current epoch of the entity's
    /// territory (for a new entity: of the territory at its position).
    pub fn apply_write(&mut self, server: &str, w: &EntityWrite) -> WriteOutcome {
        let territory = match self.entities.get(&w.id) {
            Some(e) => e.territory.clone(),
            None => self.map.locate(w.position),
        };
        if let Err(f) = self.authority.check_write(&territory, server, w.epoch) {
            return WriteOutcome::Rejected(f);
        }
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
        m.last_write_tick = tick;
        m.last_needed_tick = m.last_needed_tick.max(tick);
        WriteOutcome::Applied { version }
    }

    /// The tick boundary: entities written this tick that now lie in another
    /// territory move to it (and to its owner), then the tick's changes are
    /// returned as one group for persistence.
    pub fn end_tick(&mut self) -> TickChanges {
        let tick = self.tick;
        self.tick += 1;
        let mut out = TickChanges { tick, ..Default::default() };
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
        let Some(committed) = committed_tick else { return Vec::new() };
        let now = self.tick;
        let victims: Vec<EntityId> = self
            .meta
            .iter()
            .filter(|(id, m)| {
                m.last_needed_tick + idle_ticks < now
                    && m.last_write_tick <= committed
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
                    Evicted { version: e.version, components_version: e.components_version },
                );
            }
        }
        victims
    }

    /// Evicted entities within `radius` of `center` (to stream back in).
    pub fn evicted_near(&self, center: Vec3, radius: f64, out: &mut Vec<EntityId>) {
        self.evicted_index.query(center, radius, out);
    }

    /// Brings entities loaded from the store back into memory. An entity
    /// written meanwhile (no longer evicted) keeps its newer in-memory state.
    pub fn stream_in(&mut self, loaded: Vec<Entity>) -> usize {
        let mut n = 0;
        for e in loaded {
            if self.evicted.remove(&e.id).is_none() {
                continue;
            }
            self.evicted_index.remove(e.id);
            self.load(e);
            n += 1;
        }
        n
    }

    /// Entity counts per territory (in memory plus evicted would need the
    /// store; this counts what is loaded).
    pub fn counts_per_territory(&self) -> HashMap<TerritoryName, u64> {
        let mut m: HashMap<TerritoryName, u64> =
            self.map.names().into_iter().map(|t| (t, 0)).collect();
        for e in self.entities.values() {
            *m.entry(e.territory.clone()).or_default() += 1;
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
    use crate::territory::{TerritoryMap, builtin_test_config};
    use std::time::{Duration, Instant};

    pub(crate) fn world_with(servers: &[&str]) -> World {
        let map = TerritoryMap::new(&builtin_test_config()).unwrap();
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
        let mut st = builtin_test_config();
        st.static_owners.insert("s-moon".into(), vec!["moon".into()]);
        let map = TerritoryMap::new(&st).unwrap();
        let mut auth =
            Authority::new(map.names(), map.static_owners().clone(), 1, Duration::from_secs(3));
        auth.connect("s-earth".into(), 1, Instant::now());
        auth.connect("s-moon".into(), 2, Instant::now());
        let mut w = World::new(map, auth, 50.0);
        let earth_pos = Vec3::new(1000.0, 0.0, 0.0);
        let wr = write(&w, 7, earth_pos, "earth");
        assert_eq!(w.apply_write("s-earth", &wr), WriteOutcome::Applied { version: 1 });
        let t = w.end_tick();
        assert!(t.handoffs.is_empty());
        // Move into the moon: still earth's until the tick boundary.
        let wr = write(&w, 7, Vec3::new(1200.0, 0.0, 0.0), "earth");
        assert_eq!(w.apply_write("s-earth", &wr), WriteOutcome::Applied { version: 2 });
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
        assert_eq!(w.apply_write("s-moon", &wr), WriteOutcome::Applied { version: 4 });
        assert_eq!(t.changed.len(), 1);
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
        assert_eq!(w.stream_in(ch.changed.clone()), 1);
        assert_eq!(w.entity(1).unwrap().version, 1);
        // Evict again, then a write continues the version line without loading.
        for _ in 0..5 {
            w.end_tick();
        }
        w.evict_idle(2, Some(ch.tick));
        let wr = write(&w, 1, p, "deep-space");
        assert_eq!(w.apply_write("s1", &wr), WriteOutcome::Applied { version: 2 });
        assert_eq!(
            w.stream_in(ch.changed),
            0,
            "stale store copy must not overwrite the newer write"
        );
    }
}
