//! When an allowlist entry stops applying.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};

use super::ValueError;

/// When an allowlist entry stops applying: a date (`2025-03-01`, meaning the
/// end of that day in UTC) or an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expiry {
    ends_at: DateTime<Utc>,
    written: String,
}

impl Expiry {
    /// The first instant at which the entry no longer applies.
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.ends_at
    }

    pub fn is_past(&self, now: DateTime<Utc>) -> bool {
        now >= self.ends_at
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

const EXPIRY_HINT: &str =
    "write a date like 2025-03-01 (end of that day, UTC) or a timestamp like 2025-03-01T12:00:00Z";

impl FromStr for Expiry {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let ends_at = if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
            // "expires: 2025-03-01" means the entry is usable all of that day.
            date.succ_opt()
                .and_then(|next| next.and_hms_opt(0, 0, 0))
                .map(|midnight| midnight.and_utc())
                .ok_or_else(|| ValueError::new(format!("'{text}' is too far in the future"), EXPIRY_HINT))?
        } else {
            DateTime::parse_from_rfc3339(trimmed)
                .map_err(|_| ValueError::new(format!("'{text}' is not a date or RFC 3339 timestamp"), EXPIRY_HINT))?
                .with_timezone(&Utc)
        };
        Ok(Expiry {
            ends_at,
            written: trimmed.to_string(),
        })
    }
}

deserialize_from_str!(Expiry, "a date like 2025-03-01", number: |text| Err(ValueError::new(
    format!("{text} is not a date"),
    EXPIRY_HINT,
)));
