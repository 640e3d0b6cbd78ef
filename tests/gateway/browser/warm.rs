//! Warm pages: a job's browser context and page kept for its agent's next
//! job, with nothing of the last job left in them, and never shared between
//! agents.

use super::*;

/// What `/state` found of earlier visits, and the Cookie header it got.
#[derive(Debug, PartialEq)]
struct Seen {
    found: serde_json::Value,
    cookie_header: String,
}

fn text(selector: &str) -> ExtractSpec {
    ExtractSpec {
        selector: selector.into(),
        take: Take::Text,
        list: false,
        required: true,
    }
}

async fn visit_state(pool: &ChromiumPool, w: &World, agent: &str) -> Seen {
    visit(pool, w, agent, "/state").await
}

/// `/state` at `path`, as `agent`: what the page and its iframe found.
async fn visit(pool: &ChromiumPool, w: &World, agent: &str, path: &str) -> Seen {
    let mut state = job(
        format!("http://site.test:{}{path}", w.origin.addr.port()),
        Some("#seen.done"),
    );
    state.agent = agent.into();
    state.screenshot = false;
    let (page, _) = pool.fetch(&state).await.unwrap_or_else(|e| panic!("{agent}: {e}"));
    let specs = BTreeMap::from([
        ("seen".to_string(), text("#seen")),
        ("header".to_string(), text("#header")),
    ]);
    let mut found = extract(&page.body, &specs);
    Seen {
        found: serde_json::from_str(found.values["seen"].as_str().unwrap()).unwrap(),
        cookie_header: found
            .values
            .remove("header")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn a_warm_page_serves_the_agent_s_next_job_with_nothing_of_the_last_left() {
    let w = world("enforce").await;
    let Some(pool) = pool(&w) else { return };
    let first = visit_state(&pool, &w, SCRAPER.0).await;
    // Only the cookie this very response set: none from before.
    assert_eq!(first.found["cookie"], "server=left", "{first:?}");
    assert_eq!(first.found["local"], "");
    assert_eq!(first.found["late"], "");
    assert_eq!(first.found["session"], "");
    assert_eq!(first.found["visibility"], "visible");
    assert_eq!(first.found["databases"], "");
    assert_eq!(
        first.found["frame"],
        serde_json::json!({"local": "", "session": "", "databases": ""}),
        "the iframe answered, finding nothing"
    );
    assert_eq!(first.cookie_header, "");
    // The first job left a server cookie, a script cookie, local and session
    // storage, an IndexedDB database and a history entry, and more once it
    // was over (a timer, a pagehide handler), in the page and in its
    // iframe; the next jobs, in the same page, find none of it (the fourth
    // job's end also collects garbage).
    for _ in 0..3 {
        let mut next = visit_state(&pool, &w, SCRAPER.0).await;
        // History is the page's own: never longer than a new page's.
        let history = next.found["history"].take();
        assert!(history.as_u64() <= first.found["history"].as_u64(), "{history} entries");
        next.found["history"] = first.found["history"].clone();
        assert_eq!(next, first, "what a job left reached the next one");
    }
    // The iframe each visit loads is not a page left open.
    assert_eq!(pool.contexts_opened(), 1, "one context for the agent's four jobs");
    assert_eq!(pool.pages_reused(), 3);
    assert_eq!(pool.pages_idle(), 1);
    // Each visit reached the site through the gateway, as the agent: no page
    // came from a cache.
    let visits =
        w.gw.audit_lines()
            .into_iter()
            .filter(|l| l["request"]["path"] == "/state" && l["decision"] == "allow")
            .collect::<Vec<_>>();
    assert_eq!(visits.len(), 4, "{visits:?}");
    assert!(visits.iter().all(|l| l["agent_id"] == SCRAPER.0), "{visits:?}");
    pool.shutdown().await;
    assert_eq!(pool.pages_idle(), 0);
}

#[tokio::test]
async fn a_warm_page_is_never_shared_between_agents() {
    let w = world("enforce").await;
    let Some(pool) = pool(&w) else { return };
    visit_state(&pool, &w, SCRAPER.0).await;
    let other = visit_state(&pool, &w, AI_AGENT.0).await;
    assert_eq!(other.found["local"], "", "{other:?}");
    assert_eq!(pool.contexts_opened(), 2, "another agent gets a context of its own");
    assert_eq!(pool.pages_reused(), 0);
    // The gateway knew the second visit by the second agent's credential.
    let line =
        w.gw.wait_audit(|l| l["request"]["path"] == "/state" && l["agent_id"] == AI_AGENT.0)
            .await;
    assert_eq!(line["decision"], "allow");
    // Each agent's page is then reused by that agent only.
    visit_state(&pool, &w, SCRAPER.0).await;
    visit_state(&pool, &w, AI_AGENT.0).await;
    assert_eq!(pool.contexts_opened(), 2);
    assert_eq!(pool.pages_reused(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_page_that_opened_a_popup_timed_out_or_served_its_share_is_not_reused() {
    let w = world("enforce").await;
    let config = ChromiumConfig {
        jobs_per_page: 2,
        ..ChromiumConfig::default()
    };
    let Some(pool) = pool_with(&w, config) else { return };
    let port = w.origin.addr.port();
    let mut popup = job(format!("http://site.test:{port}/popup"), Some("h1.opened"));
    popup.screenshot = false;
    pool.fetch(&popup).await.unwrap();
    // The popup's own page load went through the gateway as the agent...
    w.gw.wait_audit(|l| l["request"]["path"] == "/page" && l["agent_id"] == SCRAPER.0)
        .await;
    // ...and the page that opened it was closed with its context.
    assert_eq!(pool.pages_idle(), 0, "a page whose job left a popup was kept");

    let mut held = job(format!("http://site.test:{port}/hold"), None);
    held.timeout = Duration::from_secs(2);
    held.screenshot = false;
    assert!(matches!(pool.fetch(&held).await, Err(FetchError::Timeout)));
    w.origin.release.notify_waiters();
    assert_eq!(pool.pages_idle(), 0, "a page whose job timed out mid-load was kept");

    // Two jobs per page: the third job opens another.
    for _ in 0..3 {
        visit_state(&pool, &w, SCRAPER.0).await;
    }
    assert_eq!(
        pool.contexts_opened(),
        4,
        "popup, timeout, then two pages for three jobs"
    );
    assert_eq!(pool.pages_reused(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_fresh_context_per_job_when_asked_and_warm_pages_close_when_unused() {
    let w = world("enforce").await;
    let config = ChromiumConfig {
        jobs_per_page: 1,
        ..ChromiumConfig::default()
    };
    let Some(strict) = pool_with(&w, config) else { return };
    visit_state(&strict, &w, SCRAPER.0).await;
    visit_state(&strict, &w, SCRAPER.0).await;
    assert_eq!((strict.contexts_opened(), strict.pages_reused()), (2, 0));
    assert_eq!(strict.pages_idle(), 0);
    strict.shutdown().await;

    let config = ChromiumConfig {
        page_idle: Duration::from_millis(600),
        ..ChromiumConfig::default()
    };
    let Some(pool) = pool_with(&w, config) else { return };
    visit_state(&pool, &w, SCRAPER.0).await;
    assert_eq!(pool.pages_idle(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pool.pages_idle() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool.pages_idle(), 0, "an unused warm page was not closed");
    // The next job opens a new page and works as before.
    visit_state(&pool, &w, SCRAPER.0).await;
    assert_eq!(pool.contexts_opened(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_reused_page_starts_blank_and_one_that_went_through_several_sites_is_closed() {
    let w = world("enforce").await;
    let Some(pool) = pool(&w) else { return };
    let port = w.origin.addr.port();
    visit_state(&pool, &w, SCRAPER.0).await;
    // An agent job that does not start with a `goto` sees nothing of the
    // last job's page.
    let session = pool.session(SCRAPER.0).await.unwrap();
    assert_eq!(pool.pages_reused(), 1);
    assert_eq!(session.evaluate("location.href").await.unwrap(), "about:blank");
    assert_eq!(session.evaluate("document.body.innerHTML").await.unwrap(), "");
    // Two sites in one job: the first one's session storage can no longer
    // be reached, so the page is not kept.
    for url in [
        format!("http://site.test:{port}/page"),
        format!("http://a.wild.test:{port}/page"),
    ] {
        session.visited(&url);
        session.goto(&url).await.unwrap();
    }
    session.end(&Ok::<(), FetchError>(())).await;
    assert_eq!(pool.pages_idle(), 0, "a page that went through two sites was kept");
    visit_state(&pool, &w, SCRAPER.0).await;
    assert_eq!(pool.contexts_opened(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_page_with_an_iframe_of_another_site_is_not_reused() {
    let w = world("enforce").await;
    // Both browsers: in full Chromium a cross-site iframe is another
    // renderer (site isolation), and its commit must still be seen.
    let browsers: Vec<_> = clawgress_workers::chromium::BROWSERS
        .iter()
        .map(std::path::PathBuf::from)
        .filter(|b| b.exists())
        .collect();
    for executable in browsers {
        let config = ChromiumConfig {
            executable: executable.clone(),
            ..ChromiumConfig::default()
        };
        let Some(pool) = pool_with(&w, config) else { return };
        // A cross-site iframe's storage is partitioned under the page's site
        // and lives in another renderer: out of reach of the wipe, so the
        // page and its context go, and the iframe of the next job finds
        // nothing.
        for _ in 0..2 {
            let seen = visit(&pool, &w, SCRAPER.0, "/state?frame=cross").await;
            assert_eq!(
                seen.found["frame"],
                serde_json::json!({"local": "", "session": "", "databases": ""}),
                "{}: what a cross-site iframe left reached the next job",
                executable.display()
            );
            assert_eq!(
                pool.pages_idle(),
                0,
                "{}: a page that held a cross-site iframe was kept",
                executable.display()
            );
        }
        assert_eq!(pool.contexts_opened(), 2);
        assert_eq!(pool.pages_reused(), 0);
        pool.shutdown().await;
    }
    // The iframe's document was asked of the gateway as the agent.
    w.gw.wait_audit(|l| {
        l["request"]["domain"] == "a.wild.test" && l["request"]["path"] == "/state-frame" && l["agent_id"] == SCRAPER.0
    })
    .await;
}
