//! Limits against enumeration: a rate per client, and caps on failed verifications of
//! one citizen, per client and across clients.
//!
//! VerifyIdentity answers yes or no, and the id itself encodes sex and birth year:
//! without limits a certified portal finds a citizen's full birth date in at most 366
//! calls (measured: 352 calls in 0.15 s), then searches names. Hence:
//!
//! - [`ClientRates`]: a token bucket per client identity (governor), `rate_per_second`
//!   and `burst` from the client's policy entry or `[limits]`; beyond it
//!   RESOURCE_EXHAUSTED with the wait in the status's RetryInfo.
//! - [`SubjectGuard`]: every verification that will consult the registry first
//!   *reserves* a try about its citizen (by pseudonym): the client's NO_MATCH answers
//!   about that citizen are capped at `client_failures` within the
//!   window, all clients' at `subject_failures`. Each verdict is let out by
//!   [`Try::finish`] atomically with every other try about the citizen, so a burst —
//!   365 birth dates over any number of connections — gets at most the allowance of
//!   verdicts, never one per date (the old check-then-count raced: 25 to 182 verdicts),
//!   while concurrent true declarations are all answered.
//!   One client's wrong tries spend only its own allowance, so a portal cannot lock a
//!   citizen out of everyone's procedures: the citizen is locked for everyone only when
//!   `subject_failures` NO_MATCH answers came from two clients or more, and the request
//!   that locked them says so in its audit record, a metric and a warning. A
//!   declaration the id alone contradicts (sex or birth year) is answered without a
//!   lookup and costs no try: it learns nothing from the registry.
//!
//! Invariants: keyed by pseudonym, never by personal id; bounded memory (at most
//! [`MAX_SUBJECTS`] citizens tracked); a lock or a count in its window is never
//! forgotten to make room — when the table is full, tries about untracked citizens are
//! refused (`Refused::Full`) until entries age out. The counts are this node's; with
//! `[limits] national = "nats"` each verdict is then settled in the deployment's shared
//! count too ([`national`]), with this node's count as the fallback when it is
//! unreachable.

pub mod national;

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
    /// NO_MATCH answers of one client about one citizen (however many it sends at once) within
    /// the window; beyond, that client's tries about them are refused.
    pub client_failures: u32,
    /// NO_MATCH answers about one citizen from all clients, within the window, that lock
    /// them for everyone (only when they came from two clients or more).
    pub subject_failures: u32,
    /// The window.
    pub subject_window: Duration,
    /// How long a citizen stays locked.
    pub subject_lockout: Duration,
    /// A unary request's message not complete within this is refused.
    pub body_timeout: Duration,
    /// Bytes of unfinished request messages one client may have in flight (a client
    /// missing from the policy: a sixteenth), each call waiting for its message counted
    /// `WAITING_CALL_BYTES` besides.
    pub body_bytes_per_client: usize,
    /// Bytes of unfinished request messages in flight in all.
    pub body_bytes_total: usize,
}

/// One token bucket per client identity, with the (rate, burst) it was made for.
pub struct ClientRates {
    buckets: HashMap<String, ((u32, u32), Arc<DefaultDirectRateLimiter>)>,
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
        Self::carried_over(clients, options, None)
    }

    /// The same after a reload: a client whose rate and burst did not change keeps its
    /// bucket as it is (an exhausted one stays exhausted — a reload must not refill
    /// every client's allowance); the others get a fresh one.
    pub fn carried_over<'a>(
        clients: impl Iterator<Item = (&'a str, Option<u32>, Option<u32>)>,
        options: &LimitOptions,
        previous: Option<&ClientRates>,
    ) -> ClientRates {
        let buckets = clients
            .map(|(identity, rate, burst)| {
                let rate = rate.unwrap_or(options.client_rate_per_second);
                let burst = burst.unwrap_or(if rate == options.client_rate_per_second {
                    options.client_burst
                } else {
                    rate.saturating_mul(2)
                });
                let bucket = previous
                    .and_then(|p| p.buckets.get(identity))
                    .filter(|(made_for, _)| *made_for == (rate, burst))
                    .map(|(_, bucket)| bucket.clone())
                    .unwrap_or_else(|| Arc::new(RateLimiter::direct(quota(rate, burst))));
                (identity.to_string(), ((rate, burst), bucket))
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
            Some((_, bucket)) => bucket
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }
}

/// One client's tries about one citizen within the window.
#[derive(Debug, Default)]
struct ClientTries {
    failures: u32,
    in_flight: u32,
}

/// One citizen's tries within the window, by client.
#[derive(Debug)]
struct Tally {
    since: Instant,
    failures: u32,
    in_flight: u32,
    locked_until: Option<Instant>,
    clients: HashMap<String, ClientTries>,
}

impl Tally {
    fn new(now: Instant) -> Tally {
        Tally {
            since: now,
            failures: 0,
            in_flight: 0,
            locked_until: None,
            clients: HashMap::new(),
        }
    }

    /// The time left of a lock for everyone.
    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// A fresh window from `now`: no failures, no lock; tries in flight kept.
    fn start_over(&mut self, now: Instant) {
        let mut fresh = Tally::new(now);
        fresh.in_flight = self.in_flight;
        for (c, t) in std::mem::take(&mut self.clients) {
            if t.in_flight > 0 {
                fresh.clients.insert(
                    c,
                    ClientTries {
                        failures: 0,
                        in_flight: t.in_flight,
                    },
                );
            }
        }
        *self = fresh;
    }

    /// Whether nothing about it needs remembering any more.
    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.in_flight == 0 && self.locked(now).is_none() && now.duration_since(self.since) > window
    }
}

/// Shards of the guard's table (a lock each).
const SHARDS: usize = 64;

/// Failed verifications per citizen, per client and across clients (see the module
/// documentation).
pub struct SubjectGuard {
    shards: Vec<Mutex<HashMap<String, Tally>>>,
    options: LimitOptions,
    capacity: usize,
}

impl std::fmt::Debug for SubjectGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectGuard")
            .field("tracked", &self.tracked())
            .finish()
    }
}

/// A citizen just locked for everyone: what the audit record of the request that locked
/// them says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// NO_MATCH answers counted.
    pub failures: u32,
    /// Clients they came from.
    pub clients: usize,
    /// For how long.
    pub lockout: Duration,
}

/// What an operator's unlock lifted ([`SubjectGuard::unlock`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifted {
    /// The citizen was locked for everyone.
    pub was_locked: bool,
    /// NO_MATCH answers about them forgotten, all clients'.
    pub failures: u32,
}

/// Why a try about a citizen is refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Locked for every client, for this long.
    Locked(Duration),
    /// The tries about this citizen are used (this client's, or all clients'); the
    /// window ends in this long.
    Spent(Duration),
    /// The table of tracked citizens is full: no new citizen can be tried now.
    Full,
}

/// A try about a citizen, reserved before the lookup; its verdict is let out (or not) by
/// [`Try::finish`], and a try dropped without one (an error, "could not check") is
/// released.
#[must_use = "a try is released when dropped; its verdict goes through Try::finish"]
pub struct Try<'a> {
    guard: &'a SubjectGuard,
    subject: String,
    client: String,
    open: bool,
}

impl Try<'_> {
    /// Decides, atomically with every other try about the citizen, whether this try's
    /// verdict may be answered: not when the citizen was locked meanwhile, nor when the
    /// client's (or all clients') NO_MATCH answers already reached the allowance — a
    /// burst's tries all pass [`SubjectGuard::reserve`] together, and only the first
    /// verdicts within the allowance come out. A NO_MATCH let out is counted; `Some`
    /// when it locks the citizen for everyone.
    pub fn finish(mut self, matched: bool) -> Result<Option<Locked>, Refused> {
        self.open = false;
        let guard = self.guard;
        let o = &guard.options;
        let mut shard = guard.shard(&self.subject);
        let Some(tally) = shard.get_mut(&self.subject) else {
            return Err(Refused::Full);
        };
        let now = Instant::now();
        tally.in_flight = tally.in_flight.saturating_sub(1);
        let left = o
            .subject_window
            .saturating_sub(now.duration_since(tally.since))
            .max(Duration::from_secs(1));
        let mine = tally.clients.entry(self.client.clone()).or_default();
        mine.in_flight = mine.in_flight.saturating_sub(1);
        if let Some(locked) = tally.locked(now) {
            return Err(Refused::Locked(locked));
        }
        let mine = tally.clients.entry(self.client.clone()).or_default();
        if mine.failures >= o.client_failures.max(1) || tally.failures >= o.subject_failures.max(1)
        {
            return Err(Refused::Spent(left));
        }
        if matched {
            return Ok(None);
        }
        mine.failures += 1;
        tally.failures += 1;
        let failing_clients = tally.clients.values().filter(|c| c.failures > 0).count();
        if tally.failures >= o.subject_failures.max(1)
            && failing_clients >= 2
            && tally.locked(now).is_none()
        {
            tally.locked_until = Some(now + o.subject_lockout);
            return Ok(Some(Locked {
                failures: tally.failures,
                clients: failing_clients,
                lockout: o.subject_lockout,
            }));
        }
        Ok(None)
    }
}

impl Drop for Try<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut shard = self.guard.shard(&self.subject);
        if let Some(tally) = shard.get_mut(&self.subject) {
            tally.in_flight = tally.in_flight.saturating_sub(1);
            if let Some(c) = tally.clients.get_mut(&self.client) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }
}

impl SubjectGuard {
    /// A guard with these limits, tracking at most [`MAX_SUBJECTS`] citizens.
    pub fn new(options: LimitOptions) -> SubjectGuard {
        Self::with_capacity(options, MAX_SUBJECTS as usize)
    }

    /// A guard tracking at most `capacity` citizens (rounded to its shards).
    pub fn with_capacity(options: LimitOptions, capacity: usize) -> SubjectGuard {
        SubjectGuard {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            options,
            capacity: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, subject: &str) -> std::sync::MutexGuard<'_, HashMap<String, Tally>> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(subject) as usize;
        self.shards[h % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Citizens tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// `Err` with the time left when the citizen `subject` is locked for everyone.
    pub fn check(&self, subject: &str) -> Result<(), Duration> {
        match self
            .shard(subject)
            .get(subject)
            .and_then(|t| t.locked(Instant::now()))
        {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }

    /// Lifts the lock on `subject` and forgets the NO_MATCH answers counted about them
    /// (an operator's `Limits.Unlock`): a fresh window; tries in flight are kept.
    pub fn unlock(&self, subject: &str) -> Lifted {
        let now = Instant::now();
        let mut shard = self.shard(subject);
        let Some(tally) = shard.get_mut(subject) else {
            return Lifted::default();
        };
        let lifted = Lifted {
            was_locked: tally.locked(now).is_some(),
            failures: tally.failures,
        };
        tally.start_over(now);
        lifted
    }

    /// Reserves a try by `client` about `subject` before its lookup: refused when the
    /// citizen is locked, or when this client's NO_MATCH answers about them reached
    /// `client_failures` (all clients': `subject_failures`). Tries in flight are not
    /// refused here — concurrent true declarations are fine — but their verdicts pass
    /// [`Try::finish`] one at a time, so no burst, however spread over connections, gets
    /// more verdicts than the allowance. Locks are never forgotten to make room: a full
    /// table refuses.
    pub fn reserve(&self, client: &str, subject: &str) -> Result<Try<'_>, Refused> {
        self.reserve_with(client, subject, true)
    }

    /// Like [`SubjectGuard::reserve`] but never refused by this node's counts or lock (a
    /// full table still refuses): while the national count decides ([`national`]), this
    /// node only holds the try in flight; [`Try::finish`] still counts its verdict here,
    /// for when the node must count alone again.
    pub fn hold(&self, client: &str, subject: &str) -> Result<Try<'_>, Refused> {
        self.reserve_with(client, subject, false)
    }

    fn reserve_with(&self, client: &str, subject: &str, enforce: bool) -> Result<Try<'_>, Refused> {
        let o = &self.options;
        let now = Instant::now();
        let mut shard = self.shard(subject);
        if !shard.contains_key(subject) && shard.len() >= self.capacity {
            shard.retain(|_, t| !t.idle(now, o.subject_window));
            if shard.len() >= self.capacity {
                return Err(Refused::Full);
            }
        }
        let tally = shard
            .entry(subject.to_string())
            .or_insert_with(|| Tally::new(now));
        if let Some(left) = tally.locked(now).filter(|_| enforce) {
            return Err(Refused::Locked(left));
        }
        if tally.locked(now).is_none()
            && (tally.locked_until.is_some() || now.duration_since(tally.since) > o.subject_window)
        {
            // The window (or the lock) is over: a fresh count, tries in flight kept.
            tally.start_over(now);
        }
        let left = o
            .subject_window
            .saturating_sub(now.duration_since(tally.since));
        let mine = tally.clients.entry(client.to_string()).or_default();
        if enforce
            && (mine.failures >= o.client_failures.max(1)
                || tally.failures >= o.subject_failures.max(1))
        {
            return Err(Refused::Spent(left.max(Duration::from_secs(1))));
        }
        mine.in_flight += 1;
        tally.in_flight += 1;
        Ok(Try {
            guard: self,
            subject: subject.to_string(),
            client: client.to_string(),
            open: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LimitOptions {
        LimitOptions {
            client_rate_per_second: 5,
            client_burst: 5,
            client_failures: 2,
            subject_failures: 3,
            subject_window: Duration::from_secs(60),
            subject_lockout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(5),
            body_bytes_per_client: 1 << 20,
            body_bytes_total: 1 << 24,
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
    fn a_reload_keeps_an_exhausted_bucket_empty() {
        let clients = [("spiffe://a", None, None), ("spiffe://b", Some(1), Some(1))];
        let rates = ClientRates::new(clients.into_iter(), &options());
        for _ in 0..5 {
            assert!(rates.take("spiffe://a").is_ok());
        }
        assert!(rates.take("spiffe://b").is_ok());
        // The same policy again: both stay exhausted. b's rate changed: a fresh bucket.
        let again = ClientRates::carried_over(clients.into_iter(), &options(), Some(&rates));
        assert!(again.take("spiffe://a").is_err());
        assert!(again.take("spiffe://b").is_err());
        let changed = [("spiffe://a", None, None), ("spiffe://b", Some(2), Some(2))];
        let changed = ClientRates::carried_over(changed.into_iter(), &options(), Some(&again));
        assert!(changed.take("spiffe://a").is_err());
        assert!(changed.take("spiffe://b").is_ok());
    }

    #[test]
    fn a_burst_gets_only_the_allowance_of_verdicts() {
        let guard = SubjectGuard::new(options());
        // A burst: four tries pass the reservation together, before any answer.
        let tries: Vec<_> = (0..4)
            .map(|_| guard.reserve("portal", "s1").unwrap())
            .collect();
        let mut tries = tries.into_iter();
        assert_eq!(tries.next().unwrap().finish(false), Ok(None));
        assert_eq!(tries.next().unwrap().finish(false), Ok(None));
        // The allowance (2) is spent: the third NO_MATCH, and even a MATCH found late
        // (the true date), is not let out.
        assert!(matches!(
            tries.next().unwrap().finish(false),
            Err(Refused::Spent(_))
        ));
        assert!(matches!(
            tries.next().unwrap().finish(true),
            Err(Refused::Spent(_))
        ));
        assert!(matches!(
            guard.reserve("portal", "s1"),
            Err(Refused::Spent(_))
        ));
        // Another client is not affected by the first one's failures...
        assert!(guard.check("s1").is_ok());
        let concurrent: Vec<_> = (0..8)
            .map(|_| guard.reserve("ministry", "s1").unwrap())
            .collect();
        for t in concurrent {
            assert_eq!(
                t.finish(true),
                Ok(None),
                "concurrent true declarations all answered"
            );
        }
        // ...until failures from two clients reach subject_failures: locked for all.
        let locked = guard
            .reserve("ministry", "s1")
            .unwrap()
            .finish(false)
            .unwrap()
            .expect("the third failure, from a second client");
        assert_eq!((locked.failures, locked.clients), (3, 2));
        assert!(guard.check("s1").is_err());
        assert!(matches!(
            guard.reserve("third", "s1"),
            Err(Refused::Locked(_))
        ));
        assert!(guard.reserve("portal", "s2").is_ok(), "only that citizen");
    }

    #[test]
    fn one_client_alone_never_locks_a_citizen_for_others() {
        let mut o = options();
        o.client_failures = 10;
        o.subject_failures = 3;
        let guard = SubjectGuard::new(o);
        for _ in 0..3 {
            assert_eq!(
                guard.reserve("portal", "s1").unwrap().finish(false),
                Ok(None)
            );
        }
        assert!(guard.check("s1").is_ok(), "three failures, one client");
        assert!(matches!(
            guard.reserve("portal", "s1"),
            Err(Refused::Spent(_))
        ));
    }

    #[test]
    fn a_full_table_refuses_new_citizens_and_forgets_no_lock() {
        let guard = SubjectGuard::with_capacity(options(), 1);
        // One slot per shard: fill every shard with a citizen whose count is live.
        let mut n = 0;
        while guard.tracked() < SHARDS {
            let _ = guard
                .reserve("portal", &format!("s{n}"))
                .map(|t| t.finish(false));
            n += 1;
        }
        let refused = (n..n + 200)
            .filter(|i| {
                guard
                    .reserve("portal", &format!("s{i}"))
                    .is_err_and(|e| e == Refused::Full)
            })
            .count();
        assert_eq!(refused, 200, "no live count is evicted to make room");
    }
}
