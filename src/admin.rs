//! The admin HTTP listener (`[admin]`): `/metrics` in the Prometheus text format,
//! `/healthz` (the process answers) and `/readyz` (it can serve: the audit log is
//! writable, the registry's circuit breaker is not open, shutdown has not begun).
//!
//! Plain HTTP with no authentication, on loopback by default. Invariant: nothing it
//! answers carries personal data — metric labels are RPCs, procedure codes, client
//! identities the policy lists, gRPC code names and fixed reasons (see [`crate::telemetry`]).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::registry::remote::BreakerState;
use crate::service::Gateway;

struct Admin {
    gateway: Arc<Gateway>,
    registry: prometheus_client::registry::Registry,
}

/// The admin routes over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let registry = gateway.metrics.registry();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(Admin { gateway, registry }))
}

/// Serves the admin routes on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `/metrics` and `/healthz` alone, over `metrics`: for processes without a gateway
/// (`popgw audit index --admin-listen`).
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<crate::telemetry::Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(metrics.registry());
    let router = Router::new()
        .route(
            "/metrics",
            get(
                |State(registry): State<Arc<prometheus_client::registry::Registry>>| async move {
                    encoded(&registry)
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(registry);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The registry in the OpenMetrics text format.
fn encoded(registry: &prometheus_client::registry::Registry) -> impl IntoResponse {
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut body, registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let gw = &admin.gateway;
    let m = &gw.metrics;
    // Gauges of state read at the scrape.
    if let Some(cache) = gw.lookups.cache() {
        m.cache_entries.set(cache.len() as i64);
        m.cache_bytes.set(cache.weighted_size() as i64);
    }
    if let Some(status) = &gw.witnessed {
        let acked = status.acked();
        m.witness_alarm.set(i64::from(status.alarm().is_some()));
        m.witness_lag
            .set(gw.audit.last_seq().saturating_sub(acked) as i64);
    }
    m.breaker_state.set(match gw.lookups.breaker_state() {
        None | Some(BreakerState::Closed) => 0,
        Some(BreakerState::Open) => 1,
        Some(BreakerState::HalfOpen) => 2,
    });
    encoded(&admin.registry)
}

async fn ready(State(admin): State<Arc<Admin>>) -> (StatusCode, String) {
    let gw = &admin.gateway;
    let mut not_ready = Vec::new();
    if gw.audit.is_failed() {
        not_ready.push("audit log not writable".to_string());
    }
    if gw.lookups.breaker_state() == Some(BreakerState::Open) {
        not_ready.push("registry circuit breaker open".into());
    }
    if *gw.stopping.borrow() {
        not_ready.push("shutting down".into());
    }
    if let Some(status) = &gw.witnessed {
        if let Some(alarm) = status.alarm() {
            not_ready.push(format!("audit witness alarm: {alarm}"));
        } else if !status.compared() {
            not_ready.push("audit folder not yet compared with its witness".into());
        }
    }
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
    }
}
