//! The gateway's Prometheus metrics, in one registry served at `/metrics`.
//!
//! Every label value comes from a closed set fixed in code (enums here, or the
//! reason codes given to [`GatewayMetrics::new`]), never from a request, so the
//! number of series is bounded by construction. Children whose labels are known
//! up front are resolved once and kept in arrays indexed by enum; the rest are
//! resolved on first use and cached, so recording a request never hashes label
//! strings or takes the vec's lock after warm-up.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::audit::AuditMetrics;
use bounded::BoundedCounters;

pub mod bounded;

/// The reasons a request is throttled (429, retry later) rather than
/// denied; their `egress_requests_rate_limited_total` series exist from the
/// start.
pub const THROTTLE_REASONS: [&str; 3] = [
    "rate_limit_exceeded",
    "max_concurrent_requests_exceeded",
    "max_pending_bytes_exceeded",
];

/// The `reason` of a request that has none (most allowed requests).
pub const NO_REASON: &str = "none";
/// The `reason` recorded for a code that was not registered with
/// [`GatewayMetrics::new`]: bounded, and visible as a sign of a missing code.
pub const OTHER_REASON: &str = "other";
const OTHER_INDEX: usize = 1;

/// Content type of [`GatewayMetrics::render`].
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Whole-request latency buckets, seconds: from a cached local answer to a slow
/// model completion.
/// 2 s is a bucket edge because it is the external-call P95 SLO: a quantile
/// interpolated across a wider bucket would misplace the threshold.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

/// Distinct agents with their own `egress_agent_requests_total` series.
const MAX_AGENT_SERIES: usize = 256;
/// Distinct denied domains (registrable part) with their own
/// `egress_denied_domain_total` series.
const MAX_DENIED_DOMAIN_SERIES: usize = 100;
/// The agent label of a request with no (valid) credential.
pub const ANONYMOUS_AGENT: &str = "anonymous";

/// Longest policy version kept as a label; versions are digests.
const MAX_VERSION_LABEL: usize = 64;

/// What happened to a request, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Allow,
    Deny,
    WouldDeny,
    /// Allowed, but the gateway or upstream failed to complete it.
    Error,
    /// Refused by a rate limiter (not a policy denial).
    RateLimited,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 5] = [Self::Allow, Self::Deny, Self::WouldDeny, Self::Error, Self::RateLimited];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
            Self::Error => "error",
            Self::RateLimited => "rate_limited",
        }
    }
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Index into [`STATUS_CLASSES`]; anything that is not a real HTTP status is "none".
fn status_class_index(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// The listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerLabel {
    Proxy,
    Transparent,
    Admin,
    Mtls,
}

impl ListenerLabel {
    const ALL: [ListenerLabel; 4] = [Self::Proxy, Self::Transparent, Self::Admin, Self::Mtls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Transparent => "transparent",
            Self::Admin => "admin",
            Self::Mtls => "mtls",
        }
    }
}

/// How a DNS lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsResult {
    Resolved,
    NotFound,
    /// Resolved, but every address was refused (private range, metadata, ...).
    Blocked,
    Timeout,
    Error,
}

impl DnsResult {
    const ALL: [DnsResult; 5] = [
        Self::Resolved,
        Self::NotFound,
        Self::Blocked,
        Self::Timeout,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolved => "ok",
            Self::NotFound => "nxdomain",
            Self::Blocked => "blocked",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Counter children created on first use and then reached by index.
struct LazyCounters {
    vec: IntCounterVec,
    cells: Box<[OnceLock<IntCounter>]>,
}

impl LazyCounters {
    fn new(vec: IntCounterVec, len: usize) -> Self {
        LazyCounters {
            vec,
            cells: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get<const N: usize>(&self, index: usize, labels: impl FnOnce() -> [&'static str; N]) -> &IntCounter {
        self.cells[index].get_or_init(|| self.vec.with_label_values(&labels()))
    }
}

/// All of the gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    /// Registered reason codes; index 0 is [`NO_REASON`], 1 is [`OTHER_REASON`].
    reasons: Box<[&'static str]>,
    /// `http_client_requests_total`, indexed by (decision, reason, status class).
    requests: LazyCounters,
    durations: [Histogram; 5],
    upstream_resets: IntCounter,
    /// `[out, in]`.
    egress_bytes: [IntCounter; 2],
    /// `egress_requests_blocked_total`, indexed by reason.
    blocked: LazyCounters,
    /// `egress_requests_rate_limited_total`, indexed by reason.
    rate_limited: LazyCounters,
    /// `egress_agent_requests_total{agent, decision}`.
    agents: BoundedCounters,
    /// `egress_denied_domain_total{domain}`.
    denied_domains: BoundedCounters,
    /// `[success, failure]`.
    policy_reloads: [IntCounter; 2],
    policy_last_reload_success: IntGauge,
    policy_version: IntGaugeVec,
    /// Reset-then-set of the version must not interleave between two reloads.
    policy_version_update: Mutex<()>,
    audit: AuditMetrics,
    connections: [IntGauge; 4],
    dns_lookups: [IntCounter; 5],
    /// `egress_fail_open_total`, `[control_store, audit_sink]`.
    fail_open: [IntCounter; 2],
}

/// The dependencies whose absence `egress.fail_mode` governs.
pub const FAIL_OPEN_DEPENDENCIES: [&str; 2] = ["control_store", "audit_sink"];

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics")
            .field("reasons", &self.reasons)
            .finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    /// `reasons` is the closed set of reason codes the gateway can produce (deny
    /// reasons, upstream error codes). Any other code is recorded as "other".
    pub fn new(reasons: &[&'static str]) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let mut reason_table = vec![NO_REASON, OTHER_REASON];
        for &reason in reasons {
            if !reason_table.contains(&reason) {
                reason_table.push(reason);
            }
        }

        let requests = IntCounterVec::new(
            Opts::new("http_client_requests_total", "Requests handled by the egress gateway"),
            &["decision", "reason", "status_class"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let durations_vec = HistogramVec::new(
            HistogramOpts::new(
                "http_client_duration_seconds",
                "Whole-request latency through the egress gateway",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["decision"],
        )?;
        registry.register(Box::new(durations_vec.clone()))?;
        let durations = try_array(DecisionLabel::ALL, |d| {
            durations_vec.get_metric_with_label_values(&[d.as_str()])
        })?;

        let upstream_resets = register(
            &registry,
            IntCounter::new(
                "upstream_reset_events",
                "Upstream connections reset or closed before a complete response",
            )?,
        )?;
        let bytes_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new("egress_bytes_total", "Bytes relayed between agents and destinations"),
                &["direction"],
            )?,
        )?;
        let egress_bytes = try_array(["out", "in"], |d| bytes_vec.get_metric_with_label_values(&[d]))?;
        let blocked = register(
            &registry,
            IntCounterVec::new(
                Opts::new("egress_requests_blocked_total", "Requests refused by policy"),
                &["reason"],
            )?,
        )?;
        let rate_limited = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "egress_requests_rate_limited_total",
                    "Requests throttled by a rate limit or a containment limit",
                ),
                &["reason"],
            )?,
        )?;
        let agents = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "egress_agent_requests_total",
                    "Requests per agent (\"anonymous\" without a credential, \"other\" past 256 agents)",
                ),
                &["agent", "decision"],
            )?,
        )?;
        let decisions = DecisionLabel::ALL.map(DecisionLabel::as_str);
        let agents = BoundedCounters::new(agents, MAX_AGENT_SERIES, &decisions);
        let denied_domains = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "egress_denied_domain_total",
                    "Policy denials per destination host (\"other\" past 100 hosts)",
                ),
                &["domain"],
            )?,
        )?;
        let denied_domains = BoundedCounters::new(denied_domains, MAX_DENIED_DOMAIN_SERIES, &[]);
        let reloads_vec = register(
            &registry,
            IntCounterVec::new(Opts::new("policy_reloads_total", "Policy reload attempts"), &["result"])?,
        )?;
        let policy_reloads = try_array(["success", "failure"], |r| {
            reloads_vec.get_metric_with_label_values(&[r])
        })?;
        let policy_last_reload_success = register(
            &registry,
            IntGauge::new(
                "policy_last_reload_success",
                "1 if the last policy reload succeeded, 0 if it failed",
            )?,
        )?;
        let policy_version = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("policy_version_info", "The policy version in force (value 1)"),
                &["version"],
            )?,
        )?;

        let audit = AuditMetrics::register(&registry, "Requests refused because the audit queue was full")?;

        let connections_vec = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("connections_active", "Open client connections"),
                &["listener"],
            )?,
        )?;
        let connections = try_array(ListenerLabel::ALL, |l| {
            connections_vec.get_metric_with_label_values(&[l.as_str()])
        })?;
        let dns_vec = register(
            &registry,
            IntCounterVec::new(Opts::new("dns_lookups_total", "DNS lookups by outcome"), &["result"])?,
        )?;
        let dns_lookups = try_array(DnsResult::ALL, |r| dns_vec.get_metric_with_label_values(&[r.as_str()]))?;

        let fail_open_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "egress_fail_open_total",
                    "Requests let through by egress.fail_mode: open while a dependency was unavailable",
                ),
                &["dependency"],
            )?,
        )?;
        let fail_open = try_array(FAIL_OPEN_DEPENDENCIES, |d| {
            fail_open_vec.get_metric_with_label_values(&[d])
        })?;

        let reason_count = reason_table.len();
        let metrics = GatewayMetrics {
            fail_open,
            registry,
            reasons: reason_table.into_boxed_slice(),
            requests: LazyCounters::new(requests, DecisionLabel::ALL.len() * reason_count * STATUS_CLASSES.len()),
            durations,
            upstream_resets,
            egress_bytes,
            blocked: LazyCounters::new(blocked, reason_count),
            rate_limited: LazyCounters::new(rate_limited, reason_count),
            agents,
            denied_domains,
            policy_reloads,
            policy_last_reload_success,
            policy_version,
            policy_version_update: Mutex::new(()),
            audit,
            connections,
            dns_lookups,
        };
        // Blocked and throttled counts exist at 0 from the start: a series
        // born at 1 hides its first event from `increase()`, and the alert
        // for a first blocked request would never fire.
        for index in OTHER_INDEX..reason_count {
            let reason = metrics.reasons[index];
            metrics.blocked.get(index, || [reason]);
            if THROTTLE_REASONS.contains(&reason) {
                metrics.rate_limited.get(index, || [reason]);
            }
        }
        Ok(metrics)
    }

    /// Records one finished request. A `Deny` also counts as blocked.
    pub fn record_request(
        &self,
        decision: DecisionLabel,
        reason: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let reason_index = self.reason_index(reason);
        let status_index = status_class_index(status);
        let index = ((decision as usize) * self.reasons.len() + reason_index) * STATUS_CLASSES.len() + status_index;
        self.requests
            .get(index, || {
                [
                    decision.as_str(),
                    self.reasons[reason_index],
                    STATUS_CLASSES[status_index],
                ]
            })
            .inc();
        self.durations[decision as usize].observe(elapsed.as_secs_f64());
        match decision {
            DecisionLabel::Deny => self.blocked.get(reason_index, || [self.reasons[reason_index]]).inc(),
            DecisionLabel::RateLimited => self
                .rate_limited
                .get(reason_index, || [self.reasons[reason_index]])
                .inc(),
            _ => {}
        }
    }

    /// Who asked and, for a denial, where to: the per-agent and per-denied-host
    /// counters, bounded (see [`bounded`]).
    pub fn record_parties(&self, decision: DecisionLabel, agent: Option<&str>, host: Option<&str>) {
        self.agents.inc(agent.unwrap_or(ANONYMOUS_AGENT), decision as usize);
        if decision == DecisionLabel::Deny
            && let Some(host) = host
        {
            self.denied_domains.inc(registrable_part(host), 0);
        }
    }

    /// The agents with the most requests: (agent, total, per decision in
    /// [`DecisionLabel::ALL`] order).
    pub fn top_agents(&self, n: usize) -> Vec<(String, u64, Vec<u64>)> {
        self.agents
            .top(n)
            .into_iter()
            .map(|(agent, total)| {
                let split = self.agents.by_tail(&agent);
                (agent, total, split)
            })
            .collect()
    }

    /// The hosts denied most often.
    pub fn top_denied_domains(&self, n: usize) -> Vec<(String, u64)> {
        self.denied_domains.top(n)
    }

    /// A request passed by `fail_mode: open`; `dependency` is one of
    /// [`FAIL_OPEN_DEPENDENCIES`].
    pub fn record_fail_open(&self, dependency: &str) {
        if let Some(index) = FAIL_OPEN_DEPENDENCIES.iter().position(|d| *d == dependency) {
            self.fail_open[index].inc();
        }
    }

    pub fn record_upstream_reset(&self) {
        self.upstream_resets.inc();
    }

    /// Bytes sent towards destinations (`out`) and received from them (`in`).
    pub fn record_bytes(&self, bytes_out: u64, bytes_in: u64) {
        self.egress_bytes[0].inc_by(bytes_out);
        self.egress_bytes[1].inc_by(bytes_in);
    }

    /// `version` is the policy bundle's digest; anything else is shown as "invalid"
    /// so the label cannot carry arbitrary text.
    pub fn record_policy_reload_success(&self, version: &str) {
        self.policy_reloads[0].inc();
        self.policy_last_reload_success.set(1);
        let label = version_label(version);
        let _guard = self
            .policy_version_update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.policy_version.reset();
        self.policy_version.with_label_values(&[label]).set(1);
    }

    /// The previous version stays in force, and in `policy_version_info`.
    pub fn record_policy_reload_failure(&self) {
        self.policy_reloads[1].inc();
        self.policy_last_reload_success.set(0);
    }

    pub fn record_dns_lookup(&self, result: DnsResult) {
        self.dns_lookups[result as usize].inc();
    }

    /// Counts a connection as active until the returned guard is dropped.
    pub fn connection_opened(&self, listener: ListenerLabel) -> ConnectionGuard {
        let gauge = self.connections[listener as usize].clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// The audit writer's counters, registered here.
    pub fn audit(&self) -> AuditMetrics {
        self.audit.clone()
    }

    /// For components that own further metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    fn reason_index(&self, reason: &str) -> usize {
        self.reasons
            .iter()
            .position(|&known| known == reason)
            .unwrap_or(OTHER_INDEX)
    }
}

/// Decrements `connections_active` when the connection ends, however it ends.
#[must_use = "the connection counts as active until this guard is dropped"]
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn try_array<L: Copy, T, const N: usize>(
    labels: [L; N],
    mut child: impl FnMut(L) -> prometheus::Result<T>,
) -> prometheus::Result<[T; N]> {
    let children = labels
        .iter()
        .map(|&l| child(l))
        .collect::<prometheus::Result<Vec<T>>>()?;
    children
        .try_into()
        .map_err(|_| prometheus::Error::Msg("label array length mismatch".into()))
}

/// The last two labels of a host name (`a.b.evil.example` → `evil.example`),
/// an IP literal as it is. Denied names are chosen by whoever makes the
/// request, and data smuggled in a name's leading labels (the DNS-exfil
/// pattern) must not travel on into Prometheus; the audit line keeps the
/// whole name.
pub fn registrable_part(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return host;
    }
    let trimmed = host.trim_end_matches('.');
    match trimmed.rmatch_indices('.').nth(1) {
        Some((dot, _)) => &trimmed[dot + 1..],
        None => trimmed,
    }
}

fn version_label(version: &str) -> &str {
    let well_formed = !version.is_empty()
        && version.len() <= MAX_VERSION_LABEL
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if well_formed { version } else { "invalid" }
}

#[cfg(test)]
mod tests;
