//! `monitoring:` — the behavior analysis engine (seed 001 §5.7) and the
//! alert table of seed 002 §8.2, and `geoip:`, the databases that give
//! audit lines their `destination_asn` and `destination_geo` (seed 001 §6.2).
//!
//! `clawgress analyze` reads these; the gateway itself only reads `geoip:`.

use serde::{Deserialize, Serialize};

use crate::located::Located;
use crate::model::or_default;
use crate::values::{ByteSize, DurationSpec, Rate};

/// `monitoring:` — how `clawgress analyze` learns each agent's normal
/// behaviour, what it calls an anomaly, and what it does about one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringPolicy {
    /// How long an agent is watched before "first time" findings (a new
    /// domain, method, port or ASN) count: everything is new at first.
    pub learning_period: DurationSpec,
    /// A minute's requests, bytes out or tokens at this many times the
    /// agent's usual minute is a spike (with at least the `min_*` below).
    pub spike_factor: Located<f64>,
    /// Fewest requests in one minute that can be a request-rate spike.
    pub min_spike_requests: u64,
    /// Fewest bytes sent in one minute that can be a bytes-out spike.
    pub min_spike_bytes_out: ByteSize,
    /// Fewest tokens in one minute that can be a token surge.
    pub min_token_surge: u64,
    /// More blocked requests than this, by one agent within the window, is
    /// "repeated blocked requests" (seed: more than 10 per minute).
    pub repeated_blocked: Rate,
    /// The same finding (agent, kind and subject) is reported at most once
    /// per this long; later ones are counted into the next report.
    pub cooldown: DurationSpec,
    /// The rate an agent is held to by a `rate_reduction` action.
    pub rate_reduction: Rate,
    /// Severity and action of each row of the alert table (seed 002 §8.2).
    #[serde(deserialize_with = "or_default")]
    pub alerts: AlertTable,
}

impl Default for MonitoringPolicy {
    fn default() -> Self {
        MonitoringPolicy {
            learning_period: DurationSpec::from_secs(600),
            spike_factor: Located::unlocated(5.0),
            min_spike_requests: 60,
            min_spike_bytes_out: ByteSize::bytes(10_000_000),
            min_token_surge: 50_000,
            repeated_blocked: Rate::per_minute(10),
            cooldown: DurationSpec::from_secs(300),
            rate_reduction: Rate::per_minute(10),
            alerts: AlertTable::default(),
        }
    }
}

/// One row per condition of seed 002 §8.2, with the seed's severities and
/// actions as defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertTable {
    /// A request to a blocked domain: warning, notify.
    pub blocked_domain: AlertRule,
    /// Repeated blocked requests (more than `repeated_blocked`): high, alert.
    pub repeated_blocked: AlertRule,
    /// An upstream certificate refused (the gateway blocked it): high, alert.
    pub certificate_error: AlertRule,
    /// A rate limit exceeded: info, log.
    pub rate_limit_exceeded: AlertRule,
    /// Unusual traffic (new domain, rate, bytes or token spikes, ASN change,
    /// a method or port never used before): medium, notify.
    pub unusual_traffic: AlertRule,
    /// Data exfiltration (a DLP block, an exfiltration-shaped DNS name):
    /// critical, quarantine (the seed's "block + terminate + alert"; see
    /// `fault_containment.auto_terminate.on_data_exfiltration`).
    pub data_exfiltration: AlertRule,
}

impl Default for AlertTable {
    fn default() -> Self {
        let rule = |severity, action| AlertRule { severity, action };
        AlertTable {
            blocked_domain: rule(Severity::Warning, AlertAction::Notify),
            repeated_blocked: rule(Severity::High, AlertAction::Alert),
            certificate_error: rule(Severity::High, AlertAction::Alert),
            rate_limit_exceeded: rule(Severity::Info, AlertAction::Log),
            unusual_traffic: rule(Severity::Medium, AlertAction::Notify),
            data_exfiltration: rule(Severity::Critical, AlertAction::Quarantine),
        }
    }
}

/// One alert condition's severity and action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub severity: Severity,
    pub action: AlertAction,
}

/// Seed 002 §8.2's severities, lowest first. Anomalies are published on
/// `alerts.<severity>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Warning,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What an anomaly leads to, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Recorded (published) only.
    Log,
    /// Recorded, and marked for the people on call to read.
    Notify,
    /// Recorded and marked for someone to investigate now.
    Alert,
    /// The agent is held to `monitoring.rate_reduction` on every replica
    /// until released.
    RateReduction,
    /// The agent is refused (`agent_quarantined`) on every replica until an
    /// operator releases it.
    Quarantine,
}

impl AlertAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertAction::Log => "log",
            AlertAction::Notify => "notify",
            AlertAction::Alert => "alert",
            AlertAction::RateReduction => "rate_reduction",
            AlertAction::Quarantine => "quarantine",
        }
    }
}

/// `geoip:` — MaxMind-format databases (GeoLite2 / GeoIP2 ASN and Country,
/// or any MMDB with the same fields), paths relative to the policy file.
/// Without them audit lines carry no `destination_asn` / `destination_geo`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIpPolicy {
    /// An ASN database (`autonomous_system_number`), e.g. GeoLite2-ASN.mmdb.
    pub asn_db: Option<Located<String>>,
    /// A country database (`country.iso_code`), e.g. GeoLite2-Country.mmdb.
    pub country_db: Option<Located<String>>,
}
