//! Lookup: the registry and the record cache in front of it, reachable only with an
//! admitted request's [`ProcedurePermit`] — the fields are private, so no handler can call
//! the registry around admission.
//!
//! Invariant: `Err` is "could not check", never "not found"; households are never cached.

use std::sync::Arc;
use std::time::Duration;

use super::ProcedurePermit;
use crate::cache::{CacheOutcome, RecordCache};
use crate::error::GatewayError;
use crate::proto::registry::{CitizenRecord, Household};
use crate::registry::{BreakerState, Deadline, LookupKey, Registry};
use crate::validation::InvalidField;

/// The registry and its cache.
pub struct Lookups {
    registry: Arc<dyn Registry>,
    cache: Option<Arc<RecordCache>>,
    upstream_timeout: Duration,
}

impl Lookups {
    /// `registry` behind `cache` (when there is one); every registry call capped at
    /// `upstream_timeout`.
    pub fn new(
        registry: Arc<dyn Registry>,
        cache: Option<Arc<RecordCache>>,
        upstream_timeout: Duration,
    ) -> Lookups {
        Lookups {
            registry,
            cache,
            upstream_timeout,
        }
    }

    /// The cap of every registry call (`registry.timeout_ms`).
    pub fn upstream_timeout(&self) -> Duration {
        self.upstream_timeout
    }

    /// Which registry this is (`disk`, `postgres`, `remote`, `embedded`).
    pub fn kind(&self) -> &'static str {
        self.registry.kind()
    }

    /// The remote registry's circuit breaker, if it has one.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.registry.breaker_state()
    }

    /// The cache (`None` when `[cache] enabled = false`): its feed follower and figures.
    pub fn cache(&self) -> Option<&Arc<RecordCache>> {
        self.cache.as_ref()
    }

    /// The citizen with this key, through the cache when there is one, for a request
    /// admitted to a procedure; and what the cache did. The old 9-digit id is a key only
    /// for a procedure that accepts it, whoever asks.
    pub async fn citizen(
        &self,
        admitted: &ProcedurePermit<'_>,
        key: &LookupKey,
        deadline: Deadline,
    ) -> (
        Result<Option<Arc<CitizenRecord>>, GatewayError>,
        CacheOutcome,
    ) {
        if matches!(key, LookupKey::OldId(_)) && !admitted.procedure().old_id_accepted {
            let refused = InvalidField {
                field: "personal_id",
                reason: format!(
                    "procedure {} does not accept the old 9-digit id",
                    admitted.procedure().code
                ),
            };
            return (Err(refused.into()), CacheOutcome::None);
        }
        let (found, cache) = match &self.cache {
            Some(cache) => cache.citizen(key, deadline).await,
            None => (
                self.registry
                    .citizen(key, deadline)
                    .await
                    .map(|r| r.map(Arc::new)),
                CacheOutcome::None,
            ),
        };
        (found.map_err(GatewayError::from), cache)
    }

    /// A household, from the registry (never cached), for a request admitted to a
    /// procedure whose profile allows household data and whose client is granted it.
    pub async fn household(
        &self,
        admitted: &ProcedurePermit<'_>,
        household_id: &str,
        deadline: Deadline,
    ) -> Result<Option<Household>, GatewayError> {
        super::household_allowed(admitted)?;
        Ok(self.registry.household(household_id, deadline).await?)
    }
}
