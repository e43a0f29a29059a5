//! Where committed state lives. One trait, two stores: `embedded` (redb, a
//! folder; the default) and `postgres`.
//!
//! The model: a store keeps the latest committed state of every entity
//! (a continuously maintained snapshot, one row per entity) and each commit is
//! one tick's (or several coalesced ticks') changes applied atomically. The
//! per-tick log is the replicant's in-memory write-behind queue; nothing is
//! acknowledged to a writer before the commit that contains it returns, so
//! the queue may be lost in a crash without losing anything acknowledged.
//! Recovery reads the rows: its time is bounded by the number of entities,
//! never by the length of history.

pub mod embedded;
pub mod postgres;

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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Bumps and returns the replicant generation (fencing epochs embed it).
    async fn begin_generation(&self) -> Result<u64, StoreError>;
    /// Atomically applies a batch. An entity row is only replaced by a higher version.
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError>;
    async fn load_all(&self) -> Result<Vec<Entity>, StoreError>;
    async fn load(&self, ids: &[EntityId]) -> Result<Vec<Entity>, StoreError>;
    fn name(&self) -> &'static str;
}

pub(crate) fn encode(e: &Entity) -> Vec<u8> {
    validate::entity_to_pb(e).encode_to_vec()
}

pub(crate) fn decode(b: &[u8]) -> Result<Entity, StoreError> {
    let pb = pb::EntityState::decode(b).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    validate::entity_from_pb(pb).map_err(|e| StoreError::Corrupt(e.to_string()))
}
