//! The one request context every phase reads and fills in.
//!
//! A request is parsed into a [`RequestContext`] once, at the top of the
//! pipeline; later phases (identify, classify, decide, forward, record) add to
//! it and never re-parse the request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clawgress_policies::matcher::{AllowedBy, Protocol};
use http::Method;

use crate::audit::RequestId;
use crate::decision::{Enforcement, Refusal};
use crate::identity::Identity;

/// Longest path kept for the audit line; a path can be arbitrarily long and
/// the audit trail must stay bounded.
const MAX_AUDIT_PATH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Absolute-form `GET http://host/path`: the gateway sees and forwards
    /// each request.
    Forward,
    /// `CONNECT host:port`: the gateway opens a byte tunnel.
    Connect,
    /// A request inside a tunnel whose TLS the gateway terminated
    /// (`tls: intercept`).
    Intercepted,
}

/// Where the request is going, as the gateway understood and checked it.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Normalized host name, or the IP literal as text.
    pub host: Arc<str>,
    pub port: u16,
    pub protocol: Protocol,
    /// The path only (no query string: a query can hold secrets).
    pub path: Option<String>,
    /// The exact address dialed, after the SSRF check.
    pub addr: Option<SocketAddr>,
}

/// How the request ended, for the audit line and the metrics.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream answered (or the tunnel ran); `status` is the upstream's
    /// status (200 for a tunnel that was set up).
    Served { status: u16 },
    /// The gateway answered itself.
    Refused(Refusal),
}

#[derive(Debug)]
pub struct RequestContext {
    pub request_id: RequestId,
    pub timestamp: DateTime<Utc>,
    pub started: Instant,
    pub client: SocketAddr,
    pub method: Method,
    pub kind: RequestKind,
    pub identity: Option<Arc<Identity>>,
    pub destination: Option<Destination>,
    pub allowed_by: Option<AllowedBy>,
    pub enforcement: Enforcement,
    /// Report mode let this policy refusal through.
    pub would_deny: Option<(&'static str, Arc<str>)>,
    pub trace_id: Option<String>,
    /// The policy version that decided, fixed at decision time so a reload
    /// mid-request cannot relabel it.
    pub policy_version: Option<Arc<str>>,
    /// The destination's circuit-breaker ticket; the forward or tunnel phase
    /// reports the outcome on it.
    pub breaker: Option<crate::breaker::Ticket>,
    /// This exchange's share of the agent's containment limits; released
    /// when the context is dropped, i.e. once the exchange is recorded.
    pub admission: Option<Arc<crate::containment::Admission>>,
    /// The unavailable dependency that `egress.fail_mode: open` passed
    /// this request through despite.
    pub fail_open: Option<&'static str>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// What outbound DLP found, for the audit (kinds, never the text).
    pub dlp_matches: Vec<crate::inspect::DlpMatch>,
    /// The audit line raises an alert though the request was served (a DLP
    /// `alert` finding, an unscanned body under `dlp.oversize: alert`).
    pub alert: bool,
    /// Why the body went out unscanned, when `dlp.oversize` let it.
    pub uninspected: Option<&'static str>,
    /// SHA-256 of the request body as the client sent it, hex
    /// (`compliance_logging.hash_sensitive`).
    pub body_sha256: Option<String>,
    /// The TLS side: the agent's SNI, the upstream's version and
    /// certificate, or why its handshake failed.
    pub tls: Option<crate::tls::TlsRecord>,
    /// What an AI request asked for and what the provider reported.
    pub ai: Option<crate::inspect::ai::AiRecord>,
    /// What this request reserved against budgets; settled when recorded.
    pub budget: Option<crate::budgets::Reservation>,
    /// A plain-HTTP request the gateway sends over its own TLS
    /// (`tls_origination`).
    pub originate: bool,
    /// The transparent listener's connection: where the client was going
    /// before nftables redirected it. The only address it may be sent to.
    pub original_destination: Option<SocketAddr>,
    /// Record the client's address in the audit line: the transparent
    /// listener (the address is the identity) and refused source checks.
    pub record_client: bool,
    /// The mTLS listener's client certificate (its names, serial, and for
    /// a refused handshake, why): the audit line says `mode: "mtls"` and
    /// carries it as `tls.client_certificate`.
    pub client_certificate: Option<Arc<crate::mtls::ClientCertRecord>>,
    /// The agent id a refused credential claimed (unverified; never the
    /// key): the audit line's `claimed_agent_id`.
    pub claimed_agent: Option<String>,
    /// The dialed address's ASN and country (`geoip:`), looked up once.
    pub geo: Option<crate::geoip::GeoInfo>,
    /// The `decision` span (exported over OTLP when configured); it ends
    /// when the request is recorded and the context dropped.
    pub span: tracing::Span,
}

impl RequestContext {
    pub fn new(client: SocketAddr, method: Method, kind: RequestKind, trace_id: Option<String>) -> Self {
        RequestContext {
            request_id: crate::audit::new_request_id(),
            timestamp: Utc::now(),
            started: Instant::now(),
            client,
            method,
            kind,
            identity: None,
            destination: None,
            allowed_by: None,
            enforcement: Enforcement::Enforce,
            would_deny: None,
            trace_id,
            policy_version: None,
            breaker: None,
            admission: None,
            fail_open: None,
            bytes_out: 0,
            bytes_in: 0,
            dlp_matches: Vec::new(),
            alert: false,
            uninspected: None,
            body_sha256: None,
            tls: None,
            ai: None,
            budget: None,
            originate: false,
            original_destination: None,
            record_client: false,
            client_certificate: None,
            claimed_agent: None,
            geo: None,
            span: tracing::Span::none(),
        }
    }

    pub fn destination_host(&self) -> Option<&str> {
        self.destination.as_ref().map(|d| &*d.host)
    }

    pub fn destination_ip(&self) -> Option<IpAddr> {
        self.destination.as_ref().and_then(|d| d.addr).map(|a| a.ip())
    }
}

/// Keeps at most [`MAX_AUDIT_PATH`] bytes of a path, cut on a char boundary.
pub fn audit_path(path: &str) -> String {
    if path.len() <= MAX_AUDIT_PATH {
        return path.to_string();
    }
    let mut end = MAX_AUDIT_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

/// The request's `decision` span, a child of the agent's span when the
/// request carried a `traceparent`, and the trace id for its audit line:
/// the agent's, or, when only the gateway traces, the span's own.
pub fn decision_span(traceparent: Option<&http::HeaderValue>) -> (tracing::Span, Option<String>) {
    use tracing::field::Empty;
    let span = tracing::debug_span!(
        target: "clawgress_gateway::decision",
        "decision",
        otel.kind = "server",
        agent = Empty,
        destination = Empty,
        decision = Empty,
        reason = Empty,
    );
    clawgress_telemetry::adopt(&span, traceparent.and_then(|v| v.to_str().ok()));
    let trace_id = trace_id_from(traceparent).or_else(|| clawgress_telemetry::trace_id(&span));
    (span, trace_id)
}

/// The trace id of a W3C `traceparent` header (`00-<trace>-<span>-<flags>`),
/// if it is well formed. Anything else is ignored rather than copied into
/// the audit trail.
pub fn trace_id_from(traceparent: Option<&http::HeaderValue>) -> Option<String> {
    let value = traceparent?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}
