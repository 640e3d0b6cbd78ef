//! `Proxy-Authorization: Bearer` JWT verification and claim mapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::support::*;
use crate::identity::clock::Clock;
use crate::identity::{AuthMethod, IdentityError};

#[test]
fn hs256_rs256_eddsa_and_es256_tokens_are_accepted() {
    let f = fixture("");
    let cases = [
        (Algorithm::HS256, hs_signer(), Some("hs-1")),
        (Algorithm::RS256, rsa_signer(), Some("rsa-1")),
        (Algorithm::EdDSA, ed_signer(), None),
        (Algorithm::ES256, ec_signer(), Some("ec-1")),
        // Without a kid the key is chosen by algorithm.
        (Algorithm::RS256, rsa_signer(), None),
    ];
    for (alg, key, kid) in cases {
        let token = sign(alg, &key, kid, &full_claims("summarizer-007"));
        let identity = f
            .identify(&bearer(&token))
            .unwrap_or_else(|e| panic!("{alg:?}/{kid:?}: {e}"));
        assert_eq!(&*identity.agent_id, "summarizer-007");
        assert_eq!(&*identity.team, "research");
        assert_eq!(&*identity.project, "summaries");
        assert_eq!(&*identity.environment, "staging");
        assert_eq!(&*identity.role, "ai-agent");
        assert_eq!(identity.method, AuthMethod::Jwt);
        assert_eq!(identity.session_id.as_deref(), Some("session-abc123"));
    }
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let f = fixture("");
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &full_claims("a-1"));
    let value = http::HeaderValue::from_str(&format!("  BEARER   {token} ")).expect("header");
    assert!(f.identify(&value).is_ok());
}

#[test]
fn session_id_claim_is_the_fallback_for_sid() {
    let f = fixture("");
    let claims = with(
        with(full_claims("a-1"), "sid", json!(null)),
        "session_id",
        json!("s-42"),
    );
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
    let identity = f.identify(&bearer(&token)).expect("identified");
    assert_eq!(identity.session_id.as_deref(), Some("s-42"));
    let claims = with(full_claims("a-1"), "sid", json!(null));
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
    assert_eq!(f.identify(&bearer(&token)).expect("identified").session_id, None);
}

#[test]
fn registered_agents_take_their_attributes_from_the_registry() {
    let f = fixture("");
    let token = sign(
        Algorithm::RS256,
        &rsa_signer(),
        Some("rsa-1"),
        &minimal_claims("scraper-001"),
    );
    let identity = f.identify(&bearer(&token)).expect("identified");
    assert_eq!(&*identity.agent_id, "scraper-001");
    assert_eq!(&*identity.team, "data");
    assert_eq!(&*identity.role, "scraper");
    assert_eq!(identity.method, AuthMethod::Jwt);
    // Claims that agree with the registry are fine.
    let agreeing = with(minimal_claims("scraper-001"), "team", json!("data"));
    let token = sign(Algorithm::RS256, &rsa_signer(), Some("rsa-1"), &agreeing);
    assert!(f.identify(&bearer(&token)).is_ok());
}

#[test]
fn claims_that_contradict_the_registry_are_rejected_naming_the_claim() {
    let f = fixture("");
    for claim in ["team", "project", "environment", "role"] {
        let claims = with(minimal_claims("scraper-001"), claim, json!("something-else"));
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        let error = f.identify(&bearer(&token)).expect_err("conflict");
        assert_eq!(error, IdentityError::ClaimConflict(Arc::from(claim)));
        assert!(error.to_string().contains(claim), "{error}");
    }
}

#[test]
fn disabled_registered_agent_is_rejected() {
    let f = fixture("");
    let token = sign(
        Algorithm::HS256,
        &hs_signer(),
        Some("hs-1"),
        &minimal_claims("retired-001"),
    );
    assert_eq!(f.reason(&bearer(&token)), "agent_disabled");
}

#[test]
fn unregistered_agents_need_every_identity_claim() {
    let f = fixture("");
    for claim in ["team", "project", "environment", "role", "sub"] {
        let claims = with(full_claims("a-1"), claim, json!(null));
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        assert_eq!(
            f.identify(&bearer(&token)),
            Err(IdentityError::MissingClaim(Arc::from(claim)))
        );
    }
    for bad in [json!(""), json!(42), json!(["data"]), json!("tab\there")] {
        let claims = with(full_claims("a-1"), "team", bad.clone());
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        assert_eq!(f.reason(&bearer(&token)), "invalid_claim", "{bad}");
    }
}

#[test]
fn require_registered_agent_rejects_unknown_agents() {
    let f = fixture("  require_registered_agent: true\n");
    let token = sign(
        Algorithm::HS256,
        &hs_signer(),
        Some("hs-1"),
        &full_claims("stranger-001"),
    );
    assert_eq!(f.reason(&bearer(&token)), "unknown_agent");
    let token = sign(
        Algorithm::HS256,
        &hs_signer(),
        Some("hs-1"),
        &minimal_claims("jwt-only-001"),
    );
    assert_eq!(&*f.identify(&bearer(&token)).expect("registered").team, "research");
}

#[test]
fn claim_names_are_configurable() {
    let f = fixture("  claims: { agent: agent_id, team: grp, project: proj, environment: env, role: kind }\n");
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "sub": "ignored",
        "agent_id": "mapped-001", "grp": "g", "proj": "p", "env": "e", "kind": "scraper",
        // The default names mean nothing now.
        "team": "not-this-one",
    });
    let token = sign(Algorithm::EdDSA, &ed_signer(), None, &claims);
    let identity = f.identify(&bearer(&token)).expect("identified");
    assert_eq!(
        [
            &*identity.agent_id,
            &*identity.team,
            &*identity.project,
            &*identity.environment,
            &*identity.role
        ],
        ["mapped-001", "g", "p", "e", "scraper"]
    );
    let conflicting = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "agent_id": "scraper-001", "grp": "other",
    });
    let token = sign(Algorithm::EdDSA, &ed_signer(), None, &conflicting);
    assert_eq!(
        f.identify(&bearer(&token)),
        Err(IdentityError::ClaimConflict(Arc::from("grp")))
    );
}

#[test]
fn bad_signatures_are_rejected() {
    let f = fixture("");
    let other = EncodingKey::from_secret(b"another-secret-that-is-long-enough-0123");
    let token = sign(Algorithm::HS256, &other, Some("hs-1"), &full_claims("a-1"));
    assert_eq!(f.reason(&bearer(&token)), "invalid_token");
    let token = sign(Algorithm::HS256, &other, None, &full_claims("a-1"));
    assert_eq!(f.reason(&bearer(&token)), "invalid_token");

    // A valid token whose payload was swapped for another one.
    let good = sign(Algorithm::RS256, &rsa_signer(), Some("rsa-1"), &full_claims("a-1"));
    let forged_payload = URL_SAFE_NO_PAD.encode(full_claims("admin-001").to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(f.reason(&bearer(&tampered)), "invalid_token");

    for garbage in ["a.b.c", "only-one-part", "x.y", "eyJhbGciOiJIUzI1NiJ9.e30.%%%"] {
        assert_eq!(f.reason(&bearer(garbage)), "invalid_token", "{garbage}");
    }
}

#[test]
fn wrong_issuer_or_audience_is_rejected() {
    let f = fixture("");
    let cases = [
        (
            with(full_claims("a-1"), "iss", json!("https://evil.test")),
            "wrong_issuer",
        ),
        (with(full_claims("a-1"), "aud", json!("someone-else")), "wrong_audience"),
        (with(full_claims("a-1"), "aud", json!(["x", "y"])), "wrong_audience"),
        (with(full_claims("a-1"), "iss", json!(null)), "missing_claim"),
        (with(full_claims("a-1"), "aud", json!(null)), "missing_claim"),
    ];
    for (claims, reason) in cases {
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        assert_eq!(f.reason(&bearer(&token)), reason, "{claims}");
    }
    // An audience list that includes ours is accepted.
    let claims = with(full_claims("a-1"), "aud", json!(["x", AUDIENCE]));
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
    assert!(f.identify(&bearer(&token)).is_ok());
}

#[test]
fn expiry_and_not_before_are_enforced() {
    let f = fixture("");
    let cases = [
        (with(full_claims("a-1"), "exp", json!(now() - 5)), "token_expired"),
        (with(full_claims("a-1"), "exp", json!(null)), "missing_claim"),
        (with(full_claims("a-1"), "exp", json!("tomorrow")), "invalid_claim"),
        (
            with(full_claims("a-1"), "nbf", json!(now() + 120)),
            "token_not_yet_valid",
        ),
    ];
    for (claims, reason) in cases {
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        assert_eq!(f.reason(&bearer(&token)), reason, "{claims}");
    }
    let claims = with(full_claims("a-1"), "nbf", json!(now() - 1));
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
    assert!(f.identify(&bearer(&token)).is_ok());
}

#[test]
fn leeway_tolerates_small_clock_skew_only() {
    let f = fixture("  leeway_seconds: 30\n");
    let ok = [
        with(full_claims("a-1"), "exp", json!(now() - 10)),
        with(full_claims("a-1"), "nbf", json!(now() + 10)),
    ];
    for claims in ok {
        let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &claims);
        assert!(f.identify(&bearer(&token)).is_ok(), "{claims}");
    }
    let late = with(full_claims("a-1"), "exp", json!(now() - 60));
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &late);
    assert_eq!(f.reason(&bearer(&token)), "token_expired");
    let early = with(full_claims("a-1"), "nbf", json!(now() + 60));
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), &early);
    assert_eq!(f.reason(&bearer(&token)), "token_not_yet_valid");
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let f = fixture("");
    let confused = EncodingKey::from_secret(rsa().public_pem.as_bytes());
    // Pointing at the RSA key by kid: the key's algorithm wins over the header's.
    let token = sign(Algorithm::HS256, &confused, Some("rsa-1"), &full_claims("mallory"));
    assert_eq!(f.reason(&bearer(&token)), "invalid_token");
    // Without a kid only the HS256 key is tried, and its secret is different.
    let token = sign(Algorithm::HS256, &confused, None, &full_claims("mallory"));
    assert_eq!(f.reason(&bearer(&token)), "invalid_token");

    // With no HMAC key configured at all, there is nothing to even try.
    let rsa_only = format!(
        "{}jwt:\n  issuer: \"{ISSUER}\"\n  audience: \"{AUDIENCE}\"\n  keys:\n    - algorithm: RS256\n      public_key_file: keys/rsa-pub.pem\n",
        agents_section()
    );
    let f = fixture_from(&rsa_only);
    let token = sign(Algorithm::HS256, &confused, None, &full_claims("mallory"));
    assert_eq!(f.reason(&bearer(&token)), "unknown_signing_key");
    let token = sign(Algorithm::RS256, &rsa_signer(), Some("any-kid"), &full_claims("a-1"));
    assert!(
        f.identify(&bearer(&token)).is_ok(),
        "kid-less keys serve tokens with any kid"
    );
}

#[test]
fn alg_none_is_rejected() {
    let f = fixture("");
    let payload = URL_SAFE_NO_PAD.encode(full_claims("mallory").to_string());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"none","kid":"hs-1"}"#,
        r#"{"alg":"None"}"#,
    ] {
        let header = URL_SAFE_NO_PAD.encode(header);
        for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
            assert_eq!(f.reason(&bearer(&token)), "invalid_token", "{token}");
        }
    }
}

#[test]
fn unknown_kid_is_rejected() {
    let f = fixture("");
    let token = sign(Algorithm::HS256, &hs_signer(), Some("hs-2"), &full_claims("a-1"));
    assert_eq!(f.reason(&bearer(&token)), "unknown_signing_key");
}

#[test]
fn bearer_without_a_jwt_section_is_refused() {
    let f = fixture_from(&agents_section());
    let token = sign(Algorithm::HS256, &hs_signer(), None, &full_claims("a-1"));
    assert_eq!(f.reason(&bearer(&token)), "jwt_not_configured");
    assert!(!f.resolver.jwt_enabled());
}

#[test]
fn errors_never_contain_the_token() {
    let f = fixture("");
    let tokens = [
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&[7; 40]),
            Some("hs-1"),
            &full_claims("a-1"),
        ),
        sign(
            Algorithm::HS256,
            &hs_signer(),
            Some("hs-1"),
            &with(full_claims("a-1"), "exp", json!(1)),
        ),
        sign(
            Algorithm::HS256,
            &hs_signer(),
            Some("hs-1"),
            &with(full_claims("a-1"), "iss", json!("x")),
        ),
        sign(
            Algorithm::HS256,
            &hs_signer(),
            Some("hs-1"),
            &with(minimal_claims("scraper-001"), "team", json!("x")),
        ),
        sign(Algorithm::HS256, &hs_signer(), Some("nope"), &full_claims("a-1")),
    ];
    for token in &tokens {
        let error = f.identify(&bearer(token)).expect_err("must fail");
        let signature = token.rsplit('.').next().unwrap_or_default();
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(token.as_str()), "leaked token in {text:?}");
            assert!(!text.contains(signature), "leaked signature in {text:?}");
        }
    }
}

fn manual_clock(f: super::support::Fixture, start: u64) -> (crate::identity::IdentityResolver, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start));
    let resolver = f.resolver.with_clock(Clock::Manual(now.clone()));
    // The key files are read at load time; the directory may go.
    drop(f._dir);
    (resolver, now)
}

#[test]
fn cached_tokens_are_reverified_after_a_minute_and_never_served_past_exp() {
    let t0 = now();
    let (resolver, clock) = manual_clock(fixture(""), t0);
    let token = sign(
        Algorithm::RS256,
        &rsa_signer(),
        Some("rsa-1"),
        &with(full_claims("a-1"), "exp", json!(t0 + 100)),
    );
    let header = bearer(&token);

    let first = resolver.identify(Some(&header)).expect("verified");
    clock.store(t0 + 30, Ordering::SeqCst);
    let cached = resolver.identify(Some(&header)).expect("cached");
    assert!(Arc::ptr_eq(&first, &cached), "served from the cache");

    clock.store(t0 + 61, Ordering::SeqCst);
    let reverified = resolver.identify(Some(&header)).expect("re-verified");
    assert!(!Arc::ptr_eq(&first, &reverified), "cache entries live at most 60 s");

    clock.store(t0 + 99, Ordering::SeqCst);
    let cached = resolver.identify(Some(&header)).expect("cached again");
    assert!(Arc::ptr_eq(&reverified, &cached));

    clock.store(t0 + 100, Ordering::SeqCst);
    assert_eq!(resolver.identify(Some(&header)), Err(IdentityError::TokenExpired));
}

#[test]
fn short_lived_tokens_leave_the_cache_at_exp() {
    let t0 = now();
    let (resolver, clock) = manual_clock(fixture(""), t0);
    let token = sign(
        Algorithm::HS256,
        &hs_signer(),
        Some("hs-1"),
        &with(full_claims("a-1"), "exp", json!(t0 + 5)),
    );
    let header = bearer(&token);
    let first = resolver.identify(Some(&header)).expect("verified");
    clock.store(t0 + 4, Ordering::SeqCst);
    assert!(Arc::ptr_eq(&first, &resolver.identify(Some(&header)).expect("cached")));
    clock.store(t0 + 5, Ordering::SeqCst);
    assert_eq!(resolver.identify(Some(&header)), Err(IdentityError::TokenExpired));
}

#[test]
fn rejected_tokens_are_not_cached() {
    let t0 = now();
    let (resolver, clock) = manual_clock(fixture(""), t0);
    let token = sign(
        Algorithm::HS256,
        &hs_signer(),
        Some("hs-1"),
        &with(full_claims("a-1"), "nbf", json!(t0 + 10)),
    );
    let header = bearer(&token);
    assert_eq!(resolver.identify(Some(&header)), Err(IdentityError::TokenNotYetValid));
    let jwt = resolver.jwt.as_ref().expect("jwt configured");
    assert_eq!(jwt.cache().len(), 0);
    clock.store(t0 + 10, Ordering::SeqCst);
    assert!(resolver.identify(Some(&header)).is_ok());
    assert_eq!(jwt.cache().len(), 1);
}
