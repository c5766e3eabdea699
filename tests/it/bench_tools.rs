//! The benchmark instruments (issue 17) against real servers on loopback: the load
//! generator counts what the gateway and the baseline answer, and only that.

use crate::common;

use std::time::Duration;

use common::TestGateway;
use popgw_bench::loadgen::{self, LoadError, Mode, Plan, Population, Rpc};

fn plan(addr: std::net::SocketAddr, certs: &std::path::Path, mode: Mode) -> Plan {
    Plan {
        addr,
        server_name: "localhost".into(),
        certs: certs.to_path_buf(),
        connections: 2,
        mode,
        mix: vec![(Rpc::Verify, 1)],
        zipf: None,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(60),
        max_calls: None,
        server_pid: None,
        label: "test".into(),
        reconnect: false,
        caller_rate: None,
        answers: None,
        deadline: None,
    }
}

fn living(gw: &TestGateway) -> Vec<popgw::proto::registry::CitizenRecord> {
    gw.population
        .iter()
        .filter(|r| r.date_of_death.is_empty() && r.date_of_disappearance.is_empty())
        .take(200)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_counts_every_answer_of_the_real_gateway_and_each_leaves_a_record() {
    let mut gw = TestGateway::start().await;
    let before = gw.gateway.audit.last_seq();
    let mut p = plan(gw.addr, &gw.certs, Mode::Closed { callers: 8 });
    p.mix = vec![(Rpc::Verify, 3), (Rpc::Citizen, 1), (Rpc::Household, 1)];
    p.zipf = Some(1.1);
    p.max_calls = Some(300);
    let report = loadgen::run(p, Population::new(living(&gw)).unwrap())
        .await
        .unwrap();
    // The budget is checked before each call: up to one call per caller beyond it.
    assert!((300..308).contains(&report.calls), "{}", report.summary());
    assert_eq!(report.ok, report.calls, "{}", report.summary());
    assert!(report.errors.is_empty() && report.not_match == 0);
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.p99 >= report.latency_us.p50);
    assert!(report.throughput > 0.0);
    // Every call the generator counted is in the audit log (and nothing it did not send).
    assert_eq!(gw.gateway.audit.last_seq() - before, report.calls);

    // A declaration that does not match is counted as such, never as OK.
    let mut wrong = living(&gw);
    for r in &mut wrong {
        r.full_name = "TRẦN THỊ KHÔNG CÓ".into();
    }
    let mut p = plan(gw.addr, &gw.certs, Mode::Closed { callers: 4 });
    p.max_calls = Some(40);
    let report = loadgen::run(p, Population::new(wrong).unwrap())
        .await
        .unwrap();
    assert_eq!(report.ok, 0, "{}", report.summary());
    assert_eq!(report.not_match, report.calls);
    assert!(report.calls >= 40);

    // A client the policy refuses: every call counted under its gRPC code.
    let mut p = plan(gw.addr, &gw.certs, Mode::Closed { callers: 2 });
    p.mix = vec![(Rpc::Citizen, 1)];
    p.max_calls = Some(10);
    // The ministry may not read P12 records of... anyone, once its certificate is swapped
    // for the portal's (verification only).
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(gw.certs.join("ca.pem"), certs.path().join("ca.pem")).unwrap();
    for (from, to) in [("portal", "ministry"), ("portal", "portal")] {
        for ext in ["pem", "key"] {
            std::fs::copy(
                gw.certs.join(format!("{from}.{ext}")),
                certs.path().join(format!("{to}.{ext}")),
            )
            .unwrap();
        }
    }
    p.certs = certs.path().to_path_buf();
    let report = loadgen::run(p, Population::new(living(&gw)).unwrap())
        .await
        .unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.errors.get("PermissionDenied").copied(),
        Some(report.calls),
        "{}",
        report.summary()
    );
    gw.stop().await;
}

/// The reliability run's instrument (issue 27): false declarations expect NO_MATCH, the
/// answer file names each answered call's audit record and what it said, the timeline
/// counts every call in its second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_files_name_each_answers_audit_record_and_false_declarations_expect_no_match() {
    let mut gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.tsv");
    let mut p = plan(gw.addr, &gw.certs, Mode::Closed { callers: 4 });
    p.mix = vec![(Rpc::Verify, 1), (Rpc::VerifyFalse, 1), (Rpc::Citizen, 1)];
    p.max_calls = Some(150);
    p.caller_rate = Some(200.0);
    p.answers = Some(answers.clone());
    let report = loadgen::run(p, Population::new(living(&gw)).unwrap())
        .await
        .unwrap();
    assert_eq!(report.ok, report.calls, "{}", report.summary());
    assert_eq!((report.not_match, report.false_match), (0, 0));
    let per_second: u64 = report.timeline.iter().map(|s| s[0]).sum();
    assert_eq!(per_second, report.calls);
    assert!(report.latency_ok_us.p50 > 0.0);
    // Without the server's pid, no server CPU (not the generator's own, as it once was).
    assert!(report.server_cpu.is_none() && report.generator_cpu.is_some());

    let text = std::fs::read_to_string(&answers).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len() as u64, report.calls);
    // Every answered call's record, with what the caller was told.
    let records: std::collections::HashMap<String, _> = gw
        .audit_records(Default::default())
        .await
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    for line in &lines {
        let [id, method, verdict, right] = line[..] else {
            panic!("{line:?}")
        };
        assert_eq!(right, "ok");
        let record = records
            .get(id)
            .unwrap_or_else(|| panic!("no record of {id}"));
        assert_eq!(record.rpc, method);
        if verdict != "OK" {
            assert_eq!(record.outcome, verdict);
        }
    }
    let kinds: Vec<_> = lines
        .iter()
        .map(|l| (l[1], l[2]))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        kinds,
        [
            ("GetCitizen", "OK"),
            ("VerifyIdentity", "MATCH"),
            ("VerifyIdentity", "NO_MATCH")
        ]
    );

    // A caller whose deadline passes before the answer abandons the call: counted
    // expired, nothing answered, nothing in the answer file.
    let mut p = plan(gw.addr, &gw.certs, Mode::Closed { callers: 2 });
    p.max_calls = Some(20);
    p.deadline = Some(Duration::from_nanos(1));
    p.answers = Some(answers.clone());
    let report = loadgen::run(p, Population::new(living(&gw)).unwrap())
        .await
        .unwrap();
    assert_eq!(report.ok, 0, "{}", report.summary());
    assert_eq!(
        report.errors.get("expired in the caller").copied(),
        Some(report.calls)
    );
    assert_eq!(std::fs::read_to_string(&answers).unwrap(), "");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_answers_over_popgws_tls_and_the_open_loop_and_new_connections_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let people = common::population_records(&config.population_path());
    let tls = popgw::tls::server_config(&config.tls).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(popgw_bench::baseline::serve(
        listener,
        tls,
        people[0].clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let certs = dir.path().join("certs");
    let population = Population::new(people).unwrap();

    // Open loop: 400 calls a second for 1 s, every one due is sent and answered.
    let mut p = plan(
        addr,
        &certs,
        Mode::Open {
            rate: 400.0,
            max_in_flight: 64,
        },
    );
    p.mix = vec![(Rpc::Verify, 2), (Rpc::Citizen, 1), (Rpc::Household, 1)];
    p.duration = Duration::from_secs(1);
    let report = loadgen::run(p, population.clone()).await.unwrap();
    assert!((395..=401).contains(&report.calls), "{}", report.summary());
    assert_eq!(report.ok, report.calls, "{}", report.summary());
    assert_eq!(report.dropped_sends, 0);

    // At most one call in flight and a rate far beyond the server: calls are dropped
    // and counted, never queued behind.
    let mut p = plan(
        addr,
        &certs,
        Mode::Open {
            rate: 100_000.0,
            max_in_flight: 1,
        },
    );
    p.duration = Duration::from_millis(300);
    let report = loadgen::run(p, population.clone()).await.unwrap();
    assert!(report.dropped_sends > 0, "{}", report.summary());
    assert_eq!(report.ok, report.calls);

    // Each call on its own connection: a full mutual-TLS handshake each time.
    let mut p = plan(addr, &certs, Mode::Connect { callers: 4 });
    p.max_calls = Some(40);
    let report = loadgen::run(p, population.clone()).await.unwrap();
    assert!(
        report.calls >= 40 && report.ok == report.calls,
        "{}",
        report.summary()
    );

    // A client certificate the server's CA did not issue: every connection refused.
    let other = tempfile::tempdir().unwrap();
    popgw::pki::init(other.path()).unwrap();
    std::fs::copy(certs.join("ca.pem"), other.path().join("ca.pem")).unwrap();
    let mut p = plan(addr, other.path(), Mode::Connect { callers: 2 });
    p.max_calls = Some(6);
    let report = loadgen::run(p, population.clone()).await.unwrap();
    assert_eq!(report.ok, 0, "{}", report.summary());
    assert!(report
        .errors
        .keys()
        .all(|k| k == "transport" || k.starts_with("connect")));

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_generator_refuses_anything_but_loopback_and_impossible_plans() {
    let dir = tempfile::tempdir().unwrap();
    let population = Population::new(vec![Default::default()]).unwrap();
    let p = plan(
        "10.1.2.3:50051".parse().unwrap(),
        dir.path(),
        Mode::Closed { callers: 1 },
    );
    assert!(matches!(
        loadgen::run(p, population.clone()).await,
        Err(LoadError::NotLoopback(_))
    ));
    let mut p = plan(
        "127.0.0.1:1".parse().unwrap(),
        dir.path(),
        Mode::Closed { callers: 0 },
    );
    assert!(matches!(
        loadgen::run(p.clone(), population.clone()).await,
        Err(LoadError::Plan(_))
    ));
    p.mode = Mode::Open {
        rate: 0.0,
        max_in_flight: 1,
    };
    assert!(matches!(
        loadgen::run(p.clone(), population.clone()).await,
        Err(LoadError::Plan(_))
    ));
    p.mode = Mode::Closed { callers: 1 };
    p.mix = vec![(Rpc::Verify, 0)];
    assert!(matches!(
        loadgen::run(p, population).await,
        Err(LoadError::Plan(_))
    ));
}
