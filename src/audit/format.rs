//! Byte-level format helpers shared by the writer, the readers and the verifier.

use super::{AuditError, Checkpoint, Corruption, RecordBody};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) const ZERO_HASH: [u8; 32] = [0; 32];
pub(crate) const CHECKPOINTS_FILE: &str = "checkpoints.log";
pub(crate) const PUBKEY_FILE: &str = "audit-signing.pub";

/// One segment removed by retention.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedSegment {
    /// The segment's file name.
    pub file: String,
    /// Its first record.
    pub first_seq: u64,
    /// Its last record.
    pub last_seq: u64,
    /// Hash of record `last_seq`.
    pub last_hash: String,
}

/// A signed note that whole segments were deleted on purpose.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionNote {
    /// The segments removed.
    pub removed: Vec<RemovedSegment>,
    /// When.
    pub time_unix_ms: i64,
    /// The node whose chain it is.
    pub node: String,
    /// ed25519 signature (hex).
    pub signature: String,
    /// SHA-256 (hex) of the previous line of `checkpoints.log`, as for a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// One line of `checkpoints.log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum LogEntry {
    Checkpoint(Checkpoint),
    Retention(RetentionNote),
}

pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.log")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segments of `dir`, sorted by first seq.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            if entry.file_type()?.is_file() {
                out.push((seq, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn record_hash(prev: &[u8; 32], json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(json);
    h.finalize().into()
}

/// Lowercase hex of `bytes`, as every hash, pseudonym and signature in the log is
/// written. `hex::encode` builds its string a `char` at a time: 5.4 % of an answer's
/// instructions over the four or five digests each answer writes, counted by
/// `benches/instructions.sh`; this fills the bytes from hex's table and checks them
/// once (3.4 % fewer instructions an answer).
pub(crate) fn encode_hex(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = vec![0u8; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the output is twice the input");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Decodes exactly 64 lowercase hex characters.
pub(crate) fn decode_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A parsed record line (without its `\n`).
pub(crate) struct ParsedLine {
    pub hash: String,
    pub json: String,
    pub body: RecordBody,
    /// The batch seal on the last record of a group commit (hex ed25519 signature),
    /// unchecked.
    pub seal: Option<String>,
}

/// Why a line of a segment is not a record line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// No space between the hash and the JSON.
    #[error("line has no space between hash and JSON")]
    NoSpace,
    /// The hash is not a hash.
    #[error("hash is not 64 lowercase hex characters")]
    BadHash,
    /// Neither `}` nor a seal at the end.
    #[error("line ends neither with the JSON object nor with a seal")]
    NoEnd,
    /// The seal is not a signature.
    #[error("seal is not 128 lowercase hex characters")]
    BadSeal,
    /// The record's JSON does not parse: only the kind of error and where (serde_json's
    /// own message may quote the value it choked on, and a tampered line may hold
    /// anything).
    #[error("record JSON does not parse ({category:?} error at column {column})")]
    Json {
        /// serde_json's kind of error.
        category: serde_json::error::Category,
        /// Where in the line.
        column: usize,
    },
}

pub(crate) fn parse_line(line: &[u8]) -> Result<ParsedLine, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let (hash, rest) = text.split_once(' ').ok_or(LineError::NoSpace)?;
    if decode_hash(hash).is_none() {
        return Err(LineError::BadHash);
    }
    // The JSON object ends with `}`; a sealed line carries ` <seal>` after it.
    let (json, seal) = if rest.ends_with('}') {
        (rest, None)
    } else {
        let (json, seal) = rest.rsplit_once(' ').ok_or(LineError::NoEnd)?;
        if seal.len() != 128 || !seal.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(LineError::BadSeal);
        }
        (json, Some(seal.to_string()))
    };
    let body: RecordBody = serde_json::from_str(json).map_err(|e| LineError::Json {
        category: e.classify(),
        column: e.column(),
    })?;
    Ok(ParsedLine {
        hash: hash.to_string(),
        json: json.to_string(),
        body,
        seal,
    })
}

/// Why a record does not continue its chain: the one check every reader of a chain
/// makes (recovery, `verify`, the indexer's intake), written once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChainBreak {
    /// The record's `prev` is not a hash at all.
    #[error("prev is not 64 lowercase hex")]
    Unparsable,
    /// Not the seq the chain expects next.
    #[error("out of order: expected seq {expected} here (record missing, reordered or inserted)")]
    OutOfOrder {
        /// The seq that should follow.
        expected: u64,
        /// The record's.
        found: u64,
    },
    /// Its stated hash is not SHA-256(prev ‖ JSON): the record was modified.
    #[error("hash mismatch: record was modified")]
    HashMismatch,
    /// Its `prev` is not the previous record's hash.
    #[error("prev does not match the previous record's hash")]
    PrevMismatch,
    /// A seq no record can have (the last one there is: nothing could follow it).
    #[error("seq out of range")]
    SeqOutOfRange,
}

/// A hash chain read forward, one record at a time ([`Chain::link`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain {
    expect: Option<u64>,
    prev: Option<[u8; 32]>,
}

impl Chain {
    /// A chain whose next record is `next_seq` (`None`: whichever comes) and whose last
    /// hash is `prev` (`None`: the first record's own `prev` is taken as stated — the
    /// caller checks it against zeros or a retention note).
    pub(crate) fn new(next_seq: Option<u64>, prev: Option<[u8; 32]>) -> Chain {
        Chain {
            expect: next_seq,
            prev,
        }
    }

    /// The seq of the next record.
    pub(crate) fn next_seq(&self) -> Option<u64> {
        self.expect
    }

    /// Checks that `p` continues the chain (its seq, its hash over its JSON, its `prev`)
    /// and moves past it; returns its hash. The first check that fails is named.
    pub(crate) fn link(&mut self, p: &ParsedLine) -> Result<[u8; 32], ChainBreak> {
        let b = &p.body;
        let prev = match self.prev {
            Some(h) => h,
            None => decode_hash(&b.prev).ok_or(ChainBreak::Unparsable)?,
        };
        let expected = self.expect.unwrap_or(b.seq);
        // The chain ends below u64::MAX: no seq follows the last one there is.
        let next = expected.checked_add(1).ok_or(ChainBreak::SeqOutOfRange)?;
        if b.seq != expected {
            return Err(ChainBreak::OutOfOrder {
                expected,
                found: b.seq,
            });
        }
        // The link first: a line spliced in from elsewhere (right for its own prev)
        // is told apart from an edited one.
        if b.prev != encode_hex(prev) {
            return Err(ChainBreak::PrevMismatch);
        }
        let h = record_hash(&prev, p.json.as_bytes());
        if encode_hex(h) != p.hash {
            return Err(ChainBreak::HashMismatch);
        }
        self.prev = Some(h);
        self.expect = Some(next);
        Ok(h)
    }
}

/// What a batch seal signs: the node, and the seq and hash of the batch's last record.
pub(crate) fn seal_message(node: &str, seq: u64, hash: &str) -> Vec<u8> {
    format!("popgw-audit-seal-v1\n{node}\n{seq}\n{hash}").into_bytes()
}

/// Seals the batch ending with record `seq` of hash `hash` (hex signature).
pub(crate) fn sign_seal(key: &SigningKey, node: &str, seq: u64, hash: &str) -> String {
    encode_hex(key.sign(&seal_message(node, seq, hash)).to_bytes())
}

/// Whether `seal` is this key's seal of the record.
pub(crate) fn check_seal(
    key: &VerifyingKey,
    node: &str,
    seq: u64,
    hash: &str,
    seal: &str,
) -> Result<(), String> {
    check_sig(key, &seal_message(node, seq, hash), seal).map_err(|e| format!("seal: {e}"))
}

/// Splits into complete `\n`-terminated lines (offset, line without `\n`);
/// returns them and the offset where an unterminated tail starts
/// (`bytes.len()` if there is none).
pub(crate) fn split_lines(bytes: &[u8]) -> (Vec<(usize, &[u8])>, usize) {
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(pos) = bytes[start..].iter().position(|&b| b == b'\n') {
        lines.push((start, &bytes[start..start + pos]));
        start += pos + 1;
    }
    (lines, start)
}

pub(crate) fn checkpoint_message(
    seq: u64,
    head_hash: &str,
    time_unix_ms: i64,
    node: &str,
    prev: Option<&str>,
) -> Vec<u8> {
    match prev {
        None => format!("popgw-audit-checkpoint-v1\n{seq}\n{head_hash}\n{time_unix_ms}\n{node}"),
        Some(prev) => {
            format!("popgw-audit-checkpoint-v2\n{seq}\n{head_hash}\n{time_unix_ms}\n{node}\n{prev}")
        }
    }
    .into_bytes()
}

/// The hash a line of `checkpoints.log` is chained by (its bytes without `\n`).
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

impl LogEntry {
    pub(crate) fn prev(&self) -> Option<&str> {
        match self {
            LogEntry::Checkpoint(c) => c.prev.as_deref(),
            LogEntry::Retention(r) => r.prev.as_deref(),
        }
    }
}

/// Checks that the lines of `checkpoints.log` chain: each chained line names the hash
/// of the one before (zeros for the first); unchained lines (written before chaining
/// existed) only before the first chained one.
/// Why `checkpoints.log` is not one chain of lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryChainError {
    /// A line's `prev` is not the line before's hash.
    #[error("checkpoints.log line {line}: does not follow line {} (a line was removed, inserted or reordered)", line - 1)]
    DoesNotFollow {
        /// 1-based.
        line: usize,
    },
    /// A line without `prev` after chained ones.
    #[error("checkpoints.log line {line}: an unchained line after chained ones")]
    Unchained {
        /// 1-based.
        line: usize,
    },
}

pub(crate) fn check_entry_chain(
    entries: &[(usize, LogEntry, [u8; 32])],
) -> Result<(), EntryChainError> {
    let mut before = ZERO_HASH;
    let mut chained = false;
    for (line, entry, hash) in entries {
        let line = *line;
        match entry.prev() {
            Some(prev) => {
                if prev != encode_hex(before) {
                    return Err(EntryChainError::DoesNotFollow { line });
                }
                chained = true;
            }
            None if chained => return Err(EntryChainError::Unchained { line }),
            None => {}
        }
        before = *hash;
    }
    Ok(())
}

pub(crate) fn retention_message(
    removed: &[RemovedSegment],
    time_unix_ms: i64,
    node: &str,
    prev: Option<&str>,
) -> Vec<u8> {
    let version = if prev.is_some() { 2 } else { 1 };
    let mut s = format!(
        "popgw-audit-retention-v{version}\n{time_unix_ms}\n{node}\n{}",
        removed.len()
    );
    for r in removed {
        s.push_str(&format!(
            "\n{}\n{}\n{}\n{}",
            r.file, r.first_seq, r.last_seq, r.last_hash
        ));
    }
    if let Some(prev) = prev {
        s.push_str(&format!("\n{prev}"));
    }
    s.into_bytes()
}

pub(crate) fn sign_checkpoint(
    key: &SigningKey,
    seq: u64,
    head_hash: String,
    time_unix_ms: i64,
    node: &str,
    prev: String,
) -> Checkpoint {
    let sig = key.sign(&checkpoint_message(
        seq,
        &head_hash,
        time_unix_ms,
        node,
        Some(&prev),
    ));
    Checkpoint {
        seq,
        head_hash,
        time_unix_ms,
        node: node.to_string(),
        signature: encode_hex(sig.to_bytes()),
        prev: Some(prev),
    }
}

pub(crate) fn sign_retention(
    key: &SigningKey,
    removed: Vec<RemovedSegment>,
    time_unix_ms: i64,
    node: &str,
    prev: String,
) -> RetentionNote {
    let sig = key.sign(&retention_message(
        &removed,
        time_unix_ms,
        node,
        Some(&prev),
    ));
    RetentionNote {
        removed,
        time_unix_ms,
        node: node.to_string(),
        signature: encode_hex(sig.to_bytes()),
        prev: Some(prev),
    }
}

/// Why a signed line's signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not a signature at all.
    #[error("signature is not 128 hex characters")]
    NotHex,
    /// Not this key's signature of this line.
    #[error("signature does not verify")]
    DoesNotVerify,
}

fn check_sig(key: &VerifyingKey, msg: &[u8], sig_hex: &str) -> Result<(), SignatureError> {
    let mut raw = [0u8; 64];
    if sig_hex.len() != 128 || hex::decode_to_slice(sig_hex, &mut raw).is_err() {
        return Err(SignatureError::NotHex);
    }
    key.verify(msg, &Signature::from_bytes(&raw))
        .map_err(|_| SignatureError::DoesNotVerify)
}

pub(crate) fn verify_entry(key: &VerifyingKey, entry: &LogEntry) -> Result<(), SignatureError> {
    match entry {
        LogEntry::Checkpoint(c) => check_sig(
            key,
            &checkpoint_message(
                c.seq,
                &c.head_hash,
                c.time_unix_ms,
                &c.node,
                c.prev.as_deref(),
            ),
            &c.signature,
        ),
        LogEntry::Retention(r) => check_sig(
            key,
            &retention_message(&r.removed, r.time_unix_ms, &r.node, r.prev.as_deref()),
            &r.signature,
        ),
    }
}

/// `(line number, entry, line hash)` triples and an optional torn tail `(offset, length)`.
pub(crate) type LogEntries = (Vec<(usize, LogEntry, [u8; 32])>, Option<(usize, usize)>);

/// Parsed `checkpoints.log` entries (1-based line numbers) and the offset of
/// a torn (unterminated) final line, if any. A missing file is empty.
pub(crate) fn read_log_entries(dir: &Path) -> Result<LogEntries, AuditError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e.into()),
    };
    let (lines, tail) = split_lines(&bytes);
    let mut out = Vec::with_capacity(lines.len());
    for (i, (_, line)) in lines.iter().enumerate() {
        let entry: LogEntry = serde_json::from_slice(line).map_err(|source| Corruption::Entry {
            path: path.clone(),
            line: i + 1,
            source,
        })?;
        out.push((i + 1, entry, line_hash(line)));
    }
    let torn = (tail < bytes.len()).then_some((tail, bytes.len() - tail));
    Ok((out, torn))
}

/// fsync a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
