//! Usage from each provider's responses and streams, fed in every way a
//! network could split them, and from malformed or oversized bodies.

use super::*;
use crate::detect;
use crate::fixtures::*;

const SSE: Option<&str> = Some("text/event-stream; charset=utf-8");
const JSON: Option<&str> = Some("application/json");

fn read_in_chunks(path: &str, content_type: Option<&str>, body: &[u8], size: usize) -> Usage {
    let mut reader = UsageReader::new(&detect(path).unwrap(), content_type);
    for chunk in body.chunks(size.max(1)) {
        reader.feed(chunk);
    }
    reader.finish()
}

/// Reads `body` whole, in chunks of 1, 2, 3 and 7 bytes, and split in two
/// at every offset; all must agree. Returns the common answer.
#[track_caller]
fn read_every_way(path: &str, content_type: Option<&str>, body: &str) -> Usage {
    let body = body.as_bytes();
    let whole = read_in_chunks(path, content_type, body, body.len());
    for size in [1, 2, 3, 7] {
        assert_eq!(
            read_in_chunks(path, content_type, body, size),
            whole,
            "chunks of {size}"
        );
    }
    for at in 0..=body.len() {
        let mut reader = UsageReader::new(&detect(path).unwrap(), content_type);
        reader.feed(&body[..at]);
        reader.feed(&body[at..]);
        assert_eq!(reader.finish(), whole, "split at {at}");
    }
    whole
}

fn usage(tokens_in: u64, tokens_out: u64, tools: &[&str], model: &str) -> Usage {
    Usage {
        tokens_in: Some(tokens_in),
        tokens_out: Some(tokens_out),
        tool_calls: tools.iter().map(|t| t.to_string()).collect(),
        model: Some(model.into()),
    }
}

#[test]
fn openai_chat_completion() {
    let got = read_in_chunks(CHAT_PATH, JSON, CHAT_RESPONSE.as_bytes(), 5);
    assert_eq!(got, usage(82, 17, &["get_weather", "get_time"], "gpt-4o-2024-08-06"));
}

#[test]
fn openai_chat_stream_with_include_usage() {
    let got = read_every_way(CHAT_PATH, SSE, CHAT_STREAM);
    assert_eq!(got, usage(82, 17, &["get_weather", "get_time"], "gpt-4o-2024-08-06"));
}

#[test]
fn openai_chat_stream_without_usage_still_names_the_model_and_calls() {
    let stream: String = CHAT_STREAM
        .split("\n\n")
        .filter(|e| !e.contains("prompt_tokens"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let got = read_every_way(CHAT_PATH, SSE, &stream);
    assert_eq!(got.tokens_in, None);
    assert_eq!(got.tokens_out, None);
    assert_eq!(got.tool_calls, ["get_weather", "get_time"]);
    assert_eq!(got.model.as_deref(), Some("gpt-4o-2024-08-06"));
}

#[test]
fn streamed_tool_call_name_repeated_in_later_deltas_counts_once() {
    let chunk = |args: &str| {
        format!(
            "data: {{\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"name\":\"search\",\"arguments\":\"{args}\"}}}}]}}}}]}}\n\n"
        )
    };
    let stream = [chunk(""), chunk("{}"), chunk("")].concat();
    assert_eq!(read_every_way(CHAT_PATH, SSE, &stream).tool_calls, ["search"]);
}

#[test]
fn openai_responses() {
    let got = read_in_chunks(RESPONSES_PATH, JSON, RESPONSES_RESPONSE.as_bytes(), 64);
    assert_eq!(
        got,
        usage(120, 15, &["web_search_call", "list_files"], "gpt-4.1-2025-04-14")
    );
}

#[test]
fn openai_responses_stream() {
    let got = read_every_way(RESPONSES_PATH, SSE, RESPONSES_STREAM);
    assert_eq!(got, usage(120, 15, &["list_files"], "gpt-4.1-2025-04-14"));
}

#[test]
fn anthropic_message() {
    let got = read_in_chunks(MESSAGES_PATH, JSON, MESSAGES_RESPONSE.as_bytes(), 3);
    // 472 input + 20 cache writes + 100 cache reads.
    assert_eq!(got, usage(592, 58, &["search_flights"], "claude-sonnet-4-20250514"));
}

#[test]
fn anthropic_stream_output_tokens_are_cumulative() {
    let got = read_every_way(MESSAGES_PATH, SSE, MESSAGES_STREAM);
    // message_delta said 10 then 25: the latest total, not 35.
    assert_eq!(got, usage(572, 25, &["search_flights"], "claude-sonnet-4-20250514"));
}

#[test]
fn gemini_response() {
    let got = read_in_chunks(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        JSON,
        GEMINI_RESPONSE.as_bytes(),
        9,
    );
    assert_eq!(got, usage(31, 7, &["lookup_city"], "gemini-2.5-flash"));
}

#[test]
fn gemini_stream_takes_the_latest_usage() {
    let got = read_every_way(GEMINI_STREAM_PATH, SSE, GEMINI_STREAM);
    assert_eq!(got, usage(12, 14, &["lookup_city"], "gemini-2.5-flash"));
}

#[test]
fn gemini_stream_as_a_json_array() {
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let got = read_every_way(path, JSON, GEMINI_ARRAY);
    assert_eq!(got, usage(12, 14, &["lookup_city"], "gemini-2.5-flash"));
}

#[test]
fn gemini_thinking_tokens_are_output() {
    let body = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":40,"totalTokenCount":55},"modelVersion":"gemini-2.5-pro"}"#;
    let got = read_in_chunks(GEMINI_STREAM_PATH, JSON, body.as_bytes(), 100);
    assert_eq!((got.tokens_in, got.tokens_out), (Some(10), Some(45)));
}

#[test]
fn sse_line_endings_comments_and_multiline_data() {
    let lf = concat!(
        ": keep-alive comment\n",
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\n",
        "data: \"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n",
        "id: 1\n",
        "\n",
        ":another comment\n\n",
        "data:{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );
    let expected = Usage {
        tokens_in: Some(5),
        tokens_out: Some(9),
        tool_calls: vec![],
        model: Some("claude-x".into()),
    };
    assert_eq!(read_every_way(MESSAGES_PATH, SSE, lf), expected);
    assert_eq!(read_every_way(MESSAGES_PATH, SSE, &lf.replace('\n', "\r\n")), expected);
    assert_eq!(read_every_way(MESSAGES_PATH, SSE, &lf.replace('\n', "\r")), expected);
}

#[test]
fn last_event_without_blank_line_is_still_read() {
    let stream = MESSAGES_STREAM.trim_end();
    let got = read_every_way(MESSAGES_PATH, SSE, stream);
    assert_eq!(got.tokens_out, Some(25));
}

#[test]
fn stream_under_a_json_content_type_is_read_as_events() {
    for content_type in [JSON, None, Some("text/plain")] {
        let got = read_in_chunks(MESSAGES_PATH, content_type, MESSAGES_STREAM.as_bytes(), 100);
        assert_eq!(got.tokens_out, Some(25), "{content_type:?}");
    }
}

#[test]
fn content_type_decides_the_parser() {
    // JSON read as SSE finds no `data:` lines.
    assert_eq!(
        read_in_chunks(CHAT_PATH, SSE, CHAT_RESPONSE.as_bytes(), 50),
        Usage::default()
    );
    let upper = read_in_chunks(CHAT_PATH, Some("Text/Event-Stream"), CHAT_STREAM.as_bytes(), 50);
    assert_eq!(upper.tokens_out, Some(17));
}

#[test]
fn malformed_responses_yield_no_usage() {
    let truncated = &CHAT_RESPONSE[..CHAT_RESPONSE.len() - 40];
    for (content_type, body) in [
        (JSON, truncated.as_bytes()),
        (JSON, b"<html>502 Bad Gateway</html>".as_slice()),
        (
            JSON,
            b"{\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}".as_slice(),
        ),
        (JSON, b"[1,2,3]".as_slice()),
        (JSON, b"".as_slice()),
        (JSON, &[0xff, 0x00, 0x1f, 0x8b, 0x08, 0x00]),
        (SSE, b"data: {not json}\n\ndata: [1,\n\n".as_slice()),
        (SSE, &[0xff, b'\n', 0x00, b'\r', 0x80, b'\n', b'\n']),
    ] {
        assert_eq!(
            read_in_chunks(CHAT_PATH, content_type, body, 4),
            Usage::default(),
            "{body:?}"
        );
    }
}

#[test]
fn wrong_types_in_usage_are_ignored() {
    let body = r#"{"model":"gpt-4o","usage":{"prompt_tokens":"many","completion_tokens":-3},"choices":[{"message":{"tool_calls":[{"function":{"name":7}}]}}]}"#;
    let got = read_in_chunks(CHAT_PATH, JSON, body.as_bytes(), 10);
    assert_eq!(
        got,
        Usage {
            model: Some("gpt-4o".into()),
            ..Usage::default()
        }
    );
}

#[test]
fn oversized_json_body_stops_buffering() {
    let mut reader = UsageReader::new(&detect(CHAT_PATH).unwrap(), JSON);
    let padding = format!("{{\"pad\":\"{}\",", "x".repeat(64 * 1024));
    reader.feed(padding.as_bytes());
    let filler = vec![b' '; 64 * 1024];
    for _ in 0..(MAX_JSON_BODY / filler.len() + 2) {
        reader.feed(&filler);
        assert!(reader.buffered() <= MAX_JSON_BODY);
    }
    reader.feed(&CHAT_RESPONSE.as_bytes()[1..]);
    assert_eq!(reader.buffered(), 0, "buffer released after the cap");
    assert_eq!(reader.finish(), Usage::default());
}

#[test]
fn json_body_just_under_the_cap_is_read() {
    let mut body = CHAT_RESPONSE.as_bytes().to_vec();
    body.resize(MAX_JSON_BODY, b' ');
    let got = read_in_chunks(CHAT_PATH, JSON, &body, 1 << 16);
    assert_eq!(got.tokens_in, Some(82));
}

#[test]
fn huge_event_without_newline_is_bounded_and_skipped() {
    let mut reader = UsageReader::new(&detect(MESSAGES_PATH).unwrap(), SSE);
    reader.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1}}\n\ndata: \"");
    let block = vec![b'a'; 256 * 1024];
    for _ in 0..40 {
        reader.feed(&block);
        assert!(reader.buffered() <= 2 * MAX_SSE_EVENT + 1024, "{}", reader.buffered());
    }
    // The oversized event ends; later events are read again.
    reader.feed(b"\"\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n");
    assert!(reader.buffered() <= 2 * MAX_SSE_EVENT + 1024);
    assert_eq!(reader.finish().tokens_out, Some(7));
}

#[test]
fn many_data_lines_in_one_event_are_bounded() {
    let mut reader = UsageReader::new(&detect(MESSAGES_PATH).unwrap(), SSE);
    let line = format!("data: {}\n", "b".repeat(1000));
    for _ in 0..6000 {
        reader.feed(line.as_bytes());
        assert!(reader.buffered() <= 2 * MAX_SSE_EVENT + 1024);
    }
    reader.feed(b"\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n");
    assert_eq!(reader.finish().tokens_out, Some(3));
}

#[test]
fn long_streams_keep_little_memory() {
    let mut reader = UsageReader::new(&detect(CHAT_PATH).unwrap(), SSE);
    let delta =
        "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word \"}}],\"usage\":null}\n\n";
    for _ in 0..50_000 {
        reader.feed(delta.as_bytes());
    }
    assert!(reader.buffered() < 4096, "{}", reader.buffered());
    reader.feed(CHAT_STREAM.as_bytes());
    assert_eq!(reader.finish().tokens_out, Some(17));
}

#[test]
fn audit_names_are_bounded() {
    let name = "n".repeat(10_000);
    let calls: Vec<String> = (0..300)
        .map(|_| format!("{{\"function\":{{\"name\":\"{name}\",\"arguments\":\"{{}}\"}}}}"))
        .collect();
    let body = format!(
        "{{\"model\":\"gpt-4o\",\"choices\":[{{\"message\":{{\"tool_calls\":[{}]}}}}]}}",
        calls.join(",")
    );
    let got = read_in_chunks(CHAT_PATH, JSON, body.as_bytes(), 1 << 20);
    assert_eq!(got.tool_calls.len(), crate::MAX_TOOLS);
    assert!(got.tool_calls.iter().all(|n| n.len() == crate::MAX_NAME));
}

#[test]
fn usage_serializes_for_the_audit_record() {
    let got = read_in_chunks(MESSAGES_PATH, SSE, MESSAGES_STREAM.as_bytes(), 1000);
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"tokens_in": 572, "tokens_out": 25, "tool_calls": ["search_flights"], "model": "claude-sonnet-4-20250514"})
    );
}
