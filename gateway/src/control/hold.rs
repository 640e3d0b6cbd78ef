//! Agents held by the behavior analysis engine (or an operator): a
//! quarantined agent is refused on every replica (`agent_quarantined`), a
//! rate-reduced one held to a few requests a minute (`agent_rate_reduced`),
//! until an operator releases it (`clawgress egress release-agent`).
//!
//! Each hold is one key of the control bucket, `quarantine.<agent>`, so
//! every replica applies it from its watch like an emergency block.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub(super) const HOLD_PREFIX: &str = "quarantine.";

/// How an agent is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldMode {
    /// Every request refused, 403 `agent_quarantined`.
    #[default]
    Quarantine,
    /// At most `per_minute` requests a minute; the rest 429
    /// `agent_rate_reduced`.
    RateReduction,
}

impl HoldMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldMode::Quarantine => "quarantine",
            HoldMode::RateReduction => "rate_reduction",
        }
    }
}

/// One held agent, as stored under `quarantine.<agent>`.
// Unknown fields are accepted: an older replica must still read what a
// newer one wrote (and must not lift a hold it half understands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedAgent {
    pub agent_id: String,
    #[serde(default)]
    pub mode: HoldMode,
    /// For `rate_reduction`: requests allowed per minute.
    #[serde(default)]
    pub per_minute: Option<u32>,
    pub reason: String,
    /// Who asked: a control-API actor (the analyzer's token, or a person).
    pub actor: String,
    pub since: DateTime<Utc>,
    /// The anomaly that led to it (`clawgress analyze`), if any.
    #[serde(default)]
    pub anomaly_id: Option<String>,
    /// The request whose record showed the anomaly, if any.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// The bucket key of `agent_id`'s hold. KV keys take `[-_=/.A-Za-z0-9]`
/// and `.` separates tokens, so every other byte (and `.` and `=`) is
/// written `=XX`: any agent id has exactly one key.
pub fn hold_key(agent_id: &str) -> String {
    let mut key = String::with_capacity(HOLD_PREFIX.len() + agent_id.len());
    key.push_str(HOLD_PREFIX);
    for byte in agent_id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            key.push(byte as char);
        } else {
            key.push_str(&format!("={byte:02X}"));
        }
    }
    key
}

/// The agent id a hold key names (for a value this version cannot read).
pub(super) fn agent_of_key(key: &str) -> Option<String> {
    let escaped = key.strip_prefix(HOLD_PREFIX)?.as_bytes();
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] == b'=' {
            let hex = std::str::from_utf8(escaped.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(escaped[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a hold does to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldVerdict {
    Quarantined(Box<QuarantinedAgent>),
    /// Over the reduced rate: retry after this long.
    Reduced {
        per_minute: u32,
        retry_after: Duration,
    },
}

/// The reduced agents' pacing: one theoretical arrival time per agent
/// (GCRA with a burst of one request), in nanoseconds since `origin`.
/// Local to each replica: replicas together allow up to their number times
/// the rate, which is enough to slow an agent down without a shared counter
/// on the request path.
#[derive(Debug)]
pub struct ReducedRates {
    origin: std::time::Instant,
    tats: Mutex<HashMap<String, u64>>,
}

impl Default for ReducedRates {
    fn default() -> Self {
        ReducedRates {
            origin: std::time::Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }
}

impl ReducedRates {
    /// Admits one request of `agent_id` at `per_minute`, or says how long
    /// to wait.
    pub fn admit(&self, agent_id: &str, per_minute: u32) -> Result<(), Duration> {
        let interval = 60_000_000_000 / u64::from(per_minute.max(1));
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tats = self.tats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Held agents are few; a bound keeps a flood of ids from growing it.
        if tats.len() > 10_000 {
            tats.retain(|_, tat| *tat > now);
        }
        let tat = tats.get(agent_id).copied().unwrap_or(0);
        if tat > now {
            return Err(Duration::from_nanos(tat - now));
        }
        tats.insert(agent_id.to_string(), now + interval);
        Ok(())
    }
}
