//! The synthetic suite as CI runs it: the shipped `synthetic/checks.yaml`
//! against the shipped policy, agents and tokens, with a real nats-server,
//! the real gateway, scheduler and Chromium workers, while Debian's
//! Prometheus scrapes the gateway and evaluates `deploy/prometheus/rules/`.
//! Afterwards the SLO recording rules must hold the values this run
//! produced, and every metric the rules and the Grafana dashboard use must
//! be one the gateway really exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::Killed;
use support::nats::{NatsServer, free_port};

use super::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// The shipped policy, with its pricing table found from a temporary copy.
fn shipped_policy() -> String {
    let policy = std::fs::read_to_string(repo("policies/default.yaml")).unwrap();
    let pricing = repo("policies/pricing.yaml");
    let rewritten = policy.replace(
        "pricing_file: pricing.yaml",
        &format!("pricing_file: {}", pricing.display()),
    );
    assert_ne!(
        rewritten, policy,
        "the shipped policy names its pricing file differently now"
    );
    rewritten
}

struct Prometheus {
    _child: Killed,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}/*.yaml\n\
                 scrape_configs:\n  - job_name: clawgress-gateway\n    static_configs:\n      - targets: ['{target}']\n",
                repo("deploy/prometheus/rules").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _child: Killed(child),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{}/-/ready", prometheus.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            let log = std::fs::read_to_string(prometheus._dir.path().join("prometheus.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "prometheus did not become ready:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query's samples: (labels, value).
    async fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let body: serde_json::Value = client
            .get(reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", expr)]).unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// Waits for the expression to have a sample that satisfies `ok`.
    async fn wait_for(&self, expr: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let samples = self.query(expr).await;
            if let Some((_, value)) = samples.iter().find(|(_, v)| ok(*v)) {
                return *value;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} never had the expected value: {samples:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn alerts(&self) -> Vec<(String, String)> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let body: serde_json::Value = client
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or_default().to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn the_shipped_synthetic_suite_passes_and_prometheus_sees_the_slos() {
    let Some(nats) = NatsServer::start() else { return };
    if !Path::new("/usr/bin/chromium-headless-shell").exists() && !Path::new("/usr/bin/chromium").exists() {
        support::skip("no Chromium (./deploy/local/prereqs.sh chromium; `make test` does)");
        return;
    }
    let Some(prometheus_bin) = which("prometheus") else {
        support::skip("prometheus not found (./deploy/local/prereqs.sh prometheus; `make test` does)");
        return;
    };
    let agents = std::fs::read_to_string(repo("policies/agents.example.yaml")).unwrap();
    let tokens = repo("policies/admin-tokens.example.yaml");
    let gw = GatewayProc::start_with(
        &shipped_policy(),
        &agents,
        &["--admin-tokens", tokens.to_str().unwrap(), "--nats", &nats.url],
    );
    let prometheus = Prometheus::start(&prometheus_bin, gw.admin).await;
    // Scraped once before the run, so the run's first events are increases
    // from the zeros the gateway starts with, as in production.
    prometheus
        .wait_for(r#"up{job="clawgress-gateway"}"#, |v| v == 1.0)
        .await;
    let scheduler_log = gw.dir.path().join("scheduler.log");
    let _scheduler = Killed(
        Command::new(support::clawgress_bin())
            .args(["scheduler", "--nats", &nats.url, "--gateway", &gw.proxy_url()])
            .arg("--credentials")
            .arg(repo("policies/credentials.example.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&scheduler_log).unwrap())
            .spawn()
            .unwrap(),
    );

    let junit = gw.dir.path().join("junit.xml");
    let run = tokio::process::Command::new(support::clawgress_bin())
        .current_dir(REPO)
        .args([
            "synthetic",
            "run",
            "synthetic/checks.yaml",
            "--serve-fixtures",
            "--junit",
        ])
        .arg(&junit)
        .env("CLAWGRESS_GATEWAY", gw.proxy_url())
        .env("CLAWGRESS_ADMIN_URL", format!("http://{}", gw.admin))
        .env("NATS_URL", &nats.url)
        .env("CLAWGRESS_SYNTHETIC_KEY", "scraper-001-demo-key")
        .env("CLAWGRESS_ADMIN_TOKEN", "viewer-demo-token")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the suite finished within 300 s")
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the shipped suite failed:\n{summary}\n{}\nscheduler:\n{}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&scheduler_log).unwrap_or_default(),
        gw.log()
    );
    assert!(summary.contains("6 passed, 0 failed, 0 could not run"), "{summary}");
    for line in [
        "PASS  scrape / static page",
        "PASS  scrape / JavaScript-rendered page",
        "PASS  scrape / JSON API",
        "PASS  illegal_destination / http://illegal.synthetic.localhost:3019/exfiltrate",
        "PASS  illegal_destination / http://127.0.0.1:3019/exfiltrate",
        "PASS  rate_limit / 100-request burst",
        "fetched by chromium",
        "audited by the gateway: egress_request, agent scraper-001, allowed by synthetic_checks",
        "saw 0 connection(s)",
        "100/100 completed",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuites name="clawgress-synthetic" tests="6" failures="0" errors="0""#),
        "{xml}"
    );
    // The gateway's own record agrees: the illegal attempts were denied
    // with an alert, under the scraper's identity.
    let audit = gw.audit_lines();
    for host in ["illegal.synthetic.localhost", "127.0.0.1"] {
        assert!(
            audit.iter().any(|l| l["type"] == "egress_denied"
                && l["alert"] == true
                && l["request"]["domain"] == host
                && l["agent_id"] == "scraper-001"),
            "no alerting denial for {host}"
        );
    }

    every_metric_in_rules_and_dashboards_is_exported(&gw.metrics().await);

    // The recording rules, evaluated by Prometheus over what this run did.
    let success = prometheus.wait_for("egress:success_ratio:rate5m", |v| v > 0.0).await;
    assert_eq!(success, 1.0, "every allowed request of the run succeeded");
    let errors = prometheus
        .wait_for("egress:proxy_error_ratio:rate5m", |v| v >= 0.0)
        .await;
    assert_eq!(errors, 0.0);
    let p95 = prometheus.wait_for("egress:latency_seconds:p95_5m", |v| v > 0.0).await;
    assert!(p95 < 2.0, "local fixtures answer well under the 2 s SLO: {p95}");
    let volume = prometheus.wait_for("egress:bytes:projected_month", |v| v > 0.0).await;
    assert!(volume < 1e12, "{volume}");
    prometheus
        .wait_for(
            r#"egress:requests_rate_limited:rate5m{reason="rate_limit_exceeded"}"#,
            |v| v > 0.0,
        )
        .await;
    for reason in ["domain_not_in_allowlist", "private_address"] {
        prometheus
            .wait_for(
                &format!(r#"egress:requests_blocked:rate5m{{reason="{reason}"}}"#),
                |v| v > 0.0,
            )
            .await;
    }
    // The alert table's rows for what happened are raised; the rows for
    // what did not happen are not.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = prometheus.alerts().await;
        let raised = |name: &str| alerts.iter().any(|(n, _)| n == name);
        if raised("EgressBlockedDomainRequest") && raised("EgressRateLimitExceeded") {
            for quiet in [
                "EgressDataExfiltrationAttempt",
                "EgressCertificateError",
                "EgressProxyErrorRateHigh",
                "EgressLatencyP95High",
            ] {
                assert!(!raised(quiet), "{quiet} raised on a healthy run: {alerts:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expected alerts were not raised: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every metric name an expression uses: identifiers that are not
/// functions, keywords, label names, recording rules or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may put `by (...)` before their parenthesis.
    const KEYWORDS: [&str; 30] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "le",
        "atan2",
        "start",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut depth_braces, mut grouping) = (0, 0usize, false);
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '"' | '\'' | '`' => {
                // Skip a string literal.
                i += 1;
                while i < bytes.len() && bytes[i] as char != c {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            '{' => depth_braces += 1,
            '}' => depth_braces = depth_braces.saturating_sub(1),
            '[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            ')' => grouping = false,
            '$' => {
                // A Grafana variable.
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"_{}".contains(&bytes[i])) {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                if matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    grouping = true;
                } else if depth_braces == 0
                    && !grouping
                    && next != Some('(')
                    && !KEYWORDS.contains(&word)
                    && !word.contains(':')
                {
                    names.insert(word.to_string());
                }
                continue;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (1e12, 5m).
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

fn every_metric_in_rules_and_dashboards_is_exported(metrics: &str) {
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| exported.contains(base)))
    };
    let mut expressions: Vec<(String, String)> = Vec::new();
    let mut recorded = BTreeSet::new();
    for entry in std::fs::read_dir(repo("deploy/prometheus/rules")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap().to_string();
                if let Some(record) = rule["record"].as_str() {
                    recorded.insert(record.to_string());
                }
                expressions.push((
                    format!("{} {name}", path.display()),
                    rule["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/egress-slo.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut dashboard_records = BTreeSet::new();
    for panel in panels
        .iter()
        .chain(panels.iter().flat_map(|p| p["panels"].as_array().into_iter().flatten()))
    {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?");
                expressions.push((format!("dashboard panel '{title}'"), expr.to_string()));
                let mut rest = expr;
                while let Some(at) = rest.find("egress:") {
                    let word: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    rest = &rest[at + word.len()..];
                    dashboard_records.insert(word);
                }
            }
        }
    }
    assert!(
        expressions.len() > 20,
        "too few expressions found: {}",
        expressions.len()
    );
    let mut unknown = Vec::new();
    for (where_, expr) in &expressions {
        for name in metric_names(expr) {
            if !known(&name) {
                unknown.push(format!("{where_}: {name} (in `{expr}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the gateway does not export:\n{}",
        unknown.join("\n")
    );
    let undefined: Vec<&String> = dashboard_records.iter().filter(|r| !recorded.contains(*r)).collect();
    assert!(
        undefined.is_empty(),
        "the dashboard uses recording rules no rule file defines: {undefined:?}"
    );
}

#[test]
fn metric_names_are_told_apart_from_functions_labels_and_rules() {
    let names = metric_names(
        r#"sum by (le, reason) (rate(http_client_duration_seconds_bucket{decision="allow",reason=~"a|b"}[5m] offset 1h)) / on(instance) group_left egress:x:rate5m > 1e12 and $__rate_interval"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["http_client_duration_seconds_bucket"]
    );
    let names = metric_names("increase(upstream_reset_events[5m]) + absent(audit_queue_depth)");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["audit_queue_depth", "upstream_reset_events"]
    );
}

/// `promtool check rules` and the rules' unit tests (one or more per
/// alert), as `deploy/prometheus/check.sh` runs them.
#[test]
fn the_slo_rules_pass_promtool_and_their_unit_tests() {
    if which("promtool").is_none() {
        support::skip("promtool not found (./deploy/local/prereqs.sh prometheus; `make test` does)");
        return;
    }
    let out = Command::new("bash")
        .arg(repo("deploy/prometheus/check.sh"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert has a unit test that names it.
    let tests: String = std::fs::read_dir(repo("deploy/prometheus/tests"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for entry in std::fs::read_dir(repo("deploy/prometheus/rules")).unwrap() {
        let doc: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(alert) = rule["alert"].as_str() {
                    assert!(
                        tests.contains(&format!("alertname: {alert}")),
                        "no unit test for {alert}"
                    );
                    assert!(rule["labels"]["severity"].is_string(), "{alert} has no severity");
                }
            }
        }
    }
}

/// The synthetic CronJob (`deploy/k8s/base/`) against Kubernetes' own
/// schemas (strict: an unknown field is an error), offline.
#[test]
fn the_kubernetes_manifests_match_the_kubernetes_schemas() {
    let venv = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("clawgress/venv/bin/kubernetes-validate"));
    let Some(validator) = which("kubernetes-validate").or(venv.filter(|p| p.is_file())) else {
        support::skip("kubernetes-validate not found (./deploy/local/prereqs.sh k8s-schemas; `make test` does)");
        return;
    };
    // The rest of deploy/k8s is rendered and validated whole in deploy.rs.
    let manifests = [repo("deploy/k8s/base/synthetic-cronjob.yaml")];
    let out = Command::new(validator)
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .args(&manifests)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cronjob/clawgress-synthetic"), "{text}");
    // The CronJob runs a command this binary has, with the shipped file's name.
    let cronjob = std::fs::read_to_string(repo("deploy/k8s/base/synthetic-cronjob.yaml")).unwrap();
    assert!(cronjob.contains(r#"["clawgress", "synthetic", "run", "/etc/clawgress/synthetic/checks.yaml", "--junit""#));
    let help = Command::new(support::clawgress_bin())
        .args(["synthetic", "run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--junit"));
}
