//! Usage, model and tool calls from each provider's response objects and
//! stream events, whichever way they arrive.

use serde_json::Value;

use super::Usage;
use crate::{Api, MAX_NAME, MAX_TOOLS, clip, push_name};

pub(crate) struct Collector {
    api: Api,
    usage: Usage,
    /// (choice, tool call) indexes already named in an OpenAI chat stream:
    /// some OpenAI-compatible servers repeat the name in later deltas.
    streamed_calls: Vec<(u64, u64)>,
}

impl Collector {
    pub(crate) fn new(api: Api) -> Self {
        Collector {
            api,
            usage: Usage::default(),
            streamed_calls: Vec::new(),
        }
    }

    pub(crate) fn finish(self) -> Usage {
        self.usage
    }

    /// Whether an SSE event's data may hold anything this collects. Most
    /// events of a long stream are text deltas; not parsing them keeps the
    /// reader cheap. The words are the JSON keys or types that matter, so an
    /// event without them has nothing to read.
    pub(crate) fn wants(&self, data: &[u8]) -> bool {
        if self.usage.model.is_none() {
            return true;
        }
        let contains = |word: &[u8]| memchr::memmem::find(data, word).is_some();
        match self.api {
            // With include_usage every chunk carries `"usage":null`; only the last has an object.
            Api::ChatCompletions => {
                has_object(data, b"\"usage\"") || contains(b"tool_calls") || contains(b"function_call")
            }
            Api::Responses => has_object(data, b"\"usage\"") || contains(b"_call"),
            Api::Messages => has_object(data, b"\"usage\"") || contains(b"tool_use"),
            Api::GenerateContent => contains(b"usageMetadata") || contains(b"functionCall"),
        }
    }

    /// A whole non-streaming response body, or a Gemini stream sent as one
    /// JSON array of chunks.
    pub(crate) fn body(&mut self, value: &Value) {
        match value {
            Value::Array(chunks) if self.api == Api::GenerateContent => chunks.iter().for_each(|c| self.event(c)),
            _ => self.event(value),
        }
    }

    /// One response object or stream event.
    pub(crate) fn event(&mut self, value: &Value) {
        if !value.is_object() {
            return;
        }
        match self.api {
            Api::ChatCompletions => self.chat(value),
            Api::Responses => self.responses_event(value),
            Api::Messages => self.messages_event(value),
            Api::GenerateContent => self.gemini(value),
        }
    }

    fn model(&mut self, value: Option<&Value>) {
        if let Some(model) = value.and_then(Value::as_str)
            && !model.is_empty()
        {
            self.usage.model = Some(clip(model, MAX_NAME).to_owned());
        }
    }

    /// A completion or a stream chunk. Usage comes once, in the last chunk
    /// when the request set `stream_options.include_usage`.
    fn chat(&mut self, value: &Value) {
        self.model(value.get("model"));
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            set(&mut self.usage.tokens_in, usage.get("prompt_tokens"));
            set(&mut self.usage.tokens_out, usage.get("completion_tokens"));
        }
        let Some(choices) = value.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (position, choice) in choices.iter().enumerate() {
            if let Some(message) = choice.get("message") {
                for call in array(message.get("tool_calls")) {
                    if let Some(name) = call_name(call) {
                        push_name(&mut self.usage.tool_calls, name);
                    }
                }
                if let Some(name) = message
                    .get("function_call")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                {
                    push_name(&mut self.usage.tool_calls, name);
                }
            }
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            let choice_index = choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            for (position, call) in array(delta.get("tool_calls")).iter().enumerate() {
                let Some(name) = call_name(call).filter(|n| !n.is_empty()) else {
                    continue;
                };
                let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
                let key = (choice_index, call_index);
                if !self.streamed_calls.contains(&key) && self.streamed_calls.len() < MAX_TOOLS {
                    self.streamed_calls.push(key);
                    push_name(&mut self.usage.tool_calls, name);
                }
            }
            // The legacy single function call streams its name once, in the first delta.
            if let Some(name) = delta
                .get("function_call")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                push_name(&mut self.usage.tool_calls, name);
            }
        }
    }

    fn responses_event(&mut self, value: &Value) {
        match value.get("type").and_then(Value::as_str) {
            Some(
                "response.created"
                | "response.in_progress"
                | "response.completed"
                | "response.incomplete"
                | "response.failed",
            ) => {
                if let Some(response) = value.get("response") {
                    self.response(response);
                }
            }
            Some("response.output_item.done") => {
                if let Some(name) = value.get("item").and_then(output_call_name) {
                    push_name(&mut self.usage.tool_calls, name);
                }
            }
            Some(kind) if kind.starts_with("response.") => {}
            // A non-streaming body is the response object itself.
            _ => self.response(value),
        }
    }

    /// A whole Responses object: the final event of a stream restates every
    /// output item, so its list replaces the one built from item events.
    fn response(&mut self, response: &Value) {
        self.model(response.get("model"));
        if let Some(usage) = response.get("usage").filter(|u| u.is_object()) {
            set(&mut self.usage.tokens_in, usage.get("input_tokens"));
            set(&mut self.usage.tokens_out, usage.get("output_tokens"));
        }
        if let Some(output) = response.get("output").and_then(Value::as_array)
            && !output.is_empty()
        {
            self.usage.tool_calls.clear();
            for name in output.iter().filter_map(output_call_name) {
                push_name(&mut self.usage.tool_calls, name);
            }
        }
    }

    fn messages_event(&mut self, value: &Value) {
        match value.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(message) = value.get("message") {
                    self.message(message);
                }
            }
            // Its output_tokens is the running total so far, not an increment.
            Some("message_delta") => self.anthropic_usage(value.get("usage")),
            Some("content_block_start") => {
                if let Some(name) = value.get("content_block").and_then(tool_use_name) {
                    push_name(&mut self.usage.tool_calls, name);
                }
            }
            Some("message") | None => self.message(value),
            Some(_) => {}
        }
    }

    fn message(&mut self, message: &Value) {
        self.model(message.get("model"));
        self.anthropic_usage(message.get("usage"));
        for name in array(message.get("content")).iter().filter_map(tool_use_name) {
            push_name(&mut self.usage.tool_calls, name);
        }
    }

    /// Anthropic bills cache writes and reads as input beside
    /// `input_tokens`, which excludes them.
    fn anthropic_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage.filter(|u| u.is_object()) else {
            return;
        };
        let parts = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
            .map(|key| usage.get(key).and_then(Value::as_u64));
        if parts.iter().any(Option::is_some) {
            self.usage.tokens_in = Some(parts.iter().flatten().fold(0u64, |sum, n| sum.saturating_add(*n)));
        }
        set(&mut self.usage.tokens_out, usage.get("output_tokens"));
    }

    /// A Gemini response or stream chunk. Its usageMetadata is cumulative,
    /// so the latest one wins. Thinking tokens are billed as output but not
    /// included in candidatesTokenCount; tool-use prompt tokens likewise for
    /// input.
    fn gemini(&mut self, value: &Value) {
        self.model(value.get("modelVersion"));
        if let Some(meta) = value.get("usageMetadata").filter(|m| m.is_object()) {
            let sum = |keys: [&str; 2]| {
                let parts = keys.map(|key| meta.get(key).and_then(Value::as_u64));
                let any = parts.iter().any(Option::is_some);
                any.then(|| parts.iter().flatten().fold(0u64, |sum, n| sum.saturating_add(*n)))
            };
            if let Some(tokens_in) = sum(["promptTokenCount", "toolUsePromptTokenCount"]) {
                self.usage.tokens_in = Some(tokens_in);
            }
            if let Some(tokens_out) = sum(["candidatesTokenCount", "thoughtsTokenCount"]) {
                self.usage.tokens_out = Some(tokens_out);
            }
        }
        for candidate in array(value.get("candidates")) {
            let parts = candidate.get("content").and_then(|c| c.get("parts"));
            for part in array(parts) {
                let call = part.get("functionCall").or_else(|| part.get("function_call"));
                if let Some(name) = call.and_then(|c| c.get("name")).and_then(Value::as_str) {
                    push_name(&mut self.usage.tool_calls, name);
                }
            }
        }
    }
}

/// Whether `key` appears followed by `:` and an object.
fn has_object(data: &[u8], key: &[u8]) -> bool {
    memchr::memmem::find_iter(data, key).any(|at| {
        let mut rest = data[at + key.len()..].iter().skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
}

fn set(slot: &mut Option<u64>, value: Option<&Value>) {
    if let Some(n) = value.and_then(Value::as_u64) {
        *slot = Some(n);
    }
}

fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// An OpenAI chat tool call's name: function tools, or custom tools.
fn call_name(call: &Value) -> Option<&str> {
    ["function", "custom"]
        .iter()
        .find_map(|kind| call.get(*kind)?.get("name")?.as_str())
}

/// A Responses output item that calls a tool: function and custom tools and
/// MCP calls by name, built-in tools (web_search_call…) by type.
fn output_call_name(item: &Value) -> Option<&str> {
    let kind = item.get("type")?.as_str()?;
    if !kind.ends_with("_call") {
        return None;
    }
    item.get("name").and_then(Value::as_str).or(Some(kind))
}

/// An Anthropic content block that calls a tool, client or server side.
fn tool_use_name(block: &Value) -> Option<&str> {
    match block.get("type")?.as_str()? {
        "tool_use" | "server_tool_use" | "mcp_tool_use" => block.get("name")?.as_str(),
        _ => None,
    }
}
