//! The `steel` backend: a Steel Browser server's REST API, with the page
//! driven over CDP at the session's `websocketUrl`. The session's proxy is
//! the gateway (with the agent's credential in the proxy URL), and the
//! session is always released: Steel does not enforce its own timeouts.

use std::time::Duration;

use chromiumoxide::browser::Browser;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::credentials::Credentials;
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};

const API_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A Steel Browser server, e.g. `http://127.0.0.1:3000`.
#[derive(Clone)]
pub struct SteelClient {
    base: String,
    /// The gateway as Steel must reach it (Steel may run elsewhere).
    gateway: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl std::fmt::Debug for SteelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteelClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SteelClient {
    pub fn new(base: impl Into<String>, gateway: impl Into<String>, credentials: Credentials) -> SteelClient {
        SteelClient {
            base: base.into().trim_end_matches('/').to_string(),
            gateway: gateway.into(),
            credentials,
            // The Steel API is infrastructure, not egress: called directly.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(API_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether a Steel server answers at the base URL.
    pub async fn reachable(&self) -> bool {
        self.http
            .get(format!("{}/v1/sessions", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok()
    }

    /// The gateway URL with the agent's credential, for Steel's `proxyUrl`.
    fn proxy_url(&self, agent: &str) -> Result<String, FetchError> {
        let key = self
            .credentials
            .key(agent)
            .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?;
        let mut url = reqwest::Url::parse(&self.gateway).map_err(|e| FetchError::Transport(e.to_string()))?;
        url.set_username(agent)
            .map_err(|_| FetchError::Transport("gateway URL".into()))?;
        url.set_password(Some(key))
            .map_err(|_| FetchError::Transport("gateway URL".into()))?;
        Ok(url.to_string())
    }

    /// Loads the page in a fresh session and returns the rendered document.
    pub async fn fetch(&self, job: &ScrapeJob) -> Result<Fetched, FetchError> {
        let session = self
            .post(
                "/v1/sessions",
                json!({
                    "proxyUrl": self.proxy_url(&job.agent)?,
                    // Without it Steel asks an outside service for a time zone.
                    "timezone": "UTC",
                    "timeout": job.timeout.as_millis() as u64,
                }),
            )
            .await?;
        let id = session["id"].as_str().unwrap_or_default().to_string();
        let result = match session["websocketUrl"].as_str() {
            Some(ws) => tokio::time::timeout(job.timeout, self.drive(ws, job))
                .await
                .unwrap_or(Err(FetchError::Timeout)),
            None => Err(FetchError::Transport(format!(
                "Steel returned no websocketUrl: {session}"
            ))),
        };
        // Always released: on success, error and timeout alike.
        let release = if id.is_empty() {
            "/v1/sessions/release".to_string()
        } else {
            format!("/v1/sessions/{id}/release")
        };
        if let Err(error) = self.post(&release, json!({})).await {
            tracing::warn!(%error, session = %id, "releasing the Steel session failed");
        }
        result
    }

    async fn drive(&self, ws: &str, job: &ScrapeJob) -> Result<Fetched, FetchError> {
        let (browser, mut handler) = Browser::connect(ws)
            .await
            .map_err(|e| FetchError::Transport(format!("Steel CDP at {ws}: {e}")))?;
        let events = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(error) = event {
                    tracing::debug!(%error, "Steel CDP event error");
                }
            }
        });
        let outcome = async {
            let page = browser
                .new_page(job.url.as_str())
                .await
                .map_err(|e| FetchError::Transport(format!("Steel: {e}")))?;
            if let Some(selector) = &job.wait_for {
                while page.find_element(selector.as_str()).await.is_err() {
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
            let body = page.content().await.map_err(|e| FetchError::Transport(e.to_string()))?;
            let final_url = page.url().await.ok().flatten().unwrap_or_else(|| job.url.clone());
            Ok(Fetched {
                // Steel's CDP does not expose the gateway's answer reliably;
                // a refusal shows as the gateway's problem document.
                status: refusal_in(&body).map_or(200, |_| 403),
                final_url,
                hops: vec![job.url.clone()],
                content_type: Some("text/html".to_string()),
                body,
                request_id: None,
            })
        }
        .await;
        events.abort();
        match outcome {
            Ok(page) => match refusal_in(&page.body) {
                Some(error) => Err(error),
                None => Ok(page),
            },
            Err(error) => Err(error),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, FetchError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| FetchError::Transport(format!("Steel at {}: {e}", self.base)))?;
        // Steel's status codes are not to be trusted (unknown ids answer
        // 200); the body says what happened.
        response
            .json()
            .await
            .map_err(|e| FetchError::Transport(format!("Steel answered something that is not JSON: {e}")))
    }
}

/// A gateway refusal rendered as the page: the problem document's reason.
fn refusal_in(body: &str) -> Option<FetchError> {
    let start = body.find("{\"type\":\"https://clawgress.dev/problems/")?;
    let end = body[start..].find("</")? + start;
    let problem: Value = serde_json::from_str(&body[start..end]).ok()?;
    let status = problem["status"].as_u64().unwrap_or(0) as u16;
    Some(FetchError::from_gateway(status, &problem, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_shown_as_the_page_is_read_back() {
        let page = r#"<html><body><pre>{"type":"https://clawgress.dev/problems/domain_not_in_allowlist","title":"Forbidden","status":403,"reason":"domain_not_in_allowlist","policy_id":"default_deny"}</pre></body></html>"#;
        assert!(
            matches!(refusal_in(page), Some(FetchError::Denied { reason, .. }) if reason == "domain_not_in_allowlist")
        );
        assert!(refusal_in("<html><body>fine</body></html>").is_none());
    }

    #[test]
    fn the_proxy_url_carries_the_agents_credential() {
        let steel = SteelClient::new(
            "http://127.0.0.1:3000/",
            "http://127.0.0.1:3128",
            Credentials::from_pairs([("scraper-001".to_string(), "k y".to_string())]),
        );
        assert_eq!(
            steel.proxy_url("scraper-001").unwrap(),
            "http://scraper-001:k%20y@127.0.0.1:3128/"
        );
        assert!(steel.proxy_url("nobody").is_err());
    }
}
