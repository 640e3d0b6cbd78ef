//! Outbound data-loss prevention (seed 001 §5.6): finds secrets and
//! personal data in request bodies, form fields and query strings, and says
//! what the policy does about them (block, redact, alert, hash-log).
//!
//! An [`Engine`] is built once per policy load; scanning allocates only for
//! what it finds. Findings carry a kind, a class, a confidence and the
//! SHA-256 of the matched bytes, never the bytes themselves.

mod checks;
mod detectors;
mod keywords;
mod numbers;
mod redact;
mod text;

use clawgress_policies::model::{DlpAction, DlpPolicy, OversizeAction};
use sha2::{Digest, Sha256};

pub use detectors::Class;
use detectors::{Detector, Shape};
use keywords::{Hit, Keywords};
use numbers::NumberMatch;
pub use text::{Format, Unreadable};

/// One thing found: what it is, never what it says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    /// The detector, e.g. `aws_access_key`, `credit_card`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub class: Class,
    pub confidence: f32,
    /// SHA-256 of the matched bytes, hex; for `hash-log` and correlation.
    pub sha256: String,
}

/// A match's place in the scanned text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    pub kind: &'static str,
    pub class: Class,
    pub confidence: f32,
    pub start: usize,
    pub end: usize,
}

/// What a scan found and what the policy does about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The strictest action the findings call for (`None`: nothing found).
    pub action: Option<DlpAction>,
}

impl Report {
    /// The distinct kinds found, for a refusal that lists them.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = self.findings.iter().map(|f| f.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

/// The detectors, compiled for one policy.
pub struct Engine {
    policy: DlpPolicy,
    detectors: Vec<Detector>,
    keywords: Keywords,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A SHA-256 digest in lowercase hex. `hex::encode` collects a `char`
/// iterator, which cost a tenth of a scan with many findings; a table
/// lookup per digit into a fixed buffer does not.
fn sha256_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    // Hex digits are ASCII, so this is always valid UTF-8.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Strictest first.
fn severity(action: DlpAction) -> u8 {
    match action {
        DlpAction::Block => 3,
        DlpAction::Redact => 2,
        DlpAction::Alert => 1,
        DlpAction::HashLog => 0,
    }
}

impl Engine {
    pub fn new(policy: &DlpPolicy) -> Engine {
        let detectors = detectors::keyword_detectors();
        let keywords = Keywords::new(&detectors);
        Engine {
            policy: policy.clone(),
            detectors,
            keywords,
        }
    }

    pub fn policy(&self) -> &DlpPolicy {
        &self.policy
    }

    /// The policy's action for a class.
    pub fn action_for(&self, class: Class) -> DlpAction {
        match class {
            Class::Secret => self.policy.actions.secrets,
            Class::Pii => self.policy.actions.pii,
        }
    }

    /// What happens to a body that cannot be scanned.
    pub fn oversize(&self) -> OversizeAction {
        self.policy.oversize
    }

    /// Every match in `text`, in order, overlaps resolved in favour of the
    /// more confident (then longer) match.
    pub(crate) fn spans(&self, text: &[u8]) -> Vec<Span> {
        let mut spans = Vec::new();
        self.keywords.find(text, |Hit { detector, start, end }| {
            if let Some(span) = self.confirm(&self.detectors[detector], text, start, end) {
                spans.push(span);
            }
        });
        let mut numbers = Vec::new();
        numbers::numbers(text, &mut numbers);
        spans.extend(numbers.into_iter().map(
            |NumberMatch {
                 kind,
                 start,
                 end,
                 confidence,
             }| Span {
                kind,
                class: Class::Pii,
                confidence,
                start,
                end,
            },
        ));
        spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
        for span in spans {
            match kept.last_mut() {
                Some(last) if span.start < last.end => {
                    if span.confidence > last.confidence {
                        *last = span;
                    }
                }
                _ => kept.push(span),
            }
        }
        kept
    }

    fn confirm(&self, detector: &Detector, text: &[u8], at: usize, keyword_end: usize) -> Option<Span> {
        let span = |start: usize, end: usize| Span {
            kind: detector.kind,
            class: detector.class,
            confidence: detector.confidence,
            start,
            end,
        };
        match detector.shape {
            Shape::Prefix | Shape::Named => {
                // A token starts a word: `xAKIA…` is not a key.
                if at > 0 && detectors::word(text[at - 1]) && !matches!(detector.shape, Shape::Named) {
                    return None;
                }
                let window = &text[at..text.len().min(at + detector.max_len + 1)];
                // Most hits are no match (`token` in prose): a plain search
                // says so without allocating, and the groups (the value a
                // keyword names) are asked for only once there is a match.
                let whole = detector.regex.find(window)?;
                let found = if detector.regex.captures_len() > 1 {
                    detector.regex.captures(window).and_then(|c| c.get(1)).unwrap_or(whole)
                } else {
                    whole
                };
                let (start, end) = (at + found.start(), at + found.end());
                // A token also ends a word.
                if matches!(detector.shape, Shape::Prefix) && text.get(end).is_some_and(|b| detectors::word(*b)) {
                    return None;
                }
                if detector.check.is_some_and(|check| !check(&text[start..end])) {
                    return None;
                }
                Some(span(start, end))
            }
            Shape::Around { before, lead } => {
                let from = at.saturating_sub(before);
                let to = text.len().min(keyword_end + detector.max_len);
                // The leftmost match covering the keyword can only start
                // where the lead bytes before it do, so one anchored search
                // there finds it (searching the window for every match
                // cost twice as much). Unless another keyword sits right
                // before those bytes: its match may reach into them, and
                // the match after it is the one that counts.
                let mut lead_start = at;
                while lead_start > from && lead(text[lead_start - 1]) {
                    lead_start -= 1;
                }
                let (start, end) = match &detector.anchored {
                    Some(anchored) if !text[from..lead_start].ends_with(&text[at..keyword_end]) => {
                        let found = anchored.find(&text[lead_start..to])?;
                        (lead_start + found.start(), lead_start + found.end())
                    }
                    _ => {
                        let found = detector
                            .regex
                            .find_iter(&text[from..to])
                            .find(|m| from + m.start() <= at && at < from + m.end())?;
                        (from + found.start(), from + found.end())
                    }
                };
                if end <= at {
                    return None;
                }
                if start > 0 && detectors::word(text[start - 1]) {
                    return None;
                }
                Some(span(start, end))
            }
        }
    }

    /// Scans plain text (a decoded body, a form, a query string).
    pub fn scan(&self, text: &[u8]) -> Report {
        let spans = self.spans(text);
        self.report(text, &spans)
    }

    fn report(&self, text: &[u8], spans: &[Span]) -> Report {
        let findings: Vec<Finding> = spans
            .iter()
            .map(|s| Finding {
                kind: s.kind,
                class: s.class,
                confidence: s.confidence,
                sha256: sha256_hex(&text[s.start..s.end]),
            })
            .collect();
        let action = findings
            .iter()
            .map(|f| self.action_for(f.class))
            .max_by_key(|a| severity(*a));
        Report { findings, action }
    }

    /// Scans a request body as its headers describe it: decoded from its
    /// `Content-Encoding` under the size caps, JSON escapes undone, form
    /// fields decoded.
    pub fn inspect_body(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Report, Unreadable> {
        let limit = self.policy.max_inspect_bytes.as_u64();
        if body.len() as u64 > limit {
            return Err(Unreadable::TooLarge { limit });
        }
        let decoded = text::decode_content(body, content_encoding, self.policy.max_decoded_bytes.as_u64())?;
        let plain = decoded.as_deref().unwrap_or(body);
        Ok(match text::format(content_type, plain) {
            Format::Json => self.scan(&text::json_text(plain)),
            Format::Form => self.scan(&text::form_text(plain)),
            Format::Text => self.scan(plain),
        })
    }

    /// Scans a URL query string's decoded fields.
    pub fn inspect_query(&self, query: &str) -> Report {
        self.scan(&text::form_text(query.as_bytes()))
    }

    /// The body with every finding replaced by `[REDACTED:<type>]`, without
    /// its `Content-Encoding` (the caller drops that header and sets the new
    /// Content-Length). JSON stays valid JSON and forms stay forms.
    pub fn redact_body(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Vec<u8>, Unreadable> {
        let decoded = text::decode_content(body, content_encoding, self.policy.max_decoded_bytes.as_u64())?;
        let plain = decoded.as_deref().unwrap_or(body);
        Ok(match text::format(content_type, plain) {
            Format::Json => redact::json(self, plain),
            Format::Form => redact::form(self, plain),
            Format::Text => redact::text(self, plain),
        })
    }

    /// A query string with its findings redacted.
    pub fn redact_query(&self, query: &str) -> String {
        String::from_utf8_lossy(&redact::form(self, query.as_bytes())).into_owned()
    }
}

#[cfg(test)]
mod tests;
