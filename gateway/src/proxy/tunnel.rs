//! CONNECT tunnels: dial the checked address first (so a failure is a clear
//! 502, not a dead tunnel), answer 200, then copy bytes both ways with
//! half-close, and record the tunnel's byte counts when it ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::{ProxyBody, Transfer};
use super::refuse;
use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::RequestContext;
use crate::decision::{Refusal, RequestProblem, UpstreamFailure};
use crate::record::Finisher;
use crate::state::PolicySnapshot;

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
        return refuse(&gateway, ctx, slot, Refusal::Request(RequestProblem::MissingAuthority));
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
            return refuse(&gateway, ctx, slot, Refusal::Upstream(failure));
        }
    };
    let _ = upstream.set_nodelay(true);

    let on_upgrade = hyper::upgrade::on(&mut req);
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
                let mut upstream = CountingStream {
                    inner: upstream,
                    transfer: &transfer,
                };
                // An emergency block cuts open tunnels too: they are the
                // channel an incident most needs closed.
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
            Err(error) => tracing::debug!(%error, "client went away before the tunnel opened"),
        }
        finisher.finish();
        drop(open);
    });
    *response.status_mut() = StatusCode::OK;
    response
}

/// Keeps the gateway's count of open tunnels.
struct TunnelGuard(Arc<Gateway>);

impl TunnelGuard {
    fn new(gateway: &Arc<Gateway>) -> Self {
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
