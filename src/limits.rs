//! Limits against enumeration: a rate per client, and a cap on failed verifications
//! per citizen across all clients.
//!
//! VerifyIdentity answers yes or no, and the id itself encodes sex and birth year:
//! without limits a certified portal finds a citizen's full birth date in at most 366
//! calls (measured: 352 calls in 0.15 s), then searches names. Hence:
//!
//! - [`ClientRates`]: a token bucket per client identity (governor), `rate_per_second`
//!   and `burst` from the client's policy entry or `[limits]`; beyond it
//!   RESOURCE_EXHAUSTED with the wait in the status's RetryInfo.
//! - [`SubjectGuard`]: NO_MATCH answers about one citizen (by pseudonym) are counted
//!   over a window, whichever client asked; at `subject_failures` the citizen is locked
//!   for `subject_lockout_secs` — every verification of them is refused
//!   (RESOURCE_EXHAUSTED) — and the request that locked them says so in its audit
//!   record. A real dossier, checked at submission, review and decision, with a typo or
//!   two, never gets near the defaults; a birth-date search always does.
//!
//! Invariant: keyed by pseudonym, never by personal id; bounded memory (at most
//! [`MAX_SUBJECTS`] citizens tracked, the idlest forgotten first).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Citizens tracked at most by the guard.
pub const MAX_SUBJECTS: u64 = 1_000_000;

/// How the limits are set (`[limits]` in the configuration).
#[derive(Clone, Debug)]
pub struct LimitOptions {
    /// Requests per second of a client whose policy entry sets none.
    pub client_rate_per_second: u32,
    /// Its burst.
    pub client_burst: u32,
    /// NO_MATCH answers about one citizen, within the window, that lock them.
    pub subject_failures: u32,
    /// The window.
    pub subject_window: Duration,
    /// How long a citizen stays locked.
    pub subject_lockout: Duration,
}

/// One token bucket per client identity.
pub struct ClientRates {
    buckets: HashMap<String, DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl std::fmt::Debug for ClientRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRates")
            .field("clients", &self.buckets.len())
            .finish()
    }
}

fn quota(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl ClientRates {
    /// Buckets for `clients`: (identity, its own rate and burst if its policy entry
    /// sets them).
    pub fn new<'a>(
        clients: impl Iterator<Item = (&'a str, Option<u32>, Option<u32>)>,
        options: &LimitOptions,
    ) -> ClientRates {
        let buckets = clients
            .map(|(identity, rate, burst)| {
                let rate = rate.unwrap_or(options.client_rate_per_second);
                let burst = burst.unwrap_or(if rate == options.client_rate_per_second {
                    options.client_burst
                } else {
                    rate.saturating_mul(2)
                });
                (
                    identity.to_string(),
                    RateLimiter::direct(quota(rate, burst)),
                )
            })
            .collect();
        ClientRates {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `identity`'s bucket; `Err` holds how long to wait. An
    /// identity without a bucket (not in the policy) is refused by the policy anyway.
    pub fn take(&self, identity: &str) -> Result<(), Duration> {
        match self.buckets.get(identity) {
            Some(bucket) => bucket
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Tally {
    since: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Failed verifications per citizen, across all clients (see the module documentation).
pub struct SubjectGuard {
    tallies: moka::sync::Cache<String, Arc<Mutex<Tally>>>,
    options: LimitOptions,
}

impl std::fmt::Debug for SubjectGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectGuard")
            .field("tracked", &self.tallies.entry_count())
            .finish()
    }
}

/// A citizen just locked: what the audit record of the request that locked them says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// NO_MATCH answers counted.
    pub failures: u32,
    /// For how long.
    pub lockout: Duration,
}

impl SubjectGuard {
    /// A guard with these limits.
    pub fn new(options: LimitOptions) -> SubjectGuard {
        let idle = options.subject_window.max(options.subject_lockout);
        SubjectGuard {
            tallies: moka::sync::Cache::builder()
                .max_capacity(MAX_SUBJECTS)
                .time_to_idle(idle)
                .build(),
            options,
        }
    }

    /// `Err` with the time left when the citizen `subject` is locked.
    pub fn check(&self, subject: &str) -> Result<(), Duration> {
        let Some(tally) = self.tallies.get(subject) else {
            return Ok(());
        };
        let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
        match tally.locked_until {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Err(left),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a NO_MATCH about `subject`; `Some` when this one locks them.
    pub fn failed(&self, subject: &str) -> Option<Locked> {
        if subject.is_empty() {
            return None;
        }
        let now = Instant::now();
        let tally = self.tallies.get_with(subject.to_string(), || {
            Arc::new(Mutex::new(Tally {
                since: now,
                failures: 0,
                locked_until: None,
            }))
        });
        let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
        let lock_over = tally.locked_until.is_some_and(|until| until <= now);
        if lock_over || now.duration_since(tally.since) > self.options.subject_window {
            *tally = Tally {
                since: now,
                failures: 0,
                locked_until: None,
            };
        }
        tally.failures += 1;
        if tally.failures >= self.options.subject_failures.max(1) && tally.locked_until.is_none() {
            tally.locked_until = Some(now + self.options.subject_lockout);
            return Some(Locked {
                failures: tally.failures,
                lockout: self.options.subject_lockout,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LimitOptions {
        LimitOptions {
            client_rate_per_second: 5,
            client_burst: 5,
            subject_failures: 3,
            subject_window: Duration::from_secs(60),
            subject_lockout: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_client_beyond_its_burst_is_told_how_long_to_wait() {
        let rates = ClientRates::new(
            [("spiffe://a", None, None), ("spiffe://b", Some(1), Some(1))].into_iter(),
            &options(),
        );
        for _ in 0..5 {
            assert!(rates.take("spiffe://a").is_ok());
        }
        let wait = rates.take("spiffe://a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
        assert!(rates.take("spiffe://b").is_ok());
        assert!(rates.take("spiffe://b").is_err(), "its own, smaller bucket");
    }

    #[test]
    fn the_third_failure_locks_the_citizen_for_everyone() {
        let guard = SubjectGuard::new(options());
        assert_eq!(guard.failed("s1"), None);
        assert_eq!(guard.failed("s1"), None);
        assert!(guard.check("s1").is_ok());
        let locked = guard.failed("s1").expect("locked by the third");
        assert_eq!(locked.failures, 3);
        assert!(guard.check("s1").is_err());
        assert!(guard.check("s2").is_ok(), "only that citizen");
        assert_eq!(guard.failed("s1"), None, "locked once, not again");
    }
}
