//! The plan as it was before the per-player streaming was made cheaper (issue 9),
//! kept verbatim as the reference the tests hold `Subscription::plan` to: the same
//! updates, in the same order, for any sequence of writes, moves and caps.

#![allow(dead_code)]

use prost::Message;

use crate::model::{Entity, EntityId, Interest};
use crate::replicant::spatial_index::{FastMap, FastSet};
use crate::replicant::state::World;
use crate::wire::pb::{self, entity_update::Change};
use crate::wire::validate::{entity_to_pb, vec3_to_pb};

use super::{
    BubbleCap, Candidate, Detail, ENTER_BONUS, MAX_CHANGE_WEIGHT, MIN_WEIGHT, due, select_detail,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    version: u64,
    components_version: u64,
}

#[derive(Debug)]
pub struct RefSub {
    pub interest: Interest,
    /// Bytes per tick this subscriber may be sent (at least one update always goes).
    pub budget_bytes: usize,
    // Integer-keyed maps with the fast hasher: they are looked up once per
    // entity in range per subscriber per tick (`benches/hot_delta.rs`).
    sent: FastMap<EntityId, Sent>,
    acc: FastMap<EntityId, f64>,
    /// Level of detail ([`BubbleCap::UNLIMITED`] unless [`Subscription::capped`]).
    pub cap: BubbleCap,
    /// Held at full rate whatever the cap: the player's own ship, what it interacts with.
    pub pinned: Vec<EntityId>,
}

/// What to send this tick, and how the view changes if it is delivered.
#[derive(Debug, Default)]
pub struct RefPlan {
    pub updates: Vec<pb::EntityUpdate>,
    pub bytes: usize,
    /// Entities that are pending but did not fit the budget.
    pub deferred: usize,
    view: Vec<(EntityId, Option<Sent>)>,
    /// Every entity currently in range (for eviction bookkeeping).
    pub in_range: Vec<EntityId>,
}

impl RefPlan {
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }
}

fn delta(e: &Entity, s: Sent) -> pb::EntityDelta {
    pb::EntityDelta {
        id: e.id,
        version: e.version,
        position: Some(vec3_to_pb(e.position)),
        velocity: Some(vec3_to_pb(e.velocity)),
        // `String::from(&str)`, not `to_string()`, which goes through `Display`.
        territory: String::from(&*e.territory),
        location: String::from(&*e.location),
        components: (s.components_version != e.components_version).then(|| e.components.clone()),
        components_version: e.components_version,
    }
}

impl RefSub {
    pub fn new(interest: Interest, budget_bytes: usize) -> Self {
        Self {
            interest,
            budget_bytes,
            sent: FastMap::default(),
            acc: FastMap::default(),
            cap: BubbleCap::UNLIMITED,
            pinned: Vec::new(),
        }
    }

    /// With a level of detail (a player's bubble): `pinned` are always held.
    pub fn capped(mut self, cap: BubbleCap, pinned: Vec<EntityId>) -> Self {
        self.cap = cap;
        self.pinned = pinned;
        self
    }

    /// How many entities the subscriber currently knows.
    pub fn known(&self) -> usize {
        self.sent.len()
    }

    /// Plans this tick's updates. Accumulates priorities (even if the plan is
    /// then not delivered, so waiting still counts).
    pub fn plan(&mut self, world: &World) -> RefPlan {
        let mut plan = RefPlan::default();
        world.index.query(self.interest.center, self.interest.radius, &mut plan.in_range);
        // What the view holds: everything in range, or what the cap keeps of it
        // (`plan.in_range` stays whole: what is near is needed, shown or not).
        let held: Vec<(Candidate<&Entity>, Detail)> = if self.cap.is_unlimited() {
            plan.in_range
                .iter()
                .filter_map(|id| world.entity(*id))
                .map(|e| {
                    let c = Candidate { id: e.id, dist2: 0.0, known: false, item: e };
                    (c, Detail::Full)
                })
                .collect()
        } else {
            let center = self.interest.center;
            let mut cands: Vec<Candidate<&Entity>> = plan
                .in_range
                .iter()
                .filter_map(|id| world.entity(*id))
                .map(|e| Candidate {
                    id: e.id,
                    dist2: e.position.dist2(center),
                    known: self.sent.contains_key(&e.id),
                    item: e,
                })
                .collect();
            let mut out = Vec::with_capacity(cands.len().min(self.cap.max_entities) + 1);
            select_detail(&mut cands, &self.pinned, self.cap, &mut out);
            out
        };
        let in_range: FastSet<EntityId> = held.iter().map(|(c, _)| c.id).collect();
        let tick = world.tick();

        // Removals first: they are tiny and keep the view exact.
        let mut leaves: Vec<EntityId> =
            self.sent.keys().filter(|id| !in_range.contains(id)).copied().collect();
        leaves.sort_unstable();
        for id in leaves {
            let u = pb::EntityUpdate { change: Some(Change::Leave(id)) };
            plan.bytes += u.encoded_len();
            plan.updates.push(u);
            plan.view.push((id, None));
            self.acc.remove(&id);
        }

        // Pending entries: entered, or changed since last sent.
        // With the entity itself, so sending needs no second lookup.
        let mut pending: Vec<(f64, EntityId, &Entity)> = Vec::new();
        for (c, detail) in &held {
            let (id, e) = (&c.id, c.item);
            let (gap, enter) = match self.sent.get(id) {
                Some(s) if s.version == e.version => continue,
                Some(s) => (e.version.saturating_sub(s.version) as f64, false),
                None => (1.0, true),
            };
            if !due(*detail, !enter, *id, tick, self.cap.far_every) {
                continue;
            }
            let proximity = 1.0
                - (e.position.dist(self.interest.center) / self.interest.radius).clamp(0.0, 1.0);
            let w = MIN_WEIGHT
                + proximity
                + (gap * 0.25).min(MAX_CHANGE_WEIGHT)
                + if enter { ENTER_BONUS } else { 0.0 };
            let a = self.acc.entry(*id).or_insert(0.0);
            *a += w;
            pending.push((*a, *id, e));
        }
        // Forget accumulators of entities no longer pending (left or caught up).
        if self.acc.len() > pending.len() {
            let p: FastSet<EntityId> = pending.iter().map(|(_, id, _)| *id).collect();
            self.acc.retain(|id, _| p.contains(id));
        }
        pending.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut sent_any = false;
        for (_, id, e) in pending {
            let u = match self.sent.get(&id) {
                Some(s) => pb::EntityUpdate { change: Some(Change::Delta(delta(e, *s))) },
                None => pb::EntityUpdate { change: Some(Change::Enter(entity_to_pb(e))) },
            };
            let len = u.encoded_len();
            if sent_any && plan.bytes + len > self.budget_bytes {
                plan.deferred += 1;
                continue;
            }
            sent_any = true;
            plan.bytes += len;
            plan.updates.push(u);
            plan.view.push((
                id,
                Some(Sent { version: e.version, components_version: e.components_version }),
            ));
        }
        plan
    }

    /// The plan was delivered: the subscriber's view now includes it.
    pub fn commit(&mut self, plan: &RefPlan) {
        for (id, s) in &plan.view {
            match s {
                Some(s) => {
                    self.sent.insert(*id, *s);
                    self.acc.remove(id);
                }
                None => {
                    self.sent.remove(id);
                }
            }
        }
    }
}
