//! Configuration: one TOML file (`popgw serve --config FILE`), every setting with a
//! default so that `popgw serve` alone runs the embedded development set-up.
//! See config/popgw.example.toml for every setting, documented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

/// A PostgreSQL URL that parses, whose password file, CA, certificate and key files
/// exist and parse (the error never holds the password).
fn check_pg_link(url: &str) -> Result<(), crate::link::postgres::LinkError> {
    crate::link::postgres::PgLink::parse(url)?.client_config()?;
    Ok(())
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

/// Where the records come from, resolved: the `[registry]` keys of its kind, with their
/// defaults applied ([`Config::registry_source`]). Code that opens, prepares or names
/// the registry matches on this, so a kind's data travels with it: no `Option` of
/// another kind's key to unwrap.
#[derive(Debug, Clone)]
pub enum RegistrySource {
    /// The on-disk store in this folder.
    Disk(PathBuf),
    /// A PostgreSQL database (the URL may hold a password: see [`RegistrySource`]'s
    /// `Display`, which redacts it).
    Postgres(String),
    /// `popgw registry serve` over mutual TLS.
    Remote(crate::registry::remote::RemoteOptions),
    /// In memory, from this JSON Lines file.
    Embedded(PathBuf),
}

impl std::fmt::Display for RegistrySource {
    /// Where the records come from, as `serve` prints it (a URL's password redacted).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistrySource::Disk(path) | RegistrySource::Embedded(path) => {
                write!(f, "{}", path.display())
            }
            RegistrySource::Postgres(url) => f.write_str(&crate::link::postgres::redact(url)),
            RegistrySource::Remote(options) => f.write_str(&options.endpoint),
        }
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
    /// for a client missing from the policy); beyond, RESOURCE_EXHAUSTED.
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

/// A checkpoint public key given as 64 hex digits.
pub fn parse_public_key(hex_key: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim()).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
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
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |problems: Vec<String>| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let (config, mut problems) = Self::parse(&text);
        let Some(config) = config else {
            return Err(invalid(problems));
        };
        problems.extend(config.problems());
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(config)
    }

    /// Parses a configuration, section by section, so that one mistake does not hide
    /// the next: every problem found, each named by its key's path.
    fn parse(text: &str) -> (Option<Config>, Vec<String>) {
        /// Deserializes `table` key by key, naming each bad key; the good ones are kept.
        fn keyed<T: serde::de::DeserializeOwned + Default>(
            table: toml::Table,
            prefix: &str,
            problems: &mut Vec<String>,
        ) -> T {
            let mut good = toml::Table::new();
            for (key, value) in table {
                let mut one = toml::Table::new();
                one.insert(key.clone(), value.clone());
                match toml::Value::Table(one).try_into::<T>() {
                    Ok(_) => {
                        good.insert(key, value);
                    }
                    Err(e) => problems.push(format!("{prefix}{key}: {}", e.message())),
                }
            }
            toml::Value::Table(good).try_into().unwrap_or_default()
        }
        fn section<T: serde::de::DeserializeOwned + Default>(
            table: &mut toml::Table,
            name: &str,
            problems: &mut Vec<String>,
        ) -> T {
            match table.remove(name) {
                None => T::default(),
                Some(toml::Value::Table(inner)) => keyed(inner, &format!("{name}."), problems),
                Some(_) => {
                    problems.push(format!("{name}: must be a [{name}] section"));
                    T::default()
                }
            }
        }
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return (None, vec![e.to_string()]),
        };
        let mut problems = Vec::new();
        let tls = section(&mut table, "tls", &mut problems);
        let registry = section(&mut table, "registry", &mut problems);
        let cache = section(&mut table, "cache", &mut problems);
        let limits = section(&mut table, "limits", &mut problems);
        let audit = section(&mut table, "audit", &mut problems);
        let admin = section(&mut table, "admin", &mut problems);
        let log = section(&mut table, "log", &mut problems);
        let top: Config = keyed(table, "", &mut problems);
        let config = Config {
            tls,
            registry,
            cache,
            limits,
            audit,
            admin,
            log,
            ..top
        };
        (Some(config), problems)
    }

    /// Every semantic problem of this configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(w) = &self.audit.witness {
            if w.kind != "nats" {
                p.push(format!("audit.witness.kind: {:?} is not \"nats\"", w.kind));
            }
            for key in w.unknown.keys() {
                let hint = match key.as_str() {
                    "password" | "token" | "nkey" | "seed" | "nkey_seed" => {
                        " (secrets are read from files: password_file, nkey_seed_file or \
                         credentials_file)"
                    }
                    _ => "",
                };
                p.push(format!("audit.witness.{key}: unknown field{hint}"));
            }
            p.extend(w.link.problems("audit.witness"));
            let token = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !token(&w.stream) {
                p.push("audit.witness.stream: letters, digits, - and _".into());
            }
            if !(1..=5).contains(&w.replicas) {
                p.push("audit.witness.replicas: 1 to 5".into());
            }
            if !token(&self.node_id) {
                p.push(
                    "node_id: letters, digits, - and _ only with a witness (it names the subject)"
                        .into(),
                );
            }
        }
        if self.limits.national == NationalKind::Nats {
            if self.audit.witness.is_none() {
                p.push(
                    "limits.national: \"nats\" counts on [audit.witness]'s link; configure it"
                        .into(),
                );
            }
            let b = &self.limits.national_bucket;
            if b.is_empty()
                || !b
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push("limits.national_bucket: letters, digits, - and _".into());
            }
            if self.limits.national_timeout_ms == 0 {
                p.push("limits.national_timeout_ms: at least 1".into());
            }
        }
        if let Some(i) = &self.audit.index {
            if !i.url.starts_with("postgres://") && !i.url.starts_with("postgresql://") {
                p.push("audit.index.url: a postgres:// URL".into());
            } else if let Err(e) = check_pg_link(&i.url) {
                p.push(format!("audit.index.url: {e}"));
            }
            if i.consumer.is_empty()
                || !i
                    .consumer
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push("audit.index.consumer: letters, digits, - and _".into());
            }
            if i.run && self.audit.witness.is_none() {
                p.push(
                    "audit.index.run: the indexer reads [audit.witness]'s stream; configure it"
                        .into(),
                );
            }
            if i.run && self.audit.witness.as_ref().is_some_and(|w| !w.records) {
                p.push(
                    "audit.index.run: [audit.witness] records = false ships no records to index"
                        .into(),
                );
            }
            if i.timeout_ms == 0 {
                p.push("audit.index.timeout_ms: at least 1".into());
            }
            for (node, key) in &i.node_keys {
                if parse_public_key(key).is_none() {
                    p.push(format!(
                        "audit.index.node_keys.{node}: 64 hex digits of an ed25519 public key"
                    ));
                }
            }
        }
        if let Some(key) = &self.audit.public_key {
            if key.len() != 64 || hex::decode(key).is_err() {
                p.push("audit.public_key: 64 hex digits (the content of audit-signing.pub)".into());
            }
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            p.push(format!(
                "log.format: {:?} is neither \"human\" nor \"json\"",
                self.log.format
            ));
        }
        if self.admin.enabled && self.admin.listen == self.listen && self.listen.port() != 0 {
            p.push("admin.listen: the same address as listen".into());
        }
        if let Some(identity) = &self.registry.identity {
            if self.registry.kind != RegistryKind::Remote {
                p.push(
                    "registry.identity: only with kind \"remote\" (the registry's URI SAN)".into(),
                );
            }
            let uri = identity.split_once("://");
            if !uri.is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !rest.is_empty()
            }) || !identity.chars().all(|c| c.is_ascii_graphic())
            {
                p.push(format!(
                    "registry.identity: {:?} is not a URI (spiffe://domain/path)",
                    identity.escape_debug().to_string()
                ));
            }
        }
        match self.registry.kind {
            RegistryKind::Disk | RegistryKind::Embedded => {}
            RegistryKind::Remote => {
                let endpoint = self.registry.endpoint.as_deref().unwrap_or_default();
                if !endpoint.starts_with("https://") {
                    p.push(
                        "registry.endpoint: kind \"remote\" needs an https://HOST:PORT address"
                            .into(),
                    );
                }
                if self.registry.cert.is_none() || self.registry.key.is_none() {
                    p.push("registry.cert and registry.key: kind \"remote\" needs the gateway's client certificate".into());
                }
                if self.registry.connections == 0 {
                    p.push("registry.connections must be at least 1".into());
                }
            }
            RegistryKind::Postgres => {
                let url = self.registry.url.as_deref().unwrap_or_default();
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    p.push("registry.url: kind \"postgres\" needs a postgres:// URL".into());
                } else if let Err(e) = check_pg_link(url) {
                    p.push(format!("registry.url: {e}"));
                }
            }
        }
        if self.registry.timeout_ms == 0 || self.registry.timeout_ms > 60_000 {
            p.push("registry.timeout_ms must be between 1 and 60000".into());
        }
        let l = &self.limits;
        if l.client_rate_per_second == 0
            || l.client_burst == 0
            || l.client_failures == 0
            || l.subject_failures == 0
            || l.subject_window_secs == 0
            || l.subject_lockout_secs == 0
            || l.max_stream_items == 0
            || l.max_in_flight == 0
            || l.max_operator_calls == 0
            || l.max_report_calls == 0
            || l.body_timeout_ms == 0
            || l.unfinished_body_bytes_per_client == 0
            || l.unfinished_body_bytes == 0
            || l.max_query_results == 0
        {
            p.push("limits: every setting must be at least 1".into());
        }
        if l.subject_failures <= l.client_failures {
            p.push(
                "limits.subject_failures must exceed limits.client_failures (one client alone \
                 must never lock a citizen for everyone)"
                    .into(),
            );
        }
        let c = &self.cache;
        if c.enabled {
            if c.max_bytes < 1 << 20 {
                p.push("cache.max_bytes must be at least 1048576 (1 MiB)".into());
            }
            if c.ttl_ms == 0 || c.negative_ttl_ms == 0 || c.max_staleness_ms == 0 {
                p.push("cache.ttl_ms, cache.negative_ttl_ms and cache.max_staleness_ms must be at least 1".into());
            }
            if c.serve_stale_on_error && c.stale_max_age_ms < c.ttl_ms.min(c.max_staleness_ms) {
                p.push("cache.stale_max_age_ms must not be below cache.ttl_ms or cache.max_staleness_ms: a stale entry is older than a fresh one".into());
            }
        }
        if self.audit.commit_delay_us > 10_000 {
            p.push("audit.commit_delay_us: at most 10000 (10 ms)".into());
        }
        if self.audit.queue_capacity == 0 || self.audit.append_timeout_ms == 0 {
            p.push("audit.queue_capacity and audit.append_timeout_ms must be at least 1".into());
        }
        if self.tls.max_connections == 0
            || self.tls.max_handshakes == 0
            || self.tls.max_connections_per_identity == 0
            || self.tls.handshake_timeout_ms == 0
        {
            p.push("tls.max_connections, tls.max_handshakes and tls.handshake_timeout_ms must be at least 1".into());
        }
        if self.node_id.is_empty() || self.node_id.chars().any(|c| c.is_control()) {
            p.push("node_id must be a non-empty printable name".into());
        }
        p
    }

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

    /// What `serve` would refuse in the files this configuration names, each read (never
    /// created): the TLS certificate, key, client CA and CRLs (and that they make a
    /// server configuration — a key of another certificate is refused), the policy, the
    /// catalogue, and what the registry's kind needs. `check-config` and `serve --config`
    /// report these with the file's other problems (exit 64) before anything is bound or
    /// written; with the node's keys and audit folder ([`Config::node_folder`]), which only
    /// `popgw init` makes. Zero-config (`serve` without a file) creates its demo material
    /// and keys instead.
    pub fn file_problems(&self) -> Vec<String> {
        let mut p = self.input_problems();
        if !self.zero_config {
            p.extend(self.node_folder().missing());
        }
        p
    }

    /// [`Config::file_problems`] but the node's own keys and audit folder: what `popgw
    /// init` checks before it makes them.
    pub fn input_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = crate::tls::server_config(&self.tls) {
            p.push(format!("tls: {e}"));
        }
        if let Err(e) = crate::policy::Policy::load(&self.policy_path()) {
            p.push(format!("policy_file: {e}"));
        }
        if let Some(path) = &self.catalogue_file {
            if let Err(e) = crate::catalogue::Catalogue::load(path) {
                p.push(format!("catalogue_file: {e}"));
            }
        }
        let readable = |key: &str, path: &Path, p: &mut Vec<String>| {
            if let Err(e) = std::fs::metadata(path) {
                p.push(format!("{key}: {}: {e}", path.display()));
            }
        };
        match self.registry_source() {
            RegistrySource::Disk(path) => readable("registry.path", &path.join("CURRENT"), &mut p),
            RegistrySource::Embedded(path) => readable("registry.population_file", &path, &mut p),
            RegistrySource::Remote(remote) => {
                for (key, path) in [
                    ("registry.ca", &remote.ca),
                    ("registry.cert", &remote.cert),
                    ("registry.key", &remote.key),
                ] {
                    readable(key, path, &mut p);
                }
            }
            RegistrySource::Postgres(_) => {}
        }
        p
    }

    /// The policy file in use.
    pub fn policy_path(&self) -> PathBuf {
        self.policy_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("policy.toml"))
    }
    /// The population file in use.
    pub fn population_path(&self) -> PathBuf {
        self.registry
            .population_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("population.jsonl"))
    }
    /// The on-disk registry folder in use.
    pub fn registry_path(&self) -> PathBuf {
        self.registry
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("registry"))
    }
    /// How the registry store is opened.
    pub fn store_options(&self) -> crate::registry::StoreOptions {
        crate::registry::StoreOptions {
            timeout: Duration::from_millis(self.registry.timeout_ms),
            pool_size: self.registry.pool_size,
            ..Default::default()
        }
    }
    /// Where the records come from: `registry.kind` and that kind's keys, defaults
    /// applied.
    pub fn registry_source(&self) -> RegistrySource {
        match self.registry.kind {
            RegistryKind::Disk => RegistrySource::Disk(self.registry_path()),
            RegistryKind::Postgres => {
                RegistrySource::Postgres(self.registry.url.clone().unwrap_or_default())
            }
            RegistryKind::Remote => RegistrySource::Remote(self.remote_options()),
            RegistryKind::Embedded => RegistrySource::Embedded(self.population_path()),
        }
    }

    /// How the remote registry is reached (kind "remote").
    fn remote_options(&self) -> crate::registry::remote::RemoteOptions {
        let r = &self.registry;
        crate::registry::remote::RemoteOptions {
            endpoint: r.endpoint.clone().unwrap_or_default(),
            ca: r.ca.clone().unwrap_or_else(|| self.tls.client_ca.clone()),
            cert: r.cert.clone().unwrap_or_default(),
            key: r.key.clone().unwrap_or_default(),
            identity: r.identity.clone(),
            connections: r.connections,
            timeout: Duration::from_millis(r.timeout_ms),
            retries: r.retries,
            breaker_failures: r.breaker_failures,
            breaker_open: Duration::from_millis(r.breaker_open_ms),
        }
    }

    /// The limits against enumeration.
    pub fn limit_options(&self) -> crate::limits::LimitOptions {
        let l = &self.limits;
        crate::limits::LimitOptions {
            client_rate_per_second: l.client_rate_per_second,
            client_burst: l.client_burst,
            client_failures: l.client_failures,
            subject_failures: l.subject_failures,
            subject_window: Duration::from_secs(l.subject_window_secs),
            subject_lockout: Duration::from_secs(l.subject_lockout_secs),
            body_timeout: Duration::from_millis(l.body_timeout_ms),
            body_bytes_per_client: l.unfinished_body_bytes_per_client,
            body_bytes_total: l.unfinished_body_bytes,
        }
    }

    /// How the record cache behaves; `None` when it is off.
    pub fn cache_options(&self) -> Option<crate::cache::CacheOptions> {
        let c = &self.cache;
        c.enabled.then(|| crate::cache::CacheOptions {
            max_bytes: c.max_bytes,
            ttl: Duration::from_millis(c.ttl_ms),
            negative_ttl: Duration::from_millis(c.negative_ttl_ms),
            max_staleness: Duration::from_millis(c.max_staleness_ms),
            serve_stale_on_error: c.serve_stale_on_error,
            stale_max_age: Duration::from_millis(c.stale_max_age_ms),
            load_timeout: Duration::from_millis(self.registry.timeout_ms),
        })
    }

    /// The audit witness, when `[audit.witness]` names one.
    pub fn witness_config(&self) -> Option<crate::audit::witness::WitnessConfig> {
        self.audit
            .witness
            .as_ref()
            .map(|w| crate::audit::witness::WitnessConfig {
                link: w.link.clone(),
                stream: w.stream.clone(),
                replicas: w.replicas,
                node: self.node_id.clone(),
                records: w.records,
            })
    }

    /// The national try budget, when `limits.national = "nats"` (on the witness's link).
    pub fn national_config(&self) -> Option<crate::limits::national::NationalConfig> {
        let w = self.audit.witness.as_ref()?;
        (self.limits.national == NationalKind::Nats).then(|| {
            crate::limits::national::NationalConfig {
                link: w.link.clone(),
                bucket: self.limits.national_bucket.clone(),
                timeout: Duration::from_millis(self.limits.national_timeout_ms),
                node: self.node_id.clone(),
            }
        })
    }

    /// The central audit index, when `[audit.index]` names one.
    pub fn index_config(&self) -> Option<crate::audit::index::IndexConfig> {
        self.audit
            .index
            .as_ref()
            .map(|i| crate::audit::index::IndexConfig {
                url: i.url.clone(),
                timeout: Duration::from_millis(i.timeout_ms),
                pool_size: 4,
            })
    }

    /// What the in-gateway indexer reads, when `[audit.index] run = true`.
    pub fn feed_config(&self) -> Option<crate::audit::index::FeedConfig> {
        let (i, w) = (self.audit.index.as_ref()?, self.audit.witness.as_ref()?);
        i.run.then(|| crate::audit::index::FeedConfig {
            link: w.link.clone(),
            stream: w.stream.clone(),
            consumer: i.consumer.clone(),
            retain_months: i.retain_months,
            node_keys: i
                .node_keys
                .iter()
                .filter_map(|(node, key)| Some((node.clone(), parse_public_key(key)?)))
                .collect(),
        })
    }

    /// The audit folder in use.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit"))
    }
    /// The checkpoint signing key in use.
    pub fn signing_key_path(&self) -> PathBuf {
        self.audit
            .signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-signing.key"))
    }
    /// The node's keys and audit folder, which `popgw init` makes once.
    pub fn node_folder(&self) -> crate::audit::NodeFolder {
        crate::audit::NodeFolder {
            signing_key: self.signing_key_path(),
            pseudonym_key: self.pseudonym_key_path(),
            audit_dir: self.audit_dir(),
        }
    }
    /// The pseudonym key in use.
    pub fn pseudonym_key_path(&self) -> PathBuf {
        self.audit
            .pseudonym_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-pseudonym.key"))
    }
    /// How long shutdown waits for open connections.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
