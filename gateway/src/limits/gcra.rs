//! The generic cell rate algorithm, as pure arithmetic on one number per key:
//! the theoretical arrival time (TAT), in nanoseconds on the limiter's clock.
//!
//! A key whose TAT is at or before `now` has its whole burst available, which
//! is exactly the state of a key never seen; that is why idle keys can be
//! forgotten without handing anyone extra capacity.

use std::num::NonZeroU32;
use std::time::Duration;

use clawgress_policies::values::Rate;

/// One limiter's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gcra {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of `now` the TAT may run: burst × interval.
    tolerance: u64,
    /// The rate's count, as the 429 body's `limit` shows it.
    pub limit: u32,
    /// The rate's window, as the 429 body's `window` shows it (`1m`).
    pub window: &'static str,
}

/// What a request at `now` would do to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Pass {
        /// The key's TAT once this request is counted.
        tat: u64,
        /// Requests that could still pass right after this one.
        remaining: u32,
        /// Until the whole burst is available again.
        reset_after: u64,
    },
    Fail {
        /// Until this limiter alone would let the request through.
        retry_after: u64,
    },
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Gcra {
    pub fn new(rate: Rate, burst: NonZeroU32) -> Self {
        let count = rate.count().get();
        // Round the interval up so the limiter never admits more than the
        // written rate (3600 s / 7 is not a whole number of nanoseconds).
        let interval = nanos(rate.window().duration()).div_ceil(u64::from(count)).max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.get())),
            limit: count,
            window: rate.window().as_str(),
        }
    }

    /// Tests one request at `now` against a key whose TAT is `tat` (0 for a
    /// key never seen). Counting it is the caller's job: store `tat` from
    /// [`Outcome::Pass`].
    pub fn test(&self, tat: u64, now: u64) -> Outcome {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.tolerance {
            Outcome::Pass {
                tat: next,
                remaining: u32::try_from((self.tolerance - ahead) / self.interval).unwrap_or(u32::MAX),
                reset_after: ahead,
            }
        } else {
            Outcome::Fail {
                retry_after: ahead - self.tolerance,
            }
        }
    }

    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval(&self) -> u64 {
        self.interval
    }
}

/// The burst for a destination limiter, which the policy does not set: six
/// seconds' worth of its rate (a tenth of a minute, the seed's ratio for
/// projects and the whole gateway: 200/min gets 20, 500/min gets 50), at
/// least 1 and at most one window's count (5/s gets 5, not 30).
pub fn domain_burst(rate: Rate) -> NonZeroU32 {
    let count = u64::from(rate.count().get());
    let window_secs = rate.window().duration().as_secs().max(1);
    let burst = (count * 6).div_ceil(window_secs).clamp(1, count);
    NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}
