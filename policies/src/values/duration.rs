//! Durations with a unit: `500ms`, `30s`, `5m`, `24h`, `7d`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{ValueError, number_and_unit};

/// A duration written with a unit: `500ms`, `30s`, `5m`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(Duration);

impl DurationSpec {
    pub const fn from_secs(secs: u64) -> Self {
        DurationSpec(Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        DurationSpec(Duration::from_millis(millis))
    }

    pub fn duration(&self) -> Duration {
        self.0
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        write!(f, "{millis}ms")
    }
}

const DURATION_HINT: &str = "write a whole number with a unit: 500ms, 30s, 5m, 24h or 7d";

impl FromStr for DurationSpec {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let Some((number, unit)) = number_and_unit(text) else {
            return Err(ValueError::new(format!("'{text}' is not a duration"), DURATION_HINT));
        };
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(ValueError::new(
                    format!("the duration '{text}' has no unit"),
                    DURATION_HINT,
                ));
            }
            other => {
                return Err(ValueError::new(
                    format!("'{other}' is not a duration unit"),
                    DURATION_HINT,
                ));
            }
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| ValueError::new(format!("the duration '{text}' is too long"), DURATION_HINT))?;
        Ok(DurationSpec(Duration::from_millis(millis)))
    }
}

deserialize_from_str!(DurationSpec, "a duration like 30s", number: |text| Err(ValueError::new(
    format!("the duration {text} has no unit"),
    format!("write {text}s, {text}ms or {text}m"),
)));
