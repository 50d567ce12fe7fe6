//! The JSON-lines sink: one line per event in a file, once per (source,
//! event id) even across processes on one host.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};
use crate::sinks::util::Flock;

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
    /// Opens (creating) the file and its folder.
    pub fn open(name: &str, path: &Path) -> Result<Self, SinkError> {
        let unavailable = |e: std::io::Error| {
            SinkError::Unavailable(format!("sinks.{name}.path: {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(unavailable)?;
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
