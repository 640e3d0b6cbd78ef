//! Intercepted tunnels (`tls: intercept`): the gateway answers the CONNECT,
//! terminates the agent's TLS with a leaf from its own CA, and serves the
//! requests inside as if they had been sent to it in the clear: each one is
//! admitted, inspected (DLP), forwarded over the gateway's own verified TLS
//! to the upstream, and recorded on its own audit line.
//!
//! The upstream's TLS is opened before the CONNECT is answered, so a bad
//! certificate is a clear 502 with the certificate in the audit record, not
//! a tunnel that dies on first use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::body::{OutboundBody, ProxyBody, Transfer};
use super::forward::{Route, SendFailure, exchange};
use super::{admit_exchange, refuse_answered};
use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::{Destination, RequestContext, RequestKind, audit_path, decision_span};
use crate::decision::{Enforcement, Refusal, UpstreamFailure};
use crate::identity::Identity;
use crate::metrics::DecisionLabel;
use crate::record::Finisher;
use crate::response::refusal_response;
use crate::state::PolicySnapshot;
use crate::tls::{TlsRecord, UpstreamTlsPolicy};

/// The gateway's own connection to an intercepted tunnel's upstream,
/// reopened (and re-verified) when the upstream closes it.
pub(super) struct UpstreamLink {
    gateway: Arc<Gateway>,
    policy: UpstreamTlsPolicy,
    host: Arc<str>,
    addr: SocketAddr,
    connect_timeout: Duration,
    sender: tokio::sync::Mutex<Option<SendRequest<OutboundBody>>>,
    /// `intercept` or `originate`, for the audit.
    mode: &'static str,
    /// The TLS side of the latest connection, for requests that had none
    /// before they were sent (origination connects on first use).
    record: std::sync::Mutex<Option<TlsRecord>>,
}

impl UpstreamLink {
    /// A link for one plain-HTTP request upgraded to TLS (`tls_origination`);
    /// it connects when the request is sent.
    pub(super) fn originate(gateway: Arc<Gateway>, policy: &PolicySnapshot, host: Arc<str>, addr: SocketAddr) -> Self {
        UpstreamLink {
            gateway,
            policy: policy.upstream_tls.clone(),
            host,
            addr,
            connect_timeout: policy.connect_timeout,
            sender: tokio::sync::Mutex::new(None),
            mode: "originate",
            record: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn record(&self) -> Option<TlsRecord> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends one request, reconnecting first if the connection is gone.
    pub(super) async fn send(&self, req: Request<OutboundBody>) -> Result<Response<Incoming>, SendFailure> {
        let mut held = self.sender.lock().await;
        let reusable = match held.as_mut() {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            let (sender, _) = self.connect(None).await?;
            *held = Some(sender);
        }
        let Some(sender) = held.as_mut() else {
            return Err(SendFailure::Upstream(UpstreamFailure::ConnectFailed));
        };
        let response = sender.send_request(req);
        // HTTP/1.1 answers in order: the next request waits for the
        // connection anyway, so the lock is not what serializes them.
        drop(held);
        response
            .await
            .map_err(|_| SendFailure::Upstream(UpstreamFailure::Reset))
    }

    /// Dials (unless `tcp` is already open) and completes verified TLS.
    async fn connect(&self, tcp: Option<TcpStream>) -> Result<(SendRequest<OutboundBody>, TlsRecord), SendFailure> {
        let tcp = match tcp {
            Some(tcp) => tcp,
            None => match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(_)) => return Err(SendFailure::Upstream(UpstreamFailure::ConnectFailed)),
                Err(_) => return Err(SendFailure::Upstream(UpstreamFailure::ConnectTimeout)),
            },
        };
        let _ = tcp.set_nodelay(true);
        let handshake = self.gateway.tls.connect(&self.policy, &self.host, tcp, self.mode);
        let (tls, record) = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(done)) => {
                *self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(done.1.clone());
                done
            }
            Ok(Err(failure)) => return Err(SendFailure::Tls(Box::new(failure))),
            Err(_) => return Err(SendFailure::Upstream(UpstreamFailure::ConnectTimeout)),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|_| SendFailure::Upstream(UpstreamFailure::Reset))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "intercepted upstream connection ended");
            }
        });
        Ok((sender, record))
    }
}

/// What every request in one intercepted tunnel inherits from its CONNECT.
struct Scope {
    gateway: Arc<Gateway>,
    client: SocketAddr,
    identity: Option<Arc<Identity>>,
    enforcement: Enforcement,
    would_deny: Option<(&'static str, Arc<str>)>,
    allowed_by: Option<clawgress_policies::AllowedBy>,
    destination: Destination,
    trace_id: Option<String>,
    tls: Option<TlsRecord>,
    /// Set for a transparent connection: each request's line says so.
    original_destination: Option<SocketAddr>,
    /// Set on the mTLS listener: each request's line carries the certificate.
    client_certificate: Option<Arc<crate::mtls::ClientCertRecord>>,
    link: Arc<UpstreamLink>,
}

pub(super) async fn open(
    gateway: Arc<Gateway>,
    policy: Arc<PolicySnapshot>,
    ctx: RequestContext,
    slot: AuditSlot,
    mut req: Request<Incoming>,
    upstream: TcpStream,
) -> Response<ProxyBody> {
    let prepared = match prepare(gateway, &policy, ctx, slot, upstream).await {
        Ok(prepared) => prepared,
        Err(refused) => return refused,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(prepared, TokioIo::new(upgraded)).await,
            Err(_) => {
                prepared.finisher.finish().detach();
            }
        }
    });
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// An intercepted connection whose upstream TLS is up, waiting for the
/// agent's side.
pub(super) struct Prepared {
    finisher: Finisher,
    scope: Scope,
    server_config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    open: super::tunnel::TunnelGuard,
}

/// Mints the leaf and opens the upstream's verified TLS before the agent's
/// side is touched, so a bad certificate is refused (and recorded) first.
/// A refusal comes back as the response the explicit proxy would send; it
/// is already recorded.
pub(super) async fn prepare(
    gateway: Arc<Gateway>,
    policy: &PolicySnapshot,
    ctx: RequestContext,
    slot: AuditSlot,
    upstream: TcpStream,
) -> Result<Prepared, Response<ProxyBody>> {
    let mut ctx = ctx;
    let Some(destination) = ctx.destination.clone() else {
        return Err(refuse_answered(&gateway, ctx, slot, Refusal::InterceptUnavailable).await);
    };
    let Some(addr) = destination.addr else {
        return Err(refuse_answered(&gateway, ctx, slot, Refusal::InterceptUnavailable).await);
    };
    let server_config = match gateway.tls.ca.as_ref().map(|ca| ca.server_config(&destination.host)) {
        Some(Ok(config)) => config,
        Some(Err(error)) => {
            tracing::error!(error = %error, host = %destination.host, "cannot mint a leaf certificate");
            return Err(refuse_answered(&gateway, ctx, slot, Refusal::InterceptUnavailable).await);
        }
        None => return Err(refuse_answered(&gateway, ctx, slot, Refusal::InterceptUnavailable).await),
    };
    let link = Arc::new(UpstreamLink {
        gateway: gateway.clone(),
        policy: policy.upstream_tls.clone(),
        host: destination.host.clone(),
        addr,
        connect_timeout: policy.connect_timeout,
        sender: tokio::sync::Mutex::new(None),
        mode: "intercept",
        record: std::sync::Mutex::new(None),
    });
    match link.connect(Some(upstream)).await {
        Ok((sender, record)) => {
            *link.sender.lock().await = Some(sender);
            ctx.tls = Some(record);
        }
        Err(SendFailure::Tls(failure)) => {
            ctx.tls = Some(failure.record.clone());
            return Err(refuse_answered(&gateway, ctx, slot, Refusal::UpstreamTls(failure)).await);
        }
        Err(SendFailure::Upstream(failure)) => {
            return Err(refuse_answered(&gateway, ctx, slot, Refusal::Upstream(failure)).await);
        }
    }
    let scope = Scope {
        gateway: gateway.clone(),
        client: ctx.client,
        identity: ctx.identity.clone(),
        enforcement: ctx.enforcement,
        would_deny: ctx.would_deny.clone(),
        allowed_by: ctx.allowed_by.clone(),
        destination,
        trace_id: ctx.trace_id.clone(),
        tls: ctx.tls.clone(),
        original_destination: ctx.original_destination,
        client_certificate: ctx.client_certificate.clone(),
        link,
    };
    // The tunnel's own line carries no bytes: each request inside has its
    // own line with its own counts, and totals must not count them twice.
    let mut finisher = Finisher::new(gateway.clone(), ctx, slot, Arc::new(Transfer::default()));
    finisher.served(StatusCode::OK.as_u16());
    Ok(Prepared {
        finisher,
        scope,
        server_config,
        handshake_timeout: policy.request_timeout,
        open: super::tunnel::TunnelGuard::new(&gateway),
    })
}

/// Terminates the agent's TLS on `io` (a CONNECT tunnel, or a transparent
/// connection whose ClientHello is replayed) and serves the requests
/// inside, each admitted and recorded on its own.
pub(super) async fn serve<IO>(prepared: Prepared, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Prepared {
        mut finisher,
        mut scope,
        server_config,
        handshake_timeout,
        open,
    } = prepared;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(handshake_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        _ => {
            let _ = finisher.refuse(Refusal::MalformedClientHello);
            return;
        }
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
    if let Some(sni) = sni.clone()
        && *sni != *scope.destination.host
    {
        let _ = finisher.refuse(Refusal::SniMismatch { sni });
        return;
    }
    if let Some(tls) = finisher.context_mut().and_then(|ctx| ctx.tls.as_mut()) {
        tls.sni = sni.clone();
    }
    if let Some(tls) = scope.tls.as_mut() {
        tls.sni = sni;
    }
    let scope = Arc::new(scope);
    let tls = match tokio::time::timeout(handshake_timeout, start.into_stream(server_config)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            // The agent does not trust our CA, most likely.
            finisher.cut("client_tls_failed");
            finisher.finish().detach();
            return;
        }
    };
    let service = {
        let scope = scope.clone();
        service_fn(move |req| inner(scope.clone(), req))
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(tls), service);
    let mut blocked = scope.gateway.control.watch_block();
    tokio::select! {
        served = connection => {
            if let Err(error) = served {
                tracing::debug!(%error, "intercepted tunnel ended");
            }
        }
        _ = blocked.wait_for(|blocked| *blocked) => finisher.cut("emergency_block"),
    }
    // A tunnel's bytes pass as they come; its own record is written at
    // its end, and nothing after it waits for that.
    finisher.finish().detach();
    drop(open);
}

/// One request inside an intercepted tunnel.
async fn inner(scope: Arc<Scope>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let gateway = &scope.gateway;
    let (span, own_trace) = decision_span(req.headers().get("traceparent"));
    let trace_id = own_trace.or_else(|| scope.trace_id.clone());
    let mut ctx = RequestContext::new(scope.client, req.method().clone(), RequestKind::Intercepted, trace_id);
    ctx.span = span;
    ctx.identity = scope.identity.clone();
    ctx.enforcement = scope.enforcement;
    ctx.would_deny = scope.would_deny.clone();
    ctx.allowed_by = scope.allowed_by.clone();
    ctx.tls = scope.tls.clone();
    ctx.original_destination = scope.original_destination;
    ctx.record_client = scope.original_destination.is_some();
    ctx.client_certificate = scope.client_certificate.clone();
    ctx.destination = Some(Destination {
        path: Some(audit_path(req.uri().path())),
        ..scope.destination.clone()
    });
    let Ok(slot) = gateway.audit.reserve() else {
        let refusal = Refusal::AuditUnavailable;
        gateway.metrics.record_request(
            DecisionLabel::Deny,
            refusal.reason(),
            Some(refusal.status().as_u16()),
            ctx.started.elapsed(),
        );
        return Ok(refusal_response(&ctx, &refusal));
    };
    let policy = gateway.policy.load_full();
    ctx.policy_version = Some(policy.version.clone());
    if !for_tunnel_host(&req, &scope.destination.host) {
        return Ok(refuse_answered(gateway, ctx, slot, Refusal::HostMismatch).await);
    }
    let declared = super::body::declared_length(req.headers()).unwrap_or(0);
    if let Err(refusal) = admit_exchange(gateway, &policy, &mut ctx, declared).await {
        return Ok(refuse_answered(gateway, ctx, slot, refusal).await);
    }
    let route = Route::Tunnel(scope.link.clone());
    Ok(exchange(gateway.clone(), policy, ctx, slot, req, route).await)
}

/// Whether a request names the tunnel's host (in its absolute URI or its
/// Host header): a tunnel opened to an allowed host must not carry
/// requests for another one behind the same certificate.
fn for_tunnel_host(req: &Request<Incoming>, host: &str) -> bool {
    let named = match req.uri().authority() {
        Some(authority) => Some(authority.host().to_string()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_string()),
    };
    named.is_some_and(|named| {
        let named = named.trim_end_matches('.');
        let named = named.trim_start_matches('[').trim_end_matches(']');
        named.eq_ignore_ascii_case(host)
    })
}
