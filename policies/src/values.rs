//! Small value types written as strings in the policy: rates (`100/min`),
//! durations (`30s`), byte sizes (`10MB`, `256Mi`), percentages (`50%`), CPU
//! quantities (`100m`), expiry dates and ports.
//!
//! Each parses itself and explains a bad value with a hint, so the loader
//! can report `FILE:LINE:COLUMN` plus what to write instead.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

use crate::diagnostic::HINT_MARKER;

/// A value that could not be parsed: what is wrong and what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub problem: String,
    pub hint: String,
}

impl ValueError {
    pub(crate) fn new(problem: impl Into<String>, hint: impl Into<String>) -> Self {
        ValueError {
            problem: problem.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{HINT_MARKER}{}", self.problem, self.hint)
    }
}

impl std::error::Error for ValueError {}

/// A scalar as the user wrote it: YAML may hand over `0.5` or `2` as a
/// number even where we want text, so both are accepted and told apart.
pub(crate) enum Scalar {
    Text(String),
    Number(String),
}

struct ScalarVisitor(&'static str);

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.to_string()))
    }
}

pub(crate) fn scalar<'de, D: Deserializer<'de>>(deserializer: D, expecting: &'static str) -> Result<Scalar, D::Error> {
    deserializer.deserialize_any(ScalarVisitor(expecting))
}

/// Splits `"100ms"` into `(100, "ms")`, tolerating a space between them.
pub(crate) fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal, number: $number:expr) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use $crate::values::{Scalar, ValueError, scalar};
                match scalar(deserializer, $expecting)? {
                    Scalar::Text(text) => text.parse().map_err(serde::de::Error::custom),
                    Scalar::Number(text) => {
                        let number: fn(&str) -> Result<$ty, ValueError> = $number;
                        number(&text).map_err(serde::de::Error::custom)
                    }
                }
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

mod count;
mod duration;
mod expiry;
mod quantity;
mod rate;

pub use count::Port;
pub(crate) use count::nonzero_u32;
pub use duration::DurationSpec;
pub use expiry::Expiry;
pub use quantity::{ByteSize, CpuQuantity, Percent};
pub use rate::{Rate, RateWindow};

#[cfg(test)]
mod tests;
