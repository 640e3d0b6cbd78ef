//! The workers' `http` backend against the real gateway: every hop through
//! the proxy with the agent's credential, the gateway's answers turned into
//! what the scheduler needs (deny, retry after, fail), extraction.

use std::collections::BTreeMap;

use clawgress_workers::credentials::Credentials;
use clawgress_workers::extract::extract;
use clawgress_workers::http::HttpFetcher;
use clawgress_workers::job::{ExtractSpec, FetchMode, RetryPolicy, ScrapeJob, Take};
use clawgress_workers::outcome::{Disposition, FetchError};

use super::*;

fn fetcher(w: &World) -> HttpFetcher {
    let credentials = Credentials::from_pairs([(SCRAPER.0.to_string(), SCRAPER.1.to_string())]);
    HttpFetcher::new(format!("http://{}", w.gw.proxy), credentials, 64 * 1024)
}

fn job(url: String) -> ScrapeJob {
    ScrapeJob {
        id: "fetch-1".into(),
        agent: SCRAPER.0.into(),
        url,
        method: "GET".into(),
        headers: BTreeMap::new(),
        body: None,
        fetch: FetchMode::Http,
        extract: BTreeMap::new(),
        wait_for: None,
        screenshot: false,
        timeout: Duration::from_secs(10),
        priority: Default::default(),
        retry: RetryPolicy::default(),
    }
}

#[tokio::test]
async fn pages_are_fetched_through_the_gateway_and_extracted() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let page = fetcher(&w)
        .fetch(&job(format!("http://site.test:{port}/page")))
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    let line = w.gw.audit_for(page.request_id.as_deref().unwrap()).await;
    assert_eq!(line["agent_id"], SCRAPER.0, "the gateway saw the job's agent");
    let specs = BTreeMap::from([
        (
            "title".to_string(),
            ExtractSpec {
                selector: "h1.title".into(),
                take: Take::Text,
                list: false,
                required: true,
            },
        ),
        (
            "links".to_string(),
            ExtractSpec {
                selector: ".items a".into(),
                take: Take::Attr("href".into()),
                list: true,
                required: false,
            },
        ),
    ]);
    let found = extract(&page.body, &specs);
    assert_eq!(found.values["title"], "Clawgress fixture");
    assert_eq!(found.values["links"], serde_json::json!(["/a", "/b"]));
    assert!(page.body.contains("€ 12,50"));

    let latin = fetcher(&w)
        .fetch(&job(format!("http://site.test:{port}/latin1")))
        .await
        .unwrap();
    assert_eq!(latin.body, "café", "decoded with the response's charset");
}

#[tokio::test]
async fn the_gateways_answers_decide_what_happens_next() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let fetcher = fetcher(&w);

    let denied = fetcher
        .fetch(&job(format!("http://unlisted.test:{port}/hello")))
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, FetchError::Denied { reason, .. } if reason == "domain_not_in_allowlist"),
        "{denied:?}"
    );
    assert_eq!(denied.disposition(), Disposition::Deny);

    // https goes through a CONNECT tunnel; its refusal is still a denial.
    let tunnel = fetcher
        .fetch(&job("https://unlisted.test/".to_string()))
        .await
        .unwrap_err();
    assert!(
        matches!(&tunnel, FetchError::Denied { reason, status: 403, .. } if reason == "domain_not_in_allowlist"),
        "{tunnel:?}"
    );

    // A redirect into a denied domain is judged at its own hop.
    let hop = fetcher
        .fetch(&job(format!("http://site.test:{port}/redirect/unlisted.test")))
        .await
        .unwrap_err();
    assert!(matches!(&hop, FetchError::Denied { .. }), "{hop:?}");
    let followed = fetcher
        .fetch(&job(format!("http://site.test:{port}/redirect/a.wild.test")))
        .await
        .unwrap();
    assert_eq!(followed.hops.len(), 2);
    assert!(followed.final_url.contains("a.wild.test"));

    // 60/min on limited.test: after its burst, the gateway's retry_after comes back.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(error) = fetcher.fetch(&job(format!("http://limited.test:{port}/hello"))).await {
            limited = Some(error);
            break;
        }
    }
    let limited = limited.expect("a rate limit");
    assert!(
        matches!(&limited, FetchError::RateLimited { scope, .. } if scope == "domain"),
        "{limited:?}"
    );
    assert_eq!(
        limited.disposition(),
        Disposition::Retry {
            after: Some(Duration::from_secs(1))
        }
    );

    // The origin's own errors are retried; a body over the cap is not.
    let origin = fetcher
        .fetch(&job(format!("http://site.test:{port}/status/503")))
        .await
        .unwrap_err();
    assert!(matches!(origin, FetchError::Origin { status: 503, .. }));
    let big = fetcher
        .fetch(&job(format!("http://site.test:{port}/big/100000")))
        .await
        .unwrap_err();
    assert_eq!(big.disposition(), Disposition::Fail);

    // An agent the gateway does not know is a denial, not a retry.
    let stranger = HttpFetcher::new(
        format!("http://{}", w.gw.proxy),
        Credentials::from_pairs([("nobody".to_string(), "nope".to_string())]),
        1024,
    );
    let mut anonymous = job(format!("http://site.test:{port}/hello"));
    anonymous.agent = "nobody".into();
    let refused = stranger.fetch(&anonymous).await.unwrap_err();
    assert!(
        matches!(&refused, FetchError::Denied { status: 407, .. }),
        "{refused:?}"
    );
}
