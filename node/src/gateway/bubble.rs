//! A player's outbound bubble, coalesced. Batches from the replicant are
//! merged per entity until the player's stream takes them, so a slow reader
//! gets the *latest* state of each entity (stale intermediate updates are
//! dropped) and memory is bounded by the entities in its bubble, never by
//! how far behind it is. Merging keeps the meaning exact: an entity the
//! client was told about ends in the right state, a removal is never lost.
//!
//! A player who keeps up never pays for merging: a batch arriving while
//! nothing is pending is kept as the bytes the replicant encoded and forwarded
//! as they are (`gateway::forward`). Only a second batch before the player
//! read the first decodes both.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::model::EntityId;
use crate::wire::pb::{self, entity_update::Change};

/// More distinct pending entities than this means the player is hopelessly
/// behind (or the bubble is absurd): the gateway ends its stream instead of
/// growing without bound. The client reconnects and gets a fresh full state.
pub const MAX_PENDING: usize = 16_384;

#[derive(Debug, Default)]
pub struct Coalescer {
    /// The one pending batch, still encoded (the player keeps up).
    encoded: Option<Bytes>,
    pending: BTreeMap<EntityId, Change>,
    tick: u64,
    /// When the oldest pending update arrived (how long the player waited).
    since: Option<std::time::Instant>,
    /// Batches merged into a previous pending one (counted as dropped stale updates).
    pub merged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the player's pending bubble exceeded its bound")]
    Overflow,
    /// The replicant sent bytes that are not an `UpdateBatch`.
    #[error("undecodable bubble batch: {0}")]
    Undecodable(#[from] prost::DecodeError),
}

/// What the player's stream gets next.
#[derive(Debug, PartialEq)]
pub enum Pending {
    /// One batch, as the replicant encoded it.
    Encoded(Bytes),
    /// Several batches merged.
    Merged(pb::UpdateBatch),
}

fn merge(old: Change, new: Change) -> Change {
    match (old, new) {
        (Change::Enter(mut s), Change::Delta(d)) => {
            // The client has not seen the enter yet: send it with the newest state.
            s.version = d.version;
            s.position = d.position;
            s.velocity = d.velocity;
            s.territory = d.territory;
            s.location = d.location;
            if let Some(c) = d.components {
                s.components = c;
            }
            s.components_version = d.components_version;
            Change::Enter(s)
        }
        (Change::Delta(a), Change::Delta(mut b)) => {
            // A later delta without components must not hide an earlier change of them.
            if b.components.is_none() {
                b.components = a.components;
            }
            Change::Delta(b)
        }
        // A removal wins over anything before it; an entry over a removal.
        (_, new) => new,
    }
}

fn id_of(c: &Change) -> EntityId {
    match c {
        Change::Enter(s) => s.id,
        Change::Delta(d) => d.id,
        Change::Leave(id) => *id,
    }
}

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.encoded.is_none() && self.pending.is_empty()
    }

    /// A batch as the replicant encoded it: kept as it is when nothing is
    /// pending, merged (decoded) otherwise.
    pub fn push_encoded(&mut self, batch: Bytes) -> Result<(), PushError> {
        if self.is_empty() {
            self.since = Some(std::time::Instant::now());
            self.encoded = Some(batch);
            return Ok(());
        }
        let batch = pb::UpdateBatch::decode(batch)?;
        self.push(batch)
    }

    pub fn push(&mut self, batch: pb::UpdateBatch) -> Result<(), PushError> {
        if self.is_empty() {
            self.since = Some(std::time::Instant::now());
        } else {
            self.merged += 1;
        }
        if let Some(first) = self.encoded.take() {
            self.merge_batch(pb::UpdateBatch::decode(first)?)?;
        }
        self.merge_batch(batch)?;
        Ok(())
    }

    fn merge_batch(&mut self, batch: pb::UpdateBatch) -> Result<(), PushError> {
        self.tick = self.tick.max(batch.tick);
        for u in batch.updates {
            let Some(c) = u.change else { continue };
            let id = id_of(&c);
            let merged = match self.pending.remove(&id) {
                Some(old) => merge(old, c),
                None => c,
            };
            self.pending.insert(id, merged);
        }
        if self.pending.len() > MAX_PENDING {
            self.pending.clear();
            return Err(PushError::Overflow);
        }
        Ok(())
    }

    /// When the oldest pending update arrived, if any is pending.
    pub fn pending_since(&self) -> Option<std::time::Instant> {
        if self.is_empty() { None } else { self.since }
    }

    /// Everything pending: the one batch as it came, or the merged batches as
    /// one (removals first); `None` when nothing is.
    pub fn take(&mut self) -> Option<Pending> {
        if let Some(b) = self.encoded.take() {
            return Some(Pending::Encoded(b));
        }
        self.take_merged().map(Pending::Merged)
    }

    fn take_merged(&mut self) -> Option<pb::UpdateBatch> {
        if self.pending.is_empty() {
            return None;
        }
        let mut updates: Vec<pb::EntityUpdate> = Vec::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        let (leaves, rest): (Vec<_>, Vec<_>) =
            pending.into_values().partition(|c| matches!(c, Change::Leave(_)));
        for c in leaves.into_iter().chain(rest) {
            updates.push(pb::EntityUpdate { change: Some(c) });
        }
        Some(pb::UpdateBatch { tick: self.tick, updates })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(id: u64, v: u64) -> pb::EntityUpdate {
        pb::EntityUpdate {
            change: Some(Change::Enter(pb::EntityState {
                id,
                version: v,
                components: bytes::Bytes::from_static(b"c0"),
                ..Default::default()
            })),
        }
    }
    fn delta(id: u64, v: u64, comp: Option<&'static [u8]>) -> pb::EntityUpdate {
        pb::EntityUpdate {
            change: Some(Change::Delta(pb::EntityDelta {
                id,
                version: v,
                territory: format!("t{v}"),
                components: comp.map(bytes::Bytes::from_static),
                ..Default::default()
            })),
        }
    }
    fn leave(id: u64) -> pb::EntityUpdate {
        pb::EntityUpdate { change: Some(Change::Leave(id)) }
    }
    fn batch(tick: u64, u: Vec<pb::EntityUpdate>) -> pb::UpdateBatch {
        pb::UpdateBatch { tick, updates: u }
    }
    fn merged(p: Option<Pending>) -> pb::UpdateBatch {
        match p {
            Some(Pending::Merged(b)) => b,
            other => panic!("expected a merged batch, got {other:?}"),
        }
    }
    fn encoded(b: &pb::UpdateBatch) -> Bytes {
        Bytes::from(b.encode_to_vec())
    }

    #[test]
    fn slow_reader_gets_latest_state_once_per_entity() {
        let mut c = Coalescer::default();
        c.push(batch(1, vec![enter(1, 1), enter(2, 1), delta(3, 5, Some(b"x"))])).unwrap();
        c.push(batch(2, vec![delta(1, 2, Some(b"c1")), leave(2), delta(3, 6, None)])).unwrap();
        c.push(batch(3, vec![delta(1, 3, None)])).unwrap();
        let b = merged(c.take());
        assert_eq!(b.tick, 3);
        assert_eq!(b.updates.len(), 3, "one update per entity");
        assert_eq!(b.updates[0].change, Some(Change::Leave(2)), "removals first");
        match &b.updates[1].change {
            Some(Change::Enter(s)) => {
                assert_eq!((s.id, s.version, &s.territory[..]), (1, 3, "t3"));
                assert_eq!(&s.components[..], b"c1", "component change kept through a later delta");
            }
            other => panic!("{other:?}"),
        }
        match &b.updates[2].change {
            Some(Change::Delta(d)) => {
                assert_eq!(d.version, 6);
                assert_eq!(d.components.as_deref(), Some(&b"x"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.merged, 2);
        assert!(c.take().is_none());
    }

    #[test]
    fn leave_then_enter_is_an_enter_and_memory_is_bounded() {
        let mut c = Coalescer::default();
        c.push(batch(1, vec![leave(7), enter(7, 9)])).unwrap();
        assert!(matches!(merged(c.take()).updates[0].change, Some(Change::Enter(_))));
        let many: Vec<_> = (1..=MAX_PENDING as u64 + 1).map(|i| enter(i, 1)).collect();
        assert!(matches!(c.push(batch(2, many)), Err(PushError::Overflow)));
        assert!(c.is_empty(), "overflow frees everything");
    }

    #[test]
    fn a_player_who_keeps_up_gets_the_replicants_bytes_untouched() {
        let mut c = Coalescer::default();
        let first = encoded(&batch(1, vec![enter(1, 1), leave(2)]));
        c.push_encoded(first.clone()).unwrap();
        assert!(c.pending_since().is_some());
        assert_eq!(c.take(), Some(Pending::Encoded(first)), "the same bytes, not re-encoded");
        assert!(c.take().is_none() && c.is_empty());
        assert_eq!(c.merged, 0);
    }

    #[test]
    fn a_second_encoded_batch_merges_both_as_typed_batches_would() {
        let (b1, b2) = (
            batch(1, vec![enter(1, 1), enter(2, 1)]),
            batch(2, vec![delta(1, 2, Some(b"c1")), leave(2)]),
        );
        let mut raw = Coalescer::default();
        raw.push_encoded(encoded(&b1)).unwrap();
        raw.push_encoded(encoded(&b2)).unwrap();
        let mut typed = Coalescer::default();
        typed.push(b1).unwrap();
        typed.push(b2).unwrap();
        assert_eq!(raw.merged, 1);
        assert_eq!(merged(raw.take()), merged(typed.take()));
    }

    #[test]
    fn undecodable_bytes_are_refused_when_they_must_be_merged() {
        let mut c = Coalescer::default();
        c.push_encoded(encoded(&batch(1, vec![enter(1, 1)]))).unwrap();
        let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff]);
        assert!(matches!(c.push_encoded(garbage), Err(PushError::Undecodable(_))));
    }
}
