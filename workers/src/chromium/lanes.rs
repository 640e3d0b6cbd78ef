//! Warm pages: a browser context with one page, kept between one agent's
//! jobs and wiped in between.
//!
//! Opening a context and a page per job costs a new renderer process every
//! time (about half the CPU of a small page here: BENCHMARKS.md, issue 16).
//! A lane keeps both, so a job on the same site lands in a renderer that is
//! already running, while what one job leaves behind never reaches the next:
//! between jobs the context's cookies, the storage of every origin whose
//! document the page loaded (local and session storage, IndexedDB, caches,
//! service workers), the page's history and its extra headers are cleared,
//! its heap is garbage-collected every few jobs, and the page is frozen so
//! its scripts stop. The HTTP cache is off, as
//! every page must reach the gateway. A lane serves one agent only (the
//! gateway knows it by the credential its context answered with), and is
//! closed after a job that failed, a popup it opened, its share of jobs or
//! a while unused ([`LANE_IDLE`] by default).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::dom_storage::{ClearParams as ClearDomStorage, StorageId};
use chromiumoxide::cdp::browser_protocol::network::{EventRequestWillBeSent, ResourceType};
use chromiumoxide::cdp::browser_protocol::page::{
    ResetNavigationHistoryParams, SetWebLifecycleStateParams, SetWebLifecycleStateState,
};
use chromiumoxide::cdp::browser_protocol::storage::{ClearCookiesParams, ClearDataForOriginParams};
use chromiumoxide::cdp::browser_protocol::target::GetTargetsParams;
use chromiumoxide::cdp::js_protocol::heap_profiler::CollectGarbageParams;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::outcome::FetchError;
use crate::page::{BrowserPage, CDP_TIMEOUT, cdp};

/// By default, a warm page nobody used for this long is closed (its
/// renderer's memory goes back).
pub const LANE_IDLE: Duration = Duration::from_secs(30);

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
    /// Origins of the documents the page loaded since it was last wiped.
    documents: Arc<Mutex<BTreeSet<String>>>,
    watcher: JoinHandle<()>,
    /// Jobs the lane served, the current one included.
    pub jobs: u64,
    idle_since: Instant,
    frozen: bool,
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
        let documents = Arc::new(Mutex::new(BTreeSet::new()));
        let watcher = match page.event_listener::<EventRequestWillBeSent>().await {
            Ok(mut requests) => {
                let documents = documents.clone();
                tokio::spawn(async move {
                    while let Some(request) = requests.next().await {
                        if request.r#type == Some(ResourceType::Document)
                            && let Some(origin) = storage_origin(&request.request.url)
                            && let Ok(mut documents) = documents.lock()
                        {
                            documents.insert(origin);
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
            watcher,
            jobs: 0,
            idle_since: Instant::now(),
            frozen: false,
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

    /// Ready for a job: thawed if it was frozen.
    pub async fn wake(&mut self) -> Result<(), FetchError> {
        if self.frozen {
            cdp(self.page.0.execute(lifecycle(SetWebLifecycleStateState::Active))).await?;
            self.frozen = false;
        }
        self.jobs += 1;
        Ok(())
    }

    /// Clears what the last job left (see the module's text) and freezes
    /// the page. `Err` when that could not be done, or when the job left
    /// more than its page (a popup): the lane must be closed instead.
    pub async fn wipe(&mut self) -> Result<(), FetchError> {
        let origins = match self.documents.lock() {
            Ok(mut documents) => std::mem::take(&mut *documents),
            Err(_) => return Err(FetchError::Transport("the page's document list is poisoned".into())),
        };
        let page = &self.page.0;
        let storage = futures_util::future::try_join_all(origins.iter().map(|origin| async move {
            cdp(page.execute(ClearDataForOriginParams::new(origin.clone(), "all"))).await?;
            let session = StorageId {
                security_origin: Some(origin.clone()),
                storage_key: None,
                is_local_storage: false,
            };
            cdp(page.execute(ClearDomStorage::new(session))).await
        }));
        let cookies = cdp(self.browser.execute(
            ClearCookiesParams::builder()
                .browser_context_id(self.context.clone())
                .build(),
        ));
        let history = cdp(page.execute(ResetNavigationHistoryParams::default()));
        let headers = self.page.set_headers(serde_json::json!({}));
        let targets = cdp(self.browser.execute(GetTargetsParams::default()));
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
        let (storage, cookies, history, headers, targets, garbage) =
            tokio::join!(storage, cookies, history, headers, targets, garbage);
        storage?;
        cookies?;
        history?;
        headers?;
        garbage?;
        let ours = page.target_id();
        let others = targets?
            .result
            .target_infos
            .iter()
            .filter(|t| t.browser_context_id.as_ref() == Some(&self.context) && &t.target_id != ours)
            .count();
        if others > 0 {
            return Err(FetchError::Transport(format!(
                "the job left {others} other page(s) open"
            )));
        }
        cdp(page.execute(lifecycle(SetWebLifecycleStateState::Frozen))).await?;
        self.frozen = true;
        self.idle_since = Instant::now();
        Ok(())
    }

    /// Closes the page and disposes of the context (its popups with it).
    pub async fn close(mut self) {
        self.closed = true;
        self.watcher.abort();
        let _ = tokio::time::timeout(CDP_TIMEOUT, self.page.0.clone().close()).await;
        let _ = tokio::time::timeout(CDP_TIMEOUT, self.browser.dispose_browser_context(self.context.clone())).await;
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

fn lifecycle(state: SetWebLifecycleStateState) -> SetWebLifecycleStateParams {
    SetWebLifecycleStateParams { state }
}

/// The origin whose storage a document of `url` can write: http(s) only
/// (about:, data: and blob: documents have none of their own, or an
/// opaque one that dies with them).
pub(super) fn storage_origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
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

    /// The lanes of the browser of `generation`.
    pub fn take_generation(&self, generation: u64) -> Vec<Lane> {
        let mut lanes = self.lanes();
        let (out, stay): (Vec<Lane>, Vec<Lane>) = lanes.drain(..).partition(|lane| lane.generation == generation);
        *lanes = stay;
        out
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
