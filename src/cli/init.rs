//! `popgw init --config FILE`: makes a node's keys and audit folder once, on purpose.
//!
//! `serve --config` never makes them (a mistyped `data_dir` or key path would otherwise
//! start a second history under new keys, unnoticed): it refuses with exit 64 and names
//! this command. `init` checks the rest of the file first, as `serve` would, so a
//! refused file leaves nothing behind; run again, it makes nothing and says so.

use std::path::{Path, PathBuf};

use anyhow::Result;
use popgw::config::Config;

pub(crate) async fn run(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    super::serve::refuse_problems(path, config.input_problems())?;
    let folder = config.node_folder();
    let created: Vec<PathBuf> = folder.initialise()?;
    let key = popgw::audit::load_or_create_signing_key(&folder.signing_key)?;
    if created.contains(&folder.signing_key) {
        // The chain starts here, with a signed checkpoint at sequence 0: from now on the
        // folder is this key's log, and a start that finds it empty knows it was wiped.
        let audit = popgw::audit::AuditConfig::new(config.audit_dir(), config.node_id.clone());
        let log = popgw::audit::AuditLog::open(audit, key.clone())?;
        log.shutdown().await;
    }
    if created.is_empty() {
        out!(
            "{}: node {} was initialised already; nothing made",
            path.display(),
            config.node_id
        );
    } else {
        out!("{}: initialised node {}", path.display(), config.node_id);
        for p in &created {
            out!("  made {}", p.display());
        }
    }
    out!(
        "  audit public key: {} (pin it: [audit] public_key)",
        hex::encode(key.verifying_key().to_bytes())
    );
    Ok(())
}
