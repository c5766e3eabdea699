//! The index's tables: writing records and their people, queries, histories, partitions
//! and retention (`AuditIndex`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::{
    month_of, month_start, month_suffix, partition_month, AuditIndex, IndexConfig, IndexError,
    IndexedRecord, PersonEvent, CONTIGUOUS_SCAN, LOCK_KEY, MAX_TIME_MS, MIN_TIME_MS, SCHEMA,
};
use crate::audit::{Filter, RecordBody, StoredRecord};
use crate::link::postgres::PgLink;

const RECORD_COLUMNS: &str = "r.node, r.seq, r.hash, r.json";

impl AuditIndex {
    /// A pool on the index; connects on first use (a gateway starts while PostgreSQL is
    /// down, and answers UNAVAILABLE from the index until it is back).
    pub fn lazy(config: &IndexConfig) -> Result<AuditIndex, IndexError> {
        let link = PgLink::parse(&config.url)?;
        // Point queries: no parallel workers (launching them cost more than the query at
        // 10 M records, measured), and one generic plan per prepared statement, pruned at
        // run time (planning 25 monthly partitions of two tables took 6–8 ms a call).
        let options = format!(
            "-c statement_timeout={} -c max_parallel_workers_per_gather=0 \
             -c plan_cache_mode=force_generic_plan",
            config.timeout.as_millis().max(1)
        );
        let pool = link.pool(
            "popgw-audit-index",
            &options,
            config.pool_size,
            config.timeout,
        )?;
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

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, IndexError> {
        self.pool
            .get()
            .await
            .map_err(|e| IndexError::Pool(self.link.pool_error(e, self.timeout)))
    }

    /// Applies the migrations this database lacks ([`SCHEMA`]).
    pub async fn migrate(&self) -> Result<(), IndexError> {
        let mut client = self.client().await?;
        SCHEMA.apply(&mut client).await.map_err(IndexError::from)
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
        let txn = client.transaction().await.map_err(IndexError::from)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        }
        txn.commit().await.map_err(IndexError::from)?;
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
        let txn = client.transaction().await.map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        txn.execute(
            "INSERT INTO audit_person (pseudonym, at, node, seq, related)
             SELECT p, timestamptz 'epoch' + t * interval '1 millisecond', node, seq, related
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::bool[])
                  AS u(p, t, node, seq, related)
             ON CONFLICT DO NOTHING",
            &[&p_pseudonym, &p_time, &p_node, &p_seq, &p_related],
        )
        .await
        .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        }
        txn.commit().await.map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        let row = client
            .query_opt(&statement, &[&node, &(seq as i64)])
            .await
            .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
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
        let statement = client
            .prepare_cached(&sql)
            .await
            .map_err(IndexError::from)?;
        let rows = client
            .query_raw(
                &statement,
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
            )
            .await
            .map_err(IndexError::from)?;
        futures::pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let record = stored_row(&row.map_err(IndexError::from)?)?;
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
            .map_err(IndexError::from)?;
        let rows = client
            .query(
                &statement,
                &[&pseudonym, &from_ms, &to_ms, &rpcs, &(limit as i64)],
            )
            .await
            .map_err(IndexError::from)?;
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
        let txn = client.transaction().await.map_err(IndexError::from)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(IndexError::from)?;
        let rows = txn
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname IN ('audit_record', 'audit_person')",
                &[],
            )
            .await
            .map_err(IndexError::from)?;
        let mut dropped = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            if partition_month(&name).is_some_and(|m| m < month) {
                txn.batch_execute(&format!("DROP TABLE {name}"))
                    .await
                    .map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        }
        txn.commit().await.map_err(IndexError::from)?;
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
            .map_err(IndexError::from)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A row of `RECORD_COLUMNS`.
fn stored_row(row: &tokio_postgres::Row) -> Result<IndexedRecord, IndexError> {
    let (node, seq): (String, i64) = (row.get(0), row.get(1));
    let json: String = row.get(3);
    let body: RecordBody =
        serde_json::from_str(&json).map_err(|source| IndexError::Unparsable {
            node: node.clone(),
            seq,
            source,
        })?;
    Ok(IndexedRecord {
        body,
        hash: row.get(2),
        json,
    })
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
        .map_err(IndexError::from)?;
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
        .map_err(IndexError::from)?;
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
        .map_err(IndexError::from)?;
    } else if row.get::<_, Option<i64>>(0).is_none() {
        txn.execute(
            "UPDATE audit_index_node SET contiguous_seq = $2 WHERE node = $1",
            &[&node, &mark],
        )
        .await
        .map_err(IndexError::from)?;
    }
    Ok(())
}
