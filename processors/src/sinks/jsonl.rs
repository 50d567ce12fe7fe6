//! The JSON-lines sink: one line per event in a file, once per (source,
//! event id) even across processes on one host.
//!
//! # Retention
//!
//! With `retention` set, a sweep every `retention_interval` rewrites the
//! file without the lines whose event (`occurred_at_micros`, else
//! `received_at_micros`) is older than `retention`: it holds the file's
//! lock, streams the lines it keeps into a new file beside it, `fsync`s
//! it and renames it over the old one, so a crash leaves either file
//! whole. A writer that opened the old file takes its lock, sees that the
//! path names another file now, and opens that one, reading it afresh. A
//! line that cannot be dated is kept. Events older than the retention
//! offered later (a replay) are not written (counted as refused).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// `retention` and `retention_interval`, if a retention is set.
    retention: Option<(Duration, Duration)>,
    /// Counts events older than the retention, not written.
    refused: Option<prometheus::IntCounter>,
}

#[derive(Default)]
struct JsonlState {
    /// (source, event id) of every line read or written so far.
    applied: HashSet<(String, String)>,
    /// How far the file was read.
    read_to: u64,
    /// The file read (device, inode): a sweep replaces it.
    file: (u64, u64),
}

/// Default `retention_interval`.
pub const fn default_sweep_interval() -> Duration {
    Duration::from_secs(3600)
}

/// What is wrong with a JSON-lines sink's retention settings.
pub fn retention_problems(
    at: &str,
    retention: Option<Duration>,
    interval: Duration,
) -> Vec<String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let mut p = Vec::new();
    match retention {
        Some(keep) if keep < Duration::from_secs(3600) => p.push(format!(
            "{at}.retention: must be at least 1h (got {})",
            show(keep)
        )),
        Some(keep) if i64::try_from(keep.as_micros()).is_err() => {
            p.push(format!("{at}.retention: {} is too long", show(keep)))
        }
        Some(_) => {}
        None if interval != default_sweep_interval() => p.push(format!(
            "{at}.retention_interval: set without retention (nothing is swept)"
        )),
        None => {}
    }
    if interval < Duration::from_secs(1) {
        p.push(format!(
            "{at}.retention_interval: must be at least 1s (got {})",
            show(interval)
        ));
    }
    p
}

/// The file at `path` opened and locked, the one the path names once the
/// lock is held (a sweep may have replaced the one first opened). The
/// lock is released before the file is closed (field order).
struct Locked {
    _lock: Flock,
    file: File,
}

fn lock_current(path: &Path) -> std::io::Result<Locked> {
    loop {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let lock = Flock::exclusive(&file)?;
        let (held, named) = (file.metadata()?, std::fs::metadata(path)?);
        if (held.dev(), held.ino()) == (named.dev(), named.ino()) {
            return Ok(Locked { _lock: lock, file });
        }
    }
}

/// The microseconds before which an event is past `keep`, now.
fn cutoff(keep: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    now.saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX))
}

/// A line's event time: `occurred_at_micros`, else `received_at_micros`;
/// `None` when it has neither (then it is kept).
fn line_time(line: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v["occurred_at_micros"]
        .as_i64()
        .or_else(|| v["received_at_micros"].as_i64())
}

/// Rewrites the file without the lines older than `cutoff`; answers how
/// many went. Nothing is rewritten when none is that old.
fn sweep_file(path: &Path, cutoff: i64) -> std::io::Result<u64> {
    let locked = lock_current(path)?;
    let old = |line: &[u8]| line_time(line).is_some_and(|t| t < cutoff);
    let mut reader = BufReader::new(&locked.file);
    let mut line = Vec::new();
    let mut any = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') && old(&line) {
            any = true;
            break;
        }
    }
    if !any {
        return Ok(0);
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".sweep");
    let tmp = PathBuf::from(tmp_name);
    let mut out = BufWriter::new(File::create(&tmp)?);
    let mut reader = BufReader::new(&locked.file);
    reader.seek(SeekFrom::Start(0))?;
    let mut removed = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            // Torn by a crash: the next writer would cut it.
            break;
        }
        if old(&line) {
            removed += 1;
        } else {
            out.write_all(&line)?;
        }
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
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
            retention: None,
            refused: None,
        })
    }

    /// Removes lines older than `retention`, every `interval`, counting
    /// events refused as too old in `metrics`.
    pub fn with_retention(
        mut self,
        retention: Option<Duration>,
        interval: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        self.retention = retention.map(|keep| (keep, interval));
        self.refused = Some(metrics.retention_refused.with_label_values(&[&self.name]));
        self
    }

    fn write_batch(
        path: &Path,
        state: &Mutex<JsonlState>,
        lines: Vec<((String, String), Vec<u8>)>,
    ) -> std::io::Result<()> {
        let mut state = state
            .lock()
            .map_err(|_| std::io::Error::other("jsonl sink state poisoned"))?;
        let locked = lock_current(path)?;
        let mut file = &locked.file;
        // Catch up with lines other processes appended; cut a torn tail.
        let meta = file.metadata()?;
        let len = meta.len();
        if len < state.read_to || state.file != (meta.dev(), meta.ino()) {
            // Truncated by someone, or replaced by a sweep: start over.
            *state = JsonlState::default();
            state.file = (meta.dev(), meta.ino());
        }
        file.seek(SeekFrom::Start(state.read_to))?;
        let mut pos = state.read_to;
        {
            let mut reader = BufReader::new(file);
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

impl crate::sinks::Retained for JsonlSink {
    fn sweep_interval(&self) -> Duration {
        self.retention
            .map_or(default_sweep_interval(), |(_, interval)| interval)
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, String>> {
        Box::pin(async move {
            let Some((keep, _)) = self.retention else {
                return Ok(Vec::new());
            };
            let path = self.path.clone();
            let removed = tokio::task::spawn_blocking(move || sweep_file(&path, cutoff(keep)))
                .await
                .map_err(|e| format!("sweep: {e}"))?
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            Ok(vec![("lines", removed)])
        })
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn retained(&self) -> Option<&dyn crate::sinks::Retained> {
        self.retention.map(|_| self as &dyn crate::sinks::Retained)
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut lines = Vec::with_capacity(batch.len());
            let too_old = self.retention.map(|(keep, _)| cutoff(keep));
            let mut refused = 0;
            for e in batch {
                if too_old.is_some_and(|c| e.occurred_at_micros.unwrap_or(e.received_at_micros) < c)
                {
                    refused += 1;
                    continue;
                }
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
                Ok(()) => {
                    if let Some(c) = &self.refused {
                        c.inc_by(refused);
                    }
                    vec![Outcome::Accepted; batch.len()]
                }
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

    fn dated(id: &str, micros: i64) -> Arc<Event> {
        let mut e = (*event(id)).clone();
        e.occurred_at_micros = Some(micros);
        Arc::new(e)
    }

    #[tokio::test]
    async fn a_sweep_drops_old_lines_and_a_writer_of_the_old_file_follows_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let metrics = crate::metrics::Metrics::new().unwrap();
        let day = Duration::from_secs(86_400);
        let a = JsonlSink::open("a", &path).unwrap();
        let b = JsonlSink::open("b", &path).unwrap().with_retention(
            Some(30 * day),
            Duration::from_secs(1),
            &metrics,
        );
        let now = cutoff(Duration::ZERO);
        let old = now - 40 * 86_400_000_000;
        // Written before the retention was set (by a).
        a.accept(&[dated("1", old), dated("2", now), dated("3", old + 1)])
            .await;
        assert_eq!(ids(&path), ["1", "2", "3"]);
        let removed = b.retained().unwrap().sweep().await.unwrap();
        assert_eq!(removed, vec![("lines", 2)]);
        assert_eq!(ids(&path), ["2"]);
        assert_eq!(
            b.retained().unwrap().sweep().await.unwrap(),
            vec![("lines", 0)]
        );
        // a read the old file up to its end: it finds the new one, re-reads
        // it (2 is not written twice) and appends after it.
        a.accept(&[dated("2", now), dated("4", now)]).await;
        assert_eq!(ids(&path), ["2", "4"]);
        // An event past the retention offered to b is not written.
        assert_eq!(
            b.accept(&[dated("5", old), dated("6", now)]).await,
            vec![Outcome::Accepted; 2]
        );
        assert_eq!(ids(&path), ["2", "4", "6"]);
        assert_eq!(metrics.retention_refused.with_label_values(&["b"]).get(), 1);
        assert!(!dir.path().join("out.jsonl.sweep").exists());
    }

    #[test]
    fn jsonl_retention_settings_are_checked() {
        let h = Duration::from_secs(3600);
        assert!(retention_problems("sinks.j", Some(h), h).is_empty());
        assert!(retention_problems("sinks.j", None, h).is_empty());
        assert_eq!(
            retention_problems("sinks.j", Some(Duration::from_secs(60)), Duration::ZERO),
            [
                "sinks.j.retention: must be at least 1h (got 1m)",
                "sinks.j.retention_interval: must be at least 1s (got 0s)"
            ]
        );
        assert_eq!(
            retention_problems("sinks.j", None, Duration::from_secs(5)),
            ["sinks.j.retention_interval: set without retention (nothing is swept)"]
        );
    }
}
