//! `dlp:` — outbound data-loss prevention (our addition; seed 001 §5.6): what
//! happens to a request body that carries secrets or personal data.

use serde::{Deserialize, Serialize};

use crate::values::ByteSize;

/// `dlp:` — which request bodies are scanned, and what a match does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlpPolicy {
    /// Scan request bodies, form fields and query strings at all.
    pub enabled: bool,
    /// Bodies larger than this are not scanned; `oversize` says what
    /// happens to them.
    pub max_inspect_bytes: ByteSize,
    /// A compressed body (gzip, deflate, br) that decodes to more than this
    /// is a decompression bomb; it is treated as oversize.
    pub max_decoded_bytes: ByteSize,
    /// What happens to a body that cannot be scanned (too large, or not
    /// decodable): `block` (fail closed, the default), `alert` (pass it and
    /// raise an alert record) or `pass`.
    pub oversize: OversizeAction,
    /// What a match does, per class of data.
    pub actions: DlpActions,
}

impl Default for DlpPolicy {
    fn default() -> Self {
        DlpPolicy {
            enabled: true,
            max_inspect_bytes: ByteSize::bytes(1 << 20),
            max_decoded_bytes: ByteSize::bytes(8 << 20),
            oversize: OversizeAction::Block,
            actions: DlpActions::default(),
        }
    }
}

/// The action for each class of sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlpActions {
    /// Keys, tokens, private keys, passwords: `block` by default.
    pub secrets: DlpAction,
    /// Email, phone, card, IBAN and SSN numbers: `redact` by default.
    pub pii: DlpAction,
}

impl Default for DlpActions {
    fn default() -> Self {
        DlpActions {
            secrets: DlpAction::Block,
            pii: DlpAction::Redact,
        }
    }
}

/// What a DLP match does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DlpAction {
    /// 403 listing the kinds of data found (never the data).
    Block,
    /// Rewrite the body with each match replaced by `[REDACTED:<kind>]`.
    Redact,
    /// Pass the request and raise an alert record.
    Alert,
    /// Pass the request and record the SHA-256 of each match.
    HashLog,
}

/// What happens to a body the scanner cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OversizeAction {
    Block,
    Alert,
    Pass,
}
