//! kill -9 under concurrent load, then restart: no answer a client received is
//! missing from the audit log, and the log verifies.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use popgw::client::{connect, ClientCerts};
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_answered_request() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::prepare(dir.path());
    let population = common::population_records(&config.population_path());
    let cfg_path = common::write_config(
        dir.path(),
        &config,
        "[audit]\ncheckpoint_every_records = 50\n",
    );
    common::init_node(&cfg_path);

    let (mut child, port) = common::spawn_serve(&cfg_path, "info", Stdio::null());
    let certs = ClientCerts::dev(&dir.path().join("certs"), "portal");
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let living: Vec<_> = population
        .iter()
        .filter(|r| r.date_of_death.is_empty())
        .take(200)
        .cloned()
        .collect();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let channel = connect(&format!("localhost:{port}"), &certs).await.unwrap();
        for t in 0..8 {
            let mut client = IdentityGatewayClient::new(channel.clone());
            let answered = answered.clone();
            let living = living.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = c * 8 + t;
                loop {
                    let req = common::declare(&living[i % living.len()], "P03");
                    match client.verify_identity(req).await {
                        Ok(a) => answered.lock().unwrap().push(a.into_inner().request_id),
                        Err(_) => return,
                    }
                    i += 32;
                }
            }));
        }
    }
    // Let load build up, then kill -9 in the middle of it.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if answered.lock().unwrap().len() >= 500 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 100,
        "load did not build up: {}",
        answered.len()
    );

    // Restart: recovery, then a clean stop.
    let (mut child, _) = common::spawn_serve(&cfg_path, "info", Stdio::null());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    let audit_dir = config.audit_dir();
    let records = popgw::audit::read_records(&audit_dir).unwrap();
    let logged: std::collections::HashSet<_> =
        records.iter().map(|r| r.body.request_id.clone()).collect();
    let missing: Vec<_> = answered.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests missing from the log",
        missing.len(),
        answered.len()
    );
    let report = popgw::audit::verify_dir(&audit_dir, None)
        .expect("the log verifies after kill -9 and restart");
    assert!(report.records as usize >= answered.len());
}
