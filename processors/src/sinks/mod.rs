//! Sinks: where routed events go.
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
//!
//! This module ships [`LogSink`] and [`JsonlSink`]; the analytics store, the
//! CRM and alerting are their own modules.

pub mod alerting;
pub mod analytics;
pub mod crm;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

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

/// A destination for routed events.
pub trait Sink: Send + Sync {
    /// The configured name (metrics, logs, dead-letter headers).
    fn name(&self) -> &str;

    /// Offers a batch; answers one outcome per event, in order.
    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>>;
}

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

/// Appends each event as one JSON line (`{"source", "event_id", ...}`) to a
/// file, once per (source, event id), also across processes on one host:
/// each batch holds an exclusive `flock` on the file, first reads what other
/// processes appended since, then appends and `fsync`s. A line torn by a
/// crash (no trailing newline) is cut off by the next writer.
///
/// For tests (the file is the exactly-once record) and simple audits; the
/// set of applied ids is held in memory, so it is not for unbounded streams.
pub struct JsonlSink {
    name: String,
    path: PathBuf,
    state: Arc<Mutex<JsonlState>>,
}

#[derive(Default)]
struct JsonlState {
    /// (source, event id) of every line read or written so far.
    applied: HashSet<(String, String)>,
    /// How far the file was read.
    read_to: u64,
}

impl JsonlSink {
    /// Opens (creating) the file.
    pub fn open(name: &str, path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlSink {
            name: name.into(),
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(JsonlState::default())),
        })
    }

    fn write_batch(
        path: &Path,
        state: &Mutex<JsonlState>,
        lines: Vec<((String, String), Vec<u8>)>,
    ) -> std::io::Result<()> {
        let mut state = state
            .lock()
            .map_err(|_| std::io::Error::other("jsonl sink state poisoned"))?;
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let _lock = Flock::exclusive(&file)?;
        // Catch up with lines other processes appended; cut a torn tail.
        let len = file.metadata()?.len();
        if len < state.read_to {
            // Truncated by someone: start over.
            *state = JsonlState::default();
        }
        file.seek(SeekFrom::Start(state.read_to))?;
        let mut pos = state.read_to;
        {
            let mut reader = BufReader::new(&file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                if line.last() != Some(&b'\n') {
                    // Torn by a crash while its writer held the lock.
                    file.set_len(pos)?;
                    break;
                }
                pos += n as u64;
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line)
                    && let (Some(s), Some(id)) = (v["source"].as_str(), v["event_id"].as_str())
                {
                    state.applied.insert((s.to_owned(), id.to_owned()));
                }
            }
        }
        state.read_to = pos;
        let mut out = Vec::new();
        let mut added = Vec::new();
        for (key, bytes) in lines {
            if state.applied.contains(&key) || added.contains(&key) {
                continue;
            }
            out.extend_from_slice(&bytes);
            out.push(b'\n');
            added.push(key);
        }
        if !out.is_empty() {
            file.seek(SeekFrom::Start(pos))?;
            file.write_all(&out)?;
            file.sync_data()?;
            state.read_to = pos + out.len() as u64;
            state.applied.extend(added);
        }
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut lines = Vec::with_capacity(batch.len());
            for e in batch {
                match serde_json::to_vec(e.as_ref()) {
                    Ok(b) => lines.push(((e.source.clone(), e.event_id.clone()), b)),
                    Err(err) => {
                        return vec![Outcome::Retry(format!("encode: {err}")); batch.len()];
                    }
                }
            }
            let path = self.path.clone();
            let state = self.state.clone();
            let done = tokio::task::spawn_blocking(move || Self::write_batch(&path, &state, lines))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            match done {
                Ok(()) => vec![Outcome::Accepted; batch.len()],
                Err(e) => {
                    vec![Outcome::Retry(format!("{}: {e}", self.path.display())); batch.len()]
                }
            }
        })
    }
}

/// An exclusive advisory lock on a file, released on drop (and by the
/// kernel if the process dies).
/// The caller keeps the file open while the lock lives.
struct Flock(std::os::fd::RawFd);

impl Flock {
    fn exclusive(file: &File) -> std::io::Result<Self> {
        // SAFETY: flock on a valid, open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(Flock(file.as_raw_fd()))
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open (declared after the file, so
        // dropped before it); unlocking cannot fail in a way we could handle.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Arc<Event> {
        Arc::new(Event {
            source: "s".into(),
            event_id: id.into(),
            event_type: "t".into(),
            ordering_key: None,
            sequence: None,
            received_at_micros: 0,
            occurred_at_micros: None,
            late: false,
            guest_wifi: None,
            body: serde_json::json!({"id": id}),
        })
    }

    fn ids(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn jsonl_applies_each_event_once_across_two_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let a = JsonlSink::open("a", &path).unwrap();
        let b = JsonlSink::open("b", &path).unwrap();
        let batch1 = [event("1"), event("2"), event("2")];
        assert_eq!(a.accept(&batch1).await, vec![Outcome::Accepted; 3]);
        // A second writer (another process in production) re-offers 2.
        let batch2 = [event("2"), event("3")];
        assert_eq!(b.accept(&batch2).await, vec![Outcome::Accepted; 2]);
        assert_eq!(a.accept(&[event("3"), event("4")]).await.len(), 2);
        assert_eq!(ids(&path), ["1", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn jsonl_cuts_a_torn_line_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let a = JsonlSink::open("a", &path).unwrap();
        a.accept(&[event("1")]).await;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"source":"s","event_id":"2""#)
            .unwrap();
        let b = JsonlSink::open("b", &path).unwrap();
        b.accept(&[event("2")]).await;
        assert_eq!(ids(&path), ["1", "2"]);
    }
}
