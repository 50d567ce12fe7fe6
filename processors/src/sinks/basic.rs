//! The sinks without a destination of their own: [`LogSink`] (a line per
//! event, for a first look and demos), [`NullSink`] (benchmarks) and
//! [`MemorySink`] (tests of the runtime).

use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink};

/// Logs each event as one line at `info`, target `sink`.
pub struct LogSink {
    name: String,
}

impl LogSink {
    /// A log sink.
    pub fn new(name: &str) -> Self {
        LogSink { name: name.into() }
    }
}

impl Sink for LogSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            for e in batch {
                tracing::info!(
                    target: "sink",
                    sink = %self.name,
                    source = %e.source,
                    event_id = e.event_id.as_str(),
                    event_type = e.event_type.as_str(),
                    key = e.ordering_key.as_deref().unwrap_or(""),
                    sequence = e.sequence,
                    late = e.late,
                    "event"
                );
            }
            vec![Outcome::Accepted; batch.len()]
        })
    }
}

/// Accepts every event and does nothing: for benchmarks, and to measure
/// the pipeline without a destination.
pub struct NullSink {
    name: String,
}

impl NullSink {
    /// A null sink.
    pub fn new(name: &str) -> Self {
        NullSink { name: name.into() }
    }
}

impl Sink for NullSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move { vec![Outcome::Accepted; batch.len()] })
    }
}

/// A sink for tests of the runtime: records what it accepted, in order,
/// and can be told to answer retry or reject.
#[derive(Default)]
pub struct MemorySink {
    name: String,
    /// Every accepted event, in order (duplicates included).
    pub accepted: Mutex<Vec<Arc<Event>>>,
    /// Outcome forced for the next calls (None: accept).
    pub force: Mutex<Option<Outcome>>,
}

impl MemorySink {
    /// An accepting sink.
    pub fn new(name: &str) -> Self {
        MemorySink {
            name: name.into(),
            ..Default::default()
        }
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let forced = self.force.lock().map(|f| f.clone()).unwrap_or(None);
            if let Some(o) = forced {
                return vec![o; batch.len()];
            }
            if let Ok(mut a) = self.accepted.lock() {
                a.extend(batch.iter().cloned());
            }
            vec![Outcome::Accepted; batch.len()]
        })
    }
}
