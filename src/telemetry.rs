//! Telemetry: tracing set-up and the gateway's counters.
//!
//! Invariant: no personal data in logs. Nothing here or in any `tracing` call of the
//! crate carries a personal id, name, birth date or address; requests are traced by
//! request id, client identity, RPC, procedure and outcome only.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The gateway's counters (exported by a later metrics endpoint; read by tests now).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Completed mutual-TLS handshakes.
    pub handshakes_ok: Counter,
    /// Refused or timed-out handshakes (no certificate, unknown CA, expired...).
    pub handshakes_refused: Counter,
    /// Requests answered (any outcome).
    pub requests: Counter,
    /// Requests refused because the audit log could not be written.
    pub audit_failures: Counter,
    /// Requests shed because `limits.max_in_flight` were running.
    pub shed: Counter,
    /// Calls sent to the remote registry (each retry counts).
    pub upstream_calls: Counter,
    /// Of those, the ones that failed (UNAVAILABLE, timed out, refused).
    pub upstream_failures: Counter,
    /// Retries after an UNAVAILABLE answer.
    pub upstream_retries: Counter,
    /// Calls answered UNAVAILABLE at once because the breaker was open.
    pub upstream_short_circuited: Counter,
    /// Times the breaker opened.
    pub breaker_opened: Counter,
    /// Cache: answered from a fresh entry.
    pub cache_hits: Counter,
    /// Cache: not there (or no longer fresh); this request loaded it.
    pub cache_misses: Counter,
    /// Cache: not there; this request waited for another one's load.
    pub cache_coalesced: Counter,
    /// Cache: a stale entry served while the registry was down.
    pub cache_stale: Counter,
    /// Cache: loads from the registry (successful or not).
    pub cache_loads: Counter,
    /// Cache: entries evicted for size or age.
    pub cache_evictions: Counter,
    /// Cache: entries invalidated by the change feed.
    pub cache_invalidations: Counter,
    /// Cache: times the whole cache was dropped (the feed could not be resumed).
    pub cache_drops: Counter,
    /// `popgw registry serve`: lookups answered (GetCitizen, BatchGetCitizens, GetHousehold).
    pub registry_lookups: Counter,
}

/// Installs the global tracing subscriber (RUST_LOG, default `info`), writing to stderr.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
