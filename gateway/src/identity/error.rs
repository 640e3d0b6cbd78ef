use std::sync::Arc;

/// Why a request could not be tied to an agent. The gateway answers `407`, except for the
/// source checks ([`is_forbidden`](IdentityError::is_forbidden)), which are `403`.
///
/// No variant carries anything taken from the presented key or token (only fixed text and
/// claim *names* from the agents file), so `Display` and `Debug` are safe to log and to send
/// back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no Proxy-Authorization credentials were presented")]
    Missing,
    #[error("malformed Proxy-Authorization credentials: {0}")]
    Malformed(&'static str),
    #[error("unsupported Proxy-Authorization scheme; use Basic or Bearer")]
    UnsupportedScheme,
    #[error("unknown agent")]
    UnknownAgent,
    #[error("the API key does not match the agent")]
    BadApiKey,
    #[error("the agent is disabled")]
    Disabled,
    #[error("bearer tokens are not accepted: the agents file has no `jwt` section")]
    JwtNotConfigured,
    /// Structure, algorithm or signature problems; the text is fixed, never token material.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid yet (nbf)")]
    TokenNotYetValid,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("no configured key matches the token's kid and alg")]
    UnknownSigningKey,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(Arc<str>),
    #[error("the token's claim `{0}` must be a non-empty string of printable characters")]
    InvalidClaim(Arc<str>),
    /// A registered agent's team/project/environment/role are authoritative.
    #[error("the token's claim `{0}` disagrees with the agent registry")]
    ClaimConflict(Arc<str>),
    /// A redirected (transparent) connection from an address no agent's
    /// `sources` holds.
    #[error("no agent's sources hold this address")]
    UnknownSource,
    /// The credential is good, but the agent's `sources` do not hold the
    /// address it came from.
    #[error("this agent may not connect from this address (its `sources` in the agents file)")]
    SourceMismatch,
}

impl IdentityError {
    /// Stable machine-readable code for denial bodies, audit lines and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Missing => "missing_credentials",
            IdentityError::Malformed(_) => "malformed_credentials",
            IdentityError::UnsupportedScheme => "unsupported_scheme",
            IdentityError::UnknownAgent => "unknown_agent",
            IdentityError::BadApiKey => "bad_api_key",
            IdentityError::Disabled => "agent_disabled",
            IdentityError::JwtNotConfigured => "jwt_not_configured",
            IdentityError::InvalidToken(_) => "invalid_token",
            IdentityError::TokenExpired => "token_expired",
            IdentityError::TokenNotYetValid => "token_not_yet_valid",
            IdentityError::WrongIssuer => "wrong_issuer",
            IdentityError::WrongAudience => "wrong_audience",
            IdentityError::UnknownSigningKey => "unknown_signing_key",
            IdentityError::MissingClaim(_) => "missing_claim",
            IdentityError::InvalidClaim(_) => "invalid_claim",
            IdentityError::ClaimConflict(_) => "claim_conflict",
            IdentityError::UnknownSource => "unknown_source",
            IdentityError::SourceMismatch => "source_mismatch",
        }
    }

    /// The agent is known (or the address is), and not allowed: `403`,
    /// not a request for credentials.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, IdentityError::UnknownSource | IdentityError::SourceMismatch)
    }
}
