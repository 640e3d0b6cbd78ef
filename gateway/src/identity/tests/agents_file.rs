//! Loading the agents file: validation errors at `file:line:column`, and the shipped example.

use std::path::{Path, PathBuf};

use super::support::*;
use crate::identity::{AuthMethod, IdentityResolver};

const AGENT: &str = "agents:
  - id: a-1
    team: data
    project: crawl
    environment: dev
    role: scraper
";

/// A valid agents section followed by `jwt_keys` under a valid `jwt` header.
fn with_jwt_keys(jwt_keys: &str) -> String {
    format!("{AGENT}jwt:\n  issuer: \"{ISSUER}\"\n  audience: \"{AUDIENCE}\"\n  keys:\n{jwt_keys}")
}

#[test]
fn duplicate_agent_ids_point_at_the_second_one() {
    let yaml =
        format!("{AGENT}  - id: a-1\n    team: data\n    project: crawl\n    environment: dev\n    role: scraper\n");
    let error = compile_error(&yaml);
    assert_at(&error, (7, 9));
    assert_eq!(
        error.to_string(),
        "agents.yaml:7:9: duplicate agent id `a-1` (first defined at line 2)\n  hint: agent ids must be unique; rename or remove one of the entries"
    );
}

#[test]
fn api_key_digest_must_be_64_hex_characters() {
    for digest in [
        "\"abc123\"",
        &format!("\"{}\"", "g".repeat(64)),
        "my-clear-text-api-key",
    ] {
        let yaml = format!("{AGENT}    api_key_sha256: {digest}\n");
        let error = compile_error(&yaml);
        assert_at(&error, position_of(&yaml, digest));
        assert!(error.message().contains("64 hex characters"), "{error}");
        assert!(error.hint().is_some_and(|h| h.contains("sha256sum")), "{error}");
        assert!(!error.to_string().contains("my-clear-text-api-key"), "{error}");
    }
}

#[test]
fn the_same_key_for_two_agents_is_refused() {
    let digest = sha256_hex("shared");
    let yaml = format!(
        "agents:\n  - {{ id: a-1, team: t, project: p, environment: dev, role: scraper, api_key_sha256: \"{digest}\" }}\n  - {{ id: a-2, team: t, project: p, environment: dev, role: scraper, api_key_sha256: \"{digest}\" }}\n"
    );
    let error = compile_error(&yaml);
    assert_eq!(error.line(), Some(3), "{error}");
    assert!(
        error.message().contains("`a-2`") && error.message().contains("`a-1`"),
        "{error}"
    );
}

#[test]
fn empty_fields_are_refused() {
    for field in ["team", "project", "environment", "role", "id"] {
        let yaml = AGENT.replace(&format!("{field}: "), &format!("{field}: \"\" #"));
        let error = compile_error(&yaml);
        assert_at(&error, position_of(&yaml, "\"\""));
        assert!(
            error.message().contains(&format!("`{field}` must not be empty")),
            "{error}"
        );
    }
}

#[test]
fn agent_ids_cannot_contain_a_colon() {
    let yaml = AGENT.replace("id: a-1", "id: \"a:1\"");
    let error = compile_error(&yaml);
    assert_at(&error, (2, 9));
    assert!(error.hint().is_some_and(|h| h.contains("first ':'")), "{error}");
}

#[test]
fn unknown_fields_are_refused_where_they_are() {
    let yaml = AGENT.replace("    team: data\n", "    tema: data\n");
    let error = compile_error(&yaml);
    assert_eq!(error.line(), Some(3), "{error}");
    assert!(error.message().contains("tema"), "{error}");

    let yaml = format!("{AGENT}extra: true\n");
    let error = compile_error(&yaml);
    assert_eq!(error.line(), Some(7), "{error}");
}

#[test]
fn missing_fields_are_reported_with_a_position() {
    let yaml = AGENT.replace("    role: scraper\n", "");
    let error = compile_error(&yaml);
    assert!(error.message().contains("role"), "{error}");
    assert!(error.line().is_some_and(|line| (2..=6).contains(&line)), "{error}");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let yaml = "agents:\n  - id: [unclosed\n    team: data\n";
    let error = compile_error(yaml);
    assert!(error.line().is_some_and(|line| line >= 2), "{error}");
    assert!(error.to_string().starts_with("agents.yaml:"), "{error}");

    let yaml = format!("{AGENT}    team: again\n");
    let error = compile_error(&yaml);
    assert_at(&error, (7, 5));
    assert_eq!(error.message(), "duplicate key `team`");
}

#[test]
fn inline_api_keys_are_refused_without_echoing_them() {
    let yaml = format!("{AGENT}    api_key: \"clear-text-key-123\"\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "api_key: "));
    assert!(error.hint().is_some_and(|h| h.contains("api_key_sha256")), "{error}");
    assert!(!format!("{error} {error:?}").contains("clear-text-key-123"));
}

#[test]
fn inline_jwt_secrets_are_refused_without_echoing_them() {
    let yaml = with_jwt_keys("    - algorithm: HS256\n      secret: \"inline-hmac-secret-value\"\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "secret: \"inline"));
    let hint = error.hint().unwrap_or_default();
    assert!(hint.contains("secret_file") && hint.contains("secret_env"), "{error}");
    assert!(!format!("{error} {error:?}").contains("inline-hmac-secret-value"));
}

#[test]
fn unknown_algorithms_are_refused() {
    for alg in ["HS999", "none", "hs256"] {
        let yaml = with_jwt_keys(&format!("    - algorithm: {alg}\n      secret_file: hs.secret\n"));
        let error = compile_error(&yaml);
        assert_at(&error, (11, 18));
        assert!(
            error.message().contains(&format!("unknown algorithm `{alg}`")),
            "{error}"
        );
        assert!(error.hint().is_some_and(|h| h.contains("EdDSA")), "{error}");
    }
}

#[test]
fn missing_key_files_are_refused() {
    let yaml = with_jwt_keys("    - algorithm: RS256\n      public_key_file: nope/missing.pem\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "nope/missing.pem"));
    assert!(error.message().contains("missing.pem"), "{error}");

    let yaml = with_jwt_keys("    - algorithm: HS256\n      secret_file: missing.secret\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "missing.secret"));
}

#[test]
fn key_material_must_fit_the_algorithm() {
    let cases = [
        (
            "    - algorithm: HS256\n      public_key_file: ed-pub.pem\n",
            "ed-pub.pem",
            "shared secret",
        ),
        (
            "    - algorithm: RS256\n      secret_file: hs.secret\n",
            "hs.secret",
            "public key",
        ),
        (
            "    - algorithm: RS256\n      public_key_file: ed-pub.pem\n",
            "ed-pub.pem",
            "not a PEM public key",
        ),
        (
            "    - algorithm: EdDSA\n      public_key_file: keys/rsa-pub.pem\n",
            "keys/rsa-pub.pem",
            "not a PEM public key",
        ),
        (
            "    - algorithm: HS256\n      secret_file: ed-pub.pem\n      secret_env: X\n",
            "X\n",
            "not both",
        ),
    ];
    for (keys, at, message) in cases {
        let yaml = with_jwt_keys(keys);
        let error = compile_error(&yaml);
        assert_at(&error, position_of(&yaml, at));
        assert!(error.message().contains(message), "{error}");
    }
    let yaml = with_jwt_keys("    - algorithm: RS256\n");
    let error = compile_error(&yaml);
    assert_at(&error, (11, 7));
    assert!(error.message().contains("public_key_file"), "{error}");
}

#[test]
fn private_keys_and_short_secrets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("private.pem"), &rsa().private_pem).expect("write");
    std::fs::write(dir.path().join("short.secret"), "too-short").expect("write");
    let yaml = with_jwt_keys("    - algorithm: RS256\n      public_key_file: private.pem\n");
    let error = IdentityResolver::from_str(&yaml, "agents.yaml", dir.path()).expect_err("private key");
    assert_at(&error, position_of(&yaml, "private.pem"));
    assert!(error.message().contains("private key"), "{error}");

    let yaml = with_jwt_keys("    - algorithm: HS256\n      secret_file: short.secret\n");
    let error = IdentityResolver::from_str(&yaml, "agents.yaml", dir.path()).expect_err("short");
    assert_at(&error, position_of(&yaml, "short.secret"));
    assert!(error.message().contains("at least 32"), "{error}");
}

#[test]
fn unset_secret_env_is_refused() {
    let yaml = with_jwt_keys("    - algorithm: HS256\n      secret_env: CLAWGRESS_TEST_SURELY_UNSET_7F3A\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "CLAWGRESS_TEST_SURELY_UNSET_7F3A"));
    assert!(error.message().contains("is not set"), "{error}");
}

#[test]
fn secret_env_reads_the_variable() {
    // Cannot set variables here (`set_var` is unsafe in edition 2024 and the crate forbids
    // unsafe), so use one cargo sets for test runs and derive the outcome from its length.
    let variable = "CARGO_MANIFEST_DIR";
    let value = std::env::var(variable).expect("cargo sets CARGO_MANIFEST_DIR for tests");
    let yaml = with_jwt_keys(&format!("    - algorithm: HS256\n      secret_env: {variable}\n"));
    let dir = tempfile::tempdir().expect("tempdir");
    match IdentityResolver::from_str(&yaml, "agents.yaml", dir.path()) {
        Ok(resolver) => assert!(value.len() >= 32 && resolver.jwt_enabled()),
        Err(error) => {
            assert!(value.len() < 32, "{error}");
            let expected = format!("the HS256 secret is {} bytes", value.len());
            assert!(error.message().contains(&expected), "{error}");
        }
    }
}

#[test]
fn duplicate_kids_and_oversized_leeway_are_refused() {
    let yaml = with_jwt_keys(
        "    - { kid: k, algorithm: HS256, secret_file: hs.secret }\n    - { kid: k, algorithm: RS256, public_key_file: keys/rsa-pub.pem }\n",
    );
    let error = compile_error(&yaml);
    assert_at(&error, (12, 14));
    assert!(error.message().contains("duplicate kid `k`"), "{error}");

    let yaml = with_jwt_keys("    - { algorithm: HS256, secret_file: hs.secret }\n")
        .replace("  keys:\n", "  leeway_seconds: 3600\n  keys:\n");
    let error = compile_error(&yaml);
    assert_at(&error, position_of(&yaml, "3600"));
}

#[test]
fn an_empty_configuration_is_refused() {
    for yaml in ["agents: []\n", "{}\n"] {
        let error = compile_error(yaml);
        assert_eq!(error.line(), None, "{error}");
        assert!(error.message().contains("nobody could ever authenticate"), "{error}");
    }
    let yaml = format!("{AGENT}jwt:\n  issuer: i\n  audience: a\n  keys: []\n");
    let error = compile_error(&yaml);
    assert_at(&error, (10, 9));
}

#[test]
fn load_reads_relative_key_paths_from_the_file_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("etc");
    std::fs::create_dir_all(&nested).expect("mkdir");
    write_key_files(&nested);
    let path = nested.join("agents.yaml");
    std::fs::write(&path, format!("{}{}", agents_section(), jwt_section(""))).expect("write");
    let resolver = IdentityResolver::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolver.agent_count(), 4);
    assert!(resolver.jwt_enabled());

    let missing = dir.path().join("absent.yaml");
    let error = IdentityResolver::load(&missing).expect_err("missing file");
    assert_eq!(error.origin(), missing.display().to_string());
    assert_eq!(error.line(), None);
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())),
        "{error}"
    );
}

fn example_file() -> PathBuf {
    // Walk up from the crate so the test works wherever the module lives in the workspace.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("policies/agents.example.yaml"))
        .find(|candidate| candidate.is_file())
        .expect("policies/agents.example.yaml in an ancestor directory")
}

#[test]
fn the_shipped_example_loads_and_its_demo_keys_work() {
    let resolver = IdentityResolver::load(&example_file()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolver.agent_count(), 2);
    let scraper = resolver
        .identify(Some(&basic("scraper-001", "scraper-001-demo-key")))
        .expect("scraper");
    assert_eq!((&*scraper.role, scraper.method), ("scraper", AuthMethod::ApiKey));
    let builder = resolver
        .identify(Some(&basic("agent-builder-001", "agent-builder-001-demo-key")))
        .expect("builder");
    assert_eq!(&*builder.role, "ai-agent");
    assert_eq!(
        resolver
            .identify(Some(&basic("scraper-001", "agent-builder-001-demo-key")))
            .map_err(|e| e.reason()),
        Err("bad_api_key")
    );
}
