//! What one audit line says: the record of one proxied request (`egress_request` /
//! `egress_denied`) or of one control-plane action (`admin_action`).
//!
//! The public structs hold the data in the shape the gateway has it; private `*Line`
//! views fix the wire shape (field order, names, omitted fields) in one place, and
//! derive `type`, `decision` and `action` from the [`Verdict`] so they can never
//! disagree with each other.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Serialize, Serializer};

/// Longest path kept in the audit, in bytes.
pub const MAX_PATH_BYTES: usize = 512;
/// DNS names are at most 253 bytes; anything longer is junk a client sent us.
const MAX_DOMAIN_BYTES: usize = 255;
/// Real methods are short; a client can send anything.
const MAX_METHOD_BYTES: usize = 32;

/// Identifies one request across the audit, logs and the client's error body.
///
/// 128 random bits as 32 lowercase hex digits, the form of a W3C trace id
/// (never all zeros): ids from any number of replicas and restarts do not
/// collide, and one id tells nothing about the next or about traffic volume.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u128);

/// A new random [`RequestId`]. Drawn from a per-thread ChaCha generator
/// seeded once from the OS: no syscall and no lock per request, and the ids
/// cannot be predicted from earlier ones (they reach agents in error bodies).
pub fn new_request_id() -> RequestId {
    thread_local! {
        static IDS: RefCell<StdRng> = RefCell::new(StdRng::from_os_rng());
    }
    IDS.with_borrow_mut(|rng| {
        loop {
            let id: u128 = rng.random();
            if id != 0 {
                return RequestId(id);
            }
        }
    })
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One audit record, as queued to the writer.
#[derive(Debug, Clone)]
pub enum AuditEvent {
    /// Boxed: a request record is several times larger than an admin record, and the
    /// queue should not reserve that much for every slot.
    Egress(Box<EgressEvent>),
    Admin(AdminEvent),
    /// One query to the DNS control server ([`super::dns_event`]).
    Dns(Box<super::DnsEvent>),
    /// A policy bundle refused on reload ([`super::policy_event`]).
    Policy(Box<super::PolicyEvent>),
}

impl From<EgressEvent> for AuditEvent {
    fn from(event: EgressEvent) -> Self {
        AuditEvent::Egress(Box::new(event))
    }
}

impl From<AdminEvent> for AuditEvent {
    fn from(event: AdminEvent) -> Self {
        AuditEvent::Admin(event)
    }
}

impl Serialize for AuditEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AuditEvent::Egress(event) => EgressLine::from(event.as_ref()).serialize(serializer),
            AuditEvent::Admin(event) => AdminLine::from(event).serialize(serializer),
            AuditEvent::Dns(event) => super::dns_event::serialize_line(event, serializer),
            AuditEvent::Policy(event) => super::policy_event::serialize_line(event, serializer),
        }
    }
}

/// Who asked. Every field is optional: a request refused before authentication has
/// no verified identity, and a claimed-but-unverified id is never written as fact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditIdentity {
    pub agent_id: Option<String>,
    pub team_id: Option<String>,
    pub project_id: Option<String>,
    pub environment: Option<String>,
    pub session_id: Option<String>,
    pub task_slug: Option<String>,
}

/// What the policy decided, and therefore what the line's `type`, `decision` and
/// `action` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded. `allowed_by` names the allowlist section that matched
    /// (`core_allowlist`, `project_allowlist`, ...).
    Allow { allowed_by: Option<String> },
    /// Refused (`type: egress_denied`, `action: blocked`).
    Deny { reason: &'static str, alert: bool },
    /// Report mode: the policy would have refused, but the request was forwarded
    /// (`type: egress_request`, `decision: would_deny`, `action: reported`).
    WouldDeny { reason: &'static str, alert: bool },
    /// Refused by a rate limiter (`type: egress_rate_limited`, `action: throttled`).
    RateLimited { reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    Enforce,
    Report,
}

/// What was spoken to the destination, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Https,
    /// A CONNECT tunnel whose content the gateway does not inspect and cannot name.
    Tcp,
}

/// The request as the audit shows it. Built only through [`RequestSummary::new`], which
/// is where query strings, fragments and userinfo are dropped and lengths are capped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestSummary {
    method: String,
    domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// Request body size, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// SHA-256 of the body as the client sent it, hex, when
    /// `compliance_logging.hash_sensitive` is on and the body was held for
    /// inspection: evidence of what left without keeping it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

impl RequestSummary {
    /// `target` may be a path (`/a?b`), an absolute-form URI (`http://u:p@host/a?b`)
    /// or `None` (CONNECT, where no path is visible). Only the path survives: a query
    /// string or userinfo can carry credentials.
    pub fn new(method: &str, domain: &str, port: Option<u16>, target: Option<&str>) -> Self {
        RequestSummary {
            method: truncate_on_char_boundary(method, MAX_METHOD_BYTES).to_owned(),
            domain: truncate_on_char_boundary(domain, MAX_DOMAIN_BYTES).to_owned(),
            port,
            path: target.map(|t| audit_path(t).to_owned()),
            size_bytes: None,
            body_sha256: None,
        }
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

/// The upstream's answer; absent when there was none (denied, or upstream failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResponseSummary {
    pub status: u16,
    /// Until the upstream's response head arrived.
    pub latency_ms: u64,
    pub size_bytes: u64,
}

/// The record of one request through the gateway.
#[derive(Debug, Clone)]
pub struct EgressEvent {
    /// When the request arrived (not when the line was written).
    pub timestamp: DateTime<Utc>,
    pub request_id: RequestId,
    pub identity: AuditIdentity,
    pub request: RequestSummary,
    pub response: Option<ResponseSummary>,
    pub trace_id: Option<String>,
    pub verdict: Verdict,
    /// A stable code when an allowed request failed upstream (connect refused,
    /// reset, timeout): the decision stays `allow`, the outcome is recorded here.
    pub upstream_error: Option<&'static str>,
    pub policy_id: String,
    pub policy_version: Option<String>,
    pub enforcement_mode: EnforcementMode,
    /// The address actually dialled (after the SSRF check), if any.
    pub destination_ip: Option<IpAddr>,
    /// Its autonomous system and country (`geoip:`), when a database knows.
    pub destination_asn: Option<u32>,
    pub destination_geo: Option<crate::geoip::CountryCode>,
    pub protocol: Option<Protocol>,
    pub tunnel: bool,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// The whole request, arrival to last byte.
    pub latency_ms: u64,
    /// Always written (`null` when unknown): it is part of the minimum event schema.
    pub token_estimate: Option<u64>,
    /// What outbound DLP found: kinds and actions, never the matched text.
    pub dlp_matches: Vec<crate::inspect::DlpMatch>,
    /// Why the body went out unscanned (`dlp.oversize: alert | pass`).
    pub dlp_skipped: Option<&'static str>,
    /// Raise an alert on a served request (a DLP `alert` finding).
    pub alert: bool,
    /// The TLS side of the exchange, where the gateway saw it.
    pub tls: Option<crate::tls::TlsRecord>,
    /// An AI provider exchange: model, limits, tools, reported usage.
    pub ai: Option<crate::inspect::ai::AiRecord>,
    /// What the request reserved against token and cost budgets.
    pub budget: Option<crate::budgets::Reservation>,
    pub anomaly_score: f64,
    /// The dependency that was unavailable when `egress.fail_mode: open`
    /// let this request through (`control_store`, `audit_sink`).
    pub fail_open: Option<&'static str>,
    /// `transparent` for connections nftables redirected to the gateway
    /// (absent: the explicit proxy).
    pub mode: Option<&'static str>,
    /// A transparent connection's destination before the redirect.
    pub original_destination: Option<std::net::SocketAddr>,
    /// The client's address, where it identifies the agent (transparent) or
    /// was refused as not the agent's (`source_mismatch`).
    pub client_ip: Option<IpAddr>,
    /// A refused credential's claimed agent id (unverified; `agent_id` is
    /// only ever a verified identity).
    pub claimed_agent_id: Option<String>,
}

impl EgressEvent {
    /// A record stamped now, with no response, no traffic and no findings yet.
    pub fn new(
        request_id: RequestId,
        identity: AuditIdentity,
        request: RequestSummary,
        verdict: Verdict,
        policy_id: impl Into<String>,
        enforcement_mode: EnforcementMode,
    ) -> Self {
        EgressEvent {
            timestamp: Utc::now(),
            request_id,
            identity,
            request,
            response: None,
            trace_id: None,
            verdict,
            upstream_error: None,
            policy_id: policy_id.into(),
            policy_version: None,
            enforcement_mode,
            destination_ip: None,
            destination_asn: None,
            destination_geo: None,
            protocol: None,
            tunnel: false,
            bytes_out: 0,
            bytes_in: 0,
            latency_ms: 0,
            token_estimate: None,
            dlp_matches: Vec::new(),
            dlp_skipped: None,
            alert: false,
            tls: None,
            ai: None,
            budget: None,
            anomaly_score: 0.0,
            fail_open: None,
            mode: None,
            original_destination: None,
            client_ip: None,
            claimed_agent_id: None,
        }
    }
}

/// A control-plane action (allowlist change, emergency block, approval, ...).
/// `details` is written as given: callers must not put secrets in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEvent {
    pub timestamp: DateTime<Utc>,
    pub request_id: Option<RequestId>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub details: BTreeMap<String, String>,
}

impl AdminEvent {
    pub fn new(actor: impl Into<String>, role: impl Into<String>, action: impl Into<String>) -> Self {
        AdminEvent {
            timestamp: Utc::now(),
            request_id: None,
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            details: BTreeMap::new(),
        }
    }
}

/// The `type` field of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventType {
    EgressRequest,
    EgressDenied,
    EgressRateLimited,
    AdminAction,
    DnsQuery,
    /// Written by the writer itself after it found a torn tail on start.
    AuditChainResumed,
}

impl EventType {
    pub(crate) const CHAIN_RESUMED: &'static str = "audit_chain_resumed";
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum DecisionField {
    Allow,
    Deny,
    WouldDeny,
    RateLimited,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ActionField {
    Blocked,
    Reported,
    Throttled,
}

/// `2025-12-04T10:30:00.123Z`: UTC, millisecond precision, as in the seed.
pub(crate) struct Rfc3339Millis<'a>(pub(crate) &'a DateTime<Utc>);

impl Serialize for Rfc3339Millis<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
    }
}

/// The wire shape of an egress line; field order is the documented order.
#[derive(Serialize)]
struct EgressLine<'a> {
    timestamp: Rfc3339Millis<'a>,
    #[serde(rename = "type")]
    kind: EventType,
    request_id: RequestId,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_slug: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claimed_agent_id: Option<&'a str>,
    request: &'a RequestSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a ResponseSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<ActionField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    decision: DecisionField,
    policy_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_version: Option<&'a str>,
    enforcement_mode: EnforcementMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_geo: Option<crate::geoip::CountryCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    tunnel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a crate::tls::TlsRecord>,
    bytes_out: u64,
    bytes_in: u64,
    latency_ms: u64,
    token_estimate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<clawgress_ai::Provider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ai: Option<&'a crate::inspect::ai::AiRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<&'a crate::budgets::Reservation>,
    dlp_matches: &'a [crate::inspect::DlpMatch],
    #[serde(skip_serializing_if = "Option::is_none")]
    dlp_skipped: Option<&'static str>,
    anomaly_score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_open: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_destination: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<IpAddr>,
}

impl<'a> From<&'a EgressEvent> for EgressLine<'a> {
    fn from(e: &'a EgressEvent) -> Self {
        let (kind, decision, action, allowed_by, reason, alert) = match &e.verdict {
            Verdict::Allow { allowed_by } => (
                EventType::EgressRequest,
                DecisionField::Allow,
                None,
                allowed_by.as_deref(),
                None,
                None,
            ),
            Verdict::Deny { reason, alert } => (
                EventType::EgressDenied,
                DecisionField::Deny,
                Some(ActionField::Blocked),
                None,
                Some(*reason),
                Some(*alert),
            ),
            Verdict::WouldDeny { reason, alert } => (
                EventType::EgressRequest,
                DecisionField::WouldDeny,
                Some(ActionField::Reported),
                None,
                Some(*reason),
                Some(*alert),
            ),
            Verdict::RateLimited { reason } => (
                EventType::EgressRateLimited,
                DecisionField::RateLimited,
                Some(ActionField::Throttled),
                None,
                Some(*reason),
                Some(false),
            ),
        };
        // A served request can raise an alert too (a DLP `alert` finding).
        let alert = match alert {
            Some(alert) => Some(alert || e.alert),
            None => e.alert.then_some(true),
        };
        let id = &e.identity;
        EgressLine {
            timestamp: Rfc3339Millis(&e.timestamp),
            kind,
            request_id: e.request_id,
            agent_id: id.agent_id.as_deref(),
            team_id: id.team_id.as_deref(),
            project_id: id.project_id.as_deref(),
            environment: id.environment.as_deref(),
            session_id: id.session_id.as_deref(),
            task_slug: id.task_slug.as_deref(),
            claimed_agent_id: e.claimed_agent_id.as_deref(),
            request: &e.request,
            response: e.response.as_ref(),
            trace_id: e.trace_id.as_deref(),
            allowed_by,
            reason,
            action,
            alert,
            error: e.upstream_error,
            decision,
            policy_id: &e.policy_id,
            policy_version: e.policy_version.as_deref(),
            enforcement_mode: e.enforcement_mode,
            destination_ip: e.destination_ip,
            destination_asn: e.destination_asn,
            destination_geo: e.destination_geo,
            protocol: e.protocol,
            tunnel: e.tunnel,
            tls: e.tls.as_ref(),
            bytes_out: e.bytes_out,
            bytes_in: e.bytes_in,
            latency_ms: e.latency_ms,
            token_estimate: e
                .token_estimate
                .or_else(|| e.ai.as_ref().and_then(|ai| ai.token_estimate)),
            provider: e.ai.as_ref().map(|ai| ai.provider),
            model: e.ai.as_ref().and_then(|ai| ai.model.as_deref()),
            tokens_in: e.ai.as_ref().and_then(|ai| ai.tokens_in),
            tokens_out: e.ai.as_ref().and_then(|ai| ai.tokens_out),
            tool_calls: e.ai.as_ref().map(|ai| ai.tool_calls.as_slice()),
            ai: e.ai.as_ref(),
            budget: e.budget.as_ref(),
            dlp_matches: &e.dlp_matches,
            dlp_skipped: e.dlp_skipped,
            anomaly_score: e.anomaly_score,
            fail_open: e.fail_open,
            mode: e.mode,
            original_destination: e.original_destination,
            client_ip: e.client_ip,
        }
    }
}

#[derive(Serialize)]
struct AdminLine<'a> {
    timestamp: Rfc3339Millis<'a>,
    #[serde(rename = "type")]
    kind: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<RequestId>,
    actor: &'a str,
    role: &'a str,
    action: &'a str,
    details: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a AdminEvent> for AdminLine<'a> {
    fn from(e: &'a AdminEvent) -> Self {
        AdminLine {
            timestamp: Rfc3339Millis(&e.timestamp),
            kind: EventType::AdminAction,
            request_id: e.request_id,
            actor: &e.actor,
            role: &e.role,
            action: &e.action,
            details: &e.details,
        }
    }
}

/// The path part of a request target, without query, fragment, scheme or authority,
/// capped at [`MAX_PATH_BYTES`].
pub(crate) fn audit_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => {
            // The authority ends at the first '/', '?' or '#'; only a '/' starts a path.
            match rest.find(['/', '?', '#']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                _ => "/",
            }
        }
        _ => target,
    };
    let path = match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    };
    truncate_on_char_boundary(path, MAX_PATH_BYTES)
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_on_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
