//! Where the control state lives: the NATS JetStream KV bucket
//! `clawgress-control`, watched by every replica, with a last-known-good
//! copy on disk ([`super::lkg`]) so that a replica restarted without NATS
//! still enforces the last state it saw (an emergency block above all).
//!
//! Without `--nats` the gateway runs standalone: the disk copy is the store.
//!
//! With NATS, a replica never applies its own writes directly: it waits for
//! them to come back from the bucket (by its watch, or by the poll that fills
//! what the watch misses), so every replica applies every change in the
//! bucket's one order, and a slow local apply can never undo a newer change
//! made elsewhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_nats::jetstream::kv;
use tokio::sync::{Mutex, watch};

use super::{ControlItem, ControlSnapshot, lkg};

pub use super::lkg::LKG_FILE;

mod follow;

/// The KV bucket every replica watches.
pub const BUCKET: &str = "clawgress-control";
/// How long a write waits for its own change to come back from the bucket.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// How much the replica knows about the control state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StoreStatus {
    /// No NATS configured: the state is local and always known.
    Standalone = 0,
    /// Watching the bucket, caught up.
    Synced = 1,
    /// NATS is unreachable; enforcing the last-known-good copy.
    LastKnownGood = 2,
    /// NATS is unreachable and there is no trustworthy last-known-good copy:
    /// the state is unknown, and `egress.fail_mode` decides.
    Unknown = 3,
}

impl StoreStatus {
    fn from_u8(value: u8) -> StoreStatus {
        match value {
            0 => StoreStatus::Standalone,
            1 => StoreStatus::Synced,
            2 => StoreStatus::LastKnownGood,
            _ => StoreStatus::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StoreStatus::Standalone => "standalone",
            StoreStatus::Synced => "synced",
            StoreStatus::LastKnownGood => "last_known_good",
            StoreStatus::Unknown => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the control store (NATS KV bucket {BUCKET}) is unreachable, so the change cannot reach every replica; retry when NATS is back"
    )]
    Unavailable,
    #[error("someone changed this item since it was read; look again and retry")]
    Conflict,
    #[error(
        "the control store did not confirm the change ({0}); it may or may not have been applied: check `clawgress egress list` before retrying"
    )]
    Uncertain(String),
    #[error("cannot save the control state to {path}: {source}")]
    Save { path: String, source: std::io::Error },
}

/// What a write expects to find under its key: the check that keeps two
/// operators (or two replicas) from silently overwriting each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (new items, a new emergency block).
    Absent,
    /// The key must still be at this revision (as read).
    Revision(u64),
}

pub struct ControlStore {
    snapshot: ArcSwap<ControlSnapshot>,
    kv: ArcSwapOption<kv::Store>,
    client: ArcSwapOption<async_nats::Client>,
    status: AtomicU8,
    lkg_path: PathBuf,
    standalone: bool,
    /// Serializes applies and writes to the disk copy.
    save_lock: Mutex<()>,
    /// The first attempt to reach NATS has ended, one way or the other.
    first_attempt_done: AtomicBool,
    /// `true` while an emergency block is in force; open tunnels watch it.
    blocked: watch::Sender<bool>,
    /// Pacing of rate-reduced agents on this replica.
    reduced: super::hold::ReducedRates,
    /// Told by a write that found the bucket made again since it was read.
    bucket_replaced: tokio::sync::Notify,
    /// Replicas of the bucket when this replica creates it.
    replicas: clawgress_nats::Replicas,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore")
            .field("status", &self.status())
            .field("revision", &self.snapshot().revision)
            .finish_non_exhaustive()
    }
}

impl ControlStore {
    /// Loads the last-known-good copy from `state_dir` and, with a NATS URL,
    /// starts watching the bucket in the background. Never blocks on NATS: a
    /// gateway must start (and enforce what it knows) while NATS is down.
    ///
    /// Standalone, an untrustworthy copy is an error (it is the only store,
    /// and may hold an emergency block). With NATS it makes the state
    /// unknown until the bucket is read.
    pub fn start(
        nats_url: Option<String>,
        state_dir: &Path,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<ControlStore>, String> {
        Self::start_with(nats_url, clawgress_nats::Replicas::Auto, state_dir, stop)
    }

    /// [`ControlStore::start`], creating a missing bucket with `replicas`
    /// copies (an existing one with fewer is used, with a warning).
    pub fn start_with(
        nats_url: Option<String>,
        replicas: clawgress_nats::Replicas,
        state_dir: &Path,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<ControlStore>, String> {
        let lkg_path = state_dir.join(LKG_FILE);
        let loaded = match (lkg::load(&lkg_path), &nats_url) {
            (Ok(loaded), _) => loaded,
            (Err(error), None) => return Err(error),
            (Err(error), Some(_)) => {
                tracing::error!("{error}; the control state is unknown until NATS is reached");
                None
            }
        };
        let status = match (&nats_url, &loaded) {
            (None, _) => StoreStatus::Standalone,
            (Some(_), Some(_)) => StoreStatus::LastKnownGood,
            (Some(_), None) => StoreStatus::Unknown,
        };
        let snapshot = loaded.unwrap_or_default();
        let (blocked, _) = watch::channel(snapshot.emergency().is_some());
        let store = Arc::new(ControlStore {
            snapshot: ArcSwap::from_pointee(snapshot),
            kv: ArcSwapOption::empty(),
            client: ArcSwapOption::empty(),
            status: AtomicU8::new(status as u8),
            lkg_path,
            standalone: nats_url.is_none(),
            save_lock: Mutex::new(()),
            first_attempt_done: AtomicBool::new(false),
            blocked,
            reduced: Default::default(),
            bucket_replaced: tokio::sync::Notify::new(),
            replicas,
        });
        if let Some(url) = nats_url {
            tokio::spawn(follow::sync_forever(store.clone(), url, stop));
        }
        Ok(store)
    }

    /// Waits (at most `limit`) for the first sync with NATS, so a replica
    /// that can reach NATS does not start by answering from stale or no
    /// state. Returns at once when NATS is unreachable or not configured.
    pub async fn first_sync(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.standalone
            && self.status() != StoreStatus::Synced
            && !self.first_attempt_done.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn snapshot(&self) -> Arc<ControlSnapshot> {
        self.snapshot.load_full()
    }

    /// The incident of the emergency block in force, if any. The request
    /// path asks this twice per request: no reference count is taken, and
    /// nothing is allocated unless a block is in force.
    pub fn emergency_incident(&self) -> Option<Arc<str>> {
        self.snapshot
            .load()
            .emergency()
            .map(|block| Arc::from(block.incident_id.as_str()))
    }

    /// What a hold on `agent_id` (quarantine or rate reduction) does to
    /// its next request; `None` for agents nobody holds. Allocates only
    /// when the agent is held. `pace` counts the request against a reduced
    /// rate (once per exchange); without it only a quarantine answers.
    pub fn hold_verdict(&self, agent_id: &str, pace: bool) -> Option<super::HoldVerdict> {
        let snapshot = self.snapshot.load();
        let held = snapshot.hold(agent_id)?;
        match held.mode {
            super::HoldMode::Quarantine => Some(super::HoldVerdict::Quarantined(Box::new(held.clone()))),
            super::HoldMode::RateReduction if !pace => None,
            super::HoldMode::RateReduction => {
                let per_minute = held.per_minute.unwrap_or(1).max(1);
                self.reduced
                    .admit(agent_id, per_minute)
                    .err()
                    .map(|retry_after| super::HoldVerdict::Reduced {
                        per_minute,
                        retry_after,
                    })
            }
        }
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Whether the replica knows the control state (synced, standalone, or
    /// holding a last-known-good copy).
    pub fn is_known(&self) -> bool {
        self.status() != StoreStatus::Unknown
    }

    /// Follows the emergency block: `true` while one is in force.
    pub fn watch_block(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }

    /// Creates `item`; `Conflict` if its key exists.
    pub async fn create(&self, item: ControlItem) -> Result<(), ControlError> {
        self.write(&item.key(), Some(item), Some(Expect::Absent)).await
    }

    /// Replaces `item`, which must still be at `revision`.
    pub async fn update(&self, item: ControlItem, revision: u64) -> Result<(), ControlError> {
        self.write(&item.key(), Some(item), Some(Expect::Revision(revision)))
            .await
    }

    /// Removes `key`, which must still be at `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), ControlError> {
        self.write(key, None, Some(Expect::Revision(revision))).await
    }

    /// Removes temporary entries that have expired (they already match
    /// nothing; this keeps the bucket and `list` tidy) and requests decided
    /// more than 30 days ago. Each removal is revision-checked, so when
    /// several replicas sweep at once exactly one removes each item (the
    /// others get `Conflict`). `prepare` runs first for each item (to reserve
    /// its audit record) and may skip it by returning `None`.
    pub async fn sweep<T>(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        mut prepare: impl FnMut(&ControlItem) -> Option<T>,
    ) -> Vec<(ControlItem, T, Result<(), ControlError>)> {
        if !self.standalone && self.kv.load().is_none() {
            return Vec::new();
        }
        let snapshot = self.snapshot();
        let stale = snapshot.items().iter().filter(|(_, item)| match item {
            ControlItem::Allow(entry) => entry.expires_at <= now,
            ControlItem::Request(request) => request
                .decided_at
                .is_some_and(|at| at + chrono::Duration::days(30) <= now),
            ControlItem::Emergency(_) | ControlItem::Quarantine(_) => false,
        });
        let mut swept = Vec::new();
        for (key, item) in stale {
            let Some(revision) = snapshot.revision_of(key) else {
                continue;
            };
            let Some(prepared) = prepare(item) else { continue };
            let result = self.delete(key, revision).await;
            swept.push((item.clone(), prepared, result));
        }
        swept
    }

    async fn write(&self, key: &str, item: Option<ControlItem>, expect: Option<Expect>) -> Result<(), ControlError> {
        if self.standalone {
            return self.write_standalone(key, item, expect).await;
        }
        let (Some(kv), Some(client)) = (self.kv.load_full(), self.client.load_full()) else {
            return Err(ControlError::Unavailable);
        };
        // A write made while disconnected would sit in the client's buffer
        // and land whenever the link returns: refuse it instead.
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(ControlError::Unavailable);
        }
        let wrong_revision = |kind: kv::UpdateErrorKind| kind == kv::UpdateErrorKind::WrongLastRevision;
        let uncertain = |e: &dyn std::fmt::Display| ControlError::Uncertain(e.to_string());
        let written = match (&item, expect) {
            (Some(item), Some(Expect::Absent)) => kv.create(key, item.to_json().into()).await.map(Some).map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    ControlError::Conflict
                } else {
                    uncertain(&e)
                }
            }),
            (Some(item), Some(Expect::Revision(revision))) => kv
                .update(key, item.to_json().into(), revision)
                .await
                .map(Some)
                .map_err(|e| {
                    if wrong_revision(e.kind()) {
                        ControlError::Conflict
                    } else {
                        uncertain(&e)
                    }
                }),
            (Some(item), None) => kv
                .put(key, item.to_json().into())
                .await
                .map(Some)
                .map_err(|e| uncertain(&e)),
            (None, expect) => {
                let revision = match expect {
                    Some(Expect::Revision(revision)) => Some(revision),
                    _ => None,
                };
                kv.delete_expect_revision(key, revision)
                    .await
                    .map(|()| None)
                    .map_err(|e| {
                        if wrong_revision(e.kind()) {
                            ControlError::Conflict
                        } else {
                            uncertain(&e)
                        }
                    })
            }
        }?;
        let replaced = match written {
            Some(revision) => self.bucket_made_again(&kv, key, revision).await,
            None => false,
        };
        self.await_watch(key, written, replaced).await;
        Ok(())
    }

    /// Whether the bucket `revision` was written to is not the one this
    /// replica follows (deleted and made again: its revisions started over,
    /// so `revision` looks applied already). Then the follower is told to
    /// read it again at once; it would notice within a second anyway.
    async fn bucket_made_again(&self, kv: &kv::Store, key: &str, revision: u64) -> bool {
        let snapshot = self.snapshot();
        if revision > snapshot.revision || snapshot.revision_of(key) == Some(revision) {
            return false;
        }
        let mut stream = kv.stream.clone();
        let made_again = match tokio::time::timeout(APPLY_WAIT, stream.info()).await {
            Ok(Ok(info)) => info.created != kv.stream.cached_info().created,
            _ => false,
        };
        if made_again {
            self.bucket_replaced.notify_one();
        }
        made_again
    }

    /// Waits until the bucket has given back this replica's own write, so the
    /// API answers after the change is in force here too.
    /// In a bucket `made_again`, the snapshot's revision says nothing until
    /// it is read again: the write itself must be there.
    async fn await_watch(&self, key: &str, written: Option<u64>, made_again: bool) {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        loop {
            let snapshot = self.snapshot();
            let applied = match written {
                Some(revision) if made_again => snapshot.revision_of(key) == Some(revision),
                Some(revision) => snapshot.revision >= revision,
                None => snapshot.revision_of(key).is_none(),
            };
            if applied {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%key, "the change is stored but has not come back to this replica yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Standalone: the disk copy is the store, so it is written first and
    /// the change takes effect only once it is durable.
    async fn write_standalone(
        &self,
        key: &str,
        item: Option<ControlItem>,
        expect: Option<Expect>,
    ) -> Result<(), ControlError> {
        let _saving = self.save_lock.lock().await;
        let current = self.snapshot();
        let found = current.revision_of(key);
        let matches = match expect {
            None => true,
            Some(Expect::Absent) => found.is_none(),
            Some(Expect::Revision(revision)) => found == Some(revision),
        };
        if !matches {
            return Err(ControlError::Conflict);
        }
        let next = current.with(key, item, current.revision + 1);
        lkg::save(&self.lkg_path, &next).await?;
        self.publish(next);
        Ok(())
    }

    /// Applies one change of the bucket. The watch and the gap poll each
    /// deliver in bucket order, so one at or below the applied revision is
    /// a replay (by either of them): applying it again could bring back an
    /// item deleted since.
    async fn apply_watched(&self, key: &str, item: Option<ControlItem>, revision: u64) {
        let _saving = self.save_lock.lock().await;
        let current = self.snapshot();
        if revision <= current.revision {
            return;
        }
        let next = current.with(key, item, revision);
        // Enforcement first: the bucket already holds the change.
        let saving = next.clone();
        self.publish(next);
        if let Err(error) = lkg::save(&self.lkg_path, &saving).await {
            tracing::error!("{error}");
        }
    }

    async fn replace(&self, snapshot: ControlSnapshot) {
        let _saving = self.save_lock.lock().await;
        let saving = snapshot.clone();
        self.publish(snapshot);
        if let Err(error) = lkg::save(&self.lkg_path, &saving).await {
            tracing::error!("{error}");
        }
    }

    fn publish(&self, snapshot: ControlSnapshot) {
        let blocked = snapshot.emergency().is_some();
        self.snapshot.store(Arc::new(snapshot));
        self.blocked
            .send_if_modified(|was| std::mem::replace(was, blocked) != blocked);
    }

    fn set_status(&self, status: StoreStatus) {
        let before = self.status.swap(status as u8, Ordering::Relaxed);
        if before != status as u8 {
            tracing::info!(status = status.as_str(), "control store status changed");
        }
    }

    /// What a replica falls back to when it loses NATS.
    fn disconnected_status(&self) -> StoreStatus {
        match self.status() {
            StoreStatus::Synced | StoreStatus::LastKnownGood => StoreStatus::LastKnownGood,
            other => other,
        }
    }
}

/// The URL without user information, for logs.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        },
    }
}
