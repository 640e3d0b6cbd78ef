//! Identity by client certificate (the `--listen-tls` listener): each
//! agent's `spiffe_ids` in the agents file, or, for a certificate without a
//! SPIFFE ID, its subject CN equal to an agent id.
//!
//! A SPIFFE ID names exactly one agent (two agents listing the same one are
//! refused at load with both lines), so a certificate maps to at most one
//! agent and the lookup is one hash probe.

use std::collections::HashMap;
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

/// The names a verified client certificate carries, as the gateway reads
/// them: its `spiffe://` URI SANs and its subject common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    pub spiffe_ids: Vec<String>,
    pub common_name: Option<String>,
}

/// One agent's SPIFFE ID, where it was written.
pub(super) struct SpiffeEntry {
    pub id: String,
    pub agent: Arc<str>,
    pub at: Location,
}

/// SPIFFE ID → agent; no ID listed twice.
#[derive(Debug, Default)]
pub(super) struct SpiffeMap {
    ids: HashMap<String, Arc<str>>,
}

/// Why an entry is refused: its place, the message and a hint.
pub(super) type SpiffeProblem = (Location, String, String);

/// Longest SPIFFE ID the specification allows.
const MAX_ID_BYTES: usize = 2048;
/// Longest trust domain the specification allows.
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

impl SpiffeMap {
    /// Indexes the entries; an ID listed twice (by two agents, or twice by
    /// one) is an error naming both lines.
    pub fn build(entries: Vec<SpiffeEntry>) -> Result<SpiffeMap, SpiffeProblem> {
        let mut ids: HashMap<String, Arc<str>> = HashMap::with_capacity(entries.len());
        let mut first: HashMap<&str, (&Arc<str>, Location)> = HashMap::with_capacity(entries.len());
        for entry in &entries {
            if let Some((agent, at)) = first.get(entry.id.as_str()) {
                return Err((
                    entry.at,
                    format!(
                        "SPIFFE ID {} of agent `{}` is already listed for agent `{agent}`{}",
                        entry.id,
                        entry.agent,
                        super::sources::at_line(*at)
                    ),
                    "a SPIFFE ID must name one agent: remove one of the two entries".to_string(),
                ));
            }
            first.insert(&entry.id, (&entry.agent, entry.at));
        }
        for entry in entries {
            ids.insert(entry.id, entry.agent);
        }
        Ok(SpiffeMap { ids })
    }

    pub fn agent_for(&self, id: &str) -> Option<&Arc<str>> {
        self.ids.get(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Parses one `spiffe_ids` entry: a SPIFFE ID with a workload path
/// (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>` in Kubernetes).
pub(super) fn parse(value: &Spanned<String>) -> Result<String, SpiffeProblem> {
    let text = value.value.as_str();
    let refuse = |why: String| {
        (
            value.referenced,
            format!("`{}` is not a SPIFFE ID: {why}", printable(text)),
            "write spiffe://<trust-domain>/<path>, e.g. spiffe://cluster.local/ns/crawl/sa/scraper".to_string(),
        )
    };
    let path = check(text).map_err(|why| refuse(why.to_string()))?;
    if path.is_empty() {
        return Err(refuse(
            "it names a whole trust domain, and every workload in it would be this agent".to_string(),
        ));
    }
    Ok(text.to_string())
}

/// Checks `text` against the SPIFFE ID rules (lowercase scheme and trust
/// domain, path segments of letters, digits, `.`, `-` and `_`, no empty,
/// `.` or `..` segment, no query or fragment) and returns its path.
pub(super) fn check(text: &str) -> Result<&str, &'static str> {
    if text.len() > MAX_ID_BYTES {
        return Err("it is longer than 2048 bytes");
    }
    let rest = text.strip_prefix("spiffe://").ok_or("it must start with spiffe://")?;
    let (domain, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err("the trust domain is empty");
    }
    if domain.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err("the trust domain is longer than 255 bytes");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("the trust domain may hold only lowercase letters, digits, '.', '-' and '_'");
    }
    if path.is_empty() {
        return Ok(path);
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("the path has an empty segment (a doubled or trailing '/')");
        }
        if segment == "." || segment == ".." {
            return Err("the path has a '.' or '..' segment");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("path segments may hold only letters, digits, '.', '-' and '_'");
        }
    }
    Ok(path)
}

/// Quoted text from the file, without terminal control characters, cut short.
fn printable(text: &str) -> String {
    text.chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
