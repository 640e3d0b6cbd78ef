//! What a limit check answers, and the response headers that say so.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;

/// Which limiter a verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Agent,
    Project,
    Domain,
    Global,
}

impl Scope {
    /// In the order the limiters are checked and queues are looked up.
    pub const ALL: [Scope; 4] = [Scope::Agent, Scope::Project, Scope::Domain, Scope::Global];

    /// The name in the 429 body's `scope`, in metrics labels and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Project => "project",
            Scope::Domain => "domain",
            Scope::Global => "global",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request over a limit: the most restrictive limiter that refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: Scope,
    /// The limiter's count per window (the 429 body's `limit`).
    pub limit: u32,
    /// `1s`, `1m` or `1h` (the 429 body's `window`).
    pub window: &'static str,
    /// The real time until a request would pass every limiter that refused
    /// this one: a fraction of an emission interval, never a whole window.
    pub retry_after: Duration,
}

/// The answer of [`super::Limits::check`] and [`super::Limits::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitVerdict {
    /// Counted against every limiter. The fields describe the limiter with
    /// the least room left, for the `RateLimit-*` headers.
    Allow {
        /// Requests that could still pass right now.
        remaining: u32,
        /// That limiter's count per window.
        limit: u32,
        /// Until that limiter has its whole burst back.
        reset_after: Duration,
    },
    /// Refused; counted against no limiter.
    Limited(RateLimited),
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl LimitVerdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, LimitVerdict::Allow { .. })
    }

    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds,
    /// rounded up) and, for a refusal, `Retry-After` (seconds, rounded up, at
    /// least 1). Feed it to `HeaderMap::extend`.
    ///
    /// `Limit` is the rate's count per window, matching the 429 body;
    /// `Remaining` is what may be sent right now (at most the burst) and
    /// `Reset` is when the whole burst is back (for a 429: when one request
    /// would pass).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + use<> {
        let (limit, remaining, reset, retry_after) = match *self {
            LimitVerdict::Allow {
                remaining,
                limit,
                reset_after,
            } => (limit, remaining, ceil_secs(reset_after), None),
            LimitVerdict::Limited(limited) => {
                let retry = ceil_secs(limited.retry_after).max(1);
                (limited.limit, 0, retry, Some(retry))
            }
        };
        [
            Some((RATELIMIT_LIMIT, HeaderValue::from(limit))),
            Some((RATELIMIT_REMAINING, HeaderValue::from(remaining))),
            Some((RATELIMIT_RESET, HeaderValue::from(reset))),
            retry_after.map(|secs| (RETRY_AFTER, HeaderValue::from(secs))),
        ]
        .into_iter()
        .flatten()
    }
}
