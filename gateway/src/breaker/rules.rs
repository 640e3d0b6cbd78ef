//! The `circuit_breaker:` policy section turned into the numbers the state
//! machine works with, with values that would wedge a breaker made safe.

use std::time::{Duration, Instant};

use clawgress_policies::model::CircuitBreaker;

use super::window::{BUCKETS, Totals};

#[derive(Debug, Clone)]
pub(super) struct Rules {
    /// Start of tick 0; ticks are counted from here.
    origin: Instant,
    bucket_nanos: u128,
    min_requests: u64,
    /// 0..=100, as written in the policy.
    failure_percent: f64,
    pub wait: Duration,
    /// Probes one half-open phase may let through (a cancelled probe gives
    /// its slot back).
    pub probe_slots: u32,
    pub successes_to_close: u32,
    pub per_domain: bool,
    failure_statuses: Vec<u16>,
}

impl Rules {
    pub fn new(cfg: &CircuitBreaker, origin: Instant) -> Self {
        let window = cfg.thresholds.window.duration();
        // A zero probe count would leave a half-open breaker unable to ever
        // probe, so it could never close again.
        let probe_slots = cfg.recovery.probe_count.max(1);
        Rules {
            origin,
            bucket_nanos: (window.as_nanos() / u128::from(BUCKETS)).max(1),
            min_requests: u64::from(cfg.thresholds.min_requests),
            failure_percent: cfg.thresholds.failure_rate.value(),
            wait: cfg.recovery.wait_time.duration(),
            probe_slots,
            successes_to_close: cfg.recovery.success_threshold.value.clamp(1, probe_slots),
            per_domain: cfg.per_domain,
            failure_statuses: cfg.failure_status_codes.iter().map(|code| code.value).collect(),
        }
    }

    /// The window bucket `now` falls in.
    pub fn tick(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    /// Whether a closed breaker with these counts must open. At least one
    /// failure is required, so `failure_rate: 0%` means "any failure" rather
    /// than "open on the first busy minute".
    pub fn trips(&self, seen: Totals) -> bool {
        let total = seen.total();
        // Integer counts times 100 compare exactly with the percentage, so
        // 5 of 10 at 50% opens (no 0.49999 rounding surprise).
        seen.failures > 0
            && total >= self.min_requests
            && seen.failures as f64 * 100.0 >= self.failure_percent * total as f64
    }

    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(&status)
    }
}
