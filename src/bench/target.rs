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

/// A TLS acceptor for `names` (and 127.0.0.1) under a CA made on the spot,
/// whose certificate is written to `ca_out` for the clients (and a gateway's
/// `--upstream-ca-bundle`) to trust.
pub fn tls_acceptor(names: &[String], ca_out: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "clawgress bench-target CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map_or("bench-target", String::as_str));
    leaf.distinguished_name = dn;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    std::fs::write(ca_out, ca_cert.pem()).with_context(|| format!("cannot write {}", ca_out.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Accepts and serves connections until `shutdown` resolves; over TLS when
/// `tls` is given.
pub async fn serve(
    listener: TcpListener,
    canned: CannedResponse,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(canned.respond()))
            });
            // A client hanging up mid-request is routine under load.
            let builder = http1::Builder::new().keep_alive(true).to_owned();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
