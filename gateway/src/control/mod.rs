//! Runtime control state that operators change while the gateway runs
//! (seed §2.3, §10): temporary allowlist entries, access requests and their
//! approval, the emergency block, and held (quarantined or rate-reduced)
//! agents ([`hold`]).
//!
//! The state is a set of JSON values under keys of the NATS JetStream KV
//! bucket `clawgress-control`, shared by every replica ([`store`]). Each
//! replica holds it as an immutable [`ControlSnapshot`] that the request path
//! reads without locks.

pub mod hold;
mod lkg;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clawgress_policies::pattern::DomainPattern;
use serde::{Deserialize, Serialize};

pub use hold::{HoldMode, HoldVerdict, QuarantinedAgent, hold_key};
pub use store::{ControlError, ControlStore, Expect, StoreStatus};

/// Ports a temporary entry opens when none are given.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// A temporary allowlist entry (`clawgress egress allow-temp`, or an
/// approved access request). It expires by itself.
// Stored types accept fields they do not know: during a rolling upgrade an
// older replica must still read what a newer one wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempAllow {
    pub id: String,
    /// `api.example.com` or `*.example.com`, normalized.
    pub domain: String,
    pub ports: Vec<u16>,
    pub expires_at: DateTime<Utc>,
    pub reason: String,
    pub task: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// The access request it came from, when it was approved rather than
    /// added directly.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The team whose agents it opens the domain to (made by a team-scoped
    /// operator); `None`: every agent.
    #[serde(default)]
    pub team: Option<String>,
}

/// Where an access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Rejected,
}

/// `clawgress egress request`: someone asks for a domain; a maintainer
/// approves or rejects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: String,
    pub domain: String,
    pub ports: Vec<u16>,
    pub reason: String,
    pub project: Option<String>,
    /// How long the entry lasts once approved, in seconds.
    pub duration_secs: u64,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub status: RequestStatus,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<DateTime<Utc>>,
    /// The team that asked (a team-scoped caller); its approval opens the
    /// domain to that team's agents only.
    #[serde(default)]
    pub team: Option<String>,
}

/// `clawgress egress emergency-block`: every agent is denied until a
/// maintainer restores with the incident id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyBlock {
    pub incident_id: String,
    pub reason: String,
    pub actor: String,
    pub since: DateTime<Utc>,
}

/// One key of the bucket, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlItem {
    Allow(TempAllow),
    Request(AccessRequest),
    Emergency(EmergencyBlock),
    /// A quarantined or rate-reduced agent.
    Quarantine(QuarantinedAgent),
}

const ALLOW_PREFIX: &str = "allow.";
const REQUEST_PREFIX: &str = "request.";
pub const EMERGENCY_KEY: &str = "emergency";

impl ControlItem {
    /// The bucket key this item lives under.
    pub fn key(&self) -> String {
        match self {
            ControlItem::Allow(allow) => format!("{ALLOW_PREFIX}{}", allow.id),
            ControlItem::Request(request) => format!("{REQUEST_PREFIX}{}", request.id),
            ControlItem::Emergency(_) => EMERGENCY_KEY.to_string(),
            ControlItem::Quarantine(held) => hold_key(&held.agent_id),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let value = match self {
            ControlItem::Allow(allow) => serde_json::to_vec(allow),
            ControlItem::Request(request) => serde_json::to_vec(request),
            ControlItem::Emergency(block) => serde_json::to_vec(block),
            ControlItem::Quarantine(held) => serde_json::to_vec(held),
        };
        value.unwrap_or_default()
    }

    /// Decodes the value stored under `key`. A value this version cannot
    /// read is an error the caller logs; it never becomes an allow.
    pub fn decode(key: &str, value: &[u8]) -> Result<ControlItem, String> {
        let item = if key.starts_with(ALLOW_PREFIX) {
            serde_json::from_slice(value).map(ControlItem::Allow)
        } else if key.starts_with(REQUEST_PREFIX) {
            serde_json::from_slice(value).map(ControlItem::Request)
        } else if key == EMERGENCY_KEY {
            serde_json::from_slice(value).map(ControlItem::Emergency)
        } else if key.starts_with(hold::HOLD_PREFIX) {
            serde_json::from_slice(value).map(ControlItem::Quarantine)
        } else {
            return Err(format!("unknown control key '{key}'"));
        };
        item.map_err(|e| format!("control key '{key}' holds a value this gateway cannot read: {e}"))
    }

    /// Like [`decode`](Self::decode), but an emergency block (or an agent's
    /// hold) this version cannot read still blocks: not understanding a
    /// block is no reason to lift it. Other unreadable values are dropped
    /// (and logged).
    pub fn decode_failing_closed(key: &str, value: &[u8]) -> Option<ControlItem> {
        match ControlItem::decode(key, value) {
            Ok(item) => Some(item),
            Err(error) if key == EMERGENCY_KEY => {
                tracing::error!("{error}; treating it as an emergency block in force");
                Some(ControlItem::Emergency(EmergencyBlock {
                    incident_id: "unreadable".to_string(),
                    reason: "the control store holds an emergency block this gateway version cannot read".to_string(),
                    actor: "unknown".to_string(),
                    since: Utc::now(),
                }))
            }
            Err(error) if let Some(agent_id) = hold::agent_of_key(key) => {
                tracing::error!("{error}; treating it as a quarantine of {agent_id}");
                Some(ControlItem::Quarantine(QuarantinedAgent {
                    agent_id,
                    mode: HoldMode::Quarantine,
                    per_minute: None,
                    reason: "the control store holds a quarantine this gateway version cannot read".to_string(),
                    actor: "unknown".to_string(),
                    since: Utc::now(),
                    anomaly_id: None,
                    request_id: None,
                }))
            }
            Err(error) => {
                tracing::error!("{error}");
                None
            }
        }
    }
}

/// A temporary entry, compiled for matching.
#[derive(Debug, Clone)]
struct CompiledAllow {
    pattern: DomainPattern,
    entry: TempAllow,
}

/// What the control state says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlVerdict<'a> {
    /// Everything is blocked; the incident says why.
    EmergencyBlock(&'a EmergencyBlock),
    /// A live temporary entry covers the destination.
    TempAllowed(&'a TempAllow),
    NoOpinion,
}

/// The control state at one revision. Immutable: a change builds a new one.
#[derive(Debug, Clone, Default)]
pub struct ControlSnapshot {
    items: BTreeMap<String, ControlItem>,
    /// The bucket revision each present key was last written at; writes
    /// that expect a revision (compare-and-set) check against it.
    revisions: BTreeMap<String, u64>,
    allows: Vec<CompiledAllow>,
    emergency: Option<EmergencyBlock>,
    /// Held agents by id; looked up on every request, so a map of its own.
    holds: std::collections::HashMap<String, QuarantinedAgent>,
    /// The bucket revision of the last change applied (0 when never synced).
    pub revision: u64,
}

impl ControlSnapshot {
    /// A snapshot whose keys were all last written at `revision` (or
    /// earlier; used where per-key revisions are not known).
    pub fn from_items(items: BTreeMap<String, ControlItem>, revision: u64) -> ControlSnapshot {
        let revisions = items.keys().map(|k| (k.clone(), revision)).collect();
        ControlSnapshot::from_parts(items, revisions, revision)
    }

    pub fn from_parts(
        items: BTreeMap<String, ControlItem>,
        revisions: BTreeMap<String, u64>,
        revision: u64,
    ) -> ControlSnapshot {
        let mut allows = Vec::new();
        let mut emergency = None;
        let mut holds = std::collections::HashMap::new();
        for item in items.values() {
            match item {
                ControlItem::Allow(entry) => match entry.domain.parse::<DomainPattern>() {
                    Ok(pattern) => allows.push(CompiledAllow {
                        pattern,
                        entry: entry.clone(),
                    }),
                    Err(error) => tracing::warn!(id = %entry.id, "temporary entry ignored: {error}"),
                },
                ControlItem::Emergency(block) => emergency = Some(block.clone()),
                ControlItem::Quarantine(held) => {
                    holds.insert(held.agent_id.clone(), held.clone());
                }
                ControlItem::Request(_) => {}
            }
        }
        ControlSnapshot {
            items,
            revisions,
            allows,
            emergency,
            holds,
            revision,
        }
    }

    /// A snapshot with `key` set to `item` (or removed) at `revision`.
    pub fn with(&self, key: &str, item: Option<ControlItem>, revision: u64) -> ControlSnapshot {
        let mut items = self.items.clone();
        let mut revisions = self.revisions.clone();
        match item {
            Some(item) => {
                items.insert(key.to_string(), item);
                revisions.insert(key.to_string(), revision);
            }
            None => {
                items.remove(key);
                revisions.remove(key);
            }
        }
        ControlSnapshot::from_parts(items, revisions, revision.max(self.revision))
    }

    /// The revision `key` was last written at, if it is present.
    pub fn revision_of(&self, key: &str) -> Option<u64> {
        self.revisions.get(key).copied()
    }

    pub fn revisions(&self) -> &BTreeMap<String, u64> {
        &self.revisions
    }

    pub fn items(&self) -> &BTreeMap<String, ControlItem> {
        &self.items
    }

    pub fn emergency(&self) -> Option<&EmergencyBlock> {
        self.emergency.as_ref()
    }

    /// The hold on `agent_id`, if any. On the request path: one hash
    /// lookup, skipped when nobody is held.
    pub fn hold(&self, agent_id: &str) -> Option<&QuarantinedAgent> {
        if self.holds.is_empty() {
            return None;
        }
        self.holds.get(agent_id)
    }

    /// Every held agent.
    pub fn holds(&self) -> impl Iterator<Item = &QuarantinedAgent> {
        self.holds.values()
    }

    /// Live temporary entries (not yet expired at `now`).
    pub fn temporary(&self, now: DateTime<Utc>) -> impl Iterator<Item = &TempAllow> {
        self.allows
            .iter()
            .map(|a| &a.entry)
            .filter(move |entry| entry.expires_at > now)
    }

    pub fn requests(&self) -> impl Iterator<Item = &AccessRequest> {
        self.items.values().filter_map(|item| match item {
            ControlItem::Request(request) => Some(request),
            _ => None,
        })
    }

    pub fn request(&self, id: &str) -> Option<&AccessRequest> {
        match self.items.get(&format!("{REQUEST_PREFIX}{id}")) {
            Some(ControlItem::Request(request)) => Some(request),
            _ => None,
        }
    }

    pub fn temp_allow(&self, id: &str) -> Option<&TempAllow> {
        match self.items.get(&format!("{ALLOW_PREFIX}{id}")) {
            Some(ControlItem::Allow(entry)) => Some(entry),
            _ => None,
        }
    }

    /// [`check_for_team`](Self::check_for_team) for an agent of no team:
    /// only entries that open a domain to every agent count.
    pub fn check(&self, host: &str, port: u16, now: DateTime<Utc>) -> ControlVerdict<'_> {
        self.check_for_team(host, port, "", now)
    }

    /// The hot-path question, for an agent of `team`: entries for every
    /// agent and entries of its own team count. Allocation-free: an
    /// emergency block is one branch, and the temporary list is short and
    /// scanned in place.
    pub fn check_for_team(&self, host: &str, port: u16, team: &str, now: DateTime<Utc>) -> ControlVerdict<'_> {
        if let Some(block) = &self.emergency {
            return ControlVerdict::EmergencyBlock(block);
        }
        self.allows
            .iter()
            .find(|a| {
                a.entry.expires_at > now
                    && a.entry.ports.contains(&port)
                    && a.entry.team.as_deref().is_none_or(|own| own == team)
                    && a.pattern.matches(host)
            })
            .map_or(ControlVerdict::NoOpinion, |a| ControlVerdict::TempAllowed(&a.entry))
    }

    /// A live temporary entry covering the bare name `host`, whatever its
    /// ports: the DNS control server's question, which names no port.
    pub fn allows_name(&self, host: &str, now: DateTime<Utc>) -> Option<&TempAllow> {
        self.allows
            .iter()
            .find(|a| a.entry.expires_at > now && a.pattern.matches(host))
            .map(|a| &a.entry)
    }
}

/// A fresh id such as `req-3f9a1c02b7e4`: short enough to type; 48 random
/// bits, and new items are created only if their key is free.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() >> 16)
}

/// Normalizes a domain an operator typed, with the policy's own rules and
/// hints (`*.` wildcards, IDNA, no IP literals).
pub fn parse_domain(text: &str) -> Result<String, String> {
    let pattern = text
        .parse::<DomainPattern>()
        .map_err(|e| format!("{}; {}", e.problem, e.hint))?;
    // A temporary entry is a narrow exception: `*.com` would open a whole
    // top-level domain to every agent.
    if let DomainPattern::Wildcard { suffix } = &pattern
        && !suffix.contains('.')
    {
        return Err(format!(
            "'{pattern}' would open a whole top-level domain; name the site, e.g. *.example.{suffix}"
        ));
    }
    Ok(pattern.to_string())
}

#[cfg(test)]
mod tests;
