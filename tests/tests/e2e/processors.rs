//! The processors against a real broker: reorder, dedupe, quarantine,
//! crashes and a second instance taking over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Broker, Processor, processors_config, produce, purple_envelope, read_topic, sink_lines};

/// Waits (bounded) until the sink holds `n` lines.
async fn wait_for_lines(path: &std::path::Path, n: usize, within: Duration, logs: &[&Processor]) {
    let deadline = Instant::now() + within;
    loop {
        let have = sink_lines(path).len();
        if have >= n {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "the sink has {have} of {n} events after {within:?}:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts each id appears once, the set is `expected`, and per venue the
/// sequences increase in file order.
fn assert_once_in_order(lines: &[serde_json::Value], expected: &HashSet<String>, ordered: bool) {
    let mut seen = HashSet::new();
    for l in lines {
        let id = l["event_id"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} applied twice");
    }
    let missing: Vec<_> = expected.difference(&seen).collect();
    let extra: Vec<_> = seen.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    if ordered {
        let mut last: HashMap<String, i64> = HashMap::new();
        for l in lines {
            assert_eq!(l["late"], false, "late event: {l}");
            let venue = l["ordering_key"].as_str().unwrap().to_string();
            let seq = l["sequence"].as_i64().unwrap();
            if let Some(prev) = last.insert(venue.clone(), seq) {
                assert!(seq > prev, "{venue}: {seq} applied after {prev}");
            }
        }
    }
}

/// Records to produce, the distinct event ids, how many duplicates.
type Stream = (Vec<(Vec<u8>, Vec<u8>)>, HashSet<String>, usize);

/// A deterministic shuffle (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

/// `venues` × `per_venue` events; each venue's first event goes first (a
/// key's first event sets where its sequence starts), then the rest with
/// `ooo` of them swapped with their successor and `dups` re-sent later.
fn stream(venues: usize, per_venue: u64, ooo: f64, dups: f64, seed: u64, prefix: &str) -> Stream {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let id = |v: usize, s: u64| format!("{prefix}-v{v}-{s}");
    let rec = |v: usize, s: u64| {
        let venue = format!("{prefix}-venue-{v}");
        (
            venue.clone().into_bytes(),
            purple_envelope(&id(v, s), &venue, s, None),
        )
    };
    for v in 0..venues {
        out.push(rec(v, 1));
        ids.insert(id(v, 1));
    }
    let mut rest = Vec::new();
    for s in 2..=per_venue {
        for v in 0..venues {
            rest.push((v, s));
            ids.insert(id(v, s));
        }
    }
    // Out of order: swap with the same venue's next event.
    let mut i = 0;
    let mut swapped = 0;
    while i + venues < rest.len() {
        if rng.chance(ooo) {
            rest.swap(i, i + venues);
            swapped += 1;
            i += 2 * venues;
        } else {
            i += 1;
        }
    }
    let mut duplicates = 0;
    let mut delayed: Vec<(usize, u64)> = Vec::new();
    for (v, s) in rest {
        out.push(rec(v, s));
        if rng.chance(dups) {
            delayed.push((v, s));
        }
        // Re-send a pending duplicate a little later.
        if delayed.len() > 3 {
            let (dv, ds) = delayed.remove(0);
            out.push(rec(dv, ds));
            duplicates += 1;
        }
    }
    for (v, s) in delayed {
        out.push(rec(v, s));
        duplicates += 1;
    }
    assert!(duplicates > 0 && (ooo == 0.0 || swapped > 0));
    (out, ids, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reordering_reach_the_sink_once_in_order() {
    let broker = Broker::start();
    broker.create_topic("p-order", 3).await;
    broker.create_topic("p-order.quarantine", 1).await;
    broker.create_topic("p-order.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let (records, ids, duplicates) = stream(6, 50, 0.2, 0.1, 0x5eed, "o");
    let processor = Processor::start(&processors_config(
        &broker.brokers(),
        "p-order",
        "g-order",
        &dir.path().join("dedupe.redb"),
        &sink,
        "gap_timeout = \"20s\"",
    ));
    produce(&broker.brokers(), "p-order", &records).await;
    wait_for_lines(&sink, ids.len(), Duration::from_secs(60), &[&processor]).await;
    // Let any wrongly released duplicate show up before judging.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_once_in_order(&sink_lines(&sink), &ids, true);
    // The processors dropped every duplicate themselves (the sink's own
    // idempotency was not needed).
    assert_eq!(
        processor
            .metric("processors_duplicates_dropped_total")
            .await,
        duplicates as f64
    );
    assert_eq!(processor.metric("processors_late_events_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_go_to_quarantine_and_the_rest_flows() {
    let broker = Broker::start();
    broker.create_topic("p-q", 1).await;
    broker.create_topic("p-q.quarantine", 1).await;
    broker.create_topic("p-q.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let processor = Processor::start(&processors_config(
        &broker.brokers(),
        "p-q",
        "g-q",
        &dir.path().join("dedupe.redb"),
        &sink,
        "gap_timeout = \"60s\"",
    ));
    let v = b"q-venue".to_vec();
    let records = vec![
        (v.clone(), purple_envelope("q1", "q-venue", 1, None)),
        (
            v.clone(),
            purple_envelope("q2", "q-venue", 2, Some(b"{\"id\": \"q2\", trunc".to_vec())),
        ),
        (v.clone(), b"not an envelope at all".to_vec()),
        (
            v.clone(),
            purple_envelope(
                "q4",
                "q-venue",
                3,
                Some(br#"{"id":"q4","type":["teleported"],"sequence":3}"#.to_vec()),
            ),
        ),
        (v.clone(), purple_envelope("q5", "q-venue", 4, None)),
    ];
    produce(&broker.brokers(), "p-q", &records).await;
    // Quarantined records fill their sequence slots: q5 (sequence 4) does
    // not wait the 60 s gap timeout for 2 and 3.
    wait_for_lines(&sink, 2, Duration::from_secs(30), &[&processor]).await;
    let got: Vec<String> = sink_lines(&sink)
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["q1", "q5"]);
    let quarantined = read_topic(&broker.brokers(), "p-q.quarantine").await;
    let reasons: Vec<(Option<String>, Option<String>)> = quarantined
        .iter()
        .map(|r| (r.header("reason"), r.header("original-offset")))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("not_json".into()), Some("1".into())),
            (Some("envelope_undecodable".into()), Some("2".into())),
            (Some("invalid".into()), Some("3".into())),
        ]
    );
    // The original envelope, byte for byte.
    assert_eq!(quarantined[0].value, records[1].1);
    assert!(
        quarantined[2]
            .header("detail")
            .is_some_and(|d| d.contains("/type")),
        "{:?}",
        quarantined[2].header("detail")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_and_a_second_instance_apply_every_event_once() {
    let broker = Broker::start();
    broker.create_topic("p-kill", 4).await;
    broker.create_topic("p-kill.quarantine", 1).await;
    broker.create_topic("p-kill.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let config = |instance: &str| {
        processors_config(
            &broker.brokers(),
            "p-kill",
            "g-kill",
            &dir.path().join(format!("dedupe-{instance}.redb")),
            &sink,
            "gap_timeout = \"5s\"\nbatch_max = 50",
        )
    };
    let (first, mut ids, _) = stream(8, 150, 0.0, 0.1, 0xdead, "k1");
    let (second, more, _) = stream(8, 100, 0.0, 0.1, 0xbeef, "k2");
    ids.extend(more);

    // A killed member is dropped from the group after its session
    // timeout: keep it short, as a test of a crash should not wait 45 s.
    // (tansu 0.6 may also complete the rebalance that the restarted
    // instances start with the dead member still in it, handing it every
    // partition; only its expiry then moves them to the live ones.)
    let env = [("PROCESSORS_KAFKA__SESSION_TIMEOUT", "6s")];
    let mut a = Processor::start_with_env(&config("a"), &env);
    produce(&broker.brokers(), "p-kill", &first).await;
    // Kill it in the middle of the stream.
    wait_for_lines(&sink, 300, Duration::from_secs(60), &[&a]).await;
    a.kill();
    let applied_at_kill = sink_lines(&sink).len();
    assert!(
        applied_at_kill < first.len(),
        "the stream was over before the kill"
    );

    // A second instance and the restarted first share the partitions.
    let b = Processor::start_with_env(&config("b"), &env);
    let a2 = Processor::start_with_env(&config("a"), &env);
    produce(&broker.brokers(), "p-kill", &second).await;
    wait_for_lines(&sink, ids.len(), Duration::from_secs(120), &[&a2, &b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_once_in_order(&sink_lines(&sink), &ids, false);
    eprintln!(
        "kill -9 after {applied_at_kill} of {} events; {} applied once each",
        ids.len(),
        sink_lines(&sink).len()
    );
}

/// The processors' runtime started in this process on a new one-partition
/// topic, with `sink` as its only sink (named `test`) and the given
/// `revoke_timeout`: for tests whose sink misbehaves in ways no real sink
/// can be made to (a panic, a call that never returns).
struct InProcess {
    broker: Broker,
    metrics: processors::metrics::Metrics,
    stop: tokio::sync::watch::Sender<bool>,
    running: processors::kafka::consumer::Running,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(
        topic: &str,
        revoke_timeout: &str,
        sink: Arc<dyn processors::sinks::Sink>,
    ) -> InProcess {
        let broker = Broker::start();
        for t in [
            topic.to_string(),
            format!("{topic}.quarantine"),
            format!("{topic}.dlq"),
        ] {
            broker.create_topic(&t, 1).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let unused = dir.path().join("unused.jsonl");
        let config = processors::config::Config::from_toml(
            &processors_config(
                &broker.brokers(),
                topic,
                &format!("g-{topic}"),
                &dir.path().join("dedupe.redb"),
                &unused,
                "",
            )
            .replace(
                "revoke_timeout = \"10s\"",
                &format!("revoke_timeout = \"{revoke_timeout}\""),
            )
            .replace("kind = \"jsonl\"", "kind = \"null\"")
            .replace(&format!("path = \"{}\"", unused.display()), ""),
        )
        .expect("config");
        let metrics = processors::metrics::Metrics::new().unwrap();
        let shared = processors::app::shared(
            &config,
            vec![sink],
            processors::app::open_dedupe(&config.dedupe).unwrap(),
            Arc::new(processors::kafka::side::KafkaSide::new(&config.kafka).unwrap()),
            metrics.clone(),
        )
        .unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let running = processors::kafka::consumer::start(
            &config.kafka,
            &config.processing,
            Arc::new(shared),
            tokio::runtime::Handle::current(),
            stop_rx,
        )
        .unwrap();
        InProcess {
            broker,
            metrics,
            stop,
            running,
            _dir: dir,
        }
    }

    /// Shuts the runtime down as SIGTERM would and waits for it.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let running = self.running;
        tokio::task::spawn_blocking(move || running.join())
            .await
            .unwrap()
            .unwrap();
    }
}

/// A sink whose first call panics (a bug in a sink or a stage); every later
/// call accepts and records.
struct PanicsOnce {
    calls: std::sync::atomic::AtomicUsize,
    accepted: std::sync::Mutex<Vec<String>>,
}

impl processors::sinks::Sink for PanicsOnce {
    fn name(&self) -> &str {
        "test"
    }

    fn accept<'a>(
        &'a self,
        batch: &'a [std::sync::Arc<processors::event::Event>],
    ) -> processors::sinks::BoxFuture<'a, Vec<processors::sinks::Outcome>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(call > 0, "a bug in a sink: the first call panics");
            if let Ok(mut a) = self.accepted.lock() {
                a.extend(batch.iter().map(|e| e.event_id.clone()));
            }
            vec![processors::sinks::Outcome::Accepted; batch.len()]
        })
    }
}

/// Issue 17, defect 11: a worker that panics must not leave its partition
/// unprocessed in silence. The runtime restarts it from the last position
/// it stored, counted in `processors_worker_restarts_total`, and every
/// event still reaches the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_restarted_from_its_position_and_nothing_is_lost() {
    let sink = Arc::new(PanicsOnce {
        calls: Default::default(),
        accepted: Default::default(),
    });
    let run = InProcess::start("p-panic", "10s", sink.clone()).await;
    let metrics = run.metrics.clone();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (1..=20)
        .map(|s| {
            let id = format!("panic-{s}");
            (b"v".to_vec(), purple_envelope(&id, "v", s, None))
        })
        .collect();
    produce(&run.broker.brokers(), "p-panic", &records).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<String> = sink.accepted.lock().unwrap().iter().cloned().collect();
        if got.len() == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 20 events reached the sink after the worker panicked; restarts counted: {}",
            got.len(),
            metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("processors_worker_restarts_total"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarts: f64 = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("processors_worker_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(restarts, 1.0, "{}", metrics.render());
    run.stop().await;
}

/// A sink whose calls never end (a destination that accepts the connection
/// and never answers, a call stuck in a driver); it records whether the
/// call in flight was dropped.
struct Hangs {
    started: std::sync::atomic::AtomicBool,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets its flag when the future holding it is dropped (cancelled).
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl processors::sinks::Sink for Hangs {
    fn name(&self) -> &str {
        "test"
    }

    fn accept<'a>(
        &'a self,
        _batch: &'a [Arc<processors::event::Event>],
    ) -> processors::sinks::BoxFuture<'a, Vec<processors::sinks::Outcome>> {
        let flag = DropFlag(self.dropped.clone());
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Vec::new()
        })
    }
}

/// Issue 17, defect 3: a worker must not outlive its partition. Past
/// `revoke_timeout` the hand-over (revocation or shutdown, the same code)
/// aborts the worker, so its sink call is cancelled instead of going on
/// applying effects beside the next owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_in_a_sink_is_aborted_at_the_hand_over() {
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = Arc::new(Hangs {
        started: Default::default(),
        dropped: dropped.clone(),
    });
    let run = InProcess::start("p-stuck", "2s", sink.clone()).await;
    produce(
        &run.broker.brokers(),
        "p-stuck",
        &[(b"v".to_vec(), purple_envelope("stuck-1", "v", 1, None))],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.started.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the sink was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop().await;
    // The hand-over is over: the call in flight must be gone with it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the worker's sink call is still running after its partition was handed over"
    );
}

/// Issue 17, defect 9: memory is bounded in bytes per instance, not in
/// items per partition. Large bodies over many keys and partitions, every
/// key waiting for a missing first sequence (so the reorder buffers would
/// hold all of them): the instance's RSS stays within its byte budget plus
/// a stated margin, and every event still comes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_held_for_gaps_stay_within_the_byte_budget() {
    const BODY: usize = 256 * 1024;
    const VENUES: u64 = 40;
    const PER_VENUE: u64 = 10;
    const BUDGET_MIB: u64 = 16;
    let broker = Broker::start();
    for (t, n) in [
        ("p-bytes", 4),
        ("p-bytes.quarantine", 1),
        ("p-bytes.dlq", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.jsonl");
    let config = processors_config(
        &broker.brokers(),
        "p-bytes",
        "g-bytes",
        &dir.path().join("dedupe.redb"),
        &unused,
        &format!(
            "gap_timeout = \"10s\"\nmax_buffered_bytes = {}",
            BUDGET_MIB << 20
        ),
    )
    .replace("kind = \"jsonl\"", "kind = \"null\"")
    .replace(&format!("path = \"{}\"", unused.display()), "");
    // Each key starts at 1 (small), then sequence 2 never comes: the large
    // events from 3 on wait in the reorder buffers for the gap timeout.
    let padding = "x".repeat(BODY);
    let mut records = Vec::new();
    for v in 0..VENUES {
        let venue = format!("big-{v}");
        let id = format!("big-{v}-1");
        records.push((
            venue.clone().into_bytes(),
            purple_envelope(&id, &venue, 1, None),
        ));
    }
    for seq in 3..3 + PER_VENUE {
        for v in 0..VENUES {
            let venue = format!("big-{v}");
            let id = format!("big-{v}-{seq}");
            let body = serde_json::json!({
                "id": id, "type": "device_connected", "sequence": seq,
                "occurred_at": "2026-11-22T18:03:11.123Z",
                "venue": {"id": venue}, "zone": "lobby", "device": {"id": format!("d{v}")},
                "padding": padding,
            })
            .to_string()
            .into_bytes();
            records.push((
                venue.clone().into_bytes(),
                purple_envelope(&id, &venue, seq, Some(body)),
            ));
        }
    }
    let total = records.len() as f64;
    // The whole backlog is in Kafka before the processors start, so they
    // can read it as fast as they like: only the budget holds them back.
    produce(&broker.brokers(), "p-bytes", &records).await;
    drop(records);
    let p = Processor::start(&config);
    let pid = p.pid().expect("running");
    let baseline = e2e::rss_kib(pid).expect("rss") / 1024;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak = baseline;
    loop {
        peak = peak.max(e2e::rss_kib(pid).unwrap_or(0) / 1024);
        if p.metric("processors_routed_total").await >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} routed; peak RSS {peak} MiB:\n{}",
            p.metric("processors_routed_total").await,
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The budget counts each record twice (envelope and parsed event);
    // librdkafka's prefetch is a quarter of it; allocator slack and the
    // fetch in flight make the rest of the margin. The process itself
    // needs about 30 MiB (debug build) before it reads anything.
    let margin = 4 * BUDGET_MIB + 32;
    let baseline = baseline.max(48);
    eprintln!(
        "byte budget {BUDGET_MIB} MiB: RSS allowance at rest {baseline} MiB, peak {peak} MiB over {total} records of {} KiB",
        BODY / 1024
    );
    assert!(
        peak <= baseline + margin,
        "peak RSS {peak} MiB is over {baseline} MiB + {margin} MiB with a {BUDGET_MIB} MiB budget"
    );
    assert!(p.metric("processors_budget_pauses_total").await >= 1.0);
}
