use super::*;

#[test]
fn empty_histogram_reports_zeros() {
    let histogram = LatencyHistogram::default();
    assert_eq!(histogram.count(), 0);
    assert_eq!(histogram.percentile(0.5), 0);
    assert_eq!(histogram.max(), 0);
    assert_eq!(histogram.mean(), 0.0);
}

#[test]
fn small_values_are_exact() {
    let mut histogram = LatencyHistogram::default();
    for micros in 1..=100 {
        histogram.record(micros);
    }
    assert_eq!(histogram.percentile(0.5), 50);
    assert_eq!(histogram.percentile(0.9), 90);
    assert_eq!(histogram.percentile(0.99), 99);
    assert_eq!(histogram.percentile(1.0), 100);
    assert_eq!(histogram.percentile(0.0), 1);
    assert_eq!(histogram.max(), 100);
    assert_eq!(histogram.mean(), 50.5);
}

#[test]
fn large_values_stay_within_precision() {
    let mut histogram = LatencyHistogram::default();
    for micros in 1..=100_000 {
        histogram.record(micros);
    }
    for (quantile, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
        let reported = f64::from(histogram.percentile(quantile));
        let error = (reported - exact).abs() / exact;
        assert!(error < 0.008, "p{quantile}: {reported} vs {exact}");
        // The top of a bucket never reports less than the true percentile.
        assert!(reported >= exact, "p{quantile}: {reported} below {exact}");
    }
    assert_eq!(histogram.max(), 100_000);
    assert_eq!(histogram.percentile(1.0), 100_000);
}

#[test]
fn every_u32_has_a_bucket_and_bucket_tops_increase() {
    let mut previous_top = None;
    for bucket in 0..BUCKETS {
        let top = highest_in_bucket(bucket);
        assert_eq!(bucket_of(top), bucket, "top of bucket {bucket} maps back");
        if let Some(previous) = previous_top {
            assert!(top > previous);
            assert_eq!(bucket_of(previous + 1), bucket, "no gap before {bucket}");
        }
        previous_top = Some(top);
    }
    assert_eq!(previous_top, Some(u32::MAX));
    let mut histogram = LatencyHistogram::default();
    histogram.record(u32::MAX);
    assert_eq!(histogram.percentile(0.5), u32::MAX);
}

#[test]
fn merge_adds_counts_and_keeps_the_larger_max() {
    let mut fast = LatencyHistogram::default();
    let mut slow = LatencyHistogram::default();
    for _ in 0..90 {
        fast.record(10);
    }
    for _ in 0..10 {
        slow.record(200);
    }
    fast.merge(&slow);
    assert_eq!(fast.count(), 100);
    assert_eq!(fast.percentile(0.9), 10);
    assert_eq!(fast.percentile(0.91), 200);
    assert_eq!(fast.max(), 200);
    assert_eq!(fast.mean(), 29.0);
}

#[test]
fn tally_counts_only_inside_the_window() {
    let window = MeasureWindow::after_warmup(Duration::from_secs(1), Duration::from_secs(2));
    let before = window.start - Duration::from_millis(1);
    let inside = window.start + Duration::from_millis(500);
    let after = window.end + Duration::from_millis(1);
    let mut tally = Tally::default();
    tally.success(&window, before, inside);
    tally.success(&window, before, after);
    tally.success(&window, before - Duration::from_secs(1), before);
    tally.error(&window, inside);
    tally.error(&window, before);
    tally.error(&window, after);
    assert_eq!(tally.latency.count(), 1);
    assert_eq!(tally.latency.max(), 501_000);
    assert_eq!(tally.errors, 1);
    assert_eq!(window.length(), Duration::from_secs(2));
}

#[test]
fn tally_merge_sums_errors() {
    let window = MeasureWindow::after_warmup(Duration::ZERO, Duration::from_secs(5));
    let at = window.start + Duration::from_millis(1);
    let mut first = Tally::default();
    let mut second = Tally::default();
    first.error(&window, at);
    second.error(&window, at);
    second.success(&window, window.start, at);
    first.merge(&second);
    assert_eq!(first.errors, 2);
    assert_eq!(first.latency.count(), 1);
}
