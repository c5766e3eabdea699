//! Production never falls back to demo behaviour, and a node refuses to start rather
//! than corrupt its audit trail: a mistyped CA path with a configuration file stops the
//! gateway and touches nothing; a second gateway on one audit folder is refused; a
//! missing or different pseudonym key is refused; examples are printed only from the
//! generated demo population.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::TestGateway;
use popgw::Server;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn a_mistyped_ca_path_stops_the_gateway_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    popgw::pki::init(&certs).unwrap();
    let config = dir.path().join("popgw.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nclient_ca = \"{c}/ca-typo.pem\"\ncert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\ncreate_dev_pki = true\n",
            d = dir.path().display(),
            c = certs.display()
        ),
    )
    .unwrap();
    let before = snapshot(dir.path());
    let out = crate::common::bin()
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca-typo.pem"), "names the file: {stderr}");
    let after = snapshot(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "no file created (no PKI, no demo policy, no demo population)"
    );
    assert!(before == after, "no file changed");

    // `certs init` over an existing PKI refuses too, and changes nothing.
    let out = crate::common::bin()
        .args(["certs", "init", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert!(snapshot(dir.path()) == before);
}

#[tokio::test]
async fn a_second_gateway_on_the_same_audit_folder_refuses_to_start() {
    let mut gw = TestGateway::start().await;
    let config = popgw::config::Config::rooted_at(gw.dir.path());
    let e = Server::load(config.clone()).await.err().expect("refused");
    let message = e.to_string();
    assert!(
        message.contains("in use by another popgw")
            && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    // Once the first one has stopped, the folder is free.
    gw.stop().await;
    let server = Server::load(config).await.unwrap();
    drop(server);
}

/// A gateway that answered one verification and stopped, and its configuration.
async fn stopped_after_one_verification() -> (TestGateway, popgw::config::Config) {
    let mut gw = TestGateway::start().await;
    let r = gw.living().clone();
    gw.client("portal")
        .await
        .verify_identity(common::declare(&r, "P03"))
        .await
        .unwrap();
    gw.stop().await;
    let config = popgw::config::Config::rooted_at(gw.dir.path());
    (gw, config)
}

#[tokio::test]
async fn a_missing_or_different_pseudonym_key_refuses_to_start() {
    let (_gw, config) = stopped_after_one_verification().await; // holds the folder
    let key = config.pseudonym_key_path();
    let original = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let e = Server::load(config.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("is missing"), "{e}");
    assert!(!key.exists(), "no new key was made");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let e = Server::load(config.clone()).await.err().expect("refused");
    assert!(
        e.to_string().contains("is not the key of the audit log"),
        "{e}"
    );
    std::fs::write(&key, original).unwrap();
    Server::load(config).await.unwrap();
}

/// The lines `popgw serve` (zero-config, in `dir`) prints before it serves.
fn start_lines(dir: &Path) -> Vec<String> {
    let mut child = crate::common::bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    for line in reader.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("popgw serving");
        lines.push(line);
        if done {
            break;
        }
    }
    // Any example lines follow the "serving" line at once; give them a moment.
    let rest = std::thread::spawn(move || reader.map_while(Result::ok).collect::<Vec<_>>());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    lines.extend(rest.join().unwrap());
    lines
}

#[test]
fn examples_are_printed_only_from_the_generated_demo_population() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_lines(dir.path());
    assert!(
        first.iter().any(|l| l.trim_start().starts_with("try: ")),
        "{first:?}"
    );
    // Another population imported over the demo: it could be real, never printed.
    let population = dir.path().join("other.jsonl");
    popgw_population::generate_to_file(500, 99, &population).unwrap();
    let out = crate::common::bin()
        .args(["registry", "import", "--from"])
        .arg(&population)
        .args(["--to", "data/registry"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = start_lines(dir.path());
    assert!(
        second.iter().any(|l| l.contains("500 citizens")),
        "{second:?}"
    );
    assert!(
        !second.iter().any(|l| l.trim_start().starts_with("try: ")),
        "{second:?}"
    );
}

/// Runs the binary in `dir`.
fn popgw(dir: &Path, args: &[&str]) -> std::process::Output {
    crate::common::bin()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Issue 25: a mistyped `data_dir` in a configuration file started normally, with new
/// signing and pseudonym keys and a new chain; a mistyped key path left a new key behind.
/// With a file, `serve` makes neither: it exits 64 naming `popgw init`, and writes nothing;
/// `popgw init` makes the folder once, starting a chain that verifies.
#[test]
fn serve_with_a_file_never_makes_keys_and_init_makes_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let certs = dir.path().join("certs");
    let file = dir.path().join("popgw.toml");
    let write = |audit: &str| {
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data-typo\"\npolicy_file = \"{p}\"\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nclient_ca = \"{c}/ca.pem\"\n\
                 cert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\ncreate_dev_pki = false\n\
                 [registry]\npath = \"{r}\"\ncreate_demo = false\n{audit}",
                d = dir.path().display(),
                p = config.policy_path().display(),
                c = certs.display(),
                r = config.registry_path().display(),
            ),
        )
        .unwrap();
    };
    write("");
    let file = file.to_str().unwrap();
    let before = snapshot(dir.path());
    for command in ["serve", "check-config"] {
        let out = popgw(dir.path(), &[command, "--config", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        for word in [
            "audit.signing_key_file",
            "audit.pseudonym_key_file",
            "popgw init --config",
        ] {
            assert!(stderr.contains(word), "{command} names {word}: {stderr}");
        }
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused start wrote nothing"
    );
    assert!(!dir.path().join("data-typo").exists());

    // On purpose: init makes the keys and starts the chain.
    let out = popgw(dir.path(), &["init", "--config", file]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("audit-signing.key"), "{stdout}");
    assert!(stdout.contains("audit public key: "), "{stdout}");
    let data = dir.path().join("data-typo");
    assert!(data.join("audit-signing.key").is_file());
    assert!(data.join("audit-pseudonym.key").is_file());
    let verify = popgw(
        dir.path(),
        &[
            "audit",
            "verify",
            "--dir",
            data.join("audit").to_str().unwrap(),
        ],
    );
    assert!(verify.status.success(), "{verify:?}");
    // Again: nothing made, nothing changed.
    let initialised = snapshot(&data);
    let out = popgw(dir.path(), &["init", "--config", file]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing made"),
        "{out:?}"
    );
    assert_eq!(snapshot(&data), initialised);
    let out = popgw(dir.path(), &["check-config", "--config", file]);
    assert!(out.status.success(), "{out:?}");

    // A mistyped key path is refused too, and leaves no key behind.
    let typo = dir.path().join("data-typo/audit-signin.key");
    write(&format!(
        "[audit]\nsigning_key_file = \"{}\"\n",
        typo.display()
    ));
    let out = popgw(dir.path(), &["serve", "--config", file]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!typo.exists(), "no key file left behind");
    assert_eq!(snapshot(&data), initialised);

    // The initialised folder serves.
    write("");
    let (mut child, port) = common::spawn_serve(Path::new(file), "warn", Stdio::null());
    assert_ne!(port, 0);
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn check_config_names_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nowhere\"\n[tls]\nhandshake_timeout_ms = \"soon\"\n[cache]\nttl = 5\n",
    )
    .unwrap();
    for command in [
        &["check-config", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let out = crate::common::bin()
            .args(command)
            .arg(&bad)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{command:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for key in ["listen: ", "tls.handshake_timeout_ms: ", "cache.ttl: "] {
            assert!(stderr.contains(key), "{command:?} names {key}: {stderr}");
        }
    }
    // A file that parses but names a CA, a policy and a registry that do not exist
    // (issue 25: check-config said OK and serve then failed with exit 1, so the systemd
    // unit restart-looped): both exit 64 naming each, and serve writes nothing.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:50099\"\n").unwrap();
    for command in [
        &["check-config", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let out = crate::common::bin()
            .args(command)
            .arg(&good)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{command:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for key in ["tls: ", "certs/ca.pem", "policy_file: ", "registry.path: "] {
            assert!(stderr.contains(key), "{command:?} names {key}: {stderr}");
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused start wrote nothing"
    );
    // The same file beside the material it names: OK.
    let (config, _ca) = common::prepare(dir.path());
    let prepared = common::write_config(dir.path(), &config, "");
    common::init_node(&prepared);
    let out = crate::common::bin()
        .args(["check-config", "--config"])
        .arg(&prepared)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[tokio::test]
async fn a_wiped_audit_folder_refuses_to_start_and_fails_verification() {
    let (_gw, config) = stopped_after_one_verification().await; // holds the folder
    let audit = config.audit_dir();
    assert!(popgw::audit::verify_dir(&audit, None).is_ok());
    // An insider removes the records and the checkpoints (the public key may stay).
    for entry in std::fs::read_dir(&audit).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("audit-0") || name == "checkpoints.log" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let e = popgw::audit::verify_dir(&audit, None).unwrap_err();
    assert!(e.reason.contains("wiped"), "{e}");
    let e = Server::load(config.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("wiped"), "{e}");
    // Nothing was started over it.
    assert!(popgw::audit::read_records(&audit).unwrap().is_empty());
}

#[tokio::test]
async fn a_pinned_public_key_refuses_another_signing_key() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    let mut config = popgw::config::Config::rooted_at(gw.dir.path());
    let ours = std::fs::read_to_string(config.audit_dir().join("audit-signing.pub")).unwrap();
    config.audit.public_key = Some("ab".repeat(32));
    let e = Server::load(config.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("is not audit.public_key"), "{e}");
    config.audit.public_key = Some(ours.trim().to_string());
    let server = Server::load(config).await.unwrap();
    // AuditLog.Head answers the key in memory, not the folder's copy.
    assert_eq!(server.gateway().audit.public_key(), ours.trim());
}

/// Issue 25: `check-config` runs what `serve` checks before binding, among it that the
/// key is the certificate's: a server key of another certificate is refused, exit 64,
/// by both.
#[test]
fn a_key_of_another_certificate_is_refused_by_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let file = common::write_config(dir.path(), &config, "");
    common::init_node(&file);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("certs/server.key\"", "certs/portal.key\"");
    assert!(text.contains("certs/portal.key"), "{text}");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    for command in ["check-config", "serve"] {
        let out = popgw(dir.path(), &[command, "--config", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains("tls: "), "{command}: {stderr}");
    }
}
