//! The group-commit writer thread, rotation, checkpoints and retention; recovery on
//! open is in `recovery`.

mod recovery;

use super::format::{
    list_segments, parse_line, record_hash, segment_name, sign_checkpoint, sign_retention,
    sign_seal, sync_dir, LogEntry, RemovedSegment, CHECKPOINTS_FILE, PUBKEY_FILE,
};
use super::{AuditConfig, AuditEntry, AuditError, Checkpoint, Committed, Durability, StoredRecord};
use ed25519_dalek::SigningKey;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, watch};

type Reply = oneshot::Sender<Result<Committed, AuditError>>;

enum Msg {
    Append(Box<AuditEntry>, Reply),
    Shutdown(oneshot::Sender<()>),
    /// Test only: stop as if the process had crashed (no final checkpoint).
    #[cfg(test)]
    Crash(oneshot::Sender<()>),
}

/// State shared between the handles and the writer thread.
struct Shared {
    failed: AtomicBool,
    inject: AtomicBool,
    /// Milliseconds the next batch waits before its write (a hung disk, for tests).
    inject_stall_ms: AtomicU64,
    last_seq: AtomicU64,
    batches: AtomicU64,
    batched_records: AtomicU64,
    head: Mutex<Option<Checkpoint>>,
    bcast: broadcast::Sender<Arc<StoredRecord>>,
}

struct Inner {
    dir: PathBuf,
    node: String,
    tx: Mutex<Option<mpsc::SyncSender<Msg>>>,
    capacity: usize,
    append_timeout: Duration,
    metrics: Arc<crate::telemetry::Metrics>,
    public_key: String,
    done: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// Handle to the audit log of one node. Cheap to clone; all clones share one
/// writer thread. Dropping the last clone stops the writer like
/// [`AuditLog::shutdown`] (without waiting for it).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the folder's exclusive lock (`audit.lock`, holding the holder's pid), or
/// names who holds it.
fn lock_folder(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join("audit.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(AuditError::Locked {
            dir: dir.display().to_string(),
            holder: if holder.is_empty() {
                "pid unknown".into()
            } else {
                holder
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect()
            },
        });
    }
    file.set_len(0)?;
    file.write_all(format!("pid {}\n", std::process::id()).as_bytes())?;
    file.sync_data()?;
    Ok(file)
}

/// Puts the calling thread (the writer) under Linux's `SCHED_BATCH`: a record arriving
/// wakes it without preempting the thread that queued it, so on a busy core the runtime
/// finishes the requests it has in hand and the writer then takes them as one batch.
/// Measured (issue 17, one core for the gateway): 37 records per fdatasync instead of
/// 9–12, ~1.3× the answers and a lower p99. Nothing else changes: the writer still gets
/// its fair share of the CPU and every answer still waits for its record's fdatasync.
/// Where it cannot be set the writer runs as before, and also when the process runs
/// niced: setting the policy resets the thread's nice value, which would move the writer
/// against the runtime's threads.
fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        // Field 19 of /proc/thread-self/stat: this thread's nice value.
        let nice = std::fs::read_to_string("/proc/thread-self/stat")
            .ok()
            .and_then(|stat| {
                let after = stat.get(stat.rfind(')')? + 1..)?.to_string();
                after.split_whitespace().nth(16)?.parse::<i64>().ok()
            });
        if nice != Some(0) {
            tracing::debug!(?nice, "audit writer: niced or unknown; SCHED_BATCH not set");
            return;
        }
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        };
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        ) {
            tracing::debug!(error = ?e, "audit writer: SCHED_BATCH not (fully) set");
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AuditLog {
    /// Opens (or creates) the log directory, recovers a torn tail, and spawns
    /// the writer thread. Blocking; call it at startup.
    pub fn open(cfg: AuditConfig, key: SigningKey) -> Result<AuditLog, AuditError> {
        if cfg.node.contains('\n') {
            return Err(AuditError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "audit node id may not contain a newline",
            )));
        }
        std::fs::create_dir_all(&cfg.dir)?;
        sync_dir(&cfg.dir)?;
        if let Some(parent) = cfg.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        // One writer per folder, for the life of the writer thread.
        let folder_lock = lock_folder(&cfg.dir)?;
        if cfg.expect_existing {
            refuse_wiped(&cfg.dir)?;
        }
        ensure_pubkey(&cfg.dir, &key)?;
        let public_key = super::format::encode_hex(key.verifying_key().to_bytes());

        let (bcast, _) = broadcast::channel(16384);
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            inject: AtomicBool::new(false),
            inject_stall_ms: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched_records: AtomicU64::new(0),
            head: Mutex::new(None),
            bcast,
        });
        let node = cfg.node.clone();
        let mut writer = Writer::recover(cfg, key, shared.clone())?;
        writer.apply_retention(now_ms())?;

        let capacity = writer.cfg.queue_capacity.max(1);
        let append_timeout = writer.cfg.append_timeout;
        let metrics = writer.cfg.metrics.clone();
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (done_tx, done_rx) = watch::channel(false);
        let dir = writer.cfg.dir.clone();
        std::thread::Builder::new()
            .name("popgw-audit-writer".into())
            .spawn(move || {
                batch_scheduling();
                writer.run(rx);
                drop(writer);
                drop(folder_lock);
                let _ = done_tx.send(true);
            })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                dir,
                node,
                tx: Mutex::new(Some(tx)),
                capacity,
                append_timeout,
                metrics,
                public_key,
                done: done_rx,
                shared,
            }),
        })
    }

    /// Queues the record and resolves once it is durable (per the configured
    /// [`Durability`]). If the future is dropped early the record is still
    /// written.
    pub async fn append(&self, entry: AuditEntry) -> Result<Committed, AuditError> {
        if self.is_failed() {
            return Err(AuditError::Failed);
        }
        let (reply, rx) = oneshot::channel();
        {
            let tx = lock(&self.inner.tx);
            match tx
                .as_ref()
                .map(|tx| tx.try_send(Msg::Append(Box::new(entry), reply)))
            {
                Some(Ok(())) => {
                    self.inner.metrics.audit_queue.inc();
                }
                Some(Err(mpsc::TrySendError::Full(_))) => {
                    return Err(AuditError::Overloaded(self.inner.capacity))
                }
                _ => return Err(AuditError::Closed),
            }
        }
        match tokio::time::timeout(self.inner.append_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) if self.is_failed() => Err(AuditError::Failed),
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => {
                // A write that hangs (a failing disk, a dead NFS server) must not hold
                // every request forever with health SERVING: fail closed, as for an error.
                if !self.inner.shared.failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        timeout_ms = self.inner.append_timeout.as_millis() as u64,
                        "audit append not durable in time; failing closed until restart"
                    );
                }
                Err(AuditError::Stalled(self.inner.append_timeout.as_millis()))
            }
        }
    }

    /// Every record committed from now on (lagging receivers lose records).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredRecord>> {
        self.inner.shared.bcast.subscribe()
    }

    /// The latest signed checkpoint.
    pub fn head(&self) -> Option<Checkpoint> {
        lock(&self.inner.shared.head).clone()
    }

    /// The last durable seq (0 if the log is empty).
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.last_seq.load(Ordering::Acquire)
    }

    /// The public key of the key this log signs with (hex), as held in memory — not
    /// the file in the folder, which whoever can write the folder could replace.
    pub fn public_key(&self) -> &str {
        &self.inner.public_key
    }

    /// The node whose chain this is.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether the log has failed closed (every append refused until restart).
    pub fn is_failed(&self) -> bool {
        self.inner.shared.failed.load(Ordering::Acquire)
    }

    /// Writes every queued record, signs a final checkpoint and stops the
    /// writer. Idempotent; later appends fail with [`AuditError::Closed`].
    pub async fn shutdown(&self) {
        self.stop(Msg::Shutdown).await;
    }

    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        self.stop(Msg::Crash).await;
    }

    async fn stop(&self, msg: impl FnOnce(oneshot::Sender<()>) -> Msg) {
        let tx = lock(&self.inner.tx).take();
        if let Some(tx) = tx {
            let (ack, ack_rx) = oneshot::channel();
            let mut msg = Some(msg(ack));
            // The queue may be full: wait for room without blocking the async thread.
            while let Some(m) = msg.take() {
                match tx.try_send(m) {
                    Ok(()) => {
                        let _ = ack_rx.await;
                        break;
                    }
                    Err(mpsc::TrySendError::Full(m)) => {
                        msg = Some(m);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => break,
                }
            }
            drop(tx);
        }
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// The next batch waits this long before its write, as on a hung disk.
    #[doc(hidden)]
    pub fn inject_stall(&self, stall: Duration) {
        self.inner
            .shared
            .inject_stall_ms
            .store(stall.as_millis() as u64, Ordering::Release);
    }

    /// The next batch's write fails as if the disk were full (half of the
    /// batch's bytes reach the file, then the write errors).
    #[doc(hidden)]
    pub fn inject_io_error(&self) {
        self.inner.shared.inject.store(true, Ordering::Release);
    }

    /// (batches committed, records committed in them) since open, for
    /// benchmarks: mean batch size = records / batches.
    #[doc(hidden)]
    pub fn batch_stats(&self) -> (u64, u64) {
        (
            self.inner.shared.batches.load(Ordering::Relaxed),
            self.inner.shared.batched_records.load(Ordering::Relaxed),
        )
    }
}

/// Refuses a folder holding neither segments nor checkpoints when a log is expected.
fn refuse_wiped(dir: &Path) -> Result<(), AuditError> {
    let no_segments = list_segments(dir)?.is_empty();
    let no_checkpoints =
        std::fs::metadata(dir.join(CHECKPOINTS_FILE)).map_or(true, |m| m.len() == 0);
    if no_segments && no_checkpoints {
        return Err(AuditError::Unmatched(format!(
            "{} holds no audit log, but its signing key was in use before: the log was wiped \
             or moved. Restore it; to start a new log on purpose, move the signing key away first",
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `audit-signing.pub` if absent; refuses a different key.
fn ensure_pubkey(dir: &Path, key: &SigningKey) -> Result<(), AuditError> {
    let path = dir.join(PUBKEY_FILE);
    let want = super::format::encode_hex(key.verifying_key().to_bytes());
    match std::fs::read_to_string(&path) {
        Ok(have) if have.trim() == want => Ok(()),
        Ok(_) => Err(AuditError::KeyMismatch(format!(
            "{} holds a different public key than the configured signing key; \
             use the original key or start a new audit directory",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = dir.join(format!(".{PUBKEY_FILE}.tmp"));
            let mut f = File::create(&tmp)?;
            f.write_all(format!("{want}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(dir)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

struct Segment {
    file: File,
    path: PathBuf,
    size: u64,
    records: u64,
    started_ms: i64,
}

struct Writer {
    cfg: AuditConfig,
    key: SigningKey,
    shared: Arc<Shared>,
    seg: Option<Segment>,
    ckpt: File,
    /// Hash of the last line of `checkpoints.log` (the next line's `prev`).
    ckpt_prev: [u8; 32],
    /// Time of the newest record (retention counts from it, not from the clock).
    newest_ms: Option<i64>,
    next_seq: u64,
    last_hash: [u8; 32],
    since_ckpt: u64,
    last_ckpt_at: Instant,
}

/// The first record of a segment file, if it has a complete one.
fn first_record_of(path: &Path) -> io::Result<Option<super::format::ParsedLine>> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut f = File::open(path)?;
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            return Ok(parse_line(&bytes[..pos]).ok());
        }
    }
}

/// Whether records may arrive during a commit delay, for a batch of `batch` records
/// after one of `last_batch`, with `running` requests in the gateway (when known): not
/// for a lone caller, nor when the batch holds as many records as requests are running.
fn more_may_come(batch: usize, last_batch: usize, running: Option<usize>) -> bool {
    (batch > 1 || last_batch > 1) && running.is_none_or(|running| running > batch)
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let tick = self
            .cfg
            .checkpoint_interval
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let max_batch = self.cfg.max_batch.max(1);
        let mut last_batch = 0;
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            };
            let mut batch = Vec::new();
            let mut stop = self.take(&rx, Some(first), &mut batch, max_batch);
            // Commit delay (PostgreSQL's commit_delay with commit_siblings): when
            // records are arriving concurrently, sleep a moment before committing so
            // that one write, one fdatasync and one seal serve more of them. Records
            // queued meanwhile wake no one (the writer is not waiting on the queue).
            // A lone caller (the last batch and this one of one record) never waits, nor
            // does a batch that already holds a record of every running request: its
            // callers all wait on this commit, so no record can come during the delay
            // (a closed loop of N callers would otherwise idle the node for it each round).
            let delay = self.cfg.commit_delay;
            let running = self.cfg.requests_running.as_ref().map(|r| r.count());
            if !delay.is_zero()
                && stop.is_none()
                && batch.len() < max_batch
                && more_may_come(batch.len(), last_batch, running)
            {
                std::thread::sleep(delay);
                stop = self.take(&rx, None, &mut batch, max_batch);
            }
            last_batch = batch.len();
            if !batch.is_empty() {
                self.commit(batch);
            }
            self.maybe_checkpoint();
            match stop {
                Some(Msg::Shutdown(ack)) => {
                    self.finish();
                    let _ = ack.send(());
                    return;
                }
                #[cfg(test)]
                Some(Msg::Crash(ack)) => {
                    let _ = ack.send(());
                    return;
                }
                _ => {}
            }
        }
    }

    /// Moves `first` and then queued appends into `batch`, up to `max_batch`; stops at
    /// a control message, which it returns.
    fn take(
        &self,
        rx: &mpsc::Receiver<Msg>,
        first: Option<Msg>,
        batch: &mut Vec<(AuditEntry, Reply)>,
        max_batch: usize,
    ) -> Option<Msg> {
        let mut next = first;
        while batch.len() < max_batch {
            let msg = match next.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
                },
            };
            match msg {
                Msg::Append(e, r) => {
                    self.cfg.metrics.audit_queue.dec();
                    batch.push((*e, r));
                }
                other => return Some(other),
            }
        }
        None
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Enters the sticky failed state.
    fn fail(&mut self, what: &str, err: &io::Error) {
        tracing::error!(error = %err, "audit log {what} failed; failing closed until restart");
        self.shared.failed.store(true, Ordering::Release);
        // Never touch these files again in this process.
        self.seg = None;
    }

    fn commit(&mut self, batch: Vec<(AuditEntry, Reply)>) {
        let (entries, replies): (Vec<AuditEntry>, Vec<Reply>) = batch.into_iter().unzip();
        if self.failed() {
            for reply in replies {
                let _ = reply.send(Err(AuditError::Failed));
            }
            return;
        }
        let now = now_ms();
        if let Err(e) = self.rotate_if_needed(now) {
            self.fail("segment rotation", &e);
            for reply in replies {
                let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string()).into()));
            }
            return;
        }
        let Some(seg) = self.seg.as_mut() else {
            unreachable!("rotate_if_needed leaves a segment open")
        };
        // Records are kept for the broadcast only while someone watches (AuditLog.Watch).
        // A watcher that subscribes after this check still sees this batch: it reads the
        // files after its own record is durable, which is after this batch.
        let live = self.shared.bcast.receiver_count() > 0;
        let mut buf = Vec::with_capacity(entries.len() * 512);
        let mut stored = Vec::with_capacity(if live { entries.len() } else { 0 });
        let mut hashes = Vec::with_capacity(entries.len());
        let mut prev = self.last_hash;
        let mut seq = self.next_seq;
        let first = self.next_seq;
        let last = self.next_seq + entries.len() as u64 - 1;
        for e in entries {
            // The entry's fields move into the record: no copy per field.
            let body = e.into_body(
                seq,
                now,
                self.cfg.node.clone(),
                super::format::encode_hex(prev),
            );
            let json = serde_json::to_string(&body).expect("record serialises");
            let hash = record_hash(&prev, json.as_bytes());
            let hash_hex = super::format::encode_hex(hash);
            buf.extend_from_slice(hash_hex.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(json.as_bytes());
            if seq == last {
                // The batch's seal, in the same write and fdatasync as its records: no
                // record is ever on disk unsigned, so none can be added without the key.
                buf.push(b' ');
                buf.extend_from_slice(
                    sign_seal(&self.key, &self.cfg.node, seq, &hash_hex).as_bytes(),
                );
            }
            buf.push(b'\n');
            if live {
                stored.push(StoredRecord {
                    body,
                    hash: hash_hex.clone(),
                    json,
                    file: seg.path.clone(),
                });
            }
            hashes.push(hash_hex);
            prev = hash;
            seq += 1;
        }

        let writing = std::time::Instant::now();
        let stall = self.shared.inject_stall_ms.swap(0, Ordering::AcqRel);
        if stall > 0 {
            std::thread::sleep(Duration::from_millis(stall));
        }
        let result = if self.shared.inject.swap(false, Ordering::AcqRel) {
            let _ = seg.file.write_all(&buf[..buf.len() / 2]);
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected write error (no space left on device)",
            ))
        } else {
            seg.file
                .write_all(&buf)
                .and_then(|()| match self.cfg.durability {
                    Durability::Fsync => seg.file.sync_data(),
                    Durability::Buffered => Ok(()),
                })
        };
        if let Err(e) = result {
            self.fail("write", &e);
            for reply in replies {
                let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string()).into()));
            }
            return;
        }

        let n = replies.len() as u64;
        let metrics = &self.cfg.metrics;
        metrics
            .audit_write_seconds
            .observe(writing.elapsed().as_secs_f64());
        metrics.audit_batch_records.observe(n as f64);
        seg.size += buf.len() as u64;
        seg.records += n;
        self.next_seq = seq;
        self.last_hash = prev;
        self.newest_ms = Some(now);
        self.since_ckpt += n;
        self.shared.last_seq.store(seq - 1, Ordering::Release);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared.batched_records.fetch_add(n, Ordering::Relaxed);
        for ((reply, hash), seq) in replies.into_iter().zip(hashes).zip(first..) {
            let _ = reply.send(Ok(Committed { seq, hash }));
        }
        for rec in stored {
            let _ = self.shared.bcast.send(Arc::new(rec));
        }
    }

    fn rotate_if_needed(&mut self, now: i64) -> io::Result<()> {
        let max_age = i64::try_from(self.cfg.segment_max_age.as_millis()).unwrap_or(i64::MAX);
        let rotate = match &self.seg {
            None => true,
            Some(s) => {
                s.records > 0
                    && (s.size >= self.cfg.segment_max_bytes
                        || now.saturating_sub(s.started_ms) >= max_age)
            }
        };
        if !rotate {
            return Ok(());
        }
        if let Some(old) = self.seg.take() {
            // Buffered mode: a closed segment must be durable before the next one exists.
            old.file.sync_data()?;
        }
        let path = self.cfg.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.sync_all()?;
        sync_dir(&self.cfg.dir)?;
        self.seg = Some(Segment {
            file,
            path,
            size: 0,
            records: 0,
            started_ms: now,
        });
        if let Err(e) = self.apply_retention(now) {
            tracing::error!(error = %e, "audit log retention failed");
        }
        Ok(())
    }

    /// Deletes old whole segments (never the current one), after appending a
    /// signed note of what is removed.
    fn apply_retention(&mut self, now: i64) -> Result<(), AuditError> {
        let Some(ret) = self.cfg.retention else {
            return Ok(());
        };
        if self.failed() {
            return Ok(());
        }
        // Retention counts from the newest record, not from the clock alone: a clock
        // set ahead at start must not make every segment "old". A clock further ahead of
        // the newest record than the retention period itself is implausible (or the
        // node sat idle that long): nothing is deleted, and it is said.
        let Some(newest) = self.newest_ms else {
            return Ok(());
        };
        let ret_ms = i64::try_from(ret.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(newest) > ret_ms.max(86_400_000) {
            tracing::warn!(
                ahead_ms = now - newest,
                "audit log retention: the clock is further ahead of the newest record than the retention period; nothing deleted"
            );
            return Ok(());
        }
        let cutoff = newest.min(now).saturating_sub(ret_ms);
        let segments = list_segments(&self.cfg.dir)?;
        let current = self.seg.as_ref().map(|s| s.path.clone());
        let mut removed = Vec::new();
        for pair in segments.windows(2) {
            let ((first, path), (next_first, next_path)) = (&pair[0], &pair[1]);
            if Some(path) == current.as_ref() {
                break;
            }
            // All records of `path` are older than the first one of the next segment.
            match first_record_of(next_path)? {
                Some(p) if p.body.seq == *next_first && p.body.time_unix_ms <= cutoff => {
                    removed.push(RemovedSegment {
                        file: segment_name(*first),
                        first_seq: *first,
                        last_seq: next_first - 1,
                        last_hash: p.body.prev,
                    });
                }
                _ => break,
            }
        }
        if removed.is_empty() {
            return Ok(());
        }
        let note = sign_retention(
            &self.key,
            removed,
            now,
            &self.cfg.node,
            super::format::encode_hex(self.ckpt_prev),
        );
        if let Err(e) = self.append_log_entry(&LogEntry::Retention(note.clone())) {
            self.fail("retention note write", &e);
            return Err(e.into());
        }
        for r in &note.removed {
            if let Err(e) = std::fs::remove_file(self.cfg.dir.join(&r.file)) {
                tracing::warn!(file = %r.file, error = %e, "audit log retention: remove failed");
            }
        }
        sync_dir(&self.cfg.dir)?;
        tracing::info!(
            segments = note.removed.len(),
            "audit log retention removed old segments"
        );
        Ok(())
    }

    fn append_log_entry(&mut self, entry: &LogEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let hash = super::format::line_hash(&line);
        line.push(b'\n');
        self.ckpt.write_all(&line)?;
        self.ckpt.sync_data()?;
        self.ckpt_prev = hash;
        Ok(())
    }

    fn maybe_checkpoint(&mut self) {
        if self.since_ckpt > 0
            && (self.since_ckpt >= self.cfg.checkpoint_every_records
                || self.last_ckpt_at.elapsed() >= self.cfg.checkpoint_interval)
        {
            self.checkpoint();
        }
    }

    fn checkpoint(&mut self) {
        if self.failed() {
            return;
        }
        // A checkpoint only ever names durable records (matters in Buffered mode).
        if let Some(seg) = &self.seg {
            if self.cfg.durability == Durability::Buffered {
                if let Err(e) = seg.file.sync_data() {
                    self.fail("fsync before checkpoint", &e);
                    return;
                }
            }
        }
        let cp = sign_checkpoint(
            &self.key,
            self.next_seq - 1,
            super::format::encode_hex(self.last_hash),
            now_ms(),
            &self.cfg.node,
            super::format::encode_hex(self.ckpt_prev),
        );
        if let Err(e) = self.append_log_entry(&LogEntry::Checkpoint(cp.clone())) {
            self.fail("checkpoint write", &e);
            return;
        }
        self.since_ckpt = 0;
        self.last_ckpt_at = Instant::now();
        *lock(&self.shared.head) = Some(cp);
    }

    /// Final checkpoint at shutdown.
    fn finish(&mut self) {
        if !self.failed() {
            self.checkpoint();
        }
    }
}

#[cfg(test)]
mod commit_delay_tests {
    use super::more_may_come;

    #[test]
    fn the_commit_delay_is_skipped_when_no_record_can_join_the_batch() {
        // A lone caller never waits.
        assert!(!more_may_come(1, 1, None));
        assert!(!more_may_come(1, 0, Some(10)));
        // Records arriving together wait for more while others may still come...
        assert!(more_may_come(5, 1, None));
        assert!(more_may_come(5, 1, Some(6)));
        assert!(more_may_come(1, 5, Some(64)));
        // ...but not when every running request's record is in the batch already (a
        // closed loop of 64 callers all waiting on this commit).
        assert!(!more_may_come(64, 64, Some(64)));
        assert!(!more_may_come(5, 1, Some(5)));
        assert!(!more_may_come(5, 1, Some(0)));
    }
}
