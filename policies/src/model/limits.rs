//! `rate_limits:` (seed §3). Defaults are the seed's §3.1 table.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::model::or_default;
use crate::values::{Rate, nonzero_u32};

const fn burst(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(b) => b,
        None => NonZeroU32::MIN,
    }
}

/// `rate_limits:` — request rates per agent, project, destination and for
/// the whole gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// `false` turns every rate limiter off (containment and circuit
    /// breakers stay on), for sites that limit upstream of the gateway.
    pub enabled: bool,
    /// Each agent: 100/min with a burst of 20 by default.
    #[serde(deserialize_with = "or_default")]
    pub per_agent: AgentLimit,
    /// Each project: 1000/min with a burst of 100 by default.
    #[serde(deserialize_with = "or_default")]
    pub per_project: ProjectLimit,
    /// Each destination domain: 200/min by default, at most 500/min.
    #[serde(deserialize_with = "or_default")]
    pub per_domain: DomainLimit,
    /// The whole gateway: 10000/min with a burst of 1000 by default.
    #[serde(deserialize_with = "or_default")]
    pub global: GlobalLimit,
    /// What happens to a request over its limit: `delay` (default, wait
    /// `throttle_delay_ms` and retry), `reject` (429) or `queue`.
    pub throttle_action: ThrottleAction,
    /// How long `delay` waits before trying again, in milliseconds.
    pub throttle_delay_ms: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            per_agent: AgentLimit::default(),
            per_project: ProjectLimit::default(),
            per_domain: DomainLimit::default(),
            global: GlobalLimit::default(),
            throttle_action: ThrottleAction::Delay,
            throttle_delay_ms: 100,
        }
    }
}

/// `rate_limits.per_agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentLimit {
    /// Sustained rate, e.g. `100/min`.
    pub default: Rate,
    /// Requests allowed at once above the sustained rate (at least 1).
    #[serde(deserialize_with = "nonzero_u32")]
    pub burst: NonZeroU32,
}

impl Default for AgentLimit {
    fn default() -> Self {
        AgentLimit {
            default: Rate::per_minute(100),
            burst: burst(20),
        }
    }
}

/// `rate_limits.per_project`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectLimit {
    /// Sustained rate, e.g. `1000/min`.
    pub default: Rate,
    /// Requests allowed at once above the sustained rate (at least 1).
    #[serde(deserialize_with = "nonzero_u32")]
    pub burst: NonZeroU32,
}

impl Default for ProjectLimit {
    fn default() -> Self {
        ProjectLimit {
            default: Rate::per_minute(1000),
            burst: burst(100),
        }
    }
}

/// `rate_limits.global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalLimit {
    /// Sustained rate for the whole gateway, e.g. `10000/min`.
    pub default: Rate,
    /// Requests allowed at once above the sustained rate (at least 1).
    #[serde(deserialize_with = "nonzero_u32")]
    pub burst: NonZeroU32,
}

impl Default for GlobalLimit {
    fn default() -> Self {
        GlobalLimit {
            default: Rate::per_minute(10_000),
            burst: burst(1000),
        }
    }
}

/// `rate_limits.per_domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainLimit {
    /// The rate for a destination whose rule sets no `rate_limit`.
    pub default: Rate,
    /// Whether rules may set their own `rate_limit`. When false, every
    /// destination gets `default`.
    pub customizable: bool,
    /// The highest `rate_limit` a rule may set; higher values are capped.
    pub max: Rate,
}

impl Default for DomainLimit {
    fn default() -> Self {
        DomainLimit {
            default: Rate::per_minute(200),
            customizable: true,
            max: Rate::per_minute(500),
        }
    }
}

/// What happens to a request over its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleAction {
    /// Wait `throttle_delay_ms`, then try the limiter again.
    #[default]
    Delay,
    /// Answer 429 with `Retry-After` at once.
    Reject,
    /// Hold the request until the limiter lets it through.
    Queue,
}
