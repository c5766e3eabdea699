//! The witness: a node's own disk cannot witness itself, so every sealed batch's head
//! (its last record's seq and hash, and the seal) is shipped to a NATS JetStream
//! stream, subject `popgw.audit.<node>`, one message per batch, deduplicated by
//! `Nats-Msg-Id` = `<node>:<seq>:<hash prefix>` so that a resend after a crash is
//! harmless and nobody can claim an id ahead of the gateway (a record's hash is known
//! only once it is written).
//!
//! With `records` on (the default), each message also carries the batch's record lines
//! (`<hash> <json>`, as in the segment, without the seal): the stream is then the feed
//! of the central index ([`super::index`]). A batch larger than [`MAX_LINES`] records or
//! [`MAX_BYTES`] bytes goes as several messages, each ending at one of its records; only
//! the last carries the seal. Nothing is shipped before its batch's seal is on disk, so
//! a batch cut at the next start (a crash mid-write) never reaches the stream — nor
//! before the writer reports it durable (its fdatasync returned).
//!
//! # Trusting only what the node sealed
//! Whoever can publish on the subject can put anything there, so nothing read from the
//! stream is believed for what it claims: a message is the node's only if its seal
//! verifies with the node's key, or (an unsealed part of a large batch) if the node's
//! chain holds its hash. Everything else is [`Foreign`]: named by its stream sequence,
//! never trusted, and an alarm ([`WitnessStatus`]: a log line,
//! `popgw_audit_witness_alarm`, `/readyz` not ready with the reason, AuditLog.Head).
//!
//! The [`Shipper`] reads the heads from the segment files (the seal lines), never from
//! the answer's path: requests wait only for the local fsync. It resumes from the newest
//! message of its subject that it sent (searching back past foreign ones),
//! checks every few seconds that the subject's newest message is still its own, checks
//! a duplicate acknowledgement against what is stored, and notes what was acknowledged
//! in [`ACKED_FILE`] (a witness that later lacks it lost messages). While NATS is down
//! the gateway keeps serving, the lag is reported (`popgw_audit_witness_lag_records`)
//! and shipping catches up when NATS returns. Before a node answers anything,
//! [`check_at_start`] compares its folder with the newest head it sealed in the
//! witness: a witness ahead (a rolled-back folder) refuses the start.
//!
//! [`compare`] (`popgw audit verify --witness`) checks a folder against every message of
//! the node's subject: foreign messages are listed, a wiped, rolled-back or rewritten log
//! fails naming the first seq that differs, and a tail not yet shipped is reported as
//! such.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::format::{check_seal, decode_hash, list_segments, parse_line, split_lines};
use super::verify::scan_records;
use super::AuditLog;
use crate::telemetry::Metrics;

/// Where the heads go (`[audit.witness]`).
#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// The connection to NATS (URL, TLS, credentials).
    pub link: crate::link::nats::NatsLink,
    /// The JetStream stream (created when missing, subjects `popgw.audit.>`).
    pub stream: String,
    /// Its replicas (1 on one server; 3 in production).
    pub replicas: usize,
    /// This node (the subject's last token).
    pub node: String,
    /// Ship the record lines too, not only the heads (the central index needs them).
    pub records: bool,
}

/// Most record lines in one message.
pub const MAX_LINES: usize = 512;
/// Most bytes of record lines in one message, as escaped in its JSON (NATS refuses
/// payloads over 1 MiB by default).
pub const MAX_BYTES: usize = 512 * 1024;
/// Record lines read ahead of the witness's acknowledgements at most (catching up after
/// an outage holds about this much, not the whole backlog).
const MAX_PENDING_BYTES: usize = 16 << 20;

/// One witnessed batch head: the message's payload (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The node whose chain it is.
    pub node: String,
    /// The batch's last record.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// The batch's seal (hex ed25519 signature over node, seq and hash).
    pub seal: String,
    /// When the batch was written (Unix milliseconds).
    pub time_unix_ms: i64,
    /// The first record whose line this message carries (0 when it carries none).
    #[serde(default)]
    pub first_seq: u64,
    /// The record lines `first_seq..=seq` (`<hash> <json>`), when records are shipped.
    /// A message ending inside a batch has an empty `seal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

/// Why the witness could not be reached or read.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// Connecting, creating the stream, publishing or reading failed.
    #[error("witness {0}: {1}")]
    Nats(&'static str, String),
    /// A message in the stream is not a head.
    #[error("witness: message {0} is not a batch head: {1}")]
    Garbled(u64, String),
    /// Reading the folder failed.
    #[error("witness: {0}")]
    Folder(String),
    /// Shipping made no progress although the folder holds durable records the witness
    /// lacks (the session is ended and started afresh: new connection, new reader).
    #[error("witness shipping stalled: {0}")]
    Stalled(String),
}

fn nats(what: &'static str) -> impl FnOnce(String) -> WitnessError {
    move |e| WitnessError::Nats(what, e)
}

/// The subject of `node`'s heads.
pub fn subject(node: &str) -> String {
    format!("popgw.audit.{node}")
}

/// Connects; the shipper creates the stream when missing (`create`), a reader never.
async fn open(
    config: &WitnessConfig,
    create: bool,
) -> Result<(jetstream::Context, stream::Stream), WitnessError> {
    let client = config
        .link
        .connect(&format!("popgw {} witness", config.node))
        .await
        .map_err(|e| nats("connect")(e.to_string()))?;
    let js = jetstream::new(client);
    if !create {
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| nats("stream")(format!("{}: {e}", config.stream)))?;
        return Ok((js, stream));
    }
    // Used as it is when it takes this node's subject (a node allowed no more than
    // publishing and reading cannot change it; `popgw audit witness init` creates it for
    // every node). Missing (a development server): created hardened, with this node's
    // subject only (a wildcard would collide with any other stream on `popgw.audit.*`).
    let ours = subject(&config.node);
    let plan = crate::link::nats::StreamPlan {
        name: config.stream.clone(),
        subjects: vec![ours.clone()],
        replicas: config.replicas,
        max_age: Duration::ZERO,
    };
    let stream = crate::link::nats::ensure_stream(&js, &plan, &ours)
        .await
        .map_err(|e| nats("stream")(e.to_string()))?;
    Ok((js, stream))
}

/// A message in a node's subject that this node did not send: not a batch head, another
/// node's, a seal not made by the node's key, or an unsealed part outside its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// Its stream sequence (what an administrator looks it up by).
    pub stream_seq: u64,
    /// Why it is not the node's.
    pub reason: String,
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream message {}: {}", self.stream_seq, self.reason)
    }
}

/// One message of a node's subject, judged by its payload and the node's key alone.
#[derive(Debug)]
enum Judged {
    /// A head sealed by the node's key.
    Sealed(Head),
    /// A part of a large batch (no seal): the node's only if its chain holds it.
    Part(Head),
    /// Not the node's, whatever the folder says.
    Foreign(String),
}

/// Judges one message's payload: a batch head of `node` sealed by `key`, an unsealed
/// part (to be checked against the chain), or foreign. Never quotes the payload (it is
/// whatever someone published).
fn judge(payload: &[u8], node: &str, key: &VerifyingKey) -> Judged {
    let Ok(mut head) = serde_json::from_slice::<Head>(payload) else {
        return Judged::Foreign("not a batch head".into());
    };
    head.lines = Vec::new();
    if head.node != node {
        return Judged::Foreign("a head of another node in this node's subject".into());
    }
    if decode_hash(&head.hash).is_none() || head.seq == 0 {
        return Judged::Foreign("not a batch head (no seq or hash)".into());
    }
    if head.seal.is_empty() {
        return Judged::Part(head);
    }
    match check_seal(key, node, head.seq, &head.hash, &head.seal) {
        Ok(()) => Judged::Sealed(head),
        Err(_) => Judged::Foreign("its seal was not made by this node's key".into()),
    }
}

/// A message of the subject as read from the stream.
struct Received {
    stream_seq: u64,
    judged: Judged,
}

/// The newest message of `node`'s subject.
async fn last_message(
    stream: &stream::Stream,
    node: &str,
    key: &VerifyingKey,
) -> Result<Option<Received>, WitnessError> {
    match stream.get_last_raw_message_by_subject(&subject(node)).await {
        Ok(m) => Ok(Some(Received {
            stream_seq: m.sequence,
            judged: judge(&m.payload, node, key),
        })),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats("read")(e.to_string())),
    }
}

/// Every message of `node`'s subject with a stream sequence in `from..until`, judged,
/// oldest first (the record lines are dropped as they are read: only heads are kept).
/// One STREAM.MSG.GET per message (`next_by_subj`): what a node's least-privilege user
/// may do (no consumer: on nats-server 2.9 a consumer create can rewrite another's).
async fn read_subject(
    stream: &stream::Stream,
    node: &str,
    key: &VerifyingKey,
    from: u64,
    until: u64,
) -> Result<Vec<Received>, WitnessError> {
    let subject = subject(node);
    let mut out = Vec::new();
    let mut next = from.max(1);
    while next < until {
        let message = match stream
            .get_first_raw_message_by_subject(&subject, next)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(nats("read")(e.to_string())),
        };
        if message.sequence >= until {
            break;
        }
        next = message.sequence + 1;
        out.push(Received {
            stream_seq: message.sequence,
            judged: judge(&message.payload, node, key),
        });
    }
    Ok(out)
}

/// The hashes of the folder's records at `seqs` (those it holds, up to `last`).
fn folder_hashes(
    dir: &Path,
    seqs: &std::collections::BTreeSet<u64>,
    last: u64,
) -> Result<HashMap<u64, String>, WitnessError> {
    let mut found = HashMap::new();
    let Some(&from) = seqs.first() else {
        return Ok(found);
    };
    if from > last {
        return Ok(found);
    }
    scan_records(dir, from, |r| {
        if seqs.contains(&r.body.seq) {
            found.insert(r.body.seq, r.hash);
        }
        r.body.seq < last
    })
    .map_err(|e| WitnessError::Folder(e.to_string()))?;
    Ok(found)
}

/// Where the newest head the witness holds from this node stands against the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The witness holds nothing of this node yet.
    Empty,
    /// The newest witnessed head is in the folder with the same hash.
    Agrees {
        /// Its seq.
        seq: u64,
        /// Its stream sequence.
        stream_seq: u64,
    },
    /// The witness holds a head this node sealed beyond the folder's end: the folder was
    /// rolled back, replaced or wiped.
    Ahead {
        /// The folder's last seq.
        folder_seq: u64,
        /// The witnessed head's seq.
        witnessed_seq: u64,
    },
    /// The witness holds a head this node sealed whose hash differs from the folder's
    /// record of that seq: the folder's chain was rewritten or forked.
    Forked {
        /// The seq.
        seq: u64,
    },
}

/// What reading a node's newest witnessed head found: where it stands, and the foreign
/// messages passed over on the way.
#[derive(Clone, Debug)]
pub struct Newest {
    /// Where the newest head of the node stands against its folder.
    pub standing: Standing,
    /// Messages in the subject the node did not send (newest first).
    pub foreign: Vec<Foreign>,
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Standing::Empty => write!(f, "the witness holds nothing of this node yet"),
            Standing::Agrees { seq, .. } => write!(f, "the witness agrees up to seq {seq}"),
            Standing::Ahead {
                folder_seq,
                witnessed_seq,
            } => write!(
                f,
                "the audit folder ends at seq {folder_seq} but the witness holds seq \
                 {witnessed_seq} sealed by this node's key: the folder was rolled back, \
                 replaced or wiped"
            ),
            Standing::Forked { seq } => write!(
                f,
                "the witness holds seq {seq} sealed by this node's key with another hash \
                 than the folder's record: the folder's chain was rewritten"
            ),
        }
    }
}

/// Finds the newest message of `node`'s subject that this node sent (its seal verifies
/// with `key`, or an unsealed part its folder holds) and where it stands against the
/// folder `dir`, whose last record is `folder_seq`. Foreign messages on the way are
/// collected, never trusted: the search goes back from the newest message in widening
/// windows, so one forged message costs one more window, not a read of the subject.
async fn newest_in(
    stream: &stream::Stream,
    node: &str,
    dir: &Path,
    folder_seq: u64,
    key: &VerifyingKey,
) -> Result<Newest, WitnessError> {
    let mut foreign = Vec::new();
    let Some(last) = last_message(stream, node, key).await? else {
        return Ok(Newest {
            standing: Standing::Empty,
            foreign,
        });
    };
    let top = last.stream_seq;
    let mut reads = vec![last];
    let mut window = 4096u64;
    let mut from = top + 1;
    loop {
        // Newest first: the first message that is the node's decides.
        reads.sort_by_key(|r| std::cmp::Reverse(r.stream_seq));
        let mut seqs = std::collections::BTreeSet::new();
        for r in &reads {
            if let Judged::Sealed(h) | Judged::Part(h) = &r.judged {
                seqs.insert(h.seq);
            }
        }
        let dir_owned = dir.to_path_buf();
        let hashes =
            tokio::task::spawn_blocking(move || folder_hashes(&dir_owned, &seqs, folder_seq))
                .await
                .map_err(|e| WitnessError::Folder(e.to_string()))??;
        for r in reads.drain(..) {
            match r.judged {
                Judged::Foreign(reason) => foreign.push(Foreign {
                    stream_seq: r.stream_seq,
                    reason,
                }),
                Judged::Sealed(h) => {
                    let standing = match hashes.get(&h.seq) {
                        Some(hash) if *hash == h.hash => Standing::Agrees {
                            seq: h.seq,
                            stream_seq: r.stream_seq,
                        },
                        Some(_) => Standing::Forked { seq: h.seq },
                        // Below the folder's first record: removed by retention.
                        None if h.seq <= folder_seq => Standing::Agrees {
                            seq: h.seq,
                            stream_seq: r.stream_seq,
                        },
                        None => Standing::Ahead {
                            folder_seq,
                            witnessed_seq: h.seq,
                        },
                    };
                    return Ok(Newest { standing, foreign });
                }
                Judged::Part(h) => match hashes.get(&h.seq) {
                    Some(hash) if *hash == h.hash => {
                        return Ok(Newest {
                            standing: Standing::Agrees {
                                seq: h.seq,
                                stream_seq: r.stream_seq,
                            },
                            foreign,
                        })
                    }
                    _ => foreign.push(Foreign {
                        stream_seq: r.stream_seq,
                        reason: "an unsealed part that is not in this node's chain".into(),
                    }),
                },
            }
        }
        if from <= 1 {
            return Ok(Newest {
                standing: Standing::Empty,
                foreign,
            });
        }
        let start = from.saturating_sub(window).max(1);
        reads = read_subject(stream, node, key, start, from).await?;
        from = start;
        window = window.saturating_mul(8);
    }
}

/// What [`compare`] found.
#[derive(Debug)]
pub struct Comparison {
    /// Whether the folder agrees with what the witness holds from this node.
    pub verdict: Result<Agreement, Disagreement>,
    /// Messages in the node's subject that it did not send (oldest first): each one is
    /// someone else publishing as this node.
    pub foreign: Vec<Foreign>,
}

/// What [`compare`] found when the folder agrees with the witness.
#[derive(Debug, PartialEq, Eq)]
pub struct Agreement {
    /// Heads compared.
    pub heads: usize,
    /// The newest witnessed seq (0: none).
    pub witnessed_seq: u64,
    /// Records of the folder after the newest witnessed one, not (yet) shipped: a running
    /// gateway's last batches, or a stopped one's that it ships at its next start.
    pub unwitnessed: Option<(u64, u64)>,
}

/// Where the folder and the witness part ways.
#[derive(Debug, thiserror::Error)]
#[error("record {seq}: {reason}")]
pub struct Disagreement {
    /// The first seq that differs.
    pub seq: u64,
    /// How.
    pub reason: String,
}

/// Compares the folder `dir` with what the witness holds for `config.node`: every
/// message of the node's subject is judged (its seal must verify with `key`, the node's
/// checkpoint key; an unsealed part must be in the folder's chain), anything else is
/// reported as foreign by its stream sequence and never trusted. Each head the node
/// sealed must be in the folder with the same hash; records after the newest one are
/// reported as not yet witnessed. Records removed by retention are not compared.
pub async fn compare(
    dir: &Path,
    config: &WitnessConfig,
    key: &VerifyingKey,
) -> Result<Comparison, WitnessError> {
    let (_, stream) = open(config, false).await?;
    let reads = read_subject(&stream, &config.node, key, 1, u64::MAX).await?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || compare_reads(&dir, reads))
        .await
        .map_err(|e| WitnessError::Folder(e.to_string()))?
}

/// [`compare`], waiting up to `wait` for a tail of unwitnessed records to be shipped
/// (a running gateway ships within milliseconds): only a tail still there after the
/// wait is reported.
pub async fn compare_settled(
    dir: &Path,
    config: &WitnessConfig,
    key: &VerifyingKey,
    wait: Duration,
) -> Result<Comparison, WitnessError> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let c = compare(dir, config, key).await?;
        let tail = matches!(&c.verdict, Ok(a) if a.unwitnessed.is_some());
        if !tail || tokio::time::Instant::now() >= until {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn compare_reads(dir: &Path, reads: Vec<Received>) -> Result<Comparison, WitnessError> {
    let mut foreign = Vec::new();
    // The node's sealed heads by seq; two different sealed heads for one seq mean the
    // node itself continued a rolled-back chain.
    let mut sealed: std::collections::BTreeMap<u64, String> = Default::default();
    let mut parts: Vec<(u64, Head)> = Vec::new();
    let mut fork = None;
    for r in reads {
        match r.judged {
            Judged::Foreign(reason) => foreign.push(Foreign {
                stream_seq: r.stream_seq,
                reason,
            }),
            Judged::Sealed(h) => match sealed.get(&h.seq) {
                Some(hash) if *hash != h.hash => {
                    fork.get_or_insert(h.seq);
                }
                _ => {
                    sealed.insert(h.seq, h.hash);
                }
            },
            Judged::Part(h) => parts.push((r.stream_seq, h)),
        }
    }
    let mut wanted: std::collections::BTreeSet<u64> = sealed.keys().copied().collect();
    wanted.extend(parts.iter().map(|(_, h)| h.seq));
    // The folder's first and last records, and the hashes asked for.
    let mut first_seq = None;
    let mut last_seq = 0u64;
    let mut hashes = HashMap::new();
    scan_records(dir, 1, |record| {
        first_seq.get_or_insert(record.body.seq);
        last_seq = record.body.seq;
        if wanted.contains(&record.body.seq) {
            hashes.insert(record.body.seq, record.hash);
        }
        true
    })
    .map_err(|e| WitnessError::Folder(e.to_string()))?;
    let first = first_seq.unwrap_or(last_seq + 1);
    for (stream_seq, h) in parts {
        let ours = match hashes.get(&h.seq) {
            Some(hash) => *hash == h.hash,
            None => h.seq < first, // removed by retention: cannot tell, not counted
        };
        if !ours {
            foreign.push(Foreign {
                stream_seq,
                reason: "an unsealed part that is not in this node's chain".into(),
            });
        }
    }
    foreign.sort_by_key(|f| f.stream_seq);
    let verdict = (|| {
        if let Some(seq) = fork {
            return Err(Disagreement {
                seq,
                reason: "the witness holds two different records of this seq, both sealed by \
                         this node's key: the node continued a rolled-back or copied folder"
                    .into(),
            });
        }
        for (&seq, hash) in sealed.range(first..) {
            match hashes.get(&seq) {
                Some(h) if h == hash => {}
                Some(h) => {
                    return Err(Disagreement {
                        seq,
                        reason: format!(
                            "hash {h} differs from the witnessed head {hash} (rewritten after \
                             it was witnessed)"
                        ),
                    })
                }
                None => {
                    return Err(Disagreement {
                        seq: last_seq + 1,
                        reason: format!(
                            "the log ends at seq {last_seq} but the witness saw seq {seq} \
                             (hash {hash}), sealed by this node's key: records were removed \
                             (a wipe or a rollback)"
                        ),
                    })
                }
            }
        }
        let witnessed_seq = sealed.keys().next_back().copied().unwrap_or(0);
        Ok(Agreement {
            heads: sealed.len(),
            witnessed_seq,
            unwitnessed: (last_seq > witnessed_seq).then_some((witnessed_seq + 1, last_seq)),
        })
    })();
    Ok(Comparison { verdict, foreign })
}

/// The heads this node sealed that the stream holds, oldest first (foreign messages
/// left out; see [`compare`] for them).
pub async fn heads(config: &WitnessConfig, key: &VerifyingKey) -> Result<Vec<Head>, WitnessError> {
    let (_, stream) = open(config, false).await?;
    Ok(read_subject(&stream, &config.node, key, 1, u64::MAX)
        .await?
        .into_iter()
        .filter_map(|r| match r.judged {
            Judged::Sealed(h) => Some(h),
            _ => None,
        })
        .collect())
}

/// One record of a batch not yet sealed on disk (held until its seal is read).
struct Pending {
    seq: u64,
    hash: String,
    time_unix_ms: i64,
    line: String,
}

/// Reads the batches appended to the segments after a given seq, incrementally: the
/// seal lines, and with `records` the record lines of each batch.
struct BatchReader {
    dir: PathBuf,
    after: u64,
    records: bool,
    segment: Option<(u64, PathBuf)>,
    offset: u64,
    partial: Vec<u8>,
    batch: Vec<Pending>,
}

impl BatchReader {
    fn new(dir: PathBuf, after: u64, records: bool) -> BatchReader {
        BatchReader {
            dir,
            after,
            records,
            segment: None,
            offset: 0,
            partial: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// Where the reader is, for a stall's report.
    fn position(&self) -> String {
        format!(
            "segment {}, offset {}, {} bytes of an unfinished line, {} records of an unsealed \
             batch",
            self.segment
                .as_ref()
                .map_or("none".into(), |(_, p)| p.display().to_string()),
            self.offset,
            self.partial.len(),
            self.batch.len()
        )
    }

    /// Turns the sealed batch ending with `head` into messages (several when it is
    /// larger than [`MAX_LINES`] or [`MAX_BYTES`]).
    fn seal(batch: &mut Vec<Pending>, head: Head, out: &mut Vec<Head>) {
        let records = std::mem::take(batch);
        let Some(last) = records.last().map(|p| p.seq) else {
            out.push(head);
            return;
        };
        let mut chunk: Vec<Pending> = Vec::new();
        let mut bytes = 0usize;
        for p in records {
            // What the line takes inside the message's JSON (quotes, backslashes and
            // control characters escaped), so that a part stays under NATS's limit.
            let size = p.line.len()
                + p.line
                    .bytes()
                    .filter(|b| matches!(b, b'"' | b'\\') || *b < 0x20)
                    .count()
                    * 5;
            if !chunk.is_empty() && (chunk.len() >= MAX_LINES || bytes + size > MAX_BYTES) {
                out.push(Self::chunk(
                    &head.node,
                    std::mem::take(&mut chunk),
                    String::new(),
                ));
                bytes = 0;
            }
            bytes += size;
            chunk.push(p);
        }
        debug_assert_eq!(chunk.last().map(|p| p.seq), Some(last));
        out.push(Self::chunk(&head.node, chunk, head.seal));
    }

    fn chunk(node: &str, chunk: Vec<Pending>, seal: String) -> Head {
        let first_seq = chunk.first().map_or(0, |p| p.seq);
        let last = chunk.last().expect("a chunk is never empty");
        let (seq, hash, time_unix_ms) = (last.seq, last.hash.clone(), last.time_unix_ms);
        Head {
            node: node.to_string(),
            seq,
            hash,
            seal,
            time_unix_ms,
            first_seq,
            lines: chunk.into_iter().map(|p| p.line).collect(),
        }
    }

    /// The messages of the batches sealed since the last call (about `max`).
    /// Only records up to `durable` (the log's last fsynced seq) are read: a batch written
    /// but not yet durable may still be cut by a crash, and must not reach the witness.
    fn next(&mut self, max: usize, durable: u64) -> std::io::Result<Vec<Head>> {
        let mut out = Vec::new();
        loop {
            let segments = list_segments(&self.dir)?;
            if self.segment.is_none() {
                // The segment holding `after + 1`.
                self.segment = segments
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= self.after + 1)
                    .or(segments.first())
                    .cloned();
                self.offset = 0;
                self.partial.clear();
                self.batch.clear();
            }
            let Some((first, path)) = self.segment.clone() else {
                return Ok(out);
            };
            let mut bytes = Vec::new();
            match std::fs::File::open(&path) {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(self.offset))?;
                    f.take(8 << 20).read_to_end(&mut bytes)?;
                }
                // Removed by retention: on to the next one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bytes.clear(),
                Err(e) => return Err(e),
            }
            self.offset += bytes.len() as u64;
            self.partial.extend_from_slice(&bytes);
            let (lines, tail) = split_lines(&self.partial);
            let mut consumed = tail;
            let mut not_durable = false;
            for (offset, line) in &lines {
                let sealed = line.last() != Some(&b'}');
                if !sealed && !self.records {
                    continue; // not the last record of a batch
                }
                let Ok(p) = parse_line(line) else { continue };
                if p.body.seq <= self.after {
                    continue;
                }
                if p.body.seq > durable {
                    // Read again next time, once durable.
                    consumed = *offset;
                    not_durable = true;
                    break;
                }
                if self.records {
                    self.batch.push(Pending {
                        seq: p.body.seq,
                        hash: p.hash.clone(),
                        time_unix_ms: p.body.time_unix_ms,
                        line: format!("{} {}", p.hash, p.json),
                    });
                }
                if let Some(seal) = p.seal {
                    self.after = p.body.seq;
                    let head = Head {
                        node: p.body.node,
                        seq: p.body.seq,
                        hash: p.hash,
                        seal,
                        time_unix_ms: p.body.time_unix_ms,
                        first_seq: 0,
                        lines: Vec::new(),
                    };
                    Self::seal(&mut self.batch, head, &mut out);
                }
            }
            self.partial.drain(..consumed);
            if not_durable {
                return Ok(out);
            }
            let taken: usize = out
                .iter()
                .map(|h| h.lines.iter().map(String::len).sum::<usize>())
                .sum();
            if !bytes.is_empty() && out.len() < max && taken < MAX_PENDING_BYTES {
                continue; // more may follow in this segment
            }
            // At the end of this segment: move on only once a later one exists.
            match segments.iter().find(|(f, _)| *f > first) {
                Some(next) if bytes.is_empty() && self.partial.is_empty() => {
                    self.segment = Some(next.clone());
                    self.offset = 0;
                }
                _ => return Ok(out),
            }
        }
    }
}

/// Every message a shipper would send for the folder `dir` (for tests and tools).
pub fn messages(dir: &Path, records: bool) -> std::io::Result<Vec<Head>> {
    BatchReader::new(dir.to_path_buf(), 0, records).next(usize::MAX, u64::MAX)
}

/// Where the shipper notes the newest head the witness acknowledged (`<seq> <hash>`, in
/// the audit folder): a witness that later lacks it lost acknowledged messages.
pub const ACKED_FILE: &str = "witness.acked";

/// What this node knows of its witness, shared by the [`Shipper`] with `/readyz`,
/// `/metrics` and AuditLog.Head.
#[derive(Debug, Default)]
pub struct WitnessStatus {
    acked: AtomicU64,
    compared: std::sync::atomic::AtomicBool,
    alarm: std::sync::Mutex<Option<String>>,
}

impl WitnessStatus {
    /// The newest seq the witness acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Whether the folder has been compared with the newest witnessed head since the
    /// start (false while a node started without the witness has not reached it).
    pub fn compared(&self) -> bool {
        self.compared.load(Ordering::Acquire)
    }

    /// The latest alarm (something in the witness this node did not send, or a witness
    /// that lost or is ahead of what this node holds), until restart.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes that the folder was compared at start and agrees.
    pub fn set_compared(&self) {
        self.compared.store(true, Ordering::Release);
    }

    /// Raises an alarm: a log line, the alarm counter, readiness and AuditLog.Head.
    pub fn raise(&self, metrics: &Metrics, alarm: String) {
        tracing::error!(alarm = %alarm, "audit witness alarm");
        metrics.witness_alarms.inc();
        *self.alarm.lock().unwrap_or_else(|e| e.into_inner()) = Some(alarm);
    }

    fn set_acked(&self, seq: u64) {
        self.acked.store(seq, Ordering::Release);
    }
}

fn read_acked(dir: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(dir.join(ACKED_FILE)).ok()?;
    let (seq, hash) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_string()))
}

fn write_acked(dir: &Path, seq: u64, hash: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{ACKED_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{seq} {hash}")?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(ACKED_FILE))
}

/// The verdict of the start check ([`check_at_start`]).
pub type StartCheck = Result<Newest, WitnessError>;

/// Before a node answers anything: compares its folder with the newest head the witness
/// holds from it (sealed by `key`). [`Standing::Ahead`] or [`Standing::Forked`] must
/// refuse the start; foreign messages are for an alarm.
pub async fn check_at_start(
    config: &WitnessConfig,
    log: &AuditLog,
    key: &VerifyingKey,
) -> StartCheck {
    // The shipper makes the stream when missing; so may the check (a first start).
    let (_, stream) = open(config, true).await?;
    newest_in(&stream, &config.node, log.dir(), log.last_seq(), key).await
}

/// Ships the heads of one node's log to the witness until stopped.
pub struct Shipper {
    config: WitnessConfig,
    log: AuditLog,
    key: VerifyingKey,
    metrics: Arc<Metrics>,
    status: Arc<WitnessStatus>,
}

impl Shipper {
    /// A shipper for `log`, whose seals verify with `key`.
    pub fn new(
        config: WitnessConfig,
        log: AuditLog,
        key: VerifyingKey,
        metrics: Arc<Metrics>,
    ) -> Shipper {
        Shipper {
            config,
            log,
            key,
            metrics,
            status: Arc::new(WitnessStatus::default()),
        }
    }

    /// What the shipper knows (shared with [`Shipper::run`]).
    pub fn status(&self) -> Arc<WitnessStatus> {
        self.status.clone()
    }

    /// Ships until the task is dropped: reconnects with backoff while NATS is down (one
    /// warning per outage), never blocking a request.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        let mut down_since: Option<std::time::Instant> = None;
        let mut alarmed = std::collections::HashSet::new();
        loop {
            // A session only ever ends in an error (NATS gone, the folder unreadable,
            // no progress).
            let Err(e) = self.session(&mut down_since, &mut alarmed).await;
            self.metrics.witness_up.set(0);
            if matches!(e, WitnessError::Stalled(_)) {
                // Not an outage: said every time, and retried at once.
                tracing::warn!(error = %e, "audit witness session restarted");
                backoff = Duration::from_millis(200);
            } else if down_since.is_none() {
                tracing::warn!(error = %e, "audit witness unreachable; the local log stays the durable copy, shipping resumes when it returns");
                down_since = Some(std::time::Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn foreign(&self, alarmed: &mut std::collections::HashSet<u64>, f: &Foreign) {
        if alarmed.insert(f.stream_seq) {
            self.status.raise(
                &self.metrics,
                format!("a message this node did not send is in its witness subject: {f}"),
            );
        }
    }

    /// Ships from the newest head of this node that the witness holds and that this node
    /// sent (never from whatever the stream says last) until something fails.
    async fn session(
        &self,
        down_since: &mut Option<std::time::Instant>,
        alarmed: &mut std::collections::HashSet<u64>,
    ) -> Result<std::convert::Infallible, WitnessError> {
        let (js, stream) = open(&self.config, true).await?;
        let node = &self.config.node;
        let dir = self.log.dir().to_path_buf();
        let durable = self.log.last_seq();
        let found = newest_in(&stream, node, &dir, durable, &self.key).await?;
        for f in &found.foreign {
            self.foreign(alarmed, f);
        }
        let start = match found.standing {
            Standing::Empty => 0,
            Standing::Agrees { seq, .. } => seq,
            ahead @ (Standing::Ahead { .. } | Standing::Forked { .. }) => {
                // Found after the start (a node started without its witness): the folder
                // is not what the witness saw. Shipping would fork the chain in the
                // witness; stop and say so (once: the session is retried).
                if self.status.alarm().as_deref() != Some(ahead.to_string().as_str()) {
                    self.status.raise(&self.metrics, ahead.to_string());
                }
                return Err(WitnessError::Folder(ahead.to_string()));
            }
        };
        self.status.set_compared();
        // A witness that lacks what it acknowledged before lost messages.
        if let Some((acked, _)) = read_acked(&dir) {
            if acked > start && acked <= durable {
                self.status.raise(
                    &self.metrics,
                    format!(
                        "the witness acknowledged seq {acked} of this node but now holds it only \
                         up to seq {start}: witnessed messages were deleted (shipping them again)"
                    ),
                );
            }
        }
        self.status.set_acked(start);
        if let Some(since) = down_since.take() {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                witnessed = start,
                "audit witness reachable again; catching up"
            );
        }
        self.metrics.witness_up.set(1);
        let subject = subject(node);
        let mut reader = BatchReader::new(dir.clone(), start, self.config.records);
        // The subject's messages as counted by the stream, against what this node sent
        // since: someone publishing as this node, or deleting what it shipped, is found
        // within seconds (the stream's count differs; the messages after the last check
        // that are not among this node's acknowledgements are named).
        let (mut expected, mut checked_from) = subject_state(&stream, node).await?;
        let mut ours = std::collections::HashSet::new();
        let mut last_check = tokio::time::Instant::now();
        // Since when the reader has found nothing to ship while the folder held durable
        // records past the newest shipped one (a stall: see [`STALL_AFTER`]).
        let mut idle_behind: Option<tokio::time::Instant> = None;
        loop {
            if last_check.elapsed() >= WATCH_EVERY {
                last_check = tokio::time::Instant::now();
                let (count, last_stream_seq) = subject_state(&stream, node).await?;
                if count > expected {
                    for r in read_subject(&stream, node, &self.key, checked_from, u64::MAX).await? {
                        if !ours.contains(&r.stream_seq) {
                            let reason = match r.judged {
                                Judged::Foreign(reason) => reason,
                                _ => "a head published as this node by someone else (another \
                                      gateway with this node id and key?)"
                                    .into(),
                            };
                            self.foreign(
                                alarmed,
                                &Foreign {
                                    stream_seq: r.stream_seq,
                                    reason,
                                },
                            );
                        }
                    }
                } else if count < expected {
                    self.status.raise(
                        &self.metrics,
                        format!(
                            "the witness holds {count} messages of this node where it holds at \
                             least {expected}: witnessed messages were deleted"
                        ),
                    );
                }
                expected = count;
                checked_from = last_stream_seq + 1;
                ours.clear();
            }
            // File reads off the async threads; the reader goes there and comes back.
            // Read only what the writer has made durable (fsynced), never a batch still in
            // flight that a crash could cut.
            let durable = self.log.last_seq();
            let (back, heads) = tokio::task::spawn_blocking(move || {
                let heads = reader.next(1024, durable);
                (reader, heads)
            })
            .await
            .map_err(|e| WitnessError::Folder(e.to_string()))?;
            reader = back;
            let heads = heads.map_err(|e| WitnessError::Folder(e.to_string()))?;
            if heads.is_empty() {
                if durable > reader.after {
                    let since = *idle_behind.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= STALL_AFTER {
                        return Err(WitnessError::Stalled(format!(
                            "the folder is durable up to seq {durable} but the reader, after \
                             seq {}, found no sealed batch to ship for {} s ({})",
                            reader.after,
                            STALL_AFTER.as_secs(),
                            reader.position()
                        )));
                    }
                } else {
                    idle_behind = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle_behind = None;
            // Publish the lot, then wait for the acknowledgements (pipelined), within a
            // deadline: a session waiting forever on NATS would stall shipping unseen.
            let shipped = tokio::time::timeout(
                PUBLISH_DEADLINE,
                self.publish(&js, &stream, &subject, &heads, alarmed),
            )
            .await
            .map_err(|_| {
                WitnessError::Stalled(format!(
                    "{} messages up to seq {} not acknowledged within {} s",
                    heads.len(),
                    heads.last().map_or(0, |h| h.seq),
                    PUBLISH_DEADLINE.as_secs()
                ))
            })??;
            expected += shipped.len() as u64;
            ours.extend(shipped);
            if let Some(last) = heads.iter().rev().find(|h| !h.seal.is_empty()) {
                let (dir, seq, hash) = (dir.clone(), last.seq, last.hash.clone());
                tokio::task::spawn_blocking(move || write_acked(&dir, seq, &hash))
                    .await
                    .map_err(|e| WitnessError::Folder(e.to_string()))?
                    .map_err(|e| WitnessError::Folder(format!("{ACKED_FILE}: {e}")))?;
            }
        }
    }

    /// Publishes `heads` in windows of [`PUBLISH_WINDOW`]: each window pipelined, then
    /// its acknowledgements awaited in order. Returns the stream sequences of those stored
    /// anew (not duplicates).
    async fn publish(
        &self,
        js: &jetstream::Context,
        stream: &stream::Stream,
        subject: &str,
        heads: &[Head],
        alarmed: &mut std::collections::HashSet<u64>,
    ) -> Result<Vec<u64>, WitnessError> {
        let node = &self.config.node;
        let mut ours = Vec::with_capacity(heads.len());
        for heads in heads.chunks(PUBLISH_WINDOW) {
            // The message id carries the record's hash: nobody can claim an id ahead of the
            // gateway, since nobody knows a record's hash before it is written.
            let mut acks = Vec::with_capacity(heads.len());
            for head in heads {
                let payload = serde_json::to_vec(head).expect("a head serialises");
                let publish = PublishMessage::build()
                    .message_id(message_id(node, head))
                    .payload(payload.into());
                acks.push(
                    js.send_publish(subject.to_string(), publish)
                        .await
                        .map_err(|e| nats("publish")(e.to_string()))?,
                );
            }
            for (head, ack) in heads.iter().zip(acks) {
                let ack = ack.await.map_err(|e| nats("publish")(e.to_string()))?;
                if ack.duplicate {
                    // A resend after a crash is stored already; anything else under our id
                    // is someone else's.
                    let stored = stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| nats("read")(e.to_string()))?;
                    let same = match judge(&stored.payload, node, &self.key) {
                        Judged::Sealed(h) | Judged::Part(h) => {
                            h.seq == head.seq && h.hash == head.hash && h.seal == head.seal
                        }
                        Judged::Foreign(_) => false,
                    };
                    if !same {
                        self.foreign(
                            alarmed,
                            &Foreign {
                                stream_seq: ack.sequence,
                                reason: format!(
                                    "it holds the message id of this node's seq {}: the \
                                     genuine message was refused as a duplicate",
                                    head.seq
                                ),
                            },
                        );
                    }
                }
                if !ack.duplicate {
                    ours.push(ack.sequence);
                }
                self.status.set_acked(head.seq);
                self.metrics.witness_shipped.inc();
            }
        }
        Ok(ours)
    }
}

/// The number of messages in `node`'s subject, and the stream's last sequence.
async fn subject_state(stream: &stream::Stream, node: &str) -> Result<(u64, u64), WitnessError> {
    let subject = subject(node);
    let mut info = stream
        .info_with_subjects(&subject)
        .await
        .map_err(|e| nats("stream")(e.to_string()))?;
    let last = info.info.state.last_sequence;
    let mut count = 0;
    while let Some(entry) = info.next().await {
        let (s, n) = entry.map_err(|e| nats("stream")(e.to_string()))?;
        if s == subject {
            count = n as u64;
        }
    }
    Ok((count, last))
}

/// How long the reader may find nothing to ship while the folder holds durable records the
/// witness lacks before the session is started afresh (the seal is written with its batch,
/// so a durable record's batch is always complete: nothing legitimate waits this long).
const STALL_AFTER: Duration = Duration::from_secs(10);

/// Most messages published before their acknowledgements are awaited. async-nats lends
/// each publish one of a context's 5,000 acknowledgement permits until its acknowledgement
/// is awaited: a round of more than 5,000 pipelined publishes waits forever for a permit
/// that only its own later awaits would return (the shipper stalled so, silently, after a
/// long NATS outage left more than 5,000 small batches to catch up).
const PUBLISH_WINDOW: usize = 1024;

/// How long one round of publishing (up to 1,024 messages, 16 MiB) may wait for its
/// acknowledgements before the session is started afresh.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

/// How often a shipping node checks that the messages of its subject are its own.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// A message's `Nats-Msg-Id`: node, seq and the record's hash (deduplicates a resend after
/// a crash; unguessable before the record is written).
fn message_id(node: &str, head: &Head) -> String {
    format!(
        "{node}:{}:{}",
        head.seq,
        &head.hash[..head.hash.len().min(16)]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditConfig, AuditEntry};

    #[tokio::test]
    async fn nothing_past_the_durable_seq_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]);
        let log = AuditLog::open(AuditConfig::new(dir.path(), "n"), key).unwrap();
        for i in 0..3 {
            log.append(AuditEntry {
                request_id: format!("r{i}"),
                ..AuditEntry::new(
                    crate::policy::Rpc::VerifyIdentity,
                    crate::audit::Outcome::Match,
                )
            })
            .await
            .unwrap();
        }
        let last = log.last_seq();
        log.shutdown().await;
        let mut reader = BatchReader::new(dir.path().to_path_buf(), 0, true);
        // The last batch is on disk but, as far as this reader is told, not yet durable.
        let early = reader.next(100, last - 1).unwrap();
        assert_eq!(early.last().map(|h| h.seq), Some(last - 1));
        assert!(early
            .iter()
            .all(|h| h.lines.len() as u64 == h.seq - h.first_seq + 1));
        let rest = reader.next(100, last).unwrap();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!((rest[0].first_seq, rest[0].seq), (last, last));
        assert!(reader.next(100, last).unwrap().is_empty());
    }
}
