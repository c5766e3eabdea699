//! The client side of mutual TLS, for the command-line client, tests and benchmarks.

use std::path::{Path, PathBuf};

use tonic::transport::{Channel, Endpoint};

/// Which certificate to present and which CA to trust.
#[derive(Debug, Clone)]
pub struct ClientCerts {
    /// CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client's certificate.
    pub cert: PathBuf,
    /// The client's key.
    pub key: PathBuf,
}

impl ClientCerts {
    /// The development PKI's files for `name` (portal, ministry, operator, outsider) in `dir`.
    pub fn dev(dir: &Path, name: &str) -> Self {
        ClientCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

impl ClientCerts {
    /// These files with the command line's overrides: another certificate and key
    /// (`--cert`/`--key`, both or neither), another CA (`--ca`).
    pub fn overridden(
        mut self,
        cert_and_key: Option<(&Path, &Path)>,
        ca: Option<&Path>,
    ) -> ClientCerts {
        if let Some((cert, key)) = cert_and_key {
            self.cert = cert.to_path_buf();
            self.key = key.to_path_buf();
        }
        if let Some(ca) = ca {
            self.ca = ca.to_path_buf();
        }
        self
    }
}

/// Errors while connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A certificate or key file.
    #[error("cannot read client certificates: {0}")]
    Files(#[from] std::io::Error),
    /// The address or the transport.
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Connects to `https://host:port` with mutual TLS. Plain `http://` is refused:
/// it would silently skip TLS.
pub async fn connect(addr: &str, certs: &ClientCerts) -> Result<Channel, ConnectError> {
    Ok(endpoint(addr, certs)?.connect().await?)
}

/// As [`connect`], but the connection is made at the first call (and again after it is
/// lost): for a peer that may be down now and answer later.
pub fn connect_lazy(addr: &str, certs: &ClientCerts) -> Result<Channel, ConnectError> {
    Ok(endpoint(addr, certs)?.connect_lazy())
}

fn endpoint(addr: &str, certs: &ClientCerts) -> Result<Endpoint, ConnectError> {
    let url = if addr.starts_with("https://") {
        addr.to_string()
    } else if addr.starts_with("http://") {
        return Err(ConnectError::Files(std::io::Error::other(
            "plain http:// would skip TLS; use an https:// address or host:port",
        )));
    } else {
        format!("https://{addr}")
    };
    let domain = url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "localhost".into());
    let tls = crate::tls::client_tls(&certs.ca, &certs.cert, &certs.key, &domain)?;
    Ok(Endpoint::from_shared(url)?.tls_config(tls)?)
}
