//! Small value types written as strings in the policy: rates (`100/min`),
//! durations (`30s`), byte sizes (`10MB`, `256Mi`), percentages (`50%`), CPU
//! quantities (`100m`), expiry dates and ports.
//!
//! Each parses itself and explains a bad value with a hint, so the loader
//! can report `FILE:LINE:COLUMN` plus what to write instead.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::diagnostic::{HINT_MARKER, hinted};

/// A value that could not be parsed: what is wrong and what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub problem: String,
    pub hint: String,
}

impl ValueError {
    fn new(problem: impl Into<String>, hint: impl Into<String>) -> Self {
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
enum Scalar {
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

fn scalar<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
) -> Result<Scalar, D::Error> {
    deserializer.deserialize_any(ScalarVisitor(expecting))
}

/// Splits `"100ms"` into `(100, "ms")`, tolerating a space between them.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
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
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match scalar(deserializer, $expecting)? {
                    Scalar::Text(text) => text.parse().map_err(de::Error::custom),
                    Scalar::Number(text) => {
                        let number: fn(&str) -> Result<$ty, ValueError> = $number;
                        number(&text).map_err(de::Error::custom)
                    }
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

// ---------------------------------------------------------------- Rate

/// The window a [`Rate`] counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateWindow {
    Second,
    Minute,
    Hour,
}

impl RateWindow {
    pub fn duration(self) -> Duration {
        match self {
            RateWindow::Second => Duration::from_secs(1),
            RateWindow::Minute => Duration::from_secs(60),
            RateWindow::Hour => Duration::from_secs(3600),
        }
    }

    /// The short form used in messages and the seed's 429 body (`1m`).
    pub fn as_str(self) -> &'static str {
        match self {
            RateWindow::Second => "1s",
            RateWindow::Minute => "1m",
            RateWindow::Hour => "1h",
        }
    }
}

/// A request rate such as `100/min`: a count (at least 1) per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU32,
    window: RateWindow,
}

impl Rate {
    pub const fn new(count: NonZeroU32, window: RateWindow) -> Self {
        Rate { count, window }
    }

    /// `per_minute(100)` is `100/min`; a zero count is raised to 1 because a
    /// rate that lets nothing through is written as a deny, not a limit.
    pub const fn per_minute(count: u32) -> Self {
        let count = match NonZeroU32::new(count) {
            Some(c) => c,
            None => NonZeroU32::MIN,
        };
        Rate {
            count,
            window: RateWindow::Minute,
        }
    }

    pub fn count(&self) -> NonZeroU32 {
        self.count
    }

    pub fn window(&self) -> RateWindow {
        self.window
    }

    /// Requests per second, for comparing rates written with different windows.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count.get()) / self.window.duration().as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.window {
            RateWindow::Second => "s",
            RateWindow::Minute => "min",
            RateWindow::Hour => "hour",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

const RATE_HINT: &str = "write a count per window like 100/min, 5/s or 1000/hour";

impl FromStr for Rate {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = |problem: String| ValueError::new(problem, RATE_HINT);
        let Some((count, unit)) = text.split_once('/') else {
            return Err(bad(format!("'{text}' is not a rate (no '/')")));
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            bad(format!(
                "'{}' is not a whole number of requests",
                count.trim()
            ))
        })?;
        let count = NonZeroU32::new(count).ok_or_else(|| {
            ValueError::new(
                "a rate of 0 lets nothing through",
                "remove the rule to deny the destination, or write a positive count like 1/min",
            )
        })?;
        let window = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => RateWindow::Second,
            "min" | "minute" => RateWindow::Minute,
            "h" | "hour" => RateWindow::Hour,
            other => {
                return Err(ValueError::new(
                    format!("'{other}' is not a rate window"),
                    "use /s, /sec, /second, /min, /minute, /h or /hour",
                ));
            }
        };
        Ok(Rate { count, window })
    }
}

deserialize_from_str!(Rate, "a rate like 100/min", number: |text| Err(ValueError::new(
    format!("{text} has no window"),
    format!("write {text}/min, {text}/s or {text}/hour"),
)));

// ---------------------------------------------------------------- DurationSpec

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
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
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
            return Err(ValueError::new(
                format!("'{text}' is not a duration"),
                DURATION_HINT,
            ));
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
        let millis = number.checked_mul(millis_per_unit).ok_or_else(|| {
            ValueError::new(format!("the duration '{text}' is too long"), DURATION_HINT)
        })?;
        Ok(DurationSpec(Duration::from_millis(millis)))
    }
}

deserialize_from_str!(DurationSpec, "a duration like 30s", number: |text| Err(ValueError::new(
    format!("the duration {text} has no unit"),
    format!("write {text}s, {text}ms or {text}m"),
)));

// ---------------------------------------------------------------- ByteSize

/// A size in bytes: `10MB` (decimal, 10 000 000), `256Mi` or `10MiB`
/// (binary, 1024-based), or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn bytes(n: u64) -> Self {
        ByteSize(n)
    }

    pub fn as_u64(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 8] = [
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1000),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

const BYTES_HINT: &str =
    "write a whole number with a unit: 10MB (decimal), 256Mi or 256MiB (binary), or plain bytes";

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let Some((number, unit)) = number_and_unit(text) else {
            return Err(ValueError::new(
                format!("'{text}' is not a size"),
                BYTES_HINT,
            ));
        };
        // Case matters: Kubernetes reads a lowercase `m` as milli, so `256m`
        // of memory would be a fraction of a byte there and is refused here.
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "k" | "K" | "kB" | "KB" => 1000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            other => {
                return Err(ValueError::new(
                    format!("'{other}' is not a size unit"),
                    BYTES_HINT,
                ));
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ValueError::new(format!("the size '{text}' is too large"), BYTES_HINT))
    }
}

deserialize_from_str!(ByteSize, "a size like 10MB or 256Mi", number: |text| text.parse());

// ---------------------------------------------------------------- Percent

/// A percentage from 0% to 100%, written with the `%` sign (`50%`, `12.5%`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `value` is clamped to 0..=100.
    pub fn new(value: f64) -> Self {
        Percent(if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, 100.0)
        })
    }

    /// The percentage as written: 50 for `50%`.
    pub fn value(&self) -> f64 {
        self.0
    }

    /// The fraction: 0.5 for `50%`.
    pub fn fraction(&self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

const PERCENT_HINT: &str = "write a percentage from 0% to 100%, like 50%";

impl FromStr for Percent {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let Some(number) = text.trim().strip_suffix('%') else {
            return Err(ValueError::new(
                format!("'{text}' has no % sign"),
                PERCENT_HINT,
            ));
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| ValueError::new(format!("'{text}' is not a percentage"), PERCENT_HINT))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(ValueError::new(
                format!("{text} is outside 0%..100%"),
                PERCENT_HINT,
            ));
        }
        Ok(Percent(value))
    }
}

// A bare `0.5` could mean half or half a percent, so the sign is required.
deserialize_from_str!(Percent, "a percentage like 50%", number: |text| Err(ValueError::new(
    format!("{text} has no % sign"),
    format!("write {text}% if you mean {text} percent"),
)));

// ---------------------------------------------------------------- CpuQuantity

/// CPU in the Kubernetes notation: `100m` (millicores), `0.5` or `2` (cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuQuantity {
    millicores: u64,
}

impl CpuQuantity {
    pub const fn from_millicores(millicores: u64) -> Self {
        CpuQuantity { millicores }
    }

    pub fn millicores(&self) -> u64 {
        self.millicores
    }
}

impl fmt::Display for CpuQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millicores.is_multiple_of(1000) {
            write!(f, "{}", self.millicores / 1000)
        } else {
            write!(f, "{}m", self.millicores)
        }
    }
}

const CPU_HINT: &str = "write millicores like 100m, or cores like 0.5 or 2";

impl FromStr for CpuQuantity {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::new(format!("'{text}' is not a CPU quantity"), CPU_HINT);
        let trimmed = text.trim();
        let millicores = if let Some(milli) = trimmed.strip_suffix('m') {
            milli.parse::<u64>().map_err(|_| bad())?
        } else {
            let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
            if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ValueError::new(
                    format!("'{text}' is finer than one millicore"),
                    CPU_HINT,
                ));
            }
            let whole: u64 = if whole.is_empty() && !fraction.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            let fraction_millis: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
            whole
                .checked_mul(1000)
                .and_then(|m| m.checked_add(fraction_millis))
                .ok_or_else(bad)?
        };
        if millicores == 0 {
            return Err(ValueError::new(
                "a CPU limit of 0 would stop the sandbox from running",
                CPU_HINT,
            ));
        }
        Ok(CpuQuantity { millicores })
    }
}

deserialize_from_str!(CpuQuantity, "a CPU quantity like 100m or 0.5", number: |text| text.parse());

// ---------------------------------------------------------------- Expiry

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
                .ok_or_else(|| {
                    ValueError::new(format!("'{text}' is too far in the future"), EXPIRY_HINT)
                })?
        } else {
            DateTime::parse_from_rfc3339(trimmed)
                .map_err(|_| {
                    ValueError::new(
                        format!("'{text}' is not a date or RFC 3339 timestamp"),
                        EXPIRY_HINT,
                    )
                })?
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

// ---------------------------------------------------------------- counts

/// Reads a count that must be at least 1 (a burst of 0 would refuse every
/// request), reporting a bad value at the value itself.
pub(crate) fn nonzero_u32<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<NonZeroU32, D::Error> {
    let text = match scalar(deserializer, "a whole number of 1 or more")? {
        Scalar::Text(text) | Scalar::Number(text) => text,
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            hinted(
                format!("'{text}' is not a whole number of 1 or more"),
                "write a count like 20",
            )
        })
}

// ---------------------------------------------------------------- Port

/// A TCP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Port(u16);

impl Port {
    pub fn new(port: u16) -> Option<Self> {
        (port != 0).then_some(Port(port))
    }

    pub fn get(&self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

const PORT_HINT: &str = "ports are 1-65535";

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match scalar(deserializer, "a port number (1-65535)")? {
            Scalar::Text(text) | Scalar::Number(text) => text,
        };
        match text.trim().parse::<i128>() {
            Ok(n) => u16::try_from(n)
                .ok()
                .and_then(Port::new)
                .ok_or_else(|| hinted(format!("port {n} is out of range"), PORT_HINT)),
            Err(_) => Err(hinted(format!("'{text}' is not a port number"), PORT_HINT)),
        }
    }
}

#[cfg(test)]
mod tests;
