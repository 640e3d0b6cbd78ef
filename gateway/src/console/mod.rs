//! The web console on the admin port (issue 17): one self-contained app
//! (`/console`, its script and style embedded in the binary, a CSP that
//! allows nothing from anywhere else) over the same `/v1/` API that
//! `clawgress control` and `clawgress egress` use.
//!
//! Login exchanges an admin token for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` behind TLS, with an expiry). The session
//! table lives in this process's memory, keyed by 256 random bits. A
//! `/v1/` request that carries the cookie and no `Authorization` header is
//! turned into the request its token would make ([`session_to_bearer`]), so
//! the API checks role and teams through exactly the code a bearer caller
//! meets, and a token revoked in the store ends its sessions too. Every
//! change through a session must also carry the session's CSRF token in
//! `X-Clawgress-CSRF` and, when the browser sends one, a same-origin
//! `Origin`. Logins, logouts and refusals are `admin_action` audit lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::api::{audit_refused_action, auth_problem};
use super::auth::{Actor, AuthFailure, Role};
use super::problem::{ApiResponse, Problem, json_response};
use crate::Gateway;
use crate::audit::AdminEvent;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The session cookie's name.
pub const COOKIE: &str = "clawgress_console";
/// The header a change through a session carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-clawgress-csrf";
/// A session ends this long after login, however busy.
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// ... or after this long unused.
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Sessions held at once: a flood of logins cannot grow the table without bound.
const MAX_SESSIONS: usize = 4096;
const MAX_LOGIN_BODY: usize = 4096;

/// Nothing may load from elsewhere, run inline, or frame the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Session {
    /// Kept to re-present on each API call, so the API's own check decides
    /// (and a revoked token ends the session). Never logged or sent back.
    token: String,
    csrf: String,
    actor: Actor,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.created) >= lifetime() || now.duration_since(self.last_used) >= idle()
    }
}

/// One table per process: ids are random, so gateways in one test process
/// never see each other's sessions by accident.
static SESSIONS: LazyLock<Mutex<HashMap<String, Session>>> = LazyLock::new(Default::default);

/// Tests shorten the lifetimes with `CLAWGRESS_CONSOLE_SESSION_SECS` to see
/// an expired session; operators have no reason to.
fn lifetime() -> Duration {
    env_secs().unwrap_or(SESSION_LIFETIME)
}

fn idle() -> Duration {
    env_secs().unwrap_or(SESSION_IDLE)
}

fn env_secs() -> Option<Duration> {
    std::env::var("CLAWGRESS_CONSOLE_SESSION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Whether `path` belongs to the console.
pub(super) fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

pub(super) async fn handle(gateway: &Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/console" | "/console/") => asset(PAGE, "text/html; charset=utf-8"),
        (Method::GET | Method::HEAD, "/console/app.js") => asset(SCRIPT, "text/javascript; charset=utf-8"),
        (Method::GET | Method::HEAD, "/console/app.css") => asset(STYLE, "text/css; charset=utf-8"),
        (Method::GET, "/console/whoami") => whoami(req.headers()),
        (Method::POST, "/console/login") => login(gateway, peer, req).await,
        (Method::POST, "/console/logout") => logout(gateway, peer, req.headers()),
        _ => Problem::new(
            StatusCode::NOT_FOUND,
            "no_such_route",
            format!("{} {path} is not part of the console", req.method()),
        )
        .hint("open /console; its routes are GET /console/whoami, POST /console/login, POST /console/logout")
        .into_response(),
    }
}

fn asset(body: &'static str, content_type: &'static str) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_string())
        })
}

fn expired_problem() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "session_expired",
        "the console session has expired or was ended",
    )
    .hint("log in again with your admin token")
}

/// The session's actor and CSRF token, touching its idle clock; `None`
/// (and the entry dropped) once expired.
fn live_session(id: &str) -> Option<(Actor, String, String)> {
    let now = Instant::now();
    let mut sessions = SESSIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match sessions.get_mut(id) {
        Some(session) if !session.expired(now) => {
            session.last_used = now;
            Some((session.actor.clone(), session.csrf.clone(), session.token.clone()))
        }
        Some(_) => {
            sessions.remove(id);
            None
        }
        None => None,
    }
}

fn whoami(headers: &HeaderMap) -> ApiResponse {
    let Some(id) = session_id(headers) else {
        return with_security(
            Problem::new(StatusCode::UNAUTHORIZED, "not_logged_in", "no console session")
                .hint("log in with your admin token")
                .into_response(),
        );
    };
    match live_session(&id) {
        Some((actor, csrf, _)) => with_security(json_response(StatusCode::OK, &described(&actor, &csrf))),
        None => with_security(expired_problem().into_response()),
    }
}

fn with_security(mut response: ApiResponse) -> ApiResponse {
    secure_headers(response.headers_mut());
    response
}

/// What the app needs to decide which buttons exist (the server decides
/// again on every call).
fn described(actor: &Actor, csrf: &str) -> serde_json::Value {
    serde_json::json!({
        "name": actor.name,
        "role": actor.role.as_str(),
        "teams": actor.teams,
        "csrf": csrf,
        "can": {
            "operate": actor.role >= Role::Operator,
            "maintain": actor.role >= Role::Maintainer,
            "global": !actor.is_team_scoped(),
        },
        "idle_timeout_secs": idle().as_secs(),
        "lifetime_secs": lifetime().as_secs(),
    })
}

/// Refuses a state-changing call from another origin: `Origin`, when sent,
/// must name this host, and `Sec-Fetch-Site`, when sent, must be same-origin.
fn cross_origin(headers: &HeaderMap) -> Option<Problem> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Some(
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    format!("a console change from origin {origin} is refused; only {host} may make it"),
                )
                .hint("use the console served by this gateway"),
            );
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|site| site != "same-origin" && site != "none") {
        return Some(Problem::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a console change from another site is refused",
        ));
    }
    None
}

fn csrf_ok(headers: &HeaderMap, expected: &str) -> bool {
    let sent = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    // Constant-time: the comparison says nothing about how much matched.
    sent.len() == expected.len()
        && sent
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn audit(gateway: &Gateway, actor: &Actor, action: &str, peer: SocketAddr, outcome: &str, error: Option<&str>) {
    let Ok(slot) = gateway.audit.reserve() else {
        return;
    };
    let mut event = AdminEvent::new(actor.name.clone(), actor.role.as_str(), action);
    event.details.insert("peer".to_string(), peer.to_string());
    event.details.insert("via".to_string(), "console".to_string());
    event.details.insert("outcome".to_string(), outcome.to_string());
    if let Some(error) = error {
        event.details.insert("error".to_string(), error.to_string());
    }
    slot.record(event);
}

async fn login(gateway: &Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> ApiResponse {
    let (parts, body) = req.into_parts();
    if let Some(problem) = cross_origin(&parts.headers) {
        return with_security(problem.into_response());
    }
    let Ok(body) = Limited::new(body, MAX_LOGIN_BODY).collect().await.map(|c| c.to_bytes()) else {
        return with_security(Problem::bad("the login body is too large", "send {\"token\": \"...\"}").into_response());
    };
    #[derive(serde::Deserialize)]
    struct LoginBody {
        token: String,
    }
    let token = match serde_json::from_slice::<LoginBody>(&body) {
        Ok(login) if !login.token.trim().is_empty() => login.token.trim().to_string(),
        _ => {
            return with_security(
                Problem::bad("the login needs an admin token", "send {\"token\": \"...\"}").into_response(),
            );
        }
    };
    let mut bearer = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return with_security(auth_problem(&AuthFailure::Unknown).into_response());
    };
    bearer.insert(header::AUTHORIZATION, value);
    let actor = match gateway.admin_tokens.authorize(&bearer, Role::Viewer) {
        Ok(actor) => actor,
        Err(failure) => {
            audit_refused_action(gateway, "console_login", &failure, peer);
            return with_security(auth_problem(&failure).into_response());
        }
    };
    // The record is reserved first: a login the trail cannot take is refused.
    let Ok(slot) = gateway.audit.reserve() else {
        return with_security(super::api::audit_unavailable());
    };
    let now = Instant::now();
    let (id, csrf) = (random_hex(), random_hex());
    {
        let mut sessions = SESSIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|_, session| !session.expired(now));
        if sessions.len() >= MAX_SESSIONS {
            return with_security(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_sessions",
                    format!("{MAX_SESSIONS} console sessions are open"),
                )
                .hint("log out elsewhere, or wait for idle sessions to expire")
                .into_response(),
            );
        }
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                actor: actor.clone(),
                created: now,
                last_used: now,
            },
        );
    }
    let mut event = AdminEvent::new(actor.name.clone(), actor.role.as_str(), "console_login");
    event.details.insert("peer".to_string(), peer.to_string());
    event.details.insert("via".to_string(), "console".to_string());
    event.details.insert("outcome".to_string(), "ok".to_string());
    slot.record(event);
    let mut response = with_security(json_response(StatusCode::OK, &described(&actor, &csrf)));
    let secure = is_tls(&parts.headers);
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        lifetime().as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Whether the browser reached the admin port over TLS (a terminating proxy
/// in front of it says so): then the cookie is `Secure`.
fn is_tls(headers: &HeaderMap) -> bool {
    let says = |name: &str, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with(want))
    };
    says("x-forwarded-proto", "https") || says("origin", "https://")
}

fn logout(gateway: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> ApiResponse {
    let cleared = |mut response: ApiResponse| {
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static("clawgress_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        );
        with_security(response)
    };
    let Some(id) = session_id(headers) else {
        return cleared(json_response(StatusCode::OK, &serde_json::json!({"logged_out": false})));
    };
    let Some((actor, csrf, _)) = live_session(&id) else {
        return cleared(json_response(StatusCode::OK, &serde_json::json!({"logged_out": false})));
    };
    if let Some(problem) = cross_origin(headers) {
        return with_security(problem.into_response());
    }
    if !csrf_ok(headers, &csrf) {
        audit(
            gateway,
            &actor,
            "console_logout",
            peer,
            "refused",
            Some("csrf_token_missing"),
        );
        return with_security(csrf_problem().into_response());
    }
    SESSIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&id);
    audit(gateway, &actor, "console_logout", peer, "ok", None);
    cleared(json_response(StatusCode::OK, &serde_json::json!({"logged_out": true})))
}

fn csrf_problem() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "csrf_token_missing",
        format!("a change through a console session needs the session's CSRF token in {CSRF_HEADER}"),
    )
    .hint("make changes from the console page, or call the API with a bearer token")
}

/// For a `/v1/` request with the console's cookie and no `Authorization`:
/// checks the session (and, for a change, its CSRF token and origin) and
/// presents the session's token as a bearer, so the API authorizes it as it
/// would the token. A request without the cookie passes untouched;
/// `Some` is the refusal to send instead.
pub(super) fn session_to_bearer(
    gateway: &Gateway,
    peer: SocketAddr,
    req: &mut Request<Incoming>,
) -> Option<ApiResponse> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return None;
    }
    // No cookie: nothing to refuse; the API asks for a token itself.
    let id = session_id(req.headers())?;
    let Some((actor, csrf, token)) = live_session(&id) else {
        return Some(expired_problem().into_response());
    };
    let is_change = !matches!(*req.method(), Method::GET | Method::HEAD);
    if is_change {
        let action = "console_request";
        if let Some(problem) = cross_origin(req.headers()) {
            audit(gateway, &actor, action, peer, "refused", Some("cross_origin"));
            return Some(problem.into_response());
        }
        if !csrf_ok(req.headers(), &csrf) {
            audit(gateway, &actor, action, peer, "refused", Some("csrf_token_missing"));
            return Some(csrf_problem().into_response());
        }
    }
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Some(expired_problem().into_response());
    };
    req.headers_mut().insert(header::AUTHORIZATION, value);
    None
}

#[cfg(test)]
mod tests;
