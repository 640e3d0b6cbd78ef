//! Taking named values out of an HTML page with CSS selectors (`scraper`).

use std::collections::BTreeMap;

use scraper::{ElementRef, Html, Selector};
use serde_json::Value;

use crate::job::{ExtractSpec, Take};

/// What extraction found: a value per name (`null` when nothing matched),
/// and the names of required values that are missing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extracted {
    pub values: BTreeMap<String, Value>,
    pub missing_required: Vec<String>,
}

/// Runs every spec against `html`. Selectors were checked at validation;
/// one that still fails to parse counts as missing.
pub fn extract(html: &str, specs: &BTreeMap<String, ExtractSpec>) -> Extracted {
    examine(html, specs, false).0
}

/// [`extract`], and (when `check_shell`) [`looks_like_js_shell`], from one
/// parse of the page.
pub fn examine(html: &str, specs: &BTreeMap<String, ExtractSpec>, check_shell: bool) -> (Extracted, bool) {
    let document = Html::parse_document(html);
    // Parsed only when a pointer asks for it; a body that is not JSON
    // leaves every pointer unmatched.
    let json = specs
        .values()
        .any(|s| is_json_pointer(&s.selector))
        .then(|| serde_json::from_str::<Value>(html).ok())
        .flatten();
    let found = extract_from(&document, json.as_ref(), specs);
    (found, check_shell && is_js_shell(&document))
}

/// A selector that starts with `/` is a JSON Pointer (RFC 6901) into a
/// JSON response; no CSS selector can start with `/`, so the two never mix up.
pub fn is_json_pointer(selector: &str) -> bool {
    selector.starts_with('/')
}

fn extract_from(document: &Html, json: Option<&Value>, specs: &BTreeMap<String, ExtractSpec>) -> Extracted {
    let mut found = Extracted::default();
    for (name, spec) in specs {
        if is_json_pointer(&spec.selector) {
            let value = json
                .and_then(|json| json.pointer(&spec.selector))
                .map_or(Value::Null, |v| match (&spec.take, v) {
                    // Text of a string is the string; of anything else, its JSON.
                    (Take::Text, Value::String(s)) => Value::String(s.clone()),
                    (Take::Text, other) if !spec.list => Value::String(other.to_string()),
                    (_, other) => other.clone(),
                });
            if spec.required && value.is_null() {
                found.missing_required.push(name.clone());
            }
            found.values.insert(name.clone(), value);
            continue;
        }
        let value = Selector::parse(&spec.selector)
            .ok()
            .map(|selector| {
                let matches = document.select(&selector).map(|element| take(element, &spec.take));
                if spec.list {
                    Value::Array(matches.flatten().map(Value::String).collect())
                } else {
                    matches.flatten().next().map_or(Value::Null, Value::String)
                }
            })
            .unwrap_or(Value::Null);
        let empty = match &value {
            Value::Null => true,
            Value::Array(items) => items.is_empty(),
            _ => false,
        };
        if spec.required && empty {
            found.missing_required.push(name.clone());
        }
        found.values.insert(name.clone(), value);
    }
    found
}

fn take(element: ElementRef<'_>, take: &Take) -> Option<String> {
    match take {
        Take::Text => Some(collapse(&element.text().collect::<String>())),
        Take::Html => Some(element.inner_html()),
        Take::Attr(name) => element.value().attr(name).map(str::to_string),
        Take::MissingAttr => None,
    }
}

/// Whitespace runs become one space, as a reader sees the text.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether an HTML page is a JavaScript shell: a document that needs a
/// browser to show its content (`auto` escalates on this).
pub fn looks_like_js_shell(html: &str) -> bool {
    is_js_shell(&Html::parse_document(html))
}

fn is_js_shell(document: &Html) -> bool {
    let Ok(body) = Selector::parse("body") else {
        return false;
    };
    let Ok(scripts) = Selector::parse("script") else {
        return false;
    };
    let has_script = document.select(&scripts).next().is_some();
    let text: String = document
        .select(&body)
        .next()
        .map(|b| {
            b.descendants()
                .filter_map(|node| node.value().as_text().map(|t| t.to_string()))
                .filter(|t| !t.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    // Script text is text too; what matters is what a reader would see.
    let script_text: usize = document
        .select(&scripts)
        .map(|s| s.text().map(str::len).sum::<usize>())
        .sum();
    let visible = text.len().saturating_sub(script_text);
    has_script && visible < 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(selector: &str, take: Take, list: bool, required: bool) -> ExtractSpec {
        ExtractSpec {
            selector: selector.into(),
            take,
            list,
            required,
        }
    }

    const PAGE: &str = r#"<html><head><title>T</title></head><body>
        <h1>  Hello,
           <i>world</i>! </h1>
        <ul><li><a href="/a">A</a></li><li><a href="/b">B</a></li><li><a>no link</a></li></ul>
        <div id="main"><p>para</p></div></body></html>"#;

    #[test]
    fn json_pointers_read_json_responses() {
        let body = r#"{"status":"ok","items":[{"name":"alpha","price":3}],"count":1}"#;
        let specs = BTreeMap::from([
            ("status".to_string(), spec("/status", Take::Text, false, true)),
            ("first".to_string(), spec("/items/0/name", Take::Text, false, true)),
            ("count".to_string(), spec("/count", Take::Text, false, false)),
            ("items".to_string(), spec("/items", Take::Text, true, false)),
            ("missing".to_string(), spec("/nope", Take::Text, false, true)),
        ]);
        let found = extract(body, &specs);
        assert_eq!(found.values["status"], "ok");
        assert_eq!(found.values["first"], "alpha");
        assert_eq!(found.values["count"], "1");
        assert_eq!(
            found.values["items"],
            serde_json::json!([{"name": "alpha", "price": 3}])
        );
        assert_eq!(found.missing_required, vec!["missing".to_string()]);
        // HTML is not JSON: a pointer finds nothing there.
        let found = extract("<p>hi</p>", &specs);
        assert!(found.values["status"].is_null());
    }

    #[test]
    fn text_attributes_html_and_lists() {
        let specs = BTreeMap::from([
            ("title".to_string(), spec("h1", Take::Text, false, true)),
            ("links".to_string(), spec("a", Take::Attr("href".into()), true, false)),
            ("main".to_string(), spec("#main", Take::Html, false, false)),
            ("absent".to_string(), spec(".nope", Take::Text, false, false)),
            ("needed".to_string(), spec(".price", Take::Text, true, true)),
        ]);
        let found = extract(PAGE, &specs);
        assert_eq!(found.values["title"], "Hello, world!");
        assert_eq!(found.values["links"], serde_json::json!(["/a", "/b"]));
        assert_eq!(found.values["main"], "<p>para</p>");
        assert_eq!(found.values["absent"], Value::Null);
        assert_eq!(found.missing_required, vec!["needed".to_string()]);
    }

    #[test]
    fn javascript_shells_are_recognized() {
        assert!(looks_like_js_shell(
            r#"<html><body><div id="root"></div><script src="/app.js"></script></body></html>"#
        ));
        assert!(looks_like_js_shell(
            r#"<html><body><div id="app"></div><script>var x = "a long inline bundle that is not visible text at all, really quite long indeed";</script></body></html>"#
        ));
        assert!(!looks_like_js_shell(PAGE));
        assert!(!looks_like_js_shell(
            "<html><body>plain text page without any scripts</body></html>"
        ));
    }
}
