//! Turns a YAML/serde error into a [`Diagnostic`] with a hint.
//!
//! serde-saphyr knows where an error happened; it does not know what the
//! user should write instead. This is where each kind of error gets its
//! hint: close key names, the values an enum accepts, the valid range.

use serde_saphyr::Error as YamlError;
use serde_saphyr::budget::BudgetBreach;

use crate::diagnostic::{Diagnostic, did_you_mean};

/// A diagnostic for `error`, located in `origin`.
pub(crate) fn to_diagnostic(error: &YamlError, origin: &str) -> Diagnostic {
    let (line, column) = match error.location() {
        Some(at) => (to_u32(at.line()), to_u32(at.column())),
        None => (0, 0),
    };
    let (message, hint) = describe(error);
    let diagnostic = Diagnostic::from_marked(origin, line.max(1), column.max(1), &message);
    match hint {
        Some(hint) if diagnostic.hint.is_none() => diagnostic.with_hint(hint),
        _ => diagnostic,
    }
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

const BOMB_HINT: &str = "a policy file needs no deep nesting or mass aliases; write the values out";

/// The message (possibly with an embedded hint marker) and a hint.
fn describe(error: &YamlError) -> (String, Option<String>) {
    match error {
        YamlError::WithSnippet { error, .. } | YamlError::AliasError { error, .. } => describe(error),
        YamlError::Message { msg, .. } => (msg.clone(), None),
        YamlError::SerdeUnknownField { field, expected, .. } => {
            let known = expected.join(", ");
            let hint = match did_you_mean(field, expected) {
                Some(close) => format!("did you mean `{close}`? known keys: {known}"),
                None if expected.is_empty() => "remove this key".to_string(),
                None => format!("known keys here: {known}"),
            };
            (format!("unknown key `{field}`"), Some(hint))
        }
        YamlError::SerdeUnknownVariant { variant, expected, .. } => {
            let allowed = expected.join(", ");
            let hint = match did_you_mean(variant, expected) {
                Some(close) => format!("did you mean `{close}`? write one of: {allowed}"),
                None => format!("write one of: {allowed}"),
            };
            (format!("`{variant}` is not a valid value here"), Some(hint))
        }
        YamlError::SerdeMissingField { field, .. } => (
            format!("required key `{field}` is missing"),
            Some(format!(
                "add `{field}:` here; policies/default.yaml shows every key with an example"
            )),
        ),
        YamlError::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().unwrap_or("this key");
            (
                format!("`{key}` appears twice in the same mapping"),
                Some("each key may appear once; merge the two entries or rename one".to_string()),
            )
        }
        YamlError::InvalidScalar { ty, .. } => invalid_scalar(ty),
        YamlError::SerdeInvalidType {
            unexpected, expected, ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected, expected, ..
        } => {
            let hint = if expected.starts_with("a nonzero") {
                "write a whole number of 1 or more".to_string()
            } else {
                format!("write {expected}")
            };
            (format!("found {unexpected}, expected {expected}"), Some(hint))
        }
        YamlError::Unexpected { expected, location } if expected.starts_with("mapping") => {
            let hint = if location.line() == 1 && location.column() == 1 {
                "a policy file is a mapping of sections like `egress:` and `allowlist:`; see policies/default.yaml"
            } else {
                "write `key: value` lines indented below this key"
            };
            (
                "expected a mapping (`key: value` lines) here".to_string(),
                Some(hint.to_string()),
            )
        }
        YamlError::Unexpected { expected, .. } if expected.starts_with("sequence") => (
            "expected a list here".to_string(),
            Some("write `[a, b]` or one `- item` line per entry".to_string()),
        ),
        YamlError::SerdeInvalidLength { len, expected, .. } => (
            format!("found {len} elements, expected {expected}"),
            Some(format!("write {expected}")),
        ),
        YamlError::MultipleDocuments { .. }
        | YamlError::Budget {
            breach: BudgetBreach::Documents { .. },
            ..
        } => (
            "the file holds more than one YAML document".to_string(),
            Some("a policy file is one document; remove the `---` separator and merge the parts".to_string()),
        ),
        YamlError::Budget { breach, .. } => (
            format!("the document is too complex to load safely: {}", breach_text(breach)),
            Some(BOMB_HINT.into()),
        ),
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => (
            "aliases expand to too much data (a YAML bomb?)".to_string(),
            Some(BOMB_HINT.into()),
        ),
        YamlError::Eof { .. } => (
            "the file ends in the middle of a value".to_string(),
            Some("complete the last entry or remove it".to_string()),
        ),
        YamlError::UnknownAnchor { .. } => (
            "this alias refers to an anchor that is not defined above it".to_string(),
            Some("define `&name` before using `*name`, or write the value out".to_string()),
        ),
        YamlError::MergeKeyNotAllowed { .. } | YamlError::MergeValueNotMapOrSeqOfMaps { .. } => (
            strip_location(&error.without_snippet().to_string()),
            Some("write the merged keys out".to_string()),
        ),
        other => (
            strip_location(&other.without_snippet().to_string()),
            Some("check the YAML syntax (indentation, colons, quotes, brackets) at this position".to_string()),
        ),
    }
}

fn invalid_scalar(ty: &str) -> (String, Option<String>) {
    let (what, hint) = match ty {
        "bool" | "boolean" => ("true or false", "write true or false"),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => (
            "a whole number",
            "write a whole number without quotes or units, like 10",
        ),
        "f32" | "f64" => ("a number", "write a number like 0.5"),
        _ => (
            "a different kind of value",
            "check the value against policies/default.yaml",
        ),
    };
    (
        format!("expected {what} here"),
        Some(format!("{hint} (this field takes a {ty})")),
    )
}

fn breach_text(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { depth } => format!("it nests {depth} levels deep"),
        BudgetBreach::Aliases { aliases } => format!("it uses {aliases} aliases"),
        BudgetBreach::Anchors { anchors } => format!("it defines {anchors} anchors"),
        BudgetBreach::Nodes { nodes } => format!("it has {nodes} nodes"),
        BudgetBreach::Events { events } => format!("it has {events} parser events"),
        BudgetBreach::AliasAnchorRatio { aliases, anchors } => {
            format!("it uses {aliases} aliases for {anchors} anchors (a YAML bomb?)")
        }
        other => format!("{other:?}"),
    }
}

/// serde-saphyr's Display appends " at line L, column C"; the diagnostic
/// puts the location in front instead.
fn strip_location(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(at) if text[at..].contains(", column ") => text[..at].to_string(),
        _ => text.to_string(),
    }
}
