//! The record cache under a realistic id mix: how many registry calls 1,000
//! verifications make, for ids drawn from a Zipf distribution (s = 1.1) over 1 M
//! citizens, with a cache of 100,000 entries (moka's TinyLFU admission decides what
//! stays). The registry here is in-process and counts its calls; its records are real
//! generated ones (1,000 templates, each answered under the id asked), so the cache
//! weighs what it would hold in production. Its change feed is the quiet one (a mark
//! every second), followed as `popgw serve` does.
//!
//! `cargo bench -p popgw-benches --bench cache` (POPGW_BENCH_CITIZENS, POPGW_BENCH_ENTRIES, POPGW_BENCH_DRAWS,
//! POPGW_BENCH_ZIPF_S to change).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use popgw::cache::{CacheOptions, RecordCache};
use popgw::proto::registry::{CitizenRecord, Household};
use popgw::registry::{Deadline, LookupKey, Registry, RegistryError};
use popgw::telemetry::Metrics;
use rand::SeedableRng;
use rand_distr::Distribution;

struct Counting {
    templates: Vec<CitizenRecord>,
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Registry for Counting {
    async fn citizen(
        &self,
        key: &LookupKey,
        _: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let LookupKey::PersonalId(id) = key else {
            return Ok(None);
        };
        let n: usize = id[6..].parse().unwrap_or(0);
        let mut r = self.templates[n % self.templates.len()].clone();
        r.personal_id = id.clone();
        Ok(Some(r))
    }
    async fn household(&self, _: &str, _: Deadline) -> Result<Option<Household>, RegistryError> {
        Ok(None)
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let citizens = env("POPGW_BENCH_CITIZENS", 1_000_000.0) as u64;
    let entries = env("POPGW_BENCH_ENTRIES", 100_000.0) as u64;
    let draws = env("POPGW_BENCH_DRAWS", 2_000_000.0) as u64;
    let s = env("POPGW_BENCH_ZIPF_S", 1.1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut buf = Vec::new();
        popgw_population::generate(1_000, 2022, &mut buf).unwrap();
        let templates: Vec<CitizenRecord> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        // The byte budget that holds `entries` records of the average weight.
        let mean_encoded = templates
            .iter()
            .map(|r| prost::Message::encoded_len(r) as u64)
            .sum::<u64>()
            / templates.len() as u64;
        let per_entry = 12 + mean_encoded * 2 + 160;
        let registry = Arc::new(Counting {
            templates,
            calls: AtomicU64::new(0),
        });
        let metrics = Arc::new(Metrics::default());
        let cache = Arc::new(RecordCache::new(
            registry.clone(),
            CacheOptions {
                max_bytes: entries * per_entry,
                ttl: Duration::from_secs(3600),
                negative_ttl: Duration::from_secs(30),
                max_staleness: Duration::from_secs(5),
                serve_stale_on_error: false,
                stale_max_age: Duration::from_secs(60),
                load_timeout: Duration::from_secs(1),
            },
            metrics.clone(),
        ));
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(cache.clone().follow(stop_rx));
        // The feed's first mark: from then on its marks vouch for what is loaded.
        while !cache.feed_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let zipf = rand_distr::Zipf::new(citizens, s).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut run = |n: u64| {
            let keys: Vec<LookupKey> = (0..n)
                .map(|_| {
                    let rank = zipf.sample(&mut rng) as u64;
                    LookupKey::PersonalId(format!("001090{rank:06}"))
                })
                .collect();
            keys
        };
        let deadline = || Deadline::after(Duration::from_secs(1));
        // Warm up with as many draws as are measured.
        for key in run(draws) {
            let (r, _) = cache.citizen(&key, deadline()).await;
            r.unwrap();
        }
        cache.settle().await;
        let before = registry.calls.load(Ordering::Relaxed);
        let keys = run(draws);
        let start = Instant::now();
        for key in &keys {
            let (r, _) = cache.citizen(key, deadline()).await;
            r.unwrap();
        }
        let took = start.elapsed();
        cache.settle().await;
        let calls = registry.calls.load(Ordering::Relaxed) - before;
        println!(
            "cache: Zipf s={s} over {citizens} citizens, {entries} entries ({} MiB budget, {per_entry} B/entry est.): \
             {:.1} upstream calls per 1,000 verifications ({calls} in {draws} draws after as many to warm up); \
             held {} entries, {} MiB; {:.0} lookups/s on one task ({:.2} us each, misses included)",
            (entries * per_entry) >> 20,
            calls as f64 * 1000.0 / draws as f64,
            cache.len(),
            cache.weighted_size() >> 20,
            draws as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / draws as f64,
        );
        let distinct: std::collections::HashSet<&LookupKey> = keys.iter().collect();
        println!(
            "  (the measured draws named {} distinct citizens; evictions {})",
            distinct.len(),
            metrics.cache_evictions.get()
        );
    });
}
