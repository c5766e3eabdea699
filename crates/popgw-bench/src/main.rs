//! `popgw-bench`: the load generator (`loadgen`) and the baseline server (`baseline`), each
//! started as its own process and pinned to its own core by `benches/compare.sh`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use popgw::config::Config;

#[derive(Parser)]
#[command(name = "popgw-bench", version, about = "popgw's benchmark instruments")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// A load generator: mutual TLS, raw HTTP/2, closed or open loop or new connections,
    /// a JSON report (run it on its own core).
    Loadgen(LoadgenArgs),
    /// A bare tonic + rustls server with popgw's TLS configuration answering fixed
    /// replies — the limit of the stack that gateway figures are quoted against.
    /// Hold idle connections (and unfinished calls on them) open until interrupted.
    Hold {
        /// The server, host:port on loopback.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: std::net::SocketAddr,
        /// The development PKI's folder (certificates `<client>.pem` and `.key`).
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// Clients (certificate names), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "portal")]
        clients: Vec<String>,
        /// Connections per client.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Unfinished calls per connection (headers sent, no body).
        #[arg(long, default_value_t = 0)]
        calls: usize,
    },
    Baseline {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50071")]
        listen: String,
        /// A folder where `popgw serve` has run (its certs/).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Loadgen(args) => loadgen(args).await,
        Command::Baseline { listen, dir } => baseline(listen, dir).await,
        Command::Hold {
            addr,
            certs,
            clients,
            connections,
            calls,
        } => hold(addr, certs, clients, connections, calls).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn hold(
    addr: std::net::SocketAddr,
    certs: PathBuf,
    clients: Vec<String>,
    connections: usize,
    calls: usize,
) -> Result<()> {
    let held =
        popgw_bench::hold::hold(addr, "localhost", &certs, &clients, connections, calls).await?;
    // The script reads the server's memory once this line is out.
    println!(
        "holding {} connections and {} calls",
        held.connections.len(),
        held.calls.len()
    );
    let _ = tokio::signal::ctrl_c().await;
    drop(held);
    Ok(())
}

async fn baseline(listen: String, dir: PathBuf) -> Result<()> {
    let mut config = Config::rooted_at(&dir);
    // The development CA's CRL, as `popgw serve` checks it on its zero-config defaults:
    // the same revocation check at every handshake, or the baseline's new connections
    // would skip a signature verification the gateway's make.
    config.tls.check_dev_crl();
    let tls = popgw::tls::server_config(&config.tls)?;
    let defaults = &config.registry;
    let population =
        popgw_bench::loadgen::Population::demo(defaults.demo_count, defaults.demo_seed, 1)?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    popgw_bench::baseline::serve(listener, tls, population.people()[0].clone(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
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
    /// RPCs and weights, e.g. verify=8,citizen=1,household=1 (verify_false: a declaration
    /// whose name is not the citizen's, expecting NO_MATCH).
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
    /// Closed loop: a caller whose connection is lost dials a new one and goes on.
    #[arg(long)]
    reconnect: bool,
    /// Closed loop: each caller starts at most this many calls a second.
    #[arg(long)]
    caller_rate: Option<f64>,
    /// Write every answered call's request id, method and answer to this file.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Each call's deadline in ms from when it was due: sent as grpc-timeout, the call
    /// abandoned when it passes (as a portal with a deadline would).
    #[arg(long)]
    deadline_ms: Option<u64>,
}

async fn loadgen(args: LoadgenArgs) -> Result<()> {
    use popgw_bench::loadgen::{self, Mode, Plan, Population, Rpc};
    let addr = tokio::net::lookup_host(&args.addr)
        .await
        .with_context(|| format!("cannot resolve {}", args.addr))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.addr))?;
    let mut mix = Vec::new();
    for part in args.mix.split(',') {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let rpc = Rpc::parse(name.trim()).with_context(|| {
            format!("--mix: unknown RPC {name:?} (verify, verify_false, citizen, household)")
        })?;
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
        reconnect: args.reconnect,
        caller_rate: args.caller_rate,
        answers: args.answers,
        deadline: args.deadline_ms.map(std::time::Duration::from_millis),
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
