//! `clawgress bench-target`: the origin the benchmark fetches from.
//!
//! It shares the machine's two cores with the proxy and the load generator, so
//! every response is the same pre-built body (a reference-count bump, no copy),
//! nothing is logged per request, and each connection is one task that works
//! the same on a current-thread runtime as on a multi-thread one.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Back-off after a failed accept (typically out of file descriptors) so the
/// loop does not spin while connections drain.
const ACCEPT_PAUSE: Duration = Duration::from_millis(5);

/// The fixed answer, built once.
#[derive(Clone)]
pub struct CannedResponse {
    body: Bytes,
    content_length: HeaderValue,
    content_type: HeaderValue,
}

/// The HTML page's frame; padding fills it up to the asked size.
const PAGE_HEAD: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>bench</title></head>\
<body><h1>Bench page</h1><div id=\"app\"></div><script>document.getElementById('app').innerHTML = \
'<span class=\"price\">' + (6 * 7) + '</span>';</script><p>";
const PAGE_TAIL: &str = "</p></body></html>";

impl CannedResponse {
    pub fn of_size(size: usize) -> Self {
        Self {
            body: Bytes::from(vec![b'x'; size]),
            content_length: HeaderValue::from(size),
            content_type: HeaderValue::from_static("text/plain"),
        }
    }

    /// An HTML page of at least `size` bytes: a heading to extract, and a
    /// `.price` that only exists once its script ran (a browser's job).
    pub fn page_of_size(size: usize) -> Self {
        let padding = size.saturating_sub(PAGE_HEAD.len() + PAGE_TAIL.len());
        let body = format!("{PAGE_HEAD}{}{PAGE_TAIL}", "x".repeat(padding));
        Self {
            content_length: HeaderValue::from(body.len()),
            body: Bytes::from(body),
            content_type: HeaderValue::from_static("text/html; charset=utf-8"),
        }
    }

    fn respond(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_LENGTH, self.content_length.clone());
        headers.insert(CONTENT_TYPE, self.content_type.clone());
        response
    }
}

/// Accepts and serves connections until `shutdown` resolves.
pub async fn serve(listener: TcpListener, canned: CannedResponse, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(ACCEPT_PAUSE).await;
            continue;
        };
        // Latency is what we measure; Nagle would add delayed-ACK stalls.
        let _ = stream.set_nodelay(true);
        let canned = canned.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(canned.respond()))
            });
            // A client hanging up mid-request is routine under load.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests;
