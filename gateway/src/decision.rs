//! What the gateway decided about one request, and why.
//!
//! Every refusal the gateway can produce is a [`Refusal`]; its reason code,
//! HTTP status and alert flag are defined here and nowhere else, so the
//! response a client sees, the audit line and the metric labels can never
//! disagree.

use std::sync::Arc;

use clawgress_policies::matcher::{AllowedBy, DenyReason};
use http::StatusCode;

use crate::dns::{HostError, ResolveError, RestrictedKind};
use crate::identity::IdentityError;
use crate::inspect::DlpRefusal;
use clawgress_dlp::{Class, Unreadable};

/// `enforce` refuses what the policy denies; `report` lets it through and
/// records a would-deny, so a new policy can be tried on live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    Enforce,
    Report,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Report => "report",
        }
    }
}

/// Why a request was not served (or, in report mode, would not have been).
#[derive(Debug)]
pub enum Refusal {
    /// Missing or bad proxy credentials.
    Identity(IdentityError),
    /// A request that is not a usable forward-proxy request.
    Request(RequestProblem),
    /// The host could not be parsed, including non-canonical IPv4 literals.
    MalformedHost(HostError),
    /// The allowlist, blocklist or block patterns said no.
    Policy { reason: DenyReason, policy_id: Arc<str> },
    /// The destination address is private and nothing explicitly allowed it.
    PrivateAddress(RestrictedKind),
    /// The name could not be resolved.
    Dns(ResolveError),
    /// The upstream could not be reached or broke the exchange.
    Upstream(UpstreamFailure),
    /// No place in the audit queue: serving would leave no record.
    AuditUnavailable,
    /// A rate limiter (agent, project, domain or global) is exhausted.
    RateLimited(crate::limits::RateLimited),
    /// The destination's circuit breaker is open: fail fast.
    CircuitOpen(crate::breaker::BreakerOpen),
    /// The agent's share of the gateway is used up (seed §5.2).
    Contained(crate::containment::Overflow),
    /// A maintainer's emergency block is in force: every agent is denied.
    EmergencyBlock { incident_id: Arc<str> },
    /// The behavior engine (or an operator) quarantined this agent: every
    /// replica refuses it until released.
    AgentQuarantined(Box<crate::control::QuarantinedAgent>),
    /// This agent is held to a reduced rate and has used it up.
    AgentRateReduced {
        per_minute: u32,
        retry_after: std::time::Duration,
    },
    /// The control state is unknown (no NATS and no last-known-good copy)
    /// and `egress.fail_mode` is `closed`.
    ControlUnavailable,
    /// The client went away before the upstream answered. Nobody reads
    /// this answer; it exists so the exchange is still recorded.
    ClientClosed,
    /// Outbound DLP found data the policy blocks, or could not read a body
    /// and `dlp.oversize` is `block`.
    Dlp(crate::inspect::DlpRefusal),
    /// A passthrough or intercepted tunnel's ClientHello named another host
    /// than the CONNECT (domain fronting).
    SniMismatch { sni: String },
    /// The first bytes of a tunnel claimed to be TLS and were not.
    MalformedClientHello,
    /// A request inside an intercepted tunnel named another host than the
    /// tunnel's.
    HostMismatch,
    /// The upstream's certificate failed verification or its pins.
    UpstreamTls(Box<crate::tls::TlsFailure>),
    /// A rule says `tls: intercept` and this gateway has no CA.
    InterceptUnavailable,
    /// An AI request would go past a token or cost budget.
    BudgetExceeded(Box<crate::budgets::BudgetExceeded>),
    /// The budget counters cannot be reached and `egress.fail_mode` is `closed`.
    BudgetUnavailable(String),
    /// A transparent connection's name (SNI or Host) does not resolve, by
    /// the gateway's own resolver, to the address the client connected to:
    /// domain fronting, or a client that resolved a name itself.
    DestinationMismatch { original: std::net::SocketAddr },
    /// A transparent connection that is neither TLS nor HTTP.
    UnsupportedProtocol,
    /// A transparent TLS connection without a server name: nothing to
    /// decide on.
    MissingSni,
}

/// Shapes of request the proxy refuses before looking at identity or policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProblem {
    /// An origin-form request (`GET /path`): the client talked to the proxy as
    /// if it were the origin. Answering it would loop back into ourselves.
    NotProxyRequest,
    /// Absolute-form with a scheme other than `http` (https goes via CONNECT).
    UnsupportedScheme,
    /// A CONNECT or absolute URI without a usable host and port.
    MissingAuthority,
    /// The request already passed through this gateway.
    ProxyLoop,
    /// The client's request body broke off or was malformed mid-stream.
    ClientBody,
    /// A transparent HTTP request without a `Host` header.
    MissingHost,
    /// The client opened a connection and sent nothing (or not enough to
    /// decide) before the header timeout.
    HeaderTimeout,
    /// The request head does not parse (refused before hyper sees it:
    /// `proxy/head.rs`).
    Malformed(crate::proxy::head::Malformed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    ConnectFailed,
    ConnectTimeout,
    ResponseTimeout,
    Reset,
}

impl Refusal {
    /// The stable reason code users script against. Changing one is a
    /// breaking change of the public contract.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Identity(e) => e.reason(),
            Refusal::Request(RequestProblem::NotProxyRequest) => "not_a_proxy_request",
            Refusal::Request(RequestProblem::UnsupportedScheme) => "unsupported_url_scheme",
            Refusal::Request(RequestProblem::MissingAuthority) => "malformed_host",
            Refusal::Request(RequestProblem::ProxyLoop) => "proxy_loop",
            Refusal::Request(RequestProblem::ClientBody) => "client_body_error",
            Refusal::Request(RequestProblem::MissingHost) => "missing_host",
            Refusal::Request(RequestProblem::HeaderTimeout) => "header_timeout",
            Refusal::Request(RequestProblem::Malformed(_)) => "malformed_request",
            Refusal::DestinationMismatch { .. } => "destination_mismatch",
            Refusal::UnsupportedProtocol => "protocol_not_allowed",
            Refusal::MissingSni => "missing_sni",
            Refusal::ClientClosed => "client_closed",
            Refusal::RateLimited(_) => "rate_limit_exceeded",
            Refusal::Contained(crate::containment::Overflow::Concurrency { .. }) => "max_concurrent_requests_exceeded",
            Refusal::Contained(crate::containment::Overflow::PendingBytes { .. }) => "max_pending_bytes_exceeded",
            Refusal::Contained(crate::containment::Overflow::TooLarge { .. }) => "request_body_too_large",
            Refusal::CircuitOpen(_) => "circuit_open",
            Refusal::EmergencyBlock { .. } => "emergency_block",
            Refusal::AgentQuarantined(_) => "agent_quarantined",
            Refusal::AgentRateReduced { .. } => "agent_rate_reduced",
            Refusal::ControlUnavailable => "control_store_unavailable",
            Refusal::MalformedHost(_) => "malformed_host",
            Refusal::Policy { reason, .. } => reason.as_str(),
            Refusal::PrivateAddress(_) => "private_address",
            Refusal::Dns(ResolveError::NotFound { .. }) => "dns_not_found",
            Refusal::Dns(_) => "dns_failure",
            Refusal::Upstream(UpstreamFailure::ConnectFailed) => "upstream_connect_failed",
            Refusal::Upstream(UpstreamFailure::ConnectTimeout) => "upstream_connect_timeout",
            Refusal::Upstream(UpstreamFailure::ResponseTimeout) => "upstream_timeout",
            Refusal::Upstream(UpstreamFailure::Reset) => "upstream_reset",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::Dlp(DlpRefusal::Blocked { .. }) => "dlp_blocked",
            Refusal::Dlp(DlpRefusal::Uninspectable(_)) => "dlp_uninspectable",
            Refusal::SniMismatch { .. } => "sni_mismatch",
            Refusal::MalformedClientHello => "malformed_client_hello",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::UpstreamTls(failure) => failure.reason,
            Refusal::InterceptUnavailable => "intercept_unavailable",
            Refusal::BudgetExceeded(_) => "budget_exceeded",
            Refusal::BudgetUnavailable(_) => "budget_store_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Identity(e) if e.is_forbidden() => StatusCode::FORBIDDEN,
            Refusal::Identity(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::Request(RequestProblem::ProxyLoop) => StatusCode::LOOP_DETECTED,
            Refusal::Request(RequestProblem::HeaderTimeout) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Request(RequestProblem::Malformed(problem)) => problem.status(),
            Refusal::DestinationMismatch { .. } => StatusCode::FORBIDDEN,
            Refusal::UnsupportedProtocol | Refusal::MissingSni => StatusCode::BAD_REQUEST,
            Refusal::Request(_) | Refusal::MalformedHost(_) => StatusCode::BAD_REQUEST,
            Refusal::Policy { .. } | Refusal::PrivateAddress(_) => StatusCode::FORBIDDEN,
            Refusal::Dns(_) => StatusCode::BAD_GATEWAY,
            Refusal::Upstream(UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Refusal::Upstream(_) => StatusCode::BAD_GATEWAY,
            Refusal::AuditUnavailable | Refusal::CircuitOpen(_) | Refusal::ControlUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::EmergencyBlock { .. } | Refusal::AgentQuarantined(_) => StatusCode::FORBIDDEN,
            Refusal::AgentRateReduced { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Contained(crate::containment::Overflow::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RateLimited(_) | Refusal::Contained(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Dlp(DlpRefusal::Blocked { .. }) => StatusCode::FORBIDDEN,
            Refusal::Dlp(DlpRefusal::Uninspectable(Unreadable::Encoding(_))) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Dlp(DlpRefusal::Uninspectable(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::SniMismatch { .. } => StatusCode::FORBIDDEN,
            Refusal::MalformedClientHello => StatusCode::BAD_REQUEST,
            Refusal::HostMismatch => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            Refusal::InterceptUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BudgetUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // nginx's convention for "client closed request"; never sent.
            Refusal::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// The policy id reported with the refusal: the rule that decided, or the
    /// built-in check that did.
    pub fn policy_id(&self) -> Arc<str> {
        match self {
            Refusal::Policy { policy_id, .. } => policy_id.clone(),
            Refusal::PrivateAddress(_) => Arc::from("ssrf.private_address"),
            Refusal::Identity(_) => Arc::from("identity"),
            Refusal::MalformedHost(_) | Refusal::Request(_) => Arc::from("request"),
            Refusal::Dns(_) => Arc::from("dns"),
            Refusal::Upstream(_) => Arc::from("upstream"),
            Refusal::AuditUnavailable => Arc::from("audit"),
            Refusal::ClientClosed => Arc::from("client"),
            Refusal::RateLimited(limited) => Arc::from(match limited.scope {
                crate::limits::Scope::Agent => "rate_limits.per_agent",
                crate::limits::Scope::Project => "rate_limits.per_project",
                crate::limits::Scope::Domain => "rate_limits.per_domain",
                crate::limits::Scope::Global => "rate_limits.global",
            }),
            Refusal::CircuitOpen(_) => Arc::from("circuit_breaker"),
            Refusal::EmergencyBlock { incident_id } => Arc::from(format!("control.emergency_block.{incident_id}")),
            Refusal::AgentQuarantined(_) => Arc::from("control.quarantine"),
            Refusal::AgentRateReduced { .. } => Arc::from("control.rate_reduction"),
            Refusal::ControlUnavailable => Arc::from("control_store"),
            Refusal::Dlp(DlpRefusal::Blocked {
                class: Class::Secret, ..
            }) => Arc::from("dlp.actions.secrets"),
            Refusal::Dlp(DlpRefusal::Blocked { class: Class::Pii, .. }) => Arc::from("dlp.actions.pii"),
            Refusal::Dlp(DlpRefusal::Uninspectable(_)) => Arc::from("dlp.oversize"),
            Refusal::SniMismatch { .. } | Refusal::MalformedClientHello | Refusal::MissingSni => {
                Arc::from("tls.client_hello")
            }
            Refusal::DestinationMismatch { .. } | Refusal::UnsupportedProtocol => Arc::from("transparent"),
            Refusal::HostMismatch | Refusal::InterceptUnavailable => Arc::from("tls.intercept"),
            Refusal::UpstreamTls(failure) if failure.reason == "upstream_certificate_pin_mismatch" => {
                Arc::from("tls.pins")
            }
            Refusal::UpstreamTls(_) => Arc::from("tls.verify_certificates"),
            Refusal::BudgetExceeded(exceeded) => Arc::from(exceeded.policy_id.as_str()),
            Refusal::BudgetUnavailable(_) => Arc::from("budgets.store"),
            Refusal::Contained(crate::containment::Overflow::Concurrency { .. }) => {
                Arc::from("fault_containment.max_concurrent_requests")
            }
            Refusal::Contained(
                crate::containment::Overflow::PendingBytes { .. } | crate::containment::Overflow::TooLarge { .. },
            ) => Arc::from("fault_containment.max_pending_bytes"),
        }
    }

    /// Whether the audit line raises an alert (seed §8.2: a request to a
    /// blocked destination is worth a look; a missing credential is not).
    pub fn alert(&self) -> bool {
        matches!(
            self,
            Refusal::Policy { .. }
                | Refusal::PrivateAddress(_)
                | Refusal::MalformedHost(_)
                | Refusal::AuditUnavailable
                | Refusal::EmergencyBlock { .. }
                | Refusal::AgentQuarantined(_)
                | Refusal::ControlUnavailable
                | Refusal::Dlp(_)
                | Refusal::SniMismatch { .. }
                | Refusal::MalformedClientHello
                | Refusal::HostMismatch
                | Refusal::UpstreamTls(_)
                | Refusal::InterceptUnavailable
                | Refusal::BudgetExceeded(_)
                | Refusal::BudgetUnavailable(_)
                | Refusal::DestinationMismatch { .. }
                | Refusal::UnsupportedProtocol
                | Refusal::MissingSni
                | Refusal::Identity(
                    IdentityError::UnknownSource
                        | IdentityError::SourceMismatch
                        | IdentityError::CertificateMismatch
                        | IdentityError::ClientCertificate(
                            crate::identity::CertificateProblem::Revoked
                                | crate::identity::CertificateProblem::Untrusted
                        )
                )
        )
    }

    /// The policy allowed the request and something later failed: an error
    /// (`decision: allow` with an `error` field), not a denial.
    pub fn is_failure_after_allow(&self) -> bool {
        matches!(
            self,
            Refusal::Upstream(_)
                | Refusal::Dns(_)
                | Refusal::ClientClosed
                | Refusal::Request(RequestProblem::ClientBody)
        )
    }

    /// How long the client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Refusal::RateLimited(limited) => Some(limited.retry_after),
            Refusal::CircuitOpen(open) => Some(open.retry_after),
            Refusal::AgentRateReduced { retry_after, .. } => Some(*retry_after),
            Refusal::BudgetExceeded(exceeded) => Some(std::time::Duration::from_secs(exceeded.retry_after_secs)),
            // Capacity comes back as the agent's own exchanges finish.
            Refusal::Contained(overflow) if overflow.is_retryable() => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }

    /// A policy refusal is the only kind that report mode lets through.
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            Refusal::Policy { .. } | Refusal::PrivateAddress(_) | Refusal::Dlp(_)
        )
    }

    /// A human sentence for the response body. Never contains a credential
    /// or anything from the request body.
    pub fn detail(&self) -> String {
        match self {
            Refusal::Identity(e) if e.is_certificate() => format!(
                "{e}. On the mTLS listener the client certificate names the agent: its SPIFFE ID \
                 (`spiffe_ids:` in the agents file), or its CN as the agent id."
            ),
            Refusal::Identity(e) if e.is_forbidden() => {
                format!("{e}. The agents file maps source addresses to agents (`sources:`).")
            }
            Refusal::Identity(e) => {
                format!("{e}. Send Proxy-Authorization: Basic base64(agent_id:api_key) or Bearer <JWT>.")
            }
            Refusal::Request(RequestProblem::NotProxyRequest) => {
                "this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT host:port"
                    .to_string()
            }
            Refusal::Request(RequestProblem::UnsupportedScheme) => {
                "only http:// URLs can be forwarded in absolute form; use CONNECT for https".to_string()
            }
            Refusal::Request(RequestProblem::MissingAuthority) => "the request target has no host and port".to_string(),
            Refusal::Request(RequestProblem::ProxyLoop) => {
                "the request already passed through this gateway (Via header)".to_string()
            }
            Refusal::Request(RequestProblem::ClientBody) => {
                "the request body broke off or was malformed; resend the request".to_string()
            }
            Refusal::Request(RequestProblem::MissingHost) => {
                "the request has no Host header, so the gateway cannot tell where it is going".to_string()
            }
            Refusal::Request(RequestProblem::HeaderTimeout) => {
                "nothing usable arrived before the header timeout; the connection is closed".to_string()
            }
            Refusal::Request(RequestProblem::Malformed(problem)) => problem.detail().to_string(),
            Refusal::DestinationMismatch { original } => format!(
                "the requested name does not resolve, by the gateway's resolver, to {original}, where the \
                 connection was going; resolve names through the DNS control server (domain fronting is refused)"
            ),
            Refusal::UnsupportedProtocol => {
                "only TLS (with a server name) and HTTP/1 leave through the transparent gateway".to_string()
            }
            Refusal::MissingSni => {
                "the TLS ClientHello names no server (SNI); connect by name, not by address".to_string()
            }
            Refusal::ClientClosed => "the client closed the connection before the upstream answered".to_string(),
            Refusal::RateLimited(limited) => format!(
                "the {} rate limit ({}/{}) is exhausted; retry after the Retry-After header",
                limited.scope.as_str(),
                limited.limit,
                limited.window
            ),
            Refusal::Contained(crate::containment::Overflow::Concurrency { limit }) => {
                format!("this agent already has {limit} requests open (fault_containment.max_concurrent_requests)")
            }
            Refusal::Contained(crate::containment::Overflow::PendingBytes { limit }) => format!(
                "this agent's request bodies in flight would exceed {limit} bytes (fault_containment.max_pending_bytes)"
            ),
            Refusal::Contained(crate::containment::Overflow::TooLarge { limit }) => format!(
                "this request body is over {limit} bytes by itself (fault_containment.max_pending_bytes); send less"
            ),
            Refusal::CircuitOpen(_) => {
                "the destination is failing and its circuit breaker is open; retry after the Retry-After header"
                    .to_string()
            }
            Refusal::MalformedHost(e) => e.to_string(),
            Refusal::Policy { reason, .. } => match reason {
                DenyReason::DomainNotInAllowlist => "the destination is not in the allowlist".to_string(),
                DenyReason::BlockedPattern => "the destination matches a blocked DNS pattern".to_string(),
                DenyReason::Blocklisted => "the destination is on the project blocklist".to_string(),
                DenyReason::PortNotAllowed => "the allowlist entry does not allow this port".to_string(),
                DenyReason::ProtocolNotAllowed => "the allowlist entry does not allow this protocol".to_string(),
                DenyReason::RoleNotAllowed => "the allowlist entry is not open to this agent's role".to_string(),
            },
            Refusal::PrivateAddress(kind) => format!(
                "the destination resolves to a {} address; allow it explicitly with a rule for localhost, \
                 allow_private: true, or dns.static_hosts",
                kind.as_str()
            ),
            Refusal::Dns(e) => e.to_string(),
            Refusal::Upstream(f) => match f {
                UpstreamFailure::ConnectFailed => "could not connect to the upstream".to_string(),
                UpstreamFailure::ConnectTimeout => "connecting to the upstream timed out".to_string(),
                UpstreamFailure::ResponseTimeout => "the upstream did not answer in time".to_string(),
                UpstreamFailure::Reset => "the upstream closed the connection".to_string(),
            },
            Refusal::AuditUnavailable => {
                "the audit trail cannot take another record; the gateway fails closed".to_string()
            }
            Refusal::EmergencyBlock { incident_id } => format!(
                "all egress is stopped by emergency block {incident_id}; a maintainer lifts it with `clawgress egress restore --incident-id {incident_id}`"
            ),
            Refusal::AgentQuarantined(held) => format!(
                "agent {} is quarantined since {} ({}); every gateway replica refuses it until an operator runs \
                 `clawgress egress release-agent {} --reason ...`",
                held.agent_id,
                held.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                held.reason,
                held.agent_id
            ),
            Refusal::AgentRateReduced { per_minute, .. } => format!(
                "this agent is held to {per_minute} requests a minute after an anomaly; retry after the \
                 Retry-After header, or ask an operator to release it (`clawgress egress release-agent`)"
            ),
            Refusal::Dlp(DlpRefusal::Blocked { kinds, .. }) => format!(
                "the request carries data the DLP policy blocks ({}); nothing was sent. \
                 Remove it and resend; the audit record (request_id) says where it was found",
                kinds.join(", ")
            ),
            Refusal::Dlp(DlpRefusal::Uninspectable(unreadable)) => format!(
                "{unreadable}, so DLP cannot inspect it and dlp.oversize is block; nothing was sent. \
                 Send a smaller or plainly encoded body, or ask an operator about dlp.max_inspect_bytes"
            ),
            Refusal::SniMismatch { sni } => format!(
                "the tunnel's TLS server name '{sni}' is not the CONNECT host; \
                 a tunnel may only carry TLS for the host it was opened to (domain fronting is refused)"
            ),
            Refusal::MalformedClientHello => {
                "the tunnel's first bytes are a TLS record but not a well-formed ClientHello".to_string()
            }
            Refusal::HostMismatch => {
                "this intercepted tunnel carries requests for its CONNECT host only; open a tunnel per host".to_string()
            }
            Refusal::UpstreamTls(failure) => format!(
                "the upstream's TLS was refused ({}); nothing was sent. The audit record has the certificate",
                failure.record.error.as_deref().unwrap_or("handshake failed")
            ),
            Refusal::InterceptUnavailable => {
                "the rule for this destination says tls: intercept, but this gateway has no interception CA; \
                 an operator starts it with --ca-dir (created by `clawgress ca init`)"
                    .to_string()
            }
            Refusal::BudgetExceeded(exceeded) => format!(
                "the {} {} budget of {} '{}' is spent ({} tokens, ${:.4} so far, {} tokens in flight; this request needs {}); \
                 it resets at {}",
                exceeded.window,
                match (exceeded.limit_tokens, exceeded.limit_cost_usd) {
                    (Some(tokens), Some(cost)) => format!("{tokens} tokens / ${cost}"),
                    (Some(tokens), None) => format!("{tokens} tokens"),
                    (None, Some(cost)) => format!("${cost}"),
                    (None, None) => "?".to_string(),
                },
                exceeded.scope,
                exceeded.id,
                exceeded.spent_tokens,
                exceeded.spent_cost_usd,
                exceeded.reserved_tokens,
                exceeded.requested_tokens,
                exceeded.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Refusal::BudgetUnavailable(why) => format!(
                "{why}; the gateway cannot tell whether this AI request fits its budgets, so it fails closed (egress.fail_mode)"
            ),
            Refusal::ControlUnavailable => {
                "the gateway cannot reach its control store and has no last-known-good copy, \
                 so it cannot tell whether an emergency block is in force; it fails closed (egress.fail_mode)"
                    .to_string()
            }
        }
    }
}

/// The outcome of the decide phase for a request that may proceed.
#[derive(Debug, Clone)]
pub struct Permit {
    pub allowed_by: Option<AllowedBy>,
    /// Set when report mode let a policy refusal through.
    pub would_deny: Option<(&'static str, Arc<str>)>,
}

/// Every reason code the gateway can produce, for bounded metric labels.
/// A unit test checks that each refusal's code is in here.
pub const ALL_REASONS: &[&str] = &[
    // identity (407)
    "missing_credentials",
    "malformed_credentials",
    "unsupported_scheme",
    "unknown_agent",
    "bad_api_key",
    "agent_disabled",
    "jwt_not_configured",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "unknown_signing_key",
    "missing_claim",
    "invalid_claim",
    "claim_conflict",
    // identity by source address (403)
    "unknown_source",
    "source_mismatch",
    // identity by client certificate (403; handshake refusals send nothing)
    "unknown_certificate",
    "ambiguous_certificate",
    "certificate_mismatch",
    "client_certificate_missing",
    "client_certificate_untrusted",
    "client_certificate_expired",
    "client_certificate_not_yet_valid",
    "client_certificate_revoked",
    "client_certificate_revocation_unknown",
    "client_certificate_invalid",
    // request shape (400, 508)
    "not_a_proxy_request",
    "unsupported_url_scheme",
    "malformed_host",
    "proxy_loop",
    "client_body_error",
    "client_closed",
    "missing_host",
    "header_timeout",
    "malformed_request",
    // policy (403)
    "domain_not_in_allowlist",
    "blocked_pattern",
    "blocklisted",
    "port_not_allowed",
    "protocol_not_allowed",
    "role_not_allowed",
    "private_address",
    // dns and upstream (502, 504)
    "dns_not_found",
    "dns_failure",
    "upstream_connect_failed",
    "upstream_connect_timeout",
    "upstream_timeout",
    "upstream_reset",
    // limits and breakers (429, 503)
    "rate_limit_exceeded",
    "circuit_open",
    "max_concurrent_requests_exceeded",
    "max_pending_bytes_exceeded",
    "request_body_too_large",
    // operator control (403, 429, 503)
    "emergency_block",
    "agent_quarantined",
    "agent_rate_reduced",
    "control_store_unavailable",
    // audit (503)
    "audit_unavailable",
    // outbound DLP (403, 413, 415)
    "dlp_blocked",
    "dlp_uninspectable",
    // transparent connections (400, 403)
    "destination_mismatch",
    "missing_sni",
    // TLS (400, 403, 421, 502, 503)
    "sni_mismatch",
    "malformed_client_hello",
    "host_mismatch",
    "intercept_unavailable",
    "upstream_certificate_expired",
    "upstream_certificate_not_yet_valid",
    "upstream_certificate_untrusted",
    "upstream_certificate_name_mismatch",
    "upstream_certificate_pin_mismatch",
    "upstream_certificate_invalid",
    "upstream_tls_failed",
    // budgets (429, 503)
    "budget_exceeded",
    "budget_store_unavailable",
];
