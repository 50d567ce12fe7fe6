//! Per ordering key, release items in sequence order.
//!
//! Providers deliver out of order; downstream wants each key's events (for the
//! guest-WiFi platform: each venue's) in `sequence` order. [`Reorderer`] holds
//! an item whose predecessors are missing and releases it once they arrive, or
//! once it has waited [`ReorderConfig::gap_timeout`], skipping the missing
//! sequence numbers ("a gap"). An item whose slot was already passed is
//! released at once and flagged late. Every pushed item comes out exactly
//! once, each with a [`Reason`].
//!
//! - A key's first item (or the first after the key was evicted) sets where
//!   that key starts: it is released at once and the key then expects
//!   `seq + 1`.
//! - A key is reset when an item's sequence is more than
//!   [`ReorderConfig::max_sequence_jump`] ahead of the key's highest waiting
//!   item (or, with nothing waiting, of its next expected sequence; a
//!   provider bug, a far-ahead test event) or that far behind its next
//!   expected sequence (a provider counter reset): what the key had waiting is released first, in
//!   sequence order with the missing numbers before each skipped
//!   ([`Reason::Flushed`]), then the item itself ([`Reason::Reset`]), and the
//!   key expects `seq + 1` from then on, as if it were new. So one bad
//!   sequence costs at most two resets (there and back), never the key's
//!   later events. Within `max_sequence_jump` behind, an item is late as
//!   before; nothing here can tell a counter reset from an item that late.
//! - Time is passed in (`now`), never read from a clock here, so tests are
//!   deterministic and the caller picks the clock (the live pipeline's stops
//!   while its partition stalls on retries; replay uses record timestamps). `now` should not go backwards; if it does nothing is lost,
//!   but timeouts stretch.
//! - Timeouts are per item: no item waits longer than the gap timeout. When the
//!   oldest waiting item of a key expires, everything of that key up to it is
//!   released and the missing numbers before each are skipped.
//! - Memory is bounded: at most `max_buffered_per_key` items wait per key and
//!   `max_buffered_total` in all (hitting a bound releases the key's lowest
//!   waiting item early, counted as forced); idle keys (nothing buffered) are
//!   evicted least-recently-used first beyond `max_keys`. Keys with buffered
//!   items are never evicted, so the key count stays at most
//!   `max_keys + max_buffered_total`.
//! - Items without a sequence bypass the buffer ([`Reason::Unsequenced`]).
//!
//! Use one `Reorderer` per partition (an ordering key always maps to one
//! partition), push each decoded record, call [`Reorderer::tick`] on a timer
//! (or at [`Reorderer::next_deadline`]), and [`Reorderer::drain`] when the
//! partition is revoked or the process stops.

use std::collections::{BTreeMap, HashMap, btree_map};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Limits of a [`Reorderer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReorderConfig {
    /// How long an item waits for missing predecessors before they are
    /// skipped; bounds the latency reordering adds.
    pub gap_timeout: Duration,
    /// Most items waiting for one key, so one broken key cannot take the
    /// whole buffer.
    pub max_buffered_per_key: usize,
    /// Most items waiting across all keys: the memory bound of the buffer.
    pub max_buffered_total: usize,
    /// Most idle keys whose next expected sequence is remembered; the bound
    /// on per-key state when keys come and go.
    pub max_keys: usize,
    /// Farthest an item's sequence may be from its key's next expected
    /// sequence, ahead or behind, before the key is reset instead (see
    /// [`Reason::Reset`]), so one bad sequence cannot make the key's later
    /// items late for ever.
    pub max_sequence_jump: u64,
}

impl ReorderConfig {
    /// Default gap timeout: 30 seconds.
    pub const DEFAULT_GAP_TIMEOUT: Duration = Duration::from_secs(30);

    /// Default [`max_sequence_jump`](Self::max_sequence_jump): ten times the
    /// default per-key buffer, far beyond any reordering that buffer can
    /// mend.
    pub const DEFAULT_MAX_SEQUENCE_JUMP: u64 = 10_000;

    /// The defaults: 30 s gap timeout, 1,000 items per key, 100,000 in all,
    /// 100,000 remembered keys, keys reset by a jump of over 10,000.
    pub const fn new() -> Self {
        Self {
            gap_timeout: Self::DEFAULT_GAP_TIMEOUT,
            max_buffered_per_key: 1_000,
            max_buffered_total: 100_000,
            max_keys: 100_000,
            max_sequence_jump: Self::DEFAULT_MAX_SEQUENCE_JUMP,
        }
    }
}

impl Default for ReorderConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Which buffer bound forced an item out early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`ReorderConfig::max_buffered_per_key`].
    PerKey,
    /// [`ReorderConfig::max_buffered_total`].
    Total,
}

/// Which way a sequence jumped when it reset its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    /// More than `max_sequence_jump` numbers ahead of the expected one.
    Forward,
    /// More than `max_sequence_jump` numbers behind the expected one.
    Backward,
}

impl Jump {
    /// The metric label and log field for a reset by this jump.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Forward => "jump_forward",
            Self::Backward => "jump_backward",
        }
    }
}

/// Why an item was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The key's next expected sequence, or the key's first item.
    InOrder,
    /// Its wait reached the gap timeout; `skipped` missing sequence numbers
    /// right before it were given up on.
    AfterGap {
        /// How many sequence numbers were skipped (at least 1).
        skipped: u64,
    },
    /// Released before its wait ended because a buffer bound was hit;
    /// `skipped` missing sequence numbers right before it were given up on.
    Forced {
        /// How many sequence numbers were skipped (at least 1).
        skipped: u64,
        /// The bound that was hit.
        bound: Bound,
    },
    /// Released by [`Reorderer::drain`]; `skipped` missing sequence numbers
    /// right before it were given up on (0 if none).
    Drained {
        /// How many sequence numbers were skipped.
        skipped: u64,
    },
    /// Its slot already passed: `seq` is below the key's next expected
    /// sequence (`expected`). Analytics records it flagged; live state
    /// ignores it. A re-delivery of an already released item also lands
    /// here: de-duplication by event id decides.
    Late {
        /// The key's next expected sequence when it arrived.
        expected: i64,
    },
    /// Another item with the same sequence is already waiting for this key;
    /// that one is kept and stays buffered (see [`Reorderer::peek`]), this
    /// one is released so de-duplication by event id decides.
    DuplicateSeq,
    /// Its sequence was more than [`ReorderConfig::max_sequence_jump`] away
    /// from the key's next expected sequence (`expected`): the key was reset
    /// and starts again at this item, released at once, like a new key's
    /// first item.
    Reset {
        /// The key's next expected sequence before the reset.
        expected: i64,
        /// Which way the sequence jumped.
        jump: Jump,
    },
    /// It was waiting when its key was reset: released (right before the
    /// item that reset the key) in sequence order; `skipped` missing
    /// sequence numbers right before it were given up on (0 if none).
    Flushed {
        /// How many sequence numbers were skipped.
        skipped: u64,
    },
    /// Pushed without a sequence: bypassed the buffer.
    Unsequenced,
}

impl Reason {
    /// True for releases that follow the key's sequence order (in order,
    /// after a gap, forced, drained, flushed, and the reset that starts the
    /// key again): per key their sequences strictly increase from one
    /// [`Reason::Reset`] to the next, as long as the key is not evicted in
    /// between.
    pub const fn is_ordered(&self) -> bool {
        matches!(
            self,
            Self::InOrder
                | Self::AfterGap { .. }
                | Self::Forced { .. }
                | Self::Drained { .. }
                | Self::Reset { .. }
                | Self::Flushed { .. }
        )
    }
}

/// An item leaving the reorderer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<T, K = String> {
    /// The ordering key it was pushed with, so callers can route per key.
    pub key: K,
    /// The sequence it was pushed with (`None` for unsequenced items).
    pub seq: Option<i64>,
    /// The item as pushed.
    pub item: T,
    /// Why it left now; drives late-event policy and metrics.
    pub reason: Reason,
}

/// Cumulative counters (monotonic, ready to export as `_total` metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Gap timeouts: releases with [`Reason::AfterGap`].
    pub gaps: u64,
    /// Sequence numbers given up on, by timeout, bound or drain.
    pub skipped: u64,
    /// Releases with [`Reason::Late`].
    pub late: u64,
    /// Releases forced by [`ReorderConfig::max_buffered_per_key`].
    pub forced_per_key: u64,
    /// Releases forced by [`ReorderConfig::max_buffered_total`].
    pub forced_total: u64,
    /// Releases with [`Reason::DuplicateSeq`].
    pub duplicate_seq: u64,
    /// Releases with [`Reason::Unsequenced`].
    pub unsequenced: u64,
    /// Releases with [`Reason::Drained`].
    pub drained: u64,
    /// Keys reset by a sequence too far ahead ([`Jump::Forward`]).
    pub resets_forward: u64,
    /// Keys reset by a sequence too far behind ([`Jump::Backward`]).
    pub resets_backward: u64,
    /// Releases with [`Reason::Flushed`].
    pub flushed: u64,
    /// Idle keys forgotten because of [`ReorderConfig::max_keys`].
    pub evicted_keys: u64,
}

/// Reorders items per key by sequence. `T` is the item (e.g. a decoded
/// event with its offset), `K` the ordering key.
#[derive(Debug)]
pub struct Reorderer<T, K = String> {
    /// Limits and the gap timeout.
    config: ReorderConfig,
    /// State of every remembered key.
    keys: HashMap<K, KeyState<T>>,
    /// Buffer-wide bookkeeping, apart from `keys` so both can be borrowed.
    shared: Shared<K>,
}

/// One key's state.
#[derive(Debug)]
struct KeyState<T> {
    /// The next sequence to release in order; every buffered seq is above it.
    next: i64,
    /// Items waiting for their predecessors, by sequence.
    buffer: BTreeMap<i64, Waiting<T>>,
    /// Tick of the last push for this key, its place in the idle LRU.
    last_used: u64,
}

/// A buffered item.
#[derive(Debug)]
struct Waiting<T> {
    /// The item as pushed.
    item: T,
    /// Its entry in `Shared::waiting_since`, to remove it on release.
    since: (Instant, u64),
}

/// Bookkeeping across keys.
#[derive(Debug)]
struct Shared<K> {
    /// Every buffered item by (arrival, serial): the first entry is the next
    /// to time out, and the oldest item when the total bound is hit.
    waiting_since: BTreeMap<(Instant, u64), (K, i64)>,
    /// Idle keys (nothing buffered) by last use: eviction pops the first.
    idle: BTreeMap<u64, K>,
    /// Source of unique serials for `waiting_since` and `last_used`.
    serial: u64,
    /// Items buffered now, across keys.
    buffered: usize,
    /// Counters.
    stats: ReorderStats,
}

impl<T, K: Hash + Eq + Clone> Reorderer<T, K> {
    /// An empty reorderer.
    pub fn new(config: ReorderConfig) -> Self {
        Self {
            config,
            keys: HashMap::new(),
            shared: Shared {
                waiting_since: BTreeMap::new(),
                idle: BTreeMap::new(),
                serial: 0,
                buffered: 0,
                stats: ReorderStats::default(),
            },
        }
    }

    /// Push an item for `key` with its sequence (`None`: no sequence, it
    /// bypasses the buffer). Returns what can be released now, including
    /// items of other keys whose gap timeout expired by `now`.
    pub fn push(&mut self, key: K, seq: Option<i64>, item: T, now: Instant) -> Vec<Released<T, K>> {
        self.push_with(key, seq, item, now, |_| {})
    }

    /// [`push`](Self::push), calling `waits` on the item if, and only if,
    /// it goes into the buffer to wait for a missing sequence: the caller
    /// can shrink what it holds while it waits.
    pub fn push_with(
        &mut self,
        key: K,
        seq: Option<i64>,
        mut item: T,
        now: Instant,
        waits: impl FnOnce(&mut T),
    ) -> Vec<Released<T, K>> {
        let mut out = self.tick(now);
        let Some(seq) = seq else {
            self.shared.stats.unsequenced += 1;
            out.push(Released {
                key,
                seq: None,
                item,
                reason: Reason::Unsequenced,
            });
            return out;
        };
        let shared = &mut self.shared;
        shared.serial += 1;
        let tick = shared.serial;

        match self.keys.get_mut(&key) {
            None => {
                // A new (or evicted) key starts at its first item.
                self.keys.insert(
                    key.clone(),
                    KeyState {
                        next: seq.saturating_add(1),
                        buffer: BTreeMap::new(),
                        last_used: tick,
                    },
                );
                shared.idle.insert(tick, key.clone());
                out.push(Released {
                    key,
                    seq: Some(seq),
                    item,
                    reason: Reason::InOrder,
                });
            }
            Some(state) => {
                if state.buffer.is_empty() {
                    shared.idle.remove(&state.last_used);
                }
                state.last_used = tick;
                if let Some(jump) = jump_of(state, seq, self.config.max_sequence_jump) {
                    // What waited belongs to the old numbering: out first,
                    // in order, then the key starts again at this item.
                    let expected = state.next;
                    while !state.buffer.is_empty() {
                        shared.stats.flushed += 1;
                        release_head(state, &key, shared, &mut out, |skipped| Reason::Flushed {
                            skipped,
                        });
                    }
                    match jump {
                        Jump::Forward => shared.stats.resets_forward += 1,
                        Jump::Backward => shared.stats.resets_backward += 1,
                    }
                    out.push(Released {
                        key: key.clone(),
                        seq: Some(seq),
                        item,
                        reason: Reason::Reset { expected, jump },
                    });
                    state.next = seq.saturating_add(1);
                } else if seq < state.next {
                    shared.stats.late += 1;
                    out.push(Released {
                        key: key.clone(),
                        seq: Some(seq),
                        item,
                        reason: Reason::Late {
                            expected: state.next,
                        },
                    });
                } else if seq == state.next {
                    out.push(Released {
                        key: key.clone(),
                        seq: Some(seq),
                        item,
                        reason: Reason::InOrder,
                    });
                    state.next = seq.saturating_add(1);
                    release_contiguous(state, &key, shared, &mut out);
                } else {
                    match state.buffer.entry(seq) {
                        btree_map::Entry::Occupied(_) => {
                            shared.stats.duplicate_seq += 1;
                            out.push(Released {
                                key: key.clone(),
                                seq: Some(seq),
                                item,
                                reason: Reason::DuplicateSeq,
                            });
                        }
                        btree_map::Entry::Vacant(slot) => {
                            let since = (now, tick);
                            waits(&mut item);
                            slot.insert(Waiting { item, since });
                            shared.waiting_since.insert(since, (key.clone(), seq));
                            shared.buffered += 1;
                            while state.buffer.len() > self.config.max_buffered_per_key {
                                shared.stats.forced_per_key += 1;
                                release_head(state, &key, shared, &mut out, |skipped| {
                                    Reason::Forced {
                                        skipped,
                                        bound: Bound::PerKey,
                                    }
                                });
                            }
                        }
                    }
                }
                settle_idle(state, &key, shared);
            }
        }

        while self.shared.buffered > self.config.max_buffered_total {
            // Free a slot from the key whose item waited longest.
            let Some((_, (key, _))) = self.shared.waiting_since.first_key_value() else {
                break; // unreachable: `buffered > 0` means an entry exists
            };
            let key = key.clone();
            match self.keys.get_mut(&key) {
                Some(state) if !state.buffer.is_empty() => {
                    self.shared.stats.forced_total += 1;
                    release_head(state, &key, &mut self.shared, &mut out, |skipped| {
                        Reason::Forced {
                            skipped,
                            bound: Bound::Total,
                        }
                    });
                    settle_idle(state, &key, &mut self.shared);
                }
                // Unreachable (a waiting item's key has a buffer); dropping
                // the entry keeps the loop progressing regardless.
                _ => {
                    self.shared.waiting_since.pop_first();
                }
            }
        }
        self.evict_idle();
        out
    }

    /// Release what waited the gap timeout by `now` (and what it unblocks).
    pub fn tick(&mut self, now: Instant) -> Vec<Released<T, K>> {
        let mut out = Vec::new();
        while let Some(entry) = self.shared.waiting_since.first_entry() {
            if now.saturating_duration_since(entry.key().0) < self.config.gap_timeout {
                break;
            }
            // Taken out first, so the loop always progresses.
            let (key, expired_seq) = entry.remove();
            let Some(state) = self.keys.get_mut(&key) else {
                continue; // unreachable: buffered items belong to remembered keys
            };
            // Release the key's items up to the expired one, skipping the
            // missing numbers before each; then whatever follows in order.
            while state
                .buffer
                .first_key_value()
                .is_some_and(|(&head, _)| head <= expired_seq)
            {
                self.shared.stats.gaps += 1;
                release_head(state, &key, &mut self.shared, &mut out, |skipped| {
                    Reason::AfterGap { skipped }
                });
            }
            settle_idle(state, &key, &mut self.shared);
        }
        self.evict_idle();
        out
    }

    /// Release every buffered item (per key in sequence order, reason
    /// [`Reason::Drained`]) and forget all keys, e.g. when the partition is
    /// revoked or the process stops. Counters are kept.
    pub fn drain(&mut self) -> Vec<Released<T, K>> {
        let mut out = Vec::with_capacity(self.shared.buffered);
        for (key, state) in &mut self.keys {
            while !state.buffer.is_empty() {
                self.shared.stats.drained += 1;
                release_head(state, key, &mut self.shared, &mut out, |skipped| {
                    Reason::Drained { skipped }
                });
            }
        }
        self.keys.clear();
        self.shared.idle.clear();
        self.shared.waiting_since.clear();
        self.shared.buffered = 0;
        out
    }

    /// The next sequence `key` releases in order, if the key is remembered:
    /// what a partition's state records so that the partition's next owner
    /// continues the key where this one left it.
    pub fn next_expected(&self, key: &K) -> Option<i64> {
        self.keys.get(key).map(|state| state.next)
    }

    /// Remembers `key` as expecting `next`, as if the items before it had
    /// been released here: a restored position, so the key's next item is
    /// in order, waits, or is late exactly as on the previous owner. A key
    /// already remembered is left as it is (what this reorderer saw is
    /// newer than any restored state). Counts against `max_keys` like any
    /// idle key.
    pub fn resume(&mut self, key: K, next: i64) {
        if self.keys.contains_key(&key) {
            return;
        }
        self.shared.serial += 1;
        let tick = self.shared.serial;
        self.keys.insert(
            key.clone(),
            KeyState {
                next,
                buffer: BTreeMap::new(),
                last_used: tick,
            },
        );
        self.shared.idle.insert(tick, key);
        self.evict_idle();
    }

    /// Whether pushing `seq` for `key` now would reset the key, and which
    /// way it jumped. Lets a caller check that the item is not a
    /// re-delivery (e.g. against its dedupe store) before it moves the key.
    pub fn jump(&self, key: &K, seq: i64) -> Option<Jump> {
        let state = self.keys.get(key)?;
        jump_of(state, seq, self.config.max_sequence_jump)
    }

    /// The buffered item of `key` with sequence `seq`, if one waits. Use it
    /// on a [`Reason::DuplicateSeq`] release, right after the `push` that
    /// returned it, to tell a re-delivery (same event id) from a different
    /// event claiming the same sequence.
    pub fn peek(&self, key: &K, seq: i64) -> Option<&T> {
        self.keys
            .get(key)
            .and_then(|state| state.buffer.get(&seq))
            .map(|waiting| &waiting.item)
    }

    /// When the next buffered item times out: sleep until then, then
    /// [`tick`](Self::tick). `None` when nothing is buffered (or the instant
    /// is not representable).
    pub fn next_deadline(&self) -> Option<Instant> {
        let (&(since, _), _) = self.shared.waiting_since.first_key_value()?;
        since.checked_add(self.config.gap_timeout)
    }

    /// Items waiting now, across keys (a gauge).
    pub fn buffered(&self) -> usize {
        self.shared.buffered
    }

    /// Items waiting now for `key`.
    pub fn buffered_for(&self, key: &K) -> usize {
        self.keys.get(key).map_or(0, |state| state.buffer.len())
    }

    /// Keys remembered now (a gauge).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The cumulative counters.
    pub fn stats(&self) -> &ReorderStats {
        &self.shared.stats
    }

    /// The limits this reorderer runs with.
    pub fn config(&self) -> &ReorderConfig {
        &self.config
    }

    /// Panics if the internal indexes disagree (tests only).
    #[cfg(test)]
    fn assert_invariants(&self) {
        let mut buffered = 0;
        let mut idle = 0;
        for (key, state) in &self.keys {
            buffered += state.buffer.len();
            let is_idle = self.shared.idle.get(&state.last_used) == Some(key);
            assert_eq!(is_idle, state.buffer.is_empty(), "idle index out of step");
            idle += usize::from(is_idle);
            for (&seq, waiting) in &state.buffer {
                assert!(
                    seq > state.next,
                    "buffered {seq} not above next {}",
                    state.next
                );
                assert!(
                    self.shared.waiting_since.get(&waiting.since) == Some(&(key.clone(), seq)),
                    "time index out of step"
                );
            }
        }
        assert_eq!(idle, self.shared.idle.len(), "idle index has strays");
        assert_eq!(buffered, self.shared.buffered);
        assert_eq!(
            buffered,
            self.shared.waiting_since.len(),
            "stale time entries"
        );
    }

    /// Forget least-recently-used idle keys beyond `max_keys`.
    fn evict_idle(&mut self) {
        while self.keys.len() > self.config.max_keys {
            let Some((_, key)) = self.shared.idle.pop_first() else {
                break; // every remaining key has buffered items
            };
            self.keys.remove(&key);
            self.shared.stats.evicted_keys += 1;
        }
    }
}

/// Whether `seq` jumps more than `max` from where `state` is, and which
/// way: ahead of the key's highest waiting item (or, with none waiting, of
/// its next expected sequence), or behind its next expected sequence.
fn jump_of<T>(state: &KeyState<T>, seq: i64, max: u64) -> Option<Jump> {
    let top = state
        .buffer
        .last_key_value()
        .map_or(state.next, |(&last, _)| last.saturating_add(1));
    if seq > top && seq.abs_diff(top) > max {
        Some(Jump::Forward)
    } else if seq < state.next && seq.abs_diff(state.next) > max {
        Some(Jump::Backward)
    } else {
        None
    }
}

/// Release the lowest buffered item of `state`, skipping the missing numbers
/// before it (`reason(skipped)`), then whatever follows it in order.
fn release_head<T, K: Clone>(
    state: &mut KeyState<T>,
    key: &K,
    shared: &mut Shared<K>,
    out: &mut Vec<Released<T, K>>,
    reason: impl FnOnce(u64) -> Reason,
) {
    let Some((seq, waiting)) = state.buffer.pop_first() else {
        return;
    };
    shared.waiting_since.remove(&waiting.since);
    shared.buffered -= 1;
    // Every buffered seq is above `next` (equal ones are released on
    // arrival and by `release_contiguous`), so this is at least 1.
    let skipped = seq.abs_diff(state.next);
    shared.stats.skipped += skipped;
    out.push(Released {
        key: key.clone(),
        seq: Some(seq),
        item: waiting.item,
        reason: reason(skipped),
    });
    state.next = seq.saturating_add(1);
    release_contiguous(state, key, shared, out);
}

/// Release buffered items of `state` that are now next in order.
fn release_contiguous<T, K: Clone>(
    state: &mut KeyState<T>,
    key: &K,
    shared: &mut Shared<K>,
    out: &mut Vec<Released<T, K>>,
) {
    while let Some(entry) = state.buffer.first_entry() {
        if *entry.key() != state.next {
            break;
        }
        let (seq, waiting) = entry.remove_entry();
        shared.waiting_since.remove(&waiting.since);
        shared.buffered -= 1;
        out.push(Released {
            key: key.clone(),
            seq: Some(seq),
            item: waiting.item,
            reason: Reason::InOrder,
        });
        state.next = seq.saturating_add(1);
    }
}

/// Keep the idle index in step: a key is in it exactly when nothing of it is
/// buffered.
fn settle_idle<T, K: Clone>(state: &KeyState<T>, key: &K, shared: &mut Shared<K>) {
    if state.buffer.is_empty() {
        shared.idle.insert(state.last_used, key.clone());
    } else {
        shared.idle.remove(&state.last_used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const GAP: Duration = Duration::from_secs(30);

    fn config(per_key: usize, total: usize, max_keys: usize) -> ReorderConfig {
        ReorderConfig {
            gap_timeout: GAP,
            max_buffered_per_key: per_key,
            max_buffered_total: total,
            max_keys,
            max_sequence_jump: ReorderConfig::DEFAULT_MAX_SEQUENCE_JUMP,
        }
    }

    /// (seq, reason) of each release, for compact assertions.
    fn summary<T>(out: &[Released<T, &'static str>]) -> Vec<(Option<i64>, Reason)> {
        out.iter().map(|r| (r.seq, r.reason)).collect()
    }

    #[test]
    fn releases_in_order_once_the_gap_fills() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        assert_eq!(
            summary(&r.push("v1", Some(10), 'a', t0)),
            [(Some(10), Reason::InOrder)]
        );
        assert!(r.push("v1", Some(12), 'c', t0).is_empty());
        assert!(r.push("v1", Some(13), 'd', t0).is_empty());
        assert_eq!(r.buffered(), 2);
        let out = r.push("v1", Some(11), 'b', t0);
        assert_eq!(
            out.iter().map(|r| r.item).collect::<String>(),
            "bcd",
            "{out:?}"
        );
        assert!(out.iter().all(|r| r.reason == Reason::InOrder));
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_resumed_key_continues_where_the_previous_owner_left_it() {
        // The previous owner released up to 5; 7 was waiting for 6 when
        // the partition moved, so it is read again here first.
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.resume("v1", 6);
        assert_eq!(r.next_expected(&"v1"), Some(6));
        assert!(r.push("v1", Some(7), 'g', t0).is_empty(), "7 waits for 6");
        let out = r.push("v1", Some(6), 'f', t0);
        assert_eq!(out.iter().map(|r| r.item).collect::<String>(), "fg");
        assert!(out.iter().all(|r| r.reason == Reason::InOrder), "{out:?}");
        // An event the previous owner released is late here too.
        assert_eq!(
            summary(&r.push("v1", Some(5), 'e', t0)),
            [(Some(5), Reason::Late { expected: 8 })]
        );
        // What this reorderer saw is newer than a restored position.
        r.resume("v1", 2);
        assert_eq!(r.next_expected(&"v1"), Some(8));
        assert_eq!(r.next_expected(&"v2"), None);
    }

    #[test]
    fn resumed_keys_count_against_max_keys() {
        let mut r: Reorderer<(), &str> = Reorderer::new(config(10, 10, 2));
        r.resume("a", 1);
        r.resume("b", 1);
        r.resume("c", 1);
        assert_eq!(r.keys(), 2);
        assert_eq!(r.next_expected(&"a"), None, "the least recently used goes");
    }

    #[test]
    fn gap_is_skipped_after_the_timeout_and_counted() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(1), (), t0);
        assert!(r.push("v1", Some(4), (), t0).is_empty());
        assert!(
            r.push("v1", Some(5), (), t0 + Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(r.next_deadline(), Some(t0 + GAP));
        assert!(r.tick(t0 + GAP - Duration::from_millis(1)).is_empty());
        assert_eq!(
            summary(&r.tick(t0 + GAP)),
            [
                (Some(4), Reason::AfterGap { skipped: 2 }),
                (Some(5), Reason::InOrder)
            ]
        );
        assert_eq!(r.stats().gaps, 1);
        assert_eq!(r.stats().skipped, 2);
        // 2 and 3 arrive after their slot was skipped: late.
        assert_eq!(
            summary(&r.push("v1", Some(2), (), t0 + GAP)),
            [(Some(2), Reason::Late { expected: 6 })]
        );
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn no_item_waits_longer_than_the_gap_timeout() {
        // 7 waits since t0, 5 only since t0+20s: when 7 expires, 5 goes too.
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(3), (), t0);
        r.push("v1", Some(7), (), t0);
        r.push("v1", Some(5), (), t0 + Duration::from_secs(20));
        assert_eq!(
            summary(&r.tick(t0 + GAP)),
            [
                (Some(5), Reason::AfterGap { skipped: 1 }),
                (Some(7), Reason::AfterGap { skipped: 1 })
            ]
        );
        assert_eq!(r.stats().skipped, 2);
    }

    #[test]
    fn push_applies_expired_timeouts_first() {
        // No tick between: the push at t0+GAP still sees the gap expired,
        // so the result does not depend on how often tick is called.
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(1), (), t0);
        r.push("v1", Some(3), (), t0);
        assert_eq!(
            summary(&r.push("v1", Some(2), (), t0 + GAP)),
            [
                (Some(3), Reason::AfterGap { skipped: 1 }),
                (Some(2), Reason::Late { expected: 4 })
            ]
        );
    }

    #[test]
    fn duplicate_seq_keeps_the_first_and_releases_the_second() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(1), "first-1", t0);
        r.push("v1", Some(3), "first-3", t0);
        let out = r.push("v1", Some(3), "second-3", t0);
        assert_eq!(summary(&out), [(Some(3), Reason::DuplicateSeq)]);
        assert_eq!(out[0].item, "second-3");
        assert_eq!(r.peek(&"v1", 3), Some(&"first-3"));
        let out = r.push("v1", Some(2), "first-2", t0);
        assert_eq!(
            out.iter().map(|r| r.item).collect::<Vec<_>>(),
            ["first-2", "first-3"]
        );
        assert_eq!(r.stats().duplicate_seq, 1);
    }

    /// `push_with`'s hook runs on exactly the items that go into the buffer:
    /// not on one released at once (in order, late, a duplicate sequence,
    /// a new key, unsequenced), and what it changed is what comes out.
    #[test]
    fn the_wait_hook_runs_only_on_items_that_wait() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        let waits = |item: &mut String| item.make_ascii_uppercase();
        let mut push = |seq, item: &str| {
            r.push_with("v1", seq, item.to_owned(), t0, waits)
                .into_iter()
                .map(|r| r.item)
                .collect::<Vec<_>>()
        };
        assert_eq!(push(Some(1), "new-key"), ["new-key"]);
        assert_eq!(push(Some(2), "in-order"), ["in-order"]);
        assert!(push(Some(4), "waits").is_empty());
        assert_eq!(push(Some(4), "duplicate"), ["duplicate"]);
        assert_eq!(push(Some(1), "late"), ["late"]);
        assert_eq!(push(None, "unsequenced"), ["unsequenced"]);
        assert_eq!(push(Some(3), "fills"), ["fills", "WAITS"]);
    }

    #[test]
    fn unsequenced_items_bypass_the_buffer() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(1), 1, t0);
        r.push("v1", Some(5), 5, t0);
        let out = r.push("v1", None, 0, t0);
        assert_eq!(summary(&out), [(None, Reason::Unsequenced)]);
        assert_eq!(r.buffered(), 1);
        assert_eq!(r.stats().unsequenced, 1);
    }

    #[test]
    fn per_key_bound_forces_the_lowest_out() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(config(2, 100, 100));
        r.push("v1", Some(0), (), t0);
        r.push("v1", Some(5), (), t0);
        r.push("v1", Some(3), (), t0);
        assert_eq!(
            summary(&r.push("v1", Some(9), (), t0)),
            [(
                Some(3),
                Reason::Forced {
                    skipped: 2,
                    bound: Bound::PerKey
                }
            )]
        );
        assert_eq!(r.buffered_for(&"v1"), 2);
        assert_eq!(r.stats().forced_per_key, 1);
        assert_eq!(r.stats().skipped, 2);
        // 4 then unblocks 5.
        assert_eq!(
            summary(&r.push("v1", Some(4), (), t0)),
            [(Some(4), Reason::InOrder), (Some(5), Reason::InOrder)]
        );
    }

    #[test]
    fn total_bound_forces_out_the_key_that_waited_longest() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(config(10, 2, 100));
        r.push("a", Some(0), (), t0);
        r.push("b", Some(0), (), t0);
        r.push("a", Some(2), (), t0);
        r.push("b", Some(2), (), t0 + Duration::from_secs(1));
        let out = r.push("b", Some(3), (), t0 + Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "a");
        assert_eq!(
            out[0].reason,
            Reason::Forced {
                skipped: 1,
                bound: Bound::Total
            }
        );
        assert_eq!(r.buffered(), 2);
        assert_eq!(r.stats().forced_total, 1);
    }

    #[test]
    fn least_recently_used_idle_key_is_evicted_and_restarts() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(config(10, 10, 2));
        r.push("a", Some(10), (), t0);
        r.push("b", Some(20), (), t0);
        r.push("a", Some(11), (), t0); // "b" is now the least recently used
        r.push("c", Some(30), (), t0);
        assert_eq!(r.keys(), 2);
        assert_eq!(r.stats().evicted_keys, 1);
        // "a" was kept: 5 is late for it (and "c" is now the LRU key).
        assert_eq!(
            summary(&r.push("a", Some(5), (), t0)),
            [(Some(5), Reason::Late { expected: 12 })]
        );
        // "b" was forgotten: its next item starts it again, even if lower.
        assert_eq!(
            summary(&r.push("b", Some(5), (), t0)),
            [(Some(5), Reason::InOrder)]
        );
        assert_eq!(r.stats().evicted_keys, 2);
        assert_eq!(
            summary(&r.push("a", Some(12), (), t0)),
            [(Some(12), Reason::InOrder)],
            "\"c\" went, not \"a\""
        );
    }

    #[test]
    fn keys_with_buffered_items_are_not_evicted() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(config(10, 10, 1));
        r.push("a", Some(1), (), t0);
        r.push("a", Some(3), (), t0); // "a" waits for 2
        r.push("b", Some(1), (), t0);
        // "b" is the only idle key, so it goes at once; "a" waits and stays.
        assert_eq!(r.keys(), 1);
        r.push("c", Some(1), (), t0);
        assert_eq!(r.keys(), 1);
        assert_eq!(r.stats().evicted_keys, 2);
        assert_eq!(r.buffered_for(&"a"), 1);
        assert_eq!(
            summary(&r.push("a", Some(2), (), t0)),
            [(Some(2), Reason::InOrder), (Some(3), Reason::InOrder)]
        );
    }

    #[test]
    fn drain_releases_everything_in_order_and_forgets_keys() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("a", Some(1), (), t0);
        r.push("a", Some(4), (), t0);
        r.push("a", Some(5), (), t0);
        r.push("a", Some(7), (), t0);
        assert_eq!(
            summary(&r.drain()),
            [
                (Some(4), Reason::Drained { skipped: 2 }),
                (Some(5), Reason::InOrder),
                (Some(7), Reason::Drained { skipped: 1 })
            ]
        );
        assert_eq!((r.buffered(), r.keys(), r.next_deadline()), (0, 0, None));
        assert_eq!(r.stats().drained, 2);
    }

    #[test]
    fn a_far_jump_does_not_silence_the_key() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(1), (), t0);
        r.push("v1", Some(2), (), t0);
        // One event far ahead of the counter (a provider bug), then the
        // counter goes on after the gap timeout...
        r.push("v1", Some(1_000_000_000), (), t0);
        r.tick(t0 + GAP);
        // ...must not make every later event of the key late.
        let out: Vec<_> = (3..=5)
            .flat_map(|s| r.push("v1", Some(s), (), t0 + GAP))
            .collect();
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [Some(3), Some(4), Some(5)]
        );
        assert!(out.iter().all(|r| r.reason.is_ordered()), "{out:?}");
        // A counter reset: the key starts again far below where it was.
        r.push("v2", Some(50_000), (), t0);
        r.push("v2", Some(50_001), (), t0);
        let out: Vec<_> = (1..=3)
            .flat_map(|s| r.push("v2", Some(s), (), t0))
            .collect();
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
        assert!(out.iter().all(|r| r.reason.is_ordered()), "{out:?}");
    }

    #[test]
    fn a_jump_flushes_what_waited_then_starts_the_key_again() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig {
            max_sequence_jump: 100,
            ..ReorderConfig::default()
        });
        r.push("v1", Some(1), (), t0);
        r.push("v1", Some(3), (), t0);
        r.push("v1", Some(4), (), t0);
        // 2 + 100 is still reordering: it waits. So is 102 + 1 + 100:
        // a jump counts from the highest waiting item.
        assert!(r.push("v1", Some(102), (), t0).is_empty());
        assert_eq!(r.jump(&"v1", 203), None);
        assert_eq!(
            summary(&r.push("v1", Some(204), (), t0)),
            [
                (Some(3), Reason::Flushed { skipped: 1 }),
                (Some(4), Reason::InOrder),
                (Some(102), Reason::Flushed { skipped: 97 }),
                (
                    Some(204),
                    Reason::Reset {
                        expected: 2,
                        jump: Jump::Forward
                    }
                ),
            ]
        );
        assert_eq!((r.buffered(), r.next_deadline()), (0, None));
        // Back to where the counter really is: a second reset, then in order.
        assert_eq!(
            summary(&r.push("v1", Some(3), (), t0)),
            [(
                Some(3),
                Reason::Reset {
                    expected: 205,
                    jump: Jump::Backward
                }
            )]
        );
        assert_eq!(
            summary(&r.push("v1", Some(4), (), t0)),
            [(Some(4), Reason::InOrder)]
        );
        // Within the bound behind: late, as before.
        assert_eq!(
            summary(&r.push("v1", Some(1), (), t0)),
            [(Some(1), Reason::Late { expected: 5 })]
        );
        let s = r.stats();
        assert_eq!(
            (s.resets_forward, s.resets_backward, s.flushed, s.skipped),
            (1, 1, 2, 98)
        );
        assert_eq!(r.jump(&"v1", 105), None);
        assert_eq!(r.jump(&"v1", 106), Some(Jump::Forward));
        assert_eq!(r.jump(&"v1", -95), None);
        assert_eq!(r.jump(&"v1", -96), Some(Jump::Backward));
        assert_eq!(
            r.jump(&"other", 1_000_000),
            None,
            "a new key has nothing to jump from"
        );
    }

    #[test]
    fn extreme_sequences_neither_overflow_nor_silence() {
        let t0 = Instant::now();
        let mut r = Reorderer::new(ReorderConfig::default());
        r.push("v1", Some(i64::MIN), (), t0);
        let out = r.push("v1", Some(i64::MAX), (), t0);
        assert!(
            matches!(
                out[..],
                [Released {
                    reason: Reason::Reset {
                        jump: Jump::Forward,
                        ..
                    },
                    ..
                }]
            ),
            "{out:?}"
        );
        let out = r.push("v1", Some(1), (), t0);
        assert!(
            matches!(
                out[..],
                [Released {
                    reason: Reason::Reset {
                        jump: Jump::Backward,
                        ..
                    },
                    ..
                }]
            ),
            "{out:?}"
        );
        assert_eq!(
            summary(&r.push("v1", Some(2), (), t0)),
            [(Some(2), Reason::InOrder)]
        );
    }

    /// One pushed item: its key, sequence and a unique id.
    type Event = (u8, Option<i64>, usize);

    /// Contiguous sequences per key, some re-delivered, a few unsequenced,
    /// shuffled, with each key's first delivery its lowest sequence.
    fn within_timeout() -> impl Strategy<Value = Vec<Event>> {
        let keys = prop::collection::vec((-5i64..50, 1usize..25), 1..4);
        let dups = prop::collection::vec(any::<prop::sample::Index>(), 0..10);
        (keys, dups, 0usize..4)
            .prop_flat_map(|(keys, dups, unsequenced)| {
                let mut seqs: Vec<(u8, Option<i64>)> = Vec::new();
                for (k, (start, len)) in keys.iter().enumerate() {
                    for s in *start..*start + *len as i64 {
                        seqs.push((k as u8, Some(s)));
                    }
                }
                let redelivered: Vec<_> = dups.iter().map(|i| *i.get(&seqs)).collect();
                seqs.extend(redelivered);
                seqs.extend((0..unsequenced).map(|_| (0u8, None)));
                Just(seqs).prop_shuffle()
            })
            .prop_map(|mut seqs| {
                // A key starts at its first item: deliver its lowest first.
                let mut started = HashSet::new();
                for i in 0..seqs.len() {
                    let (k, Some(_)) = seqs[i] else { continue };
                    if started.insert(k) {
                        let lowest = (i..seqs.len())
                            .filter(|&j| seqs[j].0 == k && seqs[j].1.is_some())
                            .min_by_key(|&j| seqs[j].1)
                            .unwrap_or(i);
                        seqs.swap(i, lowest);
                    }
                }
                seqs.into_iter()
                    .enumerate()
                    .map(|(id, (k, s))| (k, s, id))
                    .collect()
            })
    }

    /// Checks that hold after every step, whatever the input.
    fn check_step(r: &Reorderer<usize, u8>, now: Instant) -> Result<(), TestCaseError> {
        r.assert_invariants();
        let c = r.config();
        prop_assert!(r.buffered() <= c.max_buffered_total);
        prop_assert!(r.keys() <= c.max_keys + r.buffered());
        if let Some(deadline) = r.next_deadline() {
            prop_assert!(deadline > now, "an expired item is still buffered");
        }
        Ok(())
    }

    proptest! {
        /// Reorderings delivered within the gap timeout (no gap expires):
        /// per key, the ordered releases are exactly the sorted sequences,
        /// everything else is a re-delivery, and nothing is lost.
        #[test]
        fn within_timeout_output_is_sorted_per_key(events in within_timeout()) {
            let t0 = Instant::now();
            let mut r = Reorderer::new(ReorderConfig::default());
            let mut out = Vec::new();
            for (i, &(k, s, id)) in events.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                out.extend(r.push(k, s, id, now));
                check_step(&r, now)?;
            }
            prop_assert_eq!(r.buffered(), 0, "contiguous input leaves nothing waiting");
            prop_assert!(r.tick(t0 + GAP * 10).is_empty());

            let mut ids: Vec<usize> = out.iter().map(|r| r.item).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..events.len()).collect::<Vec<_>>());

            let mut first_copy = HashSet::new();
            for k in 0..4u8 {
                let mut expected: Vec<i64> = events
                    .iter()
                    .filter(|e| e.0 == k)
                    .filter_map(|e| e.1)
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                let ordered: Vec<_> = out
                    .iter()
                    .filter(|r| r.key == k && r.reason.is_ordered())
                    .inspect(|r| { first_copy.insert(r.item); })
                    .collect();
                prop_assert!(ordered.iter().all(|r| r.reason == Reason::InOrder));
                let seqs: Vec<i64> = ordered.iter().filter_map(|r| r.seq).collect();
                prop_assert_eq!(seqs, expected);
            }
            for rel in out.iter().filter(|r| !first_copy.contains(&r.item)) {
                prop_assert!(
                    matches!(
                        rel.reason,
                        Reason::Late { .. } | Reason::DuplicateSeq | Reason::Unsequenced
                    ),
                    "{:?}", rel
                );
            }
            prop_assert_eq!(r.stats().gaps + r.stats().skipped, 0);
        }

        /// Any sequences (with holes and re-deliveries), any order, any
        /// timing and tight bounds: everything is released exactly once, per
        /// key the ordered releases strictly increase, late ones are below
        /// what was expected, and the buffer bounds hold at every step.
        #[test]
        fn with_gaps_everything_leaves_once_and_in_order(
            events in prop::collection::vec((0u8..4, prop::option::weighted(0.95, 0i64..40), 0u64..40), 0..150),
            ticks in prop::collection::vec(any::<bool>(), 150),
            per_key in 0usize..8,
            total in 0usize..20,
            jump in 1u64..50,
        ) {
            let t0 = Instant::now();
            let mut r = Reorderer::new(ReorderConfig {
                max_sequence_jump: jump,
                ..config(per_key, total, 4)
            });
            let mut now = t0;
            let mut out = Vec::new();
            let mut waiting: HashMap<u8, usize> = HashMap::new();
            for (id, &(k, s, step)) in events.iter().enumerate() {
                // Steps of 0..40 s: some within, some beyond the 30 s timeout.
                now += Duration::from_secs(step);
                let mut released = r.push(k, s, id, now);
                if ticks[id] {
                    now += Duration::from_secs(step / 2);
                    released.extend(r.tick(now));
                }
                *waiting.entry(k).or_default() += 1;
                for rel in &released {
                    *waiting.entry(rel.key).or_default() -= 1;
                }
                out.extend(released);
                check_step(&r, now)?;
                for (k, n) in &waiting {
                    prop_assert_eq!(*n, r.buffered_for(k));
                    prop_assert!(*n <= per_key);
                }
            }
            out.extend(r.drain());

            let mut ids: Vec<usize> = out.iter().map(|r| r.item).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..events.len()).collect::<Vec<_>>());

            let mut last: HashMap<u8, i64> = HashMap::new();
            for rel in &out {
                let seq = rel.seq;
                prop_assert_eq!(seq, events[rel.item].1);
                match rel.reason {
                    Reason::Reset { expected, jump: way } => {
                        // A reset starts the key's order again.
                        let seq = seq.unwrap_or_default();
                        prop_assert!(seq.abs_diff(expected) > jump);
                        prop_assert_eq!(way == Jump::Forward, seq > expected);
                        last.insert(rel.key, seq);
                    }
                    reason if reason.is_ordered() => {
                        let seq = seq.unwrap_or_default();
                        if let Some(prev) = last.insert(rel.key, seq) {
                            prop_assert!(seq > prev, "key {}: {} after {}", rel.key, seq, prev);
                        }
                    }
                    Reason::Late { expected } => {
                        prop_assert!(seq.is_some_and(|s| s < expected && s.abs_diff(expected) <= jump));
                    }
                    Reason::DuplicateSeq => prop_assert!(seq.is_some()),
                    Reason::Unsequenced => prop_assert!(seq.is_none()),
                    _ => unreachable!(),
                }
            }
            let s = r.stats();
            prop_assert_eq!(
                s.late + s.duplicate_seq + s.unsequenced,
                out.iter().filter(|r| !r.reason.is_ordered()).count() as u64
            );
        }

        /// Whatever came before (far jumps either way, gaps, evictions,
        /// tight bounds), a run of consecutive sequences pushed in order
        /// loses at most `max_sequence_jump` of its first items to `late`:
        /// the late ones are a prefix of the run, the rest come out in
        /// order, and nothing is lost. No key is silenced for good.
        #[test]
        fn a_run_in_order_is_never_silenced(
            history in prop::collection::vec(
                (0u8..3, prop_oneof![-50i64..50, any::<i64>(), (-1_000_000i64..1_000_000)], 0u64..40),
                0..60,
            ),
            key in 0u8..3,
            start in prop_oneof![-50i64..50, any::<i64>(), (-1_000_000i64..1_000_000)],
            len in 1usize..40,
            jump in 1u64..20,
            per_key in 0usize..8,
            total in 0usize..20,
            max_keys in 0usize..4,
        ) {
            let t0 = Instant::now();
            let mut r = Reorderer::new(ReorderConfig {
                max_sequence_jump: jump,
                ..config(per_key, total, max_keys)
            });
            let mut now = t0;
            let mut released = 0;
            for (id, &(k, s, step)) in history.iter().enumerate() {
                now += Duration::from_secs(step);
                released += r.push(k, Some(s), id, now).len();
                check_step(&r, now)?;
            }
            // Whatever waited from the history has timed out.
            now += GAP * 2;
            released += r.tick(now).len();
            let run: Vec<i64> = (0..len as i64)
                .map_while(|i| start.checked_add(i))
                .collect();
            let mut out = Vec::new();
            for (i, &s) in run.iter().enumerate() {
                out.extend(r.push(key, Some(s), history.len() + i, now));
                check_step(&r, now)?;
            }
            out.extend(r.tick(now + GAP));
            out.extend(r.drain());
            let ours: Vec<_> = out.iter().filter(|rel| rel.item >= history.len()).collect();
            prop_assert_eq!(released + out.len(), history.len() + run.len());
            prop_assert_eq!(ours.len(), run.len());
            let late: Vec<i64> = ours
                .iter()
                .filter(|rel| matches!(rel.reason, Reason::Late { .. }))
                .filter_map(|rel| rel.seq)
                .collect();
            prop_assert!(late.len() as u64 <= jump, "{} late: {:?}", late.len(), late);
            prop_assert_eq!(&late[..], &run[..late.len()], "late ones are the run's first");
            let rest: Vec<i64> = ours
                .iter()
                .filter(|rel| !matches!(rel.reason, Reason::Late { .. }))
                .filter_map(|rel| rel.seq)
                .collect();
            prop_assert_eq!(&rest[..], &run[late.len()..], "the rest in order");
        }

        /// With many keys and a small `max_keys`, per-key state stays
        /// bounded and still nothing is lost or duplicated.
        #[test]
        fn key_state_stays_bounded(
            events in prop::collection::vec((0u8..50, 0i64..10, 0u64..10), 0..200),
            max_keys in 0usize..6,
        ) {
            let t0 = Instant::now();
            let mut r = Reorderer::new(config(3, 5, max_keys));
            let mut now = t0;
            let mut released = 0;
            for (id, &(k, s, step)) in events.iter().enumerate() {
                now += Duration::from_secs(step);
                released += r.push(k, Some(s), id, now).len();
                check_step(&r, now)?;
            }
            released += r.drain().len();
            prop_assert_eq!(released, events.len());
        }
    }
}
