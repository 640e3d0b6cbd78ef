//! `/dashboard` on the admin port: one self-contained page for the laptop
//! case where no Grafana exists, and `/dashboard/data.json`, which the page
//! polls. The SLO tiles cover the last five minutes (less just after start),
//! from counter snapshots taken by the gateway's housekeeping loop and on
//! each poll.

pub mod anomalies;
pub mod window;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::metrics::DecisionLabel;
use window::Totals;

/// The window the SLO tiles cover, as in the recording rules' `[5m]`.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Snapshots closer together than this add nothing.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Latest denials kept for the page.
const MAX_DENIALS: usize = 50;

/// The page: HTML, CSS and script in one file, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// One refused request, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    pub at: DateTime<Utc>,
    pub agent: Option<String>,
    /// For a refused credential: the agent id it claimed (unverified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_agent: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub reason: &'static str,
    pub request_id: String,
}

struct Sample {
    at: Instant,
    totals: Totals,
}

pub struct Dashboard {
    started: Instant,
    /// Latest anomalies from `clawgress analyze` (with `--nats`).
    pub anomalies: std::sync::Arc<anomalies::Recent>,
    denials: Mutex<VecDeque<Denial>>,
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for Dashboard {
    fn default() -> Self {
        let started = Instant::now();
        Dashboard {
            started,
            anomalies: Default::default(),
            denials: Mutex::new(VecDeque::with_capacity(MAX_DENIALS)),
            // The empty totals at start: the first window is "since start".
            samples: Mutex::new(VecDeque::from([Sample {
                at: started,
                totals: Totals::default(),
            }])),
        }
    }
}

impl Dashboard {
    pub fn note_denial(&self, denial: Denial) {
        let mut denials = self.denials.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if denials.len() == MAX_DENIALS {
            denials.pop_front();
        }
        denials.push_back(denial);
    }

    /// Takes a snapshot of the counters if the last one is old enough, and
    /// forgets those older than the window (keeping one at its edge).
    pub fn sample(&self, gateway: &Gateway) -> Totals {
        let now = Instant::now();
        let totals = Totals::from_families(&gateway.metrics.registry().gather());
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples
            .back()
            .is_none_or(|last| now.duration_since(last.at) >= SAMPLE_EVERY)
        {
            samples.push_back(Sample {
                at: now,
                totals: totals.clone(),
            });
        }
        while samples.len() > 1 && samples.get(1).is_some_and(|s| now.duration_since(s.at) >= WINDOW) {
            samples.pop_front();
        }
        totals
    }

    /// Everything the page shows, as JSON.
    pub fn data(&self, gateway: &Gateway) -> Value {
        let now = self.sample(gateway);
        let (window, seconds) = {
            let samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let base = samples
                .front()
                .map(|s| (s.totals.clone(), s.at.elapsed().as_secs_f64()));
            base.map_or((now.clone(), 0.0), |(totals, seconds)| (now.since(&totals), seconds))
        };
        let per_second = |count: u64| if seconds > 0.0 { count as f64 / seconds } else { 0.0 };
        let policy = gateway.policy.load();
        let breakers: Vec<Value> = policy
            .breakers
            .states()
            .into_iter()
            .filter(|(_, state)| *state != crate::breaker::BreakerState::Closed)
            .map(|(domain, state)| json!({"domain": domain, "state": state.as_str()}))
            .collect();
        let control = gateway.control.snapshot();
        let denials: Vec<Denial> = {
            let denials = self.denials.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            denials.iter().rev().take(20).cloned().collect()
        };
        let mut held: Vec<&crate::control::QuarantinedAgent> = control.holds().collect();
        held.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let decisions: Vec<&str> = DecisionLabel::ALL.iter().map(|d| d.as_str()).collect();
        let history = self.history(&now);
        json!({
            "generated_at": Utc::now(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "window_seconds": seconds.round(),
            "policy_version": &*policy.version,
            "emergency_block": control.emergency().is_some(),
            "slo": {
                "success_ratio": tile(window.success_ratio(), window::SUCCESS_TARGET, Better::Above),
                "latency_p95_seconds": tile(window.latency_quantile(0.95), window::P95_TARGET_SECONDS, Better::Below),
                "proxy_error_ratio": tile(window.error_ratio(), window::ERROR_TARGET, Better::Below),
                "projected_month_bytes": tile(
                    window.projected_month_bytes(seconds),
                    window::VOLUME_TARGET_BYTES,
                    Better::Below,
                ),
            },
            "window": {
                "requests": window.by_decision.values().sum::<u64>(),
                "requests_per_second": per_second(window.by_decision.values().sum()),
                "by_decision": window.by_decision,
                "blocked": window.blocked,
                "rate_limited": window.rate_limited,
                "upstream_resets": window.upstream_resets,
                "bytes_out": window.bytes_out,
                "bytes_in": window.bytes_in,
            },
            "totals": {
                "requests": now.by_decision.values().sum::<u64>(),
                "by_decision": now.by_decision,
                "blocked": now.blocked,
                "rate_limited": now.rate_limited,
                "bytes_out": now.bytes_out,
                "bytes_in": now.bytes_in,
            },
            "open_breakers": breakers,
            "top_agents": gateway.metrics.top_agents(10).into_iter().map(|(agent, total, split)| {
                let by_decision: serde_json::Map<String, Value> = decisions
                    .iter()
                    .zip(split)
                    .filter(|(_, n)| *n > 0)
                    .map(|(d, n)| (d.to_string(), json!(n)))
                    .collect();
                json!({"agent": agent, "requests": total, "by_decision": by_decision})
            }).collect::<Vec<_>>(),
            "top_denied_domains": gateway.metrics.top_denied_domains(10).into_iter()
                .map(|(domain, denials)| json!({"domain": domain, "denials": denials}))
                .collect::<Vec<_>>(),
            "latest_denials": denials,
            "quarantined": held,
            "anomalies": self.anomalies.latest(),
            "history": history,
        })
    }

    /// The window's shape, for the page's sparklines: between consecutive
    /// snapshots (and the last one and now), requests per second and the
    /// success rate (`null` where nothing was attempted).
    fn history(&self, now: &Totals) -> Vec<Value> {
        let samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut points: Vec<(Instant, &Totals)> = samples.iter().map(|s| (s.at, &s.totals)).collect();
        let at_now = Instant::now();
        points.push((at_now, now));
        points
            .windows(2)
            .filter_map(|pair| {
                let ((from, earlier), (to, later)) = (pair[0], pair[1]);
                let seconds = to.duration_since(from).as_secs_f64();
                // Shorter steps would be noise, not a rate.
                (seconds >= 0.2).then(|| {
                    let step = later.since(earlier);
                    json!({
                        "seconds_ago": at_now.duration_since(to).as_secs(),
                        "requests_per_second": step.by_decision.values().sum::<u64>() as f64 / seconds,
                        "success_ratio": step.success_ratio(),
                    })
                })
            })
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Better {
    Above,
    Below,
}

/// A tile: the value, its target, and whether it meets it (`no_data` when
/// the window saw no traffic to judge).
fn tile(value: Option<f64>, target: f64, better: Better) -> Value {
    let status = match value {
        None => "no_data",
        Some(v) => {
            let met = match better {
                Better::Above => v > target,
                Better::Below => v < target,
            };
            if met { "ok" } else { "breach" }
        }
    };
    json!({
        "value": value,
        "target": target,
        "objective": match better { Better::Above => "above", Better::Below => "below" },
        "status": status,
    })
}

#[cfg(test)]
mod tests;
