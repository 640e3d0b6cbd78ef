//! From a request body to the text the detectors read: content decoding
//! under a size cap (decompression bombs stop there), JSON string escapes
//! decoded (so `\u0041KIA…` is seen as `AKIA…`), form fields and query
//! strings percent-decoded.

use std::io::Read;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Larger than `max_inspect_bytes`.
    TooLarge { limit: u64 },
    /// Decodes to more than `max_decoded_bytes`.
    Bomb { limit: u64 },
    /// A `Content-Encoding` we do not decode, or a body that is not what its
    /// encoding says.
    Encoding(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::TooLarge { limit } => write!(f, "the body is larger than dlp.max_inspect_bytes ({limit})"),
            Unreadable::Bomb { limit } => write!(f, "the body decodes to more than dlp.max_decoded_bytes ({limit})"),
            Unreadable::Encoding(what) => write!(f, "the body cannot be decoded: {what}"),
        }
    }
}

/// Undoes `Content-Encoding` (gzip, x-gzip, deflate, br, identity; a list
/// is undone last first), reading at most `cap` decoded bytes.
pub fn decode_content(body: &[u8], encoding: Option<&str>, cap: u64) -> Result<Option<Vec<u8>>, Unreadable> {
    let Some(encoding) = encoding else { return Ok(None) };
    let codings: Vec<String> = encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    if codings.is_empty() {
        return Ok(None);
    }
    let mut current = body.to_vec();
    for coding in codings.iter().rev() {
        let reader: Box<dyn Read + '_> = match coding.as_str() {
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&current[..])),
            // RFC 9110's deflate is zlib; some clients send raw deflate.
            "deflate" if current.first().is_some_and(|b| b & 0x0f == 8) => {
                Box::new(flate2::read::ZlibDecoder::new(&current[..]))
            }
            "deflate" => Box::new(flate2::read::DeflateDecoder::new(&current[..])),
            "br" => Box::new(brotli::Decompressor::new(&current[..], 4096)),
            other => return Err(Unreadable::Encoding(format!("unsupported Content-Encoding {other:?}"))),
        };
        let mut decoded = Vec::new();
        reader
            .take(cap + 1)
            .read_to_end(&mut decoded)
            .map_err(|e| Unreadable::Encoding(format!("{coding}: {e}")))?;
        if decoded.len() as u64 > cap {
            return Err(Unreadable::Bomb { limit: cap });
        }
        current = decoded;
    }
    Ok(Some(current))
}

/// What kind of body this is, from its `Content-Type` (and a look at it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Form,
    Text,
}

pub fn format(content_type: Option<&str>, body: &[u8]) -> Format {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json_media = media.ends_with("/json") || media.ends_with("+json") || media == "application/x-ndjson";
    // Without a type, a body that opens like JSON is read as JSON.
    let looks_json = media.is_empty()
        && body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
    if media == "application/x-www-form-urlencoded" {
        Format::Form
    } else if json_media || looks_json {
        Format::Json
    } else {
        Format::Text
    }
}

/// JSON with the escapes inside its strings decoded; everything else kept,
/// so keys stay next to their values (`"password":"…"`). Malformed escapes
/// are kept as written: nothing is dropped from the scan.
pub fn json_text(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !body.contains(&b'\\') {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    // Jump from backslash to backslash; everything between is copied as it
    // is (JSON outside strings has no backslashes to undo, and quotes need
    // nothing done).
    while let Some(found) = memchr::memchr(b'\\', &body[i..]) {
        let at = i + found;
        out.extend_from_slice(&body[i..at]);
        if at + 1 < body.len() {
            i = at + unescape(&body[at..], &mut out);
        } else {
            out.push(b'\\');
            i = at + 1;
        }
    }
    out.extend_from_slice(&body[i..]);
    std::borrow::Cow::Owned(out)
}

/// Writes the escape at the start of `input` (which begins with `\`)
/// decoded to `out`; returns how much input it used.
fn unescape(input: &[u8], out: &mut Vec<u8>) -> usize {
    let simple = match input[1] {
        b'n' => Some(b'\n'),
        b't' => Some(b'\t'),
        b'r' => Some(b'\r'),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        b'/' => Some(b'/'),
        _ => None,
    };
    if let Some(byte) = simple {
        out.push(byte);
        return 2;
    }
    let hex = |at: usize| {
        input
            .get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let mut put = |c: char| out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    if input[1] == b'u'
        && let Some(unit) = hex(2)
    {
        // A surrogate pair is two escapes.
        if (0xD800..0xDC00).contains(&unit)
            && input.get(6..8) == Some(b"\\u")
            && let Some(low) = hex(8).filter(|l| (0xDC00..0xE000).contains(l))
            && let Some(c) = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
        {
            put(c);
            return 12;
        }
        if let Some(c) = char::from_u32(unit) {
            put(c);
            return 6;
        }
    }
    out.extend_from_slice(&input[..2]);
    2
}

/// Form fields (`a=1&b=2`) or a query string, percent-decoded, one
/// `name=value` per line.
pub fn form_text(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for (name, value) in url::form_urlencoded::parse(body) {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}
