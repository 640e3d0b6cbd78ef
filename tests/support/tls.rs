//! A TLS origin with its own test CA, and a client that trusts only that CA.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub struct TlsOrigin {
    pub addr: SocketAddr,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS acceptor presenting `leaf`.
fn acceptor_for(leaf: &rcgen::Certificate, key: &KeyPair) -> TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

/// Serves `HTTP/1.1 200` with body `hello over tls` for host `name`.
pub async fn origin(name: &str) -> TlsOrigin {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let acceptor = acceptor_for(&leaf, &leaf_key);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tls origin");
    let addr = listener.local_addr().expect("tls addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello over tls";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsOrigin {
        addr,
        ca_der: ca.der().clone(),
    }
}

/// TLS over an already-open tunnel, trusting only `ca`, with SNI `name`.
pub async fn connect(
    stream: TcpStream,
    name: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add test CA");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    TlsConnector::from(Arc::new(config)).connect(server_name, stream).await
}

/// How an HTTPS origin's certificate is wrong, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Issued by the origin's own test CA, for its name, valid now.
    Valid,
    /// Issued by the test CA, ended in 2021.
    Expired,
    /// Signed by its own key: no CA vouches for it.
    SelfSigned,
}

/// An HTTPS origin serving [`super::upstream::route`]'s routes over real
/// TLS, with its own test CA.
pub struct HttpsOrigin {
    pub addr: SocketAddr,
    /// The test CA, PEM: what the gateway is told to trust.
    pub ca_pem: String,
    /// `sha256/<base64>` of the leaf's public key, as `tls.pins` takes it.
    pub pin: String,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn https_origin(name: &str, cert: Cert) -> HttpsOrigin {
    use base64::Engine as _;
    use sha2::Digest as _;
    // Distinct names: rcgen's default subject is the same for every
    // certificate, which would make each test CA look like every leaf's issuer.
    let named = |common_name: String| {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, common_name);
        dn
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.distinguished_name = named(format!("{name} test CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
    params.distinguished_name = named(name.to_string());
    if cert == Cert::Expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf = match cert {
        Cert::SelfSigned => params.self_signed(&leaf_key).expect("self-signed leaf"),
        _ => params.signed_by(&leaf_key, &ca).expect("leaf"),
    };
    let pin = format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&leaf_key)
        ))
    );
    let acceptor = acceptor_for(&leaf, &leaf_key);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind https origin");
    let addr = listener.local_addr().expect("https addr");
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = requests.clone();
    let release = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, count, release) = (acceptor.clone(), count.clone(), release.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let release = release.clone();
                    async move { Ok::<_, std::convert::Infallible>(super::upstream::route(req, release).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    HttpsOrigin {
        addr,
        ca_pem: ca.pem(),
        pin,
        requests,
    }
}
