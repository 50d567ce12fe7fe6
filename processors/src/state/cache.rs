//! The local cache of partition state: one redb file per instance that
//! remembers, per raw-topic partition, which changelog offset its contents
//! reflect, so a partition that comes back to this instance is restored
//! from there instead of from the changelog's start (Kafka Streams'
//! checkpoint file, kept in the store itself as KIP-1035 does, so the
//! contents and the offset are written in one transaction).
//!
//! The ledger itself lives in the dedupe store, which is a cache of the
//! changelog's ledger entries in the same sense; it only ever grows
//! towards the truth (every entry in it was applied), so it needs no
//! offset of its own.

use std::collections::HashMap;
use std::path::Path;

use redb::TableDefinition;

use super::changelog::SeqKey;

/// `partition -> (next state changelog offset, epoch or -1, input position
/// or -1, next ledger offset)`.
const META: TableDefinition<i32, (i64, i64, i64, i64)> = TableDefinition::new("partitions");
/// `(partition, source, ordering key) -> next sequence`.
const SEQUENCES: TableDefinition<(i32, &str, &str), i64> = TableDefinition::new("sequences");

/// A failure of the cache file. The caller treats it like a store failure:
/// retried, never skipped.
#[derive(Debug, thiserror::Error)]
#[error("state cache: {0}")]
pub struct CacheError(#[source] Box<redb::Error>);

macro_rules! from_redb_error {
    ($($error:ty),*) => {
        $(impl From<$error> for CacheError {
            fn from(error: $error) -> Self {
                Self(Box::new(error.into()))
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

/// Where the cache stands in the two logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    /// The state changelog offset to read from next.
    pub next_offset: i64,
    /// The epoch (claim offset) current there.
    pub epoch: Option<i64>,
    /// The input position reflected.
    pub position: Option<i64>,
    /// The ledger topic offset to read from next.
    pub ledger_next: i64,
}

/// What the cache holds for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cached {
    /// The state changelog offset to read from next (0: nothing cached).
    pub next_offset: i64,
    /// The ledger topic offset to read from next.
    pub ledger_next: i64,
    /// The epoch (claim offset) current at `next_offset`.
    pub epoch: Option<i64>,
    /// The input position reflected.
    pub position: Option<i64>,
    /// Each reorder key's next sequence.
    pub sequences: HashMap<SeqKey, i64>,
}

/// The cache file.
pub struct StateCache {
    /// The open database (redb locks the file against a second process).
    db: redb::Database,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache").finish_non_exhaustive()
    }
}

impl StateCache {
    /// Opens (or creates) the cache at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<StateCache, CacheError> {
        let db = redb::Builder::new()
            .set_cache_size(16 * 1024 * 1024)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(SEQUENCES)?;
        txn.commit()?;
        Ok(StateCache { db })
    }

    /// What is cached for `partition` (the default when nothing is).
    pub fn load(&self, partition: i32) -> Result<Cached, CacheError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some((next_offset, epoch, position, ledger_next)) =
            meta.get(partition)?.map(|g| g.value())
        else {
            return Ok(Cached::default());
        };
        let table = txn.open_table(SEQUENCES)?;
        let mut sequences = HashMap::new();
        for entry in table.range((partition, "", "")..(partition.saturating_add(1), "", ""))? {
            let (k, v) = entry?;
            let (p, source, key) = k.value();
            if p == partition {
                sequences.insert((source.to_owned(), key.to_owned()), v.value());
            }
        }
        Ok(Cached {
            next_offset,
            ledger_next,
            epoch: (epoch >= 0).then_some(epoch),
            position: (position >= 0).then_some(position),
            sequences,
        })
    }

    /// Records that the cache reflects `partition`'s logs below `at`, with
    /// these sequences changed since the last save.
    pub fn save(
        &self,
        partition: i32,
        at: &Offsets,
        sequences: &[(&SeqKey, i64)],
    ) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SEQUENCES)?;
            for ((source, key), next) in sequences {
                table.insert((partition, source.as_str(), key.as_str()), *next)?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(
                partition,
                (
                    at.next_offset,
                    at.epoch.unwrap_or(-1),
                    at.position.unwrap_or(-1),
                    at.ledger_next,
                ),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets `partition` (its cache no longer matches the changelog).
    pub fn forget(&self, partition: i32) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SEQUENCES)?;
            table.retain_in(
                (partition, "", "")..(partition.saturating_add(1), "", ""),
                |_, _| false,
            )?;
            txn.open_table(META)?.remove(partition)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(a: &str, b: &str) -> SeqKey {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn a_partition_reads_back_what_was_saved_and_nothing_of_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StateCache::open(dir.path().join("state.redb")).unwrap();
        assert_eq!(cache.load(3).unwrap(), Cached::default());
        let (v1, v2, v9) = (k("wifi", "v1"), k("wifi", "v2"), k("wifi", "v9"));
        let at = |next_offset, epoch, position, ledger_next| Offsets {
            next_offset,
            epoch,
            position,
            ledger_next,
        };
        cache
            .save(3, &at(10, Some(4), Some(100), 2), &[(&v1, 7), (&v2, 3)])
            .unwrap();
        cache.save(2, &at(5, None, None, 0), &[(&v9, 1)]).unwrap();
        cache.save(4, &at(5, None, None, 0), &[(&v9, 2)]).unwrap();
        cache
            .save(3, &at(12, Some(4), Some(104), 3), &[(&v1, 8)])
            .unwrap();
        drop(cache);
        let cache = StateCache::open(dir.path().join("state.redb")).unwrap();
        let c = cache.load(3).unwrap();
        assert_eq!(c.next_offset, 12);
        assert_eq!(c.ledger_next, 3);
        assert_eq!(c.epoch, Some(4));
        assert_eq!(c.position, Some(104));
        assert_eq!(c.sequences, HashMap::from([(v1, 8), (v2, 3)]));
        assert_eq!(cache.load(2).unwrap().position, None);
        cache.forget(3).unwrap();
        assert_eq!(cache.load(3).unwrap(), Cached::default());
        assert_eq!(cache.load(4).unwrap().sequences.len(), 1);
    }
}
