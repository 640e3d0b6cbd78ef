//! The request's host, parsed once into a name or an address.
//!
//! Browsers, curl and libc accept many spellings of an IPv4 address
//! (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`). An allowlist or an SSRF
//! check that reads them as names would be fooled while the client or a
//! downstream library dials 127.0.0.1, so anything that looks like a number
//! to the WHATWG URL parser must be the one canonical dotted quad or it is
//! refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clawgress_policies::domain::{DomainError, normalize_domain};

/// Longest host kept in an error: the message goes back to the client and
/// into the audit trail, both of which must stay bounded.
const MAX_HOST_IN_ERROR: usize = 255;

/// Where a request wants to go, as the gateway understood it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A normalized DNS name (lowercase ASCII, punycode, no trailing dot).
    Domain(String),
    /// A literal address, written canonically by the client.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Why a host was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// A number-like host that is not a canonical dotted-quad IPv4 address.
    NonCanonicalIpv4 { host: String },
    /// A bracketed or colon-containing host that is not a plain IPv6 address.
    MalformedIpv6 { host: String },
    /// Not a valid DNS name.
    InvalidName(DomainError),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NonCanonicalIpv4 { host } => write!(
                f,
                "'{host}' looks like an IPv4 address but is not written as four decimal numbers \
                 0-255 without leading zeros (decimal, octal, hex, shortened and trailing-dot \
                 forms are refused); write the address as a.b.c.d or use a host name"
            ),
            HostError::MalformedIpv6 { host } => write!(
                f,
                "'{host}' is not a valid IPv6 address; write it in brackets without a zone id, \
                 e.g. [2001:db8::1]"
            ),
            HostError::InvalidName(e) => {
                write!(f, "{e}; use a DNS name made of letters, digits, '-' and '.'")
            }
        }
    }
}

impl std::error::Error for HostError {}

/// Parses the host part of a request target (`example.com`, `1.2.3.4`,
/// `[::1]`), without a port.
pub fn parse_host(raw: &str) -> Result<Host, HostError> {
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| malformed_ipv6(raw))?;
        return parse_ipv6(inner).ok_or_else(|| malformed_ipv6(raw));
    }
    // ':' never appears in a DNS name; an unbracketed IPv6 literal is accepted
    // because callers split `host:port` before us.
    if raw.contains(':') || raw.contains(']') {
        return parse_ipv6(raw).ok_or_else(|| malformed_ipv6(raw));
    }
    if ends_in_number(raw) {
        return canonical_ipv4(raw)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| non_canonical_ipv4(raw));
    }
    let name = normalize_domain(raw).map_err(HostError::InvalidName)?;
    // IDNA maps full-width digits and ideographic dots to ASCII, so
    // `１２７．０．０．１` only shows its number shape after normalization.
    if ends_in_number(&name) {
        return Err(non_canonical_ipv4(raw));
    }
    Ok(Host::Domain(name))
}

fn parse_ipv6(text: &str) -> Option<Host> {
    // The std parser refuses zone ids (`%eth0`) and IPv4 dotted quads on
    // their own, which is exactly what we want.
    text.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(IpAddr::V6(ip)))
}

/// Only `a.b.c.d`, each 0-255 in decimal without leading zeros; the std
/// parser enforces exactly that.
fn canonical_ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse::<Ipv4Addr>().ok()
}

/// The WHATWG URL "ends in a number" checker: a host whose last label (after
/// dropping one trailing dot) is all decimal digits or a `0x` hex number is
/// parsed as IPv4 by browsers, so it must not be treated as a name.
fn ends_in_number(host: &str) -> bool {
    let mut labels: Vec<&str> = host.split('.').collect();
    if labels.last().is_some_and(|last| last.is_empty()) {
        if labels.len() == 1 {
            return false;
        }
        labels.pop();
    }
    let Some(last) = labels.last() else {
        return false;
    };
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    is_hex_number(last)
}

/// The one non-decimal spelling left after the all-digits test: `0x` or `0X`
/// followed by hex digits (WHATWG counts a bare `0x` as zero).
fn is_hex_number(label: &str) -> bool {
    label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn non_canonical_ipv4(raw: &str) -> HostError {
    HostError::NonCanonicalIpv4 { host: bounded(raw) }
}

fn malformed_ipv6(raw: &str) -> HostError {
    HostError::MalformedIpv6 { host: bounded(raw) }
}

fn bounded(raw: &str) -> String {
    if raw.len() <= MAX_HOST_IN_ERROR {
        return raw.to_string();
    }
    let mut end = MAX_HOST_IN_ERROR;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &raw[..end])
}
