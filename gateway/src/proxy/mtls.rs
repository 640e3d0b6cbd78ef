//! The mTLS listener (`clawgress gateway --listen-tls ADDR`): the explicit
//! proxy (absolute-form requests and CONNECT, keep-alive, upgrades) over
//! TLS, with the agent named by its client certificate.
//!
//! Only the transport and the identify phase differ from the explicit port:
//! the handshake requires a certificate from `--client-ca` that `--crl` does
//! not revoke (refused handshakes are audited and counted), and each
//! request's agent is the one the certificate names
//! (`IdentityResolver::by_certificate`). Then the same pipeline runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::{Entry, handle_entry, refuse};
use crate::Gateway;
use crate::context::{RequestContext, RequestKind};
use crate::decision::Refusal;
use crate::identity::{CertificateProblem, Identity, IdentityError, IdentityResolver};
use crate::mtls::{ClientCertRecord, ClientCertificate, Handshake, MtlsAcceptor, MtlsPeer};

/// Largest request head accepted, as on the explicit port.
use super::head::MAX_HEAD_BYTES;

/// Accepts connections until `shutdown`, then waits up to `drain` for open
/// ones (and open tunnels).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    acceptor: Arc<MtlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    header_timeout: Duration,
) {
    let open = Arc::new(());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        // At --max-connections, stop accepting until one ends.
        let slot = tokio::select! {
            slot = gateway.connections.slot() => match slot { Some(slot) => slot, None => break },
            _ = shutdown.changed() => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "mTLS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let (gateway, acceptor, builder, open) = (gateway.clone(), acceptor.clone(), builder.clone(), open.clone());
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let active = gateway.metrics.connection_opened(crate::metrics::ListenerLabel::Mtls);
            let accepted = Accepted { stream, client, slot };
            connection(gateway, acceptor, builder, accepted, header_timeout, stopping).await;
            drop((active, open));
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&open) > 1 || gateway.open_tunnels.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("mTLS connections still open after {drain:?}; stopping anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection just accepted, with its --max-connections slot.
struct Accepted {
    stream: TcpStream,
    client: SocketAddr,
    slot: crate::resources::ConnectionSlot,
}

async fn connection(
    gateway: Arc<Gateway>,
    acceptor: Arc<MtlsAcceptor>,
    builder: http1::Builder,
    accepted: Accepted,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let Accepted { stream, client, slot } = accepted;
    let local = stream
        .local_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
    let handshake = match acceptor.handshake(local) {
        Ok(handshake) => handshake,
        Err(error) => {
            tracing::error!(%error, "cannot set up an mTLS handshake; connection closed");
            return;
        }
    };
    // The handshake counts against the header timeout: a client that
    // connects and says nothing holds nothing for long.
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(header_timeout, TlsAcceptor::from(handshake.config.clone()).accept(stream)) => accepted,
        _ = stopping.changed() => return,
    };
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return refused(&gateway, &acceptor, &handshake, client, &error),
        Err(_) => return acceptor.metrics.handshake_timeout(),
    };
    let chain: Vec<_> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    // Verified, so it parses; a certificate webpki accepts and x509-parser
    // cannot read is refused rather than served without a name.
    let Some(certificate) = chain.first().and_then(ClientCertificate::parse) else {
        acceptor.metrics.handshake_refused(CertificateProblem::Invalid);
        return;
    };
    acceptor.metrics.handshake_ok();
    let peer = Arc::new(MtlsPeer::new(
        certificate,
        chain,
        handshake.generation,
        acceptor.clone(),
    ));
    // Heads hyper would refuse with a bare 400 are refused here (head.rs).
    let guard = super::head::HeadGuard::new();
    let tls = super::head::Guarded::new(tls, guard.clone());
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let (gateway, peer, guard, slot) = (gateway.clone(), peer.clone(), guard.clone(), slot.clone());
        async move {
            if let Some(refused) = guard.refusal(&req) {
                return Ok(super::head::refuse(&gateway, client, Entry::Mtls, refused).await);
            }
            req.extensions_mut().insert(peer.clone());
            // A CONNECT's tunnel outlives the connection task: it keeps the slot.
            req.extensions_mut().insert(slot);
            let mut response = handle_entry(gateway, client, Entry::Mtls, req).await;
            if peer.is_refused() {
                // Revoked (or expired) since the handshake: this answer is
                // the connection's last.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut conn = builder.serve_connection(TokioIo::new(tls), service).with_upgrades();
    let ended = tokio::select! {
        ended = &mut conn => ended,
        _ = stopping.changed() => {
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, %client, "mTLS connection ended with an error");
    }
}

/// The mTLS connection's client, as its listener put it on the request.
pub(super) fn peer(req: &http::Request<hyper::body::Incoming>) -> Option<&Arc<MtlsPeer>> {
    req.extensions().get::<Arc<MtlsPeer>>()
}

/// The identify phase on this listener: the client certificate decides,
/// checked again if the CA or CRL changed since the handshake. A
/// `Proxy-Authorization` sent anyway must be valid and name the same agent
/// (`certificate_mismatch` otherwise): a key must not lend its agent's
/// rights to another agent's certificate. An agent with `sources` must also
/// connect from one of them, as on the explicit port.
pub(super) fn identify(
    identities: &IdentityResolver,
    ctx: &mut RequestContext,
    req: &http::Request<hyper::body::Incoming>,
) -> Result<Arc<Identity>, Refusal> {
    let by_certificate = || -> Result<Arc<Identity>, IdentityError> {
        let peer = peer(req).ok_or(IdentityError::Missing)?;
        peer.revalidate().map_err(IdentityError::ClientCertificate)?;
        let identity = identities.by_certificate(&peer.names)?;
        if let Some(header) = req.headers().get(header::PROXY_AUTHORIZATION) {
            let claimed = identities.identify(Some(header))?;
            if claimed.agent_id != identity.agent_id {
                return Err(IdentityError::CertificateMismatch);
            }
        }
        Ok(identity)
    };
    let identity = by_certificate().map_err(Refusal::Identity)?;
    ctx.identity = Some(identity.clone());
    if let Err(mismatch) = identities.check_source(&identity, ctx.client.ip()) {
        ctx.record_client = true;
        return Err(Refusal::Identity(mismatch));
    }
    Ok(identity)
}

/// A failed handshake: a refused certificate is counted and audited (with
/// the certificate's subject and serial, never a key); anything else (plain
/// HTTP to the TLS port, a client that refused our certificate, a reset) is
/// counted and logged at debug.
fn refused(
    gateway: &Gateway,
    acceptor: &MtlsAcceptor,
    handshake: &Handshake,
    client: SocketAddr,
    error: &std::io::Error,
) {
    let rustls_error = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    let recorded = handshake.verifier.refused();
    let problem = recorded
        .as_ref()
        .and_then(|(_, error)| crate::mtls::verifier::problem_of(error))
        .or_else(|| rustls_error.and_then(crate::mtls::verifier::problem_of));
    let Some(problem) = problem else {
        acceptor.metrics.handshake_failed();
        tracing::debug!(%error, %client, "mTLS handshake failed");
        return;
    };
    acceptor.metrics.handshake_refused(problem);
    if !acceptor.may_audit_refusal() {
        tracing::debug!(%client, reason = problem.reason(), "refused mTLS handshake (over the audit rate for refusals)");
        return;
    }
    let mut record = recorded
        .as_ref()
        .and_then(|(der, _)| ClientCertificate::parse(der))
        .map(|certificate| certificate.record)
        .unwrap_or_default();
    record.error = Some(match (&recorded, rustls_error) {
        (Some((_, error)), _) | (None, Some(error)) => error.to_string(),
        (None, None) => error.to_string(),
    });
    audit_refusal(gateway, client, record, problem);
}

/// The audit line of a refused handshake: no request was made, so the
/// method says what happened (`HANDSHAKE`) and there is no destination.
fn audit_refusal(gateway: &Gateway, client: SocketAddr, record: ClientCertRecord, problem: CertificateProblem) {
    let method = Method::from_bytes(b"HANDSHAKE").unwrap_or(Method::CONNECT);
    let mut ctx = RequestContext::new(client, method, RequestKind::Forward, None);
    ctx.record_client = true;
    ctx.client_certificate = Some(Arc::new(record));
    if let Ok(slot) = gateway.audit.reserve() {
        let _ = refuse(
            gateway,
            ctx,
            slot,
            Refusal::Identity(IdentityError::ClientCertificate(problem)),
        );
    }
}
