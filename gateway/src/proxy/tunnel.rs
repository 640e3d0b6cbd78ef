//! CONNECT tunnels: dial the checked address first (so a failure is a clear
//! 502, not a dead tunnel), answer 200, then copy bytes both ways with
//! half-close, and record the tunnel's byte counts when it ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use clawgress_policies::model::TlsMode;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::body::{ProxyBody, Transfer};
use super::refuse_answered;
use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::RequestContext;
use crate::decision::{Refusal, RequestProblem, UpstreamFailure};
use crate::record::Finisher;
use crate::state::PolicySnapshot;
use crate::tls::TlsRecord;
use crate::tls::client_hello::{self, Peek};

pub(super) async fn open(
    gateway: Arc<Gateway>,
    policy: Arc<PolicySnapshot>,
    ctx: RequestContext,
    slot: AuditSlot,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut ctx = ctx;
    let ticket = ctx.breaker.take();
    let Some(addr) = ctx.destination.as_ref().and_then(|d| d.addr) else {
        return refuse_answered(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority)).await;
    };
    let connected = tokio::time::timeout(policy.connect_timeout, TcpStream::connect(addr)).await;
    let failure = match connected {
        Ok(Ok(_)) => None,
        Ok(Err(_)) => Some(UpstreamFailure::ConnectFailed),
        Err(_) => Some(UpstreamFailure::ConnectTimeout),
    };
    if let Some(ticket) = ticket {
        if failure.is_some() {
            ticket.failure()
        } else {
            ticket.success()
        }
    }
    let upstream = match (connected, failure) {
        (Ok(Ok(stream)), _) => stream,
        (_, failure) => {
            let failure = failure.unwrap_or(UpstreamFailure::ConnectFailed);
            return refuse_answered(&gateway, ctx, slot, Refusal::Upstream(failure)).await;
        }
    };
    let _ = upstream.set_nodelay(true);
    if ctx.allowed_by.as_ref().is_some_and(|a| a.tls == TlsMode::Intercept) {
        return super::intercept::open(gateway, policy, ctx, slot, req, upstream).await;
    }
    let upstream = upstream;
    ctx.tls = Some(TlsRecord {
        mode: "passthrough",
        ..TlsRecord::default()
    });
    let hello_timeout = policy.request_timeout;

    let on_upgrade = hyper::upgrade::on(&mut req);
    // The client connection's --max-connections slot, held as long as the tunnel.
    let connection_slot = req.extensions_mut().remove::<crate::resources::ConnectionSlot>();
    let transfer = Arc::new(Transfer::default());
    let mut finisher = Finisher::new(gateway.clone(), ctx, slot, transfer.clone());
    finisher.served(StatusCode::OK.as_u16());
    let mut response = Response::new(ProxyBody::empty());
    if let Some((reason, policy_id)) = finisher.context().and_then(|c| c.would_deny.as_ref())
        && let Ok(value) = HeaderValue::from_str(&format!("would_deny; reason={reason}; policy_id={policy_id}"))
    {
        response.headers_mut().insert(crate::response::DECISION_HEADER, value);
    }
    // Counted so a graceful shutdown waits for open tunnels too; if the
    // worker stops anyway, dropping the task drops the finisher, which
    // records the tunnel with the bytes it carried.
    let open = TunnelGuard::new(&gateway);
    let gateway = gateway.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                // Stop domain fronting: the TLS inside must be for the host
                // the tunnel was opened to.
                match first_flight(&mut client, &upstream, hello_timeout).await {
                    Ok(flight) => {
                        if let Err(refusal) = check_flight(&mut finisher, &flight) {
                            let _ = finisher.refuse(refusal);
                            drop(open);
                            return;
                        }
                        relay(&gateway, &mut finisher, client, upstream, &transfer, &flight.bytes).await;
                    }
                    Err(error) => tracing::debug!(%error, "client went away before its first bytes"),
                }
            }
            Err(error) => tracing::debug!(%error, "client went away before the tunnel opened"),
        }
        // The tunnel's bytes passed as they came; its record is written
        // at its end and nothing after it waits for that.
        finisher.finish().detach();
        drop((open, connection_slot));
    });
    *response.status_mut() = StatusCode::OK;
    response
}

/// Sends what the client already sent, then copies bytes both ways until
/// either side closes, counting them for the audit; an emergency block cuts
/// the tunnel. Shared by CONNECT tunnels and transparent TLS connections.
pub(super) async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
    gateway: &Gateway,
    finisher: &mut Finisher,
    mut client: C,
    mut upstream: TcpStream,
    transfer: &Transfer,
    first: &[u8],
) {
    if !first.is_empty() {
        if upstream.write_all(first).await.is_err() {
            finisher.upstream_reset();
        }
        transfer
            .bytes_out
            .fetch_add(first.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let mut upstream = CountingStream {
        inner: upstream,
        transfer,
    };
    // An emergency block cuts open tunnels too: they are the channel an
    // incident most needs closed.
    let mut blocked = gateway.control.watch_block();
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = copied && is_reset(&error) {
                finisher.upstream_reset();
            }
        }
        _ = blocked.wait_for(|blocked| *blocked) => finisher.cut("emergency_block"),
    }
}

/// What the client sent first, and what it says.
struct Flight {
    bytes: Vec<u8>,
    peek: Peek,
}

/// Reads the client's first flight: a whole ClientHello, or enough to see
/// that it is not TLS. Stops early if the upstream speaks first (a protocol
/// where the server talks first is not TLS) or the client goes quiet.
async fn first_flight<S: AsyncRead + Unpin>(
    client: &mut S,
    upstream: &TcpStream,
    timeout: std::time::Duration,
) -> io::Result<Flight> {
    let mut bytes = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peek = client_hello::peek(&bytes);
        if peek != Peek::Incomplete || bytes.len() >= client_hello::MAX_HELLO_BYTES {
            return Ok(Flight { bytes, peek });
        }
        let mut chunk = [0u8; 4096];
        tokio::select! {
            read = client.read(&mut chunk) => {
                let n = read?;
                if n == 0 {
                    return Ok(Flight { bytes, peek });
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
            _ = upstream.readable() => return Ok(Flight { bytes, peek }),
            () = tokio::time::sleep_until(deadline) => return Ok(Flight { bytes, peek }),
        }
    }
}

/// The tunnel's verdict on its first flight; notes the SNI for the audit.
fn check_flight(finisher: &mut Finisher, flight: &Flight) -> Result<(), Refusal> {
    let host = finisher
        .context()
        .and_then(|c| c.destination_host())
        .unwrap_or_default()
        .to_string();
    match &flight.peek {
        Peek::ClientHello { sni } => {
            if let Some(tls) = finisher.context_mut().and_then(|c| c.tls.as_mut()) {
                tls.sni = sni.clone();
            }
            match sni {
                Some(sni) if *sni != host => Err(Refusal::SniMismatch { sni: sni.clone() }),
                _ => Ok(()),
            }
        }
        Peek::Malformed => Err(Refusal::MalformedClientHello),
        // Bytes that look like the start of TLS but never became a whole
        // ClientHello could hide a server name: fail closed.
        Peek::Incomplete if flight.bytes.first() == Some(&0x16) => Err(Refusal::MalformedClientHello),
        // Not TLS at all (or nothing yet): there is no server name to
        // front with; the bytes go to the allowed host:port as they are.
        Peek::Incomplete | Peek::NotTls => Ok(()),
    }
}

/// Keeps the gateway's count of open tunnels.
pub(super) struct TunnelGuard(Arc<Gateway>);

impl TunnelGuard {
    pub(super) fn new(gateway: &Arc<Gateway>) -> Self {
        gateway.open_tunnels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TunnelGuard(gateway.clone())
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// The upstream side of a tunnel, counting bytes: what is written goes out,
/// what is read came in. Counting here rather than trusting
/// copy_bidirectional's totals keeps the counts when the tunnel ends in an
/// error.
struct CountingStream<'a> {
    inner: TcpStream,
    transfer: &'a Transfer,
}

impl AsyncRead for CountingStream<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.transfer
            .bytes_in
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for CountingStream<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.transfer
                .bytes_out
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
