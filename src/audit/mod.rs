//! Tamper-evident, hash-chained, signed audit log.
//!
//! Every request the gateway answers produces exactly one record. Records are
//! chained by SHA-256 (one chain per node and directory), written with group
//! commit (one `write` + one `fdatasync` per batch) and periodically covered by
//! an ed25519-signed checkpoint. An answer may leave the gateway only after
//! [`AuditLog::append`] has returned `Ok`, i.e. after its record is durable.
//!
//! # On-disk format (version 1)
//!
//! This section is written so that an auditor can implement an independent
//! verifier without reading this code.
//!
//! ## Directory
//!
//! One directory per node (never share a directory between two running
//! writers). It contains:
//!
//! * `audit-<S>.log` — segments. `<S>` is the sequence number of the first
//!   record the segment holds (or will hold), in decimal, zero-padded to 20
//!   digits, e.g. `audit-00000000000000000001.log`. Sorting the names sorts the
//!   segments. Segments are contiguous: the first record of a segment has
//!   the sequence number following the last record of the previous one. The
//!   last segment may be empty.
//! * `checkpoints.log` — signed checkpoints and retention notes.
//! * `audit-signing.pub` — the ed25519 public key, 64 lowercase hex chars
//!   (plus an optional trailing newline). An auditor should pin this key
//!   out of band: whoever can rewrite the directory can also replace it.
//!
//! Other files are ignored.
//!
//! ## Records
//!
//! Each record is one line, UTF-8, terminated by `\n`:
//!
//! ```text
//! <hash> <json>\n
//! ```
//!
//! * `<hash>` is 64 lowercase hex characters: `SHA-256(prev || json)` where
//!   `prev` is the *raw 32 bytes* of the previous record's hash (32 zero bytes
//!   for the record with `seq` 1) and `json` is the exact bytes between the
//!   single space and the terminating `\n`. A verifier never re-serialises
//!   the JSON; it hashes the bytes as found.
//! * `<json>` is a single-line JSON object with these members, in this order:
//!
//! | member | type | meaning |
//! |---|---|---|
//! | `seq` | u64 | sequence number, 1, 2, 3, … without gaps |
//! | `time_unix_ms` | i64 | commit time of the record's batch, ms since the Unix epoch (UTC) |
//! | `node` | string | gateway node id |
//! | `request_id` | string | request id |
//! | `client` | string | authenticated client identity |
//! | `rpc` | string | gRPC method (`audit.recovery` for records the log writes itself) |
//! | `procedure` | string | administrative procedure the request was made for |
//! | `case_id` | string | case id given by the client |
//! | `subject` | string | keyed pseudonym (hex HMAC-SHA-256) of the personal id, never the id |
//! | `related` | array of strings | pseudonyms of other people whose data the answer disclosed (relatives, household members); may be empty |
//! | `fields` | array of strings | names of the fields disclosed (never values) |
//! | `outcome` | string | outcome, e.g. `OK`, `DENIED`, `TORN_TAIL_CUT` |
//! | `code` | string | gRPC status code name |
//! | `rule` | string | matching access rule |
//! | `cache` | string | `hit`, `miss`, `stale` or `none` |
//! | `latency_us` | u64 | request latency in microseconds |
//! | `detail` | string | free text |
//! | `prev` | string | hex of the previous record's hash (64 zeros for `seq` 1) |
//!
//! A verifier checks, for every record in order: the line parses; the hash
//! recomputes; `seq` is the previous `seq` + 1; `prev` equals the previous
//! record's hash; the first record of a segment has the `seq` in the file name.
//!
//! The first surviving record either has `seq` 1 and `prev` of 64 zeros, or
//! (after retention) some retention note (below) lists a removed segment with
//! `last_seq` = `seq - 1` and `last_hash` = `prev`, and the removed ranges of
//! all notes cover 1 ..= `seq - 1` without holes.
//!
//! A final line of the *last* segment that has no terminating `\n` is a write
//! in progress or a torn write from a crash; it is not part of the log.
//! When the writer opens the directory it cuts such a torn tail (and any
//! unverifiable records after the last intact one in the last segment) and
//! then appends a record with `rpc` = `audit.recovery`, `outcome` =
//! `TORN_TAIL_CUT` and a `detail` naming the number of bytes cut. The chain
//! continues through the cut (the recovery record's `prev` is the last intact
//! record's hash), so a verifier needs no special case for it.
//!
//! ## `checkpoints.log`
//!
//! One JSON object per line, `\n`-terminated, discriminated by `kind`:
//!
//! * `{"kind":"checkpoint","seq":N,"head_hash":"<hex>","time_unix_ms":T,"node":"<node>","signature":"<hex>"}`
//!   states that record `N` has hash `head_hash` (`seq` 0 with 64 zeros means
//!   "empty log"). The signature is ed25519 (128 lowercase hex chars) over the
//!   UTF-8 bytes of
//!   `popgw-audit-checkpoint-v1\n{seq}\n{head_hash}\n{time_unix_ms}\n{node}`
//!   (decimal integers, no trailing newline).
//! * `{"kind":"retention","removed":[{"file":"audit-….log","first_seq":A,"last_seq":B,"last_hash":"<hex>"},…],"time_unix_ms":T,"node":"<node>","signature":"<hex>"}`
//!   states that whole segments were deleted on purpose; `last_hash` is the
//!   hash of record `B`, the last one of the removed segment. The signature is
//!   over `popgw-audit-retention-v1\n{time_unix_ms}\n{node}\n{count}` followed,
//!   for every removed entry in order, by `\n{file}\n{first_seq}\n{last_seq}\n{last_hash}`.
//!
//! Node ids may not contain `\n`, so these byte strings are unambiguous.
//!
//! A verifier checks every signature, and that for every checkpoint whose
//! `seq` is not in a removed range the record with that `seq` exists and its
//! hash equals `head_hash`. A checkpoint naming a `seq` beyond the end of the
//! log means records were cut off behind a signed checkpoint. A final line of
//! `checkpoints.log` without `\n` is a torn write and is ignored.
//!
//! Records are only ever covered by a checkpoint after they were fsynced (also
//! in [`Durability::Buffered`] mode), so a crash never leaves a checkpoint
//! pointing past the durable end of the log.
//!
//! # Durability and failure
//!
//! * [`Durability::Fsync`] (default): every batch is written with one
//!   `write` and made durable with one `fdatasync` before any of its waiters is
//!   answered. A crash (process, kernel or power) loses no acknowledged
//!   record. A record may survive whose answer never left (crash between the
//!   write and the reply); the reverse never happens.
//! * [`Durability::Buffered`]: batches are written to the OS without fsync and
//!   acknowledged at once. A process crash loses nothing that was
//!   acknowledged, but a kernel crash or power loss can lose every record
//!   acknowledged since the last fsync, which happens at each checkpoint
//!   (every `checkpoint_every_records` records or `checkpoint_interval`),
//!   at segment rotation and at shutdown. The chain stays verifiable: the
//!   lost records simply are not there, and no checkpoint names them.
//!
//! Fail closed: if a write or an fsync fails, every waiter of that batch gets
//! [`AuditError::Io`] and the log enters a sticky failed state in which every
//! later append fails at once with [`AuditError::Failed`]. An fsync is never
//! retried on the same file (after a failed fsync the kernel may have dropped
//! the dirty pages and a retry would falsely report success — "fsyncgate").
//! Restarting the gateway recovers: [`AuditLog::open`] re-reads the last
//! segment from disk, cuts whatever did not make it intact and continues.
//!
//! On open the writer also refuses to start ([`AuditError::Corrupt`]) when the
//! log ends before the latest signed checkpoint, when the head record's hash
//! differs from that checkpoint, or when `audit-signing.pub` holds a different
//! key than the one given (start a new directory to change keys).
//!
//! Segments rotate when they reach `segment_max_bytes` (a soft limit: the
//! batch that crosses it completes) or `segment_max_age`. With `retention`
//! set, whole segments whose records are all older than the retention period
//! are deleted at rotation and at open, oldest first and never the current
//! one; a signed retention note is appended to `checkpoints.log` *before* the
//! files are removed.

mod format;
mod keys;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
}
