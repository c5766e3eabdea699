//! Secret keys: the checkpoint signing key and the pseudonymisation key.

use super::format::sync_dir;
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

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

    /// 64 lowercase hex characters.
    pub fn pseudonym(&self, personal_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(personal_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}
