//! Readers and the independent verifier.

use super::format::{
    check_seal, decode_hash, list_segments, parse_line, read_log_entries, split_lines,
    verify_entry, Chain, ChainBreak, LogEntry, RemovedSegment, CHECKPOINTS_FILE, PUBKEY_FILE,
    ZERO_HASH,
};
use super::{AuditError, Checkpoint, Corruption, Place, StoredRecord};
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// All records of all segments, in order. An unterminated final line of the
/// last segment (a write in progress or a torn write) is not returned.
/// Parses only; use [`verify_dir`] to check the chain.
pub fn read_records(dir: &Path) -> Result<Vec<StoredRecord>, AuditError> {
    let mut out = Vec::new();
    scan_records(dir, 1, |r| {
        out.push(r);
        true
    })?;
    Ok(out)
}

/// Calls `visit` with every record whose seq is at least `from_seq`, in order,
/// reading one segment at a time (memory is bounded by one segment, not the log);
/// stops early when `visit` returns false. Parses only, like [`read_records`].
pub fn scan_records(
    dir: &Path,
    from_seq: u64,
    mut visit: impl FnMut(StoredRecord) -> bool,
) -> Result<(), AuditError> {
    let segments = list_segments(dir)?;
    for (i, (_, path)) in segments.iter().enumerate() {
        // Skip whole segments that end before `from_seq`.
        if let Some((next_first, _)) = segments.get(i + 1) {
            if *next_first <= from_seq {
                continue;
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Removed by retention since the listing: its records are gone on purpose
            // (a reader is not a verifier; `verify_dir` checks removals against the notes).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i + 1 < segments.len() => {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        let (lines, tail) = split_lines(&bytes);
        if tail < bytes.len() && i + 1 < segments.len() {
            return Err(Corruption::Unterminated { path: path.clone() }.into());
        }
        for (offset, line) in lines {
            let p = parse_line(line).map_err(|source| Corruption::Line {
                path: path.clone(),
                at: Place::Offset(offset),
                source,
            })?;
            if p.body.seq < from_seq {
                continue;
            }
            let record = StoredRecord {
                body: p.body,
                hash: p.hash,
                json: p.json,
                file: path.clone(),
            };
            if !visit(record) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// All signed checkpoints (not retention notes) in `checkpoints.log`, oldest
/// first. Signatures are not checked here.
pub fn read_checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    let (entries, _) = read_log_entries(dir)?;
    Ok(entries
        .into_iter()
        .filter_map(|(_, e, _)| match e {
            LogEntry::Checkpoint(c) => Some(c),
            LogEntry::Retention(_) => None,
        })
        .collect())
}

/// Summary of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records present (not counting those removed by retention).
    pub records: u64,
    /// Segment files read.
    pub segments: usize,
    /// Signed checkpoints checked (retention notes not counted).
    pub checkpoints: usize,
    /// The last record's sequence number.
    pub last_seq: u64,
    /// Its hash (hex).
    pub head_hash: String,
    /// Records after the latest signed checkpoint: their integrity rests on the chain
    /// alone until the next checkpoint (a cut of this tail cannot be detected).
    pub unsigned_tail: u64,
    /// Bytes of an unterminated last line of `checkpoints.log` (a checkpoint whose
    /// write a crash interrupted; the next start cuts it and records that it did).
    pub torn_checkpoint_bytes: usize,
}

/// The first problem found: the seq of the first bad (or missing) record and
/// the file it is in (or `checkpoints.log` / `audit-signing.pub`).
#[derive(Debug, thiserror::Error)]
#[error("{file}: record {seq}: {reason}", file = file.display())]
pub struct VerifyFailure {
    /// The first bad (or missing) record.
    pub seq: u64,
    /// The file it is in.
    pub file: PathBuf,
    /// What is wrong.
    pub reason: String,
}

fn fail(seq: u64, file: &Path, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        seq,
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// An ed25519 public key written as 64 hex characters (`audit-signing.pub`, the
/// checkpoint's `public_key`).
pub fn parse_public_key(hex_text: &str) -> Option<VerifyingKey> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut raw).ok()?;
    VerifyingKey::from_bytes(&raw).ok()
}

fn read_pubkey(dir: &Path) -> Result<VerifyingKey, VerifyFailure> {
    let path = dir.join(PUBKEY_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| fail(0, &path, format!("cannot read public key: {e}")))?;
    parse_public_key(&text).ok_or_else(|| {
        fail(
            0,
            &path,
            "not a valid ed25519 public key (64 hex characters)",
        )
    })
}

/// Verifies the whole directory: every record's hash, seq and prev link,
/// segment names, every checkpoint and retention signature, that every
/// checkpoint still matches the log, and that records missing at the start are
/// explained by signed retention notes. `pubkey` None reads
/// `audit-signing.pub` from `dir` (pin the key out of band when you can).
pub fn verify_dir(
    dir: &Path,
    pubkey: Option<&VerifyingKey>,
) -> Result<VerifyReport, VerifyFailure> {
    let key = match pubkey {
        Some(k) => *k,
        None => read_pubkey(dir)?,
    };
    let ckpt_path = dir.join(CHECKPOINTS_FILE);
    let (entries, torn) = read_log_entries(dir).map_err(|e| fail(0, &ckpt_path, e.to_string()))?;

    // 1. Every signature.
    let mut checkpoints: HashMap<u64, Vec<String>> = HashMap::new();
    let mut max_ckpt: Option<u64> = None;
    let mut n_ckpt = 0usize;
    let mut removed: Vec<RemovedSegment> = Vec::new();
    super::format::check_entry_chain(&entries).map_err(|e| fail(0, &ckpt_path, e.to_string()))?;
    for (line, entry, _) in &entries {
        let seq = match entry {
            LogEntry::Checkpoint(c) => c.seq,
            LogEntry::Retention(r) => r.removed.iter().map(|s| s.last_seq).max().unwrap_or(0),
        };
        verify_entry(&key, entry)
            .map_err(|e| fail(seq, &ckpt_path, format!("checkpoints.log line {line}: {e}")))?;
        match entry {
            LogEntry::Checkpoint(c) => {
                n_ckpt += 1;
                checkpoints
                    .entry(c.seq)
                    .or_default()
                    .push(c.head_hash.clone());
                max_ckpt = max_ckpt.max(Some(c.seq));
            }
            LogEntry::Retention(r) => removed.extend(r.removed.iter().cloned()),
        }
    }
    let check_ckpt = |seq: u64, hash: &str, file: &Path| -> Result<(), VerifyFailure> {
        match checkpoints.get(&seq) {
            Some(hs) if hs.iter().any(|h| h != hash) => Err(fail(
                seq,
                file,
                format!("hash {hash} differs from the signed checkpoint for this seq"),
            )),
            _ => Ok(()),
        }
    };

    // 2. The chain.
    let segments = list_segments(dir).map_err(|e| fail(0, dir, e.to_string()))?;
    let mut prev: Option<[u8; 32]> = None;
    let mut expect: Option<u64> = None;
    let mut chain = Chain::new(None, None);
    let mut first_seq_seen: Option<u64> = None;
    let mut records = 0u64;
    let mut sealed_upto = 0u64;
    for (i, (name_seq, path)) in segments.iter().enumerate() {
        if let Some(e) = expect {
            if *name_seq != e {
                return Err(fail(
                    e,
                    path,
                    format!("segment name says first seq {name_seq}, expected {e} (segment missing or renamed?)"),
                ));
            }
        }
        let bytes = std::fs::read(path)
            .map_err(|e| fail(expect.unwrap_or(*name_seq), path, e.to_string()))?;
        let (lines, tail) = split_lines(&bytes);
        if tail < bytes.len() {
            if i + 1 < segments.len() {
                return Err(fail(
                    expect.unwrap_or(*name_seq) + lines.len() as u64,
                    path,
                    "unterminated line at the end of a segment that is not the last",
                ));
            }
            tracing::warn!(file = %path.display(), bytes = bytes.len() - tail,
                "audit verify: ignoring unterminated last line (write in progress or torn write)");
        }
        let seg_expect = expect.unwrap_or(*name_seq);
        if expect.is_none() {
            chain = Chain::new(Some(seg_expect), None);
        }
        for (offset, line) in lines {
            let seg_expect = chain.next_seq().unwrap_or(seg_expect);
            let p = parse_line(line).map_err(|e| {
                fail(
                    seg_expect,
                    path,
                    format!("unreadable record at offset {offset}: {e}"),
                )
            })?;
            let b = &p.body;
            if prev.is_none() {
                // The first surviving record: its prev is zeros or a retention note's.
                let stated = decode_hash(&b.prev)
                    .ok_or_else(|| fail(b.seq, path, ChainBreak::Unparsable.to_string()))?;
                if b.seq == 1 {
                    if stated != ZERO_HASH {
                        return Err(fail(1, path, "first record's prev is not all zeros"));
                    }
                } else {
                    check_retention(&removed, b.seq, &b.prev).map_err(|r| fail(b.seq, path, r))?;
                }
                first_seq_seen = Some(b.seq);
            }
            let h = chain
                .link(&p)
                .map_err(|e| fail(b.seq, path, e.to_string()))?;
            check_ckpt(b.seq, &p.hash, path)?;
            if let Some(seal) = &p.seal {
                check_seal(&key, &b.node, b.seq, &p.hash, seal)
                    .map_err(|e| fail(b.seq, path, e))?;
                sealed_upto = b.seq;
            }
            prev = Some(h);
            records += 1;
        }
        expect = Some(chain.next_seq().unwrap_or(seg_expect));
    }

    let last_seq = expect.map(|e| e - 1).unwrap_or(0);
    if records == 0 && entries.is_empty() && segments.iter().all(|(seq, _)| *seq <= 1) {
        return Err(fail(
            0,
            dir,
            "no record and no signed checkpoint: an empty or wiped log (a gateway signs \
             \"empty log\" when it first closes one)",
        ));
    }
    let head_hash = super::format::encode_hex(prev.unwrap_or(ZERO_HASH));
    if prev.is_none() && last_seq > 0 {
        // Only empty segments survive: retention notes must explain the rest.
        check_retention(&removed, last_seq + 1, "")
            .map_err(|r| fail(last_seq + 1, &segments[0].1, r))?;
    }
    check_ckpt(0, &super::format::encode_hex(ZERO_HASH), &ckpt_path)?;

    // 3. No checkpoint may name a record that no longer exists.
    if let Some(max) = max_ckpt {
        if max > last_seq {
            let file = segments
                .last()
                .map(|s| s.1.clone())
                .unwrap_or(ckpt_path.clone());
            return Err(fail(
                last_seq + 1,
                &file,
                format!("record missing: a signed checkpoint covers seq {max} but the log ends at seq {last_seq} (tail cut)"),
            ));
        }
    }
    let first = first_seq_seen.unwrap_or(last_seq + 1);
    for seq in checkpoints.keys() {
        if *seq > 0
            && *seq < first
            && !removed
                .iter()
                .any(|r| r.first_seq <= *seq && *seq <= r.last_seq)
        {
            return Err(fail(*seq, &ckpt_path, "checkpointed record is missing"));
        }
    }

    // 4. No unsigned tail: every record is signed through the chain by a later batch
    // seal or checkpoint. Whole records after the last one are a batch torn by a power
    // loss (the gateway cuts it at its next start) or records added by someone without
    // the key — either way not part of the log. A log nobody signed proves nothing:
    // anyone can recompute an unkeyed chain.
    let signed = sealed_upto.max(max_ckpt.unwrap_or(0));
    if records > 0 && last_seq > signed {
        let file = segments.last().map(|s| s.1.clone()).unwrap_or(ckpt_path);
        return Err(fail(
            signed + 1,
            &file,
            format!(
                "records {}..={last_seq} are signed by no seal or checkpoint (a batch torn by a \
                 crash, which the gateway cuts at its next start, or records added without the key)",
                signed + 1
            ),
        ));
    }

    Ok(VerifyReport {
        records,
        segments: segments.len(),
        checkpoints: n_ckpt,
        last_seq,
        head_hash,
        unsigned_tail: last_seq.saturating_sub(max_ckpt.unwrap_or(0)),
        torn_checkpoint_bytes: torn.map_or(0, |(_, len)| len),
    })
}

/// Records 1 ..= first-1 must be covered by signed retention notes, the last
/// of which hands over to `prev` (skipped if `prev` is empty).
fn check_retention(removed: &[RemovedSegment], first: u64, prev: &str) -> Result<(), String> {
    let mut ranges: Vec<(u64, u64)> = removed.iter().map(|r| (r.first_seq, r.last_seq)).collect();
    ranges.sort_unstable();
    let mut covered = 0u64;
    for (a, b) in ranges {
        if a > covered + 1 {
            break;
        }
        covered = covered.max(b);
    }
    if covered + 1 < first {
        return Err(format!(
            "records {}..={} are missing and no signed retention note removed them",
            covered + 1,
            first - 1
        ));
    }
    if !prev.is_empty()
        && !removed
            .iter()
            .any(|r| r.last_seq + 1 == first && r.last_hash == prev)
    {
        return Err(format!(
            "prev does not match the last_hash of the retention note that removed seq {}",
            first - 1
        ));
    }
    Ok(())
}
