//! `popgw audit …`: query, tail, head, verify, index and the witness.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use popgw::proto::gateway as pb;
use popgw::{audit, config::Config, display, service};
use tokio_stream::StreamExt;

use crate::cli;
use crate::cli::conn::{print_json, rpc, Conn};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
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

pub(crate) fn print_record(r: &pb::AuditRecord, json: bool) {
    out!("{}", display::audit_record(r, json));
}

/// `audit verify --witness`: always ends with a verdict. Messages in the node's subject
/// that it did not send are listed by stream sequence (and fail the run); a tail of
/// records not yet shipped is waited for (5 s) and then reported as such, not as tamper.
pub(crate) async fn witness_verdict(
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

pub(crate) async fn run(command: AuditCommand) -> Result<()> {
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
                    out!("{}", display::verify_report(&r));
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
                        out!("{}", display::index_report(&report));
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
                    None
                } else {
                    let id = popgw::validation::parse_declared_id(&req.personal_id, true)?;
                    Some(pseudonyms()?.pseudonym(id.digits()))
                };
                let case_id = if req.case_id.trim().is_empty() {
                    None
                } else {
                    Some(pseudonyms()?.case_pseudonym(&req.case_id))
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
                let Some(key) = popgw::audit::parse_public_key(&hex_key) else {
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
            out!("{}", display::checkpoint(&head));
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

pub(crate) fn read_pubkey(path: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pubkey(&text)
}

pub(crate) fn parse_pubkey(text: &str) -> Result<ed25519_dalek::VerifyingKey> {
    popgw::audit::parse_public_key(text)
        .context("public key must be 64 hex digits of an ed25519 public key")
}
