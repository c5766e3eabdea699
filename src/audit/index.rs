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
//! are indexed: each hash recomputed from the line before it, the lines consecutive,
//! the last one the message's head. A message that fails is not indexed; the problem is
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
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::format::{decode_hash, parse_line, record_hash};
use super::witness::Head;
use super::{Filter, RecordBody, StoredRecord};
use crate::telemetry::Metrics;

/// The index's migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    include_str!("../../migrations/audit-index/0001_index.sql"),
)];

/// Advisory lock held by migrations and partition changes.
const LOCK_KEY: i64 = 0x706f_7067_7761_7564; // "popgwaud"

/// Where the index is (`[audit.index]`).
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// `postgres://user@host/db`.
    pub url: String,
    /// Every call (pool wait, connect, statement) ends within this.
    pub timeout: Duration,
    /// Connections at most.
    pub pool_size: usize,
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
    timeout: Duration,
    months: Mutex<HashSet<i32>>,
}

impl std::fmt::Debug for AuditIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditIndex")
            .field("timeout", &self.timeout)
            .finish()
    }
}

const RECORD_COLUMNS: &str = "r.node, r.seq, r.hash, r.json";

impl AuditIndex {
    /// A pool on the index; connects on first use (a gateway starts while PostgreSQL is
    /// down, and answers UNAVAILABLE from the index until it is back).
    pub fn lazy(config: &IndexConfig) -> Result<AuditIndex, IndexError> {
        let mut pg_config: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| IndexError::Unavailable(format!("PostgreSQL URL: {e}")))?;
        pg_config.connect_timeout(config.timeout);
        pg_config.application_name("popgw-audit-index");
        pg_config.options(format!(
            "-c statement_timeout={}",
            config.timeout.as_millis().max(1)
        ));
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| IndexError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        Ok(AuditIndex {
            pool,
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
            deadpool_postgres::PoolError::Backend(e) => pg(e),
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
        let n = records.len();
        let (mut node, mut seq, mut time, mut client_, mut rpc, mut procedure) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut case_id, mut outcome, mut code, mut cache, mut hash, mut json) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut p_pseudonym, mut p_time, mut p_node, mut p_seq, mut p_related) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut heads: HashMap<&str, (i64, &str)> = HashMap::new();
        for r in records {
            let b = &r.body;
            node.push(b.node.as_str());
            seq.push(b.seq as i64);
            time.push(b.time_unix_ms);
            client_.push(b.client.as_str());
            rpc.push(b.rpc.as_str());
            procedure.push(b.procedure.as_str());
            case_id.push(b.case_id.as_str());
            outcome.push(b.outcome.as_str());
            code.push(b.code.as_str());
            cache.push(b.cache.as_str());
            hash.push(r.hash.as_str());
            json.push(r.json.as_str());
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
            let head = heads.entry(b.node.as_str()).or_insert((0, ""));
            if b.seq as i64 > head.0 {
                *head = (b.seq as i64, r.hash.as_str());
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
        for (node, (seq, hash)) in &heads {
            txn.execute(
                "INSERT INTO audit_index_node (node, last_seq, last_hash) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET
                     last_hash = CASE WHEN EXCLUDED.last_seq > audit_index_node.last_seq
                                      THEN EXCLUDED.last_hash ELSE audit_index_node.last_hash END,
                     last_seq = greatest(audit_index_node.last_seq, EXCLUDED.last_seq),
                     updated_at = now()",
                &[node, seq, hash],
            )
            .await
            .map_err(pg)?;
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
        let (from, at) = if filter.subject.is_empty() {
            ("audit_record r", "r.at")
        } else {
            param(
                &mut clauses,
                "p.pseudonym = ?",
                Box::new(filter.subject.clone()),
            );
            (
                "audit_person p JOIN audit_record r ON r.node = p.node AND r.seq = p.seq AND r.at = p.at",
                "p.at",
            )
        };
        if filter.from_ms != 0 {
            let sql = format!("{at} >= timestamptz 'epoch' + ?::int8 * interval '1 millisecond'");
            param(&mut clauses, &sql, Box::new(filter.from_ms));
        }
        if filter.to_ms != 0 {
            let sql = format!("{at} <= timestamptz 'epoch' + ?::int8 * interval '1 millisecond'");
            param(&mut clauses, &sql, Box::new(filter.to_ms));
        }
        for (column, value) in [
            ("r.client", &filter.client),
            ("r.procedure", &filter.procedure),
            ("r.case_id", &filter.case_id),
            ("r.cache", &filter.cache),
        ] {
            if !value.is_empty() {
                param(
                    &mut clauses,
                    &format!("{column} = ?"),
                    Box::new(value.clone()),
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
        let rows = client
            .query_raw(
                &sql,
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
        // 0: open (9999-12-31, well inside PostgreSQL's interval range).
        let to_ms = if to_ms == 0 {
            253_402_300_799_000
        } else {
            to_ms
        };
        let rpcs: Vec<&str> = rpcs.to_vec();
        let rows = client
            .query(
                "SELECT r.node, r.seq, r.hash, r.json, p.related
                 FROM audit_person p
                 JOIN audit_record r ON r.node = p.node AND r.seq = p.seq AND r.at = p.at
                 WHERE p.pseudonym = $1
                   AND p.at >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
                   AND p.at <= timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
                   AND r.code = 'OK' AND r.rpc = ANY($4)
                 ORDER BY p.at, p.node, p.seq
                 LIMIT $5",
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
    for (i, line) in head.lines.iter().enumerate() {
        let p = parse_line(line.as_bytes()).map_err(|e| format!("line {i}: {e}"))?;
        if p.seal.is_some() {
            return Err(format!(
                "line {i}: carries a seal (lines are shipped without)"
            ));
        }
        let b = &p.body;
        if b.node != head.node {
            return Err(format!(
                "line {i}: record of node {:?} in a message of node {:?}",
                b.node, head.node
            ));
        }
        let prev =
            decode_hash(&b.prev).ok_or_else(|| format!("seq {}: prev is not a hash", b.seq))?;
        if hex::encode(record_hash(&prev, p.json.as_bytes())) != p.hash {
            return Err(format!("seq {}: hash does not match its JSON", b.seq));
        }
        if let Some(before) = out.last() {
            if b.seq != before.body.seq + 1 || b.prev != before.hash {
                return Err(format!(
                    "seq {}: does not follow seq {} (gap or broken chain)",
                    b.seq, before.body.seq
                ));
            }
        } else if head.first_seq != 0 && b.seq != head.first_seq {
            return Err(format!(
                "first line is seq {}, the message says {}",
                b.seq, head.first_seq
            ));
        }
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

/// Feeds the index from the witness stream (see the module documentation).
pub struct Indexer {
    index: Arc<AuditIndex>,
    /// NATS server.
    url: String,
    /// The witness stream.
    stream: String,
    /// The durable consumer's name (one per index database).
    consumer: String,
    /// Drop months older than this many (0: keep all).
    retain_months: u32,
    metrics: Arc<Metrics>,
}

/// The witness stream and consumer an [`Indexer`] reads.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// NATS server, `nats://127.0.0.1:4222`.
    pub url: String,
    /// The witness stream (`POPGW_AUDIT`).
    pub stream: String,
    /// The durable consumer (`popgw-index`): one per index database.
    pub consumer: String,
    /// Months of records kept (0: all).
    pub retain_months: u32,
}

/// Messages indexed in one transaction at most.
const MESSAGES_PER_COMMIT: usize = 256;

impl Indexer {
    /// An indexer feeding `index` from `feed`.
    pub fn new(index: Arc<AuditIndex>, feed: FeedConfig, metrics: Arc<Metrics>) -> Indexer {
        Indexer {
            index,
            url: feed.url,
            stream: feed.stream,
            consumer: feed.consumer,
            retain_months: feed.retain_months,
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
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.url.as_str())
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
        let mut chains = self.index.heads().await?;
        self.retention().await?;
        let mut last_retention = tokio::time::Instant::now();
        if std::mem::take(warned) {
            tracing::info!("audit indexer running again");
        }
        loop {
            let first = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
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
            let mut records = Vec::new();
            let mut problems = Vec::new();
            for message in &batch {
                let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                let head: Head = match serde_json::from_slice(&message.payload) {
                    Ok(h) => h,
                    Err(e) => {
                        let node = message
                            .subject
                            .as_str()
                            .rsplit('.')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        problems.push((node, stream_seq, format!("not a witness message: {e}")));
                        continue;
                    }
                };
                match records_of(&head) {
                    Ok(lines) => {
                        if let (Some(first), Some((seq, hash))) =
                            (lines.first(), chains.get(&head.node))
                        {
                            if first.body.seq == seq + 1 && &first.body.prev != hash {
                                problems.push((
                                    head.node.clone(),
                                    stream_seq,
                                    format!(
                                        "seq {} does not chain to the indexed seq {seq}",
                                        first.body.seq
                                    ),
                                ));
                            }
                        }
                        if let Some(last) = lines.last() {
                            let entry = chains
                                .entry(head.node.clone())
                                .or_insert((0, String::new()));
                            if last.body.seq > entry.0 {
                                *entry = (last.body.seq, last.hash.clone());
                            }
                        }
                        records.extend(lines);
                    }
                    Err(problem) => problems.push((head.node.clone(), stream_seq, problem)),
                }
            }
            for (node, stream_seq, problem) in &problems {
                // Node ids and reasons only: never a record's content.
                tracing::warn!(node = %node, stream_seq, problem = %problem, "audit index: message not indexed");
            }
            let started = std::time::Instant::now();
            let inserted = self.index.insert(&records, &problems).await?;
            self.metrics.index_records.inc_by(inserted);
            self.metrics
                .index_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            // Acknowledged only once committed: a crash before this redelivers, and the
            // redelivery inserts nothing new.
            for message in &batch {
                message
                    .ack_with(AckKind::Ack)
                    .await
                    .map_err(|e| feed("ack")(e.to_string()))?;
            }
            if last_retention.elapsed() > Duration::from_secs(3600) {
                self.retention().await?;
                last_retention = tokio::time::Instant::now();
            }
        }
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
    /// Records after the newest indexed one (the indexer is behind, or stopped).
    pub not_yet_indexed: u64,
    /// Records older than the index's retention, not compared.
    pub dropped: u64,
}

impl IndexReport {
    /// Whether the index holds the folder's records and nothing else.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.altered.is_empty() && self.invented.is_empty()
    }
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
    // The folder, streamed from a blocking thread; the index, read in pages by seq.
    let (tx, mut folder) = mpsc::channel::<StoredRecord>(4096);
    let scan_dir = dir.to_path_buf();
    let scan = tokio::task::spawn_blocking(move || {
        super::scan_records(&scan_dir, 1, |r| tx.blocking_send(r).is_ok())
    });
    let mut report = IndexReport::default();
    let Some(mut record) = folder.recv().await else {
        scan.await
            .map_err(|e| IndexError::Folder(e.to_string()))?
            .map_err(|e| IndexError::Folder(e.to_string()))?;
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
    let page = |after: i64| {
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
                     FROM audit_record r WHERE r.node = $1 AND r.seq > $2
                     ORDER BY r.seq LIMIT 5000",
                    &[&node, &after],
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
    let mut rows = page(0).await?;
    let mut after = 0i64;
    let mut folder_done = false;
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
                after = row.seq as i64;
                rows.pop_front();
            }
            (false, row) => {
                let seq = record.body.seq;
                match row {
                    Some(row) if row.seq < seq => {
                        // Before the folder's first record: removed on the node by
                        // retention, not invented.
                        if row.seq >= first_seq {
                            report.invented.push(row.seq);
                        }
                        after = row.seq as i64;
                        rows.pop_front();
                        continue;
                    }
                    Some(row) if row.seq == seq => {
                        match compare_row(&record, row) {
                            Ok(()) => report.matched += 1,
                            Err(why) => report.altered.push((seq, why)),
                        }
                        after = row.seq as i64;
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
                match folder.recv().await {
                    Some(next) => record = next,
                    None => folder_done = true,
                }
            }
        }
        if report.missing.len() > 100_000 || report.invented.len() > 100_000 {
            break; // enough to say the index is wrong
        }
    }
    drop(folder);
    scan.await
        .map_err(|e| IndexError::Folder(e.to_string()))?
        .map_err(|e| IndexError::Folder(e.to_string()))?;
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
