//! The national registry as a remote service: `popgw.registry.v1.PopulationRegistry`
//! over mutual TLS (`popgw registry serve`, or the ministry's own implementation).
//!
//! - A small pool of HTTP/2 connections (one tonic `Channel` is one connection),
//!   connected lazily: the gateway starts while the registry is down and answers
//!   "could not check" until it is back.
//! - Every call runs until its [`Deadline`] (the caller's grpc-timeout less a margin,
//!   capped by `registry.timeout_ms`), which also travels upstream as grpc-timeout.
//! - UNAVAILABLE is retried with jittered exponential backoff, only while the deadline
//!   leaves room for the pause and another try.
//! - A circuit breaker: after `breaker_failures` failures in a row every call fails at
//!   once (UNAVAILABLE, no queueing) for `breaker_open_ms`; then one probe call is let
//!   through, and its success closes the breaker.
//! - Every record the registry sends is checked (`validation::check_record`, and that it
//!   is the record asked for): garbage is an error, never a verdict.
//!
//! Invariant: a failure of any kind is [`RegistryError`], never `Ok(None)`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{
    ChangeStream, Deadline, FeedEvent, Invalid, LookupKey, OutOfRange, Registry, RegistryError,
    Unavailable,
};
use crate::proto::registry as pb;
use crate::proto::registry::population_registry_client::PopulationRegistryClient;
use crate::proto::registry::{CitizenRecord, Household};
use crate::telemetry::Metrics;
use crate::validation;

pub use super::BreakerState;

/// How the gateway reaches the registry.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// `https://HOST:PORT`.
    pub endpoint: String,
    /// CA the registry's certificate must chain to.
    pub ca: PathBuf,
    /// The gateway's client certificate towards the registry.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The URI SAN the registry's certificate must carry (`registry.identity`).
    pub identity: Option<String>,
    /// HTTP/2 connections in the pool.
    pub connections: usize,
    /// Cap of every call (the caller's deadline may be shorter).
    pub timeout: Duration,
    /// Retries of an UNAVAILABLE answer, inside the deadline.
    pub retries: u32,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_open: Duration,
}

/// Opens the registry's connections: TCP, then the TLS handshake with
/// [`crate::tls::registry_client_config`] (chain, host name, pinned identity). A failed
/// handshake is logged with its reason (at most once a second): the calls only see
/// "transport error".
#[derive(Clone)]
struct Connector {
    tls: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
    /// `HOST:PORT`.
    authority: String,
    warned: Arc<Mutex<Option<Instant>>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            match this.tls.connect(this.server_name.clone(), tcp).await {
                Ok(tls) => Ok(hyper_util::rt::TokioIo::new(tls)),
                Err(e) => {
                    let now = Instant::now();
                    let mut warned = this.warned.lock().unwrap_or_else(|p| p.into_inner());
                    if warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                        *warned = Some(now);
                        tracing::warn!(
                            registry = %this.authority,
                            error = %e,
                            "TLS handshake with the registry failed"
                        );
                    }
                    Err(e)
                }
            }
        })
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// Leave to call, from [`Breaker::admit`].
#[derive(Debug)]
pub struct Permit {
    /// Set when this call is the half-open probe (when it was let through).
    probe: Option<Instant>,
}

/// Consecutive-failure circuit breaker with a single probe.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// Opens after `threshold` failures in a row, for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go out now; `Err` holds how long the breaker stays open.
    /// Past the open period one caller becomes the probe (the permit says so). A probe
    /// that ends without a verdict — its caller gave up — hands the slot on at once
    /// ([`Breaker::release`]); one never released is replaced after another open period.
    pub fn admit(&self) -> Result<Permit, Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit { probe: None }),
            State::Open { until } if now < until => Err(until - now),
            State::HalfOpen { since } if now < since + self.open_for => Err(self.open_for),
            _ => {
                *state = State::HalfOpen { since: now };
                Ok(Permit { probe: Some(now) })
            }
        }
    }

    /// A call ended without a verdict on the registry (the caller's own deadline, a
    /// cancellation): if it was the probe, the next caller may probe.
    pub fn release(&self, permit: Permit) {
        if let Some(since) = permit.probe {
            let mut state = self.lock();
            if matches!(*state, State::HalfOpen { since: s } if s == since) {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A call failed; returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } => failures + 1 >= self.threshold,
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        match *state {
            State::Closed { ref mut failures } if !open => *failures += 1,
            _ if open => {
                *state = State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            _ => {}
        }
        open
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } => BreakerState::HalfOpen,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// The registry behind `popgw registry serve` (see the module documentation).
pub struct RemoteRegistry {
    clients: Vec<PopulationRegistryClient<Channel>>,
    next: AtomicUsize,
    breaker: Breaker,
    options: RemoteOptions,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistry")
            .field("endpoint", &self.options.endpoint)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

/// First pause between retries; doubled each time, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(20);
/// An answer this close to the deadline that says CANCELLED is the deadline's doing.
const DEADLINE_SLACK: Duration = Duration::from_millis(10);
/// Messages from the registry are small; a household or a batch a few tens of KB.
const MAX_MESSAGE: usize = 4 << 20;

impl RemoteRegistry {
    /// Prepares the connection pool (connections open on first use). Fails only on
    /// unusable settings or certificate files.
    pub fn connect(
        options: RemoteOptions,
        metrics: Arc<Metrics>,
    ) -> Result<RemoteRegistry, RegistryError> {
        let bad = |what: String| RegistryError::from(Unavailable::Endpoint(what));
        let Some(rest) = options.endpoint.strip_prefix("https://") else {
            return Err(bad(
                "must be https://HOST:PORT (the registry is reached over mutual TLS only)".into(),
            ));
        };
        let authority = rest.trim_end_matches('/');
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| bad("must name a port".into()))?;
        let tls = crate::tls::registry_client_config(
            &options.ca,
            &options.cert,
            &options.key,
            options.identity.as_deref(),
        )
        .map_err(|e| RegistryError::from(Unavailable::ClientCertificate(Arc::new(e))))?;
        let server_name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| bad(format!("{host:?}: {e}")))?;
        match &options.identity {
            Some(identity) => tracing::info!(
                registry = %options.endpoint,
                identity = %identity,
                "the registry's certificate must carry this URI SAN (registry.identity)"
            ),
            None => tracing::warn!(
                registry = %options.endpoint,
                "registry.identity is not set: any certificate of registry.ca naming the host \
                 is taken for the registry; set it to the registry's URI SAN (spiffe://…)"
            ),
        }
        let connector = Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
            authority: authority.to_string(),
            warned: Arc::new(Mutex::new(None)),
        };
        // TLS is ours (the connector: the identity check), so tonic sees plain HTTP/2.
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(options.timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let clients = (0..options.connections.max(1))
            .map(|_| {
                PopulationRegistryClient::new(
                    endpoint.connect_with_connector_lazy(connector.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE)
            })
            .collect();
        Ok(RemoteRegistry {
            clients,
            next: AtomicUsize::new(0),
            breaker: Breaker::new(options.breaker_failures, options.breaker_open),
            options,
            metrics,
        })
    }

    /// The breaker's state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    fn client(&self) -> PopulationRegistryClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// One call under the deadline, the retry policy and the breaker.
    async fn call<T, F, Fut>(
        &self,
        deadline: Deadline,
        rpc: &'static str,
        f: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(PopulationRegistryClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = deadline.capped(self.options.timeout);
        let mut attempt = 0u32;
        loop {
            let permit = match self.breaker.admit() {
                Ok(permit) => permit,
                Err(open) => {
                    self.metrics.upstream_short_circuited.inc();
                    return Err(Unavailable::CircuitOpen {
                        failures: self.options.breaker_failures,
                        open_ms: open.as_millis(),
                    }
                    .into());
                }
            };
            if deadline.passed() {
                self.breaker.release(permit);
                return Err(deadline.exceeded("the registry"));
            }
            self.metrics.upstream_calls.inc();
            let sent = Instant::now();
            let answer =
                tokio::time::timeout_at(deadline.at(), f(self.client(), deadline.remaining()))
                    .await;
            self.metrics
                .upstream_seconds
                .observe(sent.elapsed().as_secs_f64());
            let status = match answer {
                Ok(Ok(value)) => {
                    self.breaker.success();
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer before the deadline"),
            };
            self.metrics.upstream_failures.inc();
            // The registry enforces the grpc-timeout it was sent and answers CANCELLED
            // when it runs out, a hair before our own timer: that is our deadline too.
            let code = match status.code() {
                Code::Cancelled if deadline.remaining() < DEADLINE_SLACK => Code::DeadlineExceeded,
                code => code,
            };
            let verdict = match code {
                // Down, overloaded or broken: the registry is failing.
                Code::Unavailable
                | Code::Internal
                | Code::Unknown
                | Code::DataLoss
                | Code::ResourceExhausted => Some(true),
                // Slow: failing too, unless it was the caller's own short deadline.
                Code::DeadlineExceeded => Some(!deadline.set_by_caller()),
                // Cancelled: says nothing about the registry.
                Code::Cancelled => None,
                // It answered, so it is up: it refused (our identity) or found the
                // request malformed.
                _ => Some(false),
            };
            match verdict {
                Some(true) => {
                    if self.breaker.failure() {
                        self.metrics.breaker_opened.inc();
                        tracing::warn!(
                            rpc,
                            failures = self.options.breaker_failures,
                            "upstream registry: circuit opened"
                        );
                    }
                }
                Some(false) => self.breaker.success(),
                None => self.breaker.release(permit),
            }
            match code {
                Code::Unavailable => {}
                Code::DeadlineExceeded => return Err(deadline.exceeded("the registry")),
                _ => return Err(refused(rpc, code)),
            }
            let pause = backoff(attempt);
            if attempt >= self.options.retries || deadline.remaining() <= pause * 2 {
                return Err(Unavailable::Retried {
                    rpc,
                    tries: attempt + 1,
                }
                .into());
            }
            attempt += 1;
            self.metrics.upstream_retries.inc();
            tokio::time::sleep(pause).await;
        }
    }
}

/// Full jitter: uniformly up to 20 ms × 2^attempt.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE * 2u32.pow(attempt.min(6));
    rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
}

/// An answer other than UNAVAILABLE or DEADLINE_EXCEEDED: never retried, never a
/// verdict. Only the code is kept: the registry's own message is free text that may
/// name the citizen, and it would reach the caller and the audit log.
fn refused(rpc: &'static str, code: Code) -> RegistryError {
    match code {
        Code::Internal | Code::DataLoss | Code::Unknown => Invalid::Failed { rpc, code }.into(),
        Code::OutOfRange => OutOfRange::Remote { rpc }.into(),
        _ => Unavailable::Refused { rpc, code }.into(),
    }
}

/// A record from the registry, checked: well formed, and the one asked for.
fn checked(record: CitizenRecord, key: &LookupKey) -> Result<CitizenRecord, RegistryError> {
    validation::check_record(&record)
        .map_err(|e| RegistryError::from(Invalid::Record { field: e.field }))?;
    let same = match key {
        LookupKey::PersonalId(id) => record.personal_id == *id,
        LookupKey::OldId(id) => record.old_id_number == *id,
    };
    if !same {
        return Err(Invalid::AnotherId.into());
    }
    Ok(record)
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tonic::async_trait]
impl Registry for RemoteRegistry {
    async fn citizen(
        &self,
        key: &LookupKey,
        deadline: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let personal_id = match key {
            LookupKey::PersonalId(id) | LookupKey::OldId(id) => id.clone(),
        };
        let answer = self
            .call(deadline, "GetCitizen", |mut client, timeout| {
                let message = pb::GetCitizenRequest {
                    personal_id: personal_id.clone(),
                };
                async move { client.get_citizen(request(message, timeout)).await }
            })
            .await?;
        answer
            .into_inner()
            .citizen
            .map(|r| checked(r, key))
            .transpose()
    }

    async fn household(
        &self,
        household_id: &str,
        deadline: Deadline,
    ) -> Result<Option<Household>, RegistryError> {
        let answer = self
            .call(deadline, "GetHousehold", |mut client, timeout| {
                let message = pb::GetHouseholdRequest {
                    household_id: household_id.to_string(),
                };
                async move { client.get_household(request(message, timeout)).await }
            })
            .await?;
        let household = answer.into_inner().household;
        if let Some(h) = &household {
            let members_ok = h
                .head
                .iter()
                .chain(h.members.iter())
                .all(|m| validation::parse_declared_id(&m.personal_id, false).is_ok());
            if h.household_id != household_id || !members_ok {
                return Err(Invalid::Household.into());
            }
        }
        Ok(household)
    }

    async fn citizens(
        &self,
        personal_ids: &[String],
        deadline: Deadline,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        let answer = self
            .call(deadline, "BatchGetCitizens", |mut client, timeout| {
                let message = pb::BatchGetCitizensRequest {
                    personal_ids: personal_ids.to_vec(),
                };
                async move { client.batch_get_citizens(request(message, timeout)).await }
            })
            .await?;
        let asked: std::collections::HashSet<&str> =
            personal_ids.iter().map(String::as_str).collect();
        answer
            .into_inner()
            .citizens
            .into_iter()
            .map(|r| {
                if !asked.contains(r.personal_id.as_str()) {
                    return Err(Invalid::NotAsked.into());
                }
                let key = LookupKey::PersonalId(r.personal_id.clone());
                checked(r, &key)
            })
            .collect()
    }

    async fn changes(&self, from: u64) -> Result<ChangeStream, RegistryError> {
        let deadline = Deadline::after(self.options.timeout);
        let stream = self
            .call(deadline, "WatchChanges", |mut client, _| async move {
                // A long-lived stream: no grpc-timeout on it.
                client
                    .watch_changes(pb::WatchChangesRequest { from_version: from })
                    .await
            })
            .await?
            .into_inner();
        // A changed record serves only to invalidate what is cached under its ids; it is
        // never answered from. So it is not checked: a record that fails validation must
        // still invalidate (a later lookup gets it, and "could not check"), and must not
        // stop the feed at its version for good.
        Ok(Box::pin(stream.map(move |item| match item {
            Ok(pb::ChangeEvent {
                citizen: Some(mut record),
                version,
            }) => {
                record.version = version;
                Ok(FeedEvent::Changed(Box::new(record)))
            }
            Ok(pb::ChangeEvent {
                citizen: None,
                version,
            }) => Ok(FeedEvent::Mark(version)),
            Err(status) if status.code() == Code::Unavailable => Err(Unavailable::FeedEnded.into()),
            Err(status) => Err(refused("WatchChanges", status.code())),
        })))
    }

    fn kind(&self) -> &'static str {
        "remote"
    }
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() {
        let b = Breaker::new(3, Duration::from_secs(1));
        assert!(b.admit().is_ok());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "the third failure in a row opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err(), "open: calls fail at once");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.admit().is_ok(), "past the open period one probe goes out");
        assert!(b.admit().is_err(), "and only one");
        assert!(b.failure(), "a failed probe opens it again");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.admit().is_ok());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok() && b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_ends_without_a_verdict_hands_the_slot_on() {
        let b = Breaker::new(1, Duration::from_secs(1));
        assert!(b.failure());
        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = b.admit().unwrap();
        assert!(b.admit().is_err(), "one probe at a time");
        // The probe's caller gave up: the next caller probes at once, not a second later.
        b.release(probe);
        let next = b.admit().unwrap();
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        // Releasing a permit that was not the probe changes nothing.
        b.release(next);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for attempt in 0..10 {
            assert!(backoff(attempt) <= BACKOFF_BASE * 64);
        }
    }
}
