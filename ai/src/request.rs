//! Reading an AI request body: model, limits, tools, and a prompt estimate.

use serde_json::{Map, Value};

use crate::tokens::{Counter, EstimateMethod};
use crate::{Api, Endpoint, MAX_NAME, Provider, clip, push_name};

type Object = Map<String, Value>;

/// What an AI request asks for, for the audit record and token budgets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AiRequest {
    pub provider: Provider,
    pub api: Api,
    pub model: Option<String>,
    /// The output-token limit the request sets, if any.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// Names of the tools the request declares, in order, without repeats;
    /// built-in tools with no name are listed by their type.
    pub tools: Vec<String>,
    /// Estimated prompt tokens: message text, system prompts, instructions,
    /// prior tool calls and results, the serialized tool definitions, and
    /// OpenAI's documented framing (3 tokens per message, 3 to prime the
    /// reply). Images, audio, files and other non-text parts are not counted,
    /// nor are providers' hidden tool prompts, so it is a lower bound for
    /// multimodal or tool-heavy requests.
    pub token_estimate: u64,
    pub estimate_method: EstimateMethod,
}

/// Why a request body could not be read. The gateway records the exchange
/// as unparsed and forwards it anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is {found}, expected a JSON object")]
    NotObject { found: String },
    #[error("`{field}` is {found}, expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },
}

/// Framing tokens OpenAI documents for each chat message.
const PER_MESSAGE: u64 = 3;
/// Framing tokens OpenAI documents for priming the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// Nested content deeper than this (tool results inside tool results…) is
/// not counted; real requests nest one or two levels.
const MAX_DEPTH: usize = 4;

/// Reads an AI request body in the format of `endpoint`.
///
/// Fields this reads must have the types the provider's API requires (the
/// provider would refuse the request otherwise); content parts of kinds it
/// does not know are skipped, since providers add new ones often.
pub fn analyze_request(endpoint: &Endpoint, body: &[u8]) -> Result<AiRequest, AnalyzeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| AnalyzeError::NotJson(e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Err(AnalyzeError::NotObject {
            found: describe(&value),
        });
    };
    let model = match endpoint.api {
        Api::GenerateContent => match &endpoint.model_from_path {
            Some(model) => Some(model.as_str()),
            None => opt_str(obj, "", "model")?.map(|m| m.strip_prefix("models/").unwrap_or(m)),
        },
        _ => opt_str(obj, "", "model")?,
    };
    let counter = Counter::new(Some(endpoint.provider), model);
    let mut reader = Reader {
        tally: Tally { counter, tokens: 0 },
        tools: Vec::new(),
    };
    let (max_tokens, stream) = match endpoint.api {
        Api::ChatCompletions => reader.chat(obj)?,
        Api::Responses => reader.responses(obj)?,
        Api::Messages => reader.messages(obj)?,
        Api::GenerateContent => {
            let max_tokens = reader.gemini(obj)?;
            (max_tokens, endpoint.stream_from_path)
        }
    };
    Ok(AiRequest {
        provider: endpoint.provider,
        api: endpoint.api,
        model: model.map(|m| clip(m, MAX_NAME).to_owned()),
        max_tokens,
        stream,
        tools: reader.tools,
        token_estimate: reader.tally.tokens,
        estimate_method: counter.method,
    })
}

struct Tally {
    counter: Counter,
    tokens: u64,
}

impl Tally {
    fn text(&mut self, text: &str) {
        self.tokens += self.counter.count(text);
    }

    fn json(&mut self, value: &impl serde::Serialize) {
        if let Ok(text) = serde_json::to_string(value) {
            self.text(&text);
        }
    }

    /// Message content: a string, or an array of parts of any provider's
    /// shape. Only text is counted.
    fn content(&mut self, value: &Value, depth: usize) {
        match value {
            Value::String(text) => self.text(text),
            Value::Array(parts) if depth < MAX_DEPTH => {
                for part in parts {
                    match part {
                        Value::Object(part) => self.part(part, depth),
                        Value::String(text) => self.text(text),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn part(&mut self, part: &Object, depth: usize) {
        // OpenAI text/refusal, Responses input_text/output_text, Anthropic text/thinking, Gemini text.
        for key in ["text", "refusal", "thinking"] {
            if let Some(Value::String(text)) = part.get(key) {
                self.text(text);
            }
        }
        match part.get("type").and_then(Value::as_str) {
            Some("tool_use" | "server_tool_use") => {
                self.name_and_json(part, "input");
            }
            Some("tool_result") => {
                if let Some(content) = part.get("content") {
                    self.content(content, depth + 1);
                }
            }
            _ => {}
        }
        for (key, payload) in [("functionCall", "args"), ("functionResponse", "response")] {
            if let Some(Value::Object(call)) = part.get(key) {
                self.name_and_json(call, payload);
            }
        }
        if let Some(Value::Object(code)) = part.get("executableCode")
            && let Some(Value::String(code)) = code.get("code")
        {
            self.text(code);
        }
        if let Some(Value::Object(result)) = part.get("codeExecutionResult")
            && let Some(Value::String(output)) = result.get("output")
        {
            self.text(output);
        }
    }

    fn name_and_json(&mut self, obj: &Object, payload: &str) {
        if let Some(Value::String(name)) = obj.get("name") {
            self.text(name);
        }
        if let Some(value) = get(obj, payload) {
            self.json(value);
        }
    }
}

struct Reader {
    tally: Tally,
    tools: Vec<String>,
}

impl Reader {
    fn tool(&mut self, name: &str) {
        if !self.tools.iter().any(|known| known == clip(name, MAX_NAME)) {
            push_name(&mut self.tools, name);
        }
    }

    /// A `tools` list whose entries name themselves at the top level: each is
    /// named by the first of `keys` present, and counted.
    fn flat_tools(&mut self, obj: &Object, keys: &[&str]) -> Result<(), AnalyzeError> {
        for (i, tool) in opt_array(obj, "", "tools")?.iter().enumerate() {
            let tool = as_object(tool, &format!("tools[{i}]"))?;
            if let Some(name) = keys.iter().find_map(|key| tool.get(*key).and_then(Value::as_str)) {
                self.tool(name);
            }
            self.tally.json(tool);
        }
        Ok(())
    }

    /// OpenAI chat completions. Returns the output limit and streaming flag.
    fn chat(&mut self, obj: &Object) -> Result<(Option<u64>, bool), AnalyzeError> {
        // Newer field first: o-series models reject `max_tokens`.
        let newer = opt_u64(obj, "", "max_completion_tokens")?;
        let max_tokens = newer.or(opt_u64(obj, "", "max_tokens")?);
        let stream = opt_bool(obj, "", "stream")?.unwrap_or(false);
        let messages = opt_array(obj, "", "messages")?;
        for (i, message) in messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let message = as_object(message, &at)?;
            self.tally.tokens += PER_MESSAGE;
            for key in ["role", "name"] {
                if let Some(text) = opt_str(message, &at, key)? {
                    self.tally.text(text);
                }
            }
            self.content_field(message, &at)?;
            for (j, call) in opt_array(message, &at, "tool_calls")?.iter().enumerate() {
                let call = as_object(call, &format!("{at}.tool_calls[{j}]"))?;
                for kind in ["function", "custom"] {
                    if let Some(Value::Object(function)) = call.get(kind) {
                        self.call(function);
                    }
                }
            }
            if let Some(Value::Object(function)) = message.get("function_call") {
                self.call(function);
            }
        }
        if !messages.is_empty() {
            self.tally.tokens += REPLY_PRIMING;
        }
        for (i, tool) in opt_array(obj, "", "tools")?.iter().enumerate() {
            let tool = as_object(tool, &format!("tools[{i}]"))?;
            let nested = ["function", "custom"]
                .iter()
                .find_map(|kind| tool.get(*kind).and_then(|f| f.get("name")).and_then(Value::as_str));
            if let Some(name) = nested.or_else(|| tool.get("type").and_then(Value::as_str)) {
                self.tool(name);
            }
            self.tally.json(tool);
        }
        // The deprecated `functions` list some clients still send.
        for (i, function) in opt_array(obj, "", "functions")?.iter().enumerate() {
            let function = as_object(function, &format!("functions[{i}]"))?;
            if let Some(name) = opt_str(function, &format!("functions[{i}]"), "name")? {
                self.tool(name);
            }
            self.tally.json(function);
        }
        Ok((max_tokens, stream))
    }

    /// A tool call the conversation already holds: the model sees its name
    /// and arguments (or custom-tool input) again.
    fn call(&mut self, function: &Object) {
        for key in ["name", "arguments", "input"] {
            if let Some(Value::String(text)) = function.get(key) {
                self.tally.text(text);
            }
        }
    }

    /// A message's `content`: absent, a string, or an array of parts.
    fn content_field(&mut self, message: &Object, at: &str) -> Result<(), AnalyzeError> {
        match get(message, "content") {
            None => {}
            Some(content @ (Value::String(_) | Value::Array(_))) => self.tally.content(content, 0),
            Some(other) => return Err(wrong(at, "content", "a string or an array of content parts", other)),
        }
        Ok(())
    }

    /// OpenAI Responses.
    fn responses(&mut self, obj: &Object) -> Result<(Option<u64>, bool), AnalyzeError> {
        let max_tokens = opt_u64(obj, "", "max_output_tokens")?;
        let stream = opt_bool(obj, "", "stream")?.unwrap_or(false);
        if let Some(instructions) = opt_str(obj, "", "instructions")? {
            self.tally.tokens += PER_MESSAGE;
            self.tally.text(instructions);
        }
        match get(obj, "input") {
            None => {}
            Some(Value::String(text)) => {
                self.tally.tokens += PER_MESSAGE + REPLY_PRIMING;
                self.tally.text(text);
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("input[{i}]");
                    let item = as_object(item, &at)?;
                    self.tally.tokens += PER_MESSAGE;
                    if let Some(Value::String(role)) = item.get("role") {
                        self.tally.text(role);
                    }
                    self.content_field(item, &at)?;
                    // function_call / custom_tool_call and their outputs; reasoning summaries.
                    self.call(item);
                    for key in ["output", "summary"] {
                        if let Some(value) = item.get(key) {
                            self.tally.content(value, 0);
                        }
                    }
                }
                if !items.is_empty() {
                    self.tally.tokens += REPLY_PRIMING;
                }
            }
            Some(other) => return Err(wrong("", "input", "a string or an array of input items", other)),
        }
        self.flat_tools(obj, &["name", "server_label", "type"])?;
        Ok((max_tokens, stream))
    }

    /// Anthropic messages.
    fn messages(&mut self, obj: &Object) -> Result<(Option<u64>, bool), AnalyzeError> {
        let max_tokens = opt_u64(obj, "", "max_tokens")?;
        let stream = opt_bool(obj, "", "stream")?.unwrap_or(false);
        match get(obj, "system") {
            None => {}
            Some(system @ (Value::String(_) | Value::Array(_))) => {
                self.tally.tokens += PER_MESSAGE;
                self.tally.content(system, 0);
            }
            Some(other) => return Err(wrong("", "system", "a string or an array of text blocks", other)),
        }
        let messages = opt_array(obj, "", "messages")?;
        for (i, message) in messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let message = as_object(message, &at)?;
            self.tally.tokens += PER_MESSAGE;
            if let Some(role) = opt_str(message, &at, "role")? {
                self.tally.text(role);
            }
            self.content_field(message, &at)?;
        }
        if !messages.is_empty() {
            self.tally.tokens += REPLY_PRIMING;
        }
        self.flat_tools(obj, &["name", "type"])?;
        Ok((max_tokens, stream))
    }

    /// Gemini generateContent; streaming is in the URL, so only the limit
    /// is returned. The REST API accepts camelCase and snake_case names.
    fn gemini(&mut self, obj: &Object) -> Result<Option<u64>, AnalyzeError> {
        let (config_key, config) = either(obj, "generationConfig", "generation_config");
        let max_tokens = match config {
            None => None,
            Some(Value::Object(config)) => {
                let (key, _) = either(config, "maxOutputTokens", "max_output_tokens");
                opt_u64(config, config_key, key)?
            }
            Some(other) => return Err(wrong("", config_key, "an object", other)),
        };
        let (system_key, system) = either(obj, "systemInstruction", "system_instruction");
        match system {
            None => {}
            Some(Value::Object(system)) => {
                self.tally.tokens += PER_MESSAGE;
                if let Some(parts) = system.get("parts") {
                    self.tally.content(parts, 0);
                }
            }
            Some(Value::String(text)) => {
                self.tally.tokens += PER_MESSAGE;
                self.tally.text(text);
            }
            Some(other) => return Err(wrong("", system_key, "a Content object", other)),
        }
        let contents = opt_array(obj, "", "contents")?;
        for (i, content) in contents.iter().enumerate() {
            let at = format!("contents[{i}]");
            let content = as_object(content, &at)?;
            self.tally.tokens += PER_MESSAGE;
            if let Some(role) = opt_str(content, &at, "role")? {
                self.tally.text(role);
            }
            let parts = opt_array(content, &at, "parts")?;
            for part in parts {
                if let Value::Object(part) = part {
                    self.tally.part(part, 0);
                }
            }
        }
        if !contents.is_empty() {
            self.tally.tokens += REPLY_PRIMING;
        }
        for (i, tool) in opt_array(obj, "", "tools")?.iter().enumerate() {
            let at = format!("tools[{i}]");
            let tool = as_object(tool, &at)?;
            for (key, value) in tool {
                if key == "functionDeclarations" || key == "function_declarations" {
                    let Value::Array(declarations) = value else {
                        return Err(wrong(&at, key, "an array", value));
                    };
                    for declaration in declarations {
                        if let Some(name) = declaration.get("name").and_then(Value::as_str) {
                            self.tool(name);
                        }
                    }
                } else {
                    // Built-in tools: googleSearch, codeExecution, urlContext…
                    self.tool(key);
                }
            }
            self.tally.json(tool);
        }
        Ok(max_tokens)
    }
}

/// A field's value; JSON `null` counts as absent, as the providers treat it.
fn get<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// The first of two spellings present, and which one it was.
fn either<'a, 'k>(obj: &'a Object, camel: &'k str, snake: &'k str) -> (&'k str, Option<&'a Value>) {
    match get(obj, camel) {
        Some(value) => (camel, Some(value)),
        None => (snake, get(obj, snake)),
    }
}

fn opt_str<'a>(obj: &'a Object, at: &str, key: &str) -> Result<Option<&'a str>, AnalyzeError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong(at, key, "a string", other)),
    }
}

fn opt_u64(obj: &Object, at: &str, key: &str) -> Result<Option<u64>, AnalyzeError> {
    match get(obj, key) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong(at, key, "a non-negative integer", value)),
    }
}

fn opt_bool(obj: &Object, at: &str, key: &str) -> Result<Option<bool>, AnalyzeError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong(at, key, "a boolean", other)),
    }
}

fn opt_array<'a>(obj: &'a Object, at: &str, key: &str) -> Result<&'a [Value], AnalyzeError> {
    match get(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(wrong(at, key, "an array", other)),
    }
}

fn as_object<'a>(value: &'a Value, at: &str) -> Result<&'a Object, AnalyzeError> {
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(AnalyzeError::WrongType {
            field: at.to_owned(),
            expected: "an object",
            found: describe(other),
        }),
    }
}

fn wrong(at: &str, key: &str, expected: &'static str, found: &Value) -> AnalyzeError {
    let field = if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    };
    AnalyzeError::WrongType {
        field,
        expected,
        found: describe(found),
    }
}

/// A short description of a value for an error message; never its content,
/// which may be a prompt.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests;
