//! The `popgw` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use popgw::client::{connect, ClientCerts};
use popgw::proto::gateway as pb;
use popgw::proto::gateway::audit_log_client::AuditLogClient;
use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;
use popgw::proto::registry::Sex;
use popgw::{config::Config, console, pki};

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
    pub(crate) mod audit;
    pub(crate) mod init;
    pub(crate) mod limits;
    pub(crate) mod nats_flags;
    pub(crate) mod registry;
    pub(crate) mod serve;
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
        command: cli::registry::RegistryCommand,
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
        command: cli::audit::AuditCommand,
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
        } => cli::serve::run(config, listen, admin_listen).await,
        Command::Init { config } => cli::init::run(&config).await,
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config)?;
            cli::serve::refuse_file_problems(&config, &loaded)?;
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
        Command::Registry { command } => cli::registry::run(command).await,
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
        Command::Audit { command } => cli::audit::run(command).await,
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
