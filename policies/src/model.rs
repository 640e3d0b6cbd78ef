//! The policy bundle as written: one YAML document combining the YAML
//! blocks of the Egress Governance Policy seed, plus our additions.
//!
//! Every section is optional. A missing section takes the seed's values,
//! except the lists of destinations (`allowlist`, `project_allowlist`,
//! `project_blocklist`, `tls.pins`), which start empty: the seed's entries
//! are examples, and an empty allowlist denies everything.
//!
//! The doc comments on the fields are the user documentation of the file
//! format.

mod allowlist;
mod budgets;
mod containment;
mod dlp;
mod dns;
mod egress;
mod limits;
mod monitoring;
mod tls;

use serde::{Deserialize, Deserializer};

pub use allowlist::{AllowGroup, AllowRule, Allowlist, BlockEntry, Ports, Protocol, Protocols, Roles, TlsMode};
pub use budgets::{BudgetMode, BudgetRule, BudgetScope, BudgetWindow, BudgetsPolicy, ModelPrice, PricingFile};
pub use containment::{
    AutoTerminate, BreakerRecovery, BreakerStates, BreakerThresholds, CircuitBreaker, FaultContainment, Sandbox,
    SandboxNetwork,
};
pub use dlp::{DlpAction, DlpActions, DlpPolicy, OversizeAction};
pub use dns::{DnsPolicy, ResolverKind};
pub use egress::{DefaultAction, EgressPolicy, Enforcement, EnvironmentOverride, FailMode, Logging, Monitoring};
pub use limits::{AgentLimit, DomainLimit, GlobalLimit, ProjectLimit, RateLimits, ThrottleAction};
pub use monitoring::{AlertAction, AlertRule, AlertTable, GeoIpPolicy, MonitoringPolicy, Severity};
pub use tls::{PinSet, SpkiPin, TlsPolicy, TlsVersion};

/// The whole policy file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyDocument {
    /// Default action, logging, monitoring, enforcement and fail mode (§1).
    #[serde(deserialize_with = "or_default")]
    pub egress: EgressPolicy,
    /// Named groups of allowed destinations (§2.1). A group is a list of
    /// rules, or `{roles: [..], description: "..", rules: [..]}` to limit it
    /// to some agent roles.
    #[serde(deserialize_with = "or_default")]
    pub allowlist: Allowlist,
    /// The project's own allowed destinations (§2.2, §11); they form the
    /// group named `project_allowlist`.
    #[serde(deserialize_with = "or_default")]
    pub project_allowlist: Vec<AllowRule>,
    /// Destinations no rule may open (§11); they win over every allow.
    #[serde(deserialize_with = "or_default")]
    pub project_blocklist: Vec<BlockEntry>,
    /// Request rates per agent, project, domain and gateway (§3).
    #[serde(deserialize_with = "or_default")]
    pub rate_limits: RateLimits,
    /// Name resolution, blocked name patterns and static hosts (§6.1).
    #[serde(deserialize_with = "or_default")]
    pub dns: DnsPolicy,
    /// TLS versions, certificate checks and pins (§7.1).
    #[serde(deserialize_with = "or_default")]
    pub tls: TlsPolicy,
    /// Per-agent resource limits (§5.1).
    #[serde(deserialize_with = "or_default")]
    pub sandbox: Sandbox,
    /// Failure isolation and the request timeout (§5.2).
    #[serde(deserialize_with = "or_default")]
    pub fault_containment: FaultContainment,
    /// Per-destination circuit breakers (§5.3).
    #[serde(deserialize_with = "or_default")]
    pub circuit_breaker: CircuitBreaker,
    /// Evidence collection for regulated environments (§9.2).
    #[serde(deserialize_with = "or_default")]
    pub compliance_logging: ComplianceLogging,
    /// Outbound data-loss prevention on request bodies (our addition).
    #[serde(deserialize_with = "or_default")]
    pub dlp: DlpPolicy,
    /// Token and cost budgets for AI requests (our addition).
    #[serde(deserialize_with = "or_default")]
    pub budgets: BudgetsPolicy,
    /// The behavior analysis engine and the alert table (`clawgress
    /// analyze`; seed 001 §5.7, seed 002 §8.2).
    #[serde(deserialize_with = "or_default")]
    pub monitoring: MonitoringPolicy,
    /// ASN and country databases for `destination_asn` / `destination_geo`.
    #[serde(deserialize_with = "or_default")]
    pub geoip: GeoIpPolicy,
}

/// Reads a section or list whose key may be written with nothing under it
/// (`dns:` with every line commented out): that means "the defaults", not
/// an error.
pub(crate) fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The group name under which `project_allowlist` rules are reported.
pub const PROJECT_GROUP: &str = "project_allowlist";

/// `compliance_logging:` — what the audit trail keeps as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceLogging {
    /// Write compliance evidence at all.
    pub enabled: bool,
    /// Record request headers (credentials are always redacted). Off by default.
    pub include_headers: bool,
    /// Record request and response bodies. Off by default.
    pub include_body: bool,
    /// Record a SHA-256 of bodies instead of the bodies, for verification.
    pub hash_sensitive: bool,
    /// Chain each audit line to the previous one by hash.
    pub tamper_evident: bool,
}

impl Default for ComplianceLogging {
    fn default() -> Self {
        ComplianceLogging {
            enabled: true,
            include_headers: false,
            include_body: false,
            hash_sensitive: true,
            tamper_evident: true,
        }
    }
}

#[cfg(test)]
mod tests;
