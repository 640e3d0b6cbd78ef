//! AI protocol analyzer (issue "L7 inspection"): what an agent asked an LLM
//! provider for, and what the provider says it used.
//!
//! Four wire formats are understood: OpenAI chat completions and Responses,
//! Anthropic messages, and Gemini `generateContent` /
//! `streamGenerateContent`. For a request, [`detect`] names the format from
//! the path and [`analyze_request`] reads the JSON body: model, output-token
//! limit, streaming, declared tools and an estimated prompt size. For the
//! response, a [`UsageReader`] is fed the body as it streams past (SSE or
//! JSON) and reports the token usage and tool calls the provider returned,
//! keeping only a bounded amount of it in memory.
//!
//! Nothing here panics or fails the exchange on bad input: a malformed
//! request is an [`AnalyzeError`] that says what was wrong, and a malformed
//! response is a [`Usage`] with nothing in it.

mod request;
mod tokens;
mod usage;

pub use request::{AiRequest, AnalyzeError, analyze_request};
pub use tokens::{Encoding, EstimateMethod, TokenEstimate, estimate_tokens, warm_up, warm_up_in_background, warmed_up};
pub use usage::{MAX_JSON_BODY, MAX_SSE_EVENT, Usage, UsageReader};

/// Who defined the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }
}

/// Which of a provider's APIs a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions` (also spoken by many other vendors).
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Gemini `models/{model}:generateContent` and `:streamGenerateContent`.
    GenerateContent,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::GenerateContent => "generate_content",
        }
    }

    pub fn provider(self) -> Provider {
        match self {
            Api::ChatCompletions | Api::Responses => Provider::OpenAi,
            Api::Messages => Provider::Anthropic,
            Api::GenerateContent => Provider::Gemini,
        }
    }
}

/// A recognised AI endpoint: the format to parse bodies with, and what the
/// URL itself says (Gemini puts the model and streaming there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub provider: Provider,
    pub api: Api,
    pub model_from_path: Option<String>,
    pub stream_from_path: bool,
}

impl Endpoint {
    /// An endpoint whose format is known by other means (an allowlist rule);
    /// nothing is taken from a path.
    pub fn new(api: Api) -> Self {
        Endpoint {
            provider: api.provider(),
            api,
            model_from_path: None,
            stream_from_path: false,
        }
    }
}

/// Names the AI format of a request path (query string allowed), or `None`.
///
/// Suffixes are matched so that the same APIs behind a prefix are found too
/// (`/openai/v1/chat/completions`, `/api/v1/chat/completions`, Azure's
/// `/openai/deployments/{name}/chat/completions`, Vertex AI's
/// `/v1/projects/…/publishers/google/models/{model}:generateContent`).
pub fn detect(path: &str) -> Option<Endpoint> {
    let path = path.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
    if path.ends_with("/chat/completions") {
        return Some(Endpoint::new(Api::ChatCompletions));
    }
    if path.ends_with("/v1/responses") {
        return Some(Endpoint::new(Api::Responses));
    }
    if path.ends_with("/v1/messages") {
        return Some(Endpoint::new(Api::Messages));
    }
    let (parent, last) = path.rsplit_once('/')?;
    if !(parent.ends_with("/models") || parent.ends_with("/tunedModels")) {
        return None;
    }
    let (model, method) = last.split_once(':').or_else(|| {
        let at = last.find("%3A").or_else(|| last.find("%3a"))?;
        Some((&last[..at], &last[at + 3..]))
    })?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    if model.is_empty() {
        return None;
    }
    Some(Endpoint {
        provider: Provider::Gemini,
        api: Api::GenerateContent,
        model_from_path: Some(clip(model, MAX_NAME).to_owned()),
        stream_from_path: stream,
    })
}

/// Longest model or tool name kept, in bytes: names go into audit records.
pub(crate) const MAX_NAME: usize = 256;
/// Most tool names kept from one request or response.
pub(crate) const MAX_TOOLS: usize = 256;

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    &s[..end]
}

/// Adds a tool name to an audit list, within the list's bounds.
pub(crate) fn push_name(names: &mut Vec<String>, name: &str) {
    if !name.is_empty() && names.len() < MAX_TOOLS {
        names.push(clip(name, MAX_NAME).to_owned());
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
