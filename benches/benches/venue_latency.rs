//! The live venue view's latency (issue 19): from ingest's `200` for a
//! signed guest-WiFi webhook to the change it causes arriving on the venue
//! view's Server-Sent-Events clients, with every part real: tansu (sqlite)
//! on loopback, the release binaries `ingest`, `processors` (the alerting
//! sink, whose state changelog carries each touched venue's occupancy
//! with every batch's checkpoint) and `venues` (following that changelog,
//! streaming `/api/venues/events`), started by the `e2e` harness.
//!
//! ```sh
//! cargo build --release --bins
//! cargo bench -p pipeline-benches --bench venue_latency
//! ```
//!
//! # What is sent, and how a change is recognised
//!
//! Event `n` is for venue `n % 50` with sequence `n / 50 + 1` and a new
//! device (`device_connected` or `zone_entered`, across four zones), dated
//! now. Each one adds one device to its venue, and the processors apply a
//! venue's events in sequence order (their reorder stage holds an event
//! until its predecessors came), so a venue showing `k` devices on the
//! stream has had exactly its events of sequence 1 to `k` applied: a
//! change of venue `v` from `j` to `k` devices is the arrival of events
//! `j + 1 ..= k` of `v`. A batch folds several events of one venue into
//! one change; each of them arrived then. A request refused (503, ...) is
//! sent again with its id and sequence until ingest answers `200`: a
//! sequence missing for good would hold its venue's later events for the
//! processors' `gap_timeout` (30 s).
//!
//! # Phases
//!
//! 1. Warm-up: each venue's first event, one per venue (a venue's first
//!    event sets where its sequence starts), until one stream client shows
//!    every venue.
//! 2. Maximum rate: a closed-loop burst (`VENUE_LATENCY_CONNECTIONS`
//!    keep-alive connections for `VENUE_LATENCY_BURST_SECONDS`), measured
//!    where it ends: the events over the time from the first request to
//!    the last change arriving on a stream client (so the pipeline's rate
//!    end to end, not ingest's).
//! 3. Latency: `VENUE_LATENCY_CLIENTS` (100) clients on the all-venues
//!    stream, then an open loop at `VENUE_LATENCY_SHARE` (0.5) of that rate
//!    (or `VENUE_LATENCY_RATE` events/s) for `VENUE_LATENCY_SECONDS` (30):
//!    each event's `200` instant, each client's arrival instant of the
//!    change that carries it; latency = arrival - `200`, per client and
//!    over all of them. Ingest's own answer time (from when the request
//!    was due) is shown beside it.
//!
//! A table on stdout and `target/bench-results/venue_latency.json`.
//! Measured, never asserted (the target, p99 under a second, is printed
//! as met or missed). The processors run with their defaults (no
//! `[processing]` batch setting given: `batch_max` 500, the value the
//! README and the local stack use); they have no batch linger: a
//! partition's batch is what waits in its queue when the previous batch
//! was handled, and its changelog write (ledger, then state) is
//! acknowledged before the next one starts, so the broker's append
//! latency, not a timer, sets the batch rhythm.
//!
//! # What the figure depends on
//!
//! On tansu 0.6 above all its fetch: a fetch that finds records still
//! sleeps half of the consumer's `fetch.wait.max.ms` before it answers
//! (`tansu-storage` 0.6.0, `src/service/fetch.rs`, the `sleep` at the end
//! of the loop in `fetch`; Kafka answers at once once `fetch.min.bytes`
//! are there). With librdkafka's default of 500 ms, each of the two
//! consumer hops (raw topic to the processors, state changelog to the
//! view) cost 250 to 500 ms by that reading (the view's
//! `venues_view_lag_seconds`, changelog append to applied, read 0.5-0.7 s
//! at the end of smoke runs with 500 ms, 0.08 s with 10 ms), which is why
//! both services default to 100 ms.
//! `VENUE_LATENCY_FETCH_WAIT_MS` sets
//! `fetch.wait.max.ms` on both consumers (through their `kafka.options`)
//! to see the rest of the pipeline; unset, the deployed defaults are
//! measured. Then the checkpoint's two appends (ledger, changelog: their
//! mean times are reported) and the batch size they let build up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use e2e::{Broker, Ingest, Processor, Venues};
use pipeline_benches::{Latencies, Summary};

const SECRET_ENV: &str = "BENCH_PURPLE_SECRET";
const SECRET: &str = "bench-secret-not-for-production";
const TOPIC: &str = "latency.raw";
const GROUP: &str = "latency";
const PARTITIONS: i32 = 4;
const VENUES: u64 = 50;
const ZONES: [&str; 4] = ["lobby", "bar", "pool", "terrace"];
/// The processors' `batch_max` in force (their default: no `[processing]`
/// batch setting is given); reported with the results.
const BATCH_MAX: usize = 500;
/// Attempts per event before it is given up (and its venue stalls).
const ATTEMPTS: u32 = 20;
/// Most requests outstanding in the open loop: ingest's `max_in_flight`.
const OUTSTANDING: usize = 1024;
/// How long the stream may take to show every event after the load stops.
const DRAIN: Duration = Duration::from_secs(120);

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    /// Open-loop phase, seconds (`VENUE_LATENCY_SECONDS`).
    seconds: f64,
    /// Closed-loop burst, seconds (`VENUE_LATENCY_BURST_SECONDS`).
    burst_seconds: f64,
    /// Connections of the burst (`VENUE_LATENCY_CONNECTIONS`).
    connections: usize,
    /// Stream clients in the open-loop phase (`VENUE_LATENCY_CLIENTS`).
    clients: usize,
    /// Share of the maximum rate offered (`VENUE_LATENCY_SHARE`).
    share: f64,
    /// A fixed open-loop rate instead (`VENUE_LATENCY_RATE`, events/s).
    rate: Option<f64>,
    /// librdkafka's `fetch.wait.max.ms` for the processors' and the view's
    /// consumers (`VENUE_LATENCY_FETCH_WAIT_MS`); unset: the services'
    /// default (100 ms), as deployed. See the module docs.
    fetch_wait_ms: Option<u64>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            seconds: env("VENUE_LATENCY_SECONDS", 30.0),
            burst_seconds: env("VENUE_LATENCY_BURST_SECONDS", 10.0),
            connections: env("VENUE_LATENCY_CONNECTIONS", 256),
            clients: env("VENUE_LATENCY_CLIENTS", 100),
            share: env("VENUE_LATENCY_SHARE", 0.5),
            rate: std::env::var("VENUE_LATENCY_RATE")
                .ok()
                .map(|v| v.parse().expect("VENUE_LATENCY_RATE: events per second")),
            fetch_wait_ms: std::env::var("VENUE_LATENCY_FETCH_WAIT_MS").ok().map(|v| {
                v.parse()
                    .expect("VENUE_LATENCY_FETCH_WAIT_MS: milliseconds")
            }),
        }
    }
}

fn venue_id(v: u64) -> String {
    format!("venue-{v:03}")
}

/// Event `n`'s venue index and sequence (its venue's device count once
/// it is applied).
fn slot(n: u64) -> (u64, u64) {
    (n % VENUES, n / VENUES + 1)
}

/// The event of `n`: see the module docs.
fn event(n: u64) -> Vec<u8> {
    let (v, seq) = slot(n);
    let kind = if seq % 2 == 0 {
        "zone_entered"
    } else {
        "device_connected"
    };
    let zone = ZONES[(seq / 2 % ZONES.len() as u64) as usize];
    e2e::guest_wifi_event(
        &format!("lat-{n}"),
        kind,
        &venue_id(v),
        zone,
        &format!("dev-{n}"),
        seq,
        SystemTime::now(),
    )
}

/// Sends event `n` until ingest answers 2xx; the instant it did, or
/// `None` when every attempt was refused.
async fn send(client: &reqwest::Client, url: &str, n: u64) -> Option<Instant> {
    for attempt in 0..ATTEMPTS {
        let started = Instant::now();
        let o = e2e::send_purple(client, url, SECRET, event(n)).await;
        if (200..300).contains(&o.status) {
            return Some(started + o.elapsed);
        }
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt + 1))).await;
    }
    None
}

fn http_client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Microseconds since `t0`, plus one (0 means "not yet").
fn stamp(t0: Instant, at: Instant) -> u32 {
    u32::try_from(at.saturating_duration_since(t0).as_micros())
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

/// What one stream client saw.
struct Seen {
    /// Per venue, the newest device count shown and when it arrived.
    newest: Vec<(u64, Option<Instant>)>,
    /// The snapshot came.
    started: bool,
    /// The measured events: the first one's `n`.
    first: u64,
    /// Per measured event, when its change arrived ([`stamp`]).
    arrivals: Vec<u32>,
    /// Changes (`occupancy` events) received.
    changes: u64,
    /// Why the stream ended early (an `error` event: dropped), if it did.
    ended: Option<String>,
}

/// The occupancy event's part this benchmark reads.
#[derive(serde::Deserialize)]
struct Occupancy {
    venue: VenueCount,
}

#[derive(serde::Deserialize)]
struct VenueCount {
    id: String,
    devices: u64,
}

#[derive(serde::Deserialize)]
struct Snapshot {
    venues: Vec<Occupancy>,
}

impl Seen {
    fn new(first: u64, count: usize) -> Seen {
        Seen {
            newest: vec![(0, None); VENUES as usize],
            started: false,
            first,
            arrivals: vec![0; count],
            changes: 0,
            ended: None,
        }
    }

    /// One SSE event (`event:` name and `data:`) that arrived at `at`.
    fn event(
        &mut self,
        kind: &str,
        data: &str,
        t0: Instant,
        at: Instant,
    ) -> serde_json::Result<()> {
        match kind {
            "snapshot" => {
                let s: Snapshot = serde_json::from_str(data)?;
                for o in s.venues {
                    if let Some(v) = index(&o.venue.id) {
                        self.newest[v].0 = o.venue.devices;
                    }
                }
                self.started = true;
            }
            "occupancy" => {
                self.changes += 1;
                let o: Occupancy = serde_json::from_str(data)?;
                let Some(v) = index(&o.venue.id) else {
                    return Ok(());
                };
                let (was, _) = self.newest[v];
                if o.venue.devices <= was {
                    return Ok(());
                }
                for seq in was + 1..=o.venue.devices {
                    let n = (seq - 1) * VENUES + v as u64;
                    if let Some(a) = n
                        .checked_sub(self.first)
                        .and_then(|i| self.arrivals.get_mut(i as usize))
                        && *a == 0
                    {
                        *a = stamp(t0, at);
                    }
                }
                self.newest[v] = (o.venue.devices, Some(at));
            }
            "error" => self.ended = Some(data.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

fn index(venue: &str) -> Option<usize> {
    let v: u64 = venue.strip_prefix("venue-")?.parse().ok()?;
    (v < VENUES).then_some(v as usize)
}

/// Connects a client to the all-venues stream and reads it into `seen`
/// until the stream ends or the task is aborted.
fn stream_client(url: String, seen: Arc<Mutex<Seen>>, t0: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .build()
            .expect("stream client");
        let mut resp = match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                let status = r.status();
                seen.lock().expect("seen").ended = Some(format!("answered {status}"));
                return;
            }
            Err(e) => {
                seen.lock().expect("seen").ended = Some(format!("{e}"));
                return;
            }
        };
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    seen.lock().expect("seen").ended = Some(format!("{e}"));
                    return;
                }
            };
            let at = Instant::now();
            buf.extend_from_slice(&chunk);
            let mut s = seen.lock().expect("seen");
            // An event ends with a blank line.
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 2);
                let (mut kind, mut data) = ("message", String::new());
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim_start();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if let Err(e) = s.event(kind, &data, t0, at) {
                    s.ended = Some(format!("an unreadable {kind} event: {e}"));
                    return;
                }
            }
        }
        let mut s = seen.lock().expect("seen");
        if s.ended.is_none() {
            s.ended = Some("the stream ended".into());
        }
    })
}

/// Waits until every client in `seen` shows each venue at `last[v]`
/// devices at least (or has ended), up to `bound`.
async fn wait_shown(seen: &[Arc<Mutex<Seen>>], last: &[u64], bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        let done = seen.iter().all(|s| {
            let s = s.lock().expect("seen");
            s.ended.is_some() || s.newest.iter().zip(last).all(|((n, _), l)| n >= l)
        });
        if done {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each venue's device count once events `..end` are applied.
fn counts_after(end: u64) -> Vec<u64> {
    (0..VENUES)
        .map(|v| {
            if end > v {
                (end - 1 - v) / VENUES + 1
            } else {
                0
            }
        })
        .collect()
}

/// What the closed-loop burst measured.
struct Burst {
    /// Events sent (all answered 2xx unless counted in `lost`).
    events: u64,
    /// Events never accepted.
    lost: u64,
    /// From the first request to the last answer.
    ingest: Duration,
    /// From the first request to the last change on the stream client.
    end_to_end: Duration,
    /// The stream showed every event within [`DRAIN`].
    complete: bool,
}

async fn burst(url: &str, next: &Arc<AtomicU64>, s: &Settings, probe: &Arc<Mutex<Seen>>) -> Burst {
    let client = http_client(s.connections);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(s.burst_seconds);
    let first = next.load(Ordering::Relaxed);
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..s.connections {
        let (client, url, next, lost) =
            (client.clone(), url.to_owned(), next.clone(), lost.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if send(&client, &url, n).await.is_none() {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let ingest = started.elapsed();
    let last = next.load(Ordering::Relaxed);
    let complete = wait_shown(std::slice::from_ref(probe), &counts_after(last), DRAIN).await;
    let newest = probe
        .lock()
        .expect("seen")
        .newest
        .iter()
        .filter_map(|(_, at)| *at)
        .max()
        .unwrap_or(started);
    Burst {
        events: last - first,
        lost: lost.load(Ordering::Relaxed),
        ingest,
        end_to_end: newest.saturating_duration_since(started),
        complete,
    }
}

/// What the open loop sent.
struct OpenLoop {
    /// Its first event's `n`.
    first: u64,
    /// Per event, when ingest answered 2xx ([`stamp`]; 0: never).
    accepted: Vec<u32>,
    /// Ingest's answer time from when each request was due.
    ingest: Latencies,
    /// Events due while [`OUTSTANDING`] were open: not sent (their venue
    /// then waits for the gap timeout).
    not_sent: u64,
    /// Events every attempt of which was refused.
    lost: u64,
}

/// Event `first + i` is due at `start + i / rate`, sent then whatever the
/// answers before it do.
async fn open_loop(
    url: &str,
    next: &Arc<AtomicU64>,
    rate: f64,
    seconds: f64,
    t0: Instant,
) -> OpenLoop {
    let total = (rate * seconds) as u64;
    let first = next.fetch_add(total, Ordering::Relaxed);
    let client = http_client(OUTSTANDING);
    let limit = Arc::new(tokio::sync::Semaphore::new(OUTSTANDING));
    let accepted: Arc<Vec<AtomicU32>> = Arc::new((0..total).map(|_| AtomicU32::new(0)).collect());
    let ingest = Arc::new(Mutex::new(Latencies::default()));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_sent = 0;
    let started = Instant::now();
    let mut i = 0u64;
    while i < total {
        let now = Instant::now();
        while i < total {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > now {
                break;
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                not_sent += 1;
                i += 1;
                continue;
            };
            let (client, url) = (client.clone(), url.to_owned());
            let (accepted, ingest, lost) = (accepted.clone(), ingest.clone(), lost.clone());
            tasks.spawn(async move {
                match send(&client, &url, first + i).await {
                    Some(at) => {
                        accepted[i as usize].store(stamp(t0, at), Ordering::Relaxed);
                        ingest
                            .lock()
                            .expect("latencies")
                            .record(at.saturating_duration_since(due));
                    }
                    None => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
            i += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let ingest = std::mem::take(&mut *ingest.lock().expect("latencies"));
    OpenLoop {
        first,
        accepted: accepted.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        ingest,
        not_sent,
        lost: lost.load(Ordering::Relaxed),
    }
}

/// The processors' counters that explain the latency, read twice to give
/// a phase's share.
#[derive(Debug, Default, Clone, Copy)]
struct Batches {
    /// Batches offered to the alerting sink.
    batches: f64,
    /// Seconds the sink took over them.
    sink_seconds: f64,
    /// Events routed.
    routed: f64,
    /// Ledger appends and their seconds.
    ledger: (f64, f64),
    /// State changelog appends and their seconds.
    changelog: (f64, f64),
    /// Events that came after their sequence slot passed.
    late: f64,
    /// Sequence numbers given up after the gap timeout.
    skipped: f64,
    /// Events the alerting sink did not count, any reason.
    ignored: f64,
}

impl Batches {
    async fn read(p: &Processor) -> Batches {
        let text = e2e::scrape(p.metrics_addr).await;
        let m = |name: &str, labels: &[(&str, &str)]| e2e::metric_sum(&text, name, labels);
        let step = |s: &str| {
            (
                m("processors_state_checkpoint_seconds_count", &[("step", s)]),
                m("processors_state_checkpoint_seconds_sum", &[("step", s)]),
            )
        };
        Batches {
            batches: m(
                "processors_sink_latency_seconds_count",
                &[("sink", "alerts")],
            ),
            sink_seconds: m("processors_sink_latency_seconds_sum", &[("sink", "alerts")]),
            routed: m("processors_routed_total", &[]),
            ledger: step("ledger"),
            changelog: step("changelog"),
            late: m("processors_late_events_total", &[]),
            skipped: m("processors_reorder_skipped_sequences_total", &[]),
            ignored: m("processors_alerting_events_ignored_total", &[]),
        }
    }

    fn since(&self, before: &Batches) -> Batches {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Batches {
            batches: self.batches - before.batches,
            sink_seconds: self.sink_seconds - before.sink_seconds,
            routed: self.routed - before.routed,
            ledger: d(self.ledger, before.ledger),
            changelog: d(self.changelog, before.changelog),
            late: self.late - before.late,
            skipped: self.skipped - before.skipped,
            ignored: self.ignored - before.ignored,
        }
    }

    fn json(&self) -> serde_json::Value {
        let mean_ms = |(n, s): (f64, f64)| if n > 0.0 { s * 1e3 / n } else { 0.0 };
        serde_json::json!({
            "batches": self.batches,
            "events_routed": self.routed,
            "mean_events_per_batch": if self.batches > 0.0 { self.routed / self.batches } else { 0.0 },
            "mean_sink_ms": mean_ms((self.batches, self.sink_seconds)),
            "mean_ledger_append_ms": mean_ms(self.ledger),
            "mean_changelog_append_ms": mean_ms(self.changelog),
            "late_events": self.late,
            "skipped_sequences": self.skipped,
            "events_ignored_by_the_alerting_sink": self.ignored,
        })
    }
}

/// The CPU seconds each process has used so far: this one (the load, the
/// stream clients), ingest, processors, venues, tansu.
fn cpu(pids: &[(&'static str, Option<u32>)]) -> Vec<(&'static str, f64)> {
    pids.iter()
        .map(|(name, pid)| {
            let used = pid.and_then(pipeline_benches::cpu_seconds).unwrap_or(0.0);
            (*name, used)
        })
        .collect()
}

fn row(what: &str, s: &Summary) -> String {
    format!(
        "{what:<34} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.count, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
    )
}

/// A binary's path and modification time, for the record: the bench runs
/// what `cargo build --release --bins` left there.
fn binary_info(name: &str) -> serde_json::Value {
    let path = e2e::binary(name);
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    serde_json::json!({"path": path.display().to_string(), "modified": modified})
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too:
    // only run for real under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let settings = Settings::from_env();
    let machine = pipeline_benches::machine();
    let binaries: serde_json::Map<String, serde_json::Value> = ["ingest", "processors", "venues"]
        .iter()
        .map(|b| ((*b).to_owned(), binary_info(b)))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(settings, machine, binaries));
}

async fn run(
    s: Settings,
    machine: serde_json::Value,
    binaries: serde_json::Map<String, serde_json::Value>,
) {
    let t0 = Instant::now();
    let phase = |p: &str| eprintln!("[{:>6.1}s] {p}", t0.elapsed().as_secs_f64());
    phase("starting tansu, ingest, processors, venues");
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS).await;
    broker.create_topic(&format!("{TOPIC}.quarantine"), 1).await;
    broker.create_topic(&format!("{TOPIC}.dlq"), 1).await;
    let ingest_config =
        e2e::purple_config(&broker.brokers(), TOPIC, &[("current", SECRET_ENV)], "");
    let ingest = Ingest::start(&ingest_config, &[(SECRET_ENV, SECRET)]);
    ingest.wait_ready().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    // No zone_occupancy alert fires: every change on the stream is an
    // occupancy change of the events sent.
    // The consumers' fetch wait, when asked for, on both hops.
    let fetch_options = s.fetch_wait_ms.map_or(String::new(), |ms| {
        format!("options = {{ \"fetch.wait.max.ms\" = \"{ms}\" }}\n")
    });
    let processors_config =
        e2e::processors_alerting_config(&broker.brokers(), TOPIC, GROUP, dir.path(), 1_000_000)
            .replacen("[kafka]\n", &format!("[kafka]\n{fetch_options}"), 1);
    let processors = Processor::start(&processors_config);
    let venues = Venues::start(
        &format!(
            "[kafka]\nbrokers = \"{}\"\nchangelog_topic = \"{GROUP}-state\"\nsink = \"alerts\"\n{fetch_options}[http]\nlisten = \"127.0.0.1:0\"\nmax_streams = {}\n",
            broker.brokers(),
            s.clients + 10
        ),
        &[],
    );
    venues.wait_ready(Duration::from_secs(60)).await;
    let url = ingest.url("/webhooks/purple");
    let stream_url = venues.url("/api/venues/events");
    let next = Arc::new(AtomicU64::new(0));

    phase("warm-up: each venue's first event");
    let probe = Arc::new(Mutex::new(Seen::new(0, 0)));
    let probe_task = stream_client(stream_url.clone(), probe.clone(), t0);
    let client = http_client(VENUES as usize);
    let firsts: Vec<_> = (0..VENUES)
        .map(|_| {
            let (client, url, n) = (
                client.clone(),
                url.clone(),
                next.fetch_add(1, Ordering::Relaxed),
            );
            tokio::spawn(async move { send(&client, &url, n).await })
        })
        .collect();
    for f in firsts {
        assert!(
            f.await.expect("send task").is_some(),
            "a first event was refused"
        );
    }
    if !wait_shown(
        std::slice::from_ref(&probe),
        &counts_after(VENUES),
        Duration::from_secs(90),
    )
    .await
    {
        panic!(
            "the stream never showed every venue's first event\nprocessors:\n{}\nvenues:\n{}",
            processors.log(),
            venues.log()
        );
    }

    phase("maximum rate: closed-loop burst");
    let b = burst(&url, &next, &s, &probe).await;
    probe_task.abort();
    let ingest_rate = b.events as f64 / b.ingest.as_secs_f64();
    let max_rate = b.events as f64 / b.end_to_end.as_secs_f64().max(1e-3);
    eprintln!(
        "  {} events: ingest answered them in {:.1} s ({ingest_rate:.0}/s), the stream showed them all {:.1} s after the first request ({max_rate:.0}/s){}",
        b.events,
        b.ingest.as_secs_f64(),
        b.end_to_end.as_secs_f64(),
        if b.complete {
            ""
        } else {
            " (INCOMPLETE: not all shown)"
        }
    );
    let rate = s.rate.unwrap_or(max_rate * s.share);

    phase(&format!("connecting {} stream clients", s.clients));
    let total = (rate * s.seconds) as u64;
    let first = next.load(Ordering::Relaxed);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..s.clients)
        .map(|_| Arc::new(Mutex::new(Seen::new(first, total as usize))))
        .collect();
    let clients: Vec<_> = seen
        .iter()
        .map(|x| stream_client(stream_url.clone(), x.clone(), t0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().all(|x| {
        let x = x.lock().expect("seen");
        x.started || x.ended.is_some()
    }) {
        assert!(
            Instant::now() < deadline,
            "the stream clients did not all start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let venues_before = e2e::scrape(venues.addr).await;
    let connected = e2e::metric_sum(&venues_before, "venues_stream_clients", &[]);

    phase(&format!("open loop at {rate:.0}/s for {} s", s.seconds));
    let pids = [
        ("bench (load, stream clients)", Some(std::process::id())),
        ("ingest", ingest.pid()),
        ("processors", processors.pid()),
        ("venues", venues.pid()),
        ("tansu", broker.pid()),
    ];
    let before = Batches::read(&processors).await;
    let (cpu_before, wall_before) = (cpu(&pids), Instant::now());
    let mut ol = open_loop(&url, &next, rate, s.seconds, t0).await;
    assert_eq!(ol.first, first, "nothing else sends meanwhile");
    let end = first + ol.accepted.len() as u64;
    phase("waiting for the stream clients to show every event");
    let drained = wait_shown(&seen, &counts_after(end), DRAIN).await;
    let wall = wall_before.elapsed().as_secs_f64();
    let cores: Vec<(&str, f64)> = cpu(&pids)
        .iter()
        .zip(&cpu_before)
        .map(|((name, after), (_, before))| (*name, (after - before) / wall))
        .collect();
    let batches = Batches::read(&processors).await.since(&before);
    let venues_after = e2e::scrape(venues.addr).await;
    for c in &clients {
        c.abort();
    }

    // Latency = arrival - 200, per client and over all clients.
    let mut all = Latencies::default();
    let mut per_client_p99 = Vec::new();
    let (mut matched, mut missing, mut early) = (0u64, 0u64, 0u64);
    let (mut changes, mut ended) = (0u64, Vec::new());
    for x in &seen {
        let x = x.lock().expect("seen");
        changes += x.changes;
        if let Some(why) = &x.ended {
            ended.push(why.clone());
        }
        let mut mine = Latencies::default();
        for (sent, arrived) in ol.accepted.iter().zip(&x.arrivals) {
            match (*sent, *arrived) {
                (0, _) => {}
                (_, 0) => missing += 1,
                (s, a) => {
                    matched += 1;
                    if a < s {
                        early += 1;
                    }
                    mine.record(Duration::from_micros(u64::from(a.saturating_sub(s))));
                }
            }
        }
        per_client_p99.push(mine.summary().p99_ms);
        all.merge(mine);
    }
    per_client_p99.sort_by(f64::total_cmp);
    let spread = |q: f64| {
        per_client_p99
            .get(((per_client_p99.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let accepted = ol.accepted.iter().filter(|a| **a != 0).count() as u64;
    let overall = all.summary();
    let ingest_summary = ol.ingest.summary();
    let dropped = e2e::metric_sum(&venues_after, "venues_stream_dropped_total", &[])
        - e2e::metric_sum(&venues_before, "venues_stream_dropped_total", &[]);
    let view_lag = e2e::metric_sum(&venues_after, "venues_view_lag_seconds", &[]);
    let met = overall.p99_ms < 1000.0;
    let mut ended_by: BTreeMap<String, usize> = BTreeMap::new();
    for e in &ended {
        *ended_by.entry(e.clone()).or_default() += 1;
    }
    let b_json = batches.json();

    println!();
    println!(
        "venue view latency: ingest 200 -> SSE client (/api/venues/events); {VENUES} venues x {} zones, {PARTITIONS} partitions, tansu+sqlite on loopback",
        ZONES.len()
    );
    println!(
        "maximum rate (closed loop, {} connections, {} s burst): {max_rate:.0} events/s end to end ({} events shown {:.1} s after the first request; ingest alone answered at {ingest_rate:.0}/s; {} refused for good){}",
        s.connections,
        s.burst_seconds,
        b.events,
        b.end_to_end.as_secs_f64(),
        b.lost,
        if b.complete { "" } else { "; INCOMPLETE" }
    );
    println!(
        "open loop at {rate:.0}/s ({}) for {} s: {accepted} of {} events accepted, {} not sent (over {OUTSTANDING} outstanding), {} refused for good",
        match s.rate {
            Some(_) => "VENUE_LATENCY_RATE".to_owned(),
            None => format!("{:.0} % of the maximum", s.share * 100.0),
        },
        s.seconds,
        ol.accepted.len(),
        ol.not_sent,
        ol.lost
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "samples", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    println!("{}", row("ingest answer (from due time)", &ingest_summary));
    println!(
        "{}",
        row(&format!("200 -> SSE, all {} clients", s.clients), &overall)
    );
    println!(
        "per-client p99: min {:.1}, median {:.1}, max {:.1} ms",
        spread(0.0),
        spread(0.5),
        spread(1.0)
    );
    println!(
        "matched {matched} of {} (accepted events x clients); missing {missing}; arrived before the 200 was read {early} (counted as 0){}",
        accepted * s.clients as u64,
        if drained {
            ""
        } else {
            "; the stream did NOT show every event in time"
        }
    );
    println!(
        "stream: {connected:.0} clients connected, {changes} changes received in all; dropped (venues_stream_dropped_total) {dropped:.0}; ended early {}{}; view lag at the end {view_lag:.3} s",
        ended.len(),
        if ended_by.is_empty() {
            String::new()
        } else {
            format!(" {ended_by:?}")
        }
    );
    println!(
        "processors (batch_max = {BATCH_MAX}, their default, as the README and the local stack; no batch linger): {} batches, {:.1} events per batch; per batch: alerting sink {:.1} ms, ledger append {:.1} ms, changelog append {:.1} ms; late {}, skipped sequences {}, ignored by the sink {}",
        b_json["batches"],
        b_json["mean_events_per_batch"].as_f64().unwrap_or(0.0),
        b_json["mean_sink_ms"].as_f64().unwrap_or(0.0),
        b_json["mean_ledger_append_ms"].as_f64().unwrap_or(0.0),
        b_json["mean_changelog_append_ms"].as_f64().unwrap_or(0.0),
        b_json["late_events"],
        b_json["skipped_sequences"],
        b_json["events_ignored_by_the_alerting_sink"],
    );
    println!(
        "cores used from the open loop's start until every change was shown ({wall:.1} s, {} cores here): {}",
        machine["cores"],
        cores
            .iter()
            .map(|(name, c)| format!("{name} {c:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "consumers' fetch.wait.max.ms (processors and venues): {}",
        s.fetch_wait_ms.map_or_else(
            || "the services' default, 100 (as deployed)".to_owned(),
            |ms| format!("{ms} (VENUE_LATENCY_FETCH_WAIT_MS)")
        )
    );
    println!(
        "p99 200 -> SSE: {:.1} ms (target < 1000 ms: {}; measured, not asserted)",
        overall.p99_ms,
        if met { "met" } else { "MISSED" }
    );
    let result = serde_json::json!({
        "benchmark": "venue_latency",
        "unix_time": pipeline_benches::unix_now(),
        "machine": machine,
        "binaries": binaries,
        "settings": {
            "venues": VENUES, "zones": ZONES.len(), "partitions": PARTITIONS,
            "burst_seconds": s.burst_seconds, "burst_connections": s.connections,
            "share": s.share, "fixed_rate": s.rate, "seconds": s.seconds,
            "clients": s.clients, "outstanding": OUTSTANDING,
            "processors": {"batch_max": BATCH_MAX, "batch_linger": null, "note": "defaults: no [processing] batch setting given"},
            "consumers_fetch_wait_max_ms": s.fetch_wait_ms,
            "ingest_config": ingest_config,
        },
        "max_rate": {
            "events": b.events, "refused_for_good": b.lost,
            "ingest_seconds": b.ingest.as_secs_f64(), "ingest_per_second": ingest_rate,
            "end_to_end_seconds": b.end_to_end.as_secs_f64(), "end_to_end_per_second": max_rate,
            "complete": b.complete,
        },
        "open_loop": {
            "offered_per_second": rate, "events": ol.accepted.len(), "accepted": accepted,
            "not_sent": ol.not_sent, "refused_for_good": ol.lost,
            "ingest_answer_from_due": ingest_summary.json(),
        },
        "latency_200_to_sse": overall.json(),
        "per_client_p99_ms": {"min": spread(0.0), "median": spread(0.5), "max": spread(1.0)},
        "matched": matched, "expected": accepted * s.clients as u64, "missing": missing,
        "arrived_before_200_read": early, "all_shown": drained,
        "stream": {
            "clients_connected": connected, "changes_received": changes,
            "dropped": dropped, "ended_early": ended_by, "view_lag_seconds_at_end": view_lag,
        },
        "processors_during_open_loop": b_json,
        "cores_used_during_open_loop": cores.iter().map(|(n, c)| ((*n).to_owned(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
        "open_loop_wall_seconds": wall,
        "targets": {"p99_under_1s": met},
    });
    let path = pipeline_benches::write_results("venue_latency", &result).expect("results file");
    println!("results: {}", path.display());
    drop(venues);
    drop(processors);
    drop(ingest);
    drop(broker);
}
