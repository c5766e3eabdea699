//! The gRPC services: `popgw.v1.IdentityGateway` (gateway.rs) and `popgw.v1.AuditLog`
//! (audit_log.rs), over one shared [`Gateway`] state.
//!
//! Every request that reaches a service goes through [`Gateway::begin`] and
//! [`Gateway::finish`]: the first names the client from its certificate, the second
//! writes exactly one audit record (allowed or refused) and releases the answer only
//! once that record is durable. Invariant: fail closed on audit — if the record cannot
//! be written the caller gets UNAVAILABLE and nothing else.

pub mod audit_log;
pub mod gateway;
pub mod registry;

use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::audit::{AuditEntry, AuditLog, Pseudonymizer};
use crate::catalogue::Catalogue;
use crate::error::{code_name, GatewayError};
use crate::policy::{Grant, Policy};
use crate::registry::Registry;
use crate::telemetry::Metrics;
use crate::tls;

/// What every service shares.
pub struct Gateway {
    /// Who may do what (deny by default).
    pub policy: Arc<Policy>,
    /// The procedures and their field profiles.
    pub catalogue: Arc<Catalogue>,
    /// The upstream population registry.
    pub registry: Arc<dyn Registry>,
    /// The tamper-evident audit log.
    pub audit: AuditLog,
    /// Turns personal ids into audit subjects.
    pub pseudonyms: Pseudonymizer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// grpc.health.v1 status: NOT_SERVING once the audit log has failed, so that load
    /// balancers stop sending requests this node can only refuse.
    pub health: tonic_health::server::HealthReporter,
    /// Turns true when shutdown begins: long-lived streams (AuditLog.Watch) end then.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Every request task; shutdown waits for them before it closes the audit log.
    pub tasks: tokio_util::task::TaskTracker,
}

/// What one request has established so far; becomes its audit record.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    /// The id returned to the caller and written to the audit log.
    pub request_id: String,
    /// The client identity, or why there is none.
    pub identity: Result<String, tls::IdentityError>,
    /// The RPC name as the policy knows it.
    pub rpc: &'static str,
    /// The procedure code (as given, once validated).
    pub procedure: String,
    /// The dossier number.
    pub case_id: String,
    /// The subject's pseudonym.
    pub subject: String,
    /// Pseudonyms of other people whose data the answer disclosed.
    pub related: Vec<String>,
    /// Names of fields disclosed.
    pub fields: Vec<String>,
    /// The name rule applied.
    pub rule: String,
    /// Why the request failed, or which NO_MATCH reason applied (never a value).
    pub detail: String,
}

/// A successful answer's outcome word for the audit log (MATCH, NO_MATCH, DISCLOSED...).
pub type Outcome = &'static str;

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Gateway {
    /// Starts a request: assigns its id and names its client.
    pub fn begin(
        &self,
        rpc: &'static str,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: new_request_id(),
            identity: tls::client_identity(certs.as_deref().map(|v| v.as_slice())),
            rpc,
            procedure: String::new(),
            case_id: String::new(),
            subject: String::new(),
            related: Vec::new(),
            fields: Vec::new(),
            rule: String::new(),
            detail: String::new(),
        }
    }

    /// The caller's grant for the request's RPC, or why there is none.
    pub fn authorize<'a>(&'a self, ctx: &RequestCtx) -> Result<&'a Grant, GatewayError> {
        let identity = ctx.identity.as_ref().map_err(|e| e.clone())?;
        Ok(self.policy.authorize_rpc(identity, ctx.rpc)?)
    }

    /// The audit subject for a personal id.
    pub fn subject(&self, personal_id: &str) -> String {
        self.pseudonyms.pseudonym(personal_id)
    }

    /// Ends a request: writes its audit record and returns the answer, or the error
    /// status; UNAVAILABLE (nothing disclosed) if the record cannot be made durable.
    pub async fn finish<T>(
        &self,
        ctx: RequestCtx,
        result: Result<(T, Outcome), GatewayError>,
    ) -> Result<T, Status> {
        self.metrics.requests.inc();
        let (outcome, code, detail) = match &result {
            Ok((_, outcome)) => (outcome.to_string(), Code::Ok, ctx.detail.clone()),
            Err(e) => (code_name(e.code()).to_string(), e.code(), e.to_string()),
        };
        let client = match &ctx.identity {
            Ok(id) => id.clone(),
            Err(e) => format!("unauthenticated: {e}"),
        };
        let (fields, related) = if result.is_ok() {
            (ctx.fields, ctx.related)
        } else {
            (Vec::new(), Vec::new())
        };
        let entry = AuditEntry {
            request_id: ctx.request_id.clone(),
            client: client.clone(),
            rpc: ctx.rpc.to_string(),
            procedure: ctx.procedure,
            case_id: ctx.case_id,
            subject: ctx.subject,
            related,
            fields,
            outcome: outcome.clone(),
            code: code_name(code).to_string(),
            rule: ctx.rule,
            cache: "none".into(),
            latency_us: ctx.started.elapsed().as_micros() as u64,
            detail,
        };
        let request_id = ctx.request_id;
        match self.audit.append(entry).await {
            Ok(_) => {}
            Err(e) => {
                self.metrics.audit_failures.inc();
                if self.audit.is_failed() {
                    self.set_not_serving().await;
                }
                tracing::error!(%request_id, rpc = ctx.rpc, error = %e, "audit write failed; request refused");
                return Err(with_request_id(GatewayError::Audit(e).into(), &request_id));
            }
        }
        tracing::debug!(%request_id, %client, rpc = ctx.rpc, %outcome, "answered");
        result
            .map(|(answer, _)| answer)
            .map_err(|e| with_request_id(e.into(), &request_id))
    }
}

impl Gateway {
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

/// Runs a request to its end in its own task, so that a client that gives up
/// (cancels, times out, disconnects) cannot cut it short between the decision and its
/// audit record: every request that reached a service leaves exactly one record.
/// The task is tracked, so shutdown waits for it before closing the audit log.
pub(crate) async fn detached<T: Send + 'static>(
    gw: &Gateway,
    request: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    gw.tasks.spawn(request).await.unwrap_or_else(|e| {
        // A panic's message may carry anything: log it, answer a fixed text.
        tracing::error!(error = %e, "request task failed");
        Err(Status::internal("request failed"))
    })
}

/// The fully qualified names of the gateway's own services, as health reports them.
pub const SERVICE_NAMES: &[&str] = &["popgw.v1.IdentityGateway", "popgw.v1.AuditLog"];

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
