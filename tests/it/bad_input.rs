//! Bad input gets a clear error and loses nothing: a catalogue of malformed declarations
//! (every field of VerifyIdentity, in every wrong form a portal or an attacker sends —
//! empty, too long, wrong shape, control and bidi characters, other scripts' digits)
//! and malformed calls to the other RPCs. Each is answered with its documented code and
//! a message naming the field, leaves exactly one audit record under its request id with
//! that code, and puts no personal id in clear into the record.

use crate::common;

use common::{declare, TestGateway};
use popgw::proto::gateway as pb;
use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
use popgw::proto::gateway::limits_client::LimitsClient;
use tonic::Code;

/// One malformed call: what it is, the answer's code and the field its message names.
struct Bad {
    what: String,
    code: Code,
    field: &'static str,
    status: tonic::Status,
}

fn request_id(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-request-id")
        .expect("every refusal carries its request id")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_malformed_field_is_refused_by_name_and_recorded_once() {
    let gw = TestGateway::builder()
        // Every refusal recorded one by one (the catalogue is sent within a second).
        .config(|c| c.limits.refusals_recorded_per_second = 10_000)
        .start()
        .await;
    let r = gw.living().clone();
    let id = r.personal_id.clone();
    let mut portal = gw.client("portal").await;
    let mut ministry = gw.client("ministry").await;
    let long = |n: usize| "A".repeat(n);
    let wide_id: String = id
        .chars()
        .map(|c| char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap())
        .collect();

    // (what, change to a valid P03 declaration, expected code, field named)
    type Change = Box<dyn Fn(&mut pb::VerifyIdentityRequest)>;
    let field = |f: &'static str| f;
    let cases: Vec<(&str, Change, Code, &'static str)> = vec![
        (
            "empty id",
            Box::new(|q| q.personal_id.clear()),
            Code::InvalidArgument,
            field("personal_id"),
        ),
        (
            "11 digits",
            Box::new(|q| q.personal_id.truncate(11)),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "13 digits",
            Box::new(|q| q.personal_id.push('0')),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "a letter in the id",
            Box::new(|q| q.personal_id.replace_range(5..6, "x")),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "an id of 10,000 digits",
            Box::new(|q| q.personal_id = "1".repeat(10_000)),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "a NUL before the id",
            Box::new(|q| q.personal_id.insert(0, '\0')),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "a bidi override in the id",
            Box::new(|q| q.personal_id.insert(3, '\u{202E}')),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "full-width digits",
            {
                let w = wide_id.clone();
                Box::new(move |q| q.personal_id = w.clone())
            },
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "Arabic-Indic digits",
            Box::new(|q| q.personal_id = "٠٠١٠٣٨٠٤٧٦٤٦".into()),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "an old 9-digit id for a procedure that does not take it",
            Box::new(|q| q.personal_id = "012345678".into()),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "a negative-looking id",
            Box::new(|q| q.personal_id.insert(0, '-')),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "an empty name",
            Box::new(|q| q.full_name.clear()),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name of spaces",
            Box::new(|q| q.full_name = "    ".into()),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name of 1,000 letters",
            Box::new(move |q| q.full_name = long(1_000)),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name with a bell",
            Box::new(|q| q.full_name.push('\u{7}')),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name with a NUL",
            Box::new(|q| q.full_name.insert(1, '\0')),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name with a bidi override",
            Box::new(|q| q.full_name.insert(0, '\u{202E}')),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name of digits",
            Box::new(|q| q.full_name = "123 456".into()),
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "a name holding the id",
            {
                let i = id.clone();
                Box::new(move |q| q.full_name = i.clone())
            },
            Code::InvalidArgument,
            "full_name",
        ),
        (
            "no birth date",
            Box::new(|q| q.date_of_birth.clear()),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "month 13",
            Box::new(|q| q.date_of_birth.replace_range(5..7, "13")),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "30 February",
            Box::new(|q| q.date_of_birth = "1990-02-30".into()),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "a birth date in the future",
            Box::new(|q| q.date_of_birth = "2999-01-01".into()),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "a two-digit year",
            Box::new(|q| q.date_of_birth = "90-01-13".into()),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "slashes",
            Box::new(|q| q.date_of_birth = q.date_of_birth.replace('-', "/")),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "day first",
            Box::new(|q| {
                let d = q.date_of_birth.clone();
                q.date_of_birth = format!("{}-{}-{}", &d[8..10], &d[5..7], &d[..4]);
            }),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "full-width digits in the date",
            Box::new(|q| q.date_of_birth = "１９９０-01-13".into()),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "a date of 1,000 characters",
            Box::new(|q| q.date_of_birth = "1".repeat(1_000)),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "a date with a NUL",
            Box::new(|q| q.date_of_birth.push('\0')),
            Code::InvalidArgument,
            "date_of_birth",
        ),
        (
            "sex 7",
            Box::new(|q| q.sex = 7),
            Code::InvalidArgument,
            "sex",
        ),
        (
            "sex -1",
            Box::new(|q| q.sex = -1),
            Code::InvalidArgument,
            "sex",
        ),
        (
            "no procedure",
            Box::new(|q| q.procedure_code.clear()),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "an unknown procedure",
            Box::new(|q| q.procedure_code = "P99".into()),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "a procedure in lower case",
            Box::new(|q| q.procedure_code = "p03".into()),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "a procedure holding the id",
            {
                let i = id.clone();
                Box::new(move |q| q.procedure_code = i.clone())
            },
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "a procedure with a newline",
            Box::new(|q| q.procedure_code = "P03\nP04".into()),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "a procedure of 1,000 letters",
            Box::new(move |q| q.procedure_code = long(1_000)),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "no dossier number",
            Box::new(|q| q.case_id.clear()),
            Code::InvalidArgument,
            "case_id",
        ),
        (
            "a dossier of 1,000 characters",
            Box::new(move |q| q.case_id = long(1_000)),
            Code::InvalidArgument,
            "case_id",
        ),
        (
            "a dossier holding the id",
            {
                let i = id.clone();
                Box::new(move |q| q.case_id = format!("HS-{i}"))
            },
            Code::InvalidArgument,
            "case_id",
        ),
        (
            "a dossier with a NUL",
            Box::new(|q| q.case_id.push('\0')),
            Code::InvalidArgument,
            "case_id",
        ),
        (
            "a dossier with a bidi override",
            Box::new(|q| q.case_id.insert(0, '\u{202E}')),
            Code::InvalidArgument,
            "case_id",
        ),
    ];
    let mut bad: Vec<Bad> = Vec::new();
    for (what, change, code, field) in cases {
        let mut q = declare(&r, "P03");
        change(&mut q);
        let status = portal.verify_identity(q).await.expect_err(what);
        bad.push(Bad {
            what: what.into(),
            code,
            field,
            status,
        });
    }

    // A procedure the client is not granted (the ministry's grant lists its procedures).
    let status = ministry
        .verify_identity(declare(&r, "P05"))
        .await
        .expect_err("ungranted");
    bad.push(Bad {
        what: "a procedure not granted to the client".into(),
        code: Code::PermissionDenied,
        field: "procedure",
        status,
    });

    // The other RPCs, each with a malformed field.
    let citizen = |id: &str, procedure: &str, case: &str| pb::GetCitizenRequest {
        personal_id: id.into(),
        procedure_code: procedure.into(),
        case_id: case.into(),
    };
    for (what, q, code, field) in [
        (
            "GetCitizen: an id of letters",
            citizen("abcdefghijkl", "P16", "HT-1"),
            Code::InvalidArgument,
            "personal_id",
        ),
        (
            "GetCitizen: an unknown procedure",
            citizen(&id, "P00", "HT-1"),
            Code::InvalidArgument,
            "procedure_code",
        ),
        (
            "GetCitizen: no dossier",
            citizen(&id, "P16", ""),
            Code::InvalidArgument,
            "case_id",
        ),
    ] {
        let status = ministry.get_citizen(q).await.expect_err(what);
        bad.push(Bad {
            what: what.into(),
            code,
            field,
            status,
        });
    }
    let household = pb::GetHouseholdRequest {
        personal_id: "0".into(),
        procedure_code: "P03".into(),
        case_id: "HT-1".into(),
    };
    let status = ministry
        .get_household(household)
        .await
        .expect_err("household");
    bad.push(Bad {
        what: "GetHousehold: a one-digit id".into(),
        code: Code::InvalidArgument,
        field: "personal_id",
        status,
    });

    let mut reports = CitizenAccessClient::new(gw.channel("citizen").await);
    for (what, q, field) in [
        (
            "AccessReport: an 11-digit id",
            pb::AccessReportRequest {
                personal_id: id[..11].into(),
                ..Default::default()
            },
            "personal_id",
        ),
        (
            "AccessReport: a period ending before it starts",
            pb::AccessReportRequest {
                personal_id: id.clone(),
                from_unix_ms: 2_000,
                to_unix_ms: 1_000,
            },
            "to_unix_ms",
        ),
    ] {
        let status = reports.access_report(q).await.expect_err(what);
        bad.push(Bad {
            what: what.into(),
            code: Code::InvalidArgument,
            field,
            status,
        });
    }
    let mut operator = gw.audit_client("operator").await;
    for (what, q, field) in [
        (
            "AuditLog.Query: an unknown cache word",
            pb::AuditQueryRequest {
                cache: "warm".into(),
                ..Default::default()
            },
            "cache",
        ),
        (
            "AuditLog.Query: an id of 5 digits",
            pb::AuditQueryRequest {
                personal_id: "12345".into(),
                ..Default::default()
            },
            "personal_id",
        ),
    ] {
        let status = match operator.query(q).await {
            Err(status) => status,
            Ok(stream) => {
                use tokio_stream::StreamExt;
                let mut stream = stream.into_inner();
                stream.next().await.expect(what).expect_err(what)
            }
        };
        bad.push(Bad {
            what: what.into(),
            code: Code::InvalidArgument,
            field,
            status,
        });
    }
    let mut limits = LimitsClient::new(gw.channel("operator").await);
    let unlock = pb::UnlockRequest {
        personal_id: "00103804764".into(),
        case_id: "TICKET-1".into(),
    };
    let status = limits.unlock(unlock).await.expect_err("unlock");
    bad.push(Bad {
        what: "Limits.Unlock: an 11-digit id".into(),
        code: Code::InvalidArgument,
        field: "personal_id",
        status,
    });

    assert!(bad.len() >= 50, "{} kinds", bad.len());
    let records = gw.audit_records(pb::AuditQueryRequest::default()).await;
    for b in &bad {
        assert_eq!(b.status.code(), b.code, "{}: {:?}", b.what, b.status);
        assert!(
            b.status.message().contains(b.field),
            "{}: the message names {}: {:?}",
            b.what,
            b.field,
            b.status.message()
        );
        let rid = request_id(&b.status);
        let mine: Vec<_> = records.iter().filter(|x| x.request_id == rid).collect();
        assert_eq!(mine.len(), 1, "{}: one record under {rid}", b.what);
        assert_eq!(mine[0].code, popgw::error::code_name(b.code), "{}", b.what);
        assert!(
            !mine[0].json.contains(&id),
            "{}: the id in clear: {}",
            b.what,
            mine[0].json
        );
        assert!(
            !mine[0].json.contains('\u{202E}'),
            "{}: a bidi override recorded",
            b.what
        );
    }
}
