//! Request extraction for each format, the prompt estimate's arithmetic, and
//! malformed bodies.

use crate::fixtures::*;
use crate::*;

fn analyze(path: &str, body: &str) -> Result<AiRequest, AnalyzeError> {
    let endpoint = detect(path).expect("a known AI path");
    analyze_request(&endpoint, body.as_bytes())
}

fn tokens(model: &str, text: &str) -> u64 {
    estimate_tokens(model, text).tokens
}

/// The serialized form the estimate counts for a tool definition.
fn json_tokens(model: &str, json: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    tokens(model, &serde_json::to_string(&value).unwrap())
}

#[test]
fn single_message_matches_openai_documented_framing() {
    let req = analyze(
        CHAT_PATH,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#,
    )
    .unwrap();
    // 3 per message + "user" (1) + "hello world" (2) + 3 to prime the reply.
    assert_eq!(req.token_estimate, 9);
    assert_eq!(req.estimate_method.to_string(), "o200k_base");
}

#[test]
fn chat_completions() {
    let req = analyze(CHAT_PATH, CHAT_REQUEST).unwrap();
    assert_eq!(req.provider, Provider::OpenAi);
    assert_eq!(req.api, Api::ChatCompletions);
    assert_eq!(req.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(req.max_tokens, Some(512));
    assert!(req.stream);
    assert_eq!(req.tools, ["get_weather", "get_time"]);
    assert_eq!(req.estimate_method, EstimateMethod::Exact(Encoding::O200kBase));

    let m = "gpt-4o";
    let text: u64 = [
        "system",
        "You are a helpful assistant.",
        "user",
        "What's the weather in Paris?",
        "assistant",
        "get_weather",
        r#"{"city":"Paris"}"#,
        "tool",
        "18C and sunny",
    ]
    .iter()
    .map(|t| tokens(m, t))
    .sum();
    let tools = json_tokens(
        m,
        r#"{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#,
    ) + json_tokens(
        m,
        r#"{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}"#,
    );
    // The image part is not counted.
    assert_eq!(req.token_estimate, 4 * 3 + 3 + text + tools);
}

#[test]
fn image_data_does_not_inflate_the_estimate() {
    let small = analyze(CHAT_PATH, CHAT_REQUEST).unwrap().token_estimate;
    let big_image = format!("data:image/png;base64,{}", "QUJD".repeat(50_000));
    let body = CHAT_REQUEST.replace("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", &big_image);
    assert_ne!(body, CHAT_REQUEST);
    assert_eq!(analyze(CHAT_PATH, &body).unwrap().token_estimate, small);
}

#[test]
fn chat_max_tokens_legacy_field_and_defaults() {
    let req = analyze(
        CHAT_PATH,
        r#"{"model":"gpt-3.5-turbo","max_tokens":100,"messages":[],"stream":null}"#,
    )
    .unwrap();
    assert_eq!(req.max_tokens, Some(100));
    assert!(!req.stream);
    assert_eq!(req.token_estimate, 0);
    assert_eq!(req.estimate_method, EstimateMethod::Exact(Encoding::Cl100kBase));
    let req = analyze(
        CHAT_PATH,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(req.max_tokens, None);
    assert!(req.tools.is_empty());
}

#[test]
fn chat_to_a_router_serving_claude_approximates_for_anthropic() {
    let req = analyze(
        "/api/v1/chat/completions",
        r#"{"model":"anthropic/claude-3.5-sonnet","messages":[{"role":"user","content":"hello world"}]}"#,
    )
    .unwrap();
    assert_eq!(req.provider, Provider::OpenAi);
    assert_eq!(
        req.estimate_method.to_string(),
        "cl100k_base (approximation for anthropic)"
    );
}

#[test]
fn responses_api() {
    let req = analyze(RESPONSES_PATH, RESPONSES_REQUEST).unwrap();
    assert_eq!((req.provider, req.api), (Provider::OpenAi, Api::Responses));
    assert_eq!(req.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(req.max_tokens, Some(1024));
    assert!(!req.stream);
    assert_eq!(req.tools, ["list_files", "web_search_preview"]);
    let m = "gpt-4.1";
    let text: u64 = [
        "You are a coding assistant.",
        "user",
        "List the files",
        "list_files",
        "{}",
        "a.rs b.rs",
    ]
    .iter()
    .map(|t| tokens(m, t))
    .sum();
    let tools = json_tokens(
        m,
        r#"{"type": "function", "name": "list_files", "description": "List files", "parameters": {"type": "object", "properties": {}}}"#,
    ) + json_tokens(m, r#"{"type": "web_search_preview"}"#);
    // instructions + 3 items, each framed, + reply priming.
    assert_eq!(req.token_estimate, 4 * 3 + 3 + text + tools);
}

#[test]
fn responses_string_input() {
    let req = analyze(
        RESPONSES_PATH,
        r#"{"model":"o3-mini","input":"hello world","stream":true}"#,
    )
    .unwrap();
    assert!(req.stream);
    assert_eq!(req.token_estimate, 3 + 3 + 2);
    assert_eq!(req.estimate_method, EstimateMethod::Exact(Encoding::O200kBase));
}

#[test]
fn anthropic_messages() {
    let req = analyze(MESSAGES_PATH, MESSAGES_REQUEST).unwrap();
    assert_eq!((req.provider, req.api), (Provider::Anthropic, Api::Messages));
    assert_eq!(req.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(req.max_tokens, Some(1024));
    assert!(req.stream);
    assert_eq!(req.tools, ["search_flights", "web_search"]);
    assert_eq!(
        req.estimate_method,
        EstimateMethod::Approximation {
            encoding: Encoding::Cl100kBase,
            provider: Some(Provider::Anthropic)
        }
    );
    assert_eq!(
        serde_json::to_value(req.estimate_method).unwrap(),
        "cl100k_base (approximation for anthropic)"
    );
    let m = "claude-sonnet-4";
    let text: u64 = [
        "You are a careful travel agent.",
        "user",
        "Find flights to Tokyo",
        "assistant",
        "Searching.",
        "search_flights",
        r#"{"to":"NRT"}"#,
        "user",
        "3 flights found",
    ]
    .iter()
    .map(|t| tokens(m, t))
    .sum();
    let tools = json_tokens(
        m,
        r#"{"name": "search_flights", "description": "Search flights", "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}}}"#,
    ) + json_tokens(
        m,
        r#"{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}"#,
    );
    // system + 3 messages, each framed, + reply priming.
    assert_eq!(req.token_estimate, 4 * 3 + 3 + text + tools);
}

#[test]
fn anthropic_string_system_prompt_counts() {
    let without = r#"{"model":"claude-3-5-haiku-latest","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let with = r#"{"model":"claude-3-5-haiku-latest","max_tokens":10,"system":"Be terse and exact.","messages":[{"role":"user","content":"hi"}]}"#;
    let a = analyze(MESSAGES_PATH, without).unwrap().token_estimate;
    let b = analyze(MESSAGES_PATH, with).unwrap().token_estimate;
    assert_eq!(b - a, 3 + tokens("claude", "Be terse and exact."));
}

#[test]
fn gemini_generate_content() {
    let req = analyze(GEMINI_STREAM_PATH, GEMINI_REQUEST).unwrap();
    assert_eq!((req.provider, req.api), (Provider::Gemini, Api::GenerateContent));
    assert_eq!(req.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(req.max_tokens, Some(256));
    assert!(req.stream, "streamGenerateContent streams");
    assert_eq!(req.tools, ["lookup_city", "googleSearch"]);
    assert_eq!(
        req.estimate_method.to_string(),
        "cl100k_base (approximation for gemini)"
    );
    let m = "gemini-2.5-flash";
    let text: u64 = ["Answer briefly.", "user", "What's the capital of France?"]
        .iter()
        .map(|t| tokens(m, t))
        .sum();
    let tools = json_tokens(
        m,
        r#"{"functionDeclarations": [{"name": "lookup_city", "description": "Look up a city",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}]}"#,
    ) + json_tokens(m, r#"{"googleSearch": {}}"#);
    assert_eq!(req.token_estimate, 2 * 3 + 3 + text + tools);

    let plain = analyze("/v1/models/gemini-1.5-pro:generateContent", GEMINI_REQUEST).unwrap();
    assert_eq!(plain.model.as_deref(), Some("gemini-1.5-pro"));
    assert!(!plain.stream);
}

#[test]
fn gemini_snake_case_fields() {
    let body = r#"{"contents":[{"parts":[{"text":"hello world"}]}],"generation_config":{"max_output_tokens":64},
        "tools":[{"function_declarations":[{"name":"f"}]}],"system_instruction":{"parts":[{"text":"x"}]}}"#;
    let req = analyze("/v1beta/models/gemini-2.0-flash:generateContent", body).unwrap();
    assert_eq!(req.max_tokens, Some(64));
    assert_eq!(req.tools, ["f"]);
}

#[test]
fn serializes_for_the_audit_record() {
    let req = analyze(MESSAGES_PATH, MESSAGES_REQUEST).unwrap();
    let json = serde_json::to_value(&req).unwrap();
    assert_eq!(json["provider"], "anthropic");
    assert_eq!(json["api"], "messages");
    assert_eq!(json["max_tokens"], 1024);
    assert_eq!(json["tools"][1], "web_search");
    assert!(json["token_estimate"].as_u64().unwrap() > 0);
}

#[track_caller]
fn rejects(path: &str, body: &str, message: &str) {
    match analyze(path, body) {
        Err(e) => assert_eq!(e.to_string(), message),
        Ok(req) => panic!("accepted {body:?}: {req:?}"),
    }
}

#[test]
fn malformed_bodies_say_what_is_wrong() {
    rejects(
        CHAT_PATH,
        r#"{"model":"gpt-4o","max_tokens":"lots"}"#,
        "`max_tokens` is a string, expected a non-negative integer",
    );
    rejects(
        CHAT_PATH,
        r#"{"model":"gpt-4o","max_tokens":-1}"#,
        "`max_tokens` is the number -1, expected a non-negative integer",
    );
    rejects(
        CHAT_PATH,
        r#"{"model":42}"#,
        "`model` is the number 42, expected a string",
    );
    rejects(
        CHAT_PATH,
        r#"{"stream":"yes"}"#,
        "`stream` is a string, expected a boolean",
    );
    rejects(
        CHAT_PATH,
        r#"{"messages":{"role":"user"}}"#,
        "`messages` is an object, expected an array",
    );
    rejects(
        CHAT_PATH,
        r#"{"messages":["hi"]}"#,
        "`messages[0]` is a string, expected an object",
    );
    rejects(
        CHAT_PATH,
        r#"{"messages":[{"role":"user","content":7}]}"#,
        "`messages[0].content` is the number 7, expected a string or an array of content parts",
    );
    rejects(
        RESPONSES_PATH,
        r#"{"input":true}"#,
        "`input` is true, expected a string or an array of input items",
    );
    rejects(
        MESSAGES_PATH,
        r#"{"system":{"text":"x"}}"#,
        "`system` is an object, expected a string or an array of text blocks",
    );
    rejects(
        GEMINI_STREAM_PATH,
        r#"{"generationConfig":{"maxOutputTokens":1.5}}"#,
        "`generationConfig.maxOutputTokens` is the number 1.5, expected a non-negative integer",
    );
    rejects(
        GEMINI_STREAM_PATH,
        r#"{"tools":[{"functionDeclarations":{}}]}"#,
        "`tools[0].functionDeclarations` is an object, expected an array",
    );
    rejects(CHAT_PATH, "[1,2]", "body is an array, expected a JSON object");
    rejects(CHAT_PATH, "\"hi\"", "body is a string, expected a JSON object");
}

#[test]
fn unparseable_bodies() {
    let truncated = &CHAT_REQUEST[..CHAT_REQUEST.len() / 2];
    for body in [truncated, "", "not json", "{\"model\": \"gpt-4o\",}"] {
        let err = analyze(CHAT_PATH, body).unwrap_err();
        assert!(matches!(err, AnalyzeError::NotJson(_)), "{body:?}: {err}");
        assert!(err.to_string().starts_with("body is not valid JSON: "), "{err}");
    }
    let garbage = [0xff, 0xfe, 0x00, 0x7b, 0x80];
    let endpoint = detect(CHAT_PATH).unwrap();
    assert!(matches!(
        analyze_request(&endpoint, &garbage),
        Err(AnalyzeError::NotJson(_))
    ));
}

#[test]
fn unknown_parts_and_extra_fields_are_skipped() {
    let body = r#"{"model":"gpt-4o","temperature":0.3,"messages":[{"role":"user","content":[
        {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},{"type":"brand_new_part","x":1},
        {"type":"text","text":"hello world"}]}]}"#;
    assert_eq!(analyze(CHAT_PATH, body).unwrap().token_estimate, 9);
}
