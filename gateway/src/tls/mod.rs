//! TLS the gateway speaks itself: the interception CA that terminates an
//! agent's TLS, and the verified TLS it opens to upstreams (seed 002 §7:
//! TLS 1.2 at least, certificates checked, pins enforced). Also the
//! ClientHello peek that the passthrough path uses against domain fronting.

pub mod ca;
pub mod client_hello;
pub mod verify;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clawgress_policies::model::{SpkiPin, TlsPolicy, TlsVersion};
use clawgress_policies::pattern::DomainPattern;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use ca::InterceptCa;
pub use verify::CertSummary;

/// The TLS side of one exchange, for the audit line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsRecord {
    /// `passthrough`, `intercept` or `originate`; empty (and not written)
    /// when the gateway spoke no TLS upstream (a plain request over mTLS).
    #[serde(skip_serializing_if = "is_empty")]
    pub mode: &'static str,
    /// The server name the agent's ClientHello asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The version negotiated with the upstream (intercept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_certificate: Option<CertSummary>,
    /// Why the upstream handshake failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent's side on the mTLS listener: its client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<crate::mtls::ClientCertRecord>,
}

fn is_empty(mode: &&'static str) -> bool {
    mode.is_empty()
}

/// A failed upstream handshake: the reason code, and the record with the
/// certificate that was refused.
#[derive(Debug, Clone)]
pub struct TlsFailure {
    pub reason: &'static str,
    pub record: TlsRecord,
}

/// The `tls:` section compiled for the connections a policy opens.
#[derive(Debug, Clone)]
pub struct UpstreamTlsPolicy {
    tls13_only: bool,
    verify: bool,
    allow_self_signed: bool,
    pins: Vec<(DomainPattern, Vec<[u8; 32]>)>,
}

impl UpstreamTlsPolicy {
    pub fn new(policy: &TlsPolicy) -> Self {
        UpstreamTlsPolicy {
            tls13_only: policy.min_version.value == TlsVersion::Tls13,
            verify: policy.verify_certificates,
            allow_self_signed: policy.allow_self_signed,
            pins: policy
                .pins
                .iter()
                .map(|set| {
                    let digests = set
                        .pins
                        .iter()
                        .filter_map(|pin| match pin.value {
                            SpkiPin::Sha256(digest) => Some(digest),
                            SpkiPin::Placeholder => None,
                        })
                        .collect();
                    (set.domain.value.clone(), digests)
                })
                .collect(),
        }
    }

    /// Every pin for `host`, from every matching entry.
    fn pins_for(&self, host: &str) -> Vec<[u8; 32]> {
        self.pins
            .iter()
            .filter(|(pattern, _)| pattern.matches(host))
            .flat_map(|(_, digests)| digests.iter().copied())
            .collect()
    }
}

/// The gateway's TLS material: roots, client configurations and the CA.
pub struct TlsKit {
    provider: Arc<rustls::crypto::CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
    /// TLS 1.2 and 1.3, and 1.3 only.
    bases: [Arc<ClientConfig>; 2],
    pub ca: Option<InterceptCa>,
}

impl std::fmt::Debug for TlsKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKit").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl TlsKit {
    /// `ca_dir`: the interception CA, if this gateway intercepts. `bundle`:
    /// PEM certificates trusted for upstreams besides the system roots.
    pub fn new(ca_dir: Option<&Path>, bundle: Option<&Path>) -> anyhow::Result<TlsKit> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        // A root the system store cannot parse is skipped, as every TLS
        // client does; an empty store still fails closed (nothing verifies).
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
        if let Some(bundle) = bundle {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(bundle)
                .with_context(|| format!("cannot read the CA bundle {}", bundle.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: not a PEM certificate bundle", bundle.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{}: no certificates in it", bundle.display());
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("{}: a certificate in it is not a usable root", bundle.display()))?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("cannot build the certificate verifier (no trusted roots?)")?;
        let base = |versions: &[&'static rustls::SupportedProtocolVersion]| -> anyhow::Result<Arc<ClientConfig>> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .context("TLS versions")?
                .with_webpki_verifier(webpki.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        };
        let bases = [
            base(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            base(&[&rustls::version::TLS13])?,
        ];
        let ca = ca_dir.map(|dir| InterceptCa::load(dir, provider.clone())).transpose()?;
        Ok(TlsKit {
            provider,
            webpki,
            bases,
            ca,
        })
    }

    pub fn provider(&self) -> Arc<rustls::crypto::CryptoProvider> {
        self.provider.clone()
    }

    /// Opens verified TLS to `host` over `stream`.
    /// `mode` names the path in the audit: `intercept` or `originate`.
    pub async fn connect(
        &self,
        policy: &UpstreamTlsPolicy,
        host: &str,
        stream: TcpStream,
        mode: &'static str,
    ) -> Result<(TlsStream<TcpStream>, TlsRecord), TlsFailure> {
        let verifier = Arc::new(verify::ConnectionVerifier {
            webpki: self.webpki.clone(),
            provider: self.provider.clone(),
            verify: policy.verify,
            allow_self_signed: policy.allow_self_signed,
            pins: policy.pins_for(host),
            presented: Mutex::new(None),
        });
        // A clone shares the base's session cache, so resumption still works.
        let mut config = (*self.bases[usize::from(policy.tls13_only)]).clone();
        config.dangerous().set_certificate_verifier(verifier.clone());
        let mut record = TlsRecord {
            mode,
            ..TlsRecord::default()
        };
        let failed = |record: TlsRecord, reason, error: String| TlsFailure {
            reason,
            record: TlsRecord {
                upstream_certificate: verifier.presented().as_ref().and_then(CertSummary::of),
                error: Some(error),
                ..record
            },
        };
        let Ok(name) = ServerName::try_from(host.to_string()) else {
            return Err(failed(
                record,
                "upstream_tls_failed",
                format!("'{host}' is not a TLS server name"),
            ));
        };
        match TlsConnector::from(Arc::new(config)).connect(name, stream).await {
            Ok(tls) => {
                let (_, session) = tls.get_ref();
                record.upstream_version = session.protocol_version().and_then(|v| v.as_str());
                record.upstream_certificate = verifier.presented().as_ref().and_then(CertSummary::of);
                Ok((tls, record))
            }
            Err(error) => {
                let rustls_error = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                let reason = rustls_error.map_or("upstream_tls_failed", verify::failure_reason);
                let detail = rustls_error.map_or_else(|| error.to_string(), ToString::to_string);
                Err(failed(record, reason, detail))
            }
        }
    }
}

#[cfg(test)]
mod tests;
