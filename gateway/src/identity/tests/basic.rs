//! `Proxy-Authorization: Basic` parsing and API-key checks.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::HeaderValue;

use super::support::*;
use crate::identity::{AuthMethod, IdentityError};

fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header")
}

#[test]
fn valid_basic_credentials_map_to_the_registered_identity() {
    let f = fixture("");
    let identity = f.identify(&basic("scraper-001", SCRAPER_KEY)).expect("identified");
    assert_eq!(&*identity.agent_id, "scraper-001");
    assert_eq!(&*identity.team, "data");
    assert_eq!(&*identity.project, "crawl");
    assert_eq!(&*identity.environment, "dev");
    assert_eq!(&*identity.role, "scraper");
    assert_eq!(identity.method, AuthMethod::ApiKey);
    assert_eq!(identity.session_id, None);
}

#[test]
fn api_key_path_returns_the_prebuilt_identity() {
    let f = fixture("");
    let first = f.identify(&basic("scraper-001", SCRAPER_KEY)).expect("first");
    let second = f.identify(&basic("scraper-001", SCRAPER_KEY)).expect("second");
    assert!(
        Arc::ptr_eq(&first, &second),
        "each request must reuse the registry's Arc"
    );
}

#[test]
fn scheme_is_case_insensitive_and_blanks_are_tolerated() {
    let f = fixture("");
    let encoded = STANDARD.encode(format!("scraper-001:{SCRAPER_KEY}"));
    for text in [
        format!("basic {encoded}"),
        format!("BASIC {encoded}"),
        format!("bAsIc {encoded}"),
        format!("  Basic    {encoded}   "),
        format!("Basic\t{encoded}"),
    ] {
        let identity = f.identify(&header(&text)).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(&*identity.agent_id, "scraper-001");
    }
}

#[test]
fn unpadded_base64_is_accepted() {
    let f = fixture("");
    let credentials = format!("agent-builder-001:{BUILDER_KEY}");
    assert_ne!(credentials.len() % 3, 0, "the padded form must end with '='");
    for encoded in [STANDARD.encode(&credentials), STANDARD_NO_PAD.encode(&credentials)] {
        let identity = f
            .identify(&header(&format!("Basic {encoded}")))
            .unwrap_or_else(|e| panic!("{encoded}: {e}"));
        assert_eq!(&*identity.agent_id, "agent-builder-001");
    }
}

#[test]
fn the_key_may_contain_colons_but_the_split_is_at_the_first() {
    let f = fixture("");
    let identity = f
        .identify(&basic("agent-builder-001", BUILDER_KEY))
        .expect("identified");
    assert_eq!(&*identity.agent_id, "agent-builder-001");
    assert_eq!(&*identity.role, "ai-agent");
    // Splitting at the last ':' would have produced id "agent-builder-001:agent:builder".
    assert_eq!(
        f.reason(&basic("agent-builder-001", "agent:builder:other")),
        "bad_api_key"
    );
}

#[test]
fn wrong_key_unknown_agent_and_disabled_agent_are_distinguished() {
    let f = fixture("");
    assert_eq!(f.reason(&basic("scraper-001", "not-the-key")), "bad_api_key");
    assert_eq!(f.reason(&basic("scraper-001", BUILDER_KEY)), "bad_api_key");
    assert_eq!(f.reason(&basic("nobody-001", SCRAPER_KEY)), "unknown_agent");
    assert_eq!(f.reason(&basic("retired-001", RETIRED_KEY)), "agent_disabled");
    // A disabled agent is only revealed to whoever holds its key.
    assert_eq!(f.reason(&basic("retired-001", "guess")), "bad_api_key");
    // An agent without api_key_sha256 can only use a JWT.
    assert_eq!(f.reason(&basic("jwt-only-001", "anything")), "bad_api_key");
}

#[test]
fn missing_credentials() {
    let f = fixture("");
    assert_eq!(f.resolver.identify(None), Err(IdentityError::Missing));
    assert_eq!(f.reason(&header("")), "missing_credentials");
    assert_eq!(f.reason(&header("   ")), "missing_credentials");
}

#[test]
fn malformed_credentials_are_rejected() {
    let f = fixture("");
    let b64 = |bytes: &[u8]| format!("Basic {}", STANDARD.encode(bytes));
    let cases: Vec<(String, &str)> = vec![
        ("Basic".into(), "no credentials"),
        ("Basic !!!!".into(), "not base64"),
        ("Basic c2NyYXBlcg=x".into(), "bad padding"),
        (b64(b"\xff\xfe:key"), "not UTF-8"),
        (b64(b"no-colon-here"), "no separator"),
        (b64(b":key"), "empty agent"),
        (b64(b"scraper-001:"), "empty key"),
        ("Basic abc def".into(), "inner whitespace"),
        (format!("Basic {}", "A".repeat(2000)), "too long"),
    ];
    for (text, why) in cases {
        assert_eq!(f.reason(&header(&text)), "malformed_credentials", "{why}: {text:?}");
    }
    let non_ascii = HeaderValue::from_bytes(b"Basic \xc3\xa9t\xc3\xa9").expect("obs-text is a valid header value");
    assert_eq!(f.reason(&non_ascii), "malformed_credentials");
}

#[test]
fn other_schemes_are_unsupported() {
    let f = fixture("");
    assert_eq!(f.reason(&header("Digest username=\"x\"")), "unsupported_scheme");
    assert_eq!(f.reason(&header("Negotiate abc")), "unsupported_scheme");
    assert_eq!(f.reason(&header("sometoken")), "unsupported_scheme");
}

#[test]
fn errors_never_contain_the_presented_key() {
    let f = fixture("");
    let secret = "Sup3r-S3cret-K3y-Value";
    let encoded = STANDARD.encode(format!("scraper-001:{secret}"));
    let headers = [
        basic("scraper-001", secret),
        basic("nobody-001", secret),
        basic("retired-001", secret),
        header(&format!("Basic {secret}")),
        header(&format!("Bearer {secret}")),
        header(&format!("{secret} {secret}")),
        header(&format!("Basic {encoded} {secret}")),
    ];
    for value in &headers {
        let error = f.identify(value).expect_err("must fail");
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(secret), "leaked key in {text:?}");
            assert!(!text.contains(&encoded), "leaked encoded credentials in {text:?}");
        }
    }
}

#[test]
fn reason_codes_are_stable() {
    let cases = [
        (IdentityError::Missing, "missing_credentials"),
        (IdentityError::Malformed("x"), "malformed_credentials"),
        (IdentityError::UnsupportedScheme, "unsupported_scheme"),
        (IdentityError::UnknownAgent, "unknown_agent"),
        (IdentityError::BadApiKey, "bad_api_key"),
        (IdentityError::Disabled, "agent_disabled"),
        (IdentityError::JwtNotConfigured, "jwt_not_configured"),
        (IdentityError::InvalidToken("x"), "invalid_token"),
        (IdentityError::TokenExpired, "token_expired"),
        (IdentityError::TokenNotYetValid, "token_not_yet_valid"),
        (IdentityError::WrongIssuer, "wrong_issuer"),
        (IdentityError::WrongAudience, "wrong_audience"),
        (IdentityError::UnknownSigningKey, "unknown_signing_key"),
        (IdentityError::MissingClaim("team".into()), "missing_claim"),
        (IdentityError::InvalidClaim("team".into()), "invalid_claim"),
        (IdentityError::ClaimConflict("team".into()), "claim_conflict"),
    ];
    for (error, reason) in cases {
        assert_eq!(error.reason(), reason, "{error:?}");
    }
}

#[test]
fn a_refused_basic_credential_names_the_agent_it_claims_never_the_key() {
    use crate::identity::IdentityResolver;
    let claimed = |value: HeaderValue| IdentityResolver::claimed_agent_id(Some(&value));
    assert_eq!(
        claimed(basic("scraper-001", "wrong-key")).as_deref(),
        Some("scraper-001")
    );
    // Agent ids cannot hold ':'; keys can, and stay out.
    assert_eq!(claimed(basic("nobody", "k:e:y")).as_deref(), Some("nobody"));
    let encoded = |raw: &str| header(&format!("Basic {}", STANDARD.encode(raw)));
    // No ':' at all: the value may be a bare key, so nothing is claimed.
    assert_eq!(claimed(encoded("sk-a-bare-key")), None);
    assert_eq!(claimed(encoded(":key")), None);
    assert_eq!(claimed(encoded("agent:")), None);
    assert_eq!(claimed(encoded("two words:key")), None);
    assert_eq!(claimed(encoded(&format!("{}:key", "a".repeat(129)))), None);
    assert_eq!(claimed(header("Basic !!!")), None);
    assert_eq!(claimed(header("Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln")), None);
    assert_eq!(IdentityResolver::claimed_agent_id(None), None);
}
