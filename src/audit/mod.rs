#![doc = include_str!("../../docs/audit-format.md")]

mod format;
mod keys;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use format::{RemovedSegment, RetentionNote};
pub use keys::{load_or_create_signing_key, Pseudonymizer};
pub use verify::{
    read_checkpoints, read_records, scan_records, verify_dir, VerifyFailure, VerifyReport,
};
pub use writer::AuditLog;

/// What the caller supplies for one request; the log adds seq, time, node and
/// the chain.
#[derive(Default, Clone, Debug)]
pub struct AuditEntry {
    pub request_id: String,
    pub client: String,
    pub rpc: String,
    pub procedure: String,
    pub case_id: String,
    /// Keyed pseudonym of the personal id ([`Pseudonymizer::pseudonym`]), never the id itself.
    pub subject: String,
    /// Pseudonyms of other people whose data the answer disclosed (relatives, household).
    pub related: Vec<String>,
    /// Names of the fields disclosed, never their values.
    pub fields: Vec<String>,
    pub outcome: String,
    pub code: String,
    pub rule: String,
    /// `hit`, `miss`, `stale` or `none`.
    pub cache: String,
    pub latency_us: u64,
    pub detail: String,
}

/// The JSON object of one record line; field order is the on-disk order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordBody {
    pub seq: u64,
    pub time_unix_ms: i64,
    pub node: String,
    pub request_id: String,
    pub client: String,
    pub rpc: String,
    pub procedure: String,
    pub case_id: String,
    pub subject: String,
    /// Absent in records written before this member existed.
    #[serde(default)]
    pub related: Vec<String>,
    pub fields: Vec<String>,
    pub outcome: String,
    pub code: String,
    pub rule: String,
    pub cache: String,
    pub latency_us: u64,
    pub detail: String,
    pub prev: String,
}

/// A record as stored: parsed body, stated hash, the raw JSON that was hashed,
/// and the segment it lives in.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub body: RecordBody,
    pub hash: String,
    pub json: String,
    pub file: PathBuf,
}

/// Returned by [`AuditLog::append`] once the record is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    pub hash: String,
}

/// A signed statement that record `seq` has hash `head_hash`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub head_hash: String,
    pub time_unix_ms: i64,
    pub node: String,
    pub signature: String,
}

/// How appends are made durable. See the module docs for what a crash can lose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// One `fdatasync` per batch before the batch's waiters are answered.
    #[default]
    Fsync,
    /// Write without fsync; fsync only at checkpoints, rotation and shutdown.
    Buffered,
}

/// Configuration of an [`AuditLog`].
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Node id; may not contain `\n`.
    pub node: String,
    pub durability: Durability,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub checkpoint_every_records: u64,
    pub checkpoint_interval: Duration,
    /// Delete whole segments whose records are all older than this.
    pub retention: Option<Duration>,
    /// Most records written in one group commit.
    pub max_batch: usize,
    /// Most records waiting for the writer; beyond, an append is refused at once
    /// ([`AuditError::Overloaded`]) instead of queueing without bound.
    pub queue_capacity: usize,
    /// An append not durable within this long (a hung disk) fails the log closed.
    pub append_timeout: Duration,
    /// Where the writer reports queue depth, batch sizes and write times.
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl AuditConfig {
    /// Defaults: `Fsync`, 64 MiB segments, 1 h segment age, a checkpoint every
    /// 1000 records or 10 s, no retention, batches of at most 4096 records.
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        AuditConfig {
            dir: dir.into(),
            node: node.into(),
            durability: Durability::Fsync,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
            checkpoint_every_records: 1000,
            checkpoint_interval: Duration::from_secs(10),
            retention: None,
            max_batch: 4096,
            queue_capacity: 65_536,
            append_timeout: Duration::from_secs(5),
            metrics: Arc::default(),
        }
    }
}

/// Errors of the audit log.
#[derive(thiserror::Error, Debug)]
pub enum AuditError {
    #[error("audit log write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit log is in a failed state after an earlier write error; restart the gateway")]
    Failed,
    #[error("audit log is shut down")]
    Closed,
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    /// Another process writes this folder: two writers would fork the chain for good.
    #[error("audit folder {dir} is in use by another popgw ({holder}); two writers would fork the chain")]
    Locked {
        /// The folder.
        dir: String,
        /// Who holds it, as its lock file says ("pid N").
        holder: String,
    },
    /// The writer's queue is full: this record was not accepted (nothing disclosed).
    #[error("audit queue full ({0} records waiting); nothing disclosed")]
    Overloaded(usize),
    /// The record was not durable in time: the disk hangs; the log fails closed.
    #[error("audit write not durable within {0} ms; failing closed until restart")]
    Stalled(u128),
    /// The pseudonym key does not belong to this audit log.
    #[error("{0}")]
    PseudonymKey(String),
}
