//! Secret keys: the checkpoint signing key and the pseudonymisation key.

use super::format::sync_dir;
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// The file beside the audit log that names its pseudonym key's fingerprint.
pub(crate) const FINGERPRINT_FILE: &str = "pseudonym-key.fingerprint";

/// Reads a 32-byte secret stored as hex, or creates one (mode 0600, fsynced,
/// directory fsynced) if the file does not exist.
fn load_or_create_secret(path: &Path) -> io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => return decode_secret(path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = match opts.open(path) {
        Ok(f) => f,
        // Someone else created it concurrently: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return decode_secret(path, &std::fs::read_to_string(path)?)
        }
        Err(e) => return Err(e),
    };
    file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())?;
    file.sync_all()?;
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        sync_dir(parent)?;
    }
    Ok(secret)
}

fn decode_secret(path: &Path, text: &str) -> io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected 64 hex characters (a 32-byte key)",
                path.display()
            ),
        )
    })?;
    Ok(out)
}

/// Loads the ed25519 checkpoint signing key (32-byte secret as hex), creating
/// it with mode 0600 if absent.
pub fn load_or_create_signing_key(path: &Path) -> io::Result<SigningKey> {
    Ok(SigningKey::from_bytes(&load_or_create_secret(path)?))
}

/// Keyed pseudonyms of personal ids: hex HMAC-SHA-256(key, personal_id).
///
/// The same key always gives the same pseudonym for the same id, so an
/// auditor holding the key can find every record about a person, while the
/// log itself never contains the id.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<secret key>)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer over this HMAC key.
    pub fn new(key: [u8; 32]) -> Self {
        Pseudonymizer { key }
    }

    /// Loads an existing key (32 bytes as hex); a missing file is an error, so that a
    /// wrong path never silently yields pseudonyms that match nothing.
    pub fn load(path: &Path) -> io::Result<Self> {
        Ok(Self::new(decode_secret(
            path,
            &std::fs::read_to_string(path)?,
        )?))
    }

    /// Loads the key (32 bytes as hex) or creates it with mode 0600.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        Ok(Self::new(load_or_create_secret(path)?))
    }

    /// Which key this is, without revealing it: the first 16 bytes of
    /// HMAC(key, "popgw pseudonym key fingerprint"), hex.
    pub fn fingerprint(&self) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(b"popgw pseudonym key fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The pseudonym key of the audit log in `audit_dir`. The log records the key's
    /// fingerprint (`pseudonym-key.fingerprint`) when it first uses it; afterwards a
    /// missing key or another key is refused — a new key would silently stop every
    /// earlier record from matching queries by personal id. A key is created only for
    /// a log that has neither records nor a fingerprint yet.
    pub fn open_for_log(path: &Path, audit_dir: &Path) -> Result<Self, super::AuditError> {
        let refuse = |why: String| super::AuditError::PseudonymKey(why);
        let recorded_path = audit_dir.join(FINGERPRINT_FILE);
        let recorded = match std::fs::read_to_string(&recorded_path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let has_records = std::fs::read_dir(audit_dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("audit-") && name.ends_with(".log")
                })
            })
            .unwrap_or(false);
        let key = if recorded.is_some() || has_records {
            match Self::load(path) {
                Ok(key) => key,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(refuse(format!(
                        "pseudonym key {} is missing but the audit log in {} was written with one: restore it                          (a new key would make every earlier record unfindable by personal id)",
                        path.display(),
                        audit_dir.display()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            Self::load_or_create(path)?
        };
        match recorded {
            Some(fp) if fp != key.fingerprint() => Err(refuse(format!(
                "pseudonym key {} (fingerprint {}) is not the key of the audit log in {} (fingerprint {fp}):                  restore the right key",
                path.display(),
                key.fingerprint(),
                audit_dir.display()
            ))),
            Some(_) => Ok(key),
            None => {
                std::fs::create_dir_all(audit_dir)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&recorded_path)?;
                file.write_all(format!("{}\n", key.fingerprint()).as_bytes())?;
                file.sync_all()?;
                sync_dir(audit_dir)?;
                Ok(key)
            }
        }
    }

    /// A dossier number's pseudonym, 32 lowercase hex characters: HMAC-SHA-256 under the
    /// same key, domain-separated, over the number trimmed and NFKC-normalised (so
    /// full-width digits and their ASCII form are one dossier). A dossier number is free
    /// text a portal fills in — seen holding ids in any spacing, another person's id, a
    /// name with a birth date — so the log keeps only this, and a query by the exact
    /// number finds it (the gateway pseudonymises the query's value the same way).
    pub fn case_pseudonym(&self, case_id: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        let normal: String = case_id.trim().nfkc().collect();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(b"popgw-case-v1\n");
        mac.update(normal.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// 64 lowercase hex characters.
    pub fn pseudonym(&self, personal_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(personal_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}
