//! The SLO arithmetic behind the dashboard's tiles: cumulative totals read
//! from the metrics registry, and the differences between two of them over a
//! window, computed the way the Prometheus recording rules in
//! `deploy/prometheus/rules/` compute them, so the laptop page and Grafana
//! agree.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;

/// The seed's four targets.
pub const SUCCESS_TARGET: f64 = 0.98;
pub const P95_TARGET_SECONDS: f64 = 2.0;
pub const ERROR_TARGET: f64 = 0.05;
/// 1 TB a month.
pub const VOLUME_TARGET_BYTES: f64 = 1e12;
/// Reasons for an `error` the agent caused.
pub const CLIENT_REASONS: [&str; 2] = ["client_closed", "client_body_error"];
/// Prometheus' 30-day month in the projected-volume rule.
pub const MONTH_SECONDS: f64 = 30.0 * 86_400.0;

/// Cumulative counts since the gateway started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests by decision label.
    pub by_decision: BTreeMap<String, u64>,
    /// Allowed requests whose upstream did not answer 5xx.
    pub succeeded: u64,
    /// Failures the agent caused (it hung up, its body broke): not the
    /// egress path's, so outside the SLOs, as in the recording rules.
    pub client_aborted: u64,
    pub upstream_resets: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// `egress_requests_blocked_total` by reason.
    pub blocked: BTreeMap<String, u64>,
    /// `egress_requests_rate_limited_total` by reason.
    pub rate_limited: BTreeMap<String, u64>,
    /// Allowed requests' latency histogram: (upper bound, cumulative count).
    pub latency: Vec<(f64, u64)>,
}

impl Totals {
    pub fn from_families(families: &[MetricFamily]) -> Totals {
        let mut totals = Totals::default();
        for family in families {
            match family.name() {
                "http_client_requests_total" => {
                    for metric in family.get_metric() {
                        let count = metric.get_counter().get_value() as u64;
                        let decision = label(metric, "decision");
                        *totals.by_decision.entry(decision.to_string()).or_default() += count;
                        if decision == "allow" && label(metric, "status_class") != "5xx" {
                            totals.succeeded += count;
                        }
                        if decision == "error" && CLIENT_REASONS.contains(&label(metric, "reason")) {
                            totals.client_aborted += count;
                        }
                    }
                }
                "http_client_duration_seconds" => {
                    for metric in family.get_metric() {
                        if label(metric, "decision") == "allow" {
                            totals.latency = metric
                                .get_histogram()
                                .get_bucket()
                                .iter()
                                .map(|b| (b.upper_bound(), b.cumulative_count()))
                                .collect();
                            let count = metric.get_histogram().get_sample_count();
                            totals.latency.push((f64::INFINITY, count));
                        }
                    }
                }
                "upstream_reset_events" => {
                    totals.upstream_resets = family
                        .get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value() as u64)
                        .sum();
                }
                "egress_bytes_total" => {
                    for metric in family.get_metric() {
                        let value = metric.get_counter().get_value() as u64;
                        match label(metric, "direction") {
                            "out" => totals.bytes_out = value,
                            "in" => totals.bytes_in = value,
                            _ => {}
                        }
                    }
                }
                "egress_requests_blocked_total" => by_reason(family, &mut totals.blocked),
                "egress_requests_rate_limited_total" => by_reason(family, &mut totals.rate_limited),
                _ => {}
            }
        }
        totals
    }

    /// `self - earlier`, per field (counters only grow; a missing key is 0).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            by_decision: minus(&self.by_decision, &earlier.by_decision),
            succeeded: self.succeeded.saturating_sub(earlier.succeeded),
            client_aborted: self.client_aborted.saturating_sub(earlier.client_aborted),
            upstream_resets: self.upstream_resets.saturating_sub(earlier.upstream_resets),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            blocked: minus(&self.blocked, &earlier.blocked),
            rate_limited: minus(&self.rate_limited, &earlier.rate_limited),
            latency: self
                .latency
                .iter()
                .map(|&(bound, count)| {
                    let before = earlier.latency.iter().find(|(b, _)| *b == bound).map_or(0, |(_, c)| *c);
                    (bound, count.saturating_sub(before))
                })
                .collect(),
        }
    }

    fn decision(&self, name: &str) -> u64 {
        self.by_decision.get(name).copied().unwrap_or(0)
    }

    /// Requests the policy let through: the SLOs' denominator. Denials and
    /// rate limits are the policy working, not the egress path failing.
    pub fn attempted(&self) -> u64 {
        (self.decision("allow") + self.decision("error")).saturating_sub(self.client_aborted)
    }

    /// Egress success rate; `None` with no traffic.
    pub fn success_ratio(&self) -> Option<f64> {
        ratio(self.succeeded, self.attempted())
    }

    /// Proxy error rate: allowed requests that failed in the gateway or
    /// upstream (connect, TLS, reset, timeout).
    pub fn error_ratio(&self) -> Option<f64> {
        ratio(
            self.decision("error").saturating_sub(self.client_aborted),
            self.attempted(),
        )
    }

    /// The latency quantile, interpolated inside its bucket the way
    /// Prometheus' `histogram_quantile` does.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        quantile(q, &self.latency)
    }

    /// Both directions' bytes in `seconds`, projected over a 30-day month.
    pub fn projected_month_bytes(&self, seconds: f64) -> Option<f64> {
        (seconds > 0.0).then(|| (self.bytes_out + self.bytes_in) as f64 / seconds * MONTH_SECONDS)
    }
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// Non-zero counts only: the reasons' series exist at 0 from the start.
fn by_reason(family: &MetricFamily, into: &mut BTreeMap<String, u64>) {
    for metric in family.get_metric() {
        let count = metric.get_counter().get_value() as u64;
        if count > 0 {
            into.insert(label(metric, "reason").to_string(), count);
        }
    }
}

fn minus(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets ending
/// in `+Inf`: linear inside the bucket, the first bucket starting at 0, and
/// the highest finite bound when the rank falls in `+Inf`.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = (count - lower.1) as f64;
            if in_bucket == 0.0 {
                return Some(bound);
            }
            return Some(lower.0 + (bound - lower.0) * (rank - lower.1 as f64) / in_bucket);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}
