//! End-to-end runs of the load generator against local servers: the real
//! target, and small stand-in proxies that check what the generator sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::PROXY_AUTHORIZATION;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report::Mode;
use super::*;

const BENCH_AGENT_BASIC: &str = "Basic YmVuY2gtYWdlbnQ6YmVuY2gta2V5"; // bench-agent:bench-key

fn args(target: String) -> BenchArgs {
    BenchArgs {
        proxy: None,
        proxy_user: None,
        target,
        connect: false,
        reqwest: false,
        ca_file: Vec::new(),
        body: 0,
        connections: 2,
        duration: 0.3,
        warmup: 0.05,
        json: false,
    }
}

async fn start_target(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(target::serve(
        listener,
        target::CannedResponse::of_size(size),
        None,
        std::future::pending(),
    ));
    addr
}

/// A hyper server whose answer is decided by `respond`; `keep_alive` false
/// closes every connection after one response.
async fn start_server<F>(keep_alive: bool, respond: F) -> SocketAddr
where
    F: Fn(&Request<Incoming>) -> StatusCode + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = Arc::clone(&respond);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
                    *response.status_mut() = respond(&request);
                    std::future::ready(Ok::<_, Infallible>(response))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A CONNECT-only proxy: checks the request head, answers `status`, and on 200
/// splices to the requested loopback port. Counts tunnels opened.
async fn start_connect_proxy(status: &'static str, tunnels: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tunnels = Arc::clone(&tunnels);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let authority = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_default()
                    .to_owned();
                let authorized = head.contains(&format!("Proxy-Authorization: {BENCH_AGENT_BASIC}\r\n"));
                let named_host = head.contains(&format!("\r\nHost: {authority}\r\n"));
                if status != "200" || !authorized || !named_host {
                    let answer = format!("HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n");
                    let _ = client.write_all(answer.as_bytes()).await;
                    return;
                }
                let Ok(mut origin) = TcpStream::connect(authority.as_str()).await else {
                    return;
                };
                tunnels.fetch_add(1, Ordering::Relaxed);
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn direct_run_measures_the_target() {
    let target = start_target(1024).await;
    let plan = BenchPlan::from_args(&args(format!("http://{target}/")))
        .await
        .expect("valid plan");
    let report = plan.run().await;
    assert_eq!(report.mode, Mode::Forward);
    assert_eq!(report.proxy, None);
    assert_eq!(report.connections, 2);
    assert_eq!(report.duration_s, 0.3);
    assert_eq!(report.errors, 0);
    assert!(report.requests > 10, "only {} requests", report.requests);
    assert!(report.p50_us > 0);
    assert!(report.p50_us <= report.p90_us && report.p90_us <= report.p99_us);
    assert!(report.p99_us <= report.max_us);
    let expected_rps = report.requests as f64 / 0.3;
    assert!((report.rps - expected_rps).abs() < 0.1);
}

#[tokio::test]
async fn proxied_run_sends_absolute_form_host_and_credential() {
    let proxy = start_server(true, |request| {
        let absolute = *request.uri() == "http://bench.local:18080/data?n=1";
        let host = request.headers().get("host").is_some_and(|h| h == "bench.local:18080");
        let authorized = request
            .headers()
            .get(PROXY_AUTHORIZATION)
            .is_some_and(|value| value == BENCH_AGENT_BASIC);
        match (absolute && host, authorized) {
            (true, true) => StatusCode::OK,
            (true, false) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            (false, _) => StatusCode::BAD_REQUEST,
        }
    })
    .await;
    // bench.local is never resolved by the generator: only the proxy is dialled.
    let mut run = args("http://bench.local:18080/data?n=1".to_owned());
    run.proxy = Some(format!("http://{proxy}"));
    run.proxy_user = Some("bench-agent:bench-key".to_owned());
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.errors, 0);
    assert!(report.requests > 10, "only {} requests", report.requests);
    assert_eq!(report.proxy, Some(format!("http://{proxy}")));
    assert_eq!(report.target, "http://bench.local:18080/data?n=1");

    run.proxy_user = Some("bench-agent:wrong".to_owned());
    let denied = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(denied.requests, 0);
    assert!(denied.errors > 10, "only {} errors", denied.errors);
    assert_eq!(denied.p50_us, 0, "errors carry no latency");
}

#[tokio::test]
async fn reqwest_mode_loops_a_plain_client_direct_and_through_a_proxy() {
    let target = start_target(1024).await;
    let mut run = args(format!("http://{target}/"));
    run.reqwest = true;
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.mode, Mode::Reqwest);
    assert_eq!(report.errors, 0);
    assert!(report.requests > 10, "only {} requests", report.requests);

    let proxy = start_server(true, |request| {
        let absolute = *request.uri() == "http://bench.local:18080/data";
        let authorized = request
            .headers()
            .get(PROXY_AUTHORIZATION)
            .is_some_and(|value| value == BENCH_AGENT_BASIC);
        if absolute && authorized {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        }
    })
    .await;
    let mut run = args("http://bench.local:18080/data".to_owned());
    run.reqwest = true;
    run.proxy = Some(format!("http://{proxy}"));
    run.proxy_user = Some("bench-agent:bench-key".to_owned());
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.errors, 0, "the credential and absolute form reach the proxy");
    assert!(report.requests > 10, "only {} requests", report.requests);
}

#[tokio::test]
async fn non_success_answers_are_errors() {
    let origin = start_server(true, |_| StatusCode::SERVICE_UNAVAILABLE).await;
    let report = BenchPlan::from_args(&args(format!("http://{origin}/")))
        .await
        .expect("valid plan")
        .run()
        .await;
    assert_eq!(report.requests, 0);
    assert!(report.errors > 10, "only {} errors", report.errors);
}

#[tokio::test]
async fn closed_connections_are_reopened_without_errors() {
    let origin = start_server(false, |_| StatusCode::OK).await;
    let mut run = args(format!("http://{origin}/"));
    run.connections = 1;
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.errors, 0);
    assert!(report.requests > 10, "only {} requests", report.requests);
}

#[tokio::test]
async fn refused_connections_count_as_errors_and_fail_the_run() {
    let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = unused.local_addr().expect("local addr");
    drop(unused);
    let report = BenchPlan::from_args(&args(format!("http://{addr}/")))
        .await
        .expect("valid plan")
        .run()
        .await;
    assert_eq!(report.requests, 0);
    assert!(report.errors > 0);
    // Paused between attempts, not a busy loop: 2 connections, 0.3 s, 10 ms pause.
    assert!(report.errors <= 2 * 31, "{} errors", report.errors);
    assert!(run_bench(args(format!("http://{addr}/"))).await.is_err());
}

#[tokio::test]
async fn connect_mode_opens_one_tunnel_per_request() {
    let target = start_target(512).await;
    let tunnels = Arc::new(AtomicU64::new(0));
    let proxy = start_connect_proxy("200", Arc::clone(&tunnels)).await;
    let mut run = args(format!("http://{target}/"));
    run.proxy = Some(format!("http://{proxy}"));
    run.proxy_user = Some("bench-agent:bench-key".to_owned());
    run.connect = true;
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.mode, Mode::Connect);
    assert_eq!(report.errors, 0);
    assert!(report.requests > 5, "only {} requests", report.requests);
    // Warmup tunnels and the one cut off at the end are opened but not counted.
    assert!(tunnels.load(Ordering::Relaxed) >= report.requests);
}

#[tokio::test]
async fn connect_mode_counts_refused_tunnels_as_errors() {
    let target = start_target(512).await;
    let tunnels = Arc::new(AtomicU64::new(0));
    let proxy = start_connect_proxy("403", Arc::clone(&tunnels)).await;
    let mut run = args(format!("http://{target}/"));
    run.proxy = Some(format!("http://{proxy}"));
    run.connect = true;
    let report = BenchPlan::from_args(&run).await.expect("valid plan").run().await;
    assert_eq!(report.requests, 0);
    assert!(report.errors > 5, "only {} errors", report.errors);
    assert_eq!(tunnels.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_any_connection() {
    let target = "http://127.0.0.1:9/".to_owned();
    let mut connect_direct = args(target.clone());
    connect_direct.connect = true;
    let mut user_direct = args(target.clone());
    user_direct.proxy_user = Some("agent:key".to_owned());
    let mut no_connections = args(target.clone());
    no_connections.connections = 0;
    let mut negative = args(target.clone());
    negative.warmup = -1.0;
    let mut zero = args(target.clone());
    zero.duration = 0.0;
    let mut body_without_reqwest = args(target.clone());
    body_without_reqwest.body = 1024;
    let https_without_reqwest = args("https://127.0.0.1:9/".to_owned());
    let mut endless = args(target);
    endless.duration = f64::INFINITY;
    for (name, bad) in [
        ("connect without proxy", connect_direct),
        ("user without proxy", user_direct),
        ("zero connections", no_connections),
        ("negative warmup", negative),
        ("zero duration", zero),
        ("infinite duration", endless),
        ("a body without --reqwest", body_without_reqwest),
        ("https without --reqwest", https_without_reqwest),
    ] {
        assert!(BenchPlan::from_args(&bad).await.is_err(), "{name} accepted");
    }
}

#[derive(clap::Parser)]
struct BenchCommand {
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(clap::Parser)]
struct TargetCommand {
    #[command(flatten)]
    target: TargetArgs,
}

#[test]
fn command_line_defaults_match_the_documentation() {
    let parsed = BenchCommand::try_parse_from(["bench", "--target", "http://127.0.0.1:18080/"]).expect("parses");
    let bench = parsed.bench;
    assert_eq!(bench.connections, 1);
    assert_eq!(bench.duration, 10.0);
    assert_eq!(bench.warmup, 1.0);
    assert!(!bench.connect && !bench.json);
    assert!(bench.proxy.is_none());

    let parsed = TargetCommand::try_parse_from(["bench-target"]).expect("parses");
    assert_eq!(parsed.target.listen, "127.0.0.1:18080".parse().expect("addr"));
    assert_eq!(parsed.target.size, 1024);
}

#[test]
fn debug_output_hides_the_proxy_key() {
    let parsed = BenchCommand::try_parse_from([
        "bench",
        "--target",
        "http://bench.local:18080/",
        "--proxy",
        "http://127.0.0.1:13129",
        "--proxy-user",
        "bench-agent:bench-key",
        "--connect",
        "--connections",
        "16",
    ])
    .expect("parses");
    let shown = format!("{:?}", parsed.bench);
    assert!(!shown.contains("bench-key"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert_eq!(parsed.bench.connections, 16);
}

#[tokio::test]
async fn target_refuses_oversized_bodies() {
    let result = run_target(TargetArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        size: MAX_BODY_SIZE + 1,
        html: false,
        tls_name: Vec::new(),
        tls_ca_out: None,
    })
    .await;
    assert!(result.is_err());
}

#[test]
fn the_dlp_benchmark_body_is_a_chat_completion_of_the_asked_size() {
    let body = dlp::chat_body(256 * 1024);
    assert!((256 * 1024..300 * 1024).contains(&body.len()), "{}", body.len());
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["model"], "gpt-4o");
    assert!(value["messages"].as_array().is_some_and(|m| m.len() > 10));
    let report = clawgress_dlp::Engine::new(&Default::default())
        .inspect_body(&body, Some("application/json"), None)
        .unwrap();
    assert_eq!(
        report.kinds(),
        vec!["email", "phone"],
        "the body exercises the detectors"
    );
}
