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
    // 60/min on limited.test is a burst of 6: two of eight are rate-limited.
    let limited = get(&format!("http://limited.test:{port}/page"), Some(SCRAPER));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(raw::send(w.gw.proxy, &limited, b"").await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    // A wrong key: refused before any decision, listed with the agent it claimed.
    let wrong_key = get(&format!("http://site.test:{port}/page"), Some((SCRAPER.0, "wrong-key")));
    assert_eq!(raw::send(w.gw.proxy, &wrong_key, b"").await.status, 407);
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
    // What the gateway itself reports for this traffic. The 429s and the
    // denials are not failures of the egress path: success stays at 100%.
    assert_eq!(data["slo"]["success_ratio"]["value"], 1.0, "{data:#}");
    assert_eq!(data["slo"]["success_ratio"]["status"], "ok");
    assert_eq!(data["slo"]["proxy_error_ratio"]["value"], 0.0);
    assert_eq!(data["window"]["by_decision"]["allow"], 14);
    assert_eq!(data["window"]["by_decision"]["rate_limited"], 2);
    assert_eq!(data["window"]["blocked"]["domain_not_in_allowlist"], 3);
    assert_eq!(data["top_denied_domains"][0]["domain"], "evil.example");
    assert_eq!(data["top_denied_domains"][0]["denials"], 2);
    assert_eq!(data["top_agents"][0]["agent"], SCRAPER.0);
    assert_eq!(data["top_agents"][0]["requests"], 19);
    assert_eq!(data["top_agents"][0]["by_decision"]["rate_limited"], 2);
    let claimed = data["latest_denials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "bad_api_key")
        .unwrap_or_else(|| panic!("no 407 among the denials: {data:#}"));
    assert_eq!(claimed["claimed_agent"], SCRAPER.0);
    assert_eq!(claimed["host"], "site.test");
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
    for expected in [
        "evil.example",
        "exfil.example:80",
        "domain_not_in_allowlist",
        SCRAPER.0,
        &format!("{} (claimed)", SCRAPER.0),
        &format!("site.test:{port}"),
    ] {
        assert!(cells.iter().any(|c| c == expected), "{expected} not shown: {cells:?}");
    }
    let text = |selector: &str| -> Vec<String> {
        let selector = scraper::Selector::parse(selector).unwrap();
        document.select(&selector).map(|e| e.text().collect()).collect()
    };
    // Top agents count the 429s in a column of their own.
    assert_eq!(
        text("#agents th"),
        ["agent", "requests", "allowed", "denied", "429 rate-limited"]
    );
    let scraper_row = text("#agents tbody tr:first-child td");
    assert_eq!(scraper_row, [SCRAPER.0, "19", "14", "3", "2"], "{html}");
    // The footnote says what the success rate leaves out.
    let note = text("#note-slo").concat();
    assert!(
        note.contains("Rate-limited (429)") && note.contains("excluded"),
        "{note}"
    );
    // Sparklines have scales: top and bottom values, and their time span.
    assert!(text("#spark-rate-hi")[0].ends_with(" req/s"), "{html}");
    assert_eq!(text("#spark-rate-lo")[0], "0.00 req/s");
    assert_eq!(text("#spark-success-hi")[0], "100%");
    assert!(text(".spark-from").iter().all(|t| t.ends_with(" ago")), "{html}");
    // One time format, in UTC, and said so.
    assert_eq!(text("#denials th")[0], "time (UTC)");
    let time = &text("#denials tbody tr:first-child td")[0];
    let shape = |t: &str| {
        t.len() == 19
            && t.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b' ',
                13 | 16 => b == b':',
                _ => b.is_ascii_digit(),
            })
    };
    assert!(shape(time), "{time}");
    let updated = text("#status").concat();
    assert!(
        updated.starts_with("updated ") && updated.ends_with(" UTC"),
        "{updated}"
    );
    assert!(shape(&updated["updated ".len()..updated.len() - 4]), "{updated}");

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
