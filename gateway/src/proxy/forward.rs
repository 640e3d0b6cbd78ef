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
use super::refuse;
use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::RequestContext;
use crate::decision::{Refusal, RequestProblem, UpstreamFailure};
use crate::record::Finisher;
use crate::state::PolicySnapshot;

pub(super) async fn forward(
    gateway: Arc<Gateway>,
    policy: Arc<PolicySnapshot>,
    ctx: RequestContext,
    slot: AuditSlot,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut ctx = ctx;
    let ticket = ctx.breaker.take();
    let Some(addr) = ctx.destination.as_ref().and_then(|d| d.addr) else {
        return refuse(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority));
    };
    let (mut parts, body) = req.into_parts();
    let Some(upstream_uri) = upstream_uri(addr, &parts.uri) else {
        return refuse(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority));
    };
    // The Host header names the origin as the client wrote it; the URI names
    // the checked address, which is all the connection pool ever dials.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    parts.uri = upstream_uri;
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
    let outbound = Request::from_parts(parts, OutboundBody::new(body, transfer.clone(), streamed_charge));
    // From here on the finisher records the exchange whatever happens,
    // including the client going away while the upstream is still working.
    let mut finisher = Finisher::new(gateway.clone(), ctx, slot, transfer.clone());
    let response = match await_response(outbound, &transfer, policy.request_timeout).await {
        Ok(response) => response,
        Err(Waited::Timeout) => {
            if let Some(ticket) = ticket {
                ticket.failure();
            }
            return finisher.refuse(Refusal::Upstream(UpstreamFailure::ResponseTimeout));
        }
        Err(Waited::Failed(error)) => {
            if let Some(overflow) = transfer_contained(&transfer) {
                return finisher.refuse(Refusal::Contained(overflow));
            }
            if transfer.client_body_failed.load(Ordering::Relaxed) {
                // The client's fault: the destination's breaker is not told.
                return finisher.refuse(Refusal::Request(RequestProblem::ClientBody));
            }
            if let Some(ticket) = ticket {
                ticket.failure();
            }
            let failure = classify_client_error(&error);
            if failure == UpstreamFailure::Reset {
                gateway.metrics.record_upstream_reset();
            }
            tracing::debug!(error = %error, "upstream request failed");
            return finisher.refuse(Refusal::Upstream(failure));
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
    }
    finisher.served(parts.status.as_u16());
    Response::from_parts(parts, ProxyBody::Upstream(UpstreamBody::new(body, transfer, finisher)))
}

/// The overflow that cut the request body, if containment did.
fn transfer_contained(transfer: &Transfer) -> Option<crate::containment::Overflow> {
    transfer.contained.lock().ok().and_then(|overflow| *overflow)
}

enum Waited {
    Timeout,
    Failed(hyper_util::client::legacy::Error),
}

/// Waits for the response head. The timeout is for inactivity: it restarts
/// while the request body is still flowing, so a long upload is not cut off,
/// but an upstream that goes quiet is.
async fn await_response(
    outbound: Request<OutboundBody>,
    transfer: &Transfer,
    timeout: Duration,
) -> Result<Response<Incoming>, Waited> {
    let response = crate::state::upstream().request(outbound);
    tokio::pin!(response);
    let mut sent = transfer.bytes_out.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            result = &mut response => return result.map_err(Waited::Failed),
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
