//! Partition state that follows its partition from host to host.
//!
//! # Design
//!
//! Kafka is the source of truth for the processors' state, as it is for
//! the events. Each raw-topic partition's state (what makes an effect
//! "once" and "in order") lives in a **changelog topic** co-partitioned
//! with the raw topic: raw partition `p`'s state is in changelog partition
//! `p`, so whichever instance the group assigns `p` can rebuild it. The
//! pieces, and where they come from:
//!
//! - **A changelog per state, compacted, written before the input offset
//!   is committed** (Kafka Streams' `StoreChangelogReader` and
//!   `ProcessorStateManager`): after every batch whose effects every sink
//!   accepted, the partition's worker writes what changed (the ledger
//!   entries of the events it applied, the next sequence of every reorder
//!   key that moved, every key a stateful sink changed: the alerting
//!   sink's devices, venue clocks and alerts) and waits for the brokers' acknowledgement
//!   (`acks=all`, idempotent) before it stores the consumer offset. One
//!   record per key per batch.
//! - **The input position stored with the state** (Flink's checkpoints,
//!   Kafka Connect sinks that keep their offsets in the destination): the
//!   same write carries the raw-topic offset below which everything is
//!   reflected. A restored partition starts reading there, so state and
//!   position cannot disagree; the group's committed offset is only a
//!   fallback for a partition with no state yet and what lag monitoring
//!   reads.
//! - **A local store that is a cache and knows the changelog offset it
//!   reflects** (Kafka Streams' checkpoint file; KIP-1035 keeps that
//!   offset inside the store, as [`cache::StateCache`] does, in the same
//!   transaction as the contents): a partition that comes back to an
//!   instance is restored from there, not from the changelog's start.
//! - **A sink's local store is a cache too, wiped when it may be ahead**
//!   (Kafka Streams under exactly-once wipes a store that was not closed
//!   cleanly): a [`PartitionSink`] says which changelog offset its rows
//!   of the partition reflect, or that it applied a batch the changelog
//!   never acknowledged. Unless every such sink reflects the cache's
//!   offset, the restore reads the changelog from its start, after each
//!   sink dropped its rows of the partition.
//! - **Restore before processing**: a partition's worker restores its
//!   state (the changelog from the cache's offset up to the instance's own
//!   claim, below) before it handles a record; until then the runtime
//!   holds the partition's records and pauses it, like a stalled worker.
//! - **Fencing without transactions**: tansu has none, so nothing stops an
//!   instance that lost a partition (a worker aborted at the revoke
//!   timeout, an instance that missed a rebalance) from writing on. Each
//!   new owner first appends a *claim*; the claim's own offset is the
//!   owner's epoch, carried by every record it writes after. A restore
//!   applies a record only if its epoch is at least the latest claim read
//!   before it, so a stale owner's writes after the next claim are
//!   ignored by every later restore. Epochs come from the log itself, so
//!   two claimants need no coordinator (this is Kafka's producer-epoch
//!   fencing, done by the reader).
//! - **Correct on an uncompacted changelog**: every record is an upsert or
//!   an append that reading twice leaves unchanged, so a restore may read
//!   a key's whole history (tansu may not compact) or start before the
//!   cache's offset; compaction only makes it faster.
//!
//! What is written reflects effects that happened: the ledger entry of an
//! event is written after its sinks accepted it, and counts only once the
//! batch's state records are written too (see [`changelog`]); the local
//! dedupe store learns a batch only then. A crash before that leaves the
//! batch out of the state; the next owner, or this instance restarted,
//! reads it again and the sinks see it again (their idempotency by event
//! id and the effect records cover it; a sink with partition state
//! rebuilds its store without it). Everything that was written is never
//! repeated, on any host.
//!
//! # Modules
//!
//! - [`changelog`]: the record format and [`changelog::Restore`], the
//!   pure fold that rebuilds a partition's state from its records.
//! - [`cache`]: the local redb cache with its changelog offset.
//! - this module: [`Changelog`] (the topic, implemented over Kafka in
//!   `kafka::changelog` and in memory for tests), [`StateConfig`], and
//!   [`restore`] and [`PartitionState`] (the records of each checkpoint), which the partition
//!   pipeline calls.
//!
//! # Limits
//!
//! - The partition count of the raw topic must not change while state
//!   exists: keys would move to other partitions without their state.
//!   The changelog is checked at start to have as many partitions as the
//!   raw topic.
//! - A reorder key evicted from memory (`processing.max_keys`) starts
//!   again at its next event, as before; its position stays in the
//!   changelog and the cache.

pub mod cache;
pub mod changelog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::sinks::{BoxFuture, KeyedChange, PartitionSink};
use cache::StateCache;
use changelog::{Change, Keyed, Restore, SeqKey};

/// Where the state lives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The changelog topic (compacted, as many partitions as the raw
    /// topic). Default: `<kafka.group_id>-state`, so two groups reading one
    /// raw topic keep apart. Created at start when missing; checked when
    /// present.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// The ledger topic: one record per batch of applied events, deleted
    /// by time a day past the dedupe window, as many partitions as the raw
    /// topic. Default: `<kafka.group_id>-ledger`. Created at start when
    /// missing; checked when present.
    #[serde(default)]
    pub ledger_topic: Option<String>,
    /// The local cache file (redb): a partition that returns to this
    /// instance is restored from the changelog offset it remembers.
    /// Default: beside the dedupe store and named after it
    /// (`data/dedupe.redb` gives `data/dedupe.state.redb`).
    #[serde(default)]
    pub cache_path: Option<PathBuf>,
}

impl StateConfig {
    /// The changelog topic for the consumer group `group_id`.
    pub fn changelog_topic(&self, group_id: &str) -> String {
        self.changelog_topic
            .clone()
            .unwrap_or_else(|| format!("{group_id}-state"))
    }

    /// The ledger topic for the consumer group `group_id`.
    pub fn ledger_topic(&self, group_id: &str) -> String {
        self.ledger_topic
            .clone()
            .unwrap_or_else(|| format!("{group_id}-ledger"))
    }

    /// The cache file, beside `dedupe_path` and named after it unless set.
    pub fn cache_path(&self, dedupe_path: &std::path::Path) -> PathBuf {
        self.cache_path
            .clone()
            .unwrap_or_else(|| dedupe_path.with_extension("state.redb"))
    }

    /// Every problem, each naming its field under `state`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (field, topic) in [
            ("changelog_topic", &self.changelog_topic),
            ("ledger_topic", &self.ledger_topic),
        ] {
            if let Some(t) = topic
                && !plumbing::valid_topic(t)
            {
                p.push(format!(
                    "state.{field}: {t:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        if self.changelog_topic.is_some() && self.changelog_topic == self.ledger_topic {
            p.push("state.ledger_topic: must differ from state.changelog_topic".into());
        }
        if self
            .cache_path
            .as_ref()
            .is_some_and(|c| c.as_os_str().is_empty())
        {
            p.push("state.cache_path: must not be empty".into());
        }
        p
    }
}

/// A record's key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// What a changelog read hands each record to: (offset, key, value).
pub type EachRecord<'a> = dyn FnMut(i64, &[u8], &[u8]) -> Result<(), String> + Send + 'a;

/// A changelog topic: appends to and reads from one partition at a time.
pub trait Changelog: Send + Sync {
    /// Appends `records` (key, value) to `partition`, in order, and
    /// resolves once the brokers acknowledged every one, with their
    /// offsets.
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<Vec<i64>, String>>;

    /// Reads `partition` from offset `from` through `until` (inclusive),
    /// in order, handing each record (offset, key, value) to `each`; stops
    /// at the first error `each` returns.
    fn read<'a>(
        &'a self,
        partition: i32,
        from: i64,
        until: i64,
        each: &'a mut EachRecord<'a>,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// The first offset still held in `partition` (the low watermark:
    /// below it, retention or compaction removed the records) and the
    /// offset the next record appended will get (the high watermark).
    fn bounds(&self, partition: i32) -> BoxFuture<'_, Result<(i64, i64), String>>;
}

/// What [`superseded`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// No newer claim: every record through `checked_through` is this
    /// owner's or was read and holds none.
    Own { checked_through: i64 },
    /// Another owner claimed the partition after this one.
    Superseded,
}

/// Whether another owner claimed `partition` in `changelog` after offset
/// `checked_through` (through which every record is this owner's own or
/// was read before; `in_flight` more of its records being written): a
/// broker that gave one partition to two members at once (tansu 0.6 can,
/// across generations). One high-watermark request; the records are read
/// only when others may have written since (a claim there is necessarily
/// newer than this owner's).
pub async fn superseded(
    changelog: &dyn Changelog,
    partition: i32,
    checked_through: i64,
    in_flight: usize,
) -> Result<Ownership, String> {
    let (_, next) = changelog.bounds(partition).await?;
    if next <= checked_through + 1 + in_flight as i64 {
        return Ok(Ownership::Own { checked_through });
    }
    let mut claimed = false;
    let mut each = |_offset: i64, key: &[u8], value: &[u8]| {
        if let Ok((_, changelog::Change::Claim { .. })) = changelog::Change::decode(key, value) {
            claimed = true;
        }
        Ok(())
    };
    changelog
        .read(partition, checked_through + 1, next - 1, &mut each)
        .await?;
    Ok(if claimed {
        Ownership::Superseded
    } else {
        Ownership::Own {
            checked_through: next - 1,
        }
    })
}

/// A changelog in memory, for tests and benchmarks: every partition a
/// list, the offsets its indexes. `fail_appends` makes the next appends
/// fail, as a broker that is down would.
#[derive(Default)]
pub struct MemoryChangelog {
    /// Each partition's records.
    pub partitions: Mutex<HashMap<i32, Vec<KeyValue>>>,
    /// Appends still to fail.
    pub fail_appends: std::sync::atomic::AtomicUsize,
    /// Records below this offset are gone (retention), in every partition:
    /// reads skip them, and a read with nothing left to reach fails, as
    /// the Kafka reader does when it waits for a record that will not come.
    pub deleted_below: std::sync::atomic::AtomicI64,
    /// Reads started so far (each stands for a reader a Kafka changelog
    /// would start).
    pub reads: std::sync::atomic::AtomicUsize,
}

impl MemoryChangelog {
    /// The changes of `partition`, decoded, with their writers' epochs.
    pub fn changes(&self, partition: i32) -> Vec<(i64, Change)> {
        let parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        parts
            .get(&partition)
            .map(|records| {
                records
                    .iter()
                    .filter_map(|(k, v)| Change::decode(k, v).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Changelog for MemoryChangelog {
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<Vec<i64>, String>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            if self
                .fail_appends
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("changelog unavailable (injected)".into());
            }
            let mut parts = self.partitions.lock().map_err(|_| "poisoned")?;
            let log = parts.entry(partition).or_default();
            let first = log.len() as i64;
            let n = records.len() as i64;
            log.extend(records);
            Ok((first..first + n).collect())
        })
    }

    fn read<'a>(
        &'a self,
        partition: i32,
        from: i64,
        until: i64,
        each: &'a mut EachRecord<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let gone = self
                .deleted_below
                .load(std::sync::atomic::Ordering::Relaxed);
            if from <= until && gone > until {
                return Err(format!(
                    "no record left from offset {from} through {until} (deleted below {gone})"
                ));
            }
            let from = from.max(gone);
            let records: Vec<(Vec<u8>, Vec<u8>)> = {
                let parts = self.partitions.lock().map_err(|_| "poisoned")?;
                let log = parts.get(&partition).cloned().unwrap_or_default();
                let from = from.max(0) as usize;
                let until = (until.saturating_add(1).max(0) as usize).min(log.len());
                log.get(from..until).map(<[_]>::to_vec).unwrap_or_default()
            };
            for (i, (k, v)) in records.iter().enumerate() {
                each(from.max(0) + i as i64, k, v)?;
            }
            Ok(())
        })
    }

    fn bounds(&self, partition: i32) -> BoxFuture<'_, Result<(i64, i64), String>> {
        Box::pin(async move {
            let parts = self.partitions.lock().map_err(|_| "poisoned")?;
            let end = parts.get(&partition).map_or(0, |log| log.len() as i64);
            let gone = self
                .deleted_below
                .load(std::sync::atomic::Ordering::Relaxed);
            Ok((gone.min(end), end))
        })
    }
}

/// What the partitions of one process share to keep their state.
pub struct Stores {
    /// The state changelog topic (compacted): claims, input positions,
    /// reorder sequences.
    pub changelog: Arc<dyn Changelog>,
    /// The ledger topic (deleted by time, past the dedupe window): one
    /// record per batch of applied events, and each tracked sink's effects.
    pub ledger: Arc<dyn Changelog>,
    /// The local cache, if any (without one, every restore reads the
    /// changelog from its start).
    pub cache: Option<Arc<StateCache>>,
    /// This instance's name, written in its claims (host and process id).
    pub owner: String,
}

/// Ledger entries handed to the dedupe store at once while restoring: the
/// restore's memory bound.
const RESTORE_CHUNK: usize = 10_000;

/// A restored partition: what its worker continues from.
#[derive(Debug)]
pub struct Restored {
    /// This owner's epoch (its claim's offset).
    pub epoch: i64,
    /// Where to read the raw topic from: everything below is reflected.
    pub position: Option<i64>,
    /// Each reorder key's next sequence.
    pub sequences: HashMap<SeqKey, i64>,
    /// Records applied, stale, unreadable and expired.
    pub counts: RestoreCounts,
    /// Whether the cache was used.
    pub from_cache: bool,
    /// The ledger topic's end when it was read.
    pub ledger_next: i64,
}

/// What a restore read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreCounts {
    /// Applied to the state.
    pub applied: u64,
    /// A stale owner's, ignored.
    pub stale: u64,
    /// Unreadable, ignored.
    pub unreadable: u64,
    /// Ledger entries older than the window, ignored.
    pub expired: u64,
    /// Ledger records no state record confirms (a crash between the two
    /// writes, a fenced stale owner): their events are read and applied
    /// again.
    pub unconfirmed: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Ledger entries restored: (source, event id, applied at in unix seconds).
pub type LedgerEntries = Vec<(String, String, u64)>;

/// A sink with partition state, by its name (the name its records carry).
pub type NamedSink<'a> = (&'a str, &'a dyn PartitionSink);

/// Hands restored keyed records to their sinks, grouped in runs of one
/// sink so each sink sees its own in changelog order. Records of a sink
/// no longer configured are dropped.
fn hand_keyed(sinks: &[NamedSink<'_>], partition: i32, records: Vec<Keyed>) -> Result<(), String> {
    // The sink (its index, `None`: not configured) of the current run.
    let mut current: Option<Option<usize>> = None;
    let mut run: Vec<KeyedChange> = Vec::new();
    for k in records {
        let owner = sinks.iter().position(|(name, _)| *name == k.sink);
        if current != Some(owner) {
            if let Some(Some(i)) = current {
                sinks[i].1.restore(partition, &run)?;
            }
            run.clear();
            current = Some(owner);
        }
        run.push((k.key, k.value));
    }
    if let Some(Some(i)) = current {
        sinks[i].1.restore(partition, &run)?;
    }
    Ok(())
}

/// Claims `partition` and rebuilds its state: the ledger entries of the
/// last `window` handed to `ledger` (in chunks; the dedupe store), the
/// sinks' keyed state handed to `sinks`, the sequences and the input
/// position returned. Reads the changelog from the cache's offset (its
/// start without a cache) through this claim; from its start, after each
/// sink forgot the partition, unless every sink's local store reflects
/// the same offset as the cache (Kafka Streams' rule under exactly-once: a
/// store that may hold effects the changelog does not is wiped and
/// rebuilt).
pub async fn restore(
    stores: &Stores,
    partition: i32,
    window: Duration,
    sinks: &[NamedSink<'_>],
    ledger: &mut (dyn FnMut(LedgerEntries) -> Result<(), String> + Send),
) -> Result<Restored, String> {
    let cached = match &stores.cache {
        Some(c) => c.load(partition).map_err(|e| e.to_string())?,
        None => cache::Cached::default(),
    };
    let (k, v) = Change::Claim {
        owner: stores.owner.clone(),
    }
    .encode(-1);
    let claim = *stores
        .changelog
        .append(partition, vec![(k.clone(), v.clone())])
        .await?
        .first()
        .ok_or("the changelog acknowledged no offset for the claim")?;
    let (ledger_start, ledger_end) = stores.ledger.bounds(partition).await?;
    let cached = if cached.next_offset > claim + 1 || cached.ledger_next > ledger_end {
        // The cache is ahead of the log: the topics were recreated.
        tracing::warn!(
            partition,
            cached = cached.next_offset,
            claim,
            "state cache is ahead of the changelog (recreated?): restoring from the changelog's start"
        );
        if let Some(c) = &stores.cache {
            c.forget(partition).map_err(|e| e.to_string())?;
        }
        cache::Cached::default()
    } else {
        cached
    };
    let mut sinks_follow = true;
    for (_, sink) in sinks {
        sinks_follow &= sink.cached_at(partition)? == Some(cached.next_offset);
    }
    let cached = if sinks_follow {
        cached
    } else {
        for (_, sink) in sinks {
            sink.forget(partition)?;
        }
        cache::Cached::default()
    };
    let from_cache = cached.next_offset > 0;
    let since = unix_secs(SystemTime::now()).saturating_sub(window.as_secs());
    let mut r = Restore::new(cached.epoch, cached.position, cached.sequences, since);
    let mut unreadable_logged = false;
    let mut each = |offset: i64, key: &[u8], value: &[u8]| -> Result<(), String> {
        if let Err(e) = r.apply(offset, key, value)
            && !unreadable_logged
        {
            unreadable_logged = true;
            tracing::error!(partition, offset, error = %e, "unreadable state record ignored (further ones are only counted)");
        }
        if r.applied_waiting() >= RESTORE_CHUNK {
            ledger(r.take_applied())?;
        }
        if r.keyed_waiting() >= RESTORE_CHUNK {
            hand_keyed(sinks, partition, r.take_keyed())?;
        }
        Ok(())
    };
    if cached.next_offset == claim {
        // Nothing was written since what the cache (or an empty log)
        // reflects but this claim: no reader to start.
        each(claim, &k, &v)?;
    } else {
        stores
            .changelog
            .read(partition, cached.next_offset, claim, &mut each)
            .await?;
    }
    // Ledger records past the window are deleted by retention: read only
    // what is left (a quiet partition may have nothing left at all).
    let ledger_from = cached.ledger_next.max(ledger_start);
    if ledger_end > ledger_from {
        stores
            .ledger
            .read(partition, ledger_from, ledger_end - 1, &mut each)
            .await?;
    }
    let rest = r.take_applied();
    if !rest.is_empty() {
        ledger(rest)?;
    }
    hand_keyed(sinks, partition, r.take_keyed())?;
    if r.epoch != Some(claim) {
        return Err(format!(
            "the changelog read ended before this instance's claim at offset {claim}"
        ));
    }
    if let Some(c) = &stores.cache {
        let sequences: Vec<(&SeqKey, i64)> = r.sequences.iter().map(|(k, v)| (k, *v)).collect();
        let at = cache::Offsets {
            next_offset: claim + 1,
            epoch: Some(claim),
            position: r.position,
            ledger_next: ledger_end,
        };
        c.save(partition, &at, &sequences)
            .map_err(|e| e.to_string())?;
    }
    for (_, sink) in sinks {
        sink.restored(partition, claim, claim + 1)?;
    }
    Ok(Restored {
        epoch: claim,
        position: r.position,
        ledger_next: ledger_end,
        counts: RestoreCounts {
            applied: r.records,
            stale: r.stale,
            unreadable: r.unreadable,
            expired: r.expired,
            unconfirmed: r.unconfirmed,
        },
        sequences: r.sequences,
        from_cache,
    })
}

/// One partition's state writer, after its restore.
#[derive(Debug)]
pub struct PartitionState {
    /// The raw-topic (and changelog) partition.
    partition: i32,
    /// This owner's epoch.
    epoch: i64,
    /// This owner's count of ledger records written.
    serial: u64,
    /// The state changelog and ledger offsets the cache reflects, while
    /// this owner's writes follow each other in each log; `None` once
    /// another writer's record came between (the cache is then left as it
    /// was, and the next restore reads on from there).
    cache_at: Option<(i64, i64)>,
    /// The last input position written.
    written_position: Option<i64>,
    /// The state changelog offset through which every record is this
    /// owner's own (its claim at first) or was read and holds no newer
    /// claim ([`superseded`]). It moves over this owner's writes only when
    /// they directly follow it: records of another writer between them
    /// stay to be read, since one of them may be a newer owner's claim.
    checked_through: AtomicI64,
}

/// One batch's changes, ready to write.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Events applied: (source, event id).
    pub applied: Vec<(String, String)>,
    /// When they were applied.
    pub at: Option<SystemTime>,
    /// Reorder keys that moved, with their next sequence.
    pub sequences: Vec<(SeqKey, i64)>,
    /// The input position reached.
    pub position: Option<i64>,
    /// Sinks' partition state that changed (one record per key).
    pub keyed: Vec<Keyed>,
    /// Each partition sink's serial for this batch, by sink index.
    pub sink_serials: Vec<(usize, u64)>,
}

impl PartitionState {
    /// The writer of a restored partition.
    pub fn new(partition: i32, restored: &Restored) -> PartitionState {
        PartitionState {
            partition,
            epoch: restored.epoch,
            serial: 0,
            cache_at: Some((restored.epoch + 1, restored.ledger_next)),
            written_position: restored.position,
            checked_through: AtomicI64::new(restored.epoch),
        }
    }

    /// The offset through which the changelog holds no newer claim than
    /// this owner's (see the field).
    pub fn checked_through(&self) -> i64 {
        self.checked_through.load(Ordering::Relaxed)
    }

    /// Every record through `offset` was read and holds no newer claim.
    pub fn checked(&self, offset: i64) {
        self.checked_through.fetch_max(offset, Ordering::Relaxed);
    }

    /// This owner's epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether `c` holds anything to write (a position that did not move
    /// and nothing else is nothing).
    pub fn is_empty(&self, c: &Checkpoint) -> bool {
        c.applied.is_empty()
            && c.sequences.is_empty()
            && c.keyed.is_empty()
            && (c.position.is_none() || c.position == self.written_position)
    }

    /// The ledger record of `c` (for the ledger topic), if it applied any
    /// event.
    pub fn ledger_record(&mut self, c: &Checkpoint) -> Option<(Vec<u8>, Vec<u8>)> {
        if c.applied.is_empty() {
            return None;
        }
        self.serial += 1;
        Some(
            Change::Applied {
                serial: self.serial,
                at: unix_secs(c.at.unwrap_or_else(SystemTime::now)),
                events: c.applied.clone(),
            }
            .encode(self.epoch),
        )
    }

    /// The records of `c` for the state changelog, position last.
    pub fn state_records(&self, c: &Checkpoint) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::with_capacity(c.sequences.len() + c.keyed.len() + 1);
        for k in &c.keyed {
            out.push(Change::Keyed(k.clone()).encode(self.epoch));
        }
        for ((source, key), next) in &c.sequences {
            out.push(
                Change::Sequence {
                    source: source.clone(),
                    key: key.clone(),
                    next: *next,
                }
                .encode(self.epoch),
            );
        }
        if let Some(offset) = c.position {
            out.push(
                Change::Position {
                    offset,
                    ledger_serial: Some(self.serial),
                }
                .encode(self.epoch),
            );
        }
        out
    }

    /// Records that `c` was written: its ledger record at `ledger_offsets`
    /// and its state records at `state_offsets`. The cache follows when
    /// both directly continue what it reflects. Returns the state
    /// changelog offset the cache now reflects, `None` once it stopped
    /// following (a sink's local store may follow it, never pass it).
    pub fn written(
        &mut self,
        c: &Checkpoint,
        ledger_offsets: &[i64],
        state_offsets: &[i64],
        cache: Option<&StateCache>,
    ) -> Result<Option<i64>, String> {
        if c.position.is_some() {
            self.written_position = c.position;
        }
        // This owner's records, if they directly follow what is checked,
        // are checked too; with another writer's between, what lies past
        // the checked offset stays to be read.
        if let (Some(first), Some(last)) = (state_offsets.iter().min(), state_offsets.iter().max())
        {
            let contiguous = last - first + 1 == state_offsets.len() as i64;
            if contiguous && *first <= self.checked_through() + 1 {
                self.checked(*last);
            }
        }
        let Some((next, ledger_next)) = self.cache_at else {
            return Ok(None);
        };
        let follows = |offsets: &[i64], from: i64| {
            offsets
                .iter()
                .enumerate()
                .all(|(i, o)| *o == from + i as i64)
        };
        if !follows(state_offsets, next) || !follows(ledger_offsets, ledger_next) {
            tracing::warn!(
                partition = self.partition,
                epoch = self.epoch,
                "another writer's records came between this owner's: the local cache stops here (the next restore reads on from it)"
            );
            self.cache_at = None;
            return Ok(None);
        }
        let at = cache::Offsets {
            next_offset: next + state_offsets.len() as i64,
            epoch: Some(self.epoch),
            position: self.written_position,
            ledger_next: ledger_next + ledger_offsets.len() as i64,
        };
        if let Some(cache) = cache {
            let sequences: Vec<(&SeqKey, i64)> = c.sequences.iter().map(|(k, v)| (k, *v)).collect();
            if let Err(e) = cache.save(self.partition, &at, &sequences) {
                // Missing this batch, the cache may not move past it.
                self.cache_at = None;
                return Err(e.to_string());
            }
        }
        self.cache_at = Some((at.next_offset, at.ledger_next));
        Ok(Some(at.next_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::dedupe::{DedupeRecord, DedupeStore, MemoryDedupe};

    async fn restore(
        s: &Stores,
        partition: i32,
        dedupe: &MemoryDedupe,
    ) -> Result<Restored, String> {
        let mut ledger = |entries: LedgerEntries| {
            let batch: Vec<DedupeRecord<'_>> = entries
                .iter()
                .map(|(source, event_id, at)| DedupeRecord {
                    source,
                    event_id,
                    at: UNIX_EPOCH + Duration::from_secs(*at),
                })
                .collect();
            dedupe.record(&batch).map_err(|e| e.to_string())
        };
        super::restore(s, partition, dedupe.window(), &[], &mut ledger).await
    }

    /// The state changelog and the ledger topic, in memory.
    type Logs = (Arc<MemoryChangelog>, Arc<MemoryChangelog>);

    fn logs() -> Logs {
        (Arc::default(), Arc::default())
    }

    fn stores(log: &Logs, cache: Option<Arc<StateCache>>, owner: &str) -> Stores {
        Stores {
            changelog: log.0.clone(),
            ledger: log.1.clone(),
            cache,
            owner: owner.into(),
        }
    }

    fn batch(ids: &[&str], seq: i64, position: i64) -> Checkpoint {
        Checkpoint {
            applied: ids
                .iter()
                .map(|id| ("wifi".to_string(), id.to_string()))
                .collect(),
            at: Some(SystemTime::now()),
            sequences: vec![(("wifi".into(), "v1".into()), seq)],
            position: Some(position),
            ..Checkpoint::default()
        }
    }

    async fn write(s: &Stores, state: &mut PartitionState, c: &Checkpoint) {
        let ledger = match state.ledger_record(c) {
            Some(r) => s.ledger.append(0, vec![r]).await.unwrap(),
            None => Vec::new(),
        };
        let offsets = s.changelog.append(0, state.state_records(c)).await.unwrap();
        state
            .written(c, &ledger, &offsets, s.cache.as_deref())
            .expect("written");
    }

    #[tokio::test]
    async fn the_next_owner_on_another_host_restores_ledger_sequences_and_position() {
        let log = logs();
        // Host A: restores nothing, applies two batches.
        let a = stores(&log, None, "a");
        let dedupe_a = MemoryDedupe::new(Duration::from_secs(3600));
        let r = restore(&a, 0, &dedupe_a).await.unwrap();
        assert_eq!((r.position, r.sequences.len()), (None, 0));
        let mut state = PartitionState::new(0, &r);
        write(&a, &mut state, &batch(&["e1", "e2"], 3, 10)).await;
        write(&a, &mut state, &batch(&["e3"], 4, 11)).await;
        // Host B: its own, empty, dedupe store.
        let b = stores(&log, None, "b");
        let dedupe_b = MemoryDedupe::new(Duration::from_secs(3600));
        let r = restore(&b, 0, &dedupe_b).await.unwrap();
        assert_eq!(r.position, Some(11));
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 4);
        for id in ["e1", "e2", "e3"] {
            assert!(dedupe_b.seen("wifi", id).unwrap(), "{id}");
        }
        assert_eq!(r.counts.stale, 0);
        // A, not knowing it lost the partition, writes on: B's next
        // restore (say after a restart) ignores its sequence and position,
        // and so its ledger record, which no state of A's confirms: B
        // reads that event again and applies it (the sinks' idempotency
        // and effect records cover what A did).
        write(&a, &mut state, &batch(&["zombie"], 99, 50)).await;
        let dedupe_c = MemoryDedupe::new(Duration::from_secs(3600));
        let r = restore(&b, 0, &dedupe_c).await.unwrap();
        assert_eq!(r.position, Some(11));
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 4);
        assert!(!dedupe_c.seen("wifi", "zombie").unwrap());
        assert_eq!((r.counts.stale, r.counts.unconfirmed), (2, 1));
    }

    #[tokio::test]
    async fn a_partition_whose_ledger_records_all_expired_restores_without_reading_them() {
        let log = logs();
        let a = stores(&log, None, "a");
        let dedupe = MemoryDedupe::new(Duration::from_secs(3600));
        let mut state = PartitionState::new(0, &restore(&a, 0, &dedupe).await.unwrap());
        write(&a, &mut state, &batch(&["old"], 3, 10)).await;
        write(&a, &mut state, &batch(&["older"], 4, 11)).await;
        // A quiet partition: retention deleted every ledger record.
        log.1
            .deleted_below
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let b = stores(&log, None, "b");
        let fresh = MemoryDedupe::new(Duration::from_secs(3600));
        let r = restore(&b, 0, &fresh).await.expect("restored");
        assert_eq!(r.position, Some(11));
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 4);
        assert!(
            !fresh.seen("wifi", "old").unwrap(),
            "expired with its record"
        );
    }

    #[tokio::test]
    async fn a_partition_back_on_its_host_reads_only_what_came_after_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(StateCache::open(dir.path().join("s.redb")).unwrap());
        let log = logs();
        let a = stores(&log, Some(cache.clone()), "a");
        let dedupe_a = MemoryDedupe::new(Duration::from_secs(3600));
        let mut state = PartitionState::new(0, &restore(&a, 0, &dedupe_a).await.unwrap());
        for i in 0..5 {
            write(&a, &mut state, &batch(&["x"], i, i)).await;
        }
        // B owns it for one batch.
        let b = stores(&log, None, "b");
        let dedupe_b = MemoryDedupe::new(Duration::from_secs(3600));
        let mut state_b = PartitionState::new(0, &restore(&b, 0, &dedupe_b).await.unwrap());
        write(&b, &mut state_b, &batch(&["from-b"], 7, 20)).await;
        // Back on A: only B's claim, B's batch and A's new claim are read.
        let r = restore(&a, 0, &dedupe_a).await.unwrap();
        assert!(r.from_cache);
        assert_eq!(r.counts.applied, 1 + 3 + 1, "{:?}", r.counts);
        assert_eq!(r.position, Some(20));
        assert!(dedupe_a.seen("wifi", "from-b").unwrap());
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 7);
    }

    #[tokio::test]
    async fn a_partition_with_nothing_new_but_its_claim_is_restored_without_a_reader() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(StateCache::open(dir.path().join("s.redb")).unwrap());
        let log = logs();
        let a = stores(&log, Some(cache.clone()), "a");
        let dedupe = MemoryDedupe::new(Duration::from_secs(3600));
        // A new partition: its changelog holds only this claim.
        let r = restore(&a, 0, &dedupe).await.unwrap();
        assert_eq!(log.0.reads.load(Relaxed), 0, "no reader for an empty log");
        assert_eq!((r.epoch, r.position), (0, None));
        let mut state = PartitionState::new(0, &r);
        write(&a, &mut state, &batch(&["e1"], 3, 10)).await;
        // Back on the same host with nothing written since: the cache is
        // the state, the claim the only new record.
        let r = restore(&a, 0, &dedupe).await.unwrap();
        assert_eq!(
            log.0.reads.load(Relaxed),
            0,
            "no reader past a current cache"
        );
        assert!(r.from_cache);
        assert_eq!(r.position, Some(10));
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 3);
        assert_eq!(
            r.epoch, 3,
            "the claim at offset 3 (claim, sequence, position)"
        );
        // Another owner wrote meanwhile: that is read.
        let b = stores(&log, None, "b");
        let mut state_b = PartitionState::new(
            0,
            &restore(&b, 0, &MemoryDedupe::new(Duration::from_secs(3600)))
                .await
                .unwrap(),
        );
        write(&b, &mut state_b, &batch(&["b1"], 4, 11)).await;
        let r = restore(&a, 0, &dedupe).await.unwrap();
        assert!(log.0.reads.load(Relaxed) >= 2, "B's and A's restores read");
        assert_eq!(r.position, Some(11));
    }

    #[tokio::test]
    async fn a_cache_that_saw_another_writer_between_its_records_is_not_trusted_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(StateCache::open(dir.path().join("s.redb")).unwrap());
        let log = logs();
        let a = stores(&log, Some(cache.clone()), "a");
        let dedupe = MemoryDedupe::new(Duration::from_secs(3600));
        let mut stale = PartitionState::new(0, &restore(&a, 0, &dedupe).await.unwrap());
        write(&a, &mut stale, &batch(&["a1"], 2, 5)).await;
        // B claims and writes; A (stale) writes after it.
        let b = stores(&log, None, "b");
        let mut state_b = PartitionState::new(
            0,
            &restore(&b, 0, &MemoryDedupe::new(Duration::from_secs(3600)))
                .await
                .unwrap(),
        );
        write(&b, &mut state_b, &batch(&["b1"], 3, 6)).await;
        write(&a, &mut stale, &batch(&["a-stale"], 9, 9)).await;
        // A restores later: B's writes count, its own stale one does not.
        let fresh = MemoryDedupe::new(Duration::from_secs(3600));
        let r = restore(&a, 0, &fresh).await.unwrap();
        assert_eq!(r.position, Some(6));
        assert_eq!(r.sequences[&("wifi".to_string(), "v1".to_string())], 3);
        assert!(fresh.seen("wifi", "b1").unwrap());
        assert!(
            !fresh.seen("wifi", "a-stale").unwrap(),
            "a stale owner's batch, its state fenced: applied again"
        );
    }
}
