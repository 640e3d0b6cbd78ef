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

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (request line plus headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;

pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
    // One clone per open connection: the drain waits for the count to fall.
    let open = Arc::new(());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
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
        let service = service_fn(move |req| {
            let gateway = gateway_for_conn.clone();
            async move { Ok::<_, std::convert::Infallible>(crate::proxy::handle(gateway, client, req).await) }
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
            drop((active, open));
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&open) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("in-flight requests still running after {drain:?}; stopping anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
