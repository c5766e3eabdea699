//! End-to-end load on the real gateway: full mutual TLS on loopback, policy,
//! validation, the on-disk registry (100,000 citizens), matching, and the durable (fsync, group-commit)
//! audit log — every answer waits for its record to be on disk.
//!
//! A closed loop: CALLERS tasks over CHANNELS HTTP/2 connections, each sending
//! `VerifyIdentity` and waiting for the answer, for DURATION. Server and load
//! generator share this process and the machine's cores, so the figure is a floor.
//!
//! `cargo bench -p popgw-benches --bench gateway` (POPGW_BENCH_SECS, POPGW_BENCH_CALLERS to change).
//!
//! Against a gateway already running elsewhere (e.g. `taskset -c 0 popgw serve` in
//! DIR, so that server and generator each get their own core): set
//! POPGW_BENCH_ADDR=localhost:50051 and POPGW_BENCH_DIR=DIR (its certs/ and data/).
//! With POPGW_BENCH_IDS=FILE the declarations are made up from a file of ids (the
//! `ids.txt` that `POPGW_BENCH_KEEP=DIR cargo bench -p popgw-benches --bench registry` writes), for a
//! gateway over a national-size store whose population file is not at hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use popgw::client::{connect, ClientCerts};
use popgw::config::Config;
use popgw::proto::gateway as pb;
use popgw::proto::gateway::identity_gateway_client::IdentityGatewayClient;
use popgw::proto::registry::CitizenRecord;
use popgw::Server;
use tokio::sync::Mutex;

const CHANNELS: usize = 4;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env("POPGW_BENCH_SECS", 10);
    let callers = env("POPGW_BENCH_CALLERS", 64) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let external = std::env::var("POPGW_BENCH_ADDR").ok();
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let root = match &external {
            Some(_) => std::path::PathBuf::from(std::env::var("POPGW_BENCH_DIR").expect("POPGW_BENCH_DIR")),
            None => tmp.path().to_path_buf(),
        };
        let mut config = Config::rooted_at(&root);
        config.registry.demo_count = 100_000;
        if external.is_none() {
            // The population as a file (the callers' declarations), imported into the
            // on-disk store the gateway serves by default.
            config.registry.create_demo = false;
            config.zero_config = true;
            popgw::demo::prepare(&config).unwrap();
            popgw_population::generate_to_file(100_000, 2022, &config.population_path()).unwrap();
            let file = std::io::BufReader::new(std::fs::File::open(config.population_path()).unwrap());
            popgw::registry::disk::DiskStore::import(
                &config.registry_path(),
                popgw::registry::import::Records::new(file, false),
                &mut |_| {},
            )
            .unwrap();
        }
        // POPGW_BENCH_IDS=FILE (one id per line, as `cargo bench -p popgw-benches --bench registry` keeps
        // them): declarations made up from the ids alone (answers NO_MATCH after a real
        // lookup), for a store whose population file is not at hand.
        let from_ids = std::env::var("POPGW_BENCH_IDS").ok();
        let population: Vec<CitizenRecord> = match &from_ids {
            Some(file) => std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .filter_map(|l| l.split(' ').next())
                .map(|id| {
                    let p = popgw::validation::parse_personal_id(id).unwrap();
                    CitizenRecord {
                        personal_id: id.to_string(),
                        full_name: "NGUYỄN VĂN AN".into(),
                        date_of_birth: p.birth_year.to_string(),
                        sex: p.sex as i32,
                        ..Default::default()
                    }
                })
                .collect(),
            None => std::fs::read_to_string(config.population_path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|r: &CitizenRecord| r.date_of_death.is_empty() && r.date_of_disappearance.is_empty())
                .take(10_000)
                .collect(),
        };
        let any_verdict = from_ids.is_some();
        let (addr, in_process) = match &external {
            Some(addr) => (addr.clone(), None),
            None => {
                let server = Server::load(config).await.unwrap();
                let gateway = server.gateway();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let served = tokio::spawn(server.serve(listener, async {
                    let _ = stop_rx.await;
                }));
                (format!("localhost:{port}"), Some((gateway, stop_tx, served)))
            }
        };

        let certs = ClientCerts::dev(&root.join("certs"), "portal");
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            channels.push(connect(&addr, &certs).await.unwrap());
        }
        let population = Arc::new(population);
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let mut client = IdentityGatewayClient::new(channels[c % CHANNELS].clone());
            let population = population.clone();
            let hist = hist.clone();
            tasks.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = c;
                while Instant::now() < deadline {
                    let r = &population[i % population.len()];
                    i += callers;
                    let req = pb::VerifyIdentityRequest {
                        personal_id: r.personal_id.clone(),
                        full_name: r.full_name.clone(),
                        date_of_birth: r.date_of_birth.clone(),
                        sex: r.sex,
                        procedure_code: "P03".into(),
                        case_id: format!("BENCH-{i}"),
                    };
                    let t = Instant::now();
                    match client.verify_identity(req).await {
                        Ok(a) if any_verdict || a.get_ref().verdict() == pb::Verdict::Match => ok += 1,
                        _ => failed += 1,
                    }
                    local.record(t.elapsed().as_micros() as u64).unwrap();
                }
                hist.lock().await.add(local).unwrap();
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed += f;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let h = hist.lock().await;
        println!(
            "gateway VerifyIdentity: {callers} callers on {CHANNELS} mTLS connections for {elapsed:.1} s: \
             {ok} answered (MATCH, or any verdict with POPGW_BENCH_IDS), {failed} other; {:.0} req/s; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            ok as f64 / elapsed,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
        if let Some((gateway, stop_tx, served)) = in_process {
            let (batches, records) = gateway.audit.batch_stats();
            println!(
                "audit: {records} records in {batches} fsynced batches (mean {:.1} per fsync)",
                records as f64 / batches.max(1) as f64
            );
            let _ = stop_tx.send(());
            served.await.unwrap().unwrap();
        }
    });
}
