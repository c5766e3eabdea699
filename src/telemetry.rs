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
