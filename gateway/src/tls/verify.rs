//! Checking an upstream's certificate: the trusted roots (system plus an
//! optional bundle), self-signed certificates only where the policy allows
//! them, and `tls.pins`. One verifier per connection, so the certificate the
//! upstream presented can be reported even when it was refused.

use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What the audit says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// `sha256/<base64>`, the form `tls.pins` takes.
    pub spki_sha256: String,
    pub self_signed: bool,
}

impl CertSummary {
    pub fn of(der: &CertificateDer<'_>) -> Option<CertSummary> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let spki = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
        Some(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
            spki_sha256: format!("sha256/{}", base64::engine::general_purpose::STANDARD.encode(spki)),
            self_signed: cert.subject() == cert.issuer(),
        })
    }
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(der: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

/// The certificate a pin mismatch refused.
#[derive(Debug)]
pub struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the certificate's public key matches none of the pins in tls.pins")
    }
}

impl std::error::Error for PinMismatch {}

/// How one connection's certificate is checked.
#[derive(Debug)]
pub struct ConnectionVerifier {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
    pub(super) verify: bool,
    pub(super) allow_self_signed: bool,
    /// SHA-256 SPKI digests; empty: no pins for this host.
    pub(super) pins: Vec<[u8; 32]>,
    /// The end-entity certificate the upstream presented.
    pub(super) presented: Mutex<Option<CertificateDer<'static>>>,
}

impl ConnectionVerifier {
    pub fn presented(&self) -> Option<CertificateDer<'static>> {
        self.presented.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A self-signed certificate is its own root: verify it against a root
    /// store that holds only itself (so names, dates and the signature are
    /// still checked).
    fn verify_self_signed(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let summary = CertSummary::of(end_entity);
        if !summary.is_some_and(|s| s.self_signed) {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(end_entity.clone().into_owned())
            .map_err(|_| Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let own = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        own.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }
}

impl ServerCertVerifier for ConnectionVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        *self.presented.lock().unwrap_or_else(PoisonError::into_inner) = Some(end_entity.clone().into_owned());
        if self.verify {
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Ok(_) => {}
                Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) if self.allow_self_signed => {
                    self.verify_self_signed(end_entity, server_name, ocsp, now)?;
                }
                Err(error) => return Err(error),
            }
        } else {
            // Unverified still means "for this name": a certificate for
            // another host is never accepted.
            verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        }
        if !self.pins.is_empty() {
            let digest = spki_sha256(end_entity).ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if !self.pins.contains(&digest) {
                return Err(Error::InvalidCertificate(CertificateError::Other(OtherError(
                    Arc::new(PinMismatch),
                ))));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The stable reason code for a failed upstream handshake.
pub fn failure_reason(error: &Error) -> &'static str {
    match error {
        Error::InvalidCertificate(kind) => match kind {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "upstream_certificate_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "upstream_certificate_not_yet_valid"
            }
            CertificateError::UnknownIssuer => "upstream_certificate_untrusted",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "upstream_certificate_name_mismatch"
            }
            CertificateError::Other(OtherError(inner)) if inner.is::<PinMismatch>() => {
                "upstream_certificate_pin_mismatch"
            }
            _ => "upstream_certificate_invalid",
        },
        _ => "upstream_tls_failed",
    }
}
