//! The development PKI (`popgw certs init`): a client/server CA (its key kept beside
//! it, 0600), the server's certificate, one client per role, an outsider signed by
//! another CA, and the CA's revocation list (`crl.pem`, empty at first); `popgw certs
//! issue` adds a client, `popgw certs revoke` adds it to the CRL — so that a newcomer
//! can add a second portal and try revocation without OpenSSL.
//! For development and tests only; production certificates come from the operator.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI SAN of the development portal client.
pub const PORTAL_ID: &str = "spiffe://popgw.dev/portal/dvcqg";
/// URI SAN of the development ministry client.
pub const MINISTRY_ID: &str = "spiffe://popgw.dev/ministry/justice";
/// URI SAN of the development operator client.
pub const OPERATOR_ID: &str = "spiffe://popgw.dev/operator/c06";
/// URI SAN of the development citizen portal (the citizen's access report).
pub const CITIZEN_ID: &str = "spiffe://popgw.dev/citizen/vneid";
/// The development server certificate's URI SAN (the gateway's and `popgw registry
/// serve`'s): what `[registry] identity` pins in the development setup.
pub const SERVER_ID: &str = "spiffe://popgw.dev/server/popgw";
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
    /// A file of the PKI is missing or unreadable.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A certificate authority able to issue more certificates (tests issue expired ones).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
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
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The development CA of `dir` (`ca.pem` and `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca.key");
        let key_pem = read(&key_path)?;
        let bad = |e: rcgen::Error| PkiError::Read {
            path: key_path.clone(),
            reason: e.to_string(),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad)?;
        Ok(Self {
            issuer,
            key_pem,
            cert_pem,
        })
    }

    /// A CRL signed by this CA revoking `serials` (raw, big-endian), numbered `number`,
    /// valid from today for a year (rustls does not refuse an outdated CRL unless
    /// told to; the next revocation writes a new one anyway).
    pub fn crl(&self, number: u64, serials: &[Vec<u8>]) -> Result<String, PkiError> {
        let today = chrono::Utc::now().date_naive();
        let ymd = |d: chrono::NaiveDate| {
            use chrono::Datelike;
            date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        let params = CertificateRevocationListParams {
            this_update: ymd(today),
            next_update: ymd(today + chrono::Days::new(365)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: ymd(today),
                    reason_code: Some(RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a client certificate named by `uri` (URI SAN), valid until `not_after` (y, m, d).
    pub fn issue_client(
        &self,
        uri: &str,
        not_after: (i32, u8, u8),
    ) -> Result<(String, String), PkiError> {
        self.issue_client_between(Some(uri), (2024, 1, 1), not_after)
    }

    /// Issues a client certificate valid from `not_before` to `not_after`, named by `uri`
    /// — or by no URI SAN at all (what the gateway must refuse: tests of refusals).
    pub fn issue_client_between(
        &self,
        uri: Option<&str>,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        match uri {
            Some(uri) => {
                params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
                dn.push(DnType::CommonName, uri.rsplit('/').next().unwrap_or(uri));
            }
            None => dn.push(DnType::CommonName, "no-uri"),
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues the server certificate for `localhost` and `127.0.0.1`, named
    /// [`SERVER_ID`].
    pub fn issue_server(&self) -> Result<(String, String), PkiError> {
        self.issue_server_as(SERVER_ID)
    }

    /// Issues a server certificate for `localhost` and `127.0.0.1` named by the URI SAN
    /// `uri` (tests: a server of the same CA that is not the one pinned).
    pub fn issue_server_as(&self, uri: &str) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
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
        "ca.key",
        "crl.pem",
        "server.pem",
        "server.key",
        "portal.pem",
        "portal.key",
        "ministry.pem",
        "ministry.key",
        "operator.pem",
        "operator.key",
        "citizen.pem",
        "citizen.key",
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
    write(&dir.join("ca.key"), &ca.key_pem, true)?;
    write(&dir.join("crl.pem"), &ca.crl(1, &[])?, false)?;
    let (cert, key) = ca.issue_server()?;
    write(&dir.join("server.pem"), &cert, false)?;
    write(&dir.join("server.key"), &key, true)?;
    for (name, uri) in [
        ("portal", PORTAL_ID),
        ("ministry", MINISTRY_ID),
        ("operator", OPERATOR_ID),
        ("citizen", CITIZEN_ID),
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

/// `popgw certs issue`: a client certificate for `uri` from the development CA of
/// `dir`, valid for `days` from today, written as `dir/name.pem` and `dir/name.key`
/// (never over an existing file).
pub fn issue(dir: &Path, name: &str, uri: &str, days: u32) -> Result<(), PkiError> {
    check_name(name)?;
    if !uri.contains("://") || uri.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(PkiError::Read {
            path: dir.join(format!("{name}.pem")),
            reason: format!("--uri {uri:?} is not a URI (spiffe://agency/role/name)"),
        });
    }
    let ca = DevCa::load(dir)?;
    let until = chrono::Utc::now().date_naive() + chrono::Days::new(u64::from(days.max(1)));
    use chrono::Datelike;
    write_client(
        &ca,
        dir,
        name,
        uri,
        (until.year(), until.month() as u8, until.day() as u8),
    )
}

/// `popgw certs revoke`: adds the certificate `dir/name.pem` to the development CA's
/// CRL, `dir/crl.pem` (replaced atomically, its number increased). Returns the revoked
/// serial number, hex.
pub fn revoke(dir: &Path, name: &str) -> Result<String, PkiError> {
    check_name(name)?;
    let ca = DevCa::load(dir)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let serial = serial_of(&cert_path)?;
    let crl_path = dir.join("crl.pem");
    let (number, mut serials) = match std::fs::read(&crl_path) {
        Ok(bytes) => revoked_in(&crl_path, &bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Vec::new()),
        Err(e) => {
            return Err(PkiError::Read {
                path: crl_path,
                reason: e.to_string(),
            })
        }
    };
    if !serials.contains(&serial) {
        serials.push(serial.clone());
    }
    let pem = ca.crl(number + 1, &serials)?;
    let tmp = dir.join("crl.pem.new");
    let _ = fs::remove_file(&tmp);
    write(&tmp, &pem, false)?;
    fs::rename(&tmp, &crl_path).map_err(|source| PkiError::Io {
        path: crl_path.clone(),
        source,
    })?;
    Ok(hex::encode(serial))
}

fn check_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(PkiError::Read {
            path: PathBuf::from(name),
            reason: "--name: letters, digits, - and _ only (it names NAME.pem and NAME.key)".into(),
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn serial_of(path: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| PkiError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let der =
        rustls_pki_types::CertificateDer::from_pem_file(path).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// The number and revoked serials of a CRL (PEM).
fn revoked_in(path: &Path, bytes: &[u8]) -> Result<(u64, Vec<Vec<u8>>), PkiError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| PkiError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(bytes)
        .map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| bad(e.to_string()))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    Ok((number, serials))
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
