//! Politeness per host: at most `per_domain` jobs at once against one host
//! and at least `politeness` between two starts there, across every
//! scheduler (the slots live in the NATS KV bucket `clawgress-hosts`, see
//! [`shared`]) or, with `--politeness-scope local`, per process.
//!
//! A job that has to wait for its host gives back its place in the
//! scheduler's global pool while it waits and takes one again once its
//! host lets it start, so a flood for one host cannot idle the pool for
//! every other host. At most `queue` jobs wait per host on a scheduler;
//! further ones go back to the stream for a moment (`host_busy`, not an
//! attempt), where another scheduler, or this one later, takes them.

pub mod shared;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::run::Slot;
use shared::SharedSlots;

/// How often held slots are looked at: renewed, given back when idle or
/// above the fair share.
pub const TICK: Duration = Duration::from_millis(200);
/// Slots of a host with no job waiting go back after this long unused.
pub const IDLE_RETURN: Duration = Duration::from_millis(500);
/// A waiting job asks again this often, in case a change went unseen.
const RETRY_WANT: Duration = Duration::from_millis(250);
/// How long a job keeps its pool slot while the bucket is first asked for
/// a host's slot.
const FIRST_ASK: Duration = Duration::from_millis(100);
/// A politeness wait shorter than this keeps the job's pool slot.
const SHORT_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub per_domain: usize,
    pub politeness: Duration,
    /// Jobs that may wait for one host's slot on this scheduler.
    pub queue: usize,
}

/// Too many jobs already wait for this host here.
#[derive(Debug)]
pub struct Busy;

/// One host, as this scheduler sees it.
struct Host {
    key: String,
    /// Free slots this scheduler holds (a permit is a job's turn).
    permits: Arc<Semaphore>,
    /// Slots held: in use plus free.
    held: AtomicU32,
    waiting: AtomicU32,
    /// Slots to give back as the jobs using them end (fair share).
    to_release: AtomicU32,
    /// The held count differs from what the bucket says.
    dirty: AtomicBool,
    /// A slot request is on its way to the bucket.
    asking: AtomicBool,
    last_used: std::sync::Mutex<Instant>,
    last_written: std::sync::Mutex<Instant>,
    /// Local spacing (scope local, or the bucket unreachable).
    next_start: std::sync::Mutex<Instant>,
    /// One bucket operation at a time for this host.
    writer: tokio::sync::Mutex<()>,
}

impl Host {
    fn new(key: String, held: u32) -> Host {
        let now = Instant::now();
        Host {
            key,
            permits: Arc::new(Semaphore::new(held as usize)),
            held: AtomicU32::new(held),
            waiting: AtomicU32::new(0),
            to_release: AtomicU32::new(0),
            dirty: AtomicBool::new(false),
            asking: AtomicBool::new(false),
            last_used: std::sync::Mutex::new(now),
            last_written: std::sync::Mutex::new(now),
            next_start: std::sync::Mutex::new(now),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Takes up to `n` free slots out of use; returns how many.
    fn forget_free(&self, n: u32) -> u32 {
        let mut taken = 0;
        while taken < n {
            match self.permits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        if taken > 0 {
            self.held.fetch_sub(taken, Ordering::SeqCst);
            self.dirty.store(true, Ordering::SeqCst);
        }
        taken
    }

    fn local_delay(&self, gap: Duration) -> Duration {
        let Ok(mut next) = self.next_start.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let start = (*next).max(now);
        *next = start + gap;
        start - now
    }
}

/// A job's turn at its host; ending it frees the slot.
pub struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    host: Arc<Host>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.host.touch();
        let give_back = self
            .host
            .to_release
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if let Some(permit) = self.permit.take()
            && give_back
        {
            permit.forget();
            self.host.held.fetch_sub(1, Ordering::SeqCst);
            self.host.dirty.store(true, Ordering::SeqCst);
        }
    }
}

/// Counts a waiting job for as long as it waits, however the wait ends.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Hosts {
    limits: HostLimits,
    shared: Option<Arc<SharedSlots>>,
    table: std::sync::Mutex<HashMap<String, Arc<Host>>>,
}

impl Hosts {
    pub fn new(limits: HostLimits, shared: Option<SharedSlots>) -> Arc<Hosts> {
        Arc::new(Hosts {
            limits: HostLimits {
                per_domain: limits.per_domain.max(1),
                queue: limits.queue.max(1),
                ..limits
            },
            shared: shared.map(Arc::new),
            table: Default::default(),
        })
    }

    fn limit(&self) -> u32 {
        self.limits.per_domain as u32
    }

    fn host(&self, name: &str) -> Arc<Host> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(host) = table.get(name) {
            return host.clone();
        }
        // Bounded: idle hosts that hold nothing are forgotten.
        if table.len() > 10_000 {
            let shared = self.shared.is_some();
            let limit = self.limit();
            table.retain(|_, h| {
                let held = h.held.load(Ordering::SeqCst);
                let unused = if shared {
                    held == 0
                } else {
                    h.permits.available_permits() as u32 == limit
                };
                !(unused && h.waiting.load(Ordering::SeqCst) == 0 && Arc::strong_count(h) == 1)
            });
        }
        // Locally every slot is ours from the start; shared, each is asked for.
        let held = if self.shared.is_some() { 0 } else { self.limit() };
        let host = Arc::new(Host::new(shared::key(name), held));
        table.insert(name.to_string(), host.clone());
        host
    }

    /// Waits for a turn at `host` (its slot, then its politeness gap),
    /// giving `slot` back while waiting and taking it again before the job
    /// starts. `Busy` when too many jobs already wait for the host here.
    pub(crate) async fn turn(self: &Arc<Self>, name: &str, slot: &Slot) -> Result<Turn, Busy> {
        let host = self.host(name);
        let mut gave_slot = false;
        let permit = match host.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if host.waiting.load(Ordering::SeqCst) as usize >= self.limits.queue {
                    return Err(Busy);
                }
                host.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&host.waiting);
                self.ask(&host);
                // A host this scheduler holds nothing for yet usually gets
                // its first slot in one bucket round trip: keeping the pool
                // place that long stops later (lower-priority) jobs from
                // overtaking this one. A host whose slots are all in use
                // means a real wait: the place goes back at once.
                let quick = if host.held.load(Ordering::SeqCst) == 0 {
                    tokio::time::timeout(FIRST_ASK, host.permits.clone().acquire_owned())
                        .await
                        .ok()
                } else {
                    None
                };
                match quick {
                    Some(Ok(permit)) => permit,
                    Some(Err(_)) => return Err(Busy),
                    None => {
                        slot.release();
                        gave_slot = true;
                        loop {
                            self.ask(&host);
                            tokio::select! {
                                permit = host.permits.clone().acquire_owned() => match permit {
                                    Ok(permit) => break permit,
                                    Err(_) => return Err(Busy),
                                },
                                () = tokio::time::sleep(RETRY_WANT) => {}
                            }
                        }
                    }
                }
            }
        };
        host.touch();
        let turn = Turn {
            permit: Some(permit),
            host: host.clone(),
        };
        let delay = self.start_delay(&host).await;
        if delay > SHORT_WAIT && !gave_slot {
            slot.release();
            gave_slot = true;
        }
        tokio::time::sleep(delay).await;
        if gave_slot {
            slot.reacquire().await;
        }
        Ok(turn)
    }

    /// How long the next start at `host` must wait for its politeness gap:
    /// reserved in the host's record, so starts are spaced across every
    /// scheduler (locally when the bucket cannot be reached).
    async fn start_delay(&self, host: &Host) -> Duration {
        let gap = self.limits.politeness;
        if gap.is_zero() {
            return Duration::ZERO;
        }
        if let Some(shared) = &self.shared {
            let _writer = host.writer.lock().await;
            match shared
                .update(&host.key, |r| r.reserve_start(gap, shared::now_ms()))
                .await
            {
                Ok(delay) => return delay,
                Err(error) => tracing::debug!(host = %host.key, %error, "spacing this start locally"),
            }
        }
        host.local_delay(gap)
    }

    /// Asks the bucket for slots for the jobs waiting at `host`, one at a
    /// time, until they have them or the host is full (the watch or the
    /// next retry asks again).
    fn ask(self: &Arc<Self>, host: &Arc<Host>) {
        let Some(shared) = self.shared.clone() else { return };
        if host.asking.swap(true, Ordering::SeqCst) {
            return;
        }
        let (hosts, host) = (self.clone(), host.clone());
        tokio::spawn(async move {
            loop {
                let wanted = host.waiting.load(Ordering::SeqCst);
                // Slots that came free here since serve the waiting first.
                let free = host.permits.available_permits() as u32;
                if wanted <= free {
                    break;
                }
                let granted = {
                    let _writer = host.writer.lock().await;
                    let held = host.held.load(Ordering::SeqCst);
                    let limit = hosts.limit();
                    let wants = wanted - free;
                    shared
                        .update(&host.key, |r| r.take(&shared.me, held, wants, limit, shared::now_ms()))
                        .await
                };
                match granted {
                    Ok(true) => {
                        host.held.fetch_add(1, Ordering::SeqCst);
                        mark_written(&host);
                        host.permits.add_permits(1);
                    }
                    Ok(false) => {
                        mark_written(&host);
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(host = %host.key, %error, "cannot ask for a host slot yet");
                        break;
                    }
                }
            }
            host.asking.store(false, Ordering::SeqCst);
        });
    }

    /// A host's record changed (the watch): jobs waiting here may find room.
    pub fn changed(self: &Arc<Self>, key: &str) {
        let host = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.values().find(|h| h.key == key).cloned()
        };
        if let Some(host) = host
            && host.waiting.load(Ordering::SeqCst) > 0
        {
            self.ask(&host);
        }
    }

    /// Looks at every held host: gives back idle slots and slots above the
    /// fair share when others wait, writes changed counts and renews holds.
    /// Runs every [`TICK`].
    pub async fn tend(self: &Arc<Self>) {
        let Some(shared) = &self.shared else { return };
        let hosts: Vec<Arc<Host>> = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table
                .values()
                .filter(|h| h.held.load(Ordering::SeqCst) > 0 || h.dirty.load(Ordering::SeqCst))
                .cloned()
                .collect()
        };
        let now = shared::now_ms();
        for host in hosts {
            let unwritten = host.last_written.lock().map_or(Duration::ZERO, |t| t.elapsed());
            if unwritten >= shared::HOLD_TTL.saturating_sub(shared::RENEW_EVERY * 2) {
                // The hold may have expired in the bucket, and its slots gone
                // to others: none of them starts another job until a write
                // gets through again.
                let held = host.held.load(Ordering::SeqCst);
                let freed = host.forget_free(u32::MAX);
                host.to_release.store(held - freed, Ordering::SeqCst);
            }
            let waiting = host.waiting.load(Ordering::SeqCst);
            if waiting == 0 && host.idle_for() >= IDLE_RETURN {
                host.forget_free(u32::MAX);
            }
            if let Some(record) = shared.seen(&host.key)
                && record.others_want(&shared.me, now)
            {
                let held = host.held.load(Ordering::SeqCst);
                let fair = record.fair_share(&shared.me, self.limit(), now);
                if held > fair {
                    let excess = held - fair;
                    let freed = host.forget_free(excess);
                    // The rest go back as their jobs end.
                    host.to_release.store(excess - freed, Ordering::SeqCst);
                }
            }
            let due = host
                .last_written
                .lock()
                .map_or(true, |t| t.elapsed() >= shared::RENEW_EVERY);
            if host.dirty.load(Ordering::SeqCst) || due {
                self.write_hold(shared, &host).await;
            }
        }
    }

    async fn write_hold(&self, shared: &SharedSlots, host: &Host) {
        let _writer = host.writer.lock().await;
        let held = host.held.load(Ordering::SeqCst);
        let free = host.permits.available_permits() as u32;
        let wants = host.waiting.load(Ordering::SeqCst).saturating_sub(free);
        host.dirty.store(false, Ordering::SeqCst);
        match shared
            .update(&host.key, |r| r.set(&shared.me, held, wants, shared::now_ms()))
            .await
        {
            Ok(()) => mark_written(host),
            Err(error) => {
                host.dirty.store(true, Ordering::SeqCst);
                tracing::debug!(host = %host.key, %error, "cannot renew this scheduler's host slots yet");
            }
        }
    }

    /// Gives every held slot back (at stop, after the drain).
    pub async fn give_back_all(&self) {
        let Some(shared) = &self.shared else { return };
        let hosts: Vec<Arc<Host>> = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table
                .values()
                .filter(|h| h.held.load(Ordering::SeqCst) > 0)
                .cloned()
                .collect()
        };
        for host in hosts {
            host.forget_free(u32::MAX);
            self.write_hold(shared, &host).await;
        }
    }

    /// Jobs waiting for a host slot on this scheduler.
    pub fn waiting(&self) -> u64 {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table
            .values()
            .map(|h| u64::from(h.waiting.load(Ordering::SeqCst)))
            .sum()
    }

    pub fn shared(&self) -> Option<&Arc<SharedSlots>> {
        self.shared.as_ref()
    }
}

fn mark_written(host: &Host) {
    if let Ok(mut last) = host.last_written.lock() {
        *last = Instant::now();
    }
}

#[cfg(test)]
mod tests;
