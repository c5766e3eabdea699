#![doc = include_str!("../../docs/audit-format.md")]

mod entry;
pub(crate) mod format;
mod keys;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use entry::{AuditEntry, Outcome, Pseudonym, RecordedCall};
pub use format::{EntryChainError, LineError, RemovedSegment, RetentionNote, SignatureError};
pub use keys::{load_or_create_signing_key, NodeFolder, Pseudonymizer};
pub use verify::{
    parse_public_key, read_checkpoints, read_records, scan_records, verify_dir, VerifyFailure,
    VerifyReport,
};
pub use writer::AuditLog;
pub mod index;
pub mod witness;

/// The JSON object of one record line; field order is the on-disk order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordBody {
    /// Sequence number in this node's chain, from 1.
    pub seq: u64,
    /// When the record was written (Unix milliseconds).
    pub time_unix_ms: i64,
    /// The node whose chain this is.
    pub node: String,
    /// See [`AuditEntry`].
    pub request_id: String,
    /// See [`AuditEntry`].
    pub client: String,
    /// See [`AuditEntry`].
    pub rpc: String,
    /// See [`AuditEntry`].
    pub procedure: String,
    /// See [`AuditEntry`].
    pub case_id: String,
    /// See [`AuditEntry`].
    pub subject: String,
    /// Absent in records written before this member existed.
    #[serde(default)]
    pub related: Vec<String>,
    /// See [`AuditEntry`].
    pub fields: Vec<String>,
    /// See [`AuditEntry`].
    pub outcome: String,
    /// See [`AuditEntry`].
    pub code: String,
    /// See [`AuditEntry`].
    pub rule: String,
    /// See [`AuditEntry`].
    pub cache: String,
    /// See [`AuditEntry`].
    pub latency_us: u64,
    /// See [`AuditEntry`].
    pub detail: String,
    /// Hash of the previous record (hex; zeros for the first).
    pub prev: String,
}

/// A query's filters, with the personal id already turned into its pseudonym.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Inclusive lower bound, ms since the epoch (0 = none).
    pub from_ms: i64,
    /// Inclusive upper bound (0 = none).
    pub to_ms: i64,
    /// Client identity.
    pub client: String,
    /// Procedure code.
    pub procedure: String,
    /// The dossier number's pseudonym.
    pub case_id: Option<Pseudonym>,
    /// The person's pseudonym (matches the record's subject or one of its related people).
    pub subject: Option<Pseudonym>,
    /// Outcome word or gRPC code name.
    pub outcome: String,
    /// Cache outcome (hit, miss, coalesced, stale, none).
    pub cache: String,
}

impl Filter {
    /// Whether `r` passes every filter set.
    pub fn accepts(&self, r: &RecordBody) -> bool {
        let eq = |f: &str, v: &str| f.is_empty() || f == v;
        (self.from_ms == 0 || r.time_unix_ms >= self.from_ms)
            && (self.to_ms == 0 || r.time_unix_ms <= self.to_ms)
            && eq(&self.client, &r.client)
            && eq(&self.procedure, &r.procedure)
            && self
                .case_id
                .as_ref()
                .is_none_or(|c| c.as_str() == r.case_id)
            && self.subject.as_ref().is_none_or(|s| {
                s.as_str() == r.subject || r.related.iter().any(|p| p == s.as_str())
            })
            && (self.outcome.is_empty() || self.outcome == r.outcome || self.outcome == r.code)
            && eq(&self.cache, &r.cache)
    }
}

/// A record as stored: parsed body, stated hash, the raw JSON that was hashed,
/// and the segment it lives in.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// The parsed record.
    pub body: RecordBody,
    /// Its stated hash (hex).
    pub hash: String,
    /// The exact JSON that was hashed.
    pub json: String,
    /// The segment holding it.
    pub file: PathBuf,
}

/// Returned by [`AuditLog::append`] once the record is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash (hex).
    pub hash: String,
}

/// A signed statement that record `seq` has hash `head_hash`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The record signed for.
    pub seq: u64,
    /// Its hash (hex).
    pub head_hash: String,
    /// When it was signed.
    pub time_unix_ms: i64,
    /// The node whose chain it is.
    pub node: String,
    /// ed25519 signature (hex) over the fields above.
    pub signature: String,
    /// SHA-256 (hex) of the previous line of `checkpoints.log` (64 zeros for the
    /// first), signed too: a removed, inserted or reordered line breaks the chain.
    /// Absent in lines written before checkpoints were chained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
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
    /// Folder of segments and checkpoints.
    pub dir: PathBuf,
    /// Node id; may not contain `\n`.
    pub node: String,
    /// When an append counts as durable.
    pub durability: Durability,
    /// Rotate a segment past this size.
    pub segment_max_bytes: u64,
    /// Rotate a segment older than this.
    pub segment_max_age: Duration,
    /// Sign a checkpoint every this many records...
    pub checkpoint_every_records: u64,
    /// ...or this often, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Delete whole segments whose records are all older than this.
    pub retention: Option<Duration>,
    /// Most records written in one group commit.
    pub max_batch: usize,
    /// How long the writer waits before a group commit while records arrive
    /// concurrently, so that more share its write, fdatasync and seal (zero: never).
    pub commit_delay: Duration,
    /// Most records waiting for the writer; beyond, an append is refused at once
    /// ([`AuditError::Overloaded`]) instead of queueing without bound.
    pub queue_capacity: usize,
    /// An append not durable within this long (a hung disk) fails the log closed.
    pub append_timeout: Duration,
    /// Where the writer reports queue depth, batch sizes and write times.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// A log is expected in `dir` (its signing key was in use before this start): an
    /// empty folder is then a wiped log, and opening refuses.
    pub expect_existing: bool,
    /// The gateway's requests running, when the log serves one: a batch that already
    /// holds a record of every running request skips the commit delay (none could join
    /// it while the writer waits).
    pub requests_running: Option<RequestsRunning>,
}

/// How many of the gateway's requests are running: the permits taken from its in-flight
/// semaphore (`limits.max_in_flight`). Every request that waits on an audit record
/// holds one, so when the writer's batch is at least this large, every request that
/// could add a record to it already has.
#[derive(Clone, Debug)]
pub struct RequestsRunning {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl RequestsRunning {
    /// Over a semaphore created with `max` permits.
    pub fn new(permits: Arc<tokio::sync::Semaphore>, max: usize) -> Self {
        RequestsRunning { permits, max }
    }

    /// Requests running now.
    pub fn count(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
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
            commit_delay: Duration::from_micros(200),
            queue_capacity: 65_536,
            append_timeout: Duration::from_secs(5),
            metrics: Arc::default(),
            expect_existing: false,
            requests_running: None,
        }
    }
}

/// Where a log's files stop being a valid log (what recovery refuses to continue).
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    /// A line of a segment is not a record line.
    #[error("{}: {at}: {source}", path.display())]
    Line {
        /// The segment.
        path: PathBuf,
        /// Where in it.
        at: Place,
        /// Why.
        source: LineError,
    },
    /// A segment other than the last ends inside a line.
    #[error("{}: unterminated last line", path.display())]
    Unterminated {
        /// The segment.
        path: PathBuf,
    },
    /// A line of `checkpoints.log` is not an entry.
    #[error("{}: line {line}: {source}", path.display())]
    Entry {
        /// `checkpoints.log`.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// serde's error (checkpoints hold no personal data).
        source: serde_json::Error,
    },
    /// A checkpoint or retention note not signed by this log's key.
    #[error("{}: line {line}: {source}; run verify", path.display())]
    Signature {
        /// `checkpoints.log`.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// Why.
        source: SignatureError,
    },
    /// `checkpoints.log`'s lines are not one chain.
    #[error("{0}; run verify")]
    Entries(EntryChainError),
    /// A segment's last record does not lead to the next segment's first.
    #[error("{} does not end just before {}", before.display(), after.display())]
    Gap {
        /// The earlier segment.
        before: PathBuf,
        /// The later one.
        after: PathBuf,
    },
    /// The oldest segment starts past seq 1 and no retention note says why.
    #[error("{} starts at seq {first_seq} but no retention note explains the earlier records", path.display())]
    Unexplained {
        /// The segment.
        path: PathBuf,
        /// Its first seq.
        first_seq: u64,
    },
    /// The records end before what a signed checkpoint covers.
    #[error("log ends at seq {last} but a signed checkpoint covers seq {signed}: records were removed; run verify")]
    Truncated {
        /// The last record there is.
        last: u64,
        /// What the checkpoint covers.
        signed: u64,
    },
    /// A record is not what the signed checkpoint says it was.
    #[error("record {seq} differs from the signed checkpoint; run verify")]
    DiffersFromCheckpoint {
        /// The checkpoint's seq.
        seq: u64,
    },
}

/// Where in a segment a bad line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this byte offset.
    Offset(usize),
    /// The segment's last complete line.
    LastRecord,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Offset(offset) => write!(f, "offset {offset}"),
            Place::LastRecord => f.write_str("last record"),
        }
    }
}

/// Errors of the audit log.
#[derive(thiserror::Error, Debug)]
pub enum AuditError {
    /// Writing or syncing a file failed.
    #[error("audit log write failed: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier write failed: every append is refused until restart.
    #[error("audit log is in a failed state after an earlier write error; restart the gateway")]
    Failed,
    /// The log was shut down.
    #[error("audit log is shut down")]
    Closed,
    /// The files on disk are not a valid log.
    #[error("audit log is corrupt: {0}")]
    Corrupt(#[from] Corruption),
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
    /// The signing key is not this log's: another key in `audit-signing.pub`, or not the
    /// pinned `audit.public_key`.
    #[error("{0}")]
    KeyMismatch(String),
    /// The folder and its keys do not belong together: a log wiped or moved while its
    /// key was in use, or records whose key is missing.
    #[error("{0}")]
    Unmatched(String),
    /// Opening the log failed in its thread (a panic: a bug, reported, never papered over).
    #[error("opening the audit log failed: {0}")]
    Open(String),
}
