//! Requests refused before their handler: the audit record they would otherwise not
//! leave.
//!
//! tonic decodes a unary request's message before calling the handler: garbage
//! protobuf, invalid UTF-8 in a string, an unnegotiated compression flag, a message
//! over the size limit or a truncated one is answered by tonic itself, and no handler —
//! so no audit record — ever sees it. This layer marks each request of popgw's own
//! services ([`reached`] is called by every handler as it starts) and, for one that
//! ends without reaching its handler, writes the record: the RPC (when it names one),
//! the client, the code; never the body. A content-type that is not
//! `application/grpc…` is refused here (INVALID_ARGUMENT), recorded the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Code;

use super::Gateway;
use crate::error::GatewayError;
use crate::tls::Peer;

/// Set by the handler of a request as it starts.
#[derive(Clone, Debug, Default)]
pub struct Reached(Arc<AtomicBool>);

/// Marks `request` as having reached its handler; returns its client identity.
pub fn reached<T>(request: &tonic::Request<T>) -> Result<String, crate::tls::IdentityError> {
    if let Some(r) = request.extensions().get::<Reached>() {
        r.0.store(true, Ordering::Release);
    }
    crate::tls::peer_identity(request)
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

/// The policy's name of the RPC a path names, if it is one of popgw's.
fn rpc_of(path: &str) -> Option<&'static str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let name = match service {
        "popgw.v1.IdentityGateway" => method.to_string(),
        "popgw.v1.AuditLog" => format!("AuditLog.{method}"),
        _ => return None,
    };
    crate::policy::RPCS.iter().find(|r| **r == name).copied()
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
        if !ours {
            return Box::pin(self.inner.call(request));
        }
        let rpc = rpc_of(path).unwrap_or("unknown");
        let identity = request.extensions().get::<Peer>().map_or(
            Err(crate::tls::IdentityError::NoCertificate),
            Peer::identity,
        );
        let gw = self.gw.clone();
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc {
            return Box::pin(async move {
                let ctx = gw.begin(rpc, identity, None);
                let refused = gw
                    .finish::<()>(ctx, Err(GatewayError::ContentType))
                    .await
                    .unwrap_err();
                Ok(refused.into_http())
            });
        }
        let reached = Reached::default();
        request.extensions_mut().insert(reached.clone());
        // The clone that was made ready is the one called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            if !reached.0.load(Ordering::Acquire) {
                let code = status_code(&response).unwrap_or(Code::Unknown);
                if code != Code::Ok {
                    let ctx = gw.begin(rpc, identity, None);
                    // The answer is tonic's; the record says it was refused unread.
                    let _ = gw
                        .finish::<()>(ctx, Err(GatewayError::Undecodable(code)))
                        .await;
                }
            }
            Ok(response)
        })
    }
}
