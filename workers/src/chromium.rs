//! The `chromium` backend: headless Chromium (Debian's
//! `chromium-headless-shell`, else `chromium`) driven over CDP with
//! chromiumoxide, every request through the gateway.
//!
//! One browser process serves many jobs; each job gets its own browser
//! context (cookies, cache, storage) whose proxy is the gateway, and the
//! agent's credential answers the gateway's 407 through CDP auth handling.
//! A browser that crashes is replaced on the next job; every CDP call has a
//! timeout; contexts are always disposed; the process is reaped. Browsers
//! never outlive the worker, and their profiles go with them (`process.rs`).

mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::auth::Credentials as ProxyCredentials;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams};
use futures_util::StreamExt;
use tokio::sync::{Mutex, Semaphore};

use crate::credentials::Credentials;
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};
pub use crate::page::{BrowserExtras, MAX_SCREENSHOT, Navigation};
use crate::page::{BrowserPage, CDP_TIMEOUT, cdp};
use process::BrowserProcess;
pub use process::{LAUNCH_ENV, exec_browser_if_asked, kill_all_browsers, real_executable, sweep_stale_profiles};

#[derive(Debug, Clone)]
pub struct ChromiumConfig {
    pub executable: PathBuf,
    /// Pages open at once in the browser.
    pub max_pages: usize,
    /// Jobs one browser serves before it is replaced (0: no limit). A
    /// long-lived browser accumulates memory; 1 means a browser per job.
    pub jobs_per_browser: u64,
    /// A binary that answers [`LAUNCH_ENV`] ([`exec_browser_if_asked`] first
    /// thing in its `main`): the `clawgress` binary. Through it the browser
    /// leads its own process group and dies with this process. `None`: the
    /// browser is started directly and can outlive a killed worker.
    pub launcher: Option<PathBuf>,
}

/// Debian's browsers, best first. The headless shell runs Chromium's old
/// headless mode, made for automation; full Chromium's new headless mode opens
/// a window for every isolated context, which measured about three times
/// slower per page here (BENCHMARKS.md, issue 16).
pub const BROWSERS: [&str; 2] = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"];

/// The first of [`BROWSERS`] that is installed. Debian's are wrapper
/// scripts; the binary they would start is what runs ([`real_executable`]).
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
            launcher: None,
        }
    }
}

/// A running browser and the task that drives its CDP connection.
struct Running {
    /// The browser process and its profile. First, so that it drops first:
    /// the process group is killed while chromiumoxide's child handle still
    /// holds the pid unreaped (not reusable).
    process: BrowserProcess,
    browser: Arc<Browser>,
    handler: tokio::task::JoinHandle<()>,
    /// A CDP call timed out: the browser is replaced on the next job.
    broken: Arc<std::sync::atomic::AtomicBool>,
    /// Sessions opened in this browser.
    sessions: u64,
}

pub struct ChromiumPool {
    /// The explicit proxy (replicas: each new context takes the next that
    /// answers); `None` behind the host edge (transparent).
    gateway: Option<crate::gateways::Gateways>,
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
        ChromiumPool {
            gateway: Some(crate::gateways::Gateways::new(&gateway.into())),
            ..ChromiumPool::behind_edge(credentials, config)
        }
    }

    /// A pool whose pages go out directly: the host edge sends them through
    /// the transparent gateway, which knows the agent by this worker's
    /// address.
    pub fn behind_edge(credentials: Credentials, config: ChromiumConfig) -> ChromiumPool {
        // Profiles of browsers whose worker was killed (OOM, kill -9).
        sweep_stale_profiles();
        let pages = Semaphore::new(config.max_pages.max(1));
        ChromiumPool {
            gateway: None,
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
        running
            .as_ref()
            .and_then(|r| r.process.profile().map(Path::to_path_buf))
    }

    async fn browser(&self) -> Result<Arc<Browser>, FetchError> {
        let mut running = self.running.lock().await;
        let limit = self.config.jobs_per_browser;
        if let Some(current) = running.as_mut()
            && !current.handler.is_finished()
            && !current.broken.load(std::sync::atomic::Ordering::Relaxed)
            && current.process.pid().is_none_or(process_alive)
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
            close(dead).await;
        }
        let profile = process::new_profile().map_err(|e| {
            FetchError::Transport(format!(
                "cannot create a browser profile in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
        // The binary itself, not Debian's wrapper script, which does not
        // exec: killing the wrapper would leave the browser running.
        let executable = real_executable(&self.config.executable);
        let mut builder = match &self.config.launcher {
            Some(launcher) => BrowserConfig::builder()
                .chrome_executable(launcher)
                .env(LAUNCH_ENV, executable.to_string_lossy())
                .env(process::PARENT_ENV, std::process::id().to_string()),
            None => BrowserConfig::builder().chrome_executable(&executable),
        };
        // The shell is headless by nature (the builder's default, plain
        // `--headless`); full Chromium needs the new mode.
        if !is_headless_shell(&self.config.executable) {
            // Every isolated context is a window, and Chromium 156 builds a
            // window's omnibox popup as WebUI (a page of its own) for every
            // job. Off (as Puppeteer has it), a page costs about a third less
            // CPU (BENCHMARKS.md, issue 16). Merged into chromiumoxide's own
            // `--disable-features` list: Chromium reads only one such switch.
            builder = builder
                .new_headless_mode()
                .arg(("disable-features", &["WebUIOmniboxPopup", "WebUIOmniboxAimPopup"][..]));
        }
        let config = builder
            // chromiumoxide tells every page to ignore certificate errors
            // unless asked not to; with TLS passthrough the browser's check
            // is the only one there is.
            .respect_https_errors()
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
        let pid = browser.get_mut_child().and_then(|child| child.inner.id());
        let process = BrowserProcess::new(pid, self.config.launcher.is_some(), profile);
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
        let browser = Arc::new(browser);
        *running = Some(Running {
            process,
            browser: browser.clone(),
            handler,
            broken: Default::default(),
            sessions: 1,
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
        let key = match &self.gateway {
            Some(_) => Some(
                self.credentials
                    .key(agent)
                    .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?
                    .to_string(),
            ),
            None => None,
        };
        let slot = self
            .pages
            .acquire()
            .await
            .map_err(|_| FetchError::Transport("pool closed".into()))?;
        let mut browser = self.browser().await?;
        let params = match &self.gateway {
            Some(gateways) => CreateBrowserContextParams::builder()
                .proxy_server(gateways.pick().await.to_string())
                // Chromium skips the proxy for loopback unless told not to.
                .proxy_bypass_list("<-loopback>")
                .build(),
            None => CreateBrowserContextParams::default(),
        };
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
            page: BrowserPage(page),
            _slot: slot,
        };
        let Some(key) = key else {
            return Ok(session);
        };
        let auth = cdp(session.page.0.authenticate(ProxyCredentials {
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
    let traceparent = clawgress_telemetry::traceparent(&tracing::Span::current());
    let loaded = session.page.load(job, traceparent).await?;
    Ok((
        loaded.page,
        BrowserExtras {
            screenshot: loaded.screenshot,
        },
    ))
}

/// Closes a browser, kills what is left of its process group, reaps it and
/// removes its profile.
async fn close(running: Running) {
    let Running {
        mut process,
        browser,
        handler,
        ..
    } = running;
    match Arc::try_unwrap(browser) {
        Ok(mut browser) => {
            let _ = tokio::time::timeout(CDP_TIMEOUT, browser.close()).await;
            // Exited (a zombie until reaped: its pid and group id stay
            // ours), or given up on.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while process.pid().is_some_and(process_alive) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Zygotes, renderers and helpers that did not follow it.
            process.kill();
            let _ = tokio::time::timeout(CDP_TIMEOUT, browser.kill()).await;
            process.reaped();
        }
        // Still shared (a session the pool no longer tracks): the kill below
        // ends it; its handle reaps it when dropped.
        Err(_) => process.kill(),
    }
    handler.abort();
    // Dropping `process` removes the profile.
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

/// One job's browser context and page.
pub struct Session<'a> {
    pool: &'a ChromiumPool,
    browser: Arc<Browser>,
    context: BrowserContextId,
    pub page: BrowserPage,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Session<'_> {
    type Target = BrowserPage;

    fn deref(&self) -> &BrowserPage {
        &self.page
    }
}

impl Session<'_> {
    /// Closes the page and disposes of the context.
    pub async fn close(self) {
        let Session {
            pool,
            browser,
            context,
            page,
            _slot,
        } = self;
        let _ = tokio::time::timeout(CDP_TIMEOUT, page.0.close()).await;
        let _ = tokio::time::timeout(CDP_TIMEOUT, browser.dispose_browser_context(context)).await;
        drop(browser);
        pool.close_retired().await;
    }
}
