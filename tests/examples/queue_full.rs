//! What a full producer queue does to senders: the measurement behind the
//! queue-full behaviour of ingest (BENCHMARKS.md, "Producer queue full").
//!
//! `cargo build -p ingest && cargo run -p e2e --example queue_full`
//! (about 40 s; the `ingest` binary beside this example, debug build).
//!
//! Ingest's producer queue holds `2 × max_in_flight + 128` records, each for
//! up to `kafka.delivery_timeout`. It only fills when records outlive their
//! request: a broker that does not acknowledge within the request deadline
//! while `delivery_timeout` is longer than it (30 s, as against tansu). So
//! the load is an open loop at a fixed rate against one ingest and one
//! tansu broker that is, in turn:
//!
//! 1. `before`: healthy;
//! 2. `stall`: stopped (`SIGSTOP`) for 8 s: the queue fills after about
//!    `queue / max_in_flight` deadlines, then every request meets it full;
//! 3. `recover`: running again;
//! 4. `throttle`: stopped 900 ms of every second for 10 s (a broker that
//!    runs at a tenth of its speed);
//! 5. `after`: healthy again.
//!
//! Per phase (by each request's scheduled time): requests, the share
//! answered 2xx, and the answer time of the 503s by code (p50 / p99 / max).
//! At the end, ingest's `ingest_broker_errors_total{kind="queue_full"}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Broker, Ingest, purple_config, purple_event, send_purple};
use tokio::sync::Mutex;

const SECRET: &str = "queue-full-secret";
/// Requests per second, open loop.
const RATE: u64 = 100;
const PHASES: &[(&str, u64)] = &[
    ("before", 3),
    ("stall", 8),
    ("recover", 4),
    ("throttle", 10),
    ("after", 4),
];

#[derive(Debug)]
struct Answer {
    phase: &'static str,
    status: u16,
    code: String,
    elapsed: Duration,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start();
    broker.create_topic("queue-full", 2).await;
    let config = purple_config(
        &broker.brokers(),
        "queue-full",
        &[("current", "QUEUE_FULL_SECRET")],
        "request_timeout = \"1s\"\nmax_in_flight = 64\nretry_after = \"1s\"",
    );
    let ingest = Ingest::start(&config, &[("QUEUE_FULL_SECRET", SECRET)]);
    ingest.wait_ready().await;
    let url = ingest.url("/webhooks/purple");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client");
    for i in 0..20 {
        let o = send_purple(
            &client,
            &url,
            SECRET,
            purple_event(&format!("w{i}"), "v", i),
        )
        .await;
        assert_eq!(o.status, 200, "warm-up: {o:?}");
    }

    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut tasks = Vec::new();
    let interval = Duration::from_micros(1_000_000 / RATE);
    let started = Instant::now();
    let mut n = 0u64;
    for &(phase, secs) in PHASES {
        let phase_start = Instant::now();
        let end = phase_start + Duration::from_secs(secs);
        let mut next_toggle = phase_start;
        let mut stopped = false;
        if phase == "stall" {
            broker.pause();
        }
        while Instant::now() < end {
            if phase == "throttle" && Instant::now() >= next_toggle {
                // 900 ms stopped, 100 ms running.
                if stopped {
                    broker.resume();
                    next_toggle += Duration::from_millis(100);
                } else {
                    broker.pause();
                    next_toggle += Duration::from_millis(900);
                }
                stopped = !stopped;
            }
            let (client, url, answers) = (client.clone(), url.clone(), answers.clone());
            let body = purple_event(&format!("q{n}"), &format!("venue-{}", n % 16), n);
            tasks.push(tokio::spawn(async move {
                let o = send_purple(&client, &url, SECRET, body).await;
                let code = o.body["error"]["code"].as_str().unwrap_or("").to_string();
                answers.lock().await.push(Answer {
                    phase,
                    status: o.status,
                    code,
                    elapsed: o.elapsed,
                });
            }));
            n += 1;
            let due = started + interval * n as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        if stopped || phase == "stall" {
            broker.resume();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let metrics = client
        .get(ingest.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let queue_full = metrics
        .lines()
        .find(|l| l.starts_with("ingest_broker_errors_total{kind=\"queue_full\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0")
        .to_string();

    let answers = answers.lock().await;
    println!(
        "rate {RATE}/s, request_timeout 1s, max_in_flight 64 (queue 256), delivery_timeout 30s"
    );
    println!("| phase | requests | 2xx | 503 by code: count, answer time p50 / p99 / max |");
    println!("|---|---|---|---|");
    for (phase, _) in PHASES {
        let mine: Vec<&Answer> = answers.iter().filter(|a| a.phase == *phase).collect();
        let ok = mine.iter().filter(|a| a.status / 100 == 2).count();
        let mut by_code: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for a in mine.iter().filter(|a| a.status / 100 != 2) {
            by_code
                .entry(format!("{} {}", a.status, a.code))
                .or_default()
                .push(a.elapsed);
        }
        let refused = by_code
            .iter_mut()
            .map(|(code, times)| {
                times.sort();
                format!(
                    "{code}: {}, {:.0} / {:.0} / {:.0} ms",
                    times.len(),
                    quantile(times, 0.5).as_secs_f64() * 1e3,
                    quantile(times, 0.99).as_secs_f64() * 1e3,
                    times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "| {phase} | {} | {ok} ({:.1} %) | {refused} |",
            mine.len(),
            100.0 * ok as f64 / mine.len().max(1) as f64
        );
    }
    let total = answers.len();
    let ok = answers.iter().filter(|a| a.status / 100 == 2).count();
    println!(
        "all: {total} requests, {ok} 2xx ({:.1} %); queue_full refusals counted by ingest: {queue_full}",
        100.0 * ok as f64 / total.max(1) as f64
    );
}
