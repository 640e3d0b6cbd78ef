use chrono::{TimeZone, Utc};

use serde::Deserialize;

use super::*;

/// Deserializes `value` as the value of a one-key YAML mapping.
fn yaml<T: for<'de> Deserialize<'de>>(value: &str) -> Result<T, String> {
    #[derive(Deserialize)]
    struct One<T> {
        v: T,
    }
    serde_saphyr::from_str::<One<T>>(&format!("v: {value}\n"))
        .map(|one| one.v)
        .map_err(|e| e.to_string())
}

#[test]
fn rates_parse_every_window_spelling() {
    for (text, count, window) in [
        ("100/min", 100, RateWindow::Minute),
        ("100/minute", 100, RateWindow::Minute),
        ("5/s", 5, RateWindow::Second),
        ("5/sec", 5, RateWindow::Second),
        ("5/second", 5, RateWindow::Second),
        ("7/h", 7, RateWindow::Hour),
        ("7 / hour", 7, RateWindow::Hour),
        ("3/MIN", 3, RateWindow::Minute),
    ] {
        let rate: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!((rate.count().get(), rate.window()), (count, window), "{text}");
    }
    assert_eq!("100/min".parse::<Rate>().unwrap().to_string(), "100/min");
    assert_eq!("10/s".parse::<Rate>().unwrap().per_second(), 10.0);
    assert_eq!(Rate::per_minute(600).per_second(), 10.0);
}

#[test]
fn bad_rates_explain_themselves() {
    let problem = |text: &str| text.parse::<Rate>().unwrap_err().problem;
    assert!(problem("0/min").contains("a rate of 0 lets nothing through"));
    assert!(problem("100").contains("no '/'"));
    assert!(problem("100/fortnight").contains("'fortnight' is not a rate window"));
    assert!(problem("-1/min").contains("not a whole number"));
    assert!(problem("x/min").contains("not a whole number"));
    assert!(problem("99999999999/min").contains("not a whole number"));
    let err = yaml::<Rate>("100").unwrap_err();
    assert!(
        err.contains("100 has no window") && err.contains("hint: write 100/min"),
        "{err}"
    );
    assert_eq!(yaml::<Rate>("\"50/min\"").unwrap().to_string(), "50/min");
}

#[test]
fn durations_parse_every_unit() {
    for (text, millis) in [
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        ("0s", 0),
    ] {
        assert_eq!(
            text.parse::<DurationSpec>().unwrap().duration().as_millis(),
            millis,
            "{text}"
        );
    }
    assert_eq!("90s".parse::<DurationSpec>().unwrap().to_string(), "90s");
    assert_eq!("120s".parse::<DurationSpec>().unwrap().to_string(), "2m");
    assert_eq!("1500ms".parse::<DurationSpec>().unwrap().to_string(), "1500ms");
    for bad in [
        "30",
        "s",
        "30 sec",
        "1.5s",
        "-5s",
        "99999999999999999999d",
        "18446744073709551615d",
    ] {
        assert!(bad.parse::<DurationSpec>().is_err(), "{bad} accepted");
    }
    assert!(yaml::<DurationSpec>("30").unwrap_err().contains("has no unit"));
}

#[test]
fn byte_sizes_distinguish_decimal_and_binary_units() {
    for (text, bytes) in [
        ("10MB", 10_000_000),
        ("10M", 10_000_000),
        ("256Mi", 256 << 20),
        ("10MiB", 10 << 20),
        ("1Gi", 1 << 30),
        ("2KB", 2000),
        ("2KiB", 2048),
        ("512", 512),
        ("512B", 512),
    ] {
        assert_eq!(text.parse::<ByteSize>().unwrap().as_u64(), bytes, "{text}");
    }
    assert_eq!(yaml::<ByteSize>("1048576").unwrap().as_u64(), 1 << 20);
    assert_eq!(ByteSize::bytes(10_000_000).to_string(), "10MB");
    assert_eq!(ByteSize::bytes(256 << 20).to_string(), "256MiB");
    // Kubernetes reads lowercase m as milli; refuse rather than guess.
    for bad in ["256m", "10mb", "MB", "1.5GB", "99999999999TiB"] {
        assert!(bad.parse::<ByteSize>().is_err(), "{bad} accepted");
    }
}

#[test]
fn percentages_need_the_sign_and_a_range() {
    assert_eq!("50%".parse::<Percent>().unwrap().fraction(), 0.5);
    assert_eq!("12.5%".parse::<Percent>().unwrap().value(), 12.5);
    assert_eq!("0%".parse::<Percent>().unwrap().value(), 0.0);
    assert_eq!("100%".parse::<Percent>().unwrap().value(), 100.0);
    for bad in ["50", "101%", "-1%", "x%", "NaN%"] {
        assert!(bad.parse::<Percent>().is_err(), "{bad} accepted");
    }
    let err = yaml::<Percent>("0.5").unwrap_err();
    assert!(err.contains("write 0.5% if you mean 0.5 percent"), "{err}");
}

#[test]
fn cpu_quantities_accept_millicores_and_cores() {
    for (text, millicores) in [("100m", 100), ("0.5", 500), ("2", 2000), ("1.25", 1250), (".5", 500)] {
        assert_eq!(text.parse::<CpuQuantity>().unwrap().millicores(), millicores, "{text}");
    }
    assert_eq!(yaml::<CpuQuantity>("0.5").unwrap().millicores(), 500);
    assert_eq!(yaml::<CpuQuantity>("2").unwrap().millicores(), 2000);
    assert_eq!(yaml::<CpuQuantity>("\"100m\"").unwrap().to_string(), "100m");
    for bad in ["0", "0m", "0.0005", "abc", "1.x", "-1", "m"] {
        assert!(bad.parse::<CpuQuantity>().is_err(), "{bad} accepted");
    }
}

#[test]
fn expiry_dates_mean_the_end_of_the_day_utc() {
    let expiry: Expiry = "2025-03-01".parse().unwrap();
    assert_eq!(expiry.ends_at(), Utc.with_ymd_and_hms(2025, 3, 2, 0, 0, 0).unwrap());
    assert!(!expiry.is_past(Utc.with_ymd_and_hms(2025, 3, 1, 23, 59, 59).unwrap()));
    assert!(expiry.is_past(Utc.with_ymd_and_hms(2025, 3, 2, 0, 0, 0).unwrap()));
    let stamp: Expiry = "2025-03-01T12:00:00+02:00".parse().unwrap();
    assert_eq!(stamp.ends_at(), Utc.with_ymd_and_hms(2025, 3, 1, 10, 0, 0).unwrap());
    assert_eq!(stamp.to_string(), "2025-03-01T12:00:00+02:00");
    for bad in ["2025-02-30", "tomorrow", "2025/03/01", "9999-12-31x"] {
        assert!(bad.parse::<Expiry>().is_err(), "{bad} accepted");
    }
    // Unquoted in YAML it still reads as a date.
    assert_eq!(yaml::<Expiry>("2025-03-01").unwrap().to_string(), "2025-03-01");
}

#[test]
fn ports_are_one_to_65535() {
    assert_eq!(yaml::<Port>("443").unwrap().get(), 443);
    assert_eq!(yaml::<Port>("65535").unwrap().get(), 65535);
    assert_eq!(yaml::<Port>("\"8080\"").unwrap().get(), 8080);
    for bad in ["0", "65536", "70000", "-1", "http", "4.5"] {
        let err = yaml::<Port>(bad).unwrap_err();
        assert!(err.contains("hint: ports are 1-65535"), "{bad}: {err}");
    }
}

#[test]
fn value_errors_display_with_their_hint() {
    let err = "7".parse::<DurationSpec>().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the duration '7' has no unit{HINT_MARKER}write a whole number with a unit: 500ms, 30s, 5m, 24h or 7d")
    );
}
