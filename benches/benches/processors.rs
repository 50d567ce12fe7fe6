//! Processor throughput with the broker real: tansu (sqlite) on loopback,
//! the processors' runtime in this process, decode → parse → reorder →
//! dedupe (redb on disk) → route → a no-op sink, offsets stored and
//! committed as in production.
//!
//! `cargo bench -p pipeline-benches --bench processors` (release build).
//! Prints records per second from the first record consumed to the last
//! one handled, median of three runs, each with a fresh consumer group and
//! dedupe store over the same topic. Throughput is measured here and
//! written to BENCHMARKS.md, never asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Broker, produce, purple_envelope};
use processors::config::Config;
use processors::dedupe::{DedupeConfig, DedupeStore, RedbDedupe};
use processors::metrics::Metrics;
use processors::pipeline::{Shared, SideTopics};
use processors::runtime::{self, KafkaSide};
use processors::sink::{NullSink, Sink};

const VENUES: usize = 100;
const PER_VENUE: u64 = 200;
const PARTITIONS: i32 = 4;

fn total(m: &Metrics, name: &str) -> u64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|x| x.get_counter().get_value() as u64)
        })
        .sum()
}

async fn run_once(brokers: &str, topic: &str, run: usize, records: u64) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_toml(&format!(
        r#"
        [kafka]
        brokers = "{brokers}"
        topic = "{topic}"
        group_id = "bench-{run}"
        quarantine_topic = "{topic}.q"
        dlq_topic = "{topic}.dlq"
        [processing]
        batch_max = 500
        [dedupe]
        path = "{}"
        [sinks.none]
        kind = "null"
        [[routes]]
        name = "all"
        sinks = ["none"]
        "#,
        dir.path().join("dedupe.redb").display()
    ))
    .expect("bench config");
    let metrics = Metrics::new().expect("metrics");
    let dedupe: Arc<dyn DedupeStore> = Arc::new(
        RedbDedupe::open(dir.path().join("dedupe.redb"), &DedupeConfig::new()).expect("dedupe"),
    );
    let side: Arc<dyn SideTopics> = Arc::new(KafkaSide::new(&config.kafka).expect("side"));
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(NullSink::new("none"))];
    let shared =
        Arc::new(Shared::new(&config, sinks, dedupe, side, metrics.clone()).expect("shared"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let running = runtime::start(
        &config.kafka,
        &config.processing,
        shared,
        tokio::runtime::Handle::current(),
        stop_rx,
    )
    .expect("runtime");
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let consumed = total(&metrics, "processors_consumed_total");
        if consumed > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        let handled = total(&metrics, "processors_routed_total")
            + total(&metrics, "processors_duplicates_dropped_total");
        if handled >= records {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {handled} of {records} handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || running.join())
        .await
        .expect("join")
        .expect("consumer");
    (end - first.unwrap_or(started), end - started)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: only
    // run for real under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let broker = Broker::start();
        let topic = "bench-raw";
        broker.create_topic(topic, PARTITIONS).await;
        broker.create_topic("bench-raw.q", 1).await;
        broker.create_topic("bench-raw.dlq", 1).await;
        let mut records = Vec::new();
        for s in 1..=PER_VENUE {
            for v in 0..VENUES {
                let venue = format!("venue-{v}");
                let id = format!("evt-{v}-{s}");
                let env = purple_envelope(&id, &venue, s, None);
                records.push((venue.clone().into_bytes(), env.clone()));
                // 10% duplicates, re-sent right away (a provider retry).
                if (s as usize + v) % 10 == 0 {
                    records.push((venue.into_bytes(), env));
                }
            }
        }
        let n = records.len() as u64;
        for chunk in records.chunks(5_000) {
            produce(&broker.brokers(), topic, chunk).await;
        }
        let mut rates = Vec::new();
        for run in 0..3 {
            let (busy, wall) = run_once(&broker.brokers(), topic, run, n).await;
            let rate = n as f64 / busy.as_secs_f64();
            println!(
                "run {run}: {n} records ({} events, {} duplicates, {PARTITIONS} partitions) in {:.2}s from first record ({:.2}s with group join): {rate:.0} records/s",
                VENUES as u64 * PER_VENUE,
                n - VENUES as u64 * PER_VENUE,
                busy.as_secs_f64(),
                wall.as_secs_f64()
            );
            rates.push(rate);
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        println!("processors throughput (median of 3): {:.0} records/s", rates[1]);
    });
}
