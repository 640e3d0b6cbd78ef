//! One Steel Browser server: its REST API (`POST /v1/sessions`, release)
//! and the session's page, driven over CDP at the session's `websocketUrl`.
//!
//! Steel's answers are read defensively: its status codes are not to be
//! trusted (unknown ids answer 200), fields such as `proxy` are optional,
//! and `websocketUrl` is browser-level CDP (`ws://HOST:PORT/`).

use std::time::Duration;

use chromiumoxide::browser::Browser;
use chromiumoxide::handler::HandlerConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::job::ScrapeJob;
use crate::outcome::FetchError;
use crate::page::{BrowserPage, CDP_TIMEOUT, Loaded, cdp};

const API_TIMEOUT: Duration = Duration::from_secs(20);
/// A live session older than the longest job (10 minutes) and a minute of
/// slack was left by a client that died.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(11 * 60);

/// A Steel Browser server, e.g. `http://127.0.0.1:3000`.
#[derive(Clone)]
pub struct SteelServer {
    base: String,
    http: reqwest::Client,
    /// Releases of cancelled jobs' sessions still under way, which a
    /// stopping scheduler waits for.
    releasing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for SteelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SteelServer").field(&self.base).finish()
    }
}

/// A live session: what it takes to drive and release it.
struct Session {
    id: String,
    websocket: String,
}

impl SteelServer {
    pub fn new(base: &str) -> SteelServer {
        SteelServer {
            base: base.trim_end_matches('/').to_string(),
            // The Steel API is infrastructure, not egress: called directly.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(API_TIMEOUT)
                .build()
                .unwrap_or_default(),
            releasing: Default::default(),
        }
    }

    /// Whether releases of cancelled sessions are still under way.
    pub fn releasing(&self) -> bool {
        self.releasing.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub fn url(&self) -> &str {
        &self.base
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

    fn unavailable(&self, detail: impl Into<String>) -> FetchError {
        FetchError::SteelUnavailable {
            server: self.base.clone(),
            detail: detail.into(),
        }
    }

    /// Loads the job's page in a fresh session whose proxy is `proxy_url`
    /// (the gateway, with the agent's credential), and always releases the
    /// session: Steel does not enforce its own timeouts.
    pub(super) async fn load(
        &self,
        job: &ScrapeJob,
        proxy_url: &str,
        traceparent: String,
    ) -> Result<Loaded, FetchError> {
        // Leases are this scheduler's; another client of the same server
        // (a second scheduler, a person) would have its browser killed by a
        // second session, so a live session there means busy.
        if self.in_use().await? {
            return Err(FetchError::SteelBusy);
        }
        let session = self.open(proxy_url, job.timeout).await?;
        // Released on every path, also when this future is dropped (a
        // scheduler draining past its deadline cancels its jobs).
        let mut guard = ReleaseOnDrop(Some((self.clone(), session.id.clone())));
        let loaded = tokio::time::timeout(job.timeout, self.drive(&session.websocket, job, traceparent))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        guard.0 = None;
        self.release(&session.id).await;
        loaded
    }

    /// Whether another client's session is live on the server (Steel lists
    /// its sessions with a `status` and their age in `duration`, ms). Steel
    /// never ends a session itself, so one older than any job may run
    /// ([`ABANDONED_AFTER`]) was left by a client that died: it is released.
    async fn in_use(&self) -> Result<bool, FetchError> {
        let response = self
            .http
            .get(format!("{}/v1/sessions", self.base))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("/v1/sessions: {e}")))?;
        let listed: Value = response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("/v1/sessions answered something that is not JSON: {e}")))?;
        let live: Vec<&Value> = listed["sessions"]
            .as_array()
            .map(|sessions| sessions.iter().filter(|s| s["status"] == "live").collect())
            .unwrap_or_default();
        let abandoned = |session: &Value| {
            session["duration"]
                .as_u64()
                .is_some_and(|ms| Duration::from_millis(ms) > ABANDONED_AFTER)
        };
        if !live.is_empty() && live.iter().all(|s| abandoned(s)) {
            let id = live[0]["id"].as_str().unwrap_or_default().to_string();
            tracing::warn!(server = %self.base, session = %id, "releasing a Steel session older than any job: its client is gone");
            self.release(&id).await;
            return Ok(false);
        }
        Ok(!live.is_empty())
    }

    async fn open(&self, proxy_url: &str, timeout: Duration) -> Result<Session, FetchError> {
        let created = self
            .post(
                "/v1/sessions",
                json!({
                    "proxyUrl": proxy_url,
                    // Without it Steel asks an outside service for a time zone.
                    "timezone": "UTC",
                    "timeout": timeout.as_millis() as u64,
                }),
            )
            .await?;
        match created["websocketUrl"].as_str().filter(|ws| !ws.is_empty()) {
            Some(websocket) => Ok(Session {
                id: created["id"].as_str().unwrap_or_default().to_string(),
                websocket: websocket.to_string(),
            }),
            None => Err(self.unavailable(format!("it started no session: {}", steel_message(&created)))),
        }
    }

    /// Releases the session (Steel then restarts its browser). A failure is
    /// logged: the next session on this server will show whether it matters.
    async fn release(&self, id: &str) {
        let path = if id.is_empty() {
            "/v1/sessions/release".to_string()
        } else {
            format!("/v1/sessions/{id}/release")
        };
        if let Err(error) = self.post(&path, json!({})).await {
            tracing::warn!(%error, session = %id, "releasing the Steel session failed");
        }
    }

    async fn drive(&self, websocket: &str, job: &ScrapeJob, traceparent: String) -> Result<Loaded, FetchError> {
        let config = HandlerConfig {
            // The browser checks certificates: with TLS passthrough it is the
            // only one that does (chromiumoxide ignores errors by default).
            ignore_https_errors: false,
            cache_enabled: false,
            request_timeout: CDP_TIMEOUT,
            ..HandlerConfig::default()
        };
        let (browser, mut handler) = tokio::time::timeout(CDP_TIMEOUT, Browser::connect_with_config(websocket, config))
            .await
            .map_err(|_| self.unavailable(format!("its browser at {websocket} did not answer")))?
            .map_err(|e| self.unavailable(format!("cannot reach its browser at {websocket}: {e}")))?;
        let events = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(error) = event {
                    tracing::debug!(%error, "Steel CDP event error");
                }
            }
        });
        let loaded = async {
            let page = BrowserPage(cdp(browser.new_page("about:blank")).await?);
            page.disable_cache().await?;
            page.load(job, Some(traceparent)).await
        }
        .await;
        // The handler's stream ends when the CDP connection does: then the
        // failure was the browser's (or Steel's), not the page's.
        let connection_lost = events.is_finished();
        events.abort();
        drop(browser);
        match loaded {
            Err(error) if connection_lost => Err(self.unavailable(format!("its browser went away ({error})"))),
            other => other,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, FetchError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("{path}: {e}")))?;
        let status = response.status();
        // Steel's status codes are not to be trusted (unknown ids answer
        // 200); the body says what happened.
        response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("{path} answered {status} with something that is not JSON: {e}")))
    }
}

/// Releases a session whose job was cancelled mid-way.
struct ReleaseOnDrop(Option<(SteelServer, String)>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some((server, id)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            server.releasing.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.spawn(async move {
                server.release(&id).await;
                server.releasing.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    }
}

/// What Steel said went wrong, from its error body.
fn steel_message(body: &Value) -> String {
    ["message", "error"]
        .iter()
        .find_map(|key| body[key].as_str())
        .map_or_else(|| body.to_string(), str::to_string)
        .chars()
        .take(300)
        .collect()
}
