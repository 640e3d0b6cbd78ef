//! Counters labelled by a value that comes from traffic (an agent id, a
//! denied host), with a hard cap on distinct values.
//!
//! Operators need "who" and "where" on their dashboards, but a label taken
//! from requests is an attacker's lever on Prometheus' memory. So the first
//! `cap` distinct values get their own series and every later one is counted
//! under `"other"`: the number of series stays bounded however hostile the
//! traffic, and the overflow stays visible.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use prometheus::{IntCounter, IntCounterVec};

/// The label value for everything past the cap.
pub const OVERFLOW: &str = "other";

/// Longest label value kept; longer ones count as `"other"`.
const MAX_VALUE_LEN: usize = 253;

/// A value's series, one per second label, each made on first use.
type Series = Box<[OnceLock<IntCounter>]>;

pub struct BoundedCounters {
    vec: IntCounterVec,
    cap: usize,
    /// Reads are the common case (a known agent, a known host), so they take
    /// only the read side of the lock.
    seen: RwLock<HashMap<Box<str>, Series>>,
    /// The label values that follow the bounded one, in order (e.g. decisions).
    tails: Vec<&'static str>,
}

impl BoundedCounters {
    /// `tails` are the second label's closed set of values (empty when the
    /// bounded label is the only one).
    pub fn new(vec: IntCounterVec, cap: usize, tails: &[&'static str]) -> Self {
        BoundedCounters {
            vec,
            cap,
            seen: RwLock::new(HashMap::new()),
            tails: tails.to_vec(),
        }
    }

    /// Counts one event for `value` (and the `tail`-th second label).
    pub fn inc(&self, value: &str, tail: usize) {
        let value = if acceptable(value) { value } else { OVERFLOW };
        {
            let seen = self.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(children) = seen.get(value) {
                self.child(value, children, tail).inc();
                return;
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // One slot stays reserved for the overflow series itself.
        let key = if seen.contains_key(value) || seen.len() < self.cap || value == OVERFLOW {
            value
        } else {
            OVERFLOW
        };
        let children = seen
            .entry(key.into())
            .or_insert_with(|| (0..self.tails.len().max(1)).map(|_| OnceLock::new()).collect());
        self.child(key, children, tail).inc();
    }

    /// Series are made on first use, so an agent that was only ever allowed
    /// has one series, not one per decision.
    fn child<'a>(&self, value: &str, children: &'a [OnceLock<IntCounter>], tail: usize) -> &'a IntCounter {
        children[tail].get_or_init(|| match self.tails.get(tail) {
            Some(tail) => self.vec.with_label_values(&[value, tail]),
            None => self.vec.with_label_values(&[value]),
        })
    }

    /// The counts per value (summed over the second label), largest first.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let seen = self.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<(String, u64)> = seen
            .iter()
            .map(|(value, children)| {
                (
                    value.to_string(),
                    children.iter().filter_map(OnceLock::get).map(IntCounter::get).sum(),
                )
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The counts per value and second label.
    pub fn by_tail(&self, value: &str) -> Vec<u64> {
        let seen = self.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(value)
            .map(|children| children.iter().map(|c| c.get().map_or(0, IntCounter::get)).collect())
            .unwrap_or_default()
    }
}

/// Host names and agent ids only: anything else (quotes, control bytes,
/// spaces) would be a surprise in a label and is counted as overflow.
fn acceptable(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'@'))
}
