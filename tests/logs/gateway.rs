//! No personal data in logs: with popgw's tracing at TRACE, a session of matches,
//! refusals, bad input, TLS refusals and an audit failure leaves no id, name or
//! birth date in the log output.

use crate::common;

use common::{declare, TestGateway};
use popgw::client::{connect, ClientCerts};
use popgw::proto::gateway as pb;

#[tokio::test]
async fn tracing_output_carries_no_personal_data() {
    let capture = crate::capture();

    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    let mut ministry = gw.client("ministry").await;
    portal.verify_identity(declare(&r, "P03")).await.unwrap();
    let mut wrong = declare(&r, "P03");
    wrong.full_name = "Someone Else".into();
    portal.verify_identity(wrong).await.unwrap();
    let mut bad = declare(&r, "P03");
    bad.date_of_birth = format!("{}-13-01", &r.date_of_birth[..4]);
    assert!(portal.verify_identity(bad).await.is_err());
    assert!(ministry.verify_identity(declare(&r, "P09")).await.is_err());
    ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HS-1".into(),
        })
        .await
        .unwrap();
    // A TLS refusal and an audit failure are logged (warn / error).
    let outsider = connect(
        &format!("localhost:{}", gw.addr.port()),
        &ClientCerts::dev(&gw.certs, "outsider"),
    )
    .await;
    if let Ok(channel) = outsider {
        let mut c =
            popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient::new(channel);
        assert!(c.verify_identity(declare(&r, "P03")).await.is_err());
    }
    gw.gateway.audit.inject_io_error();
    assert!(ministry.verify_identity(declare(&r, "P03")).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("TLS handshake refused"),
        "the refusal is traced:\n{text}"
    );
    assert!(
        text.contains("audit write failed"),
        "the audit failure is traced:\n{text}"
    );
    for needle in [&r.personal_id, &r.full_name, &r.date_of_birth] {
        assert!(
            !text.contains(needle.as_str()),
            "personal data in logs: {needle}\n{text}"
        );
    }
    let household = r
        .permanent_residence
        .as_ref()
        .map(|a| a.line.clone())
        .unwrap_or_default();
    assert!(household.is_empty() || !text.contains(&household));
}

#[tokio::test]
async fn each_stream_item_is_traced_in_a_span_of_its_own() {
    let capture = crate::capture();
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    let items: Vec<pb::VerifyIdentityStreamRequest> = (0..4)
        .map(|i| pb::VerifyIdentityStreamRequest {
            correlation_id: format!("item-{i}"),
            request: Some(declare(&r, "P03")),
        })
        .collect();
    let mut answers = portal
        .verify_identity_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(answer) = answers.message().await.unwrap() {
        assert!(matches!(
            answer.result,
            Some(pb::verify_identity_stream_response::Result::Response(_))
        ));
        answered += 1;
    }
    assert_eq!(answered, 4);

    // Every line traced while answering an item names one request id in its spans (and
    // the event may name it once more): the stream's span does not gather the ids of
    // every item before it.
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rpc=\"VerifyIdentityStream\""))
        .filter(|l| l.contains("answered"))
        .collect();
    assert!(lines.len() >= 4, "each item is traced:\n{text}");
    for line in lines {
        assert!(
            line.matches("request_id=").count() <= 2,
            "an item's line carries the ids of others: {line}"
        );
    }
}
