//! Who is asking: turns a `Proxy-Authorization` header into a canonical agent [`Identity`].
//!
//! Two credential forms are accepted, as the proxy contract says:
//! - `Basic base64(agent_id:api_key)`, checked against the SHA-256 digests in the agents file;
//! - `Bearer <JWT>` (HS*/RS*/PS*/ES*/EdDSA), checked against the keys in the agents file's `jwt`
//!   section, with `iss`, `aud`, `exp` and `nbf` enforced.
//!
//! Two more identities carry no credential: the source address (`sources`, the transparent
//! listener: [`IdentityResolver::by_source`]) and a verified client certificate (`spiffe_ids` or
//! the CN, the mTLS listener: [`IdentityResolver::by_certificate`]).
//!
//! The [`IdentityResolver`] is built once from the agents file and is immutable afterwards; a
//! reload builds a new one and swaps the `Arc`. Every failure is an [`IdentityError`] with a
//! stable [`reason`](IdentityError::reason) code; the gateway maps all of them to `407`.

mod agents_file;
mod basic;
mod clock;
mod credentials;
mod error;
mod file_error;
mod jwt;
mod jwt_cache;
mod jwt_keys;
mod registry;
mod schema;
mod sources;
mod spiffe;
mod store_agents;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use error::{CertificateProblem, IdentityError};
pub use file_error::AgentsFileError;
pub use spiffe::CertificateNames;

use credentials::Credentials;
use jwt::JwtVerifier;
use registry::AgentRegistry;

/// Agents files are small; anything bigger is a mistake (or an attack on the loader).
const MAX_AGENTS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The canonical identity every later stage (policy, limits, audit) reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent_id: Arc<str>,
    pub team: Arc<str>,
    pub project: Arc<str>,
    pub environment: Arc<str>,
    /// e.g. `scraper` or `ai-agent`; matches the pod label used by the network policies.
    pub role: Arc<str>,
    pub method: AuthMethod,
    /// The token's `sid` (or `session_id`) claim; API keys carry no session.
    pub session_id: Option<Arc<str>>,
}

/// How the identity was proven; recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    /// A client certificate on the mTLS listener.
    Certificate,
}

impl AuthMethod {
    /// Stable name for logs, audit lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Certificate => "mtls",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resolves `Proxy-Authorization` headers to identities. Immutable once built; share it via
/// `Arc` and rebuild it to reload the agents file.
pub struct IdentityResolver {
    registry: AgentRegistry,
    /// Shared with resolvers built over it from the control store's agents.
    jwt: Option<Arc<JwtVerifier>>,
    sources: sources::SourceMap,
    spiffe: spiffe::SpiffeMap,
}

impl IdentityResolver {
    /// Reads and validates the agents file at `path`. Relative key paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, AgentsFileError> {
        let origin = path.display().to_string();
        let text = read_agents_file(path).map_err(|message| AgentsFileError::unlocated(&origin, message))?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::from_str(&text, &origin, base_dir)
    }

    /// Builds a resolver from agents-file text. `origin` names the text in error messages
    /// (`origin:line:column: ...`); `base_dir` anchors relative key paths.
    pub fn from_str(text: &str, origin: &str, base_dir: &Path) -> Result<Self, AgentsFileError> {
        let compiled = agents_file::compile(text, origin, base_dir)?;
        tracing::info!(
            origin,
            agents = compiled.registry.len(),
            disabled_agents = compiled.registry.disabled_count(),
            jwt_keys = compiled.jwt.as_ref().map_or(0, JwtVerifier::key_count),
            "agents file loaded"
        );
        Ok(Self {
            registry: compiled.registry,
            jwt: compiled.jwt.map(Arc::new),
            sources: compiled.sources,
            spiffe: compiled.spiffe,
        })
    }

    /// The control store's agents in place of the file's, with this
    /// resolver's JWT settings (they stay in the agents file, beside the
    /// key files they name). Refused exactly where the agents file would be.
    pub fn with_store_agents(&self, agents: &[clawgress_control::Agent]) -> Result<Self, AgentsFileError> {
        let compiled = store_agents::compile(agents)?;
        Ok(Self {
            registry: compiled.registry,
            jwt: self.jwt.clone(),
            sources: compiled.sources,
            spiffe: compiled.spiffe,
        })
    }

    /// The agents of agents-file text, checked like the file (errors at
    /// `origin:line:column`), for an import into the control store.
    pub fn agents_for_import(text: &str, origin: &str) -> Result<Vec<clawgress_control::NewAgent>, AgentsFileError> {
        store_agents::from_file_text(text, origin)
    }

    /// Whether the store may hold `agents`: the agents file's rules.
    pub fn check_store_agents(agents: &[clawgress_control::Agent]) -> Result<(), String> {
        store_agents::compile(agents).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Every listed agent's identity (the admin API's quota view).
    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.registry.iter().map(|agent| &agent.identity)
    }

    /// The team of a listed agent.
    pub fn team_of(&self, agent_id: &str) -> Option<&str> {
        self.registry.get(agent_id).map(|agent| &*agent.identity.team)
    }

    /// The agent whose `sources` hold `ip`: the identity of a redirected
    /// (transparent) connection, or a DNS query, which carry no credential.
    pub fn by_source(&self, ip: std::net::IpAddr) -> Result<Arc<Identity>, IdentityError> {
        let agent_id = self.sources.agent_for(ip).ok_or(IdentityError::UnknownSource)?;
        let agent = self.registry.get(agent_id).ok_or(IdentityError::UnknownSource)?;
        if agent.disabled {
            return Err(IdentityError::Disabled);
        }
        Ok(agent.identity.clone())
    }

    /// An agent with `sources` may only be used from them: a credential
    /// presented from elsewhere is refused (`source_mismatch`).
    pub fn check_source(&self, identity: &Identity, ip: std::net::IpAddr) -> Result<(), IdentityError> {
        let ip = ip.to_canonical();
        match self.registry.get(&identity.agent_id) {
            Some(agent) if !agent.sources.is_empty() && !agent.sources.iter().any(|net| net.contains(&ip)) => {
                Err(IdentityError::SourceMismatch)
            }
            _ => Ok(()),
        }
    }

    /// The agent a verified client certificate names (the mTLS listener):
    /// its one SPIFFE ID, looked up in the agents' `spiffe_ids`; or, for a
    /// certificate without a SPIFFE ID, its CN as an agent id, unless that
    /// agent lists `spiffe_ids` (then only those name it). A certificate
    /// with a SPIFFE ID is never identified by its CN: an unmapped SPIFFE ID
    /// is an unknown certificate, not a fallback.
    pub fn by_certificate(&self, names: &CertificateNames) -> Result<Arc<Identity>, IdentityError> {
        let agent = match names.spiffe_ids.as_slice() {
            [id] => {
                let agent_id = self.spiffe.agent_for(id).ok_or(IdentityError::UnknownCertificate)?;
                self.registry.get(agent_id)
            }
            [] => {
                let common_name = names.common_name.as_deref().ok_or(IdentityError::UnknownCertificate)?;
                self.registry.get(common_name).filter(|agent| !agent.has_spiffe_ids)
            }
            _ => return Err(IdentityError::AmbiguousCertificate),
        };
        let agent = agent.ok_or(IdentityError::UnknownCertificate)?;
        if agent.disabled {
            return Err(IdentityError::Disabled);
        }
        Ok(agent.cert_identity.clone())
    }

    /// SPIFFE IDs mapped to agents.
    pub fn spiffe_id_count(&self) -> usize {
        self.spiffe.len()
    }

    /// Whether any agent has `sources` (the transparent listener needs them).
    pub fn has_sources(&self) -> bool {
        self.sources.len() > 0
    }

    /// Identifies the sender of one request. On the API-key path this returns the prebuilt
    /// `Arc` from the registry and does not allocate.
    pub fn identify(&self, proxy_authorization: Option<&http::HeaderValue>) -> Result<Arc<Identity>, IdentityError> {
        let header = proxy_authorization.ok_or(IdentityError::Missing)?;
        match credentials::parse(header)? {
            Credentials::Basic(encoded) => basic::authenticate(&self.registry, encoded),
            Credentials::Bearer(token) => match &self.jwt {
                Some(verifier) => verifier.authenticate(&self.registry, token),
                None => Err(IdentityError::JwtNotConfigured),
            },
        }
    }

    /// The agent id a refused `Basic` credential claims (never its key), so
    /// the refusal's audit line says who tried; `None` for other schemes.
    pub fn claimed_agent_id(proxy_authorization: Option<&http::HeaderValue>) -> Option<String> {
        match credentials::parse(proxy_authorization?).ok()? {
            Credentials::Basic(encoded) => basic::claimed_agent_id(encoded),
            Credentials::Bearer(_) => None,
        }
    }

    /// Number of agents listed in the agents file (disabled ones included).
    pub fn agent_count(&self) -> usize {
        self.registry.len()
    }

    /// Whether `Bearer` tokens are accepted at all.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt.is_some()
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: clock::Clock) -> Self {
        if let Some(jwt) = self.jwt.take().and_then(|jwt| Arc::try_unwrap(jwt).ok()) {
            self.jwt = Some(Arc::new(jwt.with_clock(clock)));
        }
        self
    }
}

impl fmt::Debug for IdentityResolver {
    // Hand-written so that no key material can ever reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("agents", &self.registry.len())
            .field("jwt_keys", &self.jwt.as_ref().map_or(0, |jwt| jwt.key_count()))
            .finish()
    }
}

fn read_agents_file(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read agents file: {e}"))?;
    if metadata.len() > MAX_AGENTS_FILE_BYTES {
        return Err(format!(
            "agents file is {} bytes; the limit is {MAX_AGENTS_FILE_BYTES}",
            metadata.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read agents file: {e}"))
}
