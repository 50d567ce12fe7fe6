//! The contract every sink keeps.
//!
//! The surface is small on purpose: [`Sink::accept`] takes a batch and
//! answers one [`Outcome`] per event, in order. Only [`Outcome::Accepted`]
//! lets the event's offset be committed; [`Outcome::Retry`] events are
//! offered again (with backoff, in order); [`Outcome::Reject`] events go to
//! the dead-letter topic with the sink and reason.
//!
//! A sink must be idempotent by (source, event id): the processors
//! de-duplicate, but an event accepted just before a crash, or by the
//! previous owner of a partition, can be offered again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::Event;

/// A boxed future, so sinks can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a sink did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durably applied (or already applied before).
    Accepted,
    /// Not now (sink down, rate limited): offer it again later.
    Retry(String),
    /// Never (the sink refuses this event): dead-letter it.
    Reject(String),
}

/// Told of each event a sink applied, as soon as it is applied, so that
/// the partition's state records it before the batch ends (see
/// `crate::state`): after a crash, a sink with effects outside Kafka then
/// repeats only the requests that were in flight.
pub trait Applied: Send + Sync {
    /// The batch's event at `index` was applied; resolves once that is
    /// recorded (or recording it failed and was logged: the effect stands
    /// either way).
    fn applied(&self, index: usize) -> BoxFuture<'_, ()>;

    /// True once the partition is being handed over (revoked, or the
    /// process stopping): the sink starts no new request and answers
    /// `Retry` for what it has not sent, which the partition's next owner
    /// sends. Requests already in flight finish and are recorded. A hand-
    /// over that took as long as the sink's whole batch could outlast the
    /// brokers' patience (tansu gives a member in a rebalance only its
    /// session timeout), and what the old owner sent after the next
    /// owner's claim would be sent again.
    fn handing_over(&self) -> bool {
        false
    }
}

/// One key of a sink's partition state as the sink writes it: the key,
/// and its value or `None` once it is gone.
pub type KeyedChange = (Vec<u8>, Option<Vec<u8>>);

/// A sink whose state belongs to the input partitions (see
/// `crate::state`): its local store is a cache of the partition's
/// changelog, so whichever instance owns a partition has the partition's
/// state, restored before its first record, and only that instance acts
/// on it.
///
/// The pipeline calls, per partition: [`cached_at`](Self::cached_at),
/// then [`forget`](Self::forget) if the restore starts from the
/// changelog's beginning, [`restore`](Self::restore) with every record
/// read, [`restored`](Self::restored); then
/// [`accept_partition`](Self::accept_partition) per batch, whose changes it
/// writes to the changelog before the batch's offset may be committed,
/// then [`checkpointed`](Self::checkpointed); and
/// [`revoked`](Self::revoked) when the partition is handed over (or its
/// worker ends any other way).
pub trait PartitionSink: Send + Sync {
    /// The changelog offset the local store reflects for `partition`
    /// (everything below it, nothing applied past it), or `None` when it
    /// cannot say (never restored here, or a batch applied whose changes
    /// were never acknowledged): the partition is then rebuilt from the
    /// changelog's start.
    fn cached_at(&self, partition: i32) -> Result<Option<i64>, String>;

    /// Drops the local state of `partition` before a rebuild.
    fn forget(&self, partition: i32) -> Result<(), String>;

    /// Applies restored records of this sink, in changelog order.
    fn restore(&self, partition: i32, records: &[KeyedChange]) -> Result<(), String>;

    /// The restore is complete: the local store reflects the changelog
    /// below `next_offset`, and this instance owns `partition` as of
    /// `epoch` (its claim).
    fn restored(&self, partition: i32, epoch: i64, next_offset: i64) -> Result<(), String>;

    /// Applies `batch` (all from `partition`): one outcome per event, the
    /// state's changes (one per key), and this batch's serial, which
    /// [`checkpointed`](Self::checkpointed) hands back.
    fn accept_partition<'a>(
        &'a self,
        partition: i32,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Accepted>;

    /// The changes of every batch up to `serial` are in the changelog,
    /// which the local store now reflects below `next_offset` (`None`:
    /// another writer's records came between, the offset is unknown).
    fn checkpointed(&self, partition: i32, serial: u64, next_offset: Option<i64>);

    /// The ownership of `epoch` ended: the partition's effects stop at
    /// once (alerts are no longer refreshed or resolved from here). A
    /// later epoch's ownership (the partition came back before an aborted
    /// worker was dropped) stands.
    fn revoked(&self, partition: i32, epoch: i64);

    /// The partition is being handed over (ownership of `epoch`): its
    /// effects stop, and what is under way finishes, before the
    /// hand-over's last checkpoint collects [`pending`](Self::pending).
    fn releasing(&self, partition: i32, epoch: i64) -> BoxFuture<'_, ()> {
        self.revoked(partition, epoch);
        Box::pin(async {})
    }

    /// Changes made outside a batch (notifications sent) since the last
    /// call, to write with the partition's next checkpoint, with the
    /// serial of the last batch already checkpointed (never that of a
    /// batch applied but left unfinished); `None` when there are none.
    fn pending(&self, partition: i32) -> Option<(Vec<KeyedChange>, u64)> {
        let _ = partition;
        None
    }
}

/// What [`PartitionSink::accept_partition`] did.
#[derive(Debug, Default)]
pub struct Accepted {
    /// One per event, in order.
    pub outcomes: Vec<Outcome>,
    /// The partition state's changes, one per key.
    pub changes: Vec<KeyedChange>,
    /// The batch's serial (see [`PartitionSink::checkpointed`]).
    pub serial: u64,
}

/// A destination for routed events.
pub trait Sink: Send + Sync {
    /// The configured name (metrics, logs, dead-letter headers).
    fn name(&self) -> &str;

    /// Offers a batch; answers one outcome per event, in order.
    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>>;

    /// Whether the sink reports each effect as it happens through
    /// [`accept_tracked`](Self::accept_tracked). The pipeline then records
    /// each one in the partition's state and never offers an event again
    /// to a sink that already applied it, on this host or another.
    fn tracks_effects(&self) -> bool {
        false
    }

    /// [`accept`](Self::accept), calling `applied` for each event as soon
    /// as it is applied, and waiting for it before the request's slot is
    /// given to another event, so that what is in flight at a crash is
    /// all that can be repeated.
    fn accept_tracked<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
        applied: &'a dyn Applied,
    ) -> BoxFuture<'a, Vec<Outcome>> {
        let _ = applied;
        self.accept(batch)
    }

    /// The sink's partition state, if it keeps any (see
    /// [`PartitionSink`]). The pipeline then calls
    /// [`PartitionSink::accept_partition`] instead of
    /// [`accept`](Self::accept) when it runs with partition state.
    fn partition_state(&self) -> Option<&dyn PartitionSink> {
        None
    }

    /// The live occupancy the sink keeps, devices per (venue, zone) in
    /// the partitions this instance owns, if it keeps any (the alerting
    /// sink). Served read-only at `/state/occupancy`.
    fn occupancy(&self) -> Option<Result<Occupancy, String>> {
        None
    }

    /// Called once at shutdown, after every partition was handed over:
    /// sends what the sink still holds (the alerting sink's outbox),
    /// within a bound of its own.
    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The sink's retention, if it removes what it keeps once older than a
    /// configured age (see [`Retained`]). The processors then sweep it
    /// every [`Retained::sweep_interval`].
    fn retained(&self) -> Option<&dyn Retained> {
        None
    }
}

/// A store that removes rows older than its retention, in sweeps.
pub trait Retained: Send + Sync {
    /// Time between two sweeps.
    fn sweep_interval(&self) -> std::time::Duration;

    /// One sweep: removes what is older than the retention now, in bounded
    /// batches (never one statement over the whole backlog); answers the
    /// rows removed by table (or file kind). Safe when several instances
    /// sweep one store at once: each row is removed, and counted, once.
    fn sweep(&self) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, String>>;
}

/// Devices connected per (venue, zone); `""` for devices without a zone.
pub type Occupancy = std::collections::BTreeMap<(String, String), i64>;

/// Why a sink could not be built at start-up. Each text names the field
/// (`sinks.NAME.FIELD`) and never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A setting, or what it names (a template, an environment variable, a
    /// CA file), cannot be used.
    #[error("{0}")]
    Config(String),
    /// The destination (a database, a file) could not be opened or
    /// prepared: a misconfiguration or an outage at start stops the
    /// process rather than running without the sink.
    #[error("{0}")]
    Unavailable(String),
}
