//! Signed policy bundles: the signature is the bundle's last line, a YAML
//! comment, so a signed bundle is still one file that every YAML reader
//! (and `policy check`) takes as it is, with its line numbers unchanged,
//! and it can be replaced atomically (a detached `.sig` beside it could be
//! read half-updated, the bundle new and the signature old).
//!
//! ```text
//! # clawgress-signature: ed25519 <key id> <base64 signature>
//! ```
//!
//! The signature covers every byte before that line, prefixed with
//! `clawgress-policy-bundle/v1\n`. An edit anywhere, a comment included,
//! breaks it; signing again replaces the line.

use super::keys::{KeyRing, SigningKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const PREFIX: &str = "# clawgress-signature: ";
const DOMAIN: &[u8] = b"clawgress-policy-bundle/v1\n";

/// A bundle whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSignature {
    pub key_id: String,
    /// 1-based line of the signature.
    pub line: u32,
}

/// Why a bundle's signature is not accepted; `line()` says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error(
        "the bundle is not signed (its last line is not `{PREFIX}...`); sign it with `clawgress policy sign --key KEY FILE`"
    )]
    Missing { line: u32 },
    #[error("the signature line is malformed: {problem}; sign the bundle again with `clawgress policy sign`")]
    Malformed { line: u32, problem: &'static str },
    #[error(
        "signed by key {key_id}, which is not trusted here (trusted: {trusted}); sign with a trusted key or pass its public key"
    )]
    UnknownKey { line: u32, key_id: String, trusted: String },
    #[error(
        "the signature by key {key_id} does not match the bundle: it was changed after signing, or signed for other content"
    )]
    BadSignature { line: u32, key_id: String },
}

impl SignatureProblem {
    pub fn line(&self) -> u32 {
        match self {
            SignatureProblem::Missing { line }
            | SignatureProblem::Malformed { line, .. }
            | SignatureProblem::UnknownKey { line, .. }
            | SignatureProblem::BadSignature { line, .. } => *line,
        }
    }

    /// A short stable code for metrics and audit lines.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureProblem::Missing { .. } => "signature_missing",
            SignatureProblem::Malformed { .. } => "signature_malformed",
            SignatureProblem::UnknownKey { .. } => "unknown_key",
            SignatureProblem::BadSignature { .. } => "bad_signature",
        }
    }
}

/// The signed part of `bytes` and the signature line after it, if the last
/// non-empty line is one (with its 1-based line number).
pub fn signed_content(bytes: &[u8]) -> (&[u8], Option<(&[u8], u32)>) {
    let trimmed_len = bytes.len() - bytes.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    let trimmed = &bytes[..trimmed_len];
    let line_start = trimmed.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = &trimmed[line_start..];
    if last.starts_with(PREFIX.as_bytes()) {
        let line = 1 + bytes[..line_start].iter().filter(|&&b| b == b'\n').count() as u32;
        (&bytes[..line_start], Some((&last[PREFIX.len()..], line)))
    } else {
        (bytes, None)
    }
}

/// `bytes` with its signature (re)placed as the last line.
pub fn sign_bundle(bytes: &[u8], key: &SigningKey) -> Vec<u8> {
    let (content, _) = signed_content(bytes);
    let mut out = content.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let signature = key.sign(&message(&out));
    out.extend_from_slice(format!("{PREFIX}ed25519 {} {}\n", key.key_id(), STANDARD.encode(signature)).as_bytes());
    out
}

/// Checks `bytes`' signature against the trusted keys.
pub fn verify_bundle(bytes: &[u8], keys: &KeyRing) -> Result<BundleSignature, SignatureProblem> {
    let (content, signature) = signed_content(bytes);
    let Some((fields, line)) = signature else {
        let line = 1 + bytes.iter().filter(|&&b| b == b'\n').count() as u32;
        return Err(SignatureProblem::Missing { line });
    };
    let malformed = |problem| SignatureProblem::Malformed { line, problem };
    let text = std::str::from_utf8(fields).map_err(|_| malformed("not UTF-8"))?;
    let mut parts = text.split_ascii_whitespace();
    let (Some(algorithm), Some(key_id), Some(encoded), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected `ed25519 <key id> <signature>`"));
    };
    if algorithm != "ed25519" {
        return Err(malformed("the algorithm is not ed25519"));
    }
    let signature = STANDARD
        .decode(encoded)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or(malformed("the signature is not 64 bytes of base64"))?;
    let Some(key) = keys.get(key_id) else {
        return Err(SignatureProblem::UnknownKey {
            line,
            key_id: key_id.to_string(),
            trusted: keys.ids(),
        });
    };
    if !key.verify(&message(content), &signature) {
        return Err(SignatureProblem::BadSignature {
            line,
            key_id: key_id.to_string(),
        });
    }
    Ok(BundleSignature {
        key_id: key_id.to_string(),
        line,
    })
}

fn message(content: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + content.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(content);
    message
}
