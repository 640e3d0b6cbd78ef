//! The scheduler's Prometheus metrics (`--metrics ADDR`, `GET /metrics`):
//! jobs finished by kind and status, fetch time by tier, the Chromium
//! pool's browsers and warm pages, and the Steel servers by state with their
//! failures. Labels are bounded: kinds, statuses, tiers and states are
//! closed sets.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use clawgress_workers::chromium::ChromiumPool;
use clawgress_workers::steel::SteelPool;

pub struct SchedulerMetrics {
    registry: Registry,
    jobs: IntCounterVec,
    fetch_seconds: HistogramVec,
    steel_servers: IntGaugeVec,
    steel_waiting: IntGauge,
    steel_session_failures: IntGauge,
    steel_bypassed: IntGauge,
    steel: Option<Arc<SteelPool>>,
    browser_launches: IntGauge,
    browser_contexts: IntGauge,
    browser_reused: IntGauge,
    browser_idle: IntGauge,
    chromium: Option<Arc<ChromiumPool>>,
}

impl SchedulerMetrics {
    pub fn new(steel: Option<Arc<SteelPool>>, chromium: Option<Arc<ChromiumPool>>) -> SchedulerMetrics {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new(
                "clawgress_scheduler_jobs_total",
                "Jobs finished, by kind and final status",
            ),
            &["kind", "status"],
        )
        .expect("static metric");
        let fetch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "clawgress_scheduler_fetch_seconds",
                "Time of one fetch, by backend tier",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["tier"],
        )
        .expect("static metric");
        let steel_servers = IntGaugeVec::new(
            Opts::new(
                "clawgress_steel_servers",
                "Steel Browser servers by state: busy (leased to a job), free, down (failed recently)",
            ),
            &["state"],
        )
        .expect("static metric");
        let steel_waiting =
            IntGauge::new("clawgress_steel_jobs_waiting", "Jobs waiting for a Steel server").expect("static metric");
        // Gauges set from the pool's own counters at scrape time; exposed as
        // counters by name (`_total`) and monotonic in value.
        let steel_session_failures = IntGauge::new(
            "clawgress_steel_session_failures_total",
            "Steel sessions that failed on the server's side (steel_unavailable)",
        )
        .expect("static metric");
        let steel_bypassed = IntGauge::new(
            "clawgress_steel_bypassed_gateway_total",
            "Steel pages the gateway did not see (bypassed_gateway)",
        )
        .expect("static metric");
        let browser_launches = IntGauge::new(
            "clawgress_browser_launches_total",
            "Chromium processes started (a crashed or worn-out one is replaced by a new launch)",
        )
        .expect("static metric");
        let browser_contexts = IntGauge::new(
            "clawgress_browser_contexts_opened_total",
            "Browser contexts opened for chromium and agent jobs, each with its page (a new renderer)",
        )
        .expect("static metric");
        let browser_reused = IntGauge::new(
            "clawgress_browser_pages_reused_total",
            "Jobs that ran in a warm page of their agent, wiped since its last job",
        )
        .expect("static metric");
        let browser_idle =
            IntGauge::new("clawgress_browser_pages_idle", "Warm pages waiting for a job").expect("static metric");
        for collector in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fetch_seconds.clone()),
            Box::new(steel_servers.clone()),
            Box::new(steel_waiting.clone()),
            Box::new(steel_session_failures.clone()),
            Box::new(steel_bypassed.clone()),
            Box::new(browser_launches.clone()),
            Box::new(browser_contexts.clone()),
            Box::new(browser_reused.clone()),
            Box::new(browser_idle.clone()),
        ] {
            registry.register(collector).expect("distinct metric names");
        }
        SchedulerMetrics {
            registry,
            jobs,
            fetch_seconds,
            steel_servers,
            steel_waiting,
            steel_session_failures,
            steel_bypassed,
            steel,
            browser_launches,
            browser_contexts,
            browser_reused,
            browser_idle,
            chromium,
        }
    }

    pub fn job_finished(&self, kind: &str, status: &str) {
        self.jobs.with_label_values(&[kind, status]).inc();
    }

    pub fn fetched(&self, tier: &str, seconds: f64) {
        self.fetch_seconds.with_label_values(&[tier]).observe(seconds);
    }

    /// The text exposition format, with the Steel and Chromium pools read
    /// now.
    pub fn render(&self) -> String {
        if let Some(steel) = &self.steel {
            let stats = steel.stats();
            for (state, count) in [("busy", stats.busy), ("free", stats.free), ("down", stats.down)] {
                self.steel_servers.with_label_values(&[state]).set(count as i64);
            }
            self.steel_waiting.set(stats.waiting as i64);
            self.steel_session_failures.set(stats.session_failures as i64);
            self.steel_bypassed.set(stats.bypassed as i64);
        }
        if let Some(chromium) = &self.chromium {
            self.browser_launches.set(chromium.launches() as i64);
            self.browser_contexts.set(chromium.contexts_opened() as i64);
            self.browser_reused.set(chromium.pages_reused() as i64);
            self.browser_idle.set(chromium.pages_idle() as i64);
        }
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<SchedulerMetrics>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if request.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"the scheduler serves /metrics only\n")))
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap_or_default())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the metrics address, saying what to do when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve scheduler metrics on {addr}: {e} (choose another --metrics address)"))
}
