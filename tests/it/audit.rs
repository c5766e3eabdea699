//! The audit log seen from outside: one record per request whatever its outcome,
//! pseudonymous subjects, operator-only access, fail closed on write failure.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{declare, TestGateway};
use popgw::proto::gateway as pb;
use tokio_stream::StreamExt;
use tonic::Code;

/// The request id of an answer or a refusal.
fn request_id<T>(
    r: &Result<tonic::Response<T>, tonic::Status>,
    ok: impl Fn(&T) -> String,
) -> String {
    match r {
        Ok(resp) => ok(resp.get_ref()),
        Err(status) => status
            .metadata()
            .get("x-request-id")
            .expect("every refusal carries its request id")
            .to_str()
            .unwrap()
            .to_string(),
    }
}

async fn all_records(gw: &TestGateway) -> Vec<pb::AuditRecord> {
    let mut op = gw.audit_client("operator").await;
    op.query(pb::AuditQueryRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_outcome_leaves_exactly_one_record() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    let mut ministry = gw.client("ministry").await;
    let vid = |v: &pb::VerifyIdentityResponse| v.request_id.clone();
    let mut expected: Vec<(String, &str, &str)> = Vec::new();

    let res = portal.verify_identity(declare(&r, "P03")).await;
    expected.push((request_id(&res, vid), "MATCH", "OK"));
    let mut wrong = declare(&r, "P03");
    wrong.full_name = "Người Khác".into();
    let res = portal.verify_identity(wrong).await;
    expected.push((request_id(&res, vid), "NO_MATCH", "OK"));
    let mut bad = declare(&r, "P03");
    bad.date_of_birth = "1990-02-30".into();
    let res = portal.verify_identity(bad).await;
    expected.push((
        request_id(&res, vid),
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
    ));
    let res = ministry.verify_identity(declare(&r, "P09")).await;
    expected.push((
        request_id(&res, vid),
        "PERMISSION_DENIED",
        "PERMISSION_DENIED",
    ));
    let res = gw
        .client("stranger")
        .await
        .verify_identity(declare(&r, "P03"))
        .await;
    expected.push((
        request_id(&res, vid),
        "PERMISSION_DENIED",
        "PERMISSION_DENIED",
    ));
    let res = ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P16".into(),
            case_id: "HS-9".into(),
        })
        .await;
    let disclosed = res.as_ref().unwrap().get_ref().disclosed_fields.clone();
    expected.push((
        request_id(&res, |c| c.request_id.clone()),
        "DISCLOSED",
        "OK",
    ));

    let records = all_records(&gw).await;
    for (id, outcome, code) in &expected {
        let found: Vec<_> = records.iter().filter(|x| &x.request_id == id).collect();
        assert_eq!(
            found.len(),
            1,
            "request {id} ({outcome}) must have exactly one record"
        );
        assert_eq!(found[0].outcome, *outcome);
        assert_eq!(found[0].code, *code);
    }
    let get = records
        .iter()
        .find(|x| x.request_id == expected[5].0)
        .unwrap();
    assert_eq!(
        get.fields, disclosed,
        "the record names the fields disclosed"
    );
    assert_eq!(get.procedure, "P16");
    assert_eq!(
        get.case_id,
        gw.gateway.pseudonyms.case_pseudonym("HS-9").as_str()
    );
    assert_eq!(get.client, popgw::pki::MINISTRY_ID);
    assert_eq!(get.rule, "EXACT");
    let no_match = records
        .iter()
        .find(|x| x.request_id == expected[1].0)
        .unwrap();
    assert_eq!(no_match.detail, "FIELDS_DIFFER; compared=id,name,dob,sex");
    let matched = records
        .iter()
        .find(|x| x.request_id == expected[0].0)
        .unwrap();
    assert_eq!(matched.detail, "compared=id,name,dob,sex");

    // No personal data in the log: neither the id nor the name, anywhere.
    for rec in &records {
        assert!(
            !rec.json.contains(&r.personal_id),
            "personal id in clear in the audit log"
        );
        assert!(!rec.json.contains(&r.full_name));
        assert!(!rec.json.contains(&r.date_of_birth));
    }

    // An operator holding the key can still search by personal id.
    let mut op = gw.audit_client("operator").await;
    let by_subject: Vec<_> = op
        .query(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let ids: Vec<_> = by_subject.iter().map(|x| x.request_id.clone()).collect();
    for (id, outcome, _) in &expected {
        // Refused attempts on this citizen are found too ("who tried to look at me").
        assert!(ids.contains(id), "query by personal id must find {outcome}");
    }

    // A P01 lookup by the old 9-digit id is found by the citizen's 12-digit id.
    let old = gw
        .find(|p| {
            p.date_of_death.is_empty()
                && p.date_of_disappearance.is_empty()
                && !p.old_id_number.is_empty()
        })
        .clone();
    let mut req = declare(&old, "P01");
    req.personal_id = old.old_id_number.clone();
    let answer = portal.verify_identity(req).await.unwrap().into_inner();
    let found: Vec<_> = op
        .query(pb::AuditQueryRequest {
            personal_id: old.personal_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert!(found.iter().any(|x| x.request_id == answer.request_id));
}

#[tokio::test]
async fn an_unreachable_registry_answers_could_not_check_and_is_recorded() {
    let gw = TestGateway::builder()
        .registry(Arc::new(common::FakeRegistry::Down))
        .start()
        .await;
    let r = gw.population[0].clone();
    let res = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await;
    let status = res.as_ref().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "never a false NO_MATCH");
    assert!(status.message().contains("could not check"));
    let id = request_id(&res, |v| v.request_id.clone());
    let records = all_records(&gw).await;
    let rec: Vec<_> = records.iter().filter(|x| x.request_id == id).collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].code, "UNAVAILABLE");
}

#[tokio::test]
async fn only_operators_read_the_log_and_trying_is_recorded() {
    // Every try one by one (beyond a few a second they would be counted into a summary:
    // `a_refusal_flood_is_counted_not_written_one_by_one`).
    let gw = TestGateway::builder()
        .config(|c| c.limits.refusals_recorded_per_second = 100)
        .start()
        .await;
    for who in ["portal", "ministry", "stranger"] {
        let mut c = gw.audit_client(who).await;
        let e = c.query(pb::AuditQueryRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
        let e = c.head(pb::AuditHeadRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
        let e = c
            .watch(pb::AuditWatchRequest { from_seq: 0 })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
    }
    let records = all_records(&gw).await;
    let refused: Vec<_> = records
        .iter()
        .filter(|x| x.rpc.starts_with("AuditLog.") && x.code == "PERMISSION_DENIED")
        .collect();
    assert_eq!(refused.len(), 9);
}

#[tokio::test]
async fn watch_tails_live_records_and_head_is_signed() {
    let gw = TestGateway::builder()
        .config(|c| c.audit.checkpoint_every_records = 1)
        .start()
        .await;
    let r = gw.living().clone();
    let mut op = gw.audit_client("operator").await;
    let mut live = op
        .watch(pb::AuditWatchRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let answer = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    while let Some(rec) = live.next().await {
        let rec = rec.unwrap();
        seen.insert(rec.request_id.clone(), rec.outcome.clone());
        if rec.request_id == answer.request_id {
            break;
        }
    }
    assert_eq!(
        seen.get(&answer.request_id).map(String::as_str),
        Some("MATCH")
    );

    let head = op.head(pb::AuditHeadRequest {}).await.unwrap().into_inner();
    assert!(head.seq >= 1);
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &hex::decode(&head.public_key).unwrap().try_into().unwrap(),
    )
    .unwrap();
    let checkpoints = popgw::audit::read_checkpoints(gw.gateway.audit.dir()).unwrap();
    assert!(checkpoints
        .iter()
        .any(|c| c.seq == head.seq && c.signature == head.signature));
    assert!(popgw::audit::verify_dir(gw.gateway.audit.dir(), Some(&key)).is_ok());
}

#[tokio::test]
async fn verify_answers_intact_then_names_the_tampered_record_and_is_recorded() {
    let gw = TestGateway::builder()
        .config(|c| c.audit.checkpoint_every_records = 1)
        .start()
        .await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    for _ in 0..3 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    let mut op = gw.audit_client("operator").await;
    let ok = op
        .verify(pb::AuditVerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ok.intact, "{ok:?}");
    assert!(ok.records >= 3 && ok.last_seq >= 3, "{ok:?}");
    assert_eq!(ok.node, gw.gateway.audit.node());

    // An insider who can write the folder changes one recorded outcome.
    let segment = common::tamper_with_a_match(gw.gateway.audit.dir());

    let broken = op
        .verify(pb::AuditVerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.intact, "{broken:?}");
    assert!(broken.failed_seq >= 1);
    assert_eq!(
        broken.failed_file,
        segment.file_name().unwrap().to_string_lossy()
    );
    assert!(!broken.failure.is_empty());

    // Only operators may, and every verification is on the record with its verdict.
    let e = gw
        .audit_client("portal")
        .await
        .verify(pb::AuditVerifyRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let records = gw
        .audit_records(pb::AuditQueryRequest {
            from_unix_ms: 0,
            ..Default::default()
        })
        .await;
    let verifications: Vec<_> = records
        .iter()
        .filter(|x| x.rpc == "AuditLog.Verify")
        .map(|x| x.outcome.as_str())
        .collect();
    assert_eq!(verifications, ["INTACT", "BROKEN", "PERMISSION_DENIED"]);
}

#[tokio::test]
async fn a_failed_audit_write_fails_closed() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut ministry = gw.client("ministry").await;
    assert!(ministry.verify_identity(declare(&r, "P03")).await.is_ok());
    gw.gateway.audit.inject_io_error();
    let e = ministry
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("audit"), "{}", e.message());
    // Nothing disclosed after the failure either: records and verdicts alike.
    let e = ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HS-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(gw.gateway.audit.is_failed());
    assert!(gw.gateway.metrics.audit_failures.get() >= 2);
    // Counted as answered: the refusal each caller got, not the verdict it never saw.
    let (_, scrape) = gw.admin_get("/metrics").await;
    let verifies = |code: &str| -> u64 {
        scrape
            .lines()
            .filter(|l| {
                l.starts_with("popgw_requests_total{")
                    && l.contains("rpc=\"VerifyIdentity\"")
                    && l.contains(&format!("code=\"{code}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(verifies("OK"), 1, "{scrape}");
    assert_eq!(verifies("UNAVAILABLE"), 1, "{scrape}");
    // Health tells load balancers to stop sending requests this node can only refuse.
    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel("portal").await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "popgw.v1.IdentityGateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
}

#[tokio::test]
async fn shutdown_ends_live_watchers_and_signs_a_final_checkpoint() {
    let mut gw = TestGateway::start().await;
    let r = gw.living().clone();
    gw.client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();
    let mut op = gw.audit_client("operator").await;
    let mut live = op
        .watch(pb::AuditWatchRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(live.next().await.unwrap().is_ok());
    // An operator still tailing must not hold the gateway up.
    tokio::time::timeout(std::time::Duration::from_secs(10), gw.stop())
        .await
        .expect("shutdown finished with a watcher attached");
    let dir = gw.gateway.audit.dir().to_path_buf();
    let report = popgw::audit::verify_dir(&dir, None).unwrap();
    assert_eq!(
        report.unsigned_tail, 0,
        "the final checkpoint covers every record"
    );
}

#[tokio::test]
async fn each_stream_item_has_its_own_record() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut bad = declare(&r, "P03");
    bad.personal_id = "12".into();
    let items = vec![
        pb::VerifyIdentityStreamRequest {
            correlation_id: "a".into(),
            request: Some(declare(&r, "P03")),
        },
        pb::VerifyIdentityStreamRequest {
            correlation_id: "b".into(),
            request: Some(bad),
        },
        pb::VerifyIdentityStreamRequest {
            correlation_id: "c".into(),
            request: Some(declare(&r, "P09")),
        },
    ];
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
    assert_eq!(answers.len(), 3);
    let records: Vec<_> = all_records(&gw)
        .await
        .into_iter()
        .filter(|x| x.rpc == "VerifyIdentityStream")
        .collect();
    let outcomes: Vec<_> = records.iter().map(|x| x.outcome.as_str()).collect();
    assert_eq!(outcomes, ["MATCH", "INVALID_ARGUMENT", "MATCH"]);
    use pb::verify_identity_stream_response::Result as R;
    let Some(R::Response(first)) = &answers[0].result else {
        panic!("first item should verify")
    };
    assert_eq!(records[0].request_id, first.request_id);
}

#[tokio::test]
async fn disclosures_about_relatives_are_found_by_the_relatives_id() {
    let gw = TestGateway::start().await;
    let r = gw
        .find(|p| {
            p.spouse.as_ref().is_some_and(|s| !s.personal_id.is_empty())
                && p.household
                    .as_ref()
                    .is_some_and(|h| h.relation_to_head != "head")
        })
        .clone();
    let spouse_id = r.spouse.as_ref().unwrap().personal_id.clone();
    let head_id = r.household.as_ref().unwrap().head_personal_id.clone();
    let mut ministry = gw.client("ministry").await;
    let citizen = ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P16".into(),
            case_id: "HT-7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        citizen.citizen.unwrap().spouse.unwrap().personal_id,
        spouse_id
    );
    let household = ministry
        .get_household(pb::GetHouseholdRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HT-8".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let mut op = gw.audit_client("operator").await;
    let about = |id: String| {
        let mut op = op.clone();
        async move {
            op.query(pb::AuditQueryRequest {
                personal_id: id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap()
        }
    };
    let spouse_view = about(spouse_id.clone()).await;
    assert!(
        spouse_view
            .iter()
            .any(|x| x.request_id == citizen.request_id),
        "the spouse can learn their data was disclosed"
    );
    let head_view = about(head_id.clone()).await;
    assert!(head_view
        .iter()
        .any(|x| x.request_id == household.request_id));
    let all = all_records(&gw).await;
    assert!(
        all.iter()
            .all(|x| !x.json.contains(&spouse_id) && !x.json.contains(&head_id)),
        "pseudonyms only"
    );
    let _ = &mut op;
}

/// The VerifyIdentity records under `personal_id`, once there is one (at most 2 s).
async fn verifications_recorded(gw: &TestGateway, personal_id: &str) -> Vec<pb::AuditRecord> {
    let mut found = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        found = gw
            .audit_records(pb::AuditQueryRequest {
                personal_id: personal_id.to_string(),
                ..Default::default()
            })
            .await;
        // (The operator's own queries are recorded under this subject too.)
        found.retain(|x| x.rpc == "VerifyIdentity");
        if !found.is_empty() {
            break;
        }
    }
    found
}

#[tokio::test]
async fn a_request_its_client_gave_up_on_still_leaves_its_record() {
    let gw = TestGateway::builder()
        .registry(Arc::new(common::FakeRegistry::Slow(
            std::time::Duration::from_millis(400),
        )))
        .start()
        .await;
    let r = gw.population[0].clone();
    let mut req = tonic::Request::new(declare(&r, "P03"));
    req.set_timeout(std::time::Duration::from_millis(50));
    let e = gw
        .client("portal")
        .await
        .verify_identity(req)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // The request goes on to its end on the server and is recorded.
    let found = verifications_recorded(&gw, &r.personal_id).await;
    assert_eq!(
        found.len(),
        1,
        "exactly one record for the abandoned request"
    );
    // The upstream call had the caller's deadline (less a margin): it gave up in time and
    // the record says so, rather than a verdict nobody received.
    assert_eq!(found[0].outcome, "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn a_request_whose_caller_hangs_up_runs_to_its_record() {
    // The request runs in the task hyper gives its stream; a caller that resets the call
    // (or drops the connection) mid-request drops that task's future, and the rest of the
    // request must still run — here, the registry's answer 400 ms later, then the record.
    let gw = TestGateway::builder()
        .registry(Arc::new(common::FakeRegistry::Slow(
            std::time::Duration::from_millis(400),
        )))
        .start()
        .await;
    let r = gw.population[0].clone();
    let mut client = gw.client("portal").await;
    let declared = declare(&r, "P03");
    let call = tokio::spawn(async move { client.verify_identity(declared).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let found = verifications_recorded(&gw, &r.personal_id).await;
    assert_eq!(found.len(), 1, "exactly one record for the hung-up call");
    assert_eq!(
        found[0].code, "OK",
        "the request ran to its answer: {found:?}"
    );
}

#[tokio::test]
async fn a_watcher_that_stops_reading_does_not_hold_up_shutdown() {
    let mut gw = TestGateway::builder()
        .config(|c| c.shutdown_grace_ms = 500)
        .start()
        .await;
    let r = gw.living().clone();
    // An operator client with a small HTTP/2 window, so that a reader that reads nothing
    // soon pushes back on the gateway.
    let certs = popgw::client::ClientCerts::dev(&gw.certs, "operator");
    let tls = popgw::tls::client_tls(&certs.ca, &certs.cert, &certs.key, "localhost").unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", gw.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .initial_stream_window_size(Some(8 * 1024))
            .initial_connection_window_size(Some(8 * 1024))
            .connect()
            .await
            .unwrap();
    let mut op = popgw::proto::gateway::audit_log_client::AuditLogClient::new(channel);
    let mut live = op
        .watch(pb::AuditWatchRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    // Enough records to fill the watcher's buffer and HTTP/2 window while it reads nothing.
    let portal = gw.client("portal").await;
    let calls: Vec<_> = (0..600)
        .map(|_| {
            let mut c = portal.clone();
            let req = declare(&r, "P03");
            tokio::spawn(async move { c.verify_identity(req).await.is_ok() })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap());
    }
    tokio::time::timeout(std::time::Duration::from_secs(15), gw.stop())
        .await
        .expect("shutdown finished although the watcher never read");
    // The watcher got what fit, then an end or an error: never a hang.
    let mut n = 0;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(std::time::Duration::from_secs(5), live.next()).await
    {
        n += 1;
    }
    assert!(n >= 1);
}

#[tokio::test]
async fn a_refused_request_keeps_the_claimed_procedure_and_dossier() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    // An unknown procedure: INVALID_ARGUMENT, recorded with the code it claimed, marked.
    let mut unknown = declare(&r, "P99");
    unknown.case_id = "HS-UNKNOWN-1".into();
    let e = gw
        .client("portal")
        .await
        .verify_identity(unknown)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An RPC the portal is not granted: PERMISSION_DENIED, with procedure and dossier.
    let e = gw
        .client("portal")
        .await
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P16".into(),
            case_id: "HS-UNGRANTED-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A dossier number holding the personal id: refused, and never written.
    let mut leaky = declare(&r, "P03");
    leaky.case_id = format!("HS-{}", r.personal_id);
    let e = gw
        .client("portal")
        .await
        .verify_identity(leaky)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("case_id"), "{e:?}");
    // A procedure code that could hold an id is not written either.
    let mut long = declare(&r, "P03");
    long.procedure_code = r.personal_id.clone();
    assert!(gw
        .client("portal")
        .await
        .verify_identity(long)
        .await
        .is_err());

    let records = all_records(&gw).await;
    let about: Vec<_> = records
        .iter()
        .filter(|x| x.rpc == "VerifyIdentity" || x.rpc == "GetCitizen")
        .map(|x| (x.procedure.clone(), x.case_id.clone(), x.code.clone()))
        .collect();
    let case = |c: &str| gw.gateway.pseudonyms.case_pseudonym(c).into_string();
    let s = |x: &str| x.to_string();
    assert_eq!(
        about,
        [
            (s("?P99"), case("HS-UNKNOWN-1"), s("INVALID_ARGUMENT")),
            (s("P16"), case("HS-UNGRANTED-2"), s("PERMISSION_DENIED")),
            (
                s("P03"),
                case(&format!("HS-{}", r.personal_id)),
                s("INVALID_ARGUMENT")
            ),
            (s("?"), case("HS-2026-000123"), s("INVALID_ARGUMENT")),
        ]
    );
    assert!(
        records.iter().all(|x| !x.json.contains(&r.personal_id)),
        "the id never appears in clear"
    );
}

#[tokio::test]
async fn a_stalled_audit_write_fails_closed_and_stops_serving() {
    let gw = TestGateway::builder()
        .config(|c| c.audit.append_timeout_ms = 300)
        .start()
        .await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    assert!(portal.verify_identity(declare(&r, "P03")).await.is_ok());
    // The disk hangs for 2 s on the next write: the request must not wait for it.
    gw.gateway
        .audit
        .inject_stall(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let e = portal
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not durable"), "{}", e.message());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "answered before the disk came back"
    );
    // Failed closed: the next request is refused at once, and health says so.
    let e = portal
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel("portal").await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "popgw.v1.IdentityGateway".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
}

#[tokio::test]
async fn operator_calls_are_limited_and_a_query_is_capped() {
    let gw = TestGateway::builder()
        .config(|c| {
            c.limits.max_operator_calls = 2;
            c.limits.max_query_results = 3;
        })
        .start()
        .await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    for _ in 0..5 {
        portal.verify_identity(declare(&r, "P03")).await.unwrap();
    }
    // A query asking for everything gets the server's cap.
    let capped = gw.audit_records(pb::AuditQueryRequest::default()).await;
    assert_eq!(capped.len(), 3);
    // Two watches hold both operator slots: a third call is refused at once.
    let mut op = gw.audit_client("operator").await;
    let w1 = op
        .watch(pb::AuditWatchRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let w2 = op
        .watch(pb::AuditWatchRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let e = op
        .query(pb::AuditQueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // One watcher leaves: its slot comes back.
    drop(w1);
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if op.query(pb::AuditQueryRequest::default()).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the slot was given back");
    drop(w2);
}

#[tokio::test]
async fn a_request_whose_task_panics_answers_internal_and_leaves_its_record() {
    let gw = TestGateway::builder()
        .registry(Arc::new(common::FakeRegistry::Panicking))
        .start()
        .await;
    let r = gw.living().clone();
    let e = gw
        .client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert_eq!(
        e.message(),
        "request failed (internal error)",
        "a fixed message"
    );
    let records = gw
        .audit_records(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            ..Default::default()
        })
        .await;
    assert!(
        records
            .iter()
            .any(|x| x.rpc == "VerifyIdentity" && x.code == "INTERNAL"),
        "{records:?}"
    );
    // The gateway goes on serving.
    let listed = gw
        .client("portal")
        .await
        .list_procedures(pb::ListProceduresRequest {})
        .await;
    assert!(listed.is_ok());
}

/// Issue 25: dossier numbers are free text, and portals put personal data in them — the
/// subject's id in any spacing or in full-width digits, another person's id, a name with
/// a birth date. None reaches the log (nor so the witness or the index) in clear: the
/// record holds the dossier's keyed pseudonym, and a query by the exact number finds it.
#[tokio::test]
async fn no_dossier_number_reaches_the_log_in_clear() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let other = gw
        .find(|c| c.personal_id != r.personal_id && c.personal_id.len() == 12)
        .personal_id
        .clone();
    let id = &r.personal_id;
    let spaced = format!("{} {} {}", &id[..4], &id[4..8], &id[8..]);
    let dashed = format!("{}-{}-{}", &id[..4], &id[4..8], &id[8..]);
    let full_width: String = id
        .chars()
        .map(|c| char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap())
        .collect();
    let dossiers = [
        dashed.clone(),
        spaced.clone(),
        format!("HS-{full_width}"),
        format!("HS-{other}"),
        "NGUYỄN VĂN AN 1990-01-01".to_string(),
    ];
    let mut portal = gw.client("portal").await;
    for dossier in &dossiers {
        let mut req = declare(&r, "P03");
        req.case_id = dossier.clone();
        // Answered or refused (a dossier holding the subject's own id is refused): either
        // way recorded.
        let _ = portal.verify_identity(req).await;
    }
    let records = all_records(&gw).await;
    for x in &records {
        for clear in [
            id.as_str(),
            other.as_str(),
            "NGUY",
            "1990-01-01",
            &dashed,
            &spaced,
        ] {
            assert!(!x.json.contains(clear), "{clear} in {}", x.json);
        }
        assert!(!x.json.contains(&full_width), "{}", x.json);
    }
    // Each dossier is found by its exact number (full-width digits as their ASCII form).
    for dossier in [format!("HS-{other}"), format!("HS-{id}"), dashed] {
        let found = gw
            .audit_records(pb::AuditQueryRequest {
                case_id: dossier.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(found.len(), 1, "{dossier}: {found:?}");
        assert_eq!(found[0].case_id.len(), 32);
    }
}

/// Issue 25: without an index, access reports took the operators' permits — 16 report
/// loops left operators one Query in ten. Reports now have a pool of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_reports_never_take_an_operators_slot() {
    use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
    let gw = TestGateway::builder()
        .config(|c| c.limits.max_operator_calls = 1)
        .start()
        .await;
    let r = gw.living().clone();
    let mut channels = Vec::new();
    for _ in 0..6 {
        channels.push(gw.channel("citizen").await);
    }
    let reports: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            let id = r.personal_id.clone();
            async move {
                let mut citizen = CitizenAccessClient::new(channel);
                for _ in 0..15 {
                    let answer = citizen
                        .access_report(pb::AccessReportRequest {
                            personal_id: id.clone(),
                            ..Default::default()
                        })
                        .await;
                    if let Err(e) = answer {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    }
                }
            }
        })
        .collect();
    let reports = tokio::spawn(futures::future::join_all(reports));
    let mut operator = gw.audit_client("operator").await;
    for _ in 0..15 {
        let stream = operator
            .query(pb::AuditQueryRequest {
                limit: 5,
                ..Default::default()
            })
            .await;
        assert!(stream.is_ok(), "{stream:?}");
        let _: Vec<_> = stream.unwrap().into_inner().collect().await;
    }
    reports.await.unwrap();
}

/// An audit folder written by popgw before the record's fields became types (issue 26:
/// the demo gateway of commit c959ac2, nine calls — MATCH, NO_MATCH, disclosures with
/// related people, unknown and unreadable procedure codes, an audit query, an access
/// report) verifies, continues under the same keys, and a person keeps their pseudonym:
/// a query by id finds the records written before and after.
#[tokio::test]
async fn a_folder_written_before_the_typed_entries_verifies_and_continues() {
    use popgw::audit::{self, AuditConfig, AuditEntry, AuditLog, Filter, Outcome, Pseudonymizer};
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit-before-typed-entries");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir(&dir).unwrap();
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let to = if name.ends_with(".key") {
            tmp.path().join(&name)
        } else {
            dir.join(&name)
        };
        std::fs::copy(&f, to).unwrap();
    }
    let segment = "audit-00000000000000000001.log";
    let written = std::fs::read(dir.join(segment)).unwrap();
    let before = audit::verify_dir(&dir, None).unwrap();
    assert_eq!(before.records, 9);
    let old = audit::read_records(&dir).unwrap();
    let words: Vec<(&str, &str, &str)> = old
        .iter()
        .map(|r| {
            (
                r.body.rpc.as_str(),
                r.body.procedure.as_str(),
                r.body.outcome.as_str(),
            )
        })
        .collect();
    assert!(
        words.contains(&("GetCitizen", "P16", "DISCLOSED")),
        "{words:?}"
    );
    assert!(
        words.contains(&("VerifyIdentity", "?P99", "INVALID_ARGUMENT")),
        "{words:?}"
    );
    assert!(
        words.contains(&("VerifyIdentity", "?", "INVALID_ARGUMENT")),
        "{words:?}"
    );

    let key = audit::load_or_create_signing_key(&tmp.path().join("audit-signing.key")).unwrap();
    let pseudonyms =
        Pseudonymizer::open_for_log(&tmp.path().join("audit-pseudonym.key"), &dir).unwrap();
    let log = AuditLog::open(AuditConfig::new(&dir, "node-1"), key).unwrap();
    let subject = pseudonyms.pseudonym("001038047646");
    log.append(AuditEntry {
        request_id: "after".into(),
        client: popgw::pki::PORTAL_ID.into(),
        subject: Some(subject.clone()),
        code: Some(Code::Ok),
        ..AuditEntry::new(popgw::policy::Rpc::VerifyIdentity, Outcome::Match)
    })
    .await
    .unwrap();
    log.shutdown().await;

    let after = audit::verify_dir(&dir, None).unwrap();
    assert_eq!(after.records, 10, "{after:?}");
    // What was written is left as it was; the new record follows it in a new segment.
    assert_eq!(std::fs::read(dir.join(segment)).unwrap(), written);
    let filter = Filter {
        subject: Some(subject),
        ..Filter::default()
    };
    let found: Vec<String> = audit::read_records(&dir)
        .unwrap()
        .into_iter()
        .filter(|r| filter.accepts(&r.body))
        .map(|r| r.body.request_id)
        .collect();
    assert!(found.len() >= 8, "{found:?}");
    assert_eq!(found.last().map(String::as_str), Some("after"));
}
