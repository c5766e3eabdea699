//! TLS identity: the server's rustls configuration (mutual TLS, client certificates
//! must chain to the configured client CA), the acceptor that turns TCP connections
//! into TLS streams for tonic, and the naming of clients by the URI SAN of their
//! certificate.
//!
//! Invariant: a connection reaches the gRPC services only after a completed
//! handshake with a client certificate that chains to the client CA and is within
//! its validity period. Handshake refusals are counted and traced (never chained
//! into the audit log: no request exists yet).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::telemetry::Metrics;

mod verified;
pub use verified::VerifiedChains;

/// Mutual TLS settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// Zero-config only (`popgw serve` without `--config`): create a development PKI in
    /// the certificate's folder when `client_ca` is absent. With a configuration file a
    /// missing CA stops the gateway, naming the file: it is never invented.
    pub create_dev_pki: bool,
    /// A handshake not finished within this many milliseconds is dropped.
    pub handshake_timeout_ms: u64,
    /// Connections open at once (handshaking or established); more are closed at once.
    pub max_connections: usize,
    /// Handshakes in progress at once; more are closed at once.
    pub max_handshakes: usize,
    /// Established connections of one client identity at once; more are closed at once.
    pub max_connections_per_identity: usize,
    /// Also offer TLS 1.2 (off: TLS 1.3 only; with 1.2 the client certificate, and so
    /// the agency's identity, crosses the wire in clear).
    pub allow_tls12: bool,
    /// Certificate revocation lists (PEM or DER files) checked at every handshake; a
    /// client whose certificate one of them revokes is refused. Re-read on reload.
    pub client_crls: Vec<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            client_ca: "certs/ca.pem".into(),
            cert: "certs/server.pem".into(),
            key: "certs/server.key".into(),
            create_dev_pki: true,
            handshake_timeout_ms: 5_000,
            max_connections: 10_000,
            max_handshakes: 4_096,
            max_connections_per_identity: 64,
            allow_tls12: false,
            client_crls: Vec::new(),
        }
    }
}

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// Why a request carries no usable client identity.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The connection presented no client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate cannot be parsed.
    #[error("client certificate cannot be parsed")]
    Unparsable,
    /// The certificate has no URI subject alternative name.
    #[error("client certificate has no URI SAN")]
    NoUriSan,
    /// The URI SAN holds control or non-printable characters (it would be written into
    /// logs and the audit log).
    #[error("client certificate URI SAN holds non-printable characters")]
    Unprintable,
}

/// A client's identity: the URI SAN of its certificate, named once when the connection's
/// handshake completes ([`client_identity`]: printable ASCII, 1–512 bytes). Every request
/// of the connection shares it (a clone is a reference count, never a copy of the text).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// The URI, as the policy, the audit log and the metrics name the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client of a connection, named once when its handshake completes and carried
/// into every request's extensions (tonic's connect info).
#[derive(Clone, Debug)]
pub struct Peer(Result<ClientId, IdentityError>);

impl Peer {
    /// The client identity, or why there is none.
    pub fn identity(&self) -> Result<ClientId, IdentityError> {
        self.0.clone()
    }
}

/// The client identity of a request's connection.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<ClientId, IdentityError> {
    request
        .extensions()
        .get::<Peer>()
        .map_or(Err(IdentityError::NoCertificate), Peer::identity)
}

/// The crypto provider: one, ring, everywhere in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (at least one), for the server, the links to
/// PostgreSQL and NATS, and the registry's client.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found (PEM)".into()));
    }
    Ok(certs)
}

/// Reads certificate revocation lists, each file PEM (one or more `X509 CRL` blocks)
/// or DER.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        let err = |reason: String| TlsError::Pem {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if !pem.is_empty() {
            crls.extend(pem);
        } else if bytes.first() == Some(&0x30) {
            crls.push(CertificateRevocationListDer::from(bytes));
        } else {
            return Err(err(
                "no certificate revocation list found (PEM or DER)".into()
            ));
        }
    }
    Ok(crls)
}

/// When the first certificate of a PEM file expires (for the expiry metric).
pub fn not_after(path: &Path) -> Result<std::time::SystemTime, TlsError> {
    let certs = load_certs(path)?;
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let secs = cert.validity().not_after.timestamp();
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// The client-certificate verifier of `[tls]` (its CA and CRLs, read again): what a
/// reload re-checks the open connections with.
pub fn client_verifier(
    settings: &TlsSettings,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&settings.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: settings.client_ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    client_verifier_from(roots, &settings.client_crls)
}

fn client_verifier_from(
    roots: RootCertStore,
    crls: &[PathBuf],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let crls = load_crls(crls)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Builds the server's rustls configuration from `[tls]`: server certificate and key,
/// client certificates required, verified against `client_ca` and, when
/// `client_crls` lists any, not revoked (a certificate whose issuer has no CRL among
/// them is refused too: revocation status unknown). ALPN h2. TLS 1.3 only unless
/// `allow_tls12`: with 1.2 the client certificate — and so the agency's identity —
/// crosses the wire in clear. A chain once verified is not verified again while every
/// certificate of it is valid ([`VerifiedChains`]). Every file is read again: a reload
/// calls this (and so starts with no chain remembered).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let (client_ca, cert, key) = (&settings.client_ca, &settings.cert, &settings.key);
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: client_ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let provider = provider();
    let verifier = client_verifier_from(roots, &settings.client_crls)?;
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = if settings.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(VerifiedChains::new(verifier)))
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Caps on connections before any request is read.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A handshake not finished within this long is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a connection beyond is closed at once.
    pub max_handshakes: usize,
    /// Connections open at once (handshaking or established, each holding its permit
    /// for its whole life); a connection beyond is closed at once.
    pub max_connections: usize,
    /// Established connections of one client identity at once; one beyond is closed
    /// right after its handshake.
    pub max_per_identity: usize,
}

/// Established connections by client identity.
type PerIdentity = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// One established connection counted against its identity, for its life.
struct IdentitySlot {
    map: PerIdentity,
    identity: String,
}

impl IdentitySlot {
    /// Takes a slot for `identity`; `None` when it has `max` connections already.
    fn take(map: &PerIdentity, identity: &str, max: usize) -> Option<IdentitySlot> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(identity.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            map: map.clone(),
            identity: identity.to_string(),
        })
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.identity);
            }
        }
    }
}

/// An established mutual-TLS connection holding its connection permit (given back
/// when tonic drops the connection) and its client, named once.
pub struct Admitted {
    stream: TlsStream<TcpStream>,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
    _open: OpenConnection,
    _slot: Option<IdentitySlot>,
    _live: LiveGuard,
    /// Ready when a reload revoked the certificate or removed the client from the
    /// policy: the connection then reads as closed.
    closing: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// One established connection as a reload re-checks it.
struct Live {
    identity: Option<ClientId>,
    chain: Vec<CertificateDer<'static>>,
    close: tokio_util::sync::CancellationToken,
}

/// The established connections, so that a reload can close those whose certificate it
/// revoked or whose client it removed from the policy (otherwise served until the
/// connection's age, up to an hour).
#[derive(Default)]
pub struct LiveConnections {
    next: std::sync::atomic::AtomicU64,
    live: std::sync::Mutex<std::collections::HashMap<u64, Live>>,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConnections").finish_non_exhaustive()
    }
}

impl LiveConnections {
    /// Closes every connection `refused` says no to (given its identity and certificate
    /// chain, leaf first); returns how many.
    pub fn close_where(
        &self,
        refused: impl Fn(Option<&str>, &[CertificateDer<'static>]) -> bool,
    ) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for conn in live.values() {
            if !conn.close.is_cancelled() && refused(conn.identity.as_deref(), &conn.chain) {
                conn.close.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Closes the connections whose client certificate `verifier` (a reloaded CA and
    /// CRLs) no longer accepts.
    pub fn close_unverified(
        &self,
        verifier: &dyn rustls::server::danger::ClientCertVerifier,
    ) -> usize {
        let now = rustls_pki_types::UnixTime::now();
        self.close_where(|_, chain| match chain.split_first() {
            Some((leaf, intermediates)) => verifier
                .verify_client_cert(leaf, intermediates, now)
                .is_err(),
            None => true,
        })
    }

    fn register(
        &self,
        identity: Option<ClientId>,
        chain: Vec<CertificateDer<'static>>,
    ) -> (LiveGuard, tokio_util::sync::CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = tokio_util::sync::CancellationToken::new();
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Live {
                identity,
                chain,
                close: close.clone(),
            },
        );
        (LiveGuard { id, live: None }, close)
    }
}

/// Removes its connection from [`LiveConnections`] when the connection ends.
struct LiveGuard {
    id: u64,
    live: Option<Arc<LiveConnections>>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.id);
        }
    }
}

/// Counts an established connection in `popgw_connections_open` for its life.
struct OpenConnection(crate::telemetry::Gauge);

impl OpenConnection {
    fn new(gauge: &crate::telemetry::Gauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric's word for why a handshake failed (a fixed set; the log line has the
/// full error).
fn refusal_reason(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::Revoked => "revoked",
            C::UnknownIssuer => "unknown_issuer",
            C::UnknownRevocationStatus => "unknown_revocation_status",
            _ => "bad_certificate",
        },
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if std::future::Future::poll(self.closing.as_mut(), cx).is_ready() {
            return Poll::Ready(Ok(())); // reads as closed: the connection ends
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if std::future::Future::poll(self.closing.as_mut(), cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Logs refusals at most once a second, with how many were not logged.
struct RefusalLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    quiet: std::sync::atomic::AtomicU64,
}

impl RefusalLog {
    fn refused(&self, metrics: &Metrics, peer: SocketAddr, kind: &'static str, reason: &str) {
        use std::sync::atomic::Ordering;
        metrics.handshakes_refused.inc();
        metrics
            .handshake_refusals
            .get_or_create(&crate::telemetry::ReasonLabels { reason: kind })
            .inc();
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let also = self.quiet.swap(0, Ordering::Relaxed);
        tracing::warn!(%peer, reason, also_refused_since_last_line = also, "TLS handshake refused");
    }
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks, yielding
/// only established mutual-TLS connections. Admission before TLS: at most
/// `max_connections` open and `max_handshakes` handshaking at once (a connection beyond
/// either is closed at once, not queued), each handshake under `handshake_timeout`;
/// refusals are counted and logged at most once a second. The current `ServerConfig`
/// is read from `config` at each handshake, so swapping it (a later reload) takes
/// effect for the next connection. The stream ends when its receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    live: Arc<LiveConnections>,
) -> ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(256);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let per_identity = PerIdentity::default();
    let log = Arc::new(RefusalLog {
        last: std::sync::Mutex::new(None),
        quiet: Default::default(),
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                log.refused(
                    &metrics,
                    peer,
                    "too_many_connections",
                    "too many open connections",
                );
                continue;
            };
            let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
                log.refused(
                    &metrics,
                    peer,
                    "too_many_handshakes",
                    "too many handshakes in progress",
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.load_full());
            let tx = tx.clone();
            let metrics = metrics.clone();
            let log = log.clone();
            let per_identity = per_identity.clone();
            let live = live.clone();
            tokio::spawn(async move {
                let result =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshaking);
                match result {
                    Ok(Ok(stream)) => {
                        // Named once per connection, not parsed again on every request.
                        let identity = client_identity(stream.get_ref().1.peer_certificates());
                        if let Err(IdentityError::Unprintable) = identity {
                            log.refused(
                                &metrics,
                                peer,
                                "unprintable_identity",
                                "client certificate URI SAN not printable",
                            );
                            return;
                        }
                        let slot = match &identity {
                            Ok(id) => {
                                let slot =
                                    IdentitySlot::take(&per_identity, id, limits.max_per_identity);
                                if slot.is_none() {
                                    log.refused(
                                        &metrics,
                                        peer,
                                        "too_many_connections_per_identity",
                                        "too many open connections of this client identity",
                                    );
                                    return;
                                }
                                slot
                            }
                            Err(_) => None,
                        };
                        metrics.handshakes_ok.inc();
                        let chain = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let (mut guard, close) = live.register(identity.clone().ok(), chain);
                        guard.live = Some(live.clone());
                        let admitted = Admitted {
                            stream,
                            peer: Peer(identity),
                            _permit: permit,
                            _open: OpenConnection::new(&metrics.connections_open),
                            _slot: slot,
                            _live: guard,
                            closing: Box::pin(close.cancelled_owned()),
                        };
                        let _ = tx.send(Ok(admitted)).await;
                    }
                    Ok(Err(e)) => log.refused(&metrics, peer, refusal_reason(&e), &e.to_string()),
                    Err(_) => log.refused(&metrics, peer, "timeout", "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Names the client by the first URI subject alternative name of its leaf certificate.
pub fn client_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<ClientId, IdentityError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoCertificate)?;
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| IdentityError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .ok_or(IdentityError::NoUriSan)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .ok_or(IdentityError::NoUriSan)
        .and_then(|uri| {
            if uri.is_empty() || uri.len() > 512 || uri.chars().any(|c| !c.is_ascii_graphic()) {
                Err(IdentityError::Unprintable)
            } else {
                Ok(ClientId(uri.into()))
            }
        })
}

/// A tonic client TLS configuration presenting `cert`/`key` and trusting `ca`, for the
/// command-line client and the tests.
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: &str,
) -> io::Result<tonic::transport::ClientTlsConfig> {
    let ca = std::fs::read_to_string(ca)?;
    let cert = std::fs::read_to_string(cert)?;
    let key = std::fs::read_to_string(key)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(domain))
}

/// The rustls configuration of the gateway's link to the registry (`kind = "remote"`):
/// the registry's certificate must chain to `ca` and name the host the endpoint names,
/// and with `identity` also carry exactly that URI SAN ([`PinnedIdentity`]); the
/// gateway presents `cert`/`key`. ALPN h2, ring.
pub fn registry_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    identity: Option<&str>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match identity {
        Some(identity) => Arc::new(PinnedIdentity {
            inner: webpki,
            identity: identity.to_string(),
        }),
        None => webpki,
    };
    let certs = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server certificate that chains and names the host but is not the pinned identity.
#[derive(thiserror::Error)]
#[error("the server's certificate is not {expected} (its URI SANs: {presented})")]
pub struct WrongIdentity {
    /// The pinned URI.
    pub expected: String,
    /// What the certificate carries (`none` when no URI SAN).
    pub presented: String,
}

// rustls prints a certificate error of its `Other` kind with `{:?}`: make that readable.
impl std::fmt::Debug for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A server-certificate check that pins the server's identity: webpki's (chain to the
/// CA, validity, host name) and then a URI SAN equal to `identity` — another server of
/// the same CA naming the same host is refused.
#[derive(Debug)]
pub struct PinnedIdentity {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    identity: String,
}

impl rustls::client::danger::ServerCertVerifier for PinnedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let uris = X509Certificate::from_der(end_entity.as_ref())
            .ok()
            .and_then(|(_, c)| {
                c.subject_alternative_name().ok().flatten().map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::URI(u) => Some(u.to_string()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default();
        if uris.contains(&self.identity) {
            return Ok(verified);
        }
        let presented = if uris.is_empty() {
            "none".to_string()
        } else {
            uris.iter()
                .map(|u| u.escape_debug().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(WrongIdentity {
                expected: self.identity.clone(),
                presented,
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
