//! The sockets: UDP and TCP on the same address, with bounded work.
//!
//! hickory-server's `Server` would own these loops, but it answers FORMERR
//! and drops short packets before any handler runs (nothing audited or
//! counted), spawns a task per datagram without a bound, and aborts queries
//! in flight when it stops. These loops hand every packet to
//! [`DnsHandler::answer`], shed load past [`MAX_IN_FLIGHT`] queries, and
//! let queries in flight finish on shutdown (bounded by the drain).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use super::handler::DnsHandler;
use crate::audit::DnsTransport;

/// Queries (UDP datagrams) answered at once; past it datagrams are dropped
/// unread and counted (`dns_queries_shed_total`). Each may wait up to 6 s
/// on upstream, so this also bounds upstream sockets.
pub(super) const MAX_IN_FLIGHT: u32 = 1024;
/// TCP connections served at once; a connection takes one query at a time.
pub(super) const MAX_TCP_CONNECTIONS: u32 = 128;
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest datagram read; longer ones arrive cut and are answered FORMERR.
const MAX_UDP_QUERY: usize = 4096;

/// Binds UDP and TCP to the same address. With port 0, the port UDP got is
/// tried for TCP too, a few times over, since another process may hold it.
/// The UDP socket allows more on its port ([`more_udp`]).
pub(super) async fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..if addr.port() == 0 { 16 } else { 1 } {
        let udp = UdpSocket::from_std(reuse_port_udp(addr)?)?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

fn reuse_port_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `count` more UDP sockets on the port `first` holds: the kernel spreads
/// datagrams over them (`SO_REUSEPORT`), one per worker thread.
pub(super) fn more_udp(first: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    (0..count).map(|_| reuse_port_udp(first)).collect()
}

/// One thread per socket, each with its own single-threaded runtime: a
/// query is read, answered (from the cache, or refused) and sent on one
/// thread, with no hand-off between threads. After a stop each thread stays
/// until the queries in flight are done or `drain` passes.
pub(super) fn spawn_udp_workers(
    sockets: Vec<std::net::UdpSocket>,
    handler: &Arc<DnsHandler>,
    slots: &Arc<Semaphore>,
    stopped: &watch::Receiver<bool>,
    drain: Duration,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut workers = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.into_iter().enumerate() {
        let (handler, slots, stopped) = (handler.clone(), slots.clone(), stopped.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        workers.push(
            std::thread::Builder::new()
                .name(format!("dns-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let socket = match UdpSocket::from_std(socket) {
                            Ok(socket) => socket,
                            Err(error) => {
                                tracing::error!(%error, "DNS worker {index} cannot use its socket");
                                return;
                            }
                        };
                        serve_udp(Arc::new(socket), handler, slots.clone(), stopped).await;
                        drained(&slots, MAX_IN_FLIGHT, drain).await;
                    });
                })?,
        );
    }
    Ok(workers)
}

pub(super) async fn serve_udp(
    socket: Arc<UdpSocket>,
    handler: Arc<DnsHandler>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            _ = stop.changed() => return,
        };
        let (len, peer) = match received {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            handler.metrics.shed.inc();
            continue;
        };
        let packet = buf[..len].to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        let mut work = Box::pin(async move {
            let _permit = permit;
            if let Some(reply) = handler.answer(&packet, peer, DnsTransport::Udp).await
                && let Err(error) = socket.send_to(&reply, peer).await
            {
                tracing::debug!(%error, %peer, "DNS reply not sent");
            }
        });
        // Answered here when nothing has to wait (the cache, a refusal);
        // only a query that goes upstream becomes a task of its own.
        let done = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx).is_ready())).await;
        if !done {
            tokio::spawn(work);
        }
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            handler.metrics.shed.inc();
            continue;
        };
        let (handler, stop) = (handler.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, peer, &handler, stop).await;
        });
    }
}

/// Length-prefixed queries (RFC 1035 §4.2.2), one at a time, until the
/// client closes, idles, or the server stops (after the query in hand).
async fn connection(mut stream: TcpStream, peer: SocketAddr, handler: &DnsHandler, mut stop: watch::Receiver<bool>) {
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            read = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)) => read,
            _ = stop.changed() => return,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let wanted = usize::from(u16::from_be_bytes(len));
        if wanted == 0 {
            return;
        }
        let mut packet = vec![0u8; wanted];
        let got = read_up_to(&mut stream, &mut packet).await;
        // A frame cut short is still a query someone sent: answered (and
        // audited) as far as it can be read, then the connection ends.
        packet.truncate(got);
        let Some(reply) = handler.answer(&packet, peer, DnsTransport::Tcp).await else {
            if got < wanted {
                return;
            }
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes());
        framed.extend_from_slice(&reply);
        let written = tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await;
        if got < wanted || !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// Fills `buf` unless the client stops sending first; returns how much came.
/// One deadline for the whole frame: a client trickling a byte at a time
/// must not hold a connection slot for hours.
async fn read_up_to(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    let deadline = tokio::time::Instant::now() + TCP_IDLE;
    let mut got = 0;
    while got < buf.len() {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[got..])).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    got
}

/// Waits until every permit of `slots` is back (the work it guards is
/// done), or `limit` passes; returns whether everything finished.
pub(super) async fn drained(slots: &Semaphore, permits: u32, limit: Duration) -> bool {
    tokio::time::timeout(limit, slots.acquire_many(permits))
        .await
        .is_ok_and(|permit| permit.is_ok())
}
