//! The IdentityGateway over real mutual TLS: verdicts, details, minimisation,
//! deny-by-default, TLS refusals, bad input, the stream.

use crate::common;

use common::{declare, TestGateway};
use popgw::proto::gateway as pb;
use popgw::proto::registry::Sex;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn declared_identity_matches() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    let answer = portal
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), pb::Verdict::Match);
    assert_eq!(answer.request_id.len(), 32);
    // The portal is not granted details: a bare verdict.
    assert!(answer.details.is_none());

    // Same citizen, declared in lower case NFD with sloppy spaces: still MATCH (EXACT folds those).
    use unicode_normalization::UnicodeNormalization;
    let mut req = declare(&r, "P03");
    req.full_name = format!(
        "  {}  ",
        r.full_name
            .to_lowercase()
            .nfd()
            .collect::<String>()
            .replace(' ', "  ")
    );
    let answer = portal.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), pb::Verdict::Match);
}

#[tokio::test]
async fn each_no_match_reason_is_shown_only_to_clients_granted_details() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut ministry = gw.client("ministry").await;
    let mut portal = gw.client("portal").await;

    let reason = |a: &pb::VerifyIdentityResponse| a.details.as_ref().map(|d| d.reason());

    // Not found: a valid id nobody has.
    let mut req = declare(&r, "P03");
    let mut digits: Vec<u8> = r.personal_id.clone().into_bytes();
    digits[11] = if digits[11] == b'9' {
        b'0'
    } else {
        digits[11] + 1
    };
    let mut other = String::from_utf8(digits).unwrap();
    while gw.population.iter().any(|p| p.personal_id == other) {
        let n: u64 = other[6..].parse::<u64>().unwrap() + 7;
        other = format!("{}{:06}", &other[..6], n % 1_000_000);
    }
    req.personal_id = other;
    let a = ministry
        .verify_identity(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.verdict(), pb::Verdict::NoMatch);
    assert_eq!(reason(&a), Some(pb::NoMatchReason::NotFound));
    let a = portal.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(a.verdict(), pb::Verdict::NoMatch);
    assert!(a.details.is_none(), "portal must not learn why");

    // Deceased: everything right, but the citizen is dead.
    let dead = gw.find(|p| !p.date_of_death.is_empty()).clone();
    let a = ministry
        .verify_identity(declare(&dead, "P15"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.verdict(), pb::Verdict::NoMatch);
    assert_eq!(reason(&a), Some(pb::NoMatchReason::Deceased));

    // Fields differ: a wrong day of birth, same year (so the id stays consistent).
    let mut req = declare(&r, "P03");
    let day: u32 = r.date_of_birth[8..10].parse().unwrap();
    req.date_of_birth = format!(
        "{}{:02}",
        &r.date_of_birth[..8],
        if day == 1 { 2 } else { day - 1 }
    );
    let a = ministry.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(reason(&a), Some(pb::NoMatchReason::FieldsDiffer));
    let d = a.details.unwrap();
    assert_eq!(d.date_of_birth(), pb::FieldResult::Mismatch);
    assert_eq!(d.full_name(), pb::FieldResult::Match);
    assert_eq!(d.sex(), pb::FieldResult::Match);

    // Id inconsistent with the declared sex, and with the declared birth year.
    let mut req = declare(&r, "P03");
    req.sex = if r.sex == Sex::Male as i32 {
        Sex::Female as i32
    } else {
        Sex::Male as i32
    };
    let a = ministry.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(reason(&a), Some(pb::NoMatchReason::IdInconsistent));
    let mut req = declare(&r, "P03");
    let year: i32 = r.date_of_birth[..4].parse().unwrap();
    req.date_of_birth =
        format!("{}{}", year - 1, &r.date_of_birth[4..]).replace("-02-29", "-02-28");
    let a = ministry
        .verify_identity(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&a), Some(pb::NoMatchReason::IdInconsistent));
    let a = portal.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(a.verdict(), pb::Verdict::NoMatch);
    assert!(a.details.is_none());
}

#[tokio::test]
async fn name_rule_is_the_procedures_not_the_callers() {
    let gw = TestGateway::start().await;
    // A citizen whose name has diacritics (almost every one).
    let r = gw
        .find(|p| {
            p.date_of_death.is_empty() && p.date_of_birth.len() == 10 && !p.full_name.is_ascii()
        })
        .clone();
    use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};
    let plain: String = r
        .full_name
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| if c == 'Đ' { 'D' } else { c })
        .collect();
    let mut ministry = gw.client("ministry").await;
    // P12 (criminal record) is EXACT: the unaccented name does not verify.
    let mut req = declare(&r, "P12");
    req.full_name = plain.clone();
    let a = ministry.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(a.verdict(), pb::Verdict::NoMatch);
    assert_eq!(a.details.unwrap().rule(), pb::MatchingRule::Exact);
    // P21 (tax registration) is TOLERANT: it does.
    let mut req = declare(&r, "P21");
    req.full_name = plain;
    let a = ministry.verify_identity(req).await.unwrap().into_inner();
    assert_eq!(a.verdict(), pb::Verdict::Match);
    assert_eq!(a.details.unwrap().rule(), pb::MatchingRule::Tolerant);
}

#[tokio::test]
async fn year_only_birth_dates_and_old_ids() {
    let gw = TestGateway::start().await;
    let r = gw
        .find(|p| p.date_of_death.is_empty() && p.date_of_birth.len() == 4)
        .clone();
    let mut portal = gw.client("portal").await;
    let a = portal
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.verdict(), pb::Verdict::Match);

    let old = gw
        .find(|p| p.date_of_death.is_empty() && !p.old_id_number.is_empty())
        .clone();
    let mut req = declare(&old, "P01");
    req.personal_id = old.old_id_number.clone();
    let a = portal
        .verify_identity(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.verdict(), pb::Verdict::Match);
    // Only P01 accepts the old id.
    req.procedure_code = "P03".into();
    let e = portal.verify_identity(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("personal_id:"), "{}", e.message());
}

#[tokio::test]
async fn get_citizen_discloses_only_the_profile_and_the_grant() {
    let gw = TestGateway::start().await;
    let mut ministry = gw.client("ministry").await;
    let catalogue = popgw::catalogue::Catalogue::builtin();
    let r = gw
        .find(|p| p.spouse.is_some() && p.date_of_death.is_empty())
        .clone();
    for code in ["P03", "P16", "P21", "P12"] {
        let a = ministry
            .get_citizen(pb::GetCitizenRequest {
                personal_id: r.personal_id.clone(),
                procedure_code: code.into(),
                case_id: "HS-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let profile = &catalogue.get(code).unwrap().readable_fields;
        let (mut got, mut want) = (a.disclosed_fields.clone(), profile.clone());
        got.sort();
        want.sort();
        assert_eq!(got, want, "{code}");
        let c = serde_json::to_value(a.citizen.unwrap()).unwrap();
        let present: Vec<String> = c.as_object().unwrap().keys().cloned().collect();
        for key in &present {
            let snake: String = key
                .chars()
                .flat_map(|ch| {
                    if ch.is_uppercase() {
                        vec!['_', ch.to_ascii_lowercase()]
                    } else {
                        vec![ch]
                    }
                })
                .collect();
            assert!(
                profile.contains(&snake),
                "{code}: {snake} disclosed but not in profile"
            );
        }
        assert!(
            !present.contains(&"ethnicity".to_string())
                && !present.contains(&"religion".to_string())
        );
    }
    // A client whose policy narrows the fields gets the intersection.
    let mut limited = gw.client("limited").await;
    let a = limited
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P21".into(),
            case_id: "HS-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let p21 = &catalogue.get("P21").unwrap().readable_fields;
    let expected: Vec<String> = p21
        .iter()
        .filter(|f| ["full_name", "date_of_birth", "permanent_residence"].contains(&f.as_str()))
        .cloned()
        .collect();
    assert_eq!(a.disclosed_fields, expected);
    assert!(
        a.citizen.unwrap().personal_id.is_empty() || expected.contains(&"personal_id".to_string())
    );
}

#[tokio::test]
async fn household_only_where_the_profile_allows() {
    let gw = TestGateway::start().await;
    let catalogue = popgw::catalogue::Catalogue::builtin();
    let allowed = catalogue
        .procedures()
        .find(|p| p.household_readable)
        .unwrap()
        .code
        .clone();
    let denied = catalogue
        .procedures()
        .find(|p| !p.household_readable && p.code == "P12")
        .unwrap()
        .code
        .clone();
    let r = gw
        .find(|p| {
            p.household
                .as_ref()
                .is_some_and(|h| h.relation_to_head != "head")
        })
        .clone();
    let mut ministry = gw.client("ministry").await;
    let a = ministry
        .get_household(pb::GetHouseholdRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: allowed,
            case_id: "HS-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let head = a.head.unwrap();
    assert_eq!(
        head.personal_id,
        r.household.as_ref().unwrap().head_personal_id
    );
    assert!(a.members.iter().any(|m| m.personal_id == r.personal_id));
    assert!(a
        .members
        .iter()
        .all(|m| m.personal_id != head.personal_id && !m.relation_to_head.is_empty()));
    let e = ministry
        .get_household(pb::GetHouseholdRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: denied,
            case_id: "HS-3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A client whose policy leaves out the household field cannot read it this way either.
    let e = gw
        .client("limited")
        .await
        .get_household(pb::GetHouseholdRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P20".into(),
            case_id: "HS-3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("household"), "{}", e.message());
}

#[tokio::test]
async fn deny_by_default() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    // A certificate from the right CA whose identity is not in the policy.
    let e = gw
        .client("stranger")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // An RPC the portal is not granted.
    let e = gw
        .client("portal")
        .await
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HS-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("GetCitizen"));
    // A procedure the ministry is not granted (P09 passport is not in its list).
    let e = gw
        .client("ministry")
        .await
        .verify_identity(declare(&r, "P09"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("P09"));
    // The operator reads the audit log, not citizens.
    let e = gw
        .client("operator")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut portal = gw.client("portal").await;
    type Mutation = Box<dyn Fn(&mut pb::VerifyIdentityRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("personal_id", Box::new(|q| q.personal_id = "12345".into())),
        (
            "personal_id",
            Box::new(|q| q.personal_id = "0260920082AB".into()),
        ),
        (
            "personal_id",
            Box::new(|q| q.personal_id = "0260920082621".into()),
        ),
        ("personal_id", Box::new(|q| q.personal_id = String::new())),
        (
            "full_name",
            Box::new(|q| q.full_name = "Nguyễn\u{0000}Văn".into()),
        ),
        ("full_name", Box::new(|q| q.full_name = "A".repeat(101))),
        ("full_name", Box::new(|q| q.full_name = String::new())),
        (
            "procedure_code",
            Box::new(|q| q.procedure_code = "P26".into()),
        ),
        (
            "procedure_code",
            Box::new(|q| q.procedure_code = String::new()),
        ),
        ("case_id", Box::new(|q| q.case_id = String::new())),
        ("case_id", Box::new(|q| q.case_id = "x".repeat(65))),
        ("case_id", Box::new(|q| q.case_id = "HS\n1".into())),
        ("case_id", Box::new(|q| q.case_id = "HS-1\u{202E}2".into())),
        (
            "full_name",
            Box::new(|q| q.full_name = "Nguyễn\u{202E}Văn".into()),
        ),
        (
            "date_of_birth",
            Box::new(|q| q.date_of_birth = String::new()),
        ),
        (
            "date_of_birth",
            Box::new(|q| q.date_of_birth = "1990-02-31".into()),
        ),
        (
            "date_of_birth",
            Box::new(|q| q.date_of_birth = "2999-01-01".into()),
        ),
        (
            "date_of_birth",
            Box::new(|q| q.date_of_birth = "17/05/1992".into()),
        ),
        ("sex", Box::new(|q| q.sex = 7)),
    ];
    for (field, mutate) in cases {
        let mut req = declare(&r, "P03");
        mutate(&mut req);
        let e = portal.verify_identity(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            e.message()
        );
        assert!(
            !e.message().contains(&r.personal_id),
            "no value in messages"
        );
    }
}

#[tokio::test]
async fn a_bad_item_does_not_end_the_stream() {
    let gw = TestGateway::start().await;
    let r = gw.living().clone();
    let mut bad = declare(&r, "P03");
    bad.personal_id = "not-an-id".into();
    let mut wrong = declare(&r, "P03");
    wrong.full_name = "Somebody Else".into();
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
            request: None,
        },
        pb::VerifyIdentityStreamRequest {
            correlation_id: "d".into(),
            request: Some(wrong),
        },
        pb::VerifyIdentityStreamRequest {
            correlation_id: "e".into(),
            request: Some(declare(&r, "P03")),
        },
    ];
    let mut portal = gw.client("portal").await;
    let answers: Vec<_> = portal
        .verify_identity_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    use pb::verify_identity_stream_response::Result as R;
    let got: Vec<(String, String)> = answers
        .into_iter()
        .map(|a| {
            let what = match a.result.unwrap() {
                R::Response(r) => format!("{:?}", r.verdict()),
                R::Error(e) => format!("error {} {}", e.code, e.message.split(':').next().unwrap()),
            };
            (a.correlation_id, what)
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("a", "Match".to_string()),
        (
            "b",
            format!("error {} personal_id", Code::InvalidArgument as i32),
        ),
        (
            "c",
            format!("error {} request", Code::InvalidArgument as i32),
        ),
        ("d", "NoMatch".to_string()),
        ("e", "Match".to_string()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn catalogue_health_and_reflection() {
    let gw = TestGateway::start().await;
    let list = gw
        .client("portal")
        .await
        .list_procedures(pb::ListProceduresRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.procedures.len(), 25);
    assert_eq!(list.procedures[0].code, "P01");
    assert!(list
        .procedures
        .iter()
        .all(|p| !p.readable_fields.iter().any(|f| f == "religion")));

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
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(gw.channel("portal").await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"popgw.v1.IdentityGateway".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"popgw.v1.AuditLog".to_string()));
    assert!(
        !names.iter().any(|n| n.contains("PopulationRegistry")),
        "the registry's service is not the gateway's: {names:?}"
    );
    // A certificate of the CA that the policy does not list learns nothing.
    let mut stranger = ServerReflectionClient::new(gw.channel("stranger").await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let e = stranger
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // The older v1alpha protocol, which grpcio-reflection and many tools speak.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaRequest,
        server_reflection_response::MessageResponse as AlphaResponse,
        ServerReflectionRequest as AlphaReflectionRequest,
    };
    let mut alpha = AlphaClient::new(gw.channel("portal").await);
    let req = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let first = alpha
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected v1alpha reflection answer")
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "popgw.v1.IdentityGateway"));
}
