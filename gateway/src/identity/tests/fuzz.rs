//! Seeded fuzz-style properties of `IdentityResolver::identify`: random and mutated
//! `Proxy-Authorization` values never panic, never authenticate anything but a
//! configured credential, and never echo a secret in an error.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use jsonwebtoken::EncodingKey;

use super::support::*;
use crate::identity::{AuthMethod, IdentityError, IdentityResolver};
use crate::testing::Rng;

const SEED: u64 = 0x6964_656e;
const CASES: usize = 5000;

/// Bytes the mutator prefers: the characters the header grammar, base64 and JWTs
/// give meaning to.
const DICTIONARY: &[u8] = b"  \t.=:+/-_AaZz09eyJ\x7f\x80\xff";

/// A valid credential and the agent it must (and alone may) authenticate as.
struct Valid {
    scheme: &'static str,
    credentials: String,
    agent_id: &'static str,
    method: AuthMethod,
}

struct World {
    resolver: IdentityResolver,
    /// Kept alive for the key files.
    _dir: tempfile::TempDir,
    valid: Vec<Valid>,
    /// Header values worth mutating: the valid ones and near misses.
    seeds: Vec<String>,
}

/// Only the cheap keys: an HMAC key with a kid and an Ed25519 key without one, so
/// both key-selection paths run.
fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hs.secret"), HS_SECRET).expect("write secret");
    std::fs::write(dir.path().join("ed-pub.pem"), &ed25519().public_pem).expect("write ed");
    let yaml = format!(
        "{}jwt:
  issuer: \"{ISSUER}\"
  audience: \"{AUDIENCE}\"
  keys:
    - kid: hs-1
      algorithm: HS256
      secret_file: hs.secret
    - algorithm: EdDSA
      public_key_file: ed-pub.pem
",
        agents_section()
    );
    let resolver = IdentityResolver::from_str(&yaml, "agents.yaml", dir.path()).expect("agents file");

    let mut valid = Vec::new();
    for (agent_id, key) in [("scraper-001", SCRAPER_KEY), ("agent-builder-001", BUILDER_KEY)] {
        let pair = format!("{agent_id}:{key}");
        for credentials in [STANDARD.encode(&pair), STANDARD_NO_PAD.encode(&pair)] {
            valid.push(Valid {
                scheme: "Basic",
                credentials,
                agent_id,
                method: AuthMethod::ApiKey,
            });
        }
    }
    let tokens = [
        ("scraper-001", sign_hs(&minimal_claims("scraper-001"))),
        ("jwt-only-001", sign_hs(&minimal_claims("jwt-only-001"))),
        ("summarizer-007", sign_hs(&full_claims("summarizer-007"))),
        (
            "summarizer-008",
            sign(Algorithm::EdDSA, &ed_signer(), None, &full_claims("summarizer-008")),
        ),
    ];
    for (agent_id, token) in tokens {
        valid.push(Valid {
            scheme: "Bearer",
            credentials: token,
            agent_id,
            method: AuthMethod::Jwt,
        });
    }

    let mut seeds: Vec<String> = valid
        .iter()
        .map(|v| format!("{} {}", v.scheme, v.credentials))
        .collect();
    let wrong_secret = EncodingKey::from_secret(b"not-the-configured-secret-0123456789");
    let near_misses = [
        format!("Basic {}", STANDARD.encode(format!("retired-001:{RETIRED_KEY}"))),
        format!("Basic {}", STANDARD.encode(format!("scraper-001:{BUILDER_KEY}"))),
        format!("Basic {}", STANDARD.encode(format!("jwt-only-001:{SCRAPER_KEY}"))),
        format!(
            "Bearer {}",
            sign(Algorithm::HS256, &wrong_secret, Some("hs-1"), &full_claims("x-1"))
        ),
        format!(
            "Bearer {}",
            sign_hs(&with(full_claims("x-2"), "exp", serde_json::json!(now() - 3600)))
        ),
        format!(
            "Bearer {}",
            sign_hs(&with(full_claims("x-3"), "aud", serde_json::json!("other")))
        ),
        format!(
            "Bearer {}",
            sign_hs(&with(full_claims("x-4"), "team", serde_json::json!(null)))
        ),
        format!("Bearer {}", sign_hs(&minimal_claims("retired-001"))),
        format!("Digest username=\"{SCRAPER_KEY}\""),
    ];
    seeds.extend(near_misses);
    World {
        resolver,
        _dir: dir,
        valid,
        seeds,
    }
}

fn sign_hs(claims: &serde_json::Value) -> String {
    sign(Algorithm::HS256, &hs_signer(), Some("hs-1"), claims)
}

fn random_header(rng: &mut Rng, world: &World) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let len = rng.range(0, 64);
            rng.bytes(len)
        }
        1 => {
            // A seed with harmless changes: scheme case and surrounding blanks.
            let seed = rng.pick(&world.seeds);
            let (scheme, rest) = seed.split_once(' ').unwrap_or((seed, ""));
            let scheme: String = scheme
                .chars()
                .map(|c| {
                    if rng.one_in(2) {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            let blank = |rng: &mut Rng| [" ", "\t", "  ", " \t"][rng.below(4)];
            format!("{}{scheme}{}{rest}{}", blank(rng), blank(rng), blank(rng)).into_bytes()
        }
        2 => {
            // Mutate what the base64 decodes to, so the mutation survives decoding.
            let pair = match rng.below(3) {
                0 => format!("scraper-001:{SCRAPER_KEY}"),
                1 => format!("agent-builder-001:{BUILDER_KEY}"),
                _ => format!("retired-001:{RETIRED_KEY}"),
            };
            let mut decoded = pair.into_bytes();
            rng.mutate(&mut decoded, b"::-0a\xc3\xff", 3);
            let engine = if rng.one_in(2) { &STANDARD } else { &STANDARD_NO_PAD };
            format!("Basic {}", engine.encode(decoded)).into_bytes()
        }
        3 => mutate_token_segment(rng, world),
        _ => {
            let mut header = rng.pick(&world.seeds).clone().into_bytes();
            rng.mutate(&mut header, DICTIONARY, 4);
            header
        }
    }
}

/// Edits the decoded header, claims or signature of a valid token and re-encodes
/// it, so the result still looks like a JWT and reaches the signature check.
fn mutate_token_segment(rng: &mut Rng, world: &World) -> Vec<u8> {
    let tokens: Vec<&Valid> = world.valid.iter().filter(|v| v.method == AuthMethod::Jwt).collect();
    let token = &rng.pick(&tokens).credentials;
    let mut segments: Vec<String> = token.split('.').map(str::to_owned).collect();
    let which = rng.below(segments.len());
    let mut decoded = URL_SAFE_NO_PAD.decode(&segments[which]).unwrap_or_default();
    rng.mutate(&mut decoded, b"{}\":,0aenonHSRS256", 3);
    segments[which] = URL_SAFE_NO_PAD.encode(decoded);
    format!("Bearer {}", segments.join(".")).into_bytes()
}

/// The credentials part of a header value, split the way RFC 9110 says.
fn presented(text: &str) -> (&str, &str) {
    let blank = |c: char| c == ' ' || c == '\t';
    let text = text.trim_matches(blank);
    let (scheme, rest) = text.split_once(blank).unwrap_or((text, ""));
    (scheme, rest.trim_matches(blank))
}

/// Everything in `bytes` that must not show up in an error. Short pieces are left
/// out: a 3-byte credential can appear in fixed English text by chance.
fn secrets_in(bytes: &[u8]) -> Vec<String> {
    let mut secrets: Vec<String> = [SCRAPER_KEY, BUILDER_KEY, RETIRED_KEY, HS_SECRET]
        .map(str::to_owned)
        .to_vec();
    if let Ok(text) = std::str::from_utf8(bytes) {
        let (_, credentials) = presented(text);
        secrets.push(credentials.to_owned());
        let decoded = STANDARD
            .decode(credentials)
            .or_else(|_| STANDARD_NO_PAD.decode(credentials))
            .unwrap_or_default();
        if let Some((_, key)) = String::from_utf8_lossy(&decoded).split_once(':') {
            secrets.push(key.to_owned());
        }
    }
    secrets.retain(|s| s.len() >= 8);
    secrets
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `HeaderValue` refuses the bytes, so no request can carry them.
    Unrepresentable,
    Accepted,
    Refused,
}

fn check(world: &World, bytes: &[u8]) -> Result<Outcome, String> {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return Ok(Outcome::Unrepresentable);
    };
    match world.resolver.identify(Some(&value)) {
        Ok(identity) => {
            let text = value.to_str().map_err(|_| format!("accepted non-ASCII {bytes:?}"))?;
            let (scheme, credentials) = presented(text);
            let expected = world
                .valid
                .iter()
                .find(|v| v.scheme.eq_ignore_ascii_case(scheme) && v.credentials == credentials);
            match expected {
                Some(v) if *identity.agent_id == *v.agent_id && identity.method == v.method => Ok(Outcome::Accepted),
                Some(v) => Err(format!(
                    "{text:?} authenticated as {} by {}, expected {} by {}",
                    identity.agent_id, identity.method, v.agent_id, v.method
                )),
                None => Err(format!(
                    "{text:?} is not a configured credential but authenticated as {} by {}",
                    identity.agent_id, identity.method
                )),
            }
        }
        Err(error) => check_error(&error, bytes).map(|()| Outcome::Refused),
    }
}

fn check_error(error: &IdentityError, bytes: &[u8]) -> Result<(), String> {
    for shown in [error.to_string(), format!("{error:?}")] {
        if let Some(secret) = secrets_in(bytes).iter().find(|s| shown.contains(s.as_str())) {
            return Err(format!(
                "error {shown:?} for {:?} contains the secret {secret:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    Ok(())
}

#[test]
fn every_valid_seed_authenticates_as_its_agent() {
    let world = world();
    for v in &world.valid {
        let value = HeaderValue::from_str(&format!("{} {}", v.scheme, v.credentials)).expect("header");
        let identity = world
            .resolver
            .identify(Some(&value))
            .unwrap_or_else(|e| panic!("{} {}: {e}", v.scheme, v.agent_id));
        assert_eq!((&*identity.agent_id, identity.method), (v.agent_id, v.method));
    }
    for near_miss in &world.seeds[world.valid.len()..] {
        let value = HeaderValue::from_str(near_miss).expect("header");
        let error = world.resolver.identify(Some(&value)).expect_err(near_miss);
        assert_eq!(check_error(&error, near_miss.as_bytes()), Ok(()));
    }
}

#[test]
fn random_and_mutated_headers_only_authenticate_configured_credentials() {
    let world = world();
    let mut rng = Rng::new(SEED);
    let (mut accepted, mut refused, mut unrepresentable) = (0usize, 0usize, 0usize);
    for case in 0..CASES {
        let bytes = random_header(&mut rng, &world);
        match check(&world, &bytes) {
            Ok(Outcome::Accepted) => accepted += 1,
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Unrepresentable) => unrepresentable += 1,
            Err(problem) => panic!("case {case} (seed {SEED:#x}): {problem}"),
        }
    }
    // Both outcomes must actually occur, or the properties above were never tested.
    assert!(
        accepted >= 100 && refused >= 1000,
        "accepted {accepted}, refused {refused}, unrepresentable {unrepresentable}"
    );
}
