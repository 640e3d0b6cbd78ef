//! The operator control API (seed §2.3, §8.3, §10), JSON over the admin
//! port. Every change is written to the control store (and so reaches every
//! replica) and leaves an `admin_action` audit record naming the actor; a
//! change that cannot be audited is not made.

use bytes::Bytes;
use chrono::Utc;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use std::net::SocketAddr;
use std::sync::Arc;

use super::auth::{Actor, AuthFailure, Role};
use crate::Gateway;
use crate::audit::AdminEvent;
use crate::control;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

use super::problem::{ApiResponse, Problem, json_response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Status,
    ListAllowlist,
    AddTemporary,
    RemoveTemporary(String),
    ListRequests,
    FileRequest,
    Approve(String),
    Reject(String),
    EmergencyBlock,
    Restore,
    ExportAudit,
    Quarantine,
    Release(String),
    ListQuarantine,
}

const ROUTES: &str = "GET /v1/status, GET /v1/allowlist, POST /v1/allowlist/temporary, \
    DELETE /v1/allowlist/temporary/{id}, GET|POST /v1/requests, POST /v1/requests/{id}/approve, \
    POST /v1/requests/{id}/reject, POST /v1/emergency-block, POST /v1/restore, GET /v1/audit, \
    GET|POST /v1/quarantine, POST /v1/quarantine/{agent}/release";

impl Route {
    pub(super) fn parse(method: &Method, path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        let route = match (method.as_str(), segments.as_slice()) {
            ("GET", ["status"]) => Route::Status,
            ("GET", ["allowlist"]) => Route::ListAllowlist,
            ("POST", ["allowlist", "temporary"]) => Route::AddTemporary,
            ("DELETE", ["allowlist", "temporary", id]) => Route::RemoveTemporary(id.to_string()),
            ("GET", ["requests"]) => Route::ListRequests,
            ("POST", ["requests"]) => Route::FileRequest,
            ("POST", ["requests", id, "approve"]) => Route::Approve(id.to_string()),
            ("POST", ["requests", id, "reject"]) => Route::Reject(id.to_string()),
            ("POST", ["emergency-block"]) => Route::EmergencyBlock,
            ("POST", ["restore"]) => Route::Restore,
            ("GET", ["audit"]) => Route::ExportAudit,
            ("GET", ["quarantine"]) => Route::ListQuarantine,
            ("POST", ["quarantine"]) => Route::Quarantine,
            ("POST", ["quarantine", agent, "release"]) => Route::Release(agent.to_string()),
            _ => return None,
        };
        Some(route)
    }

    fn role(&self) -> Role {
        match self {
            Route::Status
            | Route::ListAllowlist
            | Route::ListRequests
            | Route::FileRequest
            | Route::ExportAudit
            | Route::ListQuarantine => Role::Viewer,
            Route::AddTemporary | Route::RemoveTemporary(_) | Route::Quarantine => Role::Operator,
            Route::Approve(_) | Route::Reject(_) | Route::EmergencyBlock | Route::Restore | Route::Release(_) => {
                Role::Maintainer
            }
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Route::Status => "status",
            Route::ListAllowlist => "list",
            Route::AddTemporary => "allow_temp",
            Route::RemoveTemporary(_) => "remove_temp",
            Route::ListRequests => "list_requests",
            Route::FileRequest => "request",
            Route::Approve(_) => "approve",
            Route::Reject(_) => "reject",
            Route::EmergencyBlock => "emergency_block",
            Route::Restore => "restore",
            Route::ExportAudit => "export",
            Route::Quarantine => "quarantine_agent",
            Route::Release(_) => "release_agent",
            Route::ListQuarantine => "list_quarantined",
        }
    }

    fn is_change(&self) -> bool {
        !matches!(
            self,
            Route::Status | Route::ListAllowlist | Route::ListRequests | Route::ExportAudit | Route::ListQuarantine
        )
    }
}

pub(super) async fn handle(gateway: &Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> ApiResponse {
    let (parts, body) = req.into_parts();
    let Some(route) = Route::parse(&parts.method, parts.uri.path()) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no_such_route",
            format!("{} {} is not part of the control API", parts.method, parts.uri.path()),
        )
        .hint(format!("the routes are: {ROUTES}"))
        .into_response();
    };
    let actor = match gateway.admin_tokens.authorize(&parts.headers, route.role()) {
        Ok(actor) => actor,
        Err(failure) => {
            if route.is_change() {
                audit_refused(gateway, &route, &failure, peer);
            }
            return auth_problem(&failure).into_response();
        }
    };
    if route == Route::ExportAudit {
        // Reading the trail is itself on the trail.
        let Ok(slot) = gateway.audit.reserve() else {
            return audit_unavailable();
        };
        let mut event = AdminEvent::new(actor.name.clone(), actor.role.as_str(), route.action());
        event.details.insert(
            "query".to_string(),
            parts.uri.query().unwrap_or_default().chars().take(300).collect(),
        );
        event.details.insert("peer".to_string(), peer.to_string());
        slot.record(event);
        return super::export::export(gateway, parts.uri.query().unwrap_or_default()).await;
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over {MAX_BODY} bytes or was cut off"),
            )
            .into_response();
        }
    };
    if !route.is_change() {
        return read(gateway, &route, &actor);
    }
    // The record is reserved before the change: if the audit trail cannot
    // take it, nothing changes (fail closed).
    let Ok(slot) = gateway.audit.reserve() else {
        return audit_unavailable();
    };
    // The change and its record run in their own task: a client that hangs
    // up mid-change cancels neither, so no change goes unrecorded.
    let gateway = gateway.clone();
    let task = tokio::spawn(async move {
        let mut event = AdminEvent::new(actor.name.clone(), actor.role.as_str(), route.action());
        event.details.insert("peer".to_string(), peer.to_string());
        let result = super::changes::change(&gateway, &route, &actor, &body, &mut event.details).await;
        note_outcome(&mut event.details, &result, "control_store_uncertain");
        // The answer waits for the record (bounded): no change is reported
        // done that a crash could leave unrecorded.
        crate::record::confirmed(&gateway, slot.record_confirmed(event)).await;
        result
    });
    change_response(task.await)
}

/// A change's outcome on its audit record: `ok`, `failed` with the error,
/// or `unknown` when the error is `uncertain` (the store may have taken it).
pub(super) fn note_outcome<T>(
    details: &mut std::collections::BTreeMap<String, String>,
    result: &Result<T, Problem>,
    uncertain: &str,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(problem) if problem.code == uncertain => "unknown",
        Err(_) => "failed",
    };
    details.insert("outcome".to_string(), outcome.to_string());
    if let Err(problem) = result {
        details.insert("error".to_string(), problem.code.to_string());
    }
}

/// The answer of a change run in a task of its own.
pub(super) fn change_response(
    joined: Result<Result<(StatusCode, serde_json::Value), Problem>, tokio::task::JoinError>,
) -> ApiResponse {
    match joined {
        Ok(Ok((status, body))) => json_response(status, &body),
        Ok(Err(problem)) => problem.into_response(),
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the change task failed",
        )
        .into_response(),
    }
}

pub(super) fn audit_unavailable() -> ApiResponse {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the audit trail cannot take a record, so nothing is done",
    )
    .hint("retry shortly; check the gateway's audit disk")
    .into_response()
}

pub(super) fn auth_problem(failure: &AuthFailure) -> Problem {
    match failure {
        AuthFailure::NotConfigured => Problem::new(
            StatusCode::UNAUTHORIZED,
            "control_api_disabled",
            "no admin tokens are configured on this gateway, so the control API accepts nobody",
        )
        .hint("start the gateway with --admin-tokens FILE (see policies/admin-tokens.example.yaml)"),
        AuthFailure::Missing => Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "the control API needs `Authorization: Bearer <token>`",
        )
        .hint("pass --token or set CLAWGRESS_ADMIN_TOKEN"),
        AuthFailure::Unknown => Problem::new(StatusCode::UNAUTHORIZED, "unknown_token", "the token matches no actor")
            .hint("check the token; its SHA-256 must be listed in the admin tokens file"),
        AuthFailure::Forbidden { needed, has, .. } => Problem::new(
            StatusCode::FORBIDDEN,
            "role_not_allowed",
            format!(
                "this needs the {} role; the token has {}",
                needed.as_str(),
                has.as_str()
            ),
        )
        .hint("ask someone with that role, or file a request with `clawgress egress request`"),
    }
}

/// Refused attempts recorded per second at most: enough to see an attack,
/// not enough for anonymous callers to fill the disk or the audit queue the
/// proxy needs. The rest are counted in the log.
const REFUSED_RECORDS_PER_SECOND: u64 = 20;

/// A refused change attempt is itself on the record.
fn audit_refused(gateway: &Gateway, route: &Route, failure: &AuthFailure, peer: SocketAddr) {
    audit_refused_action(gateway, route.action(), failure, peer);
}

/// [`audit_refused`] for any action name (the store routes' too).
pub(super) fn audit_refused_action(gateway: &Gateway, action: &str, failure: &AuthFailure, peer: SocketAddr) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if WINDOW.swap(second, Ordering::Relaxed) != second {
        COUNT.store(0, Ordering::Relaxed);
    }
    if COUNT.fetch_add(1, Ordering::Relaxed) >= REFUSED_RECORDS_PER_SECOND {
        tracing::warn!(%peer, action, "refused control API attempt (over the audit rate for refusals)");
        return;
    }
    let Ok(slot) = gateway.audit.reserve() else {
        return;
    };
    let (actor, role) = match failure {
        AuthFailure::Forbidden { has, name, .. } => (name.clone(), has.as_str()),
        _ => ("unauthenticated".to_string(), "none"),
    };
    let mut event = AdminEvent::new(actor, role, action);
    event.details.insert("outcome".to_string(), "refused".to_string());
    event.details.insert("peer".to_string(), peer.to_string());
    event
        .details
        .insert("error".to_string(), auth_problem(failure).code.to_string());
    slot.record(event);
}

pub(super) fn parse_body<T: DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, Problem> {
    let text = if body.is_empty() { &b"{}"[..] } else { &body[..] };
    serde_json::from_slice(text)
        .map_err(|e| Problem::bad(format!("the JSON body is not valid: {e}"), format!("send {example}")))
}

pub(super) fn required(text: &str, field: &str) -> Result<String, Problem> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Problem::bad(
            format!("`{field}` is empty"),
            format!("say why in `{field}`: it goes into the audit trail"),
        ));
    }
    Ok(trimmed.chars().take(500).collect())
}

pub(super) type Changed = Result<(StatusCode, serde_json::Value), Problem>;

pub(super) fn store_problem(error: control::ControlError) -> Problem {
    use control::ControlError;
    match error {
        ControlError::Unavailable => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "control_store_unavailable",
            error.to_string(),
        ),
        ControlError::Conflict => Problem::new(StatusCode::CONFLICT, "conflict", error.to_string()),
        ControlError::Uncertain(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "control_store_uncertain",
            error.to_string(),
        ),
        ControlError::Save { .. } => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "control_store_error",
            error.to_string(),
        ),
    }
}

fn read(gateway: &Gateway, route: &Route, actor: &Actor) -> ApiResponse {
    let snapshot = gateway.control.snapshot();
    let now = Utc::now();
    let body = match route {
        Route::Status => serde_json::json!({
            "control_store": gateway.control.status().as_str(),
            "revision": snapshot.revision,
            "emergency_block": snapshot.emergency(),
            "quarantined": snapshot.holds().count(),
            "policy_version": gateway.policy.load().version.as_ref(),
        }),
        Route::ListAllowlist => {
            let policy = gateway.policy.load();
            let temporary: Vec<_> = snapshot
                .temporary(now)
                .filter(|entry| super::tenancy::visible(actor, entry.team.as_deref()))
                .collect();
            serde_json::json!({
                "policy_version": policy.version.as_ref(),
                "emergency_block": snapshot.emergency(),
                "rules": policy.rules_listing.as_ref(),
                "temporary": temporary,
            })
        }
        Route::ListRequests => {
            let requests: Vec<_> = snapshot
                .requests()
                .filter(|request| super::tenancy::visible(actor, request.team.as_deref()))
                .collect();
            serde_json::json!({ "requests": requests })
        }
        Route::ListQuarantine => super::quarantine::list(&snapshot),
        _ => serde_json::Value::Null,
    };
    json_response(StatusCode::OK, &body)
}
