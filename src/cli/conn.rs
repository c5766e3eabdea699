//! What every client command shares: the connection to a gateway (`--addr`, `--as`, the
//! certificates), the procedure and dossier of a call, and how answers and errors print.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use popgw::client::{connect, ClientCerts};
use popgw::display;
use popgw::proto::gateway::audit_log_client::AuditLogClient;
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;

#[derive(Args)]
pub(crate) struct Conn {
    /// Gateway address.
    #[arg(long, default_value = "localhost:50051", env = "POPGW_ADDR")]
    pub(crate) addr: String,
    /// Which development client certificate to present (portal, ministry, operator).
    #[arg(long = "as", default_value = "portal")]
    pub(crate) as_: String,
    /// Folder of the development PKI.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Client certificate (overrides --as).
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// CA of the server certificate.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct Case {
    /// Procedure code, P01..P25.
    #[arg(long)]
    pub(crate) procedure: String,
    /// Dossier number.
    #[arg(long = "case")]
    pub(crate) case_id: String,
}

impl Conn {
    pub(crate) fn certs(&self) -> ClientCerts {
        ClientCerts::dev(&self.certs, &self.as_).overridden(
            self.cert.as_deref().zip(self.key.as_deref()),
            self.ca.as_deref(),
        )
    }
    pub(crate) async fn gateway(&self) -> Result<IdentityGatewayClient<tonic::transport::Channel>> {
        Ok(IdentityGatewayClient::new(
            connect(&self.addr, &self.certs()).await?,
        ))
    }
    pub(crate) async fn audit(&self) -> Result<AuditLogClient<tonic::transport::Channel>> {
        Ok(AuditLogClient::new(
            connect(&self.addr, &self.certs()).await?,
        ))
    }
}

/// A gRPC error as the user sees it.
pub(crate) fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(display::status(&status))
}

/// Prints an answer as proto3 JSON (`--json`) or as `text` formats it.
pub(crate) fn show<T: serde::Serialize>(
    json: bool,
    answer: &T,
    text: fn(&T) -> String,
) -> Result<()> {
    if json {
        return print_json(answer);
    }
    out!("{}", text(answer));
    Ok(())
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    out!("{}", serde_json::to_string(value)?);
    Ok(())
}
