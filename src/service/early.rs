//! Requests refused before their handler: the audit record they would otherwise not
//! leave.
//!
//! tonic decodes a unary request's message before calling the handler: garbage
//! protobuf, invalid UTF-8 in a string, an unnegotiated compression flag, a message
//! over the size limit or a truncated one is answered by tonic itself, and no handler —
//! so no audit record — ever sees it. This layer marks each request of popgw's own
//! services ([`reached`] is called by every handler as it starts) and, for one that
//! ends without reaching its handler, writes the record: the RPC (when it names one),
//! the client, the code; never the body. A content-type other than exactly
//! `application/grpc` or `application/grpc+proto` is refused here (INVALID_ARGUMENT),
//! recorded the same way; a call to a service popgw does not serve (anything but its
//! own, health and reflection) is answered UNIMPLEMENTED here and recorded as an
//! `unknown` RPC (never its path, which could hold anything); and
//! a unary call carrying more than one message (tonic would answer the first and drop
//! the rest) is refused with INTERNAL, as gRPC implementations do. A call still
//! unanswered half a margin (1–25 ms) before the caller's grpc-timeout is answered
//! DEADLINE_EXCEEDED here (tonic's own timer would answer CANCELLED).

use crate::policy::Rpc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Code;
use tracing::Instrument;

use super::Gateway;
use crate::error::{EarlyRefusal, GatewayError};
use crate::tls::{ClientId, Peer};

/// How long before the caller's grpc-timeout this layer answers DEADLINE_EXCEEDED
/// itself: half the margin handlers keep (`registry::Deadline::margin`, 2–50 ms), so
/// that the answer reaches the caller before its own timer (tonic's client and server
/// both enforce the header and answer CANCELLED, which callers do not read as a
/// deadline). Handlers stop their lookups a full margin before; this catches a request
/// whose audit write outlasted the first half.
fn deadline_lead(timeout: std::time::Duration) -> std::time::Duration {
    crate::registry::Deadline::margin(timeout) / 2
}

/// What this layer established about a call, handed to its handler in one request
/// extension: the client (named once per connection, at the handshake), the caller's
/// grpc-timeout (read once, here) and the flag the handler sets as it starts.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The client identity, or why there is none.
    pub identity: Result<crate::tls::ClientId, crate::tls::IdentityError>,
    /// The caller's grpc-timeout, if it sent a valid one.
    pub timeout: Option<std::time::Duration>,
    reached: Arc<AtomicBool>,
}

/// Marks `request` as having reached its handler; returns its [`Caller`] (read from the
/// request itself when it did not pass this layer).
pub fn reached<T>(request: &tonic::Request<T>) -> Caller {
    match request.extensions().get::<Caller>() {
        Some(caller) => {
            caller.reached.store(true, Ordering::Release);
            caller.clone()
        }
        None => Caller {
            identity: crate::tls::peer_identity(request),
            timeout: super::caller_timeout(request.metadata()),
            reached: Arc::default(),
        },
    }
}

/// The layer (see the module documentation).
#[derive(Clone)]
pub struct EarlyRefusals {
    gw: Arc<Gateway>,
}

impl EarlyRefusals {
    /// Over the gateway's shared state.
    pub fn new(gw: Arc<Gateway>) -> Self {
        EarlyRefusals { gw }
    }
}

impl<S> tower::Layer<S> for EarlyRefusals {
    type Service = Early<S>;
    fn layer(&self, inner: S) -> Early<S> {
        Early {
            inner,
            gw: self.gw.clone(),
        }
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone)]
pub struct Early<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// Services on the gateway's port that are not popgw's own, passed through untouched.
const SERVED_ELSEWHERE: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The bytes of request bodies not yet finished, by client identity and in all: an
/// unfinished body is held by tonic's decoder, so a client opening many streams and
/// never finishing their messages would otherwise hold 64 KiB a stream (issue 25: 681
/// MiB from 40 connections of a certificate missing from the policy).
#[derive(Debug, Default)]
pub struct BodyBudget {
    total: std::sync::atomic::AtomicUsize,
    by_identity: std::sync::Mutex<std::collections::HashMap<Option<ClientId>, usize>>,
}

/// Bytes a body in flight has taken from the [`BodyBudget`]; given back when the
/// message is complete or the body is dropped.
struct Charge {
    budget: Arc<BodyBudget>,
    /// `None`: every client without a usable identity shares one budget.
    identity: Option<ClientId>,
    bytes: usize,
    identity_limit: usize,
    total_limit: usize,
}

impl Charge {
    /// Takes `n` more bytes; `false` (nothing taken) when a limit would be passed.
    fn take(&mut self, n: usize) -> bool {
        let mut by = self
            .budget
            .by_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mine = by.entry(self.identity.clone()).or_default();
        let total = self.budget.total.load(Ordering::Acquire);
        if *mine + n > self.identity_limit || total + n > self.total_limit {
            return false;
        }
        *mine += n;
        self.budget.total.fetch_add(n, Ordering::AcqRel);
        self.bytes += n;
        true
    }

    fn release(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut by = self
            .budget
            .by_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = by.get_mut(&self.identity) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                by.remove(&self.identity);
            }
        }
        self.budget.total.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a call waiting for its message costs the gateway beyond the bytes it has sent:
/// its HTTP/2 stream, its request and the task serving it — 15.7–16.1 KiB a call whose
/// headers came and whose body did not (issue 28, BENCHMARKS.md "Memory"). Charged to
/// the same budget as the bytes, so a client cannot hold thousands of body-less calls for
/// free: 16 MiB a client is 1,024 waiting calls, 64 for a client missing from the policy.
pub const WAITING_CALL_BYTES: usize = 16 << 10;

/// A unary call's request body: fails at the start of a second gRPC message, when the
/// message is not complete within the body timeout, or when its unfinished bytes (and
/// [`WAITING_CALL_BYTES`] once it waits for them) would pass the client's or the
/// process's budget.
struct OneMessage {
    inner: Body,
    header: [u8; 5],
    header_len: usize,
    payload_left: usize,
    messages: u32,
    charge: Charge,
    /// Whether the call has waited for its message (and been charged for waiting).
    waited: bool,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl OneMessage {
    fn new(inner: Body, charge: Charge, timeout: std::time::Duration) -> Self {
        OneMessage {
            inner,
            header: [0; 5],
            header_len: 0,
            payload_left: 0,
            messages: 0,
            charge,
            waited: false,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            done: false,
        }
    }

    /// Whether the one message has arrived whole.
    fn complete(&self) -> bool {
        self.messages == 1 && self.payload_left == 0 && self.header_len == 0
    }

    /// Follows the framing through `data`; `false` when a second message starts.
    fn follow(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == 5 {
                self.messages += 1;
                if self.messages > 1 {
                    return false;
                }
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.payload_left = len as usize;
                self.header_len = 0;
            }
        }
        true
    }
}

impl http_body::Body for OneMessage {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if !self.follow(&data) {
                        self.done = true;
                        return Poll::Ready(Some(Err(EarlyRefusal::SecondMessage.into())));
                    }
                    if self.complete() {
                        self.charge.release();
                    } else if !self.charge.take(data.len()) {
                        self.done = true;
                        self.charge.release();
                        return Poll::Ready(Some(Err(EarlyRefusal::OverBudget.into())));
                    }
                }
            }
            Poll::Ready(_) => self.charge.release(),
            Poll::Pending if !self.complete() => {
                // A message that came with its headers is never charged this; one the
                // client holds back is, from its first wait until it is whole.
                if !self.waited {
                    self.waited = true;
                    if !self.charge.take(WAITING_CALL_BYTES) {
                        self.done = true;
                        self.charge.release();
                        return Poll::Ready(Some(Err(EarlyRefusal::OverBudget.into())));
                    }
                }
                if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
                    self.done = true;
                    self.charge.release();
                    return Poll::Ready(Some(Err(EarlyRefusal::TooSlow.into())));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Records a call that never reached its handler, refused with `code` before it was
/// read. Boxed: a rare path, kept out of the future every call carries.
fn unreached<'a>(
    gw: &'a Gateway,
    rpc: Rpc,
    identity: Result<crate::tls::ClientId, crate::tls::IdentityError>,
    code: Code,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let ctx = gw.begin(rpc, identity, None);
        let _ = gw
            .finish::<()>(ctx, Err(GatewayError::Undecodable(code)))
            .await;
    })
}

fn status_code(response: &http::Response<Body>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

impl<S> tower::Service<http::Request<Body>> for Early<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let ours = path.starts_with("/popgw.v1.");
        if !ours && SERVED_ELSEWHERE.iter().any(|s| path.starts_with(s)) {
            return Box::pin(self.inner.call(request));
        }
        let rpc = Rpc::of_path(path).unwrap_or(Rpc::Unknown);
        let span = crate::telemetry::request_span(rpc.name());
        // The client as its handshake named it: each use clones a reference count, never
        // the identity's text.
        let peer = request.extensions().get::<Peer>().cloned();
        let identity = move || {
            peer.as_ref().map_or(
                Err(crate::tls::IdentityError::NoCertificate),
                Peer::identity,
            )
        };
        let gw = self.gw.clone();
        if !ours {
            return Box::pin(
                async move {
                    let ctx = gw.begin(rpc, identity(), None);
                    let unknown = GatewayError::Undecodable(Code::Unimplemented);
                    let refused = match gw.finish::<()>(ctx, Err(unknown)).await {
                        Err(status) => status,
                        Ok(()) => GatewayError::Undecodable(Code::Unimplemented).into(),
                    };
                    Ok(refused.into_http())
                }
                .instrument(span),
            );
        }
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto");
        if !grpc {
            return Box::pin(
                async move {
                    let ctx = gw.begin(rpc, identity(), None);
                    let refused = match gw.finish::<()>(ctx, Err(GatewayError::ContentType)).await {
                        Err(status) => status,
                        Ok(()) => GatewayError::ContentType.into(),
                    };
                    Ok(refused.into_http())
                }
                .instrument(span),
            );
        }
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_grpc_timeout);
        let reached = Arc::new(AtomicBool::new(false));
        let caller_identity = identity();
        let peer_identity = caller_identity.as_ref().ok().cloned();
        request.extensions_mut().insert(Caller {
            identity: caller_identity,
            timeout,
            reached: reached.clone(),
        });
        if rpc != Rpc::VerifyIdentityStream {
            let request_body = std::mem::take(request.body_mut());
            let identity_limit = match &peer_identity {
                Some(id) if gw.admission.knows(id) => {
                    gw.admission.limit_options().body_bytes_per_client
                }
                // A client missing from the policy gets the tightest budget.
                _ => gw.admission.limit_options().body_bytes_per_client / 16,
            };
            let charge = Charge {
                budget: gw.body_budget.clone(),
                identity: peer_identity,
                bytes: 0,
                identity_limit,
                total_limit: gw.admission.limit_options().body_bytes_total,
            };
            *request.body_mut() = Body::new(OneMessage::new(
                request_body,
                charge,
                gw.admission.limit_options().body_timeout,
            ));
        }
        // The clone that was made ready is the one called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let call = inner.call(request);
                let response = match timeout {
                    None => call.await?,
                    Some(timeout) => {
                        let lead = timeout.saturating_sub(deadline_lead(timeout));
                        match tokio::time::timeout(lead, call).await {
                            Ok(response) => response?,
                            Err(_) => {
                                // A handler reached still finishes and records itself
                                // (dropped here, `detached` hands it to a task of its
                                // own); one never reached is recorded here.
                                if !reached.load(Ordering::Acquire) {
                                    unreached(&gw, rpc, identity(), Code::DeadlineExceeded).await;
                                }
                                return Ok(
                                    tonic::Status::from(EarlyRefusal::CallerDeadline).into_http()
                                );
                            }
                        }
                    }
                };
                if !reached.load(Ordering::Acquire) {
                    let code = status_code(&response).unwrap_or(Code::Unknown);
                    if code != Code::Ok {
                        // The answer is tonic's; the record says it was refused unread.
                        unreached(&gw, rpc, identity(), code).await;
                    }
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
