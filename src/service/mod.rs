//! The gRPC services: `popgw.v1.IdentityGateway` (gateway.rs), `popgw.v1.AuditLog`
//! (audit_log.rs), `popgw.v1.CitizenAccess` (access.rs) and `popgw.v1.Limits`
//! (limits.rs), over one shared [`Gateway`] state.
//!
//! Every request that reaches a service goes through [`Gateway::begin`] and
//! [`Gateway::finish`]: the first names the client from its certificate, the second
//! writes exactly one audit record (allowed or refused) and releases the answer only
//! once that record is durable — except a refusal beyond its identity's allowance per
//! second, which disclosed nothing and is counted into that second's summary record
//! ([`refusals`]). Invariant: fail closed on audit — if the record cannot be written
//! the caller gets UNAVAILABLE and nothing else.

pub mod access;
mod admission;
pub mod audit_log;
pub mod early;
pub mod gateway;
pub mod limits;
pub mod lookup;
pub mod refusals;
pub mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::audit::{AuditEntry, AuditLog, Pseudonym, Pseudonymizer};
use crate::cache::CacheOutcome;
use crate::catalogue::{ClaimedProcedure, MatchingRule};
use crate::error::{code_name, GatewayError};
use crate::policy::{Policy, Rpc};

use crate::proto::registry::CitizenRecord;
use crate::registry::{Deadline, LookupKey};
use crate::telemetry::Metrics;
use crate::tls;
pub use admission::{Access, Admission, Permit, ProcedurePermit};
use tracing::Instrument;

/// What every service shares. Outside the crate only what tests and tools read is
/// public — the lookups (through a permit), the audit log, the pseudonymiser and the
/// metrics; the rest is the services' own.
pub struct Gateway {
    /// Who may do what (deny by default), each client's rate, and the catalogue; the
    /// policy swapped whole by a reload ([`Gateway::replace_policy`]).
    pub(crate) admission: Admission,
    /// Bytes of unfinished unary request messages in flight, by client and in all.
    pub(crate) body_budget: Arc<early::BodyBudget>,
    /// The upstream population registry and the record cache in front of it, reachable
    /// only with a [`ProcedurePermit`].
    pub lookups: lookup::Lookups,
    /// Failed verifications per citizen, and locks.
    pub(crate) subjects: crate::limits::SubjectGuard,
    /// The deployment's shared count of them, when `limits.national = "nats"`.
    pub(crate) national: Option<Arc<crate::limits::national::NationalBudget>>,
    /// Items in one VerifyIdentityStream call at most.
    pub(crate) max_stream_items: u64,
    /// Permits of requests running at once (see `detached`).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// Their number.
    pub(crate) in_flight_max: usize,
    /// Operator calls (AuditLog.Query, AuditLog.Watch) running at once.
    pub(crate) operator_calls: Arc<tokio::sync::Semaphore>,
    /// One `AuditLog.Verify` at a time: it reads the whole folder.
    pub(crate) verify_calls: Arc<tokio::sync::Semaphore>,
    /// Permits for citizens' access reports, apart from the operators' (a busy citizen
    /// portal never takes an operator's slot).
    pub(crate) report_calls: Arc<tokio::sync::Semaphore>,
    /// Refusals beyond a rate per identity and second, counted into one summary record.
    pub(crate) refusals: refusals::Refusals,
    /// Results of one AuditLog.Query at most.
    pub(crate) max_query_results: usize,
    /// The tamper-evident audit log.
    pub audit: AuditLog,
    /// Turns personal ids into audit subjects.
    pub pseudonyms: Pseudonymizer,
    /// The newest seq the audit witness acknowledged, when there is one.
    pub(crate) witnessed: Option<Arc<crate::audit::witness::WitnessStatus>>,
    /// The central audit index (`[audit.index]`): AuditLog.Query and the citizen's
    /// access report answer from it, across every node.
    pub(crate) index: Option<Arc<crate::audit::index::AuditIndex>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// grpc.health.v1 status: NOT_SERVING once the audit log has failed, so that load
    /// balancers stop sending requests this node can only refuse.
    pub(crate) health: tonic_health::server::HealthReporter,
    /// Turns true when shutdown begins: long-lived streams (AuditLog.Watch) end then.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// Every request, from start to end wherever it runs (a token while it runs in its
    /// caller's task, a task once handed off); shutdown waits for them before it closes
    /// the audit log.
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

/// What one request has established about itself, answered or refused: who asks,
/// about whom, for which procedure and dossier, and how its record was found.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    /// The id returned to the caller and written to the audit log.
    pub request_id: String,
    /// The client identity, or why there is none.
    pub identity: Result<tls::ClientId, tls::IdentityError>,
    /// The RPC name as the policy knows it.
    pub rpc: Rpc,
    /// When registry calls must have answered (from the caller's grpc-timeout).
    pub deadline: Deadline,
    /// The procedure the request named (known once admitted).
    pub procedure: ClaimedProcedure,
    /// The dossier number's pseudonym.
    pub case_id: Option<Pseudonym>,
    /// The pseudonym of the person asked about.
    pub subject: Option<Pseudonym>,
    /// The name rule of the procedure, once admitted.
    pub rule: Option<MatchingRule>,
    /// What the cache did for the lookup (set by [`Gateway::lookup`], the only way a
    /// handler reaches a citizen record).
    pub cache: CacheOutcome,
}

pub use crate::audit::Outcome;

/// What a successful answer disclosed: the handler's typed result beside the reply,
/// turned by [`Gateway::finish`] into the audit record. A refused request discloses
/// nothing.
#[derive(Debug)]
pub struct Disclosure {
    /// The outcome word.
    pub outcome: Outcome,
    /// Names of the fields disclosed (never values).
    pub fields: Vec<String>,
    /// Pseudonyms of other people whose data the answer disclosed.
    pub related: Vec<Pseudonym>,
    /// What was compared, which NO_MATCH reason applied (never a value).
    pub detail: String,
}

impl Disclosure {
    /// An answer disclosing `fields` about the subject only.
    pub fn of(outcome: Outcome, fields: &[&str]) -> Disclosure {
        Disclosure {
            outcome,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            related: Vec::new(),
            detail: String::new(),
        }
    }
}

/// The caller's grpc-timeout, if it sent one.
pub fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A grpc-timeout header's value (1–8 digits and a unit, H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only: the unit is the last byte (a multi-byte last character would split a
    // character in two — a panic the property test below found).
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Gateway {
    /// Starts a request: assigns its id, names its client and sets its deadline from
    /// the caller's grpc-timeout (`timeout`), capped by the registry's.
    pub fn begin(
        &self,
        rpc: Rpc,
        identity: Result<tls::ClientId, tls::IdentityError>,
        timeout: Option<Duration>,
    ) -> RequestCtx {
        let request_id = new_request_id();
        let span = tracing::Span::current();
        span.record("request_id", request_id.as_str());
        if let Ok(client) = &identity {
            span.record("client", client.as_str());
        }
        RequestCtx {
            started: Instant::now(),
            request_id,
            identity,
            rpc,
            deadline: Deadline::for_caller(timeout, self.lookups.upstream_timeout()),
            procedure: ClaimedProcedure::None,
            case_id: None,
            subject: None,
            rule: None,
            cache: CacheOutcome::None,
        }
    }

    /// The citizen with this key, through the cache when there is one; records in
    /// `ctx` what the cache did. Only an admitted request (a [`ProcedurePermit`]) reaches
    /// the registry. `Err` is "could not check", never "not found".
    pub async fn lookup(
        &self,
        permit: &ProcedurePermit<'_>,
        ctx: &mut RequestCtx,
        key: &LookupKey,
    ) -> Result<Option<Arc<CitizenRecord>>, GatewayError> {
        // What is looked up is recorded under the procedure it was admitted for.
        ctx.procedure = ClaimedProcedure::Known(permit.procedure().code.clone());
        let (result, cache) = self.lookups.citizen(permit, key, ctx.deadline).await;
        ctx.cache = cache;
        result
    }

    /// A household, for a procedure whose profile allows household data and a client
    /// granted it (the permit says both), from the registry — never through a cache, as
    /// households are not cached. `Err` is "could not check".
    pub async fn household_of(
        &self,
        permit: &ProcedurePermit<'_>,
        ctx: &RequestCtx,
        household_id: &str,
    ) -> Result<Option<crate::proto::registry::Household>, GatewayError> {
        self.lookups
            .household(permit, household_id, ctx.deadline)
            .await
    }

    /// A permit for one operator call (Query or Watch), held while it streams; refused
    /// (RESOURCE_EXHAUSTED) when `limits.max_operator_calls` are running.
    pub fn operator_call(&self) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        self.operator_calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::OperatorCalls)
    }

    /// A permit for one access report; refused (RESOURCE_EXHAUSTED) when
    /// `limits.max_report_calls` are running.
    pub fn report_call(&self) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        self.report_calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::ReportCalls)
    }

    /// Writes the summary records of the refusals counted in seconds before `second`
    /// (every second: a task of `Server::serve`; all of them at shutdown).
    pub async fn flush_refusals(&self, second: i64) {
        for summary in self.refusals.flush(second) {
            if let Err(e) = self.audit.append(summary.entry()).await {
                tracing::error!(error = %e, count = summary.count, "audit write failed: a refusal summary is lost");
            }
        }
    }

    /// What the audit witness acknowledged, when there is one.
    pub fn witness_status(&self) -> Option<&Arc<crate::audit::witness::WitnessStatus>> {
        self.witnessed.as_ref()
    }

    /// The audit subject for a personal id.
    pub fn subject(&self, personal_id: &str) -> Pseudonym {
        self.pseudonyms.pseudonym(personal_id)
    }

    /// Ends a request: writes its audit record and returns the answer, or the error
    /// status; UNAVAILABLE (nothing disclosed) if the record cannot be made durable.
    pub async fn finish<T>(
        &self,
        ctx: RequestCtx,
        result: Result<(T, Disclosure), GatewayError>,
    ) -> Result<T, Status> {
        self.metrics.requests.inc();
        let (result, outcome, code, detail, fields, related) = match result {
            Ok((answer, d)) => (
                Ok(answer),
                d.outcome,
                Code::Ok,
                d.detail,
                d.fields,
                d.related,
            ),
            Err(e) => {
                let (code, detail) = (e.code(), e.to_string());
                (
                    Err(e),
                    Outcome::Refused(code),
                    code,
                    detail,
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        let client = match &ctx.identity {
            Ok(id) => id.to_string(),
            Err(e) => format!("unauthenticated: {e}"),
        };
        // Counted once the record is written (or could not be): a request refused because
        // its record could not be written counts as that refusal, not as its answer.
        let counted = self.counted(&ctx);
        // A refusal beyond its identity's allowance this second is counted into the
        // second's summary record instead of written one by one (see `refusals`).
        if let Err(e) = &result {
            if refusals::aggregable(e) {
                let known = matches!(&ctx.identity, Ok(id) if self.admission.knows(id));
                let second = chrono::Utc::now().timestamp();
                let recording = self.refusals.admit(&client, known, ctx.rpc, code, second);
                if recording == refusals::Recording::Count {
                    self.metrics.refusals_counted.inc();
                    self.count(counted, code);
                    let request_id = ctx.request_id;
                    return result.map_err(|e| with_request_id(e.into(), &request_id));
                }
            }
        }
        // The span's outcome and code are for the events logged from here on: the debug
        // "answered" line, and an audit failure's error (which names them itself). The fmt
        // layer formats a field when it is recorded, whether or not an event ever shows it
        // (1.7 % of an answer's instructions, `benches/instructions.sh`), so they are
        // recorded only when that debug line is on.
        let outcome_name = outcome.as_str();
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = tracing::Span::current();
            span.record("outcome", outcome_name);
            span.record("code", code_name(code));
        }
        let entry = AuditEntry {
            request_id: ctx.request_id.clone(),
            client: client.clone(),
            procedure: ctx.procedure,
            case_id: ctx.case_id,
            subject: ctx.subject,
            related,
            fields,
            code: Some(code),
            rule: ctx.rule,
            cache: Some(ctx.cache),
            latency_us: ctx.started.elapsed().as_micros() as u64,
            detail,
            ..AuditEntry::new(ctx.rpc, outcome)
        };
        let request_id = ctx.request_id;
        match self.audit.append(entry).await {
            Ok(_) => {}
            Err(e) => {
                self.metrics.audit_failures.inc();
                if self.audit.is_failed() {
                    self.set_not_serving().await;
                }
                tracing::error!(
                    %request_id,
                    rpc = ctx.rpc.name(),
                    outcome = outcome_name,
                    code = code_name(code),
                    error = %e,
                    "audit write failed; request refused"
                );
                let status: tonic::Status = GatewayError::Audit(e).into();
                self.count(counted, status.code());
                return Err(with_request_id(status, &request_id));
            }
        }
        self.count(counted, code);
        tracing::debug!(%request_id, %client, rpc = ctx.rpc.name(), outcome = outcome.as_str(), "answered");
        result.map_err(|e| with_request_id(e.into(), &request_id))
    }
}

/// A finished request's metric labels, taken before its parts move into its record.
struct Counted {
    rpc: &'static str,
    procedure: String,
    client: String,
    started: Instant,
}

impl Gateway {
    /// What a finished request is counted by (RPC, procedure, client) and since when.
    /// Labels are bounded: an identity the policy does not list is `unknown`, a
    /// procedure the catalogue does not know is empty.
    fn counted(&self, ctx: &RequestCtx) -> Counted {
        let client = match &ctx.identity {
            Ok(id) if self.admission.knows(id) => id.to_string(),
            Ok(_) => "unknown".to_string(),
            Err(_) => "unauthenticated".to_string(),
        };
        Counted {
            rpc: ctx.rpc.name(),
            procedure: ctx.procedure.known().unwrap_or_default().to_string(),
            client,
            started: ctx.started,
        }
    }

    /// Counts a finished request under the code it was answered with, and its latency up
    /// to its audit record.
    fn count(&self, counted: Counted, code: Code) {
        self.metrics
            .requests_by
            .get_or_create(&crate::telemetry::RequestLabels {
                rpc: counted.rpc,
                procedure: counted.procedure,
                client: counted.client,
                code: code_name(code),
            })
            .inc();
        self.metrics
            .request_seconds
            .get_or_create(&crate::telemetry::RpcLabels { rpc: counted.rpc })
            .observe(counted.started.elapsed().as_secs_f64());
    }

    /// Replaces the policy (a reload): the next request is admitted by the new one; a
    /// client whose rate did not change keeps its bucket as it was.
    pub fn replace_policy(&self, policy: Policy) {
        self.admission.replace_policy(policy);
    }

    /// Marks every service NOT_SERVING (the audit log can no longer be written).
    pub async fn set_not_serving(&self) {
        self.set_health(tonic_health::ServingStatus::NotServing)
            .await;
    }

    /// Marks every service SERVING.
    pub async fn set_serving(&self) {
        self.set_health(tonic_health::ServingStatus::Serving).await;
    }

    async fn set_health(&self, status: tonic_health::ServingStatus) {
        // "" is the server as a whole.
        for name in SERVICE_NAMES.iter().chain([&""]) {
            self.health.set_service_status(*name, status).await;
        }
    }
}

/// Runs a request to its end, so that a client that gives up (cancels, times out,
/// disconnects) cannot cut it short between the decision and its audit record: every
/// request that reached a service leaves exactly one record. The request runs in the
/// caller's own task — the one hyper gives the call's stream ([`RunToEnd`]: no second
/// task per request); only if that task drops it unfinished — the caller gave up, or the
/// early layer did at the caller's grpc-timeout — is the rest handed to a task of its
/// own. Either way it is tracked, so shutdown waits for it before closing the audit log.
///
/// At most `limits.max_in_flight` requests run at once: beyond, the request is shed
/// at once — UNAVAILABLE with a RetryInfo, recorded like any refusal — instead of
/// queueing without bound behind a slow registry or disk.
///
/// The request comes boxed: its future (the handler, its lookups and its audit append)
/// runs to kilobytes, and a box moves as one pointer (`memmove` was the largest single
/// item of the request path's profile) and can be handed to a task half-run.
pub(crate) async fn detached<T: Send + 'static>(
    gw: &Gateway,
    rpc: Rpc,
    identity: Result<tls::ClientId, tls::IdentityError>,
    personal_id: String,
    request: futures::future::BoxFuture<'static, Result<T, Status>>,
) -> Result<T, Status> {
    // The record of a request that never ran its course: found by a query on the
    // citizen's id, like any refused attempt.
    let unrun = |identity| {
        let mut ctx = gw.begin(rpc, identity, None);
        if let Ok(id) = crate::validation::parse_declared_id(&personal_id, true) {
            ctx.subject = Some(gw.subject(id.digits()));
        }
        ctx
    };
    let Ok(permit) = gw.in_flight.clone().try_acquire_owned() else {
        gw.metrics.shed.inc();
        let ctx = unrun(identity);
        return gw
            .finish::<T>(ctx, Err(GatewayError::Overloaded(gw.in_flight_max)))
            .await;
    };
    // Counted until this function returns — the panic path's record included; if the
    // caller drops this future, `RunToEnd` (dropped first: declared after) hands the rest
    // to a tracked task before the token goes.
    let _tracked = gw.tasks.token();
    let running = RunToEnd {
        request: Some(request),
        permit: Some(permit),
        tasks: gw.tasks.clone(),
        span: tracing::Span::current(),
    };
    match running.await {
        Ok(answer) => answer,
        Err(_panic) => {
            // A panic's message may carry anything — a value from the request, a record —
            // so it is not logged: only that the request died. The caller gets a fixed text
            // and the request still leaves its record (what it established died with it).
            tracing::error!(rpc = rpc.name(), "request panicked; answered INTERNAL");
            gw.finish::<T>(unrun(identity), Err(GatewayError::Internal))
                .await
        }
    }
}

/// A request polled in its caller's task until it ends (a panic in it caught, as the
/// answer's `Err`); dropped unfinished, it hands the rest of the request, with its
/// in-flight permit and its span, to a task of the gateway's tracker, which runs it to its
/// record. ([`detached`] holds a tracker token around it, so shutdown waits for the
/// request wherever it runs.)
struct RunToEnd<T: Send + 'static> {
    request: Option<futures::future::BoxFuture<'static, Result<T, Status>>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    tasks: tokio_util::task::TaskTracker,
    span: tracing::Span,
}

impl<T: Send + 'static> std::future::Future for RunToEnd<T> {
    type Output = std::thread::Result<Result<T, Status>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(request) = self.request.as_mut() else {
            // Polled again after its end: it has nothing more to give.
            return std::task::Poll::Pending;
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request.as_mut().poll(cx)));
        let done = match polled {
            Ok(std::task::Poll::Pending) => return std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => Ok(answer),
            Err(panic) => Err(panic),
        };
        self.request = None;
        self.permit = None;
        std::task::Poll::Ready(done)
    }
}

impl<T: Send + 'static> Drop for RunToEnd<T> {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let permit = self.permit.take();
        let rest = async move {
            let _ = request.await;
            drop(permit);
        }
        .instrument(self.span.clone());
        // Dropped outside any runtime (the process ending): nothing is left to run it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tasks.spawn_on(rest, &runtime);
        }
    }
}

/// The shared preamble of a unary call about a person: its caller as the early layer
/// named it, its request, and `handle` run to its end ([`detached`]: in the caller's task,
/// handed to a tracked task if the caller gives up), so that the call leaves exactly one
/// record whoever gives up. `handle`
/// gets the request's context (begun with the caller's identity and deadline) and hands
/// it back with its result, which [`Gateway::finish`] records and answers.
pub(crate) async fn unary<Req, T, Fut>(
    gw: &Arc<Gateway>,
    rpc: Rpc,
    request: tonic::Request<Req>,
    personal_id: fn(&Req) -> &str,
    handle: impl FnOnce(Arc<Gateway>, RequestCtx, Req) -> Fut + Send + 'static,
) -> Result<tonic::Response<T>, Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    Fut: std::future::Future<Output = (RequestCtx, Result<(T, Disclosure), GatewayError>)>
        + Send
        + 'static,
{
    let early::Caller {
        identity, timeout, ..
    } = early::reached(&request);
    let request = request.into_inner();
    let about = personal_id(&request).to_string();
    let identity_for_shed = identity.clone();
    let task_gw = gw.clone();
    let request = Box::pin(async move {
        let ctx = task_gw.begin(rpc, identity, timeout);
        let (ctx, result) = handle(task_gw.clone(), ctx, request).await;
        task_gw.finish(ctx, result).await
    });
    detached(gw, rpc, identity_for_shed, about, request)
        .await
        .map(tonic::Response::new)
}

/// Whether the permit's procedure allows household data and its client is granted it.
pub fn household_allowed(permit: &ProcedurePermit<'_>) -> Result<(), GatewayError> {
    let procedure = permit.procedure();
    if !procedure.household_readable {
        return Err(GatewayError::NotInProfile(format!(
            "procedure {} does not allow household data",
            procedure.code
        )));
    }
    // The client's field allow-list narrows household access like any field.
    if !permit
        .grant()
        .readable_fields(&procedure.readable_fields)
        .iter()
        .any(|f| f == "household")
    {
        return Err(GatewayError::NotInProfile(
            "household data is not granted to this client".into(),
        ));
    }
    Ok(())
}

/// The fully qualified names of the gateway's own services, as health reports them.
pub const SERVICE_NAMES: &[&str] = &[
    "popgw.v1.IdentityGateway",
    "popgw.v1.AuditLog",
    "popgw.v1.CitizenAccess",
    "popgw.v1.Limits",
];

/// Attaches the request id to an error status (metadata `x-request-id`).
fn with_request_id(mut status: Status, request_id: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(request_id) {
        status.metadata_mut().insert("x-request-id", v);
    }
    status
}

/// Resolves once the gateway starts shutting down (or its state is gone).
pub(crate) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = *stopping.borrow_and_update();
        if now || stopping.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", value.parse().unwrap());
        caller_timeout(&m)
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit_and_garbage_is_ignored() {
        assert_eq!(timeout_of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of("300m"), Some(Duration::from_millis(300)));
        assert_eq!(timeout_of("250000u"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("5000000n"), Some(Duration::from_millis(5)));
        assert_eq!(timeout_of("1M"), Some(Duration::from_secs(60)));
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "12", "12x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(caller_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn the_deadline_keeps_a_margin_for_the_audit_and_is_capped() {
        let cap = Duration::from_secs(1);
        let d = Deadline::for_caller(Some(Duration::from_millis(300)), cap);
        assert!(d.set_by_caller());
        let left = d.remaining();
        assert!(left <= Duration::from_millis(270) && left > Duration::from_millis(200));
        let d = Deadline::for_caller(Some(Duration::from_secs(30)), cap);
        assert!(!d.set_by_caller(), "the cap binds");
        assert!(d.remaining() <= cap);
        assert!(matches!(
            d.exceeded("x"),
            crate::registry::RegistryError::Unavailable(_)
        ));
        let d = Deadline::for_caller(Some(Duration::from_millis(1)), cap);
        assert!(matches!(
            d.exceeded("x"),
            crate::registry::RegistryError::DeadlineExceeded(_)
        ));
        assert!(Deadline::for_caller(None, cap).remaining() <= cap);
    }

    proptest::proptest! {
        #[test]
        fn any_grpc_timeout_is_read_or_ignored(value in "\\PC{0,12}") {
            let _ = parse_grpc_timeout(&value);
        }

        #[test]
        fn a_valid_grpc_timeout_reads_back(n in 0u64..100_000_000, unit in proptest::sample::select(vec!["H", "M", "S", "m", "u", "n"])) {
            let d = parse_grpc_timeout(&format!("{n}{unit}")).unwrap();
            let expected = match unit {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                _ => Duration::from_nanos(n),
            };
            proptest::prop_assert_eq!(d, expected);
        }
    }
}
