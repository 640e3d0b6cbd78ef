//! Shared fixtures: a registry of test agents, generated keys, token signing.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::identity::{AgentsFileError, IdentityError, IdentityResolver};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "clawgress";
/// Test-only HMAC secret (at least 32 bytes, as HS256 requires).
pub const HS_SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

pub const SCRAPER_KEY: &str = "scraper-001-key";
pub const BUILDER_KEY: &str = "agent:builder:key";
pub const RETIRED_KEY: &str = "retired-001-key";

/// A generated key pair, PEM encoded (test-only, regenerated every run).
pub struct KeyMaterial {
    pub private_pem: String,
    pub public_pem: String,
}

fn generate(alg: &'static rcgen::SignatureAlgorithm) -> KeyMaterial {
    let pair = rcgen::KeyPair::generate_for(alg).expect("key generation");
    KeyMaterial {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    }
}

pub fn rsa() -> &'static KeyMaterial {
    static KEY: OnceLock<KeyMaterial> = OnceLock::new();
    KEY.get_or_init(|| generate(&rcgen::PKCS_RSA_SHA256))
}

pub fn ed25519() -> &'static KeyMaterial {
    static KEY: OnceLock<KeyMaterial> = OnceLock::new();
    KEY.get_or_init(|| generate(&rcgen::PKCS_ED25519))
}

pub fn p256() -> &'static KeyMaterial {
    static KEY: OnceLock<KeyMaterial> = OnceLock::new();
    KEY.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P256_SHA256))
}

pub fn hs_signer() -> EncodingKey {
    EncodingKey::from_secret(HS_SECRET.as_bytes())
}

pub fn rsa_signer() -> EncodingKey {
    EncodingKey::from_rsa_pem(rsa().private_pem.as_bytes()).expect("rsa signer")
}

pub fn ed_signer() -> EncodingKey {
    EncodingKey::from_ed_pem(ed25519().private_pem.as_bytes()).expect("ed25519 signer")
}

pub fn ec_signer() -> EncodingKey {
    EncodingKey::from_ec_pem(p256().private_pem.as_bytes()).expect("p256 signer")
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn basic(agent: &str, key: &str) -> HeaderValue {
    let encoded = STANDARD.encode(format!("{agent}:{key}"));
    HeaderValue::from_str(&format!("Basic {encoded}")).expect("header")
}

pub fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
}

pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// Claims for an agent that is not in the registry: every identity field is present.
pub fn full_claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "exp": now() + 600,
        "team": "research",
        "project": "summaries",
        "environment": "staging",
        "role": "ai-agent",
        "sid": "session-abc123",
    })
}

/// Claims naming only the agent (enough for a registered one).
pub fn minimal_claims(sub: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 600 })
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if let Some(map) = claims.as_object_mut() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), value);
        }
    }
    claims
}

pub fn agents_section() -> String {
    format!(
        "agents:
  - id: scraper-001
    team: data
    project: crawl
    environment: dev
    role: scraper
    api_key_sha256: \"{}\"
  - id: agent-builder-001
    team: platform
    project: builder
    environment: prod
    role: ai-agent
    api_key_sha256: \"{}\"
  - id: retired-001
    team: data
    project: crawl
    environment: dev
    role: scraper
    api_key_sha256: \"{}\"
    disabled: true
  - id: jwt-only-001
    team: research
    project: summaries
    environment: staging
    role: ai-agent
",
        sha256_hex(SCRAPER_KEY),
        sha256_hex(BUILDER_KEY),
        sha256_hex(RETIRED_KEY),
    )
}

/// Writes the key files a full `jwt` section refers to.
pub fn write_key_files(dir: &Path) {
    // The trailing newline must not become part of the secret.
    std::fs::write(dir.join("hs.secret"), format!("{HS_SECRET}\n")).expect("write secret");
    std::fs::create_dir_all(dir.join("keys")).expect("mkdir");
    std::fs::write(dir.join("keys/rsa-pub.pem"), &rsa().public_pem).expect("write rsa");
    std::fs::write(dir.join("ed-pub.pem"), &ed25519().public_pem).expect("write ed");
    std::fs::write(dir.join("ec-pub.pem"), &p256().public_pem).expect("write ec");
}

/// `settings` are extra lines of the `jwt` section, each indented by two spaces.
pub fn jwt_section(settings: &str) -> String {
    format!(
        "jwt:
  issuer: \"{ISSUER}\"
  audience: \"{AUDIENCE}\"
{settings}  keys:
    - kid: hs-1
      algorithm: HS256
      secret_file: hs.secret
    - kid: rsa-1
      algorithm: RS256
      public_key_file: keys/rsa-pub.pem
    - algorithm: EdDSA
      public_key_file: ed-pub.pem
    - kid: ec-1
      algorithm: ES256
      public_key_file: ec-pub.pem
"
    )
}

pub struct Fixture {
    /// Kept alive for the key files.
    pub _dir: TempDir,
    pub resolver: IdentityResolver,
}

impl Fixture {
    pub fn identify(&self, header: &HeaderValue) -> Result<std::sync::Arc<crate::identity::Identity>, IdentityError> {
        self.resolver.identify(Some(header))
    }

    pub fn reason(&self, header: &HeaderValue) -> &'static str {
        match self.identify(header) {
            Ok(identity) => panic!("expected a failure, got {identity:?}"),
            Err(e) => e.reason(),
        }
    }
}

/// Registry plus a `jwt` section with all four test keys and zero leeway (unless overridden).
pub fn fixture(jwt_settings: &str) -> Fixture {
    let settings = if jwt_settings.contains("leeway_seconds") {
        jwt_settings.to_owned()
    } else {
        format!("  leeway_seconds: 0\n{jwt_settings}")
    };
    fixture_from(&format!("{}{}", agents_section(), jwt_section(&settings)))
}

pub fn fixture_from(yaml: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    write_key_files(dir.path());
    let path = dir.path().join("agents.yaml");
    std::fs::write(&path, yaml).expect("write agents file");
    let resolver = IdentityResolver::load(&path).unwrap_or_else(|e| panic!("load failed: {e}"));
    Fixture { _dir: dir, resolver }
}

/// Compiles `yaml` (named `agents.yaml`) against a directory holding the test key files.
pub fn compile_error(yaml: &str) -> AgentsFileError {
    let dir = tempfile::tempdir().expect("tempdir");
    write_key_files(dir.path());
    match IdentityResolver::from_str(yaml, "agents.yaml", dir.path()) {
        Ok(resolver) => panic!("expected an error, got {resolver:?}"),
        Err(e) => e,
    }
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
pub fn position_of(text: &str, needle: &str) -> (u64, u64) {
    let offset = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, column)
}

pub fn assert_at(error: &AgentsFileError, expected: (u64, u64)) {
    assert_eq!(
        (error.line(), error.column()),
        (Some(expected.0), Some(expected.1)),
        "wrong position for: {error}"
    );
}
