//! Exact de-duplication by (source, event id) over a window of at least 72 h
//! that survives restarts, with memory bounded independently of the window.
//!
//! # Contract
//!
//! [`DedupeStore::seen`] answers whether an event was already applied;
//! [`DedupeStore::record`] is called only after every routed sink accepted a
//! batch. A crash between the two loses nothing: the offset was not committed,
//! the event is read again, is not yet "seen", and goes to the sinks again,
//! which are idempotent by (source, event id). Two copies of one event can be
//! in flight at once (neither recorded yet); the caller keeps its own small
//! in-flight set for that, and for a [`Reason::DuplicateSeq`] release compares
//! with [`Reorderer::peek`].
//!
//! [`DedupeStore::expire`] drops entries recorded more than the window before
//! `now`. `at` (in `record`) and `now` must be on the same clock. The
//! processing clock is the simple choice; using the events' ingest time for
//! both (`received_at`, and the highest one processed as `now`) keeps the
//! window right during a replay or a large consumer lag.
//!
//! # Why a file on local disk per instance, and why redb
//!
//! [`RedbDedupe`] keeps the window in one [redb](https://www.redb.org) file on
//! the instance's local disk. redb is pure Rust (no C toolchain; builds with
//! our MSRV 1.85 at 2.6), ACID with copy-on-write B-trees and checksummed
//! commits, so a `kill -9` leaves the last committed state, and it locks the
//! file so two processes cannot share one by mistake. SQLite (`rusqlite`,
//! `bundled`) would do the same job but adds a C build, and its current
//! releases need a newer compiler than our MSRV.
//!
//! The file is this instance's copy of the ledger; the truth is the
//! partition's state changelog ([`crate::state`]): every entry recorded
//! here is also written there (after the sinks accepted the batch, before
//! the offset moves), and an instance that is assigned a partition first
//! copies that partition's entries of the last window into this store. So
//! a provider's retry of an event applied on another host is found here
//! too. The record key is the ordering key (the venue id): every copy of
//! one event id lands on the same partition.
//!
//! # Layout and expiry
//!
//! Two tables, written in the same transaction:
//! - `seen`: `(source, event_id) -> at` (unix seconds): the lookup;
//! - `seen_by_time`: `(at, source, event_id) -> ()`: the same entries ordered
//!   by time, so `expire` deletes a prefix range and the matching `seen`
//!   rows, never scanning the whole window.
//!
//! Recording an event again keeps the later `at` (moving its time entry), so
//! the window extends from the last time it was applied.
//!
//! # Memory bound
//!
//! Ids live on disk, never in a full in-memory set. Memory is redb's page
//! cache ([`DedupeConfig::cache_bytes`], default 64 MiB), plus the dirty pages
//! of the one open write transaction (bounded by the batch passed to `record`,
//! or by what one `expire` call removes: call it every minute or so), plus
//! fixed overhead. None of it grows with the window or the number of ids.
//! There is no LRU in front: hot pages are in redb's cache already, and a
//! lookup is a B-tree descent through cached branch pages.
//!
//! Disk grows with the window: about two copies of the key (source + id +
//! ~20 bytes) per event, e.g. 100 events/s for 72 h with 40-byte ids is
//! ~26 million events, a few GB. Space freed by `expire` is reused by later
//! writes.
//!
//! [`MemoryDedupe`] implements the same trait in memory for tests;
//! [`BoundedDedupe`] keeps the last N ids in memory for a replay, which must
//! not touch the live store.
//!
//! [`Reason::DuplicateSeq`]: crate::pipeline::reorder::Reason::DuplicateSeq
//! [`Reorderer::peek`]: crate::pipeline::reorder::Reorderer::peek

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

/// The de-duplication store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    /// The redb file; one per instance (it is locked while open).
    pub path: PathBuf,
    /// How long an applied event id is remembered (providers retry for
    /// up to 72 h).
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// redb page cache, the store's memory bound.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
}

const fn default_window() -> Duration {
    DEFAULT_WINDOW
}
const fn default_cache_bytes() -> usize {
    64 * 1024 * 1024
}

impl DedupeSettings {
    /// Every problem, each naming its field under `dedupe`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.window < Duration::from_secs(60) {
            p.push("dedupe.window: must be at least 1m (providers retry for up to 72h)".into());
        }
        if self.path.as_os_str().is_empty() {
            p.push("dedupe.path: must not be empty".into());
        }
        p
    }
}

/// Default window: 72 hours, the providers' retry horizon.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(72 * 60 * 60);

/// One event to remember as applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeRecord<'a> {
    /// The source name (`/webhooks/{source}`): event ids are only unique
    /// per source.
    pub source: &'a str,
    /// The provider's event id; a retry re-sends the same one.
    pub event_id: &'a str,
    /// When it was applied (or received, see the module docs): the window
    /// counts from here.
    pub at: SystemTime,
}

/// Failure of a dedupe store. Treat it like a sink failure: do not commit
/// the offset, retry later.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    /// The embedded database failed (I/O, corruption, file already open).
    /// Boxed: redb's error is large and this is the cold path.
    #[error("dedupe store: {0}")]
    Store(#[source] Box<redb::Error>),
    /// A thread panicked while holding the in-memory store's lock.
    #[error("dedupe store: lock poisoned by a panic")]
    Poisoned,
}

macro_rules! from_redb_error {
    ($($error:ty),*) => {
        $(impl From<$error> for DedupeError {
            fn from(error: $error) -> Self {
                Self::Store(Box::new(error.into()))
            }
        })*
    };
}
from_redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Remembers which events were applied, for at least a window.
pub trait DedupeStore: Send + Sync {
    /// Whether (source, event id) was recorded and has not expired yet.
    fn seen(&self, source: &str, event_id: &str) -> Result<bool, DedupeError>;

    /// Remember a batch of applied events, atomically. Call it only after
    /// every routed sink accepted them.
    fn record(&self, batch: &[DedupeRecord<'_>]) -> Result<(), DedupeError>;

    /// Forget entries recorded more than the window before `now`; returns how
    /// many were removed. Entries stay at least the window (up to a second
    /// more), never less.
    fn expire(&self, now: SystemTime) -> Result<u64, DedupeError>;

    /// How many entries are stored now.
    fn len(&self) -> Result<u64, DedupeError>;

    /// Whether nothing is stored.
    fn is_empty(&self) -> Result<bool, DedupeError> {
        Ok(self.len()? == 0)
    }

    /// How long entries are kept.
    fn window(&self) -> Duration;
}

/// Unix seconds of `t`, rounded down; 0 before the epoch.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Entries stored with `at` (in whole seconds) below this are older than
/// `window` at `now`. The window is rounded up to whole seconds, so an entry
/// is never dropped early.
fn cutoff(now: SystemTime, window: Duration) -> u64 {
    let window_secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    unix_secs(now).saturating_sub(window_secs)
}

/// Settings of [`RedbDedupe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeConfig {
    /// How long an event id is remembered; at least the providers' retry
    /// horizon.
    pub window: Duration,
    /// redb page cache in bytes: the store's memory bound.
    pub cache_bytes: usize,
}

impl DedupeConfig {
    /// 72 h window, 64 MiB cache.
    pub const fn new() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `(source, event_id) -> at` in unix seconds: the lookup.
const SEEN: TableDefinition<(&str, &str), u64> = TableDefinition::new("seen");
/// `(at, source, event_id)`: the same entries in time order, for expiry.
const SEEN_BY_TIME: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("seen_by_time");

/// The persistent store: one redb file on local disk. See the module docs.
pub struct RedbDedupe {
    /// The open database; redb serialises writers and lets readers run
    /// alongside.
    db: redb::Database,
    /// How long entries are kept.
    window: Duration,
}

impl std::fmt::Debug for RedbDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbDedupe")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RedbDedupe {
    /// Open the store at `path`, creating the file if needed. Fails if
    /// another process (or another `RedbDedupe`) has it open.
    pub fn open(path: impl AsRef<Path>, config: &DedupeConfig) -> Result<Self, DedupeError> {
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SEEN)?;
        txn.open_table(SEEN_BY_TIME)?;
        txn.commit()?;
        Ok(Self {
            db,
            window: config.window,
        })
    }
}

impl DedupeStore for RedbDedupe {
    fn seen(&self, source: &str, event_id: &str) -> Result<bool, DedupeError> {
        let txn = self.db.begin_read()?;
        let seen = txn.open_table(SEEN)?;
        Ok(seen.get((source, event_id))?.is_some())
    }

    fn record(&self, batch: &[DedupeRecord<'_>]) -> Result<(), DedupeError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut seen = txn.open_table(SEEN)?;
            let mut by_time = txn.open_table(SEEN_BY_TIME)?;
            for r in batch {
                let at = unix_secs(r.at);
                let old = seen.get((r.source, r.event_id))?.map(|g| g.value());
                if old.is_some_and(|old| old >= at) {
                    continue;
                }
                if let Some(old) = old {
                    by_time.remove((old, r.source, r.event_id))?;
                }
                seen.insert((r.source, r.event_id), at)?;
                by_time.insert((at, r.source, r.event_id), ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn expire(&self, now: SystemTime) -> Result<u64, DedupeError> {
        let cutoff = cutoff(now, self.window);
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut seen = txn.open_table(SEEN)?;
            let mut by_time = txn.open_table(SEEN_BY_TIME)?;
            // Every key with `at < cutoff` sorts below (cutoff, "", "").
            for entry in by_time.extract_from_if(..(cutoff, "", ""), |_, _| true)? {
                let (key, _) = entry?;
                let (at, source, event_id) = key.value();
                // The tables move together, so `seen` holds this same `at`;
                // checking keeps a newer entry safe should they ever not.
                let current = seen.get((source, event_id))?.map(|g| g.value());
                if current == Some(at) {
                    seen.remove((source, event_id))?;
                    removed += 1;
                }
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    fn len(&self) -> Result<u64, DedupeError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SEEN)?.len()?)
    }

    fn window(&self) -> Duration {
        self.window
    }
}

/// An in-memory [`DedupeStore`] for tests: unbounded and lost on restart.
#[derive(Debug)]
pub struct MemoryDedupe {
    /// The entries, behind a lock because the trait takes `&self`.
    inner: Mutex<MemoryEntries>,
    /// How long entries are kept.
    window: Duration,
}

/// The two indexes of [`MemoryDedupe`], like the two redb tables.
#[derive(Debug, Default)]
struct MemoryEntries {
    /// (source, event id) -> at, in unix seconds: the lookup.
    by_id: HashMap<(String, String), u64>,
    /// The same entries ordered by time, for expiry.
    by_time: BTreeSet<(u64, String, String)>,
}

impl MemoryDedupe {
    /// An empty store keeping entries for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            inner: Mutex::new(MemoryEntries::default()),
            window,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemoryEntries>, DedupeError> {
        self.inner.lock().map_err(|_| DedupeError::Poisoned)
    }
}

impl DedupeStore for MemoryDedupe {
    fn seen(&self, source: &str, event_id: &str) -> Result<bool, DedupeError> {
        let inner = self.lock()?;
        Ok(inner
            .by_id
            .contains_key(&(source.to_owned(), event_id.to_owned())))
    }

    fn record(&self, batch: &[DedupeRecord<'_>]) -> Result<(), DedupeError> {
        let mut inner = self.lock()?;
        for r in batch {
            let at = unix_secs(r.at);
            let id = (r.source.to_owned(), r.event_id.to_owned());
            let old = inner.by_id.get(&id).copied();
            if old.is_some_and(|old| old >= at) {
                continue;
            }
            if let Some(old) = old {
                inner.by_time.remove(&(old, id.0.clone(), id.1.clone()));
            }
            inner.by_time.insert((at, id.0.clone(), id.1.clone()));
            inner.by_id.insert(id, at);
        }
        Ok(())
    }

    fn expire(&self, now: SystemTime) -> Result<u64, DedupeError> {
        let cutoff = cutoff(now, self.window);
        let mut inner = self.lock()?;
        let keep = inner
            .by_time
            .split_off(&(cutoff, String::new(), String::new()));
        let expired = std::mem::replace(&mut inner.by_time, keep);
        for (_, source, event_id) in &expired {
            inner.by_id.remove(&(source.clone(), event_id.clone()));
        }
        Ok(expired.len() as u64)
    }

    fn len(&self) -> Result<u64, DedupeError> {
        Ok(self.lock()?.by_id.len() as u64)
    }

    fn window(&self) -> Duration {
        self.window
    }
}

/// An in-memory [`DedupeStore`] holding at most `capacity` ids, forgetting
/// the oldest recorded first: replay's store. A replay must neither consult
/// nor fill the live store (it would drop every event as already seen), and
/// needs only to catch the duplicates close to each other in the range (a
/// provider's retries); one it forgot is absorbed by the sinks, which are
/// idempotent by (source, event id).
#[derive(Debug)]
pub struct BoundedDedupe {
    /// The ids and their recording order, behind a lock (the trait takes
    /// `&self`).
    inner: Mutex<BoundedEntries>,
    /// Most ids remembered: the memory bound (about 100 bytes per id).
    capacity: usize,
}

/// The two views of [`BoundedDedupe`].
#[derive(Debug, Default)]
struct BoundedEntries {
    /// The lookup.
    ids: std::collections::HashSet<(String, String)>,
    /// Recording order, oldest first: what is forgotten first.
    order: std::collections::VecDeque<(String, String)>,
}

impl BoundedDedupe {
    /// An empty store remembering at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(BoundedEntries::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, BoundedEntries>, DedupeError> {
        self.inner.lock().map_err(|_| DedupeError::Poisoned)
    }
}

impl DedupeStore for BoundedDedupe {
    fn seen(&self, source: &str, event_id: &str) -> Result<bool, DedupeError> {
        Ok(self
            .lock()?
            .ids
            .contains(&(source.to_owned(), event_id.to_owned())))
    }

    fn record(&self, batch: &[DedupeRecord<'_>]) -> Result<(), DedupeError> {
        let mut inner = self.lock()?;
        for r in batch {
            let id = (r.source.to_owned(), r.event_id.to_owned());
            if inner.ids.insert(id.clone()) {
                inner.order.push_back(id);
            }
            while inner.order.len() > self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.ids.remove(&old);
                }
            }
        }
        Ok(())
    }

    fn expire(&self, _now: SystemTime) -> Result<u64, DedupeError> {
        Ok(0)
    }

    fn len(&self) -> Result<u64, DedupeError> {
        Ok(self.lock()?.ids.len() as u64)
    }

    fn window(&self) -> Duration {
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_store_forgets_the_oldest_beyond_its_capacity() {
        let d = BoundedDedupe::new(2);
        let at = SystemTime::now();
        let rec = |id: &'static str| DedupeRecord {
            source: "s",
            event_id: id,
            at,
        };
        d.record(&[rec("a"), rec("b"), rec("a")]).unwrap();
        assert!(d.seen("s", "a").unwrap() && d.seen("s", "b").unwrap());
        d.record(&[rec("c")]).unwrap();
        assert!(!d.seen("s", "a").unwrap(), "the oldest is forgotten");
        assert!(d.seen("s", "b").unwrap() && d.seen("s", "c").unwrap());
        assert_eq!(d.len().unwrap(), 2);
    }

    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rec<'a>(source: &'a str, event_id: &'a str, at: SystemTime) -> DedupeRecord<'a> {
        DedupeRecord {
            source,
            event_id,
            at,
        }
    }

    fn redb_store(dir: &tempfile::TempDir, window: Duration) -> RedbDedupe {
        let config = DedupeConfig {
            window,
            cache_bytes: 1024 * 1024,
        };
        RedbDedupe::open(dir.path().join("dedupe.redb"), &config).unwrap()
    }

    /// The behaviour both stores must share.
    fn expiry_keeps_recent_and_drops_old(store: &dyn DedupeStore) {
        let now = t(1_000_000);
        let window = store.window();
        store
            .record(&[
                rec("purple", "old", now - window - HOUR),
                rec("purple", "edge", now - window),
                rec("purple", "recent", now - HOUR),
                rec("stripe", "recent", now),
            ])
            .unwrap();
        assert_eq!(store.len().unwrap(), 4);
        assert_eq!(store.expire(now).unwrap(), 1);
        assert!(!store.seen("purple", "old").unwrap());
        assert!(
            store.seen("purple", "edge").unwrap(),
            "exactly window old stays"
        );
        assert!(store.seen("purple", "recent").unwrap());
        assert!(store.seen("stripe", "recent").unwrap());
        assert_eq!(store.len().unwrap(), 3);
        // A second later, the edge entry is past the window.
        assert_eq!(store.expire(now + Duration::from_secs(1)).unwrap(), 1);
        assert!(!store.seen("purple", "edge").unwrap());
        assert_eq!(store.expire(now + Duration::from_secs(1)).unwrap(), 0);
    }

    /// Recording again extends the window from the later time.
    fn record_again_keeps_the_later_time(store: &dyn DedupeStore) {
        let window = store.window();
        store.record(&[rec("s", "e", t(100))]).unwrap();
        store.record(&[rec("s", "e", t(100) + HOUR)]).unwrap();
        store.record(&[rec("s", "e", t(100))]).unwrap(); // older: ignored
        assert_eq!(store.len().unwrap(), 1);
        assert_eq!(
            store
                .expire(t(100) + window + Duration::from_secs(1))
                .unwrap(),
            0
        );
        assert!(store.seen("s", "e").unwrap());
        assert_eq!(
            store
                .expire(t(100) + HOUR + window + Duration::from_secs(1))
                .unwrap(),
            1
        );
        assert!(store.is_empty().unwrap());
    }

    #[test]
    fn memory_expiry_keeps_recent_and_drops_old() {
        expiry_keeps_recent_and_drops_old(&MemoryDedupe::new(DEFAULT_WINDOW));
    }

    #[test]
    fn redb_expiry_keeps_recent_and_drops_old() {
        let dir = tempfile::tempdir().unwrap();
        expiry_keeps_recent_and_drops_old(&redb_store(&dir, DEFAULT_WINDOW));
    }

    #[test]
    fn memory_record_again_keeps_the_later_time() {
        record_again_keeps_the_later_time(&MemoryDedupe::new(DEFAULT_WINDOW));
    }

    #[test]
    fn redb_record_again_keeps_the_later_time() {
        let dir = tempfile::tempdir().unwrap();
        record_again_keeps_the_later_time(&redb_store(&dir, DEFAULT_WINDOW));
    }

    #[test]
    fn redb_entries_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        {
            let store = redb_store(&dir, DEFAULT_WINDOW);
            store
                .record(&[rec("purple", "evt_1", now), rec("purple", "evt_2", now)])
                .unwrap();
            assert!(!store.seen("purple", "evt_3").unwrap());
        }
        let store = redb_store(&dir, DEFAULT_WINDOW);
        assert!(store.seen("purple", "evt_1").unwrap());
        assert!(store.seen("purple", "evt_2").unwrap());
        assert!(!store.seen("purple", "evt_3").unwrap());
        assert!(
            !store.seen("github", "evt_1").unwrap(),
            "ids are per source"
        );
        assert_eq!(store.len().unwrap(), 2);
        // The time index survived too: expiry still finds the entries.
        assert_eq!(store.expire(now + DEFAULT_WINDOW + HOUR).unwrap(), 2);
        assert!(store.is_empty().unwrap());
    }

    #[test]
    fn redb_file_is_refused_to_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let _first = redb_store(&dir, DEFAULT_WINDOW);
        let second = RedbDedupe::open(dir.path().join("dedupe.redb"), &DedupeConfig::new());
        assert!(
            matches!(&second, Err(DedupeError::Store(e)) if matches!(**e, redb::Error::DatabaseAlreadyOpen)),
            "{second:?}"
        );
    }

    #[test]
    fn empty_batch_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = redb_store(&dir, DEFAULT_WINDOW);
        store.record(&[]).unwrap();
        assert!(store.is_empty().unwrap());
    }

    /// Short strings from a small alphabet, so sources and ids collide and
    /// pairs like ("a", "bc") / ("ab", "c") show up.
    fn word() -> impl Strategy<Value = String> {
        "[ab]{0,3}"
    }

    /// Recorded (source, id, at in seconds), probed pairs, and the `now` of
    /// one expiry.
    type Scenario = (Vec<(String, String, u64)>, Vec<(String, String)>, u64);

    fn scenario() -> impl Strategy<Value = Scenario> {
        (
            prop::collection::vec((word(), word(), 0u64..200), 0..40),
            prop::collection::vec((word(), word()), 0..40),
            0u64..300,
        )
    }

    /// Check a store against a plain model: after recording, `seen` is true
    /// for every recorded pair and false for every other; after expiry, true
    /// exactly for pairs whose latest `at` is within the window.
    fn check_against_model(
        store: &dyn DedupeStore,
        recorded: &[(String, String, u64)],
        probes: &[(String, String)],
        now: u64,
    ) -> Result<(), TestCaseError> {
        let batch: Vec<_> = recorded
            .iter()
            .map(|(s, e, at)| rec(s, e, t(*at)))
            .collect();
        // Two batches, to exercise updates across transactions.
        let (first, second) = batch.split_at(batch.len() / 2);
        store
            .record(first)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        store
            .record(second)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let mut latest: HashMap<(&str, &str), u64> = HashMap::new();
        for (s, e, at) in recorded {
            let slot = latest.entry((s.as_str(), e.as_str())).or_default();
            *slot = (*slot).max(*at);
        }
        let all_probes = recorded
            .iter()
            .map(|(s, e, _)| (s.as_str(), e.as_str()))
            .chain(probes.iter().map(|(s, e)| (s.as_str(), e.as_str())));
        for (s, e) in all_probes.clone() {
            let seen = store
                .seen(s, e)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(seen, latest.contains_key(&(s, e)), "({}, {})", s, e);
        }
        prop_assert_eq!(store.len().ok(), Some(latest.len() as u64));

        let window = store.window().as_secs();
        let removed = store
            .expire(t(now))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let kept = |at: u64| at + window >= now;
        let expected_removed = latest.values().filter(|&&at| !kept(at)).count() as u64;
        prop_assert_eq!(removed, expected_removed);
        for (s, e) in all_probes {
            let seen = store
                .seen(s, e)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = latest.get(&(s, e)).is_some_and(|&at| kept(at));
            prop_assert_eq!(seen, expected, "({}, {}) after expiry", s, e);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn memory_store_matches_the_model((recorded, probes, now) in scenario()) {
            let store = MemoryDedupe::new(Duration::from_secs(100));
            check_against_model(&store, &recorded, &probes, now)?;
        }
    }

    proptest! {
        // Each case creates and fsyncs a file: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn redb_store_matches_the_model((recorded, probes, now) in scenario()) {
            let dir = tempfile::tempdir().unwrap();
            let store = redb_store(&dir, Duration::from_secs(100));
            check_against_model(&store, &recorded, &probes, now)?;
        }
    }
}
