//! The built-in `/dashboard`, loaded in Debian's headless Chromium: the
//! tiles show what the gateway reports, the denials and top domains are
//! listed, and a screenshot is kept for people to look at.

use std::path::PathBuf;
use std::process::Stdio;

use super::*;

fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/chromium");
    if path.exists() {
        Some(path)
    } else {
        support::skip("/usr/bin/chromium not found (./deploy/local/prereqs.sh chromium; `make test` does)");
        None
    }
}

/// Chromium with a fresh profile, given enough virtual time for the page's
/// script to fetch its data and render.
async fn chromium_run(browser: &PathBuf, args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--virtual-time-budget=4000", "--window-size=1280,1000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium ran")
}

#[tokio::test]
async fn the_dashboard_page_shows_what_the_gateway_reports() {
    let Some(browser) = chromium() else { return };
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    for _ in 0..8 {
        let r = raw::send(
            w.gw.proxy,
            &get(&format!("http://site.test:{port}/page"), Some(SCRAPER)),
            b"",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for host in ["evil.example", "evil.example", "exfil.example"] {
        let r = raw::send(w.gw.proxy, &get(&format!("http://{host}/x"), Some(SCRAPER)), b"").await;
        assert_eq!(r.status, 403);
    }

    let admin = format!("http://{}", w.gw.admin);
    let page = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = page.get(format!("{admin}/dashboard")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let data: serde_json::Value = page
        .get(format!("{admin}/dashboard/data.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // What the gateway itself reports for this traffic.
    assert_eq!(data["slo"]["success_ratio"]["value"], 1.0, "{data:#}");
    assert_eq!(data["slo"]["success_ratio"]["status"], "ok");
    assert_eq!(data["slo"]["proxy_error_ratio"]["value"], 0.0);
    assert_eq!(data["window"]["by_decision"]["allow"], 8);
    assert_eq!(data["window"]["blocked"]["domain_not_in_allowlist"], 3);
    assert_eq!(data["top_denied_domains"][0]["domain"], "evil.example");
    assert_eq!(data["top_denied_domains"][0]["denials"], 2);
    assert_eq!(data["top_agents"][0]["agent"], SCRAPER.0);
    assert_eq!(data["top_agents"][0]["requests"], 11);
    assert_eq!(data["latest_denials"][0]["host"], "exfil.example");

    let url = format!("{admin}/dashboard");
    let dom = chromium_run(&browser, &["--dump-dom".into(), url.clone()]).await;
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        html.contains("data-loaded=\"true\""),
        "the page never rendered its data; chromium said:\n{}\n{html}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let document = scraper::Html::parse_document(&html);
    let tile = |name: &str| {
        let selector = scraper::Selector::parse(&format!("#tile-{name}")).unwrap();
        let element = document
            .select(&selector)
            .next()
            .unwrap_or_else(|| panic!("no tile {name}"));
        let value = scraper::Selector::parse(".value").unwrap();
        let text: String = element.select(&value).next().unwrap().text().collect();
        (
            element.value().attr("data-status").unwrap_or_default().to_string(),
            element.value().attr("data-value").unwrap_or_default().to_string(),
            text,
        )
    };
    let (status, value, text) = tile("success_ratio");
    assert_eq!((status.as_str(), value.as_str(), text.as_str()), ("ok", "1", "100%"));
    let (status, _, text) = tile("proxy_error_ratio");
    assert_eq!((status.as_str(), text.as_str()), ("ok", "0%"));
    let (status, value, text) = tile("latency_p95_seconds");
    assert_eq!(status, "ok");
    let p95: f64 = value.parse().unwrap();
    assert!(p95 > 0.0 && p95 < 2.0, "{p95}");
    assert!(text.ends_with(" ms") || text.ends_with(" s"), "{text}");
    let (status, _, text) = tile("projected_month_bytes");
    assert_eq!(status, "ok");
    assert!(text.ends_with('B'), "{text}");
    // The last five minutes as sparklines, drawn from the data's history.
    let sparkline = scraper::Selector::parse("#spark-rate polyline").unwrap();
    let points = document
        .select(&sparkline)
        .next()
        .and_then(|p| p.value().attr("points"))
        .unwrap_or_else(|| panic!("no request-rate sparkline:\n{html}"));
    assert!(!points.is_empty());
    let cells: Vec<String> = document
        .select(&scraper::Selector::parse("#domains td, #denials td, #blocked td, #agents td").unwrap())
        .map(|td| td.text().collect())
        .collect();
    for expected in ["evil.example", "exfil.example:80", "domain_not_in_allowlist", SCRAPER.0] {
        assert!(cells.iter().any(|c| c == expected), "{expected} not shown: {cells:?}");
    }

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let taken = chromium_run(&browser, &[format!("--screenshot={}", shot.display()), url]).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); chromium said:\n{}",
            shot.display(),
            String::from_utf8_lossy(&taken.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[tokio::test]
async fn the_dashboard_command_prints_the_url_and_the_tiles() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let r = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/page"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let admin = format!("http://{}", w.gw.admin);
    let out = tokio::process::Command::new(support::clawgress_bin())
        .args(["egress", "dashboard", "--admin", &admin])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(&format!("{admin}/dashboard\n")), "{text}");
    assert!(text.contains("egress success rate"), "{text}");
    assert!(text.contains("100.00%"), "{text}");

    let dead = tokio::process::Command::new(support::clawgress_bin())
        .args(["egress", "dashboard", "--admin", "http://127.0.0.1:9"])
        .output()
        .await
        .unwrap();
    assert!(!dead.status.success());
    let error = String::from_utf8_lossy(&dead.stderr);
    assert!(error.contains("does not answer"), "{error}");
}
