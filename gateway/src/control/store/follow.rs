//! Following the bucket: connect, catch up into a fresh snapshot, then
//! apply every change the watch delivers, with the gaps a dying server
//! leaves in the watch read from the bucket directly; on any loss, the
//! last-known-good state and a reconnect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{BUCKET, ControlStore, StoreStatus, redacted};
use crate::control::{ControlItem, ControlSnapshot};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Short: while it retries, a replica enforces its last-known-good state,
/// and an emergency block made meanwhile waits for the next attempt.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A catch-up read that delivers nothing for this long is started again
/// (its consumer's server may have just died).
const CATCH_UP_STALL: Duration = Duration::from_secs(3);

/// Connects, catches up and follows the bucket; when the connection, the
/// watch (beyond what its client recovers from) or the bucket itself is
/// lost, falls back to the last-known-good state and starts again.
pub(super) async fn sync_forever(store: Arc<ControlStore>, url: String, mut stop: watch::Receiver<bool>) {
    let shown = redacted(&url);
    let mut delay = RETRY_FIRST;
    let mut repeats = clawgress_nats::repeats::Repeats::default();
    loop {
        let (synced, error) = tokio::select! {
            ended = follow(&store, &url) => ended,
            _ = stop.changed() => return,
        };
        store.kv.store(None);
        store.client.store(None);
        store.set_status(store.disconnected_status());
        store.first_attempt_done.store(true, Ordering::Relaxed);
        if synced {
            delay = RETRY_FIRST;
            repeats.clear();
        }
        if repeats.worth_logging(&error) {
            tracing::warn!(
                url = %shown,
                status = store.status().as_str(),
                "control store unreachable ({error}); enforcing the last-known-good state and retrying (the same failure is logged again once a minute)"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Returns whether it got as far as a sync, and why it ended.
async fn follow(store: &Arc<ControlStore>, url: &str) -> (bool, String) {
    match follow_inner(store, url).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    }
}

enum Never {}

async fn follow_inner(store: &Arc<ControlStore>, url: &str) -> Result<Never, (bool, String)> {
    let early = |e: String| (false, e);
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-gateway")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(clawgress_nats::servers(url))
        .await
        .map_err(|e| early(format!("cannot connect to NATS at {}: {e}", redacted(url))))?;
    let js = jetstream::new(client.clone());
    // Opened as it is when it exists, so an operator's settings (replicas,
    // placement) are not reset by every gateway start.
    let replicas = store.replicas.resolve(&client);
    let kv = clawgress_nats::open_bucket(
        &js,
        kv::Config {
            bucket: BUCKET.to_string(),
            description: "Clawgress runtime control: temporary allows, requests, emergency block".to_string(),
            history: 5,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(early)?;
    let mut stream = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .map_err(|e| early(e.to_string()))?;
    let held = stream.info().await.map_err(|e| early(e.to_string()))?.state.clone();
    let last = held.last_sequence;
    let mut watch = kv.watch_with_history(">").await.map_err(|e| early(e.to_string()))?;

    // Catch up into a fresh map: the bucket, not the old copy, is the truth.
    let mut items = std::collections::BTreeMap::new();
    let mut revisions = std::collections::BTreeMap::new();
    let mut revision = 0;
    // Messages, not the last revision: a bucket whose every message was
    // purged has a last revision and nothing for the watch to deliver.
    if held.messages > 0 {
        loop {
            let entry = tokio::time::timeout(CATCH_UP_STALL, watch.next())
                .await
                .map_err(|_| early("the watch stalled during catch-up".to_string()))?
                .ok_or_else(|| early("the watch ended during catch-up".to_string()))?
                .map_err(|e| early(e.to_string()))?;
            revision = revision.max(entry.revision);
            match change_of(&entry) {
                Some(Some(item)) => {
                    items.insert(entry.key.clone(), item);
                    revisions.insert(entry.key.clone(), entry.revision);
                }
                Some(None) => {
                    items.remove(&entry.key);
                    revisions.remove(&entry.key);
                }
                None => {}
            }
            // `delta` counts what is still pending: zero means caught up, even
            // when the stream's tail was a purged message.
            if entry.delta == 0 || revision >= last {
                break;
            }
        }
    }
    store
        .replace(ControlSnapshot::from_parts(items, revisions, revision.max(last)))
        .await;
    let kv = Arc::new(kv);
    store.kv.store(Some(kv.clone()));
    store.client.store(Some(Arc::new(client.clone())));
    store.set_status(StoreStatus::Synced);
    store.first_attempt_done.store(true, Ordering::Relaxed);
    tracing::info!(revision = store.snapshot().revision, "control store synced");

    let synced = |e: String| (true, e);
    let mut state = client.connection_state();
    // The watch's server may die: what it misses meanwhile is read from
    // the bucket, or an emergency block made then would not reach this
    // replica for seconds.
    let mut gaps = clawgress_nats::kv_gaps::fill(
        stream,
        BUCKET,
        {
            let store = store.clone();
            move || store.snapshot().revision
        },
        {
            let store = store.clone();
            move |entry| {
                let store = store.clone();
                async move {
                    if let Some(item) = change_of(&entry) {
                        store.apply_watched(&entry.key, item, entry.revision).await;
                    }
                }
            }
        },
    );
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = match entry.ok_or_else(|| synced("the watch ended".to_string()))? {
                    Ok(entry) => entry,
                    // The client recreates the watch's consumer after this
                    // (its server went away); the gap poll covers the time.
                    Err(error) if clawgress_nats::kv_gaps::watch_recovers(&error) => {
                        tracing::warn!("the control store's watch: {error}; it is recreated, and changes are read from the bucket meanwhile");
                        continue;
                    }
                    Err(error) => return Err(synced(format!("the watch failed: {error}"))),
                };
                if let Some(item) = change_of(&entry) {
                    store.apply_watched(&entry.key, item, entry.revision).await;
                }
            }
            // Revisions started over: every change from now on would be
            // taken for a replay.
            why = gaps.replaced() => return Err(synced(why)),
            () = store.bucket_replaced.notified() => {
                return Err(synced("a write went to a bucket made again since it was read".to_string()));
            }
            // The watch does not end when the connection drops; the
            // connection state says so, and the replica reports it.
            _ = check.tick() => {
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

/// What a bucket entry does to the snapshot: `Some(None)` removes its key;
/// `None` for a value no item can be read from (nothing changes, unless
/// it is a block or a hold: those fail closed).
fn change_of(entry: &kv::Entry) -> Option<Option<ControlItem>> {
    match entry.operation {
        kv::Operation::Put => ControlItem::decode_failing_closed(&entry.key, &entry.value).map(Some),
        kv::Operation::Delete | kv::Operation::Purge => Some(None),
    }
}
