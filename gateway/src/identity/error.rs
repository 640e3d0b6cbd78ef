use std::sync::Arc;

/// Why a request could not be tied to an agent. The gateway answers `407`, except for the
/// source and certificate checks ([`is_forbidden`](IdentityError::is_forbidden)), which are `403`.
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
    /// A trusted client certificate (mTLS listener) that names no agent: its
    /// SPIFFE ID is in no agent's `spiffe_ids`, or, without one, its CN is
    /// no agent id (or the agent lists `spiffe_ids`).
    #[error("the client certificate names no agent")]
    UnknownCertificate,
    /// More than one `spiffe://` URI SAN: an X.509-SVID carries exactly one.
    #[error("the client certificate carries more than one SPIFFE ID")]
    AmbiguousCertificate,
    /// `Proxy-Authorization` on the mTLS listener names another agent than
    /// the client certificate.
    #[error("Proxy-Authorization names another agent than the client certificate")]
    CertificateMismatch,
    /// The client certificate was refused: in the handshake, or on a later
    /// request after the CRL or client CA changed.
    #[error("the client certificate is refused: {0}")]
    ClientCertificate(CertificateProblem),
}

/// Why a client certificate is refused (mTLS listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateProblem {
    /// The client sent no certificate.
    Missing,
    /// Not issued by a CA in `--client-ca`.
    Untrusted,
    Expired,
    NotYetValid,
    /// Listed in the CRL (`--crl`).
    Revoked,
    /// No CRL in `--crl` covers its issuer.
    RevocationUnknown,
    /// Malformed, or not for client authentication (key usage, EKU, ...).
    Invalid,
}

impl CertificateProblem {
    pub const ALL: [CertificateProblem; 7] = [
        Self::Missing,
        Self::Untrusted,
        Self::Expired,
        Self::NotYetValid,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::Invalid,
    ];

    /// The stable reason code (audit lines, metrics, problem bodies).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "client_certificate_missing",
            Self::Untrusted => "client_certificate_untrusted",
            Self::Expired => "client_certificate_expired",
            Self::NotYetValid => "client_certificate_not_yet_valid",
            Self::Revoked => "client_certificate_revoked",
            Self::RevocationUnknown => "client_certificate_revocation_unknown",
            Self::Invalid => "client_certificate_invalid",
        }
    }
}

impl std::fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "no certificate was presented",
            Self::Untrusted => "it was not issued by a trusted client CA",
            Self::Expired => "it has expired",
            Self::NotYetValid => "it is not valid yet",
            Self::Revoked => "it is revoked",
            Self::RevocationUnknown => "no CRL covers its issuer",
            Self::Invalid => "it is malformed or not for client authentication",
        })
    }
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
            IdentityError::UnknownCertificate => "unknown_certificate",
            IdentityError::AmbiguousCertificate => "ambiguous_certificate",
            IdentityError::CertificateMismatch => "certificate_mismatch",
            IdentityError::ClientCertificate(problem) => problem.reason(),
        }
    }

    /// The agent is known (or the address or certificate is), and not
    /// allowed: `403`, not a request for credentials.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            IdentityError::UnknownSource
                | IdentityError::SourceMismatch
                | IdentityError::UnknownCertificate
                | IdentityError::AmbiguousCertificate
                | IdentityError::CertificateMismatch
                | IdentityError::ClientCertificate(_)
        )
    }

    /// A refusal that came from the client certificate (mTLS listener).
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            IdentityError::UnknownCertificate
                | IdentityError::AmbiguousCertificate
                | IdentityError::CertificateMismatch
                | IdentityError::ClientCertificate(_)
        )
    }
}
