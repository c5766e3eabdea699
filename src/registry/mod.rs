//! Where citizen records come from: the [`Registry`] trait the gateway asks, and the
//! stores behind it.
//!
//! - [`disk::DiskStore`]: the national-scale store on disk (redb), the default of
//!   `popgw serve`; imported with `popgw registry import`.
//! - [`postgres::PgStore`]: the same data in PostgreSQL (what a ministry runs).
//! - [`embedded::EmbeddedRegistry`]: a population held in memory, for tests.
//! - [`generate`](mod@generate): a deterministic synthetic population;
//!   [`import`]: reading and checking a population for import;
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
pub mod generate;
pub mod household;
pub mod import;
pub mod postgres;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::EmbeddedRegistry;
pub use generate::{generate, generate_to_file, GenerateSummary};

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

/// A registry could not answer. Never means "not found".
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached or is not ready.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry's data is malformed.
    #[error("registry data invalid: {0}")]
    Invalid(String),
    /// A change-feed position that can no longer be resumed from (compacted, or
    /// from another history): the follower must drop what it cached.
    #[error("version {asked} cannot be resumed: the change feed holds versions {floor} to {head}")]
    OutOfRange {
        /// The version asked for.
        asked: u64,
        /// The oldest version a follower may resume from.
        floor: u64,
        /// The newest version.
        head: u64,
    },
}

/// A source of citizen records and households.
#[tonic::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The citizen with this key; `Ok(None)` when there is none.
    async fn citizen(&self, key: &LookupKey) -> Result<Option<CitizenRecord>, RegistryError>;
    /// The household with this id; `Ok(None)` when there is none.
    async fn household(&self, household_id: &str) -> Result<Option<Household>, RegistryError>;
    /// Several citizens by 12-digit id, in the order asked; absent ones are left out.
    async fn citizens(&self, personal_ids: &[String]) -> Result<Vec<CitizenRecord>, RegistryError> {
        let mut out = Vec::with_capacity(personal_ids.len());
        for id in personal_ids {
            if let Some(r) = self.citizen(&LookupKey::PersonalId(id.clone())).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
    /// A short name of the implementation, for logs and health (`"embedded"`).
    fn kind(&self) -> &'static str;
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
        return Err(RegistryError::OutOfRange {
            asked: after,
            floor: v.floor,
            head: v.head,
        });
    }
    Ok(())
}

/// Where a store lives: a folder (disk) or a `postgres://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// An on-disk store folder.
    Disk(PathBuf),
    /// A PostgreSQL database.
    Postgres(String),
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
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))??;
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
