//! Protecting one destination: the circuit [`Breaker`] (failures in a row
//! open it, one half-open probe closes it) and the [`Pacer`] that spaces
//! request starts to the configured rate. Time is passed in, so both are
//! tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};
/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; counts transient failures in a row.
    Closed {
        /// Transient failures since the last success.
        failures: u32,
    },
    /// No requests until `until`.
    Open {
        /// When one probe may go.
        until: Instant,
    },
    /// One probe is out; everything else waits for its answer.
    HalfOpen {
        /// One cooldown after the probe went: if its answer has not come
        /// by then (its caller was cancelled), another probe may go.
        reprobe_at: Instant,
    },
}

/// A circuit breaker for one destination, with time passed in (tests).
#[derive(Debug, Clone)]
pub struct Breaker {
    /// Where it is.
    pub state: BreakerState,
    /// Failures in a row that open it.
    threshold: u32,
    /// How long it stays open.
    cooldown: Duration,
    /// A `Retry-After` asked every request to wait until then.
    paused_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
            paused_until: None,
        }
    }

    /// Whether a request may go now (in half-open, only the probe).
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| now < t) {
            return false;
        }
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } | BreakerState::HalfOpen { reprobe_at: until }
                if now < until =>
            {
                false
            }
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen {
                    reprobe_at: now + self.cooldown,
                };
                true
            }
            BreakerState::HalfOpen { .. } => {
                // The previous probe never answered: send another.
                self.state = BreakerState::HalfOpen {
                    reprobe_at: now + self.cooldown,
                };
                true
            }
        }
    }

    /// The destination answered (2xx or a permanent 4xx).
    pub fn success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// A transient failure; answers whether this opened the circuit.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerState::Closed { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::Open {
                    until: now + self.cooldown,
                };
                true
            }
            // An answer to a request sent before it opened.
            BreakerState::Open { .. } => false,
        }
    }

    /// `Retry-After`: nothing goes to the destination before `until`.
    pub fn pause(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
    }

    /// Open or half-open.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }
}

/// Spaces request starts at least `interval` apart.
pub(super) struct Pacer {
    /// The least time between two request starts (1 / rate).
    pub(super) interval: Duration,
    /// When the next request may start.
    pub(super) next: Mutex<Instant>,
}

impl Pacer {
    pub(super) async fn wait(&self) {
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}
