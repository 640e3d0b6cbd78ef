//! The DNS control server's Prometheus metrics and the small HTTP listener
//! that serves them (`GET /metrics`, `GET /healthz`).
//!
//! Every label value is fixed in code: decisions, transports, failure
//! kinds. Names and agents appear only in the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditMetrics, DnsDecision, DnsTransport};

/// Upstream round trips, seconds: a LAN resolver answers in well under a
/// millisecond, a cold recursive lookup in tens to hundreds.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Scrapers are few; anything more is a misconfiguration or an attack.
const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DnsMetrics {
    registry: Registry,
    /// `dns_queries_total{result}`, indexed like [`DnsDecision::ALL`].
    queries: Vec<IntCounter>,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// `dns_upstream_duration_seconds{transport}`: udp, tcp.
    upstream_duration: [Histogram; 2],
    /// `dns_upstream_failures_total{kind}`: timeout, error, servfail.
    upstream_failures: [IntCounter; 3],
    pub alerts: IntCounter,
    /// Datagrams dropped unread because too many queries were in flight.
    pub shed: IntCounter,
    pub in_flight: IntGauge,
    pub cache_entries: IntGauge,
    /// `dns_reloads_total{file,result}`: policy/agents × success/failure.
    reloads: [IntCounter; 4],
    audit: AuditMetrics,
}

impl DnsMetrics {
    pub fn new() -> prometheus::Result<DnsMetrics> {
        let registry = Registry::new();
        let queries_vec = IntCounterVec::new(
            Opts::new(
                "dns_queries_total",
                "DNS queries by what the server did (answered, nxdomain, refused, ...)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(queries_vec.clone()))?;
        let queries = DnsDecision::ALL
            .iter()
            .map(|d| queries_vec.with_label_values(&[d.as_str()]))
            .collect();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "dns_upstream_duration_seconds",
                "Time for one exchange with the upstream resolver",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["transport"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let failures = IntCounterVec::new(
            Opts::new(
                "dns_upstream_failures_total",
                "Upstream exchanges that gave no usable answer",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new("dns_reloads_total", "Policy and agent registry reloads"),
            &["file", "result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        let audit = AuditMetrics::register(&registry, "Queries answered SERVFAIL because the audit queue was full")?;
        Ok(DnsMetrics {
            queries,
            cache_hits: counter("dns_cache_hits_total", "Queries answered from the cache")?,
            cache_misses: counter("dns_cache_misses_total", "Queries sent upstream")?,
            upstream_duration: [
                duration.with_label_values(&["udp"]),
                duration.with_label_values(&["tcp"]),
            ],
            upstream_failures: [
                failures.with_label_values(&["timeout"]),
                failures.with_label_values(&["error"]),
                failures.with_label_values(&["servfail"]),
            ],
            alerts: counter(
                "dns_exfil_alerts_total",
                "Queries whose name looks like DNS exfiltration (long or high-entropy labels)",
            )?,
            shed: counter(
                "dns_queries_shed_total",
                "Datagrams dropped unread because too many queries were in flight",
            )?,
            in_flight: gauge("dns_queries_in_flight", "Queries being answered")?,
            cache_entries: gauge("dns_cache_entries", "Answers in the cache, as of the last one stored")?,
            reloads: [
                reloads.with_label_values(&["policy", "success"]),
                reloads.with_label_values(&["policy", "failure"]),
                reloads.with_label_values(&["agents", "success"]),
                reloads.with_label_values(&["agents", "failure"]),
            ],
            audit,
            registry,
        })
    }

    pub fn record_query(&self, decision: DnsDecision) {
        if let Some(index) = DnsDecision::ALL.iter().position(|d| *d == decision) {
            self.queries[index].inc();
        }
    }

    pub fn record_upstream(&self, transport: DnsTransport, took: Duration) {
        let index = match transport {
            DnsTransport::Udp => 0,
            DnsTransport::Tcp => 1,
        };
        self.upstream_duration[index].observe(took.as_secs_f64());
    }

    /// `reason` is the query's: `upstream_timeout`, `upstream_error` or
    /// `upstream_failure` (a SERVFAIL or REFUSED from upstream).
    pub fn record_upstream_failure(&self, reason: &str) {
        let index = match reason {
            "upstream_timeout" => 0,
            "upstream_error" => 1,
            _ => 2,
        };
        self.upstream_failures[index].inc();
    }

    pub fn record_reload(&self, agents: bool, ok: bool) {
        self.reloads[usize::from(agents) * 2 + usize::from(!ok)].inc();
    }

    pub fn audit(&self) -> AuditMetrics {
        self.audit.clone()
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown` changes.
pub async fn serve(listener: TcpListener, metrics: Arc<DnsMetrics>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&metrics, &req)) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

fn route(metrics: &DnsMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, crate::metrics::CONTENT_TYPE, metrics.render()),
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".to_string()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD are served here\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Where the metrics listener is, for the start line.
pub fn describe(addr: SocketAddr) -> String {
    format!("metrics listening on {addr} (/metrics /healthz)")
}
