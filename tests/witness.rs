//! The audit witness over the real NATS JetStream server on 127.0.0.1:4222: every
//! sealed batch's head shipped off the answer's path, a rolled-back folder caught and
//! named, and NATS going away under load costing no request.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{declare, require_nats, TestGateway, TestStream, NATS};
use popgw::audit::witness;

async fn wait_witnessed(gw: &TestGateway) {
    let acked = gw
        .gateway
        .witnessed
        .clone()
        .expect("a witness is configured");
    for _ in 0..200 {
        if acked.load(Ordering::Acquire) >= gw.gateway.audit.last_seq() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the witness did not catch up: {} of {}",
        acked.load(Ordering::Acquire),
        gw.gateway.audit.last_seq()
    );
}

#[tokio::test]
async fn every_batch_is_witnessed_and_a_rolled_back_folder_is_named() {
    require_nats().await;
    let stream = TestStream::new();
    let url = format!("nats://{NATS}");
    let mut gw = stream.gateway(&url).await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    for _ in 0..10 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    wait_witnessed(&gw).await;
    // AuditLog.Head says how far the witness is.
    let head = gw
        .audit_client("operator")
        .await
        .head(popgw::proto::gateway::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(head.witnessed);
    assert!(head.witnessed_seq >= 10, "{head:?}");
    // The operator's backup of the folder, taken now.
    let audit = gw.gateway.audit.dir().to_path_buf();
    let backup = gw.dir.path().join("audit-backup");
    copy_dir(&audit, &backup);
    let at_backup = gw.gateway.audit.last_seq();
    for _ in 0..10 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    drop(portal);
    gw.stop().await;

    let config = stream.config();
    let agreement = witness::compare(&audit, &config).await.unwrap().unwrap();
    assert!(agreement.witnessed_seq > at_backup + 9, "{agreement:?}");
    let heads = witness::heads(&config).await.unwrap();
    assert!(heads
        .iter()
        .all(|h| h.node == stream.node && h.seal.len() == 128));

    // An insider rolls the folder back to the backup (segments and checkpoints together):
    // the folder verifies on its own, the witness names where it ends.
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(&backup, &audit);
    std::fs::remove_file(audit.join("audit.lock")).ok();
    assert!(popgw::audit::verify_dir(&audit, None).is_ok());
    let d = witness::compare(&audit, &config)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(d.seq, at_backup + 1, "{d}");
    assert!(d.reason.contains("removed"), "{d}");
    // The same from the command line: exit non-zero, naming the sequence.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgw"))
        .args(["audit", "verify", "--dir"])
        .arg(&audit)
        .args([
            "--witness",
            &url,
            "--stream",
            &stream.name,
            "--node",
            &stream.node,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("record {}", at_backup + 1)) && stderr.contains("witness"),
        "{stderr}"
    );
    stream.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_going_away_under_load_fails_no_request_and_the_witness_catches_up() {
    require_nats().await;
    let stream = TestStream::new();
    let relay = common::Relay::start(NATS).await;
    let mut gw = stream.gateway(&format!("nats://{}", relay.addr)).await;
    let r = gw.living().clone();
    let portal = gw.client("portal").await;
    let load = |n: usize| common::verify_load(&portal, &r, 8, n);
    load(20).await;
    wait_witnessed(&gw).await;

    relay.cut();
    load(100).await; // 800 requests while the witness is unreachable: every one answered
    let (_, scrape) = gw.admin_get("/metrics").await;
    let lag: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("popgw_audit_witness_lag_records "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        lag > 0.0,
        "the lag is reported while NATS is away: {scrape}"
    );

    relay.restore();
    wait_witnessed(&gw).await;
    drop(portal);
    gw.stop().await;
    let agreement = witness::compare(gw.gateway.audit.dir(), &stream.config())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agreement.witnessed_seq, gw.gateway.audit.last_seq());
    stream.remove().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Streams left by an interrupted run of an earlier version of these tests claimed
/// `popgw.audit.>`, which every later stream would collide with: remove them.
#[tokio::test]
async fn no_stale_test_stream_claims_every_subject() {
    require_nats().await;
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    let mut names = js.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
        if name.starts_with("POPGW_TEST_") {
            if let Ok(mut s) = js.get_stream(&name).await {
                if let Ok(info) = s.info().await {
                    if info.config.subjects.iter().any(|x| x == "popgw.audit.>") {
                        stale.push(name);
                    }
                }
            }
        }
    }
    for name in stale {
        js.delete_stream(&name).await.unwrap();
    }
}
