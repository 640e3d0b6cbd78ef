//! The detectors: what each kind of secret or personal data looks like.
//!
//! Most detectors hang off a keyword (a token prefix, `@`, `-----BEGIN`, a
//! word like `password`): the prefilter (`keywords`) finds the keywords,
//! and only the bytes around a hit meet the detector's regex. Numbers
//! (cards, SSNs, phones) and IBANs have no keyword: see `numbers`.

use regex::bytes::Regex;

use crate::checks;

/// The class of data a detector finds; the policy's action is per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Secret,
    Pii,
}

/// How a keyword hit is turned into a match.
pub(crate) enum Shape {
    /// The match starts at the keyword: the regex is anchored there.
    Prefix,
    /// The keyword is inside the match (`@` of an email): the match must
    /// cover the keyword, and starts at most `before` bytes ahead of it.
    /// `lead` is every byte a match may have before its keyword; the keyword
    /// is none of them, and every byte a match has after its keyword is one.
    Around { before: usize, lead: fn(u8) -> bool },
    /// The keyword names the value that follows (`password = ...`): the
    /// regex's first group is the value. These keywords are words, found in
    /// any case (`Password`, `API_KEY`); every other keyword is found only
    /// exactly as written.
    Named,
}

pub(crate) struct Detector {
    pub kind: &'static str,
    pub class: Class,
    pub confidence: f32,
    pub keywords: &'static [&'static str],
    pub shape: Shape,
    pub regex: Regex,
    /// For `Around`, the regex anchored at the start of what it is given.
    pub anchored: Option<Regex>,
    /// Most bytes a match spans, for the window the regex sees.
    pub max_len: usize,
    pub check: Option<fn(&[u8]) -> bool>,
}

/// Every keyword-driven detector. Patterns are ASCII-only (`(?-u)`).
pub(crate) fn keyword_detectors() -> Vec<Detector> {
    let regex = |pattern: String| Regex::new(&pattern).expect("detector patterns are valid");
    let d = |kind, class, confidence, keywords, shape: Shape, pattern: &str, max_len, check| Detector {
        kind,
        class,
        confidence,
        keywords,
        anchored: matches!(shape, Shape::Around { .. }).then(|| regex(format!("(?-u)^(?:{pattern})"))),
        shape,
        regex: regex(format!("(?-u){pattern}")),
        max_len,
        check,
    };
    use Class::{Pii, Secret};
    vec![
        d(
            "aws_access_key",
            Secret,
            0.95,
            &["AKIA", "ASIA", "ABIA", "ACCA"],
            Shape::Prefix,
            r"^(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}",
            20,
            None,
        ),
        d(
            "gcp_api_key",
            Secret,
            0.95,
            &["AIza"],
            Shape::Prefix,
            r"^AIza[0-9A-Za-z_\-]{35}",
            39,
            None,
        ),
        d(
            "azure_storage_key",
            Secret,
            0.95,
            &["AccountKey="],
            Shape::Prefix,
            r"^AccountKey=[A-Za-z0-9+/]{86}==",
            99,
            None,
        ),
        d(
            "github_token",
            Secret,
            0.95,
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            Shape::Prefix,
            r"^(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})",
            93,
            None,
        ),
        d(
            "gitlab_token",
            Secret,
            0.95,
            &["glpat-"],
            Shape::Prefix,
            r"^glpat-[A-Za-z0-9_\-]{20}",
            26,
            None,
        ),
        d(
            "slack_token",
            Secret,
            0.9,
            &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"],
            Shape::Prefix,
            r"^xox[abprs]-[0-9]{6,}-[A-Za-z0-9\-]{8,}",
            200,
            None,
        ),
        d(
            "slack_webhook",
            Secret,
            0.95,
            &["hooks.slack.com/services/"],
            Shape::Prefix,
            r"^hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{24}",
            120,
            None,
        ),
        d(
            "stripe_key",
            Secret,
            0.95,
            &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
            Shape::Prefix,
            r"^[sr]k_(?:live|test)_[A-Za-z0-9]{24,99}",
            107,
            None,
        ),
        d(
            "anthropic_key",
            Secret,
            0.95,
            &["sk-ant-"],
            Shape::Prefix,
            r"^sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{80,120}",
            140,
            None,
        ),
        d(
            "openai_key",
            Secret,
            0.9,
            &["sk-"],
            Shape::Prefix,
            r"^sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|[A-Za-z0-9]{48})",
            210,
            None,
        ),
        d(
            "private_key",
            Secret,
            0.99,
            &["-----BEGIN "],
            Shape::Prefix,
            r"^-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
            64,
            None,
        ),
        d(
            "jwt",
            Secret,
            0.85,
            &["eyJ"],
            Shape::Prefix,
            r"^eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}",
            8192,
            Some(checks::jwt),
        ),
        d(
            "generic_secret",
            Secret,
            0.6,
            &[
                "secret",
                "token",
                "password",
                "passwd",
                "api_key",
                "apikey",
                "api-key",
                "access_key",
                "credential",
                "private_key",
            ],
            Shape::Named,
            r#"^(?i:secret|token|password|passwd|api[_-]?key|access[_-]?key|credential|private[_-]?key)[A-Za-z0-9_\-]{0,24}["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9/+_\-=.~]{16,128})"#,
            200,
            Some(checks::random_secret),
        ),
        d(
            "email",
            Pii,
            0.9,
            &["@"],
            Shape::Around {
                before: 64,
                lead: |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'%' | b'+' | b'-'),
            },
            r"[A-Za-z0-9_.%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}",
            400,
            None,
        ),
    ]
}

/// Whether `byte` continues a token (so a match next to it is part of a
/// longer word, not a token of its own).
pub(crate) fn word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}
