//! `sandbox:`, `fault_containment:` and `circuit_breaker:` — isolation and
//! containment (seed §5).

use serde::Deserialize;

use crate::located::Located;
use crate::model::dns::ResolverKind;
use crate::model::or_default;
use crate::values::{ByteSize, CpuQuantity, DurationSpec, Percent};

/// `sandbox:` — the resources an agent's network operations may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// CPU per agent: `"100m"` (millicores), `0.5` or `2` (cores).
    pub cpu_limit: CpuQuantity,
    /// Memory per agent: `"256Mi"`, `"1Gi"`, `"512MB"`.
    pub memory_limit: ByteSize,
    /// Longest run of one operation, e.g. `30s`.
    pub timeout: Located<DurationSpec>,
    #[serde(deserialize_with = "or_default")]
    pub network: SandboxNetwork,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            cpu_limit: CpuQuantity::from_millicores(100),
            memory_limit: ByteSize::bytes(256 << 20),
            timeout: Located::unlocated(DurationSpec::from_secs(30)),
            network: SandboxNetwork::default(),
        }
    }
}

/// `sandbox.network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxNetwork {
    /// No inbound connections to the agent.
    pub egress_only: bool,
    /// `internal` (the gateway's controlled resolver) or `system`.
    pub dns_resolver: ResolverKind,
}

impl Default for SandboxNetwork {
    fn default() -> Self {
        SandboxNetwork {
            egress_only: true,
            dns_resolver: ResolverKind::Internal,
        }
    }
}

/// `fault_containment:` — one agent's failure must not affect others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultContainment {
    /// Keep each agent's limits and connections separate.
    pub agent_isolation: bool,
    /// Stop an agent that exhausts its resources.
    #[serde(deserialize_with = "or_default")]
    pub auto_terminate: AutoTerminate,
    /// Give a retried request a fresh context.
    pub retry_isolation: bool,
    /// Most requests one agent may have in flight at once.
    pub max_concurrent_requests: Located<u32>,
    /// Most request bytes one agent may have buffered, e.g. `10MB`.
    pub max_pending_bytes: ByteSize,
    /// Longest wait for an upstream answer before the gateway gives up
    /// (504), e.g. `30s`.
    pub request_timeout: Located<DurationSpec>,
}

impl Default for FaultContainment {
    fn default() -> Self {
        FaultContainment {
            agent_isolation: true,
            auto_terminate: AutoTerminate::default(),
            retry_isolation: true,
            max_concurrent_requests: Located::unlocated(10),
            max_pending_bytes: ByteSize::bytes(10_000_000),
            request_timeout: Located::unlocated(DurationSpec::from_secs(30)),
        }
    }
}

/// `fault_containment.auto_terminate`: when to stop an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoTerminate {
    pub on_timeout: bool,
    pub on_memory_exceeded: bool,
    pub on_cpu_exceeded: bool,
    /// Quarantine an agent caught attempting data exfiltration (seed 002
    /// §8.2: "block + terminate + alert"). With `false`, the alert table's
    /// `quarantine` for that row becomes `alert`.
    pub on_data_exfiltration: bool,
}

impl Default for AutoTerminate {
    fn default() -> Self {
        AutoTerminate {
            on_timeout: true,
            on_memory_exceeded: true,
            on_cpu_exceeded: true,
            on_data_exfiltration: true,
        }
    }
}

/// `circuit_breaker:` — stop sending to a destination that keeps failing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// One breaker per destination domain (rather than one for all).
    pub per_domain: bool,
    /// When the breaker opens.
    #[serde(deserialize_with = "or_default")]
    pub thresholds: BreakerThresholds,
    /// Descriptions of the three states, for dashboards.
    #[serde(deserialize_with = "or_default")]
    pub states: BreakerStates,
    /// How an open breaker closes again.
    #[serde(deserialize_with = "or_default")]
    pub recovery: BreakerRecovery,
    /// Upstream HTTP statuses that count as failures (besides connection
    /// errors and timeouts), e.g. `[502, 503, 504]`.
    pub failure_status_codes: Vec<Located<u16>>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            per_domain: true,
            thresholds: BreakerThresholds::default(),
            states: BreakerStates::default(),
            recovery: BreakerRecovery::default(),
            failure_status_codes: [502, 503, 504].into_iter().map(Located::unlocated).collect(),
        }
    }
}

/// `circuit_breaker.thresholds`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerThresholds {
    /// Share of failed requests in `window` that opens the breaker, e.g. `50%`.
    pub failure_rate: Percent,
    /// The sliding window the rate is measured over, e.g. `60s`.
    pub window: DurationSpec,
    /// Fewest requests in `window` before the rate counts.
    pub min_requests: u32,
}

impl Default for BreakerThresholds {
    fn default() -> Self {
        BreakerThresholds {
            failure_rate: Percent::new(50.0),
            window: DurationSpec::from_secs(60),
            min_requests: 10,
        }
    }
}

/// `circuit_breaker.states`: human descriptions of each state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerStates {
    pub closed: String,
    pub open: String,
    pub half_open: String,
}

impl Default for BreakerStates {
    fn default() -> Self {
        BreakerStates {
            closed: "normal operation".to_string(),
            open: "all requests fail fast".to_string(),
            half_open: "probe with limited requests".to_string(),
        }
    }
}

/// `circuit_breaker.recovery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerRecovery {
    /// How long the breaker stays open before probing, e.g. `30s`.
    pub wait_time: DurationSpec,
    /// Requests let through while half open.
    pub probe_count: u32,
    /// Successful probes needed to close the breaker (at most `probe_count`).
    pub success_threshold: Located<u32>,
}

impl Default for BreakerRecovery {
    fn default() -> Self {
        BreakerRecovery {
            wait_time: DurationSpec::from_secs(30),
            probe_count: 3,
            success_threshold: Located::unlocated(2),
        }
    }
}
