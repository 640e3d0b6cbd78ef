//! Resource quantities: byte sizes, percentages and CPU.

use std::fmt;
use std::str::FromStr;

use super::{ValueError, number_and_unit};

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

const BYTES_HINT: &str = "write a whole number with a unit: 10MB (decimal), 256Mi or 256MiB (binary), or plain bytes";

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let Some((number, unit)) = number_and_unit(text) else {
            return Err(ValueError::new(format!("'{text}' is not a size"), BYTES_HINT));
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
                return Err(ValueError::new(format!("'{other}' is not a size unit"), BYTES_HINT));
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ValueError::new(format!("the size '{text}' is too large"), BYTES_HINT))
    }
}

deserialize_from_str!(ByteSize, "a size like 10MB or 256Mi", number: |text| text.parse());

/// A percentage from 0% to 100%, written with the `%` sign (`50%`, `12.5%`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `value` is clamped to 0..=100.
    pub fn new(value: f64) -> Self {
        Percent(if value.is_nan() { 0.0 } else { value.clamp(0.0, 100.0) })
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
            return Err(ValueError::new(format!("'{text}' has no % sign"), PERCENT_HINT));
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| ValueError::new(format!("'{text}' is not a percentage"), PERCENT_HINT))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(ValueError::new(format!("{text} is outside 0%..100%"), PERCENT_HINT));
        }
        Ok(Percent(value))
    }
}

// A bare `0.5` could mean half or half a percent, so the sign is required.
deserialize_from_str!(Percent, "a percentage like 50%", number: |text| Err(ValueError::new(
    format!("{text} has no % sign"),
    format!("write {text}% if you mean {text} percent"),
)));

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
