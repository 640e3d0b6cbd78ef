//! Domain names as the policy and the gateway compare them.
//!
//! Every name is normalized once, the same way, on both sides: policy patterns
//! when the bundle loads, request hosts when a request arrives. Comparing two
//! normalized forms is then a plain byte comparison.

use std::fmt;

/// Why a name is not a usable DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainError {
    pub input: String,
    pub problem: &'static str,
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a valid domain name: {}", self.input, self.problem)
    }
}

impl std::error::Error for DomainError {}

/// Lowercases, strips one trailing dot and converts Unicode labels to their
/// IDNA/punycode ASCII form, so `API.OpenAI.com.` and `api.openai.com` compare
/// equal and `bücher.example` matches `xn--bcher-kva.example`.
pub fn normalize_domain(input: &str) -> Result<String, DomainError> {
    let err = |problem| DomainError {
        input: input.to_string(),
        problem,
    };
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(err("the name is empty"));
    }
    if trimmed.len() > 253 {
        return Err(err("the name is longer than 253 characters"));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(trimmed).map_err(|_| err("it is not a valid internationalized (IDNA) name"))?
    };
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(err("it has an empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(err("a label is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label starts or ends with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err("only letters, digits, '-' and '_' are allowed in a label"));
        }
    }
    if ascii.starts_with("xn--") || ascii.contains(".xn--") {
        // A punycode label must decode, or two spellings of one name could differ.
        let (_, result) = idna::domain_to_unicode(&ascii);
        if result.is_err() {
            return Err(err("a punycode (xn--) label does not decode"));
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests;
