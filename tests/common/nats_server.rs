//! A private nats-server for one test, run with the shipped `config/nats-server.conf`
//! (TLS verifying client certificates, the POPGW account and its least-privilege users):
//! placeholders replaced by a random port, a temporary JetStream store, a test PKI and
//! fresh credentials. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use popgw::link::nats::NatsLink;
use tempfile::TempDir;

/// Where Debian's nats-server package puts the binary.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub struct NatsServer {
    pub dir: TempDir,
    pub port: u16,
    /// The test PKI: `ca.pem` issued the server's certificate and the clients' (`gateway`).
    pub certs: PathBuf,
    /// Another CA's folder (`ca.pem` did not issue the server's certificate).
    pub other_certs: PathBuf,
    /// The server's configuration as run.
    pub config: PathBuf,
    child: std::process::Child,
}

/// Writes a secret file (mode 600).
fn secret(path: &Path, text: &str) {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).unwrap();
    writeln!(file, "{text}").unwrap();
}

impl NatsServer {
    /// Starts it; fails (never skips) when nats-server is not installed.
    pub fn start() -> NatsServer {
        assert!(
            Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: `apt-get install nats-server` (Debian's 2.9 package) \
             or put a nats-server 2.9+ binary there"
        );
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let ca = popgw::pki::init(&certs).unwrap();
        popgw::pki::write_client(
            &ca,
            &certs,
            "nats-client",
            "spiffe://popgw.dev/nats/node",
            (2036, 1, 1),
        )
        .unwrap();
        let other_certs = dir.path().join("other-certs");
        popgw::pki::init(&other_certs).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats-server.conf"),
        )
        .unwrap();
        let port = free_port();
        let store = dir.path().join("jetstream");
        let mut replace = |from: &str, to: &str| {
            assert!(
                text.contains(from),
                "config/nats-server.conf no longer holds {from:?}: update tests/common/nats_server.rs"
            );
            text = text.replace(from, to);
        };
        replace("0.0.0.0:4222", &format!("127.0.0.1:{port}"));
        replace(
            "/etc/nats/server.pem",
            certs.join("server.pem").to_str().unwrap(),
        );
        replace(
            "/etc/nats/server.key",
            certs.join("server.key").to_str().unwrap(),
        );
        replace("/etc/nats/ca.pem", certs.join("ca.pem").to_str().unwrap());
        replace("/var/lib/nats-server", store.to_str().unwrap());
        for (user, placeholder) in [
            ("node-1", "NODE_1_NKEY"),
            ("indexer", "INDEXER_NKEY"),
            ("admin", "ADMIN_NKEY"),
        ] {
            let (seed, public) = popgw::link::nats::new_user_nkey();
            secret(&creds.join(format!("{user}.nk")), &seed);
            replace(placeholder, &public);
        }
        let password = format!("{:032x}", rand::random::<u128>());
        secret(&creds.join("node-2.password"), &password);
        replace("NODE_2_PASSWORD", &password);
        let config = dir.path().join("nats-server.conf");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("nats-server.log")).unwrap();
        let child = std::process::Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = NatsServer {
            dir,
            port,
            certs,
            other_certs,
            config,
            child,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "nats-server exited ({status}) with the shipped configuration:\n{}",
                    self.log()
                );
            }
            if let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut line = String::new();
                tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                if BufReader::new(tcp).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start:\n{}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// `tls://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// A credentials file of the test (`node-1.nk`, `node-2.password`, …).
    pub fn cred(&self, name: &str) -> PathBuf {
        self.dir.path().join("creds").join(name)
    }

    /// The link of `who` (node-1, node-2, indexer, admin): TLS with the test CA and a
    /// client certificate, its credentials, its own inbox prefix.
    pub fn link(&self, who: &str) -> NatsLink {
        let mut link = NatsLink {
            url: self.url(),
            ca_file: Some(self.certs.join("ca.pem")),
            cert_file: Some(self.certs.join("nats-client.pem")),
            key_file: Some(self.certs.join("nats-client.key")),
            inbox_prefix: Some(format!("_INBOX_{who}")),
            ..Default::default()
        };
        if who == "node-2" {
            link.user = Some("node-2".into());
            link.password_file = Some(self.cred("node-2.password"));
        } else {
            link.nkey_seed_file = Some(self.cred(&format!("{who}.nk")));
        }
        link
    }

    /// The command-line flags of [`NatsServer::link`].
    pub fn flags(&self, who: &str) -> Vec<String> {
        let link = self.link(who);
        let path = |p: &Option<PathBuf>| p.as_ref().unwrap().to_str().unwrap().to_string();
        let mut flags = vec![
            "--nats-ca".into(),
            path(&link.ca_file),
            "--nats-cert".into(),
            path(&link.cert_file),
            "--nats-key".into(),
            path(&link.key_file),
            "--nats-inbox-prefix".into(),
            link.inbox_prefix.clone().unwrap(),
        ];
        if let Some(user) = &link.user {
            flags.extend([
                "--nats-user".into(),
                user.clone(),
                "--nats-password-file".into(),
                path(&link.password_file),
            ]);
        } else {
            flags.extend(["--nats-nkey-seed-file".into(), path(&link.nkey_seed_file)]);
        }
        flags
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on loopback right now (for a child process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
