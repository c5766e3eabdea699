//! Connections and calls held open, so that a script can read what each costs the
//! server (`popgw-bench hold`, driven by `benches/memory.sh`): idle mutual-TLS HTTP/2
//! connections, and on them calls whose headers are sent and whose body is not (the
//! state a call is in from its first frame until its message has arrived).

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::loadgen::{client_config, Dialer, LoadError};

/// What is held: dropped, everything closes.
pub struct Held {
    /// The connections.
    pub connections: Vec<SendRequest<Bytes>>,
    /// The calls' request streams (headers sent, no body).
    pub calls: Vec<h2::SendStream<Bytes>>,
}

/// Opens `per_client` connections as each client in `clients` (certificate files
/// `<dir>/<client>.pem` and `.key`) and `calls` unfinished VerifyIdentity calls on each.
pub async fn hold(
    addr: SocketAddr,
    server_name: &str,
    dir: &Path,
    clients: &[String],
    per_client: usize,
    calls: usize,
) -> Result<Held, LoadError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| LoadError::Plan(format!("server name: {e}")))?;
    let uri: http::Uri = format!("https://{server_name}/popgw.v1.IdentityGateway/VerifyIdentity")
        .parse()
        .map_err(|e| LoadError::Plan(format!("uri: {e}")))?;
    let mut held = Held {
        connections: Vec::new(),
        calls: Vec::new(),
    };
    let http2 = |e: h2::Error| LoadError::Connect {
        addr,
        reason: format!("http2: {e}"),
    };
    for client in clients {
        let dialer = Dialer {
            addr,
            name: name.clone(),
            tls: TlsConnector::from(client_config(dir, client)?),
        };
        for _ in 0..per_client {
            let send = dialer
                .open()
                .await
                .map_err(|reason| LoadError::Connect { addr, reason })?;
            let mut send = send.ready().await.map_err(http2)?;
            for _ in 0..calls {
                let request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .body(())
                    .map_err(|e| LoadError::Plan(e.to_string()))?;
                let (_answer, stream) = send.send_request(request, false).map_err(http2)?;
                held.calls.push(stream);
                send = send.ready().await.map_err(http2)?;
            }
            held.connections.push(send);
        }
    }
    Ok(held)
}
