//! The patched librdkafka (vendor/rdkafka-sys/PATCHES.md), with ingest's own
//! producer settings against a real tansu broker.
//!
//! Upstream librdkafka 2.12.1 counts the idempotent producer's in-flight
//! window per partition in *messages* (so a batch of five or more records
//! blocks the partition until it is answered) and, while that window is
//! full, sets its broker thread's next wake-up to the queued records'
//! linger deadline, already past: the thread polls with a zero timeout
//! until the answer comes, a busy-wait that was most of ingest's CPU. The
//! patch counts requests and does not wake up while the window is full.
//!
//! A paused broker (`SIGSTOP`) makes the wait as long as the test wants:
//! records keep arriving, requests pile up unanswered. Then:
//! - more than one produce request waits for an answer on the connection
//!   (librdkafka's own statistics, `waitresp_cnt`); unpatched: one per
//!   partition;
//! - the broker threads burn next to no CPU over a second of waiting;
//!   unpatched: a spinning thread takes most of a core;
//! - once the broker carries on, every record is in the topic exactly
//!   once and in the order produced: several requests in flight keep the
//!   idempotent producer's promises.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Broker, purple_config, read_topic};
use rdkafka::ClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;

const TOPIC: &str = "patch.raw";

/// Keeps librdkafka's latest statistics.
#[derive(Default)]
struct Stats(Arc<Mutex<Option<Statistics>>>);

impl ClientContext for Stats {
    fn stats(&self, statistics: Statistics) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(statistics);
    }
}

/// CPU seconds of this process' librdkafka broker threads (`rdk:broker*`).
fn broker_threads_cpu() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("rdk:broker") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    ticks as f64 / hz
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_wait_on_a_silent_broker_without_a_busy_wait_and_every_record_lands_once_in_order()
 {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1).await;
    // Ingest's own producer settings (the harness' delivery timeout, 30 s,
    // outlasts the pause).
    let config = purple_config(
        &broker.brokers(),
        TOPIC,
        &[("current", "UNUSED_SECRET")],
        "",
    );
    let config = ingest::config::Config::from_toml(&config).expect("ingest config");
    let mut settings =
        ingest::producer::client_config(&config.kafka, &config.server).expect("producer settings");
    settings.set("statistics.interval.ms", "100");
    let stats = Arc::new(Mutex::new(None));
    let producer: FutureProducer<Stats> = settings
        .create_with_context(Stats(stats.clone()))
        .expect("producer");

    let send = |n: u32| {
        let payload = format!("record-{n:05}");
        producer
            .send_result(FutureRecord::to(TOPIC).key("venue-1").payload(&payload))
            .map_err(|(e, _)| e)
    };
    // The connection is up and the producer id acquired.
    send(0)
        .expect("enqueue")
        .await
        .expect("delivery")
        .expect("first record acknowledged");

    broker.pause();
    let mut pending = Vec::new();
    // 20 bursts of 10 records, 6 ms apart: linger (5 ms) passes between
    // bursts, so each could go in a request of its own, and each request
    // holds more records than the window of 5 (which upstream counts in
    // records).
    for burst in 0..20u32 {
        for n in 1..=10 {
            pending.push(send(burst * 10 + n).expect("enqueue"));
        }
        tokio::time::sleep(Duration::from_millis(6)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = broker_threads_cpu();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = broker_threads_cpu() - cpu_before;
    let wall = t.elapsed().as_secs_f64();
    let waiting = stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| {
            s.brokers
                .values()
                .filter(|b| b.nodeid >= 0)
                .map(|b| b.waitresp_cnt)
                .sum::<i64>()
        })
        .expect("statistics arrived");
    println!(
        "broker paused: {waiting} produce request(s) awaiting an answer; broker threads used {spent:.3} s of CPU in {wall:.2} s"
    );
    broker.resume();

    for (i, p) in pending.into_iter().enumerate() {
        p.await
            .expect("delivery")
            .unwrap_or_else(|(e, _)| panic!("record {} not acknowledged: {e}", i + 1));
    }
    let records = read_topic(&broker.brokers(), TOPIC).await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    let expected: Vec<String> = (0..=200).map(|n| format!("record-{n:05}")).collect();
    assert_eq!(values, expected, "each record once, in the order produced");

    assert!(
        waiting >= 2,
        "only {waiting} produce request waited for the paused broker: the in-flight window counts messages, not requests"
    );
    assert!(
        spent < 0.1 * wall,
        "the broker threads used {spent:.3} s of CPU in {wall:.2} s while waiting for a paused broker: a busy-wait"
    );
}
