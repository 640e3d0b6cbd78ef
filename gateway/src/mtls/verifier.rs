//! The client-certificate check of one handshake: rustls's WebPKI verifier
//! (the client CA and the CRL in force), wrapped so that a refused
//! certificate and the reason can be put on the audit record. rustls only
//! reports the error through the handshake's result, and by then the
//! certificate is gone; one wrapper per connection keeps both.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::identity::CertificateProblem;

/// A refused certificate and why.
pub type Refused = (CertificateDer<'static>, Error);

#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    refused: Mutex<Option<Refused>>,
}

impl RecordingVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> RecordingVerifier {
        RecordingVerifier {
            inner,
            refused: Mutex::new(None),
        }
    }

    /// The certificate this handshake refused, if it refused one.
    pub fn refused(&self) -> Option<Refused> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// No certificate, no service: the listener has no other identity.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| {
                *self.refused.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((end_entity.clone().into_owned(), error.clone()));
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a handshake error says about the client's certificate; `None` for
/// errors that are not about it (a client speaking plain HTTP to the TLS
/// port, one that refused the gateway's own certificate, a reset).
pub fn problem_of(error: &Error) -> Option<CertificateProblem> {
    Some(match error {
        Error::NoCertificatesPresented => CertificateProblem::Missing,
        Error::InvalidCertificate(kind) => match kind {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => CertificateProblem::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertificateProblem::NotYetValid
            }
            CertificateError::Revoked => CertificateProblem::Revoked,
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => CertificateProblem::RevocationUnknown,
            // A CA that is not ours but has the same name as ours shows up
            // as a bad signature, not an unknown issuer.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => CertificateProblem::Untrusted,
            _ => CertificateProblem::Invalid,
        },
        // A CRL that cannot be used leaves the status unknown.
        Error::InvalidCertRevocationList(_) => CertificateProblem::RevocationUnknown,
        _ => return None,
    })
}
