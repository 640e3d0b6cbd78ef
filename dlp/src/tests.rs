//! Every detector with examples it must find and look-alikes it must not;
//! decoding (JSON escapes, forms, gzip/deflate/br, bombs), redaction, and
//! seeded fuzzing of the parsers.

use std::io::Write;

use super::*;

fn engine() -> Engine {
    Engine::new(&DlpPolicy::default())
}

/// A token-shaped value built at run time, so no secret-looking literal sits
/// in the repository for secret scanners to flag.
fn fake(prefix: &str, len: usize) -> String {
    const CHARS: &[u8] = b"aB3dE5fG7hJ9kLmN2pQ4rS6tU8vWxYz";
    let body: String = (0..len).map(|i| char::from(CHARS[(i * 7 + 3) % CHARS.len()])).collect();
    format!("{prefix}{body}")
}

fn kinds(text: &str) -> Vec<&'static str> {
    engine().scan(text.as_bytes()).kinds()
}

#[track_caller]
fn finds(kind: &str, examples: &[String]) {
    for example in examples {
        for text in [
            example.clone(),
            format!("before {example} after"),
            format!("{{\"v\":\"{example}\"}}"),
        ] {
            assert!(
                kinds(&text).contains(&kind),
                "{kind} not found in {text:?}: {:?}",
                kinds(&text)
            );
        }
    }
}

#[track_caller]
fn ignores(kind: &str, examples: &[String]) {
    for example in examples {
        let text = format!("before {example} after");
        assert!(!kinds(&text).contains(&kind), "{kind} wrongly found in {text:?}");
    }
}

fn s(text: &str) -> String {
    text.to_string()
}

#[test]
fn aws_access_keys() {
    // AWS's documented example key.
    finds(
        "aws_access_key",
        &[s("AKIAIOSFODNN7EXAMPLE"), s("ASIAIOSFODNN7EXAMPLE")],
    );
    ignores(
        "aws_access_key",
        &[
            s("AKIAIOSFODNN7EXAMPL"),
            s("xAKIAIOSFODNN7EXAMPLE"),
            s("AKIA1OSFODNN7EXAMPLE"),
            s("AKIAIOSFODNN7EXAMPLEX"),
        ],
    );
}

#[test]
fn gcp_and_azure_keys() {
    finds("gcp_api_key", &[fake("AIza", 35)]);
    ignores("gcp_api_key", &[fake("AIza", 20), fake("AIza", 36)]);
    let azure = format!("{}==", fake("AccountKey=", 86));
    finds(
        "azure_storage_key",
        &[format!("DefaultEndpointsProtocol=https;AccountName=x;{azure}")],
    );
    ignores("azure_storage_key", &[s("AccountKey=short=="), fake("AccountKey=", 40)]);
}

#[test]
fn github_gitlab_slack_and_stripe_tokens() {
    finds(
        "github_token",
        &[fake("ghp_", 36), fake("ghs_", 36), fake("github_pat_", 82)],
    );
    ignores("github_token", &[fake("ghp_", 20), fake("xghp_", 36), fake("ghq_", 36)]);
    finds("gitlab_token", &[fake("glpat-", 20)]);
    ignores("gitlab_token", &[fake("glpat-", 12)]);
    finds(
        "slack_token",
        &[fake("xoxb-123456789012-", 24), fake("xoxp-1234567-", 30)],
    );
    ignores("slack_token", &[s("xoxb-abc"), s("xoxo-123456789-abcdefgh")]);
    finds(
        "slack_webhook",
        &[format!(
            "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{}",
            fake("", 24)
        )],
    );
    ignores("slack_webhook", &[s("https://hooks.slack.com/services/")]);
    finds(
        "stripe_key",
        &[fake("sk_live_", 24), fake("rk_live_", 30), fake("sk_test_", 24)],
    );
    ignores("stripe_key", &[s("sk_live_short"), fake("pk_live_", 24)]);
}

#[test]
fn openai_and_anthropic_keys_are_told_apart() {
    finds("openai_key", &[fake("sk-proj-", 64), fake("sk-", 48)]);
    let anthropic = fake("sk-ant-api03-", 93);
    finds("anthropic_key", std::slice::from_ref(&anthropic));
    assert_eq!(kinds(&anthropic), vec!["anthropic_key"]);
    ignores("openai_key", &[s("task-force"), s("sk-short"), fake("ask-", 48)]);
}

#[test]
fn private_keys_and_jwts() {
    finds(
        "private_key",
        &[
            s("-----BEGIN RSA PRIVATE KEY-----\nMIIEow"),
            s("-----BEGIN PRIVATE KEY-----"),
            s("-----BEGIN OPENSSH PRIVATE KEY-----"),
            s("-----BEGIN EC PRIVATE KEY-----"),
        ],
    );
    ignores(
        "private_key",
        &[s("-----BEGIN PUBLIC KEY-----"), s("-----BEGIN CERTIFICATE-----")],
    );
    use base64::Engine as _;
    let b64 = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let jwt = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(r#"{"sub":"1234567890"}"#),
        fake("", 43)
    );
    finds("jwt", std::slice::from_ref(&jwt));
    let not_jwt = format!(
        "{}.{}.{}",
        b64(r#"{"notalg":1}"#),
        b64(r#"{"sub":"1234567890"}"#),
        fake("", 43)
    );
    ignores("jwt", &[not_jwt, b64(r#"{"alg":"HS256"}"#)]);
}

#[test]
fn generic_secrets_need_a_keyword_and_randomness() {
    finds(
        "generic_secret",
        &[
            format!("api_key={}", fake("", 32)),
            format!("\"client_secret\": \"{}\"", fake("", 40)),
            format!("PASSWORD: {}", fake("", 20)),
        ],
    );
    ignores(
        "generic_secret",
        &[
            s("\"password\": \"correcthorsebatterystaple\""),
            s("token_count: 12345678901234567"),
            s("\"secret_santa\": \"the office party\""),
            s("the token is valid"),
        ],
    );
}

#[test]
fn words_match_in_any_case_and_token_prefixes_only_as_written() {
    finds(
        "generic_secret",
        &[
            format!("pAsSwOrD = {}", fake("", 20)),
            format!("Client_SECRET: {}", fake("", 24)),
        ],
    );
    ignores(
        "aws_access_key",
        &[s("akiaIOSFODNN7EXAMPLE"), s("AkiaIOSFODNN7EXAMPLE")],
    );
    ignores("github_token", &[fake("GHP_", 36)]);
    // Long bodies are searched in blocks: a word across a block's end, and
    // a token after it, are still found.
    for pad in 4080..4100 {
        let body = format!("{}PASSWORD: {} AKIAIOSFODNN7EXAMPLE", " ".repeat(pad), fake("", 20));
        assert_eq!(kinds(&body), vec!["aws_access_key", "generic_secret"], "pad {pad}");
    }
}

#[test]
fn emails_and_phones() {
    finds(
        "email",
        &[
            s("jane.doe@example.com"),
            s("a+tag@mail.example.co.uk"),
            s("first_last@example.com"),
        ],
    );
    ignores("email", &[s("user@localhost"), s("@handle"), s("foo@bar")]);
    finds("phone", &[s("+14155552671"), s("(415) 555-2671"), s("415-555-2671")]);
    ignores(
        "phone",
        &[
            s("2026-11-23"),
            s("1700000000"),
            s("v1.2.3"),
            s("015-555-2671"),
            s("+0123456789"),
        ],
    );
}

#[test]
fn cards_are_luhn_checked_and_belong_to_a_network() {
    finds(
        "credit_card",
        &[
            s("4111111111111111"),
            s("4111 1111 1111 1111"),
            s("5555-5555-5555-4444"),
            s("378282246310005"),
        ],
    );
    ignores(
        "credit_card",
        &[
            s("4111111111111112"),
            s("1234567890123452"),
            s("4111-1111 1111-1111"),
            s("order 9111111111111111"),
        ],
    );
}

#[test]
fn ssns_follow_the_number_rules() {
    finds("us_ssn", &[s("536-22-1234"), s("536 22 1234")]);
    ignores(
        "us_ssn",
        &[
            s("078-05-1120"),
            s("666-12-3456"),
            s("900-12-3456"),
            s("536-00-1234"),
            s("536-22-0000"),
            s("536221234"),
        ],
    );
}

#[test]
fn ibans_are_mod_97_checked() {
    finds(
        "iban",
        &[
            s("GB82 WEST 1234 5698 7654 32"),
            s("GB82WEST12345698765432"),
            s("DE89370400440532013000"),
        ],
    );
    ignores(
        "iban",
        &[
            s("GB82 WEST 1234 5698 7654 33"),
            s("AB12CDEFGHIJKLMNOP"),
            s("XX82WEST12345698765432"),
        ],
    );
}

#[test]
fn json_escapes_do_not_hide_anything() {
    let body = br#"{"messages":[{"role":"user","content":"my key is \u0041KIAIOSFODNN7EXAMPLE\nand card 4111\u00201111 1111 1111"}]}"#;
    let report = engine().inspect_body(body, Some("application/json"), None).unwrap();
    assert_eq!(report.kinds(), vec!["aws_access_key", "credit_card"]);
    assert_eq!(report.action, Some(DlpAction::Block), "secrets block by default");
}

#[test]
fn findings_name_the_kind_and_hash_never_the_text() {
    let report = engine().scan(b"mail jane.doe@example.com now");
    assert_eq!(report.findings.len(), 1);
    let finding = &report.findings[0];
    assert_eq!(finding.kind, "email");
    assert_eq!(finding.class, Class::Pii);
    assert_eq!(finding.sha256, hex::encode(Sha256::digest(b"jane.doe@example.com")));
    let json = serde_json::to_string(&report.findings).unwrap();
    assert!(!json.contains("jane.doe"), "{json}");
    assert_eq!(report.action, Some(DlpAction::Redact), "PII is redacted by default");
}

#[test]
fn forms_and_query_strings_are_decoded() {
    let e = engine();
    let report = e
        .inspect_body(
            b"name=Jane&email=jane%2Edoe%40example.com",
            Some("application/x-www-form-urlencoded"),
            None,
        )
        .unwrap();
    assert_eq!(report.kinds(), vec!["email"]);
    assert_eq!(
        e.inspect_query("q=hello&key=AKIAIOSFODNN7EXAMPL%45").kinds(),
        vec!["aws_access_key"]
    );
    assert_eq!(
        e.redact_query("to=jane.doe%40example.com&n=1"),
        "to=%5BREDACTED%3Aemail%5D&n=1"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn compressed_bodies_are_decoded_and_bombs_stopped() {
    let e = engine();
    let secret = b"{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}";
    let gz = gzip(secret);
    assert_eq!(
        e.inspect_body(&gz, Some("application/json"), Some("gzip"))
            .unwrap()
            .kinds(),
        vec!["aws_access_key"]
    );
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(secret).unwrap();
    let zlib = zlib.finish().unwrap();
    assert_eq!(
        e.inspect_body(&zlib, None, Some("deflate")).unwrap().kinds(),
        vec!["aws_access_key"]
    );
    let mut br = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        writer.write_all(secret).unwrap();
    }
    assert_eq!(
        e.inspect_body(&br, None, Some("br")).unwrap().kinds(),
        vec!["aws_access_key"]
    );
    // gzip over brotli: undone last first.
    assert_eq!(
        e.inspect_body(&gzip(&br), None, Some("br, gzip")).unwrap().kinds(),
        vec!["aws_access_key"]
    );

    // 64 MB of zeros in a small gzip: stopped at the decoded cap.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        e.inspect_body(&bomb, None, Some("gzip")),
        Err(Unreadable::Bomb { limit: 8 << 20 })
    );
    assert!(matches!(
        e.inspect_body(b"not gzip", None, Some("gzip")),
        Err(Unreadable::Encoding(_))
    ));
    assert!(matches!(
        e.inspect_body(b"x", None, Some("zstd")),
        Err(Unreadable::Encoding(_))
    ));
    let big = vec![b'a'; (1 << 20) + 1];
    assert_eq!(
        e.inspect_body(&big, None, None),
        Err(Unreadable::TooLarge { limit: 1 << 20 })
    );
}

#[test]
fn redaction_keeps_json_valid_and_everything_else_intact() {
    let e = engine();
    let body = br#"{"user":"jane.doe@example.com","card":4111111111111111,"note":"call +14155552671","n":42}"#;
    let redacted = e.redact_body(body, Some("application/json"), None).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&redacted).unwrap();
    assert_eq!(value["user"], "[REDACTED:email]");
    assert_eq!(value["card"], "[REDACTED:credit_card]");
    assert_eq!(value["note"], "call [REDACTED:phone]");
    assert_eq!(value["n"], 42);
    assert!(
        e.inspect_body(&redacted, Some("application/json"), None)
            .unwrap()
            .findings
            .is_empty()
    );
    // Compressed in, identity out.
    let text = e
        .redact_body(&gzip(b"mail jane.doe@example.com"), Some("text/plain"), Some("gzip"))
        .unwrap();
    assert_eq!(text, b"mail [REDACTED:email]");
}

#[test]
fn the_strictest_action_wins_and_policies_choose_per_class() {
    let mut policy = DlpPolicy::default();
    policy.actions.secrets = DlpAction::HashLog;
    policy.actions.pii = DlpAction::Alert;
    let e = Engine::new(&policy);
    assert_eq!(e.scan(b"AKIAIOSFODNN7EXAMPLE").action, Some(DlpAction::HashLog));
    assert_eq!(
        e.scan(b"AKIAIOSFODNN7EXAMPLE jane.doe@example.com").action,
        Some(DlpAction::Alert)
    );
    assert_eq!(e.scan(b"nothing here").action, None);
}

#[test]
fn parsers_survive_random_and_mangled_input() {
    let e = engine();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: [&[u8]; 4] = [
        br#"{"a":"\u0041KIA\ud83d\ude00\u12","b":[1,2,"x@y.io"]}"#,
        b"GB82 WEST 1234 5698 7654 32 +14155552671 (415) 555-2671",
        b"k=v&email=a%40b.com&%ZZ=%",
        b"-----BEGIN RSA PRIVATE KEY----- eyJhbGciOiJIUzI1NiJ9.eyJ",
    ];
    for round in 0..3000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 => input.insert(at, next() as u8),
                1 if at < input.len() => {
                    input.remove(at);
                }
                _ => input.truncate(at),
            }
        }
        for content_type in [
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let _ = e.inspect_body(&input, content_type, None);
            let _ = e.redact_body(&input, content_type, None);
        }
        for encoding in ["gzip", "deflate", "br"] {
            let _ = e.inspect_body(&input, None, Some(encoding));
        }
    }
}
