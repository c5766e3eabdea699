//! The audit witness's link to NATS, against a private nats-server running the shipped
//! `config/nats-server.conf` (TLS verifying client certificates, least-privilege users):
//! gateways shipping over TLS with their own credentials and the indexer indexing every
//! record; `popgw audit witness init` creating and checking the hardened stream; links
//! in clear, with the wrong CA, a wrong password or no credentials refused with a clear
//! error; a node unable to publish as another or to create the stream; nobody able to
//! delete or purge what was witnessed.

use crate::common;

use std::time::Duration;

use async_nats::jetstream;
use common::nats_server::NatsServer;
use common::{declare, TempDb, TestGateway};
use popgw::audit::index::{AuditIndex, IndexConfig};
use popgw::link::nats::{NatsLink, StreamPlan};

const STREAM: &str = "POPGW_AUDIT";

fn popgw(args: &[String]) -> std::process::Output {
    crate::common::bin().args(args).output().unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `popgw audit witness init` as the administrator, keeping messages `days`.
fn init(server: &NatsServer, stream: &str, days: u32) -> std::process::Output {
    let mut a = args(&[
        "audit",
        "witness",
        "init",
        "--nats",
        &server.url(),
        "--stream",
        stream,
    ]);
    a.extend(["--retention-days".into(), days.to_string()]);
    a.extend(server.flags("admin"));
    popgw(&a)
}

async fn js(server: &NatsServer, who: &str) -> jetstream::Context {
    let client = server
        .link(who)
        .connect(&format!("test {who}"))
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    // A request the server refuses to deliver goes unanswered: do not wait long for it.
    js.set_timeout(Duration::from_secs(2));
    js
}

/// `[audit.witness]` on `STREAM` over `link` (read from TOML, so that every other key
/// takes its default).
fn witness_settings(link: NatsLink) -> popgw::config::WitnessSettings {
    let mut settings: popgw::config::WitnessSettings = toml::from_str(&format!(
        "kind = \"nats\"\nurl = \"{}\"\nstream = \"{STREAM}\"\n",
        link.url
    ))
    .unwrap();
    settings.link = link;
    settings
}

/// A gateway witnessed in `STREAM` as `node` over `link`.
async fn gateway(node: &str, link: NatsLink) -> TestGateway {
    let node = node.to_string();
    let settings = witness_settings(link);
    TestGateway::builder()
        .config(move |c| {
            c.node_id = node;
            c.audit.witness = Some(settings);
        })
        .start()
        .await
}

/// Waits until the stream holds the gateway's last record (read as the administrator).
async fn wait_witnessed(server: &NatsServer, gw: &TestGateway) {
    let stream = js(server, "admin").await.get_stream(STREAM).await.unwrap();
    let subject = format!("popgw.audit.{}", gw.gateway.audit.node());
    let mut witnessed = 0;
    for _ in 0..400 {
        if let Ok(m) = stream.get_last_raw_message_by_subject(&subject).await {
            let head: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            witnessed = head["seq"].as_u64().unwrap();
            if witnessed >= gw.gateway.audit.last_seq() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the witness did not catch up: {witnessed} of {}",
        gw.gateway.audit.last_seq()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ship_over_tls_with_their_credentials_and_the_indexer_indexes_everything() {
    let server = NatsServer::start();
    // The administrator creates the hardened stream; a second run finds it as it must be.
    let out = init(&server, STREAM, 30);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("created stream POPGW_AUDIT") && stdout.contains("deny_delete"),
        "{stdout}"
    );
    let out = init(&server, STREAM, 30);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("as it must be"),
        "{stdout}"
    );
    let info = js(&server, "admin")
        .await
        .get_stream(STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert!(info.deny_delete && info.deny_purge && !info.allow_rollup);
    assert_eq!(info.subjects, vec!["popgw.audit.*".to_string()]);
    assert_eq!(info.max_age, Duration::from_secs(30 * 86_400));

    // node-1 (nkey) and node-2 (password) ship their records over TLS.
    let db = TempDb::create().await;
    let mut one = gateway("node-1", server.link("node-1")).await;
    let mut two = gateway("node-2", server.link("node-2")).await;
    for gw in [&one, &two] {
        let r = gw.living().clone();
        let mut portal = gw.client("portal").await;
        for _ in 0..5 {
            portal.verify_identity(declare(&r, "P03")).await.unwrap();
        }
    }
    wait_witnessed(&server, &one).await;
    wait_witnessed(&server, &two).await;

    // `popgw audit index` with the indexer's read-only credentials indexes both nodes.
    let mut a = args(&[
        "audit",
        "index",
        "--postgres",
        &db.url,
        "--nats",
        &server.url(),
    ]);
    for (node, gw) in [("node-1", &one), ("node-2", &two)] {
        a.push("--node-key".into());
        a.push(format!("{node}={}", gw.gateway.audit.public_key()));
    }
    a.extend(server.flags("indexer"));
    let mut indexer = crate::common::bin()
        .args(&a)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let index = AuditIndex::open(&IndexConfig::new(&db.url)).await.unwrap();
    let mut caught_up = false;
    for _ in 0..600 {
        let (n1, n2) = (
            index.count("node-1").await.unwrap_or(0),
            index.count("node-2").await.unwrap_or(0),
        );
        if n1 >= one.gateway.audit.last_seq() && n2 >= two.gateway.audit.last_seq() {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    indexer.kill().unwrap();
    let status = indexer.wait_with_output().unwrap();
    assert!(
        caught_up,
        "the indexer did not index both nodes: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        server.log()
    );

    // `popgw audit verify --witness` with the indexer's credentials agrees with node-1.
    one.stop().await;
    two.stop().await;
    let mut a = args(&["audit", "verify", "--dir"]);
    a.push(one.gateway.audit.dir().to_str().unwrap().into());
    a.extend(args(&["--witness", &server.url(), "--node", "node-1"]));
    a.extend(server.flags("indexer"));
    let out = popgw(&a);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("witness agrees"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same with the link, stream and pinned key taken from a configuration file.
    let config = popgw::config::Config::rooted_at(one.dir.path());
    let auditor = server.link("indexer");
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().display().to_string();
    let file = common::write_config(
        one.dir.path(),
        &config,
        &format!(
            "[audit]\npublic_key = \"{}\"\n[audit.witness]\nkind = \"nats\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nnkey_seed_file = \"{}\"\n\
             inbox_prefix = \"_INBOX_indexer\"\n",
            one.gateway.audit.public_key(),
            auditor.url,
            path(&auditor.ca_file),
            path(&auditor.cert_file),
            path(&auditor.key_file),
            path(&auditor.nkey_seed_file),
        ),
    );
    let out = popgw(&args(&[
        "audit",
        "verify",
        "--config",
        file.to_str().unwrap(),
        "--witness",
        "--node",
        "node-1",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("witness agrees"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(index);
    db.drop_db().await;
}

async fn refused(link: NatsLink) -> String {
    link.connect("test").await.unwrap_err().to_string()
}

#[tokio::test]
async fn links_in_clear_with_the_wrong_ca_or_credentials_are_refused_saying_why() {
    let server = NatsServer::start();
    let at = format!("NATS at 127.0.0.1:{}", server.port);
    // In clear to a server that requires TLS.
    let e = refused(
        NatsLink {
            url: format!("nats://127.0.0.1:{}", server.port),
            ..server.link("node-1")
        }
        .with_no_tls(),
    )
    .await;
    assert!(e.contains(&at) && e.contains("server requires TLS"), "{e}");
    // A CA that did not issue the server's certificate.
    let e = refused(NatsLink {
        ca_file: Some(server.other_certs.join("ca.pem")),
        ..server.link("node-1")
    })
    .await;
    assert!(
        e.contains(&at) && e.contains("TLS: certificate not trusted"),
        "{e}"
    );
    // A client certificate from another CA.
    let e = refused(NatsLink {
        cert_file: Some(server.certs.join("outsider.pem")),
        key_file: Some(server.certs.join("outsider.key")),
        ..server.link("node-1")
    })
    .await;
    assert!(
        e.contains(&at) && e.contains("TLS: the server refused this client's certificate"),
        "{e}"
    );
    // A wrong password: named by its user, never shown.
    let wrong = server.dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e = refused(NatsLink {
        password_file: Some(wrong),
        ..server.link("node-2")
    })
    .await;
    assert!(
        e.contains(&at) && e.contains("authorization violation (user node-2)"),
        "{e}"
    );
    assert!(!e.contains("not-the-password"), "{e}");
    // No credentials at all.
    let e = refused(NatsLink {
        nkey_seed_file: None,
        ..server.link("node-1")
    })
    .await;
    assert!(
        e.contains(&at) && e.contains("authorization violation (no credentials)"),
        "{e}"
    );
    // The right ones work.
    server.link("node-1").connect("test").await.unwrap();
}

trait NoTls {
    fn with_no_tls(self) -> Self;
}

impl NoTls for NatsLink {
    fn with_no_tls(self) -> Self {
        NatsLink {
            ca_file: None,
            cert_file: None,
            key_file: None,
            ..self
        }
    }
}

#[tokio::test]
async fn a_node_publishes_only_as_itself_and_nobody_deletes_what_was_witnessed() {
    let server = NatsServer::start();
    // A node cannot create the stream: it is told how.
    let plan = StreamPlan {
        name: STREAM.into(),
        subjects: vec!["popgw.audit.node-1".into()],
        replicas: 1,
        max_age: Duration::ZERO,
    };
    let node = js(&server, "node-1").await;
    let e = popgw::link::nats::ensure_stream(&node, &plan, "popgw.audit.node-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("popgw audit witness init"), "{e}");
    // A stream that does not take node-1's subject: node-1 may not widen it.
    let admin = js(&server, "admin").await;
    admin
        .create_stream(
            StreamPlan {
                subjects: vec!["popgw.audit.node-2".into()],
                ..plan.clone()
            }
            .config(),
        )
        .await
        .unwrap();
    let e = popgw::link::nats::ensure_stream(&node, &plan, "popgw.audit.node-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not take popgw.audit.node-1") && e.contains("popgw audit witness init"),
        "{e}"
    );
    admin.delete_stream(STREAM).await.unwrap();
    assert!(init(&server, STREAM, 0).status.success());
    // Now it exists and takes every node's subject: used as it is.
    popgw::link::nats::ensure_stream(&node, &plan, "popgw.audit.node-1")
        .await
        .unwrap();

    // node-1 publishes on its own subject; on node-2's it is refused (no acknowledgement).
    let ack = node
        .publish("popgw.audit.node-1", "mine".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let forged = match node.publish("popgw.audit.node-2", "forged".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!forged, "node-1 published as node-2");
    let mut stream = admin.get_stream(STREAM).await.unwrap();
    assert!(
        stream
            .get_last_raw_message_by_subject("popgw.audit.node-2")
            .await
            .is_err(),
        "a message reached node-2's subject"
    );
    let (one, two) = (
        stream.get_raw_message(ack.sequence).await.unwrap(),
        stream.info().await.unwrap().state.messages,
    );
    assert_eq!(&one.payload[..], b"mine");
    assert_eq!(two, 1);

    // node-1 reads its subject back one message at a time (the first at or after a
    // sequence, the last, one by sequence: STREAM.MSG.GET)…
    let ours = node.get_stream(STREAM).await.unwrap();
    let first = ours
        .get_first_raw_message_by_subject("popgw.audit.node-1", 1)
        .await
        .unwrap();
    assert_eq!(&first.payload[..], b"mine");
    // …but may create no consumer: an ephemeral create names its consumer in the request,
    // so it could rewrite the indexer's (its filter narrowed to one node, say).
    let indexer_js = js(&server, "indexer").await;
    indexer_js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_or_create_consumer(
            "popgw-index",
            jetstream::consumer::pull::Config {
                durable_name: Some("popgw-index".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Each refusal below waits out its timeout: all at once.
    let indexer = js(&server, "indexer").await;
    let rewrite = serde_json::json!({
        "stream_name": STREAM,
        "config": {"name": "popgw-index", "ack_policy": "explicit",
                   "filter_subject": "popgw.audit.node-1"}
    });
    let hijack = node
        .request::<_, _, serde_json::Value>("CONSUMER.CREATE.POPGW_AUDIT".to_string(), &rewrite);
    let ordered = ours.create_consumer(jetstream::consumer::pull::OrderedConfig {
        filter_subject: "popgw.audit.node-1".into(),
        ..Default::default()
    });
    // The indexer may not publish a record.
    let forged = async {
        match indexer.publish("popgw.audit.node-1", "forged".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    };
    let (hijack, ordered, published) = tokio::join!(hijack, ordered, forged);
    assert!(hijack.is_err(), "{hijack:?}");
    assert!(ordered.is_err());
    assert!(!published, "the indexer published a record");
    let indexed: jetstream::consumer::PullConsumer = indexer_js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_consumer("popgw-index")
        .await
        .unwrap();
    assert_eq!(indexed.cached_info().config.filter_subject, "");
    // A node and the indexer may not delete the stream, purge it or delete a message.
    // A refused request is not answered (the server tells the connection, not the
    // request), so each waits out its 2 s timeout: all of them at once.
    let refusals = ["node-1", "node-2", "indexer"].map(|who| {
        let server = &server;
        async move {
            let js = js(server, who).await;
            let stream = js.get_stream(STREAM).await.unwrap();
            let mut weaker = stream.cached_info().config.clone();
            weaker.deny_delete = false;
            let (deleted, purged, message, updated) = tokio::join!(
                js.delete_stream(STREAM),
                stream.purge(),
                stream.delete_message(ack.sequence),
                js.update_stream(weaker),
            );
            assert!(deleted.is_err(), "{who} deleted the stream");
            assert!(purged.is_err(), "{who} purged the stream");
            assert!(message.is_err(), "{who} deleted a message");
            assert!(updated.is_err(), "{who} updated the stream");
        }
    });
    futures::future::join_all(refusals).await;
    // Even the administrator's message delete and purge are refused by the stream itself.
    assert!(
        stream.delete_message(ack.sequence).await.is_err(),
        "the admin deleted a message of a deny_delete stream"
    );
    assert!(
        stream.purge().await.is_err(),
        "the admin purged a deny_purge stream"
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    // Nor can the administrator switch the protections off.
    for weaken in [
        |c: &mut jetstream::stream::Config| c.deny_delete = false,
        |c: &mut jetstream::stream::Config| c.deny_purge = false,
    ] {
        let mut weaker = stream.cached_info().config.clone();
        weaken(&mut weaker);
        let e = admin.update_stream(weaker).await.unwrap_err();
        assert!(e.to_string().contains("can not cancel"), "{e}");
    }
}

#[tokio::test]
async fn init_names_what_is_wrong_with_an_existing_stream() {
    let server = NatsServer::start();
    let admin = js(&server, "admin").await;
    admin
        .create_stream(jetstream::stream::Config {
            name: "WEAK".into(),
            subjects: vec!["popgw.audit.node-1".into()],
            max_age: Duration::from_secs(86_400),
            ..Default::default()
        })
        .await
        .unwrap();
    let out = init(&server, "WEAK", 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for word in ["deny_delete", "deny_purge", "popgw.audit.*", "max_age"] {
        assert!(stderr.contains(word), "{word}: {stderr}");
    }
}

#[test]
fn plain_nats_off_loopback_is_refused_by_the_configuration_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::prepare(dir.path());
    let secret = dir.path().join("node-1.password");
    std::fs::write(&secret, "s3cret-value\n").unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    common::init_node(&common::write_config(dir.path(), &config, ""));
    let check = |witness: &str| {
        let path = common::write_config(
            dir.path(),
            &config,
            &format!("[audit.witness]\nkind = \"nats\"\n{witness}"),
        );
        let out = popgw(&args(&["check-config", "--config", path.to_str().unwrap()]));
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let creds = format!(
        "user = \"node-1\"\npassword_file = \"{}\"\n",
        secret.display()
    );
    let (code, out) = check(&format!("url = \"nats://10.20.30.40:4222\"\n{creds}"));
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("audit.witness.url") && out.contains("allow_plaintext"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
    let (code, out) = check(&format!(
        "url = \"nats://10.20.30.40:4222\"\nallow_plaintext = true\n{creds}"
    ));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check(&format!("url = \"nats://127.0.0.1:4222\"\n{creds}"));
    assert_eq!(code, Some(0), "{out}");
    // A password written into the configuration: refused, never repeated.
    let (code, out) =
        check("url = \"nats://127.0.0.1:4222\"\nuser = \"node-1\"\npassword = \"hunter2\"\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("audit.witness.password: unknown field") && out.contains("password_file"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    // A user without a password file, a mistyped key: refused, each named.
    let (code, out) =
        check("url = \"nats://127.0.0.1:4222\"\nuser = \"node-1\"\npasword_file = \"x\"\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("audit.witness.password_file") && out.contains("audit.witness.pasword_file"),
        "{out}"
    );
}

/// The national try budget under the shipped configuration: the administrator creates
/// its bucket; node-1 (nkey) and node-2 (password) count one citizen's tries together in
/// it and may not create a bucket of their own; the indexer may not write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_national_try_budget_and_only_the_administrator_creates_it() {
    use popgw::limits::national::{bucket_stream, NationalBudget, NationalConfig, Settled};
    use popgw::limits::Refused;
    let server = NatsServer::start();
    let options = popgw::config::Config::default().limit_options();
    let config = |who: &str, bucket: &str| NationalConfig {
        link: server.link(who),
        bucket: bucket.into(),
        timeout: Duration::from_secs(2),
        node: who.into(),
    };
    let metrics = || std::sync::Arc::new(popgw::telemetry::Metrics::default());
    // A node may not create it.
    let node = js(&server, "node-1").await;
    assert!(node
        .create_stream(bucket_stream("POPGW_TRIES", &options))
        .await
        .is_err());
    js(&server, "admin")
        .await
        .create_stream(bucket_stream("POPGW_TRIES", &options))
        .await
        .unwrap();
    let one = NationalBudget::start(config("node-1", "POPGW_TRIES"), options.clone(), metrics());
    let two = NationalBudget::start(config("node-2", "POPGW_TRIES"), options.clone(), metrics());
    for _ in 0..100 {
        if one.is_up() && two.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(one.is_up() && two.is_up(), "both nodes use the bucket");
    let subject = "a".repeat(64);
    for i in 0..5 {
        let node = if i % 2 == 0 { &one } else { &two };
        assert_eq!(
            node.settle("spiffe://t/portal", &subject, false).await,
            Settled::Answer(None),
            "NO_MATCH {i}"
        );
    }
    for (node, matched) in [(&one, false), (&two, true)] {
        assert!(
            matches!(
                node.settle("spiffe://t/portal", &subject, matched).await,
                Settled::Refused(Refused::Spent(_))
            ),
            "the allowance is spent on both nodes"
        );
    }
    assert_eq!(
        one.settle("spiffe://t/ministry", &subject, true).await,
        Settled::Answer(None),
        "another client is still answered"
    );
    // The indexer may not write an entry (the server does not deliver it: no ack).
    let indexer = js(&server, "indexer").await;
    let ack = match indexer
        .publish(format!("$KV.POPGW_TRIES.{subject}"), "{}".into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!ack, "the indexer wrote the budget");
    assert!(two.unlock(&subject).await);
    assert_eq!(
        one.settle("spiffe://t/portal", &subject, true).await,
        Settled::Answer(None),
        "lifted for every node"
    );
}
