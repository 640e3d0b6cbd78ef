//! Ships the local trail to the audit streams on NATS JetStream.
//!
//! The local file is the write-ahead queue: the shipper follows the writer
//! (up to the end of its last whole batch), publishes each line as it is,
//! byte for byte, to its class's subject ([`streams`]) with the line's hash
//! as `Nats-Msg-Id`, and moves its cursor ([`cursor`]) past a line once
//! every stream it went to has acknowledged it. After a restart or a NATS
//! outage it resumes from the cursor; re-sends within the streams'
//! deduplication window are stored once.
//!
//! Order: lines are published in file order on one connection, at most
//! [`WINDOW`] unacknowledged. After any failure the connection is dropped
//! (it never reconnects by itself, so nothing queued on it reaches the
//! server late, out of order) and shipping resumes from the first
//! unacknowledged line on a new one, one line at a time until the first
//! acknowledgement. What stays possible: a JetStream leader change in a
//! cluster that refuses one line and takes the next.
//!
//! Bound: `--audit-wal-max-bytes` of unacknowledged trail. At 80% a warning
//! is logged (and `AuditBacklogHigh` fires from the metrics); at 100% the
//! sink refuses new reservations (`audit_unavailable`) unless the agent's
//! `egress.fail_mode` is `open`, which keeps writing past the bound. No
//! record is ever dropped.

pub mod cursor;
mod recheck;
pub mod streams;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::AuditMetrics;
use super::verify::MAX_LINE_BYTES;
use super::writer::Backlog;
use cursor::{Cursor, Position};
use recheck::{Acked, AckedLines};
use streams::AuditStream;

/// Unacknowledged lines on the wire at once.
pub const WINDOW: usize = 256;
/// How much of the trail is read per step.
const CHUNK_BYTES: usize = 1 << 20;
/// A publish not acknowledged in this time counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// While caught up, the backlog metrics are refreshed at least this often.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Share of `--audit-wal-max-bytes` at which a warning is logged.
pub const WARN_RATIO: f64 = 0.8;

/// What to ship where.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub nats_url: String,
    pub trail: PathBuf,
    /// Stream replicas: `auto` is 1 on a single server, 3 on a cluster of 3
    /// or more.
    pub replicas: clawgress_nats::Replicas,
    /// Unacknowledged bytes allowed before `egress.fail_mode` decides.
    pub wal_max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot create or read the audit stream {stream}: {reason} (is JetStream on? start nats-server with -js)")]
    Stream { stream: &'static str, reason: String },
    #[error(
        "the audit stream {stream} has {has} replica(s), fewer than --audit-replicas {wanted}, so it is not used \
         (a lost server could lose records); raise it (`nats stream edit {stream} --replicas {wanted}`) \
         or start with --audit-replicas {has}"
    )]
    FewerReplicas {
        stream: &'static str,
        has: usize,
        wanted: usize,
    },
    #[error("publishing to {subject} failed: {reason}")]
    Publish { subject: &'static str, reason: String },
    #[error("cannot read the audit trail: {0}")]
    Read(std::io::Error),
}

/// The running shipper.
pub struct Shipper {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Shipper {
    /// Starts shipping on the current runtime. `written` is the writer's
    /// ([`super::AuditWriterHandle::written`]); once the writer has stopped,
    /// the shipper ships what is left and ends.
    pub fn start(
        config: ShipConfig,
        written: watch::Receiver<u64>,
        backlog: Arc<Backlog>,
        metrics: AuditMetrics,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        metrics
            .backlog_max_bytes
            .set(i64::try_from(config.wal_max_bytes).unwrap_or(i64::MAX));
        let task = tokio::spawn(run(config, written, stopped, backlog, metrics));
        Shipper { task, stop }
    }

    /// Waits up to `grace` for everything written to be acknowledged, then
    /// stops and saves the cursor.
    pub async fn finish(mut self, grace: Duration) {
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.stop.send_replace(true);
            let _ = self.task.await;
        }
    }
}

/// One connection and its streams, ready to publish.
struct Link {
    _client: async_nats::Client,
    js: jetstream::Context,
}

async fn run(
    config: ShipConfig,
    mut written: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    backlog: Arc<Backlog>,
    metrics: AuditMetrics,
) {
    let opened =
        Cursor::open(&config.trail).and_then(|(cursor, position)| Ok((cursor, position, File::open(&config.trail)?)));
    let (cursor, mut position, trail) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(trail = %config.trail.display(), %error, "cannot start shipping the audit trail to NATS");
            return;
        }
    };
    let mut gauge = BacklogGauge::new(&config, backlog, metrics.clone());
    let mut link: Option<Link> = None;
    let mut acked = AckedLines::default();
    let mut window = 1;
    let mut delay = RETRY_FIRST;
    let mut last_error = String::new();
    let mut writer_done = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let end = *written.borrow();
        gauge.update(end, &position, &trail);
        if writer_done && position.offset >= end {
            break;
        }
        let result = match &link {
            None => match connect(&config).await {
                // A server that went away may have lost what it acknowledged.
                Ok(connected) => acked.first_lost(&connected.js).await.map(|resume| {
                    if let Some(resume) = resume {
                        position = resume;
                    }
                    link = Some(connected);
                    metrics.shipper_up.set(1);
                    tracing::info!(url = %config.nats_url, "audit shipper connected; resuming at byte {}", position.offset);
                }),
                Err(error) => Err(error),
            },
            Some(_) if position.offset >= end => {
                tokio::select! {
                    changed = written.changed() => writer_done |= changed.is_err(),
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(IDLE_TICK) => {}
                }
                continue;
            }
            Some(connected) => {
                let shipped = ship_chunk(connected, &trail, &mut position, end, &cursor, window, &metrics, &mut acked).await;
                if shipped.is_ok() {
                    window = WINDOW;
                }
                shipped
            }
        };
        match result {
            Ok(()) => {
                delay = RETRY_FIRST;
                last_error.clear();
            }
            Err(error) => {
                metrics.ship_errors.inc();
                metrics.shipper_up.set(0);
                // Dropped: a connection that failed once is never trusted
                // with the rest of the window (see the module docs).
                link = None;
                window = 1;
                let message = error.to_string();
                if message != last_error {
                    tracing::error!(
                        backlog_bytes = end.saturating_sub(position.offset),
                        "audit shipping: {message}; retrying"
                    );
                    last_error = message;
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
    if let Err(error) = cursor.save(&position) {
        tracing::warn!(cursor = %cursor.path().display(), %error, "cannot save the audit shipping cursor; the next start re-sends (deduplicated)");
    }
    metrics.shipper_up.set(0);
}

async fn connect(config: &ShipConfig) -> Result<Link, ShipError> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-audit-shipper")
        .connection_timeout(Duration::from_secs(5))
        // One quick reconnect at most: after that the connection dies with
        // whatever it had queued, and the shipper resends from its cursor.
        .max_reconnects(1)
        .connect(clawgress_nats::servers(&config.nats_url))
        .await
        .map_err(|e| ShipError::Connect {
            url: super::super::control::store::redacted(&config.nats_url),
            reason: e.to_string(),
        })?;
    let replicas = config.replicas.resolve(&client);
    let js = jetstream::new(client.clone());
    for stream in &streams::STREAMS {
        let created = js
            .get_or_create_stream(streams::config(stream, replicas))
            .await
            .map_err(|e| ShipError::Stream {
                stream: stream.stream,
                reason: e.to_string(),
            })?;
        let has = created.cached_info().config.num_replicas.max(1);
        if has < replicas {
            return Err(ShipError::FewerReplicas {
                stream: stream.stream,
                has,
                wanted: replicas,
            });
        }
    }
    Ok(Link { _client: client, js })
}

/// The fields a line is routed by.
#[derive(Deserialize)]
struct Route<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    alert: Option<bool>,
    #[serde(borrow)]
    hash: Option<std::borrow::Cow<'a, str>>,
}

/// One line on the wire: where it ends in the file, its hash, its acks.
struct InFlight {
    end: u64,
    hash: String,
    acks: Vec<(&'static AuditStream, PublishAckFuture)>,
}

/// Publishes the lines in `[position, end)` (at most [`CHUNK_BYTES`] of
/// them), moving `position` past each acknowledged line.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn ship_chunk(
    link: &Link,
    trail: &File,
    position: &mut Position,
    end: u64,
    cursor: &Cursor,
    window: usize,
    metrics: &AuditMetrics,
    acked: &mut AckedLines,
) -> Result<(), ShipError> {
    // Lines are placed relative to where the chunk starts: `position` moves
    // as they are acknowledged.
    let base = position.offset;
    let chunk = read_lines(trail, base, end)?;
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(window);
    let mut start = 0usize;
    while let Some(newline) = memchr::memchr(b'\n', &chunk[start..]) {
        let line = chunk.slice(start..start + newline);
        let line_end = base + (start + newline + 1) as u64;
        start += newline + 1;
        let mut flight = InFlight {
            end: line_end,
            hash: String::new(),
            acks: Vec::new(),
        };
        // Torn fragments and blank lines are not records: nothing to ship.
        if let Ok(route) = serde_json::from_slice::<Route>(&line)
            && let Some(hash) = route.hash
        {
            flight.hash = hash.into_owned();
            for stream in streams::classes(route.kind.as_deref().unwrap_or(""), route.alert == Some(true)) {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(line.clone())
                    .message_id(&flight.hash);
                let ack = link
                    .js
                    .send_publish(stream.subject, publish)
                    .await
                    .map_err(|e| ShipError::Publish {
                        subject: stream.subject,
                        reason: e.to_string(),
                    })?;
                flight.acks.push((stream, ack));
            }
        }
        in_flight.push_back(flight);
        if in_flight.len() >= window
            && let Some(front) = in_flight.pop_front()
        {
            settle(front, position, metrics, acked).await?;
        }
    }
    while let Some(front) = in_flight.pop_front() {
        settle(front, position, metrics, acked).await?;
    }
    if let Err(error) = cursor.save(position) {
        tracing::warn!(%error, "cannot save the audit shipping cursor");
    }
    Ok(())
}

/// Waits for every acknowledgement of one line, then moves past it.
async fn settle(
    flight: InFlight,
    position: &mut Position,
    metrics: &AuditMetrics,
    acked: &mut AckedLines,
) -> Result<(), ShipError> {
    if flight.acks.is_empty() {
        position.offset = flight.end;
        return Ok(());
    }
    let mut seqs = Vec::with_capacity(flight.acks.len());
    for (stream, ack) in flight.acks {
        let failed = |reason: String| ShipError::Publish {
            subject: stream.subject,
            reason,
        };
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(ack)) => seqs.push((stream, ack.sequence)),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no acknowledgement within {ACK_TIMEOUT:?}"))),
        }
    }
    let before = std::mem::replace(
        position,
        Position {
            offset: flight.end,
            hash: flight.hash.clone(),
        },
    );
    acked.push(Acked {
        before,
        hash: flight.hash,
        seqs,
    });
    metrics.shipped.inc();
    Ok(())
}

/// Whole lines of the trail from `from`, at most [`CHUNK_BYTES`] (or one
/// line, however long) and never past `end`.
fn read_lines(trail: &File, from: u64, end: u64) -> Result<Bytes, ShipError> {
    let mut want = (end - from).min(CHUNK_BYTES as u64) as usize;
    loop {
        let mut buf = BytesMut::zeroed(want);
        trail.read_exact_at(&mut buf, from).map_err(ShipError::Read)?;
        match memchr::memrchr(b'\n', &buf) {
            Some(last) => {
                buf.truncate(last + 1);
                return Ok(buf.freeze());
            }
            None if (want as u64) < end - from && want <= MAX_LINE_BYTES => {
                want = (end - from).min(MAX_LINE_BYTES as u64 + 1) as usize;
            }
            // The writer only reports whole lines: this is not one of ours.
            None => {
                return Err(ShipError::Read(std::io::Error::other(format!(
                    "no line end within {want} bytes at offset {from}"
                ))));
            }
        }
    }
}

/// Keeps the backlog metrics and the sink's full flag in step.
struct BacklogGauge {
    max: u64,
    backlog: Arc<Backlog>,
    metrics: AuditMetrics,
    warned: bool,
}

impl BacklogGauge {
    fn new(config: &ShipConfig, backlog: Arc<Backlog>, metrics: AuditMetrics) -> Self {
        BacklogGauge {
            max: config.wal_max_bytes.max(1),
            backlog,
            metrics,
            warned: false,
        }
    }

    fn update(&mut self, end: u64, position: &Position, trail: &File) {
        let bytes = end.saturating_sub(position.offset);
        self.metrics.backlog_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let age = if bytes == 0 {
            0
        } else {
            oldest_age_seconds(trail, position.offset).unwrap_or(0)
        };
        self.metrics.backlog_age_seconds.set(age);
        let full = bytes >= self.max;
        if full != self.backlog.is_full() {
            if full {
                tracing::error!(
                    backlog_bytes = bytes,
                    max = self.max,
                    "the audit backlog not yet in the audit streams is at --audit-wal-max-bytes: \
                     fail_mode closed refuses new requests (audit_unavailable), open keeps writing past the bound",
                );
            } else {
                tracing::info!(backlog_bytes = bytes, "the audit backlog is below its bound again");
            }
            self.backlog.set_full(full);
            self.metrics.backlog_full.set(i64::from(full));
        }
        let high = bytes as f64 >= self.max as f64 * WARN_RATIO;
        if high && !self.warned && !full {
            tracing::warn!(
                backlog_bytes = bytes,
                max = self.max,
                "the audit backlog not yet in the audit streams is past 80% of --audit-wal-max-bytes; is NATS reachable?",
            );
        }
        self.warned = high;
    }
}

/// Seconds since the `timestamp` of the line at `offset` (every line starts
/// with it).
fn oldest_age_seconds(trail: &File, offset: u64) -> Option<i64> {
    let mut head = [0u8; 64];
    let read = trail.read_at(&mut head, offset).ok()?;
    let text = std::str::from_utf8(&head[..read]).ok()?;
    let rest = text.strip_prefix("{\"timestamp\":\"")?;
    let stamp = &rest[..rest.find('"')?];
    let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(
        (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .num_seconds()
            .max(0),
    )
}

#[cfg(test)]
mod tests;
