//! Test harness: the real gateway on 127.0.0.1:0 with a PKI, policy and small
//! population generated into a temporary folder, called over real mutual TLS.
#![allow(dead_code)]

pub mod postgres_server;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use popgw::client::{connect, ClientCerts};
use popgw::config::Config;
use popgw::pki::{self, DevCa};
use popgw::proto::gateway as pb;
use popgw::proto::gateway::audit_log_client::AuditLogClient;
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;
use popgw::proto::registry::population_registry_client::PopulationRegistryClient;
use popgw::proto::registry::CitizenRecord;
use popgw::registry::{Registry, Store};
use popgw::server::{serve_registry, RegistryServeOptions};
use popgw::service::registry::Faults;
use popgw::service::Gateway;
use popgw::telemetry::Metrics;
use popgw::Server;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A client known to the CA but absent from the policy.
pub const STRANGER_ID: &str = "spiffe://popgw.dev/portal/stranger";

/// Extra policy entries used by the tests, appended to the demo policy.
pub const TEST_POLICY: &str = r#"
[[client]]
identity = "spiffe://popgw.dev/ministry/limited"
role = "ministry"
rpcs = ["GetCitizen", "GetHousehold"]
procedures = ["P20", "P21"]
fields = ["full_name", "date_of_birth", "permanent_residence"]
"#;

pub struct TestGateway {
    pub addr: SocketAddr,
    /// The admin HTTP listener (metrics, health).
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub certs: PathBuf,
    pub ca: DevCa,
    pub gateway: Arc<Gateway>,
    pub population: Vec<CitizenRecord>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub fn population_records(path: &Path) -> Vec<CitizenRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Prepares the folder: PKI (with an expired and an unknown client), policy, population.
pub fn prepare(dir: &Path) -> (Config, DevCa) {
    let config = Config::rooted_at(dir);
    let certs = dir.join("certs");
    let ca = pki::init(&certs).unwrap();
    pki::write_client(&ca, &certs, "expired", pki::PORTAL_ID, (2025, 1, 1)).unwrap();
    pki::write_client(&ca, &certs, "stranger", STRANGER_ID, (2036, 1, 1)).unwrap();
    pki::write_client(
        &ca,
        &certs,
        "limited",
        "spiffe://popgw.dev/ministry/limited",
        (2036, 1, 1),
    )
    .unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(
        config.policy_path(),
        format!(
            "{}\n{}",
            // The demo portal also drives the load tests: no practical rate limit here.
            popgw::policy::DEMO_POLICY.replace(
                "identity = \"spiffe://popgw.dev/portal/dvcqg\"\n",
                "identity = \"spiffe://popgw.dev/portal/dvcqg\"\nrate_per_second = 1000000\nburst = 1000000\n",
            ),
            TEST_POLICY
        ),
    )
    .unwrap();
    popgw_population::generate_to_file(2_000, 7, &config.population_path()).unwrap();
    import_to_disk(&config.population_path(), &config.registry_path());
    (config, ca)
}

/// Imports a JSON Lines population into an on-disk store (the gateway's default kind).
pub fn import_to_disk(population: &Path, dir: &Path) -> popgw::registry::import::ImportSummary {
    let file = std::io::BufReader::new(std::fs::File::open(population).unwrap());
    popgw::registry::disk::DiskStore::import(
        dir,
        popgw::registry::import::Records::new(file, false),
        &mut |_| {},
    )
    .unwrap()
}

/// A change to a test gateway's configuration before it starts.
type Adjust<'a> = Box<dyn FnOnce(&mut Config) + 'a>;

/// A [`TestGateway`] to start: its configuration adjusted, its registry replaced.
#[must_use = "a builder does nothing until started"]
pub struct TestGatewayBuilder<'a> {
    adjust: Vec<Adjust<'a>>,
    registry: Option<Arc<dyn Registry>>,
}

impl<'a> TestGatewayBuilder<'a> {
    /// Changes the configuration [`prepare`] made (called in order).
    pub fn config(mut self, adjust: impl FnOnce(&mut Config) + 'a) -> Self {
        self.adjust.push(Box::new(adjust));
        self
    }

    /// Serves from `registry` instead of the prepared on-disk store.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The real server on 127.0.0.1:0, in a temporary folder of its own.
    pub async fn start(self) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, ca) = prepare(dir.path());
        for adjust in self.adjust {
            adjust(&mut config);
        }
        TestGateway::start_prepared(dir, config, ca, self.registry).await
    }
}

impl TestGateway {
    /// The gateway on its test defaults.
    pub async fn start() -> TestGateway {
        Self::builder().start().await
    }

    /// A gateway to adjust before it starts.
    pub fn builder<'a>() -> TestGatewayBuilder<'a> {
        TestGatewayBuilder {
            adjust: Vec::new(),
            registry: None,
        }
    }

    /// Starts on a folder [`prepare`] made (so that a registry served from the same
    /// folder shares its PKI).
    pub async fn start_prepared(
        dir: TempDir,
        config: Config,
        ca: DevCa,
        registry: Option<Arc<dyn Registry>>,
    ) -> TestGateway {
        let population = population_records(&config.population_path());
        let server = match registry {
            Some(r) => Server::with_registry(config, r).await.unwrap(),
            None => Server::load(config).await.unwrap(),
        };
        let gateway = server.gateway();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let server = server.with_admin(admin_listener);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestGateway {
            addr,
            admin,
            certs: dir.path().join("certs"),
            dir,
            ca,
            gateway,
            population,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// One VerifyIdentity (P03, a living citizen) on a new connection presenting `certs`.
    /// With TLS 1.3 connecting may succeed even when the server refuses the
    /// certificate: the refusal shows on the first call.
    pub async fn verify_with(
        &self,
        certs: ClientCerts,
    ) -> Result<pb::VerifyIdentityResponse, tonic::Status> {
        let channel = match connect(&format!("localhost:{}", self.addr.port()), &certs).await {
            Ok(c) => c,
            Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
        };
        IdentityGatewayClient::new(channel)
            .verify_identity(declare(self.living(), "P03"))
            .await
            .map(|r| r.into_inner())
    }

    /// GET `path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    pub async fn channel(&self, who: &str) -> Channel {
        connect(
            &format!("localhost:{}", self.addr.port()),
            &ClientCerts::dev(&self.certs, who),
        )
        .await
        .unwrap()
    }

    pub async fn client(&self, who: &str) -> IdentityGatewayClient<Channel> {
        IdentityGatewayClient::new(self.channel(who).await)
    }

    pub async fn audit_client(&self, who: &str) -> AuditLogClient<Channel> {
        AuditLogClient::new(self.channel(who).await)
    }

    /// The audit records an operator's query returns.
    pub async fn audit_records(&self, query: pb::AuditQueryRequest) -> Vec<pb::AuditRecord> {
        use tokio_stream::StreamExt;
        self.audit_client("operator")
            .await
            .query(query)
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap()
    }

    /// Starts again, stopped, on the same folder with `config` (the test's restart).
    pub async fn restart(mut self, config: Config) -> TestGateway {
        self.stop().await;
        let TestGateway { dir, ca, .. } = self;
        Self::start_prepared(dir, config, ca, None).await
    }

    /// Stops the server (drains and signs the final checkpoint).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    /// A living citizen with a full date of birth and a 12-digit id.
    pub fn living(&self) -> &CitizenRecord {
        self.population
            .iter()
            .find(|r| r.date_of_death.is_empty() && r.date_of_birth.len() == 10)
            .unwrap()
    }

    pub fn find(&self, pred: impl Fn(&CitizenRecord) -> bool) -> &CitizenRecord {
        self.population
            .iter()
            .find(|r| pred(r))
            .expect("population has such a citizen")
    }
}

/// A verification request declaring exactly what the record holds.
pub fn declare(r: &CitizenRecord, procedure: &str) -> pb::VerifyIdentityRequest {
    pb::VerifyIdentityRequest {
        personal_id: r.personal_id.clone(),
        full_name: r.full_name.clone(),
        date_of_birth: r.date_of_birth.clone(),
        sex: r.sex,
        procedure_code: procedure.into(),
        case_id: "HS-2026-000123".into(),
    }
}

/// A PostgreSQL database of its own for one test, dropped by [`TempDb::drop_db`].
pub struct TempDb {
    pub url: String,
    name: String,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl TempDb {
    /// Creates a database with a random name on the local PostgreSQL (127.0.0.1:5432).
    pub async fn create() -> TempDb {
        let name = format!("popgw_test_{:016x}", rand::random::<u64>());
        let client = pg_admin().await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TempDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    /// A name and URL for a database not created yet (one that a command under test
    /// should create); [`TempDb::drop_db`] drops it if it exists.
    pub fn not_created() -> TempDb {
        let name = format!("popgw_test_{:016x}", rand::random::<u64>());
        TempDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    /// Drops the database (connections still open are ended).
    pub async fn drop_db(self) {
        let client = pg_admin().await;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

async fn pg_admin() -> tokio_postgres::Client {
    let (client, connection) = match tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
    {
        Ok(c) => c,
        Err(e) => panic!(
            "these tests need PostgreSQL on 127.0.0.1:5432 (user postgres, trust): {e}. Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        ),
    };
    tokio::spawn(connection);
    client
}

/// A tracing writer that keeps everything written, for the no-personal-data tests.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A `registry serve` running in this process on 127.0.0.1:0.
pub struct RegistryServer {
    pub addr: std::net::SocketAddr,
    pub faults: Arc<Faults>,
    /// Its counters: `registry_lookups` counts the lookups it answered.
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RegistryServer {
    pub async fn start(config: &Config, store: Arc<dyn Store>, faults: Faults) -> RegistryServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(faults);
        let metrics = Arc::new(Metrics::default());
        let options = RegistryServeOptions {
            tls: config.tls.clone(),
            allow: HashSet::from([popgw::pki::GATEWAY_ID.to_string()]),
            faults: faults.clone(),
            metrics: metrics.clone(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            serve_registry(listener, store, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        RegistryServer {
            addr,
            faults,
            metrics,
            stop: Some(tx),
            handle,
        }
    }

    pub async fn client(&self, certs: &Path, who: &str) -> PopulationRegistryClient<Channel> {
        PopulationRegistryClient::new(
            connect(
                &format!("localhost:{}", self.addr.port()),
                &ClientCerts::dev(certs, who),
            )
            .await
            .unwrap(),
        )
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap();
    }
}

/// A gateway (kind "remote") in front of a `registry serve` of the same folder's store.
pub struct Setup {
    pub gw: TestGateway,
    pub upstream: RegistryServer,
    pub store: Arc<dyn Store>,
}

pub async fn setup_remote(faults: Faults, adjust: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, ca) = prepare(dir.path());
    let store = popgw::registry::open_store(
        &popgw::registry::StoreLocation::Disk(config.registry_path()),
        &popgw::registry::StoreOptions::default(),
    )
    .await
    .unwrap();
    let upstream = RegistryServer::start(&config, store.clone(), faults).await;
    let certs = dir.path().join("certs");
    config.registry.kind = popgw::config::RegistryKind::Remote;
    config.registry.endpoint = Some(format!("https://localhost:{}", upstream.addr.port()));
    config.registry.cert = Some(certs.join("gateway.pem"));
    config.registry.key = Some(certs.join("gateway.key"));
    config.registry.identity = Some(pki::SERVER_ID.into());
    // These tests poll with a declaration until the registry's change shows: every
    // NO_MATCH meanwhile would count towards the client's tries about the citizen.
    config.limits.client_failures = u32::MAX - 1;
    config.limits.subject_failures = u32::MAX;
    adjust(&mut config);
    let gw = TestGateway::start_prepared(dir, config, ca, None).await;
    Setup {
        gw,
        upstream,
        store,
    }
}

/// A plain HTTP/1.1 GET (the admin listener), read to the end: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A mutual-TLS connection as the client `who` of the dev PKI in `certs`, offering the
/// TLS `versions` given (ALPN h2); `Err` when the handshake fails.
pub async fn tls_connect(
    addr: SocketAddr,
    certs: &Path,
    who: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join(format!("{who}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{who}.key"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(popgw::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Writes `dir/popgw.toml` for `popgw serve` on ephemeral ports over the folder
/// [`prepare`] made, with `extra` appended (more sections).
pub fn write_config(dir: &Path, config: &Config, extra: &str) -> PathBuf {
    let path = dir.join("popgw.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "{data}"
[admin]
listen = "127.0.0.1:0"
[tls]
client_ca = "{certs}/ca.pem"
cert = "{certs}/server.pem"
key = "{certs}/server.key"
create_dev_pki = false
[registry]
create_demo = false
{extra}"#,
            data = config.data_dir.display(),
            certs = dir.join("certs").display()
        ),
    )
    .unwrap();
    path
}

/// The `popgw` binary, as operators run it: every test that runs the binary starts
/// from here.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_popgw"))
}

/// A registry that fails the way a test needs: the one fake upstream of the tests
/// (anything that answers is a real store or `registry serve`).
pub enum FakeRegistry {
    /// Unreachable: every call UNAVAILABLE (every try of it refused).
    Down,
    /// Answers "no such citizen", but only after this long.
    Slow(std::time::Duration),
    /// A bug in the client: every citizen lookup panics.
    Panicking,
}

/// What a registry that cannot be reached answers: every try UNAVAILABLE.
fn down(rpc: &'static str) -> popgw::registry::RegistryError {
    popgw::registry::Unavailable::Retried { rpc, tries: 3 }.into()
}

#[tonic::async_trait]
impl Registry for FakeRegistry {
    async fn citizen(
        &self,
        _: &popgw::registry::LookupKey,
        _: popgw::registry::Deadline,
    ) -> Result<Option<CitizenRecord>, popgw::registry::RegistryError> {
        match self {
            FakeRegistry::Down => Err(down("GetCitizen")),
            FakeRegistry::Slow(after) => {
                tokio::time::sleep(*after).await;
                Ok(None)
            }
            FakeRegistry::Panicking => panic!("a bug in the registry client"),
        }
    }
    async fn household(
        &self,
        _: &str,
        _: popgw::registry::Deadline,
    ) -> Result<Option<popgw::proto::registry::Household>, popgw::registry::RegistryError> {
        match self {
            FakeRegistry::Down => Err(down("GetHousehold")),
            _ => Ok(None),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            FakeRegistry::Down => "down",
            FakeRegistry::Slow(_) => "slow",
            FakeRegistry::Panicking => "panicking",
        }
    }
}

/// Runs `popgw init --config FILE` (a node's keys and audit folder, which `serve
/// --config` never makes) and checks it succeeded.
pub fn init_node(config: &Path) {
    let out = bin()
        .args(["init", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "popgw init: {out:?}");
}

/// Starts the `popgw serve` binary on `config` with `RUST_LOG=log_filter`; returns it
/// and its gRPC port.
pub fn spawn_serve(
    config: &Path,
    log_filter: &str,
    stderr: std::process::Stdio,
) -> (std::process::Child, u16) {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", log_filter)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut port = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("popgw serving ") {
            let addr = rest
                .split(" on ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            port = addr.rsplit(':').next().unwrap().parse().unwrap();
            break;
        }
    }
    assert_ne!(port, 0, "server did not start");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

/// Stops a [`spawn_serve`] child as an operator would (SIGTERM: drain, final signed
/// checkpoint) and waits for it without blocking the test's runtime: the test's own
/// connections must be free to close, or the gateway would wait them out for its whole
/// shutdown grace (10 s).
pub async fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// A TCP relay to a service on loopback that a test can cut (open connections closed,
/// new ones closed at once, as if the service were gone) and restore.
pub struct Relay {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(to: &'static str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = watching.clone();
                if *watching.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    /// The service is gone: open connections closed, new ones too.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// A private nats-server with the shipped configuration (tests/it/nats_link.rs).
pub mod nats_server;

/// NATS JetStream on this machine (the audit witness and the central index's feed).
pub const NATS: &str = "127.0.0.1:4222";

/// Fails with how to start NATS when it is not there (never skips).
pub async fn require_nats() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("popgw=debug")
        .with_test_writer()
        .try_init();
    if tokio::net::TcpStream::connect(NATS).await.is_err() {
        panic!(
            "NATS with JetStream is not listening on {NATS}: start it with \
             `start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
             -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log` \
             (.ci/run does this)"
        );
    }
}

/// A stream and a node id of this test's own; the stream is removed at the end.
pub struct TestStream {
    pub name: String,
    pub node: String,
}

impl TestStream {
    pub fn new() -> TestStream {
        let id = rand::random::<u64>();
        TestStream {
            name: format!("POPGW_TEST_{id:016x}"),
            node: format!("test-{id:016x}"),
        }
    }

    /// A gateway (node id of this test) witnessed in this stream through `url`.
    pub async fn gateway(&self, url: &str) -> TestGateway {
        self.gateway_as(&self.node, url, |_| {}).await
    }

    /// A gateway witnessed in this stream through `url` as node `node`, its
    /// configuration then adjusted.
    pub async fn gateway_as(
        &self,
        node: &str,
        url: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let settings = self.settings(url);
        let node = node.to_string();
        TestGateway::builder()
            .config(move |c| {
                c.audit.witness = Some(settings);
                c.node_id = node;
                adjust(c);
            })
            .start()
            .await
    }

    pub fn config(&self) -> popgw::audit::witness::WitnessConfig {
        popgw::audit::witness::WitnessConfig {
            link: popgw::link::nats::NatsLink::new(format!("nats://{NATS}")),
            stream: self.name.clone(),
            replicas: 1,
            node: self.node.clone(),
            records: true,
        }
    }

    /// The configuration of a gateway started by [`TestStream::gateway`] on `dir`.
    pub fn gateway_config(&self, dir: &Path) -> Config {
        let mut config = Config::rooted_at(dir);
        config.node_id = self.node.clone();
        config.audit.witness = Some(self.settings(&format!("nats://{NATS}")));
        config
    }

    /// `popgw audit verify --dir DIR --witness URL` for this stream and node.
    pub fn verify_command(&self, dir: &Path, url: &str) -> std::process::Command {
        let mut command = bin();
        command.args(["audit", "verify", "--dir"]).arg(dir).args([
            "--witness",
            url,
            "--stream",
            &self.name,
            "--node",
            &self.node,
        ]);
        command
    }

    /// `[audit.witness]` on this stream through `url`.
    pub fn settings(&self, url: &str) -> popgw::config::WitnessSettings {
        popgw::config::WitnessSettings {
            kind: "nats".into(),
            link: popgw::link::nats::NatsLink::new(url),
            unknown: Default::default(),
            stream: self.name.clone(),
            replicas: 1,
            records: true,
            required_at_start: true,
        }
    }

    pub async fn remove(self) {
        let client = async_nats::connect(NATS).await.unwrap();
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&self.name)
            .await;
    }
}

/// `callers` concurrent callers each verifying `r` (P03) `each` times on `portal`'s
/// connection; every answer must be OK.
pub async fn verify_load(
    portal: &IdentityGatewayClient<Channel>,
    r: &CitizenRecord,
    callers: usize,
    each: usize,
) {
    let calls: Vec<_> = (0..callers)
        .map(|_| {
            let mut portal = portal.clone();
            let r = r.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    portal.verify_identity(declare(&r, "P03")).await.unwrap();
                }
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
}

/// Refusals of `client` with `code` in `records`: recorded one by one, or counted in a
/// per-second summary record (outcome AGGREGATED, detail "N refusals … CODE×n, …").
pub fn refusals_accounted(
    records: &[popgw::audit::StoredRecord],
    client: &str,
    code: &str,
) -> usize {
    let one_by_one = records
        .iter()
        .filter(|x| {
            x.body.client == client && x.body.code == code && x.body.outcome != "AGGREGATED"
        })
        .count();
    let counted: usize = records
        .iter()
        .filter(|x| x.body.client == client && x.body.outcome == "AGGREGATED")
        .filter_map(|x| {
            let (_, after) = x.body.detail.split_once(&format!("{code}×"))?;
            after
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    one_by_one + counted
}

/// Appends `n` plain VerifyIdentity records (request ids `r0`…) to `log`, one at a time:
/// each its own batch.
pub async fn append_records(log: &popgw::audit::AuditLog, n: usize) {
    for i in 0..n {
        log.append(popgw::audit::AuditEntry {
            request_id: format!("r{i}"),
            ..popgw::audit::AuditEntry::new(
                popgw::policy::Rpc::VerifyIdentity,
                popgw::audit::Outcome::Match,
            )
        })
        .await
        .unwrap();
    }
}

/// Changes the first MATCH recorded in the node's audit folder into NO_MATCH, as an
/// insider who can write the folder (but holds no key) would; returns the segment.
pub fn tamper_with_a_match(audit_dir: &Path) -> PathBuf {
    let segment = std::fs::read_dir(audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-")
        })
        .expect("an audit segment");
    let text = std::fs::read_to_string(&segment).unwrap();
    let tampered = text.replacen("\"outcome\":\"MATCH\"", "\"outcome\":\"NO_MATCH\"", 1);
    assert_ne!(text, tampered, "a MATCH record to tamper with");
    std::fs::write(&segment, tampered).unwrap();
    segment
}
