//! The control store's API (issue 17): agents, policy versions, tokens,
//! quotas and the change history under `/v1/`, JSON, `problem+json` errors,
//! roles and teams enforced here. The replica started with `--database`
//! answers the store's routes; the others say where to go.
//!
//! Every change names the version it changes (`"version": N` in the body,
//! or `If-Match: N`); a stale one is `409 version_conflict` with the
//! current version. Every change (and every refused attempt) is an
//! `admin_action` audit line as well as a row in the store's history; the
//! record is reserved before the change, so a change the audit trail
//! cannot take is not made.

mod agents;
mod policies;
mod quotas;
mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clawgress_control::{Author, StoreError};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::api::{audit_refused_action, audit_unavailable, auth_problem, change_response, note_outcome};
use super::auth::{Actor, Role};
use super::problem::{ApiResponse, Problem, json_response};
use crate::Gateway;
use crate::audit::AdminEvent;
use crate::store::NotAvailable;

/// Largest body read: a policy upload (its text is capped lower, in
/// [`policies`]) with JSON escaping.
const MAX_BODY: usize = 2 * 1024 * 1024;

const PREFIXES: [&str; 6] = ["agents", "policies", "tokens", "quotas", "history", "store"];

/// Whether `path` is one of this module's routes.
pub(super) fn owns(path: &str) -> bool {
    let first = path.trim_start_matches("/v1/").split('/').next().unwrap_or_default();
    PREFIXES.contains(&first)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Store,
    Quotas,
    History,
    Agents(agents::Route),
    Policies(policies::Route),
    Tokens(tokens::Route),
}

const ROUTES: &str = "GET /v1/store, GET /v1/quotas, GET /v1/history, GET|POST /v1/agents, POST /v1/agents/import, \
    GET|PATCH|DELETE /v1/agents/{id}, POST /v1/agents/{id}/rotate, GET|POST /v1/policies, GET /v1/policies/{id}, \
    GET /v1/policies/diff?from=&to=, POST /v1/policies/{id}/activate, POST /v1/policies/rollback, \
    GET|POST /v1/tokens, DELETE /v1/tokens/{name}";

impl Route {
    fn parse(method: &Method, path: &str) -> Option<Route> {
        let segments: Vec<String> = path
            .trim_end_matches('/')
            .split('/')
            .skip(2)
            .map(|segment| {
                percent_encoding::percent_decode_str(segment)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["store"]) => Some(Route::Store),
            ("GET", ["quotas"]) => Some(Route::Quotas),
            ("GET", ["history"]) => Some(Route::History),
            (method, ["agents", rest @ ..]) => agents::Route::parse(method, rest).map(Route::Agents),
            (method, ["policies", rest @ ..]) => policies::Route::parse(method, rest).map(Route::Policies),
            (method, ["tokens", rest @ ..]) => tokens::Route::parse(method, rest).map(Route::Tokens),
            _ => None,
        }
    }

    fn role(&self) -> Role {
        match self {
            Route::Store | Route::Quotas | Route::History => Role::Viewer,
            Route::Agents(route) => route.role(),
            Route::Policies(route) => route.role(),
            Route::Tokens(_) => Role::Maintainer,
        }
    }

    /// The audit line's `action`; `None` for reads.
    fn action(&self) -> Option<&'static str> {
        match self {
            Route::Store | Route::Quotas | Route::History => None,
            Route::Agents(route) => route.action(),
            Route::Policies(route) => route.action(),
            Route::Tokens(route) => route.action(),
        }
    }

    /// Reads the store's database (only the replica holding it answers).
    fn needs_database(&self) -> bool {
        !matches!(self, Route::Store | Route::Quotas)
    }
}

/// What a route handler gets.
pub(super) struct Call<'a> {
    pub gateway: &'a Gateway,
    pub actor: &'a Actor,
    pub db: Option<&'a clawgress_control::Store>,
    pub headers: &'a HeaderMap,
    pub query: &'a str,
    pub body: &'a Bytes,
    /// The audit line's details; handlers add what the change was about.
    pub details: &'a mut BTreeMap<String, String>,
}

impl Call<'_> {
    pub fn db(&self) -> Result<&clawgress_control::Store, Problem> {
        self.db.ok_or_else(|| not_here(&NotAvailable::NotHere))
    }

    pub fn author(&self) -> Author {
        Author {
            name: self.actor.name.clone(),
            role: self.actor.role.as_str().to_string(),
        }
    }

    /// The version a change names: `If-Match` or the body's `version`.
    pub fn version(&self, in_body: Option<i64>) -> Result<i64, Problem> {
        let header = self
            .headers
            .get(http::header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string());
        let from_query = query_value(self.query, "version");
        match (in_body, header.or(from_query)) {
            (Some(version), _) => Ok(version),
            (None, Some(text)) => text
                .parse()
                .map_err(|_| Problem::bad(format!("If-Match `{text}` is not a version number"), "e.g. If-Match: 3")),
            (None, None) => Err(Problem::new(
                StatusCode::PRECONDITION_REQUIRED,
                "version_required",
                "a change must name the version it changes",
            )
            .hint("send \"version\": N (or If-Match: N) with the version you read (`clawgress control ... list` shows it)")),
        }
    }
}

/// A handler's answer: status and body.
pub(super) type Answer = Result<(StatusCode, serde_json::Value), Problem>;

pub(super) async fn handle(gateway: &Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> ApiResponse {
    let (parts, body) = req.into_parts();
    let Some(route) = Route::parse(&parts.method, parts.uri.path()) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no_such_route",
            format!("{} {} is not part of the control API", parts.method, parts.uri.path()),
        )
        .hint(format!("the control store's routes are: {ROUTES}"))
        .into_response();
    };
    let actor = match gateway.admin_tokens.authorize(&parts.headers, route.role()) {
        Ok(actor) => actor,
        Err(failure) => {
            if let Some(action) = route.action() {
                audit_refused_action(gateway, action, &failure, peer);
            }
            return auth_problem(&failure).into_response();
        }
    };
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
    let db = match (route.needs_database(), gateway.store.db()) {
        (_, Ok(db)) => Some(db.clone()),
        (true, Err(why)) => return not_here(&why).into_response(),
        (false, Err(_)) => None,
    };
    let query = parts.uri.query().unwrap_or_default().to_string();
    let Some(action) = route.action() else {
        let mut details = BTreeMap::new();
        let call = Call {
            gateway,
            actor: &actor,
            db: db.as_ref(),
            headers: &parts.headers,
            query: &query,
            body: &body,
            details: &mut details,
        };
        return match read(&route, call).await {
            Ok((status, value)) => json_response(status, &value),
            Err(problem) => problem.into_response(),
        };
    };
    // Reserved before the change: if the trail cannot take the record,
    // nothing changes.
    let Ok(slot) = gateway.audit.reserve() else {
        return audit_unavailable();
    };
    // The change and its record run in their own task: a client that hangs
    // up mid-change cancels neither.
    let gateway = gateway.clone();
    let task = tokio::spawn(async move {
        let mut event = AdminEvent::new(actor.name.clone(), actor.role.as_str(), action);
        event.details.insert("peer".to_string(), peer.to_string());
        let call = Call {
            gateway: &gateway,
            actor: &actor,
            db: db.as_ref(),
            headers: &parts.headers,
            query: &query,
            body: &body,
            details: &mut event.details,
        };
        let result = change(&route, call).await;
        note_outcome(&mut event.details, &result, "store_unavailable");
        crate::record::confirmed(&gateway, slot.record_confirmed(event)).await;
        result
    });
    change_response(task.await)
}

async fn read(route: &Route, mut call: Call<'_>) -> Answer {
    match route {
        Route::Store => Ok((StatusCode::OK, call.gateway.store.status())),
        Route::Quotas => quotas::read(&call).await,
        Route::History => history(&call).await,
        Route::Agents(route) => agents::handle(route, &mut call).await,
        Route::Policies(route) => policies::handle(route, &mut call).await,
        Route::Tokens(route) => tokens::handle(route, &mut call).await,
    }
}

async fn change(route: &Route, mut call: Call<'_>) -> Answer {
    match route {
        Route::Agents(route) => agents::handle(route, &mut call).await,
        Route::Policies(route) => policies::handle(route, &mut call).await,
        Route::Tokens(route) => tokens::handle(route, &mut call).await,
        _ => Err(Problem::new(StatusCode::NOT_FOUND, "no_such_route", "not a change")),
    }
}

/// `GET /v1/history?kind=&target=&before=&limit=`: newest first; a
/// team-bound caller sees its teams' changes only.
async fn history(call: &Call<'_>) -> Answer {
    let filter = clawgress_control::history::HistoryFilter {
        kind: query_value(call.query, "kind"),
        target: query_value(call.query, "target"),
        teams: call.actor.is_team_scoped().then(|| call.actor.teams.clone()),
        before: query_value(call.query, "before").and_then(|v| v.parse().ok()),
        limit: query_value(call.query, "limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    };
    let entries = call.db()?.history(&filter).await.map_err(store_problem)?;
    Ok((StatusCode::OK, serde_json::json!({ "history": entries })))
}

/// Why the store's routes cannot be answered here.
fn not_here(why: &NotAvailable) -> Problem {
    match why {
        NotAvailable::NotHere => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_not_here",
            "this gateway does not hold the control store",
        )
        .hint("send store requests to the gateway started with --database (it applies here from NATS all the same)"),
        NotAvailable::Opening(error) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", error.clone())
                .hint("gateways keep serving the last published snapshot; retry once the database is back")
        }
    }
}

/// A store error as the API answers it.
pub(super) fn store_problem(error: StoreError) -> Problem {
    let detail = error.to_string();
    match error {
        StoreError::NotFound { .. } => Problem::new(StatusCode::NOT_FOUND, "not_found", detail),
        StoreError::Exists { .. } => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
        StoreError::Stale { current, .. } => {
            Problem::new(StatusCode::CONFLICT, "version_conflict", detail).with("current_version", current.into())
        }
        StoreError::Conflict(_) => Problem::new(StatusCode::CONFLICT, "conflict", detail),
        StoreError::Invalid(_) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail),
        StoreError::Unavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
            .hint("gateways keep serving the last published snapshot; retry once the database is back"),
        StoreError::Database(_) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", detail),
    }
}

/// The answer to a committed change: `status` once it is in force here,
/// `202 Accepted` while it is committed but not yet everywhere (the
/// publisher finishes the job).
pub(super) fn committed(
    status: StatusCode,
    mut body: serde_json::Value,
    propagation: crate::store::Propagation,
    details: &mut BTreeMap<String, String>,
) -> (StatusCode, serde_json::Value) {
    details.insert("store_revision".to_string(), propagation.revision.to_string());
    details.insert("published".to_string(), propagation.published.to_string());
    body["propagation"] = serde_json::to_value(propagation).unwrap_or_default();
    if propagation.applied {
        (status, body)
    } else {
        (StatusCode::ACCEPTED, body)
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, Problem> {
    super::api::parse_body(body, example)
}

/// One `name=value` of a query string, percent-decoded.
pub(super) fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find_map(|(key, value)| (key == name).then(|| value.into_owned()))
}
