//! Forward mode: one closed-loop keep-alive HTTP/1.1 connection per worker.
//!
//! Each worker drives its connection and its requests in one task, so a request
//! never waits for another task to be scheduled: on a 2-core machine shared with
//! the proxy and the target, the load generator must not be the bottleneck.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue, PROXY_AUTHORIZATION};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::stats::{Exchange, MeasureWindow, Tally, until_window_end};

/// After a failed connect, wait this long before the next attempt so a dead
/// proxy costs errors in the report, not a busy loop stealing CPU.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Everything a request needs, built once; per request only reference counts
/// are bumped (Uri and HeaderValue share their bytes).
#[derive(Clone)]
pub struct RequestTemplate {
    pub uri: Uri,
    pub host: HeaderValue,
    pub proxy_authorization: Option<HeaderValue>,
}

impl RequestTemplate {
    pub fn build(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some(credential) = &self.proxy_authorization {
            headers.insert(PROXY_AUTHORIZATION, credential.clone());
        }
        request
    }
}

/// Where a forward-mode worker connects and what it sends there.
pub struct ForwardPlan {
    pub dial: SocketAddr,
    pub request: RequestTemplate,
    pub window: MeasureWindow,
}

/// Runs one connection's closed loop until the window ends; reconnects whenever
/// the connection closes.
pub async fn forward_worker(plan: &ForwardPlan) -> Tally {
    let mut tally = Tally::default();
    until_window_end(&plan.window, async {
        loop {
            one_connection(plan, &mut tally).await;
        }
    })
    .await;
    tally
}

async fn one_connection(plan: &ForwardPlan, tally: &mut Tally) {
    let (sender, driver) = match open(plan.dial).await {
        Ok(opened) => opened,
        Err(_) => {
            tally.error(&plan.window, Instant::now());
            tokio::time::sleep(RECONNECT_PAUSE).await;
            return;
        }
    };
    let requests = async move {
        let mut sender = sender;
        while sender.ready().await.is_ok() {
            let started = Instant::now();
            let outcome = exchange(&mut sender, &plan.request).await;
            let done = Instant::now();
            match outcome {
                Ok(status) if status.is_success() => tally.success(&plan.window, started, done),
                Ok(_) => tally.error(&plan.window, done),
                Err(_) => {
                    tally.error(&plan.window, done);
                    return;
                }
            }
        }
        // A close between requests (the peer ended keep-alive) is not an error:
        // dropping the sender lets the driver finish and we reconnect.
    };
    tokio::join!(driver, requests);
}

/// The connection's driver future is returned instead of spawned so the caller
/// polls it in its own task. It owns the connection and drops it as soon as the
/// connection ends, which wakes any request still waiting with an error.
pub async fn open(dial: SocketAddr) -> anyhow::Result<(SendRequest<Empty<Bytes>>, impl Future<Output = ()>)> {
    let stream = TcpStream::connect(dial).await?;
    handshake(stream).await
}

pub async fn handshake(stream: TcpStream) -> anyhow::Result<(SendRequest<Empty<Bytes>>, impl Future<Output = ()>)> {
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = async move {
        // The error, if any, also reaches the request in flight; that is
        // where it is counted.
        let _ = connection.await;
    };
    Ok((sender, driver))
}

/// Sends one request and reads its whole body (discarding it, without
/// buffering), so the next request can reuse the connection.
pub async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    template: &RequestTemplate,
) -> anyhow::Result<StatusCode> {
    let response = sender.send_request(template.build()).await?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// A reqwest loop: one shared client, as a scraper would use it.
pub struct ReqwestPlan {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    /// POSTed when not empty (a reference-count bump per request).
    pub body: bytes::Bytes,
    pub window: MeasureWindow,
}

impl ReqwestPlan {
    pub fn client(
        proxy: Option<&str>,
        credential: Option<&HeaderValue>,
        connections: usize,
        ca_files: &[std::path::PathBuf],
    ) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true);
        for file in ca_files {
            let pem = std::fs::read(file).with_context(|| format!("--ca-file {}", file.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file {}: not PEM certificates", file.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let builder = match proxy {
            Some(url) => {
                // `all`: https targets go through the proxy too (CONNECT).
                let mut proxy = reqwest::Proxy::all(url)?;
                if let Some(credential) = credential {
                    proxy = proxy.custom_http_auth(credential.clone());
                }
                builder.proxy(proxy)
            }
            None => builder.no_proxy(),
        };
        Ok(builder.build()?)
    }
}

/// Fetches the URL (whole body) in a closed loop until the window ends.
pub async fn reqwest_worker(plan: &ReqwestPlan) -> Tally {
    let mut tally = Tally::default();
    until_window_end(&plan.window, async {
        loop {
            let started = Instant::now();
            let request = if plan.body.is_empty() {
                plan.client.get(plan.url.clone())
            } else {
                plan.client.post(plan.url.clone()).body(plan.body.clone())
            };
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(_) => Exchange::Success,
                    Err(_) => Exchange::Broken,
                },
                Ok(_) => Exchange::Failure,
                Err(_) => Exchange::Broken,
            };
            tally.record(&plan.window, started, outcome).await;
        }
    })
    .await;
    tally
}
