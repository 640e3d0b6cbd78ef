//! The runner's own servers: the three representative sites that
//! `--serve-fixtures` serves (a static page, a page that only JavaScript
//! renders, a JSON API) with the rate-limit endpoint, and the "illegal"
//! listener that must never see a connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const STATIC_PAGE: &str = r#"<!doctype html>
<html><head><title>Clawgress synthetic: static</title></head>
<body>
<h1>Clawgress synthetic check</h1>
<p class="lede">A static page: everything is in the HTML.</p>
<ul id="items"><li>alpha</li><li>beta</li><li>gamma</li></ul>
</body></html>
"#;

/// Empty without JavaScript: the text appears only once the script has run,
/// so a plain HTTP fetch cannot pass this page's check.
pub const RENDERED_PAGE: &str = r#"<!doctype html>
<html><head><title>Clawgress synthetic: rendered</title></head>
<body>
<div id="app"></div>
<script>
  setTimeout(function () {
    var div = document.createElement("div");
    div.className = "rendered";
    div.textContent = "rendered by JavaScript";
    document.getElementById("app").appendChild(div);
  }, 50);
</script>
</body></html>
"#;

pub const API_BODY: &str =
    r#"{"status":"ok","service":"clawgress-synthetic","items":[{"name":"alpha"},{"name":"beta"},{"name":"gamma"}]}"#;

/// What the fixture sites saw.
#[derive(Default)]
pub struct FixtureLog {
    /// When each request for `/limited` arrived.
    pub limited: Mutex<Vec<Instant>>,
}

/// Serves the fixture sites on `listener` until the runtime ends.
pub fn serve_sites(listener: TcpListener) -> Arc<FixtureLog> {
    let log = Arc::new(FixtureLog::default());
    let served = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(site(&log, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    log
}

fn site(log: &FixtureLog, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/static" => (StatusCode::OK, "text/html; charset=utf-8", STATIC_PAGE),
        "/rendered" => (StatusCode::OK, "text/html; charset=utf-8", RENDERED_PAGE),
        "/api/status" => (StatusCode::OK, "application/json", API_BODY),
        "/limited" => {
            log.limited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Instant::now());
            (StatusCode::OK, "text/plain", "ok\n")
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not a fixture\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// A listener that counts connections and closes them unanswered.
pub struct Tripwire {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Tripwire {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Tripwire> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), peers.clone());
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(peer);
                drop(stream);
            }
        });
        Ok(Tripwire {
            addr,
            connections,
            peers,
        })
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
