//! The embedded store: redb in a data folder. Every commit is one redb write
//! transaction with immediate durability (fsync), so a committed tick
//! survives `kill -9` and power loss.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Arrived, CommitBatch, Outbound, OutboundPhase, PartitionRecord, Store, StoreError, decode,
    decode_outbound, encode, encode_outbound,
};
use crate::model::{Entity, EntityId};

const ENTITIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entities");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Jump-gate transfers started here: entity id -> phase byte + `GateTransferRecord`.
const GATE_OUT: TableDefinition<u64, &[u8]> = TableDefinition::new("gate_outbound");
/// Jump-gate transfers applied here (the idempotency table): transfer id -> entity id.
const GATE_ARRIVALS: TableDefinition<&str, u64> = TableDefinition::new("gate_arrivals");
/// Records kept as bytes by key: `partition` (a `PartitionRecord`).
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` after a failed operation: redb refuses every later transaction
    /// once an I/O error (e.g. ENOSPC on a full volume) hit it ("close and
    /// re-open the database"), so the next operation opens the file again
    /// instead of failing forever.
    db: Mutex<Option<Arc<Database>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let path = dir.join("starmesh.redb");
        let db = Database::create(&path).map_err(unavailable)?;
        let tx = db.begin_write().map_err(unavailable)?;
        tx.open_table(ENTITIES).map_err(unavailable)?;
        tx.open_table(META).map_err(unavailable)?;
        tx.open_table(GATE_OUT).map_err(unavailable)?;
        tx.open_table(GATE_ARRIVALS).map_err(unavailable)?;
        tx.open_table(RECORDS).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(Self { path, db: Mutex::new(Some(Arc::new(db))) })
    }

    /// redb is synchronous: run it on the blocking pool, off the reactor.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = {
            let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(db) => db.clone(),
                None => {
                    // Fails (DatabaseAlreadyOpen) while an operation still holds
                    // the old handle; the caller retries.
                    let db = Arc::new(Database::create(&self.path).map_err(unavailable)?);
                    tracing::info!(path = %self.path.display(), "embedded store re-opened after an I/O error");
                    *slot = Some(db.clone());
                    db
                }
            }
        };
        let r = tokio::task::spawn_blocking({
            let db = db.clone();
            move || f(&db)
        })
        .await
        .map_err(unavailable)?;
        if matches!(r, Err(StoreError::Unavailable(_))) {
            // Drop this handle so the next operation re-opens the file (only
            // if nobody re-opened it meanwhile).
            let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &db)) {
                *slot = None;
            }
        }
        r
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn begin_generation(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let g = {
                let mut t = tx.open_table(META).map_err(unavailable)?;
                let g = t.get("generation").map_err(unavailable)?.map_or(0, |v| v.value()) + 1;
                t.insert("generation", g).map_err(unavailable)?;
                g
            };
            tx.commit().map_err(unavailable)?;
            Ok(g)
        })
        .await
    }

    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let rows: Vec<(u64, u64, Vec<u8>)> =
            batch.entities.iter().map(|e| (e.id, e.version, encode(e))).collect();
        let tick = batch.tick;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut t = tx.open_table(ENTITIES).map_err(unavailable)?;
                for (id, version, bytes) in &rows {
                    // Never let an older version overwrite a newer one (coalesced retries).
                    let newer = match t.get(*id).map_err(unavailable)? {
                        Some(old) => decode(old.value())?.version < *version,
                        None => true,
                    };
                    if newer {
                        t.insert(*id, bytes.as_slice()).map_err(unavailable)?;
                    }
                }
                let mut m = tx.open_table(META).map_err(unavailable)?;
                m.insert("last_tick", tick).map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn load_all(&self) -> Result<Vec<Entity>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(ENTITIES).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn load(&self, ids: &[EntityId]) -> Result<Vec<Entity>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(ENTITIES).map_err(unavailable)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(v) = t.get(id).map_err(unavailable)? {
                    out.push(decode(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn load_partition(&self) -> Result<Option<PartitionRecord>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(RECORDS).map_err(unavailable)?;
            let v = t.get("partition").map_err(unavailable)?;
            v.map(|v| PartitionRecord::decode(v.value())).transpose()
        })
        .await
    }

    async fn save_partition(&self, record: &PartitionRecord) -> Result<(), StoreError> {
        let (version, bytes) = (record.version, record.encode());
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut t = tx.open_table(RECORDS).map_err(unavailable)?;
                let newer = match t.get("partition").map_err(unavailable)? {
                    Some(old) => PartitionRecord::decode(old.value())?.version < version,
                    None => true,
                };
                if newer {
                    t.insert("partition", bytes.as_slice()).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn gate_depart(&self, t: &Outbound) -> Result<(), StoreError> {
        let (id, version) = (t.entity.id, t.entity.version);
        let mut row = vec![OutboundPhase::InTransit.code()];
        row.extend(encode_outbound(t));
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut out = tx.open_table(GATE_OUT).map_err(unavailable)?;
                out.insert(id, row.as_slice()).map_err(unavailable)?;
                let mut ents = tx.open_table(ENTITIES).map_err(unavailable)?;
                let older = match ents.get(id).map_err(unavailable)? {
                    Some(old) => decode(old.value())?.version <= version,
                    None => false,
                };
                if older {
                    ents.remove(id).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn gate_departed(&self, id: EntityId, transfer_id: &str) -> Result<(), StoreError> {
        let transfer_id = transfer_id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut out = tx.open_table(GATE_OUT).map_err(unavailable)?;
                let current = out.get(id).map_err(unavailable)?.map(|v| v.value().to_vec());
                if let Some(mut row) = current
                    && let Some((_, rec)) = row.split_first()
                    && *decode_outbound(i64::from(OutboundPhase::InTransit.code()), rec)?
                        .transfer_id
                        == *transfer_id
                {
                    row[0] = OutboundPhase::Departed.code();
                    out.insert(id, row.as_slice()).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn gate_return(&self, transfer_id: &str, entity: &Entity) -> Result<(), StoreError> {
        let transfer_id = transfer_id.to_string();
        let (id, version, bytes) = (entity.id, entity.version, encode(entity));
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut out = tx.open_table(GATE_OUT).map_err(unavailable)?;
                let current = match out.get(id).map_err(unavailable)? {
                    Some(v) => match v.value().split_first() {
                        Some((phase, rec)) => {
                            Some(decode_outbound(i64::from(*phase), rec)?.transfer_id)
                        }
                        None => return Err(StoreError::Corrupt("empty gate record".into())),
                    },
                    None => None,
                };
                // Only the transfer that is still current may bring the entity
                // back; anything else was overtaken (the entity arrived back here).
                if current.as_deref() == Some(transfer_id.as_str()) {
                    out.remove(id).map_err(unavailable)?;
                    upsert(&tx, id, version, &bytes)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn gate_arrive(&self, transfer_id: &str, entity: &Entity) -> Result<Arrived, StoreError> {
        let transfer_id = transfer_id.to_string();
        let (id, version, bytes) = (entity.id, entity.version, encode(entity));
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let arrived = {
                let mut arrivals = tx.open_table(GATE_ARRIVALS).map_err(unavailable)?;
                if arrivals.get(transfer_id.as_str()).map_err(unavailable)?.is_some() {
                    Arrived::Replayed
                } else {
                    arrivals.insert(transfer_id.as_str(), id).map_err(unavailable)?;
                    upsert(&tx, id, version, &bytes)?;
                    tx.open_table(GATE_OUT)
                        .map_err(unavailable)?
                        .remove(id)
                        .map_err(unavailable)?;
                    Arrived::Inserted
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(arrived)
        })
        .await
    }

    async fn gate_arrival_seen(&self, transfer_id: &str) -> Result<bool, StoreError> {
        let transfer_id = transfer_id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(GATE_ARRIVALS).map_err(unavailable)?;
            Ok(t.get(transfer_id.as_str()).map_err(unavailable)?.is_some())
        })
        .await
    }

    async fn gate_load(&self) -> Result<Vec<Outbound>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(GATE_OUT).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                let Some((phase, rec)) = v.value().split_first() else {
                    return Err(StoreError::Corrupt("empty gate record".into()));
                };
                out.push(decode_outbound(i64::from(*phase), rec)?);
            }
            Ok(out)
        })
        .await
    }
}

/// Writes an entity row unless a newer version is stored (inside `tx`).
fn upsert(
    tx: &redb::WriteTransaction,
    id: u64,
    version: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let mut t = tx.open_table(ENTITIES).map_err(unavailable)?;
    let newer = match t.get(id).map_err(unavailable)? {
        Some(old) => decode(old.value())?.version < version,
        None => true,
    };
    if newer {
        t.insert(id, bytes).map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Vec3;

    fn ent(id: u64, version: u64) -> Entity {
        Entity {
            id,
            kind: 1,
            position: Vec3::new(1.0, 2.0, 3.0),
            velocity: Vec3::default(),
            location: "l".into(),
            version,
            components: bytes::Bytes::from_static(b"c"),
            components_version: 1,
            territory: "t".into(),
        }
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_versions_never_regress() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(s.begin_generation().await.unwrap(), 1);
            s.commit(&CommitBatch { tick: 1, entities: vec![ent(1, 5), ent(2, 1)] }).await.unwrap();
            s.commit(&CommitBatch { tick: 2, entities: vec![ent(1, 3)] }).await.unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.begin_generation().await.unwrap(), 2);
        let mut all = s.load_all().await.unwrap();
        all.sort_by_key(|e| e.id);
        assert_eq!(all, vec![ent(1, 5), ent(2, 1)]);
        assert_eq!(s.load(&[2, 99]).await.unwrap(), vec![ent(2, 1)]);
    }

    #[tokio::test]
    async fn the_partition_survives_reopen_and_an_older_save_never_wins() {
        use starmesh_api::partition::{Axis, Partition, Plane};
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partition::default();
        p.split("earth", Plane { axis: Axis::X, at: 1.5 });
        let newer = PartitionRecord { version: 2, partition: p };
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(s.load_partition().await.unwrap(), None);
            s.save_partition(&newer).await.unwrap();
            s.save_partition(&PartitionRecord { version: 1, partition: Partition::default() })
                .await
                .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.load_partition().await.unwrap(), Some(newer));
    }
}
