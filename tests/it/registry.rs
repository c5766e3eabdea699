//! The national registry behind the gateway: a population imported to disk and to
//! PostgreSQL, served by `registry serve` over real mutual TLS, its change feed, and
//! the gateway on each store — including PostgreSQL going away.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{import_to_disk, population_records, RegistryServer, TempDb, TestGateway};
use popgw::client::{connect, ClientCerts};
use popgw::config::Config;
use popgw::proto::gateway as gw;
use popgw::proto::registry as pb;
use popgw::proto::registry::population_registry_client::PopulationRegistryClient;
use popgw::registry::disk::DiskStore;
use popgw::registry::import::Records;
use popgw::registry::postgres::PgStore;
use popgw::registry::{self, Change, LookupKey, Registry, Store, StoreLocation, StoreOptions};
use popgw::service::registry::Faults;
use tokio_stream::StreamExt;
use tonic::Code;

/// A prepared folder (PKI, policy, 2,000 citizens in population.jsonl and on disk).
fn folder() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    (dir, config)
}

/// The prepared folder's on-disk store, opened.
async fn disk_store(config: &Config) -> Arc<dyn Store> {
    registry::open_store(
        &StoreLocation::Disk(config.registry_path()),
        &StoreOptions::default(),
    )
    .await
    .unwrap()
}

async fn import_to_postgres(population: &Path, url: &str) -> u64 {
    let file = std::io::BufReader::new(std::fs::File::open(population).unwrap());
    PgStore::import(url, Records::new(file, false), |_| {})
        .await
        .unwrap()
        .imported
}

fn without_version(mut r: pb::CitizenRecord) -> pb::CitizenRecord {
    r.version = 0;
    r
}

#[tokio::test]
async fn disk_and_postgres_serve_the_same_answers() {
    let (dir, config) = folder();
    let records = population_records(&config.population_path());
    let db = TempDb::create().await;
    assert_eq!(
        import_to_postgres(&config.population_path(), &db.url).await,
        records.len() as u64
    );
    let options = StoreOptions::default();
    let disk = registry::open_store(&StoreLocation::Disk(config.registry_path()), &options)
        .await
        .unwrap();
    let pg = registry::open_store(&StoreLocation::Postgres(db.url.clone()), &options)
        .await
        .unwrap();
    assert_eq!(disk.count().await.unwrap(), records.len() as u64);
    assert_eq!(pg.count().await.unwrap(), records.len() as u64);
    let certs = dir.path().join("certs");
    let a = RegistryServer::start(&config, disk, Faults::default()).await;
    let b = RegistryServer::start(&config, pg, Faults::default()).await;
    let mut ca = a.client(&certs, "gateway").await;
    let mut cb = b.client(&certs, "gateway").await;

    let sample: Vec<&pb::CitizenRecord> = records.iter().step_by(37).collect();
    let mut households = HashSet::new();
    let mut old_ids = 0;
    for r in &sample {
        let mut keys = vec![r.personal_id.clone()];
        if !r.old_id_number.is_empty() {
            keys.push(r.old_id_number.clone());
            old_ids += 1;
        }
        for key in keys {
            let req = pb::GetCitizenRequest { personal_id: key };
            let x = ca.get_citizen(req.clone()).await.unwrap().into_inner();
            let y = cb.get_citizen(req).await.unwrap().into_inner();
            let (x, y) = (x.citizen.unwrap(), y.citizen.unwrap());
            assert!(
                x.version > 0 && y.version > 0,
                "records carry their version"
            );
            assert_eq!(without_version(x.clone()), without_version((*r).clone()));
            assert_eq!(without_version(x), without_version(y));
        }
        households.insert(r.household.as_ref().unwrap().household_id.clone());
    }
    assert!(old_ids > 5, "the sample covers old ids");
    for h in &households {
        let req = pb::GetHouseholdRequest {
            household_id: h.clone(),
        };
        let x = ca.get_household(req.clone()).await.unwrap().into_inner();
        let y = cb.get_household(req).await.unwrap().into_inner();
        let x = x.household.expect("household found");
        assert_eq!(Some(x.clone()), y.household);
        let members = records
            .iter()
            .filter(|r| r.household.as_ref().unwrap().household_id == *h)
            .count();
        assert_eq!(x.members.len(), members);
        assert_eq!(x.members[0].relation_to_head, "head");
    }
    // A batch, in the order asked, with an unknown id left out.
    let mut ids: Vec<String> = sample.iter().rev().map(|r| r.personal_id.clone()).collect();
    ids.insert(3, "001099000001".into());
    let req = pb::BatchGetCitizensRequest {
        personal_ids: ids.clone(),
    };
    let x = ca
        .batch_get_citizens(req.clone())
        .await
        .unwrap()
        .into_inner();
    let y = cb.batch_get_citizens(req).await.unwrap().into_inner();
    let got: Vec<&str> = x.citizens.iter().map(|c| c.personal_id.as_str()).collect();
    let want: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|i| *i != "001099000001")
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        x.citizens
            .into_iter()
            .map(without_version)
            .collect::<Vec<_>>(),
        y.citizens
            .into_iter()
            .map(without_version)
            .collect::<Vec<_>>()
    );
    // Absent citizens and households are absent from both.
    for c in [&mut ca, &mut cb] {
        let none = c
            .get_citizen(pb::GetCitizenRequest {
                personal_id: "001099000001".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(none.citizen.is_none());
        let none = c
            .get_household(pb::GetHouseholdRequest {
                household_id: "HK00199999999".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(none.household.is_none());
    }
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn registry_serve_refuses_unlisted_clients_and_bad_ids() {
    let (dir, config) = folder();
    let store = disk_store(&config).await;
    let certs = dir.path().join("certs");
    let server = RegistryServer::start(&config, store, Faults::default()).await;
    let records = population_records(&config.population_path());
    let req = pb::GetCitizenRequest {
        personal_id: records[0].personal_id.clone(),
    };
    // A certificate of the right CA whose identity is not allowed: deny by default.
    let mut portal = server.client(&certs, "portal").await;
    let e = portal.get_citizen(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = portal
        .watch_changes(pb::WatchChangesRequest { from_version: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Another CA: refused at the handshake.
    let outsider = connect(
        &format!("localhost:{}", server.addr.port()),
        &ClientCerts {
            ca: certs.join("ca.pem"),
            cert: certs.join("outsider.pem"),
            key: certs.join("outsider.key"),
        },
    )
    .await;
    if let Ok(ch) = outsider {
        assert!(PopulationRegistryClient::new(ch)
            .get_citizen(req.clone())
            .await
            .is_err());
    }
    // Bad ids are named, never echoed.
    let mut gateway = server.client(&certs, "gateway").await;
    for bad in ["", "12345", "00109800012x", "0010980001234"] {
        let e = gateway
            .get_citizen(pb::GetCitizenRequest {
                personal_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("personal_id"), "{}", e.message());
    }
    let e = gateway
        .batch_get_citizens(pb::BatchGetCitizensRequest {
            personal_ids: vec![records[0].personal_id.clone(), "x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("personal_ids[1]"));
    let e = gateway
        .batch_get_citizens(pb::BatchGetCitizensRequest {
            personal_ids: vec![records[0].personal_id.clone(); 1001],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = gateway
        .get_household(pb::GetHouseholdRequest {
            household_id: "HK'; DROP TABLE citizens".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(gateway.get_citizen(req).await.is_ok());
    server.stop().await;
}

/// An update appears in a live feed with a higher version; a resume from an older
/// version replays it; a version from before the import is OUT_OF_RANGE.
async fn feed_follows_updates(store: Arc<dyn Store>, config: &Config, certs: &Path) {
    let records = population_records(&config.population_path());
    let server = RegistryServer::start(config, store.clone(), Faults::default()).await;
    let mut client = server.client(certs, "gateway").await;
    let head = store.versions().await.unwrap().head;
    let mut live = client
        .watch_changes(pb::WatchChangesRequest { from_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let mark = live.next().await.unwrap().unwrap();
    assert_eq!((mark.version, mark.citizen.is_none()), (head, true));

    let target = &records[5];
    let changed = store
        .update(
            &target.personal_id,
            &Change::AddressLine("Số 12 ngõ 34 phố Huế".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.version, head + 1);
    let event = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("the change arrives")
        .unwrap()
        .unwrap();
    assert_eq!(event.version, head + 1);
    let citizen = event.citizen.unwrap();
    assert_eq!(citizen.personal_id, target.personal_id);
    assert_eq!(
        citizen.permanent_residence.unwrap().line,
        "Số 12 ngõ 34 phố Huế"
    );
    // The lookup sees it too, with the new version.
    let got = client
        .get_citizen(pb::GetCitizenRequest {
            personal_id: target.personal_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(got.version, head + 1);
    // A second change: a death.
    store
        .update(
            &records[6].personal_id,
            &Change::Deceased("2026-01-02".into()),
        )
        .await
        .unwrap()
        .unwrap();
    // Resume from before both: both replayed, in order, then a mark.
    let mut resumed = client
        .watch_changes(pb::WatchChangesRequest { from_version: head })
        .await
        .unwrap()
        .into_inner();
    let first = resumed.next().await.unwrap().unwrap();
    let second = resumed.next().await.unwrap().unwrap();
    let mark = resumed.next().await.unwrap().unwrap();
    assert_eq!(
        (first.version, second.version, mark.version),
        (head + 1, head + 2, head + 2)
    );
    assert_eq!(second.citizen.unwrap().date_of_death, "2026-01-02");
    assert!(mark.citizen.is_none());
    // Before the import (compacted away) or beyond the head: drop your cache.
    for from in [1, head - 1, head + 100] {
        let e = client
            .watch_changes(pb::WatchChangesRequest { from_version: from })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{from}: {e:?}");
    }
    // Invalid changes are refused and bump nothing.
    let e = store
        .update(
            &records[7].personal_id,
            &Change::Deceased("2999-01-01".into()),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("date_of_death"), "{e}");
    assert!(store
        .update("001099000001", &Change::FullName("AI ĐÓ".into()))
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.versions().await.unwrap().head, head + 2);
    server.stop().await;
}

#[tokio::test]
async fn disk_change_feed() {
    let (dir, config) = folder();
    let store = disk_store(&config).await;
    feed_follows_updates(store, &config, &dir.path().join("certs")).await;
}

#[tokio::test]
async fn postgres_change_feed() {
    let (dir, config) = folder();
    let db = TempDb::create().await;
    import_to_postgres(&config.population_path(), &db.url).await;
    let store = registry::open_store(
        &StoreLocation::Postgres(db.url.clone()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    feed_follows_updates(store, &config, &dir.path().join("certs")).await;
    db.drop_db().await;
}

#[tokio::test]
async fn compaction_makes_old_versions_out_of_range() {
    let (_dir, config) = folder();
    let records = population_records(&config.population_path());
    let options = StoreOptions {
        changes_kept: 2,
        ..Default::default()
    };
    let store = DiskStore::open(&config.registry_path(), &options).unwrap();
    let base = store.versions().await.unwrap().head;
    for (i, r) in records.iter().take(4).enumerate() {
        store
            .update(&r.personal_id, &Change::AddressLine(format!("Thôn {i}")))
            .await
            .unwrap()
            .unwrap();
    }
    let v = store.versions().await.unwrap();
    assert_eq!((v.head, v.floor), (base + 4, base + 2));
    assert!(store.changes_after(base + 1, 10).await.is_err());
    let kept = store.changes_after(base + 2, 10).await.unwrap();
    assert_eq!(
        kept.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![base + 3, base + 4]
    );
}

#[tokio::test]
async fn fault_injection_switch_and_garbage() {
    let (dir, config) = folder();
    let certs = dir.path().join("certs");
    let records = population_records(&config.population_path());
    let store: Arc<dyn Store> =
        Arc::new(DiskStore::open(&config.registry_path(), &StoreOptions::default()).unwrap());
    let req = pb::GetCitizenRequest {
        personal_id: records[0].personal_id.clone(),
    };
    let server = RegistryServer::start(&config, store.clone(), Faults::default()).await;
    let mut client = server.client(&certs, "gateway").await;
    assert!(client.get_citizen(req.clone()).await.is_ok());
    server.faults.down.store(true, Ordering::Relaxed);
    let e = client.get_citizen(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    server.faults.down.store(false, Ordering::Relaxed);
    assert!(client.get_citizen(req.clone()).await.is_ok());
    server.stop().await;

    let garbage = Faults {
        garbage_rate: 1.0,
        latency_ms: 20,
        ..Default::default()
    };
    let server = RegistryServer::start(&config, store, garbage).await;
    let mut client = server.client(&certs, "gateway").await;
    let t = Instant::now();
    let got = client
        .get_citizen(req)
        .await
        .unwrap()
        .into_inner()
        .citizen
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!(got.personal_id, records[0].personal_id);
    assert!(
        popgw::validation::check_record(&got).is_err(),
        "well-formed but invalid"
    );
    server.stop().await;
}

#[tokio::test]
async fn gateway_verifies_on_postgres() {
    let db = TempDb::create().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    import_to_postgres(&config.population_path(), &url).await;
    drop(dir);
    let gw = TestGateway::builder()
        .config(move |c| {
            c.registry.kind = popgw::config::RegistryKind::Postgres;
            c.registry.url = Some(url);
        })
        .start()
        .await;
    // The harness imported its own population to disk; PostgreSQL holds the same one
    // (same generator and seed).
    let r = gw.living().clone();
    let answer = gw
        .client("portal")
        .await
        .verify_identity(common::declare(&r, "P03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), gw::Verdict::Match);
    let mut wrong = common::declare(&r, "P03");
    wrong.full_name = "TRẦN VĂN KHÔNG CÓ".into();
    let answer = gw
        .client("portal")
        .await
        .verify_identity(wrong)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), gw::Verdict::NoMatch);
    assert_eq!(gw.gateway.lookups.kind(), "postgres");
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_gone_answers_could_not_check() {
    let db = TempDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    import_to_postgres(&config.population_path(), &db.url).await;
    drop(dir);
    let relay = common::Relay::start("127.0.0.1:5432").await;
    let url = db.url.replace("127.0.0.1:5432", &relay.addr.to_string());
    let gw = TestGateway::builder()
        .config(move |c| {
            c.registry.kind = popgw::config::RegistryKind::Postgres;
            c.registry.url = Some(url);
            c.registry.timeout_ms = 500;
            // The store itself is under test: no cache to answer in its place.
            c.cache.enabled = false;
        })
        .start()
        .await;
    let r = gw.living().clone();
    let mut client = gw.client("ministry").await;
    let answer = client
        .verify_identity(common::declare(&r, "P21"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), gw::Verdict::Match);
    // The database goes away: connections cut, nobody listening.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for req in [
        common::declare(&r, "P21"),
        common::declare(gw.find(|x| x.personal_id != r.personal_id), "P21"),
    ] {
        let t = Instant::now();
        let e = client.verify_identity(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().starts_with("could not check"),
            "{}",
            e.message()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    let e = client
        .get_citizen(gw::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
            procedure_code: "P21".into(),
            case_id: "HS-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "never NOT_FOUND: {e:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_that_hangs_answers_within_the_timeout() {
    // Accepts connections and never answers: a database that is too slow.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let store = PgStore::connect(
        &format!("postgres://postgres@{addr}/popgw"),
        &StoreOptions {
            timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let e = store.unwrap_err();
    assert!(
        e.to_string().contains("did not answer within 300 ms"),
        "{e}"
    );
}

#[tokio::test]
async fn import_errors_name_the_line_and_keep_the_previous_store() {
    let (_dir, config) = folder();
    let records = population_records(&config.population_path());
    let store_dir = config.registry_path();
    let before = std::fs::read_to_string(store_dir.join("CURRENT")).unwrap();
    let lines: Vec<String> = records
        .iter()
        .take(20)
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let import = |text: String| {
        DiskStore::import(
            &store_dir,
            Records::new(std::io::Cursor::new(text.into_bytes()), false),
            &mut |_| {},
        )
    };
    // Malformed JSON on line 8.
    let mut bad = lines.clone();
    bad[7] = "{\"personalId\": ".into();
    let e = import(bad.join("\n")).unwrap_err();
    assert!(
        e.to_string().starts_with("line 8: not a CitizenRecord"),
        "{e}"
    );
    // A duplicate id on line 15.
    let mut dup = lines.clone();
    dup[14] = lines[3].clone();
    let e = import(dup.join("\n")).unwrap_err();
    assert_eq!(e.to_string(), "line 15: duplicate personal_id");
    // The store still serves the whole previous population.
    assert_eq!(
        std::fs::read_to_string(store_dir.join("CURRENT")).unwrap(),
        before
    );
    let store = DiskStore::open(&store_dir, &StoreOptions::default()).unwrap();
    assert_eq!(store.count().await.unwrap(), records.len() as u64);
    let last = records.last().unwrap();
    assert!(store
        .citizen(
            &LookupKey::PersonalId(last.personal_id.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10))
        )
        .await
        .unwrap()
        .is_some());
    assert!(!std::fs::read_dir(&store_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));

    // PostgreSQL: the duplicate is found by the unique index, and named by its line.
    let db = TempDb::create().await;
    let e = PgStore::import(
        &db.url,
        Records::new(std::io::Cursor::new(dup.join("\n").into_bytes()), false),
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "line 15: duplicate personal_id");
    let e = PgStore::import(
        &db.url,
        Records::new(std::io::Cursor::new(bad.join("\n").into_bytes()), false),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(e.to_string().starts_with("line 8:"), "{e}");
    // Nothing was imported.
    assert!(
        PgStore::connect(&db.url, &StoreOptions::default())
            .await
            .unwrap()
            .count()
            .await
            .unwrap()
            == 0
    );
    db.drop_db().await;
}

/// A gateway pointed at a database no import has made says so and how to make one
/// (told apart by SQLSTATE 42P01, not by the server's wording).
#[tokio::test]
async fn a_database_without_a_registry_is_named_with_the_command_that_makes_one() {
    let db = TempDb::create().await;
    let e = PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no registry in this database") && e.contains("popgw registry import"),
        "{e}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_running_store_picks_up_a_new_import() {
    let (_dir, config) = folder();
    let records = population_records(&config.population_path());
    let store = DiskStore::open(&config.registry_path(), &StoreOptions::default()).unwrap();
    let old = store.versions().await.unwrap();
    let first = records[0].personal_id.clone();
    // A new population (another seed) imported under the running store.
    let other = tempfile::NamedTempFile::new().unwrap();
    popgw_population::generate_to_file(300, 99, other.path()).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let summary = import_to_disk(other.path(), &config.registry_path());
    assert_eq!(summary.imported, 300);
    // Until it looks, it serves the old one in full...
    assert!(store
        .citizen(
            &LookupKey::PersonalId(first.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10))
        )
        .await
        .unwrap()
        .is_some());
    store.refresh().await.unwrap();
    // ...then the new one, whose versions continue above the old ones.
    assert_eq!(store.count().await.unwrap(), 300);
    let new = store.versions().await.unwrap();
    assert!(new.floor > old.head, "{new:?} after {old:?}");
    assert!(store.changes_after(old.head, 10).await.is_err());
    let newcomer = population_records(other.path())[0].personal_id.clone();
    assert!(store
        .citizen(
            &LookupKey::PersonalId(newcomer),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10))
        )
        .await
        .unwrap()
        .is_some());
}

/// Records that make an update to `store` half-way through, as an operator might while
/// a long import runs.
fn records_with_an_update_midway(
    population: &Path,
    store: Arc<dyn Store>,
    personal_id: String,
) -> impl Iterator<Item = Result<(u64, pb::CitizenRecord), popgw::registry::import::ImportError>>
       + Send
       + 'static {
    let file = std::io::BufReader::new(std::fs::File::open(population).unwrap());
    let handle = tokio::runtime::Handle::current();
    let mut n = 0;
    Records::new(file, false).inspect(move |_| {
        n += 1;
        if n == 1000 {
            let changed = handle
                .block_on(store.update(&personal_id, &Change::AddressLine("Thôn Mới".into())))
                .unwrap();
            assert!(changed.is_some());
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_during_an_import_fails_the_import_instead_of_being_lost() {
    let (_dir, config) = folder();
    let records = population_records(&config.population_path());
    let id = records[10].personal_id.clone();

    let disk: Arc<dyn Store> =
        Arc::new(DiskStore::open(&config.registry_path(), &StoreOptions::default()).unwrap());
    let before = disk.versions().await.unwrap();
    let (population, dir, store) = (
        config.population_path(),
        config.registry_path(),
        disk.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    let e = tokio::task::spawn_blocking(move || {
        let _guard = handle.enter();
        DiskStore::import(
            &dir,
            records_with_an_update_midway(&population, store, id),
            &mut |_| {},
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        e.to_string().contains("updated 1 times during the import"),
        "{e}"
    );
    // The update is kept, and served.
    disk.refresh().await.unwrap();
    assert_eq!(disk.versions().await.unwrap().head, before.head + 1);
    let got = disk
        .citizen(
            &LookupKey::PersonalId(records[10].personal_id.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.permanent_residence.unwrap().line, "Thôn Mới");

    let db = TempDb::create().await;
    import_to_postgres(&config.population_path(), &db.url).await;
    let pg: Arc<dyn Store> = Arc::new(
        PgStore::connect(&db.url, &StoreOptions::default())
            .await
            .unwrap(),
    );
    let head = pg.versions().await.unwrap().head;
    let e = PgStore::import(
        &db.url,
        records_with_an_update_midway(
            &config.population_path(),
            pg.clone(),
            records[10].personal_id.clone(),
        ),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("updated 1 times during the import"),
        "{e}"
    );
    assert_eq!(pg.versions().await.unwrap().head, head + 1);
    let got = pg
        .citizen(
            &LookupKey::PersonalId(records[10].personal_id.clone()),
            popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.permanent_residence.unwrap().line, "Thôn Mới");
    db.drop_db().await;
}
