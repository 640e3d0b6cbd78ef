//! The workers' own credentials for the gateway: jobs name an agent, and
//! only the worker knows its key (or, for the gateway's mTLS listener, its
//! client certificate and key). Loaded from a YAML file
//! (`clawgress up --credentials FILE`) and the environment.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Agent id → API key and client certificate. `Debug` never shows a key.
#[derive(Clone, Default)]
pub struct Credentials {
    keys: BTreeMap<String, String>,
    /// Client certificates for the gateway's mTLS listener (`https://`
    /// gateway URLs), by agent.
    identities: BTreeMap<String, ClientIdentity>,
    /// PEM roots that the gateway's own certificate chains to (`gateway_ca`).
    gateway_ca: Option<Vec<u8>>,
    /// AI provider API keys (`openai`, `anthropic`, `gemini`) for `llm` steps.
    providers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("agents", &self.keys.keys().collect::<Vec<_>>())
            .field("certificates", &self.identities.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An agent's client certificate chain and private key, PEM, as
/// `reqwest::Identity::from_pem` takes them. `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientIdentity {
    pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(..)")
    }
}

impl ClientIdentity {
    /// The certificate chain, then the key.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> ClientIdentity {
        let mut pem = cert.to_vec();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key);
        ClientIdentity { pem }
    }

    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    agents: BTreeMap<String, KeySource>,
    /// PEM CA certificate(s) the gateway's TLS listener presents a chain
    /// to (an `https://` gateway URL); relative to this file.
    #[serde(default)]
    gateway_ca: Option<String>,
    /// Provider keys, e.g. `openai: {key_env: OPENAI_API_KEY}`.
    #[serde(default)]
    providers: BTreeMap<String, KeySource>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeySource {
    Inline(String),
    From(KeyFrom),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFrom {
    #[serde(default)]
    key_env: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    /// The agent's client certificate (PEM chain) for the gateway's mTLS
    /// listener; relative to this file.
    #[serde(default)]
    cert: Option<String>,
    /// That certificate's private key (PEM); relative to this file.
    #[serde(default)]
    key: Option<String>,
}

/// Environment variables `CLAWGRESS_AGENT_KEY_<AGENT>` (the id upper-cased,
/// `-` and `.` as `_`) add or override keys.
pub const ENV_PREFIX: &str = "CLAWGRESS_AGENT_KEY_";

/// A provider's key: inline, `key_env` or `key_file`.
fn resolve(path: &Path, base: &Path, name: &str, source: KeySource) -> Result<String, String> {
    match resolve_agent(path, base, name, source)? {
        (Some(key), None) => Ok(key),
        _ => Err(format!(
            "{}: {name}: give exactly one of key_env and key_file (cert and key are for agents)",
            path.display()
        )),
    }
}

/// An agent's API key and client certificate: at least one of them.
fn resolve_agent(
    path: &Path,
    base: &Path,
    name: &str,
    source: KeySource,
) -> Result<(Option<String>, Option<ClientIdentity>), String> {
    let from = match source {
        KeySource::Inline(key) => return Ok((Some(non_empty(path, name, key)?), None)),
        KeySource::From(from) => from,
    };
    let key = match (from.key_env, from.key_file) {
        (Some(var), None) => Some(
            std::env::var(&var)
                .map_err(|_| format!("{}: {name}: environment variable {var} is not set", path.display()))?,
        ),
        (None, Some(file)) => {
            let file = base.join(file);
            Some(
                std::fs::read_to_string(&file)
                    .map(|k| k.trim().to_string())
                    .map_err(|e| format!("{}: {name}: cannot read {}: {e}", path.display(), file.display()))?,
            )
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(format!(
                "{}: {name}: give exactly one of key_env and key_file",
                path.display()
            ));
        }
    };
    let key = key.map(|key| non_empty(path, name, key)).transpose()?;
    let identity = match (from.cert, from.key) {
        (Some(cert), Some(key)) => Some(load_identity(path, &base.join(cert), &base.join(key), name)?),
        (None, None) => None,
        _ => {
            return Err(format!(
                "{}: {name}: cert and key go together (the client certificate and its private key)",
                path.display()
            ));
        }
    };
    if key.is_none() && identity.is_none() {
        return Err(format!(
            "{}: {name}: give an API key (key_env or key_file), a client certificate (cert and key), or both",
            path.display()
        ));
    }
    Ok((key, identity))
}

fn non_empty(path: &Path, name: &str, key: String) -> Result<String, String> {
    if key.is_empty() {
        return Err(format!("{}: {name}: the key is empty", path.display()));
    }
    Ok(key)
}

/// Reads a client certificate and its key and checks that they form an
/// identity. Errors name the files, never their content.
fn load_identity(path: &Path, cert: &Path, key: &Path, name: &str) -> Result<ClientIdentity, String> {
    let read = |file: &Path| {
        std::fs::read(file).map_err(|e| format!("{}: {name}: cannot read {}: {e}", path.display(), file.display()))
    };
    let identity = ClientIdentity::from_pem(&read(cert)?, &read(key)?);
    reqwest::Identity::from_pem(identity.pem()).map_err(|_| {
        format!(
            "{}: {name}: {} and {} are not a PEM certificate and its PEM private key",
            path.display(),
            cert.display(),
            key.display()
        )
    })?;
    Ok(identity)
}

impl Credentials {
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Credentials {
        Credentials {
            keys: pairs.into_iter().collect(),
            ..Credentials::default()
        }
    }

    /// Adds a client certificate for `agent` (tests, embedding).
    pub fn with_identity(mut self, agent: &str, identity: ClientIdentity) -> Credentials {
        self.identities.insert(agent.to_string(), identity);
        self
    }

    /// Trusts `pem` for the gateway's TLS listener (tests, embedding).
    pub fn with_gateway_ca(mut self, pem: &[u8]) -> Credentials {
        self.gateway_ca = Some(pem.to_vec());
        self
    }

    /// Loads `path` (if given), then the environment. Errors name the file
    /// and the agent, never a key.
    pub fn load(path: Option<&Path>) -> Result<Credentials, String> {
        let mut keys = BTreeMap::new();
        let mut identities = BTreeMap::new();
        let mut gateway_ca = None;
        let mut providers = BTreeMap::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
            let file: CredentialsFile = serde_saphyr::from_str(&text).map_err(|e| {
                format!(
                    "{}: {e}\n  hint: write `agents: {{agent-id: KEY}}` or `agent-id: {{key_env: VAR}}` / `{{key_file: PATH}}` / `{{cert: PATH, key: PATH}}`",
                    path.display()
                )
            })?;
            let base = path.parent().unwrap_or(Path::new("."));
            for (agent, source) in file.agents {
                let (key, identity) = resolve_agent(path, base, &agent, source)?;
                if let Some(key) = key {
                    keys.insert(agent.clone(), key);
                }
                if let Some(identity) = identity {
                    identities.insert(agent, identity);
                }
            }
            if let Some(ca) = file.gateway_ca {
                let ca = base.join(ca);
                let pem = std::fs::read(&ca)
                    .map_err(|e| format!("{}: gateway_ca: cannot read {}: {e}", path.display(), ca.display()))?;
                if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |certs| certs.is_empty()) {
                    return Err(format!(
                        "{}: gateway_ca: {} holds no PEM certificate",
                        path.display(),
                        ca.display()
                    ));
                }
                gateway_ca = Some(pem);
            }
            for (provider, source) in file.providers {
                providers.insert(provider.clone(), resolve(path, base, &provider, source)?);
            }
        }
        for provider in ["openai", "anthropic", "gemini"] {
            if let Ok(key) = std::env::var(format!("{}_API_KEY", provider.to_ascii_uppercase()))
                && !key.is_empty()
            {
                providers.entry(provider.to_string()).or_insert(key);
            }
        }
        for (name, value) in std::env::vars() {
            if let Some(agent) = name.strip_prefix(ENV_PREFIX)
                && !value.is_empty()
            {
                keys.insert(agent.to_ascii_lowercase().replace('_', "-"), value);
            }
        }
        Ok(Credentials {
            keys,
            identities,
            gateway_ca,
            providers,
        })
    }

    /// Adds a provider key (tests, embedding).
    pub fn with_provider(mut self, provider: &str, key: &str) -> Credentials {
        self.providers.insert(provider.to_string(), key.to_string());
        self
    }

    pub fn provider_key(&self, provider: &str) -> Option<&str> {
        self.providers.get(provider).map(String::as_str)
    }

    pub fn has(&self, agent: &str) -> bool {
        self.keys.contains_key(agent)
    }

    pub fn key(&self, agent: &str) -> Option<&str> {
        self.keys.get(agent).map(String::as_str)
    }

    /// The agent's client certificate for the gateway's mTLS listener.
    pub fn identity(&self, agent: &str) -> Option<&ClientIdentity> {
        self.identities.get(agent)
    }

    /// PEM roots for the gateway's own certificate (`gateway_ca`).
    pub fn gateway_ca(&self) -> Option<&[u8]> {
        self.gateway_ca.as_deref()
    }

    /// Every agent with a key or a certificate.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        let mut agents: Vec<&str> = self
            .keys
            .keys()
            .chain(self.identities.keys())
            .map(String::as_str)
            .collect();
        agents.sort_unstable();
        agents.dedup();
        agents.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_env_and_file_keys_load_and_never_print() {
        let dir = std::env::temp_dir().join(format!("clawgress-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "file-key\n").unwrap();
        let file = dir.join("credentials.yaml");
        std::fs::write(
            &file,
            "agents:\n  scraper-001: inline-key\n  scraper-002: {key_file: k}\n",
        )
        .unwrap();
        let creds = Credentials::load(Some(&file)).unwrap();
        assert_eq!(creds.key("scraper-001"), Some("inline-key"));
        assert_eq!(creds.key("scraper-002"), Some("file-key"));
        assert!(!format!("{creds:?}").contains("inline-key"));

        std::fs::write(&file, "agents:\n  a: {key_env: CLAWGRESS_TEST_SURELY_UNSET_VAR}\n").unwrap();
        let missing = Credentials::load(Some(&file)).unwrap_err();
        assert!(missing.contains("CLAWGRESS_TEST_SURELY_UNSET_VAR"), "{missing}");
        std::fs::write(&file, "agent: {}\n").unwrap();
        assert!(Credentials::load(Some(&file)).unwrap_err().contains("hint"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_certificates_load_relative_to_the_file_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["scraper-002".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::create_dir_all(dir.path().join("mtls")).unwrap();
        std::fs::write(dir.path().join("mtls/a.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("mtls/a-key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("mtls/ca.pem"), cert.pem()).unwrap();
        let file = dir.path().join("credentials.yaml");
        std::fs::write(
            &file,
            "gateway_ca: mtls/ca.pem\nagents:\n  scraper-002: {cert: mtls/a.pem, key: mtls/a-key.pem}\n  scraper-001: k1\n",
        )
        .unwrap();
        let creds = Credentials::load(Some(&file)).unwrap();
        let identity = creds.identity("scraper-002").expect("loaded");
        assert!(String::from_utf8_lossy(identity.pem()).contains("PRIVATE KEY"));
        assert_eq!(creds.key("scraper-002"), None, "a certificate, no API key");
        assert_eq!(creds.agents().collect::<Vec<_>>(), ["scraper-001", "scraper-002"]);
        assert!(creds.gateway_ca().is_some());
        let shown = format!("{creds:?} {identity:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("k1"), "{shown}");

        for (yaml, says) in [
            ("agents:\n  a: {cert: mtls/a.pem}\n", "cert and key go together"),
            (
                "agents:\n  a: {cert: mtls/a.pem, key: mtls/a.pem}\n",
                "not a PEM certificate and its PEM private key",
            ),
            (
                "agents:\n  a: {cert: mtls/none.pem, key: mtls/a-key.pem}\n",
                "cannot read",
            ),
            (
                "agents:\n  a: {}\n",
                "an API key (key_env or key_file), a client certificate",
            ),
            (
                "gateway_ca: mtls/a-key.pem\nagents:\n  a: k\n",
                "holds no PEM certificate",
            ),
        ] {
            std::fs::write(&file, yaml).unwrap();
            let error = Credentials::load(Some(&file)).unwrap_err();
            assert!(error.contains(says), "{yaml}: {error}");
            assert!(!error.contains("BEGIN"), "never the content: {error}");
        }
    }
}
