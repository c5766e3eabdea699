//! Recovery at open: the end of the chain found, a torn or unsealed tail cut (kept aside,
//! never signed), the signed checkpoints checked against what is left.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use super::{lock, now_ms, Segment, Shared, Writer};
use crate::audit::format::{
    check_seal, decode_hash, list_segments, parse_line, read_log_entries, split_lines, sync_dir,
    Chain, LogEntry, CHECKPOINTS_FILE, ZERO_HASH,
};
use crate::audit::{
    AuditConfig, AuditEntry, AuditError, Corruption, LineError, Outcome, Place, RecordedCall,
};

/// The last record of a segment file (complete lines only), if any.
fn last_record_of(path: &Path) -> Result<Option<crate::audit::format::ParsedLine>, AuditError> {
    let bytes = std::fs::read(path)?;
    let (lines, _) = split_lines(&bytes);
    match lines.last() {
        None => Ok(None),
        Some((_, line)) => parse_line(line).map(Some).map_err(|source| {
            Corruption::Line {
                path: path.to_path_buf(),
                at: Place::LastRecord,
                source,
            }
            .into()
        }),
    }
}

impl Writer {
    /// Finds the end of the chain, cuts a torn tail of the last segment and
    /// writes a recovery record if it did.
    pub(super) fn recover(
        cfg: AuditConfig,
        key: SigningKey,
        shared: Arc<Shared>,
    ) -> Result<Writer, AuditError> {
        let dir = cfg.dir.clone();
        let (entries, ckpt_torn) = read_log_entries(&dir)?;
        let ckpt_path = dir.join(CHECKPOINTS_FILE);
        let mut notes = Vec::new();
        if let Some((offset, len)) = ckpt_torn {
            let f = OpenOptions::new().write(true).open(&ckpt_path)?;
            f.set_len(offset as u64)?;
            f.sync_all()?;
            notes.push(format!(
                "cut {len} bytes of torn tail from {CHECKPOINTS_FILE} at offset {offset}"
            ));
        }
        // Every line signed by this key and in its place in the chain: a forged,
        // removed or reordered line refuses the start (reported, never skipped).
        let verifying_key = key.verifying_key();
        for (line, entry, _) in &entries {
            crate::audit::format::verify_entry(&verifying_key, entry).map_err(|source| {
                Corruption::Signature {
                    path: ckpt_path.clone(),
                    line: *line,
                    source,
                }
            })?;
        }
        crate::audit::format::check_entry_chain(&entries).map_err(Corruption::Entries)?;
        let ckpt_prev = entries.last().map_or(ZERO_HASH, |(_, _, h)| *h);
        let latest_ckpt = entries.iter().rev().find_map(|(_, e, _)| match e {
            LogEntry::Checkpoint(c) => Some(c.clone()),
            LogEntry::Retention(_) => None,
        });
        let chain_start = |seq: u64| -> Option<[u8; 32]> {
            if seq == 1 {
                return Some(ZERO_HASH);
            }
            entries.iter().find_map(|(_, e, _)| match e {
                LogEntry::Retention(r) => r
                    .removed
                    .iter()
                    .find(|s| s.last_seq + 1 == seq)
                    .and_then(|s| decode_hash(&s.last_hash)),
                LogEntry::Checkpoint(_) => None,
            })
        };

        let segments = list_segments(&dir)?;
        let fresh = entries.is_empty() && segments.is_empty();
        let mut seg = None;
        let mut next_seq = 1;
        let mut last_hash = ZERO_HASH;
        let mut tail_hashes: Vec<(u64, [u8; 32])> = Vec::new();
        let mut pending_cut: Option<(PathBuf, usize, usize, u64)> = None;
        // Records at or before the latest signed checkpoint are signed by it; after it,
        // only sealed batches are adopted.
        let signed_upto = latest_ckpt.as_ref().map_or(0, |c| c.seq);
        let verifying = key.verifying_key();
        let mut unsealed = 0u64;
        let mut newest_ms: Option<i64> = None;
        if let Some((first_seq, path)) = segments.last().cloned() {
            // What the previous process wrote may sit in the page cache only: make it
            // durable before adopting it (an error here refuses to start).
            File::open(&path)?.sync_all()?;
            if ckpt_path.exists() {
                File::open(&ckpt_path)?.sync_all()?;
            }
            let bytes = std::fs::read(&path)?;
            let (lines, _) = split_lines(&bytes);
            let mut prev: Option<[u8; 32]>;
            let mut expect = first_seq;
            let mut first_time = None;
            // The chain as far as it is signed (sealed, or under a checkpoint).
            let mut adopted: Option<(usize, Option<[u8; 32]>, u64, usize)> = None;
            let mut chain = Chain::new(Some(first_seq), None);
            for (offset, line) in lines {
                let Ok(p) = parse_line(line) else { break };
                let Ok(h) = chain.link(&p) else { break };
                first_time.get_or_insert(p.body.time_unix_ms);
                tail_hashes.push((p.body.seq, h));
                prev = Some(h);
                expect += 1;
                let end = offset + line.len() + 1;
                let sealed = p.seal.as_deref().is_some_and(|seal| {
                    check_seal(&verifying, &p.body.node, p.body.seq, &p.hash, seal).is_ok()
                });
                if sealed || p.body.seq <= signed_upto {
                    adopted = Some((end, prev, expect, tail_hashes.len()));
                    newest_ms = Some(p.body.time_unix_ms);
                }
            }
            // Whole records after the last seal: a batch torn by a power loss, or lines
            // added by someone without the key. Either way they are cut (kept aside)
            // and never signed.
            let (end, adopted_prev, adopted_expect, kept) =
                adopted.unwrap_or((0, None, first_seq, 0));
            unsealed = expect - adopted_expect;
            let good_end = end;
            prev = adopted_prev;
            expect = adopted_expect;
            tail_hashes.truncate(kept);
            if good_end < bytes.len() {
                // Cut later, once the signed checkpoints agree that nothing they cover
                // lies in the tail.
                pending_cut = Some((path.clone(), good_end, bytes.len() - good_end, expect - 1));
            }
            match prev {
                Some(h) => {
                    next_seq = expect;
                    last_hash = h;
                }
                None => {
                    // Empty last segment: the chain ends in the previous one.
                    next_seq = first_seq;
                    last_hash = if segments.len() >= 2 {
                        let (_, prev_path) = &segments[segments.len() - 2];
                        match last_record_of(prev_path)? {
                            Some(p) if p.body.seq + 1 == first_seq => {
                                newest_ms = Some(p.body.time_unix_ms);
                                decode_hash(&p.hash).ok_or_else(|| Corruption::Line {
                                    path: prev_path.clone(),
                                    at: Place::LastRecord,
                                    source: LineError::BadHash,
                                })?
                            }
                            _ => {
                                return Err(Corruption::Gap {
                                    before: prev_path.clone(),
                                    after: path.clone(),
                                }
                                .into())
                            }
                        }
                    } else {
                        chain_start(first_seq).ok_or_else(|| Corruption::Unexplained {
                            path: path.clone(),
                            first_seq,
                        })?
                    };
                }
            }
            // A segment that holds records is never appended to again by a new
            // process: its pages may have failed writeback in the previous one
            // ("fsyncgate"). The first commit opens a new segment at `next_seq`.
            if next_seq == first_seq {
                let file = OpenOptions::new().append(true).open(&path)?;
                seg = Some(Segment {
                    file,
                    path,
                    size: good_end as u64,
                    records: 0,
                    started_ms: first_time.unwrap_or_else(now_ms),
                });
            }
        }

        // Never continue a log that ends before, or differs from, what was signed.
        if let Some(c) = &latest_ckpt {
            let last = next_seq - 1;
            if c.seq > last {
                return Err(Corruption::Truncated {
                    last,
                    signed: c.seq,
                }
                .into());
            }
            let known = if c.seq == 0 {
                Some(ZERO_HASH)
            } else {
                tail_hashes
                    .iter()
                    .find(|(s, _)| *s == c.seq)
                    .map(|(_, h)| *h)
            };
            if let Some(h) = known {
                if crate::audit::format::encode_hex(h) != c.head_hash {
                    return Err(Corruption::DiffersFromCheckpoint { seq: c.seq }.into());
                }
            }
        }

        if let Some((path, good_end, cut, last_intact)) = pending_cut {
            // Keep the cut bytes beside the log: a crash leaves only unacknowledged
            // records there, but if anything else caused it, the evidence survives.
            let bytes = std::fs::read(&path)?;
            let kept = path.with_extension(format!("log.cut-{}", now_ms()));
            let mut side = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&kept)?;
            std::io::Write::write_all(&mut side, &bytes[good_end..])?;
            side.sync_all()?;
            // The kept file's name must be durable before the segment shrinks.
            sync_dir(&dir)?;
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(good_end as u64)?;
            f.sync_all()?;
            sync_dir(&dir)?;
            tracing::warn!(file = %path.display(), bytes = cut, unsealed, "audit log: cut torn or unsealed tail");
            notes.insert(
                0,
                format!(
                    "cut {cut} bytes from {} at offset {good_end} after last sealed seq {last_intact} \
                     ({unsealed} whole records without a valid seal: a torn batch, or records \
                     not written by this log); kept in {}",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    kept.file_name().unwrap_or_default().to_string_lossy()
                ),
            );
        }

        let ckpt = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ckpt_path)?;
        if ckpt.metadata()?.len() == 0 {
            ckpt.sync_all()?;
            sync_dir(&dir)?;
        }
        shared.last_seq.store(next_seq - 1, Ordering::Release);
        *lock(&shared.head) = latest_ckpt;
        let mut w = Writer {
            cfg,
            key,
            shared,
            seg,
            ckpt,
            ckpt_prev,
            next_seq,
            last_hash,
            since_ckpt: 0,
            newest_ms,
            last_ckpt_at: Instant::now(),
        };
        if !notes.is_empty() {
            let entry = AuditEntry {
                client: "popgw".into(),
                cache: Some(crate::cache::CacheOutcome::None),
                detail: notes.join("; "),
                ..AuditEntry::new(RecordedCall::Recovery, Outcome::TornTailCut)
            };
            let (reply, mut rx) = oneshot::channel();
            w.commit(vec![(entry, reply)]);
            match rx.try_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(AuditError::Failed),
            }
        }
        if fresh {
            // A new log signs "empty log" at once: from now on a folder holding nothing
            // beside this key is a wiped log, not a log that never began.
            w.checkpoint();
            if w.failed() {
                return Err(AuditError::Failed);
            }
        }
        Ok(w)
    }
}
