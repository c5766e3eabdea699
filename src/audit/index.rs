//! The central audit index: every gateway node's records in PostgreSQL, for questions
//! no single node can answer — an operator's query across the nodes, a citizen's own
//! access report — in a time that does not grow with the log.
//!
//! # Feed
//! The [`Indexer`] (`popgw audit index`, or a task of `popgw serve` with
//! `[audit.index] run = true`) reads the witness stream ([`super::witness`]: the record
//! lines of every sealed batch) through a durable JetStream consumer: it resumes where it
//! stopped, and a message delivered twice (the indexer killed between its commit and its
//! acknowledgement) changes nothing, since every row is keyed by node and seq and
//! inserted with `ON CONFLICT DO NOTHING`. Each message's lines are checked before they
//! are indexed ([`Intake`]): each hash recomputed from the line before it, the lines
//! consecutive, the last one the message's head; with node keys, only records under a
//! seal made by their node's key. A message that fails is not indexed; the problem is
//! kept in `audit_index_problem` (and `verify --index` will report its records missing).
//!
//! # Schema
//! `migrations/audit-index/*.sql` ([`MIGRATIONS`], applied by [`AuditIndex::open`]):
//! `audit_record` (one row per record: the filter columns and the exact JSON) and
//! `audit_person` (one row per person a record is about: subject or related), both
//! partitioned by month; a subject's history is one range scan of `audit_person`'s key.
//! Retention drops whole months ([`AuditIndex::drop_months_before`]).
//!
//! # Evidence
//! The index is a copy for finding records; the chains on the nodes stay the evidence.
//! [`verify_against`] (`popgw audit verify --dir DIR --index URL`) compares a node's
//! folder with the index: a record missing, altered (its JSON, its hash, a filter column
//! or a person row) or invented in the index is named.
//!
//! Nothing here logs a pseudonym, a dossier number or a record's JSON.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::format::{parse_line, Chain, ChainBreak};
use super::witness::Head;
use super::{Filter, RecordBody, StoredRecord};
use crate::link::postgres::PgLink;
use crate::telemetry::Metrics;

/// The index's migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../migrations/audit-index/0001_index.sql"),
    ),
    (
        2,
        include_str!("../../migrations/audit-index/0002_contiguous.sql"),
    ),
];

/// Rows read at most, per node and commit, to move the contiguous mark past a gap that
/// was filled (a gap that stays costs this much a commit, and `verify --index` names it).
const CONTIGUOUS_SCAN: i64 = 10_000;

/// Record times the index takes: 2000-01-01 to 9999-12-31 (Unix milliseconds).
pub const MIN_TIME_MS: i64 = 946_684_800_000;
/// See [`MIN_TIME_MS`].
pub const MAX_TIME_MS: i64 = 253_402_300_799_000;

/// Advisory lock held by migrations and partition changes.
const LOCK_KEY: i64 = 0x706f_7067_7761_7564; // "popgwaud"

/// Where the index is (`[audit.index]`).
#[derive(Clone)]
pub struct IndexConfig {
    /// `postgres://user@host/db`, libpq-style ([`crate::link::postgres::PgLink`]).
    pub url: String,
    /// Every call (pool wait, connect, statement) ends within this.
    pub timeout: Duration,
    /// Connections at most.
    pub pool_size: usize,
}

impl std::fmt::Debug for IndexConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexConfig")
            .field("url", &crate::link::postgres::redact(&self.url))
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl IndexConfig {
    /// A configuration with a 10 s timeout and 4 connections.
    pub fn new(url: impl Into<String>) -> IndexConfig {
        IndexConfig {
            url: url.into(),
            timeout: Duration::from_secs(10),
            pool_size: 4,
        }
    }
}

/// Why the index could not answer or be fed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// PostgreSQL failed or did not answer in time.
    #[error("audit index unavailable: {0}")]
    Unavailable(String),
    /// The witness stream could not be read.
    #[error("audit index feed: {0}")]
    Feed(String),
    /// The node's folder could not be read (verify).
    #[error("audit folder: {0}")]
    Folder(String),
}

fn pg(e: tokio_postgres::Error) -> IndexError {
    // The server's message, never its DETAIL (which can quote a key value).
    match e.as_db_error() {
        Some(db) => IndexError::Unavailable(format!(
            "PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => IndexError::Unavailable(format!("PostgreSQL: {e}")),
    }
}

fn feed(what: &str) -> impl FnOnce(String) -> IndexError + '_ {
    move |e| IndexError::Feed(format!("{what}: {e}"))
}

/// One record as the index holds it.
#[derive(Clone, Debug)]
pub struct IndexedRecord {
    /// The record.
    pub body: RecordBody,
    /// Its hash (hex).
    pub hash: String,
    /// The exact JSON that was hashed.
    pub json: String,
}

impl IndexedRecord {
    fn stored(self) -> StoredRecord {
        StoredRecord {
            body: self.body,
            hash: self.hash,
            json: self.json,
            file: Default::default(),
        }
    }
}

/// One event of a person's history: the record, and whether the person was its subject
/// or a relative / household member whose data it disclosed.
#[derive(Clone, Debug)]
pub struct PersonEvent {
    /// The record.
    pub record: RecordBody,
    /// They were disclosed as someone else's relative or household member.
    pub related: bool,
}

/// The month (`year * 12 + month - 1`) of a time in Unix milliseconds.
fn month_of(ms: i64) -> i32 {
    use chrono::Datelike;
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    t.year() * 12 + t.month0() as i32
}

fn month_start(month: i32) -> String {
    format!("{:04}-{:02}-01 00:00:00+00", month / 12, month % 12 + 1)
}

fn month_suffix(month: i32) -> String {
    format!("p{:04}{:02}", month / 12, month % 12 + 1)
}

/// The month of a partition named `<table>_pYYYYMM`.
fn partition_month(name: &str) -> Option<i32> {
    let digits = name.rsplit_once("_p")?.1;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m): (i32, i32) = (digits[..4].parse().ok()?, digits[4..].parse().ok()?);
    (1..=12).contains(&m).then_some(y * 12 + m - 1)
}

/// The index in PostgreSQL (see the module documentation).
pub struct AuditIndex {
    pool: Pool,
    link: PgLink,
    timeout: Duration,
    months: Mutex<HashSet<i32>>,
}

impl std::fmt::Debug for AuditIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditIndex")
            .field("link", &self.link)
            .field("timeout", &self.timeout)
            .finish()
    }
}

const RECORD_COLUMNS: &str = "r.node, r.seq, r.hash, r.json";

impl AuditIndex {
    /// A pool on the index; connects on first use (a gateway starts while PostgreSQL is
    /// down, and answers UNAVAILABLE from the index until it is back).
    pub fn lazy(config: &IndexConfig) -> Result<AuditIndex, IndexError> {
        let link =
            PgLink::parse(&config.url).map_err(|e| IndexError::Unavailable(e.to_string()))?;
        // Point queries: no parallel workers (launching them cost more than the query at
        // 10 M records, measured), and one generic plan per prepared statement, pruned at
        // run time (planning 25 monthly partitions of two tables took 6–8 ms a call).
        let options = format!(
            "-c statement_timeout={} -c max_parallel_workers_per_gather=0 \
             -c plan_cache_mode=force_generic_plan",
            config.timeout.as_millis().max(1)
        );
        let pool = link
            .pool(
                "popgw-audit-index",
                &options,
                config.pool_size,
                config.timeout,
            )
            .map_err(|e| IndexError::Unavailable(e.to_string()))?;
        Ok(AuditIndex {
            pool,
            link,
            timeout: config.timeout,
            months: Mutex::new(HashSet::new()),
        })
    }

    /// Connects and applies the migrations the database lacks.
    pub async fn open(config: &IndexConfig) -> Result<AuditIndex, IndexError> {
        let index = Self::lazy(config)?;
        index.migrate().await?;
        Ok(index)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, IndexError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                IndexError::Unavailable(self.link.explain(&e))
            }
            deadpool_postgres::PoolError::Timeout(_) => IndexError::Unavailable(format!(
                "PostgreSQL did not answer within {} ms",
                self.timeout.as_millis()
            )),
            other => IndexError::Unavailable(format!("PostgreSQL pool: {other}")),
        })
    }

    /// Applies the migrations this database lacks, each in its own transaction.
    pub async fn migrate(&self) -> Result<(), IndexError> {
        let mut client = self.client().await?;
        // One transaction under the lock: two indexers starting together do not race.
        let txn = client.transaction().await.map_err(pg)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS popgw_audit_index_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg)?;
        for (version, sql) in MIGRATIONS {
            let applied = txn
                .query_opt(
                    "SELECT 1 FROM popgw_audit_index_migrations WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(pg)?
                .is_some();
            if !applied {
                txn.batch_execute(sql).await.map_err(pg)?;
                txn.execute(
                    "INSERT INTO popgw_audit_index_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(pg)?;
            }
        }
        txn.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Creates the monthly partitions `records` need that do not exist yet.
    async fn ensure_partitions(&self, records: &[IndexedRecord]) -> Result<(), IndexError> {
        let needed: Vec<i32> = {
            let known = self.months.lock().expect("months lock");
            let mut needed: Vec<i32> = records
                .iter()
                .map(|r| month_of(r.body.time_unix_ms))
                .filter(|m| !known.contains(m))
                .collect();
            needed.sort_unstable();
            needed.dedup();
            needed
        };
        if needed.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        for &month in &needed {
            let (from, to, suffix) = (
                month_start(month),
                month_start(month + 1),
                month_suffix(month),
            );
            txn.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS audit_record_{suffix} PARTITION OF audit_record
                     FOR VALUES FROM ('{from}') TO ('{to}');
                 CREATE TABLE IF NOT EXISTS audit_person_{suffix} PARTITION OF audit_person
                     FOR VALUES FROM ('{from}') TO ('{to}');"
            ))
            .await
            .map_err(pg)?;
        }
        txn.commit().await.map_err(pg)?;
        self.months.lock().expect("months lock").extend(needed);
        Ok(())
    }

    /// Indexes `records` (idempotent: a record already there is left as it is), advances
    /// the nodes' heads and keeps `problems` — all in one transaction. Returns how many
    /// records were new.
    pub async fn insert(
        &self,
        records: &[IndexedRecord],
        problems: &[(String, u64, String)],
    ) -> Result<u64, IndexError> {
        self.ensure_partitions(records).await?;
        // One array per column (UNNEST turns them back into rows: one statement a table).
        let text =
            |column: fn(&IndexedRecord) -> &str| records.iter().map(column).collect::<Vec<_>>();
        let (node, client_, rpc, procedure) = (
            text(|r| &r.body.node),
            text(|r| &r.body.client),
            text(|r| &r.body.rpc),
            text(|r| &r.body.procedure),
        );
        let (case_id, outcome, code, cache, hash, json) = (
            text(|r| &r.body.case_id),
            text(|r| &r.body.outcome),
            text(|r| &r.body.code),
            text(|r| &r.body.cache),
            text(|r| &r.hash),
            text(|r| &r.json),
        );
        let seq: Vec<i64> = records.iter().map(|r| r.body.seq as i64).collect();
        let time: Vec<i64> = records.iter().map(|r| r.body.time_unix_ms).collect();
        let (mut p_pseudonym, mut p_time, mut p_node, mut p_seq, mut p_related) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut heads: HashMap<&str, (i64, &str, i64)> = HashMap::new();
        for r in records {
            let b = &r.body;
            let people = std::iter::once((b.subject.as_str(), false))
                .chain(b.related.iter().map(|p| (p.as_str(), true)));
            let mut seen = HashSet::new();
            for (who, related) in people {
                if who.is_empty() || !seen.insert(who) {
                    continue;
                }
                p_pseudonym.push(who);
                p_time.push(b.time_unix_ms);
                p_node.push(b.node.as_str());
                p_seq.push(b.seq as i64);
                p_related.push(related);
            }
            let head = heads.entry(b.node.as_str()).or_insert((0, "", 0));
            if b.seq as i64 > head.0 {
                *head = (b.seq as i64, r.hash.as_str(), b.time_unix_ms);
            }
        }
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg)?;
        let inserted = txn
            .execute(
                "INSERT INTO audit_record
                     (node, seq, at, client, rpc, procedure, case_id, outcome, code, cache, hash, json)
                 SELECT node, seq, timestamptz 'epoch' + t * interval '1 millisecond',
                        client, rpc, procedure, case_id, outcome, code, cache, hash, json
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                             $11::text[], $12::text[])
                      AS u(node, seq, t, client, rpc, procedure, case_id, outcome, code,
                           cache, hash, json)
                 ON CONFLICT DO NOTHING",
                &[
                    &node, &seq, &time, &client_, &rpc, &procedure, &case_id, &outcome, &code,
                    &cache, &hash, &json,
                ],
            )
            .await
            .map_err(pg)?;
        txn.execute(
            "INSERT INTO audit_person (pseudonym, at, node, seq, related)
             SELECT p, timestamptz 'epoch' + t * interval '1 millisecond', node, seq, related
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::bool[])
                  AS u(p, t, node, seq, related)
             ON CONFLICT DO NOTHING",
            &[&p_pseudonym, &p_time, &p_node, &p_seq, &p_related],
        )
        .await
        .map_err(pg)?;
        for (node, (seq, hash, time)) in &heads {
            txn.execute(
                "INSERT INTO audit_index_node (node, last_seq, last_hash, last_at)
                 VALUES ($1, $2, $3, timestamptz 'epoch' + $4::int8 * interval '1 millisecond')
                 ON CONFLICT (node) DO UPDATE SET
                     last_hash = CASE WHEN EXCLUDED.last_seq > audit_index_node.last_seq
                                      THEN EXCLUDED.last_hash ELSE audit_index_node.last_hash END,
                     last_at = CASE WHEN EXCLUDED.last_seq > audit_index_node.last_seq
                                    THEN EXCLUDED.last_at ELSE audit_index_node.last_at END,
                     last_seq = greatest(audit_index_node.last_seq, EXCLUDED.last_seq),
                     updated_at = now()",
                &[node, seq, hash, time],
            )
            .await
            .map_err(pg)?;
        }
        for node in heads.keys() {
            advance_contiguous(&txn, node).await?;
        }
        for (node, stream_seq, problem) in problems {
            txn.execute(
                "INSERT INTO audit_index_problem (node, stream_seq, problem) VALUES ($1, $2, $3)",
                &[node, &(*stream_seq as i64), problem],
            )
            .await
            .map_err(pg)?;
        }
        txn.commit().await.map_err(pg)?;
        Ok(inserted)
    }

    /// Each node's newest indexed record: node → (seq, hash).
    pub async fn heads(&self) -> Result<HashMap<String, (u64, String)>, IndexError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node, last_seq, last_hash FROM audit_index_node",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, i64>(1) as u64, r.get::<_, String>(2)),
                )
            })
            .collect())
    }

    /// The `prev` hash of `node`'s indexed record `seq`, if the index holds it.
    pub async fn prev_of(&self, node: &str, seq: u64) -> Result<Option<String>, IndexError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT json FROM audit_record WHERE node = $1 AND seq = $2 LIMIT 1")
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&statement, &[&node, &(seq as i64)])
            .await
            .map_err(pg)?;
        Ok(row
            .and_then(|r| serde_json::from_str::<RecordBody>(r.get::<_, &str>(0)).ok())
            .map(|b| b.prev))
    }

    /// The time up to which every node's records are indexed at least: the oldest of the
    /// nodes' newest indexed records (`None` before anything is indexed). A node that has
    /// been idle holds it back, so it understates, never overstates.
    pub async fn indexed_until(&self) -> Result<Option<i64>, IndexError> {
        let client = self.client().await?;
        // Up to each node's last record with none missing before it: a gap (a message
        // lost or refused) is not hidden behind the records indexed after it.
        let row = client
            .query_one(
                "SELECT (extract(epoch from min(coalesce(contiguous_at, timestamptz 'epoch')))
                         * 1000)::int8
                 FROM audit_index_node",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    /// Records indexed for `node`.
    pub async fn count(&self, node: &str) -> Result<u64, IndexError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM audit_record WHERE node = $1",
                &[&node],
            )
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Records passing `filter`, oldest first across every node (ties by node and seq),
    /// at most `limit`, sent to `tx` as PostgreSQL streams them (memory holds a window);
    /// stops when the receiver is gone.
    pub async fn query(
        &self,
        filter: &Filter,
        limit: usize,
        tx: &mpsc::Sender<StoredRecord>,
    ) -> Result<(), IndexError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut param =
            |clauses: &mut Vec<String>, sql: &str, value: Box<dyn ToSql + Sync + Send>| {
                params.push(value);
                clauses.push(sql.replace('?', &format!("${}", params.len())));
            };
        // With a subject, the person table leads (one range scan of its key).
        let (from, at) = if let Some(subject) = &filter.subject {
            param(
                &mut clauses,
                "p.pseudonym = ?",
                Box::new(subject.as_str().to_string()),
            );
            (
                "audit_person p JOIN audit_record r ON r.node = p.node AND r.seq = p.seq AND r.at = p.at",
                "p.at",
            )
        } else {
            ("audit_record r", "r.at")
        };
        // Bounds beyond what the index holds mean "no bound" (as for the file scan).
        if filter.from_ms > MIN_TIME_MS {
            let sql = format!("{at} >= timestamptz 'epoch' + ?::int8 * interval '1 millisecond'");
            param(
                &mut clauses,
                &sql,
                Box::new(filter.from_ms.min(MAX_TIME_MS)),
            );
        }
        if filter.to_ms != 0 && filter.to_ms < MAX_TIME_MS {
            let sql = format!("{at} <= timestamptz 'epoch' + ?::int8 * interval '1 millisecond'");
            param(&mut clauses, &sql, Box::new(filter.to_ms.max(0)));
        }
        let case_id = filter.case_id.as_ref().map_or("", |c| c.as_str());
        for (column, value) in [
            ("r.client", filter.client.as_str()),
            ("r.procedure", filter.procedure.as_str()),
            ("r.case_id", case_id),
            ("r.cache", filter.cache.as_str()),
        ] {
            if !value.is_empty() {
                param(
                    &mut clauses,
                    &format!("{column} = ?"),
                    Box::new(value.to_string()),
                );
            }
        }
        if !filter.outcome.is_empty() {
            let n = params.len() + 1;
            params.push(Box::new(filter.outcome.clone()));
            clauses.push(format!("(r.outcome = ${n} OR r.code = ${n})"));
        }
        let limit = limit.min(i64::MAX as usize) as i64;
        params.push(Box::new(limit));
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {from} {} ORDER BY {at}, r.node, r.seq LIMIT ${}",
            if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            },
            params.len()
        );
        let client = self.client().await?;
        // Prepared once per connection and shape of query: planning 25 monthly partitions
        // of two tables costs more than running the query (~6 ms against ~1 ms measured),
        // and a prepared statement lets PostgreSQL keep a generic plan, pruned at run time.
        let statement = client.prepare_cached(&sql).await.map_err(pg)?;
        let rows = client
            .query_raw(
                &statement,
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
            )
            .await
            .map_err(pg)?;
        futures::pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let record = stored_row(&row.map_err(pg)?)?;
            if tx.send(record.stored()).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// A person's history between `from_ms` and `to_ms` (0: open): the records that were
    /// answered (code OK) by the RPCs in `rpcs`, where they were the subject or a related
    /// person, oldest first, at most `limit`.
    pub async fn history(
        &self,
        pseudonym: &str,
        from_ms: i64,
        to_ms: i64,
        rpcs: &[&str],
        limit: usize,
    ) -> Result<Vec<PersonEvent>, IndexError> {
        let client = self.client().await?;
        // 0: open; bounds beyond what the index holds mean no bound.
        let from_ms = from_ms.clamp(0, MAX_TIME_MS);
        let to_ms = if to_ms == 0 {
            MAX_TIME_MS
        } else {
            to_ms.clamp(0, MAX_TIME_MS)
        };
        let rpcs: Vec<&str> = rpcs.to_vec();
        let statement = client
            .prepare_cached(
                "SELECT r.node, r.seq, r.hash, r.json, p.related
                 FROM audit_person p
                 JOIN audit_record r ON r.node = p.node AND r.seq = p.seq AND r.at = p.at
                 WHERE p.pseudonym = $1
                   AND p.at >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
                   AND p.at <= timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
                   AND r.code = 'OK' AND r.rpc = ANY($4)
                 ORDER BY p.at, p.node, p.seq
                 LIMIT $5",
            )
            .await
            .map_err(pg)?;
        let rows = client
            .query(
                &statement,
                &[&pseudonym, &from_ms, &to_ms, &rpcs, &(limit as i64)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                Ok(PersonEvent {
                    record: stored_row(row)?.body,
                    related: row.get(4),
                })
            })
            .collect()
    }

    /// Drops the monthly partitions wholly before `month` (`year * 12 + month - 1`) and
    /// notes for each node that its records before then are gone on purpose. Returns the
    /// tables dropped.
    pub async fn drop_months_before(&self, month: i32) -> Result<Vec<String>, IndexError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let rows = txn
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname IN ('audit_record', 'audit_person')",
                &[],
            )
            .await
            .map_err(pg)?;
        let mut dropped = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            if partition_month(&name).is_some_and(|m| m < month) {
                txn.batch_execute(&format!("DROP TABLE {name}"))
                    .await
                    .map_err(pg)?;
                dropped.push(name);
            }
        }
        if !dropped.is_empty() {
            let cutoff = month_start(month);
            txn.execute(
                &format!(
                    "UPDATE audit_index_node SET dropped_before =
                         greatest(coalesce(dropped_before, '-infinity'), '{cutoff}'::timestamptz)"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        }
        txn.commit().await.map_err(pg)?;
        let mut months = self.months.lock().expect("months lock");
        months.retain(|m| *m >= month);
        Ok(dropped)
    }

    /// Bytes the index's tables and their indexes take on disk.
    pub async fn size_bytes(&self) -> Result<u64, IndexError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname IN ('audit_record', 'audit_person')",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A row of `RECORD_COLUMNS`.
fn stored_row(row: &tokio_postgres::Row) -> Result<IndexedRecord, IndexError> {
    let (node, seq): (String, i64) = (row.get(0), row.get(1));
    let json: String = row.get(3);
    let body: RecordBody = serde_json::from_str(&json).map_err(|e| {
        IndexError::Unavailable(format!(
            "indexed record {node}:{seq} does not parse: {e} (run popgw audit verify --index)"
        ))
    })?;
    Ok(IndexedRecord {
        body,
        hash: row.get(2),
        json,
    })
}

/// Checks one witness message's lines and turns them into records: each line parses and
/// names the message's node, each hash is SHA-256(prev || json), the lines are
/// consecutive and chained, and the last is the message's head.
pub fn records_of(head: &Head) -> Result<Vec<IndexedRecord>, String> {
    let mut out: Vec<IndexedRecord> = Vec::with_capacity(head.lines.len());
    let mut chain = Chain::new((head.first_seq != 0).then_some(head.first_seq), None);
    for (i, line) in head.lines.iter().enumerate() {
        // The kind of error only: a JSON error's message can quote the value.
        let p = parse_line(line.as_bytes())
            .map_err(|e| format!("line {i}: {}", e.split(": ").next().unwrap_or_default()))?;
        if p.seal.is_some() {
            return Err(format!(
                "line {i}: carries a seal (lines are shipped without)"
            ));
        }
        let b = &p.body;
        if b.node != head.node {
            return Err(format!("line {i}: a record of another node"));
        }
        // What PostgreSQL would refuse, refused here: one such message must not stop the
        // indexing of every node behind it.
        if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&b.time_unix_ms) {
            return Err(format!("seq {}: time outside 2000–9999", b.seq));
        }
        if p.json.contains("\\u0000") {
            return Err(format!("seq {}: a NUL character in a field", b.seq));
        }
        if b.seq == 0 || b.seq > i64::MAX as u64 {
            return Err(format!("line {i}: seq out of range"));
        }
        chain.link(&p).map_err(|e| match e {
            ChainBreak::OutOfOrder { expected, found } if out.is_empty() => {
                format!("first line is seq {found}, the message says {expected}")
            }
            e => format!("seq {}: {e}", b.seq),
        })?;
        out.push(IndexedRecord {
            body: p.body,
            hash: p.hash,
            json: p.json,
        });
    }
    match out.last() {
        Some(last) if last.body.seq != head.seq || last.hash != head.hash => Err(format!(
            "last line is seq {} but the message's head is seq {}",
            last.body.seq, head.seq
        )),
        _ => Ok(out),
    }
}

/// The checks a witness message passes before its records are indexed (no NATS, no
/// PostgreSQL here). Records are indexed only under a seal that verifies with their
/// node's key ([`FeedConfig::node_keys`]; a node without one is refused): the seal signs its batch's last
/// record, and through the hash chain every record before it, so the unsealed first
/// parts of a batch sent in several messages are held until a sealed message whose
/// records chain back to them arrives — in any order, as redeliveries come — or until
/// the index already holds, under a seal, the record that follows them
/// ([`Intake::held_tails`], [`Intake::release_covered`]). A seal made with another key,
/// a node without a key, and held parts beyond [`MAX_HELD_PARTS`] are refused: whoever
/// can publish on the stream cannot put records into citizens' reports.
pub struct Intake {
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    chains: HashMap<String, (u64, String)>,
    /// node → first seq of a held part → (its stream sequence, its records).
    held: HashMap<String, std::collections::BTreeMap<u64, (u64, Vec<IndexedRecord>)>>,
}

/// Unsealed parts held per node at most (the oldest beyond are refused).
pub const MAX_HELD_PARTS: usize = 64;

/// What follows from one message.
#[derive(Debug, Default)]
pub struct Step {
    /// Records to index now.
    pub ready: Vec<IndexedRecord>,
    /// Stream sequences of the messages now settled (indexed or refused): to acknowledge
    /// once the commit is done. A held message is not settled yet.
    pub settled: Vec<u64>,
    /// Problems to keep: (node, stream sequence, what; never a record's content).
    pub problems: Vec<(String, u64, String)>,
}

impl Step {
    fn refuse(&mut self, node: &str, stream_seq: u64, why: String) {
        self.problems.push((node.to_string(), stream_seq, why));
        self.settled.push(stream_seq);
    }
}

impl Intake {
    /// Checks with these node keys (a node without one is never indexed), continuing the chains the
    /// index already holds (node → newest seq and hash).
    pub fn new(
        keys: HashMap<String, ed25519_dalek::VerifyingKey>,
        chains: HashMap<String, (u64, String)>,
    ) -> Intake {
        Intake {
            keys,
            chains,
            held: HashMap::new(),
        }
    }

    /// Takes the message at `stream_seq`, published on `subject`.
    pub fn take(&mut self, stream_seq: u64, subject: &str, payload: &[u8]) -> Step {
        let mut step = Step::default();
        let subject_node = subject.rsplit('.').next().unwrap_or_default().to_string();
        let head: Head = match serde_json::from_slice(payload) {
            Ok(h) => h,
            Err(e) => {
                // The error's kind and place only: serde's message can quote the value.
                let why = format!(
                    "not a witness message ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                );
                step.refuse(&subject_node, stream_seq, why);
                return step;
            }
        };
        let node = head.node.clone();
        if node != subject_node {
            step.refuse(
                &subject_node,
                stream_seq,
                "a message of another node than its subject's".into(),
            );
            return step;
        }
        let records = match records_of(&head) {
            Ok(r) => r,
            Err(problem) => {
                step.refuse(&node, stream_seq, problem);
                return step;
            }
        };
        // Only what the node sealed is indexed: whoever can publish on the stream could
        // otherwise put chain-consistent records into citizens' reports.
        let Some(key) = self.keys.get(&node) else {
            step.refuse(
                &node,
                stream_seq,
                "no key for this node in the index's node_keys: not indexed".into(),
            );
            return step;
        };
        if head.seal.is_empty() {
            if records.is_empty() {
                step.settled.push(stream_seq);
                return step;
            }
            let held = self.held.entry(node.clone()).or_default();
            // A redelivered part replaces itself.
            held.insert(records[0].body.seq, (stream_seq, records));
            while held.len() > MAX_HELD_PARTS {
                if let Some((_, (s, _))) = held.pop_first() {
                    step.refuse(&node, s, "part of a batch whose seal never came".into());
                }
            }
            return step;
        }
        if let Err(e) = super::format::check_seal(key, &node, head.seq, &head.hash, &head.seal) {
            step.refuse(&node, stream_seq, format!("{e} (not the node's key)"));
            return step;
        }
        // The seal covers the message's last record (its head) and every record the
        // chain leads back through: the held parts that end where this one begins.
        let (seq, hash) = match records.first() {
            Some(first) => (first.body.seq.saturating_sub(1), first.body.prev.clone()),
            None => (head.seq, head.hash.clone()),
        };
        let mut ready = self.release(&node, seq, &hash, &mut step);
        ready.extend(records);
        step.settled.push(stream_seq);
        self.advance(&node, stream_seq, ready, &mut step);
        step
    }

    /// Releases the held parts of `node` that chain back from the record (`seq`, `hash`),
    /// oldest first.
    fn release(
        &mut self,
        node: &str,
        mut seq: u64,
        hash: &str,
        step: &mut Step,
    ) -> Vec<IndexedRecord> {
        let mut hash = hash.to_string();
        let mut parts = Vec::new();
        if let Some(held) = self.held.get_mut(node) {
            while let Some((&first, (_, part))) = held.range(..=seq).next_back() {
                let ends_here = part
                    .last()
                    .is_some_and(|last| last.body.seq == seq && last.hash == hash);
                if !ends_here {
                    break;
                }
                let (stream_seq, part) = held.remove(&first).expect("just seen");
                step.settled.push(stream_seq);
                seq = first.saturating_sub(1);
                hash = part[0].body.prev.clone();
                parts.push(part);
            }
        }
        parts.into_iter().rev().flatten().collect()
    }

    /// Notes the chain's progress (a gap or fork against what the index holds is kept as
    /// a problem; the records are still indexed: verify --index tells which copy is the
    /// node's) and hands `ready` to the step.
    fn advance(&mut self, node: &str, stream_seq: u64, ready: Vec<IndexedRecord>, step: &mut Step) {
        if let (Some(first), Some((seq, hash))) = (ready.first(), self.chains.get(node)) {
            if first.body.seq == seq + 1 && &first.body.prev != hash {
                step.problems.push((
                    node.to_string(),
                    stream_seq,
                    format!(
                        "seq {} does not chain to the indexed seq {seq}",
                        first.body.seq
                    ),
                ));
            }
        }
        if let Some(last) = ready.last() {
            let entry = self
                .chains
                .entry(node.to_string())
                .or_insert((0, String::new()));
            if last.body.seq > entry.0 {
                *entry = (last.body.seq, last.hash.clone());
            }
        }
        step.ready.extend(ready);
    }

    /// For each held part: its node, the seq of the record that would follow it, and
    /// the hash that record's `prev` must name. If the index already holds that record
    /// (indexed under a seal), [`Intake::release_covered`] releases the part.
    pub fn held_tails(&self) -> Vec<(String, u64, String)> {
        self.held
            .iter()
            .flat_map(|(node, parts)| {
                parts.values().filter_map(move |(_, part)| {
                    let last = part.last()?;
                    Some((node.clone(), last.body.seq + 1, last.hash.clone()))
                })
            })
            .collect()
    }

    /// Refuses `node`'s held part that ends just before `seq`: the index holds, under a
    /// seal, a record `seq` that does not follow it — the part forks from the node's
    /// chain and no seal will ever cover it.
    pub fn refuse_forked(&mut self, node: &str, seq: u64) -> Step {
        let mut step = Step::default();
        if let Some(parts) = self.held.get_mut(node) {
            let forked: Vec<u64> = parts
                .iter()
                .filter(|(_, (_, part))| part.last().is_some_and(|l| l.body.seq + 1 == seq))
                .map(|(first, _)| *first)
                .collect();
            for first in forked {
                if let Some((stream_seq, _)) = parts.remove(&first) {
                    step.refuse(
                        node,
                        stream_seq,
                        "forks from the node's sealed chain".into(),
                    );
                }
            }
        }
        step
    }

    /// Releases `node`'s held parts that chain back from an indexed record at `seq`
    /// whose `prev` is `prev`.
    pub fn release_covered(&mut self, node: &str, seq: u64, prev: &str) -> Step {
        let mut step = Step::default();
        let ready = self.release(node, seq.saturating_sub(1), prev, &mut step);
        let stream_seq = step.settled.last().copied().unwrap_or(0);
        self.advance(node, stream_seq, ready, &mut step);
        step
    }
}

/// Feeds the index from the witness stream (see the module documentation).
pub struct Indexer {
    index: Arc<AuditIndex>,
    /// The connection to NATS.
    link: crate::link::nats::NatsLink,
    /// The witness stream.
    stream: String,
    /// The durable consumer's name (one per index database).
    consumer: String,
    /// Drop months older than this many (0: keep all).
    retain_months: u32,
    node_keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    metrics: Arc<Metrics>,
}

/// The witness stream and consumer an [`Indexer`] reads.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// The connection to NATS (URL, TLS, credentials).
    pub link: crate::link::nats::NatsLink,
    /// The witness stream (`POPGW_AUDIT`).
    pub stream: String,
    /// The durable consumer (`popgw-index`): one per index database.
    pub consumer: String,
    /// Months of records kept (0: all).
    pub retain_months: u32,
    /// Each node's checkpoint public key: only records under a seal made by their node's
    /// key are indexed (see [`Intake`]); a node without a key is never indexed.
    pub node_keys: HashMap<String, ed25519_dalek::VerifyingKey>,
}

/// Messages indexed in one transaction at most.
const MESSAGES_PER_COMMIT: usize = 256;

impl Indexer {
    /// An indexer feeding `index` from `feed`.
    pub fn new(index: Arc<AuditIndex>, feed: FeedConfig, metrics: Arc<Metrics>) -> Indexer {
        Indexer {
            index,
            link: feed.link,
            stream: feed.stream,
            consumer: feed.consumer,
            retain_months: feed.retain_months,
            node_keys: feed.node_keys,
            metrics,
        }
    }

    /// Indexes until `stop` resolves; NATS or PostgreSQL going away is retried with
    /// backoff (one warning per outage), never fatal.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        futures::pin_mut!(stop);
        let mut backoff = Duration::from_millis(200);
        let mut warned = false;
        loop {
            let session = self.session(&mut warned);
            tokio::select! {
                _ = &mut stop => return,
                result = session => {
                    let Err(e) = result;
                    self.metrics.index_up.set(0);
                    if !warned {
                        tracing::warn!(error = %e, "audit indexer interrupted; retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs the retention once (and then hourly from [`Indexer::run`]).
    async fn retention(&self) -> Result<(), IndexError> {
        if self.retain_months == 0 {
            return Ok(());
        }
        let now = month_of(chrono::Utc::now().timestamp_millis());
        let dropped = self
            .index
            .drop_months_before(now - self.retain_months as i32)
            .await?;
        if !dropped.is_empty() {
            tracing::info!(tables = ?dropped, "audit index retention dropped whole months");
        }
        Ok(())
    }

    async fn session(&self, warned: &mut bool) -> Result<std::convert::Infallible, IndexError> {
        self.index.migrate().await?;
        let client = self
            .link
            .connect(&format!("popgw indexer {}", self.consumer))
            .await
            .map_err(|e| feed("connect")(e.to_string()))?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| feed("stream")(format!("{}: {e}", self.stream)))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.consumer,
                pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    description: Some("popgw central audit index".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // A message taken by an indexer that died unacknowledged comes back
                    // after this (a commit takes milliseconds).
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 100_000,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| feed("consumer")(e.to_string()))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(MESSAGES_PER_COMMIT)
            .messages()
            .await
            .map_err(|e| feed("consume")(e.to_string()))?;
        let mut intake = Intake::new(self.node_keys.clone(), self.index.heads().await?);
        // Messages taken and not yet acknowledged (held parts of a batch among them).
        let mut waiting = HashMap::new();
        self.retention().await?;
        let mut last_retention = tokio::time::Instant::now();
        if std::mem::take(warned) {
            tracing::info!("audit indexer running again");
        }
        self.metrics.index_up.set(1);
        let mut last_pending = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            // Held parts whose following record is already indexed (they came back after
            // their sealed successor was committed) are released.
            for (node, seq, prev) in intake.held_tails() {
                let step = match self.index.prev_of(&node, seq).await? {
                    Some(indexed) if indexed == prev => intake.release_covered(&node, seq, &prev),
                    Some(_) => intake.refuse_forked(&node, seq),
                    None => continue, // its seal may still come
                };
                self.commit(step, &mut waiting).await?;
            }
            // How far behind the stream the index is, at most once a second.
            if last_pending.elapsed() >= Duration::from_secs(1) {
                if let Ok(info) = consumer.get_info().await {
                    let pending = info.num_pending + info.num_ack_pending as u64;
                    self.metrics.index_pending.set(pending as i64);
                }
                last_pending = tokio::time::Instant::now();
            }
            let first = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
            let first = match first {
                Err(_) => continue, // quiet: nothing to index
                Ok(None) => return Err(feed("consume")("the stream ended".into())),
                Ok(Some(m)) => m.map_err(|e| feed("consume")(e.to_string()))?,
            };
            let mut batch = vec![first];
            // Whatever else is already here, up to a commit's worth.
            while batch.len() < MESSAGES_PER_COMMIT {
                match tokio::time::timeout(Duration::from_millis(5), messages.next()).await {
                    Ok(Some(m)) => batch.push(m.map_err(|e| feed("consume")(e.to_string()))?),
                    Ok(None) => return Err(feed("consume")("the stream ended".into())),
                    Err(_) => break,
                }
            }
            let mut all = Step::default();
            for message in batch {
                let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                let step = intake.take(stream_seq, message.subject.as_str(), &message.payload);
                all.ready.extend(step.ready);
                all.problems.extend(step.problems);
                all.settled.extend(step.settled);
                waiting.insert(stream_seq, message);
            }
            self.commit(all, &mut waiting).await?;
            if last_retention.elapsed() > Duration::from_secs(3600) {
                self.retention().await?;
                last_retention = tokio::time::Instant::now();
            }
        }
    }

    /// Indexes a step's records and problems in one transaction, then acknowledges the
    /// messages it settled (a crash before the acknowledgement redelivers them, and the
    /// redelivery inserts nothing new).
    async fn commit(
        &self,
        step: Step,
        waiting: &mut HashMap<u64, jetstream::Message>,
    ) -> Result<(), IndexError> {
        for (node, stream_seq, problem) in &step.problems {
            // Node ids and reasons only: never a record's content.
            tracing::warn!(node = %node, stream_seq, problem = %problem, "audit index: message not indexed");
        }
        let started = std::time::Instant::now();
        let inserted = self.index.insert(&step.ready, &step.problems).await?;
        self.metrics.index_records.inc_by(inserted);
        self.metrics
            .index_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for stream_seq in step.settled {
            if let Some(message) = waiting.remove(&stream_seq) {
                message
                    .ack_with(AckKind::Ack)
                    .await
                    .map_err(|e| feed("ack")(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// What [`verify_against`] found.
#[derive(Debug, Default)]
pub struct IndexReport {
    /// The node compared.
    pub node: String,
    /// Records of the folder found in the index, identical.
    pub matched: u64,
    /// Records of the folder missing from the index (below its newest indexed seq).
    pub missing: Vec<u64>,
    /// Records whose index row differs from the folder (JSON, hash, a column, a person).
    pub altered: Vec<(u64, String)>,
    /// Rows of the index no record of the folder has.
    pub invented: Vec<u64>,
    /// Records after the newest indexed one (the indexer is behind, or stopped); every
    /// record at or below it that the index lacks is in `missing`.
    pub not_yet_indexed: u64,
    /// The highest seq the index holds for the node.
    pub indexed_up_to: u64,
    /// Records older than the index's retention, not compared.
    pub dropped: u64,
}

impl IndexReport {
    /// Whether the index holds the folder's records and nothing else.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.altered.is_empty() && self.invented.is_empty()
    }
}

/// Moves `node`'s contiguous mark (its last record with every one before it indexed,
/// from the first the index holds) over the rows now in the index.
async fn advance_contiguous(
    txn: &tokio_postgres::Transaction<'_>,
    node: &str,
) -> Result<(), IndexError> {
    let row = txn
        .query_one(
            "SELECT n.contiguous_seq, (SELECT min(seq) FROM audit_record WHERE node = $1)
             FROM audit_index_node n WHERE n.node = $1",
            &[&node],
        )
        .await
        .map_err(pg)?;
    let (mark, first): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    let Some(mut mark) = mark.or(first.map(|f| f - 1)) else {
        return Ok(());
    };
    let rows = txn
        .query(
            "SELECT seq, (extract(epoch from max(at)) * 1000)::int8 FROM audit_record
             WHERE node = $1 AND seq > $2 GROUP BY seq ORDER BY seq LIMIT $3",
            &[&node, &mark, &CONTIGUOUS_SCAN],
        )
        .await
        .map_err(pg)?;
    let mut at = None;
    for r in &rows {
        if r.get::<_, i64>(0) != mark + 1 {
            break;
        }
        mark += 1;
        at = Some(r.get::<_, i64>(1));
    }
    if let Some(at) = at {
        txn.execute(
            "UPDATE audit_index_node SET contiguous_seq = $2,
                 contiguous_at = timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
             WHERE node = $1",
            &[&node, &mark, &at],
        )
        .await
        .map_err(pg)?;
    } else if row.get::<_, Option<i64>>(0).is_none() {
        txn.execute(
            "UPDATE audit_index_node SET contiguous_seq = $2 WHERE node = $1",
            &[&node, &mark],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// An index row as [`verify_against`] reads it.
struct Row {
    seq: u64,
    at_ms: i64,
    hash: String,
    json: String,
    columns: [String; 7],
    people: Vec<(String, bool)>,
}

/// Compares the records of the node whose audit folder is `dir` with the index (see the
/// module documentation).
pub async fn verify_against(dir: &Path, index: &AuditIndex) -> Result<IndexReport, IndexError> {
    // The folder, streamed from a blocking thread; the index, read in pages by (seq, at).
    let scan_from = |from: u64| {
        let (tx, rx) = mpsc::channel::<StoredRecord>(4096);
        let dir = dir.to_path_buf();
        let scan = tokio::task::spawn_blocking(move || {
            super::scan_records(&dir, from, |r| tx.blocking_send(r).is_ok())
        });
        (rx, scan)
    };
    let finished = |scan: tokio::task::JoinHandle<Result<(), super::AuditError>>| async move {
        scan.await
            .map_err(|e| IndexError::Folder(e.to_string()))?
            .map_err(|e| IndexError::Folder(e.to_string()))
    };
    let (mut folder, mut scan) = scan_from(1);
    let mut report = IndexReport::default();
    let Some(mut record) = folder.recv().await else {
        finished(scan).await?;
        return Err(IndexError::Folder(format!("{}: no records", dir.display())));
    };
    let node = record.body.node.clone();
    report.node = node.clone();
    let first_seq = record.body.seq;
    let client = index.client().await?;
    let meta = client
        .query_opt(
            "SELECT last_seq, (extract(epoch from dropped_before) * 1000)::int8
             FROM audit_index_node WHERE node = $1",
            &[&node],
        )
        .await
        .map_err(pg)?;
    let (last_indexed, dropped_before) = meta
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Option<i64>>(1)))
        .unwrap_or((0, None));
    report.indexed_up_to = last_indexed;
    // Paged by (seq, at), not seq alone: a second row for one seq (a forked copy with
    // another time) is read, never skipped at a page boundary.
    let page = |after: (i64, i64)| {
        let client = &client;
        let node = node.clone();
        async move {
            let rows = client
                .query(
                    "SELECT r.seq, (extract(epoch from r.at) * 1000)::int8, r.hash, r.json,
                            r.client, r.rpc, r.procedure, r.case_id, r.outcome, r.code, r.cache,
                            coalesce((SELECT array_agg(p.pseudonym || ':' || p.related::text)
                                      FROM audit_person p
                                      WHERE p.node = r.node AND p.seq = r.seq AND p.at = r.at),
                                     '{}')
                     FROM audit_record r
                     WHERE r.node = $1
                       AND (r.seq, r.at) > ($2, timestamptz 'epoch' + $3::int8 * interval '1 millisecond')
                     ORDER BY r.seq, r.at LIMIT 5000",
                    &[&node, &after.0, &after.1],
                )
                .await
                .map_err(pg)?;
            Ok::<_, IndexError>(
                rows.iter()
                    .map(|r| Row {
                        seq: r.get::<_, i64>(0) as u64,
                        at_ms: r.get(1),
                        hash: r.get(2),
                        json: r.get(3),
                        columns: std::array::from_fn(|i| r.get::<_, String>(4 + i)),
                        people: r
                            .get::<_, Vec<String>>(11)
                            .into_iter()
                            .map(|p| match p.rsplit_once(':') {
                                Some((who, related)) => (who.to_string(), related == "true"),
                                None => (p, false),
                            })
                            .collect(),
                    })
                    .collect::<std::collections::VecDeque<Row>>(),
            )
        }
    };
    let mut after = (0i64, 0i64); // seq 0 precedes every record
    let mut rows = page(after).await?;
    let mut folder_done = false;
    let mut rescanned = false;
    let mut index_done = rows.is_empty();
    loop {
        if rows.is_empty() && !index_done {
            rows = page(after).await?;
            index_done = rows.is_empty();
        }
        let row = rows.front();
        match (folder_done, row) {
            (true, None) => break,
            (true, Some(row)) => {
                report.invented.push(row.seq);
                after = (row.seq as i64, row.at_ms);
                rows.pop_front();
            }
            (false, row) => {
                let seq = record.body.seq;
                match row {
                    Some(row) if row.seq < seq => {
                        // Before the folder's first record: removed on the node by
                        // retention, not invented. A second row for a seq already
                        // compared lands here too: invented.
                        if row.seq >= first_seq {
                            report.invented.push(row.seq);
                        }
                        after = (row.seq as i64, row.at_ms);
                        rows.pop_front();
                        continue;
                    }
                    Some(row) if row.seq == seq => {
                        match compare_row(&record, row) {
                            Ok(()) => report.matched += 1,
                            Err(why) => report.altered.push((seq, why)),
                        }
                        after = (row.seq as i64, row.at_ms);
                        rows.pop_front();
                    }
                    _ => {
                        if dropped_before.is_some_and(|d| record.body.time_unix_ms < d) {
                            report.dropped += 1;
                        } else if seq <= last_indexed {
                            report.missing.push(seq);
                        } else {
                            report.not_yet_indexed += 1;
                        }
                    }
                }
                let last = record.body.seq;
                match folder.recv().await {
                    Some(next) => record = next,
                    // A live node wrote on while we read: what it wrote since (and what
                    // the index took of it) is compared too, once, before any row past
                    // the folder's end counts as invented.
                    None if !(rescanned || index_done && rows.is_empty()) => {
                        rescanned = true;
                        let (more, next_scan) = scan_from(last + 1);
                        finished(std::mem::replace(&mut scan, next_scan)).await?;
                        folder = more;
                        match folder.recv().await {
                            Some(next) => record = next,
                            None => folder_done = true,
                        }
                    }
                    None => folder_done = true,
                }
            }
        }
        if report.missing.len() > 100_000 || report.invented.len() > 100_000 {
            break; // enough to say the index is wrong
        }
    }
    drop(folder);
    finished(scan).await?;
    Ok(report)
}

/// Why an index row is not the folder's record (never quoting a value).
fn compare_row(record: &StoredRecord, row: &Row) -> Result<(), String> {
    let b = &record.body;
    if row.hash != record.hash {
        return Err("hash differs from the chain's".into());
    }
    if row.json != record.json {
        return Err("JSON differs from the chain's".into());
    }
    if row.at_ms != b.time_unix_ms {
        return Err("time differs".into());
    }
    let expected = [
        &b.client,
        &b.rpc,
        &b.procedure,
        &b.case_id,
        &b.outcome,
        &b.code,
        &b.cache,
    ];
    const NAMES: [&str; 7] = [
        "client",
        "rpc",
        "procedure",
        "case_id",
        "outcome",
        "code",
        "cache",
    ];
    for ((have, want), name) in row.columns.iter().zip(expected).zip(NAMES) {
        if have != want {
            return Err(format!("column {name} differs from the record"));
        }
    }
    let mut want: Vec<(String, bool)> = Vec::new();
    if !b.subject.is_empty() {
        want.push((b.subject.clone(), false));
    }
    for r in &b.related {
        if !r.is_empty() && !want.iter().any(|(w, _)| w == r) {
            want.push((r.clone(), true));
        }
    }
    let mut have = row.people.clone();
    want.sort();
    have.sort();
    if have != want {
        return Err(format!(
            "person rows differ ({} indexed, {} in the record)",
            have.len(),
            want.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::format::{decode_hash, record_hash};
    use crate::audit::{witness, AuditConfig, AuditEntry, AuditLog};
    use ed25519_dalek::SigningKey;

    /// A node's log of `n` records, each its own sealed batch; its messages.
    async fn node_messages(dir: &Path, key: &SigningKey, n: usize) -> Vec<Head> {
        let log = AuditLog::open(AuditConfig::new(dir, "node-a"), key.clone()).unwrap();
        for i in 0..n {
            log.append(AuditEntry {
                request_id: format!("r{i}"),
                subject: Some(crate::audit::Pseudonymizer::new([5; 32]).pseudonym("p")),
                code: Some(tonic::Code::Ok),
                ..AuditEntry::new(
                    crate::policy::Rpc::VerifyIdentity,
                    crate::audit::Outcome::Match,
                )
            })
            .await
            .unwrap();
        }
        log.shutdown().await;
        witness::messages(dir, true).unwrap()
    }

    fn payload(head: &Head) -> Vec<u8> {
        serde_json::to_vec(head).unwrap()
    }

    /// A record chained after `after` (a forgery: consistent hashes, no seal).
    fn forged_after(after: &Head, node: &str) -> Head {
        let last = records_of(after).unwrap().pop().unwrap();
        let mut body = last.body.clone();
        body.seq += 1;
        body.prev = last.hash.clone();
        body.outcome = "DISCLOSED".into();
        let json = serde_json::to_string(&body).unwrap();
        let prev = decode_hash(&body.prev).unwrap();
        let hash = hex::encode(record_hash(&prev, json.as_bytes()));
        Head {
            node: node.into(),
            seq: body.seq,
            hash: hash.clone(),
            seal: String::new(),
            time_unix_ms: body.time_unix_ms,
            first_seq: body.seq,
            lines: vec![format!("{hash} {json}")],
        }
    }

    #[tokio::test]
    async fn with_node_keys_only_sealed_records_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[4u8; 32]);
        let messages = node_messages(dir.path(), &key, 4).await;
        let subject = "popgw.audit.node-a";
        let keys: HashMap<_, _> = [("node-a".to_string(), key.verifying_key())].into();
        let mut intake = Intake::new(keys.clone(), HashMap::new());
        let mut indexed = 0;
        for (i, m) in messages.iter().enumerate() {
            let step = intake.take(i as u64 + 1, subject, &payload(m));
            assert!(step.problems.is_empty(), "{:?}", step.problems);
            assert_eq!(step.settled, vec![i as u64 + 1]);
            indexed += step.ready.len();
        }
        assert!(indexed >= 4, "every record indexed under its seal");

        // A record forged after the first batch, unsealed: held; the genuine next batch
        // does not release it; once the index holds the genuine record that follows its
        // place, it is refused as a fork. Never indexed.
        let mut intake = Intake::new(keys.clone(), HashMap::new());
        assert_eq!(
            intake.take(1, subject, &payload(&messages[0])).settled,
            vec![1]
        );
        let forged = forged_after(&messages[0], "node-a");
        let held = intake.take(2, subject, &payload(&forged));
        assert!(held.ready.is_empty() && held.settled.is_empty(), "{held:?}");
        let next = intake.take(3, subject, &payload(&messages[1]));
        assert_eq!(next.settled, vec![3]);
        assert!(next.problems.is_empty(), "{:?}", next.problems);
        assert!(next.ready.iter().all(|r| r.body.outcome != "DISCLOSED"));
        let genuine = records_of(&messages[1]).unwrap();
        let after_forged = &genuine[1.min(genuine.len() - 1)];
        let tails = intake.held_tails();
        assert_eq!(
            tails,
            vec![("node-a".to_string(), forged.seq + 1, forged.hash.clone())]
        );
        // The index's record at that place names another prev: the part is a fork.
        assert_ne!(after_forged.body.prev, forged.hash);
        let refused = intake.refuse_forked("node-a", forged.seq + 1);
        assert_eq!(refused.settled, vec![2]);
        assert!(refused.problems[0].2.contains("forks"));
        assert!(intake.held_tails().is_empty());

        // The same forgery sealed with another key: refused at once.
        let mut sealed = forged.clone();
        let other = SigningKey::from_bytes(&[5u8; 32]);
        sealed.seal = crate::audit::format::sign_seal(&other, "node-a", sealed.seq, &sealed.hash);
        let refused = intake.take(4, subject, &payload(&sealed));
        assert!(refused.ready.is_empty());
        assert_eq!(refused.settled, vec![4]);
        assert!(
            refused.problems[0].2.contains("seal"),
            "{:?}",
            refused.problems
        );

        // A node without a key, and a message on another node's subject: refused.
        let mut only_b = Intake::new(
            [("node-b".to_string(), key.verifying_key())].into(),
            HashMap::new(),
        );
        let step = only_b.take(5, subject, &payload(&messages[2]));
        assert!(step.ready.is_empty() && step.problems[0].2.contains("no key"));
        let step = intake.take(6, "popgw.audit.node-b", &payload(&messages[2]));
        assert!(step.ready.is_empty() && step.problems[0].2.contains("another node"));
    }

    #[tokio::test]
    async fn a_batch_sent_in_parts_is_indexed_when_its_seal_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[4u8; 32]);
        let messages = node_messages(dir.path(), &key, 3).await;
        // The last two batches as one batch in two parts: the first part unsealed.
        let (a, b) = (&messages[1], &messages[2]);
        let mut first = a.clone();
        first.seal = String::new();
        let keys: HashMap<_, _> = [("node-a".to_string(), key.verifying_key())].into();
        let mut intake = Intake::new(keys, HashMap::new());
        let subject = "popgw.audit.node-a";
        intake.take(1, subject, &payload(&messages[0]));
        let held = intake.take(2, subject, &payload(&first));
        assert!(held.ready.is_empty() && held.settled.is_empty());
        // Redelivered while held: replaces itself.
        assert!(intake.take(2, subject, &payload(&first)).settled.is_empty());
        let sealed = intake.take(3, subject, &payload(b));
        assert_eq!(sealed.settled, vec![2, 3]);
        assert!(sealed.problems.is_empty(), "{:?}", sealed.problems);
        let seqs: Vec<u64> = sealed.ready.iter().map(|r| r.body.seq).collect();
        assert_eq!(seqs.first(), Some(&a.first_seq));
        assert_eq!(seqs.last(), Some(&b.seq));

        // Out of order (a redelivery after a restart): the sealed part first, indexed; the
        // first part comes back, is held, and is released once the index is seen to hold
        // the record that follows it under the seal.
        let mut intake = Intake::new(
            [("node-a".to_string(), key.verifying_key())].into(),
            HashMap::new(),
        );
        intake.take(1, subject, &payload(&messages[0]));
        let sealed = intake.take(3, subject, &payload(b));
        assert_eq!(sealed.settled, vec![3]);
        let late = intake.take(2, subject, &payload(&first));
        assert!(late.settled.is_empty());
        let successor = records_of(b).unwrap().remove(0);
        assert_eq!(
            intake.held_tails(),
            vec![(
                "node-a".to_string(),
                successor.body.seq,
                successor.body.prev.clone()
            )]
        );
        let released = intake.release_covered("node-a", successor.body.seq, &successor.body.prev);
        assert_eq!(released.settled, vec![2]);
        assert_eq!(released.ready.len(), first.lines.len());

        // What PostgreSQL would refuse is refused before it: a time out of range.
        let mut bad = forged_after(&messages[0], "node-a");
        let (hash, json) = bad.lines[0].split_once(' ').unwrap();
        let mut body: RecordBody = serde_json::from_str(json).unwrap();
        body.time_unix_ms = -1;
        let json = serde_json::to_string(&body).unwrap();
        let prev = decode_hash(&body.prev).unwrap();
        let new_hash = hex::encode(record_hash(&prev, json.as_bytes()));
        assert_ne!(hash, new_hash);
        bad.hash = new_hash.clone();
        bad.lines = vec![format!("{new_hash} {json}")];
        assert!(records_of(&bad).unwrap_err().contains("time outside"));

        // Without keys nothing is indexed: a chain-consistent forgery (issue 24's attack)
        // is refused, not put into a citizen's report.
        let mut intake = Intake::new(HashMap::new(), HashMap::new());
        let forged = forged_after(&messages[0], "node-a");
        let step = intake.take(1, subject, &payload(&forged));
        assert!(step.ready.is_empty());
        assert_eq!(step.settled, vec![1]);
        assert!(step.problems[0].2.contains("no key for this node"));
    }

    #[test]
    fn months_and_partition_names_round_trip() {
        // 2026-11-26T14:00:00Z
        let m = month_of(1_795_615_200_000);
        assert_eq!(month_suffix(m), "p202611");
        assert_eq!(month_start(m), "2026-11-01 00:00:00+00");
        assert_eq!(month_start(m + 1), "2026-12-01 00:00:00+00");
        assert_eq!(month_start(m + 2), "2027-01-01 00:00:00+00");
        assert_eq!(partition_month("audit_person_p202611"), Some(m));
        assert_eq!(partition_month("audit_person_p202613"), None);
        assert_eq!(partition_month("audit_record"), None);
    }
}
