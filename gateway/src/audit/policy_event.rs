//! The `policy_rejected` audit line: a policy bundle the gateway refused to
//! load on reload (a bad or missing signature under `--policy-key`, or an
//! invalid file), with the version that stays in force.
//!
//! ```text
//! {"timestamp":"…","type":"policy_rejected","file":"/etc/clawgress/policy.yaml","reason":"bad_signature",
//!  "detail":"/etc/…/policy.yaml:212: the signature by key 3f2a… does not match …","version_in_force":"ab12cd34ef56",
//!  "alert":true,"prev_hash":"…","hash":"…"}
//! ```
//!
//! `alert` is always true: the line also goes to the `audit.alert` stream.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::event::{AuditEvent, Rfc3339Millis};

/// Longest `detail` kept: a loader message names the file, line and fix.
const MAX_DETAIL_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    pub timestamp: DateTime<Utc>,
    /// The bundle's path as the gateway was given it.
    pub file: String,
    /// A stable code: `signature_missing`, `signature_malformed`,
    /// `unknown_key`, `bad_signature`, `invalid_bundle`.
    pub reason: &'static str,
    /// The loader's message (file:line and what to do); never key material.
    pub detail: String,
    /// The last-known-good version that stays in force.
    pub version_in_force: String,
}

impl PolicyEvent {
    pub fn rejected(file: &str, reason: &'static str, detail: &str, version_in_force: &str) -> Self {
        PolicyEvent {
            timestamp: Utc::now(),
            file: file.to_string(),
            reason,
            detail: super::event::truncate_on_char_boundary(detail, MAX_DETAIL_BYTES).to_string(),
            version_in_force: version_in_force.to_string(),
        }
    }
}

impl From<PolicyEvent> for AuditEvent {
    fn from(event: PolicyEvent) -> Self {
        AuditEvent::Policy(Box::new(event))
    }
}

#[derive(Serialize)]
struct PolicyLine<'a> {
    timestamp: Rfc3339Millis<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
    file: &'a str,
    reason: &'static str,
    detail: &'a str,
    version_in_force: &'a str,
    alert: bool,
}

pub(crate) fn serialize_line<S: Serializer>(event: &PolicyEvent, serializer: S) -> Result<S::Ok, S::Error> {
    PolicyLine {
        timestamp: Rfc3339Millis(&event.timestamp),
        kind: "policy_rejected",
        file: &event.file,
        reason: event.reason,
        detail: &event.detail,
        version_in_force: &event.version_in_force,
        alert: true,
    }
    .serialize(serializer)
}
