//! `popgw audit verify --index`: a node's folder compared with the index, record by
//! record (`verify_against`).

use std::path::Path;

use tokio::sync::mpsc;

use super::{AuditIndex, IndexError};
use crate::audit::StoredRecord;

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
            crate::audit::scan_records(&dir, from, |r| tx.blocking_send(r).is_ok())
        });
        (rx, scan)
    };
    let finished = |scan: tokio::task::JoinHandle<Result<(), crate::audit::AuditError>>| async move {
        Ok::<_, IndexError>(scan.await??)
    };
    let (mut folder, mut scan) = scan_from(1);
    let mut report = IndexReport::default();
    let Some(mut record) = folder.recv().await else {
        finished(scan).await?;
        return empty_folder(dir, index).await;
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
        .map_err(IndexError::from)?;
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
                .map_err(IndexError::from)?;
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

/// A folder without records: its node is named by its signed checkpoints (a new log signs
/// "empty log" when first opened), and every index row of that node is invented —
/// unless the folder's signed retention notes removed its seq (a folder wiped beside a
/// full index is named, not taken for a new node).
async fn empty_folder(dir: &Path, index: &AuditIndex) -> Result<IndexReport, IndexError> {
    let path = dir.to_path_buf();
    let (node, removed_upto) = tokio::task::spawn_blocking(move || {
        let (entries, _) = crate::audit::format::read_log_entries(&path)?;
        let mut node = None;
        let mut removed_upto = 0u64;
        for (_, entry, _) in &entries {
            match entry {
                crate::audit::format::LogEntry::Checkpoint(c) => node = Some(c.node.clone()),
                crate::audit::format::LogEntry::Retention(r) => {
                    let last = r.removed.iter().map(|s| s.last_seq).max().unwrap_or(0);
                    removed_upto = removed_upto.max(last);
                }
            }
        }
        Ok::<_, crate::audit::AuditError>((node, removed_upto))
    })
    .await??;
    let node = node.ok_or_else(|| IndexError::NotAnAuditFolder(dir.to_path_buf()))?;
    let client = index.client().await?;
    let last_indexed = client
        .query_opt(
            "SELECT last_seq FROM audit_index_node WHERE node = $1",
            &[&node],
        )
        .await
        .map_err(IndexError::from)?
        .map_or(0, |r| r.get::<_, i64>(0) as u64);
    let invented = client
        .query(
            "SELECT DISTINCT seq FROM audit_record WHERE node = $1 AND seq > $2
             ORDER BY seq LIMIT 100001",
            &[&node, &(removed_upto as i64)],
        )
        .await
        .map_err(IndexError::from)?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    Ok(IndexReport {
        node,
        indexed_up_to: last_indexed,
        invented,
        ..IndexReport::default()
    })
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
