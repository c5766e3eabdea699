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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::telemetry::Metrics;

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
}

/// The crypto provider: one, ring, everywhere in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

/// Builds the server's rustls configuration: server certificate and key, client
/// certificates required and verified against `client_ca`, ALPN h2.
pub fn server_config(
    client_ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: client_ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks (under
/// `handshake_timeout`), yielding only established mutual-TLS streams. The current
/// `ServerConfig` is read from `config` at each handshake, so swapping it (a later
/// reload) takes effect for the next connection. The stream ends when its receiver
/// is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(256);
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
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.load_full());
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        metrics.handshakes_ok.inc();
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => refused(&metrics, peer, &e.to_string()),
                    Err(_) => refused(&metrics, peer, "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn refused(metrics: &Metrics, peer: SocketAddr, reason: &str) {
    metrics.handshakes_refused.inc();
    tracing::warn!(%peer, reason, "TLS handshake refused");
}

/// Names the client by the first URI subject alternative name of its leaf certificate.
pub fn client_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<String, IdentityError> {
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
