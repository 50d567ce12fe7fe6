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
}

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
