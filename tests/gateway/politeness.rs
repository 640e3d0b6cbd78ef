//! Per-host politeness shared by schedulers: two real schedulers on one
//! NATS, the real gateway, and an origin that counts how many requests each
//! host has in flight and when each started. A flood for one host holds
//! the host's slots across both schedulers and never the pools, so a
//! trickle for another host goes as fast as it does alone.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::Killed;
use support::nats::NatsServer;

use super::*;

/// Per host: requests in flight now, the most at once, and start times.
#[derive(Default)]
struct HostLoad {
    now: usize,
    most: usize,
    starts: Vec<Instant>,
}

#[derive(Clone, Default)]
struct Loads(Arc<Mutex<HashMap<String, HostLoad>>>);

impl Loads {
    fn most(&self, host: &str) -> usize {
        self.0.lock().unwrap().get(host).map_or(0, |l| l.most)
    }

    fn starts(&self, host: &str) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .get(host)
            .map_or_else(Vec::new, |l| l.starts.clone())
    }
}

/// `/slow/<ms>`: answers a small page after `ms` milliseconds.
async fn origin() -> (std::net::SocketAddr, Loads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let loads = Loads::default();
    let shared = loads.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let loads = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let loads = loads.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .and_then(|h| h.split(':').next())
                            .unwrap_or_default()
                            .to_string();
                        let ms: u64 = req
                            .uri()
                            .path()
                            .strip_prefix("/slow/")
                            .and_then(|m| m.parse().ok())
                            .unwrap_or(0);
                        {
                            let mut all = loads.0.lock().unwrap();
                            let load = all.entry(host.clone()).or_default();
                            load.now += 1;
                            load.most = load.most.max(load.now);
                            load.starts.push(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        loads.0.lock().unwrap().entry(host).or_default().now -= 1;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"<html><h1>polite</h1></html>",
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, loads)
}

struct Two {
    nats: NatsServer,
    gw: GatewayProc,
    port: u16,
    loads: Loads,
    dir: tempfile::TempDir,
    schedulers: Vec<Killed>,
    _dns: TestDns,
}

impl Two {
    async fn start(extra: &[&str]) -> Option<Two> {
        let nats = NatsServer::start()?;
        let (addr, loads) = origin().await;
        let dns = TestDns::start(&[]).await;
        let policy = policy_yaml(addr.port(), 1, 1, dns.addr, "enforce")
            + "    flood.wild.test: 127.0.0.1\n    trickle.wild.test: 127.0.0.1\n    polite.wild.test: 127.0.0.1\n";
        let gw = GatewayProc::start(&policy, &agents_yaml());
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials.yaml");
        std::fs::write(&credentials, format!("agents:\n  {}: {}\n", SCRAPER.0, SCRAPER.1)).unwrap();
        let mut schedulers = Vec::new();
        for i in 0..2 {
            let log = std::fs::File::create(dir.path().join(format!("scheduler-{i}.log"))).unwrap();
            let child = std::process::Command::new(support::clawgress_bin())
                .args(["scheduler", "--nats", &nats.url, "--gateway", &gw.proxy_url()])
                .arg("--credentials")
                .arg(&credentials)
                .args([
                    "--concurrency",
                    "8",
                    "--per-domain",
                    "2",
                    "--chromium",
                    "none",
                    "--ack-wait-secs",
                    "10",
                ])
                .args(extra)
                .env("CLAWGRESS_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            schedulers.push(Killed(child));
        }
        Some(Two {
            nats,
            gw,
            port: addr.port(),
            loads,
            dir,
            schedulers,
            _dns: dns,
        })
    }

    fn logs(&self) -> String {
        (0..self.schedulers.len())
            .map(|i| std::fs::read_to_string(self.dir.path().join(format!("scheduler-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    fn job(&self, id: &str, host: &str, ms: u64) -> serde_json::Value {
        serde_json::json!({"version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0, "fetch": "http",
                           "url": format!("http://{host}:{}/slow/{ms}", self.port)})
    }
}

async fn publish(js: &async_nats::jetstream::Context, job: &serde_json::Value) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", job["id"].as_str().unwrap());
    js.publish_with_headers("jobs.scrape.normal", headers, job.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes each job, one after another, and waits for its result:
/// the time from publishing to its result, each.
async fn trickle(two: &Two, js: &async_nats::jetstream::Context, prefix: &str, count: usize) -> Vec<Duration> {
    let client = js.client();
    let mut latencies = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let mut result = client.subscribe(format!("results.scrape.{id}")).await.unwrap();
        client.flush().await.unwrap();
        let began = Instant::now();
        publish(js, &two.job(&id, "trickle.wild.test", 0)).await;
        let message = tokio::time::timeout(Duration::from_secs(30), result.next())
            .await
            .unwrap_or_else(|_| panic!("no result for {id}; schedulers:\n{}", two.logs()))
            .unwrap();
        latencies.push(began.elapsed());
        let result: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(result["status"], "ok", "{result}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test]
async fn a_flood_for_one_host_holds_its_slots_across_schedulers_and_never_delays_another_host() {
    let Some(two) = Two::start(&[]).await else { return };
    let client = async_nats::connect(&two.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // The schedulers create the streams; wait for them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream("JOBS").await.is_err() {
        assert!(Instant::now() < deadline, "no JOBS stream; schedulers:\n{}", two.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm up (connections, the host's first slot), then the trickle alone.
    trickle(&two, &js, "warm", 3).await;
    let alone = trickle(&two, &js, "alone", 15).await;

    // The flood: 300 jobs for one host that answers in 50 ms, two at a
    // time across both schedulers: about 7 s of work.
    let mut done = client
        .subscribe("results.scrape.>")
        .await
        .unwrap()
        .filter(|m| std::future::ready(m.subject.as_str().starts_with("results.scrape.flood-")));
    for i in 0..300 {
        publish(&js, &two.job(&format!("flood-{i}"), "flood.wild.test", 50)).await;
    }
    // Until the flood fills both schedulers' waiting jobs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = trickle(&two, &js, "during", 15).await;
    let mut finished = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), done.next()).await {
        finished += 1;
    }
    assert!(finished < 300, "the flood was over before the trickle was measured");

    let (alone, during) = (median(alone), median(during));
    let ratio = during.as_secs_f64() / alone.as_secs_f64();
    println!(
        "trickle latency (median of 15): alone {alone:?}, beside a 300-job flood of another host {during:?} (ratio {ratio:.2}); \
         flood results by then: {finished}"
    );
    // Within twice its latency alone; the floor keeps a very fast run from
    // turning scheduling noise into a failure.
    assert!(
        during <= alone.max(Duration::from_millis(25)) * 2,
        "alone {alone:?}, during the flood {during:?}"
    );

    // The flood's host never had more than its two slots in use, though two
    // schedulers served it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished < 300 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{finished} of 300 flood results; schedulers:\n{}",
            two.logs()
        );
        if let Ok(Some(_)) = tokio::time::timeout(left, done.next()).await {
            finished += 1;
        }
    }
    assert_eq!(
        two.loads.most("flood.wild.test"),
        2,
        "per-host slots hold across both schedulers"
    );
    let served: usize = two
        .gw
        .audit_lines()
        .iter()
        .filter(|l| l["request"]["path"] == "/slow/50")
        .count();
    assert_eq!(served, 300);
}

#[tokio::test]
async fn starts_at_one_host_are_spaced_across_schedulers() {
    let Some(two) = Two::start(&["--politeness-ms", "100"]).await else {
        return;
    };
    let client = async_nats::connect(&two.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream("JOBS").await.is_err() {
        assert!(Instant::now() < deadline, "no JOBS stream; schedulers:\n{}", two.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut done = client
        .subscribe("results.scrape.>")
        .await
        .unwrap()
        .filter(|m| std::future::ready(m.subject.as_str().starts_with("results.scrape.polite-")));
    const JOBS: usize = 12;
    for i in 0..JOBS {
        publish(&js, &two.job(&format!("polite-{i}"), "polite.wild.test", 0)).await;
    }
    for _ in 0..JOBS {
        tokio::time::timeout(Duration::from_secs(30), done.next())
            .await
            .unwrap_or_else(|_| panic!("results missing; schedulers:\n{}", two.logs()));
    }
    let starts = two.loads.starts("polite.wild.test");
    assert_eq!(starts.len(), JOBS);
    // Eleven gaps of 100 ms, wherever each job ran (each scheduler spacing
    // only its own starts would take about half that).
    let span = starts[JOBS - 1] - starts[0];
    println!("{JOBS} starts at one host across two schedulers took {span:?}");
    assert!(
        span >= Duration::from_millis(100 * (JOBS as u64 - 1) * 8 / 10),
        "{span:?}"
    );
}
