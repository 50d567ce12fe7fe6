//! Per ordering key, release items in event-time (`occurred_at`) order:
//! the reorder stage of a source that sends no sequence
//! (`order_by = "occurred_at"`, [`crate::event::OrderBy`]).
//!
//! Without a sequence nothing says an earlier event is still missing, so
//! every item waits a fixed time (the gap timeout) for earlier ones: when
//! the item that has waited longest reaches it, it is released together
//! with everything of its key that occurred no later than it, in
//! `occurred_at` order (ties in arrival order). An item that occurred
//! before what its key already released comes out at once, flagged late.
//!
//! - Time is passed in (`now`), as in [`super::reorder`]: the caller picks
//!   the clock, tests are deterministic.
//! - Memory is bounded: at most `max_buffered_per_key` items wait per key
//!   and `max_buffered_total` in all (a bound hit releases the key's
//!   earliest item at once, forced); idle keys (nothing waiting, only the
//!   time released up to) are forgotten least-recently-used first beyond
//!   `max_keys`, after which an event older than that key's released ones
//!   is no longer recognised as late.
//! - Not kept in the partition's state: a new owner of the partition
//!   re-reads what waited (its offsets were not committed) and starts each
//!   key afresh, so an event older than what the previous owner released
//!   is not flagged late there.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Limits of a [`TimeOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeOrderConfig {
    /// How long each item waits for items that occurred before it.
    pub wait: Duration,
    /// Most items waiting for one key.
    pub max_buffered_per_key: usize,
    /// Most items waiting across all keys.
    pub max_buffered_total: usize,
    /// Most idle keys whose released time is remembered.
    pub max_keys: usize,
}

/// Why an item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeReason {
    /// In `occurred_at` order, after waiting (at most the wait).
    InOrder,
    /// It occurred `behind_micros` before the newest item its key had
    /// already released.
    Late {
        /// How far behind, in microseconds.
        behind_micros: i64,
    },
    /// Released early: a buffer bound was hit.
    Forced,
    /// Released by [`TimeOrder::drain`].
    Drained,
}

impl TimeReason {
    /// The metric label of the reason.
    pub fn label(self) -> &'static str {
        match self {
            TimeReason::InOrder => "in_order",
            TimeReason::Late { .. } => "late",
            TimeReason::Forced => "forced",
            TimeReason::Drained => "drained",
        }
    }
}

/// One item out of a [`TimeOrder`].
#[derive(Debug)]
pub struct TimeReleased<T, K> {
    /// The key it was pushed with.
    pub key: K,
    /// Its `occurred_at`, Unix microseconds.
    pub at: i64,
    /// The item.
    pub item: T,
    /// Why it came out now.
    pub reason: TimeReason,
}

struct KeyState<T> {
    /// Waiting items by (occurred_at, arrival number), with the deadline
    /// each was given.
    waiting: BTreeMap<(i64, u64), (T, Instant)>,
    /// The newest `occurred_at` released for the key.
    released_up_to: Option<i64>,
    /// Arrival number of the key's last push (least-recently-used order).
    last_used: u64,
}

/// Releases items per key in `occurred_at` order, each held at most
/// [`TimeOrderConfig::wait`].
pub struct TimeOrder<T, K> {
    config: TimeOrderConfig,
    keys: HashMap<K, KeyState<T>>,
    /// Every waiting item's deadline: (deadline, arrival number) to its
    /// key and occurred_at.
    deadlines: BTreeMap<(Instant, u64), (K, i64)>,
    /// Arrival numbers, so ties keep arrival order.
    arrivals: u64,
}

impl<T, K: Eq + Hash + Clone> TimeOrder<T, K> {
    /// An empty buffer.
    pub fn new(config: TimeOrderConfig) -> Self {
        TimeOrder {
            config,
            keys: HashMap::new(),
            deadlines: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// Items waiting.
    pub fn buffered(&self) -> usize {
        self.deadlines.len()
    }

    /// When [`tick`](Self::tick) next has something to release.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((d, _), _)| *d)
    }

    /// Takes an item that occurred at `at` (Unix µs): what it releases
    /// (what had waited long enough, the item itself when late or forced).
    pub fn push(&mut self, key: K, at: i64, item: T, now: Instant) -> Vec<TimeReleased<T, K>> {
        self.push_with(key, at, item, now, |_| {})
    }

    /// [`push`](Self::push), calling `waits` on the item if, and only if,
    /// it goes into the window to wait: the caller can shrink what it holds
    /// while it waits.
    pub fn push_with(
        &mut self,
        key: K,
        at: i64,
        mut item: T,
        now: Instant,
        waits: impl FnOnce(&mut T),
    ) -> Vec<TimeReleased<T, K>> {
        let mut out = self.tick(now);
        self.arrivals += 1;
        let n = self.arrivals;
        let state = self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            waiting: BTreeMap::new(),
            released_up_to: None,
            last_used: n,
        });
        state.last_used = n;
        if let Some(up_to) = state.released_up_to
            && at < up_to
        {
            out.push(TimeReleased {
                key,
                at,
                item,
                reason: TimeReason::Late {
                    behind_micros: up_to - at,
                },
            });
            return out;
        }
        let deadline = now.checked_add(self.config.wait).unwrap_or(now);
        waits(&mut item);
        state.waiting.insert((at, n), (item, deadline));
        self.deadlines.insert((deadline, n), (key.clone(), at));
        let over_key = state.waiting.len() > self.config.max_buffered_per_key.max(1);
        if over_key || self.deadlines.len() > self.config.max_buffered_total.max(1) {
            self.release_first(&key, TimeReason::Forced, &mut out);
        }
        self.forget_idle_keys();
        out
    }

    /// Releases what waited long enough by `now`, per key in time order.
    pub fn tick(&mut self, now: Instant) -> Vec<TimeReleased<T, K>> {
        let mut out = Vec::new();
        while let Some((&(deadline, n), (key, at))) = self.deadlines.first_key_value() {
            if deadline > now {
                break;
            }
            let (key, at) = (key.clone(), *at);
            self.release_through(&key, (at, n), TimeReason::InOrder, &mut out);
        }
        out
    }

    /// Releases everything waiting, per key in time order.
    pub fn drain(&mut self) -> Vec<TimeReleased<T, K>> {
        let mut out = Vec::with_capacity(self.buffered());
        let keys: Vec<K> = self.keys.keys().cloned().collect();
        for key in keys {
            let last = self
                .keys
                .get(&key)
                .and_then(|s| s.waiting.last_key_value().map(|(k, _)| *k));
            if let Some(last) = last {
                self.release_through(&key, last, TimeReason::Drained, &mut out);
            }
        }
        out
    }

    /// Releases `key`'s waiting items up to and including `through`.
    fn release_through(
        &mut self,
        key: &K,
        through: (i64, u64),
        reason: TimeReason,
        out: &mut Vec<TimeReleased<T, K>>,
    ) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let rest = state.waiting.split_off(&(through.0, through.1 + 1));
        let due = std::mem::replace(&mut state.waiting, rest);
        for ((at, n), (item, deadline)) in due {
            self.deadlines.remove(&(deadline, n));
            state.released_up_to = Some(state.released_up_to.map_or(at, |u| u.max(at)));
            out.push(TimeReleased {
                key: key.clone(),
                at,
                item,
                reason,
            });
        }
    }

    /// Releases `key`'s earliest waiting item.
    fn release_first(&mut self, key: &K, reason: TimeReason, out: &mut Vec<TimeReleased<T, K>>) {
        let first = self
            .keys
            .get(key)
            .and_then(|s| s.waiting.first_key_value().map(|(k, _)| *k));
        if let Some(first) = first {
            self.release_through(key, first, reason, out);
        }
    }

    /// Forgets the least recently used idle keys beyond `max_keys` (down
    /// to three quarters of it, so the scan is rare).
    fn forget_idle_keys(&mut self) {
        if self.keys.len() <= self.config.max_keys.max(1) {
            return;
        }
        let mut idle: Vec<(u64, K)> = self
            .keys
            .iter()
            .filter(|(_, s)| s.waiting.is_empty())
            .map(|(k, s)| (s.last_used, k.clone()))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        let target = self.config.max_keys.max(1) * 3 / 4;
        let excess = self.keys.len().saturating_sub(target);
        for (_, k) in idle.into_iter().take(excess) {
            self.keys.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn order() -> TimeOrder<&'static str, &'static str> {
        TimeOrder::new(TimeOrderConfig {
            wait: WAIT,
            max_buffered_per_key: 3,
            max_buffered_total: 5,
            max_keys: 4,
        })
    }

    fn items<K>(out: &[TimeReleased<&'static str, K>]) -> Vec<(&'static str, &'static str)> {
        out.iter().map(|r| (r.item, r.reason.label())).collect()
    }

    #[test]
    fn out_of_order_items_come_out_in_time_order_after_the_wait() {
        let mut o = order();
        let t0 = Instant::now();
        assert!(o.push("v", 30, "c", t0).is_empty());
        assert!(o.push("v", 10, "a", t0).is_empty());
        assert!(o.push("v", 20, "b", t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(o.next_deadline(), Some(t0 + WAIT));
        assert!(o.tick(t0 + WAIT - Duration::from_millis(1)).is_empty());
        // c waited longest: it and everything before it in time.
        let out = o.tick(t0 + WAIT);
        assert_eq!(
            items(&out),
            [("a", "in_order"), ("b", "in_order"), ("c", "in_order")]
        );
        assert_eq!(o.buffered(), 0);
        assert_eq!(o.next_deadline(), None);
        // Older than what was released: at once, late by 15 µs.
        let out = o.push("v", 15, "x", t0 + WAIT);
        assert_eq!(items(&out), [("x", "late")]);
        assert_eq!(out[0].reason, TimeReason::Late { behind_micros: 15 });
        // The same time as the newest released is not late.
        assert!(o.push("v", 30, "y", t0 + WAIT).is_empty());
    }

    /// `push_with`'s hook runs on the items that wait in the window, not on
    /// a late one released at once; what it changed is what comes out.
    #[test]
    fn the_wait_hook_runs_only_on_items_that_wait() {
        let mut o: TimeOrder<String, &'static str> = TimeOrder::new(TimeOrderConfig {
            wait: WAIT,
            max_buffered_per_key: 3,
            max_buffered_total: 5,
            max_keys: 4,
        });
        let t0 = Instant::now();
        let waits = |item: &mut String| item.make_ascii_uppercase();
        assert!(o.push_with("v", 10, "a".into(), t0, waits).is_empty());
        let out = o.push_with("v", 20, "b".into(), t0 + WAIT, waits);
        let got: Vec<&str> = out.iter().map(|r| r.item.as_str()).collect();
        assert_eq!(got, ["A"], "a waited and came out as the hook left it");
        let late = o.push_with("v", 5, "late".into(), t0 + WAIT, waits);
        assert_eq!(late[0].item, "late");
        assert!(matches!(late[0].reason, TimeReason::Late { .. }));
        let got: Vec<String> = o.drain().into_iter().map(|r| r.item).collect();
        assert_eq!(got, ["B"]);
    }

    #[test]
    fn a_later_event_waits_only_its_own_wait_and_keys_are_apart() {
        let mut o = order();
        let t0 = Instant::now();
        o.push("v", 10, "a", t0);
        o.push("w", 5, "k", t0 + Duration::from_secs(1));
        o.push("v", 40, "d", t0 + Duration::from_secs(1));
        // a's deadline: only a (d occurred later and has time left).
        assert_eq!(items(&o.tick(t0 + WAIT)), [("a", "in_order")]);
        let out = o.tick(t0 + WAIT + Duration::from_secs(1));
        let mut got: Vec<(&str, &str)> = out.iter().map(|r| (r.key, r.item)).collect();
        got.sort();
        assert_eq!(got, [("v", "d"), ("w", "k")]);
    }

    #[test]
    fn bounds_release_the_earliest_item_early_and_drain_empties() {
        let mut o = order();
        let t0 = Instant::now();
        for (at, item) in [(4, "d"), (1, "a"), (3, "c")] {
            assert!(o.push("v", at, item, t0).is_empty());
        }
        // Fourth for the key: its earliest goes.
        assert_eq!(items(&o.push("v", 2, "b", t0)), [("a", "forced")]);
        assert!(o.push("w", 1, "w1", t0).is_empty());
        assert!(o.push("w", 2, "w2", t0).is_empty());
        // Six waiting, over five in all: the pushed key's earliest.
        assert_eq!(items(&o.push("w", 3, "w3", t0)), [("w1", "forced")]);
        let out = o.drain();
        let v: Vec<&str> = out
            .iter()
            .filter(|r| r.key == "v")
            .map(|r| r.item)
            .collect();
        assert_eq!(v, ["b", "c", "d"]);
        assert_eq!(o.buffered(), 0);
        assert!(o.tick(t0 + WAIT * 10).is_empty());
    }

    #[test]
    fn idle_keys_beyond_max_keys_are_forgotten_oldest_first() {
        let mut o = order();
        let t0 = Instant::now();
        for k in ["a", "b", "c", "d", "e"] {
            o.push(k, 100, "i", t0);
            o.tick(t0 + WAIT);
        }
        assert!(o.keys.len() <= 4, "{}", o.keys.len());
        assert!(!o.keys.contains_key("a"));
        // e is remembered: older is late.
        assert_eq!(items(&o.push("e", 1, "x", t0 + WAIT)), [("x", "late")]);
    }

    proptest! {
        /// Whatever the arrival order and times: every item comes out
        /// once, none waits past its deadline, and per key the items not
        /// flagged late come out in time order.
        #[test]
        fn every_item_once_in_time_order_per_key(
            pushes in prop::collection::vec((0u8..3, 0i64..50, 0u64..3000), 1..60)
        ) {
            let mut o: TimeOrder<usize, u8> = TimeOrder::new(TimeOrderConfig {
                wait: WAIT,
                max_buffered_per_key: 8,
                max_buffered_total: 20,
                max_keys: 3,
            });
            let t0 = Instant::now();
            let mut now = t0;
            let mut out = Vec::new();
            for (i, (key, at, step)) in pushes.iter().enumerate() {
                now += Duration::from_millis(*step);
                out.extend(o.push(*key, *at, i, now).into_iter().map(|r| (r, now)));
                prop_assert!(o.next_deadline().is_none_or(|d| d > now));
            }
            out.extend(o.drain().into_iter().map(|r| (r, now)));
            let mut seen: Vec<usize> = out.iter().map(|(r, _)| r.item).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..pushes.len()).collect::<Vec<_>>());
            let mut last: HashMap<u8, i64> = HashMap::new();
            for (r, _) in &out {
                if matches!(r.reason, TimeReason::Late { .. }) {
                    continue;
                }
                if let Some(l) = last.get(&r.key) {
                    prop_assert!(r.at >= *l, "key {} went back from {} to {}", r.key, l, r.at);
                }
                last.insert(r.key, r.at);
            }
        }
    }
}
