//! Enumeration: the 366-birth-date search stopped by each client's own allowance of tries
//! about a citizen (exact under a burst), the citizen locked for everyone only by several
//! clients (audited, counted), the per-client rate (RESOURCE_EXHAUSTED with RetryInfo),
//! the items of a stream.

use crate::common;

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

/// The year's dates with the true one last.
fn search_of(r: &popgw::proto::registry::CitizenRecord) -> Vec<String> {
    let mut dates: Vec<String> = dates_of(&r.date_of_birth[..4])
        .into_iter()
        .filter(|d| *d != r.date_of_birth)
        .collect();
    dates.push(r.date_of_birth.clone());
    dates
}

/// Tries `dates` one after the other: (NO_MATCH, refused, MATCH) answers.
async fn try_dates(
    client: &mut pb::identity_gateway_client::IdentityGatewayClient<tonic::transport::Channel>,
    r: &popgw::proto::registry::CitizenRecord,
    dates: &[String],
) -> (usize, usize, usize) {
    let (mut no_match, mut refused, mut matched) = (0, 0, 0);
    for date in dates {
        let mut req = declare(r, "P03");
        req.date_of_birth = date.clone();
        match client.verify_identity(req).await {
            Ok(a) if a.get_ref().verdict() == pb::Verdict::Match => matched += 1,
            Ok(_) => no_match += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                refused += 1;
            }
        }
    }
    (no_match, refused, matched)
}

#[tokio::test]
async fn one_portals_search_spends_only_its_own_tries() {
    let mut gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    let dates = search_of(&r);
    let (no_match, refused, matched) = try_dates(&mut portal, &r, &dates).await;
    assert_eq!(
        no_match, 5,
        "five wrong dates answered, then this portal is refused"
    );
    assert_eq!(matched, 0, "the true date, tried last, is never confirmed");
    assert_eq!(refused, dates.len() - 5);
    // Another client's true declaration is still answered: the search locked nobody out.
    let a = gw
        .client("ministry")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();
    assert_eq!(a.get_ref().verdict(), pb::Verdict::Match);
    // A declaration the id contradicts (another birth year) costs no try: it never
    // reaches the registry and learns nothing.
    let mut req = declare(&r, "P03");
    req.date_of_birth = format!("{}-01-01", r.date_of_birth[..4].parse::<i32>().unwrap() - 1);
    let a = gw
        .client("ministry")
        .await
        .verify_identity(req)
        .await
        .unwrap();
    assert_eq!(a.get_ref().verdict(), pb::Verdict::NoMatch);
    // The refusals are accounted for: the first of each second one by one, the rest
    // in the second's summary record.
    gw.stop().await;
    let records = popgw::audit::read_records(gw.gateway.audit.dir()).unwrap();
    assert_eq!(
        common::refusals_accounted(&records, popgw::pki::PORTAL_ID, "RESOURCE_EXHAUSTED"),
        refused
    );
}

/// Issue 25: all dates of the year sent at once over three HTTP/2 connections got 25 to
/// 182 verdicts when the lock was checked before the lookup and counted after it. Tries
/// in flight now count: at most the allowance is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_three_connections_gets_only_the_allowance() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut dates = search_of(&r);
    let truth = dates.pop().unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gw.client("portal").await);
    }
    let calls = dates.iter().enumerate().map(|(i, date)| {
        let mut client = clients[i % 3].clone();
        let mut req = declare(&r, "P03");
        req.date_of_birth = date.clone();
        async move { client.verify_identity(req).await }
    });
    let answers = futures::future::join_all(calls).await;
    let verdicts = answers.iter().filter(|a| a.is_ok()).count();
    assert!(
        verdicts <= 5,
        "{verdicts} verdicts from a burst of {}",
        dates.len()
    );
    for a in &answers {
        if let Err(e) = a {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
    let mut req = declare(&r, "P03");
    req.date_of_birth = truth;
    let e = clients[0].verify_identity(req).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "the true date is never confirmed"
    );
}

#[tokio::test]
async fn failures_from_several_clients_lock_the_citizen_for_everyone_and_say_so() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let dates = search_of(&r);
    let wrong = &dates[..5];
    assert_eq!(
        try_dates(&mut gw.client("portal").await, &r, wrong).await,
        (5, 0, 0)
    );
    assert_eq!(
        try_dates(&mut gw.client("ministry").await, &r, wrong).await,
        (5, 0, 0)
    );
    // Ten NO_MATCH answers from two clients: locked for every client (not merely out
    // of tries), even for a true declaration.
    for who in ["portal", "ministry"] {
        let e = gw
            .client(who)
            .await
            .verify_identity(declare(&r, "P03"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("verification locked"), "{e:?}");
        assert!(e.get_details_retry_info().is_some());
    }
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
    assert!(
        locking[0].detail.contains("from 2 clients"),
        "{:?}",
        locking[0]
    );
    let (_, scrape) = gw.admin_get("/metrics").await;
    assert!(scrape.contains("popgw_subject_locks_total 1"), "{scrape}");
    // Other citizens are unaffected.
    let other = gw
        .find(|c| {
            c.personal_id != r.personal_id
                && c.date_of_death.is_empty()
                && c.date_of_birth.len() == 10
        })
        .clone();
    let a = gw
        .client("portal")
        .await
        .verify_identity(declare(&other, "P03"))
        .await
        .unwrap();
    assert_eq!(a.get_ref().verdict(), pb::Verdict::Match);
}

#[tokio::test]
async fn a_client_beyond_its_rate_is_told_when_to_come_back() {
    let gw = TestGateway::builder()
        .config(|c| {
            c.limits.client_rate_per_second = 5;
            c.limits.client_burst = 5;
        })
        .start()
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
    let gw = TestGateway::builder()
        .config(|c| c.limits.max_stream_items = 3)
        .start()
        .await;
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
            assert_eq!(e.code, Code::ResourceExhausted as i32);
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 25: every reload refilled every client's rate bucket (a client could reload its
/// way past its rate by touching any watched file). A client whose rate did not change
/// keeps its bucket as it was.
#[tokio::test]
async fn a_reload_keeps_an_exhausted_bucket_empty() {
    let gw = TestGateway::builder()
        .config(|c| {
            c.limits.client_rate_per_second = 1;
            c.limits.client_burst = 3;
        })
        .start()
        .await;
    let r = gw.living().clone();
    let mut ministry = gw.client("ministry").await;
    let mut answered = 0;
    while ministry.verify_identity(declare(&r, "P03")).await.is_ok() {
        answered += 1;
        assert!(answered <= 4, "the bucket never ran dry");
    }
    let policy =
        popgw::policy::Policy::load(&popgw::Config::rooted_at(gw.dir.path()).policy_path())
            .unwrap();
    gw.gateway.replace_policy(policy);
    let e = ministry
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "refilled by the reload");
}

/// Issue 25: a lock caught a citizen's own procedures; an operator lifts it (`popgw limits
/// unlock`, the `Limits.Unlock` RPC), the lifting is audited with the operator and the
/// ticket's pseudonym, and no other role may lift one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lifts_a_lock_and_the_lifting_is_audited() {
    use popgw::proto::gateway::limits_client::LimitsClient;
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let wrong = &search_of(&r)[..5];
    try_dates(&mut gw.client("portal").await, &r, wrong).await;
    try_dates(&mut gw.client("ministry").await, &r, wrong).await;
    let e = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert!(e.message().contains("verification locked"), "{e:?}");

    let unlock = pb::UnlockRequest {
        personal_id: r.personal_id.clone(),
        case_id: "TICKET-7".into(),
    };
    for who in ["portal", "ministry"] {
        let e = LimitsClient::new(gw.channel(who).await)
            .unlock(unlock.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
    }
    let out = crate::common::bin()
        .args(["limits", "unlock", "--addr"])
        .arg(format!("localhost:{}", gw.addr.port()))
        .arg("--certs")
        .arg(&gw.certs)
        .args(["--id", &r.personal_id, "--case", "TICKET-7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("lock lifted; 10 NO_MATCH answer(s) forgotten"),
        "{stdout}"
    );
    let a = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();
    assert_eq!(a.get_ref().verdict(), pb::Verdict::Match, "answered again");
    // Lifting an unlocked citizen says so.
    let a = LimitsClient::new(gw.channel("operator").await)
        .unlock(unlock)
        .await
        .unwrap();
    assert!(!a.get_ref().was_locked);

    let records: Vec<_> = gw
        .audit_records(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            ..Default::default()
        })
        .await
        .into_iter()
        .filter(|x| x.rpc == "Limits.Unlock")
        .collect();
    assert_eq!(records.len(), 4, "two refusals, two unlocks: {records:?}");
    let lifted: Vec<_> = records.iter().filter(|x| x.outcome == "UNLOCKED").collect();
    assert_eq!(lifted.len(), 2);
    assert_eq!(lifted[0].client, popgw::pki::OPERATOR_ID);
    assert!(lifted[0].detail.contains("lock lifted"), "{:?}", lifted[0]);
    for x in &records {
        assert!(
            !x.case_id.contains("TICKET"),
            "the ticket only as a pseudonym"
        );
        assert_eq!(x.case_id.len(), 32, "{x:?}");
    }
}

/// Two gateway nodes of one deployment counting tries in one national bucket.
async fn national_pair(
    stream: &common::TestStream,
    bucket: &str,
) -> (TestGateway, TestGateway, tempfile::TempDir) {
    let url = format!("nats://{}", common::NATS);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("pseudonym.key");
    std::fs::write(
        &key,
        format!("{}\n", hex::encode(rand::random::<[u8; 32]>())),
    )
    .unwrap();
    let mut nodes = Vec::new();
    for side in ["a", "b"] {
        let (key, bucket) = (key.clone(), bucket.to_string());
        nodes.push(
            stream
                .gateway_as(&format!("{}-{side}", stream.node), &url, move |c| {
                    c.audit.pseudonym_key_file = Some(key);
                    c.limits.national = popgw::config::NationalKind::Nats;
                    c.limits.national_bucket = bucket;
                    // Exactness is what is tested here, not the fallback: a loaded test
                    // machine must not turn a slow answer into "unreachable".
                    c.limits.national_timeout_ms = 5_000;
                })
                .await,
        );
    }
    // Each node connects to the bucket in the background.
    for node in &nodes {
        let mut up = false;
        for _ in 0..100 {
            let (_, scrape) = node.admin_get("/metrics").await;
            if scrape.lines().any(|l| l == "popgw_limits_national_up 1") {
                up = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(up, "the national count connected");
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b, keys)
}

/// Issue 25: the budget is national. A year's dates sent at once to two gateway nodes of
/// one deployment (each node counting alone would answer twice the allowance) get at most
/// one allowance of verdicts, and the true date is refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_two_gateway_nodes_gets_only_one_allowance() {
    common::require_nats().await;
    let stream = common::TestStream::new();
    let bucket = format!("{}_TRIES", stream.name);
    let (a, b, _keys) = national_pair(&stream, &bucket).await;
    let r = a.living().clone();
    let mut dates = search_of(&r);
    let truth = dates.pop().unwrap();
    let mut clients = Vec::new();
    for node in [&a, &b] {
        for _ in 0..2 {
            clients.push(node.client("portal").await);
        }
    }
    let calls = dates.iter().enumerate().map(|(i, date)| {
        let mut client = clients[i % clients.len()].clone();
        let mut req = declare(&r, "P03");
        req.date_of_birth = date.clone();
        async move { client.verify_identity(req).await }
    });
    let answers = futures::future::join_all(calls).await;
    let verdicts = answers.iter().filter(|a| a.is_ok()).count();
    assert!(
        (1..=5).contains(&verdicts),
        "{verdicts} verdicts from a burst of {} over two nodes",
        dates.len()
    );
    for a in &answers {
        if let Err(e) = a {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
    for i in [0, 2] {
        let client = &mut clients[i];
        let mut req = declare(&r, "P03");
        req.date_of_birth = truth.clone();
        let e = client.verify_identity(req).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::ResourceExhausted,
            "the true date is refused"
        );
    }
    // The ministry's wrong tries on node b add to the portal's on node a: ten NO_MATCH
    // answers from two clients lock the citizen on every node.
    let wrong = &search_of(&r)[..5];
    assert_eq!(
        try_dates(&mut b.client("ministry").await, &r, wrong).await,
        (5, 0, 0)
    );
    let e = a
        .client("ministry")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert!(e.message().contains("verification locked"), "{e:?}");
    // An operator on node a lifts it for the whole deployment.
    let lifted =
        popgw::proto::gateway::limits_client::LimitsClient::new(a.channel("operator").await)
            .unlock(pb::UnlockRequest {
                personal_id: r.personal_id.clone(),
                case_id: "TICKET-9".into(),
            })
            .await
            .unwrap();
    assert!(lifted.get_ref().national);
    let ok = b
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();
    assert_eq!(ok.get_ref().verdict(), pb::Verdict::Match);

    let client = async_nats::connect(common::NATS).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    stream.remove().await;
}

/// The documented fallback: a national count that cannot be reached leaves each node
/// counting alone — answers go on, the record says so, the metric shows 0.
#[tokio::test]
async fn an_unreachable_national_count_leaves_the_node_counting_alone() {
    let stream = common::TestStream::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = stream
        .gateway_as(&stream.node, &url, |c| {
            c.limits.national = popgw::config::NationalKind::Nats;
            if let Some(w) = &mut c.audit.witness {
                w.required_at_start = false;
            }
        })
        .await;
    let r = gw.living().clone();
    let dates = search_of(&r);
    let (no_match, refused, _) = try_dates(&mut gw.client("portal").await, &r, &dates[..7]).await;
    assert_eq!(
        (no_match, refused),
        (5, 2),
        "this node's allowance still holds"
    );
    let (_, scrape) = gw.admin_get("/metrics").await;
    assert!(
        scrape.lines().any(|l| l == "popgw_limits_national_up 0"),
        "{scrape}"
    );
    let records = gw
        .audit_records(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            outcome: "NO_MATCH".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(records.len(), 5);
    assert!(
        records
            .iter()
            .all(|x| x.detail.contains("counted on this node only")),
        "{records:?}"
    );
    // An operator's unlock still lifts this node's count, and says the national one
    // was not reached.
    let lifted =
        popgw::proto::gateway::limits_client::LimitsClient::new(gw.channel("operator").await)
            .unlock(pb::UnlockRequest {
                personal_id: r.personal_id.clone(),
                case_id: "TICKET-3".into(),
            })
            .await
            .unwrap();
    assert_eq!(lifted.get_ref().failures_forgotten, 5);
    assert!(!lifted.get_ref().national);
}
