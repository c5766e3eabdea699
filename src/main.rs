//! The `popgw` command: a thin shell over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use popgw::client::{connect, ClientCerts};
use popgw::proto::gateway as pb;
use popgw::proto::gateway::audit_log_client::AuditLogClient;
use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;
use popgw::proto::registry::Sex;
use popgw::{audit, config::Config, console, demo, pki, registry, service, Server};
use tokio_stream::StreamExt;

/// Prints a line to stdout; a closed pipe (`popgw ... | head`) ends the program quietly
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// One file per command where practical.
mod cli {
    pub(crate) mod init;
    pub(crate) mod limits;
    pub(crate) mod nats_flags;
    pub(crate) mod witness;
}

#[derive(Parser)]
#[command(
    name = "popgw",
    version,
    about = "gRPC gateway to the national population database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (first start creates dev certificates, a demo policy and population).
    Serve {
        /// Configuration file (see config/popgw.example.toml); defaults need none.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the listen address.
        #[arg(long)]
        listen: Option<String>,
        /// Override the admin listener's address (`[admin] listen`).
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Make a node's signing and pseudonym keys and its audit folder, once, from its
    /// configuration file (`serve --config` never makes them); run again, it makes nothing.
    Init {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration file: every problem at once, each with its key; exit 64
    /// when there is any (serve checks the same before binding).
    CheckConfig {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The embedded registry's population.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Ask whether a declared identity belongs to one living citizen.
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// Personal id (12 digits; 9 for P01).
        #[arg(long)]
        id: String,
        /// Full name as declared.
        #[arg(long)]
        name: String,
        /// Date of birth, YYYY-MM-DD (or YYYY when the record holds only the year).
        #[arg(long)]
        dob: String,
        /// male or female.
        #[arg(long)]
        sex: Option<String>,
        #[command(flatten)]
        case: Case,
    },
    /// Read a citizen's record, minimised to the procedure's profile.
    Citizen {
        #[command(flatten)]
        conn: Conn,
        /// Personal id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        case: Case,
    },
    /// Read a citizen's household.
    Household {
        #[command(flatten)]
        conn: Conn,
        /// Personal id of any member.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        case: Case,
    },
    /// List the procedures.
    Procedures {
        #[command(flatten)]
        conn: Conn,
        /// Print the built-in catalogue as a catalogue file (no gateway needed).
        #[arg(long)]
        builtin_toml: bool,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Benchmarks: drive load at a gateway or the baseline on loopback and print a JSON
    /// report (benches/compare.sh runs it on its own core).
    Loadgen(LoadgenArgs),
    /// Benchmarks: a bare tonic + rustls server with popgw's TLS configuration answering
    /// fixed replies — the limit of the stack that gateway figures are quoted against.
    BenchBaseline {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50071")]
        listen: String,
        /// A folder where `popgw serve` has run (its certs/).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The limits against enumeration: lift a citizen's lock (operators).
    Limits {
        #[command(subcommand)]
        command: cli::limits::LimitsCommand,
    },
    /// A citizen's access report: who verified or saw their data, when, for which
    /// procedure (as the citizen portal; `--as citizen` by default).
    AccessReport {
        #[command(flatten)]
        conn: Conn,
        /// The citizen's 12-digit personal id.
        #[arg(long)]
        id: String,
        /// Only events at or after this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// Only events at or before this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development PKI (never for production).
    Init {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Issue a client certificate from the development CA: NAME.pem and NAME.key.
    Issue {
        /// The development PKI's folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name (letters, digits, - and _).
        #[arg(long)]
        name: String,
        /// The client identity, the certificate's URI SAN (spiffe://popgw.dev/portal/NAME).
        #[arg(long)]
        uri: String,
        /// Days of validity from today.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke NAME.pem: add it to the development CA's CRL (crl.pem), which a running
    /// gateway picks up within a second (or at SIGHUP).
    Revoke {
        /// The development PKI's folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name of the certificate (NAME.pem).
        #[arg(long)]
        name: String,
    },
}

#[derive(Args)]
#[command(args_override_self = true)]
struct LoadgenArgs {
    /// The server, host:port on loopback.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// A folder where `popgw serve` has run on its defaults: its certs/ (the portal's
    /// and the ministry's certificates); the declarations are its demo population.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Declarations from this JSON Lines population instead of the demo population.
    #[arg(long)]
    population: Option<PathBuf>,
    /// Closed loop: concurrent callers (each waits for its answer).
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// HTTP/2 connections per client certificate.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Open loop at this many calls a second (latency from each call's due time).
    #[arg(long, conflicts_with = "connect")]
    rate: Option<f64>,
    /// Open loop: calls outstanding at most (a call due beyond is dropped and counted).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Each call on a new connection (TCP, full mutual-TLS handshake, HTTP/2).
    #[arg(long)]
    connect: bool,
    /// RPCs and weights, e.g. verify=8,citizen=1,household=1.
    #[arg(long, default_value = "verify=1")]
    mix: String,
    /// Draw ids by a Zipf law of this exponent (default: uniformly).
    #[arg(long)]
    zipf: Option<f64>,
    /// Living people of the population used, at most.
    #[arg(long, default_value_t = 10_000)]
    people: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Stop after this many measured calls.
    #[arg(long)]
    max_calls: Option<u64>,
    /// The server's process id: its CPU over the measured part goes in the report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Write the JSON report here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Write a deterministic synthetic population as JSON Lines (`--out -`: standard output).
    Generate {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 2022)]
        seed: u64,
        /// A file, or - for standard output.
        #[arg(long)]
        out: String,
    },
    /// Import a JSON Lines population into an on-disk store or PostgreSQL, atomically.
    Import {
        /// A JSON Lines file, or - for standard input.
        #[arg(long)]
        from: String,
        /// A store folder, or a postgres:// URL.
        #[arg(long)]
        to: String,
        /// Skip (and count) records that fail validation instead of stopping.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Change one record (bumps the store's version; followers see it in WatchChanges).
    Update {
        /// A store folder, or a postgres:// URL.
        #[arg(long)]
        store: String,
        /// The citizen's 12-digit personal id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Serve a store as popgw.registry.v1.PopulationRegistry over mutual TLS.
    Serve {
        /// A store folder, or a postgres:// URL.
        #[arg(long)]
        store: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: String,
        /// Configuration file: its [tls] section (and [registry] timeout_ms, pool_size).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A client identity (URI SAN) to serve; repeat for more. Nobody else is answered.
        #[arg(long, required = true)]
        allow: Vec<String>,
        /// Fault injection: add this latency to every answer.
        #[arg(long, default_value_t = 0)]
        inject_latency_ms: u64,
        /// Fault injection: add up to this much more, uniformly.
        #[arg(long, default_value_t = 0)]
        inject_jitter_ms: u64,
        /// Fault injection: this fraction of calls answers UNAVAILABLE.
        #[arg(long, default_value_t = 0.0)]
        inject_error_rate: f64,
        /// Fault injection: this fraction of answers carries records that fail validation.
        #[arg(long, default_value_t = 0.0)]
        inject_garbage_rate: f64,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ChangeArgs {
    /// A new first line of the permanent residence.
    #[arg(long)]
    address_line: Option<String>,
    /// The date of death, YYYY-MM-DD.
    #[arg(long)]
    deceased: Option<String>,
    /// A new full name.
    #[arg(long)]
    full_name: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every segment, the chain and every checkpoint; exit 0 only if all hold.
    Verify {
        /// The audit folder.
        #[arg(long, default_value = "data/audit")]
        dir: PathBuf,
        /// The checkpoint public key, a file holding 64 hex digits (pin it: the copy in
        /// the folder can be replaced by whoever rewrites the folder).
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Take the pinned key (`audit.public_key`) and the folder from this gateway
        /// configuration.
        #[arg(long, conflicts_with = "pubkey")]
        config: Option<PathBuf>,
        /// Also compare the folder with the heads witnessed in NATS JetStream
        /// (tls://HOST:PORT; without a value, [audit.witness] of --config): a wiped,
        /// rolled-back or extended log fails.
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        witness: Option<String>,
        #[command(flatten)]
        nats: cli::nats_flags::NatsFlags,
        /// The witness stream (default: --config's, else POPGW_AUDIT).
        #[arg(long)]
        stream: Option<String>,
        /// The node whose heads to compare (default: --config's node_id, else node-1).
        #[arg(long)]
        node: Option<String>,
        /// Also compare the folder with the central audit index (postgres://…): a record
        /// missing, altered or invented in the index fails.
        #[arg(long)]
        index: Option<String>,
    },
    /// Run the central audit indexer: read every node's records from the witness stream
    /// into PostgreSQL (until interrupted; resumes where it stopped).
    Index {
        /// Take [audit.index] and [audit.witness] from this gateway configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The index database (postgres://…; overrides the configuration).
        #[arg(long)]
        postgres: Option<String>,
        /// The NATS server of the witness stream (overrides the configuration's url).
        #[arg(long)]
        nats: Option<String>,
        #[command(flatten)]
        nats_flags: cli::nats_flags::NatsFlags,
        /// The witness stream.
        #[arg(long)]
        stream: Option<String>,
        /// The durable consumer's name (one per index database).
        #[arg(long)]
        consumer: Option<String>,
        /// Months kept (0: all).
        #[arg(long)]
        retain_months: Option<u32>,
        /// NODE=HEX: a node's checkpoint public key (repeat for each node). With any,
        /// only records under a seal made by their node's key are indexed.
        #[arg(long = "node-key")]
        node_keys: Vec<String>,
        /// Serve /metrics and /healthz (plain HTTP) on this address, e.g. 127.0.0.1:9465.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// The witness stream: create it hardened, make nkeys for its users.
    Witness {
        #[command(subcommand)]
        command: cli::witness::WitnessCommand,
    },
    /// Records matching filters, from the files (--dir) or a running gateway.
    Query {
        #[command(flatten)]
        conn: Conn,
        /// Read these files instead of asking a gateway.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// With --dir and --personal-id: the pseudonym key file.
        #[arg(long, default_value = "data/audit-pseudonym.key")]
        pseudonym_key: PathBuf,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        procedure: Option<String>,
        #[arg(long)]
        case_id: Option<String>,
        #[arg(long)]
        personal_id: Option<String>,
        #[arg(long)]
        outcome: Option<String>,
        /// What the cache did: hit, miss, coalesced, stale or none.
        #[arg(long, value_parser = popgw::cache::CacheOutcome::WORDS)]
        cache: Option<String>,
        /// Only records at or after this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// Only records at or before this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// The latest signed checkpoint of a running gateway.
    Head {
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow live records from a sequence number, from a running gateway or the files (--dir).
    Tail {
        #[command(flatten)]
        conn: Conn,
        /// Follow these files instead of asking a gateway (polled twice a second).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Args)]
struct Conn {
    /// Gateway address.
    #[arg(long, default_value = "localhost:50051", env = "POPGW_ADDR")]
    addr: String,
    /// Which development client certificate to present (portal, ministry, operator).
    #[arg(long = "as", default_value = "portal")]
    as_: String,
    /// Folder of the development PKI.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Client certificate (overrides --as).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA of the server certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Case {
    /// Procedure code, P01..P25.
    #[arg(long)]
    procedure: String,
    /// Dossier number.
    #[arg(long = "case")]
    case_id: String,
}

impl Conn {
    fn certs(&self) -> ClientCerts {
        let mut c = ClientCerts::dev(&self.certs, &self.as_);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c.cert = cert.clone();
            c.key = key.clone();
        }
        if let Some(ca) = &self.ca {
            c.ca = ca.clone();
        }
        c
    }
    async fn gateway(&self) -> Result<IdentityGatewayClient<tonic::transport::Channel>> {
        Ok(IdentityGatewayClient::new(
            connect(&self.addr, &self.certs()).await?,
        ))
    }
    async fn audit(&self) -> Result<AuditLogClient<tonic::transport::Channel>> {
        Ok(AuditLogClient::new(
            connect(&self.addr, &self.certs()).await?,
        ))
    }
}

/// A gRPC error as the user sees it.
fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(console::status(&status))
}

/// Prints an answer as proto3 JSON (`--json`) or as `text` formats it.
fn show<T: serde::Serialize>(json: bool, answer: &T, text: fn(&T) -> String) -> Result<()> {
    if json {
        return print_json(answer);
    }
    out!("{}", text(answer));
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    out!("{}", serde_json::to_string(value)?);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` installs it once its configuration (`[log] format`) is read.
    if !matches!(cli.command, Command::Serve { .. }) {
        popgw::telemetry::init(false);
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A configuration that cannot be used: every problem, one a line, and EX_USAGE.
            if let Some(popgw::config::ConfigError::Invalid { path, problems }) = e.downcast_ref() {
                eprintln!("error: {}: {} problem(s):", path.display(), problems.len());
                for problem in problems {
                    eprintln!("  {problem}");
                }
                return ExitCode::from(64);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => serve(config, listen, admin_listen).await,
        Command::Init { config } => cli::init::run(&config).await,
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config)?;
            refuse_file_problems(&config, &loaded)?;
            out!(
                "{}: OK (listen {}, registry kind {}, audit in {})",
                config.display(),
                loaded.listen,
                loaded.registry.kind,
                loaded.audit_dir().display()
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { out },
        } => {
            let _ca = pki::init(&out)?;
            out!(
                "wrote a development PKI to {} (development only)",
                out.display()
            );
            Ok(())
        }
        Command::Certs {
            command:
                CertsCommand::Issue {
                    dir,
                    name,
                    uri,
                    days,
                },
        } => {
            pki::issue(&dir, &name, &uri, days)?;
            out!(
                "issued {uri} as {}/{name}.pem and {name}.key ({days} days; development only)",
                dir.display()
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Revoke { dir, name },
        } => {
            let serial = pki::revoke(&dir, &name)?;
            out!(
                "revoked {}/{name}.pem (serial {serial}) in {}/crl.pem",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Registry { command } => registry_command(command).await,
        Command::Verify {
            conn,
            id,
            name,
            dob,
            sex,
            case,
        } => {
            let sex = match sex.as_deref() {
                None => Sex::Unspecified,
                Some("male" | "m" | "nam") => Sex::Male,
                Some("female" | "f" | "nu" | "nữ") => Sex::Female,
                Some(other) => bail!("--sex {other:?}: use male or female"),
            };
            let answer = conn
                .gateway()
                .await?
                .verify_identity(pb::VerifyIdentityRequest {
                    personal_id: id,
                    full_name: name,
                    date_of_birth: dob,
                    sex: sex as i32,
                    procedure_code: case.procedure,
                    case_id: case.case_id,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &answer, console::verification)
        }
        Command::Citizen { conn, id, case } => {
            let answer = conn
                .gateway()
                .await?
                .get_citizen(pb::GetCitizenRequest {
                    personal_id: id,
                    procedure_code: case.procedure,
                    case_id: case.case_id,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &answer, console::citizen)
        }
        Command::Household { conn, id, case } => {
            let answer = conn
                .gateway()
                .await?
                .get_household(pb::GetHouseholdRequest {
                    personal_id: id,
                    procedure_code: case.procedure,
                    case_id: case.case_id,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &answer, console::household)
        }
        Command::Procedures {
            builtin_toml: true, ..
        } => {
            out!(
                "{}",
                popgw::catalogue::Catalogue::builtin().to_toml().trim_end()
            );
            Ok(())
        }
        Command::Procedures { conn, .. } => {
            let answer = conn
                .gateway()
                .await?
                .list_procedures(pb::ListProceduresRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &answer, console::procedures)
        }
        Command::Audit { command } => audit_command(command).await,
        Command::Loadgen(args) => loadgen(args).await,
        Command::BenchBaseline { listen, dir } => {
            let config = Config::rooted_at(&dir);
            let tls = popgw::tls::server_config(&config.tls)?;
            let defaults = &config.registry;
            let population = popgw::bench::loadgen::Population::demo(
                defaults.demo_count,
                defaults.demo_seed,
                1,
            )?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("baseline listening on {}", listener.local_addr()?);
            popgw::bench::baseline::serve(listener, tls, population.people()[0].clone(), async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }
        Command::Limits { command } => cli::limits::run(command).await,
        Command::AccessReport {
            mut conn,
            id,
            from_ms,
            to_ms,
        } => {
            // The citizen portal's certificate unless another was named.
            if conn.as_ == "portal" && conn.cert.is_none() {
                conn.as_ = "citizen".into();
            }
            let report = CitizenAccessClient::new(connect(&conn.addr, &conn.certs()).await?)
                .access_report(pb::AccessReportRequest {
                    personal_id: id,
                    from_unix_ms: from_ms,
                    to_unix_ms: to_ms,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &report, console::access_report)
        }
    }
}

async fn loadgen(args: LoadgenArgs) -> Result<()> {
    use popgw::bench::loadgen::{self, Mode, Plan, Population, Rpc};
    let addr = tokio::net::lookup_host(&args.addr)
        .await
        .with_context(|| format!("cannot resolve {}", args.addr))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.addr))?;
    let mut mix = Vec::new();
    for part in args.mix.split(',') {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let rpc = Rpc::parse(name.trim())
            .with_context(|| format!("--mix: unknown RPC {name:?} (verify, citizen, household)"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .with_context(|| format!("--mix: weight of {name} is not a whole number"))?;
        mix.push((rpc, weight));
    }
    let mode = match (args.rate, args.connect) {
        (Some(rate), _) => Mode::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        (None, true) => Mode::Connect {
            callers: args.callers,
        },
        (None, false) => Mode::Closed {
            callers: args.callers,
        },
    };
    let secs = |s: f64, flag: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .with_context(|| format!("{flag}: not a duration in seconds"))
    };
    let defaults = Config::default().registry;
    let population = match &args.population {
        Some(file) => Population::load(file, args.people)?,
        None => Population::demo(defaults.demo_count, defaults.demo_seed, args.people)?,
    };
    let plan = Plan {
        addr,
        server_name: "localhost".into(),
        certs: args.dir.join("certs"),
        connections: args.connections,
        mode,
        mix,
        zipf: args.zipf,
        warmup: secs(args.warmup_secs, "--warmup-secs")?,
        duration: secs(args.secs, "--secs")?,
        max_calls: args.max_calls,
        server_pid: args.server_pid,
        label: args.label,
    };
    let report = loadgen::run(plan, population).await?;
    eprintln!("{}", report.summary());
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// Raises the soft open-files limit to the hard one: at the common default of 1,024 a
/// flood of idle connections turned everyone else away ("Too many open files").
fn raise_open_files(tls: &popgw::config::TlsSettings) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < tls.max_connections + 256 => tracing::warn!(
            open_files = limit,
            max_connections = tls.max_connections,
            "the open-files limit leaves little room above tls.max_connections; raise it (LimitNOFILE=) or lower the setting"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// The files a configuration names, checked as `serve` would use them: any problem is a
/// configuration problem (exit 64), before anything is bound or written.
fn refuse_file_problems(path: &Path, config: &Config) -> Result<()> {
    let problems = config.file_problems();
    if problems.is_empty() {
        return Ok(());
    }
    Err(popgw::config::ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    }
    .into())
}

async fn serve(
    file: Option<PathBuf>,
    listen: Option<String>,
    admin_listen: Option<String>,
) -> Result<()> {
    let mut config = match &file {
        Some(path) => {
            let loaded = Config::load(path)?;
            refuse_file_problems(path, &loaded)?;
            loaded
        }
        None => Config::zero_config(),
    };
    // The command line's addresses override the file's, now and when it is read again.
    let overrides = move |config: &mut Config| -> Result<()> {
        if let Some(listen) = &listen {
            config.listen = listen.parse().context("--listen")?;
        }
        if let Some(admin) = &admin_listen {
            config.admin.listen = admin.parse().context("--admin-listen")?;
        }
        Ok(())
    };
    overrides(&mut config)?;
    popgw::telemetry::init(config.log.format == "json");
    if !config.zero_config && config.tls.client_crls.is_empty() {
        tracing::warn!(
            "tls.client_crls is empty: revocation is OFF — a revoked client certificate is \
             served until it expires; list your CA's CRL"
        );
    }
    for note in demo::prepare(&config)? {
        out!("{note}");
    }
    if config.zero_config {
        // The development CA's revocation list (`popgw certs revoke`), when it has one.
        let crl = config.tls.client_ca.with_file_name("crl.pem");
        if crl.exists() {
            config.tls.client_crls = vec![crl];
        }
    }
    raise_open_files(&config.tls);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin = if config.admin.enabled {
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;
        Some(admin)
    } else {
        None
    };
    let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let summary = Summary::of(&config);
    let mut server = Server::load(config).await?;
    if let Some(admin) = admin {
        server = server.with_admin(admin);
    }
    // Handle SIGTERM and SIGINT from now on, before anyone is told we are serving: a supervisor
    // that stops us right after start-up gets a clean shutdown, not the default kill.
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    let cache = if server.gateway().cache.is_some() {
        "record cache on"
    } else {
        "record cache off"
    };
    match server.gateway().registry.kind() {
        "remote" => out!(
            "popgw serving on {addr} (mutual TLS) in front of the registry at {} ({cache})",
            summary.registry
        ),
        kind => out!(
            "popgw serving {} citizens from the {kind} registry at {} on {addr} (mutual TLS, {cache})",
            server.population(),
            summary.registry
        ),
    }
    match admin_addr {
        Some(a) => out!("  admin: http://{a}/metrics, /healthz, /readyz"),
        None => out!("  admin: off ([admin] enabled = false)"),
    }
    out!("  audit log: {}", summary.audit);
    out!(
        "  policy: {} (reloaded on SIGHUP or when it changes)",
        summary.policy
    );
    for r in server.examples() {
        out!(
            "  try: popgw verify --id {} --name \"{}\" --dob {} --sex {} --procedure P03 --case DEMO-1",
            r.personal_id,
            r.full_name,
            r.date_of_birth,
            if r.sex == Sex::Female as i32 { "female" } else { "male" }
        );
    }
    // SIGHUP: read the configuration file, certificates, CRLs and policy again (the
    // file watch reads the latter within a second of a change; SIGHUP forces it).
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let reloader = server.reloader();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let reloader = reloader.clone();
                let file = file.clone();
                let overrides = overrides.clone();
                let _ = tokio::task::spawn_blocking(move || match file {
                    None => {
                        reloader.reload(true);
                    }
                    Some(path) => match Config::load(&path) {
                        Ok(mut config) => {
                            if overrides(&mut config).is_ok() {
                                reloader.apply_config(config);
                            }
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "configuration file not read again; the running configuration stays"
                        ),
                    },
                })
                .await;
            }
        });
    }
    let shutdown = async move {
        #[cfg(unix)]
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        // stdout may be closed by now (a supervisor went away): never panic on it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "popgw shutting down: draining and signing the final audit checkpoint"
        );
    };
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// Where things are, for the start-up lines (read before the configuration moves).
struct Summary {
    registry: String,
    audit: String,
    policy: String,
}

impl Summary {
    fn of(config: &Config) -> Summary {
        use popgw::config::RegistryKind;
        let registry = match config.registry.kind {
            RegistryKind::Remote => config.registry.endpoint.clone().unwrap_or_default(),
            RegistryKind::Postgres => {
                popgw::link::postgres::redact(config.registry.url.as_deref().unwrap_or_default())
            }
            RegistryKind::Embedded => config.population_path().display().to_string(),
            RegistryKind::Disk => config.registry_path().display().to_string(),
        };
        Summary {
            registry,
            audit: config.audit_dir().display().to_string(),
            policy: config.policy_path().display().to_string(),
        }
    }
}

/// The input of an import: a file or standard input.
fn input(from: &str) -> Result<Box<dyn std::io::BufRead + Send>> {
    Ok(if from == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let file = std::fs::File::open(from).with_context(|| format!("opening {from}"))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    })
}

async fn registry_command(command: RegistryCommand) -> Result<()> {
    use popgw::registry::{disk::DiskStore, import::Records, postgres::PgStore, StoreLocation};
    match command {
        RegistryCommand::Generate { count, seed, out } => {
            let t = std::time::Instant::now();
            let s = if out == "-" {
                let mut stdout = std::io::stdout().lock();
                match registry::generate::generate(count, seed, &mut stdout) {
                    // The reader went away (`… | head`, or a failed import): stop quietly.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other.context("writing to standard output")?,
                }
            } else {
                registry::generate::generate_to_file(count, seed, Path::new(&out))
                    .with_context(|| format!("writing {out}"))?
            };
            let line = format!(
                "wrote {} citizens ({} households, {} deceased, {} year-only births, {} old ids) to {} in {:.1}s",
                s.count, s.households, s.deceased, s.year_only, s.with_old_id,
                if out == "-" { "standard output" } else { &out }, t.elapsed().as_secs_f64()
            );
            if out == "-" {
                eprintln!("{line}");
            } else {
                out!("{line}");
            }
            Ok(())
        }
        RegistryCommand::Import {
            from,
            to,
            skip_invalid,
        } => {
            let t = std::time::Instant::now();
            let reader = input(&from)?;
            let mut progress = console::Progress::new("citizens", 1_000_000);
            let records = Records::new(reader, skip_invalid);
            let skipped = records.skipped_counter();
            let summary = match StoreLocation::parse(&to) {
                StoreLocation::Disk(dir) => {
                    let (summary, progress_back) = tokio::task::spawn_blocking(move || {
                        let s = DiskStore::import(&dir, records, &mut |n| progress.update(n));
                        (s, progress)
                    })
                    .await?;
                    progress = progress_back;
                    summary
                }
                StoreLocation::Postgres(url) => {
                    PgStore::import(&url, records, |n| progress.update(n)).await
                }
            };
            progress.finish();
            let summary = summary
                .context("import failed; nothing was imported, the previous store still serves")?;
            let skipped = skipped.load(std::sync::atomic::Ordering::Relaxed);
            // A URL may carry a password: name the kind of store, not the URL.
            let into = match StoreLocation::parse(&to) {
                StoreLocation::Disk(_) => to.clone(),
                StoreLocation::Postgres(_) => "PostgreSQL".into(),
            };
            out!(
                "imported {} citizens into {into} at version {} in {:.1}s{}",
                summary.imported,
                summary.version,
                t.elapsed().as_secs_f64(),
                if skipped > 0 {
                    format!(" ({skipped} invalid records skipped)")
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        RegistryCommand::Update { store, id, change } => {
            let change = match (change.address_line, change.deceased, change.full_name) {
                (Some(a), _, _) => registry::Change::AddressLine(a),
                (_, Some(d), _) => registry::Change::Deceased(d),
                (_, _, Some(n)) => registry::Change::FullName(n),
                _ => bail!("give one of --address-line, --deceased, --full-name"),
            };
            popgw::validation::parse_personal_id(&id)?;
            let store =
                registry::open_store(&StoreLocation::parse(&store), &Default::default()).await?;
            match store.update(&id, &change).await? {
                Some(r) => {
                    out!("updated: version {}", r.version);
                    Ok(())
                }
                None => bail!("no citizen has this personal id in the store"),
            }
        }
        RegistryCommand::Serve {
            store,
            listen,
            config,
            allow,
            inject_latency_ms,
            inject_jitter_ms,
            inject_error_rate,
            inject_garbage_rate,
        } => {
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::zero_config(),
            };
            for rate in [inject_error_rate, inject_garbage_rate] {
                if !(0.0..=1.0).contains(&rate) {
                    bail!(
                        "--inject-error-rate and --inject-garbage-rate are fractions from 0 to 1"
                    );
                }
            }
            if config.zero_config && config.tls.create_dev_pki && !config.tls.client_ca.exists() {
                let dir = config.tls.cert.parent().unwrap_or(Path::new("."));
                pki::init(dir)?;
                out!(
                    "created a development PKI in {} (development only)",
                    dir.display()
                );
            }
            let location = StoreLocation::parse(&store);
            let store = registry::open_store(&location, &config.store_options()).await?;
            let count = store.count().await?;
            raise_open_files(&config.tls);
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            let faults = std::sync::Arc::new(popgw::service::registry::Faults {
                latency_ms: inject_latency_ms,
                jitter_ms: inject_jitter_ms,
                error_rate: inject_error_rate,
                garbage_rate: inject_garbage_rate,
                ..Default::default()
            });
            #[cfg(unix)]
            let (mut term, mut int, mut usr1, mut usr2) = {
                use tokio::signal::unix::{signal, SignalKind};
                (
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::user_defined1())?,
                    signal(SignalKind::user_defined2())?,
                )
            };
            let switch = faults.clone();
            let shutdown = async move {
                #[cfg(unix)]
                loop {
                    tokio::select! {
                        _ = int.recv() => break,
                        _ = term.recv() => break,
                        _ = usr1.recv() => {
                            switch.down.store(true, std::sync::atomic::Ordering::Relaxed);
                            eprintln!("popgw registry: switched off (SIGUSR1): every call answers UNAVAILABLE");
                        }
                        _ = usr2.recv() => {
                            switch.down.store(false, std::sync::atomic::Ordering::Relaxed);
                            eprintln!("popgw registry: switched back on (SIGUSR2)");
                        }
                    }
                }
                #[cfg(not(unix))]
                let _ = tokio::signal::ctrl_c().await;
            };
            out!(
                "popgw registry serving {count} citizens from {} on {addr} (mutual TLS; {} client identities allowed{})",
                match &location { StoreLocation::Disk(d) => d.display().to_string(), StoreLocation::Postgres(_) => "PostgreSQL".into() },
                allow.len(),
                if faults.any() { "; FAULT INJECTION ON" } else { "" }
            );
            let options = popgw::server::RegistryServeOptions {
                tls: config.tls.clone(),
                allow: allow.into_iter().collect(),
                faults,
                metrics: Default::default(),
            };
            popgw::server::serve_registry(listener, store, options, shutdown).await?;
            Ok(())
        }
    }
}

fn print_record(r: &pb::AuditRecord, json: bool) {
    out!("{}", console::audit_record(r, json));
}

/// `audit verify --witness`: always ends with a verdict. Messages in the node's subject
/// that it did not send are listed by stream sequence (and fail the run); a tail of
/// records not yet shipped is waited for (5 s) and then reported as such, not as tamper.
async fn witness_verdict(
    dir: &std::path::Path,
    config: &audit::witness::WitnessConfig,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<()> {
    let c = audit::witness::compare_settled(dir, config, key, std::time::Duration::from_secs(5))
        .await?;
    for f in &c.foreign {
        out!("FOREIGN in the witness: {f}");
    }
    match c.verdict {
        Ok(a) => {
            out!(
                "witness agrees: {} batch heads sealed by this node up to seq {}",
                a.heads,
                a.witnessed_seq
            );
            if let Some((from, to)) = a.unwitnessed {
                out!(
                    "not yet witnessed: records {from}..={to} (a running gateway is still \
                     shipping them; a stopped one ships them at its next start)"
                );
            }
            if !c.foreign.is_empty() {
                bail!(
                    "the witness stream holds {} message(s) in node {}'s subject that the node \
                     did not send (someone else can publish as this node: check NATS permissions)",
                    c.foreign.len(),
                    config.node
                );
            }
            Ok(())
        }
        Err(d) => bail!("audit log FAILED against the witness: {d}"),
    }
}

async fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify {
            mut dir,
            pubkey,
            config,
            witness,
            nats,
            stream,
            node,
            index,
        } => {
            let loaded = config.as_ref().map(|p| Config::load(p)).transpose()?;
            let key = match (pubkey, config) {
                (Some(path), _) => Some(read_pubkey(&path)?),
                (None, Some(path)) => {
                    let config = loaded.as_ref().expect("loaded above");
                    dir = config.audit_dir();
                    match &config.audit.public_key {
                        Some(hex) => Some(parse_pubkey(hex)?),
                        None => bail!(
                            "{}: no audit.public_key to verify against (pin the key: \
                             audit.public_key = the hex in {}/audit-signing.pub, checked out of band)",
                            path.display(),
                            dir.display()
                        ),
                    }
                }
                (None, None) => None,
            };
            match audit::verify_dir(&dir, key.as_ref()) {
                Ok(r) => {
                    out!("{}", console::verify_report(&r));
                    if let Some(url) = witness {
                        let configured = loaded.as_ref().and_then(|c| c.audit.witness.as_ref());
                        let url = Some(url).filter(|u| !u.is_empty());
                        let Some(link) = nats.link(url, configured.map(|w| w.link.clone())) else {
                            bail!("--witness: a URL (tls://HOST:4222), or --config with [audit.witness]");
                        };
                        let config = audit::witness::WitnessConfig {
                            link,
                            stream: stream
                                .or(configured.map(|w| w.stream.clone()))
                                .unwrap_or_else(|| "POPGW_AUDIT".into()),
                            replicas: 1,
                            node: node
                                .or(loaded.as_ref().map(|c| c.node_id.clone()))
                                .unwrap_or_else(|| "node-1".into()),
                            records: false,
                        };
                        let seal_key = match &key {
                            Some(k) => *k,
                            None => read_pubkey(&dir.join("audit-signing.pub"))?,
                        };
                        witness_verdict(&dir, &config, &seal_key).await?;
                    }
                    if let Some(url) = index {
                        let index =
                            audit::index::AuditIndex::lazy(&audit::index::IndexConfig::new(url))?;
                        let report = audit::index::verify_against(&dir, &index).await?;
                        out!("{}", console::index_report(&report));
                        if !report.ok() {
                            bail!(
                                "audit index FAILED against the folder of node {}",
                                report.node
                            );
                        }
                    }
                    if key.is_none() {
                        eprintln!(
                            "WARNING: verified against {}/audit-signing.pub, the key found in the \
                             folder itself: whoever can rewrite the folder can replace it too. Pin \
                             the key (--pubkey FILE, or audit.public_key with --config).",
                            dir.display()
                        );
                    }
                    Ok(())
                }
                Err(f) => bail!("audit log FAILED verification: {f}"),
            }
        }
        AuditCommand::Query {
            conn,
            dir,
            pseudonym_key,
            client,
            procedure,
            case_id,
            personal_id,
            outcome,
            cache,
            from_ms,
            to_ms,
            limit,
        } => {
            let req = pb::AuditQueryRequest {
                from_unix_ms: from_ms,
                to_unix_ms: to_ms,
                client: client.unwrap_or_default(),
                procedure: procedure.unwrap_or_default(),
                case_id: case_id.unwrap_or_default(),
                personal_id: personal_id.unwrap_or_default(),
                outcome: outcome.unwrap_or_default(),
                limit,
                cache: cache.unwrap_or_default(),
            };
            if let Some(dir) = dir {
                let pseudonyms = || {
                    audit::Pseudonymizer::load(&pseudonym_key)
                        .with_context(|| format!("pseudonym key {}", pseudonym_key.display()))
                };
                let subject = if req.personal_id.is_empty() {
                    String::new()
                } else {
                    let id = popgw::validation::parse_declared_id(&req.personal_id, true)?;
                    pseudonyms()?.pseudonym(id.digits())
                };
                let case_id = if req.case_id.trim().is_empty() {
                    String::new()
                } else {
                    pseudonyms()?.case_pseudonym(&req.case_id)
                };
                let filter = service::audit_log::Filter {
                    from_ms: req.from_unix_ms,
                    to_ms: req.to_unix_ms,
                    client: req.client,
                    procedure: req.procedure,
                    case_id,
                    subject,
                    outcome: req.outcome,
                    cache: req.cache,
                };
                let limit = if limit == 0 {
                    usize::MAX
                } else {
                    limit as usize
                };
                let mut printed = 0usize;
                audit::scan_records(&dir, 1, |r| {
                    if filter.accepts(&r.body) {
                        print_record(&service::audit_log::to_pb(&r), conn.json);
                        printed += 1;
                    }
                    printed < limit
                })?;
                return Ok(());
            }
            let mut stream = conn
                .audit()
                .await?
                .query(req)
                .await
                .map_err(rpc)?
                .into_inner();
            while let Some(r) = stream.next().await {
                print_record(&r.map_err(rpc)?, conn.json);
            }
            Ok(())
        }
        AuditCommand::Index {
            config,
            postgres,
            nats,
            nats_flags,
            stream,
            consumer,
            retain_months,
            node_keys,
            admin_listen,
        } => {
            let config = config.map(|p| Config::load(&p)).transpose()?;
            let mut keys = std::collections::HashMap::new();
            let configured = config
                .as_ref()
                .and_then(|c| c.audit.index.as_ref())
                .map(|i| i.node_keys.clone())
                .unwrap_or_default();
            for (node, hex_key) in configured.into_iter().chain(
                node_keys
                    .iter()
                    .map(|k| {
                        k.split_once('=')
                            .map(|(n, h)| (n.to_string(), h.to_string()))
                    })
                    .collect::<Option<Vec<_>>>()
                    .context("--node-key NODE=HEX")?,
            ) {
                let Some(key) = popgw::config::parse_public_key(&hex_key) else {
                    bail!("key of node {node}: 64 hex digits of an ed25519 public key");
                };
                keys.insert(node, key);
            }
            let settings = config.as_ref().and_then(|c| c.audit.index.clone());
            let witness = config.as_ref().and_then(|c| c.audit.witness.clone());
            let Some(url) = postgres.or(settings.as_ref().map(|s| s.url.clone())) else {
                bail!(
                    "no index database: --postgres postgres://… or [audit.index] url in --config"
                );
            };
            let Some(link) = nats_flags.link(nats, witness.as_ref().map(|w| w.link.clone())) else {
                bail!("no witness stream: --nats tls://… or [audit.witness] url in --config");
            };
            let feed = audit::index::FeedConfig {
                link,
                stream: stream
                    .or(witness.map(|w| w.stream))
                    .unwrap_or_else(|| "POPGW_AUDIT".into()),
                consumer: consumer
                    .or(settings.as_ref().map(|s| s.consumer.clone()))
                    .unwrap_or_else(|| "popgw-index".into()),
                retain_months: retain_months
                    .or(settings.as_ref().map(|s| s.retain_months))
                    .unwrap_or(24),
                node_keys: keys,
            };
            if feed.node_keys.is_empty() {
                bail!(
                    "no node keys: the index takes only records sealed by their node's key; give \
                     --node-key NODE=HEX for each node (its audit.public_key), or \
                     [audit.index.node_keys] in --config"
                );
            }
            let mut index_config = audit::index::IndexConfig::new(url.clone());
            if let Some(s) = &settings {
                index_config.timeout = std::time::Duration::from_millis(s.timeout_ms);
            }
            // Its database is made like its schema, when missing.
            let link = popgw::link::postgres::PgLink::parse(&url)?;
            if let Some(name) = link
                .create_database_if_missing(index_config.timeout)
                .await
                .map_err(|e| anyhow::anyhow!(e))?
            {
                out!("created the index's database {name}");
            }
            let index = std::sync::Arc::new(audit::index::AuditIndex::open(&index_config).await?);
            out!(
                "popgw audit index: stream {} on {} into {} (consumer {}, {} months kept, {})",
                feed.stream,
                feed.link.redacted_url(),
                popgw::link::postgres::redact(&url),
                feed.consumer,
                feed.retain_months,
                format!("seals checked for {} node(s)", feed.node_keys.len())
            );
            let metrics = std::sync::Arc::new(popgw::telemetry::Metrics::default());
            if let Some(addr) = admin_listen {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("--admin-listen {addr}"))?;
                out!(
                    "popgw audit index: metrics on http://{}/metrics",
                    listener.local_addr()?
                );
                tokio::spawn(popgw::admin::serve_metrics(
                    listener,
                    metrics.clone(),
                    std::future::pending(),
                ));
            }
            let indexer = audit::index::Indexer::new(index, feed, metrics);
            indexer
                .run(async {
                    #[cfg(unix)]
                    {
                        use tokio::signal::unix::{signal, SignalKind};
                        if let (Ok(mut int), Ok(mut term)) = (
                            signal(SignalKind::interrupt()),
                            signal(SignalKind::terminate()),
                        ) {
                            tokio::select! {
                                _ = int.recv() => {}
                                _ = term.recv() => {}
                            }
                            return;
                        }
                    }
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await;
            Ok(())
        }
        AuditCommand::Witness { command } => cli::witness::run(command).await,
        AuditCommand::Head { conn } => {
            let head = conn
                .audit()
                .await?
                .head(pb::AuditHeadRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if conn.json {
                return print_json(&head);
            }
            out!("{}", console::checkpoint(&head));
            Ok(())
        }
        AuditCommand::Tail {
            conn,
            dir: Some(dir),
            from,
        } => {
            let mut next = from.max(1);
            loop {
                audit::scan_records(&dir, next, |r| {
                    print_record(&service::audit_log::to_pb(&r), conn.json);
                    next = r.body.seq + 1;
                    true
                })?;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        AuditCommand::Tail {
            conn,
            dir: None,
            from,
        } => {
            let mut stream = conn
                .audit()
                .await?
                .watch(pb::AuditWatchRequest { from_seq: from })
                .await
                .map_err(rpc)?
                .into_inner();
            while let Some(r) = stream.next().await {
                print_record(&r.map_err(rpc)?, conn.json);
            }
            Ok(())
        }
    }
}

fn read_pubkey(path: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pubkey(&text)
}

fn parse_pubkey(text: &str) -> Result<ed25519_dalek::VerifyingKey> {
    popgw::config::parse_public_key(text)
        .context("public key must be 64 hex digits of an ed25519 public key")
}
