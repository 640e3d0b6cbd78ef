//! Reading the mTLS listener's files: the client CA bundle, the CRLs and
//! the server certificate and key. Each problem names the flag, the file and
//! the fix; nothing read from a key file is ever printed.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::MtlsConfig;

/// Files larger than this are not PEM bundles anyone meant to give us.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What the files hold, checked and ready for handshakes.
pub(super) struct Loaded {
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// `None`: certificates are minted from the interception CA.
    pub server: Option<Arc<CertifiedKey>>,
    /// For the log: CA and CRL counts, revoked serials.
    pub summary: String,
    /// Worth an operator's look, not a reason to refuse (a CRL past its
    /// next update, a key file others can read).
    pub warnings: Vec<String>,
}

pub(super) fn load(config: &MtlsConfig, provider: &Arc<CryptoProvider>) -> Result<Loaded, String> {
    let mut warnings = Vec::new();
    let ca_certs = read_certs("--client-ca", &config.client_ca)?;
    let mut roots = RootCertStore::empty();
    for cert in &ca_certs {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "--client-ca {}: a certificate in it cannot be a trust anchor ({e}); give the PEM of the CA that issues the agents' certificates",
                config.client_ca.display()
            )
        })?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let mut summary = format!(
        "client CA {} ({} certificates)",
        config.client_ca.display(),
        ca_certs.len()
    );
    if let Some(path) = &config.crl {
        let crls = read_crls(path, &ca_certs, &mut warnings)?;
        summary.push_str(&format!(
            ", CRL {} ({} lists, {} revoked)",
            path.display(),
            crls.len(),
            crls.iter().map(|(_, revoked)| revoked).sum::<usize>()
        ));
        builder = builder.with_crls(crls.into_iter().map(|(der, _)| der));
    } else {
        summary.push_str(", no CRL");
    }
    let verifier = builder.build().map_err(|e| {
        format!(
            "--client-ca {} / --crl: cannot build the client-certificate check ({e})",
            config.client_ca.display()
        )
    })?;
    let server = match (&config.server_cert, &config.server_key) {
        (Some(cert), Some(key)) => Some(server_key(cert, key, provider, &mut warnings)?),
        (None, None) => None,
        _ => return Err("--server-cert and --server-key go together: give both, or neither (then the server certificate is minted from the interception CA)".to_string()),
    };
    Ok(Loaded {
        verifier,
        server,
        summary,
        warnings,
    })
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {}: cannot read it ({e})", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{flag} {}: {size} bytes; a PEM file for this is far smaller",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it ({e})", path.display()))
}

fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not a PEM certificate bundle ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no `-----BEGIN CERTIFICATE-----` in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The CRLs in `path`, each issued and signed by a CA of `ca_certs`, with
/// the number of serials each revokes. A CRL from another CA would leave
/// every certificate's status unknown (all refused), and one with a bad
/// signature would be rejected on the first handshake: both are refused
/// here, where the old CRL can stay in force.
fn read_crls(
    path: &Path,
    ca_certs: &[CertificateDer<'static>],
    warnings: &mut Vec<String>,
) -> Result<Vec<(CertificateRevocationListDer<'static>, usize)>, String> {
    let bytes = read("--crl", path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--crl {}: not a PEM CRL file ({e})", path.display()))?;
    if crls.is_empty() {
        return Err(format!(
            "--crl {}: no `-----BEGIN X509 CRL-----` in it; give the client CA's CRL (e.g. `openssl ca -gencrl`)",
            path.display()
        ));
    }
    let cas = ca_certs
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok().map(|(_, cert)| cert))
        .collect::<Vec<_>>();
    let mut checked = Vec::with_capacity(crls.len());
    for (index, der) in crls.into_iter().enumerate() {
        let which = format!("--crl {} (list {})", path.display(), index + 1);
        let (_, crl) =
            x509_parser::parse_x509_crl(&der).map_err(|e| format!("{which}: not a well-formed X.509 CRL ({e})"))?;
        // webpki reads version 2 CRLs only; `openssl ca -gencrl` writes
        // version 1 unless its configuration names CRL extensions.
        if crl.version() != Some(x509_parser::x509::X509Version::V2) {
            return Err(format!(
                "{which}: a version 1 CRL; the gateway reads version 2 only. With `openssl ca`, set \
                 `crlnumber = <file>` and `crl_extensions = crl_ext` (a section with \
                 `authorityKeyIdentifier = keyid:always`) and run `openssl ca -gencrl` again"
            ));
        }
        let Some(ca) = cas.iter().find(|ca| ca.subject() == crl.issuer()) else {
            return Err(format!(
                "{which}: issued by `{}`, which is no CA in --client-ca; give the CRL of the client CA",
                crl.issuer()
            ));
        };
        crl.verify_signature(ca.public_key()).map_err(|e| {
            format!(
                "{which}: its signature does not verify with the key of `{}` ({e}); the file is damaged or from another CA",
                crl.issuer()
            )
        })?;
        if let Some(next) = crl.next_update()
            && next.timestamp() < chrono::Utc::now().timestamp()
        {
            warnings.push(format!(
                "{which}: its next update ({next}) has passed; publish a fresh CRL (it is still enforced)"
            ));
        }
        let revoked = crl.iter_revoked_certificates().count();
        checked.push((der, revoked));
    }
    Ok(checked)
}

fn server_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
    warnings: &mut Vec<String>,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs("--server-cert", cert)?;
    let bytes = read("--server-key", key)?;
    // The key's own error text could quote it: say only what is wrong.
    let private = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "--server-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(key) {
        use std::os::unix::fs::PermissionsExt as _;
        if metadata.permissions().mode() & 0o077 != 0 {
            warnings.push(format!(
                "--server-key {}: readable by others (mode {:o}); chmod 600 it",
                key.display(),
                metadata.permissions().mode() & 0o777
            ));
        }
    }
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "--server-key {} does not go with --server-cert {} ({e}); give the key of the first certificate",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}
