//! The `dns_query` audit line: one per query the DNS control server
//! received, answered or not, chained like every other line.
//!
//! ```text
//! {"timestamp":"…","type":"dns_query","request_id":"…","client":"10.0.0.7:41234","transport":"udp",
//!  "agent_id":"scraper-001",…,"qname":"api.example.com","qtype":"A","decision":"answered",
//!  "rcode":"NOERROR","policy_id":"allowlist.core[0]",…,"alert":false,"prev_hash":"…","hash":"…"}
//! ```

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::event::{
    AuditEvent, AuditIdentity, EnforcementMode, EventType, RequestId, Rfc3339Millis, truncate_on_char_boundary,
};

/// A DNS name is at most 255 bytes on the wire; its escaped text form can be
/// longer, and whatever a client sent is cut here.
pub const MAX_QNAME_BYTES: usize = 255;

/// What the server did with a query. `decision` says what we did, `rcode`
/// what the client got: an allowed name whose upstream says NXDOMAIN is
/// `answered` with `NXDOMAIN`; a name the policy refuses is `nxdomain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsDecision {
    /// Answered for an allowed name: from upstream, the cache or `static_hosts`.
    Answered,
    /// Report mode: the policy would have said NXDOMAIN, the name was answered.
    Reported,
    /// NXDOMAIN by policy (not allowlisted, a block pattern, the blocklist).
    Nxdomain,
    /// REFUSED: unknown source, ANY, a rebinding answer, an emergency block.
    Refused,
    /// NOTIMP: zone transfers, opcodes other than QUERY.
    NotImplemented,
    /// FORMERR: a header could be read, the rest could not.
    FormErr,
    /// SERVFAIL: upstream failed or timed out, or the audit trail is full.
    ServFail,
    /// Not answered: no readable header, or a response sent to us.
    Dropped,
}

impl DnsDecision {
    pub const ALL: [DnsDecision; 8] = [
        Self::Answered,
        Self::Reported,
        Self::Nxdomain,
        Self::Refused,
        Self::NotImplemented,
        Self::FormErr,
        Self::ServFail,
        Self::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Reported => "reported",
            Self::Nxdomain => "nxdomain",
            Self::Refused => "refused",
            Self::NotImplemented => "not_implemented",
            Self::FormErr => "formerr",
            Self::ServFail => "servfail",
            Self::Dropped => "dropped",
        }
    }
}

impl Serialize for DnsDecision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// The record of one DNS query.
#[derive(Debug, Clone)]
pub struct DnsEvent {
    pub timestamp: DateTime<Utc>,
    pub request_id: RequestId,
    pub client: SocketAddr,
    pub transport: DnsTransport,
    /// The agent whose `sources` hold the client address; empty when none do.
    pub identity: AuditIdentity,
    /// Escaped, lowercase, capped at [`MAX_QNAME_BYTES`]; absent when the
    /// question could not be read.
    pub qname: Option<String>,
    /// `A`, `AAAA`, `TYPE65280`...
    pub qtype: Option<String>,
    pub decision: DnsDecision,
    /// A stable code for every decision but `answered`.
    pub reason: Option<&'static str>,
    /// `NOERROR`, `NXDOMAIN`...; absent when nothing was sent back.
    pub rcode: Option<&'static str>,
    /// The rule (or temporary entry) that allowed the name, or the entry
    /// that refused it.
    pub policy_id: Option<String>,
    pub policy_version: Option<String>,
    pub enforcement_mode: EnforcementMode,
    /// Where an answer came from: `upstream`, `cache` or `static`.
    pub source: Option<&'static str>,
    pub answers: u16,
    /// The address class that made an upstream answer a rebinding attempt.
    pub restricted: Option<&'static str>,
    pub latency_ms: u64,
    /// An exfiltration-shaped name (a very long or high-entropy label).
    pub alert: bool,
    pub alert_reason: Option<&'static str>,
}

impl DnsEvent {
    /// A record stamped now, with nothing known beyond the client.
    pub fn new(request_id: RequestId, client: SocketAddr, transport: DnsTransport, decision: DnsDecision) -> Self {
        DnsEvent {
            timestamp: Utc::now(),
            request_id,
            client,
            transport,
            identity: AuditIdentity::default(),
            qname: None,
            qtype: None,
            decision,
            reason: None,
            rcode: None,
            policy_id: None,
            policy_version: None,
            enforcement_mode: EnforcementMode::Enforce,
            source: None,
            answers: 0,
            restricted: None,
            latency_ms: 0,
            alert: false,
            alert_reason: None,
        }
    }

    /// Sets the name, cut to [`MAX_QNAME_BYTES`].
    pub fn set_qname(&mut self, qname: &str) {
        self.qname = Some(truncate_on_char_boundary(qname, MAX_QNAME_BYTES).to_owned());
    }
}

impl From<DnsEvent> for AuditEvent {
    fn from(event: DnsEvent) -> Self {
        AuditEvent::Dns(Box::new(event))
    }
}

/// The wire shape; field order is the documented order.
#[derive(Serialize)]
struct DnsLine<'a> {
    timestamp: Rfc3339Millis<'a>,
    #[serde(rename = "type")]
    kind: EventType,
    request_id: RequestId,
    client: SocketAddr,
    transport: DnsTransport,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    qname: Option<&'a str>,
    qtype: Option<&'a str>,
    decision: DnsDecision,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    rcode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_version: Option<&'a str>,
    enforcement_mode: EnforcementMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    answers: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    restricted: Option<&'static str>,
    latency_ms: u64,
    alert: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert_reason: Option<&'static str>,
}

pub(super) fn serialize_line<S: Serializer>(e: &DnsEvent, serializer: S) -> Result<S::Ok, S::Error> {
    let id = &e.identity;
    DnsLine {
        timestamp: Rfc3339Millis(&e.timestamp),
        kind: EventType::DnsQuery,
        request_id: e.request_id,
        client: e.client,
        transport: e.transport,
        agent_id: id.agent_id.as_deref(),
        team_id: id.team_id.as_deref(),
        project_id: id.project_id.as_deref(),
        environment: id.environment.as_deref(),
        qname: e.qname.as_deref(),
        qtype: e.qtype.as_deref(),
        decision: e.decision,
        reason: e.reason,
        rcode: e.rcode,
        policy_id: e.policy_id.as_deref(),
        policy_version: e.policy_version.as_deref(),
        enforcement_mode: e.enforcement_mode,
        source: e.source,
        answers: e.answers,
        restricted: e.restricted,
        latency_ms: e.latency_ms,
        alert: e.alert,
        alert_reason: e.alert_reason,
    }
    .serialize(serializer)
}
