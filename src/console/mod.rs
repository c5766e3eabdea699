//! The operators' web console (`popgw console`): a process of its own that talks to a
//! gateway as an operator client over mutual TLS and serves the operator's browser on
//! loopback. It adds no way into the gateway: every page is one or more audited calls
//! (AuditLog.Watch, Query, Head, Verify, CitizenAccess.AccessReport) made with the
//! operator's certificate, and the gateway's policy decides what they return.
//!
//! - [`guard`]: who may use the console — a secret printed at start, exchanged once for a
//!   `SameSite=Strict`, `HttpOnly` cookie; only loopback `Host`s (DNS rebinding); a
//!   strict Content-Security-Policy; nothing cached.
//! - [`pages`]: the pages (Live, Search, Integrity, Health, a citizen's history), rendered
//!   on the server from templates compiled into the binary (`templates/console/`); the
//!   styles and the one script are embedded too (no CDN, works offline).
//! - [`samples`]: the gateway's admin `/metrics` scraped into an hour of points.
//! - [`labels`]: Vietnamese and English words.
//!
//! The library binds nothing: [`serve`] takes a bound listener.

pub mod guard;
pub mod labels;
pub mod pages;
pub mod samples;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::proto::gateway as pb;
use crate::proto::gateway::audit_log_client::AuditLogClient;
use crate::proto::gateway::citizen_access_client::CitizenAccessClient;
use crate::tls::ClientId;

/// One gateway node the console talks to, over mutual TLS with the operator's certificate.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its address, as shown on the pages.
    pub addr: String,
    /// The connection.
    pub channel: Channel,
}

/// How a console is set up.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// The gateway's admin `/metrics` (plain HTTP; `None`: no health figures).
    pub metrics_url: Option<String>,
    /// How often it is scraped.
    pub scrape_every: Duration,
    /// Answer any `Host`, not only loopback ones (`--allow-remote`).
    pub allow_remote: bool,
}

/// Why the console cannot start or a page cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The certificate is not an operator's the gateway knows.
    #[error("the gateway at {node} refuses this certificate as an operator ({code}: {message}); the console needs an operator certificate granted AuditLog.Head, Query, Watch and Verify")]
    NotOperator {
        /// The node's address.
        node: String,
        /// The gRPC code's name.
        code: &'static str,
        /// The gateway's message.
        message: String,
    },
    /// A node could not be asked at start.
    #[error("the gateway at {node} does not answer: {}: {}", crate::telemetry::code_name(.status.code()), .status.message())]
    Unreachable {
        /// The node's address.
        node: String,
        /// What the call ended with.
        status: tonic::Status,
    },
    /// The gateway answered a page's call with an error.
    #[error("{}: {}", crate::telemetry::code_name(.0.code()), .0.message())]
    Gateway(#[from] tonic::Status),
    /// A template could not be rendered (a bug).
    #[error("page could not be rendered: {0}")]
    Render(#[from] askama::Error),
    /// A form field the console checks itself.
    #[error("{0}")]
    Form(&'static str),
}

/// The last verification this console ran, shown on the integrity page.
#[derive(Debug, Clone)]
pub struct Verified {
    /// When it was run (Unix ms).
    pub at_ms: i64,
    /// The gateway's report.
    pub report: pb::AuditVerifyReport,
}

/// A console: the gateway connection and what the pages share.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    /// The node every page asks first (live, search, a citizen's history), then the
    /// deployment's other nodes (their heads and verification on the integrity page).
    nodes: Vec<Node>,
    operator: ClientId,
    options: ConsoleOptions,
    /// The login secret's digest, until it is used once (then `None`).
    token_hash: Mutex<Option<[u8; 32]>>,
    /// Digests of the sessions a login opened (the cookie's value; never the login secret).
    sessions: Mutex<Vec<[u8; 32]>>,
    ring: Mutex<samples::Ring>,
    /// The last verification of each node (by its place in `nodes`).
    verified: Mutex<std::collections::BTreeMap<usize, Verified>>,
    /// Cancelled when the console stops: live streams end so that shutdown completes.
    stopping: tokio_util::sync::CancellationToken,
}

/// 256 random bits as hex, from the operating system's generator.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

impl Console {
    /// A console over `first` and the deployment's `others` (mutual TLS with the
    /// operator's certificate, whose identity is `operator`), and the secret the
    /// operator's browser must present once (`/login?token=…`).
    pub fn new(
        first: Node,
        others: Vec<Node>,
        operator: ClientId,
        options: ConsoleOptions,
    ) -> (Console, String) {
        let token = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        // An hour of points (one per scrape; at least two, whatever the interval).
        let keep = (3600 / options.scrape_every.as_secs().max(1)) as usize;
        let console = Console {
            inner: Arc::new(Inner {
                nodes: std::iter::once(first).chain(others).collect(),
                operator,
                token_hash: Mutex::new(Some(digest(&token))),
                sessions: Mutex::new(Vec::new()),
                ring: Mutex::new(samples::Ring::new(keep)),
                verified: Mutex::new(Default::default()),
                stopping: tokio_util::sync::CancellationToken::new(),
                options,
            }),
        };
        (console, token)
    }

    /// Asks every node for its head as the operator: refuses to start when a node does
    /// not take the certificate as an operator's (UNAUTHENTICATED, PERMISSION_DENIED) or
    /// the first node cannot be asked. Another node that cannot be reached now is named
    /// in a warning (the integrity page shows it down until it answers). No checkpoint
    /// yet is fine.
    pub async fn check_operator(&self) -> Result<(), ConsoleError> {
        for node in 0..self.inner.nodes.len() {
            match self.check_node(node).await {
                Err(ConsoleError::Unreachable { node: addr, status }) if node > 0 => {
                    tracing::warn!(node = %addr, code = crate::telemetry::code_name(status.code()),
                        "a node of the deployment does not answer now; the integrity page shows it down");
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn check_node(&self, node: usize) -> Result<(), ConsoleError> {
        match self.audit_of(node).head(pb::AuditHeadRequest {}).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                Err(ConsoleError::NotOperator {
                    node: self.inner.nodes[node].addr.clone(),
                    code: crate::telemetry::code_name(s.code()),
                    message: s.message().to_string(),
                })
            }
            Err(s) => Err(ConsoleError::Unreachable {
                node: self.inner.nodes[node].addr.clone(),
                status: s,
            }),
        }
    }

    /// Scrapes the gateway's metrics (a task of [`serve`], aborted when it ends).
    async fn scrape_loop(self) {
        let Some(url) = self.inner.options.metrics_url.clone() else {
            return;
        };
        let every = self.inner.options.scrape_every;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let scraped = samples::scrape(&url, every.max(Duration::from_secs(1))).await;
            let mut ring = self.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
            match scraped {
                Ok(s) => ring.push(chrono::Utc::now().timestamp_millis(), s),
                Err(e) => ring.error = Some(e.to_string()),
            }
        }
    }

    fn audit(&self) -> AuditLogClient<Channel> {
        self.audit_of(0)
    }

    fn audit_of(&self, node: usize) -> AuditLogClient<Channel> {
        AuditLogClient::new(self.inner.nodes[node].channel.clone())
    }

    fn access(&self) -> CitizenAccessClient<Channel> {
        CitizenAccessClient::new(self.inner.nodes[0].channel.clone())
    }

    /// Spends the login secret: a new session's secret when `presented` is the login
    /// secret and it was not used yet. The secret printed at start (which a browser's
    /// history keeps) opens one session only; the session's own secret is never printed.
    fn log_in(&self, presented: &str) -> Option<String> {
        let mut token = self
            .inner
            .token_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Compared as digests: the comparison's time says nothing about the secret.
        if token.as_ref() != Some(&digest(presented)) {
            return None;
        }
        *token = None;
        let session = secret();
        self.sessions().push(digest(&session));
        Some(session)
    }

    /// Ends the session `presented` opened: its secret is refused from now on.
    fn log_out(&self, presented: &str) {
        let gone = digest(presented);
        self.sessions().retain(|s| *s != gone);
    }

    /// Whether `presented` is an open session's secret.
    fn session_matches(&self, presented: &str) -> bool {
        self.sessions().contains(&digest(presented))
    }

    /// The digests of the open sessions.
    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<[u8; 32]>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// What the console keeps of a secret: its SHA-256.
fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The console's routes, guarded.
pub fn router(console: Console, listen: SocketAddr) -> axum::Router {
    pages::routes()
        .layer(axum::middleware::from_fn_with_state(
            guard::Guard::new(console.clone(), listen),
            guard::check,
        ))
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown` resolves, scraping the gateway's
/// metrics meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Console,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let scraper = tokio::spawn(console.clone().scrape_loop());
    let stopping = console.inner.stopping.clone();
    let app = router(console, listen).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.cancel();
        })
        .await;
    scraper.abort();
    result
}
