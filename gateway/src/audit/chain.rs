//! The line format of the hash chain: how a serialized event becomes a sealed line,
//! and how a line is checked on its own. The writer and the verifier share this so
//! they cannot drift apart. The format itself is documented in the module root.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::verify::LineProblem;

/// A SHA-256 value of the chain.
pub type ChainHash = [u8; 32];

/// The `prev_hash` of the first line of a file.
pub const GENESIS_HASH: ChainHash = [0; 32];

const PREV_HASH_KEY: &[u8] = b",\"prev_hash\":\"";
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`: what follows the hashed part of every line.
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// Turns the JSON object at `buf[start..]` into a sealed line chained to `prev`
/// (trailing `\n` included) and returns the line's hash.
///
/// Returns `None`, leaving `buf` truncated back to `start`, if `buf[start..]` is not
/// an object with at least one field, which a derived `Serialize` never produces.
pub(crate) fn seal(buf: &mut Vec<u8>, start: usize, prev: &ChainHash) -> Option<ChainHash> {
    if buf.len() < start + 2 || buf.last() != Some(&b'}') || buf[start] != b'{' {
        buf.truncate(start);
        return None;
    }
    buf.pop();
    buf.extend_from_slice(PREV_HASH_KEY);
    push_hex(buf, prev);
    buf.push(b'"');
    let hash: ChainHash = Sha256::digest(&buf[start..]).into();
    buf.extend_from_slice(HASH_KEY);
    push_hex(buf, &hash);
    buf.extend_from_slice(b"\"}\n");
    Some(hash)
}

fn push_hex(buf: &mut Vec<u8>, bytes: &ChainHash) {
    let mut hex_buf = [0u8; 64];
    // Cannot fail: the output buffer is exactly twice the input.
    if hex::encode_to_slice(bytes, &mut hex_buf).is_ok() {
        buf.extend_from_slice(&hex_buf);
    }
}

/// The chain fields of a line that passed [`check_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedLine {
    /// For an `audit_chain_resumed` marker: the torn lines and bytes it
    /// declares, so verify can hold the fragments before it to account.
    pub(crate) resumed: Option<(u64, u64)>,
    /// A signed checkpoint ([`super::checkpoint`]): verify checks its
    /// signature when it was given keys.
    pub(crate) checkpoint: bool,
    pub(crate) prev_hash: ChainHash,
    pub(crate) hash: ChainHash,
}

#[derive(Deserialize)]
struct ChainFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    prev_hash: Option<String>,
    hash: Option<String>,
    torn_lines: Option<u64>,
    torn_bytes: Option<u64>,
}

/// Checks one line (without its `\n`) on its own: JSON, chain fields present and in
/// place, and its hash matching its content. Whether it links to the previous line
/// is the caller's business.
pub(crate) fn check_line(line: &[u8]) -> Result<SealedLine, LineProblem> {
    let fields: ChainFields = serde_json::from_slice(line).map_err(|e| LineProblem::NotJson { column: e.column() })?;
    let prev_hex = fields.prev_hash.ok_or(LineProblem::MissingField("prev_hash"))?;
    let hash_hex = fields.hash.ok_or(LineProblem::MissingField("hash"))?;
    let prev_hash = parse_hash(&prev_hex).ok_or(LineProblem::Malformed("prev_hash is not 64 lowercase hex digits"))?;
    let hash = parse_hash(&hash_hex).ok_or(LineProblem::Malformed("hash is not 64 lowercase hex digits"))?;

    // The hashed part is everything before the final `,"hash":"…"}`; it must itself
    // end with this line's prev_hash, so the link is covered by the hash.
    let Some(body_len) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
        return Err(LineProblem::Malformed("hash is not the last field"));
    };
    let (body, suffix) = line.split_at(body_len);
    if !suffix.starts_with(HASH_KEY)
        || !suffix.ends_with(b"\"}")
        || &suffix[HASH_KEY.len()..HASH_KEY.len() + 64] != hash_hex.as_bytes()
    {
        return Err(LineProblem::Malformed("hash is not the last field"));
    }
    let prev_tail_len = PREV_HASH_KEY.len() + 64 + 1;
    let prev_in_place = body.len() >= prev_tail_len && {
        let tail = &body[body.len() - prev_tail_len..];
        tail.starts_with(PREV_HASH_KEY) && &tail[PREV_HASH_KEY.len()..PREV_HASH_KEY.len() + 64] == prev_hex.as_bytes()
    };
    if !prev_in_place {
        return Err(LineProblem::Malformed("prev_hash does not come right before hash"));
    }
    if <ChainHash>::from(Sha256::digest(body)) != hash {
        return Err(LineProblem::Edited);
    }
    Ok(SealedLine {
        resumed: (fields.kind.as_deref() == Some(super::event::EventType::CHAIN_RESUMED))
            .then(|| (fields.torn_lines.unwrap_or(0), fields.torn_bytes.unwrap_or(0))),
        checkpoint: fields.kind.as_deref() == Some(super::checkpoint::CHECKPOINT_TYPE),
        prev_hash,
        hash,
    })
}

/// Lowercase only: the writer never emits uppercase, so uppercase means an edit.
fn parse_hash(s: &str) -> Option<ChainHash> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
