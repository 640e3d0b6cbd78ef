//! Errors in the agents file, reported as `FILE:LINE:COLUMN: message` plus a hint.

use std::fmt;

use serde_saphyr::Location;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsFileError {
    origin: String,
    /// 1-based (line, column); `None` when the problem is the file as a whole.
    position: Option<(u64, u64)>,
    message: String,
    hint: Option<String>,
}

impl AgentsFileError {
    pub(super) fn at(origin: &str, location: Location, message: impl Into<String>) -> Self {
        let position = (location.line() > 0).then(|| (location.line(), location.column()));
        Self {
            origin: origin.to_owned(),
            position,
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn unlocated(origin: &str, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            position: None,
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The file name (or other origin) the error is about.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// 1-based line, when the error has a position.
    pub fn line(&self) -> Option<u64> {
        self.position.map(|(line, _)| line)
    }

    /// 1-based column, when the error has a position.
    pub fn column(&self) -> Option<u64> {
        self.position.map(|(_, column)| column)
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for AgentsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.origin, self.message)?,
            None => write!(f, "{}: {}", self.origin, self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AgentsFileError {}
