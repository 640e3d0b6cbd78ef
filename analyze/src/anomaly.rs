//! The `anomaly` event: what `clawgress analyze` publishes on
//! `alerts.<severity>` (NATS) and prints as a JSON line.
//!
//! ```json
//! {"type":"anomaly","id":"an-5f0c…","timestamp":"2026-12-06T01:20:00.123Z",
//!  "detected_at":"2026-12-06T01:20:00.140Z","agent_id":"scraper-001",
//!  "condition":"data_exfiltration","kind":"dlp_block","severity":"critical",
//!  "anomaly_score":1.0,"action":"quarantine","subject":"api.example.com",
//!  "detail":"…","count":1,"request_id":"…",
//!  "observed":null,"baseline":null,
//!  "destination":{"domain":"api.example.com","asn":64500,"geo":"NL"},
//!  "enforcement":{"action":"quarantine","outcome":"ok"}}
//! ```
//!
//! `condition` is the row of seed 002 §8.2 (`blocked_domain`,
//! `repeated_blocked`, `certificate_error`, `rate_limit_exceeded`,
//! `unusual_traffic`, `data_exfiltration`), `kind` the detector that fired.
//! `count` is how many findings this report stands for (the same finding
//! within `monitoring.cooldown` is folded into the next report).
//! `enforcement` is present when the action changes the control store
//! (`quarantine`, `rate_reduction`): `outcome` is `ok`, `already` (held
//! before), `dry_run` (no control API given) or `failed: <why>`.

use clawgress_policies::model::{AlertAction, Severity};
use serde::Serialize;

/// The rows of seed 002 §8.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    BlockedDomain,
    RepeatedBlocked,
    CertificateError,
    RateLimitExceeded,
    UnusualTraffic,
    DataExfiltration,
}

/// The detector that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    BlockedRequest,
    RepeatedBlocked,
    CertificateError,
    RateLimited,
    NewDomain,
    RequestSpike,
    BytesOutSpike,
    TokenSurge,
    AsnChange,
    UnusualMethod,
    UnusualPort,
    DlpBlock,
    DnsExfiltration,
}

impl Kind {
    pub fn condition(self) -> Condition {
        match self {
            Kind::BlockedRequest => Condition::BlockedDomain,
            Kind::RepeatedBlocked => Condition::RepeatedBlocked,
            Kind::CertificateError => Condition::CertificateError,
            Kind::RateLimited => Condition::RateLimitExceeded,
            Kind::NewDomain
            | Kind::RequestSpike
            | Kind::BytesOutSpike
            | Kind::TokenSurge
            | Kind::AsnChange
            | Kind::UnusualMethod
            | Kind::UnusualPort => Condition::UnusualTraffic,
            Kind::DlpBlock | Kind::DnsExfiltration => Condition::DataExfiltration,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BlockedRequest => "blocked_request",
            Kind::RepeatedBlocked => "repeated_blocked",
            Kind::CertificateError => "certificate_error",
            Kind::RateLimited => "rate_limited",
            Kind::NewDomain => "new_domain",
            Kind::RequestSpike => "request_spike",
            Kind::BytesOutSpike => "bytes_out_spike",
            Kind::TokenSurge => "token_surge",
            Kind::AsnChange => "asn_change",
            Kind::UnusualMethod => "unusual_method",
            Kind::UnusualPort => "unusual_port",
            Kind::DlpBlock => "dlp_block",
            Kind::DnsExfiltration => "dns_exfiltration",
        }
    }
}

/// Where the request that showed the anomaly was going.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Destination {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<String>,
}

/// What an action did to the control store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enforcement {
    pub action: AlertAction,
    pub outcome: String,
}

/// One anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub id: String,
    /// When the event that showed it happened (the audit line's time).
    pub timestamp: String,
    /// When the engine saw it (wall clock).
    pub detected_at: String,
    pub agent_id: String,
    pub condition: Condition,
    pub kind: Kind,
    pub severity: Severity,
    /// 0 (normal) to 1 (certainly bad): the severity's base score, raised
    /// within its band by how far a spike is past its threshold.
    pub anomaly_score: f64,
    pub action: AlertAction,
    pub subject: String,
    pub detail: String,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
}

impl Anomaly {
    /// The NATS subject it is published on.
    pub fn subject_name(&self) -> String {
        format!("alerts.{}", self.severity.as_str())
    }
}

/// The base score of each severity; a finding's score stays in its band.
pub fn base_score(severity: Severity) -> f64 {
    match severity {
        Severity::Info => 0.1,
        Severity::Warning => 0.3,
        Severity::Medium => 0.5,
        Severity::High => 0.8,
        Severity::Critical => 1.0,
    }
}

/// A spike's score: its severity's base, plus up to most of the way to the
/// next band as `observed` grows past `threshold`.
pub fn spike_score(severity: Severity, observed: f64, threshold: f64) -> f64 {
    let base = base_score(severity);
    let room = match severity {
        Severity::Info | Severity::Warning | Severity::Medium => 0.29,
        Severity::High => 0.19,
        Severity::Critical => 0.0,
    };
    if observed <= 0.0 || threshold <= 0.0 {
        return base;
    }
    let past = (1.0 - threshold / observed).clamp(0.0, 1.0);
    ((base + room * past) * 1000.0).round() / 1000.0
}
