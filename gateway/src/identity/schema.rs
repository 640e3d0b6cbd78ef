//! The agents file as written on disk. Every value that can be wrong is `Spanned` so that
//! validation errors point at `file:line:column`. Inline `api_key` / `secret` fields are
//! refused by `deny_unknown_fields` and given a pointed hint in `agents_file`.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Top level of the agents file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentsFileDoc {
    /// Agents that may authenticate with an API key, and whose attributes are authoritative
    /// when they present a JWT.
    #[serde(default)]
    pub agents: Vec<Spanned<AgentDoc>>,
    /// Optional: accept `Bearer` JWTs.
    #[serde(default)]
    pub jwt: Option<Spanned<JwtDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentDoc {
    pub id: Spanned<String>,
    pub team: Spanned<String>,
    pub project: Spanned<String>,
    pub environment: Spanned<String>,
    /// e.g. `scraper` or `ai-agent`.
    pub role: Spanned<String>,
    /// Hex SHA-256 of the agent's API key. Absent: the agent can only use a JWT.
    #[serde(default)]
    pub api_key_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub disabled: bool,
    /// The agent's source addresses (CIDRs): who it is on the transparent
    /// listener, and where its credential may come from on the proxy port.
    /// CIDRs of different agents must not overlap.
    #[serde(default)]
    pub sources: Vec<Spanned<String>>,
    /// The agent's SPIFFE IDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`):
    /// a client certificate on the mTLS listener whose URI SAN is one of
    /// them is this agent. An ID may name one agent only.
    #[serde(default)]
    pub spiffe_ids: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtDoc {
    /// Required value of the `iss` claim.
    pub issuer: Spanned<String>,
    /// Required member of the `aud` claim.
    pub audience: Spanned<String>,
    /// Clock-skew allowance for `exp` and `nbf`; default 30, at most 300.
    #[serde(default)]
    pub leeway_seconds: Option<Spanned<u64>>,
    /// When true, a token's agent must also be listed under `agents`.
    #[serde(default)]
    pub require_registered_agent: bool,
    #[serde(default)]
    pub claims: Option<ClaimsDoc>,
    pub keys: Spanned<Vec<Spanned<KeyDoc>>>,
}

/// Names of the claims carrying each identity field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimsDoc {
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub team: Option<Spanned<String>>,
    #[serde(default)]
    pub project: Option<Spanned<String>>,
    #[serde(default)]
    pub environment: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyDoc {
    /// When tokens carry a `kid`, the key is picked by it.
    #[serde(default)]
    pub kid: Option<Spanned<String>>,
    pub algorithm: Spanned<String>,
    /// HMAC only: file holding the shared secret.
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// HMAC only: environment variable holding the shared secret.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// RS*/PS*/ES*/EdDSA: PEM public key file.
    #[serde(default)]
    pub public_key_file: Option<Spanned<String>>,
}
