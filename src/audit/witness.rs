//! The witness: a node's own disk cannot witness itself, so every sealed batch's head
//! (its last record's seq and hash, and the seal) is shipped to a NATS JetStream
//! stream, subject `popgw.audit.<node>`, one message per batch, deduplicated by
//! `Nats-Msg-Id` = `<node>:<seq>` so that a resend after a crash is harmless.
//!
//! With `records` on (the default), each message also carries the batch's record lines
//! (`<hash> <json>`, as in the segment, without the seal): the stream is then the feed
//! of the central index ([`super::index`]). A batch larger than [`MAX_LINES`] records or
//! [`MAX_BYTES`] bytes goes as several messages, each ending at one of its records; only
//! the last carries the seal. Nothing is shipped before its batch's seal is on disk, so
//! a batch cut at the next start (a crash mid-write) never reaches the stream — nor
//! before the writer reports it durable (its fdatasync returned).
//!
//! The [`Shipper`] reads the heads from the segment files (the seal lines), never from
//! the answer's path: requests wait only for the local fsync. It resumes from the last
//! head the stream holds; while NATS is down the gateway keeps serving, the lag is
//! reported (`popgw_audit_witness_lag_records`) and shipping catches up when NATS
//! returns. [`compare`] (`popgw audit verify --witness`) checks a folder against the
//! witnessed heads: a wiped, rolled-back or extended log fails, naming the first seq
//! that differs.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::format::{list_segments, parse_line, split_lines};
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

/// The newest head the stream holds for `node`.
async fn last_head(stream: &stream::Stream, node: &str) -> Result<Option<Head>, WitnessError> {
    match stream.get_last_raw_message_by_subject(&subject(node)).await {
        Ok(m) => serde_json::from_slice(&m.payload)
            .map(Some)
            .map_err(|e| WitnessError::Garbled(m.sequence, e.to_string())),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats("read")(e.to_string())),
    }
}

/// Every head the stream holds for `node`, oldest first.
pub async fn heads(config: &WitnessConfig) -> Result<Vec<Head>, WitnessError> {
    let (_, stream) = open(config, false).await?;
    if last_head(&stream, &config.node).await?.is_none() {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject(&config.node),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("read")(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats("read")(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| nats("read")(e.to_string()))?;
        let info = message.info().map_err(|e| nats("read")(e.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let mut head: Head = serde_json::from_slice(&message.payload)
            .map_err(|e| WitnessError::Garbled(sequence, e.to_string()))?;
        // Only the heads are compared: the records stay in the stream.
        head.lines = Vec::new();
        out.push(head);
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// What [`compare`] found when the folder agrees with the witness.
#[derive(Debug, PartialEq, Eq)]
pub struct Agreement {
    /// Heads compared.
    pub heads: usize,
    /// The newest witnessed seq (0: none).
    pub witnessed_seq: u64,
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

/// Compares the folder `dir` with the heads witnessed for `config.node`: each must be
/// in the folder with the same hash, and the folder may not go past the newest one (a
/// gateway ships everything before it stops; after a crash, start it again to ship
/// the rest). Records removed by retention are not compared.
pub async fn compare(
    dir: &Path,
    config: &WitnessConfig,
) -> Result<Result<Agreement, Disagreement>, WitnessError> {
    let heads = heads(config).await?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || compare_heads(&dir, &heads))
        .await
        .map_err(|e| WitnessError::Folder(e.to_string()))?
}

fn compare_heads(
    dir: &Path,
    heads: &[Head],
) -> Result<Result<Agreement, Disagreement>, WitnessError> {
    let mut next = 0usize;
    let mut last_seq = 0u64;
    let mut first_seq = None;
    let mut differs = None;
    scan_records(dir, 1, |record| {
        let seq = record.body.seq;
        last_seq = seq;
        // Heads older than the first surviving record were removed by retention.
        let first = *first_seq.get_or_insert(seq);
        while next < heads.len() && heads[next].seq < first {
            next += 1;
        }
        if next < heads.len() && heads[next].seq == seq {
            if heads[next].hash != record.hash {
                differs = Some(Disagreement {
                    seq,
                    reason: format!(
                        "hash {} differs from the witnessed head {} (rewritten after it was witnessed)",
                        record.hash, heads[next].hash
                    ),
                });
                return false;
            }
            next += 1;
        }
        true
    })
    .map_err(|e| WitnessError::Folder(e.to_string()))?;
    if let Some(d) = differs {
        return Ok(Err(d));
    }
    let witnessed_seq = heads.last().map_or(0, |h| h.seq);
    if next < heads.len() {
        let missing = &heads[next];
        return Ok(Err(Disagreement {
            seq: last_seq + 1,
            reason: format!(
                "the log ends at seq {last_seq} but the witness saw seq {} (hash {}): \
                 records were removed (a wipe or a rollback)",
                missing.seq, missing.hash
            ),
        }));
    }
    if last_seq > witnessed_seq {
        return Ok(Err(Disagreement {
            seq: witnessed_seq + 1,
            reason: format!(
                "records {}..={last_seq} were never witnessed (added to the log, or a gateway \
                 that crashed before shipping them: start it to ship the rest)",
                witnessed_seq + 1
            ),
        }));
    }
    Ok(Ok(Agreement {
        heads: heads.len(),
        witnessed_seq,
    }))
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

/// Ships the heads of one node's log to the witness until stopped.
pub struct Shipper {
    config: WitnessConfig,
    log: AuditLog,
    metrics: Arc<Metrics>,
    acked: Arc<AtomicU64>,
}

impl Shipper {
    /// A shipper for `log`.
    pub fn new(config: WitnessConfig, log: AuditLog, metrics: Arc<Metrics>) -> Shipper {
        Shipper {
            config,
            log,
            metrics,
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The newest seq the witness acknowledged (shared with [`Shipper::run`]).
    pub fn acked(&self) -> Arc<AtomicU64> {
        self.acked.clone()
    }

    /// Ships until the task is dropped: reconnects with backoff while NATS is down (one
    /// warning per outage), never blocking a request.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            // A session only ever ends in an error (NATS gone, the folder unreadable).
            let Err(e) = self.session(&mut down_since).await;
            self.metrics.witness_up.set(0);
            if down_since.is_none() {
                tracing::warn!(error = %e, "audit witness unreachable; the local log stays the durable copy, shipping resumes when it returns");
                down_since = Some(std::time::Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Ships from the stream's last head for this node until something fails. (The lag
    /// is derived from `acked` and the log's last seq where it is read: `/metrics`,
    /// AuditLog.Head.)
    async fn session(
        &self,
        down_since: &mut Option<std::time::Instant>,
    ) -> Result<std::convert::Infallible, WitnessError> {
        let (js, stream) = open(&self.config, true).await?;
        let start = last_head(&stream, &self.config.node)
            .await?
            .map_or(0, |h| h.seq);
        self.acked.store(start, Ordering::Release);
        if let Some(since) = down_since.take() {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                witnessed = start,
                "audit witness reachable again; catching up"
            );
        }
        self.metrics.witness_up.set(1);
        let subject = subject(&self.config.node);
        let mut reader = BatchReader::new(self.log.dir().to_path_buf(), start, self.config.records);
        loop {
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
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Publish the lot, then wait for the acknowledgements (pipelined).
            let mut acks = Vec::with_capacity(heads.len());
            for head in &heads {
                let payload = serde_json::to_vec(head).expect("a head serialises");
                let publish = PublishMessage::build()
                    .message_id(format!("{}:{}", self.config.node, head.seq))
                    .payload(payload.into());
                acks.push(
                    js.send_publish(subject.clone(), publish)
                        .await
                        .map_err(|e| nats("publish")(e.to_string()))?,
                );
            }
            for (head, ack) in heads.iter().zip(acks) {
                ack.await.map_err(|e| nats("publish")(e.to_string()))?;
                self.acked.store(head.seq, Ordering::Release);
                self.metrics.witness_shipped.inc();
            }
        }
    }
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
                ..Default::default()
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
