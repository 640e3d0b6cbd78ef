//! One audit line as the engine reads it: only the fields it uses,
//! borrowed from the line's bytes (strings without escapes are not
//! copied), every other field skipped. The same shape comes from a trail
//! file and from the `audit.>` streams, whose payload is one trail line.

use std::borrow::Cow;

use serde::Deserialize;

/// The fields of an `egress_*`, `dns_query`, `admin_action` or
/// `checkpoint` line that analysis, search and replay use. Absent fields
/// are `None`/empty: lines of other types decode too.
#[derive(Debug, Deserialize)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub agent_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub decision: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub request: Option<RequestPart<'a>>,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub token_estimate: Option<u64>,
    #[serde(default)]
    pub tokens_in: Option<u64>,
    #[serde(default)]
    pub tokens_out: Option<u64>,
    #[serde(default)]
    pub destination_asn: Option<u32>,
    #[serde(default, borrow)]
    pub destination_geo: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub alert_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub qname: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub dlp_matches: Vec<DlpMatchPart<'a>>,
    #[serde(default, borrow)]
    pub policy_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub protocol: Option<Cow<'a, str>>,
    #[serde(default)]
    pub tunnel: bool,
}

#[derive(Debug, Deserialize)]
pub struct RequestPart<'a> {
    #[serde(default, borrow)]
    pub method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub domain: Option<Cow<'a, str>>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct DlpMatchPart<'a> {
    #[serde(default, rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub action: Option<Cow<'a, str>>,
}

impl<'a> Line<'a> {
    /// Decodes one line; the error says why, for `file:line` reports.
    pub fn parse(bytes: &'a [u8]) -> Result<Line<'a>, String> {
        let line: Line<'a> = serde_json::from_slice(bytes).map_err(|e| format!("not an audit line: {e}"))?;
        if timestamp_ms(&line.timestamp).is_none() {
            return Err(format!("timestamp '{}' is not RFC 3339", line.timestamp));
        }
        Ok(line)
    }

    /// Milliseconds since the epoch (checked by [`Line::parse`]).
    pub fn at_ms(&self) -> i64 {
        timestamp_ms(&self.timestamp).unwrap_or(0)
    }

    pub fn domain(&self) -> Option<&str> {
        self.request.as_ref().and_then(|r| r.domain.as_deref())
    }

    pub fn method(&self) -> Option<&str> {
        self.request.as_ref().and_then(|r| r.method.as_deref())
    }

    pub fn port(&self) -> Option<u16> {
        self.request.as_ref().and_then(|r| r.port)
    }

    /// Tokens the request spent: the provider's report when there is one,
    /// else the gateway's estimate.
    pub fn tokens(&self) -> u64 {
        match (self.tokens_in, self.tokens_out) {
            (Some(i), o) => i + o.unwrap_or(0),
            (None, _) => self.token_estimate.unwrap_or(0),
        }
    }

    pub fn is_egress(&self) -> bool {
        self.kind.starts_with("egress_")
    }
}

/// `2026-12-06T01:20:00.123Z` (the trail's form) without a general parser;
/// other RFC 3339 forms through chrono.
pub fn timestamp_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut n = 0i64;
        for &c in b.get(range)? {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    };
    let fast = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if fast {
        let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (h, mi, s, ms) = (digits(11..13)?, digits(14..16)?, digits(17..19)?, digits(20..23)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        return Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
