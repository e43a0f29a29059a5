//! One subscription (a server's neighbourhood or a player's bubble) and the
//! pure decision of what to send it each tick.
//!
//! The subscriber's view is tracked as `sent` (entity -> what it last got);
//! each tick the plan is the difference between the truth inside the radius
//! and that view. Because the plan is recomputed from the truth, a plan that
//! cannot be delivered (the subscriber's queue is full) is simply not
//! committed and a fresh, coalesced one is made next tick: memory per slow
//! subscriber stays bounded and nothing is lost, only delayed (degraded).
//!
//! Priority accumulation: every pending change gains weight each tick
//! (more for near entities and for entities that changed more since last
//! sent; entering entities get a bonus); the heaviest go first within the
//! byte budget and are reset. Every pending entity gains at least
//! `MIN_WEIGHT` per tick while the heaviest gains at most `MAX_WEIGHT`, so a
//! waiting entity overtakes fresh ones after a bounded number of ticks:
//! nothing starves.

use std::collections::HashMap;

use prost::Message;

use crate::model::{Entity, EntityId, Interest};
use crate::wire::pb::{self, entity_update::Change};
use crate::wire::validate::{entity_to_pb, vec3_to_pb};

use super::spatial_index::{FastMap, FastSet};
use super::state::World;

const MIN_WEIGHT: f64 = 0.05;
const ENTER_BONUS: f64 = 1.0;
const MAX_CHANGE_WEIGHT: f64 = 2.0;
/// Upper bound on one tick's gain: proximity (1) + change (2) + enter (1) + min.
pub const MAX_WEIGHT: f64 = 1.0 + MAX_CHANGE_WEIGHT + ENTER_BONUS + MIN_WEIGHT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    version: u64,
    components_version: u64,
}

#[derive(Debug)]
pub struct Subscription {
    pub interest: Interest,
    /// Bytes per tick this subscriber may be sent (at least one update always goes).
    pub budget_bytes: usize,
    // Integer-keyed maps with the fast hasher: they are looked up once per
    // entity in range per subscriber per tick (`benches/hot_delta.rs`).
    sent: FastMap<EntityId, Sent>,
    acc: FastMap<EntityId, f64>,
}

/// What to send this tick, and how the view changes if it is delivered.
#[derive(Debug, Default)]
pub struct Plan {
    pub updates: Vec<pb::EntityUpdate>,
    pub bytes: usize,
    /// Entities that are pending but did not fit the budget.
    pub deferred: usize,
    view: Vec<(EntityId, Option<Sent>)>,
    /// Every entity currently in range (for eviction bookkeeping).
    pub in_range: Vec<EntityId>,
}

impl Plan {
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

impl Subscription {
    pub fn new(interest: Interest, budget_bytes: usize) -> Self {
        Self { interest, budget_bytes, sent: FastMap::default(), acc: FastMap::default() }
    }

    /// How many entities the subscriber currently knows.
    pub fn known(&self) -> usize {
        self.sent.len()
    }

    /// Plans this tick's updates. Accumulates priorities (even if the plan is
    /// then not delivered, so waiting still counts).
    pub fn plan(&mut self, world: &World) -> Plan {
        let mut plan = Plan::default();
        world.index.query(self.interest.center, self.interest.radius, &mut plan.in_range);
        let in_range: FastSet<EntityId> = plan.in_range.iter().copied().collect();

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
        for id in &plan.in_range {
            let Some(e) = world.entity(*id) else { continue };
            let (gap, enter) = match self.sent.get(id) {
                Some(s) if s.version == e.version => continue,
                Some(s) => (e.version.saturating_sub(s.version) as f64, false),
                None => (1.0, true),
            };
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
    pub fn commit(&mut self, plan: &Plan) {
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

/// Applies updates to a subscriber-side view (used by tests and the bench
/// to check what a client would reconstruct).
pub fn apply_to_view(view: &mut HashMap<EntityId, pb::EntityState>, updates: &[pb::EntityUpdate]) {
    for u in updates {
        match &u.change {
            Some(Change::Enter(e)) => {
                view.insert(e.id, e.clone());
            }
            Some(Change::Delta(d)) => {
                if let Some(e) = view.get_mut(&d.id) {
                    e.version = d.version;
                    e.position = d.position;
                    e.velocity = d.velocity;
                    e.territory.clone_from(&d.territory);
                    e.location.clone_from(&d.location);
                    if let Some(c) = &d.components {
                        e.components = c.clone();
                    }
                    e.components_version = d.components_version;
                }
            }
            Some(Change::Leave(id)) => {
                view.remove(id);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntityWrite, Vec3};
    use crate::replicant::state::WriteOutcome;
    use crate::replicant::state::tests::world_with;
    use proptest::prelude::*;

    fn put(w: &mut World, id: u64, p: Vec3, comp: &'static [u8]) -> WriteOutcome {
        let t = w.map.locate(p);
        let t = w.entity(id).map_or(t, |e| e.territory.clone());
        let epoch = w.authority.grant(&t).unwrap().epoch;
        let wr = EntityWrite {
            seq: 0,
            epoch,
            id,
            kind: 1,
            position: p,
            velocity: Vec3::default(),
            location: "".into(),
            components: bytes::Bytes::from_static(comp),
        };
        w.apply_write("s1", &wr)
    }

    fn truth(w: &World, i: Interest) -> HashMap<EntityId, u64> {
        w.entities()
            .filter(|e| e.position.dist2(i.center) <= i.radius * i.radius)
            .map(|e| (e.id, e.version))
            .collect()
    }

    #[test]
    fn enter_delta_leave() {
        let mut w = world_with(&["s1"]);
        let mut s = Subscription::new(Interest { center: Vec3::default(), radius: 10.0 }, 1 << 20);
        put(&mut w, 1, Vec3::new(1.0, 0.0, 0.0), b"a");
        let p = s.plan(&w);
        assert!(matches!(p.updates[0].change, Some(Change::Enter(_))));
        s.commit(&p);
        put(&mut w, 1, Vec3::new(2.0, 0.0, 0.0), b"a");
        let p = s.plan(&w);
        match &p.updates[0].change {
            Some(Change::Delta(d)) => {
                assert!(d.components.is_none(), "unchanged components are not resent")
            }
            other => panic!("{other:?}"),
        }
        s.commit(&p);
        assert!(s.plan(&w).is_empty());
        put(&mut w, 1, Vec3::new(20.0, 0.0, 0.0), b"a");
        let p = s.plan(&w);
        assert_eq!(p.updates[0].change, Some(Change::Leave(1)));
    }

    #[test]
    fn budget_prefers_near_and_nothing_starves() {
        let mut w = world_with(&["s1"]);
        // One far entity, ten near ones that change every tick.
        put(&mut w, 100, Vec3::new(99.0, 0.0, 0.0), b"far");
        for id in 1..=10 {
            put(&mut w, id, Vec3::new(id as f64 * 0.1, 0.0, 0.0), b"n");
        }
        let mut s = Subscription::new(Interest { center: Vec3::default(), radius: 100.0 }, 1);
        let mut far_tick = None;
        for tick in 0..200 {
            let p = s.plan(&w);
            assert_eq!(p.updates.len(), 1, "budget of 1 byte still sends exactly one update");
            if tick == 0 {
                // Nearest entering entity first.
                assert!(matches!(&p.updates[0].change, Some(Change::Enter(e)) if e.id == 1));
            }
            if matches!(&p.updates[0].change, Some(Change::Enter(e)) if e.id == 100) {
                far_tick = Some(tick);
            }
            s.commit(&p);
            for id in 1..=10 {
                put(&mut w, id, Vec3::new(id as f64 * 0.1, 0.0, 0.0), b"n");
            }
        }
        let t = far_tick.expect("far entity must not starve");
        assert!(t > 3, "near, changing entities go first (far sent at tick {t})");
    }

    #[test]
    fn undelivered_plan_is_recomputed_not_queued() {
        let mut w = world_with(&["s1"]);
        let mut s = Subscription::new(Interest { center: Vec3::default(), radius: 10.0 }, 1 << 20);
        put(&mut w, 1, Vec3::new(1.0, 0.0, 0.0), b"a");
        let _dropped = s.plan(&w);
        for i in 0..50 {
            put(&mut w, 1, Vec3::new(1.0 + i as f64 * 0.01, 0.0, 0.0), b"a");
        }
        let p = s.plan(&w);
        assert_eq!(p.updates.len(), 1, "50 changes while undeliverable coalesce into one update");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, (f64, f64, f64)),
        Stale(u64, (f64, f64, f64)),
        Move(usize, (f64, f64, f64), f64),
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        let p = (-1500.0..1500.0f64, -100.0..100.0f64, -100.0..100.0f64);
        prop_oneof![
            4 => (1..30u64, p.clone()).prop_map(|(id, p)| Op::Write(id, p)),
            1 => (1..30u64, p.clone()).prop_map(|(id, p)| Op::Stale(id, p)),
            1 => (0..3usize, p, 1.0..600.0f64).prop_map(|(s, p, r)| Op::Move(s, p, r)),
            2 => Just(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// After any sequence of writes, moves and subscriptions, each
        /// subscriber's reconstructed view equals the truth filtered by its
        /// radius; stale-epoch writes never apply; versions only grow.
        #[test]
        fn views_equal_truth(ops in prop::collection::vec(op(), 1..80)) {
            let mut w = world_with(&["s1"]);
            let mut subs: Vec<(Subscription, HashMap<EntityId, pb::EntityState>)> = (0..3)
                .map(|i| (Subscription::new(Interest { center: Vec3::new(i as f64 * 500.0, 0.0, 0.0), radius: 300.0 }, 1 << 30), HashMap::new()))
                .collect();
            let mut last_version: HashMap<EntityId, u64> = HashMap::new();
            let check = |w: &mut World, subs: &mut Vec<(Subscription, HashMap<EntityId, pb::EntityState>)>| -> Result<(), TestCaseError> {
                w.end_tick();
                for (s, view) in subs.iter_mut() {
                    let p = s.plan(w);
                    apply_to_view(view, &p.updates);
                    s.commit(&p);
                    let got: HashMap<EntityId, u64> = view.iter().map(|(id, e)| (*id, e.version)).collect();
                    prop_assert_eq!(got, truth(w, s.interest));
                    for (id, e) in view.iter() {
                        let t = w.entity(*id).unwrap();
                        prop_assert_eq!(e.position.map(|v| (v.x, v.y, v.z)), Some((t.position.x, t.position.y, t.position.z)));
                        prop_assert_eq!(&e.components, &t.components);
                    }
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Write(id, p) => { put(&mut w, id, Vec3::new(p.0, p.1, p.2), if id % 2 == 0 { b"even" } else { b"odd" }); }
                    Op::Stale(id, p) => {
                        let before = w.entity(id).cloned();
                        let wr = EntityWrite { seq: 0, epoch: 12345, id, kind: 9, position: Vec3::new(p.0, p.1, p.2),
                            velocity: Vec3::default(), location: "".into(), components: bytes::Bytes::new() };
                        prop_assert!(matches!(w.apply_write("s1", &wr), WriteOutcome::Rejected(_)));
                        prop_assert_eq!(w.entity(id).cloned(), before);
                    }
                    Op::Move(i, p, r) => { subs[i].0.interest = Interest { center: Vec3::new(p.0, p.1, p.2), radius: r }; }
                    Op::Tick => check(&mut w, &mut subs)?,
                }
                for e in w.entities() {
                    let lv = last_version.entry(e.id).or_insert(0);
                    prop_assert!(e.version >= *lv);
                    *lv = e.version;
                }
            }
            check(&mut w, &mut subs)?;
        }
    }
}
