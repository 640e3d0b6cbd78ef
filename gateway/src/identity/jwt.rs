//! `Bearer <JWT>` authentication: key selection, signature and claim checks, and the mapping
//! of claims onto an [`Identity`].

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::clock::Clock;
use super::jwt_cache::{DEFAULT_CAPACITY, TokenCache, TokenFingerprint};
use super::registry::AgentRegistry;
use super::{AuthMethod, Identity, IdentityError};

/// Claim values end up in logs, audit lines and policy lookups; keep them short.
const MAX_CLAIM_LEN: usize = 256;

/// The session claim names we recognise, in order of preference.
const SESSION_CLAIMS: [&str; 2] = ["sid", "session_id"];

/// Which token claims carry which identity fields (configurable in the agents file).
#[derive(Debug, Clone)]
pub(super) struct ClaimNames {
    pub agent: Arc<str>,
    pub team: Arc<str>,
    pub project: Arc<str>,
    pub environment: Arc<str>,
    pub role: Arc<str>,
}

#[derive(Debug)]
pub(super) struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway_seconds: u64,
    pub require_registered_agent: bool,
    pub claims: ClaimNames,
}

/// One verification key from the agents file.
pub(super) struct JwtKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

struct PreparedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// Pinned to this key's single algorithm: the token header never chooses how a key is
    /// used, which is what defeats RS256-to-HS256 confusion.
    validation: Validation,
}

pub(super) struct JwtVerifier {
    settings: JwtSettings,
    keys: Vec<PreparedKey>,
    cache: TokenCache,
    clock: Clock,
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings, keys: Vec<JwtKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|k| PreparedKey {
                validation: validation_for(&settings, k.algorithm),
                kid: k.kid,
                algorithm: k.algorithm,
                key: k.key,
            })
            .collect();
        Self {
            settings,
            keys,
            cache: TokenCache::new(DEFAULT_CAPACITY),
            clock: Clock::System,
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    #[cfg(test)]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    #[cfg(test)]
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn authenticate(&self, registry: &AgentRegistry, token: &str) -> Result<Arc<Identity>, IdentityError> {
        let now = self.clock.now();
        let fingerprint: TokenFingerprint = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cache.get(&fingerprint, now) {
            return Ok(identity);
        }
        let claims = self.verify_signature_and_audience(token)?;
        let expires_at = check_validity_window(&claims, now, self.settings.leeway_seconds)?;
        let identity = Arc::new(self.bind(registry, &claims)?);
        self.cache.insert(fingerprint, identity.clone(), expires_at, now);
        Ok(identity)
    }

    fn verify_signature_and_audience(&self, token: &str) -> Result<Map<String, Value>, IdentityError> {
        // `alg: none` and unknown algorithms fail here: they are not `Algorithm` values.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| IdentityError::InvalidToken("malformed token header"))?;
        let mut first_error = None;
        for key in self.candidate_keys(header.kid.as_deref(), header.alg)? {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(data.claims),
                // Without a kid several keys may be tried; a failure other than "signature
                // does not match" is the more useful one to report.
                Err(e) => {
                    let error = map_decode_error(e.kind());
                    let is_signature = matches!(e.kind(), ErrorKind::InvalidSignature);
                    if first_error.is_none() || !is_signature {
                        first_error = Some(error);
                    }
                }
            }
        }
        Err(first_error.unwrap_or(IdentityError::UnknownSigningKey))
    }

    /// A token with a `kid` is checked with the keys carrying that kid (or, when none does,
    /// with the keys configured without a kid); a token without one with every key. Only keys
    /// configured for the header's `alg` are ever used.
    fn candidate_keys(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<&PreparedKey>, IdentityError> {
        let mut pool: Vec<&PreparedKey> = match kid {
            Some(kid) => self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => self.keys.iter().collect(),
        };
        let named_by_kid = kid.is_some() && !pool.is_empty();
        if kid.is_some() && pool.is_empty() {
            pool = self.keys.iter().filter(|k| k.kid.is_none()).collect();
        }
        pool.retain(|k| k.algorithm == alg);
        if pool.is_empty() {
            return Err(if named_by_kid {
                IdentityError::InvalidToken("the token's alg does not match its key")
            } else {
                IdentityError::UnknownSigningKey
            });
        }
        Ok(pool)
    }

    fn bind(&self, registry: &AgentRegistry, claims: &Map<String, Value>) -> Result<Identity, IdentityError> {
        let names = &self.settings.claims;
        let agent_id =
            string_claim(claims, &names.agent)?.ok_or_else(|| IdentityError::MissingClaim(names.agent.clone()))?;
        let session_id = session_claim(claims)?;
        let attributes = [
            (&names.team, string_claim(claims, &names.team)?),
            (&names.project, string_claim(claims, &names.project)?),
            (&names.environment, string_claim(claims, &names.environment)?),
            (&names.role, string_claim(claims, &names.role)?),
        ];

        if let Some(agent) = registry.get(agent_id) {
            if agent.disabled {
                return Err(IdentityError::Disabled);
            }
            let known = &agent.identity;
            let authoritative = [&known.team, &known.project, &known.environment, &known.role];
            for ((claim_name, claimed), registered) in attributes.iter().zip(authoritative) {
                if claimed.is_some_and(|value| value != &**registered) {
                    return Err(IdentityError::ClaimConflict((*claim_name).clone()));
                }
            }
            return Ok(Identity {
                method: AuthMethod::Jwt,
                session_id,
                ..Identity::clone(known)
            });
        }

        if self.settings.require_registered_agent {
            return Err(IdentityError::UnknownAgent);
        }
        let [team, project, environment, role] = attributes.map(|(name, value)| {
            value
                .map(Arc::<str>::from)
                .ok_or_else(|| IdentityError::MissingClaim(name.clone()))
        });
        Ok(Identity {
            agent_id: Arc::from(agent_id),
            team: team?,
            project: project?,
            environment: environment?,
            role: role?,
            method: AuthMethod::Jwt,
            session_id,
        })
    }
}

fn validation_for(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    // exp/nbf are checked by `check_validity_window` against our own clock (testable, and
    // strict about `exp` being present); the library checks signature, iss and aud.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["iss", "aud"]);
    validation.set_issuer(&[settings.issuer.as_str()]);
    validation.set_audience(&[settings.audience.as_str()]);
    validation
}

fn map_decode_error(kind: &ErrorKind) -> IdentityError {
    match kind {
        ErrorKind::InvalidSignature => IdentityError::InvalidToken("the signature does not verify"),
        ErrorKind::InvalidAlgorithm => IdentityError::InvalidToken("the token's alg does not match its key"),
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => IdentityError::MissingClaim(Arc::from(claim.as_str())),
        ErrorKind::ExpiredSignature => IdentityError::TokenExpired,
        ErrorKind::ImmatureSignature => IdentityError::TokenNotYetValid,
        _ => IdentityError::InvalidToken("malformed token"),
    }
}

/// Enforces `exp` (required) and `nbf` (optional) with the configured leeway and returns `exp`.
/// RFC 7519: the token is valid while `now < exp` and from `nbf` on.
fn check_validity_window(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<u64, IdentityError> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| IdentityError::MissingClaim(Arc::from("exp")))?;
    if now >= exp.saturating_add(leeway) {
        return Err(IdentityError::TokenExpired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(IdentityError::TokenNotYetValid);
    }
    Ok(exp)
}

fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, IdentityError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(IdentityError::InvalidClaim(Arc::from(name))),
        Some(_) => Err(IdentityError::InvalidClaim(Arc::from(name))),
    }
}

/// A claim that must be a short printable string when present.
fn string_claim<'c>(claims: &'c Map<String, Value>, name: &Arc<str>) -> Result<Option<&'c str>, IdentityError> {
    match claims.get(&**name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) if is_clean_claim(value) => Ok(Some(value)),
        Some(_) => Err(IdentityError::InvalidClaim(name.clone())),
    }
}

fn session_claim(claims: &Map<String, Value>) -> Result<Option<Arc<str>>, IdentityError> {
    for name in SESSION_CLAIMS {
        match claims.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(value)) if is_clean_claim(value) => {
                return Ok(Some(Arc::from(value.as_str())));
            }
            Some(_) => return Err(IdentityError::InvalidClaim(Arc::from(name))),
        }
    }
    Ok(None)
}

fn is_clean_claim(value: &str) -> bool {
    !value.trim().is_empty() && value.len() <= MAX_CLAIM_LEN && !value.chars().any(char::is_control)
}
