//! The gateway in front of a real `registry serve` over mutual TLS on 127.0.0.1: the
//! remote registry (deadlines, retries, breaker, garbage), the moka cache (coalescing,
//! the change feed, its resumption and the OUT_OF_RANGE drop, stale serving), and the
//! cache outcome each request leaves in its audit record.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{declare, setup_remote as setup, Setup, TestGateway};
use popgw::config::Config;
use popgw::proto::gateway as pb;
use popgw::proto::registry::CitizenRecord;
use popgw::registry::{self, Change, StoreLocation, StoreOptions};
use popgw::service::registry::Faults;
use tokio_stream::StreamExt;
use tonic::Code;

impl Setup {
    fn lookups(&self) -> u64 {
        self.upstream.metrics.registry_lookups.get()
    }

    /// The living citizens with a full birth date, in population order.
    fn living(&self, n: usize) -> Vec<CitizenRecord> {
        self.gw
            .population
            .iter()
            .filter(|r| r.date_of_death.is_empty() && r.date_of_birth.len() == 10)
            .take(n)
            .cloned()
            .collect()
    }

    async fn verify(
        &self,
        req: pb::VerifyIdentityRequest,
    ) -> Result<pb::VerifyIdentityResponse, tonic::Status> {
        self.gw
            .client("portal")
            .await
            .verify_identity(req)
            .await
            .map(|r| r.into_inner())
    }

    /// The audit records of VerifyIdentity about `personal_id`, oldest first.
    async fn records(&self, personal_id: &str) -> Vec<pb::AuditRecord> {
        let mut found = self
            .gw
            .audit_records(pb::AuditQueryRequest {
                personal_id: personal_id.into(),
                ..Default::default()
            })
            .await;
        found.retain(|r| r.rpc == "VerifyIdentity");
        found
    }

    /// Verifies `r` as declared and expects MATCH (loading it into the cache).
    async fn matches(&self, r: &CitizenRecord) {
        let answer = self.verify(declare(r, "P03")).await.unwrap();
        assert_eq!(answer.verdict, pb::Verdict::Match as i32);
    }

    /// Waits until the cache has noticed that its change feed is cut.
    async fn feed_lost(&self) {
        let cache = self.gw.gateway.lookups.cache().cloned().expect("cache on");
        for _ in 0..100 {
            if !cache.feed_up() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cut of the change feed was never noticed");
    }

    /// Waits until the cache follows the registry's change feed.
    async fn feed_followed(&self) {
        let cache = self.gw.gateway.lookups.cache().cloned().expect("cache on");
        for _ in 0..100 {
            if cache.feed_up() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cache never followed the change feed");
    }
}

fn renamed(r: &CitizenRecord, name: &str) -> pb::VerifyIdentityRequest {
    pb::VerifyIdentityRequest {
        full_name: name.into(),
        ..declare(r, "P03")
    }
}

/// Verifies until `req` gets `verdict`, for at most `within`; returns how long it took.
async fn until_verdict(
    s: &Setup,
    req: &pb::VerifyIdentityRequest,
    verdict: pb::Verdict,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(a) = s.verify(req.clone()).await {
            if a.verdict == verdict as i32 {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "still not {verdict:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn verification_through_the_remote_registry_then_from_the_cache() {
    let s = setup(Faults::default(), |_| {}).await;
    let r = s.living(1).remove(0);
    let first = s.verify(declare(&r, "P03")).await.unwrap();
    assert_eq!(first.verdict, pb::Verdict::Match as i32);
    assert_eq!(s.lookups(), 1);
    let second = s.verify(declare(&r, "P03")).await.unwrap();
    assert_eq!(second.verdict, pb::Verdict::Match as i32);
    assert_eq!(s.lookups(), 1, "the second answer came from the cache");

    // A citizen who does not exist: NO_MATCH, and "no such citizen" is cached too.
    let mut nobody = declare(&r, "P03");
    nobody.personal_id = format!("{}99999", &r.personal_id[..7]);
    let before = s.lookups();
    for _ in 0..2 {
        let a = s.verify(nobody.clone()).await.unwrap();
        assert_eq!(a.verdict, pb::Verdict::NoMatch as i32);
    }
    assert_eq!(s.lookups(), before + 1);

    // The ministry's minimised record and the household come through the remote too.
    let member =
        s.gw.find(|c| {
            c.household
                .as_ref()
                .is_some_and(|h| !h.household_id.is_empty())
        })
        .clone();
    let mut ministry = s.gw.client("ministry").await;
    let citizen = ministry
        .get_citizen(pb::GetCitizenRequest {
            personal_id: member.personal_id.clone(),
            procedure_code: "P20".into(),
            case_id: "HS-2026-000200".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(citizen.citizen.unwrap().personal_id, member.personal_id);
    let household = ministry
        .get_household(pb::GetHouseholdRequest {
            personal_id: member.personal_id.clone(),
            procedure_code: "P20".into(),
            case_id: "HS-2026-000200".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(household.head.is_some());

    let records = s.records(&r.personal_id).await;
    let cache: Vec<&str> = records.iter().map(|x| x.cache.as_str()).collect();
    assert_eq!(cache, ["miss", "hit"]);

    // The operators' query filters on the cache outcome.
    let hits =
        s.gw.audit_client("operator")
            .await
            .query(pb::AuditQueryRequest {
                cache: "hit".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
    assert!(hits.iter().all(|h| h.cache == "hit"));
    let verifications = hits.iter().filter(|h| h.rpc == "VerifyIdentity").count();
    assert_eq!(verifications, 2, "one hit on the citizen, one on nobody");
    let bad =
        s.gw.audit_client("operator")
            .await
            .query(pb::AuditQueryRequest {
                cache: "warm".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("cache"), "{bad:?}");
}

#[tokio::test]
async fn a_hundred_concurrent_cold_requests_make_one_upstream_call() {
    // The registry takes 200 ms, so that every request arrives while the first loads.
    let s = setup(
        Faults {
            latency_ms: 200,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = s.living(1).remove(0);
    let channel = s.gw.channel("portal").await;
    let calls = (0..100).map(|_| {
        let mut client = popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient::new(
            channel.clone(),
        );
        let req = declare(&r, "P03");
        tokio::spawn(async move { client.verify_identity(req).await.map(|a| a.into_inner()) })
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer.unwrap().unwrap().verdict, pb::Verdict::Match as i32);
    }
    assert_eq!(
        s.lookups(),
        1,
        "one upstream call for 100 concurrent requests"
    );
    let records = s.records(&r.personal_id).await;
    assert_eq!(records.len(), 100);
    let misses = records.iter().filter(|x| x.cache == "miss").count();
    let others = records
        .iter()
        .filter(|x| x.cache == "coalesced" || x.cache == "hit")
        .count();
    assert_eq!((misses, others), (1, 99));
}

#[tokio::test]
async fn an_update_upstream_is_served_within_the_bound() {
    // A long staleness bound and TTL: only the change feed can make the change visible.
    let s = setup(Faults::default(), |c| {
        c.cache.max_staleness_ms = 600_000;
        c.cache.ttl_ms = 600_000;
    })
    .await;
    s.feed_followed().await;
    let r = s.living(1).remove(0);
    s.matches(&r).await;
    s.store
        .update(
            &r.personal_id,
            &Change::FullName("NGUYỄN THỊ ĐỔI TÊN".into()),
        )
        .await
        .unwrap()
        .unwrap();
    let took = until_verdict(
        &s,
        &renamed(&r, "Nguyễn Thị Đổi Tên"),
        pb::Verdict::Match,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("the new name verified after {took:?}");
    assert_eq!(
        s.verify(declare(&r, "P03")).await.unwrap().verdict,
        pb::Verdict::NoMatch as i32,
        "the old name no longer verifies"
    );
    assert!(s.gw.gateway.metrics.cache_invalidations.get() >= 1);
}

#[tokio::test]
async fn a_cut_feed_resumes_from_the_last_version_it_saw() {
    let s = setup(Faults::default(), |c| {
        c.cache.max_staleness_ms = 600_000;
        c.cache.ttl_ms = 600_000;
    })
    .await;
    s.feed_followed().await;
    let r = s.living(1).remove(0);
    s.matches(&r).await;
    // Cut: the registry answers nothing, its feed ends.
    s.upstream.faults.down.store(true, Ordering::SeqCst);
    s.feed_lost().await;
    // A change the gateway cannot hear about while the feed is cut.
    s.store
        .update(&r.personal_id, &Change::FullName("TRẦN VĂN MỚI".into()))
        .await
        .unwrap()
        .unwrap();
    s.upstream.faults.down.store(false, Ordering::SeqCst);
    // Resumed from the last version seen, the feed replays the change: the old name
    // stops verifying although its entry is far from expiring. (Resumed "from now",
    // the old record would be served for ten minutes.)
    until_verdict(
        &s,
        &renamed(&r, "Trần Văn Mới"),
        pb::Verdict::Match,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        s.gw.gateway.metrics.cache_drops.get(),
        0,
        "resumed, not dropped"
    );
}

#[tokio::test]
async fn with_the_feed_cut_nothing_older_than_the_bound_is_served() {
    // A long TTL, a short staleness bound: with the feed cut, the bound alone must make
    // the gateway read the changed record again.
    let s = setup(Faults::default(), |c| {
        c.cache.ttl_ms = 600_000;
        c.cache.max_staleness_ms = 700;
    })
    .await;
    s.feed_followed().await;
    let r = s.living(1).remove(0);
    let metrics = &s.gw.gateway.metrics;
    s.matches(&r).await;
    // Only the feed is cut; lookups still work.
    s.upstream.faults.feed_down.store(true, Ordering::SeqCst);
    s.feed_lost().await;
    let invalidations = metrics.cache_invalidations.get();
    s.store
        .update(&r.personal_id, &Change::FullName("ĐỖ VĂN CẮT".into()))
        .await
        .unwrap()
        .unwrap();
    until_verdict(
        &s,
        &renamed(&r, "Đỗ Văn Cắt"),
        pb::Verdict::Match,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        metrics.cache_invalidations.get(),
        invalidations,
        "the feed said nothing: the staleness bound made the entry unusable"
    );
    let records = s.records(&r.personal_id).await;
    assert_eq!(records.first().unwrap().cache, "miss");
    assert_eq!(
        records.last().unwrap().cache,
        "miss",
        "reloaded, not served"
    );
}

#[tokio::test]
async fn a_feed_that_cannot_resume_drops_the_cache() {
    let s = setup(Faults::default(), |c| {
        c.cache.max_staleness_ms = 600_000;
        c.cache.ttl_ms = 600_000;
    })
    .await;
    s.feed_followed().await;
    let r = s.living(1).remove(0);
    s.matches(&r).await;
    // A new import under the running registry, with the citizen renamed: the feed's
    // history starts again, and the gateway's position in it no longer exists.
    let config = Config::rooted_at(s.gw.dir.path());
    let population = std::fs::read_to_string(config.population_path()).unwrap();
    let mut lines: Vec<String> = Vec::new();
    for line in population.lines() {
        let mut c: CitizenRecord = serde_json::from_str(line).unwrap();
        if c.personal_id == r.personal_id {
            c.full_name = "LÊ THỊ TÁI NHẬP".into();
        }
        lines.push(serde_json::to_string(&c).unwrap());
    }
    let changed = s.gw.dir.path().join("reimport.jsonl");
    std::fs::write(&changed, lines.join("\n") + "\n").unwrap();
    common::import_to_disk(&changed, &config.registry_path());
    until_verdict(
        &s,
        &renamed(&r, "Lê Thị Tái Nhập"),
        pb::Verdict::Match,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        s.gw.gateway.metrics.cache_drops.get() >= 1,
        "the cache was dropped"
    );
}

#[tokio::test]
async fn a_registry_that_is_down_opens_the_breaker_and_it_recovers() {
    let s = setup(Faults::default(), |c| {
        c.registry.retries = 1;
        c.registry.breaker_failures = 3;
        c.registry.breaker_open_ms = 400;
    })
    .await;
    let people = s.living(8);
    s.upstream.faults.down.store(true, Ordering::SeqCst);
    let mut messages = Vec::new();
    for r in &people[..4] {
        let e = s.verify(declare(r, "P03")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().starts_with("could not check"), "{e:?}");
        messages.push(e.message().to_string());
    }
    // The first calls reached the registry (and were retried); then the breaker opened.
    assert!(messages[0].contains("unavailable"), "{messages:?}");
    assert!(messages[3].contains("circuit open"), "{messages:?}");
    assert_eq!(s.gw.gateway.metrics.breaker_opened.get(), 1);
    let lookups = s.upstream.metrics.registry_lookups.get();
    let e = s.verify(declare(&people[4], "P03")).await.unwrap_err();
    assert!(e.message().contains("circuit open"), "{e:?}");
    assert_eq!(
        s.upstream.metrics.registry_lookups.get(),
        lookups,
        "an open breaker does not call the registry"
    );
    // Back up: after the open period one probe goes through and closes the breaker.
    s.upstream.faults.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in &people[5..8] {
        assert_eq!(
            s.verify(declare(r, "P03")).await.unwrap().verdict,
            pb::Verdict::Match as i32
        );
    }
    // "Could not check" is never a verdict, and each refusal left its record.
    for r in &people[..5] {
        let records = s.records(&r.personal_id).await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, "UNAVAILABLE");
        assert_eq!(records[0].cache, "miss");
    }
}

#[tokio::test]
async fn a_slow_registry_never_makes_a_late_answer() {
    let s = setup(
        Faults {
            latency_ms: 1_500,
            ..Default::default()
        },
        |c| c.registry.timeout_ms = 800,
    )
    .await;
    let people = s.living(2);
    // The caller gives 300 ms: the gateway gives up before, and says why.
    let mut req = tonic::Request::new(declare(&people[0], "P03"));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e =
        s.gw.client("portal")
            .await
            .verify_identity(req)
            .await
            .unwrap_err();
    let took = started.elapsed();
    // DEADLINE_EXCEEDED from the gateway, which gives up a margin before the deadline
    // (and, failing that, from `service::early` a millisecond before it — never tonic's
    // CANCELLED).
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        took < Duration::from_millis(1_500),
        "answered after {took:?}"
    );
    // Without a deadline of its own, the caller gets the registry cap: UNAVAILABLE.
    let e = s.verify(declare(&people[1], "P03")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("800 ms"), "{e:?}");
    for (r, outcome) in [
        (&people[0], "DEADLINE_EXCEEDED"),
        (&people[1], "UNAVAILABLE"),
    ] {
        let records = s.records(&r.personal_id).await;
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].outcome.as_str(), records[0].cache.as_str()),
            (outcome, "miss")
        );
    }
}

#[tokio::test]
async fn garbage_from_the_registry_is_an_error_never_a_verdict() {
    let s = setup(
        Faults {
            garbage_rate: 1.0,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = s.living(1).remove(0);
    for _ in 0..2 {
        let e = s.verify(declare(&r, "P03")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("fails validation"), "{e:?}");
    }
    assert_eq!(s.lookups(), 2, "an error is never cached");
    let records = s.records(&r.personal_id).await;
    assert!(records
        .iter()
        .all(|x| x.outcome == "UNAVAILABLE" && x.cache == "miss"));
}

#[tokio::test]
async fn a_stale_record_is_served_only_when_allowed_and_is_marked() {
    let s = setup(Faults::default(), |c| {
        c.cache.ttl_ms = 200;
        c.cache.serve_stale_on_error = true;
        c.cache.stale_max_age_ms = 60_000;
        c.registry.breaker_failures = 100;
    })
    .await;
    let people = s.living(2);
    for r in &people {
        s.verify(declare(r, "P03")).await.unwrap();
    }
    // A change to the second citizen: its entry goes, and is never served stale.
    s.feed_followed().await;
    let metrics = &s.gw.gateway.metrics;
    let invalidated = metrics.cache_invalidations.get();
    s.store
        .update(
            &people[1].personal_id,
            &Change::AddressLine("Số 1 Phố Mới".into()),
        )
        .await
        .unwrap()
        .unwrap();
    for _ in 0..100 {
        if metrics.cache_invalidations.get() > invalidated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.cache_invalidations.get() > invalidated);
    // Both entries are now past their 200 ms lifetime.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.upstream.faults.down.store(true, Ordering::SeqCst);
    let a = s.verify(declare(&people[0], "P03")).await.unwrap();
    assert_eq!(a.verdict, pb::Verdict::Match as i32);
    let e = s.verify(declare(&people[1], "P03")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let records = s.records(&people[0].personal_id).await;
    assert_eq!(records.last().unwrap().cache, "stale");
    let records = s.records(&people[1].personal_id).await;
    assert_eq!(records.last().unwrap().cache, "miss");
}

#[tokio::test]
async fn the_disk_store_sits_behind_the_same_cache() {
    let mut gw = TestGateway::builder()
        .config(|c| {
            c.cache.max_staleness_ms = 600_000;
            c.cache.ttl_ms = 600_000;
        })
        .start()
        .await;
    let r = gw.living().clone();
    let mut client = gw.client("portal").await;
    for _ in 0..2 {
        let a = client.verify_identity(declare(&r, "P03")).await.unwrap();
        assert_eq!(a.into_inner().verdict, pb::Verdict::Match as i32);
    }
    // `popgw registry update` from another process writes the same store.
    let config = Config::rooted_at(gw.dir.path());
    let store = registry::open_store(
        &StoreLocation::Disk(config.registry_path()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    store
        .update(&r.personal_id, &Change::Deceased("2026-01-02".into()))
        .await
        .unwrap()
        .unwrap();
    let start = Instant::now();
    loop {
        let a = client.verify_identity(declare(&r, "P03")).await.unwrap();
        if a.into_inner().verdict == pb::Verdict::NoMatch as i32 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the death was not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut records = gw
        .audit_records(pb::AuditQueryRequest {
            personal_id: r.personal_id.clone(),
            ..Default::default()
        })
        .await;
    // (The query's own record, written before its results, names the citizen too.)
    records.retain(|x| x.rpc == "VerifyIdentity");
    let cache: Vec<&str> = records.iter().map(|x| x.cache.as_str()).collect();
    assert_eq!(&cache[..2], ["miss", "hit"]);
    assert_eq!(
        records.last().unwrap().detail.split(';').next(),
        Some("DECEASED")
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_caller_with_a_short_deadline_does_not_fail_the_others_waiting() {
    // The registry takes 300 ms. A asks with 60 ms and starts the load; B asks right
    // after with no deadline of its own and waits on the same load.
    let s = setup(
        Faults {
            latency_ms: 300,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = s.living(1).remove(0);
    let mut hasty = tonic::Request::new(declare(&r, "P03"));
    hasty.set_timeout(Duration::from_millis(60));
    let mut a = s.gw.client("portal").await;
    let a = tokio::spawn(async move { a.verify_identity(hasty).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = s.verify(declare(&r, "P03")).await.unwrap();
    assert_eq!(b.verdict, pb::Verdict::Match as i32);
    let a = a.await.unwrap().unwrap_err();
    // With 60 ms the gateway answers 3 ms before the deadline; on a loaded machine the
    // tonic client's own timer on the same grpc-timeout can still fire first, and it
    // reports CANCELLED ("Timeout expired") locally. The server's answer is
    // DEADLINE_EXCEEDED (`a_slow_registry_never_makes_a_late_answer`, and the record).
    assert!(
        matches!(a.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{a:?}"
    );
    let records = s.records(&r.personal_id).await;
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|x| (x.outcome.as_str(), x.cache.as_str()))
        .collect();
    assert!(
        outcomes.contains(&("DEADLINE_EXCEEDED", "miss"))
            && outcomes.contains(&("MATCH", "coalesced"))
            || outcomes.contains(&("MATCH", "miss")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn the_old_id_goes_through_the_remote_registry_and_the_cache() {
    let s = setup(Faults::default(), |_| {}).await;
    let old =
        s.gw.find(|p| p.date_of_death.is_empty() && !p.old_id_number.is_empty())
            .clone();
    let mut req = declare(&old, "P01");
    req.personal_id = old.old_id_number.clone();
    for _ in 0..2 {
        let a = s.verify(req.clone()).await.unwrap();
        assert_eq!(a.verdict, pb::Verdict::Match as i32);
    }
    assert_eq!(s.lookups(), 1, "the old id is cached too");
    // The subject is the 12-digit id, as for a lookup by it.
    let records = s.records(&old.personal_id).await;
    let cache: Vec<&str> = records.iter().map(|x| x.cache.as_str()).collect();
    assert_eq!(cache, ["miss", "hit"]);
}

#[tokio::test]
async fn a_registry_that_refuses_the_gateway_is_could_not_check_and_keeps_the_breaker_closed() {
    // The gateway presents a certificate the registry's allow list does not name.
    let s = setup(Faults::default(), |c| {
        let certs = c.tls.client_ca.parent().unwrap().to_path_buf();
        c.registry.cert = Some(certs.join("portal.pem"));
        c.registry.key = Some(certs.join("portal.key"));
        c.registry.breaker_failures = 2;
    })
    .await;
    let people = s.living(3);
    for r in &people {
        let e = s.verify(declare(r, "P03")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message()
                .contains("refused GetCitizen: PERMISSION_DENIED"),
            "{e:?}"
        );
    }
    // The registry is up (it answered): three refusals do not open the breaker.
    assert_eq!(s.gw.gateway.metrics.breaker_opened.get(), 0);
    let records = s.records(&people[2].personal_id).await;
    assert_eq!(
        (records[0].outcome.as_str(), records[0].cache.as_str()),
        ("UNAVAILABLE", "miss")
    );
}
