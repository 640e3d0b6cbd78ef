//! The job pipeline end to end: a real nats-server, the real gateway, the
//! real `clawgress scheduler`, jobs published with `clawgress submit`.

use std::process::{Child, Command, Stdio};

use support::nats::NatsServer;

use super::*;

struct Pipeline {
    w: World,
    nats: NatsServer,
    dir: tempfile::TempDir,
    scheduler: Option<Child>,
}

impl Pipeline {
    async fn start() -> Option<Pipeline> {
        let nats = NatsServer::start()?;
        let w = world("enforce").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("credentials.yaml"),
            format!(
                "agents:\n  {}: {}\n  {}: {}\n",
                SCRAPER.0, SCRAPER.1, AI_AGENT.0, AI_AGENT.1
            ),
        )
        .unwrap();
        Some(Pipeline {
            w,
            nats,
            dir,
            scheduler: None,
        })
    }

    fn start_scheduler(&mut self, concurrency: usize) {
        self.start_scheduler_with(concurrency, &[]);
    }

    fn start_scheduler_with(&mut self, concurrency: usize, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("scheduler.log"))
            .unwrap();
        let child = Command::new(support::clawgress_bin())
            .args(["scheduler", "--nats", &self.nats.url])
            .args(["--gateway", &format!("http://{}", self.w.gw.proxy)])
            .arg("--credentials")
            .arg(self.dir.path().join("credentials.yaml"))
            .args(["--concurrency", &concurrency.to_string(), "--ack-wait-secs", "3"])
            .args(extra)
            .env("CLAWGRESS_LOG", "info")
            // A fake key for the fake provider the tests run on 127.0.0.1.
            .env("OPENAI_API_KEY", "sk-test-not-a-real-key")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.scheduler = Some(child);
    }

    fn kill_scheduler(&mut self) {
        if let Some(mut child) = self.scheduler.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
    }

    /// Publishes JSON-lines jobs with `clawgress submit`; returns its stderr.
    fn submit(&self, jobs: &[serde_json::Value]) -> String {
        let file = self.dir.path().join(format!("jobs-{}.jsonl", rand_suffix()));
        let text: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        std::fs::write(&file, text.join("\n")).unwrap();
        let output = Command::new(support::clawgress_bin())
            .args(["submit", "--nats", &self.nats.url])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "submit failed: {stderr}");
        stderr
    }

    /// All results so far, by job id (`clawgress results`).
    fn results(&self) -> std::collections::HashMap<String, serde_json::Value> {
        let output = Command::new(support::clawgress_bin())
            .args(["results", "--json", "--nats", &self.nats.url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| (r["job_id"].as_str().unwrap_or_default().to_string(), r))
            .collect()
    }

    async fn wait_results(&self, ids: &[&str]) -> std::collections::HashMap<String, serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let results = self.results();
            if ids.iter().all(|id| results.contains_key(*id)) {
                return results;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "results for {ids:?} never came; have {:?}\nscheduler log:\n{}",
                results.keys().collect::<Vec<_>>(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(mut child) = self.scheduler.take() {
            support::stop_child(&mut child, Duration::from_secs(10));
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn scrape(id: &str, url: String) -> serde_json::Value {
    serde_json::json!({"version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0, "url": url, "fetch": "http"})
}

#[tokio::test]
async fn jobs_are_scraped_through_the_gateway_and_answered_by_outcome() {
    let Some(mut p) = Pipeline::start().await else { return };
    p.start_scheduler(4);
    let port = p.w.origin.addr.port();
    let mut ok = scrape("page-1", format!("http://site.test:{port}/page"));
    ok["extract"] = serde_json::json!({"title": {"selector": "h1.title", "required": true},
                                       "links": {"selector": ".items a", "take": "attr", "attr": "href", "list": true}});
    let denied = scrape("denied-1", format!("http://unlisted.test:{port}/hello"));
    let invalid =
        serde_json::json!({"version": 1, "type": "scrape", "id": "invalid-1", "agent": SCRAPER.0, "url": "ftp://nope"});
    let unknown_agent = serde_json::json!({"version": 1, "type": "scrape", "id": "stranger-1", "agent": "ghost", "url": "http://site.test/"});
    let mut dead = scrape("dead-1", format!("http://site.test:{port}/status/503"));
    dead["retry"] = serde_json::json!({"max_attempts": 2, "base_delay": "100ms"});
    // `clawgress submit` checks jobs before publishing...
    let file = p.dir.path().join("bad.jsonl");
    std::fs::write(&file, format!("{}\n{}\n", denied, invalid)).unwrap();
    let refused = Command::new(support::clawgress_bin())
        .args(["submit", "--nats", &p.nats.url])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bad.jsonl:2: url:"));
    let stderr = p.submit(&[ok.clone(), denied, dead]);
    assert!(stderr.contains("published 3"), "{stderr}");
    // ...but any publisher may put anything on the subject (the streams
    // exist now); the worker answers it.
    let client = async_nats::connect(&p.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for (job, subject) in [
        (invalid.to_string(), "jobs.scrape.normal"),
        (unknown_agent.to_string(), "jobs.scrape.normal"),
        ("{not json".to_string(), "jobs.scrape.low"),
    ] {
        js.publish(subject, job.into()).await.unwrap().await.unwrap();
    }
    // The same id again is stored once.
    assert!(p.submit(&[ok]).contains("1 duplicate"), "dedup by job id");

    let results = p
        .wait_results(&["page-1", "denied-1", "invalid-1", "stranger-1", "dead-1"])
        .await;
    let page = &results["page-1"];
    assert_eq!(page["status"], "ok", "{page}");
    assert_eq!(page["data"]["title"], "Clawgress fixture");
    assert_eq!(page["data"]["links"], serde_json::json!(["/a", "/b"]));
    let request_id = page["fetch"]["request_id"].as_str().unwrap();
    assert_eq!(p.w.gw.audit_for(request_id).await["agent_id"], SCRAPER.0);

    let denied = &results["denied-1"];
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["error"]["reason"], "domain_not_in_allowlist");
    assert_eq!(denied["attempts"], 1, "a policy denial is never retried");

    assert_eq!(results["invalid-1"]["status"], "invalid");
    assert_eq!(results["invalid-1"]["error"]["field"], "url");
    assert_eq!(results["stranger-1"]["error"]["field"], "agent");
    // The unparseable message (low priority) is answered too, under an id of its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let garbage = loop {
        let found = p.results().into_values().find(|r| {
            r["job_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("invalid-") && id != "invalid-1")
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer for unparseable bytes:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(garbage["status"], "invalid");
    assert_eq!(garbage["error"]["field"], "(job)");

    let dead = &results["dead-1"];
    assert_eq!(dead["status"], "failed");
    assert_eq!(dead["attempts"], 2);
    let list = Command::new(support::clawgress_bin())
        .args(["dlq", "list", "--nats", &p.nats.url])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("dead-1") && listed.contains("origin_error"), "{listed}");
    assert!(!listed.contains("denied-1"), "denials are answered, not dead-lettered");
    p.kill_scheduler();
}

#[tokio::test]
async fn rate_limited_jobs_wait_the_gateways_retry_after_and_all_finish() {
    let Some(mut p) = Pipeline::start().await else { return };
    p.start_scheduler(8);
    let port = p.w.origin.addr.port();
    // limited.test allows 60/min with a burst of 6: ten jobs need retries.
    let jobs: Vec<_> = (0..10)
        .map(|i| {
            let mut job = scrape(&format!("limited-{i}"), format!("http://limited.test:{port}/hello"));
            // One attempt: waiting as the gateway asks is not a failed attempt.
            job["retry"] = serde_json::json!({"max_attempts": 1, "base_delay": "100ms"});
            job
        })
        .collect();
    p.submit(&jobs);
    let ids: Vec<String> = (0..10).map(|i| format!("limited-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = p.wait_results(&ids).await;
    assert!(results.values().all(|r| r["status"] == "ok"), "{results:?}");
    assert!(results.values().all(|r| r["attempts"] == 1), "{results:?}");
    let limited =
        p.w.gw
            .audit_lines()
            .into_iter()
            .filter(|l| l["type"] == "egress_rate_limited")
            .count();
    assert!(limited >= 1);
}

#[tokio::test]
async fn high_priority_jobs_run_before_normal_and_low() {
    let Some(mut p) = Pipeline::start().await else { return };
    let port = p.w.origin.addr.port();
    let mut jobs = Vec::new();
    for (priority, count) in [("low", 3), ("normal", 3), ("high", 3)] {
        for i in 0..count {
            let mut job = scrape(&format!("{priority}-{i}"), format!("http://site.test:{port}/hello"));
            job["priority"] = priority.into();
            jobs.push(job);
        }
    }
    // Published before any scheduler runs, lowest first.
    p.submit(&jobs);
    p.start_scheduler(1);
    let ids: Vec<String> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = p.wait_results(&ids).await;
    let finished = |prefix: &str| -> Vec<String> {
        results
            .values()
            .filter(|r| r["job_id"].as_str().unwrap().starts_with(prefix))
            .map(|r| r["finished_at"].as_str().unwrap().to_string())
            .collect()
    };
    let (high, normal, low) = (finished("high"), finished("normal"), finished("low"));
    assert!(
        high.iter().max() < normal.iter().min(),
        "high {high:?} before normal {normal:?}"
    );
    assert!(
        normal.iter().max() < low.iter().min(),
        "normal {normal:?} before low {low:?}"
    );
}

#[tokio::test]
async fn no_job_is_lost_when_the_scheduler_is_killed_mid_run() {
    let Some(mut p) = Pipeline::start().await else { return };
    let port = p.w.origin.addr.port();
    let jobs: Vec<_> = (0..40)
        .map(|i| scrape(&format!("k-{i}"), format!("http://a.wild.test:{port}/hello")))
        .collect();
    p.submit(&jobs);
    p.start_scheduler(2);
    // Kill it without warning once some, not all, are done.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.results().len() < 5 {
        assert!(std::time::Instant::now() < deadline, "no progress: {}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill_scheduler();
    let before = p.results().len();
    p.start_scheduler(4);
    let ids: Vec<String> = (0..40).map(|i| format!("k-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = p.wait_results(&ids).await;
    println!("{before} results before the kill, {} after", results.len());
    let failed: Vec<_> = results.values().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn auto_jobs_escalate_to_chromium_for_javascript_pages_and_remember_it() {
    if clawgress_workers::chromium::find_browser().is_none() {
        support::skip("no Chromium found (./deploy/local/prereqs.sh chromium; `make test` installs it)");
        return;
    }
    let Some(mut p) = Pipeline::start().await else { return };
    let metrics = support::nats::free_port();
    p.start_scheduler_with(2, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let port = p.w.origin.addr.port();
    let mut shell = scrape("auto-1", format!("http://site.test:{port}/js"));
    shell["fetch"] = "auto".into();
    shell["extract"] = serde_json::json!({"heading": {"selector": "h1.rendered", "required": true}});
    let mut plain = scrape("chromium-1", format!("http://site.test:{port}/page"));
    plain["fetch"] = "chromium".into();
    plain["wait_for"] = "h1.title".into();
    plain["screenshot"] = true.into();
    p.submit(&[shell, plain]);
    let results = p.wait_results(&["auto-1", "chromium-1"]).await;
    let auto = &results["auto-1"];
    assert_eq!(auto["status"], "ok", "{auto}");
    assert_eq!(
        auto["fetch"]["tier"], "chromium",
        "http saw an empty shell; the browser rendered it"
    );
    assert_eq!(auto["data"]["heading"], "Rendered by JavaScript: hello from upstream");
    let shot = &results["chromium-1"];
    assert_eq!(shot["status"], "ok", "{shot}");
    assert!(shot["screenshot"].as_str().is_some_and(|png| png.len() > 100));

    // The host's tier is remembered: the next auto job there starts in the browser.
    let mut again = scrape("auto-2", format!("http://site.test:{port}/js"));
    again["fetch"] = "auto".into();
    again["extract"] = serde_json::json!({"heading": {"selector": "h1.rendered", "required": true}});
    p.submit(&[again]);
    let results = p.wait_results(&["auto-2"]).await;
    assert_eq!(results["auto-2"]["fetch"]["tier"], "chromium");
    let js_fetches =
        p.w.gw
            .audit_lines()
            .into_iter()
            // Chromium asks without a credential first: those 407s are
            // audited with their destination too, but fetched nothing.
            .filter(|l| l["request"]["path"] == "/js" && l["type"] == "egress_request")
            .count();
    assert_eq!(js_fetches, 3, "http once, then the browser twice");
    // Three browser jobs of one agent: each opened a page or took the warm
    // one an earlier job left, and the last came after both were free.
    let text = String::from_utf8(
        support::raw::send(
            SocketAddr::from(([127, 0, 0, 1], metrics)),
            "GET /metrics HTTP/1.1\r\nHost: scheduler\r\nConnection: close",
            b"",
        )
        .await
        .body,
    )
    .unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    let (opened, reused) = (
        value("clawgress_browser_contexts_opened_total"),
        value("clawgress_browser_pages_reused_total"),
    );
    assert_eq!(opened + reused, 3, "{text}");
    assert!(reused >= 1, "{text}");
    assert_eq!(value("clawgress_browser_launches_total"), 1);
}

#[tokio::test]
async fn no_job_is_lost_when_nats_server_is_killed_mid_run() {
    let Some(mut p) = Pipeline::start().await else { return };
    let port = p.w.origin.addr.port();
    let jobs: Vec<_> = (0..40)
        .map(|i| scrape(&format!("n-{i}"), format!("http://a.wild.test:{port}/hello")))
        .collect();
    p.submit(&jobs);
    p.start_scheduler(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.results().len() < 5 {
        assert!(std::time::Instant::now() < deadline, "no progress: {}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.nats.crash_and_restart();
    let ids: Vec<String> = (0..40).map(|i| format!("n-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = p.wait_results(&ids).await;
    let failed: Vec<_> = results.values().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_jobs_and_loses_none() {
    let Some(mut p) = Pipeline::start().await else { return };
    let port = p.w.origin.addr.port();
    let jobs: Vec<_> = (0..30)
        .map(|i| scrape(&format!("t-{i}"), format!("http://a.wild.test:{port}/hello")))
        .collect();
    p.submit(&jobs);
    p.start_scheduler(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.results().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no progress: {}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child = p.scheduler.as_mut().unwrap();
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    // Polled, not waited: this test's runtime also serves the origin the
    // draining jobs are still talking to.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "a drained scheduler exits cleanly: {status:?}\n{}",
        p.log()
    );
    assert!(p.log().contains("scheduler draining"));
    p.scheduler = None;
    p.start_scheduler(4);
    let ids: Vec<String> = (0..30).map(|i| format!("t-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = p.wait_results(&ids).await;
    assert!(
        results.values().all(|r| r["status"] == "ok" && r["attempts"] == 1),
        "{results:?}"
    );
    assert!(!p.log().contains("WARN"), "{}", p.log());
}

#[tokio::test]
async fn agent_jobs_drive_the_browser_and_call_llms_through_the_gateway() {
    if clawgress_workers::chromium::find_browser().is_none() {
        support::skip("no Chromium found (./deploy/local/prereqs.sh chromium; `make test` installs it)");
        return;
    }
    let Some(mut p) = Pipeline::start().await else { return };
    p.start_scheduler(2);
    let port = p.w.origin.addr.port();
    let llm = serde_json::json!({"llm": {"provider": "openai", "model": "gpt-test", "base_url": format!("http://ai.test:{port}"),
                                 "messages": [{"role": "user", "content": "summarize the page"}]}});
    let job = serde_json::json!({
        "version": 1, "type": "agent", "id": "agent-1", "agent": AI_AGENT.0,
        "budget": {"max_steps": 10, "max_tokens": 1000},
        "steps": [
            {"goto": format!("http://site.test:{port}/js")},
            {"wait_for": "h1.rendered"},
            {"extract": {"heading": {"selector": "h1.rendered", "required": true}}},
            {"evaluate": "document.title"},
            {"screenshot": {}},
            llm
        ]
    });
    // The scraper's role may not reach the AI provider: the gateway says so.
    let mut denied = job.clone();
    denied["id"] = "agent-2".into();
    denied["agent"] = SCRAPER.0.into();
    let mut over = job.clone();
    over["id"] = "agent-3".into();
    over["budget"]["max_tokens"] = 10.into();
    p.submit(&[job, denied, over]);
    let results = p.wait_results(&["agent-1", "agent-2", "agent-3"]).await;
    let ok = &results["agent-1"];
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(ok["data"]["heading"], "Rendered by JavaScript: hello from upstream");
    assert_eq!(ok["data"]["step_3"], "JS");
    assert_eq!(ok["data"]["llm_5"], "echo: summarize the page");
    assert_eq!(ok["data"]["_tokens"], 42);
    assert!(ok["screenshot"].as_str().is_some());
    let llm_line =
        p.w.gw
            .wait_audit(|l| l["request"]["path"] == "/v1/chat/completions" && l["agent_id"] == AI_AGENT.0)
            .await;
    assert_eq!(
        llm_line["decision"], "allow",
        "the provider call went through the gateway"
    );
    let refused =
        p.w.gw
            .wait_audit(|l| l["request"]["path"] == "/v1/chat/completions" && l["agent_id"] == SCRAPER.0)
            .await;
    assert_eq!(refused["reason"], "role_not_allowed");

    let denied = &results["agent-2"];
    assert_eq!(denied["status"], "denied", "{denied}");
    assert_eq!(denied["error"]["reason"], "role_not_allowed");
    assert_eq!(results["agent-3"]["error"]["code"], "budget_exceeded");
}

#[tokio::test]
async fn a_dry_run_answers_thousands_of_jobs_without_fetching_anything() {
    let Some(mut p) = Pipeline::start().await else { return };
    p.start_scheduler_with(64, &["--dry-run", "--per-domain", "64", "--chromium", "none"]);
    let port = p.w.origin.addr.port();
    // More jobs than the NATS client lets publish acks be in flight (5,000):
    // submit must keep reading acks as it publishes, not stall.
    let jobs: Vec<String> = (0..6000)
        .map(|i| scrape(&format!("dry-{i}"), format!("http://site.test:{port}/page?n={i}")).to_string())
        .collect();
    let file = p.dir.path().join("dry.jsonl");
    std::fs::write(&file, jobs.join("\n")).unwrap();
    let output = tokio::process::Command::new(support::clawgress_bin())
        .args([
            "submit",
            "--nats",
            &p.nats.url,
            "--wait",
            "--wait-secs",
            "120",
            "--json",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{}", p.log());
    assert!(stderr.contains("6000/6000") && stderr.contains("ok 6000"), "{stderr}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 6000);
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "ok" && r["fetch"]["tier"] == "dry-run"),
        "{:?}",
        results.iter().find(|r| r["fetch"]["tier"] != "dry-run")
    );
    // Nothing was fetched: the gateway never saw a request.
    assert!(p.w.gw.audit_lines().is_empty(), "{:?}", p.w.gw.audit_lines().first());
}

/// The README's first command: `clawgress up --demo` starts NATS, the
/// gateway and the scheduler, scrapes the demo site through the gateway, and
/// stops everything (its own nats-server included) on Ctrl-C.
#[tokio::test]
async fn clawgress_up_runs_the_demo_job_and_stops_everything_on_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let Some(nats) = support::nats::binary() else {
        support::skip("nats-server not found (./deploy/local/prereqs.sh nats; `make test` installs it)");
        return;
    };
    // The demo site has a fixed port, as the shipped policy allows it.
    if std::net::TcpListener::bind("127.0.0.1:3002").is_err() {
        support::skip("127.0.0.1:3002 is taken; the demo site needs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats_port = support::nats::free_port();
    let path = format!(
        "{}:{}",
        nats.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut up = tokio::process::Command::new(support::clawgress_bin())
        .args(["up", "--demo", "--nats", &format!("nats://127.0.0.1:{nats_port}")])
        .args(["--listen", &format!("127.0.0.1:{}", support::nats::free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", support::nats::free_port())])
        .arg("--state-dir")
        .arg(dir.path())
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(up.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The demo's result, printed for people: `demo: ` and the block
    // `submit --wait` prints, then how to submit one yourself.
    let block = tokio::time::timeout(Duration::from_secs(90), async {
        let mut block = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            match line.strip_prefix("demo: ") {
                Some(rest) if rest.starts_with("again, from another shell: ") => return Some(block),
                Some(rest) if !rest.starts_with("published ") => block.push(rest.to_string()),
                _ => {}
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let block = block.unwrap_or_else(|| panic!("no demo result; clawgress up said:\n{}", seen.join("\n")));
    assert!(block[0].starts_with("ok "), "{block:#?}");
    assert!(block[0].ends_with("http://localhost:3002/"), "{block:#?}");
    let shown = |text: &str| block.iter().any(|l| l.trim_start().starts_with(text));
    assert!(shown("title: Hello from the Clawgress demo site"), "{block:#?}");
    assert!(shown("200 via http in "), "{block:#?}");
    assert!(shown("request "), "{block:#?}");
    // No JSON and no nanoseconds for people.
    assert!(
        block.iter().all(|l| !l.contains('{') && !l.contains(".000")),
        "{block:#?}"
    );
    // Through the gateway, as the demo's agent.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"agent_id\":\"scraper-001\"") && l.contains("localhost")),
        "{audit}"
    );
    // Ctrl-C: everything stops, cleanly, the nats-server it started too.
    let pid = up.id().unwrap();
    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let (status, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(up.wait(), drain) })
        .await
        .expect("clawgress up stops within a minute of Ctrl-C");
    assert!(status.unwrap().success());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", nats_port)).await.is_err(),
        "the nats-server clawgress up started is still running"
    );
}
