//! TLS refusals, one each: no certificate, another CA, expired, not yet valid, revoked,
//! a server certificate presented as a client's, TLS 1.2 when it is off, a client that
//! stalls in the handshake — each refused at the handshake and counted under its reason
//! in `/metrics`, nothing served and nothing recorded; and a certificate without a URI
//! SAN, which completes the handshake but is refused UNAUTHENTICATED on its first call,
//! recorded as such.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::TestGateway;
use popgw::client::ClientCerts;
use popgw::proto::gateway as pb;
use tonic::Code;

/// `popgw_tls_handshake_refusals_total{reason}` now.
async fn refused(gw: &TestGateway, reason: &str) -> u64 {
    let (_, scrape) = gw.admin_get("/metrics").await;
    let series = format!("popgw_tls_handshake_refusals_total{{reason=\"{reason}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Waits (at most 3 s) for `reason` to count one more than `before`.
async fn counted(gw: &TestGateway, reason: &str, before: u64) -> bool {
    for _ in 0..60 {
        if refused(gw, reason).await > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Writes a client certificate of the development CA as `name.pem`/`name.key`.
fn write_client(certs: &Path, name: &str, cert: (String, String)) {
    std::fs::write(certs.join(format!("{name}.pem")), cert.0).unwrap();
    std::fs::write(certs.join(format!("{name}.key")), cert.1).unwrap();
}

/// A TLS connection offering no client certificate: refused at once, or (TLS 1.3) on
/// the first read.
async fn connect_without_certificate(gw: &TestGateway) -> bool {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(gw.certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(popgw::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    match connector.connect(name, tcp).await {
        Err(_) => false,
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Err(_) | Ok(0))
        }
    }
}

#[tokio::test]
async fn each_refused_handshake_is_counted_under_its_reason_and_nothing_is_served() {
    let gw = TestGateway::builder()
        .config(|c| {
            c.tls.client_crls = vec![c.tls.client_ca.with_file_name("crl.pem")];
            c.tls.handshake_timeout_ms = 300;
        })
        .start()
        .await;
    let ca = popgw::pki::DevCa::load(&gw.certs).unwrap();
    let portal = popgw::pki::PORTAL_ID;
    write_client(
        &gw.certs,
        "future",
        ca.issue_client_between(Some(portal), (2099, 1, 1), (2100, 1, 1))
            .unwrap(),
    );
    // The server's own certificate (serverAuth only) presented as a client's.
    for ext in ["pem", "key"] {
        std::fs::copy(
            gw.certs.join(format!("server.{ext}")),
            gw.certs.join(format!("as-client.{ext}")),
        )
        .unwrap();
    }
    popgw::pki::issue(&gw.certs, "gone", portal, 30).unwrap();
    popgw::pki::revoke(&gw.certs, "gone").unwrap();

    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let mut rows = Vec::new();
    for (what, who, reason) in [
        ("another CA", "outsider", "unknown_issuer"),
        ("expired", "expired", "expired"),
        ("not yet valid", "future", "not_yet_valid"),
        ("revoked", "gone", "revoked"),
        (
            "a server certificate as a client's",
            "as-client",
            "bad_certificate",
        ),
    ] {
        let before = refused(&gw, reason).await;
        // The CRL is picked up within a second of being written: retry until then.
        let mut served = true;
        for _ in 0..30 {
            served = gw
                .verify_with(ClientCerts::dev(&gw.certs, who))
                .await
                .is_ok();
            if !served && refused(&gw, reason).await > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows.push((what, !served && counted(&gw, reason, before).await));
    }
    let before = refused(&gw, "no_certificate").await;
    let served = connect_without_certificate(&gw).await;
    rows.push((
        "no certificate",
        !served && counted(&gw, "no_certificate", before).await,
    ));
    let before = refused(&gw, "incompatible").await;
    let served = common::tls_connect(gw.addr, &gw.certs, "portal", tls12)
        .await
        .is_ok();
    rows.push((
        "TLS 1.2 when it is off",
        !served && counted(&gw, "incompatible", before).await,
    ));
    // A client that opens TCP and never says hello: closed after the handshake timeout.
    let before = refused(&gw, "timeout").await;
    let stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let closed = {
        use tokio::io::AsyncReadExt;
        let mut stalled = stalled;
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    rows.push((
        "a client stalling in the handshake",
        closed && counted(&gw, "timeout", before).await,
    ));
    let failed: Vec<_> = rows.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect();
    assert!(failed.is_empty(), "not refused and counted: {failed:?}");

    // None of them reached a service: every record is the operator's own query.
    let records = gw.audit_records(pb::AuditQueryRequest::default()).await;
    assert!(
        records.iter().all(|r| r.rpc == "AuditLog.Query"),
        "{records:?}"
    );
    // The genuine portal is still served.
    assert!(gw
        .verify_with(ClientCerts::dev(&gw.certs, "portal"))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_certificate_without_a_uri_san_is_refused_unauthenticated_and_recorded() {
    let gw = TestGateway::start().await;
    let ca = popgw::pki::DevCa::load(&gw.certs).unwrap();
    write_client(
        &gw.certs,
        "nameless",
        ca.issue_client_between(None, (2024, 1, 1), (2036, 1, 1))
            .unwrap(),
    );
    let status = gw
        .verify_with(ClientCerts::dev(&gw.certs, "nameless"))
        .await
        .expect_err("no identity, no answer");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("URI SAN"), "{status:?}");
    let records = gw.audit_records(pb::AuditQueryRequest::default()).await;
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.rpc == "VerifyIdentity")
        .collect();
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(refused[0].code, "UNAUTHENTICATED");
    assert!(
        refused[0].client.starts_with("unauthenticated: "),
        "{:?}",
        refused[0].client
    );
}
