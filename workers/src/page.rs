//! One browser page driven over CDP, shared by the `chromium` and `steel`
//! backends: navigation with the gateway's refusals read back, waiting for
//! selectors, the rendered document, and the job's whole page load.

use std::time::Duration;

use base64::Engine;
use chromiumoxide::cdp::browser_protocol::network::{Headers, SetCacheDisabledParams, SetExtraHttpHeadersParams};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::page::ScreenshotParams;

use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};

/// Any single CDP call; a browser that does not answer in this time is
/// treated as broken.
pub const CDP_TIMEOUT: Duration = Duration::from_secs(15);
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long required values may take to render when no wait_for is given.
const RENDER_GRACE: Duration = Duration::from_secs(5);
/// Screenshots larger than this are not put into results.
pub const MAX_SCREENSHOT: usize = 512 * 1024;

/// One CDP call under [`CDP_TIMEOUT`].
pub async fn cdp<T>(call: impl std::future::Future<Output = chromiumoxide::Result<T>>) -> Result<T, FetchError> {
    match tokio::time::timeout(CDP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(FetchError::Transport(format!("browser: {error}"))),
        Err(_) => Err(FetchError::Transport("the browser did not answer in time".to_string())),
    }
}

/// A finished navigation: the main response's status and the URLs asked
/// for, redirects included.
#[derive(Debug, Clone, Default)]
pub struct Navigation {
    pub status: u16,
    pub hops: Vec<String>,
    /// The document came from a cache or a service worker, not the network:
    /// the gateway never saw it.
    pub from_cache: bool,
}

/// What a page load produced.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub page: Fetched,
    /// Base64 PNG, when asked for and small enough.
    pub screenshot: Option<String>,
    pub navigation: Navigation,
}

/// What a browser fetch produced, beyond the page.
#[derive(Debug, Clone, Default)]
pub struct BrowserExtras {
    /// Base64 PNG, when asked for and small enough.
    pub screenshot: Option<String>,
}

/// A page and the operations jobs and agent steps run on it.
pub struct BrowserPage(pub chromiumoxide::Page);

impl BrowserPage {
    /// Navigates; a gateway refusal of the page is returned as such.
    pub async fn goto(&self, url: &str) -> Result<Navigation, FetchError> {
        let navigation = async {
            self.0.goto(url).await?;
            self.0.wait_for_navigation_response().await
        };
        let request = navigation.await.map_err(|e| FetchError::Transport(e.to_string()))?;
        let response = request.as_ref().and_then(|r| r.response.clone());
        let status = response.as_ref().map_or(0, |r| r.status as u16);
        let ours = response.as_ref().is_some_and(|r| {
            r.headers
                .inner()
                .as_object()
                .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("x-clawgress-decision")))
        });
        if (ours && status >= 400) || status == 407 {
            let text: String = self
                .0
                .evaluate("document.body ? document.body.innerText : ''")
                .await
                .ok()
                .and_then(|v| v.into_value().ok())
                .unwrap_or_default();
            return Err(gateway_refusal(status, &text));
        }
        let from_cache = response.as_ref().is_some_and(|r| {
            [r.from_disk_cache, r.from_prefetch_cache, r.from_service_worker]
                .into_iter()
                .any(|flag| flag == Some(true))
        });
        let hops = request
            .as_ref()
            .map(|r| {
                r.redirect_chain
                    .iter()
                    .filter_map(|hop| hop.url.clone())
                    .chain(r.url.clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Navigation {
            status,
            hops,
            from_cache,
        })
    }

    /// Every request of the page carries these headers (the fetch's
    /// `traceparent`, readable by the gateway for plain HTTP and
    /// intercepted TLS).
    pub async fn set_headers(&self, headers: serde_json::Value) -> Result<(), FetchError> {
        cdp(self.0.execute(SetExtraHttpHeadersParams::new(Headers::new(headers))))
            .await
            .map(|_| ())
    }

    /// Every request goes to the network: a cached copy would be a page the
    /// gateway never saw (and never audited).
    pub async fn disable_cache(&self) -> Result<(), FetchError> {
        cdp(self.0.execute(SetCacheDisabledParams::new(true))).await.map(|_| ())
    }

    /// Polls for `selector` until it is there.
    pub async fn wait_for(&self, selector: &str) {
        while self.0.find_element(selector).await.is_err() {
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub async fn click(&self, selector: &str) -> Result<(), FetchError> {
        let element = cdp(self.0.find_element(selector)).await?;
        cdp(element.click()).await.map(|_| ())
    }

    pub async fn fill(&self, selector: &str, value: &str) -> Result<(), FetchError> {
        let element = cdp(self.0.find_element(selector)).await?;
        cdp(element.click()).await?;
        cdp(element.type_str(value)).await.map(|_| ())
    }

    pub async fn content(&self) -> Result<String, FetchError> {
        cdp(self.0.content()).await
    }

    pub async fn evaluate(&self, expression: &str) -> Result<serde_json::Value, FetchError> {
        let result = cdp(self.0.evaluate(expression)).await?;
        Ok(result.into_value().unwrap_or(serde_json::Value::Null))
    }

    /// A PNG, base64, if it is small enough for a result.
    pub async fn screenshot(&self) -> Result<Option<String>, FetchError> {
        let png = cdp(self.0.screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build(),
        ))
        .await?;
        Ok((png.len() <= MAX_SCREENSHOT).then(|| base64::engine::general_purpose::STANDARD.encode(png)))
    }

    /// The job's page load: navigates, waits for `wait_for` (or, briefly,
    /// for required values to render), and takes the document.
    pub async fn load(&self, job: &ScrapeJob, traceparent: Option<String>) -> Result<Loaded, FetchError> {
        if let Some(traceparent) = traceparent {
            self.set_headers(serde_json::json!({ clawgress_telemetry::TRACEPARENT: traceparent }))
                .await?;
        }
        let navigation = self.goto(&job.url).await?;
        if let Some(selector) = &job.wait_for {
            self.wait_for(selector).await;
        } else {
            // Without wait_for, required values are given a moment to render
            // (scripts run after the load event), then whatever is there is taken.
            let until = tokio::time::Instant::now() + RENDER_GRACE;
            for spec in job.extract.values().filter(|spec| spec.required) {
                while self.0.find_element(spec.selector.as_str()).await.is_err() && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
        }
        let body = self.content().await?;
        let final_url = cdp(self.0.url()).await?.unwrap_or_else(|| job.url.clone());
        let screenshot = if job.screenshot { self.screenshot().await? } else { None };
        let hops = if navigation.hops.is_empty() {
            vec![job.url.clone()]
        } else {
            navigation.hops.clone()
        };
        Ok(Loaded {
            page: Fetched {
                status: navigation.status,
                final_url,
                hops,
                content_type: Some("text/html".to_string()),
                body,
                request_id: None,
            },
            screenshot,
            navigation,
        })
    }
}

/// The gateway's refusal, read from the problem JSON the browser shows.
fn gateway_refusal(status: u16, text: &str) -> FetchError {
    let body: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    FetchError::from_gateway(status, &body, None)
}
