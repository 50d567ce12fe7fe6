//! Dead letters: `processors dlq list` and `processors dlq redrive`.
//!
//! The dead-letter topic (`kafka.dlq_topic`) holds, per letter, the original
//! raw record (key and Avro envelope, byte for byte) with the headers the
//! pipeline writes: `sink`, `reason`, `source`, `event-id`,
//! `original-partition`, `original-offset`; the record timestamp is when it
//! was dead-lettered.
//!
//! The topic is read as a queue. Its head, per partition, is the committed
//! offset of the consumer group `<kafka.group_id>-dlq-redrive` (the log
//! start when it has none); the pending letters are those from the head to
//! the end. `list` reads them without committing and groups them by sink
//! and reason, with their count and ages.
//!
//! `redrive` reads the pending letters as of its start, in chunks of
//! `processing.batch_max` per partition. A letter that matches the filters
//! (`--sink`, `--older-than`) is decoded with the config's parsers and
//! offered to the sink it names, through that sink's code:
//!
//! - accepted: done;
//! - refused for good, or still asking to retry after `--retry-for`: the
//!   letter stays pending: it is appended again at the end of the topic with
//!   the new `reason` and `redrive-attempts` raised by one, keeping its
//!   original timestamp (its age);
//! - not matching the filters, or naming a sink the config does not have, or
//!   no longer decodable: appended again unchanged.
//!
//! Only once every letter of a chunk is accepted or durably appended again
//! (`acks=all`) does the group's offset move past the chunk. Nothing is
//! removed before its sink accepted it; a crash in between re-offers letters
//! the sink already took, which the sinks' idempotency by (source, event id)
//! absorbs (the CRM sink sends the same `Idempotency-Key`). The one cost of
//! a filtered re-drive is that the letters it leaves move to the end of the
//! topic, ages kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::Config;
use crate::event::{self, Event};
use crate::kafka::{QuietCtx, Reader, producer_config, reader_config};
use crate::metrics::Metrics;
use crate::ops::replay::{ReplayError, now_ms};
use crate::sinks::{Outcome, Sink};

/// Letters read at a time by `list`.
const LIST_CHUNK: usize = 1000;

/// The consumer group whose committed offsets are the dead-letter queue's
/// head.
pub fn redrive_group(config: &Config) -> String {
    format!("{}-dlq-redrive", config.kafka.group_id)
}

/// One dead letter as read.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When it was dead-lettered (Unix ms).
    pub timestamp_ms: Option<i64>,
    /// The original record key.
    pub key: Option<Vec<u8>>,
    /// The original envelope.
    pub payload: Vec<u8>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn read(m: &rdkafka::message::BorrowedMessage<'_>) -> Letter {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Letter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// How long ago it was dead-lettered.
    pub fn age(&self, now_ms: i64) -> Duration {
        Duration::from_millis(self.timestamp_ms.map_or(0, |t| (now_ms - t).max(0)) as u64)
    }
}

/// The pending range of each partition.
#[derive(Debug, Clone, Copy)]
struct Pending {
    partition: i32,
    head: i64,
    low: i64,
    end: i64,
}

/// Finds the pending letters: per partition from the group's committed
/// offset (or the log start) to the high watermark now. `None`: the topic
/// does not exist (nothing was ever dead-lettered).
async fn pending(
    config: &Config,
    timeout: Duration,
) -> Result<Option<(Reader, Vec<Pending>)>, ReplayError> {
    let kafka = &config.kafka;
    let consumer: Reader =
        reader_config(kafka, &redrive_group(config), "dlq")?.create_with_context(QuietCtx)?;
    let consumer = Arc::new(consumer);
    let c = consumer.clone();
    let topic = kafka.dlq_topic.clone();
    let brokers = kafka.brokers.clone();
    let found =
        tokio::task::spawn_blocking(move || -> Result<Option<Vec<Pending>>, ReplayError> {
            let md =
                c.fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| ReplayError::Unreachable {
                        brokers,
                        timeout,
                        detail: e.to_string(),
                    })?;
            let Some(t) = md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            else {
                return Ok(None);
            };
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
            let committed = c.committed_offsets(tpl, timeout)?;
            let mut out = Vec::new();
            for e in committed.elements() {
                let (low, high) = c.fetch_watermarks(&topic, e.partition(), timeout)?;
                let head = match e.offset() {
                    Offset::Offset(o) => o.clamp(low, high),
                    _ => low,
                };
                out.push(Pending {
                    partition: e.partition(),
                    head,
                    low,
                    end: high,
                });
            }
            Ok(Some(out))
        })
        .await
        .map_err(|e| ReplayError::Kafka(format!("lookup task: {e}")))??;
    let Some(found) = found else {
        return Ok(None);
    };
    let consumer = Arc::try_unwrap(consumer)
        .map_err(|_| ReplayError::Kafka("dead-letter consumer still shared".into()))?;
    Ok(Some((consumer, found)))
}

/// Reads every pending letter of `parts` in order, handing each partition's
/// letters to `chunk` in runs of at most `batch` (and at the partition's
/// end). Stops between chunks when `stop` is raised.
async fn read_pending<F, Fut>(
    consumer: &Reader,
    topic: &str,
    parts: &[Pending],
    batch: usize,
    stop: &mut watch::Receiver<bool>,
    mut chunk: F,
) -> Result<bool, ReplayError>
where
    F: FnMut(i32, Vec<Letter>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ReplayError>>,
{
    let todo: Vec<Pending> = parts.iter().copied().filter(|p| p.end > p.head).collect();
    if todo.is_empty() {
        return Ok(true);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &todo {
        tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.head))?;
    }
    consumer.assign(&tpl)?;
    let ends: HashMap<i32, i64> = todo.iter().map(|p| (p.partition, p.end)).collect();
    let mut open: HashMap<i32, Vec<Letter>> =
        todo.iter().map(|p| (p.partition, Vec::new())).collect();
    while !open.is_empty() {
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = crate::pipeline::stopped(stop) => return Ok(false),
        };
        let (p, done) = match msg {
            Ok(m) => {
                let p = m.partition();
                let Some(end) = ends.get(&p).copied() else {
                    continue;
                };
                let Some(buf) = open.get_mut(&p) else {
                    continue;
                };
                if m.offset() < end {
                    buf.push(Letter::read(&m));
                }
                (p, m.offset() + 1 >= end)
            }
            Err(KafkaError::PartitionEOF(p)) => (p, true),
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter consumer error");
                continue;
            }
        };
        let full = open.get(&p).is_some_and(|b| b.len() >= batch);
        if done || full {
            let letters = if done {
                open.remove(&p).unwrap_or_default()
            } else {
                open.get_mut(&p).map(std::mem::take).unwrap_or_default()
            };
            if !letters.is_empty() {
                chunk(p, letters).await?;
            }
        }
    }
    Ok(true)
}

/// Pending letters grouped by sink and reason.
#[derive(Debug, Default, Clone)]
pub struct ListReport {
    /// The topic read.
    pub topic: String,
    /// (sink, reason) -> (count, oldest age, newest age).
    pub groups: BTreeMap<(String, String), (u64, Duration, Duration)>,
    /// Pending letters in all.
    pub pending: u64,
    /// Letters before the head (re-driven or re-queued earlier).
    pub behind: u64,
    /// False when the topic does not exist.
    pub exists: bool,
}

/// Reads the pending letters without moving anything.
pub async fn list(config: &Config, timeout: Duration) -> Result<ListReport, ReplayError> {
    let topic = config.kafka.dlq_topic.clone();
    let mut report = ListReport {
        topic: topic.clone(),
        ..ListReport::default()
    };
    let Some((consumer, parts)) = pending(config, timeout).await? else {
        return Ok(report);
    };
    report.exists = true;
    report.behind = parts.iter().map(|p| (p.head - p.low).max(0) as u64).sum();
    let now = now_ms();
    let (_tx, mut stop) = watch::channel(false);
    // Aggregated chunk by chunk: memory grows with the distinct (sink,
    // reason) pairs, not with the letters.
    let mut groups: BTreeMap<(String, String), (u64, Duration, Duration)> = BTreeMap::new();
    let mut pending_count = 0;
    read_pending(
        &consumer,
        &topic,
        &parts,
        LIST_CHUNK,
        &mut stop,
        |_, letters| {
            for l in letters {
                pending_count += 1;
                let key = (
                    l.header("sink").unwrap_or_else(|| "?".into()),
                    l.header("reason").unwrap_or_default(),
                );
                let age = l.age(now);
                let g = groups
                    .entry(key)
                    .or_insert((0, Duration::ZERO, Duration::MAX));
                g.0 += 1;
                g.1 = g.1.max(age);
                g.2 = g.2.min(age);
            }
            async { Ok(()) }
        },
    )
    .await?;
    report.groups = groups;
    report.pending = pending_count;
    Ok(report)
}

/// The list as printed by `processors dlq list`.
pub fn render_list(r: &ListReport) -> String {
    if !r.exists {
        return format!(
            "no dead letters: topic {} does not exist (nothing was ever dead-lettered)\n",
            r.topic
        );
    }
    if r.pending == 0 {
        return format!(
            "no pending dead letters in {} ({} re-driven or re-queued before)\n",
            r.topic, r.behind
        );
    }
    let age =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    let mut out = format!(
        "{} pending dead letters in {} ({} re-driven or re-queued before)\n{:<12} {:>6}  {:<14} {:<14} reason\n",
        r.pending, r.topic, r.behind, "sink", "count", "oldest", "newest"
    );
    for ((sink, reason), (n, oldest, newest)) in &r.groups {
        out.push_str(&format!(
            "{sink:<12} {n:>6}  {:<14} {:<14} {reason}\n",
            age(*oldest),
            age(*newest)
        ));
    }
    out
}

/// The settings of one re-drive.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// Only letters of this sink.
    pub sink: Option<String>,
    /// Only letters dead-lettered longer ago than this.
    pub older_than: Option<Duration>,
    /// How long a sink that keeps asking to retry is offered a chunk before
    /// its letters are re-queued.
    pub retry_for: Duration,
    /// Bounded wait for the brokers' answers.
    pub timeout: Duration,
}

/// What a re-drive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedriveReport {
    /// Letters offered and accepted: removed from the queue.
    pub accepted: u64,
    /// Letters offered and still failing: re-queued with the new reason.
    pub failing: u64,
    /// Letters left as they were (filters, unknown sink, undecodable):
    /// re-queued unchanged.
    pub left: u64,
    /// Letters older than the `max_event_age` of every route to their
    /// sink (a welcome offer days late): removed without being sent, as
    /// the live path drops them.
    pub expired: u64,
    /// False if stopped by a signal before the end.
    pub complete: bool,
}

/// Re-drives the pending letters into `sinks` (those the config has; a
/// letter naming another is left pending).
pub async fn redrive(
    config: &Config,
    opts: &RedriveOptions,
    sinks: Vec<Arc<dyn Sink>>,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
) -> Result<RedriveReport, ReplayError> {
    if let Some(s) = &opts.sink
        && !config.sinks.contains_key(s)
    {
        let have: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        return Err(ReplayError::Usage(format!(
            "--sink {s}: no sink named {s:?} in the config (it has: {})",
            have.join(", ")
        )));
    }
    let counter = metrics.dlq_redriven.clone();
    let topic = config.kafka.dlq_topic.clone();
    let mut report = RedriveReport::default();
    let Some((consumer, parts)) = pending(config, opts.timeout).await? else {
        report.complete = true;
        return Ok(report);
    };
    let producer: FutureProducer = producer_config(&config.kafka)?.create()?;
    let by_name: HashMap<String, Arc<dyn Sink>> = sinks
        .into_iter()
        .map(|s| (s.name().to_owned(), s))
        .collect();
    let now = now_ms();
    let names: Vec<String> = config.sinks.keys().cloned().collect();
    let router =
        crate::pipeline::route::Router::new(&config.routes, &names).map_err(ReplayError::Usage)?;
    let ctx = Redrive {
        config,
        router,
        names,
        opts,
        sinks: &by_name,
        producer: &producer,
        topic: &topic,
        counter: &counter,
        now,
    };
    let report_cell = std::cell::RefCell::new(report);
    let complete = read_pending(
        &consumer,
        &topic,
        &parts,
        config.processing.batch_max,
        &mut stop.clone(),
        |p, letters| {
            let ctx = &ctx;
            let consumer = &consumer;
            let report_cell = &report_cell;
            let topic = &topic;
            let mut stop = stop.clone();
            async move {
                let last = letters.last().map_or(0, |l| l.offset);
                let r = ctx.chunk(letters, &mut stop).await?;
                // Everything in the chunk is accepted or durably re-queued:
                // move the head past it.
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(last + 1))?;
                consumer.commit(&tpl, CommitMode::Sync)?;
                let mut rep = report_cell.borrow_mut();
                rep.accepted += r.accepted;
                rep.failing += r.failing;
                rep.left += r.left;
                rep.expired += r.expired;
                Ok(())
            }
        },
    )
    .await?;
    let mut report = report_cell.into_inner();
    report.complete = complete;
    Ok(report)
}

/// What a chunk needs.
struct Redrive<'a> {
    config: &'a Config,
    /// The config's routes, to drop letters past their `max_event_age`.
    router: crate::pipeline::route::Router,
    /// The sinks' names, in the router's order.
    names: Vec<String>,
    opts: &'a RedriveOptions,
    sinks: &'a HashMap<String, Arc<dyn Sink>>,
    producer: &'a FutureProducer,
    topic: &'a str,
    counter: &'a IntCounterVec,
    now: i64,
}

impl Redrive<'_> {
    /// Offers a chunk's letters and re-queues what is not accepted.
    async fn chunk(
        &self,
        letters: Vec<Letter>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<RedriveReport, ReplayError> {
        let mut r = RedriveReport::default();
        // Letters to re-queue: (letter, new reason if it was offered).
        let mut requeue: Vec<(Letter, Option<String>)> = Vec::new();
        let mut offer: BTreeMap<String, Vec<(Letter, Arc<Event>)>> = BTreeMap::new();
        for l in letters {
            let sink = l.header("sink").unwrap_or_default();
            let wanted = self.opts.sink.as_ref().is_none_or(|s| *s == sink)
                && self.opts.older_than.is_none_or(|d| l.age(self.now) >= d)
                && self.sinks.contains_key(&sink);
            // Past the routes, but not past minimisation: the sink gets
            // only the personal fields its section allows.
            let event = wanted.then(|| self.decode(&l)).flatten().map(|e| {
                match self.config.sinks.get(&sink) {
                    Some(section) => section.minimise().apply(&e).unwrap_or(e),
                    None => e,
                }
            });
            let expired = event.as_ref().and_then(|e| {
                let i = self.names.iter().position(|n| *n == sink)?;
                self.router
                    .expired_for(e, i, crate::pipeline::route::now_micros())
            });
            if let (Some(age), Some(e)) = (expired, &event) {
                tracing::info!(
                    sink = sink.as_str(),
                    source = %e.source,
                    event_id = e.event_id.as_str(),
                    age = %humantime::format_duration(Duration::from_secs(age.as_secs())),
                    "dead letter older than its routes' max_event_age: removed, not sent"
                );
                self.counter.with_label_values(&[&sink, "expired"]).inc();
                r.expired += 1;
                continue;
            }
            match event {
                Some(e) => offer.entry(sink).or_default().push((l, Arc::new(e))),
                None => {
                    self.counter.with_label_values(&[&sink, "left"]).inc();
                    r.left += 1;
                    requeue.push((l, None));
                }
            }
        }
        for (name, batch) in offer {
            let Some(sink) = self.sinks.get(&name) else {
                continue;
            };
            let (accepted, failed) = self.offer(sink.as_ref(), batch, stop).await;
            r.accepted += accepted as u64;
            r.failing += failed.len() as u64;
            self.counter
                .with_label_values(&[&name, "accepted"])
                .inc_by(accepted as u64);
            self.counter
                .with_label_values(&[&name, "failing"])
                .inc_by(failed.len() as u64);
            requeue.extend(failed.into_iter().map(|(l, why)| (l, Some(why))));
        }
        self.requeue(requeue).await?;
        Ok(r)
    }

    /// The letter's event, parsed with today's source config.
    fn decode(&self, l: &Letter) -> Option<Event> {
        let envelope = schemas::Envelope::decode(&l.payload).ok()?;
        let parsed = event::parse(&envelope, self.config.sources.get(&envelope.source));
        match parsed {
            Ok(e) => Some(e),
            Err(q) => {
                tracing::warn!(
                    offset = l.offset,
                    reason = q.reason,
                    "dead letter no longer parses; left pending"
                );
                None
            }
        }
    }

    /// Offers until every event is accepted or refused, or `retry_for`
    /// passed. Returns the accepted count and the rest with their reason.
    async fn offer(
        &self,
        sink: &dyn Sink,
        mut batch: Vec<(Letter, Arc<Event>)>,
        stop: &mut watch::Receiver<bool>,
    ) -> (usize, Vec<(Letter, String)>) {
        let deadline = Instant::now() + self.opts.retry_for;
        let mut backoff = self.config.processing.retry_initial;
        let mut accepted = 0;
        let mut failed = Vec::new();
        loop {
            let events: Vec<Arc<Event>> = batch.iter().map(|(_, e)| e.clone()).collect();
            let outcomes = sink.accept(&events).await;
            let mut again = Vec::new();
            let mut reason = String::new();
            for (k, item) in batch.into_iter().enumerate() {
                match outcomes.get(k) {
                    Some(Outcome::Accepted) => accepted += 1,
                    Some(Outcome::Reject(why)) => failed.push((item.0, why.clone())),
                    Some(Outcome::Retry(why)) => {
                        reason.clone_from(why);
                        again.push(item);
                    }
                    None => {
                        reason = "the sink answered fewer outcomes than events".into();
                        again.push(item);
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || *stop.borrow() {
                failed.extend(again.into_iter().map(|(l, _)| (l, reason.clone())));
                break;
            }
            tracing::warn!(sink = sink.name(), letters = again.len(), %reason, retry_in = ?backoff.min(left), "sink asked to retry");
            tokio::select! {
                _ = tokio::time::sleep(backoff.min(left)) => {}
                _ = crate::pipeline::stopped(stop) => {}
            }
            backoff = (backoff * 2).min(self.config.processing.retry_max);
            batch = again;
        }
        (accepted, failed)
    }

    /// Appends letters again at the end, durably, keeping their timestamp;
    /// an offered one gets its new reason and one more attempt.
    async fn requeue(&self, letters: Vec<(Letter, Option<String>)>) -> Result<(), ReplayError> {
        let mut sends = Vec::with_capacity(letters.len());
        for (l, reason) in &letters {
            let attempts = l
                .header("redrive-attempts")
                .and_then(|a| a.parse::<u32>().ok())
                .unwrap_or(0)
                + u32::from(reason.is_some());
            let attempts = attempts.to_string();
            let mut h = OwnedHeaders::new();
            for (k, v) in &l.headers {
                let v = match k.as_str() {
                    "reason" if reason.is_some() => reason.as_deref().map(str::as_bytes),
                    "redrive-attempts" => continue,
                    _ => v.as_deref(),
                };
                h = h.insert(Header { key: k, value: v });
            }
            if attempts != "0" {
                h = h.insert(Header {
                    key: "redrive-attempts",
                    value: Some(attempts.as_bytes()),
                });
            }
            let mut rec = FutureRecord::to(self.topic)
                .payload(l.payload.as_slice())
                .headers(h);
            if let Some(k) = &l.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(ts) = l.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            sends.push(self.producer.send(rec, Duration::from_secs(30)));
        }
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| ReplayError::Kafka(format!("re-queue to {}: {e}", self.topic)))?;
        }
        Ok(())
    }
}

/// The summary printed by `processors dlq redrive`.
pub fn render_redrive(r: &RedriveReport, topic: &str) -> String {
    format!(
        "re-drove dead letters from {topic}: {} accepted, {} still failing (re-queued with their new reason), {} left pending (filters, unknown sink or undecodable), {} expired (past their routes' max_event_age: removed, not sent){}\n",
        r.accepted,
        r.failing,
        r.left,
        r.expired,
        if r.complete { "" } else { "; stopped early" }
    )
}
