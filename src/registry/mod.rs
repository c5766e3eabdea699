//! Where citizen records come from: the [`Registry`] trait the gateway asks, and the
//! stores behind it.
//!
//! - [`disk::DiskStore`]: the national-scale store on disk (redb), the default of
//!   `popgw serve`; imported with `popgw registry import`.
//! - [`postgres::PgStore`]: the same data in PostgreSQL (what a ministry runs).
//! - [`embedded::EmbeddedRegistry`]: a population held in memory, for tests.
//! - [`import`]: reading and checking a population for import (a synthetic one comes
//!   from the crate `popgw-population`);
//!   [`household`]: households assembled from members' records.
//!
//! The disk and PostgreSQL stores are also a [`Store`]: every change to a record
//! bumps a global version and is kept in a change feed that `WatchChanges` serves
//! (`popgw registry serve`), so that a gateway's cache can follow it.
//!
//! `Ok(None)` means "the registry holds no such citizen / household". An `Err`
//! means "could not check" (unavailable, corrupt data): callers must never turn it
//! into "not found", because a citizen told "you do not exist" when the database
//! was merely down is a wrong answer, not a cautious one.

pub mod disk;
pub mod embedded;
pub mod error;
pub mod household;
pub mod import;
pub mod postgres;
pub mod remote;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

pub use embedded::EmbeddedRegistry;
pub use error::{Invalid, OutOfRange, RegistryError, Unavailable};

use crate::proto::registry::{Address, CitizenRecord, Household};
use crate::validation::{self, InvalidField};

/// How a citizen is looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LookupKey {
    /// The 12-digit personal id.
    PersonalId(String),
    /// The old 9-digit id (CMND), where the procedure accepts it.
    OldId(String),
}

impl LookupKey {
    /// The key for a 12-digit id or a 9-digit old id; `None` for any other shape.
    pub fn parse(digits: &str) -> Option<LookupKey> {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        match digits.len() {
            12 => Some(LookupKey::PersonalId(digits.to_string())),
            9 => Some(LookupKey::OldId(digits.to_string())),
            _ => None,
        }
    }
}

/// When a registry call must have answered: the caller's deadline (its grpc-timeout
/// less a margin for the audit write and the answer) or the registry's own cap,
/// whichever comes first. A call past it is "could not check", never a verdict.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    /// Whether the caller's deadline (rather than the cap) is the one that binds.
    caller: bool,
    started: Instant,
}

impl Deadline {
    /// A deadline `cap` from now, set by the registry, not by a caller.
    pub fn after(cap: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            at: now + cap,
            caller: false,
            started: now,
        }
    }

    /// The deadline of a call for a caller that gave `timeout` (its grpc-timeout), or
    /// none: `timeout` less a margin (a tenth, between 2 and 50 ms), capped by `cap`.
    pub fn for_caller(timeout: Option<Duration>, cap: Duration) -> Deadline {
        let now = Instant::now();
        match timeout {
            Some(t) => {
                let margin = Deadline::margin(t);
                let own = t.saturating_sub(margin);
                if own < cap {
                    return Deadline {
                        at: now + own,
                        caller: true,
                        started: now,
                    };
                }
                Deadline::after(cap)
            }
            None => Deadline::after(cap),
        }
    }

    /// What is kept of a caller's `timeout` for the audit write and the answer: a
    /// tenth, between 2 and 50 ms.
    pub fn margin(timeout: Duration) -> Duration {
        (timeout / 10).clamp(Duration::from_millis(2), Duration::from_millis(50))
    }

    /// The earlier of this deadline and `cap` from now.
    pub fn capped(self, cap: Duration) -> Deadline {
        let other = Deadline::after(cap);
        if other.at < self.at {
            other
        } else {
            self
        }
    }

    /// The instant it passes.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the caller's deadline (not the registry's cap) is the one that binds.
    pub fn set_by_caller(&self) -> bool {
        self.caller
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The error of a call that ran out of time: DEADLINE_EXCEEDED when the caller's
    /// deadline bound, "unavailable" when the registry's cap did (`who` names it).
    pub fn exceeded(&self, who: &'static str) -> RegistryError {
        let ms = (self.at - self.started).as_millis();
        if self.caller {
            RegistryError::DeadlineExceeded(ms)
        } else {
            Unavailable::TimedOut { who, ms }.into()
        }
    }

    /// Runs `work` until this deadline.
    pub async fn run<T>(
        &self,
        who: &'static str,
        work: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout_at(self.at, work).await {
            Ok(r) => r,
            Err(_) => Err(self.exceeded(who)),
        }
    }
}

/// A source of citizen records and households. Every call answers by `deadline`.
#[tonic::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The citizen with this key; `Ok(None)` when there is none.
    async fn citizen(
        &self,
        key: &LookupKey,
        deadline: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError>;
    /// The household with this id; `Ok(None)` when there is none.
    async fn household(
        &self,
        household_id: &str,
        deadline: Deadline,
    ) -> Result<Option<Household>, RegistryError>;
    /// Several citizens by 12-digit id, in the order asked; absent ones are left out.
    async fn citizens(
        &self,
        personal_ids: &[String],
        deadline: Deadline,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        let mut out = Vec::with_capacity(personal_ids.len());
        for id in personal_ids {
            if let Some(r) = self
                .citizen(&LookupKey::PersonalId(id.clone()), deadline)
                .await?
            {
                out.push(r);
            }
        }
        Ok(out)
    }
    /// Every change after `from` (0: from now), oldest first, then live ones, with
    /// progress marks at least every second; the gateway's cache follows it. An
    /// [`RegistryError::OutOfRange`] item or error means `from` cannot be resumed: drop
    /// what was cached and start again from now. By default, a registry whose records
    /// never change: marks only.
    async fn changes(&self, from: u64) -> Result<ChangeStream, RegistryError> {
        Ok(quiet_feed(from))
    }
    /// A short name of the implementation, for logs and health (`"embedded"`).
    fn kind(&self) -> &'static str;
    /// The circuit breaker's state, for a registry that has one (remote): `/readyz`
    /// answers not ready while it is open. Local stores have none.
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }
}

/// One event of a change feed.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// A record as a change left it (its `version` is the change's).
    Changed(Box<CitizenRecord>),
    /// Every change up to this version has been sent.
    Mark(u64),
}

/// A change feed: see [`Registry::changes`].
pub type ChangeStream =
    Pin<Box<dyn Stream<Item = Result<FeedEvent, RegistryError>> + Send + 'static>>;

/// The feed of a registry that never changes: a mark every second.
pub fn quiet_feed(version: u64) -> ChangeStream {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(FEED_POLL * 10));
    Box::pin(ticks.map(move |_| Ok(FeedEvent::Mark(version))))
}

/// How often a store's feed is polled for new changes.
const FEED_POLL: Duration = Duration::from_millis(100);
/// Changes read from a store per poll.
const FEED_BATCH: usize = 500;

/// The change feed of a store in this process, read by polling it every 100 ms; a
/// mark after every poll that found the feed caught up. Ends after its first error.
pub fn polled_feed(store: Arc<dyn Store>, from: u64) -> ChangeStream {
    struct Poll {
        store: Arc<dyn Store>,
        last: Option<u64>,
        queue: VecDeque<FeedEvent>,
        wait: bool,
        done: bool,
    }
    let start = Poll {
        store,
        last: (from > 0).then_some(from),
        queue: VecDeque::new(),
        wait: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(start, |mut p| async move {
        loop {
            if let Some(event) = p.queue.pop_front() {
                return Some((Ok(event), p));
            }
            if p.done {
                return None;
            }
            if p.wait {
                tokio::time::sleep(FEED_POLL).await;
            }
            p.wait = true;
            let read = match p.last {
                None => p.store.versions().await.map(|v| {
                    p.last = Some(v.head);
                    p.queue.push_back(FeedEvent::Mark(v.head));
                }),
                Some(last) => p
                    .store
                    .changes_after(last, FEED_BATCH)
                    .await
                    .map(|changes| {
                        // A full batch: more are waiting, read on without a pause.
                        p.wait = changes.len() < FEED_BATCH;
                        for c in changes {
                            p.last = Some(c.version);
                            p.queue.push_back(FeedEvent::Changed(Box::new(c)));
                        }
                        if p.wait {
                            p.queue.push_back(FeedEvent::Mark(p.last.unwrap_or(last)));
                        }
                    }),
            };
            if let Err(e) = read {
                p.done = true;
                return Some((Err(e), p));
            }
        }
    }))
}

/// The head of a change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// The newest version: every change up to it is in the feed.
    pub head: u64,
    /// The oldest version a follower may resume from; changes after it are kept.
    pub floor: u64,
}

/// A change to one record (`popgw registry update`, for tests and demos).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new first line of the permanent residence.
    AddressLine(String),
    /// The citizen died on this date (YYYY-MM-DD).
    Deceased(String),
    /// A new full name.
    FullName(String),
}

impl Change {
    /// Applies the change to a record and checks the result: a change that would
    /// leave an invalid record is refused.
    pub fn apply(&self, record: &mut CitizenRecord) -> Result<(), InvalidField> {
        match self {
            Change::AddressLine(line) => {
                let line = line.trim();
                if line.is_empty()
                    || line.chars().count() > 200
                    || line.chars().any(char::is_control)
                {
                    return Err(InvalidField {
                        field: "address_line",
                        reason: "must be 1 to 200 printable characters".into(),
                    });
                }
                record
                    .permanent_residence
                    .get_or_insert_with(Address::default)
                    .line = line.to_string();
            }
            Change::Deceased(date) => record.date_of_death = date.trim().to_string(),
            Change::FullName(name) => {
                validation::check_full_name(name)?;
                record.full_name = name.trim().to_string();
            }
        }
        validation::check_record(record)
    }
}

/// A registry that is also the source of truth: its records carry versions and every
/// change is kept in a feed that followers resume from.
#[tonic::async_trait]
pub trait Store: Registry {
    /// The feed's head and floor.
    async fn versions(&self) -> Result<Versions, RegistryError>;
    /// The changes after `after`, oldest first, at most `limit`: each is the record as
    /// that change left it (its `version` is the change's). A follower at a version
    /// below the floor or above the head gets [`RegistryError::OutOfRange`].
    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CitizenRecord>, RegistryError>;
    /// Changes one record: `Ok(None)` when no citizen has this id; otherwise the record
    /// as changed, with its new version.
    async fn update(
        &self,
        personal_id: &str,
        change: &Change,
    ) -> Result<Option<CitizenRecord>, RegistryError>;
    /// Number of citizens held.
    async fn count(&self) -> Result<u64, RegistryError>;
    /// Up to `n` living citizens with a full date of birth and the smallest ids (the
    /// demo's examples: deterministic for a population).
    async fn examples(&self, n: usize) -> Result<Vec<CitizenRecord>, RegistryError>;
    /// Picks up a store replaced under the running process (a new import); called
    /// about once a second by the change-feed poller. Nothing to do by default.
    async fn refresh(&self) -> Result<(), RegistryError> {
        Ok(())
    }
}

/// Whether a record can serve as a demo example: living, with a full date of birth.
pub(crate) fn is_example(r: &CitizenRecord) -> bool {
    r.date_of_death.is_empty() && r.date_of_birth.len() == 10
}

/// Checks a feed position against the feed: `Ok` when changes after `after` can be
/// replayed.
pub fn check_resume(after: u64, v: Versions) -> Result<(), RegistryError> {
    if after < v.floor || after > v.head {
        return Err(OutOfRange::Position {
            after,
            floor: v.floor,
            head: v.head,
        }
        .into());
    }
    Ok(())
}

/// Where a store lives: a folder (disk) or a `postgres://` URL (its `Debug` shows no
/// password).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An on-disk store folder.
    Disk(PathBuf),
    /// A PostgreSQL database.
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Disk(dir) => f.debug_tuple("Disk").field(dir).finish(),
            StoreLocation::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::link::postgres::redact(url))
                .finish(),
        }
    }
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; anything else a folder.
    pub fn parse(s: &str) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres(s.to_string())
        } else {
            StoreLocation::Disk(PathBuf::from(s))
        }
    }
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Every store call gives up after this long ("could not check").
    pub timeout: Duration,
    /// PostgreSQL: connections in the pool.
    pub pool_size: usize,
    /// Changes kept in the feed before the oldest are compacted away.
    pub changes_kept: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            timeout: Duration::from_millis(1000),
            pool_size: 16,
            changes_kept: 1_000_000,
        }
    }
}

/// Opens the store at `location`.
pub async fn open_store(
    location: &StoreLocation,
    options: &StoreOptions,
) -> Result<Arc<dyn Store>, RegistryError> {
    Ok(match location {
        StoreLocation::Disk(dir) => {
            let dir = dir.clone();
            let options = options.clone();
            let store = tokio::task::spawn_blocking(move || disk::DiskStore::open(&dir, &options))
                .await??;
            Arc::new(store)
        }
        StoreLocation::Postgres(url) => Arc::new(postgres::PgStore::connect(url, options).await?),
    })
}

/// Milliseconds since the epoch: the base of a new import's versions, so that a
/// re-imported store's versions continue above the old ones.
pub(crate) fn import_version_base(previous_head: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(previous_head + 1).max(1)
}

/// The circuit breaker's state, as the metrics and readiness report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe call is in flight.
    HalfOpen,
}
