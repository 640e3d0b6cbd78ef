//! OTLP traces across the pipeline: `clawgress submit` publishes a job with
//! a `traceparent` in its NATS headers, the scheduler's job and fetch spans
//! continue that trace, the worker's request carries it to the gateway,
//! whose decision span joins it and whose audit line names it. A local
//! OTLP/HTTP receiver on 127.0.0.1 collects what every process exports.

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use support::Killed;
use support::nats::NatsServer;

use super::*;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP (protobuf) trace receiver.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = match (path.as_str(), ExportTraceServiceRequest::decode(body)) {
                            ("/v1/traces", Ok(export)) => {
                                store.lock().unwrap().extend(flatten(&export));
                                200
                            }
                            _ => 400,
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        response
                            .headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, spans)
}

fn flatten(export: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource in &export.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                out.push(Span {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                });
            }
        }
    }
    out
}

/// The test world's gateway (origin, TLS origin, echo, DNS), exporting
/// spans to `endpoint` a tenth of a second after they end.
struct Traced {
    gw: GatewayProc,
    origin: upstream::Origin,
    _tls: support::tls::TlsOrigin,
    _dns: TestDns,
}

async fn traced_gateway(endpoint: &str) -> Traced {
    let origin = upstream::origin().await;
    let tls = support::tls::origin("tls.test").await;
    let echo = upstream::half_close_echo().await;
    let dns = TestDns::start(&[]).await;
    let policy = policy_yaml(origin.addr.port(), tls.addr.port(), echo.port(), dns.addr, "enforce");
    let gw = GatewayProc::start_with_env(
        &policy,
        &agents_yaml(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    Traced {
        gw,
        origin,
        _tls: tls,
        _dns: dns,
    }
}

#[tokio::test]
async fn a_jobs_trace_runs_from_the_publisher_through_the_worker_to_the_gateway() {
    let Some(nats) = NatsServer::start() else { return };
    let (otlp, spans) = receiver().await;
    let endpoint = format!("http://{otlp}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export within a fraction of a second, not the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let Traced { gw, origin, _tls, _dns } = traced_gateway(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.yaml");
    std::fs::write(&credentials, format!("agents:\n  {}: {}\n", SCRAPER.0, SCRAPER.1)).unwrap();
    let _scheduler = Killed(
        Command::new(support::clawgress_bin())
            .args(["scheduler", "--nats", &nats.url, "--gateway", &gw.proxy_url()])
            .arg("--credentials")
            .arg(&credentials)
            .envs(env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("scheduler.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://site.test:{}/page", origin.addr.port());
    let browser = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    let mut jobs = vec![
        serde_json::json!({"version": 1, "type": "scrape", "id": "traced-http", "agent": SCRAPER.0,
        "url": url, "fetch": "http", "extract": {"title": "h1"}}),
    ];
    if browser {
        jobs.push(
            serde_json::json!({"version": 1, "type": "scrape", "id": "traced-chromium", "agent": SCRAPER.0,
            "url": url, "fetch": "chromium", "extract": {"title": "h1"}}),
        );
    } else {
        support::skip("the Chromium half: no Chromium (./deploy/local/prereqs.sh chromium)");
    }
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>().join("\n")).unwrap();
    let submit = tokio::process::Command::new(support::clawgress_bin())
        .args(["submit", "--nats", &nats.url, "--wait", "--wait-secs", "60", "--json"])
        .arg(&file)
        .envs(env)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&submit.stdout).to_string();
    assert!(
        submit.status.success() && printed.matches("\"status\":\"ok\"").count() == jobs.len(),
        "{printed}\n{}\nscheduler:\n{}",
        String::from_utf8_lossy(&submit.stderr),
        std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap_or_default()
    );

    // Every process exports on its own schedule; wait until each job's
    // chain is complete: publish → job (through the NATS headers) → fetch →
    // the gateway's decision (through the worker's request).
    let deadline = Instant::now() + Duration::from_secs(20);
    let chains = loop {
        let seen = spans.lock().unwrap().clone();
        let chains: Vec<[Span; 4]> = seen
            .iter()
            .filter(|s| s.name == "publish")
            .filter_map(|publish| {
                let child = |parent: &Span, name: &str| {
                    seen.iter()
                        .find(|s| s.name == name && s.parent == parent.span_id && s.trace_id == parent.trace_id)
                        .cloned()
                };
                let job = child(publish, "job")?;
                let fetch = child(&job, "fetch")?;
                let decision = child(&fetch, "decision")?;
                Some([publish.clone(), job, fetch, decision])
            })
            .collect();
        if chains.len() == jobs.len() {
            break chains;
        }
        assert!(Instant::now() < deadline, "incomplete traces; received: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for [publish, job, fetch, decision] in &chains {
        assert_eq!(publish.service, "clawgress-submit");
        assert_eq!(job.service, "clawgress-scheduler");
        assert_eq!(fetch.service, "clawgress-scheduler");
        assert_eq!(decision.service, "clawgress-gateway");
        // The gateway's audit line for that request names the same trace.
        let trace = publish.trace_id.clone();
        // Chromium asks without a credential first: that 407 carries the
        // trace too; the request that went out follows it.
        let line = gw
            .wait_audit(|l| {
                l["request"]["domain"] == "site.test"
                    && l["trace_id"] == trace.as_str()
                    && l["type"] == "egress_request"
            })
            .await;
        assert_eq!(line["decision"], "allow");
    }
    if let [first, second] = chains.as_slice() {
        assert_ne!(first[0].trace_id, second[0].trace_id, "each job is a trace of its own");
    }

    // A synthetic check's job is traced the same way, and its evidence
    // names the trace.
    let checks = dir.path().join("checks.yaml");
    std::fs::write(
        &checks,
        format!(
            "gateway: {{proxy: '{}', admin: 'http://{}'}}\nnats: '{}'\nagent: {{id: {}, key_env: TRACE_TEST_KEY}}\n\
             scrape:\n  targets:\n    - name: fixture page\n      url: '{url}'\n      fetch: http\n      \
             expect: [{{selector: h1, text: Clawgress fixture}}]\n",
            gw.proxy_url(),
            gw.admin,
            nats.url,
            SCRAPER.0
        ),
    )
    .unwrap();
    let run = tokio::process::Command::new(support::clawgress_bin())
        .args(["synthetic", "run"])
        .arg(&checks)
        .env("TRACE_TEST_KEY", SCRAPER.1)
        .env_remove("CLAWGRESS_ADMIN_TOKEN")
        .envs(env)
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{summary}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let trace = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("· trace "))
        .unwrap_or_else(|| panic!("no trace in the evidence:\n{summary}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = spans.lock().unwrap().clone();
        let in_trace = |name: &str, service: &str| {
            seen.iter()
                .any(|s| s.trace_id == trace && s.name == name && s.service == service)
        };
        if in_trace("publish", "clawgress-synthetic") && in_trace("decision", "clawgress-gateway") {
            break;
        }
        assert!(Instant::now() < deadline, "trace {trace} incomplete: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_request_without_a_traceparent_gets_the_gateways_own_trace() {
    let (otlp, spans) = receiver().await;
    let endpoint = format!("http://{otlp}");
    let Traced { gw, _tls, _dns, .. } = traced_gateway(&endpoint).await;
    let denied = raw::send(gw.proxy, &get("http://nowhere.example/x", Some(SCRAPER)), b"").await;
    assert_eq!(denied.status, 403);
    let request_id = denied.header("x-request-id").unwrap().to_string();
    let line = gw.audit_for(&request_id).await;
    let trace_id = line["trace_id"]
        .as_str()
        .expect("a trace id without a traceparent")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = spans.lock().unwrap().clone();
        if let Some(span) = seen.iter().find(|s| s.name == "decision" && s.trace_id == trace_id) {
            assert!(span.parent.is_empty(), "a root span: {span:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no decision span for {trace_id}: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A malformed traceparent is ignored, never copied into the audit.
    let head = format!(
        "{}\r\ntraceparent: 00-zzzz-not-a-trace-01",
        get("http://nowhere.example/y", Some(SCRAPER))
    );
    let denied = raw::send(gw.proxy, &head, b"").await;
    let line = gw.audit_for(denied.header("x-request-id").unwrap()).await;
    assert!(
        line["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32 && !t.contains('z')),
        "{line}"
    );
}

/// An unreachable collector costs the gateway nothing but a warning in its
/// log: requests are served, spans are dropped, the reason is logged.
#[tokio::test]
async fn an_unreachable_collector_is_a_warning_not_an_outage() {
    let dead = support::nats::free_port();
    let endpoint = format!("http://127.0.0.1:{dead}");
    // The gateway harness logs at info; the SDK's warnings show there too.
    let Traced { gw, origin, _tls, _dns } = traced_gateway(&endpoint).await;
    let url = format!("http://site.test:{}/page", origin.addr.port());
    for _ in 0..5 {
        let served = raw::send(gw.proxy, &get(&url, Some(SCRAPER)), b"").await;
        assert_eq!(served.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.log().contains("ExportError") {
        assert!(Instant::now() < deadline, "no export warning in the log:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
