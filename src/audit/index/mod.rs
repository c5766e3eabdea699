//! The central audit index: every gateway node's records in PostgreSQL, for questions
//! no single node can answer — an operator's query across the nodes, a citizen's own
//! access report — in a time that does not grow with the log.
//!
//! # Feed
//! The [`Indexer`] (`popgw audit index`, or a task of `popgw serve` with
//! `[audit.index] run = true`) reads the witness stream ([`crate::audit::witness`]: the record
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

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::audit::{RecordBody, StoredRecord};
use crate::link::postgres::{LinkError, Migrations, PgFailure, PgLink};

/// The index's migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/audit-index/0001_index.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/audit-index/0002_contiguous.sql"),
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

/// The index's schema: [`MIGRATIONS`], recorded in `popgw_audit_index_migrations`.
pub const SCHEMA: Migrations = Migrations {
    list: MIGRATIONS,
    table: "popgw_audit_index_migrations",
    lock: LOCK_KEY,
};

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
    /// PostgreSQL failed (its message and SQLSTATE, never its DETAIL).
    #[error("audit index unavailable: {0}")]
    Postgres(#[from] PgFailure),
    /// The link to PostgreSQL cannot be set up (URL, TLS material, password).
    #[error("audit index unavailable: {0}")]
    Link(#[from] LinkError),
    /// No pooled connection (explained by the link: TLS, password, refused, timed out).
    #[error("audit index unavailable: {0}")]
    Pool(String),
    /// A row of the index is not a record (written by something else than popgw).
    #[error("audit index unavailable: indexed record {node}:{seq} does not parse: {source} (run popgw audit verify --index)")]
    Unparsable {
        /// Its node.
        node: String,
        /// Its sequence number.
        seq: i64,
        /// serde's error.
        source: serde_json::Error,
    },
    /// The witness stream could not be read.
    #[error("audit index feed: {step}: {problem}")]
    Feed {
        /// What was being done: connect, stream, consumer, consume, ack.
        step: &'static str,
        /// The NATS client's error.
        problem: String,
    },
    /// The node's folder could not be read (verify).
    #[error("audit folder: {0}")]
    Folder(#[from] crate::audit::AuditError),
    /// Reading the folder failed in its task.
    #[error("audit folder: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The folder holds neither records nor a signed checkpoint.
    #[error("audit folder: {}: no records and no signed checkpoint: not an audit folder", .0.display())]
    NotAnAuditFolder(std::path::PathBuf),
}

impl From<tokio_postgres::Error> for IndexError {
    fn from(e: tokio_postgres::Error) -> IndexError {
        IndexError::Postgres(e.into())
    }
}

fn feed<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> IndexError {
    move |e| IndexError::Feed {
        step,
        problem: e.to_string(),
    }
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

mod feed;
mod intake;
mod store;
mod verify;

pub use feed::{FeedConfig, Indexer};
pub use intake::{records_of, Intake, Step, MAX_HELD_PARTS};
pub use verify::{verify_against, IndexReport};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::format::{decode_hash, record_hash};
    use crate::audit::witness::Head;
    use crate::audit::{witness, AuditConfig, AuditEntry, AuditLog};
    use ed25519_dalek::SigningKey;
    use std::collections::HashMap;
    use std::path::Path;

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
        let hash = crate::audit::format::encode_hex(record_hash(&prev, json.as_bytes()));
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
        let new_hash = crate::audit::format::encode_hex(record_hash(&prev, json.as_bytes()));
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
