//! Configuration: one TOML file (`popgw serve --config FILE`), every setting with a
//! default so that `popgw serve` alone runs the embedded development set-up.
//! See config/popgw.example.toml for every setting, documented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod checks;
mod load;
mod resolve;

pub use resolve::RegistrySource;

/// The gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address `popgw serve` binds (the library never binds: see `server::serve`).
    pub listen: SocketAddr,
    /// This node's id, written into every audit record (one audit chain per node).
    pub node_id: String,
    /// At shutdown, how long open connections may take to finish their requests
    /// before they are closed (milliseconds).
    pub shutdown_grace_ms: u64,
    /// Where generated state lives: demo population, demo policy, keys, audit log.
    pub data_dir: PathBuf,
    /// Mutual TLS.
    pub tls: TlsSettings,
    /// The policy file; default `<data_dir>/policy.toml`, written from the demo policy on
    /// first start when absent.
    pub policy_file: Option<PathBuf>,
    /// A catalogue file replacing the built-in 25 procedures (see config/procedures.toml).
    pub catalogue_file: Option<PathBuf>,
    /// The upstream registry.
    pub registry: RegistrySettings,
    /// The record cache in front of it.
    pub cache: CacheSettings,
    /// Limits against enumeration and floods.
    pub limits: LimitsSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// The admin HTTP listener (metrics, health).
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Set only by [`Config::zero_config`] (`popgw serve` without `--config`): the one
    /// mode in which demo material (development PKI, demo policy, demo population) is
    /// created when missing. With a configuration file, a missing file is an error.
    #[serde(skip)]
    pub zero_config: bool,
}

pub use crate::tls::TlsSettings;

impl TlsSettings {
    /// Zero-config: checks the development CA's revocation list (`crl.pem` beside
    /// `client_ca`, which `popgw certs revoke` writes) when there is one.
    pub fn check_dev_crl(&mut self) {
        let crl = self.client_ca.with_file_name("crl.pem");
        if crl.exists() {
            self.client_crls = vec![crl];
        }
    }

    /// The caps on connections before any request is read.
    pub fn connection_limits(&self) -> crate::tls::ConnectionLimits {
        crate::tls::ConnectionLimits {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_handshakes: self.max_handshakes,
            max_connections: self.max_connections,
            max_per_identity: self.max_connections_per_identity,
        }
    }
}

/// Registry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Where the records come from.
    pub kind: RegistryKind,
    /// disk: the store folder; default `<data_dir>/registry`.
    pub path: Option<PathBuf>,
    /// postgres: the database URL (`postgres://user@host:port/db`), libpq-style: `sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`, `passfile` ([`crate::link::postgres`]).
    pub url: Option<String>,
    /// embedded: the JSON Lines population; default `<data_dir>/population.jsonl`.
    pub population_file: Option<PathBuf>,
    /// Zero-config only: create the demo population when there is none.
    pub create_demo: bool,
    /// Size of the demo population.
    pub demo_count: u64,
    /// Seed of the demo population.
    pub demo_seed: u64,
    /// Every registry call gives up after this many milliseconds: "could not check"
    /// (the cap; a caller's shorter grpc-timeout binds first). Also `upstream_timeout_ms`.
    #[serde(alias = "upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// postgres: connections in the pool.
    pub pool_size: usize,
    /// remote: `https://HOST:PORT` of the registry.
    pub endpoint: Option<String>,
    /// remote: CA the registry's certificate must chain to; default `tls.client_ca`.
    pub ca: Option<PathBuf>,
    /// remote: the gateway's client certificate towards the registry.
    pub cert: Option<PathBuf>,
    /// remote: its key.
    pub key: Option<PathBuf>,
    /// remote: the URI SAN the registry's certificate must carry (`spiffe://…`), besides
    /// chaining to `ca` and naming the endpoint's host. Strongly recommended: without it
    /// any server certificate of `ca` for that host is taken for the registry.
    pub identity: Option<String>,
    /// remote: HTTP/2 connections in the pool.
    pub connections: usize,
    /// remote: retries of an UNAVAILABLE answer (inside the caller's deadline).
    pub retries: u32,
    /// remote: failures in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// remote: how long the breaker stays open before one probe call.
    pub breaker_open_ms: u64,
}

/// Where the gateway's records come from (`registry.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// The on-disk store (`path`; the default).
    #[default]
    Disk,
    /// A PostgreSQL database (`url`).
    Postgres,
    /// `popgw registry serve`, or another PopulationRegistry, over mutual TLS
    /// (`endpoint`).
    Remote,
    /// In memory, from a JSON Lines file (`population_file`; for tests).
    Embedded,
}

impl RegistryKind {
    /// The word in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Disk => "disk",
            RegistryKind::Postgres => "postgres",
            RegistryKind::Remote => "remote",
            RegistryKind::Embedded => "embedded",
        }
    }
}

impl std::fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits against enumeration and floods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Requests per second of a client whose policy entry sets no `rate_per_second`.
    pub client_rate_per_second: u32,
    /// Its burst.
    pub client_burst: u32,
    /// NO_MATCH answers of one client about one citizen (however many it sends at once) within the
    /// window; beyond, that client's verifications of the citizen are refused.
    pub client_failures: u32,
    /// NO_MATCH answers about one citizen from all clients within the window that lock
    /// the citizen's verification for everyone (only when two clients or more failed).
    pub subject_failures: u32,
    /// The window, in seconds.
    pub subject_window_secs: u64,
    /// How long a citizen stays locked, in seconds.
    pub subject_lockout_secs: u64,
    /// Items in one VerifyIdentityStream call at most.
    pub max_stream_items: u64,
    /// Requests running at once; beyond, a request is shed at once (UNAVAILABLE with a
    /// RetryInfo, recorded) instead of queueing.
    pub max_in_flight: usize,
    /// Operator calls (AuditLog.Query and Watch) running at once.
    pub max_operator_calls: usize,
    /// Citizens' access reports running at once (a pool of their own).
    pub max_report_calls: usize,
    /// Refusals per client identity and second recorded one by one (a tenth of it for
    /// an identity the policy does not know); beyond, counted into one summary record.
    pub refusals_recorded_per_second: u32,
    /// A unary request's message not complete within this many milliseconds is refused
    /// (DEADLINE_EXCEEDED): popgw's requests are a few hundred bytes.
    pub body_timeout_ms: u64,
    /// Bytes of unfinished request messages one client may hold in flight (a sixteenth
    /// for a client missing from the policy); beyond, RESOURCE_EXHAUSTED. A call waiting
    /// for its message is charged `service::early::WAITING_CALL_BYTES` besides its bytes.
    pub unfinished_body_bytes_per_client: usize,
    /// Bytes of unfinished request messages in flight in all.
    pub unfinished_body_bytes: usize,
    /// Results of one AuditLog.Query at most (its `limit` is capped to this).
    pub max_query_results: usize,
    /// Where the tries about a citizen are counted: `off` (each node alone) or `nats`
    /// (one national count, in a key-value bucket on `[audit.witness]`'s link).
    pub national: NationalKind,
    /// The national count's key-value bucket.
    pub national_bucket: String,
    /// How long a verdict waits on the national count before this node's own count
    /// stands (the documented fallback).
    pub national_timeout_ms: u64,
}

/// Where the tries about a citizen are counted (`limits.national`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NationalKind {
    /// Each node counts alone.
    #[default]
    Off,
    /// One count for the deployment, in NATS JetStream's key-value store.
    Nats,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            client_rate_per_second: 1_000,
            client_burst: 2_000,
            client_failures: 5,
            subject_failures: 10,
            subject_window_secs: 3_600,
            subject_lockout_secs: 3_600,
            max_stream_items: 10_000,
            max_in_flight: 4_096,
            max_operator_calls: 8,
            max_report_calls: 4,
            refusals_recorded_per_second: 20,
            body_timeout_ms: 5_000,
            unfinished_body_bytes_per_client: 16 << 20,
            unfinished_body_bytes: 64 << 20,
            max_query_results: 100_000,
            national: NationalKind::Off,
            national_bucket: "POPGW_TRIES".into(),
            national_timeout_ms: 250,
        }
    }
}

/// Record-cache settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Cache records in front of the registry (any kind).
    pub enabled: bool,
    /// Byte budget of the cached records.
    pub max_bytes: u64,
    /// Lifetime of a cached record.
    pub ttl_ms: u64,
    /// Lifetime of a cached "no such citizen".
    pub negative_ttl_ms: u64,
    /// An entry not confirmed current (by its load or the change feed) for this long is
    /// not served: the bound on serving a changed record while the feed is cut.
    pub max_staleness_ms: u64,
    /// While the registry cannot answer, serve a record past its freshness (marked
    /// `stale` in the audit log). Off by default.
    pub serve_stale_on_error: bool,
    /// ...but never one loaded longer ago than this.
    pub stale_max_age_ms: u64,
}

/// The admin HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Serve it at all.
    pub enabled: bool,
    /// Where (plain HTTP: keep it on loopback or a management network).
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: "127.0.0.1:9464".parse().expect("static address"),
        }
    }
}

/// Logging settings (the level comes from `RUST_LOG`, default `info`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// "human" (default) or "json" (one JSON object per line, for Loki or ELK).
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "human".into(),
        }
    }
}

/// Audit-log settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Folder of the segments and checkpoints; default `<data_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// `fsync` (default: an answer leaves only after its record is on disk) or
    /// `buffered` (written, not fsynced: a power loss can lose the last records).
    pub durability: crate::audit::Durability,
    /// Rotate a segment past this size.
    pub segment_max_bytes: u64,
    /// Rotate a segment older than this.
    pub segment_max_age_secs: u64,
    /// Sign a checkpoint every this many records...
    pub checkpoint_every_records: u64,
    /// ...or this often, whichever comes first (and at shutdown).
    pub checkpoint_interval_secs: u64,
    /// Remove whole segments older than this many days (0 = keep everything).
    pub retention_days: u64,
    /// Records waiting for the writer at most; beyond, requests are refused
    /// (UNAVAILABLE, nothing disclosed) instead of queueing without bound.
    pub queue_capacity: usize,
    /// While records arrive concurrently, the writer waits this many microseconds before
    /// each group commit so that one write, fdatasync and seal serve more records (a lone
    /// caller never waits: only when this batch or the last held more than one record;
    /// 0 = never wait; at most 10000).
    pub commit_delay_us: u64,
    /// A record not durable within this many milliseconds (a hung disk) fails the log
    /// closed: UNAVAILABLE and health NOT_SERVING until restart.
    pub append_timeout_ms: u64,
    /// ed25519 checkpoint signing key; default `<data_dir>/audit-signing.key`, created on first start.
    pub signing_key_file: Option<PathBuf>,
    /// HMAC key of the subject pseudonyms; default `<data_dir>/audit-pseudonym.key`, created on first start.
    pub pseudonym_key_file: Option<PathBuf>,
    /// The checkpoint key's public half, pinned (hex): the gateway refuses to start with
    /// another signing key, and `popgw audit verify --config` verifies against it.
    pub public_key: Option<String>,
    /// Where every sealed batch's head is witnessed (`[audit.witness]`; none by default).
    pub witness: Option<WitnessSettings>,
    /// The central audit index (`[audit.index]`; none by default): AuditLog.Query and
    /// CitizenAccess.AccessReport answer from it, across every node.
    pub index: Option<IndexSettings>,
}

/// `[audit.index]`: the central audit index in PostgreSQL, fed from the witness stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSettings {
    /// `postgres://user@host/db`, libpq-style like `registry.url`
    /// ([`crate::link::postgres`]).
    pub url: String,
    /// The durable JetStream consumer the indexer reads with: one per index database.
    #[serde(default = "default_index_consumer")]
    pub consumer: String,
    /// Also run the indexer inside this gateway (reads `[audit.witness]`'s stream); in
    /// production one `popgw audit index` process per index database is simpler.
    #[serde(default)]
    pub run: bool,
    /// Months of records the index keeps (whole months dropped; 0 = keep all).
    #[serde(default = "default_retain_months")]
    pub retain_months: u32,
    /// Every index call ends within this.
    #[serde(default = "default_index_timeout_ms")]
    pub timeout_ms: u64,
    /// Each node's checkpoint public key (hex, its `audit.public_key`), for the indexer
    /// this gateway runs (`run = true`): with any, only records under a seal made by their
    /// node's key are indexed, and nodes without a key are refused.
    #[serde(default)]
    pub node_keys: std::collections::BTreeMap<String, String>,
}

fn default_index_consumer() -> String {
    "popgw-index".into()
}

fn default_retain_months() -> u32 {
    24
}

fn default_index_timeout_ms() -> u64 {
    10_000
}

/// `[audit.witness]`: the NATS JetStream stream that witnesses this node's log.
#[derive(Debug, Clone, Deserialize)]
pub struct WitnessSettings {
    /// "nats" (the only kind).
    pub kind: String,
    /// The connection (`url`, `ca_file`, `cert_file`, `key_file`, `user`,
    /// `password_file`, `nkey_seed_file`, `credentials_file`, `inbox_prefix`,
    /// `allow_plaintext`), its keys in this table.
    #[serde(flatten)]
    pub link: crate::link::nats::NatsLink,
    /// Keys no field takes, their values dropped unread (reported as problems:
    /// `flatten` rules out `deny_unknown_fields`).
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    /// The JetStream stream (created when missing; subjects `popgw.audit.>`).
    #[serde(default = "default_witness_stream")]
    pub stream: String,
    /// Its replicas: 1 on one server, 3 in production.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Ship each batch's record lines too, not only its head (default true): the
    /// central index (`[audit.index]`, `popgw audit index`) reads them from the stream.
    #[serde(default = "yes")]
    pub records: bool,
    /// Refuse to start when the witness cannot be reached to compare the folder with
    /// (default true). With false the node starts, not ready, and compares as soon as
    /// it reaches the witness.
    #[serde(default = "yes")]
    pub required_at_start: bool,
}

fn yes() -> bool {
    true
}

fn default_witness_stream() -> String {
    "POPGW_AUDIT".into()
}

fn one() -> usize {
    1
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50051".parse().expect("static address"),
            node_id: "node-1".into(),
            shutdown_grace_ms: 10_000,
            data_dir: "data".into(),
            tls: TlsSettings::default(),
            policy_file: None,
            catalogue_file: None,
            registry: RegistrySettings::default(),
            cache: CacheSettings::default(),
            limits: LimitsSettings::default(),
            audit: AuditSettings::default(),
            admin: AdminSettings::default(),
            log: LogSettings::default(),
            zero_config: false,
        }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            kind: RegistryKind::Disk,
            path: None,
            url: None,
            population_file: None,
            create_demo: true,
            demo_count: 10_000,
            demo_seed: 2022,
            timeout_ms: 1000,
            pool_size: 16,
            endpoint: None,
            ca: None,
            cert: None,
            key: None,
            identity: None,
            connections: 2,
            retries: 2,
            breaker_failures: 5,
            breaker_open_ms: 1000,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            max_bytes: 256 << 20,
            ttl_ms: 300_000,
            negative_ttl_ms: 30_000,
            max_staleness_ms: 5_000,
            serve_stale_on_error: false,
            stale_max_age_ms: 60_000,
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            dir: None,
            durability: crate::audit::Durability::Fsync,
            segment_max_bytes: 64 << 20,
            segment_max_age_secs: 3600,
            checkpoint_every_records: 1000,
            checkpoint_interval_secs: 10,
            retention_days: 0,
            queue_capacity: 65_536,
            commit_delay_us: 200,
            append_timeout_ms: 5_000,
            signing_key_file: None,
            pseudonym_key_file: None,
            public_key: None,
            witness: None,
            index: None,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, each naming its key.
        problems: Vec<String>,
    },
}

impl Config {
    /// The configuration of `popgw serve` without `--config`: every default, and demo
    /// material created on first start.
    pub fn zero_config() -> Config {
        Config {
            zero_config: true,
            ..Config::default()
        }
    }
    /// A configuration rooted in `dir`: data in `dir/data`, certificates in `dir/certs`
    /// (tests and benchmarks use this with a temporary folder).
    pub fn rooted_at(dir: &Path) -> Config {
        let mut c = Config {
            data_dir: dir.join("data"),
            ..Config::default()
        };
        c.tls.client_ca = dir.join("certs/ca.pem");
        c.tls.cert = dir.join("certs/server.pem");
        c.tls.key = dir.join("certs/server.key");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_url_password_is_never_printed() {
        let source = RegistrySource::Postgres("postgres://popgw:s3cret@db.example/registry".into());
        for shown in [format!("{source}"), format!("{source:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
        }
    }

    #[test]
    fn the_documented_example_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/popgw.example.toml");
        let example = Config::load(&path).unwrap();
        let default = Config::default();
        assert_eq!(format!("{example:?}"), format!("{default:?}"));
    }

    #[test]
    fn the_registry_identity_is_a_uri_and_only_for_remote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[registry]\nkind = \"disk\"\nidentity = \"spiffe://popgw.dev/server/popgw\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("registry.identity: only with kind"), "{e}");
        let mut c = Config::default();
        c.registry.kind = RegistryKind::Remote;
        c.registry.endpoint = Some("https://registry.example:50061".into());
        c.registry.cert = Some("gateway.pem".into());
        c.registry.key = Some("gateway.key".into());
        for bad in ["registry", "://x", "spiffe://", "spiffe://a b"] {
            c.registry.identity = Some(bad.into());
            let p = c.problems();
            assert!(
                p.iter()
                    .any(|p| p.contains("registry.identity") && p.contains("not a URI")),
                "{bad}: {p:?}"
            );
        }
        c.registry.identity = Some("spiffe://registry.example/registry".into());
        assert!(!c.problems().iter().any(|p| p.contains("registry.identity")));
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "node_id = \"\"\n[registry]\nkind = \"remote\"\nendpoint = \"http://x:1\"\n[audit]\ndurability = \"sometimes\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("registry.endpoint")
                && e.contains("registry.cert")
                && e.contains("durability")
                && e.contains("node_id"),
            "{e}"
        );
        std::fs::write(&path, "[registry]\nkind = \"postgres\"\ntimeout_ms = 0\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("registry.url") && e.contains("registry.timeout_ms"),
            "{e}"
        );
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nshoe_size = 42\n").unwrap();
        assert!(Config::load(&path)
            .unwrap_err()
            .to_string()
            .contains("shoe_size"));
        // Mistakes of different kinds in different sections: all of them at once.
        std::fs::write(
            &path,
            "listen = \"nowhere\"\n[tls]\nhandshake_timeout_ms = \"soon\"\n[cache]\nttl = 5\n[limits]\nsubject_failures = 0\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("listen: ")
                && e.contains("tls.handshake_timeout_ms: ")
                && e.contains("cache.ttl: ")
                && e.contains("limits"),
            "{e}"
        );
    }
}
