//! No personal data in logs, on the registry side: with popgw's tracing at TRACE, an
//! import, `registry serve` answering, refusing, streaming changes, an update, a store
//! switching to a new import and a store that cannot answer leave no id, name, birth
//! date or address in the log output.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;

use common::population_records;
use popgw::client::{connect, ClientCerts};
use popgw::proto::registry as pb;
use popgw::proto::registry::population_registry_client::PopulationRegistryClient;
use popgw::registry::disk::DiskStore;
use popgw::registry::{Change, Store, StoreOptions};
use popgw::server::{serve_registry, RegistryServeOptions};
use tokio_stream::StreamExt;

#[tokio::test]
async fn registry_tracing_carries_no_personal_data() {
    let capture = crate::capture();

    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let records = population_records(&config.population_path());
    let store: Arc<dyn Store> =
        Arc::new(DiskStore::open(&config.registry_path(), &StoreOptions::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_registry(
        listener,
        store.clone(),
        RegistryServeOptions {
            tls: config.tls.clone(),
            allow: HashSet::from([popgw::pki::GATEWAY_ID.to_string()]),
            faults: Default::default(),
            metrics: Default::default(),
        },
        async {
            let _ = stopped.await;
        },
    ));
    let certs = dir.path().join("certs");
    let client = |who: &'static str| {
        let certs = certs.clone();
        async move {
            PopulationRegistryClient::new(
                connect(&format!("localhost:{port}"), &ClientCerts::dev(&certs, who))
                    .await
                    .unwrap(),
            )
        }
    };
    let mut gateway = client("gateway").await;
    let mut portal = client("portal").await;
    let r = records
        .iter()
        .find(|r| !r.old_id_number.is_empty())
        .unwrap()
        .clone();
    let mut feed = gateway
        .watch_changes(pb::WatchChangesRequest { from_version: 0 })
        .await
        .unwrap()
        .into_inner();
    feed.next().await.unwrap().unwrap();
    for key in [&r.personal_id, &r.old_id_number] {
        gateway
            .get_citizen(pb::GetCitizenRequest {
                personal_id: key.clone(),
            })
            .await
            .unwrap();
    }
    let household = r.household.as_ref().unwrap().household_id.clone();
    gateway
        .get_household(pb::GetHouseholdRequest {
            household_id: household.clone(),
        })
        .await
        .unwrap();
    assert!(portal
        .get_citizen(pb::GetCitizenRequest {
            personal_id: r.personal_id.clone(),
        })
        .await
        .is_err());
    let mut bad = r.personal_id.clone();
    bad.push('7');
    assert!(gateway
        .get_citizen(pb::GetCitizenRequest { personal_id: bad })
        .await
        .is_err());
    let new_line = "Số 99 phố Hàng Bạc";
    store
        .update(&r.personal_id, &Change::AddressLine(new_line.into()))
        .await
        .unwrap();
    assert!(store
        .update(&r.personal_id, &Change::Deceased("1800-01-01".into()))
        .await
        .is_err());
    feed.next().await.unwrap().unwrap();
    // A re-import under the running server.
    common::import_to_disk(&config.population_path(), &config.registry_path());
    store.refresh().await.unwrap();
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("client not allowed"),
        "the refusal is traced:\n{text}"
    );
    assert!(
        text.contains("switched to a new import"),
        "the switch is traced:\n{text}"
    );
    let address = r.permanent_residence.as_ref().unwrap().line.clone();
    for needle in [
        r.personal_id.as_str(),
        r.old_id_number.as_str(),
        r.full_name.as_str(),
        r.date_of_birth.as_str(),
        address.as_str(),
        new_line,
    ] {
        assert!(
            !text.contains(needle),
            "personal data in logs: {needle}\n{text}"
        );
    }
}
