//! Request rates: `100/min`, `5/s`, `1000/hour`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use super::ValueError;

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
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{}' is not a whole number of requests", count.trim())))?;
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
