//! Parses and validates the agents file into an [`AgentRegistry`] and an optional
//! [`JwtVerifier`]. Every problem is reported at the line and column where it was written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter, Spanned};

use super::file_error::AgentsFileError;
use super::jwt::{ClaimNames, JwtKey, JwtSettings, JwtVerifier};
use super::jwt_keys::{self, KeyProblem};
use super::registry::{AgentRegistry, KeyDigest, RegisteredAgent};
use super::schema::{AgentDoc, AgentsFileDoc, ClaimsDoc, JwtDoc, KeyDoc};
use super::sources::{self, SourceEntry, SourceMap};
use super::spiffe::{self, SpiffeEntry, SpiffeMap};
use super::{AuthMethod, Identity};

const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// "Small" leeway: beyond this, clock skew is a bug to fix, not to tolerate.
const MAX_LEEWAY_SECONDS: u64 = 300;

const LAYOUT_HINT: &str = "see policies/agents.example.yaml for the expected layout";
const DIGEST_HINT: &str = "store the hex SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`";
const ALGORITHMS: &str = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

pub(super) struct Compiled {
    pub registry: AgentRegistry,
    pub jwt: Option<JwtVerifier>,
    pub sources: SourceMap,
    pub spiffe: SpiffeMap,
}

pub(super) fn compile(text: &str, origin: &str, base_dir: &Path) -> Result<Compiled, AgentsFileError> {
    let at = Reporter { origin };
    let options = serde_saphyr::options! { with_snippet: false };
    let doc: AgentsFileDoc = serde_saphyr::from_str_with_options(text, options).map_err(|e| at.yaml(&e))?;

    let (registry, sources, spiffe) = compile_agents(&at, doc.agents)?;
    let jwt = match doc.jwt {
        Some(jwt) => Some(compile_jwt(&at, base_dir, jwt.value)?),
        None => None,
    };
    if registry.len() == 0 && jwt.is_none() {
        return Err(AgentsFileError::unlocated(
            origin,
            "no agents and no `jwt` section: nobody could ever authenticate",
        )
        .with_hint("list agents under `agents:` or configure `jwt:`; ".to_owned() + LAYOUT_HINT));
    }
    Ok(Compiled {
        registry,
        jwt,
        sources,
        spiffe,
    })
}

/// Attaches the origin to located messages.
pub(super) struct Reporter<'a> {
    pub origin: &'a str,
}

impl Reporter<'_> {
    fn error(&self, location: Location, message: impl Into<String>) -> AgentsFileError {
        AgentsFileError::at(self.origin, location, message)
    }

    pub(super) fn yaml(&self, error: &serde_saphyr::Error) -> AgentsFileError {
        let location = error.location().unwrap_or(Location::UNKNOWN);
        match error {
            // Refused by `deny_unknown_fields` like any typo, but these deserve a pointed hint.
            // The value is never echoed: it is a secret.
            serde_saphyr::Error::SerdeUnknownField { field, .. } if field == "api_key" => {
                return self
                    .error(
                        location,
                        "inline `api_key` is not allowed: keys are never stored in clear",
                    )
                    .with_hint(format!("replace it with `api_key_sha256`; {DIGEST_HINT}"));
            }
            serde_saphyr::Error::SerdeUnknownField { field, .. } if field == "secret" => {
                return self
                    .error(
                        location,
                        "inline `secret` is not allowed: secrets never live in the agents file",
                    )
                    .with_hint("use `secret_file: /path/to/secret` or `secret_env: VARIABLE_NAME`");
            }
            serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
                // The library's own text suggests a parser option, which is advice for developers.
                return self
                    .error(location, format!("duplicate key `{}`", printable(key)))
                    .with_hint("each key may appear once per mapping");
            }
            _ => {}
        }
        // The plain message, without the library's own "at line X" suffix: we print the
        // position in `file:line:column` form ourselves.
        let message = printable(&DefaultMessageFormatter.format_message(error));
        self.error(location, message).with_hint(LAYOUT_HINT)
    }

    fn key_problem(&self, location: Location, problem: KeyProblem) -> AgentsFileError {
        let error = self.error(location, problem.message);
        match problem.hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }
}

pub(super) fn compile_agents(
    at: &Reporter<'_>,
    agents: Vec<Spanned<AgentDoc>>,
) -> Result<(AgentRegistry, SourceMap, SpiffeMap), AgentsFileError> {
    let mut registry = AgentRegistry::default();
    let mut source_entries = Vec::new();
    let mut spiffe_entries = Vec::new();
    let located = |(location, message, hint): sources::SourceProblem| at.error(location, message).with_hint(hint);
    let mut first_seen: HashMap<String, Location> = HashMap::new();
    let mut digest_owner: HashMap<KeyDigest, String> = HashMap::new();
    for agent in agents {
        let agent = agent.value;
        check_agent_id(at, &agent.id)?;
        for (field, value) in [
            ("team", &agent.team),
            ("project", &agent.project),
            ("environment", &agent.environment),
            ("role", &agent.role),
        ] {
            check_label(at, field, value)?;
        }
        if let Some(first) = first_seen.get(&agent.id.value) {
            return Err(at
                .error(
                    agent.id.referenced,
                    format!(
                        "duplicate agent id `{}` (first defined at line {})",
                        agent.id.value,
                        first.line()
                    ),
                )
                .with_hint("agent ids must be unique; rename or remove one of the entries"));
        }
        first_seen.insert(agent.id.value.clone(), agent.id.referenced);

        let key_digest = match &agent.api_key_sha256 {
            Some(digest) => {
                let parsed = parse_digest(at, digest)?;
                if let Some(owner) = digest_owner.get(&parsed) {
                    return Err(at
                        .error(
                            digest.referenced,
                            format!(
                                "agent `{}` has the same api_key_sha256 as agent `{owner}`",
                                agent.id.value
                            ),
                        )
                        .with_hint("give every agent its own key, so that a leaked key identifies one agent"));
                }
                digest_owner.insert(parsed, agent.id.value.clone());
                Some(parsed)
            }
            None => None,
        };
        let agent_sources = agent
            .sources
            .iter()
            .map(|value| sources::parse(value).map_err(located))
            .collect::<Result<Vec<_>, _>>()?;
        let agent_id: Arc<str> = Arc::from(agent.id.value.as_str());
        for (net, value) in agent_sources.iter().zip(&agent.sources) {
            source_entries.push(SourceEntry {
                net: *net,
                agent: agent_id.clone(),
                at: value.referenced,
            });
        }
        for value in &agent.spiffe_ids {
            spiffe_entries.push(SpiffeEntry {
                id: spiffe::parse(value).map_err(located)?,
                agent: agent_id.clone(),
                at: value.referenced,
            });
        }
        let identity = Identity {
            agent_id: Arc::from(agent.id.value),
            team: Arc::from(agent.team.value),
            project: Arc::from(agent.project.value),
            environment: Arc::from(agent.environment.value),
            role: Arc::from(agent.role.value),
            method: AuthMethod::ApiKey,
            session_id: None,
        };
        registry.insert(RegisteredAgent {
            previous_key: None,
            cert_identity: Arc::new(Identity {
                method: AuthMethod::Certificate,
                ..identity.clone()
            }),
            identity: Arc::new(identity),
            key_digest,
            disabled: agent.disabled,
            sources: agent_sources,
            has_spiffe_ids: !agent.spiffe_ids.is_empty(),
        });
    }
    let sources = SourceMap::build(source_entries).map_err(located)?;
    let spiffe = SpiffeMap::build(spiffe_entries).map_err(located)?;
    Ok((registry, sources, spiffe))
}

fn check_agent_id(at: &Reporter<'_>, id: &Spanned<String>) -> Result<(), AgentsFileError> {
    check_label(at, "id", id)?;
    if id.value.contains(':') {
        return Err(at
            .error(id.referenced, "agent id must not contain ':'")
            .with_hint("Basic credentials are `agent_id:api_key`, split at the first ':'"));
    }
    if id.value.chars().any(char::is_whitespace) {
        return Err(at.error(id.referenced, "agent id must not contain whitespace"));
    }
    Ok(())
}

/// Identity fields end up in logs, audit lines and policy selectors: no blanks, no control characters.
fn check_label(at: &Reporter<'_>, field: &str, value: &Spanned<String>) -> Result<(), AgentsFileError> {
    if value.value.trim().is_empty() {
        return Err(at.error(value.referenced, format!("`{field}` must not be empty")));
    }
    if value.value.chars().any(char::is_control) || value.value.trim() != value.value {
        return Err(at.error(
            value.referenced,
            format!("`{field}` must not contain control characters or surrounding spaces"),
        ));
    }
    Ok(())
}

fn parse_digest(at: &Reporter<'_>, digest: &Spanned<String>) -> Result<KeyDigest, AgentsFileError> {
    let mut parsed = [0u8; 32];
    // The length is reported, never the value: someone may have pasted the key itself here.
    if digest.value.len() != 64 || hex::decode_to_slice(&digest.value, &mut parsed).is_err() {
        return Err(at
            .error(
                digest.referenced,
                format!(
                    "api_key_sha256 must be 64 hex characters (a SHA-256 digest); got {} characters",
                    digest.value.chars().count()
                ),
            )
            .with_hint(DIGEST_HINT));
    }
    Ok(parsed)
}

fn compile_jwt(at: &Reporter<'_>, base_dir: &Path, doc: JwtDoc) -> Result<JwtVerifier, AgentsFileError> {
    check_label(at, "issuer", &doc.issuer)?;
    check_label(at, "audience", &doc.audience)?;
    let leeway_seconds = match &doc.leeway_seconds {
        Some(leeway) if leeway.value > MAX_LEEWAY_SECONDS => {
            return Err(at
                .error(
                    leeway.referenced,
                    format!(
                        "leeway_seconds is {}; at most {MAX_LEEWAY_SECONDS} is allowed",
                        leeway.value
                    ),
                )
                .with_hint("fix clock skew with NTP (chrony) instead of widening the leeway"));
        }
        Some(leeway) => leeway.value,
        None => DEFAULT_LEEWAY_SECONDS,
    };
    let claims = compile_claims(at, doc.claims)?;
    if doc.keys.value.is_empty() {
        return Err(at
            .error(doc.keys.referenced, "`jwt.keys` is empty: no token could ever verify")
            .with_hint("add a key, or remove the `jwt` section to accept only API keys"));
    }
    let mut keys = Vec::with_capacity(doc.keys.value.len());
    let mut kids: HashMap<String, Location> = HashMap::new();
    for key in doc.keys.value {
        let entry = compile_key(at, base_dir, key)?;
        if let Some((kid, location)) = &entry.1 {
            if let Some(first) = kids.get(kid) {
                return Err(at
                    .error(
                        *location,
                        format!("duplicate kid `{kid}` (first defined at line {})", first.line()),
                    )
                    .with_hint("every key needs its own kid"));
            }
            kids.insert(kid.clone(), *location);
        }
        keys.push(entry.0);
    }
    let settings = JwtSettings {
        issuer: doc.issuer.value,
        audience: doc.audience.value,
        leeway_seconds,
        require_registered_agent: doc.require_registered_agent,
        claims,
    };
    Ok(JwtVerifier::new(settings, keys))
}

fn compile_claims(at: &Reporter<'_>, doc: Option<ClaimsDoc>) -> Result<ClaimNames, AgentsFileError> {
    let doc = doc.unwrap_or(ClaimsDoc {
        agent: None,
        team: None,
        project: None,
        environment: None,
        role: None,
    });
    let name = |field: &str, configured: Option<Spanned<String>>, default: &str| -> Result<Arc<str>, AgentsFileError> {
        match configured {
            Some(value) => {
                check_label(at, field, &value)?;
                Ok(Arc::from(value.value))
            }
            None => Ok(Arc::from(default)),
        }
    };
    Ok(ClaimNames {
        agent: name("claims.agent", doc.agent, "sub")?,
        team: name("claims.team", doc.team, "team")?,
        project: name("claims.project", doc.project, "project")?,
        environment: name("claims.environment", doc.environment, "environment")?,
        role: name("claims.role", doc.role, "role")?,
    })
}

type CompiledKey = (JwtKey, Option<(String, Location)>);

fn compile_key(at: &Reporter<'_>, base_dir: &Path, key: Spanned<KeyDoc>) -> Result<CompiledKey, AgentsFileError> {
    let entry = key.referenced;
    let key = key.value;
    let kid = match key.kid {
        Some(kid) => {
            check_label(at, "kid", &kid)?;
            Some((kid.value, kid.referenced))
        }
        None => None,
    };
    let algorithm = parse_algorithm(at, &key.algorithm)?;
    let decoding = if algorithm.family() == AlgorithmFamily::Hmac {
        if let Some(public) = &key.public_key_file {
            return Err(at
                .error(
                    public.referenced,
                    format!("{algorithm:?} uses a shared secret, not a public key"),
                )
                .with_hint("use `secret_file` or `secret_env` for HS* keys"));
        }
        match (&key.secret_file, &key.secret_env) {
            (Some(file), None) => jwt_keys::hmac_from_file(algorithm, &jwt_keys::resolve(base_dir, &file.value))
                .map_err(|p| at.key_problem(file.referenced, p))?,
            (None, Some(variable)) => {
                check_label(at, "secret_env", variable)?;
                jwt_keys::hmac_from_env(algorithm, &variable.value)
                    .map_err(|p| at.key_problem(variable.referenced, p))?
            }
            (Some(_), Some(variable)) => {
                return Err(at
                    .error(
                        variable.referenced,
                        "give either `secret_file` or `secret_env`, not both",
                    )
                    .with_hint("keep one source of truth for the secret"));
            }
            (None, None) => {
                return Err(at
                    .error(entry, format!("{algorithm:?} key needs `secret_file` or `secret_env`"))
                    .with_hint("the secret itself is never written in the agents file"));
            }
        }
    } else {
        if let Some(secret) = key.secret_file.as_ref().or(key.secret_env.as_ref()) {
            return Err(at
                .error(
                    secret.referenced,
                    format!("{algorithm:?} verifies with a public key, not a shared secret"),
                )
                .with_hint("use `public_key_file` with the PEM public key"));
        }
        let Some(file) = &key.public_key_file else {
            return Err(at
                .error(entry, format!("{algorithm:?} key needs `public_key_file`"))
                .with_hint("a PEM file with `-----BEGIN PUBLIC KEY-----`; relative to the agents file"));
        };
        jwt_keys::public_key_from_file(algorithm, &jwt_keys::resolve(base_dir, &file.value))
            .map_err(|p| at.key_problem(file.referenced, p))?
    };
    let jwt_key = JwtKey {
        kid: kid.as_ref().map(|(kid, _)| kid.clone()),
        algorithm,
        key: decoding,
    };
    Ok((jwt_key, kid))
}

fn parse_algorithm(at: &Reporter<'_>, algorithm: &Spanned<String>) -> Result<Algorithm, AgentsFileError> {
    let parsed = match algorithm.value.as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            let shown: String = other.chars().take(32).filter(|c| !c.is_control()).collect();
            return Err(at
                .error(algorithm.referenced, format!("unknown algorithm `{shown}`"))
                .with_hint(format!(
                    "use one of {ALGORITHMS} (names are case-sensitive; `none` is never accepted)"
                )));
        }
    };
    Ok(parsed)
}

/// Messages quote text from the file; keep terminal control characters out of them.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}
