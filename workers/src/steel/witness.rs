//! The gateway as witness: did it see the job's navigation? Read back from
//! its audit trail through the control API (a token with the viewer role),
//! as the synthetic Scrape check does.
//!
//! A Steel server's browser can reach a page without the gateway: Chromium
//! skips proxies for loopback unless told `--proxy-bypass-list=<-loopback>`,
//! Steel's own proxy relay sends its `HOST` directly, and a cached page never
//! reaches the network. The browser cannot tell; only the gateway can.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::outcome::FetchError;

/// How long an audit line may take to appear (the gateway writes it just
/// after the response).
const SIGHTING_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// Clocks of the worker and the gateway may differ this much.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// The gateways' control APIs and the token to read their audit trails.
#[derive(Clone)]
pub struct Witness {
    /// Where the gateway replicas Steel may use are: fixed admin addresses,
    /// or `dns+http://NAME:9128` for every address of NAME (a headless
    /// Service: a page may have gone through any replica).
    admins: Vec<super::Source>,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("admins", &self.admins)
            .finish_non_exhaustive()
    }
}

/// What the gateway recorded of a navigation.
#[derive(Debug, Clone, PartialEq)]
pub enum Sighting {
    /// Let through (or only reported, in monitor mode): its request id.
    Allowed { request_id: String },
    /// Refused: the refusal as the job's error.
    Refused(FetchError),
    /// No record: the gateway never saw it.
    Unseen,
}

/// The navigation to look for: the job's agent and URL, since the session
/// began, with the trace id its requests carried.
#[derive(Debug, Clone)]
pub struct Navigation<'a> {
    pub agent: &'a str,
    pub url: &'a str,
    pub since: DateTime<Utc>,
    pub trace_id: &'a str,
}

impl Witness {
    /// `admins`: the gateways' admin addresses (`http://127.0.0.1:9128`).
    pub fn new(admins: &[String], token: String) -> Result<Witness, String> {
        if token.trim().is_empty() {
            return Err("the control-API token is empty".to_string());
        }
        let admins = admins
            .iter()
            .map(|admin| {
                super::Source::parse(admin).map_err(|e| {
                    format!(
                        "gateway admin address {admin}: {}",
                        e.replace("Steel server", "address")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if admins.is_empty() {
            return Err("no gateway admin address".to_string());
        }
        Ok(Witness {
            admins,
            token,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Looks for the navigation in the gateways' audit trails, waiting a
    /// moment for the line to be written. `Unseen` only after that.
    pub async fn look(&self, navigation: &Navigation<'_>) -> Result<Sighting, FetchError> {
        let host = url::Url::parse(navigation.url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase()))
            .ok_or_else(|| FetchError::Transport(format!("{} has no host", navigation.url)))?;
        let deadline = Instant::now() + SIGHTING_WAIT;
        let mut audits = Vec::new();
        for admin in &self.admins {
            for base in admin.servers().await {
                let url = url::Url::parse(&format!("{base}/v1/audit"))
                    .map_err(|e| FetchError::Transport(format!("gateway admin address {base}: {e}")))?;
                audits.push(url);
            }
        }
        if audits.is_empty() {
            return Err(FetchError::Transport(
                "cannot confirm the page went through the gateway: no gateway admin address resolves".to_string(),
            ));
        }
        loop {
            for audit in &audits {
                let lines = self.lines(audit, navigation, &host).await?;
                if let Some(sighting) = lines.iter().find_map(|line| sighting(line, navigation, &host)) {
                    return Ok(sighting);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Sighting::Unseen);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn lines(&self, audit: &url::Url, navigation: &Navigation<'_>, host: &str) -> Result<Vec<Value>, FetchError> {
        let mut url = audit.clone();
        url.query_pairs_mut()
            .append_pair("from", &(navigation.since - CLOCK_SLACK).to_rfc3339())
            .append_pair("agent", navigation.agent)
            .append_pair("domain", host)
            .append_pair("limit", "1000");
        let unreadable = |detail: String| {
            FetchError::Transport(format!(
                "cannot confirm the page went through the gateway: its audit trail at {audit} {detail}"
            ))
        };
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreadable(format!("did not answer ({e})")))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(unreadable(format!(
                "refused the token ({status}): it needs a token with the viewer role"
            )));
        }
        if !status.is_success() {
            return Err(unreadable(format!("answered {status}")));
        }
        let text = response
            .text()
            .await
            .map_err(|e| unreadable(format!("broke off ({e})")))?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

/// Whether an audit line records the navigation, and what it decided. Plain
/// HTTP (and intercepted TLS) carries the job's trace id to the gateway; a
/// passthrough tunnel is known only by its `CONNECT` to the host.
pub(super) fn sighting(line: &Value, navigation: &Navigation<'_>, host: &str) -> Option<Sighting> {
    let request = &line["request"];
    let same_host = request["domain"]
        .as_str()
        .is_some_and(|domain| domain.eq_ignore_ascii_case(host));
    let ours = line["trace_id"].as_str() == Some(navigation.trace_id) || request["method"] == "CONNECT";
    if line["agent_id"].as_str() != Some(navigation.agent) || !same_host || !ours {
        return None;
    }
    let text = |key: &str| line[key].as_str().unwrap_or_default().to_string();
    Some(match line["decision"].as_str() {
        Some("allow" | "would_deny") => Sighting::Allowed {
            request_id: text("request_id"),
        },
        Some("rate_limited") => Sighting::Refused(FetchError::RateLimited {
            retry_after: Duration::from_secs(1),
            scope: text("reason"),
        }),
        _ => Sighting::Refused(FetchError::Denied {
            reason: text("reason"),
            policy_id: text("policy_id"),
            status: 403,
        }),
    })
}
