//! Replay and backfill: read a time range of the raw topic again and offer
//! its events to chosen sinks through the live path's own code.
//!
//! - **Its own consumer, no group offsets.** Partitions are `assign()`ed at
//!   explicit offsets under the group `<kafka.group_id>-replay`, which never
//!   commits: the live group's position is never read nor moved.
//! - **The range is the Kafka record timestamp**, half-open `[from, to)`.
//!   Ingest sets each record's timestamp to the envelope's `received_at`
//!   (milliseconds), so both name the same instant. Start offsets come from
//!   `offsets_for_times(from)`, end offsets from `offsets_for_times(to)`,
//!   both clamped to the watermarks; every record read is also filtered by
//!   its timestamp. Brokers that answer a timestamp past the last record with
//!   offset 0 (tansu 0.6) are handled: an end answer that is not past the
//!   start is replaced by the high watermark taken at start, and the filter
//!   keeps the result exact. Records written after the replay started are
//!   not read (the end is fixed at start).
//! - **Same pipeline.** Each partition runs a
//!   [`crate::pipeline::PartitionPipeline`] with the
//!   config's parsers, reorder limits and routes, restricted to the chosen
//!   sinks ([`restrict`]). Its reorder clock is the record timestamp
//!   ([`PartitionPipeline::handle_timed`](crate::pipeline::PartitionPipeline::handle_timed)),
//!   so a key's events are released in sequence order, and the gap timeout
//!   and late flags come out as the live path decided them while it kept up,
//!   at any replay speed. At the end of the range everything still buffered
//!   is released in sequence order (no predecessor can still come).
//! - **Which sinks** ([`choose`]): the ones named with `--sink`, whatever
//!   they are; without `--sink`, only sinks Kafka rebuilds (analytics,
//!   postgres, jsonl, log, null). Sinks with external side effects (crm,
//!   alerts) are left out and named, so a backfill never re-sends them by
//!   accident. Routes' `max_event_age` holds against the wall clock, so
//!   even a named CRM gets nothing older than its limit.
//! - **Dedupe.** The live store is neither read nor written (it would drop
//!   every event as seen). A [`BoundedDedupe`] drops the duplicates within
//!   the replay (the last `dedupe_capacity` ids); the sinks are idempotent
//!   by (source, event id), which absorbs the rest: replaying a range twice
//!   leaves every sink unchanged.
//! - **Side topics.** Quarantine writes are skipped (the live path already
//!   quarantined those records; they are counted); an event a sink refuses
//!   for good is dead-lettered as on the live path.
//! - **Dry run** offers the events to counting sinks that write nothing, and
//!   reports events per source and type and per sink.
//! - **Progress**: a bar per partition on a terminal (records, rate, ETA),
//!   else a log line per partition every 5 s; metrics
//!   `processors_replay_records_total{partition}` and
//!   `processors_replay_progress_ratio{partition}` in the registry, logged at
//!   the end.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use prometheus::{GaugeVec, IntCounterVec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::event::{Event, Quarantine};
use crate::kafka::{KafkaConfig, QuietCtx, Reader, reader_config};
use crate::metrics::Metrics;
use crate::pipeline::dedupe::BoundedDedupe;
use crate::pipeline::route::Router;
use crate::pipeline::{PartitionPipeline, RawRecord, Shared, SideTopics};
use crate::sinks::{BoxFuture, Outcome, Sink};

/// What went wrong; each displays as one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad command-line input (times, range, sink names).
    #[error("{0}")]
    Usage(String),
    /// The brokers did not answer in time.
    #[error("cannot reach the brokers at {brokers} within {}: {detail}", humantime::format_duration(*.timeout))]
    Unreachable {
        /// `kafka.brokers`.
        brokers: String,
        /// The bounded wait.
        timeout: Duration,
        /// librdkafka's error.
        detail: String,
    },
    /// The topic is not on the brokers.
    #[error("topic {0} does not exist on the brokers")]
    NoTopic(String),
    /// Nothing was written in the range.
    #[error("no records in {topic} from {from} to {to}")]
    Empty {
        /// The topic.
        topic: String,
        /// The range start, as given.
        from: String,
        /// The range end, as given.
        to: String,
    },
    /// Any other Kafka failure.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A sink could not be set up (database down, missing secret).
    #[error("{0}")]
    Setup(String),
    /// Stopped by a signal before the range was done.
    #[error("stopped before the range was fully replayed")]
    Stopped,
}

impl From<KafkaError> for ReplayError {
    fn from(e: KafkaError) -> Self {
        ReplayError::Kafka(e.to_string())
    }
}

/// Parses an RFC 3339 instant (`2026-11-22T18:00:00Z`, fractions and
/// numeric offsets allowed), or `now`, into Unix milliseconds.
pub fn parse_time(flag: &str, text: &str) -> Result<i64, ReplayError> {
    let bad = || {
        ReplayError::Usage(format!(
            "{flag}: {text:?} is not an RFC 3339 time (like 2026-11-22T18:00:00Z) or now"
        ))
    };
    let t = text.trim();
    if t == "now" {
        return Ok(now_ms());
    }
    // humantime reads UTC ("Z") only: move a numeric offset into the value.
    let (base, offset_secs) = split_offset(t).ok_or_else(bad)?;
    let at = humantime::parse_rfc3339(&base).map_err(|_| bad())?;
    let ms = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).map_err(|_| bad())?,
        Err(e) => -i64::try_from(e.duration().as_millis()).map_err(|_| bad())?,
    };
    Ok(ms - offset_secs * 1000)
}

/// `2026-11-22T19:00:00+01:00` -> (`2026-11-22T19:00:00Z`, 3600).
fn split_offset(t: &str) -> Option<(String, i64)> {
    if let Some(b) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return Some((format!("{b}Z"), 0));
    }
    if t.len() < 6 {
        return None;
    }
    let (b, off) = t.split_at(t.len() - 6);
    let sign = match off.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = off[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 || !b.contains('T') {
        return None;
    }
    Some((format!("{b}Z"), sign * (h * 3600 + m * 60)))
}

/// Formats Unix milliseconds as RFC 3339 (UTC).
pub fn format_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// The config with only `sinks` (all when empty) and the routes to them
/// (a route keeps its chosen sinks; one left with none is dropped). An
/// unknown name is an error naming it and the sinks there are.
pub fn restrict(config: &Config, sinks: &[String]) -> Result<Config, ReplayError> {
    let mut out = config.clone();
    if sinks.is_empty() {
        return Ok(out);
    }
    for s in sinks {
        if !config.sinks.contains_key(s) {
            let have: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
            return Err(ReplayError::Usage(format!(
                "--sink {s}: no sink named {s:?} in the config (it has: {})",
                have.join(", ")
            )));
        }
    }
    out.sinks.retain(|name, _| sinks.contains(name));
    for r in &mut out.routes {
        r.sinks.retain(|s| sinks.contains(s));
    }
    out.routes.retain(|r| !r.sinks.is_empty());
    Ok(out)
}

/// The config a replay runs with, and the sinks it left out.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The config restricted to the sinks replayed into ([`restrict`]).
    pub config: Config,
    /// Sinks left out because they have effects outside the pipeline.
    pub left_out: Vec<LeftOut>,
}

/// A sink a replay left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// Its name in the config.
    pub name: String,
    /// Its kind (`crm`, `alerts`).
    pub kind: &'static str,
    /// What it does outside the pipeline that a replay would repeat.
    pub effect: &'static str,
}

impl Chosen {
    /// The line telling the user which sinks were left out and why; `None`
    /// when none was.
    pub fn notice(&self) -> Option<String> {
        if self.left_out.is_empty() {
            return None;
        }
        Some(format!(
            "replay: left out {}: they have effects outside the pipeline ({}) that a replay \
             would repeat; name a sink with --sink to replay into it",
            list(&self.left_out),
            effects(&self.left_out),
        ))
    }
}

fn list(sinks: &[LeftOut]) -> String {
    sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

fn effects(sinks: &[LeftOut]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for s in sinks {
        if !seen.contains(&s.effect) {
            seen.push(s.effect);
        }
    }
    seen.join(", ")
}

/// The sinks a replay writes to. Named with `--sink` (`sinks` not empty):
/// exactly those, whatever they are ([`restrict`]). Otherwise every sink
/// that is safe to rebuild from Kafka (analytics, postgres, jsonl, log,
/// null); sinks with external side effects (crm, alerts) are left out and
/// named in [`Chosen::left_out`]. A config whose every sink has side
/// effects is an error: the user must name one.
pub fn choose(config: &Config, sinks: &[String]) -> Result<Chosen, ReplayError> {
    if !sinks.is_empty() {
        return Ok(Chosen {
            config: restrict(config, sinks)?,
            left_out: Vec::new(),
        });
    }
    let mut safe = Vec::new();
    let mut left_out = Vec::new();
    for (name, sink) in &config.sinks {
        match sink.side_effect() {
            Some(effect) => left_out.push(LeftOut {
                name: name.clone(),
                kind: sink.kind(),
                effect,
            }),
            None => safe.push(name.clone()),
        }
    }
    if left_out.is_empty() {
        return Ok(Chosen {
            config: config.clone(),
            left_out,
        });
    }
    if safe.is_empty() {
        return Err(ReplayError::Usage(format!(
            "every sink of the config has effects outside the pipeline ({}: {}); \
             name the ones to replay into with --sink",
            list(&left_out),
            effects(&left_out),
        )));
    }
    Ok(Chosen {
        config: restrict(config, &safe)?,
        left_out,
    })
}

/// The settings of one replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Range start (inclusive), Unix ms.
    pub from_ms: i64,
    /// Range end (exclusive), Unix ms.
    pub to_ms: i64,
    /// The range as the user wrote it (messages).
    pub from_text: String,
    /// The range end as the user wrote it (messages).
    pub to_text: String,
    /// Only these sources (all when empty).
    pub sources: Vec<String>,
    /// Count, write nothing.
    pub dry_run: bool,
    /// Bounded wait for the brokers' answers.
    pub timeout: Duration,
    /// Most event ids remembered to drop duplicates within the replay.
    pub dedupe_capacity: usize,
    /// Bars on a terminal (`None`: decide from stderr).
    pub bars: Option<bool>,
}

impl ReplayOptions {
    /// Checks the range.
    pub fn check(&self) -> Result<(), ReplayError> {
        if self.from_ms >= self.to_ms {
            return Err(ReplayError::Usage(format!(
                "--from {} is not before --to {}: the range is empty or reversed",
                self.from_text, self.to_text
            )));
        }
        Ok(())
    }
}

/// One partition's part of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// First offset not to read.
    pub end: i64,
}

/// Where a partition's range starts and ends, from the brokers' answers to
/// `offsets_for_times` (`None`: no record at or after that time) and the
/// watermarks. Robust to brokers that answer 0 for a time past the last
/// record: the record filter keeps the result exact, these offsets only
/// bound the reading.
pub fn span(partition: i32, from: Option<i64>, to: Option<i64>, low: i64, high: i64) -> Span {
    let start = from.map_or(high, |o| o.clamp(low, high));
    let end = match to {
        // Past the start: a real answer.
        Some(o) if o > start && o <= high => o,
        // At a start past the beginning: no record of the range here (the
        // faulty answer is always 0, below such a start).
        Some(o) if o == start && start > low => o,
        // None, 0 from a faulty broker, or ambiguous: read to the end.
        _ => high,
    };
    Span {
        partition,
        start,
        end: end.max(start),
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Records read whose timestamp was in the range (and source chosen).
    pub in_range: u64,
    /// Records read but outside the range or of another source.
    pub skipped: u64,
    /// Partitions read.
    pub partitions: usize,
    /// Events accepted by each sink (dry run: would be offered).
    pub per_sink: BTreeMap<String, u64>,
    /// Dry run: events per (source, type) that would be replayed.
    pub per_type: BTreeMap<(String, String), u64>,
    /// Events dead-lettered by each sink.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Duplicates dropped within the replay.
    pub duplicates: u64,
    /// Records that did not parse (quarantined on the live path).
    pub quarantined: u64,
    /// Events no route to the chosen sinks matched.
    pub unrouted: u64,
    /// Events a route skipped as older than its `max_event_age`, by route.
    pub too_old: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Replay's own metrics, declared in the process's catalogue.
#[derive(Clone)]
struct ReplayMetrics {
    /// Records in the range handed to the pipeline, by partition.
    records: IntCounterVec,
    /// Offsets read over offsets to read, by partition (0..1).
    progress: GaugeVec,
}

impl ReplayMetrics {
    fn new(m: &Metrics) -> Self {
        ReplayMetrics {
            records: m.replay_records.clone(),
            progress: m.replay_progress.clone(),
        }
    }
}

/// Replay's side topics: quarantine is skipped (counted by the pipeline),
/// dead letters go to the real topic (none in a dry run: counting sinks
/// never refuse).
struct ReplaySide {
    dlq: Option<Arc<dyn SideTopics>>,
}

impl SideTopics for ReplaySide {
    fn quarantine<'a>(
        &'a self,
        _record: &'a RawRecord,
        _source: &'a str,
        _why: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(
        &'a self,
        record: &'a RawRecord,
        event: &'a Event,
        sink: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        match &self.dlq {
            Some(d) => d.dead_letter(record, event, sink, reason),
            None => Box::pin(async { Ok(()) }),
        }
    }
}

/// The dry run's stand-in for a sink: accepts and counts.
pub struct CountingSink {
    name: String,
    index: usize,
    router: Arc<Router>,
    per_type: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

impl Sink for CountingSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            if let Ok(mut t) = self.per_type.lock() {
                for e in batch {
                    // Counted once per event: by the first sink it goes to.
                    // Routed again now: an event only grows older, so the
                    // first sink now is one it was offered to.
                    let now = crate::pipeline::route::now_micros();
                    if self.router.route(e, now).sinks.first() == Some(&self.index) {
                        *t.entry((e.source.clone(), e.event_type.clone()))
                            .or_default() += 1;
                    }
                }
            }
            vec![Outcome::Accepted; batch.len()]
        })
    }
}

/// Progress display: bars on a terminal, else log lines.
struct Progress {
    bars: Option<(MultiProgress, HashMap<i32, ProgressBar>)>,
    spans: HashMap<i32, Span>,
    started: Instant,
    last_log: Instant,
    read: HashMap<i32, i64>,
    metrics: ReplayMetrics,
}

impl Progress {
    fn new(spans: &[Span], bars: bool, metrics: ReplayMetrics) -> Self {
        let bars = bars.then(|| {
            let multi = MultiProgress::new();
            let style = ProgressStyle::with_template(
                "partition {prefix:>3} [{bar:30}] {pos}/{len} records {rate} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", s.per_sec());
                },
            )
            .progress_chars("=> ");
            let map = spans
                .iter()
                .map(|s| {
                    let b = multi.add(ProgressBar::new((s.end - s.start).max(0) as u64));
                    b.set_style(style.clone());
                    b.set_prefix(s.partition.to_string());
                    (s.partition, b)
                })
                .collect();
            (multi, map)
        });
        Progress {
            bars,
            spans: spans.iter().map(|s| (s.partition, *s)).collect(),
            started: Instant::now(),
            last_log: Instant::now(),
            read: HashMap::new(),
            metrics,
        }
    }

    /// Offset `offset` of `partition` was read.
    fn read(&mut self, partition: i32, offset: i64) {
        let Some(s) = self.spans.get(&partition) else {
            return;
        };
        let done = (offset + 1 - s.start).clamp(0, s.end - s.start);
        self.read.insert(partition, done);
        let total = (s.end - s.start).max(1);
        self.metrics
            .progress
            .with_label_values(&[&partition.to_string()])
            .set(done as f64 / total as f64);
        if let Some((_, bars)) = &self.bars {
            if let Some(b) = bars.get(&partition) {
                b.set_position(done as u64);
            }
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            self.log();
        }
    }

    fn finish(&mut self, partition: i32) {
        if let Some(s) = self.spans.get(&partition).copied() {
            self.read.insert(partition, s.end - s.start);
            self.metrics
                .progress
                .with_label_values(&[&partition.to_string()])
                .set(1.0);
            if let Some((_, bars)) = &self.bars
                && let Some(b) = bars.get(&partition)
            {
                b.set_position((s.end - s.start) as u64);
                b.finish();
            }
        }
    }

    fn log(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let mut parts: Vec<&Span> = self.spans.values().collect();
        parts.sort_by_key(|s| s.partition);
        for s in parts {
            let total = s.end - s.start;
            let done = self.read.get(&s.partition).copied().unwrap_or(0);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 {
                format!("{:.0}s", (total - done) as f64 / rate)
            } else {
                "unknown".into()
            };
            tracing::info!(
                partition = s.partition,
                read = done,
                of = total,
                rate = format!("{rate:.0}/s"),
                eta,
                "replay progress"
            );
        }
    }

    fn done(self) {
        if let Some((multi, _)) = self.bars {
            let _ = multi.clear();
        } else {
            self.log();
        }
    }
}

/// Checks, within `timeout`, that the brokers answer and know `topic`:
/// run it before setting up sinks and producers, so a wrong address fails
/// fast with one line.
pub async fn probe(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<(), ReplayError> {
    let c: BaseConsumer<QuietCtx> =
        reader_config(kafka, &format!("{}-replay", kafka.group_id), "probe")?
            .create_with_context(QuietCtx)?;
    let topic = topic.to_owned();
    let brokers = kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let md = c
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| ReplayError::Unreachable {
                brokers,
                timeout,
                detail: e.to_string(),
            })?;
        md.topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .then_some(())
            .ok_or(ReplayError::NoTopic(topic))
    })
    .await
    .map_err(|e| ReplayError::Kafka(format!("probe task: {e}")))?
}

/// Finds where the range lies in each partition, with bounded waits.
async fn spans(
    kafka: &KafkaConfig,
    opts: &ReplayOptions,
) -> Result<(Vec<Span>, Reader), ReplayError> {
    let group = format!("{}-replay", kafka.group_id);
    let consumer: Reader = reader_config(kafka, &group, "replay")?.create_with_context(QuietCtx)?;
    let probe: BaseConsumer<QuietCtx> =
        reader_config(kafka, &group, "replay")?.create_with_context(QuietCtx)?;
    let topic = kafka.topic.clone();
    let (from, to, timeout) = (opts.from_ms, opts.to_ms, opts.timeout);
    let brokers = kafka.brokers.clone();
    let spans = tokio::task::spawn_blocking(move || -> Result<Vec<Span>, ReplayError> {
        let md =
            probe
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| ReplayError::Unreachable {
                    brokers: brokers.clone(),
                    timeout,
                    detail: e.to_string(),
                })?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| ReplayError::NoTopic(topic.clone()))?;
        let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        let lookup = |at: i64| -> Result<HashMap<i32, Option<i64>>, ReplayError> {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(at))?;
            }
            let answer = probe.offsets_for_times(tpl, timeout)?;
            Ok(answer
                .elements()
                .iter()
                .map(|e| {
                    let o = match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o),
                        _ => None,
                    };
                    (e.partition(), o)
                })
                .collect())
        };
        let starts = lookup(from)?;
        let ends = lookup(to)?;
        let mut out = Vec::new();
        for p in &partitions {
            let (low, high) = probe.fetch_watermarks(&topic, *p, timeout)?;
            out.push(span(
                *p,
                starts.get(p).copied().flatten(),
                ends.get(p).copied().flatten(),
                low,
                high,
            ));
        }
        Ok(out)
    })
    .await
    .map_err(|e| ReplayError::Kafka(format!("lookup task: {e}")))??;
    Ok((spans, consumer))
}

/// The record's source: the `source` header ingest writes, else the
/// envelope's.
fn source_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            let h = h.get(i);
            if h.key == "source" {
                return h.value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    schemas::Envelope::decode(m.payload()?)
        .ok()
        .map(|e| e.source)
}

/// Replays the range into `sinks` (built from [`restrict`]ed config; in a
/// dry run pass none: counting sinks stand in for the config's). `dlq`
/// receives what a sink refuses for good. Stops early when `stop` is
/// raised.
pub async fn replay(
    config: &Config,
    opts: &ReplayOptions,
    sinks: Vec<Arc<dyn Sink>>,
    dlq: Option<Arc<dyn SideTopics>>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> Result<Summary, ReplayError> {
    opts.check()?;
    let started = Instant::now();
    let replay_metrics = ReplayMetrics::new(&metrics);
    let per_type = Arc::new(Mutex::new(BTreeMap::new()));
    let sinks: Vec<Arc<dyn Sink>> = if opts.dry_run {
        let names: Vec<String> = config.sinks.keys().cloned().collect();
        let router = Arc::new(Router::new(&config.routes, &names).map_err(ReplayError::Usage)?);
        names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                Arc::new(CountingSink {
                    name: name.clone(),
                    index,
                    router: router.clone(),
                    per_type: per_type.clone(),
                }) as Arc<dyn Sink>
            })
            .collect()
    } else {
        sinks
    };
    let side = Arc::new(ReplaySide {
        dlq: if opts.dry_run { None } else { dlq },
    });
    let dedupe = Arc::new(BoundedDedupe::new(opts.dedupe_capacity));
    let shared = Arc::new(
        Shared::new(
            &config.sources,
            &config.routes,
            &config.processing,
            sinks.clone(),
            dedupe,
            side,
            metrics.clone(),
        )
        .map_err(ReplayError::Usage)?
        .with_fields(&config.sinks),
    );

    let (spans, consumer) = spans(&config.kafka, opts).await?;
    let topic = config.kafka.topic.clone();
    let todo: Vec<Span> = spans.iter().copied().filter(|s| s.end > s.start).collect();
    tracing::info!(
        topic = %topic,
        from = %opts.from_text,
        to = %opts.to_text,
        spans = ?todo.iter().map(|s| (s.partition, s.start, s.end)).collect::<Vec<_>>(),
        dry_run = opts.dry_run,
        "replay starts"
    );
    let mut summary = Summary {
        partitions: todo.len(),
        ..Summary::default()
    };
    if todo.is_empty() {
        return Err(empty(&topic, opts));
    }
    let mut tpl = TopicPartitionList::new();
    for s in &todo {
        tpl.add_partition_offset(&topic, s.partition, Offset::Offset(s.start))?;
    }
    consumer.assign(&tpl)?;

    let bars = opts.bars.unwrap_or_else(|| std::io::stderr().is_terminal());
    let mut progress = Progress::new(&todo, bars, replay_metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let batch_max = config.processing.batch_max;
    let mut senders: HashMap<i32, mpsc::Sender<(RawRecord, std::time::Instant)>> = HashMap::new();
    let mut workers = Vec::new();
    for s in &todo {
        let (tx, mut rx) = mpsc::channel(config.processing.channel_capacity);
        senders.insert(s.partition, tx);
        let shared = shared.clone();
        let stop_rx = stop_rx.clone();
        let partition = s.partition;
        workers.push(tokio::spawn(async move {
            let mut pipeline = PartitionPipeline::new(partition, shared, stop_rx);
            let mut buf = Vec::with_capacity(batch_max);
            loop {
                if rx.recv_many(&mut buf, batch_max).await == 0 {
                    break;
                }
                pipeline.handle_timed(std::mem::take(&mut buf)).await?;
            }
            pipeline.finish().await
        }));
    }
    let ends: HashMap<i32, Span> = todo.iter().map(|s| (s.partition, *s)).collect();
    // The reorder clock: per partition, the highest record time so far
    // since its first record, from one base instant (never going back).
    let base = std::time::Instant::now();
    let mut clock: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut stopped = false;
    while !senders.is_empty() {
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = crate::pipeline::stopped(&mut stop) => { stopped = true; break; }
        };
        let m = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                // At the high watermark, which is at or past the end.
                if senders.remove(&p).is_some() {
                    progress.finish(p);
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay consumer error");
                continue;
            }
        };
        let p = m.partition();
        let Some(span) = ends.get(&p) else { continue };
        if !senders.contains_key(&p) {
            continue;
        }
        let offset = m.offset();
        if offset >= span.end {
            senders.remove(&p);
            progress.finish(p);
            continue;
        }
        progress.read(p, offset);
        let ts = m.timestamp().to_millis();
        let wanted = ts.is_some_and(|t| t >= opts.from_ms && t < opts.to_ms)
            && (opts.sources.is_empty()
                || source_of(&m).is_some_and(|s| opts.sources.contains(&s)));
        if wanted {
            summary.in_range += 1;
            replay_metrics
                .records
                .with_label_values(&[&p.to_string()])
                .inc();
            let ts = ts.unwrap_or(opts.from_ms);
            let (first, last) = clock.entry(p).or_insert((ts, ts));
            *last = (*last).max(ts);
            let since = Duration::from_millis((*last - *first).max(0) as u64);
            let at = base.checked_add(since).unwrap_or(base);
            let record = RawRecord {
                partition: p,
                offset,
                key: m.key().map(<[u8]>::to_vec),
                payload: Arc::new(m.payload().unwrap_or_default().to_vec()),
                charge: None,
            };
            drop(m);
            if let Some(tx) = senders.get(&p)
                && tx.send((record, at)).await.is_err()
            {
                // The worker ended (stopped); its error is reported below.
                senders.remove(&p);
            }
        } else {
            summary.skipped += 1;
        }
        if offset + 1 >= span.end && senders.remove(&p).is_some() {
            progress.finish(p);
        }
    }
    drop(senders);
    if stopped {
        let _ = stop_tx.send(true);
    }
    let mut failed = stopped;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failed = true,
            Err(e) => {
                tracing::error!(error = %e, "replay worker failed");
                failed = true;
            }
        }
    }
    progress.done();
    if failed {
        return Err(ReplayError::Stopped);
    }
    if summary.in_range == 0 {
        return Err(empty(&topic, opts));
    }
    let sum = |c: &IntCounterVec, label: &str| c.with_label_values(&[label]).get();
    for s in &sinks {
        summary
            .per_sink
            .insert(s.name().to_owned(), sum(&metrics.routed, s.name()));
        let d = sum(&metrics.dead_lettered, s.name());
        if d > 0 {
            summary.dead_lettered.insert(s.name().to_owned(), d);
        }
    }
    for fam in metrics.registry.gather() {
        let total: u64 = fam
            .get_metric()
            .iter()
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        match fam.name() {
            "processors_duplicates_dropped_total" => summary.duplicates = total,
            "processors_quarantined_total" => summary.quarantined = total,
            "processors_unrouted_total" => summary.unrouted = total,
            _ => {}
        }
    }
    for fam in metrics.registry.gather() {
        if fam.name() != "processors_route_skipped_total" {
            continue;
        }
        for m in fam.get_metric() {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
            };
            if label("reason").as_deref() == Some("too_old")
                && let Some(route) = label("route")
            {
                *summary.too_old.entry(route).or_default() += m.get_counter().get_value() as u64;
            }
        }
    }
    if let Ok(t) = per_type.lock() {
        summary.per_type = t.clone();
    }
    summary.elapsed = started.elapsed();
    tracing::info!(
        records = summary.in_range,
        rate = format!(
            "{:.0}/s",
            summary.in_range as f64 / summary.elapsed.as_secs_f64().max(0.001)
        ),
        metrics = %metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("processors_replay_"))
            .collect::<Vec<_>>()
            .join("; "),
        "replay done"
    );
    Ok(summary)
}

fn empty(topic: &str, opts: &ReplayOptions) -> ReplayError {
    ReplayError::Empty {
        topic: topic.to_owned(),
        from: opts.from_text.clone(),
        to: opts.to_text.clone(),
    }
}

/// The summary as printed by `processors replay`.
pub fn report(summary: &Summary, opts: &ReplayOptions, topic: &str) -> String {
    let secs = summary.elapsed.as_secs_f64().max(0.001);
    let mut out = format!(
        "{} {topic} from {} to {}: {} records in range on {} partitions in {:.1}s ({:.0}/s); {} duplicates dropped, {} unparsable (skipped), {} unrouted\n",
        if opts.dry_run {
            "dry run, nothing written:"
        } else {
            "replayed"
        },
        opts.from_text,
        opts.to_text,
        summary.in_range,
        summary.partitions,
        secs,
        summary.in_range as f64 / secs,
        summary.duplicates,
        summary.quarantined,
        summary.unrouted,
    );
    if opts.dry_run {
        out.push_str("would replay, by source and type:\n");
        for ((source, ty), n) in &summary.per_type {
            out.push_str(&format!("  {source:<12} {ty:<24} {n:>8}\n"));
        }
        out.push_str("would offer, by sink:\n");
    } else {
        out.push_str("accepted, by sink:\n");
    }
    for (sink, n) in &summary.per_sink {
        let dl = summary
            .dead_lettered
            .get(sink)
            .map(|d| format!(" ({d} dead-lettered)"))
            .unwrap_or_default();
        out.push_str(&format!("  {sink:<12} {n:>8}{dl}\n"));
    }
    if !summary.too_old.is_empty() {
        out.push_str("skipped as too old, by route:\n");
        for (route, n) in &summary.too_old {
            out.push_str(&format!("  {route:<12} {n:>8}\n"));
        }
    }
    out
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_zones_and_refuse_garbage() {
        assert_eq!(parse_time("--from", "1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_time("--from", "2026-11-22T19:00:00+01:00").unwrap(),
            parse_time("--from", "2026-11-22T18:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("--from", "2026-11-22T18:00:00.250Z").unwrap() % 1000,
            250
        );
        assert!(parse_time("--to", "now").unwrap() > 1_700_000_000_000);
        for bad in ["yesterday", "2026-11-22", "2026-13-01T00:00:00Z", ""] {
            let e = parse_time("--from", bad).unwrap_err().to_string();
            assert!(e.starts_with("--from: ") && e.contains("RFC 3339"), "{e}");
        }
        assert_eq!(format_ms(1000), "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn spans_survive_a_broker_answering_zero_past_the_end() {
        // Real answers.
        assert_eq!(span(0, Some(10), Some(20), 0, 30).start, 10);
        assert_eq!(span(0, Some(10), Some(20), 0, 30).end, 20);
        // `to` past the last record: none, or 0 (tansu): read to the end.
        assert_eq!(span(0, Some(10), None, 0, 30).end, 30);
        assert_eq!(span(0, Some(10), Some(0), 0, 30).end, 30);
        // Both past the end on tansu: read all, the filter decides.
        let s = span(0, Some(0), Some(0), 0, 30);
        assert_eq!((s.start, s.end), (0, 30));
        // `from` past the end on a correct broker: nothing to read.
        let s = span(0, None, None, 0, 30);
        assert_eq!(s.start, s.end);
        // Nothing in range in the middle of a partition.
        let s = span(0, Some(12), Some(12), 0, 30);
        assert_eq!(s.start, s.end);
        // Answers beyond the watermarks are clamped.
        let s = span(0, Some(40), Some(50), 5, 30);
        assert_eq!((s.start, s.end), (30, 30));
    }

    #[test]
    fn restrict_keeps_only_the_chosen_sinks_and_their_routes() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b:1"
            [dedupe]
            path = "/tmp/x.redb"
            [sinks.a]
            kind = "log"
            [sinks.b]
            kind = "null"
            [[routes]]
            name = "both"
            sinks = ["a", "b"]
            [[routes]]
            name = "only-b"
            sinks = ["b"]
            "#,
        )
        .unwrap();
        let r = restrict(&c, &["a".into()]).unwrap();
        assert_eq!(r.sinks.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].sinks, ["a"]);
        let e = restrict(&c, &["c".into()]).unwrap_err().to_string();
        assert_eq!(
            e,
            "--sink c: no sink named \"c\" in the config (it has: a, b)"
        );
        assert_eq!(restrict(&c, &[]).unwrap().sinks.len(), 2);
    }

    #[test]
    fn without_sink_a_replay_leaves_out_the_sinks_with_side_effects() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b:1"
            [dedupe]
            path = "/tmp/x.redb"
            [sinks.audit]
            kind = "jsonl"
            path = "/tmp/audit.jsonl"
            [sinks.db]
            kind = "analytics"
            path = "/tmp/a.db"
            [sinks.crm]
            kind = "crm"
            url = "http://127.0.0.1:1/crm"
            template_json = '{"id": "{{event_id}}"}'
            [sinks.alerts]
            kind = "alerts"
            path = "/tmp/al.sqlite"
            rules = [{ kind = "vip_arrival" }]
            receivers = [{ kind = "log" }]
            [[routes]]
            name = "all"
            sinks = ["audit", "db", "alerts"]
            [[routes]]
            name = "welcome"
            types = ["guest_connects"]
            sinks = ["crm"]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let chosen = choose(&c, &[]).unwrap();
        assert_eq!(
            chosen.config.sinks.keys().collect::<Vec<_>>(),
            ["audit", "db"]
        );
        assert_eq!(chosen.config.routes.len(), 1);
        assert_eq!(chosen.config.routes[0].sinks, ["audit", "db"]);
        let names: Vec<&str> = chosen.left_out.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["alerts", "crm"]);
        let notice = chosen.notice().unwrap();
        assert!(
            notice.starts_with(
                "replay: left out alerts (alerts), crm (crm): they have effects outside the pipeline ("
            ) && notice.contains("--sink"),
            "{notice}"
        );
        // Named explicitly, a side-effect sink is replayed into, and nothing
        // is said to be left out.
        let named = choose(&c, &["crm".into()]).unwrap();
        assert_eq!(named.config.sinks.keys().collect::<Vec<_>>(), ["crm"]);
        assert!(named.left_out.is_empty() && named.notice().is_none());
        // Only side-effect sinks: the user has to name them.
        let only = restrict(&c, &["crm".into(), "alerts".into()]).unwrap();
        let e = choose(&only, &[]).unwrap_err();
        assert!(matches!(e, ReplayError::Usage(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("every sink of the config has effects outside the pipeline (alerts (alerts), crm (crm)"),
            "{e}"
        );
        // Nothing to leave out: the config as it is.
        let safe = restrict(&c, &["audit".into()]).unwrap();
        let all = choose(&safe, &[]).unwrap();
        assert!(all.left_out.is_empty() && all.notice().is_none());
        assert_eq!(all.config.sinks.len(), 1);
    }
}
