//! Delays between attempts: exponential with jitter (backon), used when the
//! gateway did not say how long to wait.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// The delay before attempt `attempt + 1`, after `attempt` failed ones:
/// `base`, then twice that, and so on, each with jitter, capped.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(base.max(Duration::from_millis(1)))
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(attempt as usize + 1)
        .build();
    delays.nth(attempt.saturating_sub(1) as usize).unwrap_or(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let base = Duration::from_millis(100);
        let first = backoff(base, 1);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let fourth = backoff(base, 4);
        assert!(fourth >= base * 8 && fourth <= base * 16, "{fourth:?}");
        assert!(backoff(Duration::from_secs(60), 30) <= MAX_DELAY * 2);
    }
}
