//! Change without restart: the server certificate and key, the client CA, the CRLs
//! and the policy are read again on SIGHUP ([`Reloader::reload`], wired by `popgw
//! serve`) and whenever one of the files changes ([`Reloader::watch`], which reads
//! them every second and compares digests: it follows editors that replace a file,
//! symlink swaps such as Kubernetes secrets, and `popgw certs revoke`). On SIGHUP
//! `popgw serve --config FILE` reads the configuration file itself again too
//! ([`Reloader::apply_config`]): what can change live — which certificate, key, CA,
//! CRLs and policy files are used — changes; every other changed key is named in one
//! log line as applied only at restart.
//!
//! Invariants: a new file that does not load is refused with one log line naming it,
//! and the running configuration stays (TLS material and policy are separate parts: a
//! broken policy does not hold back an urgent certificate change, nor the reverse); a
//! part is swapped whole (a handshake or a request sees the old or the new one, never a
//! mix). A new TLS configuration applies to new connections; an open connection keeps
//! its handshake until it closes or reaches the connection max age (one hour).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::policy::{Policy, PolicyError};
use crate::service::Gateway;
use crate::telemetry::ReloadLabels;
use crate::tls::{self, TlsError};

/// How often the watch reads the files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why a part was not reloaded (the running one stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new TLS material does not load.
    #[error("TLS material not reloaded: {0}")]
    Tls(#[from] TlsError),
    /// The new policy does not load.
    #[error("policy not reloaded: {0}")]
    Policy(#[from] PolicyError),
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The TLS material changed and was applied.
    pub tls: bool,
    /// The policy changed and was applied.
    pub policy: bool,
}

/// Reloads the parts of a running gateway that may change without restart.
pub struct Reloader {
    config: ArcSwap<Config>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    live: Arc<tls::LiveConnections>,
    gateway: Arc<Gateway>,
    /// Digests of the files as last seen (applied or refused), per part.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    tls: Option<[u8; 32]>,
    policy: Option<[u8; 32]>,
}

impl Reloader {
    /// A reloader for the gateway `config` started, whose TLS configuration is `tls`.
    /// The files as they are now count as applied.
    pub fn new(
        config: Config,
        tls: Arc<ArcSwap<rustls::ServerConfig>>,
        live: Arc<tls::LiveConnections>,
        gateway: Arc<Gateway>,
    ) -> Reloader {
        let reloader = Reloader {
            config: ArcSwap::from_pointee(config),
            tls,
            live,
            gateway,
            seen: Mutex::default(),
        };
        let seen = Seen {
            tls: Some(digest(&reloader.tls_files())),
            policy: Some(digest(&[reloader.config.load().policy_path()])),
        };
        *reloader.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        reloader
    }

    fn tls_files(&self) -> Vec<PathBuf> {
        let config = self.config.load();
        let t = &config.tls;
        let mut files = vec![t.cert.clone(), t.key.clone(), t.client_ca.clone()];
        files.extend(t.client_crls.iter().cloned());
        files
    }

    /// Reads every file again and applies each part whose files changed since last
    /// seen (`force`: whether or not they did — SIGHUP). Each refusal is logged,
    /// counted and returned; the other part is still applied.
    pub fn reload(&self, force: bool) -> (Reloaded, Vec<ReloadError>) {
        let config = self.config.load_full();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Reloaded::default();
        let mut errors = Vec::new();

        let tls_digest = digest(&self.tls_files());
        if force || seen.tls != Some(tls_digest) {
            seen.tls = Some(tls_digest);
            match tls::server_config(&config.tls)
                .and_then(|c| tls::client_verifier(&config.tls).map(|v| (c, v)))
            {
                Ok((server, verifier)) => {
                    self.tls.store(server);
                    // Open connections of a certificate now revoked (or no longer of
                    // the CA) end now, not at their age.
                    let closed = self.live.close_unverified(verifier.as_ref());
                    if closed > 0 {
                        tracing::warn!(closed, "closed connections whose client certificate the reloaded CA or CRLs refuse");
                    }
                    certificate_expiry(&self.gateway.metrics, &config);
                    done.tls = true;
                }
                Err(e) => errors.push(ReloadError::Tls(e)),
            }
        }
        let policy_path = config.policy_path();
        let policy_digest = digest(std::slice::from_ref(&policy_path));
        if force || seen.policy != Some(policy_digest) {
            seen.policy = Some(policy_digest);
            match Policy::load(&policy_path) {
                Ok(policy) => {
                    // Open connections of a client no longer in the policy end now.
                    let closed = self
                        .live
                        .close_where(|identity, _| !identity.is_some_and(|id| policy.knows(id)));
                    if closed > 0 {
                        tracing::warn!(
                            closed,
                            "closed connections of clients the reloaded policy no longer lists"
                        );
                    }
                    self.gateway.replace_policy(policy);
                    done.policy = true;
                }
                Err(e) => errors.push(ReloadError::Policy(e)),
            }
        }
        drop(seen);

        let metrics = &self.gateway.metrics;
        if done.tls || done.policy {
            metrics
                .reloads
                .get_or_create(&ReloadLabels { result: "ok" })
                .inc();
            tracing::info!(
                tls = done.tls,
                policy = done.policy,
                "configuration reloaded"
            );
        }
        for e in &errors {
            metrics
                .reloads
                .get_or_create(&ReloadLabels { result: "refused" })
                .inc();
            tracing::error!(error = %e, "reload refused; the running configuration stays");
        }
        (done, errors)
    }

    /// Takes a configuration file read again (SIGHUP with `serve --config`): the
    /// files it names for TLS and the policy are used from now on (read at once, as by
    /// [`Reloader::reload`]); every other key that differs from the running
    /// configuration is returned, and logged as applied only at restart.
    pub fn apply_config(&self, new: Config) -> (Reloaded, Vec<ReloadError>, Vec<&'static str>) {
        let old = self.config.load_full();
        let at_restart = restart_only_changes(&old, &new);
        let mut running = (*old).clone();
        running.tls.cert = new.tls.cert;
        running.tls.key = new.tls.key;
        running.tls.client_ca = new.tls.client_ca;
        running.tls.client_crls = new.tls.client_crls;
        running.policy_file = new.policy_file;
        self.config.store(Arc::new(running));
        if !at_restart.is_empty() {
            tracing::warn!(
                keys = at_restart.join(", "),
                "configuration file read again: these changes apply only at restart"
            );
        }
        let (done, errors) = self.reload(true);
        (done, errors, at_restart)
    }

    /// Reloads whenever a file changes, until `stopping` turns true.
    pub async fn watch(self: Arc<Self>, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let reloader = self.clone();
            // File reads and certificate parsing off the async threads.
            let _ = tokio::task::spawn_blocking(move || reloader.reload(false)).await;
        }
    }
}

/// The keys of `new` that differ from `old` and cannot change in a running gateway.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differ(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    // TLS settings but the files, which change live.
    let settings = |c: &Config| {
        let mut t = c.tls.clone();
        t.cert = PathBuf::new();
        t.key = PathBuf::new();
        t.client_ca = PathBuf::new();
        t.client_crls = Vec::new();
        t
    };
    let mut keys = Vec::new();
    for (key, changed) in [
        ("listen", differ(&old.listen, &new.listen)),
        ("node_id", differ(&old.node_id, &new.node_id)),
        (
            "shutdown_grace_ms",
            differ(&old.shutdown_grace_ms, &new.shutdown_grace_ms),
        ),
        ("data_dir", differ(&old.data_dir, &new.data_dir)),
        (
            "catalogue_file",
            differ(&old.catalogue_file, &new.catalogue_file),
        ),
        ("tls", differ(&settings(old), &settings(new))),
        ("registry", differ(&old.registry, &new.registry)),
        ("cache", differ(&old.cache, &new.cache)),
        ("limits", differ(&old.limits, &new.limits)),
        ("audit", differ(&old.audit, &new.audit)),
        ("admin", differ(&old.admin, &new.admin)),
        ("log", differ(&old.log, &new.log)),
    ] {
        if changed {
            keys.push(key);
        }
    }
    keys
}

/// A digest of the files' contents (a missing or unreadable file counts as its error,
/// so that its return is noticed).
fn digest(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in files {
        match std::fs::read(path) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => h.update(format!("error: {}", e.kind()).as_bytes()),
        }
    }
    h.finalize().into()
}

/// Sets `popgw_certificate_expiry_seconds` for the certificates `config` names (at load
/// and at each reload). A file that cannot be read is skipped: loading it fails louder.
pub fn certificate_expiry(metrics: &crate::telemetry::Metrics, config: &Config) {
    let mut named = vec![
        ("server", config.tls.cert.clone()),
        ("client_ca", config.tls.client_ca.clone()),
    ];
    if config.registry.kind == crate::config::RegistryKind::Remote {
        if let Some(cert) = &config.registry.cert {
            named.push(("registry_client", cert.clone()));
        }
    }
    let now = std::time::SystemTime::now();
    for (certificate, path) in named {
        if let Ok(at) = tls::not_after(&path) {
            let left = match at.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            metrics
                .certificate_expiry
                .get_or_create(&crate::telemetry::CertificateLabels { certificate })
                .set(left);
        }
    }
}
