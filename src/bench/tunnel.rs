//! CONNECT mode: every iteration opens a new TCP connection to the proxy, asks
//! for a tunnel, sends one GET through it and closes. This measures what an
//! HTTPS client pays per new origin connection (accept, authenticate, decide,
//! dial, splice), without TLS so the proxy's own cost is what shows.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::load::{RequestTemplate, exchange, handshake};
use super::stats::{Exchange, MeasureWindow, Tally, until_window_end};

/// The longest CONNECT response head we accept; real ones are under 200 bytes.
const MAX_CONNECT_RESPONSE: usize = 4096;

pub struct TunnelPlan {
    pub proxy: SocketAddr,
    /// `CONNECT host:port HTTP/1.1` with Host and optional Proxy-Authorization,
    /// serialized once.
    pub connect_request: Vec<u8>,
    /// The GET sent inside the tunnel (origin-form, no proxy credential).
    pub inner_request: RequestTemplate,
    pub window: MeasureWindow,
}

impl TunnelPlan {
    pub fn connect_request(authority: &str, proxy_authorization: Option<&[u8]>) -> Vec<u8> {
        let mut head = Vec::with_capacity(128);
        for part in [
            b"CONNECT ".as_slice(),
            authority.as_bytes(),
            b" HTTP/1.1\r\nHost: ",
            authority.as_bytes(),
            b"\r\n",
        ] {
            head.extend_from_slice(part);
        }
        if let Some(credential) = proxy_authorization {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(credential);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// What one tunnel iteration ended with, when it got as far as a status.
enum TunnelOutcome {
    /// The proxy refused the CONNECT (403, 407, 502 ...).
    Refused,
    /// The tunnel was up and the origin answered with this status.
    Answered(StatusCode),
}

pub async fn tunnel_worker(plan: &TunnelPlan) -> Tally {
    let mut tally = Tally::default();
    let mut head_buffer = vec![0; MAX_CONNECT_RESPONSE];
    until_window_end(&plan.window, async {
        loop {
            let started = Instant::now();
            let outcome = match one_tunnel(plan, &mut head_buffer).await {
                Ok(TunnelOutcome::Answered(status)) if status.is_success() => Exchange::Success,
                Ok(_) => Exchange::Failure,
                Err(_) => Exchange::Broken,
            };
            tally.record(&plan.window, started, outcome).await;
        }
    })
    .await;
    tally
}

async fn one_tunnel(plan: &TunnelPlan, head_buffer: &mut [u8]) -> anyhow::Result<TunnelOutcome> {
    let mut stream = TcpStream::connect(plan.proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&plan.connect_request).await?;
    let status = read_connect_response(&mut stream, head_buffer).await?;
    if status != StatusCode::OK {
        return Ok(TunnelOutcome::Refused);
    }
    let (mut sender, driver) = handshake(stream).await?;
    let request = async move {
        let status = exchange(&mut sender, &plan.inner_request).await;
        // Dropping the sender lets the driver finish and the socket close.
        drop(sender);
        status
    };
    let ((), status) = tokio::join!(driver, request);
    Ok(TunnelOutcome::Answered(status?))
}

/// Reads the proxy's answer to CONNECT up to the blank line and returns its
/// status. Bytes after the head would belong to the origin, which has not been
/// asked anything yet, so they are a protocol error.
async fn read_connect_response(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<StatusCode> {
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            bail!("CONNECT response head longer than {} bytes", buffer.len());
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            bail!("proxy closed the connection before answering CONNECT");
        }
        filled += read;
        if let Some(head_end) = find_head_end(&buffer[..filled]) {
            if head_end != filled {
                bail!("proxy sent data past the CONNECT response head");
            }
            return parse_status_line(&buffer[..head_end]);
        }
    }
}

/// Index just past the `\r\n\r\n` that ends a response head.
pub fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// `HTTP/1.x NNN reason` -> NNN.
pub fn parse_status_line(head: &[u8]) -> anyhow::Result<StatusCode> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))
        .context("CONNECT response is not HTTP/1.x")?;
    let code = rest.get(..3).context("CONNECT response has no status")?;
    if rest.get(3).is_some_and(|&after| after != b' ' && after != b'\r') {
        bail!("CONNECT response status is not three digits");
    }
    StatusCode::from_bytes(code).context("CONNECT response status is not a number")
}

#[cfg(test)]
mod tests;
