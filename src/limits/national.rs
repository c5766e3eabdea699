//! The try budget shared by a deployment's nodes: one count of NO_MATCH answers per
//! citizen for the whole country, kept in a NATS JetStream key-value bucket on the link
//! the nodes already use for the audit witness (`[limits] national = "nats"`).
//!
//! Each node's own [`SubjectGuard`](super::SubjectGuard) still reserves and settles every
//! try first (exact on the node); then a verdict about to be answered is settled here:
//! a NO_MATCH is let out only if an optimistic compare-and-set of the citizen's shared
//! state — per-client and total NO_MATCH counts in the window, the lock — succeeds within
//! the allowance, so a burst spread over any number of nodes gets at most the allowance;
//! a MATCH is let out only if the shared state is neither locked nor spent. The entry's
//! key is the citizen's pseudonym (the nodes share the pseudonym key); its value holds
//! client identities and counts, never personal data.
//!
//! Fallback, documented: when the bucket does not answer within `national_timeout_ms`,
//! the verdict being settled is refused (RESOURCE_EXHAUSTED, retry in a second: it may be
//! one that a burst over the other nodes has already spent), `popgw_limits_national_up`
//! turns 0 and a warning is logged; from then on each node counts alone (per-node
//! budgets, as without a national one; the audit record says so), without waiting on the
//! bucket, and one try a second probes it until it answers again. A compare-and-set that keeps losing
//! (more than [`MAX_ROUNDS`] concurrent writers) refuses the try: under contention the
//! answer errs towards refusing, never towards an extra verdict.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::{kv, stream};
use serde::{Deserialize, Serialize};

use super::{LimitOptions, Locked, Refused};
use crate::link::nats::NatsLink;
use crate::telemetry::Metrics;

/// Compare-and-set rounds of one settlement at most before the try is refused.
pub const MAX_ROUNDS: usize = 16;

/// Where the shared budget lives (`[limits] national*` with `[audit.witness]`'s link).
#[derive(Debug, Clone)]
pub struct NationalConfig {
    /// The NATS link (the witness's).
    pub link: NatsLink,
    /// The key-value bucket.
    pub bucket: String,
    /// How long one settlement may wait on the bucket before the node counts alone.
    pub timeout: Duration,
    /// This node, for the connection's name.
    pub node: String,
}

/// One citizen's shared state.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Shared {
    /// Start of the window, ms since the epoch.
    since_ms: i64,
    /// NO_MATCH answers about the citizen in the window, all clients'.
    failures: u32,
    /// By client identity.
    clients: BTreeMap<String, u32>,
    /// Locked for everyone until then (ms since the epoch; 0: not locked).
    locked_until_ms: i64,
}

impl Shared {
    fn fresh(now_ms: i64) -> Shared {
        Shared {
            since_ms: now_ms,
            ..Default::default()
        }
    }

    fn locked_left(&self, now_ms: i64) -> Option<Duration> {
        (self.locked_until_ms > now_ms)
            .then(|| Duration::from_millis((self.locked_until_ms - now_ms) as u64))
    }
}

/// How a settlement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The verdict may be answered (`Some` when this NO_MATCH locked the citizen for
    /// everyone).
    Answer(Option<Locked>),
    /// Refused by the shared count.
    Refused(Refused),
    /// The bucket did not answer in time: this verdict is refused (it may be one a
    /// burst over other nodes already used up), and the node counts alone from now on
    /// until the bucket answers a probe again.
    Unsettled,
}

/// The shared budget (see the module documentation).
pub struct NationalBudget {
    config: NationalConfig,
    options: LimitOptions,
    store: ArcSwapOption<kv::Store>,
    /// Whether the last settlement (or the connection) succeeded.
    up: std::sync::atomic::AtomicBool,
    /// When a try last probed the bucket while it was down (ms since the epoch).
    last_probe_ms: std::sync::atomic::AtomicI64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for NationalBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NationalBudget")
            .field("bucket", &self.config.bucket)
            .field("connected", &self.store.load().is_some())
            .finish()
    }
}

/// A shared-state problem, in words (never personal data).
#[derive(Debug, thiserror::Error)]
#[error("national try budget: {0}")]
pub struct NationalError(String);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl NationalBudget {
    /// A budget that connects in the background (and reconnects): until it has, the
    /// node counts alone.
    pub fn start(
        config: NationalConfig,
        options: LimitOptions,
        metrics: Arc<Metrics>,
    ) -> Arc<NationalBudget> {
        metrics.national_up.set(0);
        let budget = Arc::new(NationalBudget {
            config,
            options,
            store: ArcSwapOption::empty(),
            up: std::sync::atomic::AtomicBool::new(false),
            last_probe_ms: std::sync::atomic::AtomicI64::new(0),
            metrics,
        });
        let weak = Arc::downgrade(&budget);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                let Some(budget) = weak.upgrade() else { return };
                match budget.open().await {
                    Ok(store) => {
                        budget.store.store(Some(Arc::new(store)));
                        budget.set_up(true);
                        tracing::info!(bucket = %budget.config.bucket, "national try budget connected");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "national try budget unreachable: this node counts tries alone until it answers");
                    }
                }
                drop(budget);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        });
        budget
    }

    /// Whether the national count decides now (connected, and its last settlement
    /// answered): then a node's own count and lock do not refuse a try before it.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// While the bucket is down, one try a second probes it (and is refused if it still
    /// does not answer); every other try counts on this node alone, without waiting.
    pub fn probe_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.store.load().is_none() {
            // Not connected yet: the background task connects.
            return false;
        }
        let now = now_ms();
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now - last >= 1_000
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::Release);
        self.metrics.national_up.set(i64::from(up));
    }

    /// The bucket, created when missing and this node may (else named, for `popgw
    /// audit witness init` with the administrator's credentials).
    async fn open(&self) -> Result<kv::Store, NationalError> {
        let client = self
            .config
            .link
            .connect(&format!("popgw {} tries", self.config.node))
            .await
            .map_err(|e| NationalError(e.to_string()))?;
        let js = async_nats::jetstream::new(client);
        if js.get_key_value(&self.config.bucket).await.is_err() {
            // Created as a stream: async-nats's create_key_value first asks for the
            // account's JetStream info, which it cannot parse from nats-server 2.9.
            js.create_stream(bucket_stream(&self.config.bucket, &self.options))
                .await
                .map_err(|e| {
                    NationalError(format!(
                        "bucket {} is missing and could not be created ({e}): create it with \
                         `popgw audit witness init`",
                        self.config.bucket
                    ))
                })?;
        }
        js.get_key_value(&self.config.bucket)
            .await
            .map_err(|e| NationalError(format!("bucket {}: {e}", self.config.bucket)))
    }

    /// Settles a verdict about `subject` by `client` in the shared count (see the module
    /// documentation); [`Settled::Unsettled`] when the bucket does not answer in time.
    /// Call it only for a try reserved while [`NationalBudget::is_up`] (or
    /// [`NationalBudget::probe_due`]) said so.
    pub async fn settle(&self, client: &str, subject: &str, matched: bool) -> Settled {
        let Some(store) = self.store.load_full() else {
            return Settled::Unsettled;
        };
        match tokio::time::timeout(
            self.config.timeout,
            self.settle_in(&store, client, subject, matched),
        )
        .await
        {
            Ok(Ok(settled)) => {
                self.set_up(true);
                settled
            }
            Ok(Err(e)) => {
                self.set_up(false);
                tracing::warn!(error = %e, "national try budget failed: try refused; this node counts alone until it answers");
                Settled::Unsettled
            }
            Err(_) => {
                self.set_up(false);
                tracing::warn!(
                    timeout_ms = self.config.timeout.as_millis() as u64,
                    "national try budget did not answer in time: try refused; this node counts alone until it answers"
                );
                Settled::Unsettled
            }
        }
    }

    async fn settle_in(
        &self,
        store: &kv::Store,
        client: &str,
        subject: &str,
        matched: bool,
    ) -> Result<Settled, NationalError> {
        let o = &self.options;
        let window = o.subject_window.as_millis() as i64;
        for _ in 0..MAX_ROUNDS {
            let entry = store
                .entry(subject)
                .await
                .map_err(|e| NationalError(e.to_string()))?;
            let now = now_ms();
            let (mut state, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Shared>(&e.value).unwrap_or_else(|_| {
                        // Unreadable: someone wrote it who should not have; count anew
                        // rather than trust it, and say so.
                        tracing::warn!("national try budget: an unreadable entry replaced");
                        Shared::fresh(now)
                    }),
                    Some(e.revision),
                ),
                Some(e) => (Shared::fresh(now), Some(e.revision)),
                None => (Shared::fresh(now), None),
            };
            if let Some(left) = state.locked_left(now) {
                return Ok(Settled::Refused(Refused::Locked(left)));
            }
            if state.locked_until_ms != 0 || now - state.since_ms > window {
                state = Shared::fresh(now);
            }
            let left = Duration::from_millis((window - (now - state.since_ms)).max(1_000) as u64);
            let mine = state.clients.get(client).copied().unwrap_or(0);
            if mine >= o.client_failures.max(1) || state.failures >= o.subject_failures.max(1) {
                return Ok(Settled::Refused(Refused::Spent(left)));
            }
            if matched {
                return Ok(Settled::Answer(None));
            }
            state.failures += 1;
            *state.clients.entry(client.to_string()).or_default() += 1;
            let failing = state.clients.len();
            let locked = (state.failures >= o.subject_failures.max(1) && failing >= 2).then(|| {
                state.locked_until_ms = now + o.subject_lockout.as_millis() as i64;
                Locked {
                    failures: state.failures,
                    clients: failing,
                    lockout: o.subject_lockout,
                }
            });
            let value = serde_json::to_vec(&state)
                .map_err(|e| NationalError(e.to_string()))?
                .into();
            let written = match revision {
                Some(r) => store
                    .update(subject, value, r)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => store.create(subject, value).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(()) => return Ok(Settled::Answer(locked)),
                // Another node wrote first: read again.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(NationalError(e)),
            }
        }
        tracing::warn!(
            rounds = MAX_ROUNDS,
            "national try budget: too many concurrent writers about one citizen; try refused"
        );
        Ok(Settled::Refused(Refused::Spent(Duration::from_secs(1))))
    }

    /// Forgets the shared count and lock of `subject` (an operator's unlock); `false`
    /// when the bucket could not be reached (the node's own was lifted anyway).
    pub async fn unlock(&self, subject: &str) -> bool {
        let Some(store) = self.store.load_full() else {
            return false;
        };
        let value = match serde_json::to_vec(&Shared::fresh(now_ms())) {
            Ok(v) => v.into(),
            Err(_) => return false,
        };
        matches!(
            tokio::time::timeout(self.config.timeout, store.put(subject, value)).await,
            Ok(Ok(_))
        )
    }
}

/// The bucket's stream (`KV_<bucket>`, as a JetStream key-value bucket is laid out): one
/// value per citizen (no history), kept as long as a window or a lock can last.
pub fn bucket_stream(bucket: &str, options: &LimitOptions) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(
            "popgw: NO_MATCH answers and locks per citizen pseudonym, shared by the \
             deployment's nodes"
                .into(),
        ),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: options.subject_window.max(options.subject_lockout) + Duration::from_secs(60),
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    }
}
