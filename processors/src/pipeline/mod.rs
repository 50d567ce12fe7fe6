//! One partition's processing, independent of Kafka: decode, parse,
//! reorder, dedupe, route, deliver, and the offset that may be committed.
//!
//! [`PartitionPipeline::handle`] takes a batch of records in offset order
//! and returns once everything it released is fully handled: written to the
//! quarantine topic, dropped as a duplicate, unrouted, or accepted by every
//! routed sink (events a sink refuses for good are dead-lettered). Only then
//! are their offsets done, the dedupe store updated, and
//! [`PartitionPipeline::committable`] may move.
//!
//! Events are reordered per (source, ordering key) (the event id for a
//! source without one): two sources that use the same venue id keep their
//! own sequences. A source configured with `order_by = "occurred_at"`
//! (no sequence) goes through [`time_order`] instead: by event time, each
//! event held up to the gap timeout; an event without `occurred_at` there
//! is released at once. Its buffer is not in the partition state: what
//! waited at a move is read again by the next owner, which starts each key
//! afresh. A sequence that jumps beyond `max_sequence_jump` resets
//! its key (see [`reorder`]); it is counted by source and direction and
//! logged from [`PartitionPipeline`] in one place. Only a new event resets a
//! key: one the dedupe store (or this batch) already holds is dropped as a
//! duplicate before it can move the key.
//!
//! Sinks and side topics that fail are retried with backoff, in order, for
//! as long as it takes, unless `stop` is raised (revocation, shutdown): the
//! batch is then abandoned with its offsets not done, and whoever reads the
//! partition next applies it (dedupe and idempotent sinks make that safe).
//!
//! With partition state ([`Shared::with_state`], see [`crate::state`]), a
//! partition is restored before its first record ([`PartitionPipeline::
//! restore`]), and each handled batch ends with a checkpoint (ledger, then
//! sequences and position) written while the next batch is handled; only a
//! position the changelog acknowledged is [`committable`](PartitionPipeline::committable).
//!
//! The reorder clock of the live path ([`PartitionPipeline::handle`],
//! [`PartitionPipeline::tick`], [`PartitionPipeline::next_deadline`]) is wall
//! time less the time the partition stalled: a `handle` or `tick` call that
//! had to retry anything (a sink asking to retry, a side-topic write or a
//! dedupe-store call failing) is taken off the clock for its whole duration,
//! because meanwhile the partition could not take the records that may hold
//! a waiting event's predecessor. So however long a sink stalls, an event
//! waiting for a predecessor still in the channel is not released after a
//! gap, and the predecessor is not late. A sink that is slow but answers
//! does not stop the clock (its calls are progress). Replay
//! ([`PartitionPipeline::handle_timed`]) uses the record timestamps, which
//! a stall does not move.

pub mod budget;
pub mod dedupe;
pub mod offsets;
mod record;
pub mod reorder;
pub mod route;
mod slot;
pub mod time_order;

pub use record::RawRecord;
use slot::{POLLED, Pending, Slot, ToQuarantine};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::event::{self, Event, Quarantine, SourceConfig};
use crate::metrics::Metrics;
use crate::minimise::Minimise;
use crate::pipeline::dedupe::{DedupeRecord, DedupeStore};
use crate::pipeline::offsets::PartitionOffsets;
use crate::pipeline::reorder::{Bound, Reason, Released, ReorderConfig, Reorderer};
use crate::pipeline::route::{RouteConfig, Routed, Router};
use crate::pipeline::time_order::{TimeOrder, TimeOrderConfig, TimeReason, TimeReleased};
use crate::sinks::SinkSection;
use crate::sinks::{BoxFuture, Outcome, Sink};
use crate::state::{Checkpoint, PartitionState, Stores};
use schemas::Envelope;

/// Reorder, batching and retry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How long an event waits for a missing predecessor.
    #[serde(default = "default_gap_timeout", with = "humantime_serde")]
    pub gap_timeout: Duration,
    /// Most events waiting per ordering key.
    #[serde(default = "default_per_key")]
    pub max_buffered_per_key: usize,
    /// Most events waiting per partition, across keys.
    #[serde(default = "default_total")]
    pub max_buffered_total: usize,
    /// Most idle ordering keys remembered per partition.
    #[serde(default = "default_keys")]
    pub max_keys: usize,
    /// Farthest an event's sequence may be ahead of its key (past the
    /// highest waiting event, else the next expected sequence) or behind
    /// its next expected sequence before the key is reset (counted, logged)
    /// and starts again at that event. At least `max_buffered_per_key`: a
    /// smaller jump is ordinary reordering.
    #[serde(default = "default_max_jump")]
    pub max_sequence_jump: u64,
    /// Most records handled in one batch (one sink call per sink).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Records buffered between the consumer and each partition's worker.
    #[serde(default = "default_channel")]
    pub channel_capacity: usize,
    /// The most bytes of records the instance holds at once, across every
    /// partition (channels, held records, reorder buffers, batches in
    /// flight; see [`budget`]). Reaching it pauses fetching until use falls
    /// to three quarters of it. The item counts above still apply.
    #[serde(default = "default_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// On revocation or shutdown, how long a partition may take to finish
    /// its current batch before its offset is committed as it stands.
    #[serde(default = "default_revoke_timeout", with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// First pause before retrying a sink or side-topic write.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest pause between retries (backoff doubles up to it).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

const fn default_gap_timeout() -> Duration {
    ReorderConfig::DEFAULT_GAP_TIMEOUT
}
const fn default_per_key() -> usize {
    ReorderConfig::new().max_buffered_per_key
}
const fn default_total() -> usize {
    ReorderConfig::new().max_buffered_total
}
const fn default_keys() -> usize {
    ReorderConfig::new().max_keys
}
const fn default_max_jump() -> u64 {
    ReorderConfig::DEFAULT_MAX_SEQUENCE_JUMP
}
const fn default_batch() -> usize {
    500
}
const fn default_buffered_bytes() -> usize {
    256 * 1024 * 1024
}
const fn default_channel() -> usize {
    2_000
}
const fn default_revoke_timeout() -> Duration {
    Duration::from_secs(20)
}
const fn default_retry_initial() -> Duration {
    Duration::from_millis(200)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            gap_timeout: default_gap_timeout(),
            max_buffered_per_key: default_per_key(),
            max_buffered_total: default_total(),
            max_keys: default_keys(),
            max_sequence_jump: default_max_jump(),
            batch_max: default_batch(),
            channel_capacity: default_channel(),
            max_buffered_bytes: default_buffered_bytes(),
            revoke_timeout: default_revoke_timeout(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
        }
    }
}

impl ProcessingConfig {
    /// The reorder limits.
    pub fn reorder(&self) -> ReorderConfig {
        ReorderConfig {
            gap_timeout: self.gap_timeout,
            max_buffered_per_key: self.max_buffered_per_key,
            max_buffered_total: self.max_buffered_total,
            max_keys: self.max_keys,
            max_sequence_jump: self.max_sequence_jump,
        }
    }

    /// Every problem, each naming its field under `processing`.
    pub fn problems(&self) -> Vec<String> {
        let s = self;
        let mut p = Vec::new();
        if s.gap_timeout.is_zero() || s.gap_timeout > Duration::from_secs(3600) {
            p.push("processing.gap_timeout: must be between 1ms and 1h".into());
        }
        for (field, v) in [
            ("max_buffered_per_key", s.max_buffered_per_key),
            ("max_buffered_total", s.max_buffered_total),
            ("max_keys", s.max_keys),
            ("batch_max", s.batch_max),
            ("channel_capacity", s.channel_capacity),
            ("max_buffered_bytes", s.max_buffered_bytes),
        ] {
            if v == 0 {
                p.push(format!("processing.{field}: must be at least 1"));
            }
        }
        if (s.max_sequence_jump as u128) < (s.max_buffered_per_key as u128).max(1) {
            p.push(format!(
                "processing.max_sequence_jump: must be at least max_buffered_per_key ({}): a smaller jump is ordinary reordering",
                s.max_buffered_per_key
            ));
        }
        if s.max_buffered_bytes < 1024 * 1024 {
            p.push("processing.max_buffered_bytes: must be at least 1 MiB (1048576)".into());
        }
        if s.retry_initial.is_zero() || s.retry_initial > s.retry_max {
            p.push("processing.retry_initial: must be above 0 and at most retry_max".into());
        }
        p
    }
}

/// Writes to the quarantine and dead-letter topics.
pub trait SideTopics: Send + Sync {
    /// Writes the original record to the quarantine topic with the reason.
    fn quarantine<'a>(
        &'a self,
        record: &'a RawRecord,
        source: &'a str,
        why: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Writes the original record to the dead-letter topic, naming the sink
    /// that refused it and why.
    fn dead_letter<'a>(
        &'a self,
        record: &'a RawRecord,
        event: &'a Event,
        sink: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Asks the poller to fetch a skipped gap from the provider: the
    /// missing sequences `from..=to` of `(source, ordering_key)`. Best
    /// effort (the reconciliation sweep covers a lost request). Answers
    /// whether a request was written; the default (replay) asks nothing.
    fn reconcile<'a>(&'a self, gap: &'a GapRequest) -> BoxFuture<'a, Result<bool, String>> {
        let _ = gap;
        Box::pin(async { Ok(false) })
    }
}

/// A sequence gap the reorderer gave up on, for the reconcile topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GapRequest {
    /// The source whose events are missing.
    pub source: String,
    /// The ordering key (the venue id for the guest-WiFi platform).
    pub ordering_key: String,
    /// The first missing sequence.
    pub from_sequence: i64,
    /// The last missing sequence.
    pub to_sequence: i64,
}

/// Everything the partitions of one process share.
pub struct Shared {
    /// Per-source parser settings.
    pub sources: BTreeMap<String, SourceConfig>,
    /// The routing rules.
    pub router: Router,
    /// Sinks, indexed as the router numbers them.
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The dedupe store.
    pub dedupe: Arc<dyn DedupeStore>,
    /// Quarantine and dead-letter topics.
    pub side: Arc<dyn SideTopics>,
    /// Metrics.
    pub metrics: Metrics,
    /// Backoff bounds for retries.
    pub retry_initial: Duration,
    /// Longest pause between retries.
    pub retry_max: Duration,
    /// The reorder limits.
    pub reorder: crate::pipeline::reorder::ReorderConfig,
    /// Where each partition's state is kept so that it follows the
    /// partition to its next owner (`None`: replay, and tests that do not
    /// need it; the partition then starts from nothing).
    pub state: Option<Arc<Stores>>,
    /// What each sink may receive of the guests' personal data, indexed
    /// as `sinks` (everything, until [`Shared::with_fields`]).
    pub minimise: Vec<Minimise>,
}

impl Shared {
    /// Builds the shared parts from a checked config and its dependencies.
    pub fn new(
        sources: &BTreeMap<String, SourceConfig>,
        routes: &[RouteConfig],
        processing: &ProcessingConfig,
        sinks: Vec<Arc<dyn Sink>>,
        dedupe: Arc<dyn DedupeStore>,
        side: Arc<dyn SideTopics>,
        metrics: Metrics,
    ) -> Result<Shared, String> {
        let names: Vec<String> = sinks.iter().map(|s| s.name().to_owned()).collect();
        let minimise = vec![Minimise::everything(); sinks.len()];
        Ok(Shared {
            sources: sources.clone(),
            router: Router::new(routes, &names)?,
            sinks,
            dedupe,
            side,
            metrics,
            retry_initial: processing.retry_initial,
            retry_max: processing.retry_max,
            reorder: processing.reorder(),
            state: None,
            minimise,
        })
    }

    /// Gives each sink only the personal fields its section allows
    /// (`fields`, else its kind's default; see [`minimise`]).
    pub fn with_fields(mut self, sections: &BTreeMap<String, SinkSection>) -> Shared {
        for (i, sink) in self.sinks.iter().enumerate() {
            if let Some(section) = sections.get(sink.name()) {
                self.minimise[i] = section.minimise();
            }
        }
        self
    }

    /// Keeps each partition's state in `stores` (see [`crate::state`]).
    pub fn with_state(mut self, stores: Arc<Stores>) -> Shared {
        self.state = Some(stores);
        self
    }
}

/// Most request ids named on one "sink asked to retry" line.
const MAX_IDS_LOGGED: usize = 10;

/// A reorder key: the source, then its ordering key (the event id for a
/// source without one), so two sources that use the same venue id do not
/// share one sequence.
type ReorderKey = (String, String);

/// The batch was abandoned because `stop` was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped before the batch was fully handled")]
pub struct Stopped;

/// One partition's state.
pub struct PartitionPipeline {
    partition: i32,
    label: String,
    shared: Arc<Shared>,
    offsets: PartitionOffsets,
    reorder: Reorderer<Slot, ReorderKey>,
    /// The reorder buffer of sources ordered by `occurred_at`.
    time_order: TimeOrder<Slot, ReorderKey>,
    stop: watch::Receiver<bool>,
    /// Origin of the reorder clock (see [`PartitionPipeline::clock`]).
    clock_base: std::time::Instant,
    /// Wall time the reorder clock has not run: calls that had to retry a
    /// sink, side topic or the dedupe store, while the partition could not
    /// take records.
    stalled: Duration,
    /// Set by every retry pause, so the call it belongs to is known to
    /// have stalled.
    retried: AtomicBool,
    /// Another instance claimed the partition after this one (see
    /// [`crate::state::superseded`]): it acts on it no more.
    fenced: AtomicBool,
    /// The partition's state writer, once restored.
    state: Option<PartitionState>,
    /// Records below this offset are reflected in the restored state:
    /// skipped, not handled again.
    skip_below: Option<i64>,
    /// Whether the first record after the restore was looked at.
    first_seen: bool,
    /// Reorder keys that released something since the last checkpoint.
    dirty: HashSet<ReorderKey>,
    /// A batch was released from the reorder buffer and then left
    /// unfinished (stopped mid-way): the in-memory reorder positions are
    /// past what the changelog holds, and no later checkpoint of this
    /// worker (the hand-over's last one) may write them.
    abandoned: bool,
    /// Gaps skipped since the last `apply`, to ask the poller for.
    gaps: Vec<GapRequest>,
    /// With state: the input position of the last checkpoint the
    /// changelog acknowledged, the only one that may be committed (a batch
    /// abandoned before its checkpoint was written must be read again).
    durable: Option<i64>,
    /// With state: the position [`committable`](Self::committable) last
    /// returned.
    durable_returned: Option<i64>,
    /// The checkpoint being written, at most one (see
    /// [`checkpoint`](Self::checkpoint)).
    writing: Option<tokio::task::JoinHandle<Result<Written, Stopped>>>,
    /// State changelog records of the checkpoint being written.
    writing_records: usize,
    /// With state: events applied whose checkpoint is not acknowledged
    /// yet, (source, event id): duplicates for this worker, recorded in
    /// the dedupe store once acknowledged.
    unconfirmed: HashSet<(String, String)>,
}

/// What delivering a batch to one sink left to write.
#[derive(Default)]
struct Delivered {
    /// The sink's index.
    sink: usize,
    /// Its partition state's changes, one per key.
    changes: Vec<crate::state::changelog::Keyed>,
    /// Its serial of the last call, for a sink with partition state.
    serial: Option<u64>,
}

/// A checkpoint the logs acknowledged.
struct Written {
    checkpoint: Checkpoint,
    ledger_offsets: Vec<i64>,
    state_offsets: Vec<i64>,
    /// Whether an append had to be retried (the partition stalled).
    retried: bool,
}

/// Retries of a checkpoint's appends, outside the pipeline.
struct Retry {
    partition: i32,
    stop: watch::Receiver<bool>,
    initial: Duration,
    max: Duration,
}

impl Retry {
    /// Appends `records` to `log`, retrying with backoff until the brokers
    /// acknowledge them or `stop` is raised.
    async fn append(
        &self,
        log: &dyn crate::state::Changelog,
        what: &str,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        retried: &mut bool,
    ) -> Result<Vec<i64>, Stopped> {
        let mut backoff = self.initial;
        loop {
            match log.append(self.partition, records.clone()).await {
                Ok(o) => return Ok(o),
                Err(e) => {
                    tracing::warn!(partition = self.partition, what, error = %e, retry_in = ?backoff, "retrying");
                    *retried = true;
                    let mut stop = self.stop.clone();
                    if *stop.borrow() {
                        return Err(Stopped);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return Err(Stopped),
                    }
                    backoff = (backoff * 2).min(self.max);
                }
            }
        }
    }
}

impl Retry {
    /// Records `c`'s applied events in the dedupe store (a blocking
    /// commit, on the blocking pool), retrying with backoff until it
    /// succeeds or `stop` is raised.
    async fn record(
        &self,
        dedupe: &Arc<dyn DedupeStore>,
        c: &Checkpoint,
        retried: &mut bool,
    ) -> Result<(), Stopped> {
        let at = c.at.unwrap_or_else(SystemTime::now);
        let entries = Arc::new(c.applied.clone());
        let mut backoff = self.initial;
        loop {
            let (store, list) = (dedupe.clone(), entries.clone());
            let done = tokio::task::spawn_blocking(move || {
                let batch: Vec<DedupeRecord<'_>> = list
                    .iter()
                    .map(|(source, event_id)| DedupeRecord {
                        source,
                        event_id,
                        at,
                    })
                    .collect();
                store.record(&batch).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match done {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(partition = self.partition, what = "dedupe", error = %e, retry_in = ?backoff, "retrying");
                    *retried = true;
                    let mut stop = self.stop.clone();
                    if *stop.borrow() {
                        return Err(Stopped);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return Err(Stopped),
                    }
                    backoff = (backoff * 2).min(self.max);
                }
            }
        }
    }
}

impl PartitionPipeline {
    /// A fresh partition (nothing read yet).
    pub fn new(partition: i32, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Self {
        let reorder = Reorderer::new(shared.reorder.clone());
        let time_order = TimeOrder::new(TimeOrderConfig {
            wait: shared.reorder.gap_timeout,
            max_buffered_per_key: shared.reorder.max_buffered_per_key,
            max_buffered_total: shared.reorder.max_buffered_total,
            max_keys: shared.reorder.max_keys,
        });
        PartitionPipeline {
            partition,
            label: partition.to_string(),
            shared,
            offsets: PartitionOffsets::new(),
            reorder,
            time_order,
            stop,
            clock_base: std::time::Instant::now(),
            stalled: Duration::ZERO,
            retried: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            state: None,
            skip_below: None,
            first_seen: false,
            dirty: HashSet::new(),
            abandoned: false,
            gaps: Vec::new(),
            durable: None,
            durable_returned: None,
            writing: None,
            writing_records: 0,
            unconfirmed: HashSet::new(),
        }
    }

    /// Claims the partition and restores its state from the changelog (see
    /// [`crate::state`]), retrying with backoff until it succeeds or `stop`
    /// is raised; nothing to do without state stores. Call it once, before
    /// the first [`handle`](Self::handle).
    pub async fn restore(&mut self) -> Result<(), Stopped> {
        let shared = self.shared.clone();
        let Some(stores) = &shared.state else {
            return Ok(());
        };
        let m = &shared.metrics;
        m.state_restoring.inc();
        let started = Instant::now();
        let mut backoff = shared.retry_initial;
        let restored = loop {
            let dedupe = shared.dedupe.clone();
            let mut ledger = |entries: crate::state::LedgerEntries| {
                let batch: Vec<DedupeRecord<'_>> = entries
                    .iter()
                    .map(|(source, event_id, at)| DedupeRecord {
                        source,
                        event_id,
                        at: std::time::UNIX_EPOCH + Duration::from_secs(*at),
                    })
                    .collect();
                dedupe.record(&batch).map_err(|e| e.to_string())
            };
            let window = shared.dedupe.window();
            let sinks: Vec<crate::state::NamedSink<'_>> = shared
                .sinks
                .iter()
                .filter_map(|s| s.partition_state().map(|p| (s.name(), p)))
                .collect();
            match crate::state::restore(stores, self.partition, window, &sinks, &mut ledger).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, retry_in = ?backoff, "restoring the partition's state failed: retrying");
                    if let Err(stopped) = self.pause(backoff).await {
                        m.state_restoring.dec();
                        return Err(stopped);
                    }
                    backoff = (backoff * 2).min(shared.retry_max);
                }
            }
        };
        m.state_restoring.dec();
        let seconds = started.elapsed().as_secs_f64();
        m.state_restore_seconds.observe(seconds);
        let c = restored.counts;
        for (outcome, n) in [
            ("applied", c.applied),
            ("stale", c.stale),
            ("unreadable", c.unreadable),
            ("expired", c.expired),
            ("unconfirmed", c.unconfirmed),
        ] {
            m.state_restored_records
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        m.state_changelog_records
            .with_label_values(&["claim"])
            .inc();
        tracing::info!(
            partition = self.partition,
            epoch = restored.epoch,
            position = restored.position,
            keys = restored.sequences.len(),
            applied = c.applied,
            stale = c.stale,
            unreadable = c.unreadable,
            from_cache = restored.from_cache,
            seconds,
            "partition state restored"
        );
        for (key, next) in &restored.sequences {
            self.reorder.resume(key.clone(), *next);
        }
        self.skip_below = restored.position;
        self.state = Some(PartitionState::new(self.partition, &restored));
        Ok(())
    }

    /// The reorder clock of the live path: wall time minus the time this
    /// partition stalled, so a gap's wait only counts time in which the
    /// missing event could have been taken.
    fn clock(&self) -> std::time::Instant {
        let now = std::time::Instant::now();
        let ran = now
            .saturating_duration_since(self.clock_base)
            .saturating_sub(self.stalled);
        self.clock_base.checked_add(ran).unwrap_or(now)
    }

    /// Starts timing a call that may stall.
    fn stall_watch(&self) -> std::time::Instant {
        self.retried.store(false, Ordering::Relaxed);
        std::time::Instant::now()
    }

    /// Ends timing a call: if it had to retry anything, the partition
    /// could not take records for its whole duration, so that time is
    /// taken off the reorder clock.
    fn stall_end(&mut self, started: std::time::Instant) {
        if self.retried.swap(false, Ordering::Relaxed) {
            self.stalled = self.stalled.saturating_add(started.elapsed());
        }
    }

    /// The offset to commit now: everything below it is fully handled
    /// and, with state, written to the changelog.
    pub fn position(&self) -> Option<i64> {
        if self.state.is_some() {
            return self.durable;
        }
        self.offsets.position()
    }

    /// [`position`](Self::position) when it moved since last asked.
    pub fn committable(&mut self) -> Option<i64> {
        if self.state.is_some() {
            if self.durable.is_some() && self.durable != self.durable_returned {
                self.durable_returned = self.durable;
                return self.durable;
            }
            return None;
        }
        self.offsets.committable()
    }

    /// When (wall time) the reorder buffer next needs a
    /// [`tick`](Self::tick): the reorder deadline, pushed back by the time
    /// the partition stalled.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        let deadline = match (
            self.reorder.next_deadline(),
            self.time_order.next_deadline(),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        deadline.checked_add(self.stalled)
    }

    /// Records read and not yet fully handled.
    pub fn outstanding(&self) -> usize {
        self.offsets.outstanding()
    }

    /// Handles a batch of records (in offset order), pushed into the
    /// reorder buffer at the reorder clock: wall time, less the time the
    /// partition stalled on retries.
    pub async fn handle(&mut self, records: Vec<RawRecord>) -> Result<(), Stopped> {
        let now = self.clock();
        self.handle_timed(records.into_iter().map(|r| (r, now)).collect())
            .await
    }

    /// Handles a batch of records (in offset order), each pushed into the
    /// reorder buffer at the instant given with it. The live path passes the
    /// wall clock; replay passes the record timestamps, so the gap timeout
    /// runs on the time the records were written and a replay makes the
    /// same in-order and late decisions whatever its speed.
    pub async fn handle_timed(
        &mut self,
        records: Vec<(RawRecord, std::time::Instant)>,
    ) -> Result<(), Stopped> {
        let started = self.stall_watch();
        let result = self.handle_records(records).await;
        self.stall_end(started);
        result
    }

    async fn handle_records(
        &mut self,
        records: Vec<(RawRecord, std::time::Instant)>,
    ) -> Result<(), Stopped> {
        let mut now = self.clock();
        let mut released = Vec::new();
        let mut quarantined = Vec::new();
        let shared = self.shared.clone();
        let m = &shared.metrics;
        // Events of this batch that reset their key, so a re-delivery in
        // the same batch (not yet in the dedupe store) does not reset it
        // again.
        let mut resetters: HashSet<(String, String)> = HashSet::new();
        for (record, at) in records {
            now = at;
            m.consumed.with_label_values(&[&self.label]).inc();
            if self.skip_restored(&record) {
                continue;
            }
            if let Err(e) = self.offsets.track(record.offset) {
                // A re-delivered offset (e.g. after a seek): already tracked.
                tracing::warn!(partition = self.partition, error = %e, "record skipped");
                continue;
            }
            let envelope = match Envelope::decode(&record.payload) {
                Ok(env) => env,
                Err(e) => {
                    let q = Quarantine {
                        reason: "envelope_undecodable",
                        detail: e.to_string(),
                    };
                    quarantined.push(ToQuarantine {
                        record,
                        source: "_unknown".to_owned(),
                        request_id: None,
                        why: q,
                    });
                    continue;
                }
            };
            match event::parse(&envelope, shared.sources.get(&envelope.source)) {
                Ok(event) => {
                    m.decoded.with_label_values(&[&event.source]).inc();
                    // Held from here with its envelope: charge what the
                    // parsed event really takes.
                    slot::charge_parsed(&record, &event);
                    let key = (
                        event.source.clone(),
                        event
                            .ordering_key
                            .clone()
                            .unwrap_or_else(|| event.event_id.clone()),
                    );
                    let by_time = shared
                        .sources
                        .get(&event.source)
                        .is_some_and(|s| s.order_by == event::OrderBy::OccurredAt);
                    if by_time {
                        let pending = Pending {
                            record,
                            event: Arc::new(event),
                            request_id: envelope.request_id.clone(),
                            polled: envelope.verification.scheme == POLLED,
                        };
                        match pending.event.occurred_at_micros {
                            // While it waits in the window, without its
                            // parsed form, as in the reorder buffer.
                            Some(at) => {
                                let slot = Slot::Event(Box::new(pending));
                                let out = self.time_order.push_with(key, at, slot, now, slot::hold);
                                self.after_time_order(out, &mut released, &mut quarantined);
                            }
                            // Nothing to order it by: at once.
                            None => released.push(pending),
                        }
                        continue;
                    }
                    let seq = event.sequence;
                    if let Some(s) = seq
                        && self.reorder.jump(&key, s).is_some()
                    {
                        // Only a new event may reset its key: a provider's
                        // re-delivery of an applied one is a duplicate.
                        let id = (event.source.clone(), event.event_id.clone());
                        let seen = resetters.contains(&id)
                            || self
                                .retry_sync("dedupe", || {
                                    shared.dedupe.seen(&id.0, &id.1).map_err(|e| e.to_string())
                                })
                                .await?;
                        if seen {
                            m.duplicates.with_label_values(&[&event.source]).inc();
                            self.offsets.done(record.offset);
                            continue;
                        }
                        resetters.insert(id);
                    }
                    // An event that waits for a missing sequence gives up
                    // its parsed form until it leaves (`held`).
                    let out = self.reorder.push_with(
                        key,
                        seq,
                        Slot::Event(Box::new(Pending {
                            record,
                            event: Arc::new(event),
                            request_id: envelope.request_id.clone(),
                            polled: envelope.verification.scheme == POLLED,
                        })),
                        now,
                        slot::hold,
                    );
                    self.after_reorder(out, &mut released, &mut quarantined);
                }
                Err(q) => {
                    if let (Some(key), Some(seq)) = (&envelope.ordering_key, envelope.sequence) {
                        let key = (envelope.source.clone(), key.clone());
                        let out = self.reorder.push(key, Some(seq), Slot::Quarantined, now);
                        self.after_reorder(out, &mut released, &mut quarantined);
                    }
                    quarantined.push(ToQuarantine {
                        record,
                        source: envelope.source,
                        request_id: Some(envelope.request_id),
                        why: q,
                    });
                }
            }
        }
        let out = self.reorder.tick(now);
        self.after_reorder(out, &mut released, &mut quarantined);
        let out = self.time_order.tick(now);
        self.after_time_order(out, &mut released, &mut quarantined);
        // Read but not yet handled: stays up while a sink is retried.
        m.commit_lag
            .with_label_values(&[&self.label])
            .set(self.offsets.outstanding() as i64);
        self.apply(quarantined, released).await
    }

    /// Whether `record` is below the restored position (already reflected
    /// in the state: skipped). Warns once when the first record read is
    /// above it: the group's committed offset is past the state, so the
    /// records between were handled by an owner whose state was not
    /// written (a changelog that was deleted or recreated).
    fn skip_restored(&mut self, record: &RawRecord) -> bool {
        let Some(below) = self.skip_below else {
            return false;
        };
        if record.offset < below {
            self.shared.metrics.state_skipped_records.inc();
            return true;
        }
        if !self.first_seen && record.offset > below {
            tracing::warn!(
                partition = self.partition,
                restored = below,
                first = record.offset,
                "the committed offset is past the restored state: the records between are not in this partition's state"
            );
        }
        self.first_seen = true;
        self.skip_below = None;
        false
    }

    /// Releases everything still waiting in the reorder buffer, per key in
    /// sequence order, and handles it: the end of a replayed range, where no
    /// missing predecessor can still come.
    pub async fn finish(&mut self) -> Result<(), Stopped> {
        let out = self.reorder.drain();
        let (mut released, mut quarantined) = (Vec::new(), Vec::new());
        self.after_reorder(out, &mut released, &mut quarantined);
        let out = self.time_order.drain();
        self.after_time_order(out, &mut released, &mut quarantined);
        self.apply(quarantined, released).await
    }

    /// Releases what waited the gap timeout (by the reorder clock) and
    /// handles it.
    pub async fn tick(&mut self) -> Result<(), Stopped> {
        let started = self.stall_watch();
        let now = self.clock();
        let out = self.reorder.tick(now);
        let (mut released, mut quarantined) = (Vec::new(), Vec::new());
        self.after_reorder(out, &mut released, &mut quarantined);
        let out = self.time_order.tick(now);
        self.after_time_order(out, &mut released, &mut quarantined);
        let result = self.apply(quarantined, released).await;
        self.stall_end(started);
        result
    }

    /// Marks late events, drops a duplicate-sequence copy of a buffered
    /// event, and counts.
    fn after_reorder(
        &mut self,
        out: Vec<Released<Slot, ReorderKey>>,
        into: &mut Vec<Pending>,
        quarantined: &mut Vec<ToQuarantine>,
    ) {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let stats_before = self.reorder_stats_gaps();
        for r in out {
            if r.seq.is_some() && self.state.is_some() && !self.dirty.contains(&r.key) {
                self.dirty.insert(r.key.clone());
            }
            if let Reason::Reset { expected, jump } = r.reason {
                let (source, ordering_key) = &r.key;
                let request_id = match &r.item {
                    Slot::Event(p) => p.request_id.as_str(),
                    Slot::Held(h) => h.request_id.as_str(),
                    Slot::Quarantined => "",
                };
                m.key_resets
                    .with_label_values(&[source.as_str(), jump.reason()])
                    .inc();
                tracing::warn!(
                    partition = self.partition,
                    source = %source,
                    ordering_key = %ordering_key,
                    sequence = r.seq,
                    expected,
                    reason = jump.reason(),
                    request_id,
                    "reorder key reset: its sequence jumped beyond processing.max_sequence_jump"
                );
            }
            if let (Reason::AfterGap { skipped }, Some(seq)) = (r.reason, r.seq)
                && skipped > 0
            {
                let (source, ordering_key) = &r.key;
                self.gaps.push(GapRequest {
                    source: source.clone(),
                    ordering_key: ordering_key.clone(),
                    from_sequence: seq - skipped as i64,
                    to_sequence: seq - 1,
                });
            }
            let Some(mut p) = self.unhold(r.item, quarantined) else {
                continue;
            };
            match r.reason {
                // Counted once it proves not to be a duplicate (`apply`).
                // Unique here (just out of the buffer): marked in place.
                Reason::Late { .. } => Arc::make_mut(&mut p.event).late = true,
                Reason::DuplicateSeq => {
                    let same = match r.seq.and_then(|s| self.reorder.peek(&r.key, s)) {
                        Some(Slot::Event(b)) => {
                            b.event.event_id == p.event.event_id && b.event.source == p.event.source
                        }
                        Some(Slot::Held(b)) => {
                            b.event_id == p.event.event_id && b.source == p.event.source
                        }
                        _ => false,
                    };
                    if same {
                        m.duplicates.with_label_values(&[&p.event.source]).inc();
                        self.offsets.done(p.record.offset);
                        continue;
                    }
                }
                Reason::Forced { bound, .. } => {
                    let b = match bound {
                        Bound::PerKey => "per_key",
                        Bound::Total => "total",
                    };
                    m.forced.with_label_values(&[&self.label, b]).inc();
                }
                _ => {}
            }
            into.push(p);
        }
        let (gaps, skipped) = self.reorder_stats_gaps();
        m.gaps
            .with_label_values(&[&self.label])
            .inc_by(gaps - stats_before.0);
        m.skipped_sequences
            .with_label_values(&[&self.label])
            .inc_by(skipped - stats_before.1);
        m.reorder_buffered
            .with_label_values(&[&self.label])
            .set((self.reorder.buffered() + self.time_order.buffered()) as i64);
    }

    /// The event of a released slot, parsed again if it waited without its
    /// parsed form (`held`); `None` for a quarantined placeholder, or an
    /// event that no longer parses, which goes to `quarantined`.
    fn unhold(&self, slot: Slot, quarantined: &mut Vec<ToQuarantine>) -> Option<Pending> {
        match slot {
            Slot::Event(p) => Some(*p),
            Slot::Held(h) => match h.release(&self.shared.sources) {
                Ok(p) => Some(p),
                Err(q) => {
                    tracing::error!(
                        partition = self.partition,
                        offset = q.record.offset,
                        reason = q.why.reason,
                        "an event that waited for its turn no longer parses: quarantined"
                    );
                    quarantined.push(*q);
                    None
                }
            },
            Slot::Quarantined => None,
        }
    }

    /// Marks late events of the time-order buffer and counts its releases.
    fn after_time_order(
        &mut self,
        out: Vec<TimeReleased<Slot, ReorderKey>>,
        into: &mut Vec<Pending>,
        quarantined: &mut Vec<ToQuarantine>,
    ) {
        let m = &self.shared.metrics;
        for r in out {
            let Some(mut p) = self.unhold(r.item, quarantined) else {
                continue;
            };
            m.time_ordered
                .with_label_values(&[p.event.source.as_str(), r.reason.label()])
                .inc();
            if let TimeReason::Late { .. } = r.reason {
                // Counted once it proves not to be a duplicate (`apply`).
                Arc::make_mut(&mut p.event).late = true;
            }
            into.push(p);
        }
        m.reorder_buffered
            .with_label_values(&[&self.label])
            .set((self.reorder.buffered() + self.time_order.buffered()) as i64);
    }

    fn reorder_stats_gaps(&self) -> (u64, u64) {
        let s = self.reorder.stats();
        (s.gaps, s.skipped)
    }

    async fn apply(
        &mut self,
        quarantined: Vec<ToQuarantine>,
        released: Vec<Pending>,
    ) -> Result<(), Stopped> {
        let result = self.apply_released(quarantined, released).await;
        if result.is_err() {
            self.abandoned = true;
        }
        result
    }

    async fn apply_released(
        &mut self,
        quarantined: Vec<ToQuarantine>,
        released: Vec<Pending>,
    ) -> Result<(), Stopped> {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        // 0. Ask for the gaps just skipped (best effort: a lost request is
        // covered by the poller's reconciliation sweep).
        for gap in std::mem::take(&mut self.gaps) {
            match shared.side.reconcile(&gap).await {
                Ok(false) => {}
                Ok(true) => tracing::info!(
                    partition = self.partition,
                    source = %gap.source,
                    ordering_key = %gap.ordering_key,
                    from_sequence = gap.from_sequence,
                    to_sequence = gap.to_sequence,
                    "gap skipped: reconciliation requested"
                ),
                Err(e) => tracing::warn!(
                    partition = self.partition,
                    source = %gap.source,
                    ordering_key = %gap.ordering_key,
                    from_sequence = gap.from_sequence,
                    to_sequence = gap.to_sequence,
                    error = %e,
                    "gap skipped: the reconcile request was not written"
                ),
            }
        }
        // 1. Quarantine.
        for q in &quarantined {
            self.retry("quarantine", || {
                shared.side.quarantine(&q.record, &q.source, &q.why)
            })
            .await?;
            m.quarantined
                .with_label_values(&[q.source.as_str(), q.why.reason])
                .inc();
            tracing::warn!(
                partition = self.partition,
                offset = q.record.offset,
                source = %q.source,
                reason = q.why.reason,
                detail = q.why.detail.as_str(),
                request_id = q.request_id.as_deref().unwrap_or(""),
                "record quarantined"
            );
        }
        for q in &quarantined {
            self.offsets.done(q.record.offset);
        }
        // 2. Dedupe and route.
        let mut in_batch: HashSet<(String, String)> = HashSet::new();
        let mut per_sink: Vec<Vec<(usize, Arc<Event>)>> = vec![Vec::new(); shared.sinks.len()];
        // Per sink, the items it may only be given before a deadline (their
        // routes' max_event_age): a retry past it drops them.
        let mut expiring: Vec<HashMap<usize, i64>> = vec![HashMap::new(); shared.sinks.len()];
        let mut finished: Vec<i64> = Vec::new();
        let mut applied: Vec<usize> = Vec::new();
        let mut items: Vec<Pending> = Vec::with_capacity(released.len());
        for p in released {
            let key = (p.event.source.clone(), p.event.event_id.clone());
            let seen = in_batch.contains(&key)
                || self.unconfirmed.contains(&key)
                || self
                    .retry_sync("dedupe", || {
                        shared
                            .dedupe
                            .seen(&key.0, &key.1)
                            .map_err(|e| e.to_string())
                    })
                    .await?;
            if seen {
                m.duplicates.with_label_values(&[&p.event.source]).inc();
                finished.push(p.record.offset);
                continue;
            }
            in_batch.insert(key);
            if p.polled {
                // The first copy of this event to reach the processors came
                // from polling: its webhook was lost (or is still to come
                // and will be dropped as a duplicate).
                m.recovered.with_label_values(&[&p.event.source]).inc();
            }
            if p.event.late {
                m.late.with_label_values(&[&p.event.source]).inc();
            }
            let routed = shared.router.route(&p.event, route::now_micros());
            for skip in &routed.skipped {
                m.route_skipped(skip, &p.event, &p.request_id);
            }
            let Routed { sinks, expires, .. } = routed;
            if sinks.is_empty() {
                // Skipped by every route it matched: counted as skipped.
                if routed.skipped.is_empty() {
                    m.unrouted.with_label_values(&[&p.event.source]).inc();
                }
                finished.push(p.record.offset);
                continue;
            }
            let i = items.len();
            let event = p.event.clone();
            for (s, deadline) in expires {
                expiring[s].insert(i, deadline);
            }
            for s in sinks {
                let given = match shared.minimise[s].apply(&event) {
                    Some(minimised) => Arc::new(minimised),
                    None => event.clone(),
                };
                per_sink[s].push((i, given));
            }
            applied.push(i);
            items.push(p);
        }
        // 3. Deliver to every sink concurrently; each retries in order.
        let deliveries = per_sink
            .into_iter()
            .zip(expiring)
            .enumerate()
            .filter(|(_, (batch, _))| !batch.is_empty())
            .map(|(s, (batch, expiring))| self.deliver(s, batch, &items, expiring));
        let results = futures::future::join_all(deliveries).await;
        let mut keyed = Vec::new();
        let mut sink_serials = Vec::new();
        for r in results {
            let done = r?;
            if let Some(serial) = done.serial {
                sink_serials.push((done.sink, serial));
            }
            keyed.extend(done.changes);
        }
        // 4. Remember what was applied, then let the offsets move. With
        // partition state, the dedupe store learns a batch once its
        // checkpoint is acknowledged (see `settle`): after a crash before
        // that, its events are read and applied again (a partition sink's
        // store is rebuilt without them), not dropped as duplicates.
        if self.state.is_some() {
            self.unconfirmed.extend(applied.iter().map(|&i| {
                (
                    items[i].event.source.clone(),
                    items[i].event.event_id.clone(),
                )
            }));
        } else if !applied.is_empty() {
            let at = SystemTime::now();
            self.retry_sync("dedupe", || {
                let batch: Vec<DedupeRecord<'_>> = applied
                    .iter()
                    .map(|&i| DedupeRecord {
                        source: &items[i].event.source,
                        event_id: &items[i].event.event_id,
                        at,
                    })
                    .collect();
                shared.dedupe.record(&batch).map_err(|e| e.to_string())
            })
            .await?;
        }
        for o in finished {
            self.offsets.done(o);
        }
        for p in &items {
            self.offsets.done(p.record.offset);
        }
        // 5. Write what changed to the changelog before the offset may be
        // stored.
        let checkpoint = Checkpoint {
            applied: applied
                .iter()
                .map(|&i| {
                    (
                        items[i].event.source.clone(),
                        items[i].event.event_id.clone(),
                    )
                })
                .collect(),
            at: Some(SystemTime::now()),
            sequences: Vec::new(),
            position: self.offsets.position(),
            keyed,
            sink_serials,
        };
        self.checkpoint(checkpoint).await
    }

    /// Starts writing `c`, with the sequences of the keys that moved, to
    /// the ledger and the state changelog (retried until acknowledged or
    /// `stop`), after the previous batch's write finished: at most one is
    /// in flight, so the logs keep the batches' order, and the partition
    /// handles its next batch meanwhile. [`position`](Self::position) moves
    /// only once a write is acknowledged. Nothing to do without state.
    async fn checkpoint(&mut self, mut c: Checkpoint) -> Result<(), Stopped> {
        if self.state.is_none() {
            return Ok(());
        }
        self.settle().await?;
        let shared = self.shared.clone();
        let (Some(stores), Some(state)) = (&shared.state, self.state.as_mut()) else {
            return Ok(());
        };
        // After an abandoned batch the reorder positions include events
        // no sink finished: the next owner must release those again.
        if !self.abandoned {
            c.sequences = self
                .dirty
                .iter()
                .filter_map(|k| self.reorder.next_expected(k).map(|n| (k.clone(), n)))
                .collect();
        }
        // What partition sinks did outside the batches (notifications
        // sent) goes with this checkpoint.
        for (s, sink) in shared.sinks.iter().enumerate() {
            let Some((changes, serial)) = sink
                .partition_state()
                .and_then(|p| p.pending(self.partition))
            else {
                continue;
            };
            c.keyed.extend(changes.into_iter().map(|(key, value)| {
                crate::state::changelog::Keyed {
                    sink: sink.name().to_owned(),
                    key,
                    value,
                }
            }));
            if !c.sink_serials.iter().any(|(i, _)| *i == s) {
                c.sink_serials.push((s, serial));
            }
        }
        if state.is_empty(&c) {
            return Ok(());
        }
        self.dirty.clear();
        let ledger_record = state.ledger_record(&c);
        let state_records = state.state_records(&c);
        self.writing_records = state_records.len();
        let retry = Retry {
            partition: self.partition,
            stop: self.stop.clone(),
            initial: shared.retry_initial,
            max: shared.retry_max,
        };
        let (changelog, ledger) = (stores.changelog.clone(), stores.ledger.clone());
        let dedupe = shared.dedupe.clone();
        let timing = shared.metrics.state_checkpoint_seconds.clone();
        self.writing = Some(tokio::spawn(async move {
            let step = |name: &str, since: Instant| {
                timing
                    .with_label_values(&[name])
                    .observe(since.elapsed().as_secs_f64());
            };
            // The ledger first: a position may be durable only once the
            // events below it are remembered as applied.
            let mut retried = false;
            let ledger_offsets = match ledger_record {
                Some(record) => {
                    let started = Instant::now();
                    let offsets = retry
                        .append(ledger.as_ref(), "ledger", vec![record], &mut retried)
                        .await?;
                    step("ledger", started);
                    offsets
                }
                None => Vec::new(),
            };
            let state_offsets = if state_records.is_empty() {
                Vec::new()
            } else {
                let started = Instant::now();
                let offsets = retry
                    .append(changelog.as_ref(), "changelog", state_records, &mut retried)
                    .await?;
                step("changelog", started);
                offsets
            };
            // Acknowledged: the dedupe store may now take the batch as
            // applied (its commit overlaps the next batch, as the writes do).
            if !c.applied.is_empty() {
                let started = Instant::now();
                retry.record(&dedupe, &c, &mut retried).await?;
                step("dedupe", started);
            }
            Ok(Written {
                checkpoint: c,
                ledger_offsets,
                state_offsets,
                retried,
            })
        }));
        Ok(())
    }

    /// Writes what partition sinks did since the last checkpoint outside
    /// the batches (notifications sent), if anything: called every few
    /// hundred milliseconds by the worker, and at a hand-over.
    pub async fn flush(&mut self) -> Result<(), Stopped> {
        self.checkpoint(Checkpoint::default()).await
    }

    /// The hand-over's first step: every partition sink stops acting for
    /// this partition and finishes what is under way, so that the last
    /// [`flush`](Self::flush) holds all it did.
    pub async fn release(&mut self) {
        let Some(epoch) = self.state.as_ref().map(PartitionState::epoch) else {
            return;
        };
        for sink in &self.shared.sinks {
            if let Some(p) = sink.partition_state() {
                p.releasing(self.partition, epoch).await;
            }
        }
    }

    /// Whether any sink keeps partition state (the worker then flushes).
    pub fn has_partition_sinks(&self) -> bool {
        self.state.is_some()
            && self
                .shared
                .sinks
                .iter()
                .any(|s| s.partition_state().is_some())
    }

    /// Whether a checkpoint is being written.
    pub fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Waits for the checkpoint being written (if any) and lets the
    /// position, the metrics and the cache follow it. Cancel-safe: dropped
    /// while waiting, the write stays in hand.
    pub async fn settle(&mut self) -> Result<(), Stopped> {
        let Some(handle) = self.writing.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let result = handle.await;
        self.writing = None;
        self.writing_records = 0;
        self.shared
            .metrics
            .state_checkpoint_seconds
            .with_label_values(&["waited"])
            .observe(started.elapsed().as_secs_f64());
        let w = match result {
            Ok(Ok(w)) => w,
            Ok(Err(Stopped)) => return Err(Stopped),
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "a checkpoint write ended abnormally");
                return Err(Stopped);
            }
        };
        if w.retried {
            // The partition waited on the changelog: time off the clock.
            self.retried.store(true, Ordering::Relaxed);
        }
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let c = &w.checkpoint;
        for (kind, n) in [
            ("ledger", w.ledger_offsets.len()),
            ("sequence", c.sequences.len()),
            ("position", usize::from(c.position.is_some())),
        ] {
            m.state_changelog_records
                .with_label_values(&[kind])
                .inc_by(n as u64);
        }
        for key in &c.applied {
            self.unconfirmed.remove(key);
        }
        if c.position.is_some() {
            self.durable = c.position;
        }
        m.state_changelog_records
            .with_label_values(&["keyed"])
            .inc_by(c.keyed.len() as u64);
        let cache = shared.state.as_ref().and_then(|s| s.cache.clone());
        let cached_at = match self.state.as_mut() {
            Some(state) => state
                .written(c, &w.ledger_offsets, &w.state_offsets, cache.as_deref())
                .unwrap_or_else(|e| {
                    // The logs have it: a cache that lags is only slower
                    // to restore from, never wrong.
                    tracing::warn!(partition = self.partition, error = %e, "state cache not updated");
                    None
                }),
            None => None,
        };
        for (s, serial) in &c.sink_serials {
            if let Some(p) = shared.sinks.get(*s).and_then(|s| s.partition_state()) {
                p.checkpointed(self.partition, *serial, cached_at);
            }
        }
        Ok(())
    }

    /// Offers `batch` to sink `s` until every event is accepted or
    /// dead-lettered; returns the sink's partition-state changes, if any.
    async fn deliver(
        &self,
        s: usize,
        mut batch: Vec<(usize, Arc<Event>)>,
        items: &[Pending],
        expiring: HashMap<usize, i64>,
    ) -> Result<Delivered, Stopped> {
        let sink = &self.shared.sinks[s];
        let m = &self.shared.metrics;
        let name = sink.name();
        let mut done = Delivered {
            sink: s,
            ..Delivered::default()
        };
        // With partition state, a stateful sink keeps its state per
        // partition; without (replay), it applies as any sink.
        let stateful = sink.partition_state().filter(|_| self.state.is_some());
        let mut changed: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let tracked = match (&self.shared.state, &self.state) {
            (Some(stores), Some(state)) if sink.tracks_effects() => Some((stores, state.epoch())),
            _ => None,
        };
        if tracked.is_some() {
            // Before effects outside Kafka: is this still the partition's
            // owner? A broker may have given it to another member too.
            if self.superseded().await {
                return Err(Stopped);
            }
            batch = self.not_yet_applied(name, batch).await?;
        }
        let mut backoff = self.shared.retry_initial;
        while !batch.is_empty() {
            let events: Vec<Arc<Event>> = batch.iter().map(|(_, e)| e.clone()).collect();
            let started = Instant::now();
            let outcomes = match (tracked, stateful) {
                (_, Some(p)) => {
                    let accepted = p.accept_partition(self.partition, &events).await;
                    for (k, v) in accepted.changes {
                        changed.insert(k, v);
                    }
                    if accepted.serial > 0 {
                        done.serial = Some(accepted.serial);
                    }
                    accepted.outcomes
                }
                (Some((stores, epoch)), None) => {
                    let hook = EffectHook {
                        changelog: stores.ledger.as_ref(),
                        partition: self.partition,
                        epoch,
                        sink: name,
                        events: &events,
                        metrics: m,
                        stop: &self.stop,
                        fenced: &self.fenced,
                    };
                    sink.accept_tracked(&events, &hook).await
                }
                (None, None) => sink.accept(&events).await,
            };
            m.sink_latency
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            let mut again = Vec::new();
            let mut last_reason = String::new();
            for (k, (i, e)) in batch.into_iter().enumerate() {
                match outcomes.get(k) {
                    Some(Outcome::Accepted) => m.routed.with_label_values(&[name]).inc(),
                    Some(Outcome::Reject(reason)) => {
                        let record = &items[i].record;
                        self.retry("dead_letter", || {
                            self.shared.side.dead_letter(record, &e, name, reason)
                        })
                        .await?;
                        m.dead_lettered.with_label_values(&[name]).inc();
                        tracing::warn!(
                            sink = name,
                            source = %e.source,
                            event_id = e.event_id.as_str(),
                            request_id = %items[i].request_id,
                            %reason,
                            "dead-lettered"
                        );
                    }
                    Some(Outcome::Retry(reason)) => {
                        last_reason.clone_from(reason);
                        again.push((i, e));
                    }
                    None => {
                        last_reason = "the sink answered fewer outcomes than events".into();
                        again.push((i, e));
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            if *self.stop.borrow() {
                // Handed over (or stopping): what is left is the next
                // owner's; the batch is not checkpointed.
                return Err(Stopped);
            }
            m.sink_retries
                .with_label_values(&[name])
                .inc_by(again.len() as u64);
            let request_ids = again
                .iter()
                .take(MAX_IDS_LOGGED)
                .map(|(i, _)| items[*i].request_id.as_str())
                .collect::<Vec<_>>()
                .join(",");
            tracing::warn!(
                sink = name,
                events = again.len(),
                reason = last_reason.as_str(),
                retry_in = ?backoff,
                request_ids,
                "sink asked to retry"
            );
            self.pause(backoff).await?;
            backoff = (backoff * 2).min(self.shared.retry_max);
            // What its routes' max_event_age says is no longer worth
            // sending (a welcome offer hours after the guest arrived) is
            // dropped for this sink, not sent late when it recovers.
            let now = route::now_micros();
            again.retain(|(i, e)| match expiring.get(i) {
                Some(&deadline) if now > deadline => {
                    m.sink_expired.with_label_values(&[name]).inc();
                    tracing::info!(
                        sink = name,
                        source = %e.source,
                        event_id = e.event_id.as_str(),
                        request_id = %items[*i].request_id,
                        late_by = %humantime::format_duration(Duration::from_secs(
                            u64::try_from((now - deadline) / 1_000_000).unwrap_or(0)
                        )),
                        "sink retries held the event past its routes' max_event_age: not sent"
                    );
                    false
                }
                _ => true,
            });
            batch = again;
        }
        done.changes = changed
            .into_iter()
            .map(|(key, value)| crate::state::changelog::Keyed {
                sink: name.to_owned(),
                key,
                value,
            })
            .collect();
        Ok(done)
    }

    /// Whether another instance claimed this partition after this one's
    /// last write: then this one stops acting on it (a broker that gave one
    /// partition to two members; tansu 0.6 can). Checked before effects
    /// outside Kafka; a failed check is logged and taken as "not".
    async fn superseded(&self) -> bool {
        if self.fenced.load(Ordering::Relaxed) {
            return true;
        }
        let (Some(stores), Some(state)) = (&self.shared.state, &self.state) else {
            return false;
        };
        match crate::state::superseded(
            stores.changelog.as_ref(),
            self.partition,
            state.checked_through(),
            if self.writing.is_some() {
                self.writing_records
            } else {
                0
            },
        )
        .await
        {
            Ok(crate::state::Ownership::Own { checked_through }) => {
                state.checked(checked_through);
                false
            }
            Ok(crate::state::Ownership::Superseded) => {
                self.fenced.store(true, Ordering::Relaxed);
                self.shared
                    .metrics
                    .state_superseded
                    .with_label_values(&[&self.partition.to_string()])
                    .inc();
                tracing::warn!(
                    partition = self.partition,
                    epoch = state.epoch(),
                    "another instance claimed this partition while the group still gives it to this one (the brokers assigned it twice): acting on it no more until the group takes it away"
                );
                true
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "could not check the partition's latest claim");
                false
            }
        }
    }

    /// Whether this worker stopped acting on its partition because another
    /// instance claimed it (it then waits for the group to take it away).
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// `batch` without the events whose effect on sink `name` the
    /// partition's state records (applied before a crash or a hand-over,
    /// their batch not finished): those are counted and not offered again.
    async fn not_yet_applied(
        &self,
        name: &str,
        batch: Vec<(usize, Arc<Event>)>,
    ) -> Result<Vec<(usize, Arc<Event>)>, Stopped> {
        let mut out = Vec::with_capacity(batch.len());
        for (i, e) in batch {
            let source = crate::state::changelog::effect_source(name, &e.source);
            let applied = self
                .retry_sync("dedupe", || {
                    self.shared
                        .dedupe
                        .seen(&source, &e.event_id)
                        .map_err(|err| err.to_string())
                })
                .await?;
            if applied {
                self.shared
                    .metrics
                    .effects_already_applied
                    .with_label_values(&[name])
                    .inc();
                tracing::info!(
                    sink = name,
                    source = %e.source,
                    event_id = %e.event_id,
                    "not offered again: the sink applied it before (recorded in the partition's state)"
                );
                continue;
            }
            out.push((i, e));
        }
        Ok(out)
    }

    /// Runs `op` until it succeeds, with backoff; gives up on `stop`.
    async fn retry<'a, F>(&self, what: &str, mut op: F) -> Result<(), Stopped>
    where
        F: FnMut() -> BoxFuture<'a, Result<(), String>>,
    {
        let mut backoff = self.shared.retry_initial;
        loop {
            match op().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(partition = self.partition, what, error = %e, retry_in = ?backoff, "retrying");
                    self.pause(backoff).await?;
                    backoff = (backoff * 2).min(self.shared.retry_max);
                }
            }
        }
    }

    /// Runs a blocking store call until it succeeds, with backoff.
    async fn retry_sync<T, F>(&self, what: &str, mut op: F) -> Result<T, Stopped>
    where
        F: FnMut() -> Result<T, String>,
    {
        let mut backoff = self.shared.retry_initial;
        loop {
            // Short blocking calls (a B-tree lookup, one commit per batch):
            // cheaper inline than a hop to the blocking pool.
            match op() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(partition = self.partition, what, error = %e, retry_in = ?backoff, "retrying");
                    self.pause(backoff).await?;
                    backoff = (backoff * 2).min(self.shared.retry_max);
                }
            }
        }
    }

    async fn pause(&self, d: Duration) -> Result<(), Stopped> {
        // Only retries pause: the call this belongs to stalled.
        self.retried.store(true, Ordering::Relaxed);
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return Err(Stopped);
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = stopped(&mut stop) => Err(Stopped),
        }
    }
}

impl Drop for PartitionPipeline {
    /// However the worker ends (a hand-over, a shutdown, an abort at the
    /// revoke timeout, a panic), the sinks' partition state stops acting
    /// for this partition here: whoever restores it next takes over.
    fn drop(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        for sink in &self.shared.sinks {
            if let Some(p) = sink.partition_state() {
                p.revoked(self.partition, state.epoch());
            }
        }
    }
}

/// Records each effect a tracking sink reports in the partition's
/// changelog, one record per effect, acknowledged before the sink goes on.
struct EffectHook<'a> {
    changelog: &'a dyn crate::state::Changelog,
    partition: i32,
    epoch: i64,
    sink: &'a str,
    events: &'a [Arc<Event>],
    metrics: &'a Metrics,
    /// Raised when the partition is revoked or the process stops.
    stop: &'a watch::Receiver<bool>,
    /// Set when another instance claimed the partition.
    fenced: &'a AtomicBool,
}

impl crate::sinks::Applied for EffectHook<'_> {
    fn applied(&self, index: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(e) = self.events.get(index) else {
                return;
            };
            let at = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let record = crate::state::changelog::Change::Effect {
                sink: self.sink.to_owned(),
                source: e.source.clone(),
                event_id: e.event_id.clone(),
                at,
            }
            .encode(self.epoch);
            match self.changelog.append(self.partition, vec![record]).await {
                Ok(_) => self
                    .metrics
                    .state_changelog_records
                    .with_label_values(&["effect"])
                    .inc(),
                // The effect stands; unrecorded, a crash before the batch's
                // checkpoint would offer it again (the sink's idempotency
                // key then applies).
                Err(err) => tracing::warn!(
                    partition = self.partition,
                    sink = self.sink,
                    error = %err,
                    "a sink's effect could not be recorded in the changelog"
                ),
            }
        })
    }

    fn handing_over(&self) -> bool {
        *self.stop.borrow() || self.fenced.load(Ordering::Relaxed)
    }
}

/// Resolves once `stop` is raised (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
