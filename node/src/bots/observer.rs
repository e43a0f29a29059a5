//! What one bot concludes from its bubble: pure, fed batch by batch with the
//! time they arrived, so the invariants are tested without a network.
//!
//! - lost: the bot's own ship left its bubble (or never appeared, or was
//!   missing at the end) — it is always the centre of its own bubble;
//! - duplicated: an entity twice in one batch, an enter for an entity already
//!   known, or a version going backwards (two writers);
//! - handoffs: the own ship's territory changed, and how many replicant ticks
//!   passed until the new owner's first write showed (handoff latency);
//! - input latency: from sending command `seq` to the ship's state showing it;
//! - stall: the longest time the own ship went without any update;
//! - jump gates: a `Leave` of the own ship followed by the gateway's
//!   `Transferred` is a transfer, not a loss; the time from the last sight
//!   in the old system to the first in the new one is the transfer's gap
//!   (the ship is in neither bubble meanwhile).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use prost::Message;

use super::lean::{self, Change};
use crate::model::EntityId;
use crate::wire::pb;

/// An FxHash-style hasher for entity ids. The ids come from our own replicant, not
/// from an adversary, and SipHash per received update was the bots' largest cost.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type IdBuild = BuildHasherDefault<IdHasher>;

/// What the observer remembers of an entity in its bubble.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The last version seen.
    version: u64,
    /// The batch (`Observer::batches`) it was last seen in: a second sight in the same
    /// batch is a duplicate, found by the same lookup that updates the version.
    batch: u64,
}

#[derive(Debug, Default)]
pub struct Observer {
    own: EntityId,
    known: HashMap<EntityId, Seen, IdBuild>,
    /// Batches received (numbers them for `Seen::batch`).
    batches: u64,
    /// Entities that left in the current batch (no longer in `known`, but a second
    /// update of them in the batch is still a duplicate).
    left_in_batch: HashSet<EntityId, IdBuild>,
    /// Copied out of the receive buffer (which a slice would keep alive) when it changes.
    own_territory: Option<Vec<u8>>,
    own_seen: bool,
    /// (tick, version) of the last own-ship territory change, until the next write shows.
    pending_handoff: Option<(u64, u64)>,
    last_own_update: Option<f64>,
    /// seq -> time sent.
    sent: BTreeMap<u64, f64>,
    last_applied_seq: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub handoffs: u64,
    pub handoff_ticks: Vec<u64>,
    pub input_latency_s: Vec<f64>,
    pub max_stall_s: f64,
    pub updates: u64,
    pub arrivals: u64,
    /// The own ship's route, as last seen (0 until a command reached it).
    pub route_len: usize,
    /// The own ship's last `Leave` was counted as lost (undone by a transfer).
    left_counted: bool,
    /// Transferred through a gate at this time (its last sight before); until
    /// the ship shows in the new system.
    in_gate: Option<f64>,
    pub gate_transfers: u64,
    /// Seconds from the last sight in the old system to the first in the new.
    pub gate_gaps_s: Vec<f64>,
}

impl Observer {
    pub fn new(own: EntityId) -> Self {
        Self { own, ..Default::default() }
    }

    pub fn own_seen(&self) -> bool {
        self.own_seen
    }

    /// Records that command `seq` was sent at `now` (seconds).
    pub fn sent(&mut self, seq: u64, now: f64) {
        self.sent.insert(seq, now);
        // Bounded: probes never answered (e.g. dropped by the rate limit) age out.
        while self.sent.len() > 1024 {
            self.sent.pop_first();
        }
    }

    /// A new stream (reconnect) starts from an empty view.
    pub fn reset_view(&mut self) {
        self.known.clear();
        self.own_seen = false;
        self.pending_handoff = None;
    }

    pub fn batch(&mut self, b: &lean::UpdateBatch, now: f64) {
        self.batches += 1;
        if !self.left_in_batch.is_empty() {
            self.left_in_batch.clear();
        }
        for u in &b.updates {
            let Some(c) = &u.change else { continue };
            self.updates += 1;
            match c {
                Change::Enter(s) => {
                    // An enter for a known entity is a refresh (the gateway
                    // re-attached after a replicant reconnect); only an older
                    // version than already seen means two version lines.
                    self.saw(s.id, s.version);
                    if s.id == self.own {
                        self.own_update(b.tick, s.version, &s.territory, Some(&s.components), now);
                    }
                }
                Change::Delta(d) => {
                    self.saw(d.id, d.version);
                    if d.id == self.own {
                        self.own_update(
                            b.tick,
                            d.version,
                            &d.territory,
                            d.components.as_ref(),
                            now,
                        );
                    }
                }
                Change::Leave(id) => {
                    let here = self.known.remove(id).is_some_and(|s| s.batch == self.batches);
                    let first_leave = self.left_in_batch.insert(*id);
                    if here || !first_leave {
                        self.duplicated += 1;
                    }
                    if *id == self.own && self.own_seen {
                        self.lost += 1;
                        self.left_counted = true;
                        self.own_seen = false;
                        tracing::warn!(entity = id, tick = b.tick, "own ship left the bubble");
                    }
                }
            }
        }
    }

    /// An enter or delta of `id` at `version` in the current batch: a duplicate when
    /// the entity was already in this batch, a second version line when the version
    /// went backwards (both can hold). One map lookup per update.
    fn saw(&mut self, id: EntityId, version: u64) {
        let batch = self.batches;
        match self.known.entry(id) {
            Entry::Occupied(e) => {
                let s = e.into_mut();
                // Occupied from an earlier batch: it cannot have left in this one
                // (a leave removes it), so `left_in_batch` need not be asked.
                if s.batch == batch {
                    self.duplicated += 1;
                }
                if version < s.version {
                    self.duplicated += 1;
                }
                *s = Seen { version, batch };
            }
            Entry::Vacant(e) => {
                if self.left_in_batch.contains(&id) {
                    self.duplicated += 1;
                }
                e.insert(Seen { version, batch });
            }
        }
    }

    fn own_update(
        &mut self,
        tick: u64,
        version: u64,
        territory: &[u8],
        comps: Option<&bytes::Bytes>,
        now: f64,
    ) {
        self.left_counted = false;
        if let Some(left) = self.in_gate.take() {
            // First sight in the new system: the gap is the transfer's, not a stall.
            self.gate_gaps_s.push((now - left).max(0.0));
        } else if let Some(prev) = self.last_own_update {
            self.max_stall_s = self.max_stall_s.max(now - prev);
        }
        self.last_own_update = Some(now);
        self.own_seen = true;
        if let Some((t0, v0)) = self.pending_handoff
            && version > v0
        {
            self.handoff_ticks.push(tick.saturating_sub(t0));
            self.pending_handoff = None;
        }
        match &self.own_territory {
            Some(t) if t.as_slice() == territory => {}
            Some(_) => {
                self.handoffs += 1;
                self.pending_handoff = Some((tick, version));
                self.own_territory = Some(territory.to_vec());
            }
            // Allocated only when it changes, not with every update of the own ship.
            None => self.own_territory = Some(territory.to_vec()),
        }
        if let Some(c) = comps
            && let Ok(s) = pb::ShipState::decode(c.as_ref())
        {
            self.arrivals = self.arrivals.max(s.arrivals);
            self.route_len = s.route.len();
            if s.last_input_seq > self.last_applied_seq {
                self.last_applied_seq = s.last_input_seq;
                let done: Vec<u64> =
                    self.sent.range(..=s.last_input_seq).map(|(k, _)| *k).collect();
                for k in done {
                    if let Some(t) = self.sent.remove(&k)
                        && k == s.last_input_seq
                    {
                        self.input_latency_s.push((now - t).max(0.0));
                    }
                }
            }
        }
    }

    /// The gateway said the own ship left through a jump gate (`Transferred`):
    /// its `Leave` was no loss; the next stream is in another system.
    pub fn transferred(&mut self, now: f64) {
        if self.left_counted {
            self.lost = self.lost.saturating_sub(1);
            self.left_counted = false;
        }
        self.gate_transfers += 1;
        self.in_gate = Some(self.last_own_update.unwrap_or(now).min(now));
        self.own_seen = false;
        self.own_territory = None;
        self.pending_handoff = None;
    }

    /// The own ship left the bubble unexplained, or jumped and has not shown in
    /// the new system yet.
    pub fn between_systems(&self) -> bool {
        self.left_counted || self.in_gate.is_some()
    }

    /// Seconds the own ship has been between systems (not yet seen in the new one).
    pub fn in_gate_for(&self, now: f64) -> Option<f64> {
        self.in_gate.map(|t| (now - t).max(0.0))
    }

    /// At the end of the run: a ship that is not in the bubble is lost.
    pub fn finish(&mut self) {
        if !self.own_seen {
            self.lost += 1;
            tracing::warn!(
                entity = self.own,
                ever_seen = self.last_own_update.is_some(),
                "own ship not in the bubble at the end"
            );
        }
    }
}

/// The `q` quantile (0..=1) of `v` (sorted in place); 0 when empty.
pub fn quantile<T: Copy + PartialOrd + Default>(v: &mut [T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb::entity_update::Change as PbChange;

    fn st(id: u64, v: u64, t: &str, seq: u64) -> pb::EntityState {
        let comps = pb::ShipState { last_input_seq: seq, ..Default::default() }.encode_to_vec();
        pb::EntityState {
            id,
            version: v,
            territory: t.into(),
            components: comps.into(),
            ..Default::default()
        }
    }
    fn enter(s: pb::EntityState) -> pb::EntityUpdate {
        pb::EntityUpdate { change: Some(PbChange::Enter(s)) }
    }
    fn delta(id: u64, v: u64, t: &str, seq: Option<u64>) -> pb::EntityUpdate {
        pb::EntityUpdate {
            change: Some(PbChange::Delta(pb::EntityDelta {
                id,
                version: v,
                territory: t.into(),
                components: seq.map(|s| {
                    pb::ShipState { last_input_seq: s, ..Default::default() }.encode_to_vec().into()
                }),
                ..Default::default()
            })),
        }
    }
    /// The batch as the bots read it: written as the full message, read as the lean one.
    fn b(tick: u64, u: Vec<pb::EntityUpdate>) -> lean::UpdateBatch {
        let bytes = pb::UpdateBatch { tick, updates: u }.encode_to_vec();
        lean::UpdateBatch::decode(bytes.as_slice()).expect("the lean batch reads the full one")
    }

    #[test]
    fn handoffs_latency_and_input_latency() {
        let mut o = Observer::new(1);
        o.sent(1, 0.0);
        o.batch(&b(10, vec![enter(st(1, 3, "a", 0)), enter(st(2, 1, "a", 0))]), 0.1);
        o.batch(&b(11, vec![delta(1, 4, "b", None)]), 0.2);
        assert_eq!(o.handoffs, 1);
        o.batch(&b(13, vec![delta(1, 5, "b", Some(1))]), 0.25);
        assert_eq!(o.handoff_ticks, vec![2]);
        assert_eq!(o.input_latency_s, vec![0.25]);
        assert!((o.max_stall_s - 0.1).abs() < 1e-9);
        o.finish();
        assert_eq!((o.lost, o.duplicated), (0, 0));
    }

    #[test]
    fn lost_and_duplicated_are_detected() {
        let mut o = Observer::new(1);
        o.batch(&b(1, vec![enter(st(1, 1, "a", 0)), enter(st(2, 1, "a", 0))]), 0.0);
        o.batch(&b(2, vec![delta(2, 2, "a", None), delta(2, 3, "a", None)]), 0.0);
        assert_eq!(o.duplicated, 1, "same id twice in one batch");
        o.batch(&b(3, vec![delta(2, 1, "a", None)]), 0.0);
        assert_eq!(o.duplicated, 2, "version went backwards");
        o.batch(&b(4, vec![enter(st(2, 5, "a", 0))]), 0.0);
        assert_eq!(o.duplicated, 2, "a refresh with a newer version is fine");
        o.batch(&b(4, vec![enter(st(2, 4, "a", 0))]), 0.0);
        assert_eq!(o.duplicated, 3, "an older enter is a second version line");
        o.batch(&b(5, vec![pb::EntityUpdate { change: Some(PbChange::Leave(1)) }]), 0.0);
        assert_eq!(o.lost, 1);
        o.finish();
        assert_eq!(o.lost, 2, "still missing at the end");
        let mut never = Observer::new(9);
        never.finish();
        assert_eq!(never.lost, 1);
    }

    #[test]
    fn a_gate_transfer_is_not_a_loss_and_its_gap_is_measured() {
        let mut o = Observer::new(1);
        o.batch(&b(1, vec![enter(st(1, 1, "a", 0))]), 1.0);
        o.batch(&b(2, vec![pb::EntityUpdate { change: Some(PbChange::Leave(1)) }]), 1.5);
        assert_eq!(o.lost, 1, "until the gateway explains it");
        assert!(o.between_systems());
        o.transferred(2.0);
        assert!(o.between_systems());
        assert_eq!((o.lost, o.gate_transfers), (0, 1));
        assert_eq!(o.in_gate_for(3.0), Some(2.0));
        o.reset_view();
        // The new system: another territory, the version line continued.
        o.batch(&b(7, vec![enter(st(1, 3, "z", 0))]), 4.0);
        assert_eq!(o.gate_gaps_s, vec![3.0]);
        assert!(!o.between_systems());
        assert_eq!(o.handoffs, 0, "a jump is not a handoff");
        assert_eq!(o.max_stall_s, 0.0, "nor a stall");
        o.finish();
        assert_eq!((o.lost, o.duplicated), (0, 0));
    }

    /// The duplicate count as it was computed before `Seen::batch` (a set of the ids in
    /// each batch, a map of versions): the restructured observer must agree with it.
    fn reference_duplicates(batches: &[lean::UpdateBatch]) -> u64 {
        let mut known: HashMap<EntityId, u64> = HashMap::new();
        let mut dup = 0;
        for b in batches {
            let mut in_batch = HashSet::new();
            for u in &b.updates {
                let Some(c) = &u.change else { continue };
                let id = match c {
                    Change::Enter(s) => s.id,
                    Change::Delta(d) => d.id,
                    Change::Leave(id) => *id,
                };
                dup += u64::from(!in_batch.insert(id));
                match c {
                    Change::Enter(s) => {
                        dup +=
                            u64::from(known.insert(s.id, s.version).is_some_and(|v| s.version < v))
                    }
                    Change::Delta(d) => {
                        dup +=
                            u64::from(known.insert(d.id, d.version).is_some_and(|v| d.version < v))
                    }
                    Change::Leave(id) => {
                        known.remove(id);
                    }
                }
            }
        }
        dup
    }

    #[test]
    fn duplicates_agree_with_the_set_per_batch_reference() {
        // Random batches over a few ids, so that repeats, leaves and re-enters within
        // one batch, and versions going backwards, all happen often.
        let mut x = 7u64;
        let mut rnd = |m: u64| {
            x = crate::bots::splitmix(x);
            x % m
        };
        let batches: Vec<lean::UpdateBatch> = (0..2000)
            .map(|t| {
                let n = rnd(6) as usize;
                let u = (0..n)
                    .map(|_| {
                        let (id, v) = (rnd(5) + 2, rnd(4) + t / 3);
                        match rnd(3) {
                            0 => enter(st(id, v, "a", 0)),
                            1 => delta(id, v, "a", None),
                            _ => pb::EntityUpdate { change: Some(PbChange::Leave(id)) },
                        }
                    })
                    .collect();
                b(t, u)
            })
            .collect();
        let mut o = Observer::new(1);
        for bt in &batches {
            o.batch(bt, 0.0);
        }
        let want = reference_duplicates(&batches);
        assert!(want > 100, "the stream exercises duplicates: {want}");
        assert_eq!(o.duplicated, want);
        // Leave, then enter again, in one batch; and a leave twice.
        let mut o = Observer::new(1);
        let leave = |id| pb::EntityUpdate { change: Some(PbChange::Leave(id)) };
        o.batch(&b(1, vec![enter(st(2, 1, "a", 0))]), 0.0);
        o.batch(&b(2, vec![leave(2), enter(st(2, 2, "a", 0))]), 0.0);
        assert_eq!(o.duplicated, 1);
        o.batch(&b(3, vec![leave(2), leave(2)]), 0.0);
        assert_eq!(o.duplicated, 2);
        o.batch(&b(4, vec![enter(st(2, 3, "a", 0))]), 0.0);
        assert_eq!(o.duplicated, 2, "a new batch forgets the leaves of the last");
    }

    #[test]
    fn the_id_hasher_spreads_sequential_ids() {
        use std::hash::BuildHasher;
        // hashbrown picks buckets from the low bits and tags from the top 7.
        let h: Vec<u64> = (1..=1024u64).map(|i| IdBuild::default().hash_one(i)).collect();
        let low: HashSet<u64> = h.iter().map(|v| v & 1023).collect();
        let top: HashSet<u64> = h.iter().map(|v| v >> 57).collect();
        assert!(low.len() > 600, "low bits: {}", low.len());
        assert_eq!(top.len(), 128, "every tag used");
    }

    #[test]
    fn quantiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.99), 5.0);
        assert_eq!(quantile::<f64>(&mut [], 0.5), 0.0);
    }
}
