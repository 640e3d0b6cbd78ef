//! A deliberately dumb HTTP/1.1 client over a raw socket. Real clients
//! (reqwest, curl) normalize hosts like `0x7f.1` before sending; to test
//! what the gateway does with hostile bytes we must send the bytes
//! ourselves.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends `head` (request line and headers, without the final blank line)
/// plus `body`, and reads one response.
pub async fn send(proxy: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("write head");
    stream.write_all(body).await.expect("write body");
    read_response(&mut stream).await
}

/// [`send`], for a request the gateway may rightly hold longer than
/// [`read_response`]'s 10 s (a budget store electing a new leader): the
/// head may take up to `wait`.
pub async fn send_waiting(proxy: SocketAddr, head: &str, body: &[u8], wait: Duration) -> RawResponse {
    let mut stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(wait, stream.peek(&mut first))
        .await
        .unwrap_or_else(|_| panic!("no response within {wait:?}"))
        .expect("read");
    assert!(n > 0, "connection closed without a response");
    read_response(&mut stream).await
}

/// Reads one response from a stream (Content-Length, chunked, or until close).
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response head within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let mut chunk = vec![0u8; 65536];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "body cut short");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, rest).await
    } else {
        Vec::new()
    };
    RawResponse { status, headers, body }
}

async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut S, mut buf: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        while find(&buf, b"\r\n").is_none() {
            fill(stream, &mut buf).await;
        }
        let line_end = find(&buf, b"\r\n").unwrap_or_default();
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&buf[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .expect("chunk size");
        buf.drain(..line_end + 2);
        if size == 0 {
            return body;
        }
        while buf.len() < size + 2 {
            fill(stream, &mut buf).await;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) {
    // On the heap: a 64 KiB array would sit in every future that awaits this.
    let mut chunk = vec![0u8; 65536];
    let n = stream.read(&mut chunk).await.expect("read");
    assert!(n > 0, "connection closed mid-body");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
