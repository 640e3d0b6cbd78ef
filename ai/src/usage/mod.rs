//! Reading what a provider reports it used, from the response body as the
//! gateway forwards it.

mod collect;
mod sse;

use collect::Collector;
use sse::SseParser;

use crate::Endpoint;

/// Largest non-streaming (JSON) response body buffered for parsing. Beyond
/// it the reader stops buffering and reports no usage.
pub const MAX_JSON_BODY: usize = 4 << 20;
/// Largest single server-sent event kept; larger events are skipped.
pub const MAX_SSE_EVENT: usize = sse::MAX_EVENT;

/// What the provider reported: token counts as it bills them, the tools the
/// model called, and the model that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prompt tokens, including Anthropic cache writes and reads and Gemini
    /// tool-use prompt tokens.
    pub tokens_in: Option<u64>,
    /// Output tokens, including reasoning ("thinking") tokens.
    pub tokens_out: Option<u64>,
    /// Tool calls in order, one entry per call.
    pub tool_calls: Vec<String>,
    pub model: Option<String>,
}

/// Reads usage from a response body fed to it chunk by chunk, as the bytes
/// stream to the client unchanged.
///
/// Feed the body after any `Content-Encoding` has been removed; compressed
/// bytes yield no usage. Memory stays within [`MAX_JSON_BODY`] for JSON
/// bodies and twice [`MAX_SSE_EVENT`] (the event being assembled and the
/// line being read) for event streams, whatever their length.
pub struct UsageReader {
    collector: Collector,
    body: Body,
}

enum Body {
    Sse(SseParser),
    Json { buf: Vec<u8>, overflowed: bool },
}

impl UsageReader {
    /// A reader for a response from `endpoint`; `content_type` is the
    /// response's Content-Type header. `text/event-stream` is read as
    /// server-sent events, anything else as one JSON document.
    pub fn new(endpoint: &Endpoint, content_type: Option<&str>) -> Self {
        let is_sse = content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        });
        let body = if is_sse {
            Body::Sse(SseParser::default())
        } else {
            Body::Json {
                buf: Vec::new(),
                overflowed: false,
            }
        };
        UsageReader {
            collector: Collector::new(endpoint.api),
            body,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Sse(parser) => {
                let collector = &mut self.collector;
                parser.feed(chunk, &mut |_, data| sse_event(collector, data));
            }
            Body::Json { overflowed: true, .. } => {}
            Body::Json { buf, overflowed } => {
                if buf.len() + chunk.len() > MAX_JSON_BODY {
                    *buf = Vec::new();
                    *overflowed = true;
                } else {
                    extend_capped(buf, chunk, MAX_JSON_BODY);
                }
            }
        }
    }

    /// Ends the body and returns what was found; fields the provider did not
    /// report (or that could not be read) are `None` or empty.
    pub fn finish(self) -> Usage {
        let mut collector = self.collector;
        match self.body {
            Body::Sse(parser) => parser.finish(&mut |_, data| sse_event(&mut collector, data)),
            Body::Json { overflowed: true, .. } => {}
            Body::Json { buf, .. } => match serde_json::from_slice(&buf) {
                Ok(value) => collector.body(&value),
                // Some servers stream events under a JSON or missing Content-Type.
                Err(_) if looks_like_sse(&buf) => {
                    let mut parser = SseParser::default();
                    let mut sink = |_: &[u8], data: &[u8]| sse_event(&mut collector, data);
                    parser.feed(&buf, &mut sink);
                    parser.finish(&mut sink);
                }
                Err(_) => {}
            },
        }
        collector.finish()
    }

    /// Bytes buffered now, for the bounded-memory tests.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        match &self.body {
            Body::Sse(parser) => parser.buffered(),
            Body::Json { buf, .. } => buf.capacity(),
        }
    }
}

fn sse_event(collector: &mut Collector, data: &[u8]) {
    if data.trim_ascii() == b"[DONE]" || !collector.wants(data) {
        return;
    }
    // The event name is not needed: every provider repeats it as the JSON `type`.
    if let Ok(value) = serde_json::from_slice(data) {
        collector.event(&value);
    }
}

/// Appends within `cap` bytes of capacity, where plain doubling could
/// reserve up to twice the cap. The caller has checked the length fits.
fn extend_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let needed = buf.len() + bytes.len();
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity() * 2).min(cap).max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

fn looks_like_sse(buf: &[u8]) -> bool {
    let start = buf.trim_ascii_start();
    [&b"data:"[..], b"event:", b":"]
        .iter()
        .any(|prefix| start.starts_with(prefix))
}

#[cfg(test)]
mod tests;
