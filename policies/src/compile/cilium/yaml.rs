//! Just enough YAML to write Kubernetes objects, byte for byte the same on
//! every run: maps keep the order they are built in (apiVersion, kind,
//! metadata, spec, as people read them), and a scalar is quoted unless it
//! can only be read back as the same string.
//!
//! A serializer over maps would sort `apiVersion` after `kind` and could not
//! put the comments in that say why a manifest is the way it is.

/// A YAML value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Str(String),
    Bool(bool),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

/// A map from `(key, value)` pairs, in this order.
pub(crate) fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
    Node::Map(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub(crate) fn str(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

/// `{key: value, ...}` of strings, in the order given (a label selector).
pub(crate) fn labels(pairs: &[(&str, &str)]) -> Node {
    Node::Map(pairs.iter().map(|(k, v)| (k.to_string(), str(*v))).collect())
}

/// One document: `---`, the comment lines, then the value.
pub(crate) fn document(comment: &[String], value: &Node) -> String {
    let mut out = String::from("---\n");
    for line in comment {
        out.push_str(format!("# {line}").trim_end());
        out.push('\n');
    }
    emit(value, 0, &mut out);
    out
}

fn emit(node: &Node, indent: usize, out: &mut String) {
    match node {
        Node::Map(entries) if !entries.is_empty() => {
            for (key, value) in entries {
                out.push_str(&" ".repeat(indent));
                out.push_str(&scalar(key));
                out.push(':');
                nested(value, indent, out);
            }
        }
        Node::Seq(items) if !items.is_empty() => {
            for item in items {
                // The item is written as if it were indented two more, then
                // its first line's indentation becomes "- ": the same width.
                let mut inner = String::new();
                match item {
                    Node::Map(entries) if !entries.is_empty() => emit(item, indent + 2, &mut inner),
                    _ => {
                        inner.push_str(&" ".repeat(indent + 2));
                        inline(item, &mut inner);
                        inner.push('\n');
                    }
                }
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
        }
        other => {
            out.push_str(&" ".repeat(indent));
            inline(other, out);
            out.push('\n');
        }
    }
}

/// What follows `key:`: a scalar or empty collection on the same line,
/// anything else on the lines below, two spaces in.
fn nested(value: &Node, indent: usize, out: &mut String) {
    match value {
        Node::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            emit(value, indent + 2, out);
        }
        Node::Seq(items) if !items.is_empty() => {
            out.push('\n');
            emit(value, indent + 2, out);
        }
        _ => {
            out.push(' ');
            inline(value, out);
            out.push('\n');
        }
    }
}

/// Scalars and empty collections, which fit on one line.
fn inline(node: &Node, out: &mut String) {
    match node {
        Node::Str(text) => out.push_str(&scalar(text)),
        Node::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Node::Map(_) => out.push_str("{}"),
        Node::Seq(_) => out.push_str("[]"),
    }
}

/// Words YAML 1.1 readers (kubectl's among them) take for booleans or null.
const RESERVED: [&str; 12] = [
    "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "<<", "=",
];

/// A string as a YAML scalar: plain when it starts with a letter, holds only
/// letters, digits, `.`, `_`, `/` and `-`, and is no reserved word; double
/// quoted otherwise (numbers such as "3128" stay strings that way).
pub(crate) fn scalar(text: &str) -> String {
    let plain = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !RESERVED.contains(&text.to_ascii_lowercase().as_str());
    if plain {
        return text.to_string();
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_written_in_block_style_in_build_order() {
        let value = map([
            ("kind", str("Thing")),
            (
                "metadata",
                map([("name", str("a")), ("labels", labels(&[("role", "scraper")]))]),
            ),
            (
                "spec",
                map([
                    ("empty", Node::Map(Vec::new())),
                    ("none", Node::Seq(Vec::new())),
                    ("flag", Node::Bool(true)),
                    (
                        "items",
                        Node::Seq(vec![
                            map([("port", str("3128")), ("protocol", str("TCP"))]),
                            str("*.example.com"),
                            Node::Map(Vec::new()),
                        ]),
                    ),
                ]),
            ),
        ]);
        let text = document(&["why".to_string(), String::new()], &value);
        assert_eq!(
            text,
            "---\n# why\n#\nkind: Thing\nmetadata:\n  name: a\n  labels:\n    role: scraper\nspec:\n  empty: {}\n  \
             none: []\n  flag: true\n  items:\n    - port: \"3128\"\n      protocol: TCP\n    - \"*.example.com\"\n    - {}\n"
        );
    }

    #[test]
    fn scalars_that_would_read_back_as_something_else_are_quoted() {
        assert_eq!(scalar("egress-gateway"), "egress-gateway");
        assert_eq!(scalar("cilium.io/v2"), "cilium.io/v2");
        for (text, quoted) in [
            ("3128", "\"3128\""),
            ("true", "\"true\""),
            ("On", "\"On\""),
            ("", "\"\""),
            ("203.0.113.7", "\"203.0.113.7\""),
            ("**.example.com", "\"**.example.com\""),
            ("k8s:io.kubernetes.pod.namespace", "\"k8s:io.kubernetes.pod.namespace\""),
            ("a\"b\\c\n", "\"a\\\"b\\\\c\\u000a\""),
        ] {
            assert_eq!(scalar(text), quoted, "{text}");
        }
    }
}
