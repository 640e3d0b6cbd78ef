//! What the gateway reads from a client certificate: the names that pick
//! the agent (SPIFFE ID, CN) and the facts the audit line keeps (subject,
//! issuer, serial, end date). Never key material: a certificate is public,
//! and its public key is not recorded either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use x509_parser::extensions::GeneralName;

use super::MtlsAcceptor;
use crate::identity::{CertificateNames, CertificateProblem};

/// Longest text kept from a certificate field: a refused certificate comes
/// from anyone, and the audit line must stay bounded.
const MAX_FIELD_CHARS: usize = 256;
/// SPIFFE IDs read from one certificate; an SVID has exactly one.
const MAX_SPIFFE_IDS: usize = 8;

/// The client certificate in the audit line (`tls.client_certificate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientCertRecord {
    /// Its `spiffe://` URI SAN (the first, when there are several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// Hex, as `openssl x509 -noout -serial` prints it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub not_after: String,
    /// Why the gateway refused it (the handshake's error, in words).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A parsed client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub names: CertificateNames,
    pub record: ClientCertRecord,
    /// Its end, seconds since the epoch.
    pub not_after: i64,
}

impl ClientCertificate {
    /// `None`: not an X.509 certificate the parser can read.
    pub fn parse(der: &CertificateDer<'_>) -> Option<ClientCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        // Any `spiffe:` URI counts as a SPIFFE claim, well formed or not: a
        // certificate that claims one is never identified by its CN.
        let mut spiffe_ids = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && uri
                        .get(..7)
                        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
                    && spiffe_ids.len() < MAX_SPIFFE_IDS
                {
                    spiffe_ids.push(bounded(uri));
                }
            }
        }
        // Two CNs make "the" CN ambiguous: then none identifies the agent.
        let mut common_names = cert.subject().iter_common_name().map(|cn| cn.as_str().ok());
        let common_name = match (common_names.next(), common_names.next()) {
            (Some(Some(cn)), None) => Some(bounded(cn)),
            _ => None,
        };
        let record = ClientCertRecord {
            spiffe_id: spiffe_ids.first().cloned(),
            common_name: common_name.clone(),
            subject: bounded(&cert.subject().to_string()),
            issuer: bounded(&cert.issuer().to_string()),
            serial: hex::encode_upper(cert.raw_serial()),
            not_after: cert.validity().not_after.to_string(),
            error: None,
        };
        Some(ClientCertificate {
            names: CertificateNames {
                spiffe_ids,
                common_name,
            },
            record,
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

fn bounded(text: &str) -> String {
    text.chars()
        .take(MAX_FIELD_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One mTLS connection's client: its certificate, checked again on a
/// request when the CA or CRL changed since the handshake (a CRL reload
/// reaches kept-alive connections too), and refused past its end date.
pub struct MtlsPeer {
    pub names: CertificateNames,
    pub record: Arc<ClientCertRecord>,
    chain: Vec<CertificateDer<'static>>,
    not_after: i64,
    /// The material generation the chain was last verified against.
    verified: AtomicU64,
    /// Why it was refused, once it was: the connection is closed after the
    /// refusal's answer, and stays refused for any request still in it.
    refused: OnceLock<CertificateProblem>,
    acceptor: Arc<MtlsAcceptor>,
}

impl std::fmt::Debug for MtlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsPeer")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl MtlsPeer {
    pub(crate) fn new(
        certificate: ClientCertificate,
        chain: Vec<CertificateDer<'static>>,
        generation: u64,
        acceptor: Arc<MtlsAcceptor>,
    ) -> MtlsPeer {
        MtlsPeer {
            names: certificate.names,
            record: Arc::new(certificate.record),
            chain,
            not_after: certificate.not_after,
            verified: AtomicU64::new(generation),
            refused: OnceLock::new(),
            acceptor,
        }
    }

    /// Whether the certificate still holds: not past its end, and, when the
    /// client CA or CRL was reloaded since it was last checked, accepted by
    /// the new ones.
    pub fn revalidate(&self) -> Result<(), CertificateProblem> {
        if let Some(problem) = self.refused.get() {
            return Err(*problem);
        }
        let now = UnixTime::now();
        let result = if i64::try_from(now.as_secs()).unwrap_or(i64::MAX) > self.not_after {
            Err(CertificateProblem::Expired)
        } else {
            let material = self.acceptor.material();
            if material.generation == self.verified.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (end_entity, intermediates) = self.chain.split_first().ok_or(CertificateProblem::Missing)?;
            match material.verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(_) => {
                    self.verified.store(material.generation, Ordering::Relaxed);
                    Ok(())
                }
                Err(error) => Err(super::verifier::problem_of(&error).unwrap_or(CertificateProblem::Invalid)),
            }
        };
        if let Err(problem) = result {
            let _ = self.refused.set(problem);
        }
        result
    }

    /// The certificate was refused on this connection: close it.
    pub fn is_refused(&self) -> bool {
        self.refused.get().is_some()
    }
}
