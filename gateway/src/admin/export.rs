//! `GET /v1/audit?from=...&to=...&limit=...&format=json`: audit records for
//! analysis (`clawgress egress export`), as JSON lines.

use std::io::BufRead;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::problem::Problem;
use crate::Gateway;

const DEFAULT_LIMIT: usize = 10_000;
const MAX_LIMIT: usize = 100_000;

/// The query of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
}

pub(super) async fn export(gateway: &Gateway, query: &str) -> Response<Full<Bytes>> {
    let query = match parse_query(query, Utc::now()) {
        Ok(query) => query,
        Err(problem) => return problem.into_response(),
    };
    let path = gateway.audit_path.clone();
    let scanned = tokio::task::spawn_blocking(move || scan(&path, &query)).await;
    let (lines, truncated) = match scanned {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            return Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_unreadable",
                format!("cannot read the audit trail: {error}"),
            )
            .into_response();
        }
        Err(_) => {
            return Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_unreadable",
                "the export task failed",
            )
            .into_response();
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(lines)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    if truncated {
        response
            .headers_mut()
            .insert("x-clawgress-truncated", HeaderValue::from_static("true"));
    }
    response
}

pub(super) fn parse_query(query: &str, now: DateTime<Utc>) -> Result<ExportQuery, Problem> {
    let mut parsed = ExportQuery {
        from: None,
        to: None,
        limit: DEFAULT_LIMIT,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "from" => parsed.from = Some(parse_when(&value, now)?),
            "to" => parsed.to = Some(parse_when(&value, now)?),
            "limit" => {
                parsed.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad(
                            format!("limit must be 1..={MAX_LIMIT}; got '{value}'"),
                            "e.g. limit=1000",
                        )
                    })?;
            }
            "format" if value == "json" => {}
            "format" => {
                return Err(Problem::bad(
                    format!("format '{value}' is not supported"),
                    "use format=json",
                ));
            }
            other => {
                return Err(Problem::bad(
                    format!("unknown query parameter '{other}'"),
                    "use from, to, limit and format",
                ));
            }
        }
    }
    Ok(parsed)
}

/// `2026-11-23T10:00:00Z`, `1 hour ago`, `30 minutes ago`, `2d`, `now`.
pub(super) fn parse_when(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Problem> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let hint = "write an RFC 3339 time (2026-11-23T10:00:00Z) or a relative one (\"1 hour ago\", \"30m\", \"2d\")";
    let relative = text.strip_suffix("ago").unwrap_or(text).trim();
    let (number, unit) = match relative.split_once(' ') {
        Some((number, unit)) => (number.trim(), unit.trim()),
        None => {
            let split = relative.find(|c: char| !c.is_ascii_digit()).unwrap_or(relative.len());
            relative.split_at(split)
        }
    };
    let amount: i64 = number
        .parse()
        .map_err(|_| Problem::bad(format!("'{text}' is not a time"), hint))?;
    let seconds = match unit.trim_end_matches('s') {
        "" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        "w" | "week" => 7 * 86_400,
        _ => return Err(Problem::bad(format!("'{unit}' is not a time unit"), hint)),
    };
    amount
        .checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| Problem::bad(format!("'{text}' is too far back"), hint))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                let high = hex(bytes[i + 1]).unwrap_or(0);
                let low = hex(bytes[i + 2]).unwrap_or(0);
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The matching lines, in file order, and whether the limit cut them.
fn scan(path: &std::path::Path, query: &ExportQuery) -> std::io::Result<(Vec<u8>, bool)> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(error) => return Err(error),
    };
    let mut out = Vec::new();
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Some(at) = line_time(&line) else { continue };
        if query.from.is_some_and(|from| at < from) || query.to.is_some_and(|to| at >= to) {
            continue;
        }
        if count == query.limit {
            return Ok((out, true));
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        count += 1;
    }
    Ok((out, false))
}

fn line_time(line: &str) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        timestamp: &'a str,
    }
    let stamp: Stamp<'_> = serde_json::from_str(line).ok()?;
    DateTime::parse_from_rfc3339(stamp.timestamp)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
