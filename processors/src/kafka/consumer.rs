//! The consumer-group runtime: rdkafka's `StreamConsumer` over the raw
//! topic, one worker task per assigned partition, offsets stored only as far
//! as each partition's [`PartitionPipeline`] handled everything.
//!
//! - The consumer runs on its own thread (its own small tokio runtime), so
//!   the rebalance callback may block while partitions hand over, without
//!   stalling the workers, which run on the main runtime.
//! - Records go to their partition's worker over a bounded channel: a slow
//!   sink slows the consumer (backpressure), memory stays bounded.
//! - Offsets: `enable.auto.offset.store=false`; a worker stores its
//!   partition's committable position after every batch, and librdkafka's
//!   auto-commit commits stored offsets every second. Nothing read but
//!   unhandled is ever committed.
//! - Assignment: a partition's worker restores its state before it takes
//!   a record; meanwhile its records wait in the channel and, once that is
//!   full, the partition is paused like a stalled one (below).
//! - Revocation (rebalance) and shutdown: the partition's worker is told to
//!   stop, finishes the batch in hand (a sink that keeps failing is given up
//!   on at its next retry), reports its position, and that position is
//!   committed synchronously before the partition goes. A worker still busy
//!   after `revoke_timeout` (a sink call that does not end) is aborted: its
//!   sink call is dropped, so no effect of it follows the hand-over. Work a
//!   sink runs on a blocking thread (the SQLite stores) cannot be dropped
//!   half-way: its transaction commits or not, and is idempotent by event id.
//! - A worker that ends unexpectedly (a panic) is restarted: its partition
//!   is read again from the worker's last stored position, after a pause
//!   doubling from 100 ms to 30 s, counted in
//!   `processors_worker_restarts_total`. Events still in the
//!   reorder buffer are handed over, not drained: the next owner restores
//!   the partition's state (ledger, reorder positions, input position; see
//!   [`crate::state`]) before its first record, reads the rest again from
//!   the restored position and releases each key where it stood; what was
//!   applied past that position is in the restored ledger and dropped.
//!
//! - A partition whose worker does not take a record within
//!   [`STALL_AFTER`] (a sink that keeps failing, a full channel) is paused
//!   at that record: the consumer keeps polling, so the other partitions
//!   keep flowing and the group keeps this instance (no rebalance however
//!   long the sink is down); the held records go in as soon as the worker
//!   takes them again, and the partition is resumed. Short waits (ordinary
//!   backpressure) never pause.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::{KafkaConfig, Membership, consumer_config_as};
use crate::metrics::Metrics;
use crate::pipeline::budget::ByteBudget;
use crate::pipeline::{PartitionPipeline, RawRecord, Shared};

/// A running partition worker.
struct Worker {
    /// Records in, bounded (backpressure).
    tx: mpsc::Sender<RawRecord>,
    /// Raised on revocation and shutdown.
    stop: watch::Sender<bool>,
    /// The position the worker reached, sent when it ends.
    done: std::sync::mpsc::Receiver<Option<i64>>,
    /// The worker's task: finished without `stop` means it panicked.
    task: tokio::task::JoinHandle<()>,
    /// Where to read again if the worker dies: the offset of its first
    /// record, then each position it stored.
    position: Arc<AtomicI64>,
}

/// What the consumer's callbacks share with the consumer loop.
struct Partitions {
    workers: HashMap<i32, Worker>,
    assigned: HashSet<i32>,
    /// Bumped on every revocation and assignment: records held for a
    /// paused partition belong to the generation that read them.
    generation: u64,
}

/// How long the consumer waits for a partition's worker to take a record
/// before it pauses that partition and holds the record.
pub const STALL_AFTER: Duration = Duration::from_millis(500);

/// Records read for a paused partition, not yet taken by its worker.
struct Held {
    generation: u64,
    tx: mpsc::Sender<RawRecord>,
    records: VecDeque<RawRecord>,
}

/// librdkafka callbacks: logs, statistics (consumer lag), rebalances.
pub struct Ctx {
    topic: String,
    parts: Arc<Mutex<Partitions>>,
    revoke_timeout: Duration,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    /// When the oldest offset stored since the last confirmed commit was
    /// stored: the start of `processors_commit_latency_seconds`.
    stored_since: Mutex<Option<std::time::Instant>>,
}

impl Ctx {
    /// An offset was stored: the commit latency clock starts, unless it
    /// runs already.
    fn offset_stored(&self) {
        if let Ok(mut t) = self.stored_since.lock() {
            t.get_or_insert_with(std::time::Instant::now);
        }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        plumbing::route_librdkafka_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic) {
            // Only partitions this instance owns: another one reports the
            // rest (see `Metrics::forget_partition`).
            let assigned = match self.parts.lock() {
                Ok(p) => p.assigned.clone(),
                Err(_) => return,
            };
            for (p, s) in &t.partitions {
                if assigned.contains(p) && s.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for Ctx {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let since = self.stored_since.lock().ok().and_then(|mut t| t.take());
                if let Some(t) = since {
                    self.metrics
                        .commit_latency
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            // Nothing was stored since the last commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics
                    .commit_failures
                    .with_label_values(&["broker"])
                    .inc();
                tracing::warn!(error = %e, "offset commit refused by the brokers");
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<i32> = tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect();
            tracing::info!(?revoked, "partitions revoked: handing over");
            let workers: Vec<(i32, Worker)> = match self.parts.lock() {
                Ok(mut parts) => {
                    parts.generation += 1;
                    revoked
                        .iter()
                        .filter_map(|p| {
                            parts.assigned.remove(p);
                            parts.workers.remove(p).map(|w| (*p, w))
                        })
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            self.metrics.assigned_partitions.sub(revoked.len() as i64);
            let positions = stop_workers(workers, self.revoke_timeout);
            commit_positions(consumer, &self.topic, &positions, &self.metrics);
            // Another instance reports these partitions now: a gauge left
            // here would keep its last value (a lag alert that never ends).
            for p in &revoked {
                self.metrics.forget_partition(*p);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(?assigned, "partitions assigned");
                // librdkafka keeps a partition's pause flag across unassign
                // and assign (only a resume clears it): a partition paused
                // here before it moved away would never be fetched again
                // when it comes back. A new assignment starts unpaused; the
                // records held for it belong to the old generation and are
                // dropped (read again from the committed offset).
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, ?assigned, "resuming the new assignment refused");
                }
                if let Ok(mut parts) = self.parts.lock() {
                    parts.generation += 1;
                    parts.assigned.extend(assigned.iter().copied());
                    self.metrics
                        .assigned_partitions
                        .set(parts.assigned.len() as i64);
                }
                self.ready.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }
}

/// Tells each worker to stop and waits (up to `timeout` in all) for the
/// position it reached. A worker still busy then (a sink call that does
/// not end) is aborted: its future, and the sink call in it, is dropped,
/// so it cannot go on applying effects beside the partition's next owner,
/// nor run beside a new worker if the partition comes back. Its last
/// stored offset stands; the next owner reads the rest again.
fn stop_workers(workers: Vec<(i32, Worker)>, timeout: Duration) -> Vec<(i32, i64)> {
    for (_, w) in &workers {
        let _ = w.stop.send(true);
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut positions = Vec::new();
    let mut aborted = Vec::new();
    for (p, w) in workers {
        drop(w.tx);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match w.done.recv_timeout(left) {
            Ok(Some(pos)) => positions.push((p, pos)),
            Ok(None) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    partition = p,
                    "worker did not finish within revoke_timeout: aborting it; its last stored offset stands"
                );
                w.task.abort();
                aborted.push((p, w.task));
            }
        }
    }
    // Cancellation takes effect when the worker's runtime drops the task:
    // wait for it (bounded), so the hand-over completes after the effects.
    let until = std::time::Instant::now() + ABORT_GRACE;
    for (p, task) in aborted {
        while !task.is_finished() {
            if std::time::Instant::now() > until {
                tracing::error!(partition = p, "an aborted worker has not ended yet");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    positions
}

/// How long a hand-over waits for aborted workers to be dropped.
const ABORT_GRACE: Duration = Duration::from_secs(2);

fn commit_positions<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    positions: &[(i32, i64)],
    metrics: &Metrics,
) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, pos) in positions {
        if tpl
            .add_partition_offset(topic, *p, Offset::Offset(*pos))
            .is_err()
        {
            continue;
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::info!(?positions, "offsets committed"),
        Err(e) => {
            metrics.commit_failures.with_label_values(&["commit"]).inc();
            tracing::error!(error = %e, ?positions, "offset commit failed");
        }
    }
}

/// A handle to the running consumer.
pub struct Running {
    /// Set once the consumer joined the group and got an assignment.
    pub ready: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    /// Closed when the consumer thread ends, on shutdown or by itself.
    ended: watch::Receiver<()>,
}

impl Running {
    /// Waits for the consumer thread to end (after shutdown, or after it
    /// ended by itself: see [`Running::ended`]).
    pub fn join(self) -> Result<(), String> {
        self.thread
            .join()
            .map_err(|_| "the consumer thread panicked".to_string())?
    }

    /// Resolves once the consumer thread has ended. Without a shutdown it
    /// ends only when its consumer hit a fatal error (Kafka fenced it:
    /// another process joined with the same `kafka.instance_id`), after it
    /// handed its partitions over; [`Running::join`] then returns the error.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        while ended.changed().await.is_ok() {}
    }
}

/// The consumer's fatal error, if it has one, as the process reports it:
/// librdkafka's consumer then consumes nothing more, so the process must
/// not go on as if it did.
fn fatal_error<C: Consumer<Ctx>>(consumer: &C, membership: &Membership) -> Option<String> {
    let (code, reason) = consumer.client().fatal_error()?;
    Some(match (code, membership) {
        (RDKafkaErrorCode::FencedInstanceId, Membership::Static { instance_id, .. }) => format!(
            "the brokers fenced this consumer ({reason}): another process joined the group with the same kafka.instance_id {instance_id:?}, and this one consumes nothing more; give every running instance its own id (PROCESSORS_KAFKA__INSTANCE_ID), or stop the other process"
        ),
        _ => {
            format!("the consumer hit a fatal error and consumes nothing more: {code:?}: {reason}")
        }
    })
}

/// Starts the consumer thread. Workers are spawned on `workers_rt`.
pub fn start(
    kafka: &KafkaConfig,
    processing: &crate::pipeline::ProcessingConfig,
    shared: Arc<Shared>,
    workers_rt: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, KafkaError> {
    prepare(kafka, processing, &shared)?.run(processing, shared, workers_rt, shutdown)
}

/// A consumer created and subscribed, its loop not started yet.
struct Prepared {
    consumer: Arc<StreamConsumer<Ctx>>,
    topic: String,
    membership: Membership,
    parts: Arc<Mutex<Partitions>>,
    ready: Arc<AtomicBool>,
    budget: Arc<ByteBudget>,
}

/// Creates the consumer with its callbacks and subscribes it.
fn prepare(
    kafka: &KafkaConfig,
    processing: &crate::pipeline::ProcessingConfig,
    shared: &Shared,
) -> Result<Prepared, KafkaError> {
    let parts = Arc::new(Mutex::new(Partitions {
        generation: 0,
        workers: HashMap::new(),
        assigned: HashSet::new(),
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let ctx = Ctx {
        topic: kafka.topic.clone(),
        parts: parts.clone(),
        revoke_timeout: processing.revoke_timeout,
        metrics: shared.metrics.clone(),
        ready: ready.clone(),
        stored_since: Mutex::new(None),
    };
    let budget = ByteBudget::new(processing.max_buffered_bytes);
    let membership = kafka.membership();
    let session_timeout = humantime::format_duration(kafka.session_timeout).to_string();
    match &membership {
        Membership::Static {
            instance_id,
            from_host,
        } => tracing::info!(
            %instance_id,
            from = if *from_host { "host name" } else { "kafka.instance_id" },
            %session_timeout,
            "static group membership: a restart within kafka.session_timeout keeps this instance's partitions; a stop hands them over only after it"
        ),
        Membership::Dynamic(why) => tracing::info!(
            reason = %why,
            "static group membership off: a stop hands this instance's partitions over at once, a restart joins as a new member"
        ),
    }
    let mut settings = consumer_config_as(kafka, &membership)?;
    // librdkafka's own prefetch queue counts against the same memory: keep
    // it to a quarter of the budget (at least 1 MiB, at most its default).
    let prefetch_kib = (processing.max_buffered_bytes / 4 / 1024).clamp(1024, 65_536);
    settings.set("queued.max.messages.kbytes", prefetch_kib.to_string());
    let consumer: StreamConsumer<Ctx> = settings.create_with_context(ctx)?;
    consumer.subscribe(&[&kafka.topic])?;
    Ok(Prepared {
        consumer: Arc::new(consumer),
        topic: kafka.topic.clone(),
        membership,
        parts,
        ready,
        budget,
    })
}

impl Prepared {
    /// Runs the consumer loop on its own thread.
    fn run(
        self,
        processing: &crate::pipeline::ProcessingConfig,
        shared: Arc<Shared>,
        workers_rt: tokio::runtime::Handle,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Running, KafkaError> {
        let Prepared {
            consumer,
            topic,
            membership,
            parts,
            ready,
            budget,
        } = self;
        let (end_tx, ended) = watch::channel(());
        let batch_max = processing.batch_max;
        let capacity = processing.channel_capacity;
        let revoke_timeout = processing.revoke_timeout;
        let thread = std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                // Dropped last, whichever way this thread ends.
                let _end = end_tx;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(consume(
                    consumer,
                    topic,
                    &membership,
                    parts,
                    shared,
                    workers_rt,
                    shutdown,
                    (batch_max, capacity),
                    revoke_timeout,
                    budget,
                ))
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Running {
            ready,
            thread,
            ended,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    consumer: Arc<StreamConsumer<Ctx>>,
    topic: String,
    membership: &Membership,
    parts: Arc<Mutex<Partitions>>,
    shared: Arc<Shared>,
    workers_rt: tokio::runtime::Handle,
    mut shutdown: watch::Receiver<bool>,
    (batch_max, capacity): (usize, usize),
    revoke_timeout: Duration,
    budget: Arc<ByteBudget>,
) -> Result<(), String> {
    let mut held: HashMap<i32, Held> = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut supervise = tokio::time::interval(SUPERVISE_EVERY);
    supervise.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Unexpected worker ends per partition, for the restart backoff.
    let mut failures: HashMap<i32, u32> = HashMap::new();
    // Every partition is paused because the byte budget is used up.
    let mut budget_paused = false;
    // Why the loop ended without a shutdown.
    let mut fatal = None;
    loop {
        let msg = tokio::select! {
            m = consumer.recv() => Some(m),
            _ = retry.tick(), if !held.is_empty() => None,
            _ = supervise.tick() => None,
            _ = crate::pipeline::stopped(&mut shutdown) => break,
        };
        restart_dead_workers(
            &parts,
            &mut held,
            &mut failures,
            consumer.as_ref(),
            &topic,
            &shared.metrics,
        );
        start_idle_workers(
            &parts,
            &failures,
            &topic,
            &consumer,
            &shared,
            &workers_rt,
            (batch_max, capacity),
        );
        shared.metrics.buffered_bytes.set(budget.used() as i64);
        if budget_paused && budget.recovered() {
            budget_paused = false;
            pause_all(&parts, &held, consumer.as_ref(), &topic, false);
            tracing::info!(
                used = budget.used(),
                limit = budget.limit(),
                "byte budget recovered: fetching again"
            );
        }
        if !held.is_empty() {
            hand_held(&mut held, &parts, consumer.as_ref(), &topic, budget_paused);
        }
        if !matches!(msg, Some(Ok(_))) {
            // librdkafka reports a fatal error once, as a consumer error;
            // it is looked for on every pass without a record as well.
            if let Some(e) = fatal_error(consumer.as_ref(), membership) {
                tracing::error!(error = %e, "consumer fenced or failed for good: handing partitions over and stopping");
                fatal = Some(e);
                break;
            }
        }
        let Some(msg) = msg else { continue };
        let (partition, record) = match msg {
            Ok(m) => {
                if m.topic() != topic {
                    continue;
                }
                let key = m.key().map(<[u8]>::to_vec);
                let payload = m.payload().unwrap_or_default().to_vec();
                let charge = budget.charge(payload.len() + key.as_ref().map_or(0, Vec::len));
                let record = RawRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key,
                    payload: Arc::new(payload),
                    charge: Some(Arc::new(charge)),
                };
                (m.partition(), record)
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        let (tx, generation) = {
            let Ok(mut p) = parts.lock() else { break };
            if !p.assigned.contains(&partition) {
                continue;
            }
            let generation = p.generation;
            let delay = restart_delay(failures.get(&partition).copied().unwrap_or(0));
            let w = p.workers.entry(partition).or_insert_with(|| {
                spawn_worker(
                    partition,
                    record.offset,
                    &topic,
                    consumer.clone(),
                    shared.clone(),
                    &workers_rt,
                    (batch_max, capacity),
                    delay,
                )
            });
            // A worker started before its first record (see
            // `start_idle_workers`) is read again from this record if it
            // dies before it stores a position.
            let _ = w.position.compare_exchange(
                NO_RECORD_YET,
                record.offset,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            (w.tx.clone(), generation)
        };
        if budget_paused && budget.exhausted() {
            // A rebalance resumes every partition it assigns: one assigned
            // since the budget ran out is paused at its first record.
            set_paused(consumer.as_ref(), &topic, partition, true);
        }
        if !budget_paused && budget.exhausted() {
            budget_paused = true;
            shared.metrics.budget_pauses.inc();
            pause_all(&parts, &held, consumer.as_ref(), &topic, true);
            tracing::warn!(
                used = budget.used(),
                limit = budget.limit(),
                "byte budget used up (processing.max_buffered_bytes): every partition paused until a quarter of it is free"
            );
        }
        // Behind records already held for this partition (read before the
        // pause took effect), in offset order.
        if let Some(h) = held.get_mut(&partition) {
            if h.generation == generation {
                h.records.push_back(record);
                continue;
            }
            held.remove(&partition);
        }
        match tokio::time::timeout(STALL_AFTER, tx.reserve()).await {
            Ok(Ok(permit)) => permit.send(record),
            Ok(Err(_)) => {
                // Revoked meanwhile (the next owner reads it), or the
                // worker died: the supervisor reads it again from the
                // worker's position.
                restart_dead_workers(
                    &parts,
                    &mut held,
                    &mut failures,
                    consumer.as_ref(),
                    &topic,
                    &shared.metrics,
                );
            }
            Err(_) => {
                // The worker is stuck (a sink down): stop fetching this
                // partition, keep polling for the rest and the group.
                set_paused(consumer.as_ref(), &topic, partition, true);
                tracing::info!(
                    partition,
                    offset = record.offset,
                    "partition paused: its worker is not taking records (a sink is failing?)"
                );
                shared.metrics.paused_partitions.inc();
                held.insert(
                    partition,
                    Held {
                        generation,
                        tx: tx.clone(),
                        records: VecDeque::from([record]),
                    },
                );
            }
        }
    }
    // Shutdown: hand every partition over, as on revocation.
    let workers: Vec<(i32, Worker)> = match parts.lock() {
        Ok(mut p) => p.workers.drain().collect(),
        Err(_) => Vec::new(),
    };
    // This thread runs only the consumer: blocking it here is fine.
    let positions = stop_workers(workers, revoke_timeout);
    commit_positions(consumer.as_ref(), &topic, &positions, &shared.metrics);
    tracing::info!("consumer stopped");
    fatal.map_or(Ok(()), Err)
}

/// Offers held records to their workers; resumes a partition whose records
/// were all taken. Records of an older assignment are dropped (the new
/// owner, maybe this instance again, reads them from the committed offset).
fn hand_held(
    held: &mut HashMap<i32, Held>,
    parts: &Mutex<Partitions>,
    consumer: &StreamConsumer<Ctx>,
    topic: &str,
    budget_paused: bool,
) {
    let (generation, assigned) = match parts.lock() {
        Ok(p) => (p.generation, p.assigned.clone()),
        Err(_) => return,
    };
    held.retain(|&partition, h| {
        if h.generation != generation || !assigned.contains(&partition) {
            // A rebalance came between: the fetch position was reset. If
            // the partition is ours again, make sure it is not left paused.
            if assigned.contains(&partition) && !budget_paused {
                set_paused(consumer, topic, partition, false);
            }
            consumer.context().metrics.paused_partitions.dec();
            return false;
        }
        while let Some(record) = h.records.pop_front() {
            match h.tx.try_send(record) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(record)) => {
                    h.records.push_front(record);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    h.records.clear();
                    break;
                }
            }
        }
        if !budget_paused {
            set_paused(consumer, topic, partition, false);
        }
        tracing::info!(partition, "partition resumed");
        consumer.context().metrics.paused_partitions.dec();
        false
    });
}

/// Pauses (or resumes) every assigned partition for the byte budget; a
/// partition paused for its stuck worker stays paused until its held
/// records are taken.
fn pause_all(
    parts: &Mutex<Partitions>,
    held: &HashMap<i32, Held>,
    consumer: &StreamConsumer<Ctx>,
    topic: &str,
    paused: bool,
) {
    let assigned: Vec<i32> = match parts.lock() {
        Ok(p) => p.assigned.iter().copied().collect(),
        Err(_) => return,
    };
    for partition in assigned {
        if paused || !held.contains_key(&partition) {
            set_paused(consumer, topic, partition, paused);
        }
    }
}

fn set_paused(consumer: &StreamConsumer<Ctx>, topic: &str, partition: i32, paused: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(partition, paused, error = %e, "pause/resume refused");
    }
}

/// Spawns a partition's worker, which reads from `first_offset` on and
/// starts after `delay` (a restart's backoff).
#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    partition: i32,
    first_offset: i64,
    topic: &str,
    consumer: Arc<StreamConsumer<Ctx>>,
    shared: Arc<Shared>,
    rt: &tokio::runtime::Handle,
    (batch_max, capacity): (usize, usize),
    delay: Duration,
) -> Worker {
    let (tx, mut rx) = mpsc::channel::<RawRecord>(capacity);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let topic = topic.to_owned();
    let label = partition.to_string();
    let position = Arc::new(AtomicI64::new(first_offset));
    let stored = position.clone();
    let task = rt.spawn(async move {
        let metrics = shared.metrics.clone();
        let mut pipeline = PartitionPipeline::new(partition, shared, stop_rx.clone());
        let mut stop = stop_rx;
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::pipeline::stopped(&mut stop) => {
                    let _ = done_tx.send(None);
                    return;
                }
            }
        }
        // The partition's state first: nothing is handled before it is
        // restored (the consumer holds and pauses the records meanwhile).
        if pipeline.restore().await.is_err() {
            let _ = done_tx.send(None);
            return;
        }
        let mut buf = Vec::with_capacity(batch_max);
        // What sinks with partition state did outside batches (the
        // alerting sink's sent notifications) is written this often.
        let flushing = pipeline.has_partition_sinks();
        let mut flush_every = tokio::time::interval(FLUSH_EVERY);
        flush_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = pipeline.next_deadline().map(tokio::time::Instant::from_std);
            let writing = pipeline.writing();
            let outcome = tokio::select! {
                biased;
                _ = crate::pipeline::stopped(&mut stop) => break,
                // A checkpoint acknowledged: its position may be stored.
                r = pipeline.settle(), if writing => r,
                _ = flush_every.tick(), if flushing => pipeline.flush().await,
                n = rx.recv_many(&mut buf, batch_max) => {
                    if n == 0 {
                        break;
                    }
                    pipeline.handle(std::mem::take(&mut buf)).await
                }
                _ = sleep_until_opt(deadline) => pipeline.tick().await,
            };
            if outcome.is_err() {
                if pipeline.fenced() {
                    // Another instance owns the partition now: hold it,
                    // taking nothing (the consumer pauses it), until the
                    // group takes it away.
                    crate::pipeline::stopped(&mut stop).await;
                }
                break;
            }
            if let Some(pos) = pipeline.committable() {
                store(&consumer, &topic, partition, pos, &metrics);
                stored.store(pos, Ordering::Relaxed);
            }
            metrics
                .commit_lag
                .with_label_values(&[&label])
                .set(pipeline.outstanding() as i64);
        }
        // The sinks stop acting for the partition and what they did goes
        // with a last checkpoint; the checkpoint in flight, if any, is
        // part of the hand-over: its position is the one to commit
        // (bounded by the revoke timeout).
        pipeline.release().await;
        let _ = pipeline.flush().await;
        let _ = pipeline.settle().await;
        // A superseded owner commits nothing: the offset is the new one's.
        let _ = done_tx.send(if pipeline.fenced() {
            None
        } else {
            pipeline.position()
        });
    });
    Worker {
        tx,
        stop: stop_tx,
        done: done_rx,
        task,
        position,
    }
}

/// How often a partition's worker writes what its sinks did outside
/// batches (see [`PartitionPipeline::flush`]).
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How often the consumer looks for workers that ended unexpectedly.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// The pause before a partition's worker starts again after its `n`th
/// unexpected end: 100 ms doubling to 30 s, so a bug that panics on every
/// record costs a log line and a count per attempt, not a busy loop.
/// A worker's position before it was given any record.
const NO_RECORD_YET: i64 = -1;

/// Starts a worker for every assigned partition that has none: its state
/// is restored (and what its last owner left to send is sent, its firing
/// alerts re-posted) at once, not when its next record arrives, which for
/// a partition whose every record was committed may be much later.
#[allow(clippy::too_many_arguments)]
fn start_idle_workers(
    parts: &Mutex<Partitions>,
    failures: &HashMap<i32, u32>,
    topic: &str,
    consumer: &Arc<StreamConsumer<Ctx>>,
    shared: &Arc<Shared>,
    rt: &tokio::runtime::Handle,
    sizes: (usize, usize),
) {
    let Ok(mut p) = parts.lock() else { return };
    let idle: Vec<i32> = p
        .assigned
        .iter()
        .copied()
        .filter(|partition| !p.workers.contains_key(partition))
        .collect();
    for partition in idle {
        let delay = restart_delay(failures.get(&partition).copied().unwrap_or(0));
        let w = spawn_worker(
            partition,
            NO_RECORD_YET,
            topic,
            consumer.clone(),
            shared.clone(),
            rt,
            sizes,
            delay,
        );
        p.workers.insert(partition, w);
    }
}

fn restart_delay(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(100)
        .saturating_mul(1u32 << n.saturating_sub(1).min(9))
        .min(Duration::from_secs(30))
}

/// Finds workers whose task ended while their partition is still assigned
/// (a panic: a revoked worker is removed before it is stopped), and makes
/// their partition read again from the worker's last stored position: the
/// records it had taken and not finished are offered to a new worker,
/// which the next record spawns. Counted and logged; never silent.
fn restart_dead_workers(
    parts: &Mutex<Partitions>,
    held: &mut HashMap<i32, Held>,
    failures: &mut HashMap<i32, u32>,
    consumer: &StreamConsumer<Ctx>,
    topic: &str,
    metrics: &Metrics,
) {
    let dead: Vec<(i32, Worker)> = match parts.lock() {
        Ok(mut p) => {
            let ended: Vec<i32> = p
                .workers
                .iter()
                .filter(|(_, w)| w.task.is_finished())
                .map(|(partition, _)| *partition)
                .collect();
            ended
                .into_iter()
                .filter_map(|partition| p.workers.remove(&partition).map(|w| (partition, w)))
                .collect()
        }
        Err(_) => return,
    };
    for (partition, worker) in dead {
        let position = worker.position.load(Ordering::Relaxed);
        let n = failures.entry(partition).or_default();
        *n += 1;
        metrics
            .worker_restarts
            .with_label_values(&[&partition.to_string()])
            .inc();
        tracing::error!(
            partition,
            position,
            restarts = *n,
            next_in = ?restart_delay(*n),
            "partition worker ended unexpectedly (a panic, logged above): reading the partition again from its last stored position"
        );
        if held.remove(&partition).is_some() {
            metrics.paused_partitions.dec();
        }
        if position == NO_RECORD_YET {
            // It took no record: the fetch position is where it should be.
        } else if let Err(e) = consumer.seek(
            topic,
            partition,
            Offset::Offset(position),
            Duration::from_secs(5),
        ) {
            // The fetch position stays where it was; the records the worker
            // had taken are then read again only by the next owner.
            tracing::error!(partition, position, error = %e, "seek after a worker's end refused");
        }
        set_paused(consumer, topic, partition, false);
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn store(consumer: &StreamConsumer<Ctx>, topic: &str, partition: i32, pos: i64, m: &Metrics) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(pos))
        .is_err()
    {
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Expected right after a revocation; the new owner takes over.
        m.commit_failures.with_label_values(&["store"]).inc();
        tracing::debug!(partition, error = %e, "offset not stored");
    } else {
        consumer.context().offset_stored();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{Event, Quarantine};
    use crate::pipeline::SideTopics;
    use crate::pipeline::dedupe::{DedupeStore, MemoryDedupe};
    use crate::sinks::basic::MemorySink;
    use crate::sinks::{BoxFuture, Sink};

    /// Side topics that are never written in these tests.
    struct NoSide;

    impl SideTopics for NoSide {
        fn quarantine<'a>(
            &'a self,
            _: &'a RawRecord,
            _: &'a str,
            _: &'a Quarantine,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Err("no side topics here".into()) })
        }

        fn dead_letter<'a>(
            &'a self,
            _: &'a RawRecord,
            _: &'a Event,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Err("no side topics here".into()) })
        }
    }

    /// Kafka fences a static member when another process joins the group
    /// with its `group.instance.id`; librdkafka then ends that consumer with
    /// a fatal error and it consumes nothing more. The runtime used to log
    /// it as a warning and go on, consuming nothing, unseen. tansu does not
    /// fence (it gives both processes every partition), so the fatal error
    /// is raised with librdkafka's own test hook, on a consumer whose
    /// broker is a closed port: the runtime must end by itself and say
    /// why, naming the setting to fix.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_consumer_ends_the_runtime_with_an_error_naming_the_instance_id() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let config = Config::from_toml(&format!(
            r#"
            [kafka]
            brokers = "127.0.0.1:{port}"
            instance_id = "proc-a"
            [processing]
            revoke_timeout = "2s"
            [dedupe]
            path = "unused"
            [sources.purple]
            parser = "guest_wifi"
            [sinks.out]
            kind = "log"
            [[routes]]
            name = "all"
            sinks = ["out"]
            "#
        ))
        .unwrap();
        let shared = Arc::new(
            Shared::new(
                &config.sources,
                &config.routes,
                &config.processing,
                vec![Arc::new(MemorySink::new("out")) as Arc<dyn Sink>],
                Arc::new(MemoryDedupe::new(Duration::from_secs(60))) as Arc<dyn DedupeStore>,
                Arc::new(NoSide) as Arc<dyn SideTopics>,
                Metrics::new().unwrap(),
            )
            .unwrap(),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let prepared = prepare(&config.kafka, &config.processing, &shared).unwrap();
        let consumer = prepared.consumer.clone();
        let running = prepared
            .run(
                &config.processing,
                shared,
                tokio::runtime::Handle::current(),
                stop_rx,
            )
            .unwrap();
        // Running, no shutdown asked: it does not end by itself.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), running.ended())
                .await
                .is_err(),
            "the consumer ended without a shutdown or an error"
        );

        // SAFETY: a live client handle and a NUL-terminated reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                consumer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID,
                c"the static member was fenced by a newer instance".as_ptr(),
            );
        }
        drop(consumer);
        let ended = tokio::time::timeout(Duration::from_secs(10), running.ended()).await;
        let _ = stop_tx.send(true);
        assert!(
            ended.is_ok(),
            "a fenced consumer went on running (consuming nothing) for 10 s"
        );
        let joined = tokio::task::spawn_blocking(move || running.join())
            .await
            .unwrap();
        let e = joined.expect_err("a fenced consumer ends with an error");
        assert!(
            e.contains("fenced") && e.contains("kafka.instance_id \"proc-a\""),
            "{e}"
        );
    }
}
