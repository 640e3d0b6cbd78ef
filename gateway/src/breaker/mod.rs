//! Per-destination circuit breakers (seed §5.3): stop sending to a domain
//! that keeps failing, fail fast while it recovers, and probe it carefully
//! before trusting it again.
//!
//! - Closed: outcomes are counted over a sliding `thresholds.window` (in
//!   [`window`] buckets); at `min_requests` outcomes and a failure share of at
//!   least `failure_rate`, the breaker opens.
//! - Open: [`Breakers::admit`] refuses at once with the time left until
//!   half-open, for `recovery.wait_time`.
//! - Half-open: at most `probe_count` probes go through; `success_threshold`
//!   successes close the breaker with fresh counts, any probe failure opens it
//!   again for a new wait.
//!
//! The caller decides what a failure is (connect error, timeout, upstream
//! reset, or a status for which [`Breakers::is_failure_status`] holds) and
//! reports it on the [`Ticket`] that `admit` returned.
//!
//! | module | job |
//! |---|---|
//! | `registry` | the sharded, bounded map of breakers; tickets |
//! | `machine` | one breaker's state machine |
//! | `window` | the bucketed sliding window of outcomes |
//! | `rules` | the policy section as numbers |
//! | `clock` | the injectable time source |

mod clock;
mod machine;
mod registry;
mod rules;
mod window;

use std::fmt;
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use registry::{ALL_DOMAINS, Breakers, DEFAULT_MAX_DOMAINS, Ticket};

#[cfg(test)]
mod tests;

/// A breaker's state, as exported to metrics and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The breaker state gauge's value: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request refused because its destination's breaker is open, or half-open
/// with every probe slot taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the circuit breaker is {state}; retry after {retry_after:?}")]
pub struct BreakerOpen {
    /// Time until the breaker goes half-open; while half-open, a short fixed
    /// wait (the probes' verdict is not known yet).
    pub retry_after: Duration,
    pub state: BreakerState,
}
