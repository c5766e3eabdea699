//! Assembles the gateway from its configuration and serves it on a listener the
//! caller bound (the library never binds a socket: tests use 127.0.0.1:0); and
//! [`serve_registry`], the same for `popgw registry serve`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tonic::transport::Server as TonicServer;

use crate::audit::{self, AuditConfig, AuditLog, Pseudonymizer};
use crate::cache::RecordCache;
use crate::catalogue::{Catalogue, CatalogueError};
use crate::config::{Config, RegistrySource};
use crate::policy::{Policy, PolicyError};
use crate::proto::gateway::audit_log_server::AuditLogServer;
use crate::proto::gateway::citizen_access_server::CitizenAccessServer;
use crate::proto::gateway::identity_gateway_server::IdentityGatewayServer;
use crate::proto::gateway::limits_server::LimitsServer;
use crate::proto::registry::population_registry_server::PopulationRegistryServer;
use crate::proto::registry::CitizenRecord;
use crate::registry::embedded::EmbeddedRegistry;
use crate::registry::remote::RemoteRegistry;
use crate::registry::{self, Invalid, Registry, RegistryError, Store, StoreLocation};
use crate::service::access::CitizenAccessService;
use crate::service::audit_log::AuditLogService;
use crate::service::gateway::GatewayService;
use crate::service::limits::LimitsService;
use crate::service::registry::{follow_head, Faults, RegistryService};
use crate::service::Gateway;
use crate::telemetry::Metrics;
use crate::tls::{self, TlsError};

/// Why the gateway cannot start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Policy file unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Catalogue file unusable.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// Population unusable.
    #[error("population: {0}")]
    Registry(#[from] RegistryError),
    /// Audit log unusable (the gateway does not start without one).
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    /// The central audit index's settings are unusable.
    #[error(transparent)]
    Index(#[from] audit::index::IndexError),
    /// A key file unusable.
    #[error("{0}: {1}")]
    Key(String, std::io::Error),
    /// The witness holds more of this node's chain than its folder, or another chain, or
    /// could not be asked when the configuration requires it.
    #[error("audit witness: {0}")]
    Witness(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The largest request message any service accepts: popgw's requests are a few hundred
/// bytes (a registry batch of 1,000 ids ~16 KB). tonic's default, 4 MiB, lets every
/// stream buffer that much before a handler — or the policy — sees it.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// A tonic server with every HTTP/2 limit set: tonic passes "no limit" for concurrent
/// and reset streams unless told, and one connection opening thousands of streams that
/// never finish their message grew the gateway by ~4 GB per 1,000 (the hardening
/// issue's measurement). Streams per connection, reset floods ("MadeYouReset"), header
/// size, window, keepalive (a dead peer is dropped in 40 s) and connection age (a
/// connection is re-established, and its certificate re-checked, at least hourly).
fn hardened() -> TonicServer {
    TonicServer::builder()
        .max_concurrent_streams(Some(256))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .http2_max_header_list_size(16 << 10)
        .initial_stream_window_size(64 << 10)
        .initial_connection_window_size(1 << 20)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_connection_age(Duration::from_secs(3600))
        .max_connection_age_grace(Duration::from_secs(30))
}

/// What `load` found for the registry, handed to `assemble`.
struct Parts {
    registry: Arc<dyn Registry>,
    examples: Vec<CitizenRecord>,
    population: u64,
    store: Option<Arc<dyn Store>>,
}

/// A loaded gateway, ready to serve.
pub struct Server {
    config: Config,
    gateway: Arc<Gateway>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    live: Arc<tls::LiveConnections>,
    examples: Vec<CitizenRecord>,
    population: u64,
    store: Option<Arc<dyn Store>>,
    admin: Option<TcpListener>,
    reloader: Arc<crate::reload::Reloader>,
    shipper: Option<audit::witness::Shipper>,
    indexer: Option<audit::index::Indexer>,
}

impl Server {
    /// Loads TLS material, policy, catalogue, the registry its configuration names
    /// (the on-disk store by default) and the audit log.
    pub async fn load(config: Config) -> Result<Server, ServeError> {
        // TLS first: a mistyped certificate path is the likeliest mistake and the
        // clearest error, before any store is opened.
        let tls = tls::server_config(&config.tls)?;
        let metrics = Arc::new(Metrics::default());
        crate::reload::certificate_expiry(&metrics, &config);
        let location = match config.registry_source() {
            RegistrySource::Remote(options) => {
                let registry = RemoteRegistry::connect(options, metrics.clone())?;
                let parts = Parts {
                    registry: Arc::new(registry),
                    examples: Vec::new(),
                    population: 0,
                    store: None,
                };
                return Self::assemble(config, tls, parts, metrics).await;
            }
            RegistrySource::Embedded(population) => {
                return Self::load_embedded(config, tls, population, metrics).await
            }
            RegistrySource::Postgres(url) => StoreLocation::Postgres(url),
            RegistrySource::Disk(path) => StoreLocation::Disk(path),
        };
        let store = registry::open_store(&location, &config.store_options()).await?;
        // Examples are printed at start: only ever from the generated demo population.
        let demo = config.zero_config
            && matches!(&location, StoreLocation::Disk(dir) if crate::demo::is_demo_store(dir));
        let examples = if demo {
            store.examples(2).await?
        } else {
            Vec::new()
        };
        let population = store.count().await?;
        let parts = Parts {
            registry: store.clone(),
            examples,
            population,
            store: Some(store),
        };
        Self::assemble(config, tls, parts, metrics).await
    }

    /// A population held in memory, from a JSON Lines file (kind "embedded": tests).
    async fn load_embedded(
        config: Config,
        tls: Arc<rustls::ServerConfig>,
        population: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Server, ServeError> {
        let registry =
            tokio::task::spawn_blocking(move || EmbeddedRegistry::load_jsonl(&population))
                .await
                .map_err(|e| RegistryError::from(Invalid::Task(Arc::new(e))))??;
        let examples = if config.zero_config {
            registry.examples()
        } else {
            Vec::new()
        };
        let population = registry.len() as u64;
        let parts = Parts {
            registry: Arc::new(registry),
            examples,
            population,
            store: None,
        };
        Self::assemble(config, tls, parts, metrics).await
    }

    /// Like [`Server::load`], over another registry (a remote one, or in tests one
    /// that is down).
    pub async fn with_registry(
        config: Config,
        registry: Arc<dyn Registry>,
    ) -> Result<Server, ServeError> {
        let tls = tls::server_config(&config.tls)?;
        let parts = Parts {
            registry,
            examples: Vec::new(),
            population: 0,
            store: None,
        };
        let metrics = Arc::new(Metrics::default());
        crate::reload::certificate_expiry(&metrics, &config);
        Self::assemble(config, tls, parts, metrics).await
    }

    async fn assemble(
        config: Config,
        tls: Arc<rustls::ServerConfig>,
        parts: Parts,
        metrics: Arc<Metrics>,
    ) -> Result<Server, ServeError> {
        let Parts {
            registry,
            examples,
            population,
            store,
        } = parts;
        let policy = Policy::load(&config.policy_path())?;
        let catalogue = match &config.catalogue_file {
            Some(path) => Catalogue::load(path)?,
            None => Catalogue::builtin(),
        };

        // Everything else checked: the folder for keys and the audit log may be made now.
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ServeError::Key(config.data_dir.display().to_string(), e))?;
        let signing_key_path = config.signing_key_path();
        let key_was_in_use = signing_key_path.exists();
        let key = audit::load_or_create_signing_key(&signing_key_path)
            .map_err(|e| ServeError::Key(signing_key_path.display().to_string(), e))?;
        if let Some(pinned) = &config.audit.public_key {
            let have = hex::encode(key.verifying_key().to_bytes());
            if !pinned.eq_ignore_ascii_case(&have) {
                return Err(ServeError::Audit(audit::AuditError::KeyMismatch(format!(
                    "{}: its public key {have} is not audit.public_key {pinned}",
                    signing_key_path.display()
                ))));
            }
        }
        let pseudonym_path = config.pseudonym_key_path();
        let pseudonyms = Pseudonymizer::open_for_log(&pseudonym_path, &config.audit_dir())?;
        let a = &config.audit;
        let mut audit_config = AuditConfig::new(config.audit_dir(), config.node_id.clone());
        audit_config.durability = a.durability;
        audit_config.segment_max_bytes = a.segment_max_bytes;
        audit_config.segment_max_age = Duration::from_secs(a.segment_max_age_secs);
        audit_config.checkpoint_every_records = a.checkpoint_every_records;
        audit_config.checkpoint_interval = Duration::from_secs(a.checkpoint_interval_secs);
        audit_config.queue_capacity = a.queue_capacity;
        audit_config.commit_delay = Duration::from_micros(a.commit_delay_us);
        audit_config.append_timeout = Duration::from_millis(a.append_timeout_ms);
        audit_config.metrics = metrics.clone();
        audit_config.expect_existing = key_was_in_use;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight));
        audit_config.requests_running = Some(audit::RequestsRunning::new(
            in_flight.clone(),
            config.limits.max_in_flight,
        ));
        audit_config.retention =
            (a.retention_days > 0).then(|| Duration::from_secs(a.retention_days * 86_400));
        let verifying_key = key.verifying_key();
        let audit = tokio::task::spawn_blocking(move || AuditLog::open(audit_config, key))
            .await
            .map_err(|e| audit::AuditError::Open(e.to_string()))??;

        let shipper = config.witness_config().map(|w| {
            audit::witness::Shipper::new(w, audit.clone(), verifying_key, metrics.clone())
        });
        if let (Some(shipper), Some(settings)) = (&shipper, &config.audit.witness) {
            start_check(&config, &audit, &verifying_key, shipper, settings, &metrics).await?;
        }
        let index = match config.index_config() {
            Some(c) => Some(Arc::new(audit::index::AuditIndex::lazy(&c)?)),
            None => None,
        };
        let indexer = config
            .feed_config()
            .zip(index.clone())
            .map(|(mut feed, index)| {
                // This node's own records are indexed under its own key.
                feed.node_keys
                    .entry(config.node_id.clone())
                    .or_insert(verifying_key);
                audit::index::Indexer::new(index, feed, metrics.clone())
            });
        let cache = config
            .cache_options()
            .map(|options| Arc::new(RecordCache::new(registry.clone(), options, metrics.clone())));
        let limits = config.limit_options();
        let gateway = Arc::new(Gateway {
            admission: crate::service::Admission::new(policy, catalogue, limits.clone()),
            subjects: crate::limits::SubjectGuard::new(limits.clone()),
            national: config.national_config().map(|national| {
                crate::limits::national::NationalBudget::start(national, limits, metrics.clone())
            }),
            max_stream_items: config.limits.max_stream_items,
            in_flight,
            in_flight_max: config.limits.max_in_flight,
            body_budget: Default::default(),
            refusals: crate::service::refusals::Refusals::new(
                config.limits.refusals_recorded_per_second,
            ),
            report_calls: Arc::new(tokio::sync::Semaphore::new(config.limits.max_report_calls)),
            verify_calls: Arc::new(tokio::sync::Semaphore::new(1)),
            operator_calls: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_operator_calls,
            )),
            max_query_results: config.limits.max_query_results,
            lookups: crate::service::lookup::Lookups::new(
                registry,
                cache,
                Duration::from_millis(config.registry.timeout_ms),
            ),
            audit,
            pseudonyms,
            witnessed: shipper.as_ref().map(|s| s.status()),
            index,
            metrics,
            health: tonic_health::server::HealthReporter::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        let tls = Arc::new(ArcSwap::new(tls));
        let live = Arc::new(tls::LiveConnections::default());
        let reloader = Arc::new(crate::reload::Reloader::new(
            config.clone(),
            tls.clone(),
            live.clone(),
            gateway.clone(),
        ));
        Ok(Server {
            config,
            gateway,
            tls,
            live,
            examples,
            population,
            store,
            admin: None,
            reloader,
            shipper,
            indexer,
        })
    }

    /// What reloads certificates, CRLs and policy (`popgw serve` calls it on SIGHUP;
    /// [`Server::serve`] also runs its file watch).
    pub fn reloader(&self) -> Arc<crate::reload::Reloader> {
        self.reloader.clone()
    }

    /// Also serves the admin HTTP routes ([`crate::admin`]) on `listener`, until shutdown.
    pub fn with_admin(mut self, listener: TcpListener) -> Server {
        self.admin = Some(listener);
        self
    }

    /// Two living citizens of the population, for the first-start message.
    pub fn examples(&self) -> &[CitizenRecord] {
        &self.examples
    }

    /// Number of citizens in the registry.
    pub fn population(&self) -> u64 {
        self.population
    }

    /// The shared state (tests read the counters and the audit log through it).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` resolves, then drains and closes the audit log (which
    /// signs a final checkpoint).
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.gateway.health.clone()),
        );
        if self.gateway.audit.is_failed() {
            self.gateway.set_not_serving().await;
        } else {
            self.gateway.set_serving().await;
        }
        // Reflection, v1 and v1alpha (grpcio-reflection and many tools speak only
        // v1alpha): the gateway's own services (not the registry's, whose messages it
        // still describes), answered only to identities the policy lists.
        let reflection_builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            for name in crate::service::SERVICE_NAMES {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let reflection_error = |e: tonic_reflection::server::Error| {
            ServeError::Key("reflection".into(), std::io::Error::other(e))
        };
        let gateway = self.gateway.clone();
        let listed_only = move |request: tonic::Request<()>| {
            let identity =
                tls::peer_identity(&request).map_err(crate::error::GatewayError::from)?;
            if gateway.admission.knows(&identity) {
                Ok(request)
            } else {
                Err(crate::error::GatewayError::from(crate::policy::Denied::UnknownClient).into())
            }
        };
        let reflection = tonic::service::interceptor::InterceptedService::new(
            reflection_builder().build_v1().map_err(reflection_error)?,
            listed_only.clone(),
        );
        let reflection_v1alpha = tonic::service::interceptor::InterceptedService::new(
            reflection_builder()
                .build_v1alpha()
                .map_err(reflection_error)?,
            listed_only,
        );

        let incoming = tls::incoming(
            listener,
            self.tls.clone(),
            self.config.tls.connection_limits(),
            self.gateway.metrics.clone(),
            self.live.clone(),
        );
        // The audit log can also fail between requests (a checkpoint or retention write on
        // its timer): health follows it within a second, not only at the next request.
        let watched = self.gateway.clone();
        let health_watch = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if watched.audit.is_failed() {
                    watched.set_not_serving().await;
                    return;
                }
            }
        });
        // A store re-imported under the running gateway is picked up within a second.
        let refresher = self.store.clone().map(|store| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Err(e) = store.refresh().await {
                        tracing::warn!(error = %e, "registry store: cannot pick up a new import");
                    }
                }
            })
        });
        // Refusals counted beyond their allowance are summarised once their second is over.
        let refusals = {
            let gw = self.gateway.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    gw.flush_refusals(chrono::Utc::now().timestamp()).await;
                }
            })
        };
        // Sealed batches are witnessed off the answer's path.
        let shipper = self.shipper.take().map(|s| tokio::spawn(s.run()));
        // The central index, when this gateway also feeds it (`[audit.index] run`).
        let indexer = self
            .indexer
            .take()
            .map(|i| tokio::spawn(i.run(futures::future::pending())));
        // Certificates, CRLs and policy are reloaded when their files change.
        let watch = tokio::spawn(
            self.reloader
                .clone()
                .watch(self.gateway.stopping.subscribe()),
        );
        // The cache follows the registry's change feed until shutdown.
        let follower = self
            .gateway
            .lookups
            .cache()
            .cloned()
            .map(|cache| tokio::spawn(cache.follow(self.gateway.stopping.subscribe())));
        // The admin routes answer until the audit log is closed (`/readyz` says "shutting
        // down" while connections drain), then stop with the process.
        let admin = self.admin.take().map(|listener| {
            tokio::spawn(crate::admin::serve(
                listener,
                self.gateway.clone(),
                std::future::pending(),
            ))
        });
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = hardened()
            .layer(crate::service::early::EarlyRefusals::new(
                self.gateway.clone(),
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(
                IdentityGatewayServer::new(GatewayService::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                AuditLogServer::new(AuditLogService::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                CitizenAccessServer::new(CitizenAccessService::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                LimitsServer::new(LimitsService::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                // End long-lived streams first, or graceful shutdown would wait for them.
                self.gateway.stopping.send_replace(true);
                let _ = draining_tx.send(());
            });
        // Graceful shutdown waits for every connection to close, and a client that reads
        // nothing never lets its last stream finish: past the grace period, stop waiting.
        let grace = self.config.shutdown_grace();
        let result = tokio::select! {
            result = serving => result,
            _ = async {
                match draining_rx.await {
                    Ok(()) => tokio::time::sleep(grace).await,
                    Err(_) => std::future::pending().await,
                }
            } => {
                tracing::warn!(?grace, "shutdown: connections still open after the grace period; closing them");
                Ok(())
            }
        };
        // Requests whose clients gave up may still be running: let them finish and
        // record themselves before the audit log closes (bounded, so a hung upstream
        // cannot hold the process forever).
        self.gateway.stopping.send_replace(true);
        self.gateway.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.gateway.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.gateway.tasks.len(),
                "shutdown: requests still running after 30 s; closing the audit log anyway"
            );
        }
        health_watch.abort();
        watch.abort();
        if let Some(a) = admin {
            a.abort();
        }
        if let Some(r) = refresher {
            r.abort();
        }
        if let Some(f) = follower {
            f.abort();
        }
        refusals.abort();
        self.gateway.flush_refusals(i64::MAX).await;
        self.gateway.audit.shutdown().await;
        if let (Some(task), Some(status)) = (shipper, &self.gateway.witnessed) {
            // Give the witness a moment to take the last heads (a log stopped with
            // everything witnessed verifies with --witness at once).
            let last = self.gateway.audit.last_seq();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while status.acked() < last && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            task.abort();
        }
        if let Some(i) = indexer {
            i.abort();
        }
        Ok(result?)
    }
}

/// Before the node answers anything, its folder is compared with the newest head the
/// witness holds from it: a witness ahead of the folder (a rolled-back or replaced
/// folder) or holding another chain refuses the start, as a wiped folder does. A witness
/// that cannot be reached refuses the start when `required_at_start`; otherwise the node
/// starts not ready for the witness until its shipper has compared.
async fn start_check(
    config: &Config,
    audit: &AuditLog,
    key: &ed25519_dalek::VerifyingKey,
    shipper: &audit::witness::Shipper,
    settings: &crate::config::WitnessSettings,
    metrics: &Metrics,
) -> Result<(), ServeError> {
    let Some(witness) = config.witness_config() else {
        return Ok(());
    };
    let status = shipper.status();
    let checked = tokio::time::timeout(
        Duration::from_secs(10),
        audit::witness::check_at_start(&witness, audit, key),
    )
    .await
    .unwrap_or_else(|_| {
        Err(audit::witness::WitnessError::Nats(
            "read",
            "no answer within 10 s".into(),
        ))
    });
    match checked {
        Ok(found) => {
            for f in &found.foreign {
                status.raise(
                    metrics,
                    format!("a message this node did not send is in its witness subject: {f}"),
                );
            }
            match found.standing {
                audit::witness::Standing::Empty | audit::witness::Standing::Agrees { .. } => {
                    status.set_compared();
                    Ok(())
                }
                refused => {
                    audit.shutdown().await;
                    Err(ServeError::Witness(format!(
                        "{refused}; refusing to start (restore the folder, or investigate)"
                    )))
                }
            }
        }
        Err(e) if settings.required_at_start => {
            audit.shutdown().await;
            Err(ServeError::Witness(format!(
                "{e}; the folder cannot be compared with the witness, so the node does not \
                 start (audit.witness.required_at_start = false starts it not ready until it has compared)"
            )))
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit witness unreachable at start; not ready until the folder has been compared with it");
            Ok(())
        }
    }
}

/// Loads the gateway from `config` and serves it on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    Server::load(config).await?.serve(listener, shutdown).await
}

/// What `popgw registry serve` needs besides its store and listener.
pub struct RegistryServeOptions {
    /// Mutual TLS: the same `[tls]` section as the gateway's.
    pub tls: crate::config::TlsSettings,
    /// The client identities (URI SANs) served; everyone else is refused.
    pub allow: std::collections::HashSet<String>,
    /// Faults to inject (none by default).
    pub faults: Arc<Faults>,
    /// Counters (lookups answered).
    pub metrics: Arc<Metrics>,
}

/// Serves `store` as `popgw.registry.v1.PopulationRegistry` (plus `grpc.health.v1`) over
/// mutual TLS on `listener` until `shutdown`; live `WatchChanges` streams end first.
pub async fn serve_registry(
    listener: TcpListener,
    store: Arc<dyn Store>,
    options: RegistryServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = tls::server_config(&options.tls)?;
    let incoming = tls::incoming(
        listener,
        Arc::new(ArcSwap::new(tls)),
        options.tls.connection_limits(),
        options.metrics.clone(),
        Default::default(),
    );
    let versions = store.versions().await?;
    let (heads_tx, heads_rx) = tokio::sync::watch::channel(versions.head);
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(follow_head(store.clone(), heads_tx, stopping_rx.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PopulationRegistryServer<RegistryService>>()
        .await;
    let service = RegistryService::new(
        store,
        options.allow,
        options.faults,
        heads_rx,
        stopping_rx,
        options.metrics,
    );
    // The registry's requests are a few hundred bytes, a batch of 1,000 ids ~16 KB.
    let result = hardened()
        .add_service(health_service)
        .add_service(
            PopulationRegistryServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            let _ = stopping_tx.send(true);
        })
        .await;
    follower.abort();
    Ok(result?)
}
