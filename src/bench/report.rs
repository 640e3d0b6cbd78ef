//! The result of one run, as a one-line summary for people and one JSON object
//! for scripts (gateway/bench/proxy_vs_squid.sh collects these).

use serde::Serialize;

use super::stats::Tally;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Keep-alive connections sending absolute-form (or, direct, origin-form) GETs.
    Forward,
    /// A new CONNECT tunnel per request.
    Connect,
    /// A plain reqwest client in a loop (pooled keep-alive connections): what
    /// a scraper written without Clawgress would do.
    Reqwest,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub mode: Mode,
    /// `None` when the run went straight to the target.
    pub proxy: Option<String>,
    pub target: String,
    pub connections: usize,
    pub duration_s: f64,
    /// Successful (2xx) exchanges completed inside the measured window.
    pub requests: u64,
    /// Failed exchanges (non-2xx, refused, reset) inside the window.
    pub errors: u64,
    pub rps: f64,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub mean_us: f64,
}

/// What the run was, before the numbers.
pub struct RunLabel {
    pub mode: Mode,
    pub proxy: Option<String>,
    pub target: String,
    pub connections: usize,
}

impl BenchReport {
    pub fn new(label: RunLabel, measured_s: f64, tally: &Tally) -> Self {
        let latency = &tally.latency;
        let rps = if measured_s > 0.0 {
            latency.count() as f64 / measured_s
        } else {
            0.0
        };
        Self {
            mode: label.mode,
            proxy: label.proxy,
            target: label.target,
            connections: label.connections,
            duration_s: (measured_s * 1000.0).round() / 1000.0,
            requests: latency.count(),
            errors: tally.errors,
            rps: round_tenths(rps),
            p50_us: latency.percentile(0.50),
            p90_us: latency.percentile(0.90),
            p99_us: latency.percentile(0.99),
            max_us: latency.max(),
            mean_us: round_tenths(latency.mean()),
        }
    }

    pub fn json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn human_line(&self) -> String {
        let mode = match self.mode {
            Mode::Forward => "forward",
            Mode::Connect => "connect",
            Mode::Reqwest => "reqwest",
        };
        let route = self.proxy.as_deref().unwrap_or("direct");
        format!(
            "{mode} {route} -> {target}: {connections} conn, {duration:.1}s, {requests} ok, \
             {errors} errors, {rps:.1} req/s, latency us p50 {p50} p90 {p90} p99 {p99} \
             max {max} mean {mean:.1}",
            target = self.target,
            connections = self.connections,
            duration = self.duration_s,
            requests = self.requests,
            errors = self.errors,
            rps = self.rps,
            p50 = self.p50_us,
            p90 = self.p90_us,
            p99 = self.p99_us,
            max = self.max_us,
            mean = self.mean_us,
        )
    }
}

fn round_tenths(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests;
