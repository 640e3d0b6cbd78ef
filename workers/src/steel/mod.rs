//! The `steel` backend: a pool of Steel Browser servers, each leased to one
//! job at a time.
//!
//! A Steel server runs one browser session per process: a second session
//! beside a live one kills the first one's browser (`SingletonLock: File
//! exists`, then `TargetCloseError`). So each server is leased exclusively,
//! jobs beyond the servers wait for a lease (up to `queue_per_server` each),
//! a server that fails is `steel_unavailable` with its URL and the job moves
//! to another server, and a failed server is passed over for a while.
//!
//! Every page goes through the gateway, and the backend checks that it did:
//! the session's proxy is the gateway with the agent's credential, the
//! browser cache is off, and the gateway's audit trail must show the job's
//! navigation (`witness`); otherwise the job fails `bypassed_gateway`.

mod discovery;
mod server;
mod witness;

#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use discovery::Source;
pub use server::SteelServer;
pub use witness::{Navigation, Sighting, Witness};

use crate::credentials::Credentials;
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};
use crate::page::{BrowserExtras, Loaded};

/// How long a server that failed is passed over while others are healthy.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// The Steel servers and how their pages are checked.
#[derive(Debug, Clone)]
pub struct SteelConfig {
    /// Base URLs, e.g. `http://127.0.0.1:3000`, or `dns+http://NAME:PORT`
    /// for one server per address of NAME (a headless Service).
    pub servers: Vec<String>,
    /// The gateway as the Steel servers reach it, e.g. `http://127.0.0.1:3128`.
    pub gateway: String,
    /// Jobs that may wait for a lease, per server; beyond that a job is
    /// answered [`FetchError::SteelBusy`] and goes back to the queue.
    pub queue_per_server: usize,
    /// Checks each page against the gateway's audit trail. `None` turns the
    /// check off (`--steel-verify off`): a page that went around the
    /// gateway is then returned like any other.
    pub witness: Option<Witness>,
}

/// What operators watch: servers by state, and failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteelStats {
    pub busy: usize,
    pub free: usize,
    /// Free, but passed over after a recent failure.
    pub down: usize,
    /// Jobs waiting for a lease.
    pub waiting: usize,
    /// Sessions that failed on the server's side (`steel_unavailable`).
    pub session_failures: u64,
    /// Pages the gateway did not see (`bypassed_gateway`).
    pub bypassed: u64,
}

#[derive(Debug, Clone)]
struct ServerState {
    server: SteelServer,
    busy: bool,
    down_until: Option<Instant>,
    /// Its address left the name it came from: never leased again (kept so
    /// indices stay put).
    gone: bool,
}

impl ServerState {
    fn down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| until > now)
    }

    fn new(server: SteelServer) -> ServerState {
        ServerState {
            server,
            busy: false,
            down_until: None,
            gone: false,
        }
    }
}

/// How often names (`dns+`) are looked up again for new or vanished servers.
const REDISCOVER: Duration = Duration::from_secs(30);

pub struct SteelPool {
    sources: Vec<Source>,
    discovered: Mutex<Option<Instant>>,
    state: Mutex<Vec<ServerState>>,
    released: tokio::sync::Notify,
    waiting: AtomicUsize,
    credentials: Credentials,
    config: SteelConfig,
    session_failures: AtomicU64,
    bypassed: AtomicU64,
}

impl std::fmt::Debug for SteelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteelPool")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// A server leased to one job; free again when dropped.
pub struct Lease<'a> {
    pool: &'a SteelPool,
    index: usize,
    server: SteelServer,
}

impl Lease<'_> {
    pub fn server(&self) -> &SteelServer {
        &self.server
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.pool.lock().get_mut(self.index) {
            state.busy = false;
        }
        self.pool.released.notify_waiters();
    }
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SteelPool {
    pub fn new(config: SteelConfig, credentials: Credentials) -> Result<SteelPool, String> {
        if config.servers.is_empty() {
            return Err("no Steel Browser server given".to_string());
        }
        let sources = config
            .servers
            .iter()
            .map(|text| Source::parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        // Fixed addresses are servers at once; names are looked up by
        // `discover`.
        let fixed: Vec<ServerState> = sources
            .iter()
            .filter_map(|source| match source {
                Source::Fixed(base) => Some(ServerState::new(SteelServer::new(base))),
                Source::EveryAddress { .. } => None,
            })
            .collect();
        url::Url::parse(&config.gateway).map_err(|e| format!("the gateway for Steel ({}): {e}", config.gateway))?;
        Ok(SteelPool {
            sources,
            discovered: Mutex::new(None),
            state: Mutex::new(fixed),
            released: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            credentials,
            config,
            session_failures: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
        })
    }

    /// The servers known now (fixed ones, and those names resolved to).
    pub fn servers(&self) -> Vec<SteelServer> {
        self.lock()
            .iter()
            .filter(|s| !s.gone)
            .map(|s| s.server.clone())
            .collect()
    }

    /// Looks names (`dns+`) up again, at most every [`REDISCOVER`] unless
    /// `now`: new addresses become servers, vanished ones are no longer leased.
    pub async fn discover(&self, now: bool) {
        let names: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| matches!(s, Source::EveryAddress { .. }))
            .collect();
        if names.is_empty() {
            return;
        }
        {
            let mut last = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
            if !now && last.is_some_and(|at| at.elapsed() < REDISCOVER) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut found = Vec::new();
        for name in names {
            found.extend(name.servers().await);
        }
        let fixed: Vec<String> = self
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Fixed(base) => Some(base.clone()),
                Source::EveryAddress { .. } => None,
            })
            .collect();
        let mut state = self.lock();
        for entry in state.iter_mut() {
            let url = entry.server.url().to_string();
            entry.gone = !fixed.contains(&url) && !found.contains(&url);
        }
        for url in found {
            if !state.iter().any(|s| s.server.url() == url) {
                tracing::info!(server = %url, "a Steel server appeared");
                state.push(ServerState::new(SteelServer::new(&url)));
            }
        }
        drop(state);
        self.released.notify_waiters();
    }

    /// Waits (up to `limit`) for the sessions of cancelled jobs to be
    /// released: Steel never ends a session itself, and a session left live
    /// keeps the server busy for every client.
    pub async fn shutdown(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.servers().iter().any(SteelServer::releasing) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServerState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> SteelStats {
        let now = Instant::now();
        let state = self.lock();
        let live = state.iter().filter(|s| !s.gone).count();
        let busy = state.iter().filter(|s| s.busy).count();
        let down = state.iter().filter(|s| !s.busy && !s.gone && s.down(now)).count();
        SteelStats {
            busy,
            free: live.saturating_sub(busy + down),
            down,
            waiting: self.waiting.load(Ordering::Relaxed),
            session_failures: self.session_failures.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
        }
    }

    /// A free server now, if one is healthy; never waits. For `auto`, which
    /// must not queue behind busy Steel servers.
    pub fn try_lease(&self) -> Option<Lease<'_>> {
        self.try_lease_excluding(&[])
    }

    fn try_lease_excluding(&self, exclude: &[usize]) -> Option<Lease<'_>> {
        let now = Instant::now();
        let mut state = self.lock();
        let index = (0..state.len())
            .find(|i| !exclude.contains(i) && !state[*i].busy && !state[*i].gone && !state[*i].down(now))?;
        state[index].busy = true;
        let server = state[index].server.clone();
        Some(Lease {
            pool: self,
            index,
            server,
        })
    }

    /// Whether a job could wait for a lease now (the queue has room).
    pub fn has_room(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) < self.queue_capacity()
    }

    fn live(&self) -> usize {
        self.lock().iter().filter(|s| !s.gone).count()
    }

    fn queue_capacity(&self) -> usize {
        self.live().max(1) * self.config.queue_per_server.max(1)
    }

    /// Waits for a free server other than those in `exclude`: a healthy one
    /// when any healthy one exists, else one that failed recently (its
    /// failure is then reported at once). [`FetchError::SteelBusy`] when the
    /// queue is full.
    pub async fn lease(&self, exclude: &[usize]) -> Result<Lease<'_>, FetchError> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_capacity() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(FetchError::SteelBusy);
        }
        let _waiting = Waiting(&self.waiting);
        loop {
            self.discover(false).await;
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before looking, so a release in between is not missed.
            released.as_mut().enable();
            if let Some(lease) = self.take(exclude) {
                return Ok(lease);
            }
            // Woken by a release, or in time to look the names up again.
            let _ = tokio::time::timeout(REDISCOVER, released).await;
        }
    }

    fn take(&self, exclude: &[usize]) -> Option<Lease<'_>> {
        let now = Instant::now();
        let mut state = self.lock();
        let allowed: Vec<usize> = (0..state.len())
            .filter(|i| !exclude.contains(i) && !state[*i].gone)
            .collect();
        let any_healthy = allowed.iter().any(|&i| !state[i].down(now));
        let index = allowed
            .into_iter()
            .find(|&i| !state[i].busy && (!any_healthy || !state[i].down(now)))?;
        state[index].busy = true;
        let server = state[index].server.clone();
        Some(Lease {
            pool: self,
            index,
            server,
        })
    }

    /// Leases a server (waiting as [`lease`](Self::lease) does) and loads
    /// the job's page on it, moving to another server if it fails.
    pub async fn fetch(&self, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
        let lease = self.lease(&[]).await?;
        self.fetch_leased(lease, job).await
    }

    /// Loads the job's page on the leased server; when the server fails,
    /// on each other server in turn, then gives up with its error.
    pub async fn fetch_leased(
        &self,
        mut lease: Lease<'_>,
        job: &ScrapeJob,
    ) -> Result<(Fetched, BrowserExtras), FetchError> {
        let mut tried = Vec::new();
        loop {
            match self.fetch_on(&lease, job).await {
                // In use by another client: another free server, or back to
                // the queue for a moment.
                Err(FetchError::SteelBusy) => {
                    tried.push(lease.index);
                    drop(lease);
                    match self.try_lease_excluding(&tried) {
                        Some(next) => lease = next,
                        None => return Err(FetchError::SteelBusy),
                    }
                }
                Err(error @ FetchError::SteelUnavailable { .. }) => {
                    tracing::warn!(job = %job.id, %error, "the Steel server failed; trying another");
                    self.session_failures.fetch_add(1, Ordering::Relaxed);
                    self.mark(lease.index, Some(Instant::now() + DOWN_FOR));
                    tried.push(lease.index);
                    drop(lease);
                    if tried.len() >= self.live() {
                        return Err(error);
                    }
                    lease = self.lease(&tried).await?;
                }
                outcome => {
                    self.mark(lease.index, None);
                    if matches!(outcome, Err(FetchError::BypassedGateway(_))) {
                        self.bypassed.fetch_add(1, Ordering::Relaxed);
                    }
                    return outcome;
                }
            }
        }
    }

    fn mark(&self, index: usize, down_until: Option<Instant>) {
        if let Some(state) = self.lock().get_mut(index) {
            state.down_until = down_until;
        }
    }

    async fn fetch_on(&self, lease: &Lease<'_>, job: &ScrapeJob) -> Result<(Fetched, BrowserExtras), FetchError> {
        let proxy_url = proxy_url(&self.config.gateway, &self.credentials, &job.agent)?;
        let traceparent = clawgress_telemetry::traceparent(&tracing::Span::current()).unwrap_or_else(new_traceparent);
        let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_string();
        let since = chrono::Utc::now();
        let loaded = lease.server().load(job, &proxy_url, traceparent).await;
        let navigation = Navigation {
            agent: &job.agent,
            url: &job.url,
            since,
            trace_id: &trace_id,
        };
        self.checked(loaded, &navigation).await
    }

    /// The page, if the gateway saw it; a failed load, explained by the
    /// gateway's record where it has one (a refused `CONNECT` reaches the
    /// browser only as a broken tunnel).
    async fn checked(
        &self,
        loaded: Result<Loaded, FetchError>,
        navigation: &Navigation<'_>,
    ) -> Result<(Fetched, BrowserExtras), FetchError> {
        let witness = self.config.witness.as_ref();
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error @ (FetchError::Transport(_) | FetchError::Timeout)) => {
                if let Some(witness) = witness
                    && let Ok(Sighting::Refused(refusal)) = witness.look(navigation).await
                {
                    return Err(refusal);
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        if let Some(refusal) = refusal_in(&loaded.page.body) {
            return Err(refusal);
        }
        if loaded.navigation.from_cache {
            return Err(FetchError::BypassedGateway(format!(
                "{} came from the browser's cache",
                navigation.url
            )));
        }
        let extras = BrowserExtras {
            screenshot: loaded.screenshot,
        };
        let Some(witness) = witness else {
            return Ok((loaded.page, extras));
        };
        match witness.look(navigation).await? {
            Sighting::Allowed { request_id } => Ok((
                Fetched {
                    request_id: Some(request_id),
                    ..loaded.page
                },
                extras,
            )),
            Sighting::Refused(refusal) => Err(refusal),
            Sighting::Unseen => Err(FetchError::BypassedGateway(format!(
                "the gateway has no record of {} for agent {} (start Steel's Chromium with \
                 --proxy-bypass-list=<-loopback>, and do not name Steel's own HOST in jobs)",
                navigation.url, navigation.agent
            ))),
        }
    }
}

/// The gateway URL with the agent's credential, for Steel's `proxyUrl`.
fn proxy_url(gateway: &str, credentials: &Credentials, agent: &str) -> Result<String, FetchError> {
    let key = credentials
        .key(agent)
        .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?;
    let mut url = url::Url::parse(gateway).map_err(|e| FetchError::Transport(format!("gateway URL: {e}")))?;
    if url.set_username(agent).is_err() || url.set_password(Some(key)).is_err() {
        return Err(FetchError::Transport(format!(
            "gateway URL {gateway} cannot carry a credential"
        )));
    }
    Ok(url.to_string())
}

/// A W3C traceparent with a fresh random trace id, for a job traced by
/// nobody: the gateway records its trace id, which names the navigation.
fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// A gateway refusal rendered as the page: the problem document's reason.
fn refusal_in(body: &str) -> Option<FetchError> {
    let start = body.find("{\"type\":\"https://clawgress.dev/problems/")?;
    let end = body[start..].find("</")? + start;
    let problem: serde_json::Value = serde_json::from_str(&body[start..end]).ok()?;
    let status = problem["status"].as_u64().unwrap_or(0) as u16;
    Some(FetchError::from_gateway(status, &problem, None))
}
