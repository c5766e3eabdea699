//! The record cache (moka): citizens by lookup key, decoded and ready, in front of
//! whichever registry is configured — and never serving what the registry changed.
//!
//! - A hit is an `Arc` clone: no decode, no registry call. Entries are weighed by
//!   their encoded size against a byte budget; "no such citizen" is cached apart, with
//!   a shorter lifetime.
//! - Concurrent misses for one key make one registry call (moka's entry API); the
//!   others wait for it (`coalesced`), each within its own deadline.
//! - [`RecordCache::follow`] reads the registry's change feed: a changed record is
//!   invalidated; a feed that breaks is resumed from the last version seen; a feed that
//!   cannot be resumed (OUT_OF_RANGE: a new import, a compacted feed) drops the cache.
//! - Staleness bound: an entry is served only while it was confirmed current within
//!   `max_staleness` — by its load, or by the feed's latest progress mark. With the
//!   feed healthy (a mark every second at most) a change stops being served within
//!   about a second; with the feed cut no entry older than the bound is served.
//! - A load that raced with a change (it read the record before the change, and
//!   returns after the invalidation) is caught by the record's version and read again.
//! - `serve_stale_on_error` (off by default): while the registry cannot answer, an
//!   entry past its freshness but younger than `stale_max_age` may be served, and the
//!   audit record says `stale`. Never an entry the feed invalidated, never a cached
//!   "no such citizen".
//!
//! Invariants: an error is never cached; no personal data in logs (versions and
//! counts only).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use moka::notification::RemovalCause;
use moka::Expiry;
use prost::Message;
use tokio::sync::watch;

use crate::proto::registry::CitizenRecord;
use crate::registry::{Deadline, FeedEvent, LookupKey, Registry, RegistryError, Unavailable};
use crate::telemetry::Metrics;

/// What the cache contributed to a request, as its audit record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from a fresh entry.
    Hit,
    /// Not cached (or no longer fresh): this request asked the registry.
    Miss,
    /// Not cached: this request waited for another request's registry call.
    Coalesced,
    /// The registry could not answer; a stale entry was served.
    Stale,
    /// No record was looked up, or the cache is off.
    None,
}

impl CacheOutcome {
    /// The word in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Stale => "stale",
            CacheOutcome::None => "none",
        }
    }

    /// Every word, for validating a query filter.
    pub const WORDS: [&'static str; 5] = ["hit", "miss", "coalesced", "stale", "none"];
}

/// How the cache behaves (`[cache]` in the configuration).
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Byte budget of the entries (encoded size plus overhead).
    pub max_bytes: u64,
    /// Lifetime of a record.
    pub ttl: Duration,
    /// Lifetime of "no such citizen".
    pub negative_ttl: Duration,
    /// An entry not confirmed current for this long is not served.
    pub max_staleness: Duration,
    /// Serve a stale record while the registry cannot answer.
    pub serve_stale_on_error: bool,
    /// ...never older than this.
    pub stale_max_age: Duration,
    /// A shared load gives up after this long (`registry.timeout_ms`); each caller
    /// waits only until its own deadline.
    pub load_timeout: Duration,
}

#[derive(Debug)]
struct Entry {
    record: Option<Arc<CitizenRecord>>,
    /// When its load started, ms since the cache's origin.
    loaded: u64,
    /// The cache generation it belongs to (a drop starts a new one).
    epoch: u64,
}

struct Lifetime {
    positive: Duration,
    negative: Duration,
}

impl Expiry<LookupKey, Arc<Entry>> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &LookupKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if value.record.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

/// How long a change is remembered to catch loads that raced with it (at least twice
/// the longest a load may take).
const CHANGE_MEMORY: Duration = Duration::from_secs(120);
/// A feed silent for this long (marks come every second) is reconnected.
const FEED_SILENCE: Duration = Duration::from_secs(3);
/// Pauses between attempts to reopen a broken feed.
const FEED_RETRY_MIN: Duration = Duration::from_millis(100);
const FEED_RETRY_MAX: Duration = Duration::from_secs(5);

/// The cache in front of a registry (see the module documentation).
pub struct RecordCache {
    registry: Arc<dyn Registry>,
    entries: moka::future::Cache<LookupKey, Arc<Entry>>,
    /// Personal id → version of the latest change the feed announced.
    changed: moka::sync::Cache<String, u64>,
    epoch: AtomicU64,
    /// When the feed last confirmed every change up to "now", ms since `origin` (0: never).
    confirmed: AtomicU64,
    /// The feed's confirmations hold for entries loaded at or after this (ms since
    /// `origin`): the first mark of a feed followed "from now". An entry loaded before
    /// may predate a change that feed will never send; only its own age vouches for it.
    confirm_floor: AtomicU64,
    feed_up: AtomicBool,
    origin: Instant,
    options: CacheOptions,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache")
            .field("entries", &self.entries.entry_count())
            .field("options", &self.options)
            .finish()
    }
}

fn weight(key: &LookupKey, entry: &Arc<Entry>) -> u32 {
    let key_len = match key {
        LookupKey::PersonalId(s) | LookupKey::OldId(s) => s.len(),
    };
    let record = entry.record.as_ref().map_or(0, |r| r.encoded_len() * 2);
    // Decoded strings take about twice their encoded bytes, plus the maps' own overhead.
    (key_len + record + 160).min(u32::MAX as usize) as u32
}

impl RecordCache {
    /// A cache in front of `registry`. Start [`RecordCache::follow`] beside it.
    pub fn new(
        registry: Arc<dyn Registry>,
        options: CacheOptions,
        metrics: Arc<Metrics>,
    ) -> RecordCache {
        let positive = if options.serve_stale_on_error {
            options.ttl.max(options.stale_max_age)
        } else {
            options.ttl
        };
        let evictions = metrics.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(options.max_bytes)
            .weigher(weight)
            .expire_after(Lifetime {
                positive,
                negative: options.negative_ttl,
            })
            .eviction_listener(move |_key, _value, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    evictions.cache_evictions.inc();
                }
            })
            .build();
        RecordCache {
            registry,
            entries,
            changed: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(CHANGE_MEMORY.max(options.load_timeout * 2))
                .build(),
            epoch: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            confirm_floor: AtomicU64::new(u64::MAX),
            feed_up: AtomicBool::new(false),
            origin: Instant::now(),
            options,
            metrics,
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Entries held (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Applies moka's pending maintenance (admission, eviction, expiry), so that
    /// [`RecordCache::len`] is exact (benchmarks, tests).
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, by the weigher's estimate.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Whether the change feed is connected and caught up.
    pub fn feed_up(&self) -> bool {
        self.feed_up.load(Ordering::Relaxed)
    }

    fn fresh(&self, e: &Entry, now: u64) -> bool {
        let ttl = if e.record.is_some() {
            self.options.ttl
        } else {
            self.options.negative_ttl
        };
        let by_feed = if e.loaded >= self.confirm_floor.load(Ordering::Acquire) {
            self.confirmed.load(Ordering::Acquire)
        } else {
            0
        };
        let confirmed = e.loaded.max(by_feed);
        e.epoch == self.epoch.load(Ordering::Acquire)
            && Duration::from_millis(now.saturating_sub(e.loaded)) <= ttl
            && Duration::from_millis(now.saturating_sub(confirmed)) <= self.options.max_staleness
    }

    /// Whether a change announced by the feed is newer than what `e` holds for `key`.
    fn overtaken(&self, key: &LookupKey, e: &Entry) -> bool {
        match (&e.record, key) {
            (Some(r), _) => self
                .changed
                .get(&r.personal_id)
                .is_some_and(|v| v > r.version),
            // A change names the citizen: "no such citizen" is then wrong.
            (None, LookupKey::PersonalId(id)) => self.changed.contains_key(id),
            (None, LookupKey::OldId(_)) => false,
        }
    }

    async fn load(&self, key: &LookupKey, deadline: Deadline) -> Result<Arc<Entry>, RegistryError> {
        for _ in 0..2 {
            self.metrics.cache_loads.inc();
            let epoch = self.epoch.load(Ordering::Acquire);
            let loaded = self.now();
            let record = self.registry.citizen(key, deadline).await?;
            let entry = Entry {
                record: record.map(Arc::new),
                loaded,
                epoch,
            };
            if !self.overtaken(key, &entry) {
                return Ok(Arc::new(entry));
            }
        }
        Err(Unavailable::Overtaken.into())
    }

    /// The citizen with this key, and what the cache did. `Err` is "could not check".
    pub async fn citizen(
        &self,
        key: &LookupKey,
        deadline: Deadline,
    ) -> (
        Result<Option<Arc<CitizenRecord>>, RegistryError>,
        CacheOutcome,
    ) {
        let now = self.now();
        let mut stale = None;
        if let Some(e) = self.entries.get(key).await {
            if self.fresh(&e, now) {
                self.metrics.cache_hits.inc();
                return (Ok(e.record.clone()), CacheOutcome::Hit);
            }
            // Past its freshness: reload it, keeping it aside in case the registry is down.
            stale = Some(e);
            self.entries.invalidate(key).await;
        }
        let loaded_here = AtomicBool::new(false);
        // The shared load runs under the registry's cap, not under the deadline of
        // whichever caller started it: a caller with a tiny grpc-timeout must not fail
        // the others waiting on the same citizen. Each waits only until its own deadline.
        let load = self.entries.entry(key.clone()).or_try_insert_with(async {
            loaded_here.store(true, Ordering::Relaxed);
            self.load(key, Deadline::after(self.options.load_timeout))
                .await
        });
        let answer = tokio::time::timeout_at(deadline.at(), load).await;
        let loaded_here = loaded_here.load(Ordering::Relaxed);
        let outcome = if loaded_here {
            self.metrics.cache_misses.inc();
            CacheOutcome::Miss
        } else {
            self.metrics.cache_coalesced.inc();
            CacheOutcome::Coalesced
        };
        let result = match answer {
            Ok(Ok(entry)) => {
                let e = entry.into_value();
                if self.usable(key, &e, loaded_here) {
                    return (Ok(e.record.clone()), outcome);
                }
                // Dropped or overtaken by a change while it was loading (the feed's
                // invalidation may have run before the entry was stored), or not fresh
                // when found: forget it and read once more, uncached.
                self.entries.invalidate(key).await;
                self.registry
                    .citizen(key, deadline)
                    .await
                    .map(|r| r.map(Arc::new))
            }
            Ok(Err(e)) => Err((*e).clone()),
            Err(_) => Err(deadline.exceeded("the registry")),
        };
        let error = match result {
            Ok(record) => return (Ok(record), outcome),
            Err(error) => error,
        };
        if let Some(e) = stale.filter(|e| self.servable_stale(key, e, &error)) {
            self.metrics.cache_stale.inc();
            let record = e.record.clone();
            // Kept for the next request while the registry stays down; never served as
            // fresh (its load time says how old it is).
            self.entries.insert(key.clone(), e).await;
            return (Ok(record), CacheOutcome::Stale);
        }
        (Err(error), outcome)
    }

    /// Whether an entry the entry API returned may be served: of this cache generation,
    /// not overtaken by a change the feed announced, and — if another request stored
    /// it — fresh.
    fn usable(&self, key: &LookupKey, e: &Entry, loaded_here: bool) -> bool {
        e.epoch == self.epoch.load(Ordering::Acquire)
            && !self.overtaken(key, e)
            && (loaded_here || self.fresh(e, self.now()))
    }

    fn servable_stale(&self, key: &LookupKey, e: &Entry, error: &RegistryError) -> bool {
        self.options.serve_stale_on_error
            && e.record.is_some()
            && matches!(
                error,
                RegistryError::Unavailable(_) | RegistryError::DeadlineExceeded(_)
            )
            && e.epoch == self.epoch.load(Ordering::Acquire)
            && Duration::from_millis(self.now().saturating_sub(e.loaded))
                <= self.options.stale_max_age
            && !self.overtaken(key, e)
    }

    /// A record changed: forget what is cached for it.
    async fn changed(&self, record: &CitizenRecord) {
        self.changed
            .insert(record.personal_id.clone(), record.version);
        self.metrics.cache_invalidations.inc();
        self.entries
            .invalidate(&LookupKey::PersonalId(record.personal_id.clone()))
            .await;
        if !record.old_id_number.is_empty() {
            self.entries
                .invalidate(&LookupKey::OldId(record.old_id_number.clone()))
                .await;
        }
    }

    /// Forgets everything: a new generation begins.
    fn drop_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
        // Versions of the old history mean nothing in the new one.
        self.changed.invalidate_all();
        self.metrics.cache_drops.inc();
    }

    fn confirm(&self) {
        self.confirmed.store(self.now().max(1), Ordering::Release);
    }

    /// Follows the registry's change feed until `stopping` turns true (see the module
    /// documentation). Run it as a task beside the cache.
    pub async fn follow(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut state = Following {
            // 0: from now.
            last: 0,
            // Entries loaded before a from-now feed's first mark may predate changes it
            // will never send: until that mark the feed vouches for nothing.
            floor_pending: true,
            reported: false,
            caught_up: false,
        };
        let mut pause = FEED_RETRY_MIN;
        loop {
            let end = self.follow_once(&mut state, &mut stopping).await;
            match &end {
                FeedEnd::Stopped => return,
                FeedEnd::Broke(RegistryError::OutOfRange(why)) => {
                    tracing::warn!(%why, "registry change feed cannot be resumed; cache dropped");
                    self.drop_all();
                    state.last = 0;
                    state.floor_pending = true;
                }
                FeedEnd::Broke(e) if !state.reported => {
                    tracing::warn!(error = %e, last = state.last, "registry change feed broke or unavailable; resuming");
                }
                FeedEnd::Silent if !state.reported => {
                    tracing::warn!(
                        last = state.last,
                        "registry change feed silent; reconnecting"
                    );
                }
                _ => {}
            }
            state.reported |= matches!(end, FeedEnd::Broke(_) | FeedEnd::Silent);
            if std::mem::take(&mut state.caught_up) {
                pause = FEED_RETRY_MIN;
            }
            self.feed_up.store(false, Ordering::Relaxed);
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            tokio::select! {
                _ = tokio::time::sleep(pause.mul_f64(jitter)) => {}
                _ = stopping.changed() => return,
            }
            pause = (pause * 2).min(FEED_RETRY_MAX);
        }
    }

    /// One session of the feed, from `state.last`, until it ends; says why.
    async fn follow_once(
        &self,
        state: &mut Following,
        stopping: &mut watch::Receiver<bool>,
    ) -> FeedEnd {
        let opened = tokio::select! {
            opened = self.registry.changes(state.last) => opened,
            _ = stopping.changed() => return FeedEnd::Stopped,
        };
        let mut feed = match opened {
            Ok(feed) => feed,
            Err(e) => return FeedEnd::Broke(e),
        };
        loop {
            let item = tokio::select! {
                item = tokio::time::timeout(FEED_SILENCE, feed.next()) => item,
                _ = stopping.changed() => return FeedEnd::Stopped,
            };
            match item {
                Ok(Some(Ok(FeedEvent::Changed(record)))) => {
                    state.last = state.last.max(record.version);
                    self.changed(&record).await;
                }
                Ok(Some(Ok(FeedEvent::Mark(version)))) => {
                    if state.floor_pending {
                        self.confirm_floor.store(self.now(), Ordering::Release);
                        state.floor_pending = false;
                    }
                    if state.reported {
                        tracing::info!(version, "registry change feed: following again");
                    }
                    state.caught_up = true;
                    state.reported = false;
                    state.last = state.last.max(version);
                    self.confirm();
                    self.feed_up.store(true, Ordering::Relaxed);
                }
                Ok(Some(Err(e))) => return FeedEnd::Broke(e),
                Ok(None) => return FeedEnd::Ended,
                Err(_) => return FeedEnd::Silent,
            }
        }
    }
}

/// Where the feed follower stands between sessions.
struct Following {
    /// The last version seen (0: none yet, follow from now).
    last: u64,
    /// Whether the next mark sets the confirmation floor.
    floor_pending: bool,
    /// Whether the current outage was logged already.
    reported: bool,
    /// Whether the session caught up (a mark came): the next reconnect is quick.
    caught_up: bool,
}

/// Why a session of the feed ended.
enum FeedEnd {
    /// Shutdown.
    Stopped,
    /// The feed failed to open or broke (OUT_OF_RANGE: it cannot be resumed).
    Broke(RegistryError),
    /// No event, not even a mark, for [`FEED_SILENCE`].
    Silent,
    /// The registry ended the stream without an error.
    Ended,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::proto::registry::Household;
    use crate::registry::ChangeStream;

    type Feed = mpsc::UnboundedSender<Result<FeedEvent, RegistryError>>;

    /// A registry whose every record changes right after its first read, the change
    /// announced on the feed at once: the worst case of a load racing with a change.
    struct Racing {
        feed: Feed,
        receiver: Mutex<Option<mpsc::UnboundedReceiver<Result<FeedEvent, RegistryError>>>>,
        versions: Mutex<HashMap<String, u64>>,
    }

    #[tonic::async_trait]
    impl Registry for Racing {
        async fn citizen(
            &self,
            key: &LookupKey,
            _: Deadline,
        ) -> Result<Option<CitizenRecord>, RegistryError> {
            let LookupKey::PersonalId(id) = key else {
                return Ok(None);
            };
            let version = {
                let mut versions = self.versions.lock().unwrap();
                let v = *versions.get(id).unwrap_or(&1);
                versions.insert(id.clone(), 2);
                v
            };
            if version == 1 {
                let changed = CitizenRecord {
                    personal_id: id.clone(),
                    version: 2,
                    ..Default::default()
                };
                let _ = self.feed.send(Ok(FeedEvent::Changed(Box::new(changed))));
            }
            Ok(Some(CitizenRecord {
                personal_id: id.clone(),
                version,
                ..Default::default()
            }))
        }
        async fn household(
            &self,
            _: &str,
            _: Deadline,
        ) -> Result<Option<Household>, RegistryError> {
            Ok(None)
        }
        async fn changes(&self, _: u64) -> Result<ChangeStream, RegistryError> {
            let receiver = self.receiver.lock().unwrap().take();
            let receiver = receiver.ok_or(Unavailable::FeedTaken)?;
            Ok(Box::pin(
                tokio_stream::wrappers::UnboundedReceiverStream::new(receiver),
            ))
        }
        fn kind(&self) -> &'static str {
            "racing"
        }
    }

    fn options() -> CacheOptions {
        CacheOptions {
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(300),
            serve_stale_on_error: false,
            stale_max_age: Duration::from_secs(600),
            load_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_load_that_raced_with_a_change_is_never_served_as_fresh() {
        let (feed, receiver) = mpsc::unbounded_channel();
        let registry = Arc::new(Racing {
            feed: feed.clone(),
            receiver: Mutex::new(Some(receiver)),
            versions: Mutex::new(HashMap::new()),
        });
        let cache = Arc::new(RecordCache::new(
            registry,
            options(),
            Arc::new(Metrics::default()),
        ));
        let (_stop, stopping) = watch::channel(false);
        feed.send(Ok(FeedEvent::Mark(1))).unwrap();
        tokio::spawn(cache.clone().follow(stopping));
        while !cache.feed_up() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let keys: Vec<LookupKey> = (0..3000)
            .map(|i| LookupKey::PersonalId(format!("{i:012}")))
            .collect();
        let deadline = || Deadline::after(Duration::from_secs(1));
        // Each answer may be the old version (the feed had not yet been read when the
        // record was), but none may stay cached past the change.
        for key in &keys {
            let (record, _) = cache.citizen(key, deadline()).await;
            assert!(record.unwrap().is_some());
        }
        // Let the feed's invalidations land, then ask again: nothing old comes back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for key in &keys {
            let (record, _) = cache.citizen(key, deadline()).await;
            assert_eq!(record.unwrap().unwrap().version, 2);
        }
    }
}
