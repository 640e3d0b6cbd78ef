//! The interception CA: created once by `clawgress ca init`, trusted by the
//! agents, and used by the gateway to mint a leaf certificate for each host
//! it intercepts. Leaves are cached: minting one costs a key generation and
//! a signature, and an agent opens many tunnels to the same few hosts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Leaves live a week and are re-minted after a day, so a cached leaf is
/// never near its end; clocks that disagree by an hour still accept it.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Bounds the cache under a flood of host names; a full cache is emptied
/// (rare, and cheaper than tracking recency on every hit).
const MAX_CACHED_LEAVES: usize = 10_000;

pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    leaves: Mutex<HashMap<String, (Arc<ServerConfig>, Instant)>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptCa").finish_non_exhaustive()
    }
}

/// Creates a new CA in `dir`. Refuses to replace an existing one unless
/// `force`: every agent that trusts the old CA would stop working.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<PathBuf> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "{} already holds a CA; agents trust it, so it is kept. Use --force to replace it \
             (then give agents the new one: clawgress ca export)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Clawgress interception CA");
    name.push(DnType::OrganizationName, "Clawgress");
    params.distinguished_name = name;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("cannot write {}", cert_path.display()))?;
    Ok(cert_path)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

impl InterceptCa {
    /// Loads the CA `clawgress ca init` wrote in `dir`.
    pub fn load(dir: &Path, provider: Arc<rustls::crypto::CryptoProvider>) -> anyhow::Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let hint = format!("create one with `clawgress ca init --dir {}`", dir.display());
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read the interception CA {}; {hint}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the CA key {}; {hint}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("{}: not a private key the gateway can use ({e})", key_path.display()))?;
        let cert = rustls_pemfile_cert(&cert_pem)
            .with_context(|| format!("{}: no PEM certificate in it", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| anyhow::anyhow!("{}: not a CA certificate ({e})", cert_path.display()))?;
        Ok(InterceptCa {
            issuer,
            cert,
            cert_pem,
            leaves: Mutex::new(HashMap::new()),
            provider,
        })
    }

    /// The CA certificate, PEM, for agents to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server configuration presenting a leaf for `host`, from the
    /// cache when a fresh one is there.
    pub fn server_config(&self, host: &str) -> anyhow::Result<Arc<ServerConfig>> {
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((config, minted)) = leaves.get(host)
            && minted.elapsed() < LEAF_REFRESH
        {
            return Ok(config.clone());
        }
        // Minted under the lock: two tunnels to a new host then share one
        // leaf instead of racing to mint two.
        let config = Arc::new(self.mint(host)?);
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), (config.clone(), Instant::now()));
        Ok(config)
    }

    fn mint(&self, host: &str) -> anyhow::Result<ServerConfig> {
        let key = KeyPair::generate().context("cannot generate a leaf key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().with_context(|| format!("'{host}' is not a DNS name"))?),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_LIFETIME;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign a leaf certificate")?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .context("cannot use the minted leaf")?;
        // The intercepted side speaks HTTP/1.1 to the gateway's own server.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The first certificate in a PEM text.
fn rustls_pemfile_cert(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}
