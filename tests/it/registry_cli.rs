//! `popgw registry …` as an operator runs it: generate piped into import, `registry
//! serve` with its switches, an update from another process reaching a live feed, and
//! an import killed with SIGKILL leaving the previous store serving.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use popgw::client::{connect, ClientCerts};
use popgw::proto::registry as pb;
use popgw::proto::registry::population_registry_client::PopulationRegistryClient;
use popgw::registry::disk::DiskStore;
use popgw::registry::{LookupKey, Registry, Store, StoreOptions};
use tokio_stream::StreamExt;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `popgw registry generate --out - | popgw registry import --from - --to DIR`.
fn pipe_import(dir: &Path, count: u64, seed: u64, store: &str) -> (Child, Child) {
    let mut generate = crate::common::bin()
        .args(["registry", "generate", "--count", &count.to_string()])
        .args(["--seed", &seed.to_string(), "--out", "-"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let import = crate::common::bin()
        .args(["registry", "import", "--from", "-", "--to", store])
        .current_dir(dir)
        .stdin(generate.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (generate, import)
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    crate::common::bin()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn generate_piped_into_import() {
    let dir = tempfile::tempdir().unwrap();
    let (mut generate, import) = pipe_import(dir.path(), 3_000, 4, "store");
    let out = import.wait_with_output().unwrap();
    assert!(generate.wait().unwrap().success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("imported 3000 citizens into store at version "),
        "{text}"
    );
    // Not a terminal: plain progress lines, no bar escapes.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'));
    let store = DiskStore::open(&dir.path().join("store"), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(store.count()).unwrap(), 3_000);

    // A bad line stops the import with its number; the store is unchanged.
    let file = dir.path().join("bad.jsonl");
    let good = run(
        dir.path(),
        &["registry", "generate", "--count", "5", "--out", "-"],
    )
    .stdout;
    let mut text = String::from_utf8(good).unwrap();
    text.push_str("{\"personalId\": \"001\"}\n");
    std::fs::write(&file, text).unwrap();
    let out = run(
        dir.path(),
        &["registry", "import", "--from", "bad.jsonl", "--to", "store"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 6: invalid record: personal_id"), "{err}");
    assert!(err.contains("the previous store still serves"), "{err}");
    // --skip-invalid counts it instead.
    let out = run(
        dir.path(),
        &[
            "registry",
            "import",
            "--from",
            "bad.jsonl",
            "--to",
            "small",
            "--skip-invalid",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("imported 5 citizens") && text.contains("(1 invalid records skipped)"),
        "{text}"
    );
    assert_eq!(rt.block_on(store.count()).unwrap(), 3_000);
}

#[test]
fn an_import_killed_midway_leaves_the_previous_store_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, i) = pipe_import(dir.path(), 1_000, 1, "store");
    assert!(i.wait_with_output().unwrap().status.success());
    g.wait().unwrap();
    let store_dir = dir.path().join("store");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serving = DiskStore::open(&store_dir, &StoreOptions::default()).unwrap();
    let before = rt.block_on(serving.examples(1)).unwrap();

    // A big import, killed with SIGKILL once it has written part of its generation.
    let (generate, import) = pipe_import(dir.path(), 5_000_000, 2, "store");
    let (_generate, mut import) = (Killed(generate), Killed(import));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = std::fs::read_dir(&store_dir).unwrap().flatten().find(|e| {
            e.file_name().to_string_lossy().ends_with(".partial")
                && e.metadata().map(|m| m.len() > 8 << 20).unwrap_or(false)
        });
        if partial.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import never started writing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    import.0.kill().unwrap();
    import.0.wait().unwrap();

    // The running store and a fresh open both serve the previous population whole.
    rt.block_on(serving.refresh()).unwrap();
    assert_eq!(rt.block_on(serving.count()).unwrap(), 1_000);
    let reopened = DiskStore::open(&store_dir, &StoreOptions::default()).unwrap();
    assert_eq!(rt.block_on(reopened.count()).unwrap(), 1_000);
    let r = &before[0];
    let got = rt
        .block_on(reopened.citizen(
            &LookupKey::PersonalId(r.personal_id.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
        ))
        .unwrap();
    assert_eq!(got.as_ref(), Some(r));
    // The next import cleans the leftover up.
    let (mut g, i) = pipe_import(dir.path(), 10, 3, "store");
    assert!(i.wait_with_output().unwrap().status.success());
    g.wait().unwrap();
    assert!(!std::fs::read_dir(&store_dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial")));
}

#[tokio::test]
async fn registry_serve_follows_updates_from_another_process_and_switches_off() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["certs", "init", "--out", "certs"])
        .status
        .success());
    let (mut g, i) = pipe_import(dir.path(), 500, 8, "store");
    assert!(i.wait_with_output().unwrap().status.success());
    g.wait().unwrap();
    let mut child = crate::common::bin()
        .args([
            "registry",
            "serve",
            "--store",
            "store",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--allow", popgw::pki::GATEWAY_ID])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let server = Killed(child);
    assert!(
        line.starts_with("popgw registry serving 500 citizens from store on "),
        "{line}"
    );
    let addr = line
        .split(" on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let port = addr.rsplit(':').next().unwrap();
    let channel = connect(
        &format!("localhost:{port}"),
        &ClientCerts::dev(&dir.path().join("certs"), "gateway"),
    )
    .await
    .unwrap();
    let mut client = PopulationRegistryClient::new(channel);
    let mut feed = client
        .watch_changes(pb::WatchChangesRequest { from_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let head = feed.next().await.unwrap().unwrap().version;

    // Another process changes a record of the store being served.
    let store = DiskStore::open(&dir.path().join("store"), &StoreOptions::default()).unwrap();
    let someone = store.examples(1).await.unwrap().remove(0);
    drop(store);
    let out = run(
        dir.path(),
        &[
            "registry",
            "update",
            "--store",
            "store",
            "--id",
            &someone.personal_id,
            "--full-name",
            "NGUYỄN THỊ ĐỔI TÊN",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("updated: version {}", head + 1)
    );
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = feed.next().await.unwrap().unwrap();
            if e.citizen.is_some() {
                return e;
            }
        }
    })
    .await
    .expect("the change reaches the live feed");
    assert_eq!(event.version, head + 1);
    assert_eq!(event.citizen.unwrap().full_name, "NGUYỄN THỊ ĐỔI TÊN");

    // SIGUSR1: everything UNAVAILABLE; SIGUSR2: back.
    let req = pb::GetCitizenRequest {
        personal_id: someone.personal_id.clone(),
    };
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get_citizen(req.clone()).await {
            Err(e) if e.code() == tonic::Code::Unavailable => break,
            _ => assert!(Instant::now() < deadline, "never switched off"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill")
        .args(["-USR2", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = client.get_citizen(req.clone()).await {
            assert_eq!(r.into_inner().citizen.unwrap().version, head + 1);
            break;
        }
        assert!(Instant::now() < deadline, "never switched back on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An unknown id for update is an error, not a silent success.
    let out = run(
        dir.path(),
        &[
            "registry",
            "update",
            "--store",
            "store",
            "--id",
            "001099000001",
            "--deceased",
            "2026-01-01",
        ],
    );
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_postgres_import_killed_midway_leaves_the_previous_table_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::TempDb::create().await;
    let (mut g, i) = pipe_import(dir.path(), 1_000, 1, &db.url);
    let out = i.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.wait().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("postgres://"),
        "no URL printed"
    );
    let store = popgw::registry::postgres::PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    let before = store.examples(1).await.unwrap().remove(0);

    let (admin, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (generate, import) = pipe_import(dir.path(), 5_000_000, 2, &db.url);
    let (_generate, mut import) = (Killed(generate), Killed(import));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size: Option<i64> = admin
            .query_one(
                "SELECT pg_relation_size(to_regclass('citizens_staging'))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if size.unwrap_or(0) > 8 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import never started copying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    import.0.kill().unwrap();
    import.0.wait().unwrap();
    // The served table is whole, and the running pool still answers from it.
    assert_eq!(store.count().await.unwrap(), 1_000);
    let got = store
        .citizen(
            &LookupKey::PersonalId(before.personal_id.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&before));
    // The next import replaces the leftover staging table and succeeds.
    let (mut g, i) = pipe_import(dir.path(), 10, 3, &db.url);
    assert!(i.wait_with_output().unwrap().status.success());
    g.wait().unwrap();
    assert_eq!(store.count().await.unwrap(), 10);
    drop(admin);
    db.drop_db().await;
}

/// Issue 25: `registry import --to postgres://…/DB` failed on a database that did not
/// exist, and the README never said to create it. The import makes it, as it makes the
/// schema.
#[tokio::test]
async fn a_postgres_import_creates_its_database_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::TempDb::not_created();
    let (mut g, i) = pipe_import(dir.path(), 100, 1, &db.url);
    let out = i.wait_with_output().unwrap();
    g.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = popgw::registry::postgres::PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(store.count().await.unwrap(), 100);
    drop(store);
    db.drop_db().await;
}
