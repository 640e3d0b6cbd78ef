//! Who may use the control API: bearer tokens bound to roles, and
//! optionally to teams, loaded from the `--admin-tokens` file and from the
//! control store's `tokens` snapshot (`clawgress control tokens create`).
//! Tokens are stored as SHA-256 digests, never in clear, and compared in
//! constant time.

use std::collections::HashMap;
use std::path::Path;

use http::HeaderMap;
use serde::Deserialize;
use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter, Spanned};
use sha2::{Digest, Sha256};

const LAYOUT_HINT: &str = "write `tokens:` with entries {name, role: viewer|operator|maintainer, token_sha256, teams: [optional]}; \
     see policies/admin-tokens.example.yaml";

/// What a token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: the effective allowlist, requests, audit export; may file an
    /// access request.
    Viewer,
    /// Adds and removes temporary allowlist entries.
    Operator,
    /// Approves requests, emergency-blocks and restores.
    Maintainer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Maintainer => "maintainer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "maintainer" => Some(Role::Maintainer),
            _ => None,
        }
    }
}

/// The authenticated caller of an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    /// The teams the token is bound to; empty: every team. A team-scoped
    /// caller sees and changes only its teams' agents, temporary allows and
    /// requests, and nothing that applies to everyone.
    pub teams: Vec<String>,
}

impl Actor {
    /// Whether the caller may see and change what belongs to `team`.
    pub fn covers(&self, team: &str) -> bool {
        self.teams.is_empty() || self.teams.iter().any(|t| t == team)
    }

    /// Bound to some teams rather than all.
    pub fn is_team_scoped(&self) -> bool {
        !self.teams.is_empty()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensDoc {
    tokens: Vec<Spanned<TokenDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenDoc {
    name: String,
    role: Role,
    token_sha256: Spanned<String>,
    /// Teams the token is bound to; absent: every team.
    #[serde(default)]
    teams: Vec<String>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No control API tokens are configured at all.
    NotConfigured,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that matches nobody.
    Unknown,
    /// A known token whose role is too low.
    Forbidden { needed: Role, has: Role, name: String },
}

#[derive(Debug, Default)]
pub struct AdminTokens {
    by_digest: HashMap<[u8; 32], Actor>,
    /// Tokens from the control store; replaced whole by each snapshot.
    from_store: arc_swap::ArcSwap<HashMap<[u8; 32], Actor>>,
}

impl AdminTokens {
    /// Loads a tokens file; errors name `file:line:column` and what to write.
    pub fn load(path: &Path) -> Result<AdminTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the admin tokens file {}: {e}; create it (see policies/admin-tokens.example.yaml) or drop --admin-tokens",
                path.display()
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<AdminTokens, String> {
        let at = |location: Location, message: String, hint: &str| {
            format!(
                "{origin}:{}:{}: {message}\n  hint: {hint}",
                location.line(),
                location.column()
            )
        };
        let options = serde_saphyr::options! { with_snippet: false };
        let doc: TokensDoc = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let location = e.location().unwrap_or(Location::UNKNOWN);
            at(
                location,
                DefaultMessageFormatter.format_message(&e).into_owned(),
                LAYOUT_HINT,
            )
        })?;
        let mut tokens = AdminTokens::default();
        for entry in doc.tokens {
            let token = entry.value;
            let mut digest = [0u8; 32];
            let written = &token.token_sha256.value;
            // The length is reported, never the value: it may be the token itself.
            if written.len() != 64 || hex::decode_to_slice(written, &mut digest).is_err() {
                return Err(at(
                    token.token_sha256.referenced,
                    format!(
                        "token_sha256 must be 64 hex characters; got {} characters",
                        written.chars().count()
                    ),
                    "store the hex SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`",
                ));
            }
            if token.name.trim().is_empty() {
                return Err(at(
                    entry.referenced,
                    "a token needs a `name`: it is the actor in every audit record".to_string(),
                    LAYOUT_HINT,
                ));
            }
            let actor = Actor {
                name: token.name,
                role: token.role,
                teams: token.teams,
            };
            if let Some(previous) = tokens.by_digest.insert(digest, actor) {
                return Err(at(
                    entry.referenced,
                    format!("this token digest is already used by '{}'", previous.name),
                    "give every actor its own token, so audit records name the right person",
                ));
            }
        }
        Ok(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty() && self.from_store.load().is_empty()
    }

    /// Whether the tokens file names an actor `name` (a store token may not
    /// take the same name: audit lines would not tell them apart).
    pub fn file_names(&self, name: &str) -> bool {
        self.by_digest.values().any(|actor| actor.name == name)
    }

    /// Puts the control store's tokens in force (a `tokens` snapshot). A
    /// token with an unknown role or a malformed digest is skipped, with a
    /// log line: it can never widen anyone's rights.
    pub fn set_store_tokens(&self, tokens: &[clawgress_control::Token]) {
        let mut map = HashMap::with_capacity(tokens.len());
        for token in tokens {
            let mut digest = [0u8; 32];
            let (Some(role), Ok(())) = (
                Role::parse(&token.role),
                hex::decode_to_slice(&token.token_sha256, &mut digest),
            ) else {
                tracing::error!(name = %token.name, "a store token with an unknown role or digest is ignored");
                continue;
            };
            // The file's tokens win a digest both hold.
            if self.by_digest.contains_key(&digest) {
                continue;
            }
            map.insert(
                digest,
                Actor {
                    name: token.name.clone(),
                    role,
                    teams: token.teams.clone(),
                },
            );
        }
        self.from_store.store(std::sync::Arc::new(map));
    }

    /// The caller, if its bearer token is known and its role reaches `needed`.
    pub fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Actor, AuthFailure> {
        let from_store = self.from_store.load();
        if self.by_digest.is_empty() && from_store.is_empty() {
            return Err(AuthFailure::NotConfigured);
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthFailure::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A hash lookup compares digests of the token, not the token: timing
        // reveals nothing about a secret the caller does not already hold.
        let actor = self
            .by_digest
            .get(&digest)
            .or_else(|| from_store.get(&digest))
            .ok_or(AuthFailure::Unknown)?;
        if actor.role < needed {
            return Err(AuthFailure::Forbidden {
                needed,
                has: actor.role,
                name: actor.name.clone(),
            });
        }
        Ok(actor.clone())
    }
}
