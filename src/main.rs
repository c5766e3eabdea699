//! The `popgw` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    pub(crate) mod call;
    pub(crate) mod certs;
    pub(crate) mod conn;
    pub(crate) mod console;
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
        command: cli::certs::CertsCommand,
    },
    /// The embedded registry's population.
    Registry {
        #[command(subcommand)]
        command: cli::registry::RegistryCommand,
    },
    /// Ask whether a declared identity belongs to one living citizen.
    Verify(cli::call::Verify),
    /// Read a citizen's record, minimised to the procedure's profile.
    Citizen(cli::call::Citizen),
    /// Read a citizen's household.
    Household(cli::call::Household),
    /// List the procedures.
    Procedures(cli::call::Procedures),
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
    AccessReport(cli::call::AccessReport),
    /// The operators' web console: pages for the audit log, a citizen's history, integrity
    /// and health, served on loopback and backed by audited calls with an operator's
    /// certificate
    Console(cli::console::ConsoleArgs),
}

/// mimalloc rather than glibc's malloc: in paired runs of the gateway (benches/paired.sh,
/// BENCHMARKS.md) malloc, free and the moves of large futures were a quarter of a loaded
/// server's samples. The library chooses no allocator; this binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::CheckConfig { config } => cli::serve::check_config(&config),
        Command::Certs { command } => cli::certs::run(command),
        Command::Registry { command } => cli::registry::run(command).await,
        Command::Verify(call) => call.run().await,
        Command::Citizen(call) => call.run().await,
        Command::Household(call) => call.run().await,
        Command::Procedures(call) => call.run().await,
        Command::AccessReport(call) => call.run().await,
        Command::Console(args) => args.run().await,
        Command::Audit { command } => cli::audit::run(command).await,
        Command::Limits { command } => cli::limits::run(command).await,
    }
}
