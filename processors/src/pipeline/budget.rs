//! One byte budget per instance for the records it holds between the
//! consumer and the sinks: the partition channels, records held for a
//! paused partition, reorder buffers and batches in flight.
//!
//! The consumer [`ByteBudget::charge`]s each record as it reads it, and
//! the [`Charge`] travels inside the record: whoever drops the record last
//! (the pipeline once the record is fully handled, a channel or a held
//! queue dropped at a hand-over, an aborted worker) gives the bytes back.
//! Nothing has to remember to release. A record is charged its payload
//! twice (the raw envelope, and the parsed event with its body) plus a
//! fixed overhead for the structures around it as it is read; once parsed,
//! its charge is raised to what the parsed event really holds
//! ([`Charge::at_least`]), since a JSON tree can take many times the bytes
//! of its text.
//!
//! When the budget is used up, the consumer pauses every partition it
//! owns and resumes them once use falls to three quarters of the budget
//! (the reorder buffers release by themselves within `gap_timeout`, the
//! sinks as they accept), so an instance with many partitions and large
//! bodies holds about the budget, whatever the count limits allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes charged per record beyond its payload (keys, offsets, the event's
/// fields, map entries).
pub const RECORD_OVERHEAD: usize = 1024;

/// The instance's budget.
#[derive(Debug)]
pub struct ByteBudget {
    /// Bytes charged now.
    used: AtomicUsize,
    /// The most the instance should hold.
    limit: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            limit: limit.max(1),
        })
    }

    /// Charges a record of `payload` bytes; the returned charge gives them
    /// back when dropped.
    pub fn charge(self: &Arc<Self>, payload: usize) -> Charge {
        let bytes = payload.saturating_mul(2).saturating_add(RECORD_OVERHEAD);
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            budget: self.clone(),
            bytes: AtomicUsize::new(bytes),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the budget is used up: stop fetching.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Whether use fell far enough below the budget to fetch again.
    pub fn recovered(&self) -> bool {
        self.used() <= self.limit / 4 * 3
    }
}

/// The bytes one record holds of a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    /// The budget it was taken from.
    budget: Arc<ByteBudget>,
    /// How much.
    bytes: AtomicUsize,
}

impl Charge {
    /// Raises the charge to `bytes` if it is less (a parsed event that
    /// holds more than the read-time estimate); never lowers it.
    pub fn at_least(&self, bytes: usize) {
        let before = self.bytes.fetch_max(bytes, Ordering::Relaxed);
        self.moved(before, bytes.max(before));
    }

    /// Bytes charged.
    /// Sets the charge to `bytes`, lower or higher: a record that gave up
    /// its parsed event while it waits in a reorder buffer.
    pub fn set(&self, bytes: usize) {
        let before = self.bytes.swap(bytes, Ordering::Relaxed);
        self.moved(before, bytes);
    }

    /// Moves the budget's count with a charge that went from `before` to
    /// `after` bytes.
    fn moved(&self, before: usize, after: usize) {
        let used = &self.budget.used;
        if after > before {
            used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            used.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_given_back_by_whoever_drops_it_last() {
        let b = ByteBudget::new(10_000);
        let c = Arc::new(b.charge(1000));
        assert_eq!(b.used(), 2 * 1000 + RECORD_OVERHEAD);
        let copy = c.clone();
        drop(c);
        assert_eq!(
            b.used(),
            2 * 1000 + RECORD_OVERHEAD,
            "a clone still holds it"
        );
        drop(copy);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_charge_raised_for_its_parsed_event_gives_back_all_of_it() {
        let b = ByteBudget::new(1 << 20);
        let c = Arc::new(b.charge(1000));
        c.at_least(50_000);
        assert_eq!((b.used(), c.bytes()), (50_000, 50_000));
        c.at_least(10_000);
        assert_eq!(b.used(), 50_000, "never lowered");
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_charge_set_lower_then_higher_moves_the_budget_with_it() {
        let b = ByteBudget::new(1 << 20);
        let c = b.charge(1000);
        c.at_least(50_000);
        c.set(5_000);
        assert_eq!((b.used(), c.bytes()), (5_000, 5_000));
        c.set(60_000);
        assert_eq!((b.used(), c.bytes()), (60_000, 60_000));
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn exhausted_at_the_limit_and_recovered_at_three_quarters() {
        let b = ByteBudget::new(4 * (2 * 1000 + RECORD_OVERHEAD));
        let mut held: Vec<Charge> = (0..4).map(|_| b.charge(1000)).collect();
        assert!(b.exhausted());
        assert!(!b.recovered());
        held.pop();
        assert!(!b.exhausted());
        assert!(b.recovered());
    }
}
