//! mTLS workload identity (`clawgress gateway --listen-tls ADDR --client-ca
//! FILE [--crl FILE] [--server-cert FILE --server-key FILE]`): the proxy
//! served over TLS, with a client certificate required, and that
//! certificate naming the agent (seed 001 §4, §7.3, §8).
//!
//! | module | job |
//! |---|---|
//! | this one | the files in force ([`Material`]), their reload, each handshake's server configuration |
//! | `files` | reading and checking the client CA, CRLs, server certificate and key |
//! | `verifier` | the per-handshake wrapper that keeps a refused certificate and why |
//! | `peer` | what a certificate says (SPIFFE ID, CN, serial) and the re-check after a reload |
//! | `metrics` | `mtls_handshakes_total`, `mtls_reloads_total` |
//!
//! The listener itself is `proxy::mtls`; identity by certificate is
//! `IdentityResolver::by_certificate`.

mod files;
pub mod metrics;
pub mod peer;
pub mod verifier;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

pub use metrics::MtlsMetrics;
pub use peer::{ClientCertRecord, ClientCertificate, MtlsPeer};
use verifier::RecordingVerifier;

/// Refused handshakes written to the audit trail per second at most: enough
/// to see an attack, not enough for anyone who can open a TCP connection to
/// fill the disk (a certificate chain is checked before the client proves
/// it holds the key, so a copy of someone's revoked certificate will do).
const REFUSALS_AUDITED_PER_SECOND: u64 = 50;

/// The `--listen-tls` listener's settings.
#[derive(Debug, Clone)]
pub struct MtlsConfig {
    pub listen: SocketAddr,
    /// PEM: the CA (or CAs) that issue agents' client certificates.
    pub client_ca: PathBuf,
    /// PEM CRLs of the client CA; without it nothing is revoked.
    pub crl: Option<PathBuf>,
    /// PEM chain and key the listener presents. Without them a certificate
    /// is minted from the interception CA for `localhost`, this host's
    /// name, or the listener's address.
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
}

impl MtlsConfig {
    /// The files a reload watches.
    fn files(&self) -> Vec<&Path> {
        [
            Some(self.client_ca.as_path()),
            self.crl.as_deref(),
            self.server_cert.as_deref(),
            self.server_key.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The client CA, CRL and server certificate in force.
pub struct Material {
    pub verifier: Arc<dyn ClientCertVerifier>,
    server: ServerCert,
    /// Counts reloads; a connection verified under an older one is checked
    /// again on its next request.
    pub generation: u64,
}

/// The listener's TLS side: shared by its workers, swapped on reload.
pub struct MtlsAcceptor {
    config: MtlsConfig,
    provider: Arc<CryptoProvider>,
    tls: Arc<crate::tls::TlsKit>,
    material: ArcSwap<Material>,
    pub metrics: MtlsMetrics,
    /// The second and count of refused handshakes audited in it.
    audit_window: AtomicU64,
    audited: AtomicU64,
}

impl std::fmt::Debug for MtlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAcceptor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One handshake's configuration and the verifier that keeps its refusal.
pub struct Handshake {
    pub config: Arc<ServerConfig>,
    pub verifier: Arc<RecordingVerifier>,
    pub generation: u64,
}

impl MtlsAcceptor {
    /// Reads the files; any problem stops the start with what to fix.
    pub fn load(
        config: MtlsConfig,
        tls: Arc<crate::tls::TlsKit>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<MtlsAcceptor> {
        let provider = tls.provider();
        let metrics = MtlsMetrics::new(registry)?;
        let loaded = files::load(&config, &provider).map_err(anyhow::Error::msg)?;
        if loaded.server.is_none() && tls.ca.is_none() {
            anyhow::bail!(
                "--listen-tls needs a server certificate: give --server-cert FILE --server-key FILE, \
                 or create the interception CA (`clawgress ca init`) to mint one for localhost and this host's name"
            );
        }
        if config.crl.is_none() {
            tracing::warn!("--listen-tls without --crl: a compromised client certificate is accepted until it expires");
        }
        log_loaded(&loaded);
        let material = build_material(loaded, &tls, 0);
        Ok(MtlsAcceptor {
            config,
            provider,
            tls,
            material: ArcSwap::from_pointee(material),
            metrics,
            audit_window: AtomicU64::new(0),
            audited: AtomicU64::new(0),
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn material(&self) -> Arc<Material> {
        self.material.load_full()
    }

    /// Reads the files again. A broken file is refused with the reason in
    /// the log and the metric, and what was in force stays.
    pub fn reload(&self) -> bool {
        match files::load(&self.config, &self.provider) {
            Ok(loaded) => {
                log_loaded(&loaded);
                let generation = self.material.load().generation + 1;
                self.material
                    .store(Arc::new(build_material(loaded, &self.tls, generation)));
                self.metrics.reload(true);
                true
            }
            Err(message) => {
                tracing::error!(
                    "mTLS reload refused; the client CA, CRL and server certificate in force stay. {message}"
                );
                self.metrics.reload(false);
                false
            }
        }
    }

    /// A server configuration for one handshake, arriving at `local`. Built
    /// per connection so its verifier can keep a refused certificate for the
    /// audit. Sessions are never resumed: a resumed session skips the
    /// certificate check, and a CRL reload must reach every new connection.
    pub fn handshake(&self, local: IpAddr) -> Result<Handshake, rustls::Error> {
        let material = self.material();
        let verifier = Arc::new(RecordingVerifier::new(material.verifier.clone()));
        let resolver: Arc<dyn ResolvesServerCert> = match &material.server {
            ServerCert::Files(key) => Arc::new(Fixed(key.clone())),
            ServerCert::Minted(tls) => Arc::new(Minted {
                tls: tls.clone(),
                fallback: local,
            }),
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Handshake {
            config: Arc::new(config),
            verifier,
            generation: material.generation,
        })
    }

    /// Whether one more refused handshake may be written to the audit
    /// trail this second; the rest are only counted.
    pub fn may_audit_refusal(&self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.audit_window.swap(second, Ordering::Relaxed) != second {
            self.audited.store(0, Ordering::Relaxed);
        }
        let allowed = self.audited.fetch_add(1, Ordering::Relaxed) < REFUSALS_AUDITED_PER_SECOND;
        if !allowed {
            self.metrics.unaudited();
        }
        allowed
    }
}

fn log_loaded(loaded: &files::Loaded) {
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(files = %loaded.summary, "mTLS client CA and CRL in force");
}

fn build_material(loaded: files::Loaded, tls: &Arc<crate::tls::TlsKit>, generation: u64) -> Material {
    Material {
        verifier: loaded.verifier,
        server: match loaded.server {
            Some(key) => ServerCert::Files(key),
            None => ServerCert::Minted(tls.clone()),
        },
        generation,
    }
}

/// Where the listener's own certificate comes from.
enum ServerCert {
    /// `--server-cert` and `--server-key`.
    Files(Arc<CertifiedKey>),
    /// Minted per name from the interception CA (see [`Minted`]).
    Minted(Arc<crate::tls::TlsKit>),
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A certificate minted from the interception CA (agents that intercept
/// already trust it) for the name the client asked for, when it is
/// `localhost` or this host's name, or else for the address it connected
/// to. Other names get no certificate: minting for any name a stranger
/// sends would churn the interception leaf cache.
#[derive(Debug)]
struct Minted {
    tls: Arc<crate::tls::TlsKit>,
    fallback: IpAddr,
}

impl ResolvesServerCert for Minted {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ca = self.tls.ca.as_ref()?;
        let name = match hello.server_name() {
            Some(name) if name.eq_ignore_ascii_case("localhost") || is_host_name(name) => name.to_ascii_lowercase(),
            Some(_) => return None,
            None if self.fallback.is_unspecified() => "127.0.0.1".to_string(),
            None => self.fallback.to_string(),
        };
        let minted = ca.server_config(&name).ok()?;
        minted.cert_resolver.resolve(hello)
    }
}

/// This machine's name: the kernel's, or `/etc/hostname` where the
/// service cannot see `/proc/sys` (the unit's `ProcSubset=pid`).
fn is_host_name(name: &str) -> bool {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .is_some_and(|host| !host.trim().is_empty() && host.trim().eq_ignore_ascii_case(name))
}

/// Reloads the files on SIGHUP and whenever one's content changes (content,
/// not mtime: certificate managers replace files in ways mtime misses).
pub async fn watch_files(acceptor: Arc<MtlsAcceptor>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = signal(SignalKind::hangup()).ok();
    let digest = |acceptor: &MtlsAcceptor| {
        let mut hasher = Sha256::new();
        for path in acceptor.config.files() {
            // A missing file hashes differently from an empty one.
            match std::fs::read(path) {
                Ok(bytes) => hasher.update(Sha256::digest(&bytes)),
                Err(_) => hasher.update([0u8]),
            }
        }
        <[u8; 32]>::from(hasher.finalize())
    };
    let mut seen = digest(&acceptor);
    loop {
        let forced = tokio::select! {
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            () = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => return,
        };
        let now = digest(&acceptor);
        if forced || now != seen {
            seen = now;
            acceptor.reload();
        }
    }
}
