//! The workers' own credentials for the gateway: jobs name an agent, and
//! only the worker knows its key. Loaded from a YAML file
//! (`clawgress up --credentials FILE`) and the environment.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Agent id → API key. `Debug` never shows a key.
#[derive(Clone, Default)]
pub struct Credentials {
    keys: BTreeMap<String, String>,
    /// AI provider API keys (`openai`, `anthropic`, `gemini`) for `llm` steps.
    providers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("agents", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    agents: BTreeMap<String, KeySource>,
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
}

/// Environment variables `CLAWGRESS_AGENT_KEY_<AGENT>` (the id upper-cased,
/// `-` and `.` as `_`) add or override keys.
pub const ENV_PREFIX: &str = "CLAWGRESS_AGENT_KEY_";

fn resolve(path: &Path, base: &Path, name: &str, source: KeySource) -> Result<String, String> {
    let key = match source {
        KeySource::Inline(key) => key,
        KeySource::From(KeyFrom {
            key_env: Some(var),
            key_file: None,
        }) => std::env::var(&var)
            .map_err(|_| format!("{}: {name}: environment variable {var} is not set", path.display()))?,
        KeySource::From(KeyFrom {
            key_env: None,
            key_file: Some(file),
        }) => {
            let file = base.join(file);
            std::fs::read_to_string(&file)
                .map(|k| k.trim().to_string())
                .map_err(|e| format!("{}: {name}: cannot read {}: {e}", path.display(), file.display()))?
        }
        KeySource::From(_) => {
            return Err(format!(
                "{}: {name}: give exactly one of key_env and key_file",
                path.display()
            ));
        }
    };
    if key.is_empty() {
        return Err(format!("{}: {name}: the key is empty", path.display()));
    }
    Ok(key)
}

impl Credentials {
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Credentials {
        Credentials {
            keys: pairs.into_iter().collect(),
            providers: BTreeMap::new(),
        }
    }

    /// Loads `path` (if given), then the environment. Errors name the file
    /// and the agent, never a key.
    pub fn load(path: Option<&Path>) -> Result<Credentials, String> {
        let mut keys = BTreeMap::new();
        let mut providers = BTreeMap::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
            let file: CredentialsFile = serde_saphyr::from_str(&text).map_err(|e| {
                format!(
                    "{}: {e}\n  hint: write `agents: {{agent-id: KEY}}` or `agent-id: {{key_env: VAR}}` / `{{key_file: PATH}}`",
                    path.display()
                )
            })?;
            let base = path.parent().unwrap_or(Path::new("."));
            for (agent, source) in file.agents {
                keys.insert(agent.clone(), resolve(path, base, &agent, source)?);
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
        Ok(Credentials { keys, providers })
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

    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
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
}
