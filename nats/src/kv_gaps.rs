//! What a KV watch has not delivered, read from the bucket directly.
//!
//! A watch is an ordered consumer on one server. When that server dies the
//! watch goes quiet, and says so only after missed heartbeats, seconds
//! later; its replacement consumer needs the cluster's metadata leader,
//! which may be the server that died. A direct get is answered by any
//! current copy of the bucket, without a leader, so a follower that also
//! asks for "the first change after the one I applied" every few hundred
//! milliseconds stays within that of the bucket whatever befalls its watch.
//!
//! Both the watch and these reads deliver in bucket order, so a follower
//! that applies only revisions above the last it applied (whichever source
//! it came from) applies each change once, in order.

use std::time::Duration;

use async_nats::jetstream::{kv, stream::Stream};

/// The first change of `bucket` (whose stream is `stream`) after revision
/// `after`, as the watch would have delivered it; `None` when there is none
/// yet, or when no copy answered within `timeout` (ask again later).
///
/// Needs `allow_direct` on the bucket's stream, which KV buckets have.
pub async fn change_after(stream: &Stream, bucket: &str, after: u64, timeout: Duration) -> Option<kv::Entry> {
    let subjects = format!("$KV.{bucket}.>");
    let asked = stream.direct_get_next_for_subject(subjects, Some(after + 1));
    let message = tokio::time::timeout(timeout, asked).await.ok()?.ok()?;
    let key = message
        .subject
        .as_str()
        .strip_prefix("$KV.")?
        .strip_prefix(bucket)?
        .strip_prefix('.')?;
    // As the watch reads them: an operation header, or a server's marker
    // of a removal (a per-message TTL ran out); neither means a put. An
    // operation this version does not know reads as a put, and its value
    // is then judged by the follower like any other.
    let operation = match (
        message.headers.get("KV-Operation"),
        message.headers.get("Nats-Marker-Reason"),
    ) {
        (Some(operation), _) => operation.as_str().parse().unwrap_or(kv::Operation::Put),
        (None, Some(reason)) if reason.as_str() == "Remove" => kv::Operation::Delete,
        (None, Some(_)) => kv::Operation::Purge,
        (None, None) => kv::Operation::Put,
    };
    Some(kv::Entry {
        bucket: bucket.to_string(),
        key: key.to_string(),
        value: message.payload,
        revision: message.sequence,
        delta: 0,
        created: message.time,
        operation,
        seen_current: true,
    })
}

/// How long ago `entry` was written, by the server's clock.
pub fn age(entry: &kv::Entry) -> Duration {
    let now = std::time::SystemTime::now();
    let written = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(0));
    now.duration_since(written).unwrap_or_default()
}

/// How often [`fill`] asks for a change the watch has not delivered.
pub const POLL: Duration = Duration::from_millis(250);
/// How long one ask may take before it is asked again.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills what the watch misses until dropped: every [`POLL`], asks for the
/// change after `applied()` and hands it to `apply`, which must skip a
/// revision at or below what it applied already (the watch may deliver it
/// too). A change the watch left waiting for over a second is logged.
pub fn fill<A, F, Fut>(stream: Stream, bucket: &'static str, applied: A, mut apply: F) -> Filler
where
    A: Fn() -> u64 + Send + 'static,
    F: FnMut(kv::Entry) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    Filler(tokio::spawn(async move {
        // Past the last change read here: one the follower cannot read is
        // not applied, and asking after `applied()` alone would ask for it
        // forever.
        let mut read_to = 0;
        loop {
            let Some(entry) = change_after(&stream, bucket, read_to.max(applied()), ASK_TIMEOUT).await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            read_to = entry.revision;
            let waited = age(&entry);
            if applied() < entry.revision && waited > Duration::from_secs(1) {
                tracing::warn!(
                    revision = entry.revision,
                    key = %entry.key,
                    "the watch of {bucket} has not delivered a change made {:.1} s ago (its server went?); applied from the bucket",
                    waited.as_secs_f64()
                );
            }
            apply(entry).await;
        }
    }))
}

/// Stops [`fill`] when its follower's loop ends.
pub struct Filler(tokio::task::JoinHandle<()>);

impl Drop for Filler {
    fn drop(&mut self) {
        self.0.abort();
    }
}
