//! Rewriting a body with its findings replaced, keeping its format valid.

use crate::Engine;

/// Replaces every finding in `text` with `[REDACTED:<type>]`.
pub fn text(engine: &Engine, text: &[u8]) -> Vec<u8> {
    let spans = engine.spans(text);
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.extend_from_slice(&text[at..span.start]);
        out.extend_from_slice(format!("[REDACTED:{}]", span.kind).as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&text[at..]);
    out
}

fn string(engine: &Engine, value: &str) -> String {
    String::from_utf8_lossy(&text(engine, value.as_bytes())).into_owned()
}

/// JSON: string values (and keys) are redacted where they stand; a number
/// that is a finding (a card number written as a number) becomes a string.
/// A body that does not parse as JSON is redacted as text.
pub fn json(engine: &Engine, body: &[u8]) -> Vec<u8> {
    fn walk(engine: &Engine, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => *s = string(engine, s),
            serde_json::Value::Number(n) => {
                let written = n.to_string();
                let redacted = string(engine, &written);
                if redacted != written {
                    *value = serde_json::Value::String(redacted);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(engine, v)),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut v) in entries {
                    walk(engine, &mut v);
                    map.insert(string(engine, &key), v);
                }
            }
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            walk(engine, &mut value);
            serde_json::to_vec(&value).unwrap_or_else(|_| text(engine, body))
        }
        Err(_) => text(engine, body),
    }
}

/// A form or query string: each decoded name and value redacted, then
/// encoded again.
pub fn form(engine: &Engine, body: &[u8]) -> Vec<u8> {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url::form_urlencoded::parse(body) {
        out.append_pair(&string(engine, &name), &string(engine, &value));
    }
    out.finish().into_bytes()
}
