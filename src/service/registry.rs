//! `popgw.registry.v1.PopulationRegistry`: a [`Store`] served over mutual TLS by
//! `popgw registry serve` — the upstream the gateway's remote registry talks to.
//!
//! Deny by default: only the client identities in the allow list are answered
//! (PERMISSION_DENIED otherwise; UNAUTHENTICATED without a usable certificate).
//! Every id is checked before any lookup (INVALID_ARGUMENT names the field, never
//! the value). A store that cannot answer is UNAVAILABLE, never an empty answer.
//!
//! `WatchChanges(from_version)`: every change after `from_version`, oldest first, then
//! live ones. An event without a citizen is a progress mark: "every change up to this
//! version has been sent". One is sent when the replay has caught up, and then every
//! second while nothing changes, so a follower can tell a quiet feed from a dead one.
//! `from_version = 0` means "from now": the first event is a mark with the head. A
//! version below the feed's floor or above its head is OUT_OF_RANGE: drop your cache.
//!
//! [`Faults`] injects latency, errors, garbage and an outage, for tests and benchmarks.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{registry_status, RegistryRefusal};
use crate::proto::registry as pb;
use crate::proto::registry::population_registry_server::PopulationRegistry;
use crate::registry::{Deadline, LookupKey, Store};
use crate::service::caller_timeout;
use crate::telemetry::Metrics;
use crate::tls;
use crate::validation;

/// No lookup runs longer than this, whatever the caller's deadline (the store's own
/// timeout is usually shorter).
const LOOKUP_CAP: Duration = Duration::from_secs(30);
/// At most this many ids in one `BatchGetCitizens`.
pub const MAX_BATCH: usize = 1000;
/// Changes read from the store per step of a watch.
const WATCH_BATCH: usize = 500;
/// Interval of progress marks on a quiet feed, and of the head poll.
const MARK_INTERVAL: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Faults injected into every answer (for tests and benchmarks; all off by default).
#[derive(Debug, Default)]
pub struct Faults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Up to this much more, uniformly.
    pub jitter_ms: u64,
    /// This fraction of calls answers UNAVAILABLE.
    pub error_rate: f64,
    /// This fraction of answers carries records that fail validation.
    pub garbage_rate: f64,
    /// While set, every call answers UNAVAILABLE (SIGUSR1 sets it, SIGUSR2 clears it).
    pub down: AtomicBool,
    /// While set, only `WatchChanges` fails (UNAVAILABLE): the feed is cut, lookups work.
    pub feed_down: AtomicBool,
}

impl Faults {
    /// Whether any fault is configured.
    pub fn any(&self) -> bool {
        self.latency_ms > 0
            || self.jitter_ms > 0
            || self.error_rate > 0.0
            || self.garbage_rate > 0.0
            || self.down.load(Ordering::Relaxed)
            || self.feed_down.load(Ordering::Relaxed)
    }

    fn feed_cut(&self) -> bool {
        self.down.load(Ordering::Relaxed) || self.feed_down.load(Ordering::Relaxed)
    }

    async fn before(&self) -> Result<(), Status> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RegistryRefusal::Injected("registry switched off").into());
        }
        let (delay, fail) = {
            let mut rng = rand::thread_rng();
            let jitter = if self.jitter_ms > 0 {
                rng.gen_range(0..=self.jitter_ms)
            } else {
                0
            };
            (
                self.latency_ms + jitter,
                self.error_rate > 0.0 && rng.gen_bool(self.error_rate.min(1.0)),
            )
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if fail {
            return Err(RegistryRefusal::Injected("injected error").into());
        }
        Ok(())
    }

    fn garbage(&self) -> bool {
        self.garbage_rate > 0.0 && rand::thread_rng().gen_bool(self.garbage_rate.min(1.0))
    }
}

/// Turns a record into one that fails validation but is well-formed protobuf: an
/// impossible date and a sex that contradicts the id.
pub fn spoil(record: &mut pb::CitizenRecord) {
    record.date_of_birth = "1990-02-30".into();
    record.sex = if record.sex == pb::Sex::Male as i32 {
        pb::Sex::Female as i32
    } else {
        pb::Sex::Male as i32
    };
}

/// The PopulationRegistry service.
#[derive(Clone)]
pub struct RegistryService {
    store: Arc<dyn Store>,
    allow: Arc<HashSet<String>>,
    faults: Arc<Faults>,
    heads: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl RegistryService {
    /// Serves `store` to the identities in `allow`; `heads` carries the feed's head
    /// (see [`follow_head`]), `stopping` turns true at shutdown (watches end then).
    pub fn new(
        store: Arc<dyn Store>,
        allow: HashSet<String>,
        faults: Arc<Faults>,
        heads: watch::Receiver<u64>,
        stopping: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RegistryService {
            store,
            allow: Arc::new(allow),
            faults,
            heads,
            stopping,
            metrics,
        }
    }

    /// The deadline of a lookup: the caller's grpc-timeout (the store caps it with its own).
    fn deadline<T>(&self, request: &Request<T>) -> Deadline {
        self.metrics.registry_lookups.inc();
        Deadline::for_caller(caller_timeout(request.metadata()), LOOKUP_CAP)
    }

    fn authorize<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
    ) -> Result<tls::ClientId, Status> {
        let identity = tls::peer_identity(request).map_err(RegistryRefusal::Unauthenticated)?;
        if !self.allow.contains(identity.as_str()) {
            tracing::warn!(client = %identity, rpc, "registry: client not allowed");
            return Err(RegistryRefusal::NotAllowed.into());
        }
        Ok(identity)
    }

    fn respond<T>(
        rpc: &'static str,
        client: &str,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        match &result {
            Ok(_) => tracing::debug!(client, rpc, "registry: answered"),
            Err(s) => tracing::info!(client, rpc, code = ?s.code(), "registry: refused"),
        }
        result.map(Response::new)
    }
}

fn invalid_id(field: &'static str) -> Status {
    RegistryRefusal::Invalid(format!(
        "{field}: must be a 12-digit personal id or a 9-digit old id"
    ))
    .into()
}

/// Keeps `heads` at the store's head, polling it (another process may write the store)
/// and letting the store pick up a new import, until `stopping`.
pub async fn follow_head(
    store: Arc<dyn Store>,
    heads: watch::Sender<u64>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut refreshed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.changed() => return,
        }
        if *stopping.borrow() {
            return;
        }
        if refreshed.elapsed() >= MARK_INTERVAL {
            refreshed = tokio::time::Instant::now();
            if let Err(e) = store.refresh().await {
                tracing::warn!(error = %e, "registry store: cannot pick up a new import");
            }
        }
        if let Ok(v) = store.versions().await {
            heads.send_if_modified(|h| {
                let changed = *h != v.head;
                *h = v.head;
                changed
            });
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PopulationRegistry for RegistryService {
    async fn get_citizen(
        &self,
        request: Request<pb::GetCitizenRequest>,
    ) -> Result<Response<pb::GetCitizenResponse>, Status> {
        const RPC: &str = "GetCitizen";
        let client = self.authorize(RPC, &request)?;
        let result = async {
            let key = LookupKey::parse(&request.get_ref().personal_id)
                .ok_or_else(|| invalid_id("personal_id"))?;
            let deadline = self.deadline(&request);
            self.faults.before().await?;
            let mut citizen = self
                .store
                .citizen(&key, deadline)
                .await
                .map_err(|e| registry_status(&e))?;
            if let Some(c) = citizen.as_mut().filter(|_| self.faults.garbage()) {
                spoil(c);
            }
            Ok(pb::GetCitizenResponse { citizen })
        }
        .await;
        Self::respond(RPC, &client, result)
    }

    async fn batch_get_citizens(
        &self,
        request: Request<pb::BatchGetCitizensRequest>,
    ) -> Result<Response<pb::BatchGetCitizensResponse>, Status> {
        const RPC: &str = "BatchGetCitizens";
        let client = self.authorize(RPC, &request)?;
        let result = async {
            let ids = &request.get_ref().personal_ids;
            if ids.len() > MAX_BATCH {
                return Err(RegistryRefusal::Invalid(format!(
                    "personal_ids: at most {MAX_BATCH} ids per call"
                ))
                .into());
            }
            if let Some(i) = ids
                .iter()
                .position(|id| !matches!(LookupKey::parse(id), Some(LookupKey::PersonalId(_))))
            {
                return Err(RegistryRefusal::Invalid(format!(
                    "personal_ids[{i}]: must be a 12-digit personal id"
                ))
                .into());
            }
            let deadline = self.deadline(&request);
            self.faults.before().await?;
            let mut citizens = self
                .store
                .citizens(ids, deadline)
                .await
                .map_err(|e| registry_status(&e))?;
            if self.faults.garbage() {
                citizens.iter_mut().for_each(spoil);
            }
            Ok(pb::BatchGetCitizensResponse { citizens })
        }
        .await;
        Self::respond(RPC, &client, result)
    }

    async fn get_household(
        &self,
        request: Request<pb::GetHouseholdRequest>,
    ) -> Result<Response<pb::GetHouseholdResponse>, Status> {
        const RPC: &str = "GetHousehold";
        let client = self.authorize(RPC, &request)?;
        let result = async {
            let id = &request.get_ref().household_id;
            validation::check_household_id(id)
                .map_err(|e| RegistryRefusal::Invalid(e.to_string()))?;
            let deadline = self.deadline(&request);
            self.faults.before().await?;
            let household = self
                .store
                .household(id, deadline)
                .await
                .map_err(|e| registry_status(&e))?;
            Ok(pb::GetHouseholdResponse { household })
        }
        .await;
        Self::respond(RPC, &client, result)
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        const RPC: &str = "WatchChanges";
        let client = self.authorize(RPC, &request)?;
        if self.faults.feed_cut() {
            return Err(RegistryRefusal::Injected("change feed switched off").into());
        }
        self.faults.before().await?;
        let from = request.get_ref().from_version;
        let versions = self
            .store
            .versions()
            .await
            .map_err(|e| registry_status(&e))?;
        let start = if from == 0 {
            versions.head
        } else {
            crate::registry::check_resume(from, versions).map_err(|e| registry_status(&e))?;
            from
        };
        tracing::info!(client = %client, "registry: change feed opened");
        let (tx, rx) = mpsc::channel(WATCH_BATCH);
        let store = self.store.clone();
        let mut heads = self.heads.clone();
        let mut stopping = self.stopping.clone();
        let faults = self.faults.clone();
        tokio::spawn(async move {
            let mut last = start;
            let mut marked = None;
            loop {
                if faults.feed_cut() {
                    let _ = tx
                        .send(Err(
                            RegistryRefusal::Injected("change feed switched off").into()
                        ))
                        .await;
                    return;
                }
                let changes = match store.changes_after(last, WATCH_BATCH).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(registry_status(&e))).await;
                        return;
                    }
                };
                let caught_up = changes.len() < WATCH_BATCH;
                for citizen in changes {
                    last = citizen.version;
                    let event = pb::ChangeEvent {
                        version: citizen.version,
                        citizen: Some(citizen),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !caught_up {
                    continue;
                }
                if marked != Some(last) {
                    let mark = pb::ChangeEvent {
                        version: last,
                        citizen: None,
                    };
                    if tx.send(Ok(mark)).await.is_err() {
                        return;
                    }
                    marked = Some(last);
                }
                tokio::select! {
                    _ = heads.changed() => {}
                    _ = tokio::time::sleep(MARK_INTERVAL) => { marked = None; }
                    _ = tx.closed() => return,
                    _ = stopping.changed() => {
                        let _ = tx.send(Err(RegistryRefusal::ShuttingDown.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
