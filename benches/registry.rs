//! The registry at national scale: import, size, open time, lookup latency and memory
//! of the on-disk store or PostgreSQL; and GetCitizen throughput through a running
//! `popgw registry serve`.
//!
//! ```text
//! # import N citizens (generated, piped: no intermediate file), then measure
//! POPGW_BENCH_CITIZENS=1000000 POPGW_BENCH_STORE=disk cargo bench -p popgw-benches --bench registry
//! POPGW_BENCH_STORE=postgres POPGW_BENCH_PG=postgres://postgres@127.0.0.1:5432/bench cargo bench -p popgw-benches --bench registry
//! POPGW_BENCH_STORE=embedded cargo bench -p popgw-benches --bench registry       # the in-memory registry
//! POPGW_BENCH_OPEN=DIR cargo bench -p popgw-benches --bench registry             # lookups only, on a kept store
//! # keep the store (POPGW_BENCH_KEEP=DIR) and write the sampled ids to DIR/ids.txt, then
//! # drive a `popgw registry serve --store DIR` from another core:
//! POPGW_BENCH_SERVE_ADDR=localhost:50061 POPGW_BENCH_DIR=DIR POPGW_BENCH_CERTS=certs cargo bench -p popgw-benches --bench registry
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use popgw::registry::disk::DiskStore;
use popgw::registry::embedded::EmbeddedRegistry;
use popgw::registry::import::Records;
use popgw::registry::postgres::PgStore;
use popgw::registry::{self, LookupKey, Registry, StoreLocation, StoreOptions};

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "n/a".into())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The generator in a thread, writing JSON Lines into a pipe; the records it yields
/// with every 1000th personal id (and old id) kept as lookup samples.
/// A record read for import, with its line number.
type Item =
    Result<(u64, popgw::proto::registry::CitizenRecord), popgw::registry::import::ImportError>;

fn piped_population(
    count: u64,
    seed: u64,
) -> (
    impl Iterator<Item = Item> + Send + 'static,
    std::sync::mpsc::Receiver<(String, String)>,
) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    std::thread::spawn(move || popgw_population::generate(count, seed, &mut writer).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut n = 0u64;
    let records = Records::new(std::io::BufReader::with_capacity(1 << 20, reader), false).inspect(
        move |item| {
            if let Ok((_, r)) = item {
                n += 1;
                if n % 1000 == 1 {
                    let _ = tx.send((r.personal_id.clone(), r.old_id_number.clone()));
                }
            }
        },
    );
    (records, rx)
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: {} lookups, p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

async fn lookups(registry: &dyn Registry, ids: &[(String, String)], rounds: usize) {
    let mut by_id = Histogram::<u64>::new(3).unwrap();
    let mut by_old = Histogram::<u64>::new(3).unwrap();
    let mut misses = Histogram::<u64>::new(3).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..rounds {
        for _ in 0..ids.len() {
            // xorshift: a uniformly random sampled citizen each time.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (id, old) = &ids[(rng % ids.len() as u64) as usize];
            let t = Instant::now();
            let r = registry
                .citizen(
                    &LookupKey::PersonalId(id.clone()),
                    popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
                )
                .await
                .unwrap();
            by_id.record(t.elapsed().as_nanos() as u64).unwrap();
            assert!(r.is_some());
            if !old.is_empty() {
                let t = Instant::now();
                let r = registry
                    .citizen(
                        &LookupKey::OldId(old.clone()),
                        popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
                    )
                    .await
                    .unwrap();
                by_old.record(t.elapsed().as_nanos() as u64).unwrap();
                assert!(r.is_some());
            }
            let miss = format!("{}{:06}", &id[..6], (rng >> 20) % 1_000_000);
            let t = Instant::now();
            let _ = registry
                .citizen(
                    &LookupKey::PersonalId(miss),
                    popgw::registry::Deadline::after(std::time::Duration::from_secs(10)),
                )
                .await
                .unwrap();
            misses.record(t.elapsed().as_nanos() as u64).unwrap();
        }
    }
    report("lookup by personal id (decode included)", &by_id);
    report("lookup by old id", &by_old);
    report("lookup of an absent id (mostly)", &misses);
}

/// GetCitizen through `popgw registry serve`: 64 callers on 4 mutual-TLS connections.
async fn drive_server(addr: &str, dir: &Path, certs: &Path) {
    use popgw::proto::registry::population_registry_client::PopulationRegistryClient;
    let ids: Vec<String> = std::fs::read_to_string(dir.join("ids.txt"))
        .expect("ids.txt (run the import bench with POPGW_BENCH_KEEP first)")
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let ids = Arc::new(ids);
    let certs = popgw::client::ClientCerts::dev(certs, "gateway");
    let secs = env("POPGW_BENCH_SECS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(popgw::client::connect(addr, &certs).await.unwrap());
    }
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..64usize {
        let mut client = PopulationRegistryClient::new(channels[c % 4].clone());
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut i = c * 7919;
            let mut errors = 0u64;
            while Instant::now() < end {
                i = (i + 104_729) % ids.len();
                let t = Instant::now();
                let r = client
                    .get_citizen(popgw::proto::registry::GetCitizenRequest {
                        personal_id: ids[i].clone(),
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().citizen.is_some() => {
                        h.record(t.elapsed().as_micros() as u64).unwrap();
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        all.add(h).unwrap();
        errors += e;
    }
    println!(
        "GetCitizen through registry serve: {} answers in {secs} s = {:.0}/s, {errors} errors; p50 {} µs, p99 {} µs, p99.9 {} µs",
        all.len(),
        all.len() as f64 / secs as f64,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Some(addr) = env("POPGW_BENCH_SERVE_ADDR") {
        let dir = PathBuf::from(env("POPGW_BENCH_DIR").expect("POPGW_BENCH_DIR"));
        let certs = PathBuf::from(env("POPGW_BENCH_CERTS").unwrap_or_else(|| "certs".into()));
        drive_server(&addr, &dir, &certs).await;
        return;
    }
    let count: u64 = env("POPGW_BENCH_CITIZENS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let kind = env("POPGW_BENCH_STORE").unwrap_or_else(|| "disk".into());
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let keep = env("POPGW_BENCH_KEEP").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| tmp.path().join("store"));
    println!("{kind}: {count} citizens");

    // POPGW_BENCH_OPEN=DIR: no import; open a store kept by an earlier run
    // (POPGW_BENCH_KEEP=DIR) and look up the ids it kept.
    if let Some(open) = env("POPGW_BENCH_OPEN").map(PathBuf::from) {
        let ids: Vec<(String, String)> = std::fs::read_to_string(open.join("ids.txt"))
            .unwrap()
            .lines()
            .map(|l| {
                let (id, old) = l.split_once(' ').unwrap_or((l, ""));
                (id.to_string(), old.to_string())
            })
            .collect();
        let t = Instant::now();
        let store = registry::open_store(&StoreLocation::Disk(open), &StoreOptions::default())
            .await
            .unwrap();
        println!("open: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let registry: Arc<dyn Registry> = store;
        lookups(registry.as_ref(), &ids, 5).await;
        println!(
            "after lookups: RSS {} (anon {})",
            status("VmRSS:"),
            status("RssAnon:")
        );
        return;
    }
    if kind == "embedded" {
        let path = tmp.path().join("population.jsonl");
        popgw_population::generate_to_file(count, 1, &path).unwrap();
        let t = Instant::now();
        let registry = EmbeddedRegistry::load_jsonl(&path).unwrap();
        println!(
            "load: {} citizens in {:.1} s; RSS {}, peak {}",
            registry.len(),
            t.elapsed().as_secs_f64(),
            status("VmRSS:"),
            status("VmHWM:")
        );
        let ids: Vec<(String, String)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .step_by(1000)
            .map(|l| {
                let r: popgw::proto::registry::CitizenRecord = serde_json::from_str(l).unwrap();
                (r.personal_id, r.old_id_number)
            })
            .collect();
        lookups(&registry, &ids, 100).await;
        return;
    }

    let (records, samples) = piped_population(count, 1);
    let t = Instant::now();
    let mut last_print = Instant::now();
    let mut progress = move |n: u64| {
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!("  … {n} imported");
        }
    };
    let location = if kind == "postgres" {
        let url = env("POPGW_BENCH_PG").expect("POPGW_BENCH_PG=postgres://…");
        PgStore::import(&url, records, progress).await.unwrap();
        StoreLocation::Postgres(url)
    } else {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || DiskStore::import(&d, records, &mut progress))
            .await
            .unwrap()
            .unwrap();
        StoreLocation::Disk(dir.clone())
    };
    let took = t.elapsed();
    let ids: Vec<(String, String)> = samples.try_iter().collect();
    println!(
        "import (generator piped in, on the other core): {count} in {:.1} s = {:.0} citizens/s; import process peak RSS {}",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        status("VmHWM:")
    );
    if let Some(keep) = &keep {
        let mut f = std::fs::File::create(keep.join("ids.txt")).unwrap();
        for (id, old) in &ids {
            writeln!(f, "{id} {old}").unwrap();
        }
    }
    let options = StoreOptions::default();
    match &location {
        StoreLocation::Disk(d) => {
            let size = dir_size(d);
            println!(
                "size on disk: {:.2} GB ({:.2} GB per million)",
                size as f64 / 1e9,
                size as f64 / 1e9 / (count as f64 / 1e6)
            );
        }
        StoreLocation::Postgres(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let row = client
                .query_one(
                    "SELECT pg_table_size('citizens'), pg_indexes_size('citizens')",
                    &[],
                )
                .await
                .unwrap();
            let (table, indexes): (i64, i64) = (row.get(0), row.get(1));
            println!(
                "size in PostgreSQL: table {:.2} GB + indexes {:.2} GB = {:.2} GB per million",
                table as f64 / 1e9,
                indexes as f64 / 1e9,
                (table + indexes) as f64 / 1e9 / (count as f64 / 1e6)
            );
        }
    }
    let rss_before = status("VmRSS:");
    let t = Instant::now();
    let store = registry::open_store(&location, &options).await.unwrap();
    println!(
        "open: {:.1} ms (RSS before {rss_before}, after {})",
        t.elapsed().as_secs_f64() * 1e3,
        status("VmRSS:")
    );
    let registry: Arc<dyn Registry> = store;
    lookups(
        registry.as_ref(),
        &ids,
        if count > 5_000_000 { 5 } else { 20 },
    )
    .await;
    println!(
        "after lookups: RSS {} (anon {}, file {})",
        status("VmRSS:"),
        status("RssAnon:"),
        status("RssFile:")
    );
}
