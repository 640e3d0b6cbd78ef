//! Forwarding absolute-form requests: the client's request goes to exactly
//! the address the decide phase checked, streamed both ways, over pooled
//! keep-alive connections.

use std::net::SocketAddr;
use std::sync::Arc;

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
    let outbound = Request::from_parts(parts, OutboundBody::new(body, transfer.clone()));
    let sent = tokio::time::timeout(policy.request_timeout, crate::state::upstream().request(outbound)).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let failure = classify_client_error(&error);
            if failure == UpstreamFailure::Reset {
                gateway.metrics.record_upstream_reset();
            }
            tracing::debug!(request_id = %ctx.request_id, error = %error, "upstream request failed");
            return refuse(&gateway, ctx, slot, Refusal::Upstream(failure));
        }
        Err(_elapsed) => return refuse(&gateway, ctx, slot, Refusal::Upstream(UpstreamFailure::ResponseTimeout)),
    };

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some((reason, policy_id)) = &ctx.would_deny
        && let Ok(value) = HeaderValue::from_str(&format!("would_deny; reason={reason}; policy_id={policy_id}"))
    {
        parts.headers.insert(crate::response::DECISION_HEADER, value);
    }
    let finisher = Finisher::new(gateway, ctx, slot, parts.status.as_u16());
    Response::from_parts(parts, ProxyBody::Upstream(UpstreamBody::new(body, transfer, finisher)))
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
