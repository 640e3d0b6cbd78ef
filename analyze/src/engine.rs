//! The behavior engine: a baseline per agent, updated by every audit line
//! in the order they come, and the detectors of seed 001 §5.7 and seed 002
//! §8.2 run against it.
//!
//! Time is the lines' own (`timestamp`), never the wall clock, so a replay
//! of a recorded trail finds exactly what the live run found. The baseline
//! is kept in one-minute buckets: each agent's requests, bytes out and
//! tokens per minute are averaged (an exponentially weighted mean over
//! about an hour of minutes), and a minute past `spike_factor` times that
//! mean (and past the `min_*` floor) is a spike.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use clawgress_policies::model::{AlertAction, AlertRule, AlertTable, PolicyDocument, Severity};

use crate::anomaly::{self, Anomaly, Destination, Kind};
use crate::line::Line;

/// Minutes the per-minute means remember (the EWMA's span).
const BASELINE_MINUTES: f64 = 60.0;
/// Domains remembered per agent; past this, new domains are not reported
/// (a crawler of the whole web has no "usual" set to leave).
const MAX_DOMAINS: usize = 100_000;
/// Methods and ports remembered per agent.
const MAX_SMALL_SET: usize = 64;
/// Reasons that mean "the policy refused the destination".
const POLICY_BLOCKS: &[&str] = &[
    "domain_not_in_allowlist",
    "blocked_pattern",
    "blocklisted",
    "port_not_allowed",
    "protocol_not_allowed",
    "role_not_allowed",
    "private_address",
];

/// The engine's settings, from the policy's `monitoring:` and
/// `fault_containment.auto_terminate`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub learning_ms: i64,
    pub spike_factor: f64,
    pub min_requests: f64,
    pub min_bytes_out: f64,
    pub min_tokens: f64,
    pub blocked_limit: usize,
    pub blocked_window_ms: i64,
    pub cooldown_ms: i64,
    pub alerts: AlertTable,
    pub quarantine_on_exfiltration: bool,
    pub rate_reduction_per_minute: u32,
}

impl Settings {
    pub fn from_policy(doc: &PolicyDocument) -> Settings {
        let m = &doc.monitoring;
        let rate = m.rate_reduction;
        let per_minute = (rate.per_second() * 60.0).round().max(1.0) as u32;
        Settings {
            learning_ms: m.learning_period.duration().as_millis() as i64,
            spike_factor: m.spike_factor.value,
            min_requests: m.min_spike_requests as f64,
            min_bytes_out: m.min_spike_bytes_out.as_u64() as f64,
            min_tokens: m.min_token_surge as f64,
            blocked_limit: m.repeated_blocked.count().get() as usize,
            blocked_window_ms: m.repeated_blocked.window().duration().as_millis() as i64,
            cooldown_ms: m.cooldown.duration().as_millis() as i64,
            alerts: m.alerts,
            quarantine_on_exfiltration: doc.fault_containment.auto_terminate.on_data_exfiltration,
            rate_reduction_per_minute: per_minute,
        }
    }

    fn rule(&self, kind: Kind) -> AlertRule {
        use crate::anomaly::Condition;
        let a = &self.alerts;
        let mut rule = match kind.condition() {
            Condition::BlockedDomain => a.blocked_domain,
            Condition::RepeatedBlocked => a.repeated_blocked,
            Condition::CertificateError => a.certificate_error,
            Condition::RateLimitExceeded => a.rate_limit_exceeded,
            Condition::UnusualTraffic => a.unusual_traffic,
            Condition::DataExfiltration => a.data_exfiltration,
        };
        if kind.condition() == Condition::DataExfiltration
            && rule.action == AlertAction::Quarantine
            && !self.quarantine_on_exfiltration
        {
            rule.action = AlertAction::Alert;
        }
        rule
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_policy(&PolicyDocument::default())
    }
}

/// Counts of what the engine saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub events: u64,
    pub egress: u64,
    pub dns: u64,
    pub admin: u64,
    pub other: u64,
    /// Lines that could not be decoded (skipped, and named where read).
    pub skipped: u64,
    pub anomalies: u64,
    pub by_severity: [u64; 5],
}

/// One quantity per minute and its usual level.
#[derive(Debug, Default)]
struct Meter {
    minute: i64,
    current: f64,
    mean: f64,
    primed: bool,
    fired_minute: i64,
}

impl Meter {
    /// Adds `amount` in `minute`; returns the minute's total so far.
    fn add(&mut self, minute: i64, amount: f64) -> f64 {
        if minute > self.minute {
            let alpha = 2.0 / (BASELINE_MINUTES + 1.0);
            if self.primed {
                self.mean = self.mean * (1.0 - alpha) + alpha * self.current;
            } else {
                // The first whole minute is the first estimate, not 0.
                self.mean = self.current;
                self.primed = true;
            }
            let idle = (minute - self.minute - 1).clamp(0, 100_000) as i32;
            self.mean *= (1.0 - alpha).powi(idle);
            self.current = 0.0;
            self.minute = minute;
        }
        // A line from an earlier minute (two streams interleaved) counts
        // into the current one: close enough for a baseline.
        self.current += amount;
        self.current
    }
}

#[derive(Debug)]
struct AgentState {
    first_ms: i64,
    domains: HashMap<Box<str>, Option<u32>>,
    methods: Vec<Box<str>>,
    ports: Vec<u16>,
    requests: Meter,
    bytes_out: Meter,
    tokens: Meter,
    blocked: VecDeque<i64>,
    /// Last report per finding (hash of kind and subject), and how many
    /// findings were folded since.
    reported: HashMap<u64, (i64, u64)>,
}

impl AgentState {
    fn new(at: i64) -> AgentState {
        let minute = at.div_euclid(60_000);
        let meter = || Meter {
            minute,
            fired_minute: i64::MIN,
            ..Meter::default()
        };
        AgentState {
            first_ms: at,
            domains: HashMap::new(),
            methods: Vec::new(),
            ports: Vec::new(),
            requests: meter(),
            bytes_out: meter(),
            tokens: meter(),
            blocked: VecDeque::new(),
            reported: HashMap::new(),
        }
    }
}

/// A finding before it becomes an [`Anomaly`].
struct Finding<'a> {
    kind: Kind,
    subject: Cow<'a, str>,
    detail: String,
    observed: Option<f64>,
    threshold: Option<f64>,
    baseline: Option<f64>,
}

pub struct Engine {
    settings: Settings,
    agents: HashMap<Box<str>, AgentState>,
    pub stats: Stats,
    id_prefix: u64,
    next_id: u64,
}

impl Engine {
    pub fn new(settings: Settings) -> Engine {
        Engine {
            settings,
            agents: HashMap::new(),
            stats: Stats::default(),
            id_prefix: rand::random::<u64>() >> 16,
            next_id: 0,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts a line that could not be decoded.
    pub fn skipped(&mut self) {
        self.stats.skipped += 1;
    }

    /// Reads one decoded line; anomalies it shows are pushed onto `out`.
    pub fn observe(&mut self, line: &Line<'_>, out: &mut Vec<Anomaly>) {
        self.stats.events += 1;
        let kind = &*line.kind;
        if line.is_egress() {
            self.stats.egress += 1;
        } else if kind == "dns_query" {
            self.stats.dns += 1;
        } else if kind == "admin_action" {
            self.stats.admin += 1;
            return;
        } else {
            self.stats.other += 1;
            return;
        }
        let Some(agent_id) = line.agent_id.as_deref() else {
            return;
        };
        let at = line.at_ms();
        if !self.agents.contains_key(agent_id) {
            self.agents.insert(Box::from(agent_id), AgentState::new(at));
        }
        let mut findings: Vec<Finding<'_>> = Vec::new();
        if let Some(state) = self.agents.get_mut(agent_id) {
            if kind == "dns_query" {
                dns_findings(line, &mut findings);
            } else {
                egress_findings(&self.settings, state, line, at, &mut findings);
            }
        }
        for finding in findings {
            self.report(agent_id, line, at, finding, out);
        }
    }

    fn report(&mut self, agent_id: &str, line: &Line<'_>, at: i64, finding: Finding<'_>, out: &mut Vec<Anomaly>) {
        let rule = self.settings.rule(finding.kind);
        let cooldown = self.settings.cooldown_ms;
        let Some(state) = self.agents.get_mut(agent_id) else {
            return;
        };
        let key = {
            let mut hasher = std::hash::DefaultHasher::new();
            finding.kind.hash(&mut hasher);
            finding.subject.as_ref().hash(&mut hasher);
            hasher.finish()
        };
        let count = match state.reported.get_mut(&key) {
            Some((last, folded)) if at - *last < cooldown && at >= *last => {
                *folded += 1;
                return;
            }
            Some((last, folded)) => {
                let count = *folded + 1;
                (*last, *folded) = (at, 0);
                count
            }
            None => {
                state.reported.insert(key, (at, 0));
                1
            }
        };
        let score = match (finding.observed, finding.threshold) {
            (Some(observed), Some(threshold)) => anomaly::spike_score(rule.severity, observed, threshold),
            _ => anomaly::base_score(rule.severity),
        };
        self.next_id += 1;
        self.stats.anomalies += 1;
        self.stats.by_severity[rule.severity as usize] += 1;
        let destination = line.domain().map(|domain| Destination {
            domain: Some(domain.to_string()),
            asn: line.destination_asn,
            geo: line.destination_geo.as_deref().map(str::to_string),
        });
        out.push(Anomaly {
            event_type: "anomaly",
            id: format!("an-{:012x}{:08x}", self.id_prefix, self.next_id),
            timestamp: line.timestamp.to_string(),
            detected_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            agent_id: agent_id.to_string(),
            condition: finding.kind.condition(),
            kind: finding.kind,
            severity: rule.severity,
            anomaly_score: score,
            action: rule.action,
            subject: finding.subject.into_owned(),
            detail: finding.detail,
            count,
            request_id: line.request_id.as_deref().map(str::to_string),
            observed: finding.observed,
            baseline: finding.baseline,
            destination,
            enforcement: None,
        });
    }
}

fn dns_findings<'a>(line: &'a Line<'_>, findings: &mut Vec<Finding<'a>>) {
    if let Some(why @ ("long_label" | "high_entropy_label")) = line.alert_reason.as_deref() {
        findings.push(Finding {
            kind: Kind::DnsExfiltration,
            subject: Cow::Borrowed("dns"),
            detail: format!(
                "DNS query for an exfiltration-shaped name ({why}): {}",
                line.qname.as_deref().unwrap_or("?")
            ),
            observed: None,
            threshold: None,
            baseline: None,
        });
    }
}

fn egress_findings<'a>(
    settings: &Settings,
    state: &mut AgentState,
    line: &'a Line<'_>,
    at: i64,
    findings: &mut Vec<Finding<'a>>,
) {
    let domain = line.domain().unwrap_or("");
    let decision = line.decision.as_deref().unwrap_or("");
    let reason = line.reason.as_deref().unwrap_or("");
    let policy_block = POLICY_BLOCKS.contains(&reason);
    if decision == "deny" || decision == "would_deny" {
        if policy_block {
            let how = if decision == "deny" {
                "blocked"
            } else {
                "would be blocked (report mode)"
            };
            findings.push(finding(
                Kind::BlockedRequest,
                domain.into(),
                format!("request to {domain} {how}: {reason}"),
            ));
        }
        if reason == "dlp_blocked" {
            let kinds: Vec<&str> = line.dlp_matches.iter().filter_map(|m| m.kind.as_deref()).collect();
            findings.push(finding(
                Kind::DlpBlock,
                domain.into(),
                format!(
                    "data exfiltration attempt to {domain}: DLP blocked the request ({})",
                    kinds.join(", ")
                ),
            ));
        }
        if reason.starts_with("upstream_certificate_") || reason == "upstream_tls_failed" {
            findings.push(finding(
                Kind::CertificateError,
                domain.into(),
                format!("certificate error for {domain}: {reason} (blocked)"),
            ));
        }
        if policy_block || reason == "dlp_blocked" {
            state.blocked.push_back(at);
            while state
                .blocked
                .front()
                .is_some_and(|t| *t <= at - settings.blocked_window_ms)
            {
                state.blocked.pop_front();
            }
            while state.blocked.len() > settings.blocked_limit + 1 {
                state.blocked.pop_front();
            }
            if state.blocked.len() > settings.blocked_limit {
                findings.push(Finding {
                    observed: Some(state.blocked.len() as f64),
                    threshold: Some(settings.blocked_limit as f64),
                    ..finding(
                        Kind::RepeatedBlocked,
                        "".into(),
                        format!(
                            "more than {} blocked requests within {} s",
                            settings.blocked_limit,
                            settings.blocked_window_ms / 1000
                        ),
                    )
                });
            }
        }
    }
    if decision == "rate_limited" {
        findings.push(finding(
            Kind::RateLimited,
            reason.into(),
            format!("rate limit exceeded ({reason}) for {domain}"),
        ));
    }
    let minute = at.div_euclid(60_000);
    let learned = at - state.first_ms >= settings.learning_ms;
    let spike_ready = (minute - state.first_ms.div_euclid(60_000)) * 60_000 >= settings.learning_ms;
    // Every attempt counts towards the request rate; what went out
    // (bytes, tokens) only when it was sent.
    let requests = state.requests.add(minute, 1.0);
    let spike = |meter: &mut Meter, now: f64, floor: f64| -> Option<(f64, f64)> {
        let threshold = floor.max(settings.spike_factor * meter.mean);
        (spike_ready && now > threshold && meter.fired_minute != minute).then(|| {
            meter.fired_minute = minute;
            (threshold, meter.mean)
        })
    };
    let mut spikes = Vec::new();
    if let Some((threshold, mean)) = spike(&mut state.requests, requests, settings.min_requests) {
        spikes.push((Kind::RequestSpike, requests, threshold, mean, "requests"));
    }
    let served = decision == "allow" || decision == "would_deny";
    if served {
        let bytes = state.bytes_out.add(minute, line.bytes_out as f64);
        if let Some((threshold, mean)) = spike(&mut state.bytes_out, bytes, settings.min_bytes_out) {
            spikes.push((Kind::BytesOutSpike, bytes, threshold, mean, "bytes out"));
        }
        let tokens = state.tokens.add(minute, line.tokens() as f64);
        if let Some((threshold, mean)) = spike(&mut state.tokens, tokens, settings.min_tokens) {
            spikes.push((Kind::TokenSurge, tokens, threshold, mean, "tokens"));
        }
    }
    for (kind, observed, threshold, mean, what) in spikes {
        findings.push(Finding {
            kind,
            subject: Cow::Borrowed(""),
            detail: format!("{observed:.0} {what} this minute; usually {mean:.1} a minute"),
            observed: Some(observed),
            threshold: Some(threshold),
            baseline: Some((mean * 100.0).round() / 100.0),
        });
    }
    if !served || domain.is_empty() {
        return;
    }
    let known_domains = state.domains.len();
    match state.domains.get_mut(domain) {
        Some(known) => {
            if let (Some(before), Some(now)) = (*known, line.destination_asn)
                && before != now
            {
                findings.push(finding(
                    Kind::AsnChange,
                    domain.into(),
                    format!("{domain} is now served from AS{now}, before from AS{before}"),
                ));
            }
            if line.destination_asn.is_some() {
                *known = line.destination_asn;
            }
        }
        None if known_domains < MAX_DOMAINS => {
            state.domains.insert(Box::from(domain), line.destination_asn);
            if learned {
                findings.push(finding(
                    Kind::NewDomain,
                    domain.into(),
                    format!("first request of this agent to {domain}"),
                ));
            }
        }
        None => {}
    }
    if let Some(method) = line.method()
        && !state.methods.iter().any(|m| &**m == method)
        && state.methods.len() < MAX_SMALL_SET
    {
        state.methods.push(Box::from(method));
        if learned {
            findings.push(finding(
                Kind::UnusualMethod,
                method.into(),
                format!("first {method} request of this agent (to {domain})"),
            ));
        }
    }
    if let Some(port) = line.port()
        && !state.ports.contains(&port)
        && state.ports.len() < MAX_SMALL_SET
    {
        state.ports.push(port);
        if learned {
            findings.push(finding(
                Kind::UnusualPort,
                port.to_string().into(),
                format!("first request of this agent to port {port} (at {domain})"),
            ));
        }
    }
}

fn finding<'a>(kind: Kind, subject: Cow<'a, str>, detail: String) -> Finding<'a> {
    Finding {
        kind,
        subject,
        detail,
        observed: None,
        threshold: None,
        baseline: None,
    }
}

/// Severity names in `Stats::by_severity` order.
pub fn severity_names() -> [&'static str; 5] {
    Severity::ALL.map(Severity::as_str)
}
