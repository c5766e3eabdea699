//! `popgw serve`: the gateway, from its embedded default or a configuration file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use popgw::proto::registry::Sex;
use popgw::{config::Config, demo, Server};

/// Raises the soft open-files limit to the hard one: at the common default of 1,024 a
/// flood of idle connections turned everyone else away ("Too many open files").
pub(crate) fn raise_open_files(tls: &popgw::config::TlsSettings) {
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
pub(crate) fn refuse_file_problems(path: &Path, config: &Config) -> Result<()> {
    refuse_problems(path, config.file_problems())
}

/// Any of `problems` refuses the configuration file at `path` (exit 64, each named).
pub(crate) fn refuse_problems(path: &Path, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(popgw::config::ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    }
    .into())
}

pub(crate) async fn run(
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
        config.tls.check_dev_crl();
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
    let cache = if server.gateway().lookups.cache().is_some() {
        "record cache on"
    } else {
        "record cache off"
    };
    match server.gateway().lookups.kind() {
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
pub(crate) struct Summary {
    registry: String,
    audit: String,
    policy: String,
}

impl Summary {
    fn of(config: &Config) -> Summary {
        let registry = config.registry_source().to_string();
        Summary {
            registry,
            audit: config.audit_dir().display().to_string(),
            policy: config.policy_path().display().to_string(),
        }
    }
}

/// `popgw check-config`: every problem of a configuration file at once (exit 64), or
/// what it would serve.
pub(crate) fn check_config(path: &Path) -> Result<()> {
    let loaded = Config::load(path)?;
    refuse_file_problems(path, &loaded)?;
    out!(
        "{}: OK (listen {}, registry kind {}, audit in {})",
        path.display(),
        loaded.listen,
        loaded.registry.kind,
        loaded.audit_dir().display()
    );
    Ok(())
}
