//! Forwarding absolute-form requests: the client's request goes to exactly
//! the address the decide phase checked, streamed both ways, over pooled
//! keep-alive connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;

use super::body::{OutboundBody, ProxyBody, Transfer, UpstreamBody};
use super::refuse_answered;
use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::RequestContext;
use crate::decision::{Refusal, RequestProblem, UpstreamFailure};
use crate::inspect::inspect_request;
use crate::record::Finisher;
use crate::state::PolicySnapshot;

pub(super) async fn forward(
    gateway: Arc<Gateway>,
    policy: Arc<PolicySnapshot>,
    ctx: RequestContext,
    slot: AuditSlot,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some((addr, host)) = ctx.destination.as_ref().and_then(|d| Some((d.addr?, d.host.clone()))) else {
        return refuse_answered(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority)).await;
    };
    let route = if ctx.originate {
        let link = super::intercept::UpstreamLink::originate(gateway.clone(), &policy, host, addr);
        Route::Tunnel(Arc::new(link))
    } else {
        Route::Pool(addr)
    };
    exchange(gateway, policy, ctx, slot, req, route).await
}

/// Where an admitted request goes.
pub(super) enum Route {
    /// The pooled plain-HTTP client, to exactly this checked address.
    Pool(SocketAddr),
    /// The upstream TLS connection of an intercepted tunnel.
    Tunnel(Arc<super::intercept::UpstreamLink>),
}

/// Inspect, send, and stream the answer back: the phases after decide,
/// shared by plain-HTTP requests and requests inside intercepted tunnels.
pub(super) async fn exchange(
    gateway: Arc<Gateway>,
    policy: Arc<PolicySnapshot>,
    ctx: RequestContext,
    slot: AuditSlot,
    req: Request<Incoming>,
    route: Route,
) -> Response<ProxyBody> {
    let mut ctx = ctx;
    let ticket = ctx.breaker.take();
    let (mut parts, body) = req.into_parts();
    // Inspect: DLP may refuse the request, rewrite its query or body, or
    // only note what it found.
    let inspected = inspect_request(
        policy.dlp.as_deref(),
        &mut ctx,
        &mut parts,
        body,
        policy.hash_bodies,
        policy.request_timeout,
    )
    .await;
    let outbound = match inspected {
        Ok(outbound) => outbound,
        Err(refusal) => return refuse_answered(&gateway, ctx, slot, refusal).await,
    };
    // Budgets: an AI request reserves what it may spend before it leaves.
    if let Err(refusal) = reserve_budget(&gateway, &policy, &mut ctx).await {
        return refuse_answered(&gateway, ctx, slot, refusal).await;
    }
    // The Host header names the origin as the client wrote it; the URI names
    // the checked address, which is all the connection pool ever dials.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let target = match &route {
        Route::Pool(addr) => upstream_uri(*addr, &parts.uri),
        Route::Tunnel(_) => origin_form(&parts.uri),
    };
    let Some(target) = target else {
        return refuse_answered(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority)).await;
    };
    parts.uri = target;
    strip_hop_by_hop(&mut parts.headers);
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static("1.1 clawgress"));

    let transfer = Arc::new(Transfer::default());
    // A body without Content-Length was admitted at zero bytes; it is
    // charged to the agent's share as it streams.
    let streamed_charge = if parts.headers.contains_key(header::CONTENT_LENGTH) {
        None
    } else {
        ctx.admission.clone()
    };
    let outbound = Request::from_parts(parts, OutboundBody::new(outbound, transfer.clone(), streamed_charge));
    // From here on the finisher records the exchange whatever happens,
    // including the client going away while the upstream is still working.
    let mut finisher = Finisher::new(gateway.clone(), ctx, slot, transfer.clone());
    let sent = match &route {
        Route::Pool(_) => {
            let response = crate::state::upstream().request(outbound);
            await_response(response, &transfer, policy.request_timeout, |error| {
                SendFailure::Upstream(classify_client_error(&error))
            })
            .await
        }
        Route::Tunnel(link) => {
            let response = link.send(outbound);
            await_response(response, &transfer, policy.request_timeout, |failure| failure).await
        }
    };
    // Origination connected on first use: its TLS side goes on the record.
    if let Route::Tunnel(link) = &route
        && let Some(ctx) = finisher.context_mut()
        && ctx.tls.is_none()
    {
        ctx.tls = link.record();
    }
    let response = match sent {
        Ok(response) => response,
        Err(Waited::Timeout) => {
            if let Some(ticket) = ticket {
                ticket.failure();
            }
            return finisher
                .refuse_confirmed(Refusal::Upstream(UpstreamFailure::ResponseTimeout))
                .await;
        }
        Err(Waited::Failed(failure)) => {
            if let Some(overflow) = transfer_contained(&transfer) {
                return finisher.refuse_confirmed(Refusal::Contained(overflow)).await;
            }
            if transfer.client_body_failed.load(Ordering::Relaxed) {
                // The client's fault: the destination's breaker is not told.
                return finisher
                    .refuse_confirmed(Refusal::Request(RequestProblem::ClientBody))
                    .await;
            }
            if let Some(ticket) = ticket {
                ticket.failure();
            }
            let refusal = match failure {
                SendFailure::Upstream(failure) => {
                    if failure == UpstreamFailure::Reset {
                        gateway.metrics.record_upstream_reset();
                    }
                    Refusal::Upstream(failure)
                }
                SendFailure::Tls(failure) => {
                    if let Some(ctx) = finisher.context_mut() {
                        ctx.tls = Some(failure.record.clone());
                    }
                    Refusal::UpstreamTls(failure)
                }
            };
            return finisher.refuse_confirmed(refusal).await;
        }
    };

    let (mut parts, body) = response.into_parts();
    if let Some(ticket) = ticket {
        if policy.breakers.is_failure_status(parts.status.as_u16()) {
            ticket.failure();
        } else {
            ticket.success();
        }
    }
    // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is meaningless;
    // hyper de-chunks, so a stale Content-Length would truncate the body.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    // Only the gateway speaks for the gateway: an upstream must not forge
    // our decision or request id.
    parts.headers.remove(crate::response::DECISION_HEADER);
    parts.headers.remove(crate::response::REQUEST_ID_HEADER);
    if let Some(ctx) = finisher.context() {
        if let Some((reason, policy_id)) = &ctx.would_deny
            && let Ok(value) = HeaderValue::from_str(&format!("would_deny; reason={reason}; policy_id={policy_id}"))
        {
            parts.headers.insert(crate::response::DECISION_HEADER, value);
        }
        if let Ok(value) = HeaderValue::from_str(&ctx.request_id.to_string()) {
            parts.headers.insert(crate::response::REQUEST_ID_HEADER, value);
        }
        // soft-stop: the agent is told it is past a budget.
        if let Some(charged) = ctx.budget.as_ref().and_then(|r| {
            r.budgets
                .iter()
                .find(|b| b.over && b.mode == clawgress_policies::model::BudgetMode::SoftStop)
        }) && let Ok(value) =
            HeaderValue::from_str(&format!("exceeded; mode=soft-stop; policy_id={}", charged.policy_id))
        {
            parts.headers.insert(BUDGET_HEADER, value);
        }
    }
    finisher.served(parts.status.as_u16());
    if http_body::Body::is_end_stream(&body) {
        // No body (HEAD, 204, 304, an empty 200): the record is complete
        // now, and the head is the whole answer, so it waits for the record.
        return answer_when_recorded(&gateway, finisher, parts, body, transfer).await;
    }
    let usage = finisher
        .context()
        .and_then(|ctx| ctx.ai.as_ref())
        .and_then(|ai| ai.usage_reader(&parts.headers));
    Response::from_parts(
        parts,
        ProxyBody::Upstream(UpstreamBody::new(body, transfer, Some(finisher), usage)),
    )
}

/// Records a response without a body and answers once the record is in the
/// trail. Not confirmed in time: `fail_mode: closed` answers 503
/// `audit_unavailable` instead (the answer must not outrun its record);
/// `open` answers as the upstream did.
async fn answer_when_recorded(
    gateway: &Gateway,
    finisher: Finisher,
    parts: http::response::Parts,
    body: Incoming,
    transfer: Arc<Transfer>,
) -> Response<ProxyBody> {
    let fails_open = finisher.fails_open();
    let fallback = finisher
        .context()
        .map(|ctx| crate::response::refusal_response(ctx, &Refusal::AuditUnavailable));
    if let Err(unconfirmed) = finisher.finish().within(crate::audit::CONFIRM_TIMEOUT).await {
        gateway.audit.metrics().confirm_timeouts.inc();
        if !fails_open && let Some(fallback) = fallback {
            tracing::error!("{unconfirmed}; answering 503 audit_unavailable (fail_mode: closed)");
            return fallback;
        }
    }
    Response::from_parts(
        parts,
        ProxyBody::Upstream(UpstreamBody::new(body, transfer, None, None)),
    )
}

/// Tells an agent that a soft-stop budget is spent.
const BUDGET_HEADER: http::header::HeaderName = http::header::HeaderName::from_static("x-clawgress-budget");

/// Reserves an AI request's estimate and output limit against its budgets.
async fn reserve_budget(gateway: &Gateway, policy: &PolicySnapshot, ctx: &mut RequestContext) -> Result<(), Refusal> {
    let (Some(plan), Some(ai), Some(identity)) = (policy.budgets.as_deref(), ctx.ai.as_ref(), ctx.identity.clone())
    else {
        return Ok(());
    };
    match plan
        .reserve(&gateway.budget_store, &identity, ai, chrono::Utc::now())
        .await
    {
        Ok(reservation) => {
            if reservation.as_ref().is_some_and(|r| r.budgets.iter().any(|b| b.over)) {
                ctx.alert = true;
            }
            ctx.budget = reservation;
            Ok(())
        }
        Err(crate::budgets::BudgetRefusal::Exceeded(exceeded)) => Err(Refusal::BudgetExceeded(exceeded)),
        Err(crate::budgets::BudgetRefusal::Unavailable(error)) => {
            if policy.fail_mode_for(&identity.environment) == clawgress_policies::model::FailMode::Open {
                ctx.fail_open.get_or_insert("budget_store");
                gateway.metrics.record_fail_open("budget_store");
                Ok(())
            } else {
                Err(Refusal::BudgetUnavailable(error.to_string()))
            }
        }
    }
}

/// The overflow that cut the request body, if containment did.
fn transfer_contained(transfer: &Transfer) -> Option<crate::containment::Overflow> {
    transfer.contained.lock().ok().and_then(|overflow| *overflow)
}

enum Waited {
    Timeout,
    Failed(SendFailure),
}

/// Why a request could not be sent or answered.
pub(super) enum SendFailure {
    Upstream(UpstreamFailure),
    /// An intercepted tunnel had to reconnect and the upstream's
    /// certificate no longer passed.
    Tls(Box<crate::tls::TlsFailure>),
}

/// Waits for the response head. The timeout is for inactivity: it restarts
/// while the request body is still flowing, so a long upload is not cut off,
/// but an upstream that goes quiet is.
async fn await_response<E>(
    response: impl Future<Output = Result<Response<Incoming>, E>>,
    transfer: &Transfer,
    timeout: Duration,
    classify: impl FnOnce(E) -> SendFailure,
) -> Result<Response<Incoming>, Waited> {
    tokio::pin!(response);
    let mut sent = transfer.bytes_out.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            result = &mut response => return result.map_err(|error| Waited::Failed(classify(error))),
            () = tokio::time::sleep(timeout) => {
                let now = transfer.bytes_out.load(Ordering::Relaxed);
                if now == sent {
                    return Err(Waited::Timeout);
                }
                sent = now;
            }
        }
    }
}

/// The path and query alone, for a request on a connection already open
/// to its origin.
fn origin_form(original: &Uri) -> Option<Uri> {
    Uri::try_from(original.path_and_query().map_or("/", |p| p.as_str())).ok()
}

fn upstream_uri(addr: SocketAddr, original: &Uri) -> Option<Uri> {
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    // SocketAddr's Display brackets IPv6 addresses, as a URI needs.
    Uri::try_from(format!("http://{addr}{path}")).ok()
}

/// Connection-level headers are for one hop only (RFC 9110 §7.6.1), and
/// Proxy-Authorization is the agent's credential: it must never travel on.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn classify_client_error(error: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    tracing::debug!(error = %error, "upstream request failed");
    if error.is_connect() {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return UpstreamFailure::ConnectTimeout;
            }
            if cause.to_string().contains("timed out") {
                return UpstreamFailure::ConnectTimeout;
            }
            source = cause.source();
        }
        return UpstreamFailure::ConnectFailed;
    }
    UpstreamFailure::Reset
}
