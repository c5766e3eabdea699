//! `popgw console`: the operators' web console (`popgw::console`), a process of its own
//! holding an operator's certificate and serving the operator's browser on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use popgw::client::{connect, connect_lazy, ClientCerts};
use popgw::console::{self, Console, ConsoleOptions, Node};

#[derive(Args)]
pub(crate) struct ConsoleArgs {
    /// Where the browser connects: a loopback address (reach it through an SSH tunnel).
    #[arg(long, default_value = "127.0.0.1:9470")]
    listen: SocketAddr,
    /// Listen on a non-loopback address too (warns: anyone who reaches it and holds the
    /// printed secret acts as the operator).
    #[arg(long)]
    allow_remote: bool,
    /// The gateway's admin metrics, scraped for the health page ("" for none).
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    metrics: String,
    /// Another node of the deployment (repeatable): its head and verification on the
    /// integrity page, with the same certificate.
    #[arg(long = "node", value_name = "ADDR")]
    nodes: Vec<String>,
    /// Seconds between scrapes.
    #[arg(long, default_value_t = 10)]
    scrape_every: u64,
    /// The gateway (the first node: live, search and a citizen's history ask it).
    #[arg(long, default_value = "localhost:50051", env = "POPGW_ADDR")]
    addr: String,
    /// Which development certificate to present (the operator's).
    #[arg(long = "as", default_value = "operator")]
    as_: String,
    /// Folder of the development PKI.
    #[arg(long, default_value = "certs")]
    certs: std::path::PathBuf,
    /// The operator's certificate (overrides --as).
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Its key.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// CA of the gateway's certificate.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

impl ConsoleArgs {
    pub(crate) async fn run(self) -> Result<()> {
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            bail!(
                "--listen {}: not a loopback address; the console acts as the operator, so it \
                 listens on loopback only (reach it through an SSH tunnel), or pass --allow-remote",
                self.listen
            );
        }
        if self.scrape_every == 0 {
            bail!("--scrape-every: must be at least 1 second");
        }
        let certs = ClientCerts::dev(&self.certs, &self.as_).overridden(
            self.cert.as_deref().zip(self.key.as_deref()),
            self.ca.as_deref(),
        );
        for (what, path) in [
            ("certificate", &certs.cert),
            ("key", &certs.key),
            ("CA", &certs.ca),
        ] {
            if !path.is_file() {
                bail!(
                    "no operator {what} at {}: the console needs an operator's certificate \
                     (--cert and --key, or --as with --certs)",
                    path.display()
                );
            }
        }
        let chain = popgw::tls::load_certs(&certs.cert)
            .with_context(|| format!("reading {}", certs.cert.display()))?;
        let operator = popgw::tls::client_identity(Some(&chain))
            .with_context(|| format!("{}: no usable identity", certs.cert.display()))?;
        // The first node must answer now; another may be down (the integrity page then
        // says so) and is connected to when it answers.
        let first = Node {
            addr: self.addr.clone(),
            channel: connect(&self.addr, &certs)
                .await
                .with_context(|| format!("connecting to the gateway at {}", self.addr))?,
        };
        let mut nodes = Vec::new();
        for addr in &self.nodes {
            nodes.push(Node {
                addr: addr.clone(),
                channel: connect_lazy(addr, &certs).with_context(|| format!("--node {addr}"))?,
            });
        }
        let (console, token) = Console::new(
            first,
            nodes,
            operator.clone(),
            ConsoleOptions {
                metrics_url: (!self.metrics.is_empty()).then(|| self.metrics.clone()),
                scrape_every: Duration::from_secs(self.scrape_every),
                allow_remote: self.allow_remote,
            },
        );
        console.check_operator().await?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr()?;
        if self.allow_remote {
            tracing::warn!(%addr, "the console answers any Host (--allow-remote): whoever reaches it with the secret acts as {}", operator.as_str());
        }
        out!("popgw console for {} on {}", operator.as_str(), self.addr);
        out!("open http://{addr}/login?token={token}");
        console::serve(listener, console, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the console")
    }
}
