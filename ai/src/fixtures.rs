//! Request bodies and responses shaped like the providers' own (from their
//! API references), shared by the unit and fuzz tests.

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const CHAT_REQUEST: &str = r#"{
  "model": "gpt-4o-2024-08-06",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [
      {"type": "text", "text": "What's the weather in Paris?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}}
    ]},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
    ]},
    {"role": "tool", "tool_call_id": "call_abc", "content": "18C and sunny"}
  ],
  "tools": [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
  ],
  "max_completion_tokens": 512,
  "stream": true,
  "stream_options": {"include_usage": true}
}"#;

pub const RESPONSES_PATH: &str = "/v1/responses";
pub const RESPONSES_REQUEST: &str = r#"{
  "model": "gpt-4.1",
  "instructions": "You are a coding assistant.",
  "input": [
    {"role": "user", "content": [{"type": "input_text", "text": "List the files"}]},
    {"type": "function_call", "call_id": "call_1", "name": "list_files", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "a.rs b.rs"}
  ],
  "tools": [
    {"type": "function", "name": "list_files", "description": "List files", "parameters": {"type": "object", "properties": {}}},
    {"type": "web_search_preview"}
  ],
  "max_output_tokens": 1024,
  "stream": false
}"#;

pub const MESSAGES_PATH: &str = "/v1/messages";
pub const MESSAGES_REQUEST: &str = r#"{
  "model": "claude-sonnet-4-20250514",
  "max_tokens": 1024,
  "system": [{"type": "text", "text": "You are a careful travel agent.", "cache_control": {"type": "ephemeral"}}],
  "messages": [
    {"role": "user", "content": "Find flights to Tokyo"},
    {"role": "assistant", "content": [
      {"type": "text", "text": "Searching."},
      {"type": "tool_use", "id": "toolu_01", "name": "search_flights", "input": {"to": "NRT"}}
    ]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "3 flights found"}]}
  ],
  "tools": [
    {"name": "search_flights", "description": "Search flights", "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}}},
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
  ],
  "stream": true
}"#;

pub const GEMINI_STREAM_PATH: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
pub const GEMINI_REQUEST: &str = r#"{
  "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
  "contents": [
    {"role": "user", "parts": [
      {"text": "What's the capital of France?"},
      {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"}}
    ]}
  ],
  "tools": [
    {"functionDeclarations": [{"name": "lookup_city", "description": "Look up a city",
      "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}]},
    {"googleSearch": {}}
  ],
  "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2}
}"#;

pub const CHAT_RESPONSE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1727000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}],"refusal":null},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_1"}"#;

/// With `stream_options.include_usage`: every chunk has `"usage":null` and a
/// last chunk with no choices carries the totals.
pub const CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Let me check the usage.\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":82,\"completion_tokens\":17,\"total_tokens\":99}}\n\n",
    "data: [DONE]\n\n",
);

pub const RESPONSES_RESPONSE: &str = r#"{"id":"resp_1","object":"response","created_at":1741000000,"status":"completed","model":"gpt-4.1-2025-04-14","output":[{"type":"web_search_call","id":"ws_1","status":"completed"},{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Two files.","annotations":[]}]},{"type":"function_call","id":"fc_1","call_id":"call_1","name":"list_files","arguments":"{}","status":"completed"}],"usage":{"input_tokens":120,"input_tokens_details":{"cached_tokens":0},"output_tokens":15,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":135}}"#;

pub const RESPONSES_STREAM: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"list_files\",\"arguments\":\"\",\"status\":\"in_progress\"}}\n\n",
    "event: response.function_call_arguments.delta\n",
    "data: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":2,\"item_id\":\"fc_1\",\"output_index\":0,\"delta\":\"{}\"}\n\n",
    "event: response.output_item.done\n",
    "data: {\"type\":\"response.output_item.done\",\"sequence_number\":3,\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"list_files\",\"arguments\":\"{}\",\"status\":\"completed\"}}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":4,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"list_files\",\"arguments\":\"{}\",\"status\":\"completed\"}],\"usage\":{\"input_tokens\":120,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":15,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":135}}}\n\n",
);

pub const MESSAGES_RESPONSE: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"I'll search."},{"type":"tool_use","id":"toolu_01","name":"search_flights","input":{"to":"NRT"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":58}}"#;

/// Two `message_delta` events whose `output_tokens` are running totals
/// (10, then 25): the answer is 25.
pub const MESSAGES_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let me check the tool_use usage.\"}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null,\"stop_sequence\":null},\"usage\":{\"output_tokens\":10}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"search_flights\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"to\\\": \\\"NRT\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":25}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

pub const GEMINI_RESPONSE: &str = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"lookup_city","args":{"name":"Paris"}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":31,"candidatesTokenCount":7,"totalTokenCount":38,"promptTokensDetails":[{"modality":"TEXT","tokenCount":31}]},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;

/// Gemini streams with CRLF line endings; usageMetadata grows with each
/// chunk (2, 9, 14 output tokens).
pub const GEMINI_STREAM: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"The capital\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":12,\"candidatesTokenCount\":2,\"totalTokenCount\":14},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n",
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"lookup_city\",\"args\":{\"name\":\"Paris\"}}}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":12,\"candidatesTokenCount\":9,\"totalTokenCount\":21},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n",
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" is Paris.\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":12,\"candidatesTokenCount\":14,\"totalTokenCount\":26},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n",
);

/// The same stream without `alt=sse`: one JSON array of the chunks.
pub const GEMINI_ARRAY: &str = r#"[{"candidates":[{"content":{"parts":[{"text":"The capital"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":2,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash"}
,
{"candidates":[{"content":{"parts":[{"functionCall":{"name":"lookup_city","args":{"name":"Paris"}}}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":9,"totalTokenCount":21},"modelVersion":"gemini-2.5-flash"}
,
{"candidates":[{"content":{"parts":[{"text":" is Paris."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":14,"totalTokenCount":26},"modelVersion":"gemini-2.5-flash"}
]"#;
