//! A configuration resolved into what the parts of the server take: paths with their
//! defaults under `data_dir`, the registry's source, and each part's options.

use std::path::PathBuf;
use std::time::Duration;

use super::{Config, NationalKind, RegistryKind};
use crate::audit::parse_public_key;

/// Where the records come from, resolved: the `[registry]` keys of its kind, with their
/// defaults applied ([`Config::registry_source`]). Code that opens, prepares or names
/// the registry matches on this, so a kind's data travels with it: no `Option` of
/// another kind's key to unwrap.
#[derive(Clone)]
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

/// As `Display`: a PostgreSQL URL's password never reaches a log through `{:?}` either.
impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            RegistrySource::Disk(_) => "Disk",
            RegistrySource::Postgres(_) => "Postgres",
            RegistrySource::Remote(_) => "Remote",
            RegistrySource::Embedded(_) => "Embedded",
        };
        write!(f, "{kind}({self})")
    }
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

impl Config {
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
