//! `clawgress audit search`: the records of one agent, domain, decision
//! and time range, from a trail file or from the `audit.>` streams (the
//! gateway's control API answers the same filters itself, `GET /v1/audit`).
//! Matching records are returned as the trail's own lines.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use crate::line::Line;
use crate::source::{AUDIT_SUBJECTS, TrailReader};

/// What to look for; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    /// A destination host (any case); DNS lines match on `qname`.
    pub domain: Option<String>,
    /// `allow`, `deny`, `rate_limited`, `would_deny` (DNS lines have their
    /// own decisions: `answered`, `nxdomain`, `refused`, ...).
    pub decision: Option<String>,
    /// A line `type` (`egress_denied`, `admin_action`, `checkpoint`, ...).
    pub kind: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, line: &Line<'_>) -> bool {
        let at = line.at_ms();
        if self.from.is_some_and(|from| at < from.timestamp_millis())
            || self.to.is_some_and(|to| at >= to.timestamp_millis())
        {
            return false;
        }
        if self.kind.as_deref().is_some_and(|kind| kind != line.kind) {
            return false;
        }
        if self
            .agent
            .as_deref()
            .is_some_and(|agent| line.agent_id.as_deref() != Some(agent))
        {
            return false;
        }
        if self
            .decision
            .as_deref()
            .is_some_and(|decision| line.decision.as_deref() != Some(decision))
        {
            return false;
        }
        if let Some(want) = self.domain.as_deref() {
            let host = line.domain().or(line.qname.as_deref());
            if !host.is_some_and(|host| host.trim_end_matches('.').eq_ignore_ascii_case(want)) {
                return false;
            }
        }
        true
    }
}

/// The outcome of a search: matching lines (each with its `\n`), how many
/// were read, skipped as undecodable (with where), and whether `limit` cut
/// the result.
#[derive(Debug, Default)]
pub struct Found {
    pub lines: Vec<u8>,
    pub matched: usize,
    pub scanned: u64,
    pub skipped: Vec<String>,
    pub truncated: bool,
}

impl Found {
    fn take(&mut self, filter: &Filter, bytes: &[u8], place: impl FnOnce() -> String) -> bool {
        self.scanned += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        match Line::parse(bytes) {
            Ok(line) if filter.matches(&line) => {
                if self.matched == filter.limit {
                    self.truncated = true;
                    return false;
                }
                self.matched += 1;
                self.lines.extend_from_slice(bytes);
                self.lines.push(b'\n');
            }
            Ok(_) => {}
            Err(why) => {
                if self.skipped.len() < 100 {
                    self.skipped.push(format!("{}: skipped: {why}", place()));
                }
            }
        }
        true
    }
}

/// Searches a trail file, in file order.
pub fn search_trail(path: &Path, filter: &Filter) -> std::io::Result<Found> {
    let mut reader = TrailReader::open(path)?;
    let mut found = Found::default();
    while let Some((number, bytes)) = reader.next_line()? {
        if !found.take(filter, bytes, || format!("{}:{number}", path.display())) {
            return Ok(found);
        }
    }
    if let Some((number, bytes)) = reader.unterminated() {
        found.take(filter, bytes, || format!("{}:{number} (no line end)", path.display()));
    }
    Ok(found)
}

/// Searches the audit streams on `url`, from `filter.from` (or their
/// start) to what they hold now, stream by stream.
pub async fn search_streams(url: &str, filter: &Filter) -> anyhow::Result<Found> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-audit-search")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
    let js = jetstream::new(client);
    let mut found = Found::default();
    let mut streams = js.streams();
    let mut names = Vec::new();
    while let Some(info) = streams.next().await {
        let info = info?;
        if info.config.subjects.iter().any(|s| s.starts_with("audit.")) {
            names.push(info.config.name);
        }
    }
    if names.is_empty() {
        anyhow::bail!("no JetStream stream on {url} carries {AUDIT_SUBJECTS}; search the trail file with --trail");
    }
    names.sort();
    for name in names {
        let mut stream = js.get_stream(&name).await?;
        let last = stream.info().await?.state.last_sequence;
        if last == 0 {
            continue;
        }
        let deliver_policy = match filter.from {
            Some(from) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                    from.timestamp_nanos_opt().unwrap_or(0),
                ))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            },
            None => consumer::DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: AUDIT_SUBJECTS.to_string(),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            // Nothing newer than `from` at all: the consumer stays silent.
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(message)) = next else { break };
            let message = message?;
            let (sequence, pending) = message
                .info()
                .map(|i| (i.stream_sequence, i.pending))
                .unwrap_or((last, 0));
            if !found.take(filter, &message.payload, || {
                format!("stream {name} sequence {sequence}")
            }) {
                return Ok(found);
            }
            if sequence >= last || pending == 0 {
                break;
            }
        }
    }
    Ok(found)
}

/// `2026-11-23T10:00:00Z`, `1 hour ago`, `30m`, `24h`, `2d`, `now`: as the
/// control API reads them.
pub fn parse_when(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let hint =
        "write an RFC 3339 time (2026-11-23T10:00:00Z) or a relative one (\"1 hour ago\", \"30m\", \"24h\", \"2d\")";
    let relative = text.strip_suffix("ago").unwrap_or(text).trim();
    let split = relative.find(|c: char| !c.is_ascii_digit()).unwrap_or(relative.len());
    let (number, unit) = relative.split_at(split);
    let amount: i64 = number.parse().map_err(|_| format!("'{text}' is not a time; {hint}"))?;
    let seconds = match unit.trim().trim_end_matches('s') {
        "" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        "w" | "week" => 7 * 86_400,
        other => return Err(format!("'{other}' is not a time unit; {hint}")),
    };
    amount
        .checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("'{text}' is too far back"))
}
