//! PostgreSQL: the registry's and the audit index's connections (see [`super`]).
//!
//! [`PgLink::parse`] reads a libpq-style connection string — a `postgres://` or
//! `postgresql://` URL, or the `key=value` form — and takes out what tokio-postgres does
//! not know: `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, `sslcert`, `sslkey` and `passfile` (pgpass format; also `PGPASSFILE`,
//! and `PGPASSWORD`). The rest goes to `tokio_postgres::Config`; TLS goes through
//! `tokio-postgres-rustls` with a rustls `ClientConfig` built on ring, popgw's one
//! crypto provider.
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` | if the server offers it | no |
//! | `require` | yes | only with `sslrootcert` (then as `verify-ca`), as libpq |
//! | `verify-ca` | yes | chains to `sslrootcert` |
//! | `verify-full` | yes | chains to `sslrootcert` and names the host |
//!
//! **Default:** a URL naming a host that is not loopback, without `sslmode`, means
//! `verify-full`; loopback (`localhost`, `127.0.0.0/8`, `::1`) and Unix sockets keep
//! plaintext (the development default). PostgreSQL does no TLS over a Unix socket;
//! `sslmode` is ignored there, as in libpq.
//!
//! **Invariant:** the password never leaves this module in readable form: [`PgLink`]'s
//! `Debug`, [`PgLink::redacted`] and every error print `***` in its place.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a link protects itself (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext.
    Disable,
    /// TLS if the server offers it, unverified; else plaintext.
    Prefer,
    /// TLS; the certificate is checked only with `sslrootcert` (then as `VerifyCa`).
    Require,
    /// TLS; the certificate chains to `sslrootcert`.
    VerifyCa,
    /// TLS; the certificate chains to `sslrootcert` and names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A statement or connection that failed, as popgw reports it: the server's message
/// and SQLSTATE — never its DETAIL, which can quote a key value — or, when the server
/// said nothing, the client's own error. What both the registry and the audit index
/// make of a `tokio_postgres::Error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgFailure {
    /// The server refused (a constraint, a missing table, a permission...).
    #[error("PostgreSQL: {message} ({})", code.code())]
    Server {
        /// The server's message.
        message: String,
        /// Its SQLSTATE.
        code: tokio_postgres::error::SqlState,
    },
    /// The connection failed or closed.
    #[error("PostgreSQL: {0}")]
    Client(Arc<tokio_postgres::Error>),
}

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> PgFailure {
        match e.as_db_error() {
            Some(db) => PgFailure::Server {
                message: db.message().to_string(),
                code: db.code().clone(),
            },
            None => PgFailure::Client(Arc::new(e)),
        }
    }
}

/// Why a PostgreSQL link cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection string is malformed or contradicts itself.
    #[error("PostgreSQL URL {url}: {reason}")]
    Url {
        /// The string, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A file the string names (`sslrootcert`, `sslcert`, `sslkey`, `passfile`) is
    /// missing or unusable.
    #[error("PostgreSQL {key} {path}: {reason}")]
    File {
        /// The key naming it.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed connection string: the tokio-postgres configuration (password filled in)
/// and the TLS settings (see the module documentation).
#[derive(Clone)]
pub struct PgLink {
    config: tokio_postgres::Config,
    mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    redacted: String,
    endpoint: String,
}

impl std::fmt::Debug for PgLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLink")
            .field("url", &self.redacted)
            .field("sslmode", &self.mode)
            .finish()
    }
}

impl std::fmt::Display for PgLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// The keys taken out before tokio-postgres sees the string.
const OUR_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// `s` with its password replaced by `***` (a URL's `user:password@` and any
/// `password=` parameter, in either form). Anything that does not parse is returned
/// with everything after the scheme's `//` up to the last `@` hidden.
pub fn redact(s: &str) -> String {
    match split(s) {
        Ok(parts) => parts.redacted(),
        Err(_) => match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &s[..scheme + 3], &s[at..])
            }
            _ if s.contains("password") => "(unreadable connection string)".into(),
            _ => s.to_string(),
        },
    }
}

/// A connection string cut into its parts.
struct Parts {
    /// URL form: scheme and authority and path (`postgres://user:pw@host/db`).
    base: Option<String>,
    /// Parameters, in order: (key, decoded value).
    params: Vec<(String, String)>,
}

impl Parts {
    fn redacted(&self) -> String {
        let params = self.params.iter().map(|(k, v)| {
            let v = if k == "password" { "***" } else { v.as_str() };
            (k.as_str(), v)
        });
        match &self.base {
            Some(base) => {
                let base = redact_userinfo(base);
                let query: Vec<String> =
                    params.map(|(k, v)| format!("{k}={}", encode(v))).collect();
                if query.is_empty() {
                    base
                } else {
                    format!("{base}?{}", query.join("&"))
                }
            }
            None => params
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The string without our keys, for tokio-postgres.
    fn for_tokio_postgres(&self) -> String {
        let params = self
            .params
            .iter()
            .filter(|(k, _)| !OUR_KEYS.contains(&k.as_str()));
        match &self.base {
            Some(base) => {
                let query: Vec<String> =
                    params.map(|(k, v)| format!("{k}={}", encode(v))).collect();
                if query.is_empty() {
                    base.clone()
                } else {
                    format!("{base}?{}", query.join("&"))
                }
            }
            None => params
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn redact_userinfo(base: &str) -> String {
    let Some(scheme) = base.find("://") else {
        return base.to_string();
    };
    let authority_end = base[scheme + 3..]
        .find('/')
        .map_or(base.len(), |i| scheme + 3 + i);
    match base[..authority_end].rfind('@') {
        Some(at) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..scheme + 3], &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    }
}

fn split(s: &str) -> Result<Parts, String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, q),
            None => (s, ""),
        };
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("parameter {:?} has no value", decode(pair)))?;
            params.push((decode(k)?, decode(v)?));
        }
        Ok(Parts {
            base: Some(base.to_string()),
            params,
        })
    } else if s.contains("://") {
        Err("must be postgres://… or postgresql://… (or key=value pairs)".into())
    } else {
        Ok(Parts {
            base: None,
            params: key_values(s)?,
        })
    }
}

/// libpq's `key=value key2='quoted \' value'` form.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("{key:?} is not followed by ="));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated quote")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quote".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next().ok_or("trailing backslash")?);
                } else {
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key, value));
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut q = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('\'');
    q
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_string())
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    }
}

impl PgLink {
    /// Parses `url` (see the module documentation) and reads the password from
    /// `PGPASSWORD` or the password file when the string carries none.
    pub fn parse(url: &str) -> Result<PgLink, LinkError> {
        Self::parse_with(url, |k| std::env::var(k).ok())
    }

    /// [`PgLink::parse`] with the environment given (`PGPASSWORD`, `PGPASSFILE`).
    pub fn parse_with(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PgLink, LinkError> {
        let parts = split(url).map_err(|reason| LinkError::Url {
            url: redact(url),
            reason,
        })?;
        let redacted = parts.redacted();
        let bad = |reason: String| LinkError::Url {
            url: redacted.clone(),
            reason,
        };
        let mut config: tokio_postgres::Config = parts
            .for_tokio_postgres()
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        let hosts = config.get_hosts().to_vec();
        let ports = config.get_ports().to_vec();
        let endpoint = match hosts.first() {
            Some(Host::Tcp(h)) => format!("{h}:{}", ports.first().copied().unwrap_or(5432)),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => format!("localhost:{}", ports.first().copied().unwrap_or(5432)),
        };
        let file = |key: &str| parts.get(key).map(PathBuf::from);
        let root_cert = file("sslrootcert");
        if root_cert.as_deref() == Some(Path::new("system")) {
            return Err(bad(
                "sslrootcert=system is not supported: name the CA file that signed the server's certificate".into(),
            ));
        }
        let client_cert = match (file("sslcert"), file("sslkey")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad("sslcert and sslkey go together".into())),
        };
        let all_local = hosts.iter().all(is_loopback);
        let only_unix = !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)));
        let (mode, mode_given) = match parts.get("sslmode") {
            Some(m) => (
                SslMode::parse(m).ok_or_else(|| {
                    bad(format!(
                        "sslmode {m:?}: one of disable, prefer, require, verify-ca, verify-full"
                    ))
                })?,
                true,
            ),
            None if all_local => (SslMode::Disable, false),
            None => (SslMode::VerifyFull, false),
        };
        // PostgreSQL speaks no TLS over a Unix socket; libpq ignores sslmode there.
        let mode = if only_unix { SslMode::Disable } else { mode };
        // Citizen records and audit pseudonyms never cross a network in clear: `disable`,
        // and `prefer` (which falls back to clear when the server offers no TLS), only
        // to loopback and Unix sockets.
        if !all_local && matches!(mode, SslMode::Disable | SslMode::Prefer) {
            return Err(bad(format!(
                "sslmode={} would send citizen data in clear to {endpoint}, which is not \
                 loopback: use sslmode=verify-full with sslrootcert",
                mode.as_str()
            )));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(bad(format!(
                "sslmode={}{} needs sslrootcert=FILE, the CA that signed the server's certificate",
                mode.as_str(),
                if mode_given {
                    String::new()
                } else {
                    format!(" (the default for a host that is not loopback: {endpoint})")
                }
            )));
        }
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        if config.get_password().is_none() {
            if let Some(pw) = env("PGPASSWORD") {
                config.password(pw);
            } else if let Some(passfile) =
                file("passfile").or_else(|| env("PGPASSFILE").map(PathBuf::from))
            {
                if let Some(pw) = pgpass_lookup(&passfile, &config)? {
                    config.password(pw);
                }
            }
        }
        Ok(PgLink {
            config,
            mode,
            root_cert,
            client_cert,
            redacted,
            endpoint,
        })
    }

    /// The string as given, password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `HOST:PORT` of the (first) server, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The TLS mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether the server's certificate is checked (chain, and with `verify-full` the
    /// host name).
    pub fn verifies(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }

    /// The tokio-postgres configuration (password included: never print it whole).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Reads and parses the certificate files (`check-config` and every connection
    /// set-up): the rustls configuration of this link, or `None` for `disable`.
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>, LinkError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = crate::tls::provider();
        let tls_err = |reason: String| LinkError::Url {
            url: self.redacted.clone(),
            reason,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match &self.root_cert {
            Some(path) if self.mode != SslMode::Prefer => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs("sslrootcert", path)? {
                    roots.add(cert).map_err(|e| LinkError::File {
                        key: "sslrootcert",
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| tls_err(e.to_string()))?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            _ => Arc::new(Unverified(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let certs = load_certs("sslcert", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| LinkError::File {
                    key: "sslkey",
                    path: key.display().to_string(),
                    reason: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| LinkError::File {
                        key: "sslkey",
                        path: key.display().to_string(),
                        reason: format!("does not go with sslcert: {e}"),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }

    fn warn_unverified(&self) {
        if matches!(self.mode, SslMode::Require | SslMode::Prefer) && !self.verifies() {
            tracing::warn!(
                server = %self.endpoint,
                sslmode = self.mode.as_str(),
                "the PostgreSQL server's certificate is not checked (sslmode={} without \
                 sslrootcert): anyone on the path can pose as it; use sslmode=verify-full \
                 with sslrootcert",
                self.mode.as_str()
            );
        }
    }

    /// A pool on this link (connections open on first use), each connection with
    /// `application_name` and the server `options` added to the string's own; every
    /// wait, connect and recycle bounded by `timeout`.
    pub fn pool(
        &self,
        application_name: &str,
        options: &str,
        size: usize,
        timeout: Duration,
    ) -> Result<Pool, LinkError> {
        let config = self.tuned(application_name, options, timeout);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_config(config, self.connector()?, manager_config);
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| LinkError::Url {
                url: self.redacted.clone(),
                reason: format!("pool: {e}"),
            })
    }

    /// What a pool's failure to hand out a connection means, for an operator: the
    /// server's refusal explained ([`PgLink::explain`]), or no answer within `timeout`.
    pub fn pool_error(&self, e: deadpool_postgres::PoolError, timeout: Duration) -> String {
        match e {
            deadpool_postgres::PoolError::Backend(e) => self.explain(&e),
            deadpool_postgres::PoolError::Timeout(_) => format!(
                "PostgreSQL did not answer within {} ms",
                timeout.as_millis()
            ),
            other => format!("PostgreSQL pool: {other}"),
        }
    }

    fn tuned(
        &self,
        application_name: &str,
        options: &str,
        timeout: Duration,
    ) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        config.application_name(application_name);
        if !options.is_empty() {
            let joined = match config.get_options() {
                Some(o) if !o.is_empty() => format!("{o} {options}"),
                _ => options.to_string(),
            };
            config.options(&joined);
        }
        config
    }

    /// One connection outside a pool (imports, tools); its driver task is spawned.
    /// The error is already explained ([`PgLink::explain`]).
    pub async fn connect(
        &self,
        application_name: &str,
        timeout: Duration,
    ) -> Result<tokio_postgres::Client, String> {
        let config = self.tuned(application_name, "", timeout);
        let connector = self.connector().map_err(|e| e.to_string())?;
        let (client, connection) = config
            .connect(connector)
            .await
            .map_err(|e| self.explain(&e))?;
        tokio::spawn(drive(connection));
        Ok(client)
    }

    /// Creates the database this link names when it does not exist yet — `registry
    /// import --to` and `audit index` make their database as they make their schema —
    /// through the `postgres` maintenance database, with the same user, credentials and
    /// TLS. `Ok(Some(name))` when it was created. The role needs CREATEDB for that; else
    /// the error says what PostgreSQL said.
    pub async fn create_database_if_missing(
        &self,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        let config = self.tuned("popgw", "", timeout);
        match config
            .connect(self.connector().map_err(|e| e.to_string())?)
            .await
        {
            Ok((_client, connection)) => {
                tokio::spawn(drive(connection));
                return Ok(None);
            }
            Err(e)
                if e.as_db_error().map(|d| d.code())
                    == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {}
            Err(e) => return Err(self.explain(&e)),
        }
        let Some(name) = config.get_dbname().map(str::to_string) else {
            return Ok(None);
        };
        let mut maintenance = config.clone();
        maintenance.dbname("postgres");
        let (client, connection) = maintenance
            .connect(self.connector().map_err(|e| e.to_string())?)
            .await
            .map_err(|e| self.explain(&e))?;
        tokio::spawn(drive(connection));
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => Ok(Some(name)),
            // Another process made it meanwhile.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
                Ok(None)
            }
            Err(e) => Err(self.explain(&e)),
        }
    }

    /// The one connector every connection uses: rustls with this link's configuration.
    /// With `disable` (loopback and Unix sockets only) tokio-postgres never starts TLS;
    /// the connector then trusts no root at all, so it could verify nothing anyway.
    fn connector(&self) -> Result<MakeRustlsConnect, LinkError> {
        let tls = match self.client_config()? {
            Some(tls) => {
                self.warn_unverified();
                tls
            }
            None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| LinkError::Url {
                    url: self.redacted.clone(),
                    reason: e.to_string(),
                })?
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(tls))
    }

    /// What went wrong with a connection, said plainly: whose certificate was not
    /// trusted, which name it lacked, that the server refuses TLS or a password. The
    /// server's message, never its DETAIL (which can quote a key value); never the
    /// password.
    pub fn explain(&self, e: &tokio_postgres::Error) -> String {
        let at = format!("PostgreSQL at {}", self.endpoint);
        if let Some(db) = e.as_db_error() {
            let hint = match db.code().code() {
                "28000"
                    if self.mode == SslMode::Disable && db.message().contains("no encryption") =>
                {
                    " (the server requires TLS: sslmode=verify-full with sslrootcert)"
                }
                "28P01" => " (the password in the URL, passfile, PGPASSFILE or PGPASSWORD)",
                _ => "",
            };
            return format!("{at}: {} ({}){hint}", db.message(), db.code().code());
        }
        if let Some(tls) = rustls_error(e) {
            let roots = self
                .root_cert
                .as_ref()
                .map_or("none".to_string(), |p| p.display().to_string());
            return match tls {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "{at}: the server certificate does not name {} (sslmode={})",
                    self.endpoint
                        .rsplit_once(':')
                        .map_or(self.endpoint.as_str(), |(h, _)| h),
                    self.mode.as_str()
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                    | CertificateError::BadSignature
                    | CertificateError::BadEncoding,
                ) => format!("{at}: server certificate not trusted (sslrootcert {roots})"),
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => format!("{at}: the server certificate has expired"),
                other => format!("{at}: TLS handshake failed: {other}"),
            };
        }
        // tokio-postgres keeps the reason in the error's source ("invalid configuration":
        // "password missing").
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            source = s.source();
        }
        if text.contains("server does not support TLS") {
            return format!(
                "{at}: server does not support TLS (sslmode={})",
                self.mode.as_str()
            );
        }
        if text.contains("password missing") {
            return format!(
                "{at}: the server asks for a password and none was given (in the URL, \
                 passfile=, PGPASSFILE or PGPASSWORD)"
            );
        }
        format!("{at}: {text}")
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "PostgreSQL connection ended");
    }
}

/// The rustls error behind a connection error, if any.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        source = s.source();
    }
    None
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    crate::tls::load_certs(path).map_err(|e| LinkError::File {
        key,
        path: path.display().to_string(),
        reason: match e {
            crate::tls::TlsError::Pem { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}

/// The password for `config`'s first host, port, database and user in a pgpass file
/// (`hostname:port:database:username:password`, `*` matching anything, `\:` and `\\`
/// escaped). A file others can read is refused, as libpq ignores one.
fn pgpass_lookup(
    path: &Path,
    config: &tokio_postgres::Config,
) -> Result<Option<String>, LinkError> {
    let err = |reason: String| LinkError::File {
        key: "passfile",
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err("readable by others: chmod 600 it".into()));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let Some(user) = config.get_user() else {
        return Ok(None);
    };
    let dbname = config.get_dbname().unwrap_or(user);
    let wanted = [host.as_str(), port.as_str(), dbname, user];
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Ok(Some(fields.pop().unwrap_or_default()));
        }
    }
    Ok(None)
}

/// `verify-ca`: the chain is checked as `verify-full` checks it; a certificate that
/// does not name the host is accepted. Nothing else is relaxed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity) before the name: a name error means
        // everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` / `prefer` without `sslrootcert`: encrypted, the certificate not checked
/// (libpq's meaning; a warning says so). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One schema's migrations: the SQL files in order, the table that records which were
/// applied, and the advisory lock that serialises those who apply them.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// `(version, SQL)`, in order.
    pub list: &'static [(i32, &'static str)],
    /// The table of applied versions (created when missing).
    pub table: &'static str,
    /// The `pg_advisory_xact_lock` key.
    pub lock: i64,
}

impl Migrations {
    /// The newest version.
    pub fn latest(&self) -> i32 {
        self.list.last().map_or(0, |m| m.0)
    }

    /// Applies the migrations the database lacks, in one transaction under the lock:
    /// two processes starting together neither race to create the table nor apply a
    /// migration twice, and a failed migration leaves nothing half applied. So a
    /// migration may hold no statement that cannot run in a transaction (`CREATE INDEX
    /// CONCURRENTLY`, `VACUUM`, `ALTER TYPE … ADD VALUE`).
    pub async fn apply(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let txn = client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock])
            .await?;
        txn.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
            self.table
        ))
        .await?;
        let applied = format!("SELECT 1 FROM {} WHERE version = $1", self.table);
        let record = format!("INSERT INTO {} (version) VALUES ($1)", self.table);
        for (version, sql) in self.list {
            if txn.query_opt(&applied, &[version]).await?.is_none() {
                txn.batch_execute(sql).await?;
                txn.execute(&record, &[version]).await?;
            }
        }
        txn.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_remote_host_without_sslmode_means_verify_full() {
        let e = PgLink::parse_with("postgres://popgw@db.example/popgw", no_env).unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let link = PgLink::parse_with(
            "postgres://popgw@db.example/popgw?sslrootcert=/ca.pem",
            no_env,
        )
        .unwrap();
        assert_eq!(link.mode(), SslMode::VerifyFull);
        assert!(link.verifies());
        assert_eq!(link.config().get_ssl_mode(), PgSslMode::Require);
        let kv =
            PgLink::parse_with("host=10.1.2.3 user=popgw sslrootcert=/ca.pem", no_env).unwrap();
        assert_eq!(kv.mode(), SslMode::VerifyFull);
        for local in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgresql://postgres@localhost/test",
            "postgres://postgres@[::1]:5432/test",
            "host=/run/postgresql user=postgres",
        ] {
            let link = PgLink::parse_with(local, no_env).unwrap();
            assert_eq!(link.mode(), SslMode::Disable, "{local}");
        }
        // Explicit modes, and libpq's keys are not passed on to tokio-postgres.
        let link = PgLink::parse_with(
            "postgres://u@db.example/d?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
            no_env,
        )
        .unwrap();
        assert_eq!(link.mode(), SslMode::VerifyCa);
        assert_eq!(link.config().get_application_name(), Some("x"));
        assert!(PgLink::parse_with("postgres://u@h/d?sslmode=allow", no_env).is_err());
        // In clear only to loopback: disable and prefer (which falls back to clear) to
        // another host are refused, saying why.
        for mode in ["disable", "prefer"] {
            let e =
                PgLink::parse_with(&format!("postgres://u@db.example/d?sslmode={mode}"), no_env)
                    .unwrap_err()
                    .to_string();
            assert!(e.contains("in clear") && e.contains("verify-full"), "{e}");
            assert!(PgLink::parse_with(
                &format!("postgres://u@127.0.0.1/d?sslmode={mode}"),
                no_env
            )
            .is_ok());
        }
        assert!(PgLink::parse_with("postgres://u@h/d?sslcert=/c.pem", no_env).is_err());
    }

    #[test]
    fn a_password_never_shows() {
        for url in [
            "postgres://popgw:s3cr3t-pw@127.0.0.1:5432/popgw",
            "postgres://popgw@127.0.0.1/popgw?password=s3cr3t-pw",
            "host=127.0.0.1 user=popgw password='s3cr3t-pw'",
            "postgres://popgw:s3cr3t-pw@db.example/popgw",
            "postgres://popgw:s3cr3t-pw@127.0.0.1/popgw?sslmode=bogus",
        ] {
            let shown = match PgLink::parse_with(url, no_env) {
                Ok(link) => {
                    assert_eq!(
                        link.config().get_password(),
                        Some(&b"s3cr3t-pw"[..]),
                        "{url}"
                    );
                    format!("{link:?} {link} {}", link.redacted())
                }
                Err(e) => format!("{e:?} {e}"),
            };
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(!redact(url).contains("s3cr3t"), "{url}");
            let location = crate::registry::StoreLocation::parse(url);
            if matches!(location, crate::registry::StoreLocation::Postgres(_)) {
                assert!(!format!("{location:?}").contains("s3cr3t"), "{url}");
            }
        }
        let env = |k: &str| (k == "PGPASSWORD").then(|| "from-env".to_string());
        let link = PgLink::parse_with("postgres://popgw@127.0.0.1/popgw", env).unwrap();
        assert_eq!(link.config().get_password(), Some(&b"from-env"[..]));
        assert!(!format!("{link:?}").contains("from-env"));
    }

    #[test]
    fn a_password_file_is_read_in_pgpass_format() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(
            &path,
            "# comment\nother:5432:*:*:wrong\n127.0.0.1:5433:popgw:popgw:right\\:one\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = format!(
            "postgres://popgw@127.0.0.1:5433/popgw?passfile={}",
            path.display()
        );
        let link = PgLink::parse_with(&url, no_env).unwrap();
        assert_eq!(link.config().get_password(), Some(&b"right:one"[..]));
        let link = PgLink::parse_with("postgres://x@127.0.0.1/y", |k| {
            (k == "PGPASSFILE").then(|| path.display().to_string())
        })
        .unwrap();
        assert_eq!(link.config().get_password(), Some(&b"fallback"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PgLink::parse_with(&url, no_env).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("right"), "{e}");
    }
}
