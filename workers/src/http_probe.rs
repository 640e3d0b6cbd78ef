//! Reading the gateway's answer to a refused CONNECT. reqwest reports one
//! only as "unsuccessful tunnel"; the gateway's answer (status, reason,
//! retry_after) is read by asking again with a CONNECT of our own, so an
//! https denial is a denial and a rate limit keeps its `retry_after`. On the
//! mTLS listener the question goes over TLS with the agent's certificate.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::credentials::ClientIdentity;
use crate::outcome::FetchError;

/// Longest wait for the gateway's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The explicit port: `CONNECT` with the agent's key.
pub(crate) async fn probe_tunnel(gateway: &str, agent: &str, key: &str, url: &reqwest::Url) -> Option<FetchError> {
    use base64::Engine;
    let (host, port) = address(gateway)?;
    let authority = authority(url)?;
    let credential = base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{key}"));
    let request =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {credential}\r\n\r\n");
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        ask(stream, &request).await
    };
    answer(tokio::time::timeout(PROBE_TIMEOUT, exchange).await.ok()??)
}

/// The mTLS listener: `CONNECT` over TLS with the agent's certificate (which
/// names the agent: no key is sent), trusting the system roots and
/// `gateway_ca`.
pub(crate) async fn probe_tls(
    gateway: &str,
    identity: &ClientIdentity,
    gateway_ca: Option<&[u8]>,
    url: &reqwest::Url,
) -> Option<FetchError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let (host, port) = address(gateway)?;
    let authority = authority(url)?;
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = gateway_ca {
        let _ = roots.add_parsable_certificates(CertificateDer::pem_slice_iter(pem).filter_map(Result::ok));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(identity.pem())
        .filter_map(Result::ok)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(identity.pem()).ok()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).ok()?;
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.ok()?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()?;
        ask(tls, &request).await
    };
    answer(tokio::time::timeout(PROBE_TIMEOUT, exchange).await.ok()??)
}

fn address(gateway: &str) -> Option<(String, u16)> {
    let proxy = reqwest::Url::parse(gateway).ok()?;
    // An IPv6 literal comes back bracketed; connecting wants it bare.
    let host = proxy
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, proxy.port_or_known_default()?))
}

fn authority(url: &reqwest::Url) -> Option<String> {
    Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?))
}

/// Sends `request` and reads the answer's head and body.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Option<Vec<u8>> {
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > MAX_ANSWER || complete(&answer) {
            break;
        }
    }
    Some(answer)
}

/// The refusal an answer carries; `None` for a `200` (the tunnel works).
fn answer(answer: Vec<u8>) -> Option<FetchError> {
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    if status == 200 {
        return None;
    }
    let header_wait = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("retry-after")))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    Some(FetchError::from_gateway(status, &body, header_wait))
}

/// Whether a response with a Content-Length has all of its body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}
