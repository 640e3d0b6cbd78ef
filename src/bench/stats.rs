//! Latency and error tallies for one benchmark run.
//!
//! Latencies go into a log-linear histogram (the HDR idea) instead of a list of
//! samples: recording is one counter increment with no allocation, memory stays
//! fixed however long the run is, and merging connections is an addition.
//! Values below [`EXACT_BELOW`] microseconds are exact; above, a bucket is at most
//! 1/128 of its value wide, so a percentile is off by less than 0.8 %.

use std::time::{Duration, Instant};

/// Bits of precision kept per power of two.
const PRECISION_BITS: u32 = 8;
/// Values below this many microseconds each get their own bucket.
pub const EXACT_BELOW: u32 = 1 << PRECISION_BITS;
/// Buckets per power of two above [`EXACT_BELOW`].
const PER_OCTAVE: u32 = EXACT_BELOW / 2;
/// Enough buckets for every `u32` (about 71 minutes in microseconds).
const BUCKETS: usize = (EXACT_BELOW + (32 - PRECISION_BITS) * PER_OCTAVE) as usize;

/// Histogram of latencies in microseconds.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    total: u64,
    sum_us: u64,
    max_us: u32,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, micros: u32) {
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.sum_us += u64::from(micros);
        self.max_us = self.max_us.max(micros);
    }

    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u32 {
        self.max_us
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.total as f64
    }

    /// Nearest-rank percentile (`quantile` in 0..=1): the smallest recorded value
    /// that at least `quantile` of all samples do not exceed. Reported as the top
    /// of its bucket, capped at the true maximum, so it never flatters the proxy.
    pub fn percentile(&self, quantile: f64) -> u32 {
        if self.total == 0 {
            return 0;
        }
        let wanted = (quantile.clamp(0.0, 1.0) * self.total as f64).ceil() as u64;
        let rank = wanted.clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest_in_bucket(bucket).min(self.max_us);
            }
        }
        self.max_us
    }
}

fn bucket_of(micros: u32) -> usize {
    if micros < EXACT_BELOW {
        return micros as usize;
    }
    let top_bit = 31 - micros.leading_zeros();
    let shift = top_bit - (PRECISION_BITS - 1);
    let mantissa = micros >> shift; // in PER_OCTAVE..EXACT_BELOW
    (EXACT_BELOW + (shift - 1) * PER_OCTAVE + (mantissa - PER_OCTAVE)) as usize
}

fn highest_in_bucket(bucket: usize) -> u32 {
    let bucket = bucket as u32;
    if bucket < EXACT_BELOW {
        return bucket;
    }
    let above = bucket - EXACT_BELOW;
    let shift = above / PER_OCTAVE + 1;
    let mantissa = above % PER_OCTAVE + PER_OCTAVE;
    let lowest = mantissa << shift;
    lowest.saturating_add((1 << shift) - 1)
}

/// The measured part of a run: warmup before it and anything completing after it
/// are not counted, so every connection is judged over the same interval.
#[derive(Clone, Copy, Debug)]
pub struct MeasureWindow {
    pub start: Instant,
    pub end: Instant,
}

impl MeasureWindow {
    pub fn after_warmup(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    pub fn contains(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }

    pub fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// What one connection (or the whole run, after merging) saw inside the window.
#[derive(Clone, Default)]
pub struct Tally {
    pub latency: LatencyHistogram,
    pub errors: u64,
}

impl Tally {
    /// A successful exchange; counted if it completed inside the window.
    pub fn success(&mut self, window: &MeasureWindow, started: Instant, done: Instant) {
        if window.contains(done) {
            self.latency.record(micros(done.saturating_duration_since(started)));
        }
    }

    /// A failed exchange (non-2xx, refused, reset); failures carry no latency.
    pub fn error(&mut self, window: &MeasureWindow, at: Instant) {
        if window.contains(at) {
            self.errors += 1;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.latency.merge(&other.latency);
        self.errors += other.errors;
    }
}

/// How one exchange of a closed loop ended.
pub enum Exchange {
    /// A 2xx answer.
    Success,
    /// Any other answer; the connection is still usable.
    Failure,
    /// No answer (refused, reset): counted, then a pause before the next
    /// try, so a dead peer costs errors, not a busy loop stealing CPU.
    Broken,
}

/// Runs a worker's loop until the window ends.
pub async fn until_window_end(window: &MeasureWindow, work: impl Future<Output = ()>) {
    tokio::select! {
        () = tokio::time::sleep_until(window.end.into()) => {}
        () = work => {}
    }
}

impl Tally {
    /// Counts one exchange of a closed loop, started at `started` and ending
    /// now; a broken one pauses before the next try.
    pub async fn record(&mut self, window: &MeasureWindow, started: Instant, outcome: Exchange) {
        let done = Instant::now();
        match outcome {
            Exchange::Success => self.success(window, started, done),
            Exchange::Failure => self.error(window, done),
            Exchange::Broken => {
                self.error(window, done);
                tokio::time::sleep(super::load::RECONNECT_PAUSE).await;
            }
        }
    }
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
