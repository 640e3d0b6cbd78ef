//! Audit records as operators take them away: `jsonl` (the trail's own
//! lines, one per line), `json` (one array) and `csv` (one row per record,
//! fixed columns). Shared by `GET /v1/audit` and `clawgress audit search`.

use serde_json::Value;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// JSON Lines: each record exactly as the trail holds it.
    #[default]
    Jsonl,
    /// One JSON array of the records.
    Json,
    /// Comma-separated values with a header row ([`CSV_COLUMNS`]).
    Csv,
}

impl Format {
    pub const NAMES: &'static str = "jsonl, json, csv";

    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The CSV columns: the seed's minimum event schema (seed 001 §6.2) plus
/// what admin and DNS records carry. A dotted name reads a nested field.
pub const CSV_COLUMNS: &[&str] = &[
    "timestamp",
    "type",
    "request_id",
    "agent_id",
    "team_id",
    "project_id",
    "environment",
    "request.method",
    "request.domain",
    "request.port",
    "request.path",
    "qname",
    "decision",
    "reason",
    "policy_id",
    "policy_version",
    "enforcement_mode",
    "response.status",
    "bytes_out",
    "bytes_in",
    "latency_ms",
    "token_estimate",
    "destination_ip",
    "destination_asn",
    "destination_geo",
    "anomaly_score",
    "actor",
    "action",
    "hash",
];

/// Renders JSON lines (`lines`, each ending in `\n`) in `format`. Lines
/// that are not JSON are left out of `json` and `csv` (they cannot be
/// represented there) and kept as they are in `jsonl`.
pub fn render(lines: &[u8], format: Format) -> Vec<u8> {
    match format {
        Format::Jsonl => lines.to_vec(),
        Format::Json => {
            let mut out = Vec::with_capacity(lines.len() + 2);
            out.push(b'[');
            let mut first = true;
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'\n');
                out.extend_from_slice(line);
            }
            out.extend_from_slice(b"\n]\n");
            out
        }
        Format::Csv => {
            let mut out = CSV_COLUMNS.join(",").into_bytes();
            out.push(b'\n');
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(record) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                out.extend(csv_row(&record).into_bytes());
            }
            out
        }
    }
}

/// One record as a CSV row (with its line break).
pub fn csv_row(record: &Value) -> String {
    let cells: Vec<String> = CSV_COLUMNS
        .iter()
        .map(|column| {
            let value = column.split('.').fold(record, |value, key| &value[key]);
            let text = match value {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            csv_cell(&text)
        })
        .collect();
    let mut row = cells.join(",");
    row.push('\n');
    row
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'`
/// so a spreadsheet never runs a value an agent chose as a formula.
fn csv_cell(text: &str) -> String {
    let guarded = match text.as_bytes().first() {
        Some(b'=' | b'+' | b'@') => format!("'{text}"),
        Some(b'-') if text.parse::<f64>().is_err() => format!("'{text}"),
        _ => text.to_string(),
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}
