//! Telemetry: tracing set-up (human or JSON lines) and the gateway's metrics, exported
//! in the Prometheus text format on the admin listener ([`crate::admin`]).
//!
//! Invariant: no personal data in logs or metrics. Nothing here or in any `tracing`
//! call of the crate carries a personal id, name, birth date or address; requests are
//! traced by request id, client identity, RPC, procedure and outcome only. Metric labels
//! are bounded sets: RPC and procedure codes the gateway knows, clients the policy lists
//! (anyone else is `unknown`), gRPC code names, fixed refusal reasons.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A monotonically increasing counter (`inc`, `get`).
pub type Counter = prometheus_client::metrics::counter::Counter;
/// An integer gauge.
pub type Gauge = prometheus_client::metrics::gauge::Gauge;
/// A floating-point gauge.
pub type FloatGauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// Labels of a request: which RPC, for which procedure, from which client, which code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The RPC (`VerifyIdentity`...).
    pub rpc: &'static str,
    /// The procedure code (`P01`...), empty when the request named none or an unknown one.
    pub procedure: String,
    /// The client identity when the policy lists it, else `unknown`.
    pub client: String,
    /// The gRPC code name (`OK`, `PERMISSION_DENIED`...).
    pub code: &'static str,
}

/// Labels naming an RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The RPC.
    pub rpc: &'static str,
}

/// Labels naming why a handshake was refused (a fixed set, see [`crate::tls`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: &'static str,
}

/// Labels naming a loaded certificate (`server`, `client_ca`, `registry_client`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// Which certificate.
    pub certificate: &'static str,
}

/// Labels of a configuration reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `refused`.
    pub result: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The gateway's metrics. Cheap handles: every field shares its value with the
/// [`Registry`] built by [`Metrics::registry`].
#[derive(Debug)]
pub struct Metrics {
    /// Completed mutual-TLS handshakes.
    pub handshakes_ok: Counter,
    /// Refused or timed-out handshakes (no certificate, unknown CA, expired...).
    pub handshakes_refused: Counter,
    /// Refused handshakes by reason.
    pub handshake_refusals: Family<ReasonLabels, Counter>,
    /// Established connections open now.
    pub connections_open: Gauge,
    /// Requests answered (any outcome).
    pub requests: Counter,
    /// Requests answered, by RPC, procedure, client and code.
    pub requests_by: Family<RequestLabels, Counter>,
    /// Request latency (to the audit record) by RPC.
    pub request_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// Requests refused because the audit log could not be written.
    pub audit_failures: Counter,
    /// Records waiting for the audit writer.
    pub audit_queue: Gauge,
    /// Records per audit write (one write, one fsync).
    pub audit_batch_records: Histogram,
    /// Time of one audit write including its fsync.
    pub audit_write_seconds: Histogram,
    /// Audit witness: records written but not yet acknowledged by the witness (set at
    /// each scrape).
    pub witness_lag: Gauge,
    /// Audit witness: 1 while connected.
    pub witness_up: Gauge,
    /// The national try budget: 1 while its key-value bucket answers, 0 while this node
    /// counts alone (unset when the deployment has none).
    pub national_up: Gauge,
    /// Audit witness: batch heads acknowledged.
    pub witness_shipped: Counter,
    /// Refusals counted into a per-second summary record instead of written one by one.
    pub refusals_counted: Counter,
    /// Citizens locked for every client after NO_MATCH answers from several clients.
    pub subject_locks: Counter,
    /// Audit witness: alarms raised (a message in this node's subject it did not send,
    /// a witness that lost acknowledged messages or holds more than the folder).
    pub witness_alarms: Counter,
    /// Audit witness: 1 while an alarm stands (until restart; set at each scrape).
    pub witness_alarm: Gauge,
    /// Central audit index: records newly indexed (by this process's indexer).
    pub index_records: Counter,
    /// Central audit index: one commit of a batch of witness messages.
    pub index_commit_seconds: Histogram,
    /// Central audit index: witness messages not yet indexed (undelivered or
    /// unacknowledged), as the stream's consumer reports after each commit.
    pub index_pending: Gauge,
    /// Central audit index: 1 while the indexer is connected to the stream and the
    /// database.
    pub index_up: Gauge,
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
    /// Latency of one call to the remote registry.
    pub upstream_seconds: Histogram,
    /// Times the breaker opened.
    pub breaker_opened: Counter,
    /// Breaker state now: 0 closed, 1 open, 2 half-open (set at each scrape).
    pub breaker_state: Gauge,
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
    /// Cache: entries now (set at each scrape).
    pub cache_entries: Gauge,
    /// Cache: weighed size now, bytes (set at each scrape).
    pub cache_bytes: Gauge,
    /// Seconds until each loaded certificate expires (set at load and reload).
    pub certificate_expiry: Family<CertificateLabels, FloatGauge>,
    /// Configuration reloads (certificates, CRLs, policy) by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `popgw registry serve`: lookups answered (GetCitizen, BatchGetCitizens, GetHousehold).
    pub registry_lookups: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            handshakes_ok: Counter::default(),
            handshakes_refused: Counter::default(),
            handshake_refusals: Family::default(),
            connections_open: Gauge::default(),
            requests: Counter::default(),
            requests_by: Family::default(),
            request_seconds: Family::new_with_constructor(seconds_histogram),
            audit_failures: Counter::default(),
            audit_queue: Gauge::default(),
            audit_batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            audit_write_seconds: seconds_histogram(),
            witness_lag: Gauge::default(),
            witness_up: Gauge::default(),
            national_up: Gauge::default(),
            witness_alarms: Counter::default(),
            subject_locks: Counter::default(),
            refusals_counted: Counter::default(),
            witness_alarm: Gauge::default(),
            witness_shipped: Counter::default(),
            index_records: Counter::default(),
            index_commit_seconds: seconds_histogram(),
            index_pending: Gauge::default(),
            index_up: Gauge::default(),
            shed: Counter::default(),
            upstream_calls: Counter::default(),
            upstream_failures: Counter::default(),
            upstream_retries: Counter::default(),
            upstream_short_circuited: Counter::default(),
            upstream_seconds: seconds_histogram(),
            breaker_opened: Counter::default(),
            breaker_state: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_coalesced: Counter::default(),
            cache_stale: Counter::default(),
            cache_loads: Counter::default(),
            cache_evictions: Counter::default(),
            cache_invalidations: Counter::default(),
            cache_drops: Counter::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            certificate_expiry: Family::default(),
            reloads: Family::default(),
            registry_lookups: Counter::default(),
        }
    }
}

impl Metrics {
    /// A Prometheus registry (prefix `popgw`) over these metrics; counters get `_total`,
    /// units their suffix.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("popgw");
        let counters: [(&str, &str, &Counter); 22] = [
            (
                "refusals_counted",
                "Refusals beyond their identity's allowance per second, counted into a summary \
                 audit record instead of written one by one",
                &self.refusals_counted,
            ),
            (
                "subject_locks",
                "Citizens locked for every client after NO_MATCH answers from several clients \
                 (an operator should look: an enumeration, or a citizen being locked out)",
                &self.subject_locks,
            ),
            (
                "audit_witness_alarms",
                "Audit witness alarms raised: messages in this node's subject it did not send, \
                 acknowledged messages lost",
                &self.witness_alarms,
            ),
            (
                "audit_witness_shipped",
                "Batch heads the audit witness acknowledged",
                &self.witness_shipped,
            ),
            (
                "audit_index_records",
                "Records newly written to the central audit index by this process",
                &self.index_records,
            ),
            (
                "tls_handshakes",
                "Completed mutual-TLS handshakes",
                &self.handshakes_ok,
            ),
            (
                "audit_failures",
                "Requests refused because the audit log could not be written",
                &self.audit_failures,
            ),
            (
                "shed",
                "Requests shed because limits.max_in_flight were running",
                &self.shed,
            ),
            (
                "upstream_calls",
                "Calls sent to the remote registry, retries included",
                &self.upstream_calls,
            ),
            (
                "upstream_failures",
                "Calls to the remote registry that failed",
                &self.upstream_failures,
            ),
            (
                "upstream_retries",
                "Retries after an UNAVAILABLE answer",
                &self.upstream_retries,
            ),
            (
                "upstream_short_circuited",
                "Calls refused at once by the open breaker",
                &self.upstream_short_circuited,
            ),
            (
                "upstream_breaker_opened",
                "Times the breaker opened",
                &self.breaker_opened,
            ),
            (
                "cache_hits",
                "Answers from a fresh cache entry",
                &self.cache_hits,
            ),
            (
                "cache_misses",
                "Requests that loaded their record",
                &self.cache_misses,
            ),
            (
                "cache_coalesced",
                "Requests that waited for another one's load",
                &self.cache_coalesced,
            ),
            (
                "cache_stale",
                "Stale entries served while the registry was down",
                &self.cache_stale,
            ),
            ("cache_loads", "Loads from the registry", &self.cache_loads),
            (
                "cache_evictions",
                "Entries evicted for size or age",
                &self.cache_evictions,
            ),
            (
                "cache_invalidations",
                "Entries invalidated by the change feed",
                &self.cache_invalidations,
            ),
            (
                "cache_drops",
                "Times the whole cache was dropped",
                &self.cache_drops,
            ),
            (
                "registry_lookups",
                "Lookups answered by popgw registry serve",
                &self.registry_lookups,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "tls_handshake_refusals",
            "Refused handshakes by reason",
            self.handshake_refusals.clone(),
        );
        r.register(
            "connections_open",
            "Established connections open",
            self.connections_open.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by RPC, procedure, client and gRPC code",
            self.requests_by.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Request latency to its audit record, by RPC",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        r.register(
            "audit_queue_depth",
            "Records waiting for the audit writer",
            self.audit_queue.clone(),
        );
        r.register(
            "audit_batch_records",
            "Records per audit write",
            self.audit_batch_records.clone(),
        );
        r.register_with_unit(
            "audit_write_duration",
            "One audit write including its fsync",
            Unit::Seconds,
            self.audit_write_seconds.clone(),
        );
        r.register_with_unit(
            "audit_index_commit_duration",
            "One commit of witness messages into the central audit index",
            Unit::Seconds,
            self.index_commit_seconds.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "One call to the remote registry",
            Unit::Seconds,
            self.upstream_seconds.clone(),
        );
        r.register(
            "upstream_breaker_state",
            "Breaker state: 0 closed, 1 open, 2 half-open",
            self.breaker_state.clone(),
        );
        r.register(
            "audit_witness_lag_records",
            "Records written but not yet acknowledged by the audit witness",
            self.witness_lag.clone(),
        );
        r.register(
            "audit_witness_alarm",
            "1 while an audit witness alarm stands (see /readyz and AuditLog.Head for why)",
            self.witness_alarm.clone(),
        );
        r.register(
            "audit_witness_up",
            "1 while the audit witness is connected",
            self.witness_up.clone(),
        );
        r.register(
            "limits_national_up",
            "1 while the national try budget (a NATS key-value bucket shared by the \
             deployment's nodes) answers; 0 while this node counts tries alone",
            self.national_up.clone(),
        );
        r.register(
            "audit_index_pending_messages",
            "Witness messages the central index's consumer has not yet acknowledged",
            self.index_pending.clone(),
        );
        r.register(
            "audit_index_up",
            "1 while the central index's indexer is connected to the stream and the database",
            self.index_up.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the record cache",
            self.cache_entries.clone(),
        );
        r.register_with_unit(
            "cache_size",
            "Weighed size of the record cache",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register_with_unit(
            "certificate_expiry",
            "Time until each loaded certificate expires",
            Unit::Seconds,
            self.certificate_expiry.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads by result",
            self.reloads.clone(),
        );
        r
    }
}

/// Installs the global tracing subscriber (RUST_LOG, default `info`), writing to stderr:
/// human-readable lines, or with `json` one JSON object per line carrying the fields of
/// the request span it happened in (see [`request_span`]). Colours only on a terminal
/// (and not with `NO_COLOR`): a log file or journald gets plain text, and the request
/// span's fields, formatted on every request, skip the escape codes.
pub fn init(json: bool) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The span of one request to popgw's services: its RPC at once; its request id and
/// client when the request begins (`Gateway::begin`), its outcome and code when it ends
/// (`Gateway::finish`, only when debug logging is on: after them come only the debug
/// "answered" line and the audit log's errors, which say what failed). Every event logged while
/// serving it carries them. Never a personal field.
pub fn request_span(rpc: &'static str) -> tracing::Span {
    tracing::info_span!(
        "request",
        rpc,
        request_id = tracing::field::Empty,
        client = tracing::field::Empty,
        outcome = tracing::field::Empty,
        code = tracing::field::Empty,
    )
}

/// The canonical upper-case name of a gRPC code, as written in the audit log.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
