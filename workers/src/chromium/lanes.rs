//! Warm pages: a browser context with one page, kept between one agent's
//! jobs and wiped in between.
//!
//! Opening a context and a page per job costs a new renderer process every
//! time. A lane keeps both, while what one job leaves behind never reaches
//! the next: between jobs the page's scripts are stopped (no timer or
//! unload handler of the job's runs after the clearing), the session
//! storage of its document cleared, and the page leaves for about:blank;
//! then the context's cookies, the storage of every origin whose document
//! the page loaded (local storage, IndexedDB, caches, service workers), the
//! page's history and its extra headers are cleared, and its heap is
//! garbage-collected every few jobs. The HTTP cache is off, as every page
//! must reach the gateway. A lane serves one agent only (the gateway knows
//! it by the credential its context answered with), and is closed after a
//! job that failed, a popup it opened, documents of several origins (an
//! earlier one in the main frame, or an iframe of another origin), its
//! share of jobs or a while unused ([`LANE_IDLE`] by default). Measured in BENCHMARKS.md (issue 16).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::dom_storage::{ClearParams as ClearDomStorage, StorageId};
use chromiumoxide::cdp::browser_protocol::emulation::SetScriptExecutionDisabledParams;
use chromiumoxide::cdp::browser_protocol::network::{EventRequestWillBeSent, ResourceType};
use chromiumoxide::cdp::browser_protocol::page::{EventFrameNavigated, ResetNavigationHistoryParams};
use chromiumoxide::cdp::browser_protocol::storage::{ClearCookiesParams, ClearDataForOriginParams};
use chromiumoxide::cdp::browser_protocol::target::{EventTargetCreated, GetTargetsParams};
use chromiumoxide::cdp::js_protocol::heap_profiler::CollectGarbageParams;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::outcome::FetchError;
use crate::page::{BrowserPage, CDP_TIMEOUT, cdp};

/// By default, a warm page nobody used for this long is closed (its
/// renderer's memory goes back).
pub const LANE_IDLE: Duration = Duration::from_secs(30);

/// Longest wait for a page to leave its document between jobs.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A warm page's script heap is collected after every this many jobs.
const COLLECT_EVERY: u64 = 4;

/// Who may use a lane: the agent whose credential its context holds, through
/// the gateway its context's proxy names (`None`: behind the host edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneKey {
    pub agent: String,
    pub gateway: Option<String>,
}

/// One browser context and its page.
pub struct Lane {
    pub key: LaneKey,
    /// The browser launch the lane belongs to.
    pub generation: u64,
    pub browser: Arc<Browser>,
    context: BrowserContextId,
    pub page: BrowserPage,
    /// Origins of the documents the page asked for since it was last wiped
    /// (redirect hops and iframes included), and of those its frames
    /// committed (whose session storage must be cleared).
    documents: Arc<Mutex<Documents>>,
    /// Counts the page's main frame committing about:blank.
    blanked: tokio::sync::watch::Receiver<u64>,
    watcher: JoinHandle<()>,
    /// Jobs the lane served, the current one included.
    pub jobs: u64,
    idle_since: Instant,
    /// Closed (or handed to a task that closes it): nothing left for Drop.
    closed: bool,
}

impl Lane {
    /// A lane on a new context: its page, with the cache off, the agent's
    /// credential ready for the gateway's 407, and a watch on the documents
    /// it loads. Closed again on any error.
    pub async fn open(
        key: LaneKey,
        generation: u64,
        browser: Arc<Browser>,
        context: BrowserContextId,
        page: chromiumoxide::Page,
        credential: Option<chromiumoxide::auth::Credentials>,
    ) -> Result<Lane, FetchError> {
        let documents = Arc::new(Mutex::new(Documents::default()));
        let (blanked_tx, blanked) = tokio::sync::watch::channel(0u64);
        let listeners = async {
            Ok::<_, chromiumoxide::error::CdpError>((
                page.event_listener::<EventRequestWillBeSent>().await?,
                page.event_listener::<EventFrameNavigated>().await?,
                browser.event_listener::<EventTargetCreated>().await?,
            ))
        };
        let watcher = match listeners.await {
            Ok((mut requests, mut commits, mut targets)) => {
                let documents = documents.clone();
                let blanked = blanked_tx;
                let ours = context.clone();
                tokio::spawn(async move {
                    loop {
                        let (asked, committed) = tokio::select! {
                            // An iframe in a renderer of its own (site
                            // isolation): its events reach the page's
                            // session only in some browsers, its target
                            // always.
                            Some(created) = targets.next() => {
                                let info = &created.target_info;
                                if info.r#type == "iframe" && info.browser_context_id.as_ref() == Some(&ours) {
                                    documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner).other_renderers += 1;
                                }
                                continue;
                            }
                            Some(request) = requests.next() => (
                                (request.r#type == Some(ResourceType::Document)).then(|| request.request.url.clone()),
                                None,
                            ),
                            Some(commit) = commits.next() => {
                                let main = commit.frame.parent_id.is_none();
                                if main && commit.frame.url == "about:blank" {
                                    blanked.send_modify(|count| *count += 1);
                                }
                                // Any frame's origin: its session storage
                                // (and, for a cross-site iframe, storage
                                // partitioned under the page's site) is
                                // only reachable while its document is.
                                (None, Some(commit.frame.url.clone()))
                            }
                            else => return,
                        };
                        let mut documents = documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Some(origin) = asked.as_deref().and_then(storage_origin) {
                            documents.asked.insert(origin);
                        }
                        if let Some(origin) = committed.as_deref().and_then(storage_origin) {
                            documents.committed.insert(origin);
                        }
                    }
                })
            }
            Err(error) => {
                let _ = tokio::time::timeout(CDP_TIMEOUT, page.close()).await;
                let _ = tokio::time::timeout(CDP_TIMEOUT, browser.dispose_browser_context(context)).await;
                return Err(FetchError::Transport(format!("browser: {error}")));
            }
        };
        let lane = Lane {
            key,
            generation,
            browser,
            context,
            page: BrowserPage(page),
            documents,
            blanked,
            watcher,
            jobs: 0,
            idle_since: Instant::now(),
            closed: false,
        };
        let ready = async {
            lane.page.disable_cache().await?;
            if let Some(credential) = credential {
                cdp(lane.page.0.authenticate(credential)).await?;
            }
            Ok::<(), FetchError>(())
        };
        match ready.await {
            Ok(()) => Ok(lane),
            Err(error) => {
                lane.close().await;
                Err(error)
            }
        }
    }

    /// Counts a job in.
    pub fn take_job(&mut self) {
        self.jobs += 1;
    }

    /// Records that the job loaded `url`, so its origin's storage is
    /// cleared whatever the page's own events say.
    pub fn visited(&self, url: &str) {
        if let Some(origin) = storage_origin(url) {
            let mut documents = self.documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            documents.asked.insert(origin);
        }
    }

    /// Clears what the last job left (see the module's text). `Err` when
    /// that could not be done, or when the job left more than its page (a
    /// popup): the lane must be closed instead.
    pub async fn wipe(&mut self) -> Result<(), FetchError> {
        let page = &self.page.0;
        let last = cdp(page.url()).await?;
        if let Some(url) = &last {
            self.visited(url);
        }
        let last = last.as_deref().and_then(storage_origin);
        // From here no script of the job's runs in the page's renderer: not
        // its timers, not its unload handlers, so nothing is written after
        // the clearing (an iframe in another renderer is not stopped: such
        // a page is not kept, below).
        cdp(page.execute(SetScriptExecutionDisabledParams::new(true))).await?;
        // The page's events are delivered after command answers: let the
        // watcher catch up. What arrives later is cleared next time.
        tokio::task::yield_now().await;
        let (asked, mut committed, other_renderers) = {
            let mut documents = self.documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let documents = std::mem::take(&mut *documents);
            (documents.asked, documents.committed, documents.other_renderers)
        };
        committed.extend(last.clone());
        // Session storage is the page's own, per origin, and CDP reaches it
        // only through a frame of that origin in the page's own renderer:
        // the last document's. A document of another origin, in the main
        // frame before (an agent's earlier `goto`, a page that navigated
        // itself) or in an iframe (a cross-site one is another renderer,
        // and its local storage and databases are partitioned under this
        // site, out of reach of the clearing below), cannot be reached:
        // then the page is closed, not kept.
        // The context's other targets, now that no script of the page's can
        // open more: a popup (another page) is more than the page, and an
        // iframe with a renderer of its own is asked for here too, as its
        // creation event may still be on its way.
        let targets = cdp(self.browser.execute(GetTargetsParams::default()))
            .await?
            .result
            .target_infos;
        let ours = page.target_id();
        let in_context = targets
            .iter()
            .filter(|t| t.browser_context_id.as_ref() == Some(&self.context) && &t.target_id != ours);
        let (mut popups, mut iframes) = (0, 0);
        for target in in_context {
            match target.r#type.as_str() {
                "page" => popups += 1,
                "iframe" => iframes += 1,
                // Workers went with their document.
                _ => {}
            }
        }
        if popups > 0 {
            return Err(FetchError::Transport(format!(
                "the job left {popups} other page(s) open"
            )));
        }
        if other_renderers + iframes > 0 || committed.iter().any(|origin| Some(origin) != last.as_ref()) {
            return Err(FetchError::Transport(
                "the job's page held documents of several origins (frames included): their storage cannot all be cleared"
                    .into(),
            ));
        }
        if let Some(origin) = &last {
            let session = StorageId {
                security_origin: Some(origin.clone()),
                storage_key: None,
                is_local_storage: false,
            };
            cdp(page.execute(ClearDomStorage::new(session))).await?;
        }
        // Then the document goes, for a blank page that the page itself
        // navigates to (the same from CDP measured slower in full Chromium,
        // and left renderers piling up): the next job starts from a blank
        // page (a fragment-only URL is a real load again, an agent job
        // without a `goto` sees nothing of the last page).
        let mut blanked = self.blanked.clone();
        blanked.mark_unchanged();
        cdp(page.evaluate_expression("location.href = 'about:blank'")).await?;
        let left = tokio::time::timeout(LEAVE_TIMEOUT, blanked.changed()).await;
        cdp(page.execute(SetScriptExecutionDisabledParams::new(false))).await?;
        if !matches!(left, Ok(Ok(()))) {
            return Err(FetchError::Transport("the page did not leave its document".into()));
        }
        let origins: BTreeSet<&String> = asked.iter().chain(&committed).collect();
        let storage = futures_util::future::try_join_all(
            origins
                .into_iter()
                .map(|origin| cdp(page.execute(ClearDataForOriginParams::new(origin.clone(), "all")))),
        );
        let cookies = cdp(self.browser.execute(
            ClearCookiesParams::builder()
                .browser_context_id(self.context.clone())
                .build(),
        ));
        // Back and forward lead nowhere: the blank page is the only entry.
        let history = cdp(page.execute(ResetNavigationHistoryParams::default()));
        let headers = self.page.set_headers(serde_json::json!({}));
        // The documents of past jobs are garbage that a page at rest is in no
        // hurry to collect: a warm renderer held about three times the
        // memory of a new one. Collected every few jobs, it stays about as
        // small as when collected after each, for a quarter of the CPU
        // (BENCHMARKS.md, issue 16).
        let garbage = async {
            if self.jobs.is_multiple_of(COLLECT_EVERY) {
                cdp(page.execute(CollectGarbageParams::default())).await?;
            }
            Ok::<(), FetchError>(())
        };
        let (storage, cookies, history, headers, garbage) = tokio::join!(storage, cookies, history, headers, garbage);
        storage?;
        cookies?;
        history?;
        headers?;
        garbage?;
        // An iframe that reached another renderer while the page was left
        // (its load committed after the page's scripts stopped, which stops
        // only the page's own renderer) belongs to this job, not the next.
        if self
            .documents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .other_renderers
            > 0
        {
            return Err(FetchError::Transport(
                "an iframe of another site loaded while the page was wiped".into(),
            ));
        }
        self.idle_since = Instant::now();
        Ok(())
    }

    /// Closes the page and disposes of the context (its popups with it).
    pub async fn close(mut self) {
        self.watcher.abort();
        let _ = tokio::time::timeout(CDP_TIMEOUT, self.page.0.clone().close()).await;
        let _ = tokio::time::timeout(CDP_TIMEOUT, self.browser.dispose_browser_context(self.context.clone())).await;
        // Only now: a close cancelled half-way still has Drop dispose of it.
        self.closed = true;
    }
}

impl Drop for Lane {
    /// A lane dropped unclosed (its job's task was cancelled mid-page):
    /// the context is disposed of in the background, so it does not stay in
    /// the browser until the browser goes.
    fn drop(&mut self) {
        self.watcher.abort();
        if self.closed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let browser = self.browser.clone();
            let context = self.context.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(CDP_TIMEOUT, browser.dispose_browser_context(context)).await;
            });
        }
    }
}

/// The origin whose storage a document of `url` can write: http(s) only
/// (about:, data: and blob: documents have none of their own, or an
/// opaque one that dies with them).
pub(super) fn storage_origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

/// The origins of a lane's documents since it was last wiped.
#[derive(Default)]
struct Documents {
    asked: BTreeSet<String>,
    committed: BTreeSet<String>,
    /// Iframes the browser gave a renderer of their own (cross-site).
    other_renderers: usize,
}

/// The lanes not in use, most recently used last.
pub struct IdleLanes {
    lanes: Mutex<Vec<Lane>>,
    /// A lane unused for this long is closed.
    idle: Duration,
}

impl IdleLanes {
    pub fn new(idle: Duration) -> IdleLanes {
        IdleLanes {
            lanes: Mutex::new(Vec::new()),
            idle,
        }
    }

    /// The list; a panic elsewhere while it was held leaves it whole.
    fn lanes(&self) -> std::sync::MutexGuard<'_, Vec<Lane>> {
        self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle lane of the browser of `generation`
    /// whose key `fits`.
    pub fn take(&self, generation: u64, fits: impl Fn(&LaneKey) -> bool) -> Option<Lane> {
        let mut lanes = self.lanes();
        let index = lanes
            .iter()
            .rposition(|lane| lane.generation == generation && fits(&lane.key))?;
        Some(lanes.remove(index))
    }

    pub fn put(&self, lane: Lane) {
        self.lanes().push(lane);
    }

    pub fn len(&self) -> usize {
        self.lanes().len()
    }

    pub fn take_all(&self) -> Vec<Lane> {
        self.lanes().drain(..).collect()
    }

    /// Takes out the lanes to close: of another browser than `generation`
    /// (when given), unused for longer than the pool's idle time, and the
    /// least recently used beyond `keep`.
    pub fn take_surplus(&self, generation: Option<u64>, keep: usize) -> Vec<Lane> {
        let mut lanes = self.lanes();
        let now = Instant::now();
        let (mut stay, mut out): (Vec<Lane>, Vec<Lane>) = lanes.drain(..).partition(|lane| {
            generation.is_none_or(|g| g == lane.generation) && now.duration_since(lane.idle_since) < self.idle
        });
        if stay.len() > keep {
            out.extend(stay.drain(..stay.len() - keep));
        }
        *lanes = stay;
        out
    }
}

#[cfg(test)]
mod tests;
