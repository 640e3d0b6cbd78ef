//! The `chromium` backend: headless Chromium (Debian's
//! `chromium-headless-shell`, else `chromium`) driven over CDP with
//! chromiumoxide, every request through the gateway.
//!
//! One browser process serves many jobs. Each job runs in a page of a
//! browser context of its own agent, whose proxy is the gateway and whose
//! credential answers the gateway's 407 through CDP auth handling; the page
//! and context stay warm for that agent's next job and are wiped in between
//! (`lanes.rs`), so no cookie, storage or history crosses from one job to
//! the next. A browser that crashes is replaced on the next job; every CDP
//! call has a timeout; contexts are always disposed; the process is reaped.
//! Browsers never outlive the worker, and their profiles go with them
//! (`process.rs`).

mod lanes;
mod process;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::auth::Credentials as ProxyCredentials;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{Mutex, Semaphore};

use crate::credentials::Credentials;
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};
pub use crate::page::{BrowserExtras, MAX_SCREENSHOT, Navigation};
use crate::page::{CDP_TIMEOUT, cdp};
pub use lanes::LANE_IDLE;
use lanes::{IdleLanes, Lane, LaneKey};
use process::BrowserProcess;
pub use process::{LAUNCH_ENV, exec_browser_if_asked, kill_all_browsers, real_executable, sweep_stale_profiles};
pub use session::Session;

#[derive(Debug, Clone)]
pub struct ChromiumConfig {
    pub executable: PathBuf,
    /// Pages open at once in the browser.
    pub max_pages: usize,
    /// Jobs one browser serves before it is replaced (0: no limit). A
    /// long-lived browser accumulates memory; 1 means a browser per job.
    pub jobs_per_browser: u64,
    /// Jobs one warm page (a browser context of its own, wiped between
    /// jobs) serves before it is closed (0: no limit; 1: a fresh context
    /// and page per job, as strict as it gets, at a new renderer process
    /// per job).
    pub jobs_per_page: u64,
    /// A warm page unused for this long is closed, and its renderer's
    /// memory goes back.
    pub page_idle: Duration,
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

/// A warm page's share of jobs: enough to spare nearly every renderer
/// start, few enough that what a renderer accumulates is bounded.
pub const DEFAULT_JOBS_PER_PAGE: u64 = 100;

impl Default for ChromiumConfig {
    fn default() -> Self {
        ChromiumConfig {
            executable: find_browser().unwrap_or_else(|| PathBuf::from(BROWSERS[1])),
            max_pages: 8,
            jobs_per_browser: 0,
            jobs_per_page: DEFAULT_JOBS_PER_PAGE,
            page_idle: LANE_IDLE,
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
    broken: Arc<AtomicBool>,
    /// Sessions opened in this browser.
    sessions: u64,
    /// Which launch of the pool this is: warm pages belong to one.
    generation: u64,
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
    /// Warm pages between jobs.
    idle: Arc<IdleLanes>,
    /// Whether the task that closes warm pages left unused runs.
    sweeping: AtomicBool,
    launches: AtomicU64,
    contexts: AtomicU64,
    reused: AtomicU64,
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
        let idle = Arc::new(IdleLanes::new(config.page_idle));
        ChromiumPool {
            gateway: None,
            credentials,
            config,
            running: Mutex::new(None),
            retiring: Mutex::new(Vec::new()),
            pages,
            idle,
            sweeping: AtomicBool::new(false),
            launches: Default::default(),
            contexts: Default::default(),
            reused: Default::default(),
        }
    }

    /// Browsers started so far (a crashed one is replaced by a new launch).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// Browser contexts (with their page) opened so far.
    pub fn contexts_opened(&self) -> u64 {
        self.contexts.load(Ordering::Relaxed)
    }

    /// Jobs that ran in a warm page instead of a new one.
    pub fn pages_reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Warm pages waiting for a job.
    pub fn pages_idle(&self) -> usize {
        self.idle.len()
    }

    /// The running browser's profile directory, which names its processes
    /// (`--user-data-dir=...`), for operators and crash tests.
    pub async fn profile_dir(&self) -> Option<PathBuf> {
        let running = self.running.lock().await;
        running
            .as_ref()
            .and_then(|r| r.process.profile().map(Path::to_path_buf))
    }

    /// The running browser (started, or replaced, as needed) and its
    /// generation, counting a session in it.
    async fn browser(&self) -> Result<(Arc<Browser>, u64), FetchError> {
        let mut running = self.running.lock().await;
        let limit = self.config.jobs_per_browser;
        if let Some(current) = running.as_mut()
            && !current.handler.is_finished()
            && !current.broken.load(Ordering::Relaxed)
            && current.process.pid().is_none_or(process_alive)
        {
            if limit == 0 || current.sessions < limit {
                current.sessions += 1;
                return Ok((current.browser.clone(), current.generation));
            }
            if let Some(worn) = running.take() {
                // Its warm pages go with the caller's `close_surplus`; its
                // pages in use, when their jobs end.
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
            // CPU. The spare renderer full Chromium keeps started is never
            // the one a warm page needs, so every navigation started another
            // for nothing (BENCHMARKS.md, issue 16). Merged into
            // chromiumoxide's own `--disable-features` list: Chromium reads
            // only one such switch.
            builder = builder.new_headless_mode().arg((
                "disable-features",
                &[
                    "WebUIOmniboxPopup",
                    "WebUIOmniboxAimPopup",
                    "SpareRendererForSitePerProcess",
                ][..],
            ));
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
        let generation = self.launches.fetch_add(1, Ordering::Relaxed) + 1;
        let browser = Arc::new(browser);
        *running = Some(Running {
            process,
            browser: browser.clone(),
            handler,
            broken: Default::default(),
            sessions: 1,
            generation,
        });
        Ok((browser, generation))
    }

    /// The generation of the running browser, if it is healthy.
    async fn healthy_generation(&self) -> Option<u64> {
        let running = self.running.lock().await;
        running
            .as_ref()
            .filter(|r| !r.broken.load(Ordering::Relaxed) && !r.handler.is_finished())
            .map(|r| r.generation)
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
            running.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Closes warm pages no job may use any more (see
    /// [`IdleLanes::take_surplus`]), then the retired browsers they kept.
    async fn close_surplus(&self, generation: Option<u64>, keep: usize) {
        let surplus = self.idle.take_surplus(generation, keep);
        if surplus.is_empty() {
            return;
        }
        // A browser that stopped answering would hold the job for a CDP
        // timeout: past this, the pages left are disposed of in the
        // background (Lane's Drop).
        let closing = futures_util::future::join_all(surplus.into_iter().map(Lane::close));
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        self.close_retired().await;
    }

    /// Warm pages unused for `page_idle` are closed even when no job
    /// comes: a task, started with the first warm page, that ends with the
    /// pool.
    fn sweep_idle_pages(&self) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let idle = Arc::downgrade(&self.idle);
        let period = (self.config.page_idle / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(lanes) = idle.upgrade() else { return };
                let expired = lanes.take_surplus(None, usize::MAX);
                drop(lanes);
                futures_util::future::join_all(expired.into_iter().map(Lane::close)).await;
            }
        });
    }

    /// Closes the warm pages and the browser, and reaps its process.
    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.idle.take_all().into_iter().map(Lane::close)).await;
        if let Some(running) = self.running.lock().await.take() {
            close(running).await;
        }
        for running in std::mem::take(&mut *self.retiring.lock().await) {
            close(running).await;
        }
    }

    /// A page for `agent` in a browser context of its own (proxy: the
    /// gateway, with the agent's credential ready for its 407): a warm one
    /// the agent's last job left, wiped, or a new one. End it with
    /// [`Session::release`] when the page is still sound, else
    /// [`Session::close`].
    pub async fn session(&self, agent: &str) -> Result<Session<'_>, FetchError> {
        let credential = match &self.gateway {
            Some(_) => Some(ProxyCredentials {
                username: agent.to_string(),
                password: self
                    .credentials
                    .key(agent)
                    .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?
                    .to_string(),
            }),
            None => None,
        };
        let slot = self
            .pages
            .acquire()
            .await
            .map_err(|_| FetchError::Transport("pool closed".into()))?;
        let (browser, generation) = self.browser().await?;
        // Pages of a browser that went away or retired, and pages unused too long.
        self.close_surplus(Some(generation), usize::MAX).await;
        while let Some(mut lane) = self.idle.take(generation, |key| key.agent == agent) {
            let gateway_answers = match (&self.gateway, &lane.key.gateway) {
                (Some(gateways), Some(url)) => gateways.still_answers(url).await,
                _ => true,
            };
            if gateway_answers {
                lane.take_job();
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Session {
                    pool: self,
                    lane,
                    _slot: slot,
                });
            }
            lane.close().await;
        }
        // A new page: room is made by closing the least recently used warm
        // pages (of other agents) beyond the pool's size.
        let in_use = self.config.max_pages.max(1) - self.pages.available_permits();
        self.close_surplus(Some(generation), self.config.max_pages.max(1).saturating_sub(in_use))
            .await;
        let mut lane = self.open_lane(agent, credential, browser, generation).await?;
        lane.take_job();
        Ok(Session {
            pool: self,
            lane,
            _slot: slot,
        })
    }

    async fn open_lane(
        &self,
        agent: &str,
        credential: Option<ProxyCredentials>,
        mut browser: Arc<Browser>,
        mut generation: u64,
    ) -> Result<Lane, FetchError> {
        let gateway = match &self.gateway {
            Some(gateways) => Some(gateways.pick().await.to_string()),
            None => None,
        };
        let params = match &gateway {
            Some(gateway) => CreateBrowserContextParams::builder()
                .proxy_server(gateway.clone())
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
                (browser, generation) = self.browser().await?;
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
        self.contexts.fetch_add(1, Ordering::Relaxed);
        let key = LaneKey {
            agent: agent.to_string(),
            gateway,
        };
        Lane::open(key, generation, browser, context, page, credential).await
    }

    /// Loads the job's page in a fresh session, waits for `wait_for` (or,
    /// briefly, for required values to render), and returns the document.
    pub async fn fetch(&self, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
        let session = self.session(&job.agent).await?;
        session.visited(&job.url);
        let result = tokio::time::timeout(job.timeout, load(&session, job))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        // Always, on success, error and timeout alike.
        session.end(&result).await;
        result
    }
}

async fn load(session: &Session<'_>, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
    let traceparent = clawgress_telemetry::traceparent(&tracing::Span::current());
    let loaded = session.load(job, traceparent).await?;
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
