//! The audit witness over the real NATS JetStream server on 127.0.0.1:4222: every
//! sealed batch's head shipped off the answer's path, a rolled-back folder caught and
//! named (and refused at start), NATS going away under load costing no request, and
//! the attacks of issue 24 by anyone who can publish on the node's subject: forged,
//! garbage and far-ahead heads, pre-empted message ids.

use crate::common;

use std::time::Duration;

use common::{declare, require_nats, TestGateway, TestStream, NATS};
use ed25519_dalek::VerifyingKey;
use popgw::audit::witness;

async fn wait_witnessed(gw: &TestGateway) {
    let status = gw
        .gateway
        .witness_status()
        .cloned()
        .expect("a witness is configured");
    for _ in 0..200 {
        if status.acked() >= gw.gateway.audit.last_seq() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the witness did not catch up: {} of {}",
        status.acked(),
        gw.gateway.audit.last_seq()
    );
}

/// The node's checkpoint key, as the gateway holds it.
fn key_of(gw: &TestGateway) -> VerifyingKey {
    popgw::audit::parse_public_key(gw.gateway.audit.public_key()).unwrap()
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
    let key = key_of(&gw);
    let c = witness::compare(&audit, &config, &key).await.unwrap();
    assert!(c.foreign.is_empty(), "{c:?}");
    let agreement = c.verdict.unwrap();
    assert!(agreement.witnessed_seq > at_backup + 9, "{agreement:?}");
    assert_eq!(agreement.unwitnessed, None);
    let heads = witness::heads(&config, &key).await.unwrap();
    assert!(heads
        .iter()
        .all(|h| h.node == stream.node && h.seal.len() == 128));

    // An insider rolls the folder back to the backup (segments and checkpoints together):
    // the folder verifies on its own, the witness names where it ends.
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(&backup, &audit);
    std::fs::remove_file(audit.join("audit.lock")).ok();
    assert!(popgw::audit::verify_dir(&audit, None).is_ok());
    let d = witness::compare(&audit, &config, &key)
        .await
        .unwrap()
        .verdict
        .unwrap_err();
    assert_eq!(d.seq, at_backup + 1, "{d}");
    assert!(d.reason.contains("removed"), "{d}");
    // The same from the command line: exit non-zero, naming the sequence.
    let out = stream.verify_command(&audit, &url).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("record {}", at_backup + 1)) && stderr.contains("witness"),
        "{stderr}"
    );

    // And the gateway refuses to start on the rolled-back folder, naming both sequences,
    // before it answers anything.
    let Err(e) = popgw::Server::load(stream.gateway_config(gw.dir.path())).await else {
        panic!("a gateway started on a folder the witness is ahead of");
    };
    let e = e.to_string();
    assert!(
        e.contains(&format!("ends at seq {at_backup}"))
            && e.contains(&format!("seq {}", agreement.witnessed_seq)),
        "{e}"
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
    let agreement = witness::compare(gw.gateway.audit.dir(), &stream.config(), &key_of(&gw))
        .await
        .unwrap()
        .verdict
        .unwrap();
    assert_eq!(agreement.witnessed_seq, gw.gateway.audit.last_seq());
    stream.remove().await;
}

/// Publishes `payload` on the node's subject as an outsider would (no credentials on the
/// machine's NATS), with a message id when given; returns its stream sequence.
async fn publish_as_outsider(node: &str, payload: Vec<u8>, id: Option<String>) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    let mut publish =
        async_nats::jetstream::message::PublishMessage::build().payload(payload.into());
    if let Some(id) = id {
        publish = publish.message_id(id);
    }
    js.send_publish(witness::subject(node), publish)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn witness_alarm(gw: &TestGateway) -> String {
    gw.audit_client("operator")
        .await
        .head(popgw::proto::gateway::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner()
        .witness_alarm
}

/// Issue 24's attacks by whoever can publish on the node's subject: message ids claimed
/// ahead of the gateway, a garbage message, a head of seq 1,000,000,000 under another
/// key. The genuine batches are all witnessed, the gateway keeps shipping after a
/// restart, the alarm shows in /readyz, /metrics and AuditLog.Head, and `verify
/// --witness` names each foreign message by its stream sequence and ends with a verdict.
#[tokio::test]
async fn forged_garbage_and_preempted_messages_neither_silence_nor_fool_the_witness() {
    require_nats().await;
    let stream = TestStream::new();
    let url = format!("nats://{NATS}");
    // The stream exists before the gateway starts (an administrator made it).
    async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap())
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.name.clone(),
            subjects: vec![witness::subject(&stream.node)],
            ..Default::default()
        })
        .await
        .unwrap();
    // Message ids as the gateway used to send them (`<node>:<seq>`), claimed ahead.
    let mut claimed = Vec::new();
    for seq in 1..=60u64 {
        let forged = format!(
            r#"{{"node":"{}","seq":{seq},"hash":"{}","seal":"","time_unix_ms":0}}"#,
            stream.node,
            "ab".repeat(32)
        );
        claimed.push(
            publish_as_outsider(
                &stream.node,
                forged.into_bytes(),
                Some(format!("{}:{seq}", stream.node)),
            )
            .await,
        );
    }
    let mut gw = stream.gateway(&url).await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    for _ in 0..20 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    wait_witnessed(&gw).await;
    assert!(
        witness_alarm(&gw).await.contains("did not send"),
        "the forged parts in the subject are alarmed"
    );

    // Garbage and a far-ahead head sealed by another key.
    let garbage = publish_as_outsider(&stream.node, b"\x00garbage".to_vec(), None).await;
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let far = 1_000_000_000u64;
    let hash = "cd".repeat(32);
    let seal = {
        use ed25519_dalek::Signer;
        let msg = format!("popgw-audit-seal-v1\n{}\n{far}\n{hash}", stream.node);
        hex::encode(other.sign(msg.as_bytes()).to_bytes())
    };
    let ahead = publish_as_outsider(
        &stream.node,
        format!(
            r#"{{"node":"{}","seq":{far},"hash":"{hash}","seal":"{seal}","time_unix_ms":0}}"#,
            stream.node
        )
        .into_bytes(),
        None,
    )
    .await;
    // Shipping goes on, and the running gateway notices the newest foreign message.
    for _ in 0..10 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    wait_witnessed(&gw).await;
    let mut alarm = String::new();
    for _ in 0..100 {
        alarm = witness_alarm(&gw).await;
        if alarm.contains(&format!("stream message {ahead}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        alarm.contains(&format!("stream message {ahead}")),
        "{alarm}"
    );
    let (code, ready) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("audit witness alarm"), "{ready}");
    let (_, scrape) = gw.admin_get("/metrics").await;
    assert!(scrape.contains("popgw_audit_witness_alarm 1"), "{scrape}");

    // After a restart the gateway resumes from its own newest head, not the forged one.
    drop(portal);
    gw.stop().await;
    let before = gw.gateway.audit.last_seq();
    let config = stream.gateway_config(gw.dir.path());
    let mut gw = gw.restart(config).await;
    let mut portal = gw.client("portal").await;
    for _ in 0..5 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    wait_witnessed(&gw).await;
    assert!(gw.gateway.audit.last_seq() > before);
    drop(portal);
    gw.stop().await;

    // verify --witness: every genuine head agrees; each foreign message is named.
    let key = key_of(&gw);
    let c = witness::compare(gw.gateway.audit.dir(), &stream.config(), &key)
        .await
        .unwrap();
    let agreement = c.verdict.unwrap();
    assert_eq!(agreement.witnessed_seq, gw.gateway.audit.last_seq());
    let foreign: Vec<u64> = c.foreign.iter().map(|f| f.stream_seq).collect();
    for seq in claimed.iter().chain([&garbage, &ahead]) {
        assert!(foreign.contains(seq), "{seq} not named in {foreign:?}");
    }
    let out = stream
        .verify_command(gw.gateway.audit.dir(), &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("witness agrees"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FOREIGN in the witness: stream message {garbage}: not a batch head"
        )),
        "{stdout}"
    );
    stream.remove().await;
}

/// `verify --witness` against a running gateway under load: records not yet shipped are
/// waited for or reported as such, never as tamper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_running_gateway_does_not_cry_tamper() {
    require_nats().await;
    let stream = TestStream::new();
    let url = format!("nats://{NATS}");
    let mut gw = stream.gateway(&url).await;
    let r = gw.living().clone();
    let portal = gw.client("portal").await;
    let load = {
        let portal = portal.clone();
        let r = r.clone();
        tokio::spawn(async move { common::verify_load(&portal, &r, 4, 200).await })
    };
    for _ in 0..3 {
        let out =
            tokio::process::Command::from(stream.verify_command(gw.gateway.audit.dir(), &url))
                .output()
                .await
                .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("witness agrees"), "{stdout}");
    }
    load.await.unwrap();
    drop(portal);
    gw.stop().await;
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

/// A witness that cannot be reached at start: refused by default (the folder cannot be
/// compared); with `required_at_start = false` the node starts, answers, and says it is
/// not ready until it has compared.
#[tokio::test]
async fn an_unreachable_witness_at_start_refuses_or_starts_not_ready() {
    let stream = TestStream::new();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _ca) = common::prepare(dir.path());
    config.node_id = stream.node.clone();
    config.audit.witness = Some(stream.settings(&url));
    let Err(e) = popgw::Server::load(config).await else {
        panic!("started without comparing its folder with the witness");
    };
    assert!(e.to_string().contains("required_at_start"), "{e}");

    let mut gw = stream
        .gateway_as(&stream.node, &url, |c| {
            if let Some(w) = c.audit.witness.as_mut() {
                w.required_at_start = false;
            }
        })
        .await;
    let r = gw.living().clone();
    assert!(gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .is_ok());
    let (code, ready) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("not yet compared with its witness"),
        "{ready}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_more_batches_than_nats_lends_acknowledgements_is_shipped_whole() {
    // After a long NATS outage under load a node holds thousands of small batches not yet
    // witnessed. async-nats lends each publish one of 5,000 acknowledgement permits until
    // its acknowledgement is awaited: the shipper once published its whole catch-up round
    // before awaiting any, and waited forever, silently, for a 5,001st permit (reliability
    // row 2d, one run in three). 6,000 batches of one record each, then a shipper started:
    // every one witnessed.
    require_nats().await;
    let stream = TestStream::new();
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let config = popgw::audit::AuditConfig {
        durability: popgw::audit::Durability::Buffered,
        ..popgw::audit::AuditConfig::new(dir.path(), &stream.node)
    };
    let log = popgw::audit::AuditLog::open(config, key.clone()).unwrap();
    // One at a time: each its own batch, each batch its own message.
    common::append_records(&log, 6000).await;
    let last = log.last_seq();
    let shipper = witness::Shipper::new(
        stream.config(),
        log.clone(),
        key.verifying_key(),
        std::sync::Arc::default(),
    );
    let status = shipper.status();
    let task = tokio::spawn(shipper.run());
    // Far within the shipper's own 60 s publishing deadline: a stalled round is a failure
    // here, not a restart.
    let mut waited = 0;
    while status.acked() < last && waited < 400 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    task.abort();
    assert_eq!(
        status.acked(),
        last,
        "the witness acknowledged only seq {} of {last}",
        status.acked()
    );
    log.shutdown().await;
    let agreement = witness::compare(dir.path(), &stream.config(), &key.verifying_key())
        .await
        .unwrap()
        .verdict
        .unwrap();
    assert_eq!(agreement.witnessed_seq, last);
    assert!(agreement.heads >= 6000, "{agreement:?}");
    stream.remove().await;
}
