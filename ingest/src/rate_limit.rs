//! Per-source rate limit: a token bucket of `burst` tokens refilled at
//! `per_second`, refusing with 429 and the time until the next token.
//!
//! It is kept as GCRA (the generic cell rate algorithm), which is a token
//! bucket stored as one number: the theoretical arrival time (TAT) of the
//! next request if the sender kept exactly to the rate. A request at `now`
//! is allowed when `max(TAT, now) + interval - now <= burst * interval`,
//! and then moves TAT by one interval. One `AtomicU64` per source, updated
//! with compare-and-swap: no lock, constant memory, and the clock is a
//! parameter so tests run on made-up time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Smallest and largest accepted `per_second`.
pub const RATE_RANGE: (f64, f64) = (0.001, 1_000_000.0);
/// Largest accepted `burst`.
pub const MAX_BURST: u32 = 1_000_000;

/// A token bucket for one source.
#[derive(Debug)]
pub struct TokenBucket {
    /// Nanoseconds between two tokens.
    interval_ns: u64,
    /// `burst * interval_ns`: how far TAT may run ahead of now.
    capacity_ns: u64,
    /// Zero point of the stored times.
    origin: Instant,
    /// Theoretical arrival time, in nanoseconds after `origin`.
    tat_ns: AtomicU64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second`. Values
    /// outside [`RATE_RANGE`] and `1..=MAX_BURST` are clamped into them
    /// (the configuration check refuses them first).
    pub fn new(per_second: f64, burst: u32, origin: Instant) -> TokenBucket {
        let rate = if per_second.is_finite() {
            per_second.clamp(RATE_RANGE.0, RATE_RANGE.1)
        } else {
            RATE_RANGE.0
        };
        let interval_ns = ((1e9 / rate).round() as u64).max(1);
        let burst = u64::from(burst.clamp(1, MAX_BURST));
        TokenBucket {
            interval_ns,
            capacity_ns: interval_ns.saturating_mul(burst),
            origin,
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now`, or says how long until one is available.
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        let now_ns = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(self.interval_ns);
            let ahead = next - now_ns;
            if ahead > self.capacity_ns {
                return Err(Duration::from_nanos(ahead - self.capacity_ns));
            }
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// [`TokenBucket::try_acquire_at`] now.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }
}

/// `Retry-After` in whole seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses() {
        let t0 = Instant::now();
        let b = TokenBucket::new(10.0, 5, t0);
        for i in 0..5 {
            assert_eq!(b.try_acquire_at(t0), Ok(()), "token {i}");
        }
        // The sixth waits one interval (100 ms) for the next token.
        assert_eq!(b.try_acquire_at(t0), Err(100 * MS));
        assert_eq!(b.try_acquire_at(t0 + 40 * MS), Err(60 * MS));
        // A refusal takes nothing: the wait does not grow.
        assert_eq!(b.try_acquire_at(t0 + 40 * MS), Err(60 * MS));
        assert_eq!(b.try_acquire_at(t0 + 100 * MS), Ok(()));
        assert_eq!(b.try_acquire_at(t0 + 100 * MS), Err(100 * MS));
    }

    #[test]
    fn refills_at_the_rate_and_never_past_the_burst() {
        let t0 = Instant::now();
        let b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            b.try_acquire_at(t0).unwrap();
        }
        // 250 ms later two tokens are back (not three).
        let t = t0 + 250 * MS;
        assert_eq!(b.try_acquire_at(t), Ok(()));
        assert_eq!(b.try_acquire_at(t), Ok(()));
        assert_eq!(b.try_acquire_at(t), Err(50 * MS));
        // An hour idle refills to the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.try_acquire_at(later), Ok(()));
        }
        assert!(b.try_acquire_at(later).is_err());
        // Steady traffic at exactly the rate is always allowed.
        let mut t = later;
        for _ in 0..100 {
            t += 100 * MS;
            assert_eq!(b.try_acquire_at(t), Ok(()));
        }
    }

    #[test]
    fn slow_rates_ask_for_long_waits() {
        let t0 = Instant::now();
        let b = TokenBucket::new(0.01, 1, t0);
        assert_eq!(b.try_acquire_at(t0), Ok(()));
        let wait = b.try_acquire_at(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(99));
        assert_eq!(retry_after_secs(wait), 99);
    }

    #[test]
    fn a_clock_before_the_origin_does_not_panic() {
        let t0 = Instant::now();
        let b = TokenBucket::new(1.0, 1, t0 + Duration::from_secs(10));
        assert_eq!(b.try_acquire_at(t0), Ok(()));
        assert!(b.try_acquire_at(t0).is_err());
        // Absurd configurations are clamped, not a division by zero.
        for (rate, burst) in [(0.0, 0), (f64::NAN, 1), (f64::INFINITY, u32::MAX)] {
            let b = TokenBucket::new(rate, burst, t0);
            assert_eq!(b.try_acquire_at(t0), Ok(()), "{rate} {burst}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(20 * MS), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(100)), 100);
    }

    #[test]
    fn concurrent_takers_never_get_more_than_the_burst() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(TokenBucket::new(0.001, 1000, t0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|_| b.try_acquire_at(t0).is_ok()).count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 1000);
    }
}
