//! The detectors: what each kind of secret or personal data looks like.
//!
//! Most detectors hang off a keyword (a token prefix, `@`, `-----BEGIN`, a
//! word like `password`): one Aho-Corasick pass over the text finds the
//! keywords, and only the bytes around a hit meet the detector's regex.
//! Numbers (cards, SSNs, phones) and IBANs have no keyword; a byte scanner
//! finds their candidates and a checksum or number rule confirms them.

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
    /// The keyword is inside the match (`@` of an email): the regex runs
    /// over a window around it and the match must cover the keyword.
    Around { before: usize },
    /// The keyword names the value that follows (`password = ...`): the
    /// regex's first group is the value.
    Named,
}

pub(crate) struct Detector {
    pub kind: &'static str,
    pub class: Class,
    pub confidence: f32,
    pub keywords: &'static [&'static str],
    pub shape: Shape,
    pub regex: Regex,
    /// Most bytes a match spans, for the window the regex sees.
    pub max_len: usize,
    pub check: Option<fn(&[u8]) -> bool>,
}

/// Every keyword-driven detector. Patterns are ASCII-only (`(?-u)`).
pub(crate) fn keyword_detectors() -> Vec<Detector> {
    let d = |kind, class, confidence, keywords, shape, pattern: &str, max_len, check| Detector {
        kind,
        class,
        confidence,
        keywords,
        shape,
        regex: Regex::new(&format!("(?-u){pattern}")).expect("detector patterns are valid"),
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
            Shape::Around { before: 64 },
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

/// A number-shaped finding from the byte scanner.
pub(crate) struct NumberMatch {
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// Cards, SSNs and phone numbers: runs of digits with the separators people
/// write them with, confirmed by Luhn and the networks' prefixes, the SSN
/// number rules, or a phone layout.
/// The first ASCII digit at or after `from`. Eight bytes at a time: most
/// of a body has no digits, and this is the scanner's inner loop.
pub(crate) fn next_digit(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 128;
    let mut i = from;
    while let Some(chunk) = text.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let low = x & (ONES * 127);
        // A byte in 0x30..=0x39, ASCII only (Bit Twiddling Hacks' hasbetween).
        let between = (ONES * (127 + 0x3A) - low) & !x & (low + ONES * (127 - 0x2F)) & HIGH;
        if between != 0 {
            break;
        }
        i += 8;
    }
    text.get(i..)?.iter().position(u8::is_ascii_digit).map(|p| i + p)
}

pub(crate) fn numbers(text: &[u8], out: &mut Vec<NumberMatch>) {
    let mut from = 0;
    while let Some(digit) = next_digit(text, from) {
        // `+1 415…` and `(415) …` start one byte before their first digit.
        let i = if digit > 0 && matches!(text[digit - 1], b'+' | b'(') {
            digit - 1
        } else {
            digit
        };
        let byte = text[i];
        if i > 0 && (word(text[i - 1]) || text[i - 1] == b'.') {
            // Inside a word or a decimal: skip the rest of this digit run.
            from = digit + text[digit..].iter().take_while(|b| b.is_ascii_digit()).count().max(1);
            continue;
        }
        // The run: digits, and single separators between them.
        let mut end = i + 1;
        let mut digits = usize::from(byte.is_ascii_digit());
        while end < text.len() {
            let b = text[end];
            if b.is_ascii_digit() {
                digits += 1;
                end += 1;
            } else if matches!(b, b' ' | b'-' | b'.' | b')')
                && text.get(end + 1).is_some_and(|n| n.is_ascii_digit() || *n == b' ')
            {
                end += 1;
            } else {
                break;
            }
        }
        while end > i && !text[end - 1].is_ascii_digit() {
            end -= 1;
        }
        if (9..=19).contains(&digits)
            && !text.get(end).is_some_and(|b| word(*b))
            && let Some((kind, confidence)) = classify_number(&text[i..end])
        {
            out.push(NumberMatch {
                kind,
                start: i,
                end,
                confidence,
            });
        }
        from = end.max(digit + 1);
    }
}

fn classify_number(run: &[u8]) -> Option<(&'static str, f32)> {
    let mut digits = [0u8; 19];
    let mut count = 0;
    let mut separator = None;
    let mut mixed = false;
    for &b in run {
        if b.is_ascii_digit() {
            if count == digits.len() {
                return None;
            }
            digits[count] = b;
            count += 1;
        } else {
            mixed |= separator.is_some_and(|s| s != b);
            separator = Some(b);
        }
    }
    let digits = &digits[..count];
    // Cards: 13-19 digits, ungrouped or grouped by one kind of separator.
    if (13..=19).contains(&count)
        && run[0].is_ascii_digit()
        && !mixed
        && separator.is_none_or(|s| matches!(s, b' ' | b'-'))
        && checks::card_network(digits)
        && checks::luhn(digits)
    {
        return Some(("credit_card", 0.9));
    }
    // SSN: AAA-GG-SSSS (or with spaces), valid by the number rules.
    if count == 9 && run.len() == 11 && matches!(run[3], b'-' | b' ') && run[6] == run[3] && checks::ssn(digits) {
        return Some(("us_ssn", 0.8));
    }
    // Phones: +E.164 (8-15 digits), or a North American (NNN) NNN-NNNN /
    // NNN-NNN-NNNN layout.
    if run[0] == b'+' && (8..=15).contains(&count) && run[1] != b'0' {
        return Some(("phone", 0.7));
    }
    if count == 10 && nanp_layout(run) {
        return Some(("phone", 0.6));
    }
    None
}

fn nanp_layout(run: &[u8]) -> bool {
    let layouts: [&[u8]; 4] = [b"(ddd) ddd-dddd", b"ddd-ddd-dddd", b"ddd.ddd.dddd", b"(ddd)ddd-dddd"];
    layouts.iter().any(|layout| {
        layout.len() == run.len()
            && layout
                .iter()
                .zip(run)
                .all(|(l, r)| if *l == b'd' { r.is_ascii_digit() } else { l == r })
    }) && !matches!(run.iter().find(|b| b.is_ascii_digit()), Some(b'0' | b'1'))
}

/// IBAN candidates: two capitals and two digits at a word start, then
/// groups of letters and digits (optionally in fours separated by spaces).
pub(crate) fn ibans(text: &[u8], out: &mut Vec<NumberMatch>) {
    if text.len() < 15 {
        return;
    }
    // A candidate is found from its check digits: two capitals, then the
    // digit run the scanner lands on.
    let mut from = 2;
    while let Some(digit) = next_digit(text, from) {
        from = digit + 1;
        if digit < 2 || digit + 13 > text.len() {
            continue;
        }
        let i = digit - 2;
        let candidate = text[i].is_ascii_uppercase()
            && text[i + 1].is_ascii_uppercase()
            && text[i + 3].is_ascii_digit()
            && (i == 0 || !word(text[i - 1]));
        if !candidate {
            continue;
        }
        let mut end = i + 4;
        while end < text.len() && end - i < 42 {
            let b = text[end];
            let alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
            // Letters and digits, and single spaces between groups.
            if alnum(&b) || (b == b' ' && text.get(end + 1).is_some_and(alnum)) {
                end += 1;
            } else {
                break;
            }
        }
        // A trailing group may belong to the next word: try the longest first.
        let mut found = false;
        let mut stop = end;
        while stop >= i + 15 {
            if (stop == text.len() || !word(text[stop])) && checks::iban(&text[i..stop]) {
                out.push(NumberMatch {
                    kind: "iban",
                    start: i,
                    end: stop,
                    confidence: 0.95,
                });
                found = true;
                break;
            }
            match text[i..stop].iter().rposition(|b| *b == b' ') {
                Some(space) if i + space >= i + 15 => stop = i + space,
                _ => break,
            }
        }
        if found {
            from = stop;
        }
    }
}
