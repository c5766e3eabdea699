//! Where citizen records come from: the [`Registry`] trait and its embedded,
//! in-memory implementation ([`EmbeddedRegistry`]), plus a deterministic synthetic
//! population generator ([`generate`](mod@generate)) for demos and tests.
//!
//! # Design
//! The gateway talks to every source of records through [`Registry`]. Today the
//! only implementation is the embedded one, loaded from a JSON Lines file. The
//! on-disk (memory-mapped, beyond RAM), national-scale (sharded) and remote
//! (the gRPC `popgw.registry.v1.PopulationRegistry` service) registries come later
//! behind the same trait, without changes to the callers.
//!
//! `Ok(None)` means "the registry holds no such citizen / household". An `Err`
//! means "could not check" (unavailable, corrupt data): callers must never turn it
//! into "not found", because a citizen told "you do not exist" when the database
//! was merely down is a wrong answer, not a cautious one.

pub mod embedded;
pub mod generate;

pub use embedded::EmbeddedRegistry;
pub use generate::{generate, generate_to_file, GenerateSummary};

use crate::proto::registry::{CitizenRecord, Household};

/// How a citizen is looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LookupKey {
    /// The 12-digit personal id.
    PersonalId(String),
    /// The old 9-digit id (CMND), where the procedure accepts it.
    OldId(String),
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
}

/// A source of citizen records and households.
#[tonic::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The citizen with this key; `Ok(None)` when there is none.
    async fn citizen(&self, key: &LookupKey) -> Result<Option<CitizenRecord>, RegistryError>;
    /// The household with this id; `Ok(None)` when there is none.
    async fn household(&self, household_id: &str) -> Result<Option<Household>, RegistryError>;
    /// A short name of the implementation, for logs and health (`"embedded"`).
    fn kind(&self) -> &'static str;
}
