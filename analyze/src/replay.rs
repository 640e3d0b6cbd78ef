//! `clawgress policy diff`: the recorded requests of a trail, decided
//! again by a candidate policy (`CompiledPolicy::evaluate`, the gateway's
//! own matcher, at the time of the replay), and the (agent, destination)
//! pairs whose policy verdict would change.
//!
//! Only the policy's part of each decision is replayed. Lines whose
//! outcome the allowlist did not decide are counted and left out: refused
//! before the policy looked (identity, malformed requests, an emergency
//! block, a quarantine), allowed by a temporary entry (the control store,
//! not the bundle), and `private_address` refusals (the SSRF check on
//! resolved addresses, which a replay cannot redo).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use clawgress_policies::matcher::{MatchOutcome, MatchRequest, Protocol};
use clawgress_policies::{CompiledPolicy, PolicyBundle};
use serde::{Deserialize, Serialize};

use crate::line::Line;
use crate::source::TrailReader;

/// Refusals of the allowlist itself: the recorded verdict was "deny".
const POLICY_DENIALS: &[&str] = &[
    "domain_not_in_allowlist",
    "blocked_pattern",
    "blocklisted",
    "port_not_allowed",
    "protocol_not_allowed",
    "role_not_allowed",
];
/// Refusals that came before the allowlist was consulted.
const BEFORE_POLICY: &[&str] = &[
    "emergency_block",
    "agent_quarantined",
    "control_store_unavailable",
    "audit_unavailable",
    "malformed_host",
    "proxy_loop",
    "not_a_proxy_request",
    "unsupported_url_scheme",
    "private_address",
    "missing_host",
    "header_timeout",
    "destination_mismatch",
    "missing_sni",
    "unknown_source",
    "source_mismatch",
];

/// One (agent, destination) whose verdict changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub agent_id: String,
    pub domain: String,
    pub port: u16,
    /// Requests recorded for the pair in the window.
    pub requests: u64,
    pub last_seen: String,
    /// What decided it then (`policy_id` of the line) and now.
    pub was: String,
    pub now: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub replayed: u64,
    pub unchanged: u64,
    /// Lines the policy did not decide (see the module documentation).
    pub not_policy_decided: u64,
    pub temporary: u64,
    pub skipped: Vec<String>,
    pub newly_denied: Vec<Change>,
    pub newly_allowed: Vec<Change>,
}

/// `agents:` entries of an agents file: only the id and the role matter.
#[derive(Debug, Deserialize)]
struct AgentsFile {
    #[serde(default)]
    agents: Vec<AgentEntry>,
}

#[derive(Debug, Deserialize)]
struct AgentEntry {
    id: String,
    #[serde(default)]
    role: String,
}

/// Roles by agent id, from an agents file (role-limited groups need them).
pub fn roles_from(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let file: AgentsFile =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not an agents file: {e}", path.display()))?;
    Ok(file.agents.into_iter().map(|a| (a.id, a.role)).collect())
}

/// Replays the trail's requests since `since` under `candidate`.
pub fn diff(
    trail: &Path,
    candidate: &PolicyBundle,
    since: DateTime<Utc>,
    roles: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> anyhow::Result<Diff> {
    let compiled = CompiledPolicy::compile(candidate);
    let mut reader =
        TrailReader::open(trail).map_err(|e| anyhow::anyhow!("cannot read the trail {}: {e}", trail.display()))?;
    let mut out = Diff::default();
    let mut denied: BTreeMap<(String, String, u16), Change> = BTreeMap::new();
    let mut allowed: BTreeMap<(String, String, u16), Change> = BTreeMap::new();
    let since = since.timestamp_millis();
    while let Some((number, bytes)) = reader.next_line()? {
        let line = match Line::parse(bytes) {
            Ok(line) => line,
            Err(why) => {
                if out.skipped.len() < 100 {
                    out.skipped.push(format!("{}:{number}: {why}", trail.display()));
                }
                continue;
            }
        };
        if !line.is_egress() || line.at_ms() < since {
            continue;
        }
        let (Some(agent), Some(domain), Some(port)) = (line.agent_id.as_deref(), line.domain(), line.port()) else {
            out.not_policy_decided += 1;
            continue;
        };
        let reason = line.reason.as_deref().unwrap_or("");
        if BEFORE_POLICY.contains(&reason) {
            out.not_policy_decided += 1;
            continue;
        }
        let policy_id = raw_policy_id(bytes);
        if policy_id.starts_with("control.allow.") {
            out.temporary += 1;
            continue;
        }
        let was_allowed = !POLICY_DENIALS.contains(&reason);
        let protocol = if line.tunnel || line.protocol.as_deref() == Some("https") {
            Protocol::Https
        } else {
            Protocol::Http
        };
        let role = roles.get(agent).map_or("", String::as_str);
        let verdict = compiled.evaluate(
            &MatchRequest {
                host: domain,
                port,
                protocol,
                role,
            },
            now,
        );
        out.replayed += 1;
        let (now_allowed, now_by) = match &verdict {
            MatchOutcome::Allow(by) => (true, by.policy_id.to_string()),
            MatchOutcome::Deny(denial) => (false, format!("{} ({})", denial.policy_id, denial.reason.as_str())),
        };
        if now_allowed == was_allowed {
            out.unchanged += 1;
            continue;
        }
        let target = if now_allowed { &mut allowed } else { &mut denied };
        let was = if was_allowed {
            policy_id
        } else {
            format!("{policy_id} ({reason})")
        };
        let change = target
            .entry((agent.to_string(), domain.to_string(), port))
            .or_insert_with(|| Change {
                agent_id: agent.to_string(),
                domain: domain.to_string(),
                port,
                requests: 0,
                last_seen: String::new(),
                was,
                now: now_by,
            });
        change.requests += 1;
        change.last_seen = line.timestamp.to_string();
    }
    out.newly_denied = denied.into_values().collect();
    out.newly_allowed = allowed.into_values().collect();
    Ok(out)
}

/// The line's `policy_id` (not among the fields the engine decodes).
fn raw_policy_id(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        policy_id: String,
    }
    serde_json::from_slice::<Only>(bytes)
        .map(|o| o.policy_id)
        .unwrap_or_default()
}

/// The diff as a person reads it.
pub fn render(diff: &Diff) -> String {
    let mut out = String::new();
    let section = |out: &mut String, title: &str, changes: &[Change]| {
        out.push_str(&format!("{title} ({}):\n", changes.len()));
        if changes.is_empty() {
            out.push_str("  none\n");
        }
        for c in changes {
            out.push_str(&format!(
                "  {:<24} {:<40} {} requests, last {}\n      was: {}\n      now: {}\n",
                c.agent_id,
                format!("{}:{}", c.domain, c.port),
                c.requests,
                c.last_seen,
                c.was,
                c.now
            ));
        }
    };
    section(&mut out, "newly denied", &diff.newly_denied);
    section(&mut out, "newly allowed", &diff.newly_allowed);
    out.push_str(&format!(
        "replayed {} requests: {} unchanged; {} not decided by the policy, {} by temporary entries (left out)\n",
        diff.replayed, diff.unchanged, diff.not_policy_decided, diff.temporary
    ));
    for skipped in &diff.skipped {
        out.push_str(&format!("{skipped}\n"));
    }
    out
}
