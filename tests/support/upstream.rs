//! Local stand-ins for the internet: an HTTP origin, a TLS origin with its
//! own test CA, and a raw TCP server that exercises half-close.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub type Body = BoxBody<Bytes, Infallible>;

pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// Released by a test to let `/slow-stream` send its last chunk.
    pub release: Arc<Notify>,
}

/// Routes:
/// - `/hello`: a small body;
/// - `/headers`: the request headers it received, as JSON;
/// - `/echo`: the request body streamed back;
/// - `/slow-stream`: one chunk, then waits for `release`, then the rest;
/// - `/hold`: reads the body, then waits for `release` before answering;
/// - `/forge`: answers with headers that only the gateway may set;
/// - `/status/NNN`: that status;
/// - `/big/N`: N bytes;
/// - `/redirect/HOST`: 302 to `http://HOST:<this port>/page`;
/// - `/page`: an HTML page to extract from;
/// - `/latin1`: ISO-8859-1 text that says so in its Content-Type;
/// - `/js`: an empty shell whose script fetches `/hello` and renders it;
/// - `/v1/chat/completions`: a fake OpenAI-style provider that echoes the
///   last message (401 without a bearer key).
pub async fn origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (count, rel) = (requests.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (count, rel) = (count.clone(), rel.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let rel = rel.clone();
                    async move { Ok::<_, Infallible>(route(req, rel).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin {
        addr,
        requests,
        release,
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// The port the request's Host header names (the origin's own port, which
/// the pages it serves link back to).
fn host_port(req: &Request<Incoming>) -> String {
    req.headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap_or_default()
}

pub async fn route(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(host) = path.strip_prefix("/redirect/") {
        let port = host_port(&req);
        return Response::builder()
            .status(302)
            .header("location", format!("http://{host}:{port}/page"))
            .body(full(""))
            .unwrap();
    }
    if path == "/page" {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full(
                r#"<html><head><title>Fixture</title></head><body><h1 class="title">Clawgress fixture</h1>
<ul class="items"><li><a href="/a">Alpha</a></li><li><a href="/b">Beta</a></li></ul>
<p id="price">€ 12,50</p></body></html>"#,
            ))
            .unwrap();
    }
    if path == "/v1/chat/completions" {
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer sk-"));
        if !authorized {
            return Response::builder()
                .status(401)
                .body(full(r#"{"error": "no key"}"#))
                .unwrap();
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let last = request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        let answer = serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": format!("echo: {last}")}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
            .unwrap();
    }
    if path == "/v1/messages" {
        // A fake Anthropic stream: cumulative output usage in message_delta
        // events, a tool call, split across several writes.
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":10}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":25}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
        tokio::spawn(async move {
            let all = events.concat();
            // Uneven pieces: an event split mid-line must still be read.
            for piece in all.as_bytes().chunks(37) {
                if tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece)))).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(ChannelBody(rx)))
            .unwrap();
    }
    if path == "/js" {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full(
                r#"<html><head><title>JS</title></head><body><div id="root"></div><script>
setTimeout(function () {
  fetch('/hello').then(function (r) { return r.text(); }).then(function (text) {
    var h = document.createElement('h1'); h.className = 'rendered';
    h.textContent = 'Rendered by JavaScript: ' + text;
    document.getElementById('root').appendChild(h);
  });
}, 150);
</script></body></html>"#,
            ))
            .unwrap();
    }
    if path == "/state" {
        // What a browser page finds of an earlier visit (cookies, the
        // Cookie header, local and session storage, IndexedDB, history), and
        // what its iframe finds, then both leave their own, also late (a
        // timer, an unload handler): for the warm-page tests.
        let port = host_port(&req);
        // `?frame=cross`: the iframe is of another site, else of this origin.
        let frame = if req.uri().query() == Some("frame=cross") {
            format!("http://a.wild.test:{port}")
        } else {
            String::new()
        };
        let cookie_header = req
            .headers()
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace(['<', '>', '&'], "");
        let page = format!(
            r#"<html><body><p id="header">{cookie_header}</p><p id="seen"></p>
<script>
(async function () {{
  var seen = {{
    cookie: document.cookie,
    local: localStorage.getItem('left') || '',
    late: localStorage.getItem('late') || '',
    session: sessionStorage.getItem('left') || '',
    databases: (await indexedDB.databases()).map(function (d) {{ return d.name; }}).join(','),
    history: history.length,
    visibility: document.visibilityState
  }};
  // Then what the iframe found of earlier visits in its storage (its own
  // keys; partitioned under this site when it is of another).
  seen.frame = await new Promise(function (done) {{
    addEventListener('message', function (m) {{ done(m.data); }});
    setTimeout(function () {{ done('no answer from the iframe'); }}, 5000);
    var frame = document.createElement('iframe');
    frame.src = '{frame}/state-frame';
    document.body.appendChild(frame);
  }});
  setTimeout(function () {{ localStorage.setItem('late', 'timer'); }}, 150);
  addEventListener('pagehide', function () {{
    localStorage.setItem('late', 'pagehide');
    sessionStorage.setItem('left', 'by pagehide');
    document.cookie = 'hidden=left; max-age=3600';
  }});
  document.cookie = 'script=left; max-age=3600';
  localStorage.setItem('left', 'by a job');
  sessionStorage.setItem('left', 'by a job');
  await new Promise(function (done) {{
    var open = indexedDB.open('left-by-a-job');
    open.onsuccess = function () {{ open.result.close(); done(); }};
    open.onerror = done;
  }});
  var p = document.getElementById('seen');
  p.textContent = JSON.stringify(seen);
  p.className = 'done';
}})();
</script></body></html>"#
        );
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("set-cookie", "server=left; Max-Age=3600; Path=/")
            .body(full(page))
            .unwrap();
    }
    if path == "/state-frame" {
        // The cross-site iframe of `/state`: what it finds of an earlier
        // visit in its storage (partitioned under the page's site), then
        // it leaves its own, also when the page goes.
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full(
                r#"<html><body><script>
(async function () {
  var seen = {
    local: localStorage.getItem('frame-left') || '',
    session: sessionStorage.getItem('frame-left') || '',
    databases: (await indexedDB.databases())
      .map(function (d) { return d.name; })
      .filter(function (name) { return name === 'left-by-a-frame'; })
      .join(',')
  };
  addEventListener('pagehide', function () { sessionStorage.setItem('frame-left', 'by pagehide'); });
  localStorage.setItem('frame-left', 'by a frame');
  sessionStorage.setItem('frame-left', 'by a frame');
  await new Promise(function (done) {
    var open = indexedDB.open('left-by-a-frame');
    open.onsuccess = function () { open.result.close(); done(); };
    open.onerror = done;
  });
  parent.postMessage(seen, '*');
})();
</script></body></html>"#,
            ))
            .unwrap();
    }
    if path == "/popup" {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full(
                r#"<html><body><script>window.open('/page');</script><h1 class="opened">opened</h1></body></html>"#,
            ))
            .unwrap();
    }
    if path == "/latin1" {
        return Response::builder()
            .header("content-type", "text/plain; charset=ISO-8859-1")
            .body(full(&b"caf\xe9"[..]))
            .unwrap();
    }
    if path == "/hello" {
        return Response::builder()
            .header("x-upstream", "yes")
            .body(full("hello from upstream"))
            .unwrap();
    }
    if path == "/headers" {
        let map: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                )
            })
            .collect();
        let mut body = serde_json::Value::Object(map);
        body["_request_target"] = serde_json::Value::String(req.uri().to_string());
        return Response::new(full(body.to_string()));
    }
    if path == "/echo" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(data) = frame.into_data()
                    && tx.send(Ok(Frame::data(data))).await.is_err()
                {
                    return;
                }
            }
        });
        return Response::new(BodyExt::boxed(ChannelBody(rx)));
    }
    if path == "/slow-stream" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first;")))).await;
            release.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"last")))).await;
        });
        return Response::new(BodyExt::boxed(ChannelBody(rx)));
    }
    if path == "/hold" {
        // Reads the whole request body, then holds the response head until released.
        let _ = req.into_body().collect().await;
        release.notified().await;
        return Response::new(full("released"));
    }
    if path == "/forge" {
        return Response::builder()
            .header("x-clawgress-decision", "allow; spoofed")
            .header("x-request-id", "spoofed")
            .body(full("forged"))
            .unwrap();
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        return Response::builder()
            .status(code)
            .body(full(format!("status {code}")))
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/big/").and_then(|c| c.parse::<usize>().ok()) {
        return Response::new(full(vec![b'x'; n]));
    }
    Response::builder().status(404).body(full("no such route")).unwrap()
}

/// A response body fed by a channel: frames go out as they are sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// A raw TCP server for half-close: it echoes what it reads, and when the
/// client shuts down its write side it sends `bye` and closes.
pub async fn half_close_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => {
                            let _ = stream.write_all(b"bye").await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}
