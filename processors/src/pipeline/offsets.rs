//! Per-partition offset tracking: which offset may be committed.
//!
//! The consumer reads one partition's records in increasing offset order, but
//! they finish in another order: reordering holds some back, sinks answer at
//! different speeds, duplicates are dropped at once. Kafka's committed offset
//! means "everything below this is done; start reading here", so the commit may
//! only advance over a prefix in which every record is done.
//!
//! [`PartitionOffsets`] keeps just the offsets that were tracked and are not yet
//! done (a `BTreeSet`), so memory is O(outstanding records), whatever the
//! partition's size. Offsets need not be contiguous (compaction and
//! transaction markers leave holes); a hole is never waited for, because only
//! tracked offsets count.
//!
//! Use one `PartitionOffsets` per assigned partition and drop it when the
//! partition is revoked (after committing [`PartitionOffsets::position`]).

use std::collections::BTreeSet;

/// A call to [`PartitionOffsets::track`] that breaks the consumption contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// Offsets of one partition must be tracked in strictly increasing order.
    #[error("offset {offset} tracked after offset {last}: offsets must increase")]
    NotIncreasing {
        /// The offset that was refused.
        offset: i64,
        /// The highest offset tracked so far.
        last: i64,
    },
    /// Kafka offsets lie in `0..i64::MAX`; anything else is a caller bug.
    #[error("offset {0} is outside 0..i64::MAX")]
    OutOfRange(i64),
}

/// Offset bookkeeping for one partition.
///
/// ```
/// use processors::pipeline::offsets::PartitionOffsets;
///
/// let mut p = PartitionOffsets::new();
/// for o in [10, 11, 14] {
///     p.track(o).unwrap();
/// }
/// p.done(11);
/// assert_eq!(p.committable(), None); // 10 is still in flight
/// p.done(10);
/// assert_eq!(p.committable(), Some(14)); // 14 is next to (re)read
/// p.done(14);
/// assert_eq!(p.committable(), Some(15));
/// assert_eq!(p.committable(), None); // nothing new since the last answer
/// ```
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    /// Tracked offsets not yet done; its smallest element caps the commit.
    pending: BTreeSet<i64>,
    /// Highest offset tracked so far, to enforce increasing order and to
    /// compute the commit (`last + 1`) once nothing is pending.
    last_tracked: Option<i64>,
    /// The commit position last returned by `committable` (at first, the
    /// first tracked offset), so it only answers when the position moved.
    last_returned: Option<i64>,
}

impl PartitionOffsets {
    /// An empty tracker: nothing tracked, nothing to commit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that the record at `offset` was received and is now in flight.
    ///
    /// Offsets must strictly increase between calls (gaps are fine).
    pub fn track(&mut self, offset: i64) -> Result<(), OffsetError> {
        if !(0..i64::MAX).contains(&offset) {
            return Err(OffsetError::OutOfRange(offset));
        }
        if let Some(last) = self.last_tracked {
            if offset <= last {
                return Err(OffsetError::NotIncreasing { offset, last });
            }
        }
        self.pending.insert(offset);
        self.last_tracked = Some(offset);
        // Consumption started here, so committing it would add nothing.
        self.last_returned.get_or_insert(offset);
        Ok(())
    }

    /// Record that the record at `offset` was fully handled: delivered to
    /// every routed sink, quarantined, or dropped as a duplicate. Any order.
    ///
    /// Returns `false` (and changes nothing) when `offset` is not in flight:
    /// never tracked, or already done. Callers may log that as a bug.
    pub fn done(&mut self, offset: i64) -> bool {
        self.pending.remove(&offset)
    }

    /// The offset to commit (the next one to read after a restart): the
    /// lowest tracked offset not yet done, or the last tracked offset + 1 when
    /// all are done. `None` when nothing was tracked yet.
    ///
    /// Never passes an offset that is not done; never moves backwards.
    pub fn position(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&lowest_pending) => Some(lowest_pending),
            // `track` refuses i64::MAX, so `last + 1` cannot overflow.
            None => self.last_tracked.map(|last| last + 1),
        }
    }

    /// [`position`](Self::position), but only when it moved since the last
    /// time this method returned it (or past the first tracked offset, where
    /// consumption started); `None` if there is nothing new to commit.
    ///
    /// If the commit then fails, commit [`position`](Self::position) later:
    /// it still holds the same (or a further) offset.
    pub fn committable(&mut self) -> Option<i64> {
        let position = self.position()?;
        if self.last_returned == Some(position) {
            return None;
        }
        self.last_returned = Some(position);
        Some(position)
    }

    /// How many tracked records are not done yet (for lag metrics and
    /// backpressure).
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_tracker_has_nothing_to_commit() {
        let mut p = PartitionOffsets::new();
        assert_eq!(p.position(), None);
        assert_eq!(p.committable(), None);
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn holes_are_not_waited_for() {
        let mut p = PartitionOffsets::new();
        p.track(3).unwrap();
        p.track(9).unwrap();
        assert!(p.done(3));
        // 4..=8 were never tracked (compaction): the next to read is 9.
        assert_eq!(p.committable(), Some(9));
        assert!(p.done(9));
        assert_eq!(p.committable(), Some(10));
    }

    #[test]
    fn refuses_offsets_that_do_not_increase() {
        let mut p = PartitionOffsets::new();
        p.track(5).unwrap();
        assert_eq!(
            p.track(5),
            Err(OffsetError::NotIncreasing { offset: 5, last: 5 })
        );
        assert_eq!(
            p.track(4),
            Err(OffsetError::NotIncreasing { offset: 4, last: 5 })
        );
        assert_eq!(p.track(-1), Err(OffsetError::OutOfRange(-1)));
        assert_eq!(p.track(i64::MAX), Err(OffsetError::OutOfRange(i64::MAX)));
        assert_eq!(p.outstanding(), 1);
    }

    #[test]
    fn done_of_unknown_or_repeated_offset_changes_nothing() {
        let mut p = PartitionOffsets::new();
        p.track(1).unwrap();
        p.track(2).unwrap();
        assert!(!p.done(7));
        assert!(p.done(2));
        assert!(!p.done(2));
        assert_eq!(p.position(), Some(1));
        assert_eq!(p.committable(), None, "still where consumption started");
        assert_eq!(p.outstanding(), 1);
    }

    /// Offsets in increasing order with holes, the order in which they are
    /// done (a permutation), and choices that interleave tracking and done.
    fn scenario() -> impl Strategy<Value = (Vec<i64>, Vec<usize>, Vec<bool>)> {
        (0i64..1_000, prop::collection::vec(1i64..4, 1..60)).prop_flat_map(|(start, steps)| {
            let mut offsets = Vec::with_capacity(steps.len());
            let mut next = start;
            for step in steps {
                offsets.push(next);
                next += step;
            }
            let n = offsets.len();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let choices = prop::collection::vec(any::<bool>(), 2 * n);
            (Just(offsets), order, choices)
        })
    }

    proptest! {
        /// For any tracked offsets and any completion order, the commit
        /// never passes an offset that is not done, never goes backwards,
        /// and once everything is done it is last + 1.
        #[test]
        fn commit_never_passes_an_unfinished_offset(
            (offsets, order, choices) in scenario()
        ) {
            let mut p = PartitionOffsets::new();
            let mut tracked = 0usize; // offsets[..tracked] are tracked
            let mut done = vec![false; offsets.len()];
            let mut next_done = 0usize; // index into `order`
            let mut choices = choices.into_iter();
            let mut last_commit: Option<i64> = None;

            while next_done < order.len() {
                let want_track = choices.next().unwrap_or(false);
                let can_done = order[next_done] < tracked;
                if tracked < offsets.len() && (want_track || !can_done) {
                    p.track(offsets[tracked]).unwrap();
                    tracked += 1;
                } else {
                    let i = order[next_done];
                    prop_assert!(p.done(offsets[i]));
                    done[i] = true;
                    next_done += 1;
                }

                let position = p.position();
                if let Some(c) = p.committable() {
                    prop_assert_eq!(Some(c), position);
                    // Every tracked offset below the commit is done.
                    for i in 0..tracked {
                        if offsets[i] < c {
                            prop_assert!(done[i], "commit {} passes unfinished {}", c, offsets[i]);
                        }
                    }
                    prop_assert!(c <= offsets[tracked - 1] + 1);
                    if let Some(prev) = last_commit {
                        prop_assert!(c > prev, "commit went from {} to {}", prev, c);
                    }
                    last_commit = Some(c);
                }
                let pending = (0..tracked).filter(|&i| !done[i]).count();
                prop_assert_eq!(p.outstanding(), pending);
            }

            let last = *offsets.last().unwrap();
            prop_assert_eq!(p.position(), Some(last + 1));
            prop_assert_eq!(last_commit, Some(last + 1));
            prop_assert_eq!(p.committable(), None);
            prop_assert_eq!(p.outstanding(), 0);
        }
    }
}
