//! Enumeration: the 366-birth-date search stopped by the per-citizen lock (audited),
//! the per-client rate (RESOURCE_EXHAUSTED with RetryInfo), the items of a stream.

mod common;

use common::{declare, TestGateway};
use popgw::proto::gateway as pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

/// Every date of a year, YYYY-MM-DD.
fn dates_of(year: &str) -> Vec<String> {
    let y: i32 = year.parse().unwrap();
    let mut d = chrono::NaiveDate::from_ymd_opt(y, 1, 1).unwrap();
    let mut out = Vec::new();
    while d.year_ce().1 as i32 == y {
        out.push(d.format("%Y-%m-%d").to_string());
        d = d.succ_opt().unwrap();
    }
    out
}

use chrono::Datelike;

#[tokio::test]
async fn the_birth_date_search_is_stopped_and_the_lock_is_audited() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    // Search the year the id gives away, the true date last.
    let mut dates: Vec<String> = dates_of(&r.date_of_birth[..4])
        .into_iter()
        .filter(|d| *d != r.date_of_birth)
        .collect();
    dates.push(r.date_of_birth.clone());
    let (mut no_match, mut locked, mut matched) = (0, 0, 0);
    for date in &dates {
        let mut req = declare(&r, "P03");
        req.date_of_birth = date.clone();
        match portal.verify_identity(req).await {
            Ok(a) if a.get_ref().verdict() == pb::Verdict::Match => matched += 1,
            Ok(_) => no_match += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("locked"), "{e:?}");
                locked += 1;
            }
        }
    }
    assert_eq!(
        no_match, 10,
        "ten wrong dates answered, then the citizen is locked"
    );
    assert_eq!(matched, 0, "the true date, tried last, is never confirmed");
    assert_eq!(locked, dates.len() - 10);
    // Another portal (here the ministry) cannot verify the citizen either meanwhile.
    let e = gw
        .client("ministry")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // The request that locked the citizen says so; the refusals are recorded too.
    let records = gw
        .audit_records(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            ..Default::default()
        })
        .await;
    let locking: Vec<_> = records
        .iter()
        .filter(|x| x.detail.contains("subject locked"))
        .collect();
    assert_eq!(locking.len(), 1, "one lock-out record");
    assert_eq!(locking[0].outcome, "NO_MATCH");
    assert_eq!(
        records
            .iter()
            .filter(|x| x.code == "RESOURCE_EXHAUSTED")
            .count(),
        locked + 1
    );
    // Other citizens are unaffected.
    let other = gw
        .find(|c| {
            c.personal_id != r.personal_id
                && c.date_of_death.is_empty()
                && c.date_of_birth.len() == 10
        })
        .clone();
    let a = portal
        .verify_identity(declare(&other, "P03"))
        .await
        .unwrap();
    assert_eq!(a.get_ref().verdict(), pb::Verdict::Match);
}

#[tokio::test]
async fn a_client_beyond_its_rate_is_told_when_to_come_back() {
    let gw = TestGateway::start_with(
        |c| {
            c.limits.client_rate_per_second = 5;
            c.limits.client_burst = 5;
        },
        None,
    )
    .await;
    let r = gw.living().clone();
    // The ministry's policy entry sets no rate: the defaults apply.
    let mut ministry = gw.client("ministry").await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = ministry.verify_identity(declare(&r, "P03")).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("refused within ten quick calls");
    assert_eq!(e.code(), Code::ResourceExhausted);
    let retry = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo in the details");
    assert!(retry <= std::time::Duration::from_millis(250), "{retry:?}");
    tokio::time::sleep(retry + std::time::Duration::from_millis(20)).await;
    assert!(ministry.verify_identity(declare(&r, "P03")).await.is_ok());
}

#[tokio::test]
async fn a_stream_beyond_its_item_limit_is_ended() {
    let gw = TestGateway::start_with(|c| c.limits.max_stream_items = 3, None).await;
    let r = gw.living().clone();
    let items = (0..6).map(move |i| pb::VerifyIdentityStreamRequest {
        correlation_id: format!("c{i}"),
        request: Some(declare(&r, "P03")),
    });
    let answers: Vec<_> = gw
        .client("portal")
        .await
        .verify_identity_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(
        answers.len(),
        4,
        "three answered, the fourth refused, then the end"
    );
    match &answers[3].result {
        Some(pb::verify_identity_stream_response::Result::Error(e)) => {
            assert_eq!(e.code, Code::ResourceExhausted as i32)
        }
        other => panic!("{other:?}"),
    }
}
