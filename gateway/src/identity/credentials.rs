//! Splits a `Proxy-Authorization` value into its scheme and credentials, without decoding them.

use http::HeaderValue;

use super::IdentityError;

/// Longer than any sane JWT; bounds the work (hashing, base64) an unauthenticated client can cause.
const MAX_CREDENTIALS_LEN: usize = 8 * 1024;

/// The still-encoded credentials, borrowed from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credentials<'a> {
    /// base64 of `agent_id:api_key`.
    Basic(&'a str),
    /// A compact JWT.
    Bearer(&'a str),
}

pub(super) fn parse(header: &HeaderValue) -> Result<Credentials<'_>, IdentityError> {
    // `to_str` accepts visible ASCII plus space and tab only, so non-UTF-8 and other
    // opaque bytes are refused here, before anything tries to interpret them.
    let text = header
        .to_str()
        .map_err(|_| IdentityError::Malformed("header contains non-ASCII or control bytes"))?;
    let text = text.trim_matches(is_blank);
    if text.is_empty() {
        return Err(IdentityError::Missing);
    }
    let (scheme, rest) = text.split_once(is_blank).unwrap_or((text, ""));
    let credentials = rest.trim_start_matches(is_blank);
    if credentials.is_empty() {
        return Err(if is_known_scheme(scheme) {
            IdentityError::Malformed("no credentials after the scheme")
        } else {
            IdentityError::UnsupportedScheme
        });
    }
    if credentials.contains(is_blank) {
        return Err(IdentityError::Malformed("whitespace inside the credentials"));
    }
    if credentials.len() > MAX_CREDENTIALS_LEN {
        return Err(IdentityError::Malformed("credentials are too long"));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        Ok(Credentials::Basic(credentials))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credentials::Bearer(credentials))
    } else {
        Err(IdentityError::UnsupportedScheme)
    }
}

fn is_known_scheme(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("basic") || scheme.eq_ignore_ascii_case("bearer")
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}
