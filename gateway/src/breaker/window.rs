//! The closed breaker's memory: outcomes counted in time buckets, so old
//! outcomes age out a bucket at a time without storing one entry per request.

/// Buckets per window: outcomes leave the window at most a tenth of it late.
pub(super) const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-sized slice of time (since the breakers' origin) the
    /// counts belong to; a slot holding an older tick is stale.
    tick: u64,
    successes: u32,
    failures: u32,
}

/// Successes and failures seen in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Totals {
    pub successes: u64,
    pub failures: u64,
}

impl Totals {
    pub fn total(&self) -> u64 {
        self.successes + self.failures
    }
}

#[derive(Debug, Default)]
pub(super) struct OutcomeWindow {
    buckets: [Bucket; BUCKETS as usize],
}

impl OutcomeWindow {
    pub fn record(&mut self, tick: u64, failed: bool) {
        let bucket = &mut self.buckets[(tick % BUCKETS) as usize];
        if bucket.tick != tick {
            *bucket = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        if failed {
            bucket.failures = bucket.failures.saturating_add(1);
        } else {
            bucket.successes = bucket.successes.saturating_add(1);
        }
    }

    /// Outcomes recorded in the current tick and the `BUCKETS - 1` before it.
    pub fn totals(&self, tick: u64) -> Totals {
        self.buckets
            .iter()
            .filter(|b| b.tick <= tick && tick - b.tick < BUCKETS)
            .fold(Totals::default(), |sum, b| Totals {
                successes: sum.successes + u64::from(b.successes),
                failures: sum.failures + u64::from(b.failures),
            })
    }

    pub fn clear(&mut self) {
        *self = OutcomeWindow::default();
    }
}
