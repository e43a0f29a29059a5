//! What this server may simulate: the territories it was granted (with their
//! epochs) and the entities it holds authority over. Pure bookkeeping fed by
//! the replicant's messages; every decision about who owns what is the
//! replicant's, this only follows it, and errs towards *not* simulating: an
//! entity is dropped the moment a revoke or handoff-out arrives.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Entity, EntityId};

#[derive(Debug, Default)]
pub struct Owned {
    /// territory -> epoch to stamp writes with.
    territories: BTreeMap<String, u64>,
    /// entity -> its state and the territory its authority comes from.
    entities: HashMap<EntityId, Held>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub entity: Entity,
    pub territory: String,
}

impl Owned {
    pub fn territories(&self) -> impl Iterator<Item = (&str, u64)> {
        self.territories.iter().map(|(t, e)| (t.as_str(), *e))
    }

    pub fn territory_count(&self) -> usize {
        self.territories.len()
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub fn epoch(&self, territory: &str) -> Option<u64> {
        self.territories.get(territory).copied()
    }

    pub fn get(&self, id: EntityId) -> Option<&Held> {
        self.entities.get(&id)
    }

    pub fn get_mut(&mut self, id: EntityId) -> Option<&mut Held> {
        self.entities.get_mut(&id)
    }

    pub fn ids(&self) -> Vec<EntityId> {
        let mut v: Vec<EntityId> = self.entities.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The epoch a write to `id` must carry, if this server holds it.
    pub fn write_epoch(&self, id: EntityId) -> Option<u64> {
        self.entities.get(&id).and_then(|h| self.epoch(&h.territory))
    }

    /// A grant (or re-grant with a newer epoch). The replicant follows it
    /// with a handoff-in for every entity of the territory.
    pub fn grant(&mut self, territory: &str, epoch: u64) {
        let e = self.territories.entry(territory.to_string()).or_insert(epoch);
        *e = (*e).max(epoch);
    }

    /// Gives up a territory and every entity held through it, at once.
    /// A revoke older than the current grant (a re-grant overtook it) is ignored.
    pub fn revoke(&mut self, territory: &str, epoch: u64) -> Vec<EntityId> {
        match self.territories.get(territory) {
            Some(cur) if *cur <= epoch => {
                self.territories.remove(territory);
            }
            _ => return Vec::new(),
        }
        let mut gone: Vec<EntityId> = self
            .entities
            .iter()
            .filter(|(_, h)| h.territory == territory)
            .map(|(id, _)| *id)
            .collect();
        gone.sort_unstable();
        for id in &gone {
            self.entities.remove(id);
        }
        gone
    }

    /// An entity arrives (handoff, grant, stream-in): the replicant's state
    /// replaces ours. Refused unless we hold `territory` at exactly `epoch`,
    /// so a handoff that raced a revoke is never simulated. Returns whether
    /// the entity is now held.
    pub fn handoff_in(&mut self, entity: Entity, territory: &str, epoch: u64) -> bool {
        if self.epoch(territory) != Some(epoch) {
            return false;
        }
        self.entities.insert(entity.id, Held { entity, territory: territory.to_string() });
        true
    }

    /// Whether `id` is held through `territory`, granted at exactly `epoch`.
    /// A creation confirmation (`HandoffIn` with no `from_territory`) for an
    /// entity held so needs nothing: our state is newer than the write that
    /// created it.
    pub fn holds(&self, id: EntityId, territory: &str, epoch: u64) -> bool {
        self.entities.get(&id).is_some_and(|h| h.territory == territory)
            && self.epoch(territory) == Some(epoch)
    }

    /// Stop simulating `id` now. True if it was held.
    pub fn handoff_out(&mut self, id: EntityId) -> bool {
        self.entities.remove(&id).is_some()
    }

    /// An entity this server created itself (spawn) in a territory it holds.
    pub fn adopt(&mut self, entity: Entity, territory: &str) -> Option<u64> {
        let epoch = self.epoch(territory)?;
        self.entities.insert(entity.id, Held { entity, territory: territory.to_string() });
        Some(epoch)
    }

    /// The stream closed: every grant is void.
    pub fn clear(&mut self) -> Vec<EntityId> {
        self.territories.clear();
        let gone = self.ids();
        self.entities.clear();
        gone
    }

    pub fn held_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.entities.values_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64) -> Entity {
        Entity {
            id,
            kind: 1,
            position: Default::default(),
            velocity: Default::default(),
            location: "".into(),
            version: 1,
            components: Default::default(),
            components_version: 1,
            territory: "a".into(),
        }
    }

    #[test]
    fn handoff_in_needs_the_current_epoch() {
        let mut o = Owned::default();
        assert!(!o.handoff_in(e(1), "a", 5), "no grant: not ours");
        o.grant("a", 5);
        assert!(!o.handoff_in(e(1), "a", 4), "stale epoch");
        assert!(o.handoff_in(e(1), "a", 5));
        assert_eq!(o.write_epoch(1), Some(5));
        assert!(o.holds(1, "a", 5));
        assert!(!o.holds(1, "a", 4) && !o.holds(1, "b", 5) && !o.holds(2, "a", 5));
        // Re-granted with a newer epoch: writes carry it from now on.
        o.grant("a", 9);
        assert_eq!(o.write_epoch(1), Some(9));
    }

    #[test]
    fn revoke_and_handoff_out_stop_simulation_at_once() {
        let mut o = Owned::default();
        o.grant("a", 5);
        o.grant("b", 6);
        o.handoff_in(e(1), "a", 5);
        o.handoff_in(e(2), "a", 5);
        o.handoff_in(e(3), "b", 6);
        assert!(o.handoff_out(3));
        assert!(!o.handoff_out(3));
        // An old revoke (overtaken by a re-grant) is ignored.
        o.grant("a", 7);
        assert!(o.revoke("a", 5).is_empty());
        assert_eq!(o.revoke("a", 7), vec![1, 2]);
        assert!(o.is_empty());
        assert_eq!(o.write_epoch(1), None);
        assert_eq!(o.adopt(e(4), "a"), None, "cannot create in a territory not held");
        assert_eq!(o.adopt(e(4), "b"), Some(6));
        assert_eq!(o.clear(), vec![4]);
        assert_eq!(o.territory_count(), 0);
    }
}
