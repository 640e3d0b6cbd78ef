//! The NATS KV bucket `clawgress-store`: one key per kind (`agents`,
//! `tokens`, `policy`), each holding the whole snapshot. Every replica
//! watches it; holders write it, only ever forward.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use clawgress_control::{Kind, Snapshot};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::Gateway;

pub use clawgress_control::BUCKET;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A catch-up read that delivers nothing for this long is started again
/// (its consumer's server may have just died).
const CATCH_UP_STALL: Duration = Duration::from_secs(3);
/// Attempts of one compare-and-set publish before it is left to the next round.
const PUBLISH_ATTEMPTS: usize = 16;

/// Opens the bucket, creating it the first time with `replicas` (an
/// existing one keeps an operator's settings; fewer replicas are reported).
pub(super) async fn open(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, String> {
    clawgress_nats::open_bucket(
        js,
        kv::Config {
            bucket: BUCKET.to_string(),
            description: "Clawgress control store snapshots: agents, tokens, the policy in force".to_string(),
            history: 5,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
}

/// Puts `snapshot` under its key unless the bucket already holds one at
/// least as new: a compare-and-set on the key's revision, retried when
/// another holder wrote in between. `Ok(false)`: nothing to do.
pub(super) async fn put_if_newer(kv: &kv::Store, snapshot: &Snapshot) -> Result<bool, String> {
    let key = snapshot.kind().key();
    let bytes = bytes::Bytes::from(snapshot.to_json());
    for _ in 0..PUBLISH_ATTEMPTS {
        let entry = kv.entry(key).await.map_err(|e| e.to_string())?;
        if let Some(entry) = &entry
            && entry.operation == kv::Operation::Put
            && let Ok(held) = Snapshot::decode(snapshot.kind(), &entry.value)
            && held.revision() >= snapshot.revision()
        {
            return Ok(false);
        }
        let written = match &entry {
            Some(entry) => kv
                .update(key, bytes.clone(), entry.revision)
                .await
                .map(|_| ())
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
            None => kv
                .create(key, bytes.clone())
                .await
                .map(|_| ())
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
        };
        match written {
            Ok(()) => return Ok(true),
            Err((true, _)) => continue,
            Err((false, error)) => return Err(error),
        }
    }
    Err(format!(
        "the {key} snapshot kept changing under the publish; retrying later"
    ))
}

/// Follows the bucket for the gateway's life: catch up (the latest value of
/// each key), then every change. A kind the bucket does not hold goes back
/// to its file. When the connection, the watch (beyond what its client
/// recovers from) or the bucket itself is lost, keeps what it applied and
/// starts again.
pub(super) async fn follow(gateway: Arc<Gateway>, url: String, mut stop: watch::Receiver<bool>) {
    let shown = crate::control::store::redacted(&url);
    let mut delay = RETRY_FIRST;
    let mut repeats = clawgress_nats::repeats::Repeats::default();
    loop {
        let (synced, error) = tokio::select! {
            ended = follow_once(&gateway, &url) => ended,
            _ = stop.changed() => return,
        };
        gateway.store.bucket.store(None);
        // A replica that never reached the bucket still starts.
        gateway.store.synced.store(true, Ordering::Relaxed);
        if synced {
            delay = RETRY_FIRST;
            repeats.clear();
        }
        if repeats.worth_logging(&error) {
            tracing::warn!(url = %shown, "control store bucket unreachable ({error}); keeping the snapshots in force and retrying (the same failure is logged again once a minute)");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn follow_once(gateway: &Arc<Gateway>, url: &str) -> (bool, String) {
    let client = match async_nats::ConnectOptions::new()
        .name("clawgress-gateway-store")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(clawgress_nats::servers(url))
        .await
    {
        Ok(client) => client,
        Err(e) => return (false, format!("cannot connect: {e}")),
    };
    let js = jetstream::new(client.clone());
    let replicas = gateway.store.replicas.resolve(&client);
    let kv = match open(&js, replicas).await {
        Ok(kv) => kv,
        Err(e) => return (false, e),
    };
    let mut stream = match js.get_stream(format!("KV_{BUCKET}")).await {
        Ok(stream) => stream,
        Err(e) => return (false, e.to_string()),
    };
    let held = match stream.info().await {
        Ok(info) => info.state.messages,
        Err(e) => return (false, e.to_string()),
    };
    let mut watch = match kv.watch_with_history(">").await {
        Ok(watch) => watch,
        Err(e) => return (false, e.to_string()),
    };
    let mut seen = std::collections::BTreeSet::new();
    let delivered = Arc::new(Delivered::default());
    // With history, the watch first delivers the last value of each key;
    // `delta` counts what is left of that catch-up.
    if held > 0 {
        loop {
            let entry = match tokio::time::timeout(CATCH_UP_STALL, watch.next()).await {
                Ok(Some(Ok(entry))) => entry,
                Ok(Some(Err(e))) => return (false, e.to_string()),
                Ok(None) => return (false, "the watch ended during catch-up".to_string()),
                Err(_) => return (false, "the watch stalled during catch-up".to_string()),
            };
            if let Some(kind) = Kind::from_key(&entry.key) {
                seen.insert(kind);
            }
            delivered.deliver(gateway, &entry).await;
            if entry.delta == 0 {
                break;
            }
        }
    }
    for kind in Kind::ALL {
        if !seen.contains(&kind) {
            super::apply::clear(gateway, kind);
        }
    }
    gateway.store.bucket.store(Some(Arc::new(kv)));
    gateway.store.synced.store(true, Ordering::Relaxed);
    gateway.store.nudge.notify_one();
    tracing::info!("control store bucket synced");
    // What the watch misses while its server is gone (a token revoked
    // then must not wait for it).
    let mut gaps = clawgress_nats::kv_gaps::fill(
        stream,
        BUCKET,
        {
            let delivered = delivered.clone();
            move || delivered.revision.load(Ordering::SeqCst)
        },
        {
            let (gateway, delivered) = (gateway.clone(), delivered.clone());
            move |entry| {
                let (gateway, delivered) = (gateway.clone(), delivered.clone());
                async move { delivered.deliver(&gateway, &entry).await }
            }
        },
    );
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(Ok(entry)) => delivered.deliver(gateway, &entry).await,
                // The client recreates the watch's consumer after this (its
                // server went away); the gap filler covers the time.
                Some(Err(e)) if clawgress_nats::kv_gaps::watch_recovers(&e) => tracing::warn!("the control store bucket's watch: {e}; it is recreated, and changes are read from the bucket meanwhile"),
                Some(Err(e)) => return (true, format!("the watch failed: {e}")),
                None => return (true, "the watch ended".to_string()),
            },
            // Revisions started over: every change from now on would be
            // taken for a replay.
            why = gaps.replaced() => return (true, why),
            // The watch does not end when the connection drops.
            _ = check.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    return (true, "the connection to NATS dropped".to_string());
                }
            }
        }
    }
}

/// The last revision delivered, by the watch or the gap filler: each
/// delivers in bucket order, and an older snapshot must never replace a
/// newer one. An async lock: applying a policy compiles it.
#[derive(Default)]
struct Delivered {
    order: tokio::sync::Mutex<()>,
    revision: std::sync::atomic::AtomicU64,
}

impl Delivered {
    async fn deliver(&self, gateway: &Gateway, entry: &kv::Entry) {
        let _order = self.order.lock().await;
        if entry.revision > self.revision.load(Ordering::SeqCst) {
            self.revision.store(entry.revision, Ordering::SeqCst);
            deliver(gateway, entry);
        }
    }
}

fn deliver(gateway: &Gateway, entry: &kv::Entry) {
    let Some(kind) = Kind::from_key(&entry.key) else {
        tracing::warn!(key = %entry.key, "unknown key in the control store bucket ignored");
        return;
    };
    match entry.operation {
        kv::Operation::Put => match Snapshot::decode(kind, &entry.value) {
            Ok(snapshot) => {
                super::apply::apply(gateway, snapshot);
            }
            // An unreadable snapshot changes nothing: what is in force stays.
            Err(error) => tracing::error!("{error}"),
        },
        kv::Operation::Delete | kv::Operation::Purge => super::apply::clear(gateway, kind),
    }
}
