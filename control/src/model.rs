//! What the store holds, as the API shows it and as snapshots carry it to
//! the gateways.
//!
//! Snapshot types accept fields they do not know (no `deny_unknown_fields`):
//! during a rolling upgrade an older gateway must still read what a newer
//! store published.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An agent of the registry, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub team: String,
    pub project: String,
    pub environment: String,
    /// e.g. `scraper` or `ai-agent`; policy groups select on it.
    pub role: String,
    /// Hex SHA-256 of the API key (the key itself is shown once, never
    /// stored); `None`: the agent can only use a JWT.
    pub key_sha256: Option<String>,
    /// The key before the last rotation, still accepted until
    /// `previous_key_until` (the grace period).
    #[serde(default)]
    pub previous_key_sha256: Option<String>,
    #[serde(default)]
    pub previous_key_until: Option<DateTime<Utc>>,
    pub disabled: bool,
    /// CIDRs the agent connects from (the transparent listener's identity).
    #[serde(default)]
    pub sources: Vec<String>,
    /// SPIFFE IDs that name the agent on the mTLS listener.
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
    /// Bumped by every change: updates name the version they change.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl Agent {
    /// The agent as the API shows it: key digests are left out (a short
    /// key id tells keys apart), the grace period of a rotated key is in.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "team": self.team,
            "project": self.project,
            "environment": self.environment,
            "role": self.role,
            "key_id": self.key_sha256.as_deref().map(key_id),
            "previous_key_id": self.previous_key_sha256.as_deref().map(key_id),
            "previous_key_until": self.previous_key_until,
            "disabled": self.disabled,
            "sources": self.sources,
            "spiffe_ids": self.spiffe_ids,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        })
    }
}

/// The first 8 hex digits of a key's digest: enough to tell two keys apart
/// in a listing, far too little to help anyone guess one.
pub fn key_id(sha256_hex: &str) -> String {
    sha256_hex.chars().take(8).collect()
}

/// What a new agent is made of (`POST /v1/agents`, or one imported entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub id: String,
    pub team: String,
    pub project: String,
    pub environment: String,
    pub role: String,
    pub key_sha256: Option<String>,
    pub disabled: bool,
    pub sources: Vec<String>,
    pub spiffe_ids: Vec<String>,
}

/// A policy version's metadata (its text is read on its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// 1, 2, 3...: the store's number for it.
    pub id: i64,
    /// The bundle's own version (12 hex digits of its SHA-256): what audit
    /// lines and `policy_version_info` name.
    pub digest: String,
    /// The file name it was uploaded as.
    pub name: String,
    pub comment: String,
    /// The key id of its signature, when it was signed.
    pub signed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// Which version is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub active_id: Option<i64>,
    /// Bumped by every activation and rollback; they name the one they change.
    pub version: i64,
}

/// One activation (or rollback) of a policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub revision: i64,
    pub policy_id: i64,
    pub action: String,
    pub at: DateTime<Utc>,
    pub actor: String,
}

/// A control API token kept in the store (besides the tokens file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The actor every audit line and history row names.
    pub name: String,
    /// `viewer`, `operator` or `maintainer`.
    pub role: String,
    /// Teams the token is bound to; empty: every team.
    #[serde(default)]
    pub teams: Vec<String>,
    pub token_sha256: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl Token {
    /// The token as the API shows it: never its digest.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "role": self.role,
            "teams": self.teams,
            "token_id": key_id(&self.token_sha256),
            "version": self.version,
            "created_at": self.created_at,
            "created_by": self.created_by,
        })
    }
}

/// Who made a change: the authenticated caller of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub role: String,
}

/// One row of the change history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    /// `agent`, `policy` or `token`.
    pub kind: String,
    pub target: String,
    pub team: Option<String>,
    pub detail: serde_json::Value,
}

/// The three things gateways take from the store, each published as one
/// snapshot under its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Agents,
    Tokens,
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Agents, Kind::Tokens, Kind::Policy];

    /// The key of its snapshot in the NATS KV bucket [`BUCKET`].
    pub fn key(self) -> &'static str {
        match self {
            Kind::Agents => "agents",
            Kind::Tokens => "tokens",
            Kind::Policy => "policy",
        }
    }

    /// The `kind` of its rows in the change history.
    pub fn history_kind(self) -> &'static str {
        match self {
            Kind::Agents => "agent",
            Kind::Tokens => "token",
            Kind::Policy => "policy",
        }
    }

    pub fn from_key(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.key() == key)
    }
}

/// The NATS KV bucket the store's snapshots are published to; every
/// gateway replica watches it.
pub const BUCKET: &str = "clawgress-store";

/// The whole agent registry at one store revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentsSnapshot {
    pub revision: i64,
    pub agents: Vec<Agent>,
}

/// Every store-kept control API token at one store revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensSnapshot {
    pub revision: i64,
    pub tokens: Vec<Token>,
}

/// The policy version in force, with its text, at one store revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub revision: i64,
    pub id: i64,
    pub digest: String,
    pub name: String,
    pub body: String,
}

/// One published snapshot, whichever kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    Agents(AgentsSnapshot),
    Tokens(TokensSnapshot),
    Policy(PolicySnapshot),
}

impl Snapshot {
    pub fn kind(&self) -> Kind {
        match self {
            Snapshot::Agents(_) => Kind::Agents,
            Snapshot::Tokens(_) => Kind::Tokens,
            Snapshot::Policy(_) => Kind::Policy,
        }
    }

    /// The store revision of the last change it contains.
    pub fn revision(&self) -> i64 {
        match self {
            Snapshot::Agents(s) => s.revision,
            Snapshot::Tokens(s) => s.revision,
            Snapshot::Policy(s) => s.revision,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Snapshot::Agents(s) => serde_json::to_vec(s),
            Snapshot::Tokens(s) => serde_json::to_vec(s),
            Snapshot::Policy(s) => serde_json::to_vec(s),
        }
        .unwrap_or_default()
    }

    /// Decodes the value published under `kind`'s key.
    pub fn decode(kind: Kind, bytes: &[u8]) -> Result<Snapshot, String> {
        let decoded = match kind {
            Kind::Agents => serde_json::from_slice(bytes).map(Snapshot::Agents),
            Kind::Tokens => serde_json::from_slice(bytes).map(Snapshot::Tokens),
            Kind::Policy => serde_json::from_slice(bytes).map(Snapshot::Policy),
        };
        decoded.map_err(|e| format!("the {} snapshot cannot be read by this version: {e}", kind.key()))
    }
}
