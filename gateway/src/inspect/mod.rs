//! The inspect phase: outbound DLP over what a request carries (seed 001
//! §5.6). It runs between decide and forward, for plain-HTTP requests and for
//! requests inside intercepted TLS tunnels alike.
//!
//! A query string is scanned where it stands. A body is held (up to
//! `dlp.max_inspect_bytes`), decoded, scanned, and then either refused,
//! rewritten with its findings redacted, or sent on exactly as it arrived.
//! Nothing of what was found is ever written anywhere in clear: the audit
//! gets the kinds, and the SHA-256 only where the policy asks for it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clawgress_dlp::{Class, Engine, Report, Unreadable};
use clawgress_policies::model::{DlpAction, OversizeAction};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod ai;

use crate::containment::Admission;
use crate::context::RequestContext;
use crate::decision::{Refusal, RequestProblem};

/// One DLP finding as the audit records it: what and where, never the text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlpMatch {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub class: Class,
    pub confidence: f32,
    /// What the policy did about it.
    pub action: DlpAction,
    /// `body` or `query`.
    pub location: &'static str,
    /// Only for `hash-log`: other actions keep no trace of the value, since
    /// a digest of a short value (an SSN) can be reversed by trying them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Why DLP refused a request.
#[derive(Debug, Clone, PartialEq)]
pub enum DlpRefusal {
    /// The request carries data whose class is set to `block`.
    Blocked { kinds: Vec<&'static str>, class: Class },
    /// The body could not be scanned and `dlp.oversize` is `block`.
    Uninspectable(Unreadable),
}

/// The request body as it will go upstream.
pub enum Outbound {
    /// Not held: streamed as it arrives.
    Streamed(Incoming),
    /// Held, inspected, possibly rewritten.
    Buffered(Bytes),
    /// Held up to the inspection limit, found too long, and let through by
    /// `dlp.oversize`: the held part, then the rest as it arrives.
    Prefixed(Bytes, Incoming),
}

/// Runs DLP over the request's query string and body, and reads an AI
/// request. `ctx` receives the findings (for the audit, whatever the
/// outcome), the body's digest and the AI attributes.
pub async fn inspect_request(
    engine: Option<&Engine>,
    ctx: &mut RequestContext,
    parts: &mut Parts,
    body: Incoming,
    hash_bodies: bool,
    idle_timeout: Duration,
) -> Result<Outbound, Refusal> {
    let endpoint = ai::endpoint_of(&parts.method, parts.uri.path());
    if endpoint.is_some() {
        // Usage is read from the response as it passes; a compressed one
        // would hide it, and a proxy may ask for identity.
        parts.headers.remove(header::ACCEPT_ENCODING);
        // The token encodings load while the body arrives.
        clawgress_ai::warm_up_in_background();
    }
    let Some(engine) = engine else {
        return read_ai_only(endpoint, ctx, parts, body, hash_bodies, idle_timeout).await;
    };
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
        let report = engine.inspect_query(query);
        if !report.findings.is_empty() {
            note_findings(engine, ctx, &report, "query");
            match report.action {
                Some(DlpAction::Block) => refuse_or_report(ctx, blocked(engine, &report))?,
                Some(DlpAction::Redact) => {
                    let redacted = engine.redact_query(query);
                    parts.uri =
                        with_query(&parts.uri, &redacted).ok_or(Refusal::Request(RequestProblem::MissingAuthority))?;
                }
                _ => {}
            }
        }
    }

    if body.is_end_stream() {
        return Ok(Outbound::Streamed(body));
    }
    let limit = engine.policy().max_inspect_bytes.as_u64();
    let declared = declared_length(parts);
    if declared.is_some_and(|length| length > limit) {
        // Not worth reading: it will not be scanned whatever it says.
        oversize(engine, ctx, Unreadable::TooLarge { limit })?;
        return Ok(Outbound::Streamed(body));
    }

    // A body without a declared length is charged to the agent's share as
    // it arrives: holding it is what `max_pending_bytes` is there to bound.
    let charge = if declared.is_none() {
        ctx.admission.clone()
    } else {
        None
    };
    let held = hold(body, limit, charge.as_deref(), idle_timeout).await?;
    let (held, rest) = match held {
        Held::Whole(bytes) => (bytes, None),
        Held::Overflowed(prefix, rest) => (prefix, Some(rest)),
    };
    if hash_bodies && rest.is_none() {
        ctx.body_sha256 = Some(hex::encode(Sha256::digest(&held)));
    }
    if let Some(endpoint) = endpoint
        && rest.is_none()
        && header_str(parts, header::CONTENT_ENCODING).is_none()
    {
        ctx.ai = Some(ai::analyze_when_ready(endpoint, &held).await);
    }
    if let Some(rest) = rest {
        oversize(engine, ctx, Unreadable::TooLarge { limit })?;
        return Ok(Outbound::Prefixed(held, rest));
    }

    let content_type = header_str(parts, header::CONTENT_TYPE);
    let content_encoding = header_str(parts, header::CONTENT_ENCODING);
    let report = match engine.inspect_body(&held, content_type, content_encoding) {
        Ok(report) => report,
        Err(unreadable) => {
            oversize(engine, ctx, unreadable)?;
            return Ok(Outbound::Buffered(held));
        }
    };
    if report.findings.is_empty() {
        return Ok(Outbound::Buffered(held));
    }
    note_findings(engine, ctx, &report, "body");
    match report.action {
        Some(DlpAction::Block) => {
            refuse_or_report(ctx, blocked(engine, &report))?;
            Ok(Outbound::Buffered(held))
        }
        Some(DlpAction::Redact) => {
            let redacted = engine
                .redact_body(&held, content_type, content_encoding)
                .map_err(|unreadable| Refusal::Dlp(DlpRefusal::Uninspectable(unreadable)))?;
            // The rewritten body is plain: its encoding and length change.
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(redacted.len()));
            parts.headers.remove(header::TRANSFER_ENCODING);
            Ok(Outbound::Buffered(Bytes::from(redacted)))
        }
        _ => Ok(Outbound::Buffered(held)),
    }
}

/// DLP is off: only an AI request's body is held, to be read.
async fn read_ai_only(
    endpoint: Option<clawgress_ai::Endpoint>,
    ctx: &mut RequestContext,
    parts: &Parts,
    body: Incoming,
    hash_bodies: bool,
    idle_timeout: Duration,
) -> Result<Outbound, Refusal> {
    let Some(endpoint) = endpoint else {
        return Ok(Outbound::Streamed(body));
    };
    if body.is_end_stream() || declared_length(parts).is_some_and(|length| length > ai::MAX_AI_BODY) {
        ctx.ai = Some(ai::analyze_when_ready(endpoint, b"").await);
        return Ok(Outbound::Streamed(body));
    }
    let charge = if declared_length(parts).is_none() {
        ctx.admission.clone()
    } else {
        None
    };
    match hold(body, ai::MAX_AI_BODY, charge.as_deref(), idle_timeout).await? {
        Held::Whole(held) => {
            if hash_bodies {
                ctx.body_sha256 = Some(hex::encode(Sha256::digest(&held)));
            }
            if header_str(parts, header::CONTENT_ENCODING).is_none() {
                ctx.ai = Some(ai::analyze_when_ready(endpoint, &held).await);
            }
            Ok(Outbound::Buffered(held))
        }
        Held::Overflowed(prefix, rest) => Ok(Outbound::Prefixed(prefix, rest)),
    }
}

enum Held {
    Whole(Bytes),
    /// More than the limit: the first part read, and the rest unread.
    Overflowed(Bytes, Incoming),
}

/// Reads the body up to `limit` bytes.
async fn hold(
    mut body: Incoming,
    limit: u64,
    charge: Option<&Admission>,
    idle_timeout: Duration,
) -> Result<Held, Refusal> {
    let mut held = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle_timeout, body.frame()).await {
            Err(_) | Ok(Some(Err(_))) => return Err(Refusal::Request(RequestProblem::ClientBody)),
            Ok(None) => return Ok(Held::Whole(held.freeze())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing a client should be smuggling past DLP; an
        // HTTP/1.1 proxy does not forward them anyway.
        let Ok(data) = frame.into_data() else { continue };
        if let Some(admission) = charge {
            admission
                .charge_streamed(data.len() as u64)
                .map_err(Refusal::Contained)?;
        }
        held.extend_from_slice(&data);
        if held.len() as u64 > limit {
            return Ok(Held::Overflowed(held.freeze(), body));
        }
        if body.is_end_stream() {
            return Ok(Held::Whole(held.freeze()));
        }
    }
}

/// Applies `dlp.oversize` to a body that could not be scanned.
fn oversize(engine: &Engine, ctx: &mut RequestContext, unreadable: Unreadable) -> Result<(), Refusal> {
    match engine.oversize() {
        OversizeAction::Block => {
            ctx.uninspected = Some(uninspected_reason(&unreadable));
            refuse_or_report(ctx, Refusal::Dlp(DlpRefusal::Uninspectable(unreadable)))
        }
        OversizeAction::Alert => {
            ctx.alert = true;
            ctx.uninspected = Some(uninspected_reason(&unreadable));
            Ok(())
        }
        OversizeAction::Pass => {
            ctx.uninspected = Some(uninspected_reason(&unreadable));
            Ok(())
        }
    }
}

/// Report mode lets a DLP refusal through as a would-deny, as it does a
/// policy denial, so a new DLP policy can be tried on live traffic.
fn refuse_or_report(ctx: &mut RequestContext, refusal: Refusal) -> Result<(), Refusal> {
    if ctx.enforcement == crate::decision::Enforcement::Enforce {
        return Err(refusal);
    }
    ctx.would_deny.get_or_insert((refusal.reason(), refusal.policy_id()));
    Ok(())
}

fn uninspected_reason(unreadable: &Unreadable) -> &'static str {
    match unreadable {
        Unreadable::TooLarge { .. } => "body_too_large",
        Unreadable::Bomb { .. } => "decoded_too_large",
        Unreadable::Encoding(_) => "undecodable",
    }
}

fn note_findings(engine: &Engine, ctx: &mut RequestContext, report: &Report, location: &'static str) {
    for finding in &report.findings {
        let action = engine.action_for(finding.class);
        if action != DlpAction::HashLog && action != DlpAction::Redact {
            // Blocked and alerted findings are worth an operator's look.
            ctx.alert = true;
        }
        ctx.dlp_matches.push(DlpMatch {
            kind: finding.kind,
            class: finding.class,
            confidence: finding.confidence,
            action,
            location,
            sha256: (action == DlpAction::HashLog).then(|| finding.sha256.to_string()),
        });
    }
}

fn blocked(engine: &Engine, report: &Report) -> Refusal {
    let blocking: Vec<_> = report
        .findings
        .iter()
        .filter(|f| engine.action_for(f.class) == DlpAction::Block)
        .collect();
    let class = blocking.first().map_or(Class::Secret, |f| f.class);
    let mut kinds: Vec<&'static str> = blocking.iter().map(|f| f.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Refusal::Dlp(DlpRefusal::Blocked { kinds, class })
}

fn declared_length(parts: &Parts) -> Option<u64> {
    crate::proxy::body::declared_length(&parts.headers)
}

fn header_str(parts: &Parts, name: header::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `uri` with its query string replaced.
fn with_query(uri: &http::Uri, query: &str) -> Option<http::Uri> {
    let mut uri_parts = uri.clone().into_parts();
    let path = uri.path();
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    uri_parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(uri_parts).ok()
}

/// The engine a policy asks for, built once per policy load.
pub fn engine_for(policy: &clawgress_policies::model::DlpPolicy) -> Option<Arc<Engine>> {
    policy.enabled.then(|| Arc::new(Engine::new(policy)))
}

#[cfg(test)]
mod tests;
