//! Secret keys: the checkpoint signing key and the pseudonymisation key.

use super::format::sync_dir;
use super::Pseudonym;
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
    file.write_all(format!("{}\n", super::format::encode_hex(secret)).as_bytes())?;
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
    /// HMAC keyed once (its inner and outer pads hashed), cloned for each pseudonym: two
    /// SHA-256 blocks a pseudonym less than keying it each time. As secret as the key.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<secret key>)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer over this HMAC key.
    pub fn new(key: [u8; 32]) -> Self {
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        Pseudonymizer { keyed }
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
        let mut mac = self.keyed.clone();
        mac.update(b"popgw pseudonym key fingerprint");
        super::format::encode_hex(&mac.finalize().into_bytes()[..16])
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
        let has_records = holds_records(audit_dir);
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
    pub fn case_pseudonym(&self, case_id: &str) -> Pseudonym {
        use unicode_normalization::UnicodeNormalization;
        let trimmed = case_id.trim();
        // ASCII is its own NFKC form: the usual dossier number needs no normalising.
        let normal: std::borrow::Cow<str> = if trimmed.is_ascii() {
            trimmed.into()
        } else {
            trimmed.nfkc().collect::<String>().into()
        };
        let mut mac = self.keyed.clone();
        mac.update(b"popgw-case-v1\n");
        mac.update(normal.as_bytes());
        Pseudonym::from_hex(super::format::encode_hex(
            &mac.finalize().into_bytes()[..16],
        ))
    }

    /// 64 lowercase hex characters.
    pub fn pseudonym(&self, personal_id: &str) -> Pseudonym {
        let mut mac = self.keyed.clone();
        mac.update(personal_id.as_bytes());
        Pseudonym::from_hex(super::format::encode_hex(mac.finalize().into_bytes()))
    }
}

/// Where a gateway node keeps what `popgw init` makes once: the checkpoint signing key,
/// the pseudonym key and the audit folder (holding the pseudonym key's fingerprint).
#[derive(Debug, Clone)]
pub struct NodeFolder {
    /// The ed25519 checkpoint signing key.
    pub signing_key: std::path::PathBuf,
    /// The pseudonym key.
    pub pseudonym_key: std::path::PathBuf,
    /// The audit folder.
    pub audit_dir: std::path::PathBuf,
}

impl NodeFolder {
    /// What is missing for a gateway started from a configuration file: it never
    /// creates keys or a new chain itself (a mistyped `data_dir` would otherwise start
    /// a second history with new keys), so each missing part is named with the command
    /// that makes it on purpose. Empty when the folder was initialised.
    pub fn missing(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let run_init = "`popgw init --config FILE` makes it for a new node; for an existing \
                        one the path (or data_dir) is wrong";
        for (key, path) in [
            ("audit.signing_key_file", &self.signing_key),
            ("audit.pseudonym_key_file", &self.pseudonym_key),
        ] {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Err(e) = decode_secret(path, &text) {
                        problems.push(format!("{key}: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => problems.push(format!(
                    "{key}: {} does not exist: {run_init}",
                    path.display()
                )),
                Err(e) => problems.push(format!("{key}: {}: {e}", path.display())),
            }
        }
        let fingerprint = self.audit_dir.join(FINGERPRINT_FILE);
        if !fingerprint.is_file() {
            problems.push(format!(
                "audit.dir: {} is not an initialised audit folder (no {FINGERPRINT_FILE}): \
                 {run_init}",
                self.audit_dir.display()
            ));
        }
        problems
    }

    /// Makes what is missing, once, on purpose (`popgw init`): the folders, the pseudonym
    /// key and the audit folder's record of it, and the signing key (keys mode 0600,
    /// fsynced). Nothing that exists is replaced. A signing key whose audit folder is not
    /// initialised is refused (the log was wiped or moved, or a path is mistyped: a new
    /// chain under it would hide that), and a log that holds records never gets a new
    /// key. Returns the paths it created; the caller starts the chain when the signing
    /// key is among them.
    pub fn initialise(&self) -> Result<Vec<std::path::PathBuf>, super::AuditError> {
        let mut created = Vec::new();
        let fingerprint = self.audit_dir.join(FINGERPRINT_FILE);
        let fingerprint_existed = fingerprint.exists();
        if self.signing_key.exists() && !fingerprint_existed {
            return Err(super::AuditError::Unmatched(format!(
                "the signing key {} exists but {} is not its audit folder (no {FINGERPRINT_FILE}): \
                 the log was wiped or moved, or a path is wrong. Restore it; to start a new log \
                 on purpose, move the keys away first",
                self.signing_key.display(),
                self.audit_dir.display()
            )));
        }
        let has_records = holds_records(&self.audit_dir);
        if has_records && !self.signing_key.exists() {
            return Err(super::AuditError::Unmatched(format!(
                "{} holds records but the signing key {} is missing: restore it (a new key \
                 would not verify the log's history)",
                self.audit_dir.display(),
                self.signing_key.display()
            )));
        }
        for dir in [
            self.audit_dir.as_path(),
            parent_of(&self.signing_key),
            parent_of(&self.pseudonym_key),
        ] {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                created.push(dir.to_path_buf());
            }
        }
        let key_existed = self.pseudonym_key.exists();
        Pseudonymizer::open_for_log(&self.pseudonym_key, &self.audit_dir)?;
        if !key_existed {
            created.push(self.pseudonym_key.clone());
        }
        if !fingerprint_existed {
            created.push(fingerprint);
        }
        if !self.signing_key.exists() {
            load_or_create_secret(&self.signing_key)?;
            created.push(self.signing_key.clone());
        }
        Ok(created)
    }
}

/// Whether the audit folder holds a segment of records.
fn holds_records(audit_dir: &Path) -> bool {
    std::fs::read_dir(audit_dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("audit-") && name.ends_with(".log")
            })
        })
        .unwrap_or(false)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
