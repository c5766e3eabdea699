//! The central audit index over the real PostgreSQL (127.0.0.1:5432) and NATS JetStream
//! (127.0.0.1:4222) on this machine: two gateway nodes witnessed into one stream, an
//! indexer feeding one database, an operator's query across both nodes, the citizen's
//! access report, `verify --index` naming what was removed or altered, and an indexer
//! killed and restarted indexing every record exactly once.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{declare, require_nats, TempDb, TestGateway, TestStream, NATS};
use popgw::audit::index::{self, AuditIndex, FeedConfig, IndexConfig, Indexer};
use popgw::config::IndexSettings;
use popgw::proto::gateway as pb;
use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
use popgw::proto::registry::CitizenRecord;

/// A pseudonym key shared by the nodes of one deployment (a subject is then the same
/// pseudonym on every node, and one index query finds them all).
fn shared_pseudonym_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("pseudonym.key");
    std::fs::write(
        &path,
        format!("{}\n", hex::encode(rand::random::<[u8; 32]>())),
    )
    .unwrap();
    path
}

fn index_settings(url: &str) -> IndexSettings {
    IndexSettings {
        url: url.into(),
        consumer: "unused".into(),
        run: false,
        retain_months: 24,
        timeout_ms: 10_000,
        node_keys: Default::default(),
    }
}

/// Waits until the index holds every record of each gateway's log.
async fn wait_indexed(index: &AuditIndex, gateways: &[&TestGateway]) {
    // Messages taken by a killed indexer come back after the consumer's ack wait (10 s).
    for _ in 0..600 {
        let mut behind = false;
        for gw in gateways {
            let node = gw.gateway.audit.node().to_string();
            if index.count(&node).await.unwrap() < gw.gateway.audit.last_seq() {
                behind = true;
            }
        }
        if !behind {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the index did not catch up with the nodes");
}

/// A living citizen X of the population and a living child C whose record names X as a
/// parent (so that a disclosure of C's record discloses X as a relative).
fn parent_and_child(gw: &TestGateway) -> (CitizenRecord, CitizenRecord) {
    let living = |id: &str| {
        gw.population
            .iter()
            .find(|r| {
                r.personal_id == id && r.date_of_death.is_empty() && r.date_of_birth.len() == 10
            })
            .cloned()
    };
    gw.population
        .iter()
        .filter(|c| c.date_of_death.is_empty())
        .find_map(|c| {
            let parent = c.father.as_ref().or(c.mother.as_ref())?;
            Some((living(&parent.personal_id)?, c.clone()))
        })
        .expect("the population has a living parent with a living child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_indexed_queried_reported_and_verified() {
    require_nats().await;
    let db = TempDb::create().await;
    let stream = TestStream::new();
    let url = format!("nats://{NATS}");
    let keys = tempfile::tempdir().unwrap();
    let key = shared_pseudonym_key(keys.path());
    let (node_a, node_b) = (format!("{}-a", stream.node), format!("{}-b", stream.node));
    let (key_a, key_b, db_url) = (key.clone(), key.clone(), db.url.clone());
    let mut a = stream
        .gateway_as(&node_a, &url, move |c| {
            c.audit.pseudonym_key_file = Some(key_a);
            c.audit.index = Some(index_settings(&db_url));
        })
        .await;
    let mut b = stream
        .gateway_as(&node_b, &url, move |c| {
            c.audit.pseudonym_key_file = Some(key_b);
        })
        .await;
    let index = Arc::new(AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let indexer = tokio::spawn(
        Indexer::new(
            index.clone(),
            FeedConfig {
                link: popgw::link::nats::NatsLink::new(url.clone()),
                stream: stream.name.clone(),
                consumer: "test-index".into(),
                retain_months: 24,
                // Only records sealed by their own node's key are indexed.
                node_keys: [(node_a.clone(), &a), (node_b.clone(), &b)]
                    .into_iter()
                    .map(|(node, gw)| {
                        let key = popgw::audit::parse_public_key(gw.gateway.audit.public_key());
                        (node, key.unwrap())
                    })
                    .collect(),
            },
            Default::default(),
        )
        .run(async {
            let _ = stopped.await;
        }),
    );

    // X is verified by the portal on node A; the ministry reads X's child on node B (the
    // criminal-record procedure names the parents): X disclosed as a relative. The portal
    // also tries to read X's record, which its role forbids: refused, disclosed nothing.
    let (x, child) = parent_and_child(&a);
    let mut portal = a.client("portal").await;
    let answer = portal
        .verify_identity(declare(&x, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict, pb::Verdict::Match as i32);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut ministry = b.client("ministry").await;
    for _ in 0..3 {
        ministry
            .verify_identity(declare(&child, "P12"))
            .await
            .unwrap();
    }
    let disclosed = ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: child.personal_id.clone(),
            procedure_code: "P12".into(),
            case_id: "LLTP-2026-777".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let record = disclosed.citizen.unwrap();
    let named_parent = [record.father.as_ref(), record.mother.as_ref()]
        .into_iter()
        .flatten()
        .any(|p| p.personal_id == x.personal_id);
    assert!(named_parent, "P12 discloses the child's parents");
    let refused = portal
        .get_citizen(pb::GetCitizenRequest {
            personal_id: x.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HS-2026-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    wait_indexed(&index, &[&a, &b]).await;

    // One operator query on node A answers for both nodes, in time order.
    let history = a
        .audit_records(pb::AuditQueryRequest {
            personal_id: x.personal_id.clone(),
            ..Default::default()
        })
        .await;
    let nodes: std::collections::BTreeSet<&str> = history.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(
        nodes,
        [node_a.as_str(), node_b.as_str()].into_iter().collect(),
        "{history:#?}"
    );
    assert!(history
        .windows(2)
        .all(|w| w[0].time_unix_ms <= w[1].time_unix_ms));
    let rpcs: Vec<(&str, &str, &str)> = history
        .iter()
        .map(|r| (r.node.as_str(), r.rpc.as_str(), r.outcome.as_str()))
        .collect();
    assert!(
        rpcs.contains(&(node_a.as_str(), "VerifyIdentity", "MATCH")),
        "{rpcs:?}"
    );
    assert!(
        rpcs.contains(&(node_b.as_str(), "GetCitizen", "DISCLOSED")),
        "{rpcs:?}"
    );
    assert!(
        rpcs.contains(&(node_a.as_str(), "GetCitizen", "PERMISSION_DENIED")),
        "{rpcs:?}"
    );
    // The other filters work on the index too: the ministry's client on node B only.
    let by_client = a
        .audit_records(pb::AuditQueryRequest {
            client: popgw::pki::MINISTRY_ID.into(),
            case_id: "LLTP-2026-777".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(by_client.len(), 1, "{by_client:#?}");
    assert_eq!(by_client[0].node, node_b);

    // The citizen's report: both answered events, with the agencies' and procedures'
    // names, and nothing else — no refusal, no dossier, no identity, no other person.
    let mut citizen = CitizenAccessClient::new(a.channel("citizen").await);
    let report = citizen
        .access_report(pb::AccessReportRequest {
            personal_id: x.personal_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.source, "index");
    assert!(!report.truncated);
    // Both nodes are indexed at least up to the disclosure (the newer of the two events).
    assert!(report.complete_until_unix_ms > 0, "{report:?}");
    assert_eq!(report.events.len(), 2, "{report:#?}");
    let verified = &report.events[0];
    assert_eq!(verified.action, pb::AccessAction::Verified as i32);
    assert_eq!(verified.outcome, "MATCH");
    assert_eq!(verified.procedure_code, "P03");
    assert_eq!(verified.procedure_name_vi, "Đăng ký thường trú");
    assert_eq!(
        verified.procedure_name_en,
        "Permanent residence registration"
    );
    assert!(
        verified.agency.starts_with("Cổng Dịch vụ công quốc gia"),
        "{verified:?}"
    );
    assert!(!verified.as_relative);
    let seen = &report.events[1];
    assert_eq!(seen.action, pb::AccessAction::Disclosed as i32);
    assert_eq!(seen.outcome, "DISCLOSED");
    assert_eq!(seen.procedure_code, "P12");
    assert_eq!(seen.procedure_name_en, "Criminal-record certificate");
    assert!(seen.agency.starts_with("Bộ Tư pháp"), "{seen:?}");
    assert!(seen.as_relative);
    assert!(
        seen.fields.is_empty(),
        "the child's fields are not the parent's business"
    );
    // As a relative the citizen is told the day (in Vietnam), not the moment.
    assert_eq!(
        (seen.time_unix_ms + 7 * 3_600_000) % 86_400_000,
        0,
        "{seen:?}"
    );
    assert!(seen.time_unix_ms > verified.time_unix_ms - 86_400_000);
    assert!(report.complete_until_unix_ms >= verified.time_unix_ms);
    let shown = format!("{report:?}");
    for secret in [
        "LLTP-2026-777",
        "HS-2026",
        "spiffe://",
        child.personal_id.as_str(),
        node_a.as_str(),
    ] {
        assert!(
            !shown.contains(secret),
            "the report shows {secret:?}: {shown}"
        );
    }
    // The same from the command line (the citizen portal's certificate by default).
    let out = crate::common::bin()
        .args(["access-report", "--json", "--id", &x.personal_id])
        .args(["--addr", &format!("localhost:{}", a.addr.port())])
        .arg("--certs")
        .arg(&a.certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["events"].as_array().unwrap().len(), 2, "{printed}");
    assert_eq!(printed["events"][1]["agency"], seen.agency.as_str());
    assert_eq!(printed["events"][1]["asRelative"], true);
    // The call itself is audited on the node that answered, its subject the citizen.
    let subject = a.gateway.subject(&x.personal_id).into_string();
    let recorded = popgw::audit::read_records(a.gateway.audit.dir()).unwrap();
    assert!(recorded
        .iter()
        .any(|r| r.body.rpc == "CitizenAccess.AccessReport"
            && r.body.subject == subject
            && r.body.outcome == "REPORTED"
            && r.body.client == popgw::pki::CITIZEN_ID));
    // Only the citizen portal (and operators, answering a citizen's question) may ask.
    let denied = CitizenAccessClient::new(a.channel("ministry").await)
        .access_report(pb::AccessReportRequest {
            personal_id: x.personal_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // verify --index: both folders agree with the index; then a row removed from the
    // index and a person row removed (hiding a disclosure from the citizen) are named.
    wait_indexed(&index, &[&a, &b]).await;
    let (dir_a, dir_b) = (
        a.gateway.audit.dir().to_path_buf(),
        b.gateway.audit.dir().to_path_buf(),
    );
    a.stop().await;
    b.stop().await;
    wait_indexed(&index, &[&a, &b]).await;
    let report_b = index::verify_against(&dir_b, &index).await.unwrap();
    assert!(report_b.ok(), "{report_b:?}");
    assert_eq!(report_b.matched, b.gateway.audit.last_seq());
    let (pg, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let removed_seq = 2i64;
    pg.execute(
        "DELETE FROM audit_record WHERE node = $1 AND seq = $2",
        &[&node_b, &removed_seq],
    )
    .await
    .unwrap();
    let disclosure_seq: i64 = pg
        .query_one(
            "SELECT seq FROM audit_person WHERE node = $1 AND pseudonym = $2 AND related",
            &[&node_b, &subject],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(disclosure_seq, removed_seq);
    pg.execute(
        "DELETE FROM audit_person WHERE node = $1 AND seq = $2 AND pseudonym = $3",
        &[&node_b, &disclosure_seq, &subject],
    )
    .await
    .unwrap();
    let report_b = index::verify_against(&dir_b, &index).await.unwrap();
    assert_eq!(report_b.missing, vec![removed_seq as u64], "{report_b:?}");
    assert_eq!(report_b.altered.len(), 1, "{report_b:?}");
    assert_eq!(report_b.altered[0].0, disclosure_seq as u64);
    assert!(
        report_b.altered[0].1.contains("person rows"),
        "{report_b:?}"
    );
    assert!(report_b.invented.is_empty());
    // The same from the command line: exit non-zero, naming the missing record.
    let out = crate::common::bin()
        .args(["audit", "verify", "--dir"])
        .arg(&dir_b)
        .args(["--index", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("MISSING from the index: seq {removed_seq}")),
        "{stdout}"
    );
    assert!(stderr.contains("audit index FAILED"), "{stderr}");
    // A row invented in the index (a copy of a real one under a new seq) is named too.
    let report_a = index::verify_against(&dir_a, &index).await.unwrap();
    assert!(report_a.ok(), "{report_a:?}");
    pg.execute(
        "INSERT INTO audit_record SELECT node, seq + 1000, at, client, rpc, procedure, case_id,
             outcome, code, cache, hash, json FROM audit_record WHERE node = $1 AND seq = 1",
        &[&node_a],
    )
    .await
    .unwrap();
    let report_a = index::verify_against(&dir_a, &index).await.unwrap();
    assert_eq!(report_a.invented, vec![1001], "{report_a:?}");

    let _ = stop.send(());
    indexer.await.unwrap();
    drop(pg);
    stream.remove().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_killed_and_restarted_indexes_every_record_exactly_once() {
    require_nats().await;
    let db = TempDb::create().await;
    let stream = TestStream::new();
    let url = format!("nats://{NATS}");
    let mut gw = stream.gateway(&url).await;
    let spawn_indexer = || {
        crate::common::bin()
            .args(["audit", "index", "--postgres", &db.url, "--nats", &url])
            .args(["--stream", &stream.name, "--consumer", "killed"])
            .arg("--node-key")
            .arg(format!("{}={}", stream.node, gw.gateway.audit.public_key()))
            .args(["--admin-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The indexer's metrics address, from its start-up lines.
    let metrics_addr = |indexer: &mut std::process::Child| -> std::net::SocketAddr {
        use std::io::BufRead;
        let stdout = indexer.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("metrics on http://")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                    .map(|a| a.parse().unwrap())
            })
            .expect("the indexer prints its metrics address");
        std::thread::spawn(move || for _ in lines {});
        addr
    };
    let r = gw.living().clone();
    let portal = gw.client("portal").await;
    let load = |n: usize| {
        let (portal, r) = (portal.clone(), r.clone());
        async move { common::verify_load(&portal, &r, 4, n).await }
    };
    let mut indexer = spawn_indexer();
    load(100).await;
    let index = AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap();
    // Killed (SIGKILL: no clean exit) while records are still arriving.
    let running = tokio::spawn(load(100));
    tokio::time::sleep(Duration::from_millis(150)).await;
    indexer.kill().unwrap();
    indexer.wait().unwrap();
    running.await.unwrap();
    let at_kill = index.count(&stream.node).await.unwrap();
    load(50).await;
    let mut indexer = spawn_indexer();
    let admin = metrics_addr(&mut indexer);
    wait_indexed(&index, &[&gw]).await;
    // Its /metrics: connected, records indexed, and nothing left pending once caught up.
    // Messages the killed indexer committed but never acknowledged are redelivered after
    // the consumer's ack wait (10 s), then acknowledged as already indexed.
    let mut scrape = String::new();
    for _ in 0..200 {
        scrape = common::http_get(admin, "/metrics").await.1;
        if scrape.contains("popgw_audit_index_pending_messages 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scrape.contains("popgw_audit_index_up 1\n"), "{scrape}");
    assert!(
        scrape.contains("popgw_audit_index_pending_messages 0\n"),
        "{scrape}"
    );
    let indexed: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("popgw_audit_index_records_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(indexed >= 1.0, "{scrape}");
    let total = gw.gateway.audit.last_seq();
    assert!(total >= 1000, "{total} records");
    assert!(at_kill < total, "the kill left work for the restart");
    let (pg, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = pg
        .query_one(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM audit_record WHERE node = $1",
            &[&stream.node],
        )
        .await
        .unwrap();
    let (count, distinct, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (count, distinct, min, max as u64),
        (total as i64, total as i64, 1, total)
    );
    // Each record's subject row exactly once too.
    let people: i64 = pg
        .query_one(
            "SELECT count(*) FROM audit_person WHERE node = $1",
            &[&stream.node],
        )
        .await
        .unwrap()
        .get(0);
    let with_subject = popgw::audit::read_records(gw.gateway.audit.dir())
        .unwrap()
        .iter()
        .filter(|r| !r.body.subject.is_empty())
        .count() as i64;
    assert_eq!(people, with_subject);
    gw.stop().await;
    wait_indexed(&index, &[&gw]).await;
    let report = index::verify_against(gw.gateway.audit.dir(), &index)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.matched, gw.gateway.audit.last_seq());
    indexer.kill().unwrap();
    indexer.wait().unwrap();
    drop(pg);
    stream.remove().await;
    db.drop_db().await;
}

/// A node's log of `n` records in `dir` (each its own sealed batch, `gap` apart), as the
/// index takes them.
async fn node_log(
    dir: &std::path::Path,
    node: &str,
    n: usize,
    gap: Duration,
) -> Vec<index::IndexedRecord> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let log = popgw::audit::AuditLog::open(popgw::audit::AuditConfig::new(dir, node), key).unwrap();
    for i in 0..n {
        log.append(popgw::audit::AuditEntry {
            request_id: format!("r{i}"),
            subject: Some(popgw::audit::Pseudonymizer::new([5; 32]).pseudonym("p")),
            code: Some(tonic::Code::Ok),
            ..popgw::audit::AuditEntry::new(
                popgw::policy::Rpc::VerifyIdentity,
                popgw::audit::Outcome::Match,
            )
        })
        .await
        .unwrap();
        tokio::time::sleep(gap).await;
    }
    log.shutdown().await;
    popgw::audit::read_records(dir)
        .unwrap()
        .into_iter()
        .map(|r| index::IndexedRecord {
            body: r.body,
            hash: r.hash,
            json: r.json,
        })
        .collect()
}

#[tokio::test]
async fn retention_drops_whole_months_and_verify_tells_dropped_from_missing() {
    let db = TempDb::create().await;
    let index = AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap();
    // A node's log, its records indexed directly (the feed is tested above).
    let dir = tempfile::tempdir().unwrap();
    let records = node_log(dir.path(), "retained", 20, Duration::ZERO).await;
    assert_eq!(index.insert(&records, &[]).await.unwrap(), 20);
    // Inserting the same records again changes nothing.
    assert_eq!(index.insert(&records, &[]).await.unwrap(), 0);
    let report = index::verify_against(dir.path(), &index).await.unwrap();
    assert!(report.ok() && report.matched == 20, "{report:?}");
    // Retention reaching past this month drops its partitions whole; verify then
    // counts the records as dropped on purpose, not missing.
    let next_month = {
        use chrono::Datelike;
        let now = chrono::Utc::now();
        now.year() * 12 + now.month0() as i32 + 1
    };
    let dropped = index.drop_months_before(next_month).await.unwrap();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert_eq!(index.count("retained").await.unwrap(), 0);
    let report = index::verify_against(dir.path(), &index).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.dropped, report.matched), (20, 0), "{report:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_folder_without_records_is_compared_by_its_checkpoints() {
    let db = TempDb::create().await;
    let index = AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap();
    // A new node: no record yet, nothing indexed — nothing to say against it.
    let fresh = tempfile::tempdir().unwrap();
    node_log(fresh.path(), "fresh", 0, Duration::ZERO).await;
    let report = index::verify_against(fresh.path(), &index).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.node.as_str(), report.matched), ("fresh", 0));
    // A node whose records were indexed and whose segments were then deleted: every
    // indexed record is named, not taken for a new node.
    let wiped = tempfile::tempdir().unwrap();
    let records = node_log(wiped.path(), "wiped", 5, Duration::ZERO).await;
    assert_eq!(index.insert(&records, &[]).await.unwrap(), 5);
    for entry in std::fs::read_dir(wiped.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("audit-")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let report = index::verify_against(wiped.path(), &index).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.node, "wiped");
    assert_eq!(report.invented, [1, 2, 3, 4, 5]);
    // A folder that is no audit folder at all says so.
    let stranger = tempfile::tempdir().unwrap();
    let e = index::verify_against(stranger.path(), &index)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not an audit folder"), "{e}");
    db.drop_db().await;
}

#[tokio::test]
async fn an_unreachable_index_answers_could_not_check_and_bad_input_is_refused() {
    // Nothing listens on port 1: the index is down from the start.
    let mut gw = TestGateway::builder()
        .config(|c| {
            let mut settings = index_settings("postgres://postgres@127.0.0.1:1/nowhere");
            settings.timeout_ms = 500;
            c.audit.index = Some(settings);
        })
        .start()
        .await;
    let x = gw.living().clone();
    let mut citizen = CitizenAccessClient::new(gw.channel("citizen").await);
    let ask = |personal_id: &str, from: i64, to: i64| pb::AccessReportRequest {
        personal_id: personal_id.into(),
        from_unix_ms: from,
        to_unix_ms: to,
    };
    // Never an empty report: "could not check".
    let down = citizen
        .access_report(ask(&x.personal_id, 0, 0))
        .await
        .unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    assert!(down.message().contains("could not check"), "{down:?}");
    // Bad input is refused before the index is asked, naming the field.
    let bad_id = citizen.access_report(ask("12345", 0, 0)).await.unwrap_err();
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(bad_id.message().contains("personal_id"), "{bad_id:?}");
    let backwards = citizen
        .access_report(ask(&x.personal_id, 2_000, 1_000))
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), tonic::Code::InvalidArgument);
    assert!(backwards.message().contains("to_unix_ms"), "{backwards:?}");
    // The operator's query fails the same way (its own record written first).
    use tokio_stream::StreamExt;
    let mut results = gw
        .audit_client("operator")
        .await
        .query(pb::AuditQueryRequest {
            personal_id: x.personal_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = results.next().await.expect("an answer").unwrap_err();
    assert_eq!(first.code(), tonic::Code::Unavailable, "{first:?}");
    gw.stop().await;
    // Every one of those calls left its record, refusals included.
    let records = popgw::audit::read_records(gw.gateway.audit.dir()).unwrap();
    let codes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.body.rpc.as_str(), r.body.code.as_str()))
        .collect();
    for expected in [
        ("CitizenAccess.AccessReport", "UNAVAILABLE"),
        ("CitizenAccess.AccessReport", "INVALID_ARGUMENT"),
        ("AuditLog.Query", "OK"),
    ] {
        assert!(codes.contains(&expected), "{expected:?} in {codes:?}");
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ("CitizenAccess.AccessReport", "INVALID_ARGUMENT"))
            .count(),
        2
    );
}

/// A record missing in the middle of a node's indexed chain (a message lost, refused, or
/// a row deleted before it was counted) is not hidden behind the later ones: an access
/// report is complete only up to the last record with none missing before it, and moves
/// on once the gap is filled.
#[tokio::test]
async fn the_report_is_complete_only_up_to_the_first_gap() {
    let db = TempDb::create().await;
    let index = AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records = node_log(dir.path(), "gap-node", 4, Duration::from_millis(5)).await;
    let time = |seq: u64| records[seq as usize - 1].body.time_unix_ms;
    let pick = |seqs: &[u64]| -> Vec<index::IndexedRecord> {
        seqs.iter()
            .map(|s| records[*s as usize - 1].clone())
            .collect()
    };
    index.insert(&pick(&[1, 2, 4]), &[]).await.unwrap();
    assert_eq!(index.indexed_until().await.unwrap(), Some(time(2)));
    index.insert(&pick(&[3]), &[]).await.unwrap();
    assert_eq!(index.indexed_until().await.unwrap(), Some(time(4)));
    // verify --index names the hole at or below the highest indexed seq as MISSING.
    let (pg, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    pg.execute("DELETE FROM audit_record WHERE seq = 3", &[])
        .await
        .unwrap();
    let report = index::verify_against(dir.path(), &index).await.unwrap();
    assert_eq!(report.missing, vec![3], "{report:?}");
    assert_eq!(report.indexed_up_to, 4);
    drop(index);
    db.drop_db().await;
}
