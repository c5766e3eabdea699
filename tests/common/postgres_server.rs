//! A private PostgreSQL 15 cluster for one test: TLS on with a server certificate of a
//! test CA naming only `db.example`, a random port on 127.0.0.1, `hostnossl` refused.
//!
//! Roles: `popgw` (password [`PASSWORD`], scram-sha-256 over TLS) owns the database
//! `popgw`; `popgw_trust` logs in over TLS without a password. The superuser `postgres`
//! is reachable only over the Unix socket in the cluster's folder ([`PgServer::admin`]).
//! Stopped (`pg_ctl stop -m immediate`) and removed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The password of the role `popgw`.
pub const PASSWORD: &str = "pg-link-Secret-7f3a";
/// The only name the server certificate carries.
pub const SERVER_NAME: &str = "db.example";

pub struct PgServer {
    pub port: u16,
    /// The test CA that signed the server certificate.
    pub ca: PathBuf,
    /// Another CA, which signed nothing the server presents.
    pub other_ca: PathBuf,
    dir: TempDir,
}

fn run(what: &str, command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .current_dir("/");
    c
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

impl PgServer {
    /// Creates and starts the cluster (about a second). Panics, saying how to install
    /// PostgreSQL 15, when its programs are missing.
    pub fn start() -> PgServer {
        assert!(
            Path::new(BIN).join("initdb").exists() && Path::new("/usr/sbin/runuser").exists(),
            "these tests run a private PostgreSQL 15 cluster: {BIN}/initdb is missing; install it \
             with `apt-get install -y postgresql-15` (the `postgres` OS user comes with it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root_buf = dir.path().to_path_buf();
        let root = root_buf.as_path();
        let data = root.join("data");
        // The test CA and the server's certificate and key (0600, owned by postgres).
        let (ca_pem, issuer) = ca("popgw pg-link test CA");
        let (other_pem, _) = ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(root.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(root.join("other-ca.pem"), &other_pem).unwrap();
        std::fs::write(root.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(root.join("server.key"), key.serialize_pem()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                root.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        run(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root),
        );
        run(
            "initdb",
            as_postgres("initdb").args(["-D"]).arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
            ]),
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\n\
             hostssl all popgw 127.0.0.1/32 scram-sha-256\n\
             hostssl all popgw_trust 127.0.0.1/32 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        // A free port, taken again by the time the server binds only by bad luck: then
        // another (the last `port` line of postgresql.conf wins).
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n\
                 ssl = on\nssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
                root = root.display()
            );
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
            let started = as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(root.join("log"))
                .args(["-w", "start"])
                .output()
                .unwrap();
            if started.status.success() {
                break port;
            }
            assert!(
                attempt < 3,
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(root.join("log")).unwrap_or_default()
            );
        };
        let server = PgServer {
            port,
            ca: root.join("ca.pem"),
            other_ca: root.join("other-ca.pem"),
            dir,
        };
        run(
            "create roles",
            as_postgres("psql")
                .arg("-q")
                .args(["-h", &root.display().to_string(), "-p", &port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
                .args([
                    "-c",
                    &format!("CREATE ROLE popgw LOGIN PASSWORD '{PASSWORD}'"),
                    "-c",
                    "CREATE ROLE popgw_trust LOGIN",
                    "-c",
                    "CREATE DATABASE popgw OWNER popgw",
                    "-c",
                    "GRANT ALL ON DATABASE popgw TO popgw_trust",
                ]),
        );
        server
    }

    /// `postgres://USER[:PASSWORD]@HOST:PORT/popgw?PARAMS`, HOST `db.example` reached at
    /// 127.0.0.1 (`hostaddr`) when `by_name`, else `127.0.0.1` itself.
    pub fn url(&self, user: &str, password: Option<&str>, by_name: bool, params: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        let (host, hostaddr) = if by_name {
            (SERVER_NAME, "hostaddr=127.0.0.1&")
        } else {
            ("127.0.0.1", "")
        };
        format!(
            "postgres://{auth}@{host}:{}/popgw?{hostaddr}{params}",
            self.port
        )
    }

    /// The usual URL: `popgw` with its password, verify-full against the test CA.
    pub fn verified_url(&self) -> String {
        self.url(
            "popgw",
            Some(PASSWORD),
            true,
            &format!("sslmode=verify-full&sslrootcert={}", self.ca.display()),
        )
    }

    /// The cluster's folder (its log is `log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
