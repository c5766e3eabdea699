//! The `popgw` command as a person uses it: first start on the embedded default,
//! then `popgw verify` / `citizen` / `procedures` / `audit` against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_popgw");

struct Running {
    child: Child,
    addr: String,
    examples: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `popgw serve` with no configuration, in `dir`, on an ephemeral port.
fn start_default(dir: &Path) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    let out = Command::new(BIN)
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
        for i in 0..20 {
            audit
                .append(popgw::audit::AuditEntry {
                    request_id: format!("r{i}"),
                    outcome: "MATCH".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
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
