//! The `popgw` command as a person uses it: first start on the embedded default,
//! then `popgw verify` / `citizen` / `procedures` / `audit` against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Running {
    child: Child,
    addr: String,
    examples: Vec<String>,
    /// What it printed before serving.
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `popgw serve` with no configuration, in `dir`, on an ephemeral port; its log (debug
/// for popgw's own events) in `dir/serve.log`.
fn start_default(dir: &Path) -> Running {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = crate::common::bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .env("RUST_LOG", "info,popgw=debug")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = String::new();
    let mut examples = Vec::new();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("popgw serving ") {
            addr = rest
                .split(" on ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
        }
        if let Some(cmd) = line.trim().strip_prefix("try: ") {
            examples.push(cmd.to_string());
            if examples.len() == 2 {
                break;
            }
        }
    }
    assert!(
        !addr.is_empty() && examples.len() == 2,
        "unexpected start-up output: {seen:?}"
    );
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    assert!(
        seen.iter().any(|l| l.contains("development PKI")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("demo population")),
        "{seen:?}"
    );
    Running {
        child,
        addr,
        examples,
        seen,
    }
}

/// Splits a printed example command line into arguments (quotes around the name).
fn split_example(cmd: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmd.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    assert_eq!(args[0], "popgw");
    args.remove(0);
    args
}

fn popgw(dir: &Path, args: &[String]) -> (bool, String, String) {
    let out = crate::common::bin()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn first_start_then_verify_citizen_and_audit_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_default(dir.path());
    let addr = vec![
        "--addr".to_string(),
        format!("localhost:{}", gw.addr.rsplit(':').next().unwrap()),
    ];

    // The printed example verifies.
    let mut args = split_example(&gw.examples[0]);
    args.extend(addr.clone());
    let (ok, out, err) = popgw(dir.path(), &args);
    assert!(ok, "{err}");
    assert!(out.starts_with("MATCH"), "{out}");

    // A wrong birth year: NO_MATCH.
    let dob_at = args.iter().position(|a| a == "--dob").unwrap() + 1;
    let year: i32 = args[dob_at][..4].parse().unwrap();
    args[dob_at] = format!("{}{}", year + 1, &args[dob_at][4..]).replace("-02-29", "-02-28");
    let (ok, out, _) = popgw(dir.path(), &args);
    assert!(ok);
    assert!(out.starts_with("NO_MATCH"), "{out}");

    // The outsider's certificate is refused: non-zero exit, an error on stderr.
    let mut outsider = split_example(&gw.examples[0]);
    outsider.extend(addr.clone());
    outsider.extend(["--as".to_string(), "outsider".to_string()]);
    let (ok, out, err) = popgw(dir.path(), &outsider);
    assert!(!ok, "outsider must be refused: {out}");
    assert!(err.starts_with("error:"), "{err}");

    // The gateway's log, written to a file, is plain text: no colour escape codes (they
    // garble log files and journald, and cost formatting on every request).
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("answered"), "the requests were logged: {log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log file: {log}");

    // The ministry reads only the profile's fields (P16: marriage registration), as JSON.
    let id_at = args.iter().position(|a| a == "--id").unwrap() + 1;
    let id = args[id_at].clone();
    let mut citizen: Vec<String> = [
        "citizen",
        "--as",
        "ministry",
        "--json",
        "--id",
        &id,
        "--procedure",
        "P16",
        "--case",
        "HT-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    citizen.extend(addr.clone());
    let (ok, out, err) = popgw(dir.path(), &citizen);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let disclosed: Vec<String> = serde_json::from_value(v["disclosedFields"].clone()).unwrap();
    let catalogue = popgw::catalogue::Catalogue::builtin();
    let profile = &catalogue.get("P16").unwrap().readable_fields;
    let mut profile = profile.clone();
    profile.sort();
    let mut disclosed = disclosed;
    disclosed.sort();
    assert_eq!(disclosed, profile);
    assert!(v["citizen"].get("ethnicity").is_none() && v["citizen"].get("religion").is_none());

    // The same call as the portal is refused.
    let mut as_portal = citizen.clone();
    as_portal[2] = "portal".into();
    let (ok, _, err) = popgw(dir.path(), &as_portal);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");

    // The operator finds those requests in the audit log by personal id.
    let mut query: Vec<String> = [
        "audit",
        "query",
        "--as",
        "operator",
        "--json",
        "--personal-id",
        &id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    query.extend(addr.clone());
    let (ok, out, err) = popgw(dir.path(), &query);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 3, "{out}");
    assert!(!out.contains(&id), "the log holds pseudonyms, not ids");
    // The proto3 JSON mapping, as every --json (issue 25: the on-disk names were printed).
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(
        first["requestId"].is_string() && first["timeUnixMs"].is_string(),
        "{first}"
    );

    // Stop it cleanly (SIGTERM: drain, sign the final checkpoint); the files verify.
    let mut gw = gw;
    let stopped = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(gw.child.wait().unwrap().success());
    drop(gw);
    let (ok, out, err) = popgw(
        dir.path(),
        &[
            "audit".into(),
            "verify".into(),
            "--dir".into(),
            "data/audit".into(),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("OK:"), "{out}");
}

#[test]
fn generate_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.jsonl", "b.jsonl"] {
        let (ok, _, err) = popgw(
            dir.path(),
            &[
                "registry", "generate", "--count", "500", "--seed", "9", "--out", name,
            ]
            .map(String::from),
        );
        assert!(ok, "{err}");
    }
    let a = std::fs::read(dir.path().join("a.jsonl")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("b.jsonl")).unwrap());
    assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 500);
}

#[test]
fn audit_verify_names_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key = popgw::audit::load_or_create_signing_key(&dir.path().join("k")).unwrap();
        let audit =
            popgw::audit::AuditLog::open(popgw::audit::AuditConfig::new(&log, "n1"), key).unwrap();
        crate::common::append_records(&audit, 20).await;
        audit.shutdown().await;
    });
    let verify = |d: &Path| popgw(d, &["audit", "verify", "--dir", "audit"].map(String::from));
    let (ok, out, err) = verify(dir.path());
    assert!(ok, "{out}{err}");
    // Edit record 7's outcome.
    let seg = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-0")
        })
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("\"seq\":7,") {
                l.replace("MATCH", "NO_MATCH")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&seg, edited.join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(dir.path());
    assert!(!ok);
    assert!(err.contains("record 7"), "{err}");
}

/// GET on the admin listener over plain HTTP/1.1: the body.
fn admin_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    raw
}

/// Sends SIGHUP to the running gateway.
fn hangup(gw: &Running) {
    let pid = gw.child.id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success());
}

fn reloads_ok(admin: &str) -> usize {
    admin_get(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("popgw_config_reloads_total{result=\"ok\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_second_portal_certificate_issued_then_revoked_then_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_default(dir.path());
    let admin = gw
        .seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("admin: http://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no admin line: {:?}", gw.seen))
        .to_string();
    assert!(
        gw.seen.iter().any(|l| l.trim().starts_with("audit log: ")),
        "{:?}",
        gw.seen
    );
    let mut verify = split_example(&gw.examples[0]);
    verify.extend([
        "--addr".to_string(),
        format!("localhost:{}", gw.addr.rsplit(':').next().unwrap()),
        "--as".to_string(),
        "portal2".to_string(),
    ]);
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = popgw(
        dir.path(),
        &args(&[
            "certs",
            "issue",
            "--name",
            "portal2",
            "--uri",
            "spiffe://popgw.dev/portal/dvcqg",
            "--days",
            "30",
        ]),
    );
    assert!(ok, "{err}");
    assert!(out.contains("portal2.pem"), "{out}");
    let (ok, out, err) = popgw(dir.path(), &verify);
    assert!(ok && out.starts_with("MATCH"), "{out}{err}");

    // SIGHUP reloads even when nothing changed (the file watch would not).
    let before = reloads_ok(&admin);
    hangup(&gw);
    let mut reloaded = false;
    for _ in 0..50 {
        if reloads_ok(&admin) > before {
            reloaded = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(reloaded, "SIGHUP did not reload");

    let (ok, out, err) = popgw(dir.path(), &args(&["certs", "revoke", "--name", "portal2"]));
    assert!(ok, "{err}");
    assert!(out.contains("crl.pem"), "{out}");
    hangup(&gw);
    let mut refused = false;
    for _ in 0..50 {
        let (ok, _, _) = popgw(dir.path(), &verify);
        if !ok {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(refused, "the revoked certificate still opens connections");
    // The original portal certificate still works.
    let mut portal = split_example(&gw.examples[0]);
    portal.extend([
        "--addr".to_string(),
        format!("localhost:{}", gw.addr.rsplit(':').next().unwrap()),
    ]);
    let (ok, out, err) = popgw(dir.path(), &portal);
    assert!(ok && out.starts_with("MATCH"), "{out}{err}");
    // A name that would escape the folder is refused.
    let (ok, _, err) = popgw(dir.path(), &args(&["certs", "revoke", "--name", "../ca"]));
    assert!(!ok && err.contains("--name"), "{err}");
}
