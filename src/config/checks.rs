//! What a configuration must satisfy: its values ([`Config::problems`]), and the files
//! it names ([`Config::file_problems`]) — every problem at once, each naming its key.

use std::path::Path;

use super::{Config, NationalKind, RegistryKind, RegistrySource};
use crate::audit::parse_public_key;

/// A PostgreSQL URL that parses, whose password file, CA, certificate and key files
/// exist and parse (the error never holds the password).
fn check_pg_link(url: &str) -> Result<(), crate::link::postgres::LinkError> {
    crate::link::postgres::PgLink::parse(url)?.client_config()?;
    Ok(())
}

impl Config {
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
}
