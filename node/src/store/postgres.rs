//! The PostgreSQL store, through tokio-postgres. The schema is two plain
//! tables with primary keys and no server-side functions, and each commit is
//! one multi-row `INSERT .. ON CONFLICT` from `UNNEST` arrays, which
//! PostgreSQL-wire distributed databases (CockroachDB, YugabyteDB) accept too.
//!
//! A lost connection is dropped and re-established on the next call, so the
//! replicant's retry loop is all that is needed to ride out a restart.

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{
    Arrived, CommitBatch, Outbound, OutboundPhase, PartitionRecord, Store, StoreError, decode,
    decode_outbound, encode, encode_outbound,
};
use crate::model::{Entity, EntityId};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS starmesh_entities (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    state BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS starmesh_meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS starmesh_gate_outbound (
    entity_id BIGINT PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    phase SMALLINT NOT NULL,
    record BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS starmesh_gate_arrivals (
    transfer_id TEXT PRIMARY KEY,
    entity_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS starmesh_partition (
    id SMALLINT PRIMARY KEY,
    version BIGINT NOT NULL,
    record BYTEA NOT NULL
);";

const UPSERT: &str = "
INSERT INTO starmesh_entities (id, version, state)
SELECT * FROM UNNEST($1::INT8[], $2::INT8[], $3::BYTEA[])
ON CONFLICT (id) DO UPDATE SET version = excluded.version, state = excluded.state
WHERE starmesh_entities.version < excluded.version";

pub struct PostgresStore {
    url: String,
    client: Mutex<Option<Client>>,
}

/// The whole error chain: tokio-postgres says only "db error" at the top, and the server's
/// reason (a refused password, a missing database) is what an SRE needs. Neither level
/// carries the connection string, so no password reaches the log
/// (`tests/postgres_store.rs`).
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Unavailable(text)
}

/// Ids and versions are u64 in the domain; stored bit-for-bit as BIGINT.
fn to_sql(v: u64) -> i64 {
    v as i64
}

impl PostgresStore {
    /// Connects lazily, on first use: a server that is down when the
    /// replicant starts is waited for (the replicant retries and reports
    /// itself not ready) rather than failing the process.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_string(), client: Mutex::new(None) }
    }

    async fn with_client<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Client) -> futures::future::BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, conn) =
                tokio_postgres::connect(&self.url, NoTls).await.map_err(unavailable)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres connection ended");
                }
            });
            // Every new connection makes sure the schema exists (idempotent,
            // cheap), so the store works against a fresh database too.
            client.batch_execute(SCHEMA).await.map_err(unavailable)?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else {
            return Err(StoreError::Unavailable("no client".into()));
        };
        let r = f(client).await;
        if r.is_err() {
            // Drop a possibly broken connection; the next call reconnects.
            *guard = None;
        }
        r
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin_generation(&self) -> Result<u64, StoreError> {
        self.with_client(|c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "INSERT INTO starmesh_meta (key, value) VALUES ('generation', 1)
                         ON CONFLICT (key) DO UPDATE SET value = starmesh_meta.value + 1 RETURNING value",
                        &[],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(row.get::<_, i64>(0) as u64)
            })
        })
        .await
    }

    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let ids: Vec<i64> = batch.entities.iter().map(|e| to_sql(e.id)).collect();
        let versions: Vec<i64> = batch.entities.iter().map(|e| to_sql(e.version)).collect();
        let states: Vec<Vec<u8>> = batch.entities.iter().map(encode).collect();
        let tick = to_sql(batch.tick);
        self.with_client(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                tx.execute(UPSERT, &[&ids, &versions, &states]).await.map_err(unavailable)?;
                tx.execute(
                    "INSERT INTO starmesh_meta (key, value) VALUES ('last_tick', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&tick],
                )
                .await
                .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)
            })
        })
        .await
    }

    async fn load_all(&self) -> Result<Vec<Entity>, StoreError> {
        self.with_client(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT state FROM starmesh_entities", &[])
                    .await
                    .map_err(unavailable)?;
                rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
            })
        })
        .await
    }

    async fn load(&self, ids: &[EntityId]) -> Result<Vec<Entity>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|i| to_sql(*i)).collect();
        self.with_client(move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT state FROM starmesh_entities WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(unavailable)?;
                rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
            })
        })
        .await
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn load_partition(&self) -> Result<Option<PartitionRecord>, StoreError> {
        self.with_client(|c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT record FROM starmesh_partition WHERE id = 1", &[])
                    .await
                    .map_err(unavailable)?;
                row.map(|r| PartitionRecord::decode(r.get::<_, &[u8]>(0))).transpose()
            })
        })
        .await
    }

    async fn save_partition(&self, record: &PartitionRecord) -> Result<(), StoreError> {
        let version = to_sql(record.version);
        let bytes = record.encode();
        self.with_client(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO starmesh_partition (id, version, record) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, record = excluded.record
                     WHERE starmesh_partition.version < excluded.version",
                    &[&version, &bytes],
                )
                .await
                .map_err(unavailable)?;
                Ok(())
            })
        })
        .await
    }

    async fn gate_depart(&self, t: &Outbound) -> Result<(), StoreError> {
        let id = to_sql(t.entity.id);
        let version = to_sql(t.entity.version);
        let transfer_id = t.transfer_id.to_string();
        let phase = i16::from(OutboundPhase::InTransit.code());
        let record = encode_outbound(t);
        self.with_client(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                tx.execute(
                    "INSERT INTO starmesh_gate_outbound (entity_id, transfer_id, phase, record)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (entity_id) DO UPDATE SET transfer_id = excluded.transfer_id,
                       phase = excluded.phase, record = excluded.record",
                    &[&id, &transfer_id, &phase, &record],
                )
                .await
                .map_err(unavailable)?;
                tx.execute(
                    "DELETE FROM starmesh_entities WHERE id = $1 AND version <= $2",
                    &[&id, &version],
                )
                .await
                .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)
            })
        })
        .await
    }

    async fn gate_departed(&self, id: EntityId, transfer_id: &str) -> Result<(), StoreError> {
        let id = to_sql(id);
        let transfer_id = transfer_id.to_string();
        let phase = i16::from(OutboundPhase::Departed.code());
        self.with_client(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE starmesh_gate_outbound SET phase = $3
                     WHERE entity_id = $1 AND transfer_id = $2",
                    &[&id, &transfer_id, &phase],
                )
                .await
                .map_err(unavailable)?;
                Ok(())
            })
        })
        .await
    }

    async fn gate_return(&self, transfer_id: &str, entity: &Entity) -> Result<(), StoreError> {
        let id = to_sql(entity.id);
        let version = to_sql(entity.version);
        let state = encode(entity);
        let transfer_id = transfer_id.to_string();
        self.with_client(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                // Only the transfer that is still current may bring the entity
                // back; anything else was overtaken (it arrived back here).
                let n = tx
                    .execute(
                        "DELETE FROM starmesh_gate_outbound WHERE entity_id = $1 AND transfer_id = $2",
                        &[&id, &transfer_id],
                    )
                    .await
                    .map_err(unavailable)?;
                if n > 0 {
                    tx.execute(UPSERT, &[&vec![id], &vec![version], &vec![state]])
                        .await
                        .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)
            })
        })
        .await
    }

    async fn gate_arrive(&self, transfer_id: &str, entity: &Entity) -> Result<Arrived, StoreError> {
        let id = to_sql(entity.id);
        let version = to_sql(entity.version);
        let state = encode(entity);
        let transfer_id = transfer_id.to_string();
        self.with_client(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                // The primary key on the transfer id is the idempotency check:
                // a retry inserts no row and so writes nothing else either.
                let n = tx
                    .execute(
                        "INSERT INTO starmesh_gate_arrivals (transfer_id, entity_id) VALUES ($1, $2)
                         ON CONFLICT (transfer_id) DO NOTHING",
                        &[&transfer_id, &id],
                    )
                    .await
                    .map_err(unavailable)?;
                if n == 0 {
                    tx.commit().await.map_err(unavailable)?;
                    return Ok(Arrived::Replayed);
                }
                tx.execute(UPSERT, &[&vec![id], &vec![version], &vec![state]])
                    .await
                    .map_err(unavailable)?;
                tx.execute("DELETE FROM starmesh_gate_outbound WHERE entity_id = $1", &[&id])
                    .await
                    .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                Ok(Arrived::Inserted)
            })
        })
        .await
    }

    async fn gate_arrival_seen(&self, transfer_id: &str) -> Result<bool, StoreError> {
        let transfer_id = transfer_id.to_string();
        self.with_client(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT 1 FROM starmesh_gate_arrivals WHERE transfer_id = $1",
                        &[&transfer_id],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(!rows.is_empty())
            })
        })
        .await
    }

    async fn gate_load(&self) -> Result<Vec<Outbound>, StoreError> {
        self.with_client(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT phase, record FROM starmesh_gate_outbound", &[])
                    .await
                    .map_err(unavailable)?;
                rows.iter()
                    .map(|r| decode_outbound(i64::from(r.get::<_, i16>(0)), r.get::<_, &[u8]>(1)))
                    .collect()
            })
        })
        .await
    }
}
