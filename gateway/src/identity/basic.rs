//! `Basic base64(agent_id:api_key)` authentication against the agent registry.

use std::sync::Arc;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::registry::AgentRegistry;
use super::{Identity, IdentityError};

/// Encoded length limit; decoding happens in a stack buffer of the matching size so the
/// API-key path never allocates.
const MAX_ENCODED_LEN: usize = 1024;
const MAX_DECODED_LEN: usize = MAX_ENCODED_LEN / 4 * 3;

/// RFC 7617 says padded standard base64, but some clients drop the padding; both are fine.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn authenticate(registry: &AgentRegistry, encoded: &str) -> Result<Arc<Identity>, IdentityError> {
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(IdentityError::Malformed("basic credentials are too long"));
    }
    let mut buffer = [0u8; MAX_DECODED_LEN];
    let result = decode_and_verify(registry, encoded, &mut buffer);
    // Best effort: do not leave the clear-text key lying around on the stack.
    buffer.fill(0);
    std::hint::black_box(&buffer);
    result
}

/// Longest claimed agent id kept for the audit of a refused credential.
const MAX_CLAIMED_ID_BYTES: usize = 128;

/// The agent id a Basic credential claims, unverified, for the audit line
/// of its refusal. Only the part before the first ':' is ever returned, and
/// only when a key follows it and it looks like an agent id (no blanks or
/// control characters, bounded): a value without ':' may be a bare key.
pub(super) fn claimed_agent_id(encoded: &str) -> Option<String> {
    if encoded.len() > MAX_ENCODED_LEN {
        return None;
    }
    let mut buffer = [0u8; MAX_DECODED_LEN];
    let claimed = BASIC_BASE64
        .decode_slice(encoded, &mut buffer)
        .ok()
        .and_then(|len| buffer.get(..len))
        .and_then(|decoded| decoded.iter().position(|&b| b == b':').map(|at| (decoded, at)))
        .filter(|&(decoded, at)| at > 0 && at <= MAX_CLAIMED_ID_BYTES && at + 1 < decoded.len())
        .and_then(|(decoded, at)| std::str::from_utf8(&decoded[..at]).ok())
        .filter(|id| !id.chars().any(|c| c.is_whitespace() || c.is_control()))
        .map(str::to_string);
    // As in `authenticate`: the key must not stay on the stack.
    buffer.fill(0);
    std::hint::black_box(&buffer);
    claimed
}

fn decode_and_verify(
    registry: &AgentRegistry,
    encoded: &str,
    buffer: &mut [u8; MAX_DECODED_LEN],
) -> Result<Arc<Identity>, IdentityError> {
    let len = BASIC_BASE64
        .decode_slice(encoded, buffer)
        .map_err(|_| IdentityError::Malformed("basic credentials are not valid base64"))?;
    let decoded = buffer
        .get(..len)
        .ok_or(IdentityError::Malformed("basic credentials are not valid base64"))?;
    let decoded =
        std::str::from_utf8(decoded).map_err(|_| IdentityError::Malformed("basic credentials are not UTF-8"))?;
    // Agent ids cannot contain ':', keys can: split at the first one.
    let (agent_id, api_key) = decoded
        .split_once(':')
        .ok_or(IdentityError::Malformed("basic credentials lack the ':' separator"))?;
    if agent_id.is_empty() {
        return Err(IdentityError::Malformed("empty agent id"));
    }
    if api_key.is_empty() {
        return Err(IdentityError::Malformed("empty api key"));
    }
    registry.verify_api_key(agent_id, api_key.as_bytes())
}
