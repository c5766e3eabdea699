//! Running it in production: the admin listener's metrics and health over real HTTP,
//! reloads of certificates, CRLs and policy without restart, revocation.

use crate::common;

use common::{declare, TestGateway};
use popgw::client::ClientCerts;
use tonic::Code;

/// The value of the sample `name{labels}` in a scrape (labels as written, in order).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_reflect_a_scripted_run() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    for _ in 0..3 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    for _ in 0..2 {
        let e = portal
            .verify_identity(declare(&r, "P99"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // The operator is not granted VerifyIdentity.
    let mut operator = gw.client("operator").await;
    let e = operator
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // An outsider (another CA) is refused at the handshake.
    assert!(gw
        .verify_with(ClientCerts::dev(&gw.certs, "outsider"))
        .await
        .is_err());

    let (status, scrape) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let portal_id = popgw::pki::PORTAL_ID;
    let operator_id = popgw::pki::OPERATOR_ID;
    assert_eq!(
        sample(
            &scrape,
            &format!("popgw_requests_total{{rpc=\"VerifyIdentity\",procedure=\"P03\",client=\"{portal_id}\",code=\"OK\"}}")
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("popgw_requests_total{{rpc=\"VerifyIdentity\",procedure=\"\",client=\"{portal_id}\",code=\"INVALID_ARGUMENT\"}}")
        ),
        Some(2.0),
        "an unknown procedure is not a label value: {scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("popgw_requests_total{{rpc=\"VerifyIdentity\",procedure=\"P03\",client=\"{operator_id}\",code=\"PERMISSION_DENIED\"}}")
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "popgw_request_duration_seconds_count{rpc=\"VerifyIdentity\"}"
        ),
        Some(6.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "popgw_request_duration_seconds_bucket{le=\"+Inf\",rpc=\"VerifyIdentity\"}"
        ),
        Some(6.0),
        "{scrape}"
    );
    assert!(
        sample(
            &scrape,
            "popgw_tls_handshake_refusals_total{reason=\"unknown_issuer\"}"
        ) >= Some(1.0),
        "{scrape}"
    );
    assert!(
        sample(&scrape, "popgw_connections_open") >= Some(2.0),
        "{scrape}"
    );
    // Six records were written, each in some batch, each batch one write.
    assert!(
        sample(&scrape, "popgw_audit_batch_records_sum") >= Some(6.0),
        "{scrape}"
    );
    assert!(sample(&scrape, "popgw_audit_write_duration_seconds_count") >= Some(1.0));
    // Seconds until the server certificate (dev PKI: 2036) expires.
    let expiry = sample(
        &scrape,
        "popgw_certificate_expiry_seconds{certificate=\"server\"}",
    )
    .expect("server certificate expiry");
    assert!(expiry > 86_400.0 * 365.0, "{expiry}");
    // No personal data anywhere in a scrape.
    for secret in [&r.personal_id, &r.full_name, &r.date_of_birth] {
        assert!(!scrape.contains(secret.as_str()));
    }
    assert!(scrape.ends_with("# EOF\n"));

    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    assert_eq!(gw.admin_get("/readyz").await, (200, "ready\n".into()));
    // The audit log fails: not ready any more, and says why.
    gw.gateway.audit.inject_io_error();
    let _ = portal.verify_identity(declare(&r, "P03")).await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("audit log not writable"), "{body}");
}

/// Waits up to ten seconds (the watch reads the files every second) for `check`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

/// The server certificate a new connection is shown.
async fn served_certificate(gw: &TestGateway) -> Vec<u8> {
    let tls = common::tls_connect(gw.addr, &gw.certs, "portal", rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Replaces a file the way deployment tools do: a new file renamed over the old.
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_new_server_certificate_reaches_new_connections_without_restart() {
    let gw = TestGateway::start().await;
    let old = served_certificate(&gw).await;
    let mut portal = gw.client("portal").await;
    let r = gw.living().clone();
    portal.verify_identity(declare(&r, "P03")).await.unwrap();

    let (cert, key) = gw.ca.issue_server().unwrap();
    assert_ne!(pem_der(&cert), old);
    replace(&gw.certs.join("server.key"), &key);
    replace(&gw.certs.join("server.pem"), &cert);
    let new = pem_der(&cert);
    eventually("a new connection sees the new certificate", || async {
        served_certificate(&gw).await == new
    })
    .await;
    // The connection opened before the reload still works, and so does a new one.
    portal.verify_identity(declare(&r, "P03")).await.unwrap();
    gw.client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();

    // A broken certificate file is refused: the running one stays.
    replace(&gw.certs.join("server.pem"), "not a certificate\n");
    eventually("the broken file is refused", || async {
        let (_, scrape) = gw.admin_get("/metrics").await;
        sample(&scrape, "popgw_config_reloads_total{result=\"refused\"}") >= Some(1.0)
    })
    .await;
    assert_eq!(served_certificate(&gw).await, new);
}

#[tokio::test]
async fn a_newly_granted_procedure_works_without_restart_and_a_broken_policy_is_refused() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut ministry = gw.client("ministry").await;
    // P05 is not among the ministry's procedures.
    let e = ministry
        .verify_identity(declare(&r, "P05"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let path = gw.dir.path().join("data/policy.toml");
    let policy = std::fs::read_to_string(&path).unwrap();
    let granted = policy.replacen(
        r#"procedures = ["P01", "#,
        r#"procedures = ["P05", "P01", "#,
        1,
    );
    assert_ne!(granted, policy);
    replace(&path, &granted);
    eventually("P05 is granted", || {
        let mut ministry = ministry.clone();
        let r = r.clone();
        async move { ministry.verify_identity(declare(&r, "P05")).await.is_ok() }
    })
    .await;

    // A broken policy (an RPC that does not exist) is refused; the running one stays.
    replace(
        &path,
        &granted.replacen(
            r#""ListProcedures"]"#,
            r#""ListProcedures", "Everything"]"#,
            1,
        ),
    );
    eventually("the broken policy is refused", || async {
        let (_, scrape) = gw.admin_get("/metrics").await;
        sample(&scrape, "popgw_config_reloads_total{result=\"refused\"}") >= Some(1.0)
    })
    .await;
    ministry.verify_identity(declare(&r, "P05")).await.unwrap();
    let e = gw
        .client("operator")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "still deny by default");
}

#[tokio::test]
async fn a_revoked_certificate_cannot_open_a_new_connection() {
    let gw = TestGateway::builder()
        .config(|config| {
            config.tls.client_crls = vec![config.tls.client_ca.with_file_name("crl.pem")];
        })
        .start()
        .await;
    // A second certificate of the portal, as `popgw certs issue` makes it.
    popgw::pki::issue(&gw.certs, "portal2", popgw::pki::PORTAL_ID, 30).unwrap();
    let as_portal2 = || gw.verify_with(ClientCerts::dev(&gw.certs, "portal2"));
    assert!(as_portal2().await.is_ok());
    // A connection of portal2 open before the revocation (issue 25: it used to be
    // served until its age, up to an hour).
    let channel = popgw::client::connect(
        &format!("localhost:{}", gw.addr.port()),
        &ClientCerts::dev(&gw.certs, "portal2"),
    )
    .await
    .unwrap();
    let mut open =
        popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient::new(channel);
    let r = gw.living().clone();
    assert!(open.verify_identity(declare(&r, "P03")).await.is_ok());

    popgw::pki::revoke(&gw.certs, "portal2").unwrap();
    eventually("portal2 is refused", || async {
        as_portal2().await.is_err()
    })
    .await;
    // The open connection is closed by the reload that took the CRL in.
    assert!(
        open.verify_identity(declare(&r, "P03")).await.is_err(),
        "the revoked certificate's open connection is still served"
    );
    let (_, scrape) = gw.admin_get("/metrics").await;
    assert!(
        sample(
            &scrape,
            "popgw_tls_handshake_refusals_total{reason=\"revoked\"}"
        ) >= Some(1.0),
        "{scrape}"
    );
    // The portal's other certificate is not revoked.
    assert!(gw
        .verify_with(ClientCerts::dev(&gw.certs, "portal"))
        .await
        .is_ok());
}

#[tokio::test]
async fn json_logs_carry_the_request_span_and_no_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let population = common::population_records(&config.population_path());
    let r = population
        .iter()
        .find(|r| r.date_of_death.is_empty() && r.date_of_birth.len() == 10)
        .unwrap()
        .clone();
    let cfg = common::write_config(dir.path(), &config, "[log]\nformat = \"json\"\n");
    common::init_node(&cfg);
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, port) = common::spawn_serve(&cfg, "popgw=debug,info", log.into());
    let certs = ClientCerts::dev(&dir.path().join("certs"), "portal");
    let channel = popgw::client::connect(&format!("localhost:{port}"), &certs)
        .await
        .unwrap();
    let mut portal =
        popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient::new(channel);
    let answer = portal
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    let refused = portal
        .verify_identity(declare(&r, "P99"))
        .await
        .unwrap_err();
    drop(portal);
    assert!(common::terminate(child).await.success());

    let text = std::fs::read_to_string(&log_path).unwrap();
    // This configuration lists no CRL: the start says so, loudly (issue 25).
    assert!(text.contains("revocation is OFF"), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_request = |request_id: &str| {
        lines
            .iter()
            .find(|l| l["span"]["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no line in request {request_id}: {text}"))
            .clone()
    };
    let line = in_request(&answer.request_id);
    assert_eq!(line["span"]["name"], "request");
    assert_eq!(line["span"]["rpc"], "VerifyIdentity");
    assert_eq!(line["span"]["client"], popgw::pki::PORTAL_ID);
    assert_eq!(line["span"]["outcome"], "MATCH");
    let refused_id = refused
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("refusals carry their request id")
        .to_string();
    assert_eq!(in_request(&refused_id)["span"]["code"], "INVALID_ARGUMENT");
    for secret in [&r.personal_id, &r.full_name, &r.date_of_birth] {
        assert!(!text.contains(secret.as_str()), "personal data in the log");
    }
}

#[tokio::test]
async fn a_deadline_that_passes_during_the_audit_write_is_deadline_exceeded_and_recorded() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    portal.verify_identity(declare(&r, "P03")).await.unwrap();
    // The record is fast to find; its audit write is not (a slow disk): the caller's
    // 500 ms pass while the record is being made durable. The gateway answers 25 ms
    // before the deadline (half its 50 ms margin), ahead of the client's own timer.
    gw.gateway
        .audit
        .inject_stall(std::time::Duration::from_millis(1500));
    let mut req = tonic::Request::new(declare(&r, "P03"));
    req.set_timeout(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let e = portal.verify_identity(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    // The request ran to its end in its own task: its record is there.
    let query = popgw::proto::gateway::AuditQueryRequest {
        personal_id: r.personal_id.clone(),
        ..Default::default()
    };
    let verifications = || async {
        gw.audit_records(query.clone())
            .await
            .into_iter()
            .filter(|r| r.rpc == "VerifyIdentity")
            .count()
    };
    eventually("both verifications are recorded", || async {
        verifications().await == 2
    })
    .await;
}

/// Issue 25: SIGHUP re-read the files a configuration names but never the configuration
/// file itself. Now what can change live (the policy and TLS files it names) changes, a
/// changed key that needs a restart is named in the log, and a broken file is refused
/// with the running configuration kept.
#[tokio::test]
async fn sighup_reads_the_configuration_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let population = common::population_records(&config.population_path());
    let r = population
        .iter()
        .find(|r| r.date_of_death.is_empty() && r.date_of_birth.len() == 10)
        .unwrap()
        .clone();
    let cfg = common::write_config(dir.path(), &config, "");
    common::init_node(&cfg);
    let original = std::fs::read_to_string(&cfg).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, port) = common::spawn_serve(&cfg, "info", log.into());
    let verify = |who: &'static str| {
        let certs = ClientCerts::dev(&dir.path().join("certs"), who);
        let req = declare(&r, "P03");
        async move {
            let channel = popgw::client::connect(&format!("localhost:{port}"), &certs)
                .await
                .unwrap();
            popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient::new(channel)
                .verify_identity(req)
                .await
        }
    };
    let hangup = || {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    assert!(verify("portal").await.is_ok());

    // Another policy file (the ministry only) and another cache size, by SIGHUP.
    let ministry_only = dir.path().join("ministry-only.toml");
    std::fs::write(
        &ministry_only,
        "[[client]]\nidentity = \"spiffe://popgw.dev/ministry/justice\"\nrole = \"ministry\"\n\
         rpcs = [\"VerifyIdentity\"]\nprocedures = [\"*\"]\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "policy_file = \"{}\"\n{original}[cache]\nmax_bytes = 1234567\n",
            ministry_only.display()
        ),
    )
    .unwrap();
    hangup();
    let mut refused = None;
    for _ in 0..50 {
        match verify("portal").await {
            // A call on a connection the reload closes (its identity left the policy)
            // ends in a transport error: the next connection gets the policy's answer.
            Err(e) if matches!(e.code(), Code::Unknown | Code::Unavailable) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let e = refused.expect("the new policy file is in force");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(verify("ministry").await.is_ok());
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("apply only at restart") && text.contains("cache"),
        "{text}"
    );

    // A broken file is refused; the running configuration stays.
    std::fs::write(&cfg, "listen = \"nowhere\"\n").unwrap();
    hangup();
    let mut said = false;
    for _ in 0..50 {
        if std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("not read again")
        {
            said = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(said, "the refusal is logged");
    assert!(verify("ministry").await.is_ok());
    assert_eq!(
        verify("portal").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(common::terminate(child).await.success());
}
