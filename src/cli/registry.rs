//! `popgw registry …`: generate, import, serve, update, watch the national registry.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use popgw::{config::Config, display, pki, registry};

use super::serve::raise_open_files;

#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
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
pub(crate) struct ChangeArgs {
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

/// The input of an import: a file or standard input.
pub(crate) fn input(from: &str) -> Result<Box<dyn std::io::BufRead + Send>> {
    Ok(if from == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let file = std::fs::File::open(from).with_context(|| format!("opening {from}"))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    })
}

pub(crate) async fn run(command: RegistryCommand) -> Result<()> {
    use popgw::registry::{disk::DiskStore, import::Records, postgres::PgStore, StoreLocation};
    match command {
        RegistryCommand::Generate { count, seed, out } => {
            let t = std::time::Instant::now();
            let s = if out == "-" {
                let mut stdout = std::io::stdout().lock();
                match popgw_population::generate(count, seed, &mut stdout) {
                    // The reader went away (`… | head`, or a failed import): stop quietly.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other.context("writing to standard output")?,
                }
            } else {
                popgw_population::generate_to_file(count, seed, Path::new(&out))
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
            let mut progress = display::Progress::new("citizens", 1_000_000);
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
