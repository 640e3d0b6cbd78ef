//! `GET /v1/audit?from=...&to=...&agent=...&domain=...&decision=...&limit=...`:
//! audit records for analysis (`clawgress egress export`) and for workers
//! that check the gateway saw their page (the Steel backend): JSON lines by
//! default, or `format=json` (one array) or `format=csv` ([`super::formats`]).
//!
//! A query with `from` does not read the trail from its start: lines are
//! written when requests finish, so their finish times (`timestamp` +
//! `latency_ms`) rise through the file, and a binary search over the file
//! finds where `from` begins. Per-job checks stay cheap on a large trail.

use std::borrow::Cow;
use std::io::{BufRead, Read, Seek, SeekFrom};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::problem::Problem;
use crate::Gateway;

const DEFAULT_LIMIT: usize = 10_000;
const DECISIONS: [&str; 4] = ["allow", "deny", "rate_limited", "would_deny"];
/// How far out of finish order a line may be written (the audit queue,
/// clocks stepping): the search starts this much before `from`.
const ORDER_SLACK: chrono::Duration = chrono::Duration::minutes(1);
const MAX_LIMIT: usize = 100_000;

/// The query of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Only this agent's records.
    pub agent: Option<String>,
    /// Only records for this destination host (any case).
    pub domain: Option<String>,
    /// Only records with this decision (`allow`, `deny`, `rate_limited`,
    /// `would_deny`).
    pub decision: Option<String>,
    pub format: super::formats::Format,
}

pub(super) async fn export(gateway: &Gateway, query: &str) -> Response<Full<Bytes>> {
    let query = match parse_query(query, Utc::now()) {
        Ok(query) => query,
        Err(problem) => return problem.into_response(),
    };
    let query_format = query.format;
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
    let format = query_format;
    let mut response = Response::new(Full::new(Bytes::from(super::formats::render(&lines, format))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
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
        agent: None,
        domain: None,
        decision: None,
        format: super::formats::Format::Jsonl,
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match &*key {
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
            "agent" => parsed.agent = Some(value),
            "domain" => parsed.domain = Some(value.to_ascii_lowercase()),
            "decision" => {
                if !DECISIONS.contains(&value.as_str()) {
                    return Err(Problem::bad(
                        format!("decision '{value}' is not one of {}", DECISIONS.join(", ")),
                        "e.g. decision=deny",
                    ));
                }
                parsed.decision = Some(value);
            }
            "format" => {
                parsed.format = super::formats::Format::parse(&value).ok_or_else(|| {
                    Problem::bad(
                        format!("format '{value}' is not supported"),
                        format!("use one of {}", super::formats::Format::NAMES),
                    )
                })?;
            }
            other => {
                return Err(Problem::bad(
                    format!("unknown query parameter '{other}'"),
                    "use from, to, agent, domain, decision, limit and format",
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

/// The matching lines, in file order, and whether the limit cut them.
pub(super) fn scan(path: &std::path::Path, query: &ExportQuery) -> std::io::Result<(Vec<u8>, bool)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(error) => return Err(error),
    };
    if let Some(from) = query.from {
        let start = seek_finished_at(&mut file, from - ORDER_SLACK)?;
        file.seek(SeekFrom::Start(start))?;
    }
    let mut out = Vec::new();
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Some(head) = Head::read(&line) else { continue };
        if !head.matches(query) {
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

/// The first fields of an audit line, enough to filter on.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default, borrow)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    request: Option<HeadRequest<'a>>,
}

#[derive(serde::Deserialize)]
struct HeadRequest<'a> {
    #[serde(default, borrow)]
    domain: Option<Cow<'a, str>>,
}

impl Head<'_> {
    fn read(line: &str) -> Option<Head<'_>> {
        serde_json::from_str(line).ok()
    }

    fn at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.timestamp)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// When the request finished: when its line was written, give or take
    /// the audit queue.
    fn finished(&self) -> Option<DateTime<Utc>> {
        let latency = chrono::Duration::milliseconds(i64::try_from(self.latency_ms).unwrap_or(i64::MAX / 2));
        self.at().and_then(|at| at.checked_add_signed(latency))
    }

    fn matches(&self, query: &ExportQuery) -> bool {
        let Some(at) = self.at() else { return false };
        let text = |field: &Option<Cow<'_, str>>| field.as_deref().map(str::to_string);
        !(query.from.is_some_and(|from| at < from)
            || query.to.is_some_and(|to| at >= to)
            || query.agent.is_some() && text(&self.agent_id) != query.agent
            || query.decision.is_some() && text(&self.decision) != query.decision
            || query.domain.as_deref().is_some_and(|want| {
                !self
                    .request
                    .as_ref()
                    .and_then(|r| r.domain.as_deref())
                    .is_some_and(|domain| domain.eq_ignore_ascii_case(want))
            }))
    }
}

/// A line start at or before the first line that finished at `at` or later
/// (0 when unsure): a binary search over byte offsets, reading one line at
/// each probe.
pub(super) fn seek_finished_at(file: &mut std::fs::File, at: DateTime<Utc>) -> std::io::Result<u64> {
    /// Below this span a linear read is cheaper than more probes.
    const CLOSE_ENOUGH: u64 = 64 * 1024;
    let (mut low, mut high) = (0u64, file.metadata()?.len());
    while high - low > CLOSE_ENOUGH {
        let middle = low + (high - low) / 2;
        let Some((start, line)) = line_after(file, middle)? else {
            high = middle;
            continue;
        };
        match Head::read(&line).and_then(|head| head.finished()) {
            Some(finished) if finished < at => low = start,
            Some(_) => high = middle,
            // An unreadable line says nothing: keep the wider span.
            None => break,
        }
    }
    Ok(low)
}

/// The first whole line starting after `offset`, with where it starts.
fn line_after(file: &mut std::fs::File, offset: u64) -> std::io::Result<Option<(u64, String)>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file.take(1 << 20));
    let mut skipped = Vec::new();
    let skip = reader.read_until(b'\n', &mut skipped)? as u64;
    if skipped.last() != Some(&b'\n') {
        return Ok(None);
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => Ok(None),
        Ok(_) => Ok(Some((offset + skip, line))),
    }
}
