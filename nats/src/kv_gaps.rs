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
//! it came from) applies each change once, in order. That rests on the
//! revisions only growing: a bucket deleted and made again starts over at
//! 1, so the filler also watches the bucket's identity and says when the
//! follower must read it again from the start ([`Filler::replaced`]).

use std::time::Duration;

use async_nats::jetstream::{kv, stream::DirectGetErrorKind, stream::Stream};

use crate::repeats::Repeats;

/// How often [`fill`] asks for a change the watch has not delivered.
pub const POLL: Duration = Duration::from_millis(250);
/// How long one ask may take before it is asked again.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the bucket's identity is checked (one stream info request).
const IDENTITY_CHECK: Duration = Duration::from_secs(1);

/// The first change of `bucket` (whose stream is `stream`) after revision
/// `after`, as the watch would have delivered it; `Ok(None)` when there is
/// none yet; `Err` when no copy answered within `timeout` or the server
/// refused (ask again later).
pub async fn change_after(
    stream: &Stream,
    bucket: &str,
    after: u64,
    timeout: Duration,
) -> Result<Option<kv::Entry>, String> {
    let subjects = format!("$KV.{bucket}.>");
    let asked = stream.direct_get_next_for_subject(subjects, Some(after + 1));
    let message = match tokio::time::timeout(timeout, asked).await {
        Err(_) => return Err(format!("no copy of the bucket answered within {timeout:?}")),
        Ok(Err(error)) if error.kind() == DirectGetErrorKind::NotFound => return Ok(None),
        Ok(Err(error)) => return Err(error.to_string()),
        Ok(Ok(message)) => message,
    };
    let key = message
        .subject
        .as_str()
        .strip_prefix("$KV.")
        .and_then(|rest| rest.strip_prefix(bucket))
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| format!("revision {} is not a key of {bucket}", message.sequence))?;
    // As async-nats's watch reads them: an operation header; else a
    // server's marker (a per-message TTL ran out or a purge); else a put.
    let operation = match (
        message.headers.get("KV-Operation"),
        message.headers.get("Nats-Marker-Reason").map(|r| r.as_str()),
    ) {
        (Some(operation), _) => operation.as_str().parse().unwrap_or(kv::Operation::Put),
        (None, Some("MaxAge" | "Purge")) => kv::Operation::Purge,
        (None, Some("Remove")) => kv::Operation::Delete,
        (None, _) => kv::Operation::Put,
    };
    Ok(Some(kv::Entry {
        bucket: bucket.to_string(),
        key: key.to_string(),
        value: message.payload,
        revision: message.sequence,
        delta: 0,
        created: message.time,
        operation,
        seen_current: true,
    }))
}

/// Whether a watch error is one the client recovers from by itself: the
/// watch's consumer went quiet (its server died) and is being recreated.
/// Any other error ends the watch, and the follower reads the bucket again.
pub fn watch_recovers(error: &kv::WatcherError) -> bool {
    use async_nats::jetstream::consumer::push::{OrderedError, OrderedErrorKind};
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<OrderedError>())
        .is_some_and(|ordered| ordered.kind() == OrderedErrorKind::MissingHeartbeat)
}

/// How long ago `entry` was written, by the server's clock.
pub fn age(entry: &kv::Entry) -> Duration {
    let now = std::time::SystemTime::now();
    let written = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(0));
    now.duration_since(written).unwrap_or_default()
}

/// Fills what the watch misses until dropped: every [`POLL`], asks for the
/// change after `applied()` and hands it to `apply`, which must skip a
/// revision at or below what it applied already (the watch may deliver it
/// too). A change the watch left waiting for over a second is logged, and
/// so is a bucket that cannot be asked (once a minute while it lasts).
pub fn fill<A, F, Fut>(stream: Stream, bucket: &'static str, applied: A, mut apply: F) -> Filler
where
    A: Fn() -> u64 + Send + Sync + 'static,
    F: FnMut(kv::Entry) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (replaced_tx, replaced) = tokio::sync::oneshot::channel();
    let applied = std::sync::Arc::new(applied);
    if !stream.cached_info().config.allow_direct {
        tracing::warn!(
            "the bucket {bucket} does not allow direct gets (made by another tool?): a change its watch misses waits for the watch; `nats stream edit KV_{bucket} --allow-direct` allows them"
        );
    }
    // Apart from the reads: a stream info waits for the stream's leader,
    // which after a server's death may take seconds to be elected.
    let identity = tokio::spawn({
        let (mut stream, applied) = (stream.clone(), applied.clone());
        async move {
            let created = stream.cached_info().created;
            loop {
                tokio::time::sleep(IDENTITY_CHECK).await;
                if let Some(why) = replaced_since(&mut stream, created, applied()).await {
                    let _ = replaced_tx.send(why);
                    return;
                }
            }
        }
    });
    let reads = tokio::spawn(async move {
        let mut failures = Repeats::default();
        // Past the last change read here: one the follower cannot read is
        // not applied, and asking after `applied()` alone would ask for it
        // forever.
        let mut read_to = 0;
        loop {
            let entry = match change_after(&stream, bucket, read_to.max(applied()), ASK_TIMEOUT).await {
                Ok(Some(entry)) => {
                    failures.clear();
                    entry
                }
                Ok(None) => {
                    failures.clear();
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(error) => {
                    if failures.worth_logging(&error) {
                        tracing::warn!("cannot read {bucket} for what its watch missed: {error}; asking again");
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
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
    });
    Filler {
        tasks: [reads, identity],
        replaced,
    }
}

/// Why the bucket behind `stream` is no longer the one followed: gone,
/// made again since (another creation time), or behind what was applied
/// (its revisions started over). `None` when it is the same, or cannot be
/// asked now (an election, a slow server).
async fn replaced_since(stream: &mut Stream, created: time::OffsetDateTime, applied: u64) -> Option<String> {
    let info = match tokio::time::timeout(ASK_TIMEOUT, stream.info()).await.ok()? {
        Ok(info) => info,
        Err(error) => {
            let gone = std::error::Error::source(&error)
                .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
                .is_some_and(|e| e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND);
            return gone.then(|| "the bucket was deleted".to_string());
        }
    };
    if info.created != created {
        Some(format!("the bucket was made again ({})", info.created))
    } else if info.state.last_sequence < applied {
        Some(format!(
            "the bucket's last revision is {}, behind the {applied} applied here",
            info.state.last_sequence
        ))
    } else {
        None
    }
}

/// Stops [`fill`] when its follower's loop ends.
pub struct Filler {
    tasks: [tokio::task::JoinHandle<()>; 2],
    replaced: tokio::sync::oneshot::Receiver<String>,
}

impl Filler {
    /// Resolves when the bucket is no longer the one followed (deleted and
    /// made again, or its revisions started over): the follower must read
    /// it again from the start, as its revision check would drop every
    /// change from now on.
    pub async fn replaced(&mut self) -> String {
        match (&mut self.replaced).await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::consumer::push::{OrderedError, OrderedErrorKind};
    use async_nats::jetstream::kv::{WatcherError, WatcherErrorKind};

    use super::*;

    #[test]
    fn only_a_missed_heartbeat_is_left_to_the_client() {
        let quiet = WatcherError::from(OrderedError::new(OrderedErrorKind::MissingHeartbeat));
        assert!(watch_recovers(&quiet), "{quiet}");
        let deleted = WatcherError::from(OrderedError::new(OrderedErrorKind::ConsumerDeleted));
        assert!(!watch_recovers(&deleted), "{deleted}");
        assert!(!watch_recovers(&WatcherError::new(WatcherErrorKind::Other)));
    }
}
