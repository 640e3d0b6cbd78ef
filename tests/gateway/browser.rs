//! The chromium backend against the real gateway, with Debian's Chromium:
//! a JavaScript-rendered page, the page's own requests egressing through the
//! gateway under the job's agent, denials, and crash recovery.

use std::collections::BTreeMap;

use clawgress_workers::chromium::{BROWSERS, ChromiumConfig, ChromiumPool};
use clawgress_workers::credentials::Credentials;
use clawgress_workers::extract::extract;
use clawgress_workers::job::{ExtractSpec, FetchMode, RetryPolicy, ScrapeJob, Take};
use clawgress_workers::outcome::FetchError;

use super::*;

mod warm;

fn pool(w: &World) -> Option<ChromiumPool> {
    pool_with(w, ChromiumConfig::default())
}

fn pool_with(w: &World, mut config: ChromiumConfig) -> Option<ChromiumPool> {
    // Through the launcher, as the scheduler does: the browser dies with
    // this test's thread, however the test ends.
    config.launcher.get_or_insert_with(support::clawgress_bin);
    if !config.executable.exists() {
        support::skip(&format!(
            "{} not found (install it with ./deploy/local/prereqs.sh chromium; `make test` does)",
            config.executable.display()
        ));
        return None;
    }
    let credentials = Credentials::from_pairs([
        (SCRAPER.0.to_string(), SCRAPER.1.to_string()),
        (AI_AGENT.0.to_string(), AI_AGENT.1.to_string()),
    ]);
    Some(ChromiumPool::new(format!("http://{}", w.gw.proxy), credentials, config))
}

fn job(url: String, wait_for: Option<&str>) -> ScrapeJob {
    ScrapeJob {
        id: "browser-1".into(),
        agent: SCRAPER.0.into(),
        url,
        method: "GET".into(),
        headers: BTreeMap::new(),
        body: None,
        fetch: FetchMode::Chromium,
        extract: BTreeMap::new(),
        wait_for: wait_for.map(str::to_string),
        screenshot: true,
        timeout: Duration::from_secs(30),
        priority: Default::default(),
        retry: RetryPolicy::default(),
    }
}

#[tokio::test]
async fn a_javascript_page_renders_and_every_request_goes_through_the_gateway() {
    // With each of Debian's browsers the workers can use.
    for executable in BROWSERS {
        let w = world("enforce").await;
        let config = ChromiumConfig {
            executable: executable.into(),
            ..ChromiumConfig::default()
        };
        let Some(pool) = pool_with(&w, config) else { continue };
        let port = w.origin.addr.port();
        let (page, extras) = pool
            .fetch(&job(format!("http://site.test:{port}/js"), Some(".rendered")))
            .await
            .unwrap_or_else(|e| panic!("{executable}: {e}"));
        assert_eq!(page.status, 200);
        let specs = BTreeMap::from([(
            "heading".to_string(),
            ExtractSpec {
                selector: "h1.rendered".into(),
                take: Take::Text,
                list: false,
                required: true,
            },
        )]);
        let found = extract(&page.body, &specs);
        assert_eq!(
            found.values["heading"], "Rendered by JavaScript: hello from upstream",
            "{executable}"
        );
        assert!(extras.screenshot.is_some_and(|png| png.len() > 100), "{executable}");
        // Both the page and the request its script made were the gateway's, as the agent.
        let page_line =
            w.gw.wait_audit(|l| l["request"]["path"] == "/js" && l["decision"] == "allow")
                .await;
        assert_eq!(page_line["agent_id"], SCRAPER.0);
        let script_line =
            w.gw.wait_audit(|l| l["request"]["path"] == "/hello" && l["decision"] == "allow")
                .await;
        assert_eq!(script_line["agent_id"], SCRAPER.0);
        pool.shutdown().await;
    }
}

#[tokio::test]
async fn a_browser_is_replaced_after_its_share_of_jobs_and_the_old_one_exits() {
    let w = world("enforce").await;
    let config = ChromiumConfig {
        jobs_per_browser: 2,
        ..ChromiumConfig::default()
    };
    let Some(pool) = pool_with(&w, config) else { return };
    let port = w.origin.addr.port();
    let mut profiles = Vec::new();
    for _ in 0..3 {
        let (page, _) = pool
            .fetch(&job(format!("http://site.test:{port}/page"), Some("h1")))
            .await
            .unwrap();
        assert!(page.body.contains("Clawgress fixture"));
        profiles.push(pool.profile_dir().await.expect("a running browser"));
    }
    assert_eq!(
        pool.launches(),
        2,
        "two jobs per browser: the third job starts a second one"
    );
    assert_eq!(profiles[0], profiles[1]);
    assert_ne!(profiles[1], profiles[2]);
    // The first browser closed once its last job did: no process names its
    // profile any more.
    let first = profiles[0].display().to_string();
    let running = std::process::Command::new("pgrep")
        .args(["-f", &first])
        .output()
        .expect("pgrep runs");
    assert!(running.stdout.is_empty(), "the retired browser still runs: {running:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_denied_page_is_a_denial_and_a_crashed_browser_is_replaced() {
    let w = world("enforce").await;
    let Some(pool) = pool(&w) else { return };
    let port = w.origin.addr.port();
    let denied = pool
        .fetch(&job(format!("http://unlisted.test:{port}/hello"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, FetchError::Denied { reason, .. } if reason == "domain_not_in_allowlist"),
        "{denied:?}"
    );
    assert_eq!(pool.launches(), 1);

    // Kill the browser behind the pool's back: the next job gets a new one.
    let profile = pool.profile_dir().await.expect("a running browser");
    let _ = std::process::Command::new("pkill")
        .args(["-9", "-f", &profile.display().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after = None;
    for _ in 0..3 {
        match pool
            .fetch(&job(format!("http://site.test:{port}/page"), Some("h1")))
            .await
        {
            Ok(page) => {
                after = Some(page);
                break;
            }
            // The first call may still see the dying connection.
            Err(error) => eprintln!("after the crash: {error}"),
        }
    }
    let page = after.expect("the pool recovers from a crashed browser");
    assert!(page.0.body.contains("Clawgress fixture"));
    assert_eq!(pool.launches(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_page_whose_certificate_the_browser_cannot_trust_is_not_returned() {
    // With TLS passthrough the gateway lets the tunnel through (tls.test is
    // allowed) and only the browser sees the certificate: an untrusted one
    // must end the job, not be clicked through.
    let w = world("enforce").await;
    let Some(pool) = pool(&w) else { return };
    let port = w.tls.addr.port();
    let mut untrusted = job(format!("https://tls.test:{port}/hello"), None);
    untrusted.screenshot = false;
    let error = pool.fetch(&untrusted).await.unwrap_err();
    assert!(error.to_string().contains("ERR_CERT"), "{error:?}");
    let tunnel =
        w.gw.wait_audit(|l| l["request"]["method"] == "CONNECT" && l["decision"] == "allow")
            .await;
    assert_eq!(tunnel["request"]["domain"], "tls.test");
    pool.shutdown().await;
}
