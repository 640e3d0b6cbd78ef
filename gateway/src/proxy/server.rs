//! Accepting connections: HTTP/1.1 with keep-alive and upgrades (for
//! CONNECT), a header-read timeout against slow clients, and graceful
//! shutdown that lets in-flight exchanges finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;

use super::head::{Guarded, HeadGuard, MAX_HEAD_BYTES};

/// What a listener serves.
#[derive(Debug, Clone)]
pub enum Role {
    /// The explicit proxy port; `header_timeout` bounds the wait for a
    /// request head.
    Proxy { header_timeout: Duration },
    /// Connections nftables redirected to the gateway; `header_timeout`
    /// bounds the wait for their first bytes.
    Transparent { header_timeout: Duration },
    /// The proxy over TLS with client certificates (`--listen-tls`);
    /// `header_timeout` bounds the handshake and each request head.
    Mtls {
        header_timeout: Duration,
        acceptor: Arc<crate::mtls::MtlsAcceptor>,
    },
}

/// Starts one worker per listener, each on its own thread with its own
/// single-threaded runtime (thread per core): a connection, its upstream
/// exchange and its body streaming all stay on one thread. The kernel spreads
/// connections over the listeners (`SO_REUSEPORT`).
pub fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    role: Role,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut workers = Vec::with_capacity(listeners.len());
    let name = match role {
        Role::Proxy { .. } => "proxy",
        Role::Transparent { .. } => "transparent",
        Role::Mtls { .. } => "mtls",
    };
    for (index, listener) in listeners.into_iter().enumerate() {
        let (gateway, shutdown, role) = (gateway.clone(), shutdown.clone(), role.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let worker = std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "{name} worker {index} cannot use its listener");
                            return;
                        }
                    };
                    match role {
                        Role::Proxy { header_timeout } => {
                            serve(listener, gateway, shutdown, drain, header_timeout).await
                        }
                        Role::Transparent { header_timeout } => {
                            super::transparent::serve(listener, gateway, shutdown, drain, header_timeout).await
                        }
                        Role::Mtls {
                            header_timeout,
                            acceptor,
                        } => super::mtls::serve(listener, gateway, acceptor, shutdown, drain, header_timeout).await,
                    }
                });
            })?;
        workers.push(worker);
    }
    Ok(workers)
}

/// Binds `count` listening sockets to one address with `SO_REUSEPORT`. With
/// port 0 the first socket picks the port and the others share it.
pub fn bind_listeners(addr: std::net::SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    header_timeout: Duration,
) {
    // One clone per open connection: the drain waits for the count to fall.
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
                    // Out of file descriptors and the like: back off instead
                    // of spinning, and keep serving the connections we have.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway_for_conn = gateway.clone();
        // Heads hyper would refuse with a bare 400 are refused here, with
        // a reason and an audit line (head.rs).
        let guard = HeadGuard::new();
        let stream = Guarded::new(stream, guard.clone());
        let tunnel_slot = slot.clone();
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let (gateway, guard) = (gateway_for_conn.clone(), guard.clone());
            // A CONNECT's tunnel outlives this connection task: it keeps the slot.
            req.extensions_mut().insert(tunnel_slot.clone());
            async move {
                Ok::<_, std::convert::Infallible>(match guard.refusal(&req) {
                    Some(refused) => super::head::refuse(&gateway, client, super::Entry::Explicit, refused).await,
                    None => crate::proxy::handle(gateway, client, req).await,
                })
            }
        });
        let mut conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let active = gateway.metrics.connection_opened(crate::metrics::ListenerLabel::Proxy);
        let open = open.clone();
        let mut stopping = shutdown.clone();
        tokio::spawn(async move {
            let ended = tokio::select! {
                ended = &mut conn => ended,
                _ = stopping.changed() => {
                    // Finish the exchange in flight, then close instead of
                    // waiting for the next request on this keep-alive connection.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, %client, "proxy connection ended with an error");
            }
            drop((active, open, slot));
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&open) > 1 || gateway.open_tunnels.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("in-flight requests still running after {drain:?}; stopping anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
