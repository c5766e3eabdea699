//! Durable (Fsync mode) group-commit throughput of the audit log.
//!
//! 64 concurrent tokio tasks each append records; throughput is reported as
//! records (elements) per second. Mean batch size is printed at the end.

use popgw::audit;

use audit::{AuditConfig, AuditEntry, AuditLog, Durability, Outcome, Pseudonym, Pseudonymizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use popgw::cache::CacheOutcome;
use popgw::catalogue::{ClaimedProcedure, MatchingRule};
use popgw::policy::Rpc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// One subject and one dossier, made once: the bench measures the log, not the HMAC.
static PEOPLE: LazyLock<(Pseudonym, Pseudonym)> = LazyLock::new(|| {
    let keys = Pseudonymizer::new([4; 32]);
    (
        keys.pseudonym("079198000001"),
        keys.case_pseudonym("HS-2026-000001"),
    )
});

const TASKS: usize = 64;
const PER_TASK: usize = 16;

fn entry(i: usize) -> AuditEntry {
    AuditEntry {
        related: Vec::new(),
        request_id: format!("req-{i}"),
        client: "spiffe://popgw.dev/portal/dvcqg".into(),
        rpc: Rpc::VerifyIdentity.into(),
        procedure: ClaimedProcedure::Known("P03".into()),
        case_id: Some(PEOPLE.1.clone()),
        subject: Some(PEOPLE.0.clone()),
        fields: vec!["verdict".into()],
        outcome: Outcome::Match,
        code: Some(tonic::Code::Ok),
        rule: Some(MatchingRule::Exact),
        cache: Some(CacheOutcome::None),
        latency_us: 850,
        detail: String::new(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // On the real disk (not tmpfs), so fsync costs what it costs.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cfg = AuditConfig::new(tmp.path(), "bench-node");
    cfg.durability = Durability::Fsync;
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let log = AuditLog::open(cfg, key).unwrap();

    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("fsync_group_commit_64_tasks", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let log = log.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = Vec::with_capacity(TASKS);
                    for t in 0..TASKS {
                        let log = log.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..PER_TASK {
                                log.append(entry(t * PER_TASK + i)).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            }
        });
    });
    g.finish();

    let (batches, records) = log.batch_stats();
    rt.block_on(log.shutdown());
    println!(
        "audit bench: {records} records in {batches} fsynced batches, mean batch size {:.1}",
        records as f64 / batches.max(1) as f64
    );
    audit::verify_dir(tmp.path(), None).expect("benchmark log verifies");

    // With POPGW_BENCH_WITNESS=nats://HOST:PORT: does the witness keep up with that rate?
    if let Ok(url) = std::env::var("POPGW_BENCH_WITNESS") {
        rt.block_on(witness_run(url));
    }
}

/// Appends as fast as 64 tasks can with the shipper running, then reports how far
/// behind the witness was and how long it took to catch up.
async fn witness_run(url: String) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cfg = AuditConfig::new(tmp.path(), "bench-witness");
    cfg.durability = Durability::Fsync;
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let public = key.verifying_key();
    let log = AuditLog::open(cfg, key).unwrap();
    let stream = format!("POPGW_BENCH_{:08x}", rand::random::<u32>());
    let witness = audit::witness::WitnessConfig {
        link: popgw::link::nats::NatsLink::new(url.clone()),
        stream: stream.clone(),
        replicas: 1,
        node: "bench-witness".into(),
        records: std::env::var("POPGW_BENCH_WITNESS_HEADS_ONLY").is_err(),
    };
    let metrics = std::sync::Arc::new(popgw::telemetry::Metrics::default());
    let shipper = audit::witness::Shipper::new(witness, log.clone(), public, metrics.clone());
    let acked = shipper.status();
    let task = tokio::spawn(shipper.run());
    const PER: usize = 3_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER {
                log.append(entry(t * PER + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appended = start.elapsed();
    let last = log.last_seq();
    let lag_at_end = last.saturating_sub(acked.acked());
    while acked.acked() < last {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = start.elapsed() - appended;
    task.abort();
    let (batches, _) = log.batch_stats();
    println!(
        "witness bench: {last} records ({batches} sealed batches) in {:.2} s = {:.0} records/s with the shipper running; \
         {} batch heads shipped; lag when the appends ended: {lag_at_end} records, caught up {} ms later",
        appended.as_secs_f64(),
        last as f64 / appended.as_secs_f64(),
        metrics.witness_shipped.get(),
        caught_up.as_millis()
    );
    log.shutdown().await;
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}

criterion_group!(benches, bench);
criterion_main!(benches);
