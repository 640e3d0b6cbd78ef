//! The `chromium` backend: headless Chromium (Debian's
//! `chromium-headless-shell`, else `chromium`) driven over CDP with
//! chromiumoxide, every request through the gateway.
//!
//! One browser process serves many jobs; each job gets its own browser
//! context (cookies, cache, storage) whose proxy is the gateway, and the
//! agent's credential answers the gateway's 407 through CDP auth handling.
//! A browser that crashes is replaced on the next job; every CDP call has a
//! timeout; contexts are always disposed; the process is reaped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chromiumoxide::auth::Credentials as ProxyCredentials;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::network::{Headers, SetExtraHttpHeadersParams};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams};
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use tokio::sync::{Mutex, Semaphore};

use crate::credentials::Credentials;
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};

/// Any single CDP call; a browser that does not answer in this time is
/// treated as broken.
const CDP_TIMEOUT: Duration = Duration::from_secs(15);
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long required values may take to render when no wait_for is given.
const RENDER_GRACE: Duration = Duration::from_secs(5);
/// Screenshots larger than this are not put into results.
pub const MAX_SCREENSHOT: usize = 512 * 1024;

#[derive(Debug, Clone)]
pub struct ChromiumConfig {
    pub executable: PathBuf,
    /// Pages open at once in the browser.
    pub max_pages: usize,
    /// Jobs one browser serves before it is replaced (0: no limit). A
    /// long-lived browser accumulates memory; 1 means a browser per job.
    pub jobs_per_browser: u64,
}

/// Debian's browsers, best first. The headless shell runs Chromium's old
/// headless mode, made for automation; full Chromium's new headless mode opens
/// a window (with its browser UI renderers) for every isolated context, which
/// measured about five times slower per page here (BENCHMARKS.md).
pub const BROWSERS: [&str; 2] = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"];

/// The first of [`BROWSERS`] that is installed.
pub fn find_browser() -> Option<PathBuf> {
    BROWSERS.iter().map(PathBuf::from).find(|path| path.exists())
}

fn is_headless_shell(executable: &std::path::Path) -> bool {
    executable
        .file_name()
        .is_some_and(|name| name.to_string_lossy().contains("headless-shell"))
}

impl Default for ChromiumConfig {
    fn default() -> Self {
        ChromiumConfig {
            executable: find_browser().unwrap_or_else(|| PathBuf::from(BROWSERS[1])),
            max_pages: 8,
            jobs_per_browser: 0,
        }
    }
}

/// A running browser and the task that drives its CDP connection.
struct Running {
    browser: Arc<Browser>,
    handler: tokio::task::JoinHandle<()>,
    /// The browser process; the CDP handler keeps running after a crash,
    /// so the process itself says whether the browser is alive.
    pid: Option<u32>,
    /// A CDP call timed out: the browser is replaced on the next job.
    broken: Arc<std::sync::atomic::AtomicBool>,
    /// Sessions opened in this browser.
    sessions: u64,
    // Kept so the profile directory lives as long as the browser.
    _profile: tempfile::TempDir,
}

/// What a browser fetch produced, beyond the page.
#[derive(Debug, Clone, Default)]
pub struct BrowserExtras {
    /// Base64 PNG, when asked for and small enough.
    pub screenshot: Option<String>,
}

pub struct ChromiumPool {
    gateway: String,
    credentials: Credentials,
    config: ChromiumConfig,
    running: Mutex<Option<Running>>,
    /// Browsers past `jobs_per_browser` whose last sessions are still open;
    /// each is closed when its last session is.
    retiring: Mutex<Vec<Running>>,
    pages: Semaphore,
    launches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ChromiumPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromiumPool")
            .field("gateway", &self.gateway)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ChromiumPool {
    pub fn new(gateway: impl Into<String>, credentials: Credentials, config: ChromiumConfig) -> ChromiumPool {
        let pages = Semaphore::new(config.max_pages.max(1));
        ChromiumPool {
            gateway: gateway.into(),
            credentials,
            config,
            running: Mutex::new(None),
            retiring: Mutex::new(Vec::new()),
            pages,
            launches: Default::default(),
        }
    }

    /// Browsers started so far (a crashed one is replaced by a new launch).
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The running browser's profile directory, which names its processes
    /// (`--user-data-dir=...`), for operators and crash tests.
    pub async fn profile_dir(&self) -> Option<PathBuf> {
        let running = self.running.lock().await;
        running.as_ref().map(|r| r._profile.path().to_path_buf())
    }

    async fn browser(&self) -> Result<Arc<Browser>, FetchError> {
        let mut running = self.running.lock().await;
        let limit = self.config.jobs_per_browser;
        if let Some(current) = running.as_mut()
            && !current.handler.is_finished()
            && !current.broken.load(std::sync::atomic::Ordering::Relaxed)
            && current.pid.is_none_or(process_alive)
        {
            if limit == 0 || current.sessions < limit {
                current.sessions += 1;
                return Ok(current.browser.clone());
            }
            if let Some(worn) = running.take() {
                self.retiring.lock().await.push(worn);
            }
        }
        if let Some(dead) = running.take() {
            tracing::warn!("the browser went away; starting a new one");
            dead.handler.abort();
            if let Ok(mut browser) = Arc::try_unwrap(dead.browser) {
                let _ = browser.kill().await;
                let _ = browser.wait().await;
            }
        }
        let profile = tempfile::tempdir().map_err(|e| FetchError::Transport(format!("browser profile: {e}")))?;
        let mut builder = BrowserConfig::builder().chrome_executable(&self.config.executable);
        // The shell is headless by nature (the builder's default, plain
        // `--headless`); full Chromium needs the new mode.
        if !is_headless_shell(&self.config.executable) {
            builder = builder.new_headless_mode();
        }
        let config = builder
            .no_sandbox()
            .user_data_dir(profile.path())
            .request_timeout(CDP_TIMEOUT)
            .launch_timeout(Duration::from_secs(20))
            // Chrome's own background traffic would only be denied by the
            // gateway. (chromiumoxide adds the leading dashes itself.)
            .arg("disable-background-networking")
            .arg("disable-component-update")
            .arg("no-first-run")
            .build()
            .map_err(|e| FetchError::Transport(format!("browser config: {e}")))?;
        let (mut browser, mut handler) = Browser::launch(config).await.map_err(|e| {
            FetchError::Transport(format!(
                "cannot start {}: {e} (install it with ./deploy/local/prereqs.sh chromium)",
                self.config.executable.display()
            ))
        })?;
        let handler = tokio::spawn(async move {
            // Errors on single messages are logged and the loop goes on; the
            // stream ends when the browser's connection does.
            while let Some(event) = handler.next().await {
                if let Err(error) = event {
                    tracing::debug!(%error, "browser event error");
                }
            }
        });
        self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = browser.get_mut_child().and_then(|child| child.inner.id());
        let browser = Arc::new(browser);
        *running = Some(Running {
            browser: browser.clone(),
            handler,
            pid,
            broken: Default::default(),
            sessions: 1,
            _profile: profile,
        });
        Ok(browser)
    }

    /// Closes the retired browsers no session uses any more.
    async fn close_retired(&self) {
        let idle: Vec<Running> = {
            let mut retiring = self.retiring.lock().await;
            let (idle, busy) = retiring.drain(..).partition(|r| Arc::strong_count(&r.browser) == 1);
            *retiring = busy;
            idle
        };
        for running in idle {
            close(running).await;
        }
    }

    async fn mark_broken(&self) {
        if let Some(running) = self.running.lock().await.as_ref() {
            running.broken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Closes the browser and reaps its process.
    pub async fn shutdown(&self) {
        if let Some(running) = self.running.lock().await.take() {
            close(running).await;
        }
        for running in std::mem::take(&mut *self.retiring.lock().await) {
            close(running).await;
        }
    }

    /// A fresh context (proxy: the gateway) and page for `agent`, with the
    /// agent's credential ready for the gateway's 407. Close it with
    /// [`Session::close`], also on errors.
    pub async fn session(&self, agent: &str) -> Result<Session<'_>, FetchError> {
        let key = self
            .credentials
            .key(agent)
            .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?
            .to_string();
        let slot = self
            .pages
            .acquire()
            .await
            .map_err(|_| FetchError::Transport("pool closed".into()))?;
        let mut browser = self.browser().await?;
        let params = CreateBrowserContextParams::builder()
            .proxy_server(self.gateway.clone())
            // Chromium skips the proxy for loopback unless told not to.
            .proxy_bypass_list("<-loopback>")
            .build();
        let context = match cdp(browser.create_browser_context(params.clone())).await {
            Ok(context) => context,
            // A browser that cannot even open a context is replaced, once.
            Err(error) => {
                tracing::warn!(%error, "the browser does not answer; replacing it");
                self.mark_broken().await;
                browser = self.browser().await?;
                cdp(browser.create_browser_context(params)).await?
            }
        };
        let target = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(context.clone())
            .build()
            .map_err(FetchError::Transport)?;
        let page = match cdp(browser.new_page(target)).await {
            Ok(page) => page,
            Err(error) => {
                let _ = tokio::time::timeout(CDP_TIMEOUT, browser.dispose_browser_context(context)).await;
                return Err(error);
            }
        };
        let session = Session {
            pool: self,
            browser,
            context,
            page,
            _slot: slot,
        };
        let auth = cdp(session.page.authenticate(ProxyCredentials {
            username: agent.to_string(),
            password: key,
        }))
        .await;
        match auth {
            Ok(()) => Ok(session),
            Err(error) => {
                session.close().await;
                Err(error)
            }
        }
    }

    /// Loads the job's page in a fresh session, waits for `wait_for` (or,
    /// briefly, for required values to render), and returns the document.
    pub async fn fetch(&self, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
        let session = self.session(&job.agent).await?;
        let result = tokio::time::timeout(job.timeout, load(&session, job))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        // Always, on success, error and timeout alike.
        session.close().await;
        result
    }
}

async fn load(session: &Session<'_>, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
    // Every request of the page carries the fetch's trace to the gateway
    // (readable there for plain HTTP and intercepted TLS).
    if let Some(traceparent) = clawgress_telemetry::traceparent(&tracing::Span::current()) {
        let headers = SetExtraHttpHeadersParams::new(Headers::new(serde_json::json!({
            clawgress_telemetry::TRACEPARENT: traceparent
        })));
        cdp(session.page.execute(headers)).await?;
    }
    let navigation = session.goto(&job.url).await?;
    if let Some(selector) = &job.wait_for {
        session.wait_for(selector).await;
    } else {
        // Without wait_for, required values are given a moment to render
        // (scripts run after the load event), then whatever is there is taken.
        let until = tokio::time::Instant::now() + RENDER_GRACE;
        for spec in job.extract.values().filter(|spec| spec.required) {
            while session.page.find_element(spec.selector.as_str()).await.is_err()
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(WAIT_POLL).await;
            }
        }
    }
    let body = session.content().await?;
    let final_url = cdp(session.page.url()).await?.unwrap_or_else(|| job.url.clone());
    let screenshot = if job.screenshot {
        session.screenshot().await?
    } else {
        None
    };
    let hops = if navigation.hops.is_empty() {
        vec![job.url.clone()]
    } else {
        navigation.hops
    };
    Ok((
        Fetched {
            status: navigation.status,
            final_url,
            hops,
            content_type: Some("text/html".to_string()),
            body,
            request_id: None,
        },
        BrowserExtras { screenshot },
    ))
}

/// A finished navigation: the main response's status and the URLs asked
/// for, redirects included.
#[derive(Debug, Clone)]
pub struct Navigation {
    pub status: u16,
    pub hops: Vec<String>,
}

/// Closes a browser and reaps its process; kills what does not close.
async fn close(running: Running) {
    if let Ok(mut browser) = Arc::try_unwrap(running.browser) {
        let _ = tokio::time::timeout(CDP_TIMEOUT, browser.close()).await;
        let _ = tokio::time::timeout(CDP_TIMEOUT, browser.wait()).await;
        let _ = browser.kill().await;
    }
    running.handler.abort();
}

/// Whether a process is running (not gone, not a zombie waiting to be reaped).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesized name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// One CDP call under [`CDP_TIMEOUT`].
async fn cdp<T>(call: impl std::future::Future<Output = chromiumoxide::Result<T>>) -> Result<T, FetchError> {
    match tokio::time::timeout(CDP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(FetchError::Transport(format!("browser: {error}"))),
        Err(_) => Err(FetchError::Transport("the browser did not answer in time".to_string())),
    }
}

/// The gateway's refusal, read from the problem JSON the browser shows.
fn gateway_refusal(status: u16, text: &str) -> FetchError {
    let body: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    FetchError::from_gateway(status, &body, None)
}

/// One job's browser context and page.
pub struct Session<'a> {
    pool: &'a ChromiumPool,
    browser: Arc<Browser>,
    context: BrowserContextId,
    pub page: chromiumoxide::Page,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl Session<'_> {
    /// Navigates; a gateway refusal of the page is returned as such.
    pub async fn goto(&self, url: &str) -> Result<Navigation, FetchError> {
        let navigation = async {
            self.page.goto(url).await?;
            self.page.wait_for_navigation_response().await
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
                .page
                .evaluate("document.body ? document.body.innerText : ''")
                .await
                .ok()
                .and_then(|v| v.into_value().ok())
                .unwrap_or_default();
            return Err(gateway_refusal(status, &text));
        }
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
        Ok(Navigation { status, hops })
    }

    /// Polls for `selector` until it is there.
    pub async fn wait_for(&self, selector: &str) {
        while self.page.find_element(selector).await.is_err() {
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub async fn click(&self, selector: &str) -> Result<(), FetchError> {
        let element = cdp(self.page.find_element(selector)).await?;
        cdp(element.click()).await.map(|_| ())
    }

    pub async fn fill(&self, selector: &str, value: &str) -> Result<(), FetchError> {
        let element = cdp(self.page.find_element(selector)).await?;
        cdp(element.click()).await?;
        cdp(element.type_str(value)).await.map(|_| ())
    }

    pub async fn content(&self) -> Result<String, FetchError> {
        cdp(self.page.content()).await
    }

    pub async fn evaluate(&self, expression: &str) -> Result<serde_json::Value, FetchError> {
        let result = cdp(self.page.evaluate(expression)).await?;
        Ok(result.into_value().unwrap_or(serde_json::Value::Null))
    }

    /// A PNG, base64, if it is small enough for a result.
    pub async fn screenshot(&self) -> Result<Option<String>, FetchError> {
        let png = cdp(self.page.screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build(),
        ))
        .await?;
        Ok((png.len() <= MAX_SCREENSHOT).then(|| base64::engine::general_purpose::STANDARD.encode(png)))
    }

    /// Closes the page and disposes of the context.
    pub async fn close(self) {
        let Session {
            pool,
            browser,
            context,
            page,
            _slot,
        } = self;
        let _ = tokio::time::timeout(CDP_TIMEOUT, page.close()).await;
        let _ = tokio::time::timeout(CDP_TIMEOUT, browser.dispose_browser_context(context)).await;
        drop(browser);
        pool.close_retired().await;
    }
}
