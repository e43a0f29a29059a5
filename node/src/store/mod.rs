//! Where committed state lives. One trait, two stores: `embedded` (redb, a
//! folder; the default) and `postgres`.
//!
//! The model: a store keeps the latest committed state of every entity
//! (one row per entity) and each commit is one tick's (or several coalesced
//! ticks') changes upserted atomically. Why that is both the log and the
//! snapshot, and why it bounds recovery time: `replicant::persistence`.

pub mod embedded;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use prost::Message;

use crate::model::{Entity, EntityId};
use crate::wire::{pb, validate};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds a corrupt record: {0}")]
    Corrupt(String),
}

/// One group commit: the entities changed in ticks up to `tick`, each at its latest version.
#[derive(Clone, Debug, Default)]
pub struct CommitBatch {
    pub tick: u64,
    pub entities: Vec<Entity>,
}

/// Where a jump-gate transfer started here stands (the source side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundPhase {
    /// Durably out of this world, not yet confirmed by the target: retried until answered.
    InTransit,
    /// The target confirmed. Kept as a tombstone so writes to the id stay fenced
    /// (a late write or a respawn would otherwise duplicate the ship) until the
    /// entity arrives back here through a gate.
    Departed,
}

impl OutboundPhase {
    pub(crate) fn code(self) -> u8 {
        match self {
            OutboundPhase::InTransit => 1,
            OutboundPhase::Departed => 2,
        }
    }

    pub(crate) fn from_code(c: i64) -> Result<Self, StoreError> {
        match c {
            1 => Ok(OutboundPhase::InTransit),
            2 => Ok(OutboundPhase::Departed),
            _ => Err(StoreError::Corrupt(format!("gate transfer phase {c}"))),
        }
    }
}

/// A jump-gate transfer this replicant started: one per entity id (a newer
/// departure of the same entity replaces an older tombstone).
#[derive(Clone, Debug, PartialEq)]
pub struct Outbound {
    /// The idempotency key, `<system>/<shard>/<id>@<version>`.
    pub transfer_id: Arc<str>,
    /// The entity as it left.
    pub entity: Entity,
    pub source_gate: Arc<str>,
    pub target_system: Arc<str>,
    pub target_gate: Arc<str>,
    /// The server that sent `GateEnter`.
    pub server: Arc<str>,
    pub phase: OutboundPhase,
}

/// The shard's partition (a dynamic layout's cells), as the replicant saves
/// it after every change and loads it before the entities.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartitionRecord {
    /// Bumped by every change; a save never replaces a newer version.
    pub version: u64,
    pub partition: starmesh_api::partition::Partition,
}

impl PartitionRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // A map of strings to plain numbers: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read back like anything else off disk: checked, never trusted. (The
    /// partition's cells are validated against the layout by the replicant.)
    pub(crate) fn decode(b: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("partition: {e}")))
    }
}

/// What `Store::gate_arrive` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    /// The entity row and the transfer id were committed together, now.
    Inserted,
    /// The transfer id was already committed (a retry): nothing was written.
    Replayed,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Bumps and returns the replicant generation (fencing epochs embed it).
    async fn begin_generation(&self) -> Result<u64, StoreError>;
    /// Atomically applies a batch. An entity row is only replaced by a higher version.
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError>;
    async fn load_all(&self) -> Result<Vec<Entity>, StoreError>;
    async fn load(&self, ids: &[EntityId]) -> Result<Vec<Entity>, StoreError>;
    fn name(&self) -> &'static str;

    /// The partition last saved, if any.
    async fn load_partition(&self) -> Result<Option<PartitionRecord>, StoreError>;
    /// Saves the partition, unless a newer version is stored already (saves
    /// of successive changes may finish out of order).
    async fn save_partition(&self, record: &PartitionRecord) -> Result<(), StoreError>;

    // Jump gates (see `replicant::gate`). Each call is one atomic transaction.

    /// Source, step 1: records the transfer `InTransit` and deletes the entity's
    /// row (unless a newer version is stored). Recovery skips entity rows that
    /// have a transfer record, so a row re-written by a racing group commit
    /// cannot resurrect the ship either.
    async fn gate_depart(&self, t: &Outbound) -> Result<(), StoreError>;
    /// Source, step 2 (target accepted): marks the transfer `Departed`, if it is
    /// still the entity's current transfer.
    async fn gate_departed(&self, id: EntityId, transfer_id: &str) -> Result<(), StoreError>;
    /// Source, step 2 (target refused): the entity comes back (`entity`, a newer
    /// version) and the transfer record goes, if it is still the current one.
    async fn gate_return(&self, transfer_id: &str, entity: &Entity) -> Result<(), StoreError>;
    /// Target: inserts the arriving entity and remembers `transfer_id`, unless
    /// that transfer id was already applied (then changes nothing). Also drops
    /// any transfer record of this id here (its tombstone: it is back).
    async fn gate_arrive(&self, transfer_id: &str, entity: &Entity) -> Result<Arrived, StoreError>;
    /// Target: was this transfer applied here already?
    async fn gate_arrival_seen(&self, transfer_id: &str) -> Result<bool, StoreError>;
    /// Every transfer record (in transit and departed), for recovery.
    async fn gate_load(&self) -> Result<Vec<Outbound>, StoreError>;
}

pub(crate) fn encode_outbound(t: &Outbound) -> Vec<u8> {
    pb::GateTransferRecord {
        transfer_id: t.transfer_id.to_string(),
        entity: Some(validate::entity_to_pb(&t.entity)),
        source_gate: t.source_gate.to_string(),
        target_system: t.target_system.to_string(),
        target_gate: t.target_gate.to_string(),
        server: t.server.to_string(),
    }
    .encode_to_vec()
}

/// Records read back are validated like anything else off disk.
pub(crate) fn decode_outbound(phase: i64, b: &[u8]) -> Result<Outbound, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let r = pb::GateTransferRecord::decode(b).map_err(|e| corrupt(&e))?;
    let name = |s: &str| -> Result<Arc<str>, StoreError> {
        if s.is_empty() || s.len() > validate::MAX_NAME_LEN {
            return Err(StoreError::Corrupt(format!("gate transfer name {s:?}")));
        }
        Ok(Arc::from(s))
    };
    let entity =
        r.entity.ok_or_else(|| StoreError::Corrupt("gate transfer without entity".into()))?;
    Ok(Outbound {
        transfer_id: validate::transfer_id(&r.transfer_id, "transfer_id")
            .map_err(|e| corrupt(&e))?,
        entity: validate::entity_from_pb(entity).map_err(|e| corrupt(&e))?,
        source_gate: name(&r.source_gate)?,
        target_system: name(&r.target_system)?,
        target_gate: name(&r.target_gate)?,
        server: name(&r.server)?,
        phase: OutboundPhase::from_code(phase)?,
    })
}

pub(crate) fn encode(e: &Entity) -> Vec<u8> {
    validate::entity_to_pb(e).encode_to_vec()
}

pub(crate) fn decode(b: &[u8]) -> Result<Entity, StoreError> {
    let pb = pb::EntityState::decode(b).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    validate::entity_from_pb(pb).map_err(|e| StoreError::Corrupt(e.to_string()))
}
