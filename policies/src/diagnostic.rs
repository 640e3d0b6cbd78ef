//! What the loader tells a person about their policy file.
//!
//! Every problem is reported as `FILE:LINE:COLUMN: what is wrong` followed by
//! `  hint: what to write instead`, the shape compilers use, so editors and
//! terminals can jump straight to the spot.

use std::fmt;

/// Separates a problem from its hint inside a serde error message.
///
/// Value types can only hand serde a single string; the loader splits it
/// again at this marker. It is also the exact text a hint is displayed with,
/// so a message that escapes unsplit still reads correctly.
pub(crate) const HINT_MARKER: &str = "\n  hint: ";

/// A serde error carrying a problem and the hint that fixes it.
pub(crate) fn hinted<E: serde::de::Error>(problem: impl fmt::Display, hint: impl fmt::Display) -> E {
    E::custom(format_args!("{problem}{HINT_MARKER}{hint}"))
}

/// The message for a required key that is missing, for `try_from`
/// conversions: serde reports their errors at the start of the mapping,
/// which is where the key belongs (its own missing-field error points at
/// the last key read instead).
pub(crate) fn missing_key<T>(value: Option<T>, key: &str, example: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("required key `{key}` is missing{HINT_MARKER}add `{example}`"))
}

/// One problem (or warning) at one place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name (or other origin) the text came from.
    pub origin: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What to write instead, when there is something useful to say.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(origin: &str, line: u32, column: u32, message: impl Into<String>) -> Self {
        Diagnostic {
            origin: origin.to_string(),
            line,
            column,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Builds a diagnostic from a message that may embed a hint after
    /// [`HINT_MARKER`].
    pub(crate) fn from_marked(origin: &str, line: u32, column: u32, text: &str) -> Self {
        match text.split_once(HINT_MARKER) {
            Some((message, hint)) => Diagnostic::new(origin, line, column, message).with_hint(hint),
            None => Diagnostic::new(origin, line, column, text),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.origin, self.line, self.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "{HINT_MARKER}{hint}")?;
        }
        Ok(())
    }
}

/// Why a policy bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the policy file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any sensible policy; it is refused before
    /// parsing so a huge file cannot exhaust memory.
    #[error(
        "{origin}: the file is {size} bytes; policy files are limited to {limit} bytes{HINT_MARKER}\
         split unrelated rules into separate bundles or remove generated content"
    )]
    TooLarge { origin: String, size: u64, limit: u64 },
    /// The text is not a valid policy. Holds at least one diagnostic, in
    /// file order.
    #[error("{}", DisplayAll(.0))]
    Invalid(Vec<Diagnostic>),
    /// The gateway requires signed bundles (`--policy-key`) and this one's
    /// signature is missing, malformed, by an unknown key or wrong.
    #[error("{origin}:{}: {problem}", problem.line())]
    Unsigned {
        origin: String,
        problem: crate::signing::SignatureProblem,
    },
}

impl PolicyError {
    /// The located problems, empty for `Read` and `TooLarge`.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid(all) => all,
            PolicyError::Read { .. } | PolicyError::TooLarge { .. } | PolicyError::Unsigned { .. } => &[],
        }
    }
}

struct DisplayAll<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// The candidate closest to `word` if it is close enough to be a likely
/// typo (`rate_limt` -> `rate_limit`, `HTTPS` -> `https`).
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let budget = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(distance, _)| *distance <= budget)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Levenshtein distance; inputs are short key names, so the quadratic cost
/// does not matter.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests;
