//! The PostgreSQL store: the same population in a database a ministry runs, shared by
//! every replica.
//!
//! # Client
//! tokio-postgres with a deadpool-postgres pool: asynchronous, no database needed at
//! build time (sqlx's checked queries want one), prepared statements cached per
//! connection (`prepare_cached`), binary COPY for imports. Every call runs under the
//! store's timeout (pool wait, connect and query together), and each connection sets
//! `statement_timeout` so the server stops work nobody waits for. One lookup is one
//! round trip: one prepared statement, no transaction.
//!
//! # Schema
//! `migrations/postgres/*.sql`, applied in order by [`SCHEMA`] (the import applies it) and
//! recorded in `popgw_schema_migrations`. An import COPYs into `citizens_staging`, builds
//! the indexes (a duplicate id fails there, and the offending line is looked up), then
//! swaps it in for `citizens` in one transaction: a stopped import leaves the served
//! table untouched (the staging table is dropped by the next import).
//!
//! # Change feed
//! An update takes the `head` row of `popgw_registry_meta` with `UPDATE … RETURNING`,
//! which locks it until commit: updates are serialised, so versions become visible in
//! order and a follower reading "changes after v" never skips one committed later.

use std::time::Duration;

use deadpool_postgres::Pool;
use prost::Message;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use std::sync::Arc;

use super::household;
use super::import::{id_number, ImportError, ImportSummary};
use super::{
    check_resume, import_version_base, polled_feed, Change, ChangeStream, Deadline, Invalid,
    LookupKey, Registry, RegistryError, Store, StoreOptions, Unavailable, Versions,
};
use crate::link::postgres::{Migrations, PgFailure, PgLink};
use crate::proto::registry::{CitizenRecord, Household};

/// The migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    include_str!("../../migrations/postgres/0001_registry.sql"),
)];

/// Advisory lock key held by migrations and imports (one at a time per database).
const LOCK_KEY: i64 = 0x706f_7067_7772_6567; // "popgwreg"

fn pool_err(e: deadpool_postgres::PoolError, link: &PgLink, timeout: Duration) -> RegistryError {
    Unavailable::Pool(link.pool_error(e, timeout)).into()
}

fn decode(bytes: &[u8]) -> Result<CitizenRecord, RegistryError> {
    CitizenRecord::decode(bytes).map_err(|e| Invalid::record(e).into())
}

fn link(url: &str) -> Result<PgLink, RegistryError> {
    PgLink::parse(url).map_err(|e| Unavailable::Link(Arc::new(e)).into())
}

/// The registry's schema: [`MIGRATIONS`], recorded in `popgw_schema_migrations`, applied
/// by an import.
pub const SCHEMA: Migrations = Migrations {
    list: MIGRATIONS,
    table: "popgw_schema_migrations",
    lock: LOCK_KEY,
};

/// A population in PostgreSQL (see the module documentation).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    link: Arc<PgLink>,
    timeout: Duration,
    changes_kept: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("link", &self.link)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PgStore {
    /// A pool on `url`. Checks at once that the database answers and holds an imported
    /// registry schema (the pool itself connects lazily).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<PgStore, RegistryError> {
        let link = Arc::new(link(url)?);
        let statement_timeout = format!(
            "-c statement_timeout={}",
            options.timeout.as_millis().max(1)
        );
        let pool = link
            .pool(
                "popgw",
                &statement_timeout,
                options.pool_size,
                options.timeout,
            )
            .map_err(|e| RegistryError::from(Unavailable::Link(Arc::new(e))))?;
        let store = PgStore {
            pool,
            link,
            timeout: options.timeout,
            changes_kept: options.changes_kept.max(1),
        };
        let applied: i32 = store
            .call(|c| async move {
                let row = c
                    .query_one(
                        "SELECT coalesce(max(version), 0) FROM popgw_schema_migrations",
                        &[],
                    )
                    .await
                    .map_err(|e| match RegistryError::from(e) {
                        // No such table (SQLSTATE 42P01): not a registry's database.
                        RegistryError::Unavailable(Unavailable::Postgres(PgFailure::Server {
                            message,
                            code,
                        })) if code == SqlState::UNDEFINED_TABLE => {
                            Unavailable::NoRegistry { message }.into()
                        }
                        other => other,
                    })?;
                Ok(row.get(0))
            })
            .await?;
        let latest = SCHEMA.latest();
        if applied != latest {
            return Err(Unavailable::Schema {
                applied,
                needed: latest,
            }
            .into());
        }
        Ok(store)
    }

    /// Runs `f` on a pooled connection, the whole under the store's timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        self.call_until(Deadline::after(self.timeout), f).await
    }

    /// Runs `f` on a pooled connection, the whole (pool wait, connect, query) until
    /// `deadline`.
    async fn call_until<T, F, Fut>(&self, deadline: Deadline, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        deadline
            .run("PostgreSQL", async {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| pool_err(e, &self.link, self.timeout))?;
                f(client).await
            })
            .await
    }

    /// The records a one-parameter query returns (its first column is `record`).
    async fn records<P: ToSql + Sync + Send + 'static>(
        &self,
        sql: &'static str,
        key: P,
        deadline: Deadline,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        self.call_until(deadline.capped(self.timeout), |c| async move {
            let stmt = c.prepare_cached(sql).await.map_err(RegistryError::from)?;
            let rows = c.query(&stmt, &[&key]).await.map_err(RegistryError::from)?;
            rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
        })
        .await
    }

    /// Imports `records` (read on a blocking thread) into `url`, creating or migrating
    /// the schema, and swaps them in atomically; see the module documentation.
    pub async fn import(
        url: &str,
        records: impl Iterator<Item = Result<(u64, CitizenRecord), ImportError>> + Send + 'static,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<ImportSummary, ImportError> {
        let store_err = |e: RegistryError| ImportError::Store(e.to_string());
        let sql_err =
            |e: tokio_postgres::Error| ImportError::Store(RegistryError::from(e).to_string());
        let link = link(url).map_err(store_err)?;
        if let Some(name) = link
            .create_database_if_missing(Duration::from_secs(30))
            .await
            .map_err(ImportError::Store)?
        {
            tracing::info!(database = %name, "created the registry's database");
        }
        let mut client = link
            .connect("popgw", Duration::from_secs(30))
            .await
            .map_err(ImportError::Store)?;
        // No statement timeout for the bulk work of an import.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(sql_err)?;
        // One import at a time. Wait a little: the server may not yet have noticed that
        // the client of an import just killed is gone (its session lock goes with it).
        client
            .batch_execute("SET lock_timeout = '10s'")
            .await
            .map_err(sql_err)?;
        if let Err(e) = client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
        {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(ImportError::Store(
                    "another import into this database is running".into(),
                ));
            }
            return Err(sql_err(e));
        }
        client
            .batch_execute("SET lock_timeout = 0")
            .await
            .map_err(sql_err)?;
        SCHEMA
            .apply(&mut client)
            .await
            .map_err(RegistryError::from)
            .map_err(store_err)?;
        let head: i64 = client
            .query_one(
                "SELECT value FROM popgw_registry_meta WHERE key = 'head'",
                &[],
            )
            .await
            .map_err(sql_err)?
            .get(0);
        let version = import_version_base(head.max(0) as u64);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS citizens_staging;
                 CREATE TABLE citizens_staging (LIKE citizens INCLUDING DEFAULTS);
                 ALTER TABLE citizens_staging ADD COLUMN line bigint NOT NULL;",
            )
            .await
            .map_err(sql_err)?;

        // Rows are read, checked and encoded on a blocking thread, in batches through a
        // bounded channel: memory stays bounded whatever the input's size.
        type Row = (i64, i64, Option<i64>, Option<String>, Vec<u8>);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Row>, ImportError>>(8);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(1000);
            for item in records {
                let row = item.map(|(line, mut r)| {
                    r.version = version;
                    (
                        line as i64,
                        id_number(&r.personal_id, 12).unwrap_or(0) as i64,
                        id_number(&r.old_id_number, 9).map(|n| n as i64),
                        r.household
                            .as_ref()
                            .map(|h| h.household_id.clone())
                            .filter(|h| !h.is_empty()),
                        r.encode_to_vec(),
                    )
                });
                match row {
                    Ok(row) => {
                        batch.push(row);
                        if batch.len() == 1000 {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(1000));
                            if tx.blocking_send(Ok(full)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.blocking_send(Ok(batch));
        });
        let sink = client
            .copy_in(
                "COPY citizens_staging (line, personal_id, old_id, household_id, version, record) \
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(sql_err)?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::BYTEA,
            ],
        );
        let mut writer = std::pin::pin!(writer);
        let version_i = version as i64;
        let mut count = 0u64;
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            for (line, id, old, household, record) in &batch {
                let row: [&(dyn ToSql + Sync); 6] = [line, id, old, household, &version_i, record];
                writer.as_mut().write(&row).await.map_err(sql_err)?;
            }
            count += batch.len() as u64;
            progress(count);
        }
        // A reader that panicked closed the channel early: that is not the end of the input.
        reader
            .await
            .map_err(|e| ImportError::Store(format!("reading the input failed: {e}")))?;
        writer.as_mut().finish().await.map_err(sql_err)?;

        // Indexes; a duplicate fails here and its line is looked up.
        for (ddl, column, what) in [
            (
                "ALTER TABLE citizens_staging ADD CONSTRAINT citizens_staging_pkey PRIMARY KEY (personal_id)",
                "personal_id",
                "personal_id",
            ),
            (
                "CREATE UNIQUE INDEX citizens_staging_old_id ON citizens_staging (old_id)",
                "old_id",
                "old_id_number",
            ),
        ] {
            if let Err(e) = client.batch_execute(ddl).await {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    let sql = format!(
                        "SELECT line FROM citizens_staging s WHERE {column} IN \
                         (SELECT {column} FROM citizens_staging WHERE {column} IS NOT NULL \
                          GROUP BY {column} HAVING count(*) > 1) ORDER BY line OFFSET 1 LIMIT 1"
                    );
                    let line: i64 = client
                        .query_one(sql.as_str(), &[])
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or(0);
                    let _ = client.batch_execute("DROP TABLE citizens_staging").await;
                    return Err(ImportError::Line {
                        line: line as u64,
                        message: format!("duplicate {what}"),
                    });
                }
                return Err(sql_err(e));
            }
        }
        client
            .batch_execute(
                "CREATE INDEX citizens_staging_household ON citizens_staging (household_id);
                 ALTER TABLE citizens_staging DROP COLUMN line;
                 ANALYZE citizens_staging;",
            )
            .await
            .map_err(sql_err)?;
        // The swap: one transaction, so readers see the old table or the new one. Locks in
        // the order an update takes them (citizens, then the head row), so the two never
        // deadlock; an update made since the import began fails the import (it would be lost).
        let txn = client.transaction().await.map_err(sql_err)?;
        txn.batch_execute(
            "LOCK TABLE citizens IN ACCESS EXCLUSIVE MODE;
             LOCK TABLE popgw_registry_meta IN EXCLUSIVE MODE;",
        )
        .await
        .map_err(sql_err)?;
        let head_now: i64 = txn
            .query_one(
                "SELECT value FROM popgw_registry_meta WHERE key = 'head'",
                &[],
            )
            .await
            .map_err(sql_err)?
            .get(0);
        if head_now != head {
            drop(txn);
            let _ = client.batch_execute("DROP TABLE citizens_staging").await;
            return Err(ImportError::Store(format!(
                "the store was updated {} times during the import; nothing was switched \
                 (import again, or stop the updates first)",
                head_now - head
            )));
        }
        txn.batch_execute(
            "DROP TABLE citizens;
             ALTER TABLE citizens_staging RENAME TO citizens;
             ALTER INDEX citizens_staging_pkey RENAME TO citizens_pkey;
             ALTER INDEX citizens_staging_old_id RENAME TO citizens_old_id;
             ALTER INDEX citizens_staging_household RENAME TO citizens_household;
             TRUNCATE citizen_changes;",
        )
        .await
        .map_err(sql_err)?;
        let count_i = count as i64;
        for (key, value) in [
            ("head", &version_i),
            ("floor", &version_i),
            ("count", &count_i),
        ] {
            txn.execute(
                "UPDATE popgw_registry_meta SET value = $2 WHERE key = $1",
                &[&key, value],
            )
            .await
            .map_err(sql_err)?;
        }
        txn.commit().await.map_err(sql_err)?;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
        Ok(ImportSummary {
            imported: count,
            version,
        })
    }
}

#[tonic::async_trait]
impl Registry for PgStore {
    async fn citizen(
        &self,
        key: &LookupKey,
        deadline: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let (sql, id) = match key {
            LookupKey::PersonalId(s) => (
                "SELECT record FROM citizens WHERE personal_id = $1",
                id_number(s, 12),
            ),
            LookupKey::OldId(s) => (
                "SELECT record FROM citizens WHERE old_id = $1",
                id_number(s, 9),
            ),
        };
        let Some(id) = id else { return Ok(None) };
        Ok(self
            .records(sql, id as i64, deadline)
            .await?
            .into_iter()
            .next())
    }

    async fn household(
        &self,
        household_id: &str,
        deadline: Deadline,
    ) -> Result<Option<Household>, RegistryError> {
        let records = self
            .records(
                "SELECT record FROM citizens WHERE household_id = $1",
                household_id.to_string(),
                deadline,
            )
            .await?;
        Ok(household::from_records(household_id, &records))
    }

    async fn citizens(
        &self,
        personal_ids: &[String],
        deadline: Deadline,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        let ids: Vec<i64> = personal_ids
            .iter()
            .filter_map(|s| id_number(s, 12))
            .map(|n| n as i64)
            .collect();
        let mut records = self
            .records(
                "SELECT record FROM citizens WHERE personal_id = ANY($1)",
                ids,
                deadline,
            )
            .await?;
        // In the order asked.
        let order: std::collections::HashMap<&str, usize> = personal_ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .rev()
            .collect();
        records.sort_by_key(|r| {
            order
                .get(r.personal_id.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        Ok(records)
    }

    async fn changes(&self, from: u64) -> Result<ChangeStream, RegistryError> {
        Ok(polled_feed(Arc::new(self.clone()), from))
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[tonic::async_trait]
impl Store for PgStore {
    async fn versions(&self) -> Result<Versions, RegistryError> {
        self.call(|c| async move {
            let stmt = c
                .prepare_cached(
                    "SELECT max(value) FILTER (WHERE key = 'head'), max(value) FILTER (WHERE key = 'floor') \
                     FROM popgw_registry_meta",
                )
                .await
                .map_err(RegistryError::from)?;
            let row = c.query_one(&stmt, &[]).await.map_err(RegistryError::from)?;
            let head: Option<i64> = row.get(0);
            let floor: Option<i64> = row.get(1);
            Ok(Versions {
                head: head.unwrap_or(0) as u64,
                floor: floor.unwrap_or(0) as u64,
            })
        })
        .await
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        // One statement, one snapshot: the head, the floor and the changes agree.
        let (after_i, limit_i) = (after as i64, limit as i64);
        let rows = self
            .call(|c| async move {
                let stmt = c
                    .prepare_cached(
                        "WITH m AS (SELECT max(value) FILTER (WHERE key = 'head') AS head, \
                                           max(value) FILTER (WHERE key = 'floor') AS floor \
                                    FROM popgw_registry_meta) \
                         SELECT m.head, m.floor, c.record FROM m LEFT JOIN LATERAL \
                           (SELECT record, version FROM citizen_changes \
                            WHERE version > $1 AND version <= m.head ORDER BY version LIMIT $2) c ON true \
                         ORDER BY c.version",
                    )
                    .await
                    .map_err(RegistryError::from)?;
                c.query(&stmt, &[&after_i, &limit_i]).await.map_err(RegistryError::from)
            })
            .await?;
        let Some(first) = rows.first() else {
            return Err(Invalid::MetaMissing.into());
        };
        let head: Option<i64> = first.get(0);
        let floor: Option<i64> = first.get(1);
        check_resume(
            after,
            Versions {
                head: head.unwrap_or(0) as u64,
                floor: floor.unwrap_or(0) as u64,
            },
        )?;
        rows.iter()
            .filter_map(|r| r.get::<_, Option<&[u8]>>(2))
            .map(decode)
            .collect()
    }

    async fn update(
        &self,
        personal_id: &str,
        change: &Change,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let Some(id) = id_number(personal_id, 12).map(|n| n as i64) else {
            return Ok(None);
        };
        let kept = self.changes_kept as i64;
        let change = change.clone();
        self.call(|mut c| async move {
            let txn = c.transaction().await.map_err(RegistryError::from)?;
            let Some(row) = txn
                .query_opt(
                    "SELECT record FROM citizens WHERE personal_id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(RegistryError::from)?
            else {
                return Ok(None);
            };
            let mut record = decode(row.get::<_, &[u8]>(0))?;
            change
                .apply(&mut record)
                .map_err(|e| RegistryError::from(Invalid::Change(e)))?;
            // Locks the head row until commit: updates are serialised.
            let version: i64 = txn
                .query_one(
                    "UPDATE popgw_registry_meta SET value = value + 1 WHERE key = 'head' RETURNING value",
                    &[],
                )
                .await
                .map_err(RegistryError::from)?
                .get(0);
            record.version = version as u64;
            let bytes = record.encode_to_vec();
            txn.execute(
                "UPDATE citizens SET record = $2, version = $3 WHERE personal_id = $1",
                &[&id, &bytes, &version],
            )
            .await
            .map_err(RegistryError::from)?;
            txn.execute(
                "INSERT INTO citizen_changes (version, personal_id, record) VALUES ($1, $2, $3)",
                &[&version, &id, &bytes],
            )
            .await
            .map_err(RegistryError::from)?;
            // Compaction: keep the newest `changes_kept` changes.
            let floor: i64 = txn
                .query_one("SELECT value FROM popgw_registry_meta WHERE key = 'floor'", &[])
                .await
                .map_err(RegistryError::from)?
                .get(0);
            if version - floor > kept {
                let new_floor = version - kept;
                txn.execute("DELETE FROM citizen_changes WHERE version <= $1", &[&new_floor])
                    .await
                    .map_err(RegistryError::from)?;
                txn.execute(
                    "UPDATE popgw_registry_meta SET value = $1 WHERE key = 'floor'",
                    &[&new_floor],
                )
                .await
                .map_err(RegistryError::from)?;
            }
            txn.commit().await.map_err(RegistryError::from)?;
            Ok(Some(record))
        })
        .await
    }

    async fn count(&self) -> Result<u64, RegistryError> {
        self.call(|c| async move {
            let row = c
                .query_one(
                    "SELECT value FROM popgw_registry_meta WHERE key = 'count'",
                    &[],
                )
                .await
                .map_err(RegistryError::from)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .await
    }

    async fn examples(&self, n: usize) -> Result<Vec<CitizenRecord>, RegistryError> {
        let records = self
            .call(|c| async move {
                let rows = c
                    .query(
                        "SELECT record FROM citizens ORDER BY personal_id LIMIT 200",
                        &[],
                    )
                    .await
                    .map_err(RegistryError::from)?;
                rows.iter()
                    .map(|r| decode(r.get::<_, &[u8]>(0)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(records
            .into_iter()
            .filter(super::is_example)
            .take(n)
            .collect())
    }
}
