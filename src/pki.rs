//! The development PKI (`popgw certs init`): a client/server CA, the server's
//! certificate, one client per role, and an outsider signed by another CA.
//! For development and tests only; production certificates come from the operator.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// URI SAN of the development portal client.
pub const PORTAL_ID: &str = "spiffe://popgw.dev/portal/dvcqg";
/// URI SAN of the development ministry client.
pub const MINISTRY_ID: &str = "spiffe://popgw.dev/ministry/justice";
/// URI SAN of the development operator client.
pub const OPERATOR_ID: &str = "spiffe://popgw.dev/operator/c06";
/// The gateway's own identity towards the registry (`popgw registry serve --allow`).
pub const GATEWAY_ID: &str = "spiffe://popgw.dev/gateway/node-1";
/// URI SAN of the client signed by a foreign CA.
pub const OUTSIDER_ID: &str = "spiffe://elsewhere.example/portal/outsider";

/// Errors while creating the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate authority able to issue more certificates (tests issue expired ones).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256).
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "popgw development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a client certificate named by `uri` (URI SAN), valid until `not_after` (y, m, d).
    pub fn issue_client(
        &self,
        uri: &str,
        not_after: (i32, u8, u8),
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, uri.rsplit('/').next().unwrap_or(uri));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues the server certificate for `localhost` and `127.0.0.1`.
    pub fn issue_server(&self) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "popgw");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes the development PKI into `dir`: ca.pem, server.pem/.key, portal, ministry and
/// operator .pem/.key, and outsider.pem/.key signed by a different CA. Keys are mode 0600.
/// Returns the CA, so that tests can issue more certificates (expired, unknown clients).
pub fn init(dir: &Path) -> Result<DevCa, PkiError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    // Never over an existing file: a mistyped path must not replace a real server key.
    let names = [
        "ca.pem",
        "server.pem",
        "server.key",
        "portal.pem",
        "portal.key",
        "ministry.pem",
        "ministry.key",
        "operator.pem",
        "operator.key",
        "gateway.pem",
        "gateway.key",
        "outsider.pem",
        "outsider.key",
    ];
    if let Some(existing) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        return Err(PkiError::Io {
            path: existing,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists; a development PKI is only created in a folder without one",
            ),
        });
    }
    let ca = DevCa::new("popgw development CA")?;
    write(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    let (cert, key) = ca.issue_server()?;
    write(&dir.join("server.pem"), &cert, false)?;
    write(&dir.join("server.key"), &key, true)?;
    for (name, uri) in [
        ("portal", PORTAL_ID),
        ("ministry", MINISTRY_ID),
        ("operator", OPERATOR_ID),
        ("gateway", GATEWAY_ID),
    ] {
        let (cert, key) = ca.issue_client(uri, (2036, 1, 1))?;
        write(&dir.join(format!("{name}.pem")), &cert, false)?;
        write(&dir.join(format!("{name}.key")), &key, true)?;
    }
    let other = DevCa::new("some other CA")?;
    let (cert, key) = other.issue_client(OUTSIDER_ID, (2036, 1, 1))?;
    write(&dir.join("outsider.pem"), &cert, false)?;
    write(&dir.join("outsider.key"), &key, true)?;
    Ok(ca)
}

/// Writes a client certificate and key issued by `ca` as `dir/name.pem` and `dir/name.key`.
pub fn write_client(
    ca: &DevCa,
    dir: &Path,
    name: &str,
    uri: &str,
    not_after: (i32, u8, u8),
) -> Result<(), PkiError> {
    let (cert, key) = ca.issue_client(uri, not_after)?;
    write(&dir.join(format!("{name}.pem")), &cert, false)?;
    write(&dir.join(format!("{name}.key")), &key, true)
}

/// Whether `dir` already holds a development PKI (its CA and server certificate).
pub fn exists(dir: &Path) -> bool {
    dir.join("ca.pem").exists()
        && dir.join("server.pem").exists()
        && dir.join("server.key").exists()
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    // create_new: never replace an existing file (nor loosen an existing key's mode).
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}
