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

use super::{CommitBatch, Store, StoreError, decode, encode};
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

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Ids and versions are u64 in the domain; stored bit-for-bit as BIGINT.
fn to_sql(v: u64) -> i64 {
    v as i64
}

impl PostgresStore {
    /// Connects and creates the schema; fails if the server is unreachable
    /// (startup should fail loudly rather than serve without a store).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let s = Self { url: url.to_string(), client: Mutex::new(None) };
        s.with_client(|c| {
            Box::pin(async move { c.batch_execute(SCHEMA).await.map_err(unavailable) })
        })
        .await?;
        Ok(s)
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
}
