//! The transparent listener (`clawgress gateway --transparent ADDR`):
//! connections that nftables redirected to the gateway from workloads that
//! know nothing of a proxy.
//!
//! Only the first phase differs from the explicit proxy: the destination is
//! the connection's original one (`SO_ORIGINAL_DST`), the name comes from
//! the TLS ClientHello's SNI or the HTTP `Host` header, and the agent is the
//! source address (`sources` in the agents file). Then the same pipeline
//! runs: decide, limits, inspect, forward, record. Plain HTTP gets full L7
//! handling; TLS is passed through unless its rule says `intercept`. The
//! name must resolve, by the gateway's own resolver, to the address the
//! client was going to (`destination_mismatch` otherwise), so a fronted SNI
//! or a name the client resolved itself goes nowhere.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clawgress_policies::matcher::Protocol;
use clawgress_policies::model::TlsMode;
use http::{Method, Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::body::Transfer;
use super::{Entry, Target, decide, handle_entry, refuse};
use crate::Gateway;
use crate::context::{RequestContext, RequestKind, audit_path};
use crate::decision::{Refusal, RequestProblem, UpstreamFailure};
use crate::record::Finisher;
use crate::tls::TlsRecord;
use crate::tls::client_hello::{self, Peek};

/// What a redirected connection opens with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A whole TLS ClientHello, with its server name if it has one.
    Tls { sni: Option<String> },
    /// The start of an HTTP/1 request line.
    Http,
    /// A TLS record that is not a whole, well-formed ClientHello.
    MalformedTls,
    /// Something else.
    Other,
    /// Nothing (yet): more bytes are needed.
    Incomplete,
}

/// Longest method token looked for ("OPTIONS", "CONNECT" and friends).
const MAX_METHOD: usize = 16;

/// Classifies the first bytes of a redirected connection.
pub fn opening(bytes: &[u8]) -> Opening {
    match bytes.first() {
        None => Opening::Incomplete,
        Some(0x16) => match client_hello::peek(bytes) {
            Peek::ClientHello { sni } => Opening::Tls { sni },
            Peek::Incomplete if bytes.len() < client_hello::MAX_HELLO_BYTES => Opening::Incomplete,
            Peek::Incomplete | Peek::Malformed | Peek::NotTls => Opening::MalformedTls,
        },
        Some(_) => {
            // A method is an upper-case token, then a space.
            for (index, byte) in bytes.iter().take(MAX_METHOD + 1).enumerate() {
                match byte {
                    b' ' if index > 0 => return Opening::Http,
                    b'A'..=b'Z' | b'-' | b'_' => {}
                    _ => return Opening::Other,
                }
            }
            if bytes.len() > MAX_METHOD {
                Opening::Other
            } else {
                Opening::Incomplete
            }
        }
    }
}

/// The original destination of a redirected connection.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original
        .as_socket()
        .ok_or_else(|| std::io::Error::other("the original destination is not an IP address"))
}

/// Accepts redirected connections until `shutdown`, then waits up to
/// `drain` for open ones.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    header_timeout: Duration,
) {
    let open = Arc::new(());
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
                    tracing::warn!(%error, "transparent accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let (gateway, open) = (gateway.clone(), open.clone());
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let active = gateway
                .metrics
                .connection_opened(crate::metrics::ListenerLabel::Transparent);
            connection(gateway, stream, client, header_timeout, stopping).await;
            drop((active, open, slot));
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&open) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("transparent connections still open after {drain:?}; stopping anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The facts of one redirected connection, before anything is decided.
struct Arrival {
    gateway: Arc<Gateway>,
    client: SocketAddr,
    original: SocketAddr,
}

impl Arrival {
    /// A context for the connection's audit line: a tunnel (`CONNECT`)
    /// unless it turns out to be HTTP, with the agent its address names.
    fn context(&self) -> RequestContext {
        let mut ctx = RequestContext::new(self.client, Method::CONNECT, RequestKind::Connect, None);
        ctx.original_destination = Some(self.original);
        ctx.record_client = true;
        ctx.identity = self.gateway.identities.load().by_source(self.client.ip()).ok();
        ctx
    }

    /// Records a refusal of the whole connection; the caller closes it.
    fn refuse(&self, refusal: Refusal) {
        let mut ctx = self.context();
        // Where the connection was going is all there is to name.
        ctx.destination = Some(crate::context::Destination {
            host: Arc::from(self.original.ip().to_string()),
            port: self.original.port(),
            protocol: Protocol::Https,
            path: None,
            addr: None,
        });
        if let Ok(slot) = self.gateway.audit.reserve() {
            let _ = refuse(&self.gateway, ctx, slot, refusal);
        }
    }
}

async fn connection(
    gateway: Arc<Gateway>,
    mut stream: TcpStream,
    client: SocketAddr,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let original = match original_destination(&stream) {
        Ok(original) => original,
        Err(error) => {
            tracing::warn!(%error, %client, "a transparent connection without an original destination; closed");
            return;
        }
    };
    let arrival = Arrival {
        gateway: gateway.clone(),
        client,
        original,
    };
    // Not redirected: someone dialed the listener itself, and sending the
    // connection on would loop into ourselves.
    if stream.local_addr().is_ok_and(|local| local == original) {
        arrival.refuse(Refusal::Request(RequestProblem::ProxyLoop));
        return;
    }
    let mut first = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + header_timeout;
    let opened = loop {
        let opened = opening(&first);
        if opened != Opening::Incomplete {
            break opened;
        }
        let mut chunk = [0u8; 4096];
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break Opening::Incomplete,
                Ok(n) => first.extend_from_slice(&chunk[..n]),
            },
            () = tokio::time::sleep_until(deadline) => break Opening::Incomplete,
            _ = stopping.changed() => return,
        }
    };
    match opened {
        Opening::Http => http(arrival, Replayed::new(first, stream), header_timeout).await,
        Opening::Tls { sni: Some(sni) } => tls(arrival, stream, first, sni).await,
        Opening::Tls { sni: None } => arrival.refuse(Refusal::MissingSni),
        Opening::MalformedTls => arrival.refuse(Refusal::MalformedClientHello),
        Opening::Other => arrival.refuse(Refusal::UnsupportedProtocol),
        Opening::Incomplete if first.first() == Some(&0x16) => arrival.refuse(Refusal::MalformedClientHello),
        Opening::Incomplete => arrival.refuse(Refusal::Request(RequestProblem::HeaderTimeout)),
    }
}

/// Plain HTTP: every request on the connection goes through the explicit
/// proxy's pipeline, with the Host header as its name.
async fn http(arrival: Arrival, stream: Replayed<TcpStream>, header_timeout: Duration) {
    let Arrival {
        gateway,
        client,
        original,
    } = arrival;
    // Heads hyper would refuse with a bare 400 are refused here (head.rs).
    let guard = super::head::HeadGuard::new();
    let stream = super::head::Guarded::new(stream, guard.clone());
    let service = service_fn(move |req| {
        let (gateway, guard) = (gateway.clone(), guard.clone());
        let entry = Entry::Transparent { original };
        async move {
            Ok::<_, std::convert::Infallible>(match guard.refusal(&req) {
                Some(refused) => super::head::refuse(&gateway, client, entry, refused).await,
                None => handle_entry(gateway, client, entry, req).await,
            })
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, %client, "transparent HTTP connection ended with an error");
    }
}

/// Host, port, protocol and audit path of a redirected HTTP request: the
/// name from `Host` (or an absolute URI), the port from the original
/// destination, which is where the connection goes whatever it says.
pub(super) fn http_target(
    req: &Request<Incoming>,
    original: SocketAddr,
) -> Result<(&str, u16, Protocol, Option<String>), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::UnsupportedProtocol);
    }
    let host = match req.uri().authority() {
        Some(authority) => authority.host(),
        None => {
            let value = req
                .headers()
                .get(header::HOST)
                .ok_or(Refusal::Request(RequestProblem::MissingHost))?;
            let text = value
                .to_str()
                .map_err(|_| Refusal::Request(RequestProblem::MissingAuthority))?;
            host_of(text).ok_or(Refusal::Request(RequestProblem::MissingAuthority))?
        }
    };
    if host.is_empty() {
        return Err(Refusal::Request(RequestProblem::MissingHost));
    }
    Ok((
        host,
        original.port(),
        Protocol::Http,
        Some(audit_path(req.uri().path())),
    ))
}

/// The host of a `Host` header value (`name`, `name:port`, `[v6]:port`).
fn host_of(value: &str) -> Option<&str> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']')?;
        return Some(&value[..end + 2]);
    }
    Some(value.rsplit_once(':').map_or(value, |(host, _)| host))
}

/// TLS: decided on its SNI, then passed through (or intercepted, when the
/// rule says so) to the original destination.
async fn tls(arrival: Arrival, stream: TcpStream, first: Vec<u8>, sni: String) {
    let gateway = arrival.gateway.clone();
    let mut ctx = arrival.context();
    let Ok(slot) = gateway.audit.reserve() else {
        // No record possible: the connection is not served (fail closed).
        return;
    };
    let identity = match gateway.identities.load().by_source(arrival.client.ip()) {
        Ok(identity) => identity,
        Err(error) => {
            let _ = refuse(&gateway, ctx, slot, Refusal::Identity(error));
            return;
        }
    };
    let policy = gateway.policy.load_full();
    let target = Target {
        host: &sni,
        port: arrival.original.port(),
        protocol: Protocol::Https,
        path: None,
        explicit_port: true,
        declared: 0,
    };
    if let Err(refusal) = decide(&gateway, &policy, &mut ctx, identity, target).await {
        let _ = refuse(&gateway, ctx, slot, refusal);
        return;
    }
    let ticket = ctx.breaker.take();
    let addr = ctx
        .destination
        .as_ref()
        .and_then(|d| d.addr)
        .unwrap_or(arrival.original);
    let connected = tokio::time::timeout(policy.connect_timeout, TcpStream::connect(addr)).await;
    let upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        failed => {
            let failure = match failed {
                Err(_) => UpstreamFailure::ConnectTimeout,
                _ => UpstreamFailure::ConnectFailed,
            };
            if let Some(ticket) = ticket {
                ticket.failure();
            }
            let _ = refuse(&gateway, ctx, slot, Refusal::Upstream(failure));
            return;
        }
    };
    if let Some(ticket) = ticket {
        ticket.success();
    }
    let _ = upstream.set_nodelay(true);
    if ctx.allowed_by.as_ref().is_some_and(|a| a.tls == TlsMode::Intercept) {
        if let Ok(prepared) = super::intercept::prepare(gateway, &policy, ctx, slot, upstream).await {
            super::intercept::serve(prepared, Replayed::new(first, stream)).await;
        }
        return;
    }
    ctx.tls = Some(TlsRecord {
        mode: "passthrough",
        sni: Some(sni),
        ..TlsRecord::default()
    });
    let transfer = Arc::new(Transfer::default());
    let mut finisher = Finisher::new(gateway.clone(), ctx, slot, transfer.clone());
    finisher.served(200);
    let open = super::tunnel::TunnelGuard::new(&gateway);
    super::tunnel::relay(&gateway, &mut finisher, stream, upstream, &transfer, &first).await;
    finisher.finish().detach();
    drop(open);
}

/// A stream whose first bytes were already read: they are read again
/// first, then the stream itself.
pub struct Replayed<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Replayed<S> {
    pub fn new(first: Vec<u8>, inner: S) -> Self {
        Replayed {
            first,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.offset < self.first.len() {
            let take = buf.remaining().min(self.first.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.first[start..start + take]);
            self.offset += take;
            if self.offset == self.first.len() {
                self.first = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
