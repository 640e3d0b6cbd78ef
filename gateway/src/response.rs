//! Refusals turned into HTTP responses, in one place.
//!
//! The body is `application/problem+json` (RFC 9457) extended with the
//! stable `reason`, the `policy_id` and the `request_id`, so a client can
//! script against it and an operator can find the audit line. It never
//! echoes a credential, a header or a body.

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::context::RequestContext;
use crate::decision::Refusal;
use crate::proxy::body::ProxyBody;

/// Repeats the decision in a header, for clients that only look at headers
/// (and for CONNECT, whose refusal bodies many clients never read).
pub const DECISION_HEADER: HeaderName = HeaderName::from_static("x-clawgress-decision");
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    reason: &'a str,
    policy_id: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    /// Seed §3.3's 429 body, for rate limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    /// Whole seconds, rounded up, as in `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    /// The kinds of data DLP blocked, never the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    dlp_matches: Option<&'a [&'static str]>,
    /// The budget, what is spent and when it resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<&'a crate::budgets::BudgetExceeded>,
}

pub fn refusal_response(ctx: &RequestContext, refusal: &Refusal) -> Response<ProxyBody> {
    let status = refusal.status();
    let reason = refusal.reason();
    let policy_id = refusal.policy_id();
    let problem = Problem {
        kind: format!("https://clawgress.dev/problems/{reason}"),
        title: status.canonical_reason().unwrap_or("Refused"),
        status: status.as_u16(),
        detail: refusal.detail(),
        reason,
        policy_id: &policy_id,
        request_id: ctx.request_id.to_string(),
        agent_id: ctx.identity.as_ref().map(|i| &*i.agent_id),
        domain: ctx.destination_host(),
        error: None,
        limit: None,
        window: None,
        scope: None,
        retry_after: refusal.retry_after().map(|d| crate::limits::ceil_secs(d).max(1)),
        dlp_matches: match refusal {
            Refusal::Dlp(crate::inspect::DlpRefusal::Blocked { kinds, .. }) => Some(kinds),
            _ => None,
        },
        budget: match refusal {
            Refusal::BudgetExceeded(exceeded) => Some(exceeded),
            _ => None,
        },
    };
    let mut problem = problem;
    if let Refusal::RateLimited(limited) = refusal {
        problem.error = Some(reason);
        problem.limit = Some(limited.limit);
        problem.window = Some(limited.window);
        problem.scope = Some(limited.scope.as_str());
    }
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = Response::new(ProxyBody::local(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let decision = if refusal.is_failure_after_allow() {
        "error"
    } else {
        "deny"
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{decision}; reason={reason}; policy_id={policy_id}")) {
        headers.insert(DECISION_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&problem.request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    if let Some(seconds) = problem.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    if let Refusal::RateLimited(limited) = refusal {
        headers.extend(crate::limits::LimitVerdict::Limited(*limited).headers());
    }
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        headers.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"clawgress\""),
        );
        headers.append(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"clawgress\""),
        );
    }
    response
}
