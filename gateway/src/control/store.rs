//! Where the control state lives: the NATS JetStream KV bucket
//! `clawgress-control`, watched by every replica, with a last-known-good
//! copy on disk so that a replica restarted without NATS still enforces the
//! last state it saw (an emergency block above all).
//!
//! Without `--nats` the gateway runs standalone: the disk copy is the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::{ControlItem, ControlSnapshot};

/// The KV bucket every replica watches.
pub const BUCKET: &str = "clawgress-control";
/// The last-known-good file, inside the state directory.
pub const LKG_FILE: &str = "control.json";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

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
    /// NATS is unreachable and there is no last-known-good copy: the state
    /// is unknown, and `egress.fail_mode` decides.
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
    #[error("writing to the control store failed: {0}")]
    Write(String),
    #[error("cannot save the control state to {path}: {source}")]
    Save { path: String, source: std::io::Error },
}

/// The on-disk copy: every item and the revision it reflects.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastKnownGood {
    revision: u64,
    items: BTreeMap<String, serde_json::Value>,
}

pub struct ControlStore {
    snapshot: ArcSwap<ControlSnapshot>,
    kv: ArcSwapOption<kv::Store>,
    status: AtomicU8,
    lkg_path: PathBuf,
    standalone: bool,
    /// Serializes writes to the disk copy.
    save_lock: Mutex<()>,
    /// The first attempt to reach NATS has ended, one way or the other.
    first_attempt_done: AtomicBool,
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
    pub fn start(nats_url: Option<String>, state_dir: &Path, stop: watch::Receiver<bool>) -> Arc<ControlStore> {
        let lkg_path = state_dir.join(LKG_FILE);
        let loaded = load_lkg(&lkg_path);
        let status = match (&nats_url, &loaded) {
            (None, _) => StoreStatus::Standalone,
            (Some(_), Some(_)) => StoreStatus::LastKnownGood,
            (Some(_), None) => StoreStatus::Unknown,
        };
        let store = Arc::new(ControlStore {
            snapshot: ArcSwap::from_pointee(loaded.unwrap_or_default()),
            kv: ArcSwapOption::empty(),
            status: AtomicU8::new(status as u8),
            lkg_path,
            standalone: nats_url.is_none(),
            save_lock: Mutex::new(()),
            first_attempt_done: AtomicBool::new(false),
        });
        if let Some(url) = nats_url {
            tokio::spawn(sync_forever(store.clone(), url, stop));
        }
        store
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

    /// Cheap read for the request path.
    pub fn with_snapshot<R>(&self, read: impl FnOnce(&ControlSnapshot) -> R) -> R {
        read(&self.snapshot.load())
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Whether the replica knows the control state (synced, standalone, or
    /// holding a last-known-good copy).
    pub fn is_known(&self) -> bool {
        self.status() != StoreStatus::Unknown
    }

    /// Stores `item` under its key on every replica.
    pub async fn put(&self, item: ControlItem) -> Result<(), ControlError> {
        let key = item.key();
        let revision = if self.standalone {
            self.snapshot().revision + 1
        } else {
            let kv = self.kv.load_full().ok_or(ControlError::Unavailable)?;
            kv.put(key.as_str(), item.to_json().into())
                .await
                .map_err(|e| ControlError::Write(e.to_string()))?
        };
        // Applied here at once so this replica answers with its own change;
        // the watch delivers the same revision again, which changes nothing.
        self.apply(&key, Some(item), revision).await
    }

    /// Removes `key` on every replica.
    pub async fn delete(&self, key: &str) -> Result<(), ControlError> {
        let revision = if self.standalone {
            self.snapshot().revision + 1
        } else {
            let kv = self.kv.load_full().ok_or(ControlError::Unavailable)?;
            kv.delete(key).await.map_err(|e| ControlError::Write(e.to_string()))?;
            self.snapshot().revision
        };
        self.apply(key, None, revision).await
    }

    /// Removes temporary entries that have expired (they already match
    /// nothing; this keeps the bucket and `list` tidy). Returns what it
    /// removed, for the audit trail. Any replica may do it; a second
    /// delete of the same key changes nothing.
    pub async fn remove_expired(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<super::TempAllow> {
        if !self.standalone && self.kv.load().is_none() {
            return Vec::new();
        }
        let expired: Vec<super::TempAllow> = self
            .snapshot()
            .items()
            .values()
            .filter_map(|item| match item {
                ControlItem::Allow(entry) if entry.expires_at <= now => Some(entry.clone()),
                _ => None,
            })
            .collect();
        let mut removed = Vec::new();
        for entry in expired {
            match self.delete(&ControlItem::Allow(entry.clone()).key()).await {
                Ok(()) => removed.push(entry),
                Err(error) => tracing::warn!(id = %entry.id, "cannot remove an expired temporary entry: {error}"),
            }
        }
        removed
    }

    async fn apply(&self, key: &str, item: Option<ControlItem>, revision: u64) -> Result<(), ControlError> {
        let _saving = self.save_lock.lock().await;
        let next = self.snapshot().with(key, item, revision);
        let saved = save_lkg(&self.lkg_path, &next).await;
        self.snapshot.store(Arc::new(next));
        saved
    }

    async fn replace(&self, snapshot: ControlSnapshot) {
        let _saving = self.save_lock.lock().await;
        if let Err(error) = save_lkg(&self.lkg_path, &snapshot).await {
            tracing::error!("{error}");
        }
        self.snapshot.store(Arc::new(snapshot));
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

/// Connects, catches up and follows the bucket; on any loss, falls back to
/// the last-known-good state and reconnects with backoff.
async fn sync_forever(store: Arc<ControlStore>, url: String, mut stop: watch::Receiver<bool>) {
    let mut delay = RETRY_FIRST;
    loop {
        let session = tokio::select! {
            result = follow(&store, &url) => result,
            _ = stop.changed() => return,
        };
        store.kv.store(None);
        store.set_status(store.disconnected_status());
        store.first_attempt_done.store(true, Ordering::Relaxed);
        match session {
            Ok(()) => delay = RETRY_FIRST,
            Err(error) => {
                tracing::warn!(
                    %url,
                    status = store.status().as_str(),
                    "control store unreachable ({error}); enforcing the last-known-good state and retrying"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn follow(store: &ControlStore, url: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-gateway")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
    let js = jetstream::new(client.clone());
    let kv = js
        .create_or_update_key_value(kv::Config {
            bucket: BUCKET.to_string(),
            description: "Clawgress runtime control: temporary allows, requests, emergency block".to_string(),
            history: 5,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot open the KV bucket {BUCKET}: {e}"))?;
    let last = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .map_err(|e| e.to_string())?
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut watch = kv.watch_with_history(">").await.map_err(|e| e.to_string())?;

    // Catch up into a fresh map: the bucket, not the old copy, is the truth.
    let mut items = BTreeMap::new();
    let mut revision = 0;
    while revision < last {
        let Some(entry) = watch.next().await else {
            return Err("the watch ended during catch-up".to_string());
        };
        let entry = entry.map_err(|e| e.to_string())?;
        revision = entry.revision;
        apply_entry(&mut items, &entry);
    }
    store.replace(ControlSnapshot::from_items(items, last)).await;
    store.kv.store(Some(Arc::new(kv)));
    store.set_status(StoreStatus::Synced);
    store.first_attempt_done.store(true, Ordering::Relaxed);
    tracing::info!(revision = last, "control store synced");

    let mut state = client.connection_state();
    loop {
        tokio::select! {
            entry = watch.next() => {
                let Some(entry) = entry else { return Err("the watch ended".to_string()) };
                let entry = entry.map_err(|e| e.to_string())?;
                let item = match entry.operation {
                    kv::Operation::Put => match ControlItem::decode(&entry.key, &entry.value) {
                        Ok(item) => Some(item),
                        Err(error) => { tracing::error!("{error}"); continue; }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                if let Err(error) = store.apply(&entry.key, item, entry.revision).await {
                    tracing::error!("{error}");
                }
            }
            // The watch does not end when the connection drops; the
            // connection state says so, and the replica reports it.
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                let now = client.connection_state();
                if now != state {
                    state = now;
                    match state {
                        async_nats::connection::State::Connected => store.set_status(StoreStatus::Synced),
                        _ => store.set_status(store.disconnected_status()),
                    }
                }
            }
        }
    }
}

fn apply_entry(items: &mut BTreeMap<String, ControlItem>, entry: &kv::Entry) {
    match entry.operation {
        kv::Operation::Put => match ControlItem::decode(&entry.key, &entry.value) {
            Ok(item) => {
                items.insert(entry.key.clone(), item);
            }
            Err(error) => tracing::error!("{error}"),
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            items.remove(&entry.key);
        }
    }
}

fn load_lkg(path: &Path) -> Option<ControlSnapshot> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::error!(path = %path.display(), "cannot read the last-known-good control state: {error}");
            return None;
        }
    };
    let lkg: LastKnownGood = match serde_json::from_slice(&text) {
        Ok(lkg) => lkg,
        Err(error) => {
            tracing::error!(
                path = %path.display(),
                "the last-known-good control state is unreadable ({error}); ignoring it"
            );
            return None;
        }
    };
    let mut items = BTreeMap::new();
    for (key, value) in lkg.items {
        match ControlItem::decode(&key, value.to_string().as_bytes()) {
            Ok(item) => {
                items.insert(key, item);
            }
            Err(error) => tracing::error!("{error}"),
        }
    }
    tracing::info!(path = %path.display(), revision = lkg.revision, "loaded the last-known-good control state");
    Some(ControlSnapshot::from_items(items, lkg.revision))
}

/// Written to a temporary file and renamed over the old one: a crash leaves
/// either the old copy or the new one, never half of one.
async fn save_lkg(path: &Path, snapshot: &ControlSnapshot) -> Result<(), ControlError> {
    let lkg = LastKnownGood {
        revision: snapshot.revision,
        items: snapshot
            .items()
            .iter()
            .filter_map(|(key, item)| Some((key.clone(), serde_json::from_slice(&item.to_json()).ok()?)))
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&lkg).unwrap_or_default();
    let tmp = path.with_extension("json.tmp");
    let error = |source| ControlError::Save {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(error)?;
    }
    tokio::fs::write(&tmp, bytes).await.map_err(error)?;
    tokio::fs::rename(&tmp, path).await.map_err(error)
}
