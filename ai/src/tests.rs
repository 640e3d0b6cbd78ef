//! Endpoint detection, token counting against tiktoken's own numbers, and
//! seeded fuzzing of the request and response parsers.

use super::*;
use crate::fixtures::*;
use crate::tokens::{SEGMENT, bpe, count_segmented};

#[test]
fn detects_each_format_from_the_path() {
    let cases = [
        ("/v1/chat/completions", Api::ChatCompletions),
        ("/v1/chat/completions?foo=1", Api::ChatCompletions),
        (
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
            Api::ChatCompletions,
        ),
        ("/api/v1/chat/completions", Api::ChatCompletions),
        ("/v1/responses", Api::Responses),
        ("/openai/v1/responses/", Api::Responses),
        ("/v1/messages", Api::Messages),
        ("/v1/messages?beta=true", Api::Messages),
    ];
    for (path, api) in cases {
        let endpoint = detect(path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(endpoint, Endpoint::new(api), "{path}");
    }
    assert_eq!(detect("/v1/messages").unwrap().provider.as_str(), "anthropic");
    assert_eq!(detect("/v1/responses").unwrap().provider.as_str(), "openai");
}

#[test]
fn detects_gemini_model_and_streaming_from_the_url() {
    let cases = [
        (
            "/v1beta/models/gemini-2.0-flash:generateContent",
            "gemini-2.0-flash",
            false,
        ),
        (
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "gemini-2.5-pro",
            true,
        ),
        (
            "/v1/models/gemini-1.5-flash-001:streamGenerateContent",
            "gemini-1.5-flash-001",
            true,
        ),
        (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro:generateContent",
            "gemini-1.5-pro",
            false,
        ),
        (
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
            "gemini-2.0-flash",
            false,
        ),
        ("/v1beta/tunedModels/my-model-7:generateContent", "my-model-7", false),
    ];
    for (path, model, stream) in cases {
        let endpoint = detect(path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(endpoint.provider, Provider::Gemini);
        assert_eq!(endpoint.api, Api::GenerateContent);
        assert_eq!(endpoint.model_from_path.as_deref(), Some(model), "{path}");
        assert_eq!(endpoint.stream_from_path, stream, "{path}");
    }
}

#[test]
fn other_paths_are_not_ai_endpoints() {
    for path in [
        "",
        "/",
        "/v1/embeddings",
        "/v1/responses/resp_123",
        "/v1/messages/count_tokens",
        "/v1/messages/batches",
        "/v1beta/models/gemini-2.0-flash:countTokens",
        "/v1beta/models/gemini-2.0-flash:embedContent",
        "/v1beta/models/gemini-2.0-flash",
        "/v1beta/models/:generateContent",
        "/v1beta/files/abc:generateContent",
        "/search?q=/v1/chat/completions#x",
    ] {
        assert_eq!(detect(path), None, "{path}");
    }
}

#[test]
fn counts_match_tiktoken() {
    let hello = estimate_tokens("gpt-4o", "hello world");
    assert_eq!(
        hello,
        TokenEstimate {
            tokens: 2,
            method: EstimateMethod::Exact(Encoding::O200kBase)
        }
    );
    // OpenAI cookbook: cl100k_base encodes this as [83, 1609, 5963, 374, 2294, 0].
    let cookbook = estimate_tokens("gpt-4", "tiktoken is great!");
    assert_eq!(
        cookbook,
        TokenEstimate {
            tokens: 6,
            method: EstimateMethod::Exact(Encoding::Cl100kBase)
        }
    );
    assert_eq!(estimate_tokens("gpt-4o", "").tokens, 0);
}

#[test]
fn encoding_follows_the_model() {
    let o200k = EstimateMethod::Exact(Encoding::O200kBase);
    let cl100k = EstimateMethod::Exact(Encoding::Cl100kBase);
    for (model, method) in [
        ("gpt-4o", o200k),
        ("gpt-4o-mini-2024-07-18", o200k),
        ("chatgpt-4o-latest", o200k),
        ("gpt-4.1-nano", o200k),
        ("gpt-5", o200k),
        ("gpt-5.1-codex", o200k),
        ("o1", o200k),
        ("o3-mini", o200k),
        ("o4-mini-2025-04-16", o200k),
        ("gpt-oss-120b", o200k),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", o200k),
        ("openai/gpt-4.1", o200k),
        ("gpt-4", cl100k),
        ("gpt-4-turbo-2024-04-09", cl100k),
        ("gpt-3.5-turbo", cl100k),
        ("gpt-35-turbo-16k", cl100k),
    ] {
        assert_eq!(estimate_tokens(model, "x").method, method, "{model}");
    }
    let approx = |model: &str| estimate_tokens(model, "x").method.to_string();
    assert_eq!(approx("claude-opus-4-1"), "cl100k_base (approximation for anthropic)");
    assert_eq!(approx("gemini-2.5-pro"), "cl100k_base (approximation for gemini)");
    assert_eq!(approx("llama-3.1-70b"), "cl100k_base (approximation)");
    assert_eq!(approx("o100-not-openai"), "cl100k_base (approximation)");
    assert!(estimate_tokens("claude-3-haiku", "x").method.is_approximation());
    assert!(!estimate_tokens("gpt-4o", "x").method.is_approximation());
}

/// Prose, code, numbers, accents, CJK, emoji, odd whitespace: everything
/// prose-like an agent sends, long enough to be cut into many segments.
fn mixed_text(len: usize) -> String {
    let pieces = [
        "The quick brown fox jumps over the lazy dog. ",
        "It's 3:45pm; we'll meet at 221B Baker St.\n",
        "fn main() {\n    println!(\"{}\", 1234567 + 89);\n}\n",
        "Ünïcödé façade naïve café — “quoted” text… ",
        "東京は日本の首都です。 ",
        "emoji 🎉🚀 and ZWJ 👩‍💻 ",
        "tabs\tand  double  spaces\r\n\r\n",
        "URL https://example.com/a/b?c=d&e=f#g ",
        "    indented line with trailing spaces   \n",
        "SHOUTING CamelCaseWords snake_case_names ",
    ];
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < len {
        text.push_str(pieces[(i * 7 + i / 3) % pieces.len()]);
        i += 1;
    }
    text
}

#[test]
fn segmenting_long_text_does_not_change_the_count() {
    let text = mixed_text(120_000);
    assert!(text.len() > 20 * SEGMENT);
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let bpe = bpe(encoding).unwrap();
        assert_eq!(
            count_segmented(bpe, &text),
            bpe.encode_ordinary(&text).len() as u64,
            "{encoding:?}"
        );
    }
}

#[test]
fn text_without_spaces_is_cut_with_small_error() {
    let text = "東京は日本の首都です".repeat(2000);
    let bpe = bpe(Encoding::O200kBase).unwrap();
    let exact = bpe.encode_ordinary(&text).len() as u64;
    let cuts = (text.len() / SEGMENT + 1) as u64;
    assert!(count_segmented(bpe, &text).abs_diff(exact) <= cuts);
}

#[test]
fn pathological_text_does_not_panic() {
    // A megabyte of spaces makes tiktoken-rs's regex give up (and panic) when encoded in one go.
    let spaces = format!("a{}b", " ".repeat(1 << 20));
    let count = estimate_tokens("gpt-4o", &spaces).tokens;
    assert!((2..=spaces.len() as u64 / 64).contains(&count), "{count}");
    for text in [
        "a".repeat(200_000),
        "\n".repeat(200_000),
        "!".repeat(200_000),
        "9".repeat(200_000),
    ] {
        let count = estimate_tokens("gpt-4", &text).tokens;
        assert!(count > 0 && count <= text.len() as u64, "{count}");
    }
}

/// xorshift64: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few random edits, biased toward the bytes that matter to JSON and SSE.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"{}[]\":,\\\n\r 0-9.eE\x00\xff\xc3tfn";
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if at < out.len() => out[at] = rng.next() as u8,
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => {
                let end = (at + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(out.len());
                let copy = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, copy);
            }
            4 => out.truncate(at),
            5 if at < out.len() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            _ => {
                // Swap a number for a string or a huge value.
                let replacement: &[u8] = [&b"\"lots\""[..], b"-1", b"1e400", b"null", b"[]", b"{}"][rng.below(6)];
                out.splice(at..at, replacement.iter().copied());
            }
        }
    }
    out
}

#[test]
fn fuzz_requests() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0, 0);
    for (path, body) in [
        (CHAT_PATH, CHAT_REQUEST),
        (RESPONSES_PATH, RESPONSES_REQUEST),
        (MESSAGES_PATH, MESSAGES_REQUEST),
        (GEMINI_STREAM_PATH, GEMINI_REQUEST),
    ] {
        let endpoint = detect(path).unwrap();
        for _ in 0..400 {
            let input = mutate(&mut rng, body.as_bytes());
            match analyze_request(&endpoint, &input) {
                Ok(req) => {
                    ok += 1;
                    assert!(req.tools.len() <= MAX_TOOLS);
                    // At most a token per byte plus framing for each JSON object.
                    assert!(req.token_estimate <= 4 * input.len() as u64, "{}", req.token_estimate);
                }
                Err(e) => {
                    err += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    // Mutations must both keep some bodies valid and break others, or this tests little.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}

#[test]
fn fuzz_responses_and_streams() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let sse = Some("text/event-stream");
    let json = Some("application/json");
    let cases = [
        (CHAT_PATH, sse, CHAT_STREAM),
        (CHAT_PATH, json, CHAT_RESPONSE),
        (RESPONSES_PATH, sse, RESPONSES_STREAM),
        (RESPONSES_PATH, json, RESPONSES_RESPONSE),
        (MESSAGES_PATH, sse, MESSAGES_STREAM),
        (MESSAGES_PATH, json, MESSAGES_RESPONSE),
        (GEMINI_STREAM_PATH, sse, GEMINI_STREAM),
        (GEMINI_STREAM_PATH, json, GEMINI_ARRAY),
    ];
    let bound = 2 * MAX_SSE_EVENT.max(MAX_JSON_BODY) + 1024;
    let mut with_usage = 0;
    for (i, (path, content_type, body)) in cases.iter().cycle().take(8 * 250).enumerate() {
        let mut input = mutate(&mut rng, body.as_bytes());
        if i % 97 == 0 {
            // Now and then, one enormous line or event.
            let at = rng.below(input.len() + 1);
            input.splice(at..at, std::iter::repeat_n(b'x', 5 << 20));
        }
        let mut reader = UsageReader::new(&detect(path).unwrap(), *content_type);
        let mut rest = &input[..];
        for feeds in 0usize.. {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((1 + rng.below(64)).min(rest.len()));
            reader.feed(chunk);
            rest = tail;
            if feeds % 256 == 0 {
                assert!(reader.buffered() <= bound);
            }
        }
        assert!(reader.buffered() <= bound);
        let usage = reader.finish();
        assert!(usage.tool_calls.len() <= MAX_TOOLS);
        with_usage += usize::from(usage.tokens_out.is_some());
    }
    assert!(
        with_usage > 200,
        "mutations left too few readable responses: {with_usage}"
    );

    for _ in 0..200 {
        let garbage: Vec<u8> = (0..rng.below(512)).map(|_| rng.next() as u8).collect();
        for content_type in [sse, json] {
            let mut reader = UsageReader::new(&detect(MESSAGES_PATH).unwrap(), content_type);
            reader.feed(&garbage);
            assert_eq!(reader.finish().tokens_out, None);
        }
    }
}
