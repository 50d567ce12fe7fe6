//! Fault tests: the two promises under the failures that happen in
//! production, end to end with the real binaries, a real tansu broker and
//! a real PostgreSQL, on loopback, each bounded in time.
//!
//! - a 200 means the event is safe: every acknowledged request is in Kafka
//!   under overload (and, in `ingest.rs`, through a broker `kill -9` and an
//!   ingest SIGTERM);
//! - each event once downstream: through repeated `kill -9` of the
//!   processors (PostgreSQL and the CRM), a CRM outage (breaker, retries,
//!   dead letters), a SIGTERM of the processors mid-stream, and a broker
//!   `kill -9` and restart under the processors.
//!
//! The traffic comes from the real provider simulator (`ingest send`) or,
//! where every request's own outcome is judged, from the harness' sender.
//! Each test prints its counts (`--nocapture` or nextest's output on
//! failure shows them) and asserts the outcome.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::fake_crm::{FakeCrm, Reply};
use e2e::{
    Broker, Ingest, Outcome, Postgres, Processor, purple_config, purple_event, read_topic, rss_kib,
    send_purple, simulate, sink_lines,
};
use schemas::Envelope;

const SECRET: &str = "e2e-faults-secret";
const CRM_TOKEN: &str = "e2e-faults-crm-token";

/// A small xorshift generator: kill points that differ per run, with the
/// seed printed so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("kill points seed: {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every event in the raw topic: event id -> event type, one entry per
/// distinct id (a provider's re-send is one event).
async fn events_in_kafka(brokers: &str, topic: &str) -> BTreeMap<String, String> {
    read_topic(brokers, topic)
        .await
        .iter()
        .map(|r| {
            let env = Envelope::decode(&r.value).expect("an envelope");
            let body: serde_json::Value = serde_json::from_slice(&env.body).expect("JSON body");
            (
                env.event_id,
                body["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Ingest's `[server]` settings for the streams that feed the processors'
/// tests: a deadline long enough that a loaded machine does not turn a
/// slow acknowledgement into a refusal (what those tests judge is
/// downstream of Kafka).
const STREAM_INGEST: &str = "request_timeout = \"10s\"";

/// The simulator's run was acknowledged, and every distinct event it got a
/// 200 for is among the events in Kafka (which may hold more: a refused
/// request's record can still land, and it must then be processed too).
fn stream_in_kafka(report: &e2e::SimulatorReport, in_kafka: &BTreeMap<String, String>) {
    assert!(report.acknowledged > 0, "nothing acknowledged: {report:?}");
    assert!(
        in_kafka.len() as u64 >= report.distinct_acknowledged,
        "{} distinct events acknowledged, {} in Kafka: {report:?}",
        report.distinct_acknowledged,
        in_kafka.len()
    );
}

/// Runs the simulator in the background.
fn simulator(
    url: String,
    args: &'static [&'static str],
) -> tokio::task::JoinHandle<e2e::SimulatorReport> {
    tokio::task::spawn_blocking(move || simulate(&url, SECRET, args, Duration::from_secs(90)))
}

/// Ingest on `topic` with the harness config plus `extra` in `[server]`.
fn ingest(broker: &Broker, topic: &str, extra: &str) -> Ingest {
    Ingest::start(
        &purple_config(
            &broker.brokers(),
            topic,
            &[("current", "E2E_SECRET")],
            extra,
        ),
        &[("E2E_SECRET", SECRET)],
    )
}

/// Creates the raw topic and its side topics.
async fn topics(broker: &Broker, topic: &str, partitions: i32) {
    broker.create_topic(topic, partitions).await;
    broker.create_topic(&format!("{topic}.quarantine"), 1).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
}

/// A processors config: `purple` parsed as guest-WiFi, `sinks` (TOML) and
/// `routes` (TOML) as given.
fn processors_config(
    broker: &Broker,
    topic: &str,
    dir: &tempfile::TempDir,
    sinks: &str,
    routes: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-{topic}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
# A killed instance's partitions move on after 6 s, not librdkafka's 45 s;
# the killed and the restarted instance are different members (static
# membership off).
session_timeout = "6s"
instance_id = ""
options = {{ "heartbeat.interval.ms" = "1000" }}

[processing]
# Long enough that a kill never turns a waiting event into a skipped slot.
gap_timeout = "30s"
retry_initial = "50ms"
retry_max = "1s"
revoke_timeout = "10s"

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"
{sinks}
{routes}
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
    )
}

/// The CRM sink, named `crm`, with `extra` settings.
fn crm_sink(crm: &FakeCrm, extra: &str) -> String {
    format!(
        r#"
[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "E2E_FAULTS_CRM_TOKEN"
template = "{template}"
{extra}
"#,
        url = crm.url(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    )
}

const CRM_TYPES: [&str; 2] = ["guest_connects", "guest_registered"];

const CRM_ROUTE: &str = r#"
[[routes]]
name = "crm"
types = ["guest_connects", "guest_registered"]
sinks = ["crm"]
"#;

fn start_processor(config: &str) -> Processor {
    Processor::start_with_env(config, &[("E2E_FAULTS_CRM_TOKEN", CRM_TOKEN)])
}

/// Polls `done` every 200 ms until it holds, failing after `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, log: &dyn Fn() -> String, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded) until the JSON-lines `sink` holds as many events as
/// `in_kafka` and `p` committed every offset, then asserts the sink holds
/// exactly Kafka's events, each once.
/// Waits until `p` has committed everything it read (its commit lag 0),
/// so nothing is still in flight when effects are counted.
async fn offsets_committed(p: &Processor) {
    wait_until(
        "offsets committed",
        Duration::from_secs(30),
        &|| p.log(),
        || async { p.metric("processors_commit_lag").await == 0.0 },
    )
    .await;
}

async fn sink_holds_kafka_once(
    p: &Processor,
    sink: &std::path::Path,
    in_kafka: &BTreeMap<String, String>,
    within: Duration,
) {
    wait_until("every event in the sink", within, &|| p.log(), || {
        let done = sink_lines(sink).len() >= in_kafka.len();
        async move { done }
    })
    .await;
    offsets_committed(p).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in sink_lines(sink) {
        let id = line["event_id"].as_str().expect("event_id").to_string();
        *seen.entry(id).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    let got: HashSet<&String> = seen.keys().collect();
    assert_eq!(
        got,
        in_kafka.keys().collect(),
        "the sink holds exactly Kafka's events"
    );
}

/// Event id -> row count in the analytics store's `events` table.
fn pg_event_counts(pg: &Postgres) -> HashMap<String, u64> {
    pg.psql("select event_id, count(*) from events group by event_id")
        .lines()
        .filter_map(|l| {
            let (id, n) = l.split_once('|')?;
            Some((id.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// The processors are killed (`kill -9`) five times at random points while
/// the simulator streams through ingest and tansu; every event reaches
/// PostgreSQL once (one row per event id) and the CRM once (applied once
/// per idempotency key), and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_killed_five_times_mid_stream_apply_every_event_once_in_postgres_and_the_crm() {
    let pg = Postgres::start();
    let broker = Broker::start();
    topics(&broker, "f-kill", 3).await;
    let ingest = ingest(&broker, "f-kill", STREAM_INGEST);
    ingest.wait_ready().await;
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[sinks.analytics]\nkind = \"postgres\"\nurl = \"{}\"\n{}",
        pg.url(),
        crm_sink(
            &crm,
            "timeout = \"1s\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"200ms\""
        )
    );
    let routes = format!("[[routes]]\nname = \"analytics\"\nsinks = [\"analytics\"]\n{CRM_ROUTE}");
    let config = processors_config(&broker, "f-kill", &dir, &sinks, &routes);

    // One request at a time keeps each venue's sequence in order in Kafka;
    // a tenth are provider re-sends of the same id.
    let sim = simulator(
        ingest.url("/webhooks/purple"),
        &[
            "--count",
            "700",
            "--rate",
            "25",
            "--concurrency",
            "1",
            "--venues",
            "4",
            "--duplicates",
            "0.1",
            "--seed",
            "9",
        ],
    );
    let rows = || {
        pg.psql("select count(*) from events")
            .parse::<u64>()
            .unwrap_or(0)
    };
    let mut rng = Rng::from_clock();
    let mut kills = Vec::new();
    for round in 0..5 {
        let mut p = start_processor(&config);
        // Wait for this instance to write something, then kill it a random
        // 0-1.5 s later, wherever it is.
        let before = rows();
        let deadline = Instant::now() + Duration::from_secs(40);
        while rows() == before {
            assert!(
                Instant::now() < deadline,
                "no progress in round {round}:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
        p.kill();
        kills.push(rows());
    }
    let last = start_processor(&config);
    let report = sim.await.unwrap();

    let in_kafka = events_in_kafka(&broker.brokers(), "f-kill").await;
    stream_in_kafka(&report, &in_kafka);
    let crm_keys: HashSet<String> = in_kafka
        .iter()
        .filter(|(_, t)| CRM_TYPES.contains(&t.as_str()))
        .map(|(id, _)| format!("purple:{id}"))
        .collect();
    assert!(
        kills
            .iter()
            .filter(|&&n| (n as usize) < in_kafka.len())
            .count()
            >= 3,
        "the kills came after the work was done: rows at each kill {kills:?}"
    );
    let applied = || crm.state.lock().unwrap().applied.len();
    wait_until(
        "every event in PostgreSQL and at the CRM",
        Duration::from_secs(60),
        &|| last.log(),
        || {
            let done = rows() as usize >= in_kafka.len() && applied() >= crm_keys.len();
            async move { done }
        },
    )
    .await;
    // Let anything still in flight land before judging duplicates.
    offsets_committed(&last).await;

    let counts = pg_event_counts(&pg);
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "rows per event id over 1: {doubled:?}");
    let stored: HashSet<&String> = counts.keys().collect();
    let expected: HashSet<&String> = in_kafka.keys().collect();
    assert_eq!(
        stored, expected,
        "PostgreSQL holds exactly the events in Kafka"
    );
    assert_eq!(last.metric("processors_dead_lettered_total").await, 0.0);
    let s = crm.state.lock().unwrap();
    let applied_keys: HashSet<String> = s.applied.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(s.applied.len(), applied_keys.len(), "a key applied twice");
    assert_eq!(
        applied_keys, crm_keys,
        "the CRM got exactly the routed events"
    );
    assert!(s.requests.iter().all(|r| r.auth == CRM_TOKEN));
    let repeats: u32 = s.repeats.values().sum();
    drop(s);
    eprintln!(
        "processors kill -9 x5: simulator sent {} ({} distinct acknowledged, refused {:?}); rows at each kill {kills:?}; \
         PostgreSQL {} rows for {} events, 0 duplicates; CRM {} applied once each, \
         {repeats} re-sends absorbed by the idempotency key",
        report.sent,
        report.distinct_acknowledged,
        report.refused,
        counts.values().sum::<u64>(),
        in_kafka.len(),
        applied_keys.len(),
    );
    // Each CRM effect is recorded in the partition's state before its
    // request slot is freed: a kill repeats at most what was in flight
    // (max_concurrency, 8 by default), not the batch done so far.
    assert!(
        repeats <= 5 * 8,
        "{repeats} CRM requests repeated an applied event after 5 kills"
    );
}

/// The CRM goes down (every request `503`) for a while during a stream:
/// the sink retries with backoff, its breaker opens (and the CRM is
/// spared), the partitions wait; once it is back, every routed event is
/// applied exactly once or dead-lettered, never both, never neither; the
/// dead letters are exactly the events the CRM refuses for good (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_down_for_a_while_opens_the_breaker_and_every_event_is_applied_once_or_dead_lettered() {
    let broker = Broker::start();
    topics(&broker, "f-crm", 2).await;
    let ingest = ingest(&broker, "f-crm", STREAM_INGEST);
    ingest.wait_ready().await;
    let crm = FakeCrm::start().await;
    // The simulator's events are known from its seed: five guest events of
    // the second half (sent during or after the outage) are refused for
    // good (400), the dead-letter branch; the rest must all be applied.
    let mut generator = ingest::simulator::Generator::new(ingest::simulator::GeneratorConfig {
        venues: 3,
        zones: 3,
        seed: 11,
        ..Default::default()
    });
    let refused: HashSet<String> = (0..400)
        .map(|_| generator.next_event())
        .skip(200)
        .filter(|e| CRM_TYPES.contains(&e.kind))
        .step_by(15)
        .take(5)
        .map(|e| e.id)
        .collect();
    assert_eq!(refused.len(), 5);
    for id in &refused {
        crm.script(&format!("purple:{id}"), &[Reply::Always(400)]);
    }
    let dir = tempfile::tempdir().unwrap();
    // max_attempts is well above what the outage can use up (3 attempts
    // before the breaker opens, then one probe per cooldown): an outage
    // must not dead-letter anything.
    let sinks = crm_sink(
        &crm,
        "timeout = \"1s\"\nattempts_per_call = 3\nmax_attempts = 20\nbackoff_initial = \"50ms\"\n\
         backoff_max = \"400ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"1s\"",
    );
    let processor = start_processor(&processors_config(
        &broker, "f-crm", &dir, &sinks, CRM_ROUTE,
    ));
    let sim = simulator(
        ingest.url("/webhooks/purple"),
        &[
            "--count",
            "400",
            "--rate",
            "40",
            "--concurrency",
            "1",
            "--venues",
            "3",
            "--duplicates",
            "0.05",
            "--seed",
            "11",
        ],
    );
    let applied = || crm.state.lock().unwrap().applied.len();
    wait_until(
        "a first event applied",
        Duration::from_secs(40),
        &|| processor.log(),
        || {
            let n = applied();
            async move { n > 0 }
        },
    )
    .await;

    crm.set_down(true);
    let down_at = Instant::now();
    let (requests_before, applied_before) = {
        let s = crm.state.lock().unwrap();
        (s.requests.len(), s.applied.len())
    };
    wait_until(
        "the breaker opened",
        Duration::from_secs(20),
        &|| processor.log(),
        || async { processor.metric("processors_crm_breaker_open").await == 1.0 },
    )
    .await;
    // Stay down for 6 s in all.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(down_at.elapsed())).await;
    let retries = processor.metric("processors_sink_retries_total").await;
    let lag = processor.metric("processors_commit_lag").await;
    crm.set_down(false);
    let (outage_requests, applied_during) = {
        let s = crm.state.lock().unwrap();
        (
            s.requests.len() - requests_before,
            s.applied.len() - applied_before,
        )
    };
    assert_eq!(
        applied_during, 0,
        "nothing is applied while the CRM is down"
    );
    assert!(retries > 0.0, "the sink never asked to retry");
    assert!(lag > 0.0, "the partitions did not wait for the CRM");
    // Unthrottled, 8 connections retrying every 50-400 ms would make
    // hundreds of requests in 6 s; the breaker lets a probe through per
    // second.
    assert!(
        outage_requests < 150,
        "the breaker did not spare the CRM: {outage_requests} requests in 6 s"
    );

    let report = sim.await.unwrap();
    let in_kafka = events_in_kafka(&broker.brokers(), "f-crm").await;
    stream_in_kafka(&report, &in_kafka);
    let routed: HashSet<String> = in_kafka
        .iter()
        .filter(|(_, t)| CRM_TYPES.contains(&t.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    let settled = || async {
        let n = applied() as f64 + processor.metric("processors_dead_lettered_total").await;
        n >= routed.len() as f64
    };
    wait_until(
        "every routed event settled",
        Duration::from_secs(60),
        &|| processor.log(),
        settled,
    )
    .await;
    wait_until(
        "the breaker closed",
        Duration::from_secs(20),
        &|| processor.log(),
        || async { processor.metric("processors_crm_breaker_open").await == 0.0 },
    )
    .await;

    let letters = read_topic(&broker.brokers(), "f-crm.dlq").await;
    for l in &letters {
        let reason = l.header("reason").unwrap_or_default();
        assert!(reason.starts_with("HTTP 400"), "dead-lettered for {reason}");
        assert_eq!(l.header("sink").as_deref(), Some("crm"));
    }
    let dead: Vec<String> = letters
        .iter()
        .filter_map(|r| r.header("event-id"))
        .collect();
    let s = crm.state.lock().unwrap();
    let applied_ids: Vec<String> = s
        .applied
        .iter()
        .map(|(k, _)| k.trim_start_matches("purple:").to_string())
        .collect();
    let applied_set: HashSet<String> = applied_ids.iter().cloned().collect();
    let dead_set: HashSet<String> = dead.iter().cloned().collect();
    assert_eq!(applied_ids.len(), applied_set.len(), "a key applied twice");
    assert_eq!(dead.len(), dead_set.len(), "an event dead-lettered twice");
    assert!(
        applied_set.is_disjoint(&dead_set),
        "applied and dead-lettered: {:?}",
        applied_set.intersection(&dead_set).collect::<Vec<_>>()
    );
    let settled: HashSet<String> = applied_set.union(&dead_set).cloned().collect();
    assert_eq!(
        settled, routed,
        "each routed event applied or dead-lettered"
    );
    assert_eq!(
        dead_set, refused,
        "only the refused ones dead-lettered, none for the outage"
    );
    let repeats: u32 = s.repeats.values().sum();
    let refused_503 = s.requests.iter().filter(|r| r.status == 503).count();
    eprintln!(
        "CRM down 6 s: {} routed events of {} in Kafka; {} applied once, {} dead-lettered; \
         {outage_requests} requests during the outage ({refused_503} answered 503 in all), \
         {retries} sink retries, breaker opened; {repeats} repeats",
        routed.len(),
        in_kafka.len(),
        applied_set.len(),
        dead_set.len(),
    );
}

/// Drives ingest at several times its capacity (64 connections sending
/// back to back against `max_in_flight = 8`): memory stays bounded, each
/// refusal is a 503 or 429 with `Retry-After`, each 200 is in Kafka and
/// came within the request deadline, and once the load drops a request is
/// served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_refuses_with_retry_after_keeps_memory_bounded_and_every_200_in_kafka() {
    let broker = Broker::start();
    broker.create_topic("f-over", 2).await;
    let ingest = ingest(
        &broker,
        "f-over",
        "request_timeout = \"2s\"\nmax_in_flight = 8\nretry_after = \"2s\"",
    );
    ingest.wait_ready().await;
    let pid = ingest.pid().expect("ingest runs");
    let url = ingest.url("/webhooks/purple");
    // Warm up (producer connected, first allocations), then the baseline.
    let client = reqwest::Client::new();
    for i in 0..20 {
        let o = send_purple(
            &client,
            &url,
            SECRET,
            purple_event(&format!("warm-{i}"), "v", i),
        )
        .await;
        assert_eq!(o.status, 200, "{o:?}");
    }
    let baseline = rss_kib(pid).expect("ingest's RSS");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let connections = 64;
    let mut workers = Vec::new();
    for w in 0..connections {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // One client each: its own connection, as many providers are.
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut out: Vec<(String, Outcome)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("over-{w}-{i}");
                let body = purple_event(&id, &format!("venue-{}", w % 8), i);
                out.push((id, send_purple(&client, &url, SECRET, body).await));
                i += 1;
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);

    // Served normally once the load is gone: the first request after it.
    let o = send_purple(&client, &url, SECRET, purple_event("after-load", "v", 1)).await;
    assert_eq!(o.status, 200, "not served after the load: {o:?}");
    assert!(o.elapsed < Duration::from_secs(2), "after the load: {o:?}");

    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = HashSet::new();
    let mut slowest_ok = Duration::ZERO;
    for (id, o) in &outcomes {
        *by_status.entry(o.status).or_default() += 1;
        match o.status {
            200 => {
                ok.insert(id.clone());
                slowest_ok = slowest_ok.max(o.elapsed);
            }
            503 | 429 => {
                assert!(o.retry_after.is_some(), "{id}: no Retry-After: {o:?}");
                let code = o.body["error"]["code"].as_str().unwrap_or("?").to_string();
                *codes.entry(code).or_default() += 1;
            }
            _ => panic!("{id}: neither 200 nor a refusal with Retry-After: {o:?}"),
        }
    }
    assert!(
        codes.get("overloaded").copied().unwrap_or(0) > 0,
        "the load never reached max_in_flight: {by_status:?}"
    );
    assert!(
        ok.len() > 100,
        "too few accepted to prove anything: {by_status:?}"
    );
    // The deadline is 2 s from arrival; a 200 after it would be a bug. The
    // margin covers a loaded 2-core machine (the sender shares it).
    assert!(
        slowest_ok < Duration::from_secs(4),
        "a 200 took {slowest_ok:?}, past the 2 s deadline"
    );
    let stored: HashSet<String> = read_topic(&broker.brokers(), "f-over")
        .await
        .iter()
        .map(|r| Envelope::decode(&r.value).unwrap().event_id)
        .collect();
    let missing: Vec<_> = ok.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but not in Kafka: {missing:?}"
    );
    // The bound: max_in_flight (8) bodies of at most 64 KiB, a producer
    // queue of 2 x 8 + 128 small records, and per-connection buffers for 64
    // connections (hyper's read buffer grows to at most ~400 KiB each) come
    // to well under 48 MiB above the idle process; an unbounded queue of
    // requests or records at this rate would pass it within seconds.
    assert!(!ingest.log().contains("panicked"), "{}", ingest.log());
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "overload: {} requests from {connections} connections in 8 s: by status {by_status:?}, \
         refusals by code {codes:?}; {} accepted, all in Kafka, slowest 200 {slowest_ok:?}; \
         ingest RSS {baseline} KiB idle, peak {peak} KiB (+{grown} KiB)",
        outcomes.len(),
        ok.len(),
    );
    assert!(
        grown < 48 * 1024,
        "ingest grew by {grown} KiB under overload (idle {baseline} KiB)"
    );
}

/// SIGTERM to the processors mid-stream: they hand over and exit 0 within
/// their revoke bound; a restart picks up where they stopped, and every
/// event in Kafka reaches the sink exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_sigterm_mid_stream_exits_0_in_time_and_loses_and_repeats_nothing() {
    let broker = Broker::start();
    topics(&broker, "f-term", 3).await;
    let ingest = ingest(&broker, "f-term", STREAM_INGEST);
    ingest.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = processors_config(
        &broker,
        "f-term",
        &dir,
        &format!(
            "[sinks.lines]\nkind = \"jsonl\"\npath = \"{}\"\n",
            sink.display()
        ),
        "[[routes]]\nname = \"all\"\nsinks = [\"lines\"]\n",
    );
    let sim = simulator(
        ingest.url("/webhooks/purple"),
        &[
            "--count",
            "400",
            "--rate",
            "40",
            "--concurrency",
            "1",
            "--venues",
            "4",
            "--duplicates",
            "0.1",
            "--seed",
            "13",
        ],
    );
    let mut stops = Vec::new();
    for round in 0..2 {
        let mut p = start_processor(&config);
        let before = sink_lines(&sink).len();
        wait_until("progress", Duration::from_secs(40), &|| p.log(), || {
            let n = sink_lines(&sink).len();
            async move { n > before + 20 }
        })
        .await;
        let asked = Instant::now();
        let status = tokio::task::block_in_place(|| p.stop(Duration::from_secs(20)));
        let took = asked.elapsed();
        assert!(
            status.success(),
            "round {round}: exited {status}:\n{}",
            p.log()
        );
        assert!(p.log().contains("stopped"), "{}", p.log());
        stops.push((sink_lines(&sink).len(), took));
    }
    let last = start_processor(&config);
    let report = sim.await.unwrap();
    let in_kafka = events_in_kafka(&broker.brokers(), "f-term").await;
    stream_in_kafka(&report, &in_kafka);
    assert!(
        stops.iter().all(|(n, _)| *n < in_kafka.len()),
        "a stop came after the stream: {stops:?}"
    );
    sink_holds_kafka_once(&last, &sink, &in_kafka, Duration::from_secs(60)).await;
    eprintln!(
        "processors SIGTERM x2 mid-stream: {} events ({} requests) all once; \
         (lines at each stop, time to exit 0): {stops:?}",
        in_kafka.len(),
        report.sent
    );
}

/// The broker `kill -9`ed mid-stream and started again 4 s later (same
/// port, same data), with the processors running: they reconnect by
/// themselves (their consumer, and the idempotent producers of the state
/// changelog, the ledger and the side topics), every event in Kafka reaches
/// the sink exactly once, the offsets are committed, and the process never
/// stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_stream_the_processors_carry_on_and_apply_every_event_once()
{
    let mut broker = Broker::start();
    topics(&broker, "f-bounce", 3).await;
    let ingest = ingest(&broker, "f-bounce", STREAM_INGEST);
    ingest.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = processors_config(
        &broker,
        "f-bounce",
        &dir,
        &format!(
            "[sinks.lines]\nkind = \"jsonl\"\npath = \"{}\"\n",
            sink.display()
        ),
        "[[routes]]\nname = \"all\"\nsinks = [\"lines\"]\n",
    );
    let mut p = start_processor(&config);
    let sim = simulator(
        ingest.url("/webhooks/purple"),
        &[
            "--count",
            "300",
            "--rate",
            "30",
            "--concurrency",
            "1",
            "--venues",
            "4",
            "--duplicates",
            "0.1",
            "--seed",
            "17",
        ],
    );
    wait_until("progress", Duration::from_secs(40), &|| p.log(), || {
        let n = sink_lines(&sink).len();
        async move { n > 30 }
    })
    .await;
    let at_kill = sink_lines(&sink).len();
    broker.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart();
    let report = sim.await.unwrap();
    let in_kafka = events_in_kafka(&broker.brokers(), "f-bounce").await;
    stream_in_kafka(&report, &in_kafka);
    assert!(
        at_kill < in_kafka.len(),
        "the kill came after the stream: {at_kill} of {}",
        in_kafka.len()
    );
    sink_holds_kafka_once(&p, &sink, &in_kafka, Duration::from_secs(90)).await;
    assert!(p.is_running(), "the processors stopped:\n{}", p.log());
    eprintln!(
        "broker kill -9 + restart under the processors: {} events ({} requests, {} acknowledged) all once; {at_kill} in the sink at the kill",
        in_kafka.len(),
        report.sent,
        report.acknowledged
    );
}

/// Issue 17, defect 16: SIGTERM with the broker gone (killed, or stopped
/// and answering nothing) ends the processors within their documented
/// bound, `revoke_timeout` + 5 s, saying what they could not commit;
/// before, they retried the hand-over against the dead broker for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_sigterm_with_the_broker_gone_exits_within_the_bound() {
    for stalled in [false, true] {
        let topic = if stalled {
            "f-gone-stalled"
        } else {
            "f-gone-killed"
        };
        let mut broker = Broker::start();
        topics(&broker, topic, 2).await;
        let dir = tempfile::tempdir().unwrap();
        let sink = dir.path().join("events.jsonl");
        let config = processors_config(
            &broker,
            topic,
            &dir,
            &format!(
                "[sinks.lines]\nkind = \"jsonl\"\npath = \"{}\"\n",
                sink.display()
            ),
            "[[routes]]\nname = \"all\"\nsinks = [\"lines\"]\n",
        );
        let mut p = start_processor(&config);
        let records: Vec<(Vec<u8>, Vec<u8>)> = (1..=20)
            .map(|s| {
                let id = format!("{topic}-{s}");
                (
                    b"gone-venue".to_vec(),
                    e2e::purple_envelope(&id, "gone-venue", s, None),
                )
            })
            .collect();
        e2e::produce(&broker.brokers(), topic, &records).await;
        wait_until(
            "events handled",
            Duration::from_secs(60),
            &|| p.log(),
            || {
                let n = sink_lines(&sink).len();
                async move { n >= 20 }
            },
        )
        .await;
        if stalled {
            broker.pause();
        } else {
            broker.kill();
        }
        // revoke_timeout is 10 s in this config: the bound is 15 s; 25 s
        // leaves room for a loaded machine and still fails the old hang.
        let asked = Instant::now();
        let status = tokio::task::block_in_place(|| p.stop(Duration::from_secs(25)));
        let took = asked.elapsed();
        let log = p.log();
        assert!(
            status.success() || log.contains("did not stop within"),
            "stalled={stalled}: exited {status} after {took:?} without saying why:\n{log}"
        );
        eprintln!("broker gone (stalled={stalled}): processors exited {status} after {took:?}");
        if stalled {
            broker.resume();
        }
    }
}
