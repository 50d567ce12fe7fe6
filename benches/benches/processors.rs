//! Processor throughput with the broker real: tansu (sqlite) on loopback,
//! the processors' runtime in this process, decode → guest-WiFi parse →
//! reorder → dedupe (redb on disk) → route → sink, offsets stored and
//! committed as in production; against the same run's ceiling, a bare
//! rdkafka consumer (the runtime's own consumer settings) that reads the
//! same records and does nothing with them.
//!
//! `cargo bench -p pipeline-benches --bench processors` (release build).
//! Runs, each with a fresh consumer group and dedupe store over the same
//! topic: bare consumer, null sink, and null sink with the partition state
//! changelog on (a changelog topic on the same broker, written after every
//! batch) alternated three times (medians), then, with the changelog on,
//! the embedded analytics store (SQLite, `kind = "analytics"` with `path`)
//! and the PostgreSQL analytics store (a real PostgreSQL 15 started on a
//! free port, a fresh database per run). Records per second from the first
//! record consumed to the last one handled; a table on stdout and
//! `target/bench-results/processors.json`. Measured, never asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Broker, Postgres, produce, purple_envelope};
use pipeline_benches::guest_wifi_body;
use processors::app;
use processors::config::Config;
use processors::kafka::consumer as runtime;
use processors::kafka::side::KafkaSide;
use processors::metrics::Metrics;
use processors::pipeline::SideTopics;
use processors::sinks;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

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

/// Which sink a run routes every event to.
#[derive(Debug, Clone)]
enum SinkKind {
    /// Accepts and discards.
    Null,
    /// The embedded analytics store in a fresh SQLite file.
    Sqlite,
    /// The PostgreSQL analytics store at this URL (a fresh database).
    Postgres(String),
}

impl SinkKind {
    fn label(&self) -> &'static str {
        match self {
            SinkKind::Null => "null sink",
            SinkKind::Sqlite => "analytics, embedded SQLite",
            SinkKind::Postgres(_) => "analytics, PostgreSQL",
        }
    }
}

fn config(
    brokers: &str,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    sink: &SinkKind,
) -> Config {
    let sink_toml = match sink {
        SinkKind::Null => "kind = \"null\"".to_string(),
        SinkKind::Sqlite => format!(
            "kind = \"analytics\"\npath = \"{}\"",
            dir.join("analytics.db").display()
        ),
        SinkKind::Postgres(url) => format!("kind = \"analytics\"\nurl = \"{url}\""),
    };
    Config::from_toml(&format!(
        r#"
        [kafka]
        brokers = "{brokers}"
        topic = "{topic}"
        group_id = "{group}"
        quarantine_topic = "{topic}.q"
        dlq_topic = "{topic}.dlq"
        [processing]
        batch_max = 500
        [dedupe]
        path = "{}"
        [sources.purple]
        parser = "guest_wifi"
        [sinks.bench]
        {sink_toml}
        [[routes]]
        name = "all"
        sinks = ["bench"]
        "#,
        dir.join("dedupe.redb").display()
    ))
    .expect("bench config")
}

/// One run of the processors' runtime: (from first record, with group join).
async fn run_once(
    brokers: &str,
    topic: &str,
    run: usize,
    records: u64,
    sink: &SinkKind,
    state: bool,
) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(brokers, topic, &format!("bench-{run}"), dir.path(), sink);
    let metrics = Metrics::new().expect("metrics");
    let dedupe = app::open_dedupe(&config.dedupe).expect("dedupe");
    let side: Arc<dyn SideTopics> = Arc::new(KafkaSide::new(&config.kafka).expect("side"));
    let built = sinks::build(&config.sinks, &metrics).await.expect("sinks");
    let mut shared = app::shared(&config, built, dedupe, side, metrics.clone()).expect("shared");
    if state {
        shared = shared.with_state(app::open_state(&config).await.expect("state"));
    }
    let shared = Arc::new(shared);
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
    let mut steady = Steady::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let consumed = total(&metrics, "processors_consumed_total");
        if consumed > 0 && first.is_none() {
            first = Some(Instant::now());
            steady.start();
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
    steady.report(records);
    if state {
        let by_kind: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "processors_state_changelog_records_total")
            .flat_map(|f| {
                f.get_metric().iter().map(|m| {
                    let kind = m
                        .get_label()
                        .iter()
                        .map(|l| l.value().to_owned())
                        .collect::<String>();
                    format!("{kind} {}", m.get_counter().get_value())
                })
            })
            .collect();
        println!("  changelog records written: {}", by_kind.join(", "));
        let steps: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "processors_state_checkpoint_seconds")
            .flat_map(|f| {
                f.get_metric().iter().map(|m| {
                    let h = m.get_histogram();
                    let step = m
                        .get_label()
                        .iter()
                        .map(|l| l.value().to_owned())
                        .collect::<String>();
                    let n = h.get_sample_count();
                    let mean_ms = if n == 0 {
                        0.0
                    } else {
                        h.get_sample_sum() * 1e3 / n as f64
                    };
                    format!("{step} {n} x {mean_ms:.1} ms")
                })
            })
            .collect();
        println!("  checkpoint steps (count x mean): {}", steps.join(", "));
        for f in metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "processors_state_restore_seconds")
        {
            for m in f.get_metric() {
                let h = m.get_histogram();
                println!(
                    "  restores: {} taking {:.3} s in all",
                    h.get_sample_count(),
                    h.get_sample_sum()
                );
            }
        }
    }
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || running.join())
        .await
        .expect("join")
        .expect("consumer");
    (end - first.unwrap_or(started), end - started)
}

/// The ceiling: the runtime's consumer settings, a fresh group, every
/// record received and its payload touched, nothing else.
async fn bare_consumer(
    brokers: &str,
    topic: &str,
    run: usize,
    records: u64,
) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        brokers,
        topic,
        &format!("bare-{run}"),
        dir.path(),
        &SinkKind::Null,
    );
    let consumer: StreamConsumer = processors::kafka::consumer_config(&config.kafka)
        .and_then(|c| c.create())
        .expect("bare consumer");
    let started = Instant::now();
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first: Option<Instant> = None;
    let mut steady = Steady::default();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < records {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("records within a minute")
            .expect("consume");
        if first.is_none() {
            first = Some(Instant::now());
            steady.start();
        }
        bytes += m.payload().map_or(0, <[u8]>::len);
        seen += 1;
    }
    let end = Instant::now();
    steady.report(records);
    std::hint::black_box(bytes);
    (end - first.unwrap_or(started), end - started)
}

/// CPU seconds (user + system) process `pid` has used so far; 0 once it
/// is gone.
fn cpu_seconds(pid: u32) -> f64 {
    pipeline_benches::cpu_seconds(pid).unwrap_or(0.0)
}

/// The broker's process id, for CPU accounting.
static TANSU: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU of this process and of the broker from a run's first record to its
/// last: the steady cost per record, without the group join, topic
/// creation and restores.
#[derive(Default)]
struct Steady(Option<(f64, f64)>);

impl Steady {
    fn now() -> (f64, f64) {
        (
            cpu_seconds(std::process::id()),
            cpu_seconds(TANSU.get().copied().unwrap_or(0)),
        )
    }

    fn start(&mut self) {
        self.0 = Some(Self::now());
    }

    fn report(&self, records: u64) {
        let Some((me, tansu)) = self.0 else { return };
        let (me_end, tansu_end) = Self::now();
        println!(
            "  steady CPU per record (first record to last): {:.0} us here, {:.0} us tansu",
            (me_end - me) * 1e6 / records as f64,
            (tansu_end - tansu) * 1e6 / records as f64
        );
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = xs.len() / 2;
    if xs.len() % 2 == 0 {
        (xs[m - 1] + xs[m]) / 2.0
    } else {
        xs[m]
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: only
    // run for real under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let machine = pipeline_benches::machine();
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
                let body = guest_wifi_body(&id, &venue, s, 1024);
                let env = purple_envelope(&id, &venue, s, Some(body));
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
        println!(
            "{n} records of about 1 KiB ({} events, {} duplicates) on {PARTITIONS} partitions",
            VENUES as u64 * PER_VENUE,
            n - VENUES as u64 * PER_VENUE,
        );
        let mut runs = Vec::new();
        // CPU of this process (the processors' runtime) and of the broker,
        // per run, in microseconds per record: where a run's cost goes on
        // the two shared cores.
        let me = std::process::id();
        let tansu = broker.pid().unwrap_or(0);
        let _ = TANSU.set(tansu);
        let mut cpu_before = (cpu_seconds(me), cpu_seconds(tansu));
        let mut report = |what: &str, run: usize, (busy, wall): (Duration, Duration)| {
            let rate = n as f64 / busy.as_secs_f64();
            let cpu_now = (cpu_seconds(me), cpu_seconds(tansu));
            let per_record = |a: f64, b: f64| (a - b) * 1e6 / n as f64;
            let (own, broker_cpu) = (
                per_record(cpu_now.0, cpu_before.0),
                per_record(cpu_now.1, cpu_before.1),
            );
            cpu_before = cpu_now;
            println!(
                "{what:<28} run {run}: {:.2}s from first record ({:.2}s with group join): {rate:>8.0} records/s; CPU per record: {own:.0} us here, {broker_cpu:.0} us tansu",
                busy.as_secs_f64(),
                wall.as_secs_f64()
            );
            runs.push(serde_json::json!({
                "what": what, "run": run, "seconds": busy.as_secs_f64(),
                "seconds_with_join": wall.as_secs_f64(), "records_per_second": rate,
                "cpu_us_per_record_processors": own, "cpu_us_per_record_tansu": broker_cpu,
            }));
            rate
        };
        let (mut bare, mut null, mut null_state) = (Vec::new(), Vec::new(), Vec::new());
        let mut run = 0;
        // `PROCESSORS_BENCH_ONLY=state`: only the ceiling and the state runs
        // (for profiling the broker or the runtime during them).
        let only_state = std::env::var("PROCESSORS_BENCH_ONLY").is_ok_and(|v| v == "state");
        if only_state {
            println!("PROCESSORS_BENCH_ONLY=state: the bare consumer and the null sink with state only");
        }
        for _ in 0..3 {
            bare.push(report("bare consumer", run, bare_consumer(&broker.brokers(), topic, run, n).await));
            run += 1;
            if !only_state {
                null.push(report(SinkKind::Null.label(), run, run_once(&broker.brokers(), topic, run, n, &SinkKind::Null, false).await));
            }
            run += 1;
            null_state.push(report("null sink, state changelog", run, run_once(&broker.brokers(), topic, run, n, &SinkKind::Null, true).await));
            run += 1;
        }
        if only_state {
            println!(
                "bare consumer (ceiling) {:.0}; null sink, state changelog {:.0}: {:.2}",
                median(bare.clone()),
                median(null_state.clone()),
                median(null_state) / median(bare)
            );
            return;
        }
        let mut sqlite = Vec::new();
        for _ in 0..2 {
            sqlite.push(report(SinkKind::Sqlite.label(), run, run_once(&broker.brokers(), topic, run, n, &SinkKind::Sqlite, true).await));
            run += 1;
        }
        let pg = Postgres::start();
        let mut postgres = Vec::new();
        for i in 0..2 {
            pg.psql(&format!("CREATE DATABASE bench_{i}"));
            let url = format!("postgres://postgres@127.0.0.1:{}/bench_{i}", pg.port);
            let sink = SinkKind::Postgres(url);
            postgres.push(report(sink.label(), run, run_once(&broker.brokers(), topic, run, n, &sink, true).await));
            run += 1;
        }
        let ceiling = median(bare);
        let rows = [
            ("null sink", median(null)),
            ("null sink, state changelog", median(null_state)),
            ("analytics, embedded SQLite", median(sqlite)),
            ("analytics, PostgreSQL", median(postgres)),
        ];
        println!();
        println!("{:<28} {:>12} {:>10}", "processors (median)", "records/s", "/ ceiling");
        println!("{:<28} {:>12.0} {:>10}", "bare consumer (ceiling)", ceiling, "1.00");
        for (what, rate) in rows {
            println!("{what:<28} {rate:>12.0} {:>10.2}", rate / ceiling);
        }
        let null_ratio = rows[0].1 / ceiling;
        let state_ratio = rows[1].1 / ceiling;
        println!(
            "null sink / bare consumer: {null_ratio:.2}; with the state changelog: {state_ratio:.2} (target >= 0.80: {})",
            if state_ratio >= 0.8 { "met" } else { "MISSED" }
        );
        let result = serde_json::json!({
            "benchmark": "processors",
            "unix_time": pipeline_benches::unix_now(),
            "machine": machine,
            "records": n,
            "events": VENUES as u64 * PER_VENUE,
            "partitions": PARTITIONS,
            "body_bytes": 1024,
            "bare_consumer_per_second": ceiling,
            "median_per_second": rows.iter().map(|(w, r)| ((*w).to_string(), serde_json::json!({"records_per_second": r, "over_ceiling": r / ceiling}))).collect::<serde_json::Map<_, _>>(),
            "targets": {"null_sink_with_state_at_least_0_8_of_ceiling": state_ratio >= 0.8},
            "runs": runs,
        });
        let path = pipeline_benches::write_results("processors", &result).expect("results file");
        println!("results: {}", path.display());
    });
}
