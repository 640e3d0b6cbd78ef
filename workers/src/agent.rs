//! Agent jobs: a browser session driven step by step, with `llm` calls to
//! AI providers — every request, the browser's and the provider calls,
//! through the gateway as the job's agent.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::chromium::ChromiumPool;
use crate::extract::extract;
use crate::http::HttpFetcher;
use crate::job::{AgentJob, LlmCall, Step};
use crate::outcome::FetchError;

/// What an agent job produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOutcome {
    /// Extracted values by name, `evaluate` results as `step_<n>`, and LLM
    /// replies as `llm_<n>` (the reply text).
    pub data: BTreeMap<String, Value>,
    /// Base64 PNGs, in step order.
    pub screenshots: Vec<String>,
    /// Tokens the `llm` steps used, as the providers reported them.
    pub tokens: u64,
    pub steps_run: usize,
}

/// Whether any step needs a browser (a job of `llm` steps only does not).
pub fn needs_browser(job: &AgentJob) -> bool {
    job.steps.iter().any(|step| !matches!(step, Step::Llm(_)))
}

/// Runs the steps in order; the browser session (if any) is closed
/// whatever happens.
pub async fn run(pool: Option<&ChromiumPool>, http: &HttpFetcher, job: &AgentJob) -> Result<AgentOutcome, FetchError> {
    let session = match pool {
        Some(pool) if needs_browser(job) => Some(pool.session(&job.agent).await?),
        _ => None,
    };
    let result = tokio::time::timeout(job.timeout, steps(session.as_ref(), http, job))
        .await
        .unwrap_or(Err(FetchError::Timeout));
    if let Some(session) = session {
        session.end(&result).await;
    }
    result
}

async fn steps(
    session: Option<&crate::chromium::Session<'_>>,
    http: &HttpFetcher,
    job: &AgentJob,
) -> Result<AgentOutcome, FetchError> {
    let mut outcome = AgentOutcome::default();
    for (index, step) in job.steps.iter().enumerate() {
        let browser = || session.ok_or_else(|| FetchError::Transport("this step needs a browser".to_string()));
        match step {
            Step::Goto(url) => {
                let session = browser()?;
                session.visited(url);
                session.goto(url).await?;
            }
            Step::Click(selector) => browser()?.click(selector).await?,
            Step::Fill { selector, value } => browser()?.fill(selector, value).await?,
            Step::WaitFor(selector) => browser()?.wait_for(selector).await,
            Step::Extract(specs) => {
                let html = browser()?.content().await?;
                let specs = specs.clone();
                let found = tokio::task::spawn_blocking(move || extract(&html, &specs))
                    .await
                    .map_err(|_| FetchError::Transport("extraction failed".into()))?;
                if !found.missing_required.is_empty() {
                    return Err(FetchError::MissingRequired(found.missing_required));
                }
                outcome.data.extend(found.values);
            }
            Step::Screenshot {} => {
                if let Some(png) = browser()?.screenshot().await? {
                    outcome.screenshots.push(png);
                }
            }
            Step::Evaluate(expression) => {
                let value = browser()?.evaluate(expression).await?;
                outcome.data.insert(format!("step_{index}"), value);
            }
            Step::Llm(call) => {
                let (text, tokens) = llm(http, &job.agent, call, job.timeout).await?;
                outcome.tokens += tokens;
                if let Some(limit) = job.budget.max_tokens
                    && outcome.tokens > limit
                {
                    return Err(FetchError::BudgetExceeded {
                        used: outcome.tokens,
                        limit,
                    });
                }
                outcome.data.insert(format!("llm_{index}"), Value::String(text));
            }
        }
        outcome.steps_run = index + 1;
    }
    Ok(outcome)
}

/// One chat call in the provider's own format; returns the reply text and
/// the tokens used (in + out).
async fn llm(
    http: &HttpFetcher,
    agent: &str,
    call: &LlmCall,
    timeout: std::time::Duration,
) -> Result<(String, u64), FetchError> {
    let key = http
        .credentials()
        .provider_key(&call.provider)
        .ok_or_else(|| FetchError::Transport(format!("no API key for provider {} on this worker", call.provider)))?
        .to_string();
    let messages: Vec<Value> = call
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let max_tokens = call.max_tokens.unwrap_or(1024);
    let (url, headers, body) = match call.provider.as_str() {
        "anthropic" => (
            format!(
                "{}/v1/messages",
                call.base_url.as_deref().unwrap_or("https://api.anthropic.com")
            ),
            vec![("x-api-key", key), ("anthropic-version", "2023-06-01".to_string())],
            json!({"model": call.model, "max_tokens": max_tokens, "messages": messages}),
        ),
        "gemini" => (
            format!(
                "{}/v1beta/models/{}:generateContent",
                call.base_url
                    .as_deref()
                    .unwrap_or("https://generativelanguage.googleapis.com"),
                call.model
            ),
            vec![("x-goog-api-key", key)],
            json!({
                "contents": call.messages.iter().map(|m| json!({
                    "role": if m.role == "assistant" { "model" } else { "user" },
                    "parts": [{"text": m.content}]
                })).collect::<Vec<_>>(),
                "generationConfig": {"maxOutputTokens": max_tokens}
            }),
        ),
        _ => (
            format!(
                "{}/v1/chat/completions",
                call.base_url.as_deref().unwrap_or("https://api.openai.com")
            ),
            vec![("authorization", format!("Bearer {key}"))],
            json!({"model": call.model, "max_tokens": max_tokens, "messages": messages}),
        ),
    };
    let answer = http.post_json(agent, &url, &headers, &body, timeout).await?;
    Ok(reply(&call.provider, &answer))
}

/// The `text` of each part of a content array, joined.
fn texts(parts: &Value) -> String {
    parts
        .as_array()
        .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default()
}

/// The reply text and token count from a provider's answer.
pub fn reply(provider: &str, answer: &Value) -> (String, u64) {
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    match provider {
        "anthropic" => (
            texts(&answer["content"]),
            number(&answer["usage"]["input_tokens"]) + number(&answer["usage"]["output_tokens"]),
        ),
        "gemini" => (
            texts(&answer["candidates"][0]["content"]["parts"]),
            number(&answer["usageMetadata"]["totalTokenCount"]),
        ),
        _ => (
            answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            number(&answer["usage"]["total_tokens"]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_usage_are_read_in_each_providers_format() {
        let openai = json!({"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 12}});
        assert_eq!(reply("openai", &openai), ("hi".to_string(), 12));
        let anthropic = json!({"content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}],
                               "usage": {"input_tokens": 5, "output_tokens": 3}});
        assert_eq!(reply("anthropic", &anthropic), ("hello".to_string(), 8));
        let gemini =
            json!({"candidates": [{"content": {"parts": [{"text": "yo"}]}}], "usageMetadata": {"totalTokenCount": 7}});
        assert_eq!(reply("gemini", &gemini), ("yo".to_string(), 7));
        assert_eq!(reply("openai", &json!({})), (String::new(), 0));
    }
}
