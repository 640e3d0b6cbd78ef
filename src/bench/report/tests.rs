use std::time::{Duration, Instant};

use super::*;
use crate::bench::stats::MeasureWindow;

fn tally_of(latencies: &[u32], errors: u64) -> Tally {
    let window = MeasureWindow::after_warmup(Duration::ZERO, Duration::from_secs(60));
    let mut tally = Tally::default();
    let base = window.start;
    for &micros in latencies {
        tally.success(&window, base, base + Duration::from_micros(micros.into()));
    }
    for _ in 0..errors {
        tally.error(&window, Instant::now());
    }
    tally
}

fn label(proxy: Option<&str>) -> RunLabel {
    RunLabel {
        mode: Mode::Forward,
        proxy: proxy.map(str::to_owned),
        target: "http://bench.local:18080/".to_owned(),
        connections: 64,
    }
}

#[test]
fn report_computes_rate_and_percentiles_from_the_tally() {
    let latencies: Vec<u32> = (1..=200).collect();
    let report = BenchReport::new(label(Some("http://127.0.0.1:13128")), 2.0, &tally_of(&latencies, 3));
    assert_eq!(report.requests, 200);
    assert_eq!(report.errors, 3);
    assert_eq!(report.rps, 100.0);
    assert_eq!(report.p50_us, 100);
    assert_eq!(report.p90_us, 180);
    assert_eq!(report.p99_us, 198);
    assert_eq!(report.max_us, 200);
    assert_eq!(report.mean_us, 100.5);
    assert_eq!(report.duration_s, 2.0);
}

#[test]
fn json_has_the_documented_fields() {
    let report = BenchReport::new(label(None), 1.5, &tally_of(&[10, 20], 0));
    let json: serde_json::Value = serde_json::from_str(&report.json_line().expect("serializable")).expect("valid JSON");
    assert_eq!(json["mode"], "forward");
    assert!(json["proxy"].is_null());
    assert_eq!(json["target"], "http://bench.local:18080/");
    assert_eq!(json["connections"], 64);
    assert_eq!(json["duration_s"], 1.5);
    assert_eq!(json["requests"], 2);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["rps"], 1.3);
    assert_eq!(json["p50_us"], 10);
    assert_eq!(json["p90_us"], 20);
    assert_eq!(json["p99_us"], 20);
    assert_eq!(json["max_us"], 20);
    let connect = BenchReport {
        mode: Mode::Connect,
        ..report
    };
    assert!(
        connect
            .json_line()
            .expect("serializable")
            .contains(r#""mode":"connect""#)
    );
}

#[test]
fn human_line_names_the_route_and_the_numbers() {
    let direct = BenchReport::new(label(None), 1.0, &tally_of(&[5], 1)).human_line();
    assert!(
        direct.starts_with("forward direct -> http://bench.local:18080/"),
        "{direct}"
    );
    assert!(direct.contains("1 ok, 1 errors, 1.0 req/s"), "{direct}");
    assert!(direct.contains("p50 5 "), "{direct}");
    let proxied = BenchReport::new(label(Some("http://127.0.0.1:13128")), 1.0, &tally_of(&[], 0)).human_line();
    assert!(proxied.starts_with("forward http://127.0.0.1:13128 -> "), "{proxied}");
}

#[test]
fn an_empty_window_reports_zero_rate() {
    let report = BenchReport::new(label(None), 0.0, &Tally::default());
    assert_eq!(report.rps, 0.0);
    assert_eq!(report.p99_us, 0);
}
