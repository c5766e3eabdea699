//! First start: the development PKI, the demo policy and the demo population are
//! created when absent, so that `popgw serve` alone gives a working gateway.

use std::path::Path;

use crate::config::Config;
use crate::pki::{self, PkiError};
use crate::policy::DEMO_POLICY;
use crate::registry::generate;

/// Something first start could not create.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The development PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Creates what is missing and says what it created (one line each, for stdout).
pub fn prepare(config: &Config) -> Result<Vec<String>, DemoError> {
    let mut notes = Vec::new();
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| DemoError::Io(p, e)
    };
    if config.tls.create_dev_pki && !config.tls.client_ca.exists() {
        let dir = config
            .tls
            .cert
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let _ca = pki::init(&dir)?;
        notes.push(format!(
            "created a development PKI in {} (for development only; see certs/README.md)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
    let policy = config.policy_path();
    if config.policy_file.is_none() && !policy.exists() {
        std::fs::write(&policy, DEMO_POLICY).map_err(io(&policy))?;
        notes.push(format!("wrote the demo policy to {}", policy.display()));
    }
    let population = config.population_path();
    if config.registry.create_demo && !population.exists() {
        let summary = generate::generate_to_file(
            config.registry.demo_count,
            config.registry.demo_seed,
            &population,
        )
        .map_err(io(&population))?;
        notes.push(format!(
            "generated a demo population of {} citizens in {} (seed {})",
            summary.count,
            population.display(),
            config.registry.demo_seed
        ));
    }
    Ok(notes)
}
