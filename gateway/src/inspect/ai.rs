//! The AI protocol analyzer in the pipeline (seed 001 §5.4): what an agent
//! asks an LLM provider for, read from the held request body, and what the
//! provider reports it used, read from the response as it streams past.

use clawgress_ai::{Api, Endpoint, EstimateMethod, Provider, Usage, UsageReader};
use serde::Serialize;

/// Largest AI request body read when DLP is off (DLP's own limit applies
/// when it is on). Chat requests with long histories reach a few MB.
pub const MAX_AI_BODY: u64 = 8 << 20;

/// One AI exchange as the audit records it. `provider`, `model`, the token
/// counts and the tool calls are written at the top of the line (the seed's
/// event schema); the rest goes under `ai`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AiRecord {
    #[serde(skip)]
    pub provider: Provider,
    pub api: Api,
    #[serde(skip)]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// Tools the request declared.
    pub tools: Vec<String>,
    #[serde(skip)]
    pub token_estimate: Option<u64>,
    /// How `token_estimate` was counted (an approximation for non-OpenAI models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate_method: Option<EstimateMethod>,
    #[serde(skip)]
    pub tokens_in: Option<u64>,
    #[serde(skip)]
    pub tokens_out: Option<u64>,
    /// Tools the model called, from the response.
    #[serde(skip)]
    pub tool_calls: Vec<String>,
    /// Why the request body could not be read (it was forwarded anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unparsed: Option<String>,
    #[serde(skip)]
    pub endpoint: Endpoint,
}

/// The AI endpoint a request goes to, if its path names one.
pub fn endpoint_of(method: &http::Method, path: &str) -> Option<Endpoint> {
    (method == http::Method::POST)
        .then(|| clawgress_ai::detect(path))
        .flatten()
}

/// [`analyze`], once the token encodings are loaded: the first AI request
/// waits for them on a blocking thread, not on the proxy worker, whose
/// other connections keep moving.
pub async fn analyze_when_ready(endpoint: Endpoint, body: &[u8]) -> AiRecord {
    if !clawgress_ai::warmed_up() {
        let _ = tokio::task::spawn_blocking(clawgress_ai::warm_up).await;
    }
    analyze(endpoint, body)
}

/// Reads a held request body. A body the analyzer cannot read is recorded
/// as such; the request is not refused for it (the provider will answer).
pub fn analyze(endpoint: Endpoint, body: &[u8]) -> AiRecord {
    match clawgress_ai::analyze_request(&endpoint, body) {
        Ok(request) => AiRecord {
            provider: request.provider,
            api: request.api,
            model: request.model,
            max_tokens: request.max_tokens,
            stream: request.stream,
            tools: request.tools,
            token_estimate: Some(request.token_estimate),
            estimate_method: Some(request.estimate_method),
            tokens_in: None,
            tokens_out: None,
            tool_calls: Vec::new(),
            unparsed: None,
            endpoint,
        },
        Err(error) => AiRecord {
            provider: endpoint.provider,
            api: endpoint.api,
            model: endpoint.model_from_path.clone(),
            max_tokens: None,
            stream: endpoint.stream_from_path,
            tools: Vec::new(),
            token_estimate: None,
            estimate_method: None,
            tokens_in: None,
            tokens_out: None,
            tool_calls: Vec::new(),
            unparsed: Some(error.to_string()),
            endpoint,
        },
    }
}

impl AiRecord {
    /// A reader for this exchange's response, unless its encoding hides it.
    pub fn usage_reader(&self, headers: &http::HeaderMap) -> Option<UsageReader> {
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
        if encoded {
            return None;
        }
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        Some(UsageReader::new(&self.endpoint, content_type))
    }

    /// What the provider reported.
    pub fn settle(&mut self, usage: Usage) {
        self.tokens_in = usage.tokens_in;
        self.tokens_out = usage.tokens_out;
        self.tool_calls = usage.tool_calls;
        if usage.model.is_some() {
            self.model = usage.model;
        }
    }
}
