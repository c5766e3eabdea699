//! `popgw audit witness`: the witness stream's set-up (`init`) and nkeys for its users
//! (`nkey`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use popgw::config::Config;
use popgw::link::nats::{self, Init, StreamPlan};

use super::nats_flags::NatsFlags;

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum WitnessCommand {
    /// Create the witness stream hardened (subjects popgw.audit.*, file storage,
    /// deny_delete, deny_purge, no rollup, a duplicate window, max_age no shorter than the
    /// audit log's retention), or check an existing one and say what is wrong with it;
    /// with a --config counting tries nationally, its key-value bucket too. Run it with
    /// the NATS administrator's credentials.
    Init {
        /// Take the link, stream, replicas and retention from this gateway configuration
        /// ([audit.witness], [audit] retention_days).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The NATS server(s) (overrides the configuration's url).
        #[arg(long)]
        nats: Option<String>,
        #[command(flatten)]
        flags: NatsFlags,
        /// The stream (default: the configuration's, else POPGW_AUDIT).
        #[arg(long)]
        stream: Option<String>,
        /// Its replicas (default: the configuration's, else 1).
        #[arg(long)]
        replicas: Option<usize>,
        /// Keep messages at least this many days (default: [audit] retention_days; 0 =
        /// forever).
        #[arg(long)]
        retention_days: Option<u64>,
    },
    /// Make a user nkey: the seed goes into a new file (mode 600; a node's
    /// nkey_seed_file), the public key is printed (for the server's configuration).
    Nkey {
        /// The seed file to create.
        #[arg(long)]
        seed_file: PathBuf,
    },
}

pub(crate) async fn run(command: WitnessCommand) -> Result<()> {
    match command {
        WitnessCommand::Init {
            config,
            nats: url,
            flags,
            stream,
            replicas,
            retention_days,
        } => {
            let config = config.map(|p| Config::load(&p)).transpose()?;
            let witness = config.as_ref().and_then(|c| c.audit.witness.clone());
            let Some(link) = flags.link(url, witness.as_ref().map(|w| w.link.clone())) else {
                bail!("no NATS server: --nats tls://HOST:4222 or [audit.witness] url in --config");
            };
            let days = retention_days
                .or(config.as_ref().map(|c| c.audit.retention_days))
                .unwrap_or(0);
            let plan = StreamPlan {
                name: stream
                    .or(witness.as_ref().map(|w| w.stream.clone()))
                    .unwrap_or_else(|| "POPGW_AUDIT".into()),
                subjects: vec![nats::SUBJECTS.into()],
                replicas: replicas.or(witness.map(|w| w.replicas)).unwrap_or(1),
                max_age: Duration::from_secs(days.saturating_mul(86_400)),
            };
            if !(1..=5).contains(&plan.replicas) {
                bail!("--replicas: 1 to 5");
            }
            let client = link.connect("popgw witness init").await?;
            let js = async_nats::jetstream::new(client);
            match nats::init_stream(&js, &plan).await? {
                Init::Created => {
                    out!("created stream {}: {}", plan.name, plan.describe());
                }
                Init::Exists(problems) if problems.is_empty() => {
                    out!("stream {} is as it must be: {}", plan.name, plan.describe());
                }
                Init::Exists(problems) => bail!(
                    "stream {} exists but is not as it must be:\n  {}\nchange it as the NATS \
                     administrator, or create a new one (--stream NAME) and point the nodes \
                     at it (once on, deny_delete and deny_purge cannot be switched off)",
                    plan.name,
                    problems.join("\n  ")
                ),
            }
            // The national try budget's bucket, when the configuration counts tries
            // nationally: the nodes may use it, not create it.
            if let Some(c) = config
                .as_ref()
                .filter(|c| c.limits.national == popgw::config::NationalKind::Nats)
            {
                let bucket = &c.limits.national_bucket;
                if js.get_key_value(bucket).await.is_ok() {
                    out!("key-value bucket {bucket} (national try budget) exists");
                } else {
                    let options = c.limit_options();
                    js.create_stream(popgw::limits::national::bucket_stream(bucket, &options))
                        .await
                        .with_context(|| format!("creating the key-value bucket {bucket}"))?;
                    out!("created key-value bucket {bucket} (national try budget)");
                }
            }
            Ok(())
        }
        WitnessCommand::Nkey { seed_file } => {
            let (seed, public) = nats::new_user_nkey();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&seed_file)
                .with_context(|| format!("creating {}", seed_file.display()))?;
            std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", seed_file.display()))?;
            out!("{public}");
            Ok(())
        }
    }
}
