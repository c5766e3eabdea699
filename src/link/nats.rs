//! NATS: the audit witness's connection (see [`super`]), and the witness stream's
//! hardened settings.
//!
//! [`NatsLink`] is `[audit.witness]`'s connection, its keys flattened into that table:
//!
//! - `url`: `tls://host:4222` (or several, comma-separated). `nats://` is plain text and
//!   only allowed to a loopback address, or with `allow_plaintext = true`; a server that
//!   asks for TLS is never answered in clear.
//! - `ca_file` (the CA of the server's certificate; required with TLS), `cert_file` and
//!   `key_file` (this client's certificate, for a server that verifies clients). Any of
//!   them, or `tls://`, means TLS is required. The rustls configuration uses popgw's one
//!   crypto provider (ring, [`crate::tls::provider`]).
//! - The credentials, read from files at connect time and never held in this type:
//!   `user` with `password_file`, or `nkey_seed_file` (a user nkey seed, `SU…`), or
//!   `credentials_file` (a JWT `.creds` file).
//! - `inbox_prefix`: where the server's answers come back (`_INBOX` by default). Give each
//!   user its own (`_INBOX_node-1`) and allow it only that: then no user can read
//!   another's acknowledgements or the indexer's deliveries.
//!
//! [`StreamPlan`] is what `popgw audit witness init` creates and checks, and what a
//! shipper creates on a development server when the stream is missing: file storage,
//! limits retention without any count or size limit, `deny_delete`, `deny_purge`, no
//! rollup, a duplicate window, and a `max_age` no shorter than the audit log's retention.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ServerAddr};
use serde::Deserialize;

/// The default subjects of the witness stream (one per node: `popgw.audit.<node>`).
pub const SUBJECTS: &str = "popgw.audit.*";
/// The stream's duplicate window: a message resent within it (same `Nats-Msg-Id`) is
/// stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[audit.witness]`'s connection to NATS (see the module documentation). Holds paths,
/// never a secret; `Debug` hides any user information in the URL.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
pub struct NatsLink {
    /// `tls://host:4222` or `nats://127.0.0.1:4222`; several comma-separated.
    pub url: String,
    /// The CA that issued the server's certificate (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate chain (PEM), for a server that verifies clients.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The NATS user (with `password_file`).
    #[serde(default)]
    pub user: Option<String>,
    /// A file holding the user's password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (user JWT and seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The prefix of this client's reply subjects (`_INBOX` by default).
    #[serde(default)]
    pub inbox_prefix: Option<String>,
    /// Allow `nats://` (plain text) to a host that is not loopback.
    #[serde(default)]
    pub allow_plaintext: bool,
}

impl fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLink")
            .field("url", &self.redacted_url())
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("credentials_file", &self.credentials_file)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// Why a NATS link could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The settings are unusable (each problem names its key; never a secret).
    #[error("NATS link: {}", .0.join("; "))]
    Settings(Vec<String>),
    /// Connecting failed.
    #[error("NATS at {at}: {reason}")]
    Connect {
        /// `host:port` of the server(s).
        at: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The stream could not be read, created or checked.
    #[error("NATS stream {stream}: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        reason: String,
    },
}

/// Whether `host` is a loopback address (or `localhost`).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A subject token or prefix without wildcards, dots at the ends or white space.
fn plain_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| !c.is_whitespace() && c != '*' && c != '>')
}

impl NatsLink {
    /// A link to `url` with no TLS files and no credentials.
    pub fn new(url: impl Into<String>) -> NatsLink {
        NatsLink {
            url: url.into(),
            ..Default::default()
        }
    }

    /// The URL(s) without any user information (for logs and messages).
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|u| {
                let u = u.trim();
                match (u.find("://"), u.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        format!("{}://***@{}", &u[..scheme], &u[at + 1..])
                    }
                    _ => u.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn servers(&self) -> Result<Vec<ServerAddr>, String> {
        let mut out = Vec::new();
        for u in self.url.split(',').map(str::trim) {
            if !u.starts_with("nats://") && !u.starts_with("tls://") {
                return Err(format!("{:?}: a nats:// or tls:// URL", redact(u)));
            }
            let addr: ServerAddr = u.parse().map_err(|e: std::io::Error| e.to_string())?;
            if addr.has_user_pass() || addr.username().is_some() {
                return Err(format!(
                    "{}: no user, password or token in the URL (user and password_file, \
                     nkey_seed_file or credentials_file)",
                    redact(u)
                ));
            }
            out.push(addr);
        }
        Ok(out)
    }

    /// `host:port` of each server, for messages.
    fn at(&self) -> String {
        match self.servers() {
            Ok(s) => s
                .iter()
                .map(|a| format!("{}:{}", a.host(), a.port()))
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => self.redacted_url(),
        }
    }

    /// Whether the link is TLS (`tls://`, or any TLS file given).
    pub fn uses_tls(&self) -> bool {
        self.url.split(',').any(|u| u.trim().starts_with("tls://"))
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }

    /// Who connects, for messages: the user, the nkey's public key, or the creds file.
    pub fn who(&self) -> String {
        if let Some(user) = &self.user {
            return format!("user {user}");
        }
        if let Some(path) = &self.nkey_seed_file {
            return match read_secret(path)
                .ok()
                .and_then(|s| nkeys::KeyPair::from_seed(&s).ok())
            {
                Some(k) => format!("nkey {}", k.public_key()),
                None => format!("nkey seed {}", path.display()),
            };
        }
        if let Some(path) = &self.credentials_file {
            return format!("credentials {}", path.display());
        }
        "no credentials".into()
    }

    /// Every problem of these settings, each prefixed with `key` (e.g. `audit.witness`).
    /// Reads the files it names (never printing what they hold).
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut p = Vec::new();
        match self.servers() {
            Err(e) => p.push(format!("{key}.url: {e}")),
            Ok(servers) => {
                let tls = self.uses_tls();
                for s in &servers {
                    if !tls && !self.allow_plaintext && !is_loopback(s.host()) {
                        p.push(format!(
                            "{key}.url: nats://{}:{} would carry the audit records and the \
                             credentials in clear: use tls:// with ca_file (or set \
                             allow_plaintext = true on a network you trust)",
                            s.host(),
                            s.port()
                        ));
                    }
                }
            }
        }
        if self.uses_tls() {
            match &self.ca_file {
                None => p.push(format!(
                    "{key}.ca_file: TLS needs the CA that issued the NATS server's certificate"
                )),
                Some(path) => {
                    if let Err(e) = load_roots(path) {
                        p.push(format!("{key}.ca_file: {e}"));
                    }
                }
            }
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key_file)) => {
                    if let Err(e) = load_chain(cert) {
                        p.push(format!("{key}.cert_file: {e}"));
                    }
                    if let Err(e) = load_key(key_file) {
                        p.push(format!("{key}.key_file: {e}"));
                    }
                }
                (Some(_), None) => p.push(format!("{key}.key_file: cert_file needs its key")),
                (None, Some(_)) => {
                    p.push(format!("{key}.cert_file: key_file needs its certificate"));
                }
                (None, None) => {}
            }
        }
        let ways = [
            self.user.is_some() || self.password_file.is_some(),
            self.nkey_seed_file.is_some(),
            self.credentials_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            p.push(format!(
                "{key}: one way to authenticate: user and password_file, nkey_seed_file or \
                 credentials_file"
            ));
        }
        match (&self.user, &self.password_file) {
            (Some(user), _) if user.is_empty() || user.chars().any(char::is_whitespace) => {
                p.push(format!("{key}.user: a name without spaces"));
            }
            (Some(_), None) => p.push(format!(
                "{key}.password_file: user needs its password, read from a file"
            )),
            (None, Some(_)) => p.push(format!("{key}.user: password_file needs its user")),
            (Some(_), Some(path)) => {
                if let Err(e) = secret_file(path) {
                    p.push(format!("{key}.password_file: {e}"));
                }
            }
            (None, None) => {}
        }
        if let Some(path) = &self.nkey_seed_file {
            match secret_file(path) {
                Err(e) => p.push(format!("{key}.nkey_seed_file: {e}")),
                Ok(text) => {
                    let seed = text.lines().next().unwrap_or("").trim();
                    if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(seed).is_err() {
                        p.push(format!(
                            "{key}.nkey_seed_file: {} does not hold a user nkey seed (SU…)",
                            path.display()
                        ));
                    }
                }
            }
        }
        if let Some(path) = &self.credentials_file {
            match secret_file(path) {
                Err(e) => p.push(format!("{key}.credentials_file: {e}")),
                Ok(text) => {
                    if !text.contains("BEGIN NATS USER JWT")
                        || !text.contains("BEGIN USER NKEY SEED")
                    {
                        p.push(format!(
                            "{key}.credentials_file: {} is not a NATS .creds file",
                            path.display()
                        ));
                    }
                }
            }
        }
        if let Some(prefix) = &self.inbox_prefix {
            if !plain_subject(prefix) {
                p.push(format!(
                    "{key}.inbox_prefix: a subject prefix without wildcards or spaces"
                ));
            }
        }
        p
    }

    /// Connects as `name` (the connection name the server shows), with TLS and the
    /// credentials as configured. A plain link first reads the server's greeting and
    /// refuses a server that requires TLS rather than upgrading without a CA.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, LinkError> {
        let problems: Vec<String> = self
            .problems("nats")
            .into_iter()
            .map(|p| p.strip_prefix("nats.").map(str::to_string).unwrap_or(p))
            .collect();
        if !problems.is_empty() {
            return Err(LinkError::Settings(problems));
        }
        let servers = self.servers().map_err(|e| LinkError::Settings(vec![e]))?;
        let at = self.at();
        let fail = |reason: String| LinkError::Connect {
            at: at.clone(),
            reason,
        };
        let tls = self.uses_tls();
        if !tls {
            if let Some(first) = servers.first() {
                if greeting_requires_tls(first.host(), first.port())
                    .await
                    .map_err(&fail)?
                {
                    return Err(fail(
                        "server requires TLS: use tls:// with ca_file (and cert_file, key_file \
                         when it verifies clients)"
                            .into(),
                    ));
                }
            }
        }
        let link_name = name.to_string();
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let name = link_name.clone();
                async move {
                    match event {
                        async_nats::Event::ServerError(e) => {
                            tracing::warn!(link = %name, error = %e, "NATS server refused");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::debug!(link = %name, "NATS disconnected");
                        }
                        _ => {}
                    }
                }
            });
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if tls {
            options = options.require_tls(true).tls_client_config(
                self.tls_config()
                    .map_err(|e| LinkError::Settings(vec![e]))?,
            );
        }
        if let (Some(user), Some(path)) = (&self.user, &self.password_file) {
            let password = read_secret(path).map_err(|e| LinkError::Settings(vec![e]))?;
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = read_secret(path).map_err(|e| LinkError::Settings(vec![e]))?;
            options = options.nkey(seed);
        }
        if let Some(path) = &self.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                LinkError::Settings(vec![format!(
                    "credentials_file {}: {}",
                    path.display(),
                    e.kind()
                )])
            })?;
        }
        options
            .connect(servers)
            .await
            .map_err(|e| fail(self.explain(&e)))
    }

    /// A connect error in words (never a secret: the error holds none).
    fn explain(&self, e: &async_nats::ConnectError) -> String {
        let text = e.to_string();
        match e.kind() {
            ConnectErrorKind::AuthorizationViolation => {
                format!("authorization violation ({})", self.who())
            }
            ConnectErrorKind::Authentication => {
                format!("authentication failed ({}): the credentials could not sign the server's challenge", self.who())
            }
            ConnectErrorKind::TimedOut => "no answer (timed out)".into(),
            _ if text.contains("UnknownIssuer")
                || text.contains("invalid peer certificate")
                || text.contains("BadSignature") =>
            {
                format!(
                    "TLS: certificate not trusted (the server's certificate does not chain to ca_file{})",
                    self.ca_file
                        .as_ref()
                        .map(|p| format!(" {}", p.display()))
                        .unwrap_or_default()
                )
            }
            _ if text.contains("NotValidForName") => {
                "TLS: the server's certificate does not name this host".into()
            }
            _ if text.contains("CertificateRequired")
                || text.contains("BadCertificate")
                || text.contains("UnknownCA")
                || text.contains("DecryptError") =>
            {
                "TLS: the server refused this client's certificate (cert_file, key_file)".into()
            }
            _ if text.contains("InvalidContentType") || text.contains("corrupt message") => {
                "TLS: the server did not answer in TLS (is TLS configured on it?)".into()
            }
            _ if text.contains("refused") => "connection refused".into(),
            ConnectErrorKind::Tls => format!("TLS: {text}"),
            _ => text,
        }
    }

    /// The rustls configuration: the CA of `ca_file`, the client certificate when
    /// given, ring as the provider.
    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let ca = self
            .ca_file
            .as_ref()
            .ok_or("ca_file: TLS needs the CA of the server's certificate")?;
        let roots = load_roots(ca).map_err(|e| format!("ca_file: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    load_chain(cert).map_err(|e| format!("cert_file: {e}"))?,
                    load_key(key).map_err(|e| format!("key_file: {e}"))?,
                )
                .map_err(|e| format!("cert_file and key_file: {e}")),
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn redact(url: &str) -> String {
    NatsLink::new(url).redacted_url()
}

/// Reads the server's INFO greeting: whether it requires TLS.
async fn greeting_requires_tls(host: &str, port: u16) -> Result<bool, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let read = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => e.to_string(),
            })?;
        let mut line = String::new();
        tokio::io::BufReader::new(tcp.take(64 * 1024))
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let info = line
            .strip_prefix("INFO ")
            .ok_or("not a NATS server (no INFO greeting)")?;
        let info: serde_json::Value =
            serde_json::from_str(info.trim()).map_err(|_| "not a NATS server (bad INFO)")?;
        Ok::<bool, String>(info["tls_required"].as_bool().unwrap_or(false))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read)
        .await
        .map_err(|_| "no answer (timed out)".to_string())?
}

/// A secret file's first line; the error names the file, never its content.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if first.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(first)
}

/// A secret file: readable, not empty, not readable by group or others. Returns its
/// whole content (for checks only).
fn secret_file(path: &Path) -> Result<String, String> {
    read_secret(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by others (mode {:o}): chmod 600",
                path.display(),
                mode & 0o777
            ));
        }
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn load_chain(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    crate::tls::load_certs(path).map_err(|e| e.to_string())
}

fn load_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|_| format!("{} holds no PEM private key", path.display()))
}

/// Whether the NATS subject pattern `pattern` (`*` one token, `>` the rest) takes every
/// subject `subject` can be (`subject` may itself hold wildcards).
pub fn covers(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => continue,
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The witness stream as it must be (see the module documentation).
#[derive(Clone, Debug)]
pub struct StreamPlan {
    /// The stream's name (`POPGW_AUDIT`).
    pub name: String,
    /// Its subjects (`popgw.audit.*`).
    pub subjects: Vec<String>,
    /// Its replicas.
    pub replicas: usize,
    /// How long it keeps messages at least (zero: forever).
    pub max_age: Duration,
}

/// What [`init_stream`] did.
#[derive(Debug)]
pub enum Init {
    /// The stream was missing and is now created as planned.
    Created,
    /// The stream exists; what is wrong with it (nothing: it is as planned).
    Exists(Vec<String>),
}

fn days(d: Duration) -> String {
    if d.is_zero() {
        "forever".into()
    } else if d.as_secs().is_multiple_of(86_400) {
        format!("{} days", d.as_secs() / 86_400)
    } else {
        format!("{} s", d.as_secs())
    }
}

impl StreamPlan {
    /// The stream's configuration.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            description: Some("popgw audit witness: every node's sealed batches".into()),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_age: self.max_age,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            duplicate_window: DUPLICATE_WINDOW.min(if self.max_age.is_zero() {
                DUPLICATE_WINDOW
            } else {
                self.max_age
            }),
            deny_delete: true,
            deny_purge: true,
            allow_rollup: false,
            ..Default::default()
        }
    }

    /// What is wrong with an existing stream's configuration, each in words.
    pub fn check(&self, actual: &stream::Config) -> Vec<String> {
        let mut p = Vec::new();
        for s in &self.subjects {
            if !actual.subjects.iter().any(|a| covers(a, s)) {
                p.push(format!(
                    "its subjects {:?} do not take {s}: a node's heads would not be stored",
                    actual.subjects
                ));
            }
        }
        if !actual.deny_delete {
            p.push("deny_delete is off: witnessed messages can be deleted through the API".into());
        }
        if !actual.deny_purge {
            p.push("deny_purge is off: the stream can be purged through the API".into());
        }
        if actual.allow_rollup {
            p.push("allow_rollup is on: one message can replace a subject's history".into());
        }
        if actual.retention != stream::RetentionPolicy::Limits {
            p.push(format!(
                "retention {:?}: messages go once consumed; it must be Limits",
                actual.retention
            ));
        }
        if actual.storage != stream::StorageType::File {
            p.push("storage is memory: a restart loses every witnessed head".into());
        }
        if actual.num_replicas != self.replicas {
            p.push(format!(
                "{} replica(s), {} asked",
                actual.num_replicas, self.replicas
            ));
        }
        if actual.duplicate_window.is_zero() {
            p.push("no duplicate window: a resend after a crash is stored twice".into());
        }
        let short =
            !actual.max_age.is_zero() && (self.max_age.is_zero() || actual.max_age < self.max_age);
        if short {
            p.push(format!(
                "max_age {} is shorter than the audit log's retention ({}): heads would go first",
                days(actual.max_age),
                days(self.max_age)
            ));
        }
        if actual.max_messages > 0 || actual.max_bytes > 0 || actual.max_messages_per_subject > 0 {
            p.push(format!(
                "limits (max_msgs {}, max_bytes {}, max_msgs_per_subject {}) would discard \
                 witnessed heads",
                actual.max_messages, actual.max_bytes, actual.max_messages_per_subject
            ));
        }
        if actual.sealed {
            p.push("the stream is sealed: nothing more can be witnessed".into());
        }
        p
    }

    /// One line describing the plan.
    pub fn describe(&self) -> String {
        format!(
            "subjects {}, {} replica(s), file storage, deny_delete, deny_purge, no rollup, \
             duplicate window {} s, messages kept {}",
            self.subjects.join(" "),
            self.replicas,
            self.config().duplicate_window.as_secs(),
            days(self.max_age)
        )
    }
}

fn stream_error(name: &str, reason: impl fmt::Display) -> LinkError {
    LinkError::Stream {
        stream: name.to_string(),
        reason: reason.to_string(),
    }
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// `popgw audit witness init`: creates the stream as planned when missing; otherwise
/// says what is wrong with it (and changes nothing).
pub async fn init_stream(js: &jetstream::Context, plan: &StreamPlan) -> Result<Init, LinkError> {
    match js.get_stream(&plan.name).await {
        Ok(stream) => Ok(Init::Exists(plan.check(&stream.cached_info().config))),
        Err(e) if not_found(&e) => {
            js.create_stream(plan.config())
                .await
                .map_err(|e| stream_error(&plan.name, format!("could not be created: {e}")))?;
            Ok(Init::Created)
        }
        Err(e) => Err(stream_error(&plan.name, e)),
    }
}

/// A shipper's stream: when it exists and takes `subject`, used as it is (a node allowed
/// no more than reading cannot change it); when it is missing, created as `plan` says
/// (a development server); when it does not take `subject`, widened. A refusal says
/// to run `popgw audit witness init`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    plan: &StreamPlan,
    subject: &str,
) -> Result<stream::Stream, LinkError> {
    let init = "run `popgw audit witness init` with the NATS administrator's credentials";
    let stream = match js.get_stream(&plan.name).await {
        Ok(stream) => stream,
        Err(e) if not_found(&e) => match js.create_stream(plan.config()).await {
            Ok(stream) => return Ok(stream),
            // Another node created it meanwhile.
            Err(first) => js.get_stream(&plan.name).await.map_err(|_| {
                stream_error(
                    &plan.name,
                    format!("missing, and this user could not create it ({first}): {init}"),
                )
            })?,
        },
        Err(e) => return Err(stream_error(&plan.name, e)),
    };
    let config = &stream.cached_info().config;
    if config.subjects.iter().any(|s| covers(s, subject)) {
        return Ok(stream);
    }
    let mut wider = config.clone();
    wider.subjects.push(subject.to_string());
    js.update_stream(wider).await.map_err(|e| {
        stream_error(
            &plan.name,
            format!("does not take {subject}, and this user could not add it ({e}): {init}"),
        )
    })?;
    js.get_stream(&plan.name)
        .await
        .map_err(|e| stream_error(&plan.name, e))
}

/// A new user nkey: (seed, public key). The seed is the secret (`nkey_seed_file`), the
/// public key goes into the server's configuration.
pub fn new_user_nkey() -> (String, String) {
    let pair = nkeys::KeyPair::new_user();
    (
        pair.seed().expect("a new key pair has its seed"),
        pair.public_key(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "hunter2-very-secret\n").unwrap();
        let (seed, public) = new_user_nkey();
        let seed_file = dir.path().join("seed");
        std::fs::write(&seed_file, &seed).unwrap();
        let link = NatsLink {
            url: "tls://node-1:s3cr3t-in-url@nats.example:4222".into(),
            user: Some("node-1".into()),
            password_file: Some(password.clone()),
            nkey_seed_file: Some(seed_file),
            ..Default::default()
        };
        let shown = format!("{link:?} {link:#?} {}", link.redacted_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains(&seed), "{shown}");
        assert!(shown.contains("nats.example:4222"), "{shown}");
        let problems = link.problems("audit.witness").join("\n");
        assert!(
            !problems.contains("hunter2")
                && !problems.contains(&seed)
                && !problems.contains("s3cr3t"),
            "{problems}"
        );
        assert!(
            problems.contains("no user, password or token in the URL"),
            "{problems}"
        );
        // The nkey is named by its public half.
        let only_nkey = NatsLink {
            user: None,
            password_file: None,
            ..link
        };
        assert_eq!(only_nkey.who(), format!("nkey {public}"));
    }

    #[test]
    fn plain_text_leaves_loopback_only_when_allowed() {
        let problems = |url: &str, allow: bool| {
            NatsLink {
                allow_plaintext: allow,
                ..NatsLink::new(url)
            }
            .problems("audit.witness")
        };
        assert!(problems("nats://127.0.0.1:4222", false).is_empty());
        assert!(problems("nats://localhost:4222", false).is_empty());
        assert!(problems("nats://[::1]:4222", false).is_empty());
        let p = problems("nats://10.0.0.5:4222", false).join("\n");
        assert!(
            p.contains("in clear") && p.contains("allow_plaintext"),
            "{p}"
        );
        assert!(problems("nats://10.0.0.5:4222", true).is_empty());
        assert!(!problems("nats://127.0.0.1:4222,nats://nats.example:4222", false).is_empty());
        let p = problems("tls://nats.example:4222", false).join("\n");
        assert!(p.contains("ca_file"), "{p}");
        assert!(!problems("http://x", false).is_empty());
    }

    #[test]
    fn credentials_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let link = |f: &dyn Fn(&mut NatsLink)| {
            let mut l = NatsLink::new("nats://127.0.0.1:4222");
            f(&mut l);
            l.problems("w").join("\n")
        };
        assert!(link(&|l| l.user = Some("node-1".into())).contains("password_file"));
        assert!(link(&|l| l.password_file = Some("/nowhere".into())).contains("w.user"));
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
            let p = link(&|l| {
                l.user = Some("node-1".into());
                l.password_file = Some(pw.clone());
            });
            assert!(p.contains("chmod 600"), "{p}");
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(
            link(&|l| {
                l.user = Some("node-1".into());
                l.password_file = Some(pw.clone());
            }),
            ""
        );
        // Not a seed: refused without quoting the file.
        let p = link(&|l| l.nkey_seed_file = Some(pw.clone()));
        assert!(p.contains("user nkey seed"), "{p}");
        let p = link(&|l| {
            l.user = Some("a".into());
            l.password_file = Some(pw.clone());
            l.nkey_seed_file = Some(pw.clone());
        });
        assert!(p.contains("one way"), "{p}");
    }

    #[test]
    fn subjects_cover() {
        assert!(covers("popgw.audit.*", "popgw.audit.node-1"));
        assert!(covers("popgw.audit.>", "popgw.audit.node-1"));
        assert!(covers("popgw.>", "popgw.audit.*"));
        assert!(covers("popgw.audit.node-1", "popgw.audit.node-1"));
        assert!(!covers("popgw.audit.node-1", "popgw.audit.*"));
        assert!(!covers("popgw.audit.*", "popgw.audit.>"));
        assert!(!covers("popgw.audit.*", "popgw.audit"));
        assert!(!covers("popgw.audit.node-2", "popgw.audit.node-1"));
    }

    #[test]
    fn the_plan_finds_what_is_wrong() {
        let plan = StreamPlan {
            name: "S".into(),
            subjects: vec![SUBJECTS.into()],
            replicas: 1,
            max_age: Duration::from_secs(30 * 86_400),
        };
        assert!(plan.check(&plan.config()).is_empty());
        let mut weak = plan.config();
        weak.deny_delete = false;
        weak.deny_purge = false;
        weak.allow_rollup = true;
        weak.max_age = Duration::from_secs(86_400);
        weak.subjects = vec!["popgw.audit.node-1".into()];
        let p = plan.check(&weak).join("\n");
        for word in [
            "deny_delete",
            "deny_purge",
            "allow_rollup",
            "max_age",
            "subjects",
        ] {
            assert!(p.contains(word), "{word}: {p}");
        }
        let mut forever = plan.config();
        forever.max_age = Duration::ZERO;
        assert!(plan.check(&forever).is_empty());
    }
}
