//! First start: the development PKI, the demo policy and the demo population are
//! created when absent, so that `popgw serve` alone gives a working gateway.
//!
//! Only in zero-config mode ([`Config::zero_config`]): with a configuration file
//! nothing is invented — a mistyped CA, policy or population path is an error that
//! names the file, never a development PKI trusted in its place, a demo policy or a
//! synthetic population that answers NO_MATCH to every real citizen. Nothing existing
//! is ever overwritten (the PKI refuses a folder that holds any of its files).

use std::path::Path;

use crate::config::{Config, RegistrySource};
use crate::pki::{self, PkiError};
use crate::policy::DEMO_POLICY;
use crate::registry::disk::DiskStore;
use crate::registry::import::{ImportError, Records};
use popgw_population as generate;

/// In a store folder: the name of the generation the demo import created.
const DEMO_MARKER: &str = "demo-generation";

/// Whether the disk store in `dir` serves the demo population this module imported
/// (not a population imported over it since).
pub fn is_demo_store(dir: &Path) -> bool {
    let marker = std::fs::read_to_string(dir.join(DEMO_MARKER)).ok();
    let current = DiskStore::generation(dir).ok().flatten();
    matches!((marker, current), (Some(m), Some(c)) if m.trim() == c)
}

/// Something first start could not create.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The development PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The demo population could not be imported.
    #[error("importing the demo population: {0}")]
    Import(#[from] ImportError),
}

/// Creates what is missing and says what it created (one line each, for stdout).
pub fn prepare(config: &Config) -> Result<Vec<String>, DemoError> {
    let mut notes = Vec::new();
    if !config.zero_config {
        return Ok(notes);
    }
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
    match config.registry_source() {
        RegistrySource::Embedded(population) => {
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
        }
        RegistrySource::Disk(dir) => {
            if config.registry.create_demo && !DiskStore::exists(&dir) {
                let summary = import_demo(config, &dir)?;
                // The generation imported is the demo: `serve` prints examples from it only.
                if let Ok(Some(generation)) = DiskStore::generation(&dir) {
                    let marker = dir.join(DEMO_MARKER);
                    std::fs::write(&marker, generation).map_err(io(&marker))?;
                }
                notes.push(format!(
                    "imported a demo population of {} citizens into {} (seed {})",
                    summary.imported,
                    dir.display(),
                    config.registry.demo_seed
                ));
            }
        }
        RegistrySource::Postgres(_) | RegistrySource::Remote(_) => {}
    }
    Ok(notes)
}

/// Generates the demo population straight into an import (through a pipe: no
/// intermediate file).
fn import_demo(
    config: &Config,
    dir: &Path,
) -> Result<crate::registry::import::ImportSummary, DemoError> {
    let (reader, mut writer) = std::io::pipe().map_err(|e| DemoError::Io("pipe".into(), e))?;
    let (count, seed) = (config.registry.demo_count, config.registry.demo_seed);
    let mut generator = Some(std::thread::spawn(move || {
        generate::generate(count, seed, &mut writer)
    }));
    // At the end of the pipe, the generator's own result: a generator that failed must
    // fail the import, not commit the part it wrote.
    let outcome = std::iter::from_fn(move || {
        let failed = match generator.take()?.join() {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "panicked".to_string(),
        };
        Some(Err(ImportError::Store(format!("demo generator: {failed}"))))
    });
    let records = Records::new(std::io::BufReader::new(reader), false).chain(outcome);
    Ok(DiskStore::import(dir, records, &mut |_| {})?)
}
