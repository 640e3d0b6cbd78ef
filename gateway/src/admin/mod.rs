//! The admin port: Prometheus metrics, liveness and readiness, the
//! built-in dashboard ([`crate::dashboard`]), and the
//! operator control API under `/v1/` ([`api`]), which needs a bearer token
//! with a role ([`auth`]).

mod api;
pub mod auth;
mod changes;
// The web console lives beside the admin port's other pages but reuses
// this module's token check, problems and audit helpers.
#[path = "../console/mod.rs"]
mod console;
mod export;
pub mod formats;
mod problem;
mod quarantine;
mod store_api;
mod tenancy;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;

/// Admin connections served at once; the port faces operators and
/// Prometheus, not the world, and must not starve the proxy of descriptors.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&gateway, peer, req).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

async fn route(gateway: &Arc<Gateway>, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if console::owns(req.uri().path()) {
        return console::handle(gateway, peer, req).await;
    }
    if req.uri().path().starts_with("/v1/") {
        // A console session's cookie becomes its token here, so the routes
        // below authorize it exactly as they would the token.
        if let Some(refused) = console::session_to_bearer(gateway, peer, &mut req) {
            return refused;
        }
        // The control store's routes (agents, policies, tokens, quotas,
        // history) have their own module; the runtime control ones stay in `api`.
        if store_api::owns(req.uri().path()) {
            return store_api::handle(gateway, peer, req).await;
        }
        return api::handle(gateway, peer, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut text = gateway.metrics.render();
            render_breakers(gateway, &mut text);
            render_control(gateway, &mut text);
            render_tunnels(gateway, &mut text);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/dashboard" | "/dashboard/" => {
            let mut response = Response::new(Full::new(Bytes::from_static(crate::dashboard::PAGE.as_bytes())));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page is one file: nothing may load from anywhere else.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                ),
            );
            headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            response
        }
        "/dashboard/data.json" => {
            let body = gateway.dashboard.data(gateway).to_string();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if gateway.audit.is_alive() {
                let version = gateway.policy.load().version.clone();
                text(StatusCode::OK, &format!("ready policy_version={version}\n"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the audit writer is not running\n",
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /console, /dashboard, /metrics, /healthz, /readyz or the control API under /v1/\n",
        ),
    }
}

/// Breaker states for exactly-allowlisted domains only: a wildcard rule
/// would otherwise let requests mint unbounded label values.
fn render_breakers(gateway: &Gateway, out: &mut String) {
    use std::fmt::Write as _;
    let policy = gateway.policy.load();
    out.push_str(
        "# HELP circuit_breaker_state Circuit breaker per allowlisted domain: 0 closed, 1 open, 2 half-open\n",
    );
    out.push_str("# TYPE circuit_breaker_state gauge\n");
    for (domain, state) in policy.breakers.states() {
        if policy.exported_breaker_domains.contains(&domain) {
            let _ = writeln!(
                out,
                "circuit_breaker_state{{domain=\"{domain}\"}} {}",
                state.gauge_value()
            );
        }
    }
}

/// The control store's state, and the fail-open passes that its absence
/// (or the audit sink's) allowed.
fn render_control(gateway: &Gateway, out: &mut String) {
    use std::fmt::Write as _;
    let status = gateway.control.status();
    out.push_str("# HELP clawgress_control_store_status Where this replica's control state comes from (1 on the current status)\n");
    out.push_str("# TYPE clawgress_control_store_status gauge\n");
    for candidate in [
        crate::control::StoreStatus::Standalone,
        crate::control::StoreStatus::Synced,
        crate::control::StoreStatus::LastKnownGood,
        crate::control::StoreStatus::Unknown,
    ] {
        let _ = writeln!(
            out,
            "clawgress_control_store_status{{status=\"{}\"}} {}",
            candidate.as_str(),
            u8::from(candidate == status)
        );
    }
    let snapshot = gateway.control.snapshot();
    out.push_str("# HELP clawgress_control_revision The control bucket revision this replica has applied\n");
    out.push_str("# TYPE clawgress_control_revision gauge\n");
    let _ = writeln!(out, "clawgress_control_revision {}", snapshot.revision);
    out.push_str("# HELP clawgress_emergency_block 1 while an emergency block is in force\n");
    out.push_str("# TYPE clawgress_emergency_block gauge\n");
    let _ = writeln!(
        out,
        "clawgress_emergency_block {}",
        u8::from(snapshot.emergency().is_some())
    );
    out.push_str("# HELP clawgress_temporary_allows Live temporary allowlist entries\n");
    out.push_str("# TYPE clawgress_temporary_allows gauge\n");
    let _ = writeln!(
        out,
        "clawgress_temporary_allows {}",
        snapshot.temporary(chrono::Utc::now()).count()
    );
}

/// Relays open now: CONNECT tunnels, intercepted TLS sessions and
/// transparent connections (each holds its buffers and two sockets until
/// it ends; `connections_active` also counts idle keep-alive clients).
fn render_tunnels(gateway: &Gateway, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("# HELP egress_tunnels_open Tunnels relaying now (CONNECT, intercepted TLS, transparent)\n");
    out.push_str("# TYPE egress_tunnels_open gauge\n");
    let open = gateway.open_tunnels.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(out, "egress_tunnels_open {open}");
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
