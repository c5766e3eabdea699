//! No personal data in logs, over the remote registry and the cache: with popgw's
//! tracing at TRACE, a session through `registry serve` — misses, hits, a change
//! followed through the feed, garbage, the registry going down (retries, the breaker,
//! the broken feed) and coming back — leaves no id, name or birth date in the output.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{declare, setup_remote};
use popgw::registry::Change;
use popgw::service::registry::Faults;

#[tokio::test]
async fn the_remote_registry_and_the_cache_log_no_personal_data() {
    let capture = crate::capture();

    let s = setup_remote(Faults::default(), |c| {
        c.registry.breaker_failures = 2;
        c.registry.breaker_open_ms = 200;
    })
    .await;
    let people: Vec<_> =
        s.gw.population
            .iter()
            .filter(|r| r.date_of_death.is_empty() && r.date_of_birth.len() == 10)
            .take(4)
            .cloned()
            .collect();
    let mut portal = s.gw.client("portal").await;
    for _ in 0..2 {
        portal
            .verify_identity(declare(&people[0], "P03"))
            .await
            .unwrap();
    }
    s.store
        .update(
            &people[0].personal_id,
            &Change::FullName("PHẠM THỊ BÍ MẬT".into()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    portal
        .verify_identity(declare(&people[0], "P03"))
        .await
        .unwrap();
    s.upstream.faults.down.store(true, Ordering::SeqCst);
    for r in &people[1..] {
        assert!(portal.verify_identity(declare(r, "P03")).await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.upstream.faults.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    portal
        .verify_identity(declare(&people[1], "P03"))
        .await
        .unwrap();

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("circuit opened"),
        "the breaker is traced:\n{text}"
    );
    assert!(
        text.contains("change feed"),
        "the broken feed is traced:\n{text}"
    );
    for r in &people {
        for secret in [&r.personal_id, &r.full_name, &r.date_of_birth] {
            assert!(
                !text.contains(secret.as_str()),
                "personal data in the log:\n{text}"
            );
        }
    }
    assert!(!text.contains("PHẠM THỊ BÍ MẬT"));
}
