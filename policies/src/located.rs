//! Values that remember where in the policy file they were written.

use std::ops::Deref;

use serde::{Deserialize, Deserializer};

/// A value with the line and column it came from, so checks that run after
/// parsing (expiry, blocklist overlap, placeholder pins) can still point at
/// the exact spot. Values the loader filled in from defaults sit at 0:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Located<T> {
    pub value: T,
    /// 1-based line, 0 for a built-in default.
    pub line: u32,
    /// 1-based column, 0 for a built-in default.
    pub column: u32,
}

impl<T> Located<T> {
    /// A value that was not written in any file (a built-in default).
    pub fn unlocated(value: T) -> Self {
        Located {
            value,
            line: 0,
            column: 0,
        }
    }
}

impl<T> Deref for Located<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        // `referenced` is where the value is used, which is what a person
        // fixing the file needs when an alias is involved.
        let at = spanned.referenced;
        Ok(Located {
            value: spanned.value,
            line: u32::try_from(at.line()).unwrap_or(u32::MAX),
            column: u32::try_from(at.column()).unwrap_or(u32::MAX),
        })
    }
}
