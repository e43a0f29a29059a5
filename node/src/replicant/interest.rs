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
//!
//! Level of detail (players' bubbles): without a cap a bubble's work grows with
//! the entities in view, so a shard's grows with players x players in view. A
//! [`BubbleCap`] bounds it: the bubble holds only its nearest `max_entities`
//! (the rest leave the view, and come back as the crowd thins), the nearest
//! `full_rate` of them are updated every tick and the others every `far_every`
//! ticks. Pinned entities (the player's own ship, what it interacts with) are
//! always held at full rate and do not count against the cap. The choice is the
//! pure [`select_detail`]; servers' neighbourhoods are never capped (they
//! simulate what they see).

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

/// An entity already in the view ranks as if this much nearer (distance factor),
/// so one at the edge of the cap does not enter and leave on alternate ticks.
pub const HYSTERESIS: f64 = 0.9;

/// Level of detail of a bubble: how many entities it holds and how often each is
/// updated. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BubbleCap {
    /// Most entities the bubble holds, nearest first (pinned ones not counted).
    pub max_entities: usize,
    /// The nearest this many of those are updated every tick.
    pub full_rate: usize,
    /// The others every this many ticks (each entity on its own phase, so the
    /// work spreads evenly over the ticks); entering is never delayed.
    pub far_every: u64,
}

impl BubbleCap {
    /// No level of detail: everything in range, every tick (servers' neighbourhoods).
    pub const UNLIMITED: BubbleCap =
        BubbleCap { max_entities: usize::MAX, full_rate: usize::MAX, far_every: 1 };

    /// A cap of `max_entities` (0: unlimited) with the default share at full rate.
    pub fn with_max(max_entities: usize) -> Self {
        if max_entities == 0 {
            return Self::UNLIMITED;
        }
        let d = Self::default();
        Self { max_entities, full_rate: d.full_rate.min(max_entities), ..d }
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_entities == usize::MAX && (self.full_rate == usize::MAX || self.far_every <= 1)
    }
}

impl Default for BubbleCap {
    /// 128 entities, the nearest 32 every tick and the rest every 4th: at most
    /// 32 + 96/4 = 56 updates a tick per player however crowded the bubble, ~3.7 KB
    /// at the ~65 bytes of a delta (measured in BENCHMARKS.md).
    fn default() -> Self {
        BubbleCap { max_entities: 128, full_rate: 32, far_every: 4 }
    }
}

/// How often a held entity is updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Every tick.
    Full,
    /// Every `far_every` ticks.
    Far,
}

/// An entity in range, as [`select_detail`] ranks it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<T> {
    pub id: EntityId,
    /// Squared distance from the bubble's centre.
    pub dist2: f64,
    /// Already in the subscriber's view (ranks [`HYSTERESIS`] nearer).
    pub known: bool,
    /// Carried along for the caller (the entity itself, in `plan`).
    pub item: T,
}

/// Which of the entities in range a capped bubble holds, and at what detail: every
/// pinned one at `Full`; of the rest the nearest `max_entities` (incumbents ranked
/// [`HYSTERESIS`] nearer, ties by id), the nearest `full_rate` of them `Full`, the
/// others `Far`. `candidates` is reordered. Pure.
pub fn select_detail<T: Copy>(
    candidates: &mut Vec<Candidate<T>>,
    pinned: &[EntityId],
    cap: BubbleCap,
    out: &mut Vec<(Candidate<T>, Detail)>,
) {
    select_detail_in(candidates, pinned, cap, out, &mut Vec::new());
}

/// [`select_detail`] with a buffer for the ranks that the caller keeps (a fresh
/// one each call was a large share of selecting: callgrind, `hot_crowd`).
fn select_detail_in<T: Copy>(
    candidates: &mut Vec<Candidate<T>>,
    pinned: &[EntityId],
    cap: BubbleCap,
    out: &mut Vec<(Candidate<T>, Detail)>,
    ranks: &mut Vec<u128>,
) {
    out.clear();
    if !pinned.is_empty() {
        candidates.retain(|c| {
            let pin = pinned.contains(&c.id);
            if pin {
                out.push((*c, Detail::Full));
            }
            !pin
        });
    }
    let key = |c: &Candidate<T>| if c.known { c.dist2 * HYSTERESIS * HYSTERESIS } else { c.dist2 };
    // Nearest first by `total_cmp`, ties by id, as one integer per candidate.
    let rank = |c: &Candidate<T>| (u128::from(total_order_bits(key(c))) << 64) | u128::from(c.id);
    if candidates.len() > cap.max_entities {
        lowest_first(candidates, cap.max_entities, rank, ranks);
        candidates.truncate(cap.max_entities);
    }
    let full = if cap.far_every <= 1 { candidates.len() } else { cap.full_rate };
    if candidates.len() > full {
        lowest_first(candidates, full, rank, ranks);
    }
    for (i, c) in candidates.iter().enumerate() {
        out.push((*c, if i < full { Detail::Full } else { Detail::Far }));
    }
}

/// Moves the `n` (< `v.len()`) lowest-ranked elements of `v` to its front, in no
/// particular order. Ranks must be unique. Selects among the ranks alone (plain
/// integers, each computed once) and then partitions `v` once: cheaper than
/// `select_nth_unstable_by` computing two keys per comparison (callgrind, `hot_crowd`).
fn lowest_first<T>(v: &mut [T], n: usize, rank: impl Fn(&T) -> u128, ranks: &mut Vec<u128>) {
    // Each rank twice: in `v`'s order (for the partition) and a copy to select in.
    ranks.clear();
    ranks.extend(v.iter().map(rank));
    ranks.extend_from_within(..);
    let (by_pos, sel) = ranks.split_at_mut(v.len());
    let threshold = *sel.select_nth_unstable(n).1;
    let mut front = 0;
    for i in 0..v.len() {
        if by_pos[i] < threshold {
            v.swap(front, i);
            by_pos.swap(front, i);
            front += 1;
        }
    }
    debug_assert_eq!(front, n, "ranks are unique");
}

/// Whether a held entity with a pending change is sent this tick: `Full` always,
/// `Far` on its phase (`(tick + id) % far_every == 0`) or when it enters the view.
pub fn due(detail: Detail, known: bool, id: EntityId, tick: u64, far_every: u64) -> bool {
    match detail {
        Detail::Full => true,
        Detail::Far => !known || far_every <= 1 || tick.wrapping_add(id).is_multiple_of(far_every),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    version: u64,
    components_version: u64,
}

/// A pending entry: its rank ([`rank_desc`] of its weight and id), the entity,
/// and the components version the subscriber has (`None`: it enters the view).
type Pending<E> = (u128, E, Option<u64>);

/// `x`'s place in `f64::total_cmp`'s order, as an unsigned integer (the same
/// bit trick `total_cmp` uses), so ranking compares plain integers.
fn total_order_bits(x: f64) -> u64 {
    let b = x.to_bits() as i64;
    ((b ^ (((b >> 63) as u64) >> 1) as i64) as u64) ^ (1 << 63)
}

/// One integer that sorts heaviest first (by `total_cmp`), then by id: the order
/// pending updates go in. Computed once per entry instead of per comparison.
pub fn rank_desc(weight: f64, id: EntityId) -> u128 {
    (u128::from(!total_order_bits(weight)) << 64) | u128::from(id)
}

/// Buffers `plan` reuses from one tick to the next, always empty between plans.
/// They would hold references into the world, which do not outlive a plan, so
/// they are kept with a placeholder element of the same layout (`usize` for
/// `&Entity`) and converted with [`recycle`], which keeps the allocation.
#[derive(Debug, Default)]
struct Scratch {
    cands: Vec<Candidate<usize>>,
    held: Vec<(Candidate<usize>, Detail)>,
    pending: Vec<Pending<usize>>,
    leaves: Vec<EntityId>,
    ranks: Vec<u128>,
    /// Entities in range at the last plan: the next `in_range` is sized from it.
    last_in_range: usize,
}

/// An empty vector of `U` in `v`'s allocation. std's in-place `collect` keeps the
/// buffer when the two element types have the same size and alignment (what
/// `Scratch` relies on; `recycle_keeps_the_allocation` checks it), and allocates
/// afresh otherwise, which is only slower.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| -> U { unreachable!("the vector was cleared") }).collect()
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
    /// Level of detail ([`BubbleCap::UNLIMITED`] unless [`Subscription::capped`]).
    pub cap: BubbleCap,
    /// Held at full rate whatever the cap: the player's own ship, what it interacts with.
    pub pinned: Vec<EntityId>,
    scratch: Scratch,
    /// Plans made so far.
    plans: u64,
}

/// What to send this tick, and how the view changes if it is delivered.
#[derive(Debug, Default)]
pub struct Plan {
    pub updates: Vec<pb::EntityUpdate>,
    pub bytes: usize,
    /// What `updates` add to a message that carries them as its repeated field 2
    /// (`UpdateBatch`): `bytes` plus each update's key and length prefix. Lets
    /// the sender know a batch's size without encoding or measuring it again.
    pub updates_wire_len: usize,
    /// Entities that are pending but did not fit the budget.
    pub deferred: usize,
    view: Vec<(EntityId, Option<Sent>)>,
    /// Which of its subscription's plans this is (1, 2, ...).
    seq: u64,
    /// Every entity currently in range (for eviction bookkeeping).
    pub in_range: Vec<EntityId>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }
}

/// An embedded message of `len` bytes as a field numbered under 16: key, length, body.
fn framed(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

fn delta(e: &Entity, components_version: u64) -> pb::EntityDelta {
    pb::EntityDelta {
        id: e.id,
        version: e.version,
        position: Some(vec3_to_pb(e.position)),
        velocity: Some(vec3_to_pb(e.velocity)),
        // `String::from(&str)`, not `to_string()`, which goes through `Display`.
        territory: String::from(&*e.territory),
        location: String::from(&*e.location),
        components: (components_version != e.components_version).then(|| e.components.clone()),
        components_version: e.components_version,
    }
}

impl Subscription {
    pub fn new(interest: Interest, budget_bytes: usize) -> Self {
        Self {
            interest,
            budget_bytes,
            sent: FastMap::default(),
            acc: FastMap::default(),
            cap: BubbleCap::UNLIMITED,
            pinned: Vec::new(),
            scratch: Scratch::default(),
            plans: 0,
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
    pub fn plan(&mut self, world: &World) -> Plan {
        let center = self.interest.center;
        self.plans += 1;
        let mut plan = Plan {
            seq: self.plans,
            // Sized from last tick's answer: growing it push by push was a
            // chain of reallocations per player per tick (callgrind, `hot_crowd`).
            in_range: Vec::with_capacity(
                self.scratch.last_in_range + self.scratch.last_in_range / 8 + 16,
            ),
            ..Plan::default()
        };
        world.index.query(center, self.interest.radius, &mut plan.in_range);
        self.scratch.last_in_range = plan.in_range.len();
        // What the view holds: everything in range, or what the cap keeps of it
        // (`plan.in_range` stays whole: what is near is needed, shown or not).
        let mut held: Vec<(Candidate<&Entity>, Detail)> =
            recycle(std::mem::take(&mut self.scratch.held));
        let entities = plan.in_range.iter().filter_map(|id| world.entity(*id));
        if self.cap.is_unlimited() {
            held.extend(entities.map(|e| {
                let c =
                    Candidate { id: e.id, dist2: e.position.dist2(center), known: false, item: e };
                (c, Detail::Full)
            }));
        } else {
            let mut cands: Vec<Candidate<&Entity>> =
                recycle(std::mem::take(&mut self.scratch.cands));
            cands.extend(entities.map(|e| Candidate {
                id: e.id,
                dist2: e.position.dist2(center),
                known: self.sent.contains_key(&e.id),
                item: e,
            }));
            select_detail_in(
                &mut cands,
                &self.pinned,
                self.cap,
                &mut held,
                &mut self.scratch.ranks,
            );
            self.scratch.cands = recycle(cands);
        }
        let tick = world.tick();

        // Pending entries: entered, or changed since last sent, with the entity
        // itself (sending needs no second lookup). Counts the held entities the
        // view knows: if that is all it knows, nothing leaves.
        let mut pending: Vec<Pending<&Entity>> = recycle(std::mem::take(&mut self.scratch.pending));
        let mut known_held = 0;
        for (c, detail) in &held {
            let (id, e) = (c.id, c.item);
            let (gap, has) = match self.sent.get(&id) {
                Some(s) => {
                    known_held += 1;
                    if s.version == e.version {
                        continue;
                    }
                    (e.version.saturating_sub(s.version) as f64, Some(s.components_version))
                }
                None => (1.0, None),
            };
            let enter = has.is_none();
            if !due(*detail, !enter, id, tick, self.cap.far_every) {
                continue;
            }
            let proximity = 1.0 - (c.dist2.sqrt() / self.interest.radius).clamp(0.0, 1.0);
            let w = MIN_WEIGHT
                + proximity
                + (gap * 0.25).min(MAX_CHANGE_WEIGHT)
                + if enter { ENTER_BONUS } else { 0.0 };
            let a = self.acc.entry(id).or_insert(0.0);
            *a += w;
            pending.push((rank_desc(*a, id), e, has));
        }
        // What the view knows and the plan no longer holds leaves it.
        let mut leaves = std::mem::take(&mut self.scratch.leaves);
        if known_held < self.sent.len() {
            let held: FastSet<EntityId> = held.iter().map(|(c, _)| c.id).collect();
            leaves.extend(self.sent.keys().filter(|id| !held.contains(id)));
            leaves.sort_unstable();
        }
        self.scratch.held = recycle(held);
        // Forget accumulators of entities no longer pending (left or caught up).
        if self.acc.len() > pending.len() {
            let p: FastSet<EntityId> = pending.iter().map(|(_, e, _)| e.id).collect();
            self.acc.retain(|id, _| p.contains(id));
        }
        pending.sort_unstable_by_key(|p| p.0);

        // Removals first: they are tiny and keep the view exact.
        plan.updates.reserve_exact(leaves.len() + pending.len());
        plan.view.reserve_exact(leaves.len() + pending.len());
        for id in leaves.drain(..) {
            let u = pb::EntityUpdate { change: Some(Change::Leave(id)) };
            let len = u.encoded_len();
            plan.bytes += len;
            plan.updates_wire_len += framed(len);
            plan.updates.push(u);
            plan.view.push((id, None));
        }
        self.scratch.leaves = leaves;

        let mut sent_any = false;
        for (_, e, has) in pending.drain(..) {
            let id = e.id;
            let u = match has {
                Some(cv) => pb::EntityUpdate { change: Some(Change::Delta(delta(e, cv))) },
                None => pb::EntityUpdate { change: Some(Change::Enter(entity_to_pb(e))) },
            };
            let len = u.encoded_len();
            if sent_any && plan.bytes + len > self.budget_bytes {
                plan.deferred += 1;
                continue;
            }
            sent_any = true;
            plan.bytes += len;
            plan.updates_wire_len += framed(len);
            plan.updates.push(u);
            plan.view.push((
                id,
                Some(Sent { version: e.version, components_version: e.components_version }),
            ));
        }
        self.scratch.pending = recycle(pending);
        plan
    }

    /// The plan was delivered: the subscriber's view now includes it.
    pub fn commit(&mut self, plan: &Plan) {
        // After the latest plan the accumulators hold exactly its pending
        // entities; if it deferred none, it sent them all and they all reset.
        let all_sent = plan.seq == self.plans && plan.deferred == 0;
        if all_sent {
            self.acc.clear();
        }
        for (id, s) in &plan.view {
            match s {
                Some(s) => {
                    self.sent.insert(*id, *s);
                    if !all_sent {
                        self.acc.remove(id);
                    }
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
#[path = "interest_reference.rs"]
mod reference;

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

    fn cand(id: EntityId, d: f64, known: bool) -> Candidate<()> {
        Candidate { id, dist2: d * d, known, item: () }
    }

    fn ids(out: &[(Candidate<()>, Detail)], detail: Detail) -> Vec<EntityId> {
        let mut v: Vec<EntityId> =
            out.iter().filter(|(_, d)| *d == detail).map(|(c, _)| c.id).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn select_detail_keeps_the_nearest_and_every_pinned_one() {
        // Entity i at distance i; 7 is pinned although it is the farthest but one.
        let mut c: Vec<_> = (1..=8).rev().map(|i| cand(i, i as f64, false)).collect();
        let cap = BubbleCap { max_entities: 4, full_rate: 2, far_every: 3 };
        let mut out = Vec::new();
        select_detail(&mut c, &[7], cap, &mut out);
        assert_eq!(ids(&out, Detail::Full), vec![1, 2, 7], "the 2 nearest and the pinned one");
        assert_eq!(ids(&out, Detail::Far), vec![3, 4], "the next 2 up to the cap of 4");
        // The cap never drops a pinned entity, even with room for none.
        let mut c: Vec<_> = (1..=8).map(|i| cand(i, i as f64, false)).collect();
        let none = BubbleCap { max_entities: 0, full_rate: 0, far_every: 3 };
        select_detail(&mut c, &[8, 5], none, &mut out);
        assert_eq!(ids(&out, Detail::Full), vec![5, 8]);
        assert!(ids(&out, Detail::Far).is_empty());
    }

    #[test]
    fn select_detail_unlimited_and_ties() {
        let mut c: Vec<_> = (1..=50).map(|i| cand(i, 1.0, false)).collect();
        let mut out = Vec::new();
        select_detail(&mut c, &[], BubbleCap::UNLIMITED, &mut out);
        assert_eq!(ids(&out, Detail::Full), (1..=50).collect::<Vec<_>>());
        // Equal distances: the lower ids win, whatever the input order.
        let mut c: Vec<_> = (1..=50).rev().map(|i| cand(i, 1.0, false)).collect();
        let cap = BubbleCap { max_entities: 10, full_rate: 5, far_every: 2 };
        select_detail(&mut c, &[], cap, &mut out);
        assert_eq!(ids(&out, Detail::Full), vec![1, 2, 3, 4, 5]);
        assert_eq!(ids(&out, Detail::Far), vec![6, 7, 8, 9, 10]);
        // far_every 1 means one rate: everything held is Full.
        let mut c: Vec<_> = (1..=50).map(|i| cand(i, i as f64, false)).collect();
        let one_rate = BubbleCap { max_entities: 10, full_rate: 2, far_every: 1 };
        select_detail(&mut c, &[], one_rate, &mut out);
        assert_eq!(ids(&out, Detail::Full), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn select_detail_hysteresis_keeps_an_incumbent_at_the_edge() {
        let cap = BubbleCap { max_entities: 1, full_rate: 1, far_every: 2 };
        let mut out = Vec::new();
        // Known at 1.05, new at 1.0: the incumbent stays (it ranks at 0.945).
        let mut c = vec![cand(1, 1.0, false), cand(2, 1.05, true)];
        select_detail(&mut c, &[], cap, &mut out);
        assert_eq!(ids(&out, Detail::Full), vec![2]);
        // Known at 1.2 (ranks 1.08), new at 1.0: the new one takes its place.
        let mut c = vec![cand(1, 1.0, false), cand(2, 1.2, true)];
        select_detail(&mut c, &[], cap, &mut out);
        assert_eq!(ids(&out, Detail::Full), vec![1]);
    }

    #[test]
    fn due_full_always_far_on_its_phase_and_on_entering() {
        for tick in 0..12 {
            assert!(due(Detail::Full, true, 7, tick, 4));
            assert!(due(Detail::Far, false, 7, tick, 4), "entering is never delayed");
        }
        let ticks: Vec<u64> = (0..12).filter(|t| due(Detail::Far, true, 7, *t, 4)).collect();
        assert_eq!(ticks, vec![1, 5, 9], "every 4th tick, on entity 7's phase");
        assert!((0..5).all(|t| due(Detail::Far, true, 7, t, 1)));
    }

    #[test]
    fn capped_bubble_bounds_the_view_and_the_updates_per_tick() {
        let mut w = world_with(&["s1"]);
        // 300 entities along a line inside the radius; the player's ship (1) at the
        // centre, a pinned entity (300) at the far edge.
        let place = |id: u64| Vec3::new(id as f64 * 0.3, 0.0, 0.0);
        for id in 1..=300 {
            put(&mut w, id, place(id), b"x");
        }
        let cap = BubbleCap { max_entities: 40, full_rate: 10, far_every: 4 };
        let mut s = Subscription::new(Interest { center: Vec3::default(), radius: 100.0 }, 1 << 30)
            .capped(cap, vec![1, 300]);
        let mut view = HashMap::new();
        w.end_tick();
        let p = s.plan(&w);
        apply_to_view(&mut view, &p.updates);
        s.commit(&p);
        assert_eq!(view.len(), 42, "the 2 pinned + the 40 nearest others");
        assert!(view.contains_key(&300), "a pinned entity is never dropped");
        assert!((1..=41).all(|id| view.contains_key(&id)), "the ship and the nearest 40 are held");
        // Every entity changes every tick: the pinned two and the 10 nearest others
        // every tick, the other 30 once every 4 ticks, each on its phase (7 or 8 a tick).
        let mut sent: HashMap<EntityId, u32> = HashMap::new();
        for _ in 0..8 {
            for id in 1..=300 {
                put(&mut w, id, place(id), b"x");
            }
            w.end_tick();
            let p = s.plan(&w);
            assert!(p.updates.len() <= 2 + 10 + 8, "{} updates", p.updates.len());
            for u in &p.updates {
                match &u.change {
                    Some(Change::Delta(d)) => *sent.entry(d.id).or_default() += 1,
                    other => panic!("only deltas while nothing moves: {other:?}"),
                }
            }
            apply_to_view(&mut view, &p.updates);
            s.commit(&p);
        }
        for id in (1..=11).chain([300]) {
            assert_eq!(sent.get(&id), Some(&8), "pinned or near entity {id} every tick");
        }
        for id in 12..=41 {
            assert_eq!(sent.get(&id), Some(&2), "far entity {id} every 4th tick");
        }
        assert!((42..300).all(|id| !sent.contains_key(&id)), "nothing beyond the cap");
        // The crowd thins to under the cap: the view becomes the whole truth again.
        for id in 2..=260 {
            put(&mut w, id, Vec3::new(5000.0, 0.0, 0.0), b"x");
        }
        for _ in 0..4 {
            w.end_tick();
            let p = s.plan(&w);
            apply_to_view(&mut view, &p.updates);
            s.commit(&p);
        }
        let got: HashMap<EntityId, u64> = view.iter().map(|(id, e)| (*id, e.version)).collect();
        assert_eq!(got, truth(&w, s.interest));
    }

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<Candidate<usize>> = Vec::with_capacity(300);
        v.push(cand_usize(1));
        let ptr = v.as_ptr() as usize;
        let e = 5u64;
        let mut w: Vec<Candidate<&u64>> = recycle(v);
        assert!(w.is_empty() && w.capacity() >= 300, "capacity {}", w.capacity());
        assert_eq!(w.as_ptr() as usize, ptr, "the same buffer");
        w.push(Candidate { id: 2, dist2: 0.0, known: false, item: &e });
        let back: Vec<Candidate<usize>> = recycle(w);
        assert!(back.is_empty());
        assert_eq!(back.as_ptr() as usize, ptr, "and back again");
    }

    fn cand_usize(id: EntityId) -> Candidate<usize> {
        Candidate { id, dist2: 0.0, known: false, item: 0 }
    }

    proptest! {
        /// `rank_desc` sorts exactly as the plan's order did: weight descending by
        /// `total_cmp` (NaNs and negatives included), then id ascending.
        #[test]
        fn rank_desc_orders_like_total_cmp(
            a in (any::<u64>(), 0..4u64), b in (any::<u64>(), 0..4u64),
            pick in (any::<bool>(), any::<bool>()),
        ) {
            // Raw bits cover NaNs, infinities and negatives; small floats cover ties.
            let w = |(bits, id): (u64, u64), raw: bool| {
                (if raw { f64::from_bits(bits) } else { (bits % 5) as f64 * 0.25 }, id)
            };
            let ((wa, ia), (wb, ib)) = (w(a, pick.0), w(b, pick.1));
            let want = wb.total_cmp(&wa).then(ia.cmp(&ib));
            prop_assert_eq!(rank_desc(wa, ia).cmp(&rank_desc(wb, ib)), want);
        }
    }

    proptest! {
        /// `lowest_first` puts exactly the `n` lowest-ranked elements in front.
        #[test]
        fn lowest_first_moves_the_n_lowest_to_the_front(
            set in prop::collection::hash_set(any::<u64>(), 1..60), n in 0..60usize,
        ) {
            let mut v: Vec<u64> = set.into_iter().collect();
            let n = n % v.len();
            let mut want = v.clone();
            want.sort_unstable();
            let mut ranks = Vec::new();
            lowest_first(&mut v, n, |x| u128::from(*x) * 3, &mut ranks);
            let mut front = v[..n].to_vec();
            front.sort_unstable();
            prop_assert_eq!(&front[..], &want[..n]);
        }
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

        /// What is sent is what the plan before issue 9's rework sent (kept in
        /// `interest_reference.rs`): the same updates in the same order, bytes,
        /// deferrals and range, uncapped and capped, with small budgets, moving
        /// bubbles and plans that are not delivered.
        #[test]
        fn plan_matches_the_reference(
            ops in prop::collection::vec(op(), 1..80),
            budget in prop_oneof![Just(1usize << 30), 1..400usize],
            undelivered in prop::collection::vec(any::<bool>(), 8),
        ) {
            let mut w = world_with(&["s1"]);
            put(&mut w, 1, Vec3::default(), b"ship");
            let caps = [
                BubbleCap::UNLIMITED,
                BubbleCap { max_entities: 6, full_rate: 2, far_every: 3 },
                BubbleCap { max_entities: 3, full_rate: 3, far_every: 1 },
            ];
            let mut pairs: Vec<(Subscription, reference::RefSub)> = caps
                .iter()
                .map(|cap| {
                    let i = Interest { center: Vec3::default(), radius: 800.0 };
                    (
                        Subscription::new(i, budget).capped(*cap, vec![1]),
                        reference::RefSub::new(i, budget).capped(*cap, vec![1]),
                    )
                })
                .collect();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(id, p) | Op::Stale(id, p) => {
                        put(&mut w, id, Vec3::new(p.0, p.1, p.2), if id % 3 == 0 { b"a" } else { b"bb" });
                    }
                    Op::Move(i, p, r) => {
                        for (s, r0) in pairs.iter_mut().skip(i % 2) {
                            s.interest = Interest { center: Vec3::new(p.0, p.1, p.2), radius: r };
                            r0.interest = s.interest;
                        }
                    }
                    Op::Tick => {}
                }
                w.end_tick();
                for (s, r) in pairs.iter_mut() {
                    let (p, q) = (s.plan(&w), r.plan(&w));
                    prop_assert_eq!(&p.updates, &q.updates);
                    prop_assert_eq!((p.bytes, p.deferred), (q.bytes, q.deferred));
                    prop_assert_eq!(&p.in_range, &q.in_range);
                    let batch = pb::UpdateBatch { tick: 0, updates: p.updates.clone() };
                    prop_assert_eq!(p.updates_wire_len, batch.encoded_len());
                    if !undelivered[n % undelivered.len()] {
                        s.commit(&p);
                        r.commit(&q);
                    }
                    prop_assert_eq!(s.known(), r.known());
                }
            }
        }

        /// A capped bubble: never more than the cap (+ pinned) entities, never one
        /// out of range, the pinned ship always current; and once the crowd in range
        /// fits the cap, `far_every` quiet ticks make the view equal the truth.
        #[test]
        fn capped_views_stay_bounded_and_converge(ops in prop::collection::vec(op(), 1..80)) {
            let mut w = world_with(&["s1"]);
            put(&mut w, 1, Vec3::default(), b"ship");
            let cap = BubbleCap { max_entities: 6, full_rate: 2, far_every: 3 };
            let mut s = Subscription::new(Interest { center: Vec3::default(), radius: 800.0 }, 1 << 30)
                .capped(cap, vec![1]);
            let mut view: HashMap<EntityId, pb::EntityState> = HashMap::new();
            for op in ops {
                match op {
                    Op::Write(id, p) | Op::Stale(id, p) if id != 1 => {
                        put(&mut w, id, Vec3::new(p.0, p.1, p.2), b"x");
                    }
                    Op::Move(_, p, _) => {
                        put(&mut w, 1, Vec3::new(p.0, p.1, p.2), b"ship");
                    }
                    _ => {}
                }
                w.end_tick();
                s.interest.center = w.entity(1).unwrap().position;
                let p = s.plan(&w);
                apply_to_view(&mut view, &p.updates);
                s.commit(&p);
                let t = truth(&w, s.interest);
                prop_assert!(view.len() <= cap.max_entities + 1, "{} held", view.len());
                prop_assert!(view.keys().all(|id| t.contains_key(id)), "held out of range");
                prop_assert_eq!(view.get(&1).map(|e| e.version), t.get(&1).copied());
            }
            let t = truth(&w, s.interest);
            if t.len() <= cap.max_entities + 1 {
                for _ in 0..cap.far_every {
                    w.end_tick();
                    let p = s.plan(&w);
                    apply_to_view(&mut view, &p.updates);
                    s.commit(&p);
                }
                let got: HashMap<EntityId, u64> = view.iter().map(|(id, e)| (*id, e.version)).collect();
                prop_assert_eq!(got, t);
            }
        }
    }
}
