//! The links to PostgreSQL over verified TLS, against a private PostgreSQL 15 cluster
//! (`common::postgres_server`: TLS on, `hostnossl` refused, a certificate naming only
//! `db.example`): `popgw registry import` and the gateway's `kind = "postgres"` over
//! `sslmode=verify-full`, the audit index likewise, and each way a link is refused with a
//! message that says why. And the registry's identity pinned: `[registry] identity`
//! refuses a registry whose certificate is of the same CA and names the same host but
//! carries another URI SAN.

use crate::common;

use std::process::Command;

use common::postgres_server::{PgServer, PASSWORD};
use common::{declare, TestGateway};
use popgw::audit::index::{AuditIndex, IndexConfig};
use popgw::link::postgres::{PgLink, SslMode};
use popgw::proto::gateway as gw;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Connects over `url` and runs one statement: Ok, or the explained error.
async fn try_link(url: &str) -> Result<(), String> {
    let link = PgLink::parse_with(url, no_env).map_err(|e| e.to_string())?;
    let client = link
        .connect("popgw-test", std::time::Duration::from_secs(10))
        .await?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| link.explain(&e))
}

#[tokio::test]
async fn registry_import_and_the_gateway_over_verify_full() {
    let pg = PgServer::start();
    let url = pg.verified_url();
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let out = crate::common::bin()
        .args(["registry", "import", "--from"])
        .arg(config.population_path())
        .args(["--to", &url])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2000"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // check-config accepts the URL, and refuses one whose CA file does not exist.
    let toml = |url: &str| {
        format!("[registry]\nkind = \"postgres\"\nurl = \"{url}\"\n[tls]\ncreate_dev_pki = false\n")
    };
    let good = dir.path().join("good.toml");
    std::fs::write(&good, toml(&url)).unwrap();
    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, toml(&url.replace("ca.pem", "no-such-ca.pem"))).unwrap();
    let check = |path: &std::path::Path| {
        let out = crate::common::bin()
            .args(["check-config", "--config"])
            .arg(path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (_, text) = check(&good);
    assert!(!text.contains("registry.url"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    let (code, text) = check(&missing);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("registry.url")
            && text.contains("sslrootcert")
            && text.contains("no-such-ca.pem"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    drop(dir);

    let gw = TestGateway::builder()
        .config(|c| {
            c.registry.kind = popgw::config::RegistryKind::Postgres;
            c.registry.url = Some(url.clone());
        })
        .start()
        .await;
    let r = gw.living().clone();
    let answer = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), gw::Verdict::Match);
}

#[tokio::test]
async fn the_audit_index_over_verify_full() {
    let pg = PgServer::start();
    let index = AuditIndex::open(&IndexConfig::new(pg.verified_url()))
        .await
        .unwrap();
    assert_eq!(index.count("node-1").await.unwrap(), 0);
    assert!(index.heads().await.unwrap().is_empty());
    let debug = format!("{index:?} {:?}", IndexConfig::new(pg.verified_url()));
    assert!(!debug.contains(PASSWORD), "{debug}");

    // The same index behind the other CA's root: refused, and said so.
    let wrong = pg.verified_url().replace(
        &pg.ca.display().to_string(),
        &pg.other_ca.display().to_string(),
    );
    let e = AuditIndex::open(&IndexConfig::new(wrong))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("server certificate not trusted"), "{e}");
}

#[tokio::test]
async fn every_way_a_link_is_refused_says_why() {
    let pg = PgServer::start();
    let ca = pg.ca.display().to_string();
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");

    try_link(&pg.verified_url()).await.unwrap();

    // Plaintext: the server's hostnossl reject.
    let e = try_link(&pg.url("popgw", Some(PASSWORD), false, "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        e.contains("no encryption") && e.contains("requires TLS"),
        "{e}"
    );

    // A certificate of another CA.
    let e = try_link(&pg.url(
        "popgw",
        Some(PASSWORD),
        true,
        &format!("sslmode=verify-full&sslrootcert={}", pg.other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("server certificate not trusted") && e.contains("other-ca.pem"),
        "{e}"
    );

    // The certificate names db.example only: 127.0.0.1 is refused under verify-full,
    // accepted under verify-ca (chain only), and under require with sslrootcert.
    let e = try_link(&pg.url("popgw", Some(PASSWORD), false, &verify_full))
        .await
        .unwrap_err();
    assert!(e.contains("does not name 127.0.0.1"), "{e}");
    try_link(&pg.url(
        "popgw",
        Some(PASSWORD),
        false,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    let e = try_link(&pg.url(
        "popgw",
        Some(PASSWORD),
        false,
        &format!("sslmode=require&sslrootcert={}", pg.other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("server certificate not trusted"), "{e}");
    // require without sslrootcert: encrypted, unchecked (libpq's meaning).
    try_link(&pg.url("popgw_trust", None, false, "sslmode=require"))
        .await
        .unwrap();

    // Passwords: wrong, missing, from a password file.
    let e = try_link(&pg.url("popgw", Some("wrong"), true, &verify_full))
        .await
        .unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong"), "{e}");
    let e = try_link(&pg.url("popgw", None, true, &verify_full))
        .await
        .unwrap_err();
    assert!(e.contains("asks for a password"), "{e}");
    let passfile = pg.dir().join("pgpass");
    std::fs::write(&passfile, format!("db.example:*:popgw:popgw:{PASSWORD}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    try_link(&pg.url(
        "popgw",
        None,
        true,
        &format!("{verify_full}&passfile={}", passfile.display()),
    ))
    .await
    .unwrap();
    // The key=value form.
    try_link(&format!(
        "host=db.example hostaddr=127.0.0.1 port={} dbname=popgw user=popgw password={PASSWORD} \
         sslmode=verify-full sslrootcert='{ca}'",
        pg.port
    ))
    .await
    .unwrap();

    // No sslmode: a name that is not loopback means verify-full, loopback plaintext.
    let link = PgLink::parse_with(
        &pg.url("popgw", Some(PASSWORD), true, &format!("sslrootcert={ca}")),
        no_env,
    )
    .unwrap();
    assert_eq!(link.mode(), SslMode::VerifyFull);
    let e = try_link(&pg.url("popgw", Some(PASSWORD), false, ""))
        .await
        .unwrap_err();
    assert!(e.contains("no encryption"), "{e}");

    // The import through the CLI names the problem too, without the password.
    let out = crate::common::bin()
        .args(["registry", "import", "--from", "/dev/null", "--to"])
        .arg(pg.url(
            "popgw",
            Some(PASSWORD),
            true,
            &format!("sslmode=verify-full&sslrootcert={}", pg.other_ca.display()),
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("server certificate not trusted"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_registry_identity_is_pinned() {
    let capture = common::Capture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("popgw=info"))
            .with_writer(capture.clone())
            .finish(),
    );
    // A registry serving a certificate of the same CA, naming the same host, with
    // another URI SAN.
    let dir = tempfile::tempdir().unwrap();
    let (config, ca) = common::prepare(dir.path());
    let certs = dir.path().join("certs");
    let (cert, key) = ca
        .issue_server_as("spiffe://popgw.dev/server/impostor")
        .unwrap();
    std::fs::write(certs.join("impostor.pem"), cert).unwrap();
    std::fs::write(certs.join("impostor.key"), key).unwrap();
    let store = popgw::registry::open_store(
        &popgw::registry::StoreLocation::Disk(config.registry_path()),
        &popgw::registry::StoreOptions::default(),
    )
    .await
    .unwrap();
    let mut impostor_config = config.clone();
    impostor_config.tls.cert = certs.join("impostor.pem");
    impostor_config.tls.key = certs.join("impostor.key");
    let impostor =
        common::RegistryServer::start(&impostor_config, store.clone(), Default::default()).await;
    let genuine = common::RegistryServer::start(&config, store, Default::default()).await;

    // A second folder, a copy of the first (same CA, same population), for the gateway
    // in front of the genuine registry.
    let dir2 = tempfile::tempdir().unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.path().display()))
        .arg(dir2.path())
        .status()
        .unwrap()
        .success());
    let remote = |mut c: popgw::config::Config, port: u16, certs: &std::path::Path| {
        c.registry.kind = popgw::config::RegistryKind::Remote;
        c.registry.endpoint = Some(format!("https://localhost:{port}"));
        c.registry.cert = Some(certs.join("gateway.pem"));
        c.registry.key = Some(certs.join("gateway.key"));
        c.registry.identity = Some(popgw::pki::SERVER_ID.into());
        c.registry.retries = 0;
        c
    };
    let impostor_gw = remote(config.clone(), impostor.addr.port(), &certs);
    let genuine_gw = remote(
        popgw::config::Config::rooted_at(dir2.path()),
        genuine.addr.port(),
        &dir2.path().join("certs"),
    );
    let ca2 = popgw::pki::DevCa::load(&dir2.path().join("certs")).unwrap();

    let mut gw = TestGateway::start_prepared(dir, impostor_gw, ca, None).await;
    let r = gw.living().clone();
    let e = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(impostor.metrics.registry_lookups.get(), 0);
    let logged = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logged.contains("TLS handshake with the registry failed")
            && logged.contains("is not spiffe://popgw.dev/server/popgw")
            && logged.contains("spiffe://popgw.dev/server/impostor"),
        "{logged}"
    );
    gw.stop().await;

    // The genuine registry (the development server certificate, SERVER_ID) answers.
    let mut gw = TestGateway::start_prepared(dir2, genuine_gw, ca2, None).await;
    let answer = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), gw::Verdict::Match);
    gw.stop().await;
    impostor.stop().await;
    genuine.stop().await;
}
