//! The steel backend end to end. Against a real Steel Browser server
//! (`STEEL_URL`, default http://127.0.0.1:3000; SKIPPED where none answers,
//! see the README): every page through the gateway and checked against its
//! audit trail, `localhost` targets included, no cached pages, and jobs
//! serialized on a server. Without one: what a scheduler says when Steel is
//! missing or dead.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use clawgress_workers::credentials::Credentials;
use clawgress_workers::job::{FetchMode, RetryPolicy, ScrapeJob};
use clawgress_workers::outcome::FetchError;
use clawgress_workers::steel::{SteelConfig, SteelPool, Witness};
use http_body_util::Full;
use support::nats::NatsServer;

use super::*;

const VIEWER_TOKEN: &str = "steel-test-viewer";

/// The site Steel's pages come from ("the internet"): `/slow-page` takes
/// 300 ms, is cacheable for an hour, and counts its visitors and how many
/// were inside at once; `/js` renders its heading from a script.
struct Site {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

async fn site() -> Site {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site {
        addr: listener.local_addr().unwrap(),
        hits: Default::default(),
        in_flight: Default::default(),
        most_at_once: Default::default(),
    };
    let counters = (site.hits.clone(), site.in_flight.clone(), site.most_at_once.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counters = counters.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (hits, in_flight, most) = counters.clone();
                    async move {
                        let body = match req.uri().path() {
                            "/slow-page" => {
                                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                                format!("<html><body><h1 class=\"visit\">visit {n}</h1></body></html>")
                            }
                            "/js" => r#"<html><body><div id="root"></div><script>
setTimeout(function () { var h = document.createElement('h1'); h.className = 'rendered';
  h.textContent = 'Rendered by JavaScript'; document.getElementById('root').appendChild(h); }, 150);
</script></body></html>"#
                                .to_string(),
                            _ => "<html><body>nothing here</body></html>".to_string(),
                        };
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                // A browser cache would keep it: the backend must not.
                                .header("cache-control", "public, max-age=3600")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    site
}

/// A gateway allowing the site as `localhost` and as `site.test`, with a
/// viewer token for the audit check.
struct SteelWorld {
    gw: GatewayProc,
    site: Site,
    dir: tempfile::TempDir,
}

async fn steel_world() -> SteelWorld {
    let site = site().await;
    let port = site.addr.port();
    let policy = format!(
        r#"egress:
  default_action: deny
  logging: all_requests
allowlist:
  steel_sites:
    - domain: "localhost"
      ports: [{port}]
      protocols: [http]
    - domain: "site.test"
      ports: [{port}]
      protocols: [http]
rate_limits:
  per_agent: {{default: 100000/min, burst: 10000}}
  per_project: {{default: 100000/min, burst: 10000}}
  per_domain: {{default: 100000/min, max: 100000/min}}
dns:
  static_hosts:
    site.test: 127.0.0.1
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: steel-check\n    role: viewer\n    token_sha256: \"{}\"\n",
            sha256_hex(VIEWER_TOKEN)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("credentials.yaml"),
        format!("agents:\n  {}: {}\n", SCRAPER.0, SCRAPER.1),
    )
    .unwrap();
    let gw = GatewayProc::start_with(&policy, &agents_yaml(), &["--admin-tokens", tokens.to_str().unwrap()]);
    SteelWorld { gw, site, dir }
}

/// The Steel tests take turns: a Steel server runs one session at a time,
/// and a second one (from another test's pool) would kill the first's browser.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Steel server to test against, or None after saying why not.
async fn steel_server() -> Option<String> {
    let base = std::env::var("STEEL_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".to_string());
    // Tests talk to loopback only.
    if !(base.starts_with("http://127.") || base.starts_with("http://localhost")) {
        support::skip(&format!("STEEL_URL {base} is not a loopback address"));
        return None;
    }
    if !clawgress_workers::steel::SteelServer::new(&base).reachable().await {
        support::skip(&format!(
            "no Steel Browser server at {base}: start one and set STEEL_URL (README: Steel Browser)"
        ));
        return None;
    }
    Some(base)
}

fn steel_job(id: &str, url: String) -> ScrapeJob {
    ScrapeJob {
        id: id.into(),
        agent: SCRAPER.0.into(),
        url,
        method: "GET".into(),
        headers: BTreeMap::new(),
        body: None,
        fetch: FetchMode::Steel,
        extract: BTreeMap::new(),
        wait_for: None,
        screenshot: false,
        timeout: Duration::from_secs(30),
        priority: Default::default(),
        retry: RetryPolicy::default(),
    }
}

#[tokio::test]
async fn steel_pages_go_through_the_gateway_and_are_checked_against_its_audit_trail() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(base) = steel_server().await else { return };
    let w = steel_world().await;
    let witness = Witness::new(&[format!("http://{}", w.gw.admin)], VIEWER_TOKEN.to_string()).unwrap();
    let pool = SteelPool::new(
        SteelConfig {
            servers: vec![base],
            gateway: w.gw.proxy_url(),
            queue_per_server: 4,
            witness: Some(witness),
        },
        Credentials::from_pairs([(SCRAPER.0.to_string(), SCRAPER.1.to_string())]),
    )
    .unwrap();
    let port = w.site.addr.port();

    // A page rendered by its script, under a name the gateway resolves.
    let mut js = steel_job("steel-js", format!("http://site.test:{port}/js"));
    js.wait_for = Some(".rendered".into());
    let (page, _) = pool.fetch(&js).await.unwrap();
    assert!(page.body.contains("Rendered by JavaScript"), "{}", page.body);
    let request_id = page.request_id.clone().expect("the gateway's request id of the page");
    let line = w.gw.audit_for(&request_id).await;
    assert_eq!(line["agent_id"], SCRAPER.0);
    assert_eq!(line["request"]["domain"], "site.test");

    // A `localhost` page: Chromium would go around a proxy for it.
    let local = steel_job("steel-local", format!("http://localhost:{port}/slow-page"));
    let (page, _) = pool.fetch(&local).await.unwrap_or_else(|e| {
        panic!("{e} (is Steel's Chromium started with --proxy-bypass-list=<-loopback>? README: Steel Browser)")
    });
    assert!(page.body.contains("visit 1"), "{}", page.body);
    let line = w.gw.audit_for(page.request_id.as_deref().unwrap()).await;
    assert_eq!(line["agent_id"], SCRAPER.0);
    assert_eq!(line["request"]["domain"], "localhost");
    assert_eq!(line["request"]["path"], "/slow-page");

    // The same URL again: the site sees it again, the cache is off.
    let (again, _) = pool.fetch(&local).await.unwrap();
    assert!(again.body.contains("visit 2"), "a cached copy: {}", again.body);
    assert_eq!(w.site.hits.load(Ordering::SeqCst), 2);
    assert_ne!(again.request_id, page.request_id);

    // Refused by the gateway, read back as the refusal.
    let unlisted = steel_job("steel-unlisted", format!("http://unlisted.test:{port}/slow-page"));
    assert!(matches!(pool.fetch(&unlisted).await, Err(FetchError::Denied { .. })));

    // A loopback literal is either refused by the gateway or, where Steel's
    // own relay sends it around the gateway (its HOST), caught by the
    // audit check; never returned as a page.
    let literal = steel_job("steel-literal", format!("http://127.0.0.1:{port}/slow-page"));
    match pool.fetch(&literal).await {
        Err(FetchError::Denied { .. } | FetchError::BypassedGateway(_)) => {}
        other => panic!("a page the policy does not allow came back: {other:?}"),
    }
    assert_eq!(pool.stats().session_failures, 0);
}

/// `clawgress scheduler` against the world's gateway and a fresh NATS.
struct Scheduler {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // A clean stop first: it releases live Steel sessions (a killed
        // scheduler would leave the server busy for the next test).
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scheduler(w: &SteelWorld, nats: &NatsServer, extra: &[&str], metrics: Option<u16>) -> Scheduler {
    let log = w.dir.path().join(format!("scheduler-{}.log", metrics.unwrap_or(0)));
    let mut command = Command::new(support::clawgress_bin());
    command
        .args(["scheduler", "--nats", &nats.url, "--gateway", &w.gw.proxy_url()])
        .args(["--gateway-admin", &format!("http://{}", w.gw.admin)])
        .arg("--credentials")
        .arg(w.dir.path().join("credentials.yaml"))
        .args(["--ack-wait-secs", "30"])
        .args(extra)
        .env("CLAWGRESS_ADMIN_TOKEN", VIEWER_TOKEN)
        .env_remove("STEEL_URL")
        .env("CLAWGRESS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(port) = metrics {
        command.args(["--metrics", &format!("127.0.0.1:{port}")]);
    }
    Scheduler {
        child: command.spawn().unwrap(),
        log,
    }
}

fn submit(nats: &NatsServer, dir: &std::path::Path, jobs: &[serde_json::Value]) {
    let file = dir.join("jobs.jsonl");
    let text: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let output = Command::new(support::clawgress_bin())
        .args(["submit", "--nats", &nats.url])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

async fn results(nats: &NatsServer, ids: &[String], scheduler: &Scheduler) -> HashMap<String, serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let output = Command::new(support::clawgress_bin())
            .args(["results", "--json", "--nats", &nats.url])
            .output()
            .unwrap();
        let found: HashMap<String, serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| (r["job_id"].as_str().unwrap_or_default().to_string(), r))
            .collect();
        if ids.iter().all(|id| found.contains_key(id)) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "results for {ids:?} never came; have {:?}; scheduler log:\n{}",
            found.keys().collect::<Vec<_>>(),
            std::fs::read_to_string(&scheduler.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scheduler_metrics(port: u16) -> String {
    let response = support::raw::send(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "GET /metrics HTTP/1.1\r\nHost: scheduler\r\nConnection: close",
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

async fn wait_listening(port: u16, scheduler: &Scheduler) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler's metrics never came up; its log:\n{}",
            std::fs::read_to_string(&scheduler.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn five_steel_jobs_at_once_share_one_server_one_at_a_time_and_all_succeed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(base) = steel_server().await else { return };
    let Some(nats) = NatsServer::start() else { return };
    let w = steel_world().await;
    let port = support::nats::free_port();
    // Per-host concurrency 4 (the default) would run four at once.
    let scheduler = scheduler(&w, &nats, &["--steel", &base], Some(port));
    wait_listening(port, &scheduler).await;
    let url = format!("http://localhost:{}/slow-page", w.site.addr.port());
    let ids: Vec<String> = (0..5).map(|i| format!("steel-burst-{i}")).collect();
    let jobs: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({"version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0, "url": url,
                "fetch": "steel", "extract": {"visit": {"selector": "h1.visit", "required": true}}})
        })
        .collect();
    submit(&nats, w.dir.path(), &jobs);
    let results = results(&nats, &ids, &scheduler).await;
    for id in &ids {
        let result = &results[id];
        assert_eq!(result["status"], "ok", "{result}");
        assert_eq!(result["fetch"]["tier"], "steel", "{result}");
        assert!(result["fetch"]["request_id"].is_string(), "{result}");
    }
    // Every job reached the site, one at a time.
    assert_eq!(w.site.hits.load(Ordering::SeqCst), 5);
    assert_eq!(w.site.most_at_once.load(Ordering::SeqCst), 1);
    let metrics = scheduler_metrics(port).await;
    for expected in [
        "clawgress_steel_servers{state=\"free\"} 1",
        "clawgress_steel_servers{state=\"busy\"} 0",
        "clawgress_steel_session_failures_total 0",
        "clawgress_steel_bypassed_gateway_total 0",
        "clawgress_scheduler_jobs_total{kind=\"scrape\",status=\"ok\"} 5",
    ] {
        assert!(metrics.contains(expected), "no {expected} in:\n{metrics}");
    }
}

#[tokio::test]
async fn steel_jobs_without_a_usable_steel_server_say_what_to_do() {
    let Some(nats) = NatsServer::start() else { return };
    let w = steel_world().await;
    let url = format!("http://localhost:{}/slow-page", w.site.addr.port());
    let job = |id: &str| {
        serde_json::json!({"version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0, "url": url,
            "fetch": "steel", "retry": {"max_attempts": 1}})
    };

    // No --steel: invalid, naming the flag.
    let plain = scheduler(&w, &nats, &[], None);
    submit(&nats, w.dir.path(), &[job("steel-none")]);
    let result = results(&nats, &["steel-none".to_string()], &plain).await["steel-none"].clone();
    assert_eq!(result["status"], "invalid", "{result}");
    assert!(
        result["error"]["hint"].as_str().unwrap().contains("--steel"),
        "{result}"
    );
    drop(plain);

    // A Steel server that is not there: steel_unavailable with its URL, the
    // gateway not blamed.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let port = support::nats::free_port();
    let broken = scheduler(&w, &nats, &["--steel", &dead], Some(port));
    wait_listening(port, &broken).await;
    submit(&nats, w.dir.path(), &[job("steel-dead")]);
    let result = results(&nats, &["steel-dead".to_string()], &broken).await["steel-dead"].clone();
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "steel_unavailable", "{result}");
    assert!(result["error"]["message"].as_str().unwrap().contains(&dead), "{result}");
    let metrics = scheduler_metrics(port).await;
    assert!(
        metrics.contains("clawgress_steel_session_failures_total 1"),
        "{metrics}"
    );
    assert_eq!(w.site.hits.load(Ordering::SeqCst), 0);

    // --steel with the audit check on but no token: refused at start.
    let output = Command::new(support::clawgress_bin())
        .args(["scheduler", "--nats", &nats.url, "--steel", &dead])
        .env_remove("CLAWGRESS_ADMIN_TOKEN")
        .env_remove("STEEL_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CLAWGRESS_ADMIN_TOKEN") && stderr.contains("--steel-verify off"),
        "{stderr}"
    );
}

#[tokio::test]
async fn jobs_waiting_for_steel_leave_the_scheduler_to_other_work_and_auto_never_waits_for_steel() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(base) = steel_server().await else { return };
    let Some(nats) = NatsServer::start() else { return };
    let w = steel_world().await;
    let port = support::nats::free_port();
    // Two slots and one Steel server: the second steel job waits for the
    // server, and must give its slot to the http job behind it.
    let scheduler = scheduler(
        &w,
        &nats,
        &["--steel", &base, "--concurrency", "2", "--chromium", "none"],
        Some(port),
    );
    wait_listening(port, &scheduler).await;
    let site = w.site.addr.port();
    let steel = |id: &str| {
        serde_json::json!({"version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0,
            "url": format!("http://localhost:{site}/slow-page"), "fetch": "steel"})
    };
    submit(
        &nats,
        w.dir.path(),
        &[steel("steel-a"), steel("steel-b"), steel("steel-c")],
    );
    // Once a steel job waits for the server, the http job gets its slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !scheduler_metrics(port).await.contains("clawgress_steel_jobs_waiting 1") {
        assert!(std::time::Instant::now() < deadline, "no steel job ever waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What http gets of this page lacks the required heading: `auto` would
    // escalate to a browser, and the only one is the busy Steel server.
    let js_shell = serde_json::json!({"version": 1, "type": "scrape", "id": "auto-js", "agent": SCRAPER.0,
        "url": format!("http://localhost:{site}/js"), "fetch": "auto", "retry": {"max_attempts": 1},
        "extract": {"heading": {"selector": "h1.rendered", "required": true}}});
    let plain = serde_json::json!({"version": 1, "type": "scrape", "id": "http-meanwhile", "agent": SCRAPER.0,
        "url": format!("http://localhost:{site}/other"), "fetch": "http"});
    submit(&nats, w.dir.path(), &[plain, js_shell]);
    let early = results(
        &nats,
        &["http-meanwhile".to_string(), "auto-js".to_string()],
        &scheduler,
    )
    .await;
    assert_eq!(early["http-meanwhile"]["status"], "ok", "{}", early["http-meanwhile"]);
    // It did not queue behind the steel jobs: it ended with what http got.
    assert_eq!(early["auto-js"]["status"], "failed", "{}", early["auto-js"]);
    assert_eq!(
        early["auto-js"]["error"]["code"], "missing_required",
        "{}",
        early["auto-js"]
    );
    // Only the steel job holding the server could have finished by then;
    // had the waiting ones kept their slots, the http job would have come
    // after two of them.
    let steel_done = ["steel-a", "steel-b", "steel-c"]
        .iter()
        .filter(|id| early.contains_key(**id))
        .count();
    assert!(
        steel_done <= 1,
        "{steel_done} steel jobs finished before the http job got a slot"
    );
    let all = results(
        &nats,
        &["steel-a".to_string(), "steel-b".to_string(), "steel-c".to_string()],
        &scheduler,
    )
    .await;
    for id in ["steel-a", "steel-b", "steel-c"] {
        assert_eq!(all[id]["status"], "ok", "{}", all[id]);
    }
    assert_eq!(w.site.most_at_once.load(Ordering::SeqCst), 1);
    drop(base);
}
