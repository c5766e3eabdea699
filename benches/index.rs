//! The central audit index (`cargo bench -p popgw-benches --bench index`; PostgreSQL on 127.0.0.1:5432 and
//! NATS JetStream on 127.0.0.1:4222, each bench run in a database and stream of its own,
//! removed at the end):
//!
//! 1. Indexing rate: 200,000 records appended to a real audit log (64 tasks, fsync) and
//!    shipped to the witness stream; once shipped, the `Indexer` starts and is timed from
//!    its start until every record is in PostgreSQL (NATS consume, checks, commit).
//! 2. Bulk fill through the same insert (`AuditIndex::insert`, 5,000 records a
//!    transaction) to 1 M and then 10 M records (`POPGW_BENCH_INDEX_MAX` to change): 8
//!    nodes, times spread over 24 months (24 partitions, as two years' retention keeps),
//!    subjects drawn from 800,000 people (12.5 records each at 10 M), one record in ten a
//!    disclosure naming two relatives.
//! 3. At 1 M and 10 M: p50/p99/max of a subject's history (the citizen report's query,
//!    and AuditLog.Query by personal id), one caller, over 2,000 random people (whose
//!    histories grow with the log) and over 2,000 probe people given exactly 10 records
//!    each during the first million (the same answer at 1 M and 10 M: what changes is
//!    only the log around them); the plan of one probe's history; and the index's size
//!    on disk per million records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use popgw::audit::index::{AuditIndex, FeedConfig, IndexConfig, IndexedRecord, Indexer};
use popgw::audit::{
    AuditConfig, AuditEntry, AuditLog, Filter, Outcome, Pseudonym, Pseudonymizer, RecordBody,
};
use popgw::cache::CacheOutcome;
use popgw::catalogue::{ClaimedProcedure, MatchingRule};
use popgw::policy::Rpc;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const NATS: &str = "nats://127.0.0.1:4222";
const PEOPLE: u64 = 800_000;
const NODES: usize = 8;
const E2E_RECORDS: usize = 200_000;
/// People with exactly [`PROBE_EVENTS`] records each, all in the first million.
const PROBES: u64 = 2_000;
const PROBE_EVENTS: u64 = 10;

/// The pseudonym of person number `person`, made as a gateway makes one.
fn pseudonym(person: u64) -> Pseudonym {
    static KEYS: std::sync::LazyLock<Pseudonymizer> =
        std::sync::LazyLock::new(|| Pseudonymizer::new([8; 32]));
    KEYS.pseudonym(&format!("{person:012}"))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (see BENCHMARKS.md)");
    tokio::spawn(connection);
    client
}

async fn run() {
    let max: u64 = std::env::var("POPGW_BENCH_INDEX_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    // POPGW_BENCH_INDEX_REUSE=<database>: measure the queries again on a database an earlier
    // run filled (kept with POPGW_BENCH_INDEX_KEEP=1), without refilling it.
    let reuse = std::env::var("POPGW_BENCH_INDEX_REUSE").ok();
    let keep = reuse.is_some() || std::env::var("POPGW_BENCH_INDEX_KEEP").is_ok();
    let name = reuse
        .clone()
        .unwrap_or_else(|| format!("popgw_bench_{:08x}", rand::random::<u32>()));
    if reuse.is_none() {
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let mut config = IndexConfig::new(&url);
    config.timeout = Duration::from_secs(120);
    let index = Arc::new(AuditIndex::open(&config).await.unwrap());
    if reuse.is_some() {
        let size = index.size_bytes().await.unwrap();
        println!(
            "reusing {name}: {:.2} GiB",
            size as f64 / (1u64 << 30) as f64
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        queries(&index, &mut rng).await;
        let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        print_plan(&pg).await;
        return;
    }

    end_to_end(index.clone()).await;

    let mut filled = 0u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2022);
    let mut chains: Vec<(u64, [u8; 32])> = vec![(1_000_000, [0; 32]); NODES];
    for target in [1_000_000u64, 10_000_000].into_iter().filter(|t| *t <= max) {
        let started = Instant::now();
        let before = filled;
        while filled < target {
            let n = 5_000.min(target - filled) as usize;
            let batch: Vec<IndexedRecord> = (0..n as u64)
                .map(|i| {
                    let k = filled + i;
                    // The probes' records first: PROBE_EVENTS each, nothing else names them.
                    let probe = (k < PROBES * PROBE_EVENTS).then(|| PEOPLE + k % PROBES);
                    synthetic(&mut rng, &mut chains, k as usize % NODES, probe)
                })
                .collect();
            index.insert(&batch, &[]).await.unwrap();
            filled += n as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "fill to {target}: {} records in {secs:.1} s = {:.0} records/s (5,000 a transaction)",
            filled - before,
            (filled - before) as f64 / secs
        );
        let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        pg.batch_execute("ANALYZE audit_record; ANALYZE audit_person")
            .await
            .unwrap();
        let size = index.size_bytes().await.unwrap();
        println!(
            "  index size at {filled} records: {:.2} GiB, {:.0} MiB per million records",
            size as f64 / (1u64 << 30) as f64,
            size as f64 / (1u64 << 20) as f64 / (filled as f64 / 1e6)
        );
        queries(&index, &mut rng).await;
        print_plan(&pg).await;
    }
    drop(index);
    if keep {
        println!("kept {name} (POPGW_BENCH_INDEX_REUSE={name} measures its queries again)");
        return;
    }
    admin()
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

/// The plan of one probe's history, planned for that probe (its planning time is what
/// every call paid before the index prepared its statements once per connection and
/// kept their generic plans).
async fn print_plan(pg: &tokio_postgres::Client) {
    // The index's own connection settings (see `AuditIndex::lazy`).
    pg.batch_execute("SET max_parallel_workers_per_gather = 0")
        .await
        .unwrap();
    let probe = pseudonym(PEOPLE + 7).into_string();
    let plan = pg
        .query(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
             SELECT r.node, r.seq, r.hash, r.json, p.related
             FROM audit_person p
             JOIN audit_record r ON r.node = p.node AND r.seq = p.seq AND r.at = p.at
             WHERE p.pseudonym = $1 AND r.code = 'OK'
             ORDER BY p.at, p.node, p.seq LIMIT 10001",
            &[&probe],
        )
        .await
        .unwrap();
    println!("  plan of one probe's history:");
    for row in plan {
        println!("    {}", row.get::<_, String>(0));
    }
}

/// One synthetic record of `node`'s chain.
fn synthetic(
    rng: &mut impl Rng,
    chains: &mut [(u64, [u8; 32])],
    node: usize,
    probe: Option<u64>,
) -> IndexedRecord {
    let (seq, prev) = chains[node];
    let now = 1_795_600_000_000i64; // 2026-11
    let two_years = 730 * 86_400_000i64;
    let disclosure = probe.is_none() && rng.gen_ratio(1, 10);
    let body = RecordBody {
        seq,
        time_unix_ms: now - rng.gen_range(0..two_years),
        node: format!("node-{node}"),
        request_id: format!("{:032x}", rng.gen::<u128>()),
        client: if disclosure {
            "spiffe://popgw.dev/ministry/justice".into()
        } else {
            "spiffe://popgw.dev/portal/dvcqg".into()
        },
        rpc: if disclosure {
            "GetCitizen"
        } else {
            "VerifyIdentity"
        }
        .into(),
        procedure: format!("P{:02}", rng.gen_range(1..=25)),
        case_id: format!("HS-2026-{:07}", rng.gen_range(0..10_000_000)),
        subject: pseudonym(probe.unwrap_or_else(|| rng.gen_range(0..PEOPLE))).into_string(),
        related: if disclosure {
            vec![
                pseudonym(rng.gen_range(0..PEOPLE)).into_string(),
                pseudonym(rng.gen_range(0..PEOPLE)).into_string(),
            ]
        } else {
            Vec::new()
        },
        fields: if disclosure {
            vec!["full_name".into(), "father".into(), "mother".into()]
        } else {
            vec!["verdict".into()]
        },
        outcome: if disclosure { "DISCLOSED" } else { "MATCH" }.into(),
        code: "OK".into(),
        rule: "EXACT".into(),
        cache: "hit".into(),
        latency_us: 300,
        detail: String::new(),
        prev: hex::encode(prev),
    };
    let json = serde_json::to_string(&body).unwrap();
    let mut h = Sha256::new();
    h.update(prev);
    h.update(json.as_bytes());
    let hash: [u8; 32] = h.finalize().into();
    chains[node] = (seq + 1, hash);
    IndexedRecord {
        body,
        hash: hex::encode(hash),
        json,
    }
}

async fn queries(index: &AuditIndex, rng: &mut impl Rng) {
    let rpcs = [
        "VerifyIdentity",
        "VerifyIdentityStream",
        "GetCitizen",
        "GetHousehold",
    ];
    let mut probes = Histogram::<u64>::new(3).unwrap();
    for i in 0..PROBES {
        let who = pseudonym(PEOPLE + i);
        let t = Instant::now();
        let n = index
            .history(who.as_str(), 0, 0, &rpcs, 10_001)
            .await
            .unwrap()
            .len();
        probes.record(t.elapsed().as_micros() as u64).unwrap();
        assert_eq!(n as u64, PROBE_EVENTS);
    }
    let mut report = Histogram::<u64>::new(3).unwrap();
    let mut operator = Histogram::<u64>::new(3).unwrap();
    let mut events = 0usize;
    for _ in 0..2_000 {
        let who = pseudonym(rng.gen_range(0..PEOPLE));
        let t = Instant::now();
        events += index
            .history(who.as_str(), 0, 0, &rpcs, 10_001)
            .await
            .unwrap()
            .len();
        report.record(t.elapsed().as_micros() as u64).unwrap();
        let filter = Filter {
            subject: Some(who),
            ..Filter::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let t = Instant::now();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        index.query(&filter, 100_000, &tx).await.unwrap();
        drop(tx);
        drain.await.unwrap();
        operator.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  citizen report (history), 2,000 probe people, 10 events each: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&probes, 0.5),
        ms(&probes, 0.99),
        probes.max() as f64 / 1000.0
    );
    println!(
        "  citizen report (history), 2,000 people, {:.1} events each: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        events as f64 / 2000.0,
        ms(&report, 0.5),
        ms(&report, 0.99),
        report.max() as f64 / 1000.0
    );
    println!(
        "  AuditLog.Query by personal id (streamed): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&operator, 0.5),
        ms(&operator, 0.99),
        operator.max() as f64 / 1000.0
    );
}

/// Records through the real path: an audit log, its witness shipper, the stream, the
/// indexer.
async fn end_to_end(index: Arc<AuditIndex>) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let key_public = key.verifying_key();
    let node = format!("bench-index-{:08x}", rand::random::<u32>());
    let log = AuditLog::open(AuditConfig::new(tmp.path(), node.clone()), key).unwrap();
    let stream = format!("POPGW_BENCH_{:08x}", rand::random::<u32>());
    let witness = popgw::audit::witness::WitnessConfig {
        link: popgw::link::nats::NatsLink::new(NATS),
        stream: stream.clone(),
        replicas: 1,
        node: node.clone(),
        records: true,
    };
    let metrics = Arc::new(popgw::telemetry::Metrics::default());
    let shipper =
        popgw::audit::witness::Shipper::new(witness, log.clone(), key_public, metrics.clone());
    let acked = shipper.status();
    let shipping = tokio::spawn(shipper.run());
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..E2E_RECORDS / 64 {
                    let subject = pseudonym(rand::thread_rng().gen_range(0..PEOPLE));
                    log.append(AuditEntry {
                        request_id: format!("{t}-{i}"),
                        client: "spiffe://popgw.dev/portal/dvcqg".into(),
                        procedure: ClaimedProcedure::Known("P03".into()),
                        case_id: Some(pseudonym(i as u64)),
                        subject: Some(subject),
                        fields: vec!["verdict".into()],
                        code: Some(tonic::Code::Ok),
                        rule: Some(MatchingRule::Exact),
                        cache: Some(CacheOutcome::Hit),
                        latency_us: 300,
                        ..AuditEntry::new(Rpc::VerifyIdentity, Outcome::Match)
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let appended = log.last_seq();
    while acked.acked() < appended {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "end to end: {appended} records appended (fsync, 64 tasks) and shipped with their lines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let indexer = Indexer::new(
        index.clone(),
        FeedConfig {
            link: popgw::link::nats::NatsLink::new(NATS),
            stream: stream.clone(),
            consumer: "bench".into(),
            retain_months: 0,
            // Seals checked, as in production.
            node_keys: [(node.clone(), key_public)].into(),
        },
        metrics,
    );
    let started = Instant::now();
    let running = tokio::spawn(indexer.run(async {
        let _ = stopped.await;
    }));
    while index.count(&node).await.unwrap() < appended {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "indexing rate: {appended} records from the stream into PostgreSQL in {secs:.1} s = {:.0} records/s",
        appended as f64 / secs
    );
    let _ = stop.send(());
    running.await.unwrap();
    shipping.abort();
    log.shutdown().await;
    let client = async_nats::connect(NATS).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}
