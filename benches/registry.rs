//! The embedded registry at national-demo scale: generate 1 million citizens,
//! load them, look them up, and report time and memory (RSS).
//!
//! `cargo bench --bench registry` (set POPGW_BENCH_CITIZENS to change the size).

use std::time::Instant;

use popgw::registry::embedded::EmbeddedRegistry;
use popgw::registry::generate::generate_to_file;
use popgw::registry::LookupKey;

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

fn main() {
    // Ignore criterion-style arguments cargo bench passes (e.g. --bench).
    let count: u64 = std::env::var("POPGW_BENCH_CITIZENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("population.jsonl");

    let t = Instant::now();
    let summary = generate_to_file(count, 1, &path).unwrap();
    let generated = t.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "generate: {} citizens, {} households in {:.1} s ({:.0} MB JSON Lines, fsynced)",
        summary.count,
        summary.households,
        generated.as_secs_f64(),
        size as f64 / 1e6
    );

    let rss_before = status("VmRSS:");
    let t = Instant::now();
    let registry = EmbeddedRegistry::load_jsonl(&path).unwrap();
    let loaded = t.elapsed();
    println!(
        "load: {} citizens in {:.1} s; RSS before {rss_before}, after {}, peak {}",
        registry.len(),
        loaded.as_secs_f64(),
        status("VmRSS:"),
        status("VmHWM:")
    );

    let ids: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .step_by(97)
        .map(|l| {
            serde_json::from_str::<popgw::proto::registry::CitizenRecord>(l)
                .unwrap()
                .personal_id
        })
        .collect();
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..10 {
        for id in &ids {
            found += registry
                .get(&LookupKey::PersonalId(id.clone()))
                .unwrap()
                .is_some() as usize;
        }
    }
    let per = t.elapsed().as_nanos() as f64 / found as f64;
    println!("lookup (decode included): {found} lookups, {per:.0} ns each");
}
