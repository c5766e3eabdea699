//! Why a registry did not answer: [`RegistryError`], in four kinds a caller acts on
//! (unavailable, invalid data, the caller's deadline, a feed position that cannot be
//! resumed), each naming its cause as a type — a store, a file, a PostgreSQL SQLSTATE,
//! an RPC and its gRPC code — never as free text built at the failure.
//!
//! Invariant: nothing here carries a value of a record (an id, a name): the remote
//! registry's own messages are dropped for their code, serde's for their kind and
//! column, PostgreSQL's DETAIL never read. Errors are `Clone` (the cache hands one
//! load's error to every caller waiting on it), so foreign sources sit in an `Arc`.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::Code;

use crate::link::postgres::PgFailure;
use crate::telemetry::code_name;

/// A registry could not answer. Never means "not found".
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached or is not ready.
    #[error("registry unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// The registry's data is malformed.
    #[error("registry data invalid: {0}")]
    Invalid(#[from] Invalid),
    /// The caller's deadline passed before the registry answered.
    #[error("registry did not answer within the caller's deadline ({0} ms)")]
    DeadlineExceeded(u128),
    /// A change-feed position that can no longer be resumed from (compacted, or
    /// from another history): the follower must drop what it cached.
    #[error("{0}")]
    OutOfRange(#[from] OutOfRange),
}

/// Why a registry cannot be reached or is not ready ("could not check"; retried, or
/// a stale record served where the cache allows it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// The registry's own cap on a call passed (not the caller's deadline).
    #[error("{who} did not answer within {ms} ms")]
    TimedOut {
        /// The registry asked ("the disk store", "PostgreSQL", "the registry").
        who: &'static str,
        /// The cap.
        ms: u128,
    },
    /// A change to the record overtook every read of it.
    #[error("the record changed while it was read; try again")]
    Overtaken,
    /// The cache's change feed was already taken by another follower.
    #[error("feed already taken")]
    FeedTaken,
    /// A file of the store (or the population) could not be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// No store in the folder.
    #[error("{}: no store here (import one with `popgw registry import --to {}`)", dir.display(), dir.display())]
    NoStore {
        /// The folder.
        dir: PathBuf,
    },
    /// The generation the store's `CURRENT` names is not there.
    #[error("{}: missing (named by CURRENT)", path.display())]
    GenerationMissing {
        /// The generation's file.
        path: PathBuf,
    },
    /// The store is open, unshared, in another process.
    #[error("the store is open in a process that does not share it")]
    StoreLocked,
    /// The on-disk store failed.
    #[error("{0}")]
    Store(Arc<redb::Error>),
    /// A new import replaced the store under a change.
    #[error("the store was replaced by a new import; retry")]
    Replaced,
    /// The blocking task of a store call failed.
    #[error("store task failed: {0}")]
    Task(Arc<tokio::task::JoinError>),
    /// PostgreSQL failed.
    #[error("{0}")]
    Postgres(#[from] PgFailure),
    /// The database holds no registry (no `popgw_schema_migrations` table).
    #[error("PostgreSQL: {message} (no registry in this database: `popgw registry import --to …` creates one)")]
    NoRegistry {
        /// The server's message.
        message: String,
    },
    /// The database's registry is of another schema version than this popgw's.
    #[error("registry schema version {applied}, this popgw needs {needed}: run `popgw registry import` to migrate")]
    Schema {
        /// The version applied in the database.
        applied: i32,
        /// The one this popgw needs.
        needed: i32,
    },
    /// The link to PostgreSQL cannot be set up (URL, TLS material, password).
    #[error("{0}")]
    Link(Arc<crate::link::postgres::LinkError>),
    /// A pooled connection could not be had (explained by the link: TLS, password,
    /// refused, timed out).
    #[error("{0}")]
    Pool(String),
    /// `registry.endpoint` cannot be used.
    #[error("registry.endpoint: {0}")]
    Endpoint(String),
    /// The gateway's client certificate towards the registry cannot be loaded.
    #[error("registry client certificate (registry.ca, registry.cert, registry.key): {0}")]
    ClientCertificate(Arc<crate::tls::TlsError>),
    /// The breaker is open after failures in a row.
    #[error("the registry failed {failures} times in a row; not asked again for {open_ms} ms (circuit open)")]
    CircuitOpen {
        /// Failures in a row that opened it.
        failures: u32,
        /// How long it stays open.
        open_ms: u128,
    },
    /// Every try of a call was answered UNAVAILABLE.
    #[error("the registry is unavailable ({rpc}, {tries} tries)")]
    Retried {
        /// The RPC.
        rpc: &'static str,
        /// How many tries.
        tries: u32,
    },
    /// The registry refused a call with a code that is not a retry or a verdict.
    #[error("the registry refused {rpc}: {}", code_name(*.code))]
    Refused {
        /// The RPC.
        rpc: &'static str,
        /// Its code (its message is dropped: it may name the citizen).
        code: Code,
    },
    /// The remote change feed ended UNAVAILABLE.
    #[error("the registry's change feed ended: UNAVAILABLE")]
    FeedEnded,
}

/// Why a registry's data cannot be used (never served, never a verdict).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Invalid {
    /// A stored record or household does not decode.
    #[error("stored {what} does not decode: {source}")]
    Undecodable {
        /// "record" or "household".
        what: &'static str,
        /// prost's error (names a field, never a value).
        source: prost::DecodeError,
    },
    /// The on-disk store is corrupted.
    #[error("{0}")]
    Store(Arc<redb::Error>),
    /// The store's `CURRENT` names no generation.
    #[error("{}: does not name a generation", path.display())]
    NotAGeneration {
        /// The `CURRENT` file.
        path: PathBuf,
    },
    /// The registry's metadata rows are missing.
    #[error("registry meta rows missing")]
    MetaMissing,
    /// A change that the record's rules refuse.
    #[error("change refused: {0}")]
    Change(crate::validation::InvalidField),
    /// A line of a population file.
    #[error("{} line {line}: {problem}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong (never a value).
        problem: String,
    },
    /// The remote registry failed (INTERNAL, DATA_LOSS, UNKNOWN).
    #[error("the registry failed ({rpc}: {})", code_name(*.code))]
    Failed {
        /// The RPC.
        rpc: &'static str,
        /// Its code.
        code: Code,
    },
    /// The remote registry sent a record that fails validation.
    #[error("the registry sent a record that fails validation ({field})")]
    Record {
        /// The field.
        field: &'static str,
    },
    /// The remote registry answered about someone else.
    #[error("the registry sent a record for another id than the one asked")]
    AnotherId,
    /// The remote registry sent a record in a batch that did not ask for it.
    #[error("the registry sent a record that was not asked for")]
    NotAsked,
    /// The remote registry sent another household, or one naming invalid ids.
    #[error("the registry sent a household that is not the one asked or names invalid ids")]
    Household,
    /// Loading the population failed in its task.
    #[error("loading the population failed: {0}")]
    Task(Arc<tokio::task::JoinError>),
}

/// A change-feed position that cannot be resumed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutOfRange {
    /// Outside what the feed holds.
    #[error("version {after} cannot be resumed: the change feed holds versions {floor} to {head}")]
    Position {
        /// The position asked.
        after: u64,
        /// The oldest kept.
        floor: u64,
        /// The newest.
        head: u64,
    },
    /// The remote registry answered OUT_OF_RANGE.
    #[error("the registry cannot resume its change feed from there ({rpc}: OUT_OF_RANGE)")]
    Remote {
        /// The RPC.
        rpc: &'static str,
    },
}

impl From<redb::Error> for RegistryError {
    fn from(e: redb::Error) -> RegistryError {
        match e {
            redb::Error::DatabaseAlreadyOpen => Unavailable::StoreLocked.into(),
            redb::Error::Corrupted(_) | redb::Error::ValueTooLarge(_) => {
                Invalid::Store(Arc::new(e)).into()
            }
            other => Unavailable::Store(Arc::new(other)).into(),
        }
    }
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> RegistryError {
        Unavailable::Postgres(e.into()).into()
    }
}

impl From<tokio::task::JoinError> for RegistryError {
    fn from(e: tokio::task::JoinError) -> RegistryError {
        Unavailable::Task(Arc::new(e)).into()
    }
}

impl Unavailable {
    /// A file that could not be read.
    pub fn file(path: impl Into<PathBuf>, e: std::io::Error) -> Unavailable {
        Unavailable::File {
            path: path.into(),
            source: Arc::new(e),
        }
    }
}

impl Invalid {
    /// A stored record that does not decode.
    pub fn record(e: prost::DecodeError) -> Invalid {
        Invalid::Undecodable {
            what: "record",
            source: e,
        }
    }
}
