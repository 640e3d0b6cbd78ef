//! Signed checkpoints: every N records or T seconds (and on shutdown) the
//! writer adds a line that signs the chain so far with the gateway's
//! Ed25519 key (`--audit-key`).
//!
//! ```text
//! {"timestamp":"…","type":"checkpoint","seq":1000,"covers":"<hash of line 1000>","key_id":"…",
//!  "signature":"<base64>","prev_hash":"<hash of line 1000>","hash":"…"}
//! ```
//!
//! - `seq` is the line number (1-based, torn fragments counted) of the last
//!   line covered; the checkpoint itself is line `seq + 1`.
//! - `covers` is that line's `hash`, so it always equals the checkpoint's own
//!   `prev_hash`: signing it signs every line before it, through the chain.
//! - `signature` is Ed25519 over the UTF-8 text
//!   `clawgress-audit-checkpoint/v1\n{seq}\n{covers}\n{timestamp}\n{key_id}`.
//!
//! What a verifier holding the public key can tell (`clawgress audit verify
//! FILE --key PUB`):
//! - a file rewritten by someone without the key (a replaced file, or one
//!   whose chain was recomputed after an edit): its checkpoints do not
//!   verify, or there are none;
//! - records after the last checkpoint: reported as unsigned. A live file
//!   always has some (at most N records or T seconds' worth); a stopped
//!   gateway signs its last records on the way out.
//! - what it cannot tell from the file alone: a file cut off cleanly right
//!   after one of its checkpoints looks like a file that ended there. Every
//!   checkpoint is also shipped to `audit.admin`; a checkpoint in the stream
//!   with a `seq` the file does not reach proves the cut.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use clawgress_policies::signing::{KeyRing, SigningKey};
use serde::{Deserialize, Serialize};

use super::chain::{self, ChainHash};
use super::verify::LineProblem;

pub(crate) const CHECKPOINT_TYPE: &str = "checkpoint";
const DOMAIN: &str = "clawgress-audit-checkpoint/v1";

/// How the writer signs (`--audit-key`, `--audit-checkpoint-every`,
/// `--audit-checkpoint-interval`).
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub key: Arc<SigningKey>,
    /// A checkpoint after this many records.
    pub every_records: u64,
    /// ... or this long after the first record since the last one.
    pub interval: Duration,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    timestamp: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    covers: &'a str,
    key_id: &'a str,
    signature: &'a str,
}

fn message(seq: u64, covers: &str, timestamp: &str, key_id: &str) -> String {
    format!("{DOMAIN}\n{seq}\n{covers}\n{timestamp}\n{key_id}")
}

/// Appends a sealed checkpoint covering line `seq` (whose hash is `covers`)
/// to `buf`; returns the checkpoint line's own hash.
pub(crate) fn append(
    buf: &mut Vec<u8>,
    key: &SigningKey,
    seq: u64,
    covers: &ChainHash,
    now: &DateTime<Utc>,
) -> Option<ChainHash> {
    // The same shape as every line's timestamp (`event::Rfc3339Millis`).
    let timestamp = now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let covers = hex::encode(covers);
    let signature = STANDARD.encode(key.sign(message(seq, &covers, &timestamp, key.key_id()).as_bytes()));
    let start = buf.len();
    let line = CheckpointLine {
        timestamp: &timestamp,
        kind: CHECKPOINT_TYPE,
        seq,
        covers: &covers,
        key_id: key.key_id(),
        signature: &signature,
    };
    serde_json::to_writer(&mut *buf, &line).ok()?;
    let prev = parse_hex(&covers)?;
    chain::seal(buf, start, &prev)
}

#[derive(Deserialize)]
struct CheckpointFields {
    timestamp: String,
    seq: u64,
    covers: String,
    key_id: String,
    signature: String,
}

/// Checks a checkpoint line that already passed the chain checks: it is
/// line `line_no`, its `prev_hash` is `prev`, and it must be signed by a
/// key in `keys` over exactly what it claims. Returns the key id.
pub(crate) fn check(line: &[u8], line_no: u64, prev: &ChainHash, keys: &KeyRing) -> Result<String, LineProblem> {
    let fields: CheckpointFields =
        serde_json::from_slice(line).map_err(|_| LineProblem::Malformed("a checkpoint without its fields"))?;
    if fields.seq + 1 != line_no {
        return Err(LineProblem::CheckpointMismatch(
            "its seq is not the line before it: lines were added or removed before it",
        ));
    }
    if parse_hex(&fields.covers).as_ref() != Some(prev) {
        return Err(LineProblem::CheckpointMismatch(
            "covers is not the previous line's hash",
        ));
    }
    let Some(key) = keys.get(&fields.key_id) else {
        return Err(LineProblem::UnknownKey(fields.key_id));
    };
    let signature = STANDARD
        .decode(&fields.signature)
        .map_err(|_| LineProblem::Malformed("the checkpoint signature is not base64"))?;
    let signed = message(fields.seq, &fields.covers, &fields.timestamp, &fields.key_id);
    if !key.verify(signed.as_bytes(), &signature) {
        return Err(LineProblem::BadSignature(fields.key_id));
    }
    Ok(fields.key_id)
}

fn parse_hex(s: &str) -> Option<ChainHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
