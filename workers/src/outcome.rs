//! What a fetch came back with, and what its failure means for the job.

use std::time::Duration;

/// A fetched page.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The origin's status (a page the origin refused is still a page).
    pub status: u16,
    /// After redirects.
    pub final_url: String,
    /// Every URL requested, in order; each went through the gateway.
    pub hops: Vec<String>,
    pub content_type: Option<String>,
    /// Decoded with the response's charset.
    pub body: String,
    /// The gateway's request id of the last hop, for the audit trail.
    pub request_id: Option<String>,
}

/// Why a fetch did not produce a page.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The gateway's policy said no (403/407): never retried.
    #[error("denied by the gateway: {reason} ({policy_id})")]
    Denied {
        reason: String,
        policy_id: String,
        status: u16,
    },
    /// A gateway rate limit: retry after its `retry_after`.
    #[error("rate limited by the gateway ({scope}); retry after {retry_after:?}")]
    RateLimited { retry_after: Duration, scope: String },
    /// The destination's circuit breaker is open: retry after `retry_after`.
    #[error("the destination's circuit breaker is open; retry after {retry_after:?}")]
    BreakerOpen { retry_after: Duration },
    /// The gateway could not complete the exchange (upstream down, DNS…).
    #[error("the gateway answered {status} {reason}")]
    Gateway {
        status: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The origin answered with a server error or its own 429.
    #[error("the origin answered {status}")]
    Origin { status: u16, retry_after: Option<Duration> },
    /// The body passed the worker's size cap.
    #[error("the response is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("too many redirects ({0})")]
    TooManyRedirects(usize),
    #[error("the fetch timed out")]
    Timeout,
    /// The worker could not talk to the gateway at all.
    #[error("cannot reach the gateway: {0}")]
    Transport(String),
    /// The job's token budget is spent.
    #[error("the job's token budget is spent ({used} of {limit})")]
    BudgetExceeded { used: u64, limit: u64 },
    /// Required values were not on the page.
    #[error("required values missing: {}", .0.join(", "))]
    MissingRequired(Vec<String>),
    /// A Steel Browser server failed or died: its fault, not the gateway's.
    #[error("the Steel Browser server at {server} failed: {detail}")]
    SteelUnavailable { server: String, detail: String },
    /// Every Steel server is busy and enough jobs already wait for one:
    /// back to the queue for a moment (not a failed attempt).
    #[error("every Steel Browser server is busy and the queue for them is full")]
    SteelBusy,
    /// Enough jobs already wait for this job's host on this scheduler (its
    /// per-host slots are all in use): back to the queue for a moment, for
    /// another scheduler or a later turn (not a failed attempt).
    #[error("the host's slots are all in use and enough jobs already wait for them here")]
    HostBusy,
    /// The page was loaded, but the gateway never saw it (the browser went
    /// direct, or served it from a cache): the page is not returned.
    #[error("the page did not go through the gateway: {0}")]
    BypassedGateway(String),
}

impl FetchError {
    /// The gateway's refusal, from its status and problem body (the
    /// `reason`, `policy_id`, `scope` and `retry_after` fields); every
    /// backend reads gateway answers through this one mapping.
    pub fn from_gateway(status: u16, body: &serde_json::Value, header_wait: Option<Duration>) -> FetchError {
        let text = |key: &str| body[key].as_str().unwrap_or_default().to_string();
        let reason = text("reason");
        let retry_after = body["retry_after"]
            .as_u64()
            .map(Duration::from_secs)
            .or(header_wait)
            .map(clamp_wait);
        match (status, reason.as_str()) {
            (429, _) => FetchError::RateLimited {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
                scope: if body["scope"].is_string() {
                    text("scope")
                } else {
                    reason.clone()
                },
            },
            (503, "circuit_open") => FetchError::BreakerOpen {
                retry_after: retry_after.unwrap_or(Duration::from_secs(30)),
            },
            (403 | 407, _) => FetchError::Denied {
                reason,
                policy_id: text("policy_id"),
                status,
            },
            _ => FetchError::Gateway {
                status,
                reason,
                retry_after,
            },
        }
    }
}

/// A wait someone else asked for, kept between one second (no hot loop)
/// and ten minutes (a job is not parked for a day by a stray header).
pub fn clamp_wait(wait: Duration) -> Duration {
    wait.clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// What the scheduler does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again; the gateway said when, or backoff decides.
    Retry { after: Option<Duration> },
    /// Report as `denied`; never retried.
    Deny,
    /// Report as failed; retrying would not help.
    Fail,
}

impl FetchError {
    pub fn disposition(&self) -> Disposition {
        match self {
            FetchError::Denied { .. } => Disposition::Deny,
            FetchError::RateLimited { retry_after, .. } | FetchError::BreakerOpen { retry_after } => {
                Disposition::Retry {
                    after: Some(*retry_after),
                }
            }
            // The gateway refusing the request itself (malformed, too large,
            // a loop) will refuse it again.
            FetchError::Gateway { status, .. } if (400..500).contains(status) => Disposition::Fail,
            FetchError::Gateway { retry_after, .. } | FetchError::Origin { retry_after, .. } => {
                Disposition::Retry { after: *retry_after }
            }
            FetchError::Timeout | FetchError::Transport(_) | FetchError::SteelUnavailable { .. } => {
                Disposition::Retry { after: None }
            }
            // The browser's set-up lets it around the gateway; another try
            // would go around it again.
            FetchError::BypassedGateway(_) => Disposition::Fail,
            FetchError::SteelBusy | FetchError::HostBusy => Disposition::Retry {
                after: Some(Duration::from_secs(1)),
            },
            FetchError::TooLarge { .. }
            | FetchError::TooManyRedirects(_)
            | FetchError::MissingRequired(_)
            | FetchError::BudgetExceeded { .. } => Disposition::Fail,
        }
    }

    /// A stable code for results and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Denied { .. } => "denied",
            FetchError::RateLimited { .. } => "rate_limited",
            FetchError::BreakerOpen { .. } => "circuit_open",
            FetchError::Gateway { .. } => "gateway_error",
            FetchError::Origin { .. } => "origin_error",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::TooManyRedirects(_) => "too_many_redirects",
            FetchError::Timeout => "timeout",
            FetchError::Transport(_) => "gateway_unreachable",
            FetchError::MissingRequired(_) => "missing_required",
            FetchError::BudgetExceeded { .. } => "budget_exceeded",
            FetchError::SteelUnavailable { .. } => "steel_unavailable",
            FetchError::BypassedGateway(_) => "bypassed_gateway",
            FetchError::SteelBusy => "steel_busy",
            FetchError::HostBusy => "host_busy",
        }
    }
}
