//! The audit queue and the task that drains it into the chained file.
//!
//! The request path only reserves a slot and later moves its event into it; all
//! serialization, hashing and file I/O happen on the writer task (file calls on the
//! blocking pool), so a slow disk fills the queue instead of stalling requests, and
//! a full queue refuses new requests instead of serving them unaudited.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::chain::{self, ChainHash};
use super::chain_file::ChainFile;
use super::event::AuditEvent;
use super::verify::LineProblem;

/// Events taken from the queue per batch (one write call each).
const MAX_BATCH: usize = 512;
/// How long the writer lets records gather after a batch that was not
/// full. Bounds how stale the file is under load (fsync runs every
/// FSYNC_INTERVAL anyway) while sparing a wake-up per request.
const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Longest a written line waits for `fsync` while the writer is running.
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(100);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Once shutdown is asked for, a failing disk gets this many more tries: a
/// shutdown must end.
const RETRIES_WHILE_STOPPING: u32 = 3;

/// The writer's counters. Cheap to clone (each is an `Arc`).
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    pub lines_written: IntCounter,
    pub write_errors: IntCounter,
    /// `reserve()` refused because every slot was taken.
    pub queue_full: IntCounter,
    /// Slots reserved by in-flight requests plus events waiting to be written.
    pub queue_depth: IntGauge,
    /// Slots dropped without a record: a request that may have been served
    /// without an audit line. Should stay at zero; alert if not.
    pub slots_abandoned: IntCounter,
}

impl AuditMetrics {
    /// Counters registered nowhere, for tools and tests. The gateway gets its
    /// registered ones from `GatewayMetrics::audit`.
    pub fn detached() -> prometheus::Result<Self> {
        Ok(AuditMetrics {
            lines_written: IntCounter::new("audit_lines_written_total", "lines written")?,
            write_errors: IntCounter::new("audit_write_errors_total", "write errors")?,
            queue_full: IntCounter::new("audit_queue_full_total", "queue full")?,
            queue_depth: IntGauge::new("audit_queue_depth", "queue depth")?,
            slots_abandoned: IntCounter::new("audit_slots_abandoned_total", "slots abandoned")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("audit file {} is locked by another writer", path.display())]
    Locked { path: PathBuf },
    #[error("audit file {} does not end in a valid record ({problem}); move it aside or repair it", path.display())]
    CorruptTail { path: PathBuf, problem: LineProblem },
    #[error("audit queue capacity must be at least 1")]
    ZeroCapacity,
    #[error("the audit writer must be started from inside a tokio runtime")]
    NoRuntime,
    #[error("audit write failed: {0}")]
    Write(io::Error),
    #[error("audit fsync failed: {0}")]
    Sync(io::Error),
    #[error("the audit writer task panicked or was cancelled")]
    WriterAborted,
}

/// Why a request cannot be given an audit slot; the request must then be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit writer has stopped")]
    WriterStopped,
}

/// The request path's handle on the audit queue.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    metrics: AuditMetrics,
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSink")
            .field("free_slots", &self.tx.capacity())
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// The writer is still taking records (readiness).
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Reserves a place in the queue. Call it before serving a request, so that a
    /// request is only served if its record is guaranteed a place.
    pub fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        let reserved = self.tx.clone().try_reserve_owned();
        self.metrics
            .queue_depth
            .set(used_slots(self.tx.max_capacity(), self.tx.capacity()));
        match reserved {
            Ok(permit) => Ok(AuditSlot {
                permit: Some(permit),
                abandoned: self.metrics.slots_abandoned.clone(),
            }),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.queue_full.inc();
                Err(AuditUnavailable::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditUnavailable::WriterStopped),
        }
    }
}

/// A reserved place in the audit queue. Recording never blocks and never fails.
#[must_use = "a request that was served must record its audit event"]
pub struct AuditSlot {
    permit: Option<mpsc::OwnedPermit<AuditEvent>>,
    abandoned: IntCounter,
}

impl fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSlot").finish_non_exhaustive()
    }
}

impl AuditSlot {
    pub fn record(mut self, event: impl Into<AuditEvent>) {
        match self.permit.take() {
            Some(permit) => {
                permit.send(event.into());
            }
            // The fail-open slot: the trail cannot take the record, so the
            // log keeps it (as JSON, so it can be re-imported).
            None => match serde_json::to_string(&Into::<AuditEvent>::into(event)) {
                Ok(line) => tracing::warn!(target: "clawgress::audit_fallback", "{line}"),
                Err(error) => tracing::error!("cannot serialize a fail-open audit record: {error}"),
            },
        }
    }

    /// Gives the place back unused: nothing happened that needs a record.
    pub fn release(mut self) {
        self.permit.take();
    }

    /// A slot for a request that `egress.fail_mode: open` serves while the
    /// audit trail is unavailable: its record goes to the log instead.
    pub fn fail_open(sink: &AuditSink) -> AuditSlot {
        AuditSlot {
            permit: None,
            abandoned: sink.metrics.slots_abandoned.clone(),
        }
    }
}

impl Drop for AuditSlot {
    /// Dropping a slot unrecorded frees it, but it usually means a request future
    /// was cancelled after being served, so it is counted and logged: not a panic,
    /// because cancellation is a normal event in async code.
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.abandoned.inc();
            tracing::warn!("audit slot dropped without a record; a request may be missing from the audit");
        }
    }
}

/// Owns the writer task.
#[derive(Debug)]
pub struct AuditWriterHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AuditError>>,
}

impl AuditWriterHandle {
    /// Stops taking new reservations, waits until every slot already reserved has
    /// been recorded (or dropped), writes everything queued, fsyncs and returns.
    /// Slots held by requests still in flight delay it: wrap it in a timeout if
    /// that can be long.
    pub async fn shutdown(self) -> Result<(), AuditError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|_| AuditError::WriterAborted)?
    }

    /// The writer has stopped (after an unrecoverable error, or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Opens (or continues) the chained file at `path` and starts the writer on the
/// current tokio runtime. `capacity` bounds the slots that may be reserved or
/// queued at once.
pub fn start_writer(
    path: &Path,
    capacity: usize,
    metrics: AuditMetrics,
) -> Result<(AuditSink, AuditWriterHandle), AuditError> {
    if capacity == 0 {
        return Err(AuditError::ZeroCapacity);
    }
    let runtime = Handle::try_current().map_err(|_| AuditError::NoRuntime)?;
    let (chain, torn) = ChainFile::open(path)?;
    if let Some(torn) = torn {
        tracing::warn!(
            path = %path.display(),
            torn_lines = torn.lines,
            torn_bytes = torn.bytes,
            "audit file ended in a torn write; left it in place and resumed the chain after the last complete record",
        );
    }
    let (tx, rx) = mpsc::channel(capacity);
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = Writer {
        chain,
        events: Vec::with_capacity(MAX_BATCH),
        buf: Vec::new(),
        metrics: metrics.clone(),
        dirty_since: None,
    };
    let task = runtime.spawn(writer.run(rx, stop_rx));
    Ok((AuditSink { tx, metrics }, AuditWriterHandle { stop: stop_tx, task }))
}

fn used_slots(max: usize, free: usize) -> i64 {
    i64::try_from(max.saturating_sub(free)).unwrap_or(i64::MAX)
}

/// Moved onto the blocking pool and back for each file operation.
struct Writer {
    chain: ChainFile,
    events: Vec<AuditEvent>,
    buf: Vec<u8>,
    metrics: AuditMetrics,
    /// When the oldest line not yet fsynced was written.
    dirty_since: Option<Instant>,
}

enum Step {
    Received(usize),
    SyncDue,
    StopRequested,
    HandleDropped,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AuditEvent>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), AuditError> {
        let mut watching_stop = true;
        loop {
            let sync_at = self.dirty_since.map(|since| since + FSYNC_INTERVAL);
            let step = tokio::select! {
                received = rx.recv_many(&mut self.events, MAX_BATCH) => Step::Received(received),
                () = sleep_until(sync_at.unwrap_or_else(Instant::now)), if sync_at.is_some() => Step::SyncDue,
                changed = stop.changed(), if watching_stop => match changed {
                    Ok(()) => Step::StopRequested,
                    Err(_) => Step::HandleDropped,
                },
            };
            match step {
                // Zero means closed and drained: every sender and permit is gone,
                // or shutdown closed the queue and everything in it was taken.
                Step::Received(0) => break,
                Step::Received(received) => {
                    self.metrics
                        .queue_depth
                        .set(used_slots(rx.max_capacity(), rx.capacity()));
                    self = self.write_batch(&stop).await?;
                    if sync_at.is_some_and(|at| Instant::now() >= at) {
                        self = self.sync().await?.0;
                    }
                    if received < MAX_BATCH {
                        // Let the next batch gather without waking this task
                        // (and a blocking thread) once per request: a waiting
                        // receiver costs every sender a cross-thread wake-up.
                        sleep(BATCH_LINGER).await;
                    }
                }
                Step::SyncDue => self = self.sync().await?.0,
                Step::StopRequested => {
                    watching_stop = false;
                    rx.close();
                }
                // Nobody can ask for a shutdown any more; keep writing until the
                // last sink is dropped.
                Step::HandleDropped => watching_stop = false,
            }
        }
        self.metrics.queue_depth.set(0);
        let (_, synced) = self.sync().await?;
        synced.map_err(AuditError::Sync)
    }

    /// Serializes and chains the queued events, then appends them with one write.
    /// A failed write is retried (after cutting off whatever part of it landed) until
    /// it succeeds, so nothing is lost while the disk recovers; meanwhile the queue
    /// fills up and new requests are refused.
    async fn write_batch(self, stop: &watch::Receiver<bool>) -> Result<Self, AuditError> {
        let (mut writer, (mut outcome, new_hash, lines)) = self
            .blocking(|w| {
                let (new_hash, lines) = w.encode_batch();
                (w.chain.append(&w.buf), new_hash, lines)
            })
            .await?;
        let mut delay = RETRY_FIRST;
        let mut retries_while_stopping = 0;
        loop {
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    writer.metrics.write_errors.inc();
                    tracing::error!(
                        path = %writer.chain.path().display(),
                        error = %e,
                        lines,
                        "audit write failed; holding the batch and retrying",
                    );
                    if *stop.borrow() {
                        retries_while_stopping += 1;
                        if retries_while_stopping > RETRIES_WHILE_STOPPING {
                            tracing::error!(lines, "audit writer stopping with a batch it could not write");
                            return Err(AuditError::Write(e));
                        }
                    }
                    sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    let (w, retried) = writer.blocking(|w| w.chain.append(&w.buf)).await?;
                    writer = w;
                    outcome = retried;
                }
            }
        }
        writer.chain.last_hash = new_hash;
        writer.metrics.lines_written.inc_by(lines);
        writer.dirty_since.get_or_insert_with(Instant::now);
        Ok(writer)
    }

    /// Fills `buf` with the sealed lines of the queued events; returns the hash of
    /// the last one and how many there are. Does not move `last_hash`: that happens
    /// only once the bytes are written.
    fn encode_batch(&mut self) -> (ChainHash, u64) {
        self.buf.clear();
        let mut prev = self.chain.last_hash;
        let mut lines = 0;
        for event in self.events.drain(..) {
            let start = self.buf.len();
            let sealed = match serde_json::to_writer(&mut self.buf, &event) {
                Ok(()) => chain::seal(&mut self.buf, start, &prev),
                Err(_) => None,
            };
            match sealed {
                Some(hash) => {
                    prev = hash;
                    lines += 1;
                }
                None => {
                    // Unreachable with the derived shapes; never silently, though.
                    self.buf.truncate(start);
                    self.metrics.write_errors.inc();
                    tracing::error!(event = ?event_label(&event), "audit event could not be serialized; dropped");
                }
            }
        }
        (prev, lines)
    }

    async fn sync(self) -> Result<(Self, io::Result<()>), AuditError> {
        if self.dirty_since.is_none() {
            return Ok((self, Ok(())));
        }
        let (mut writer, synced) = self.blocking(|w| w.chain.sync()).await?;
        writer.dirty_since = None;
        if let Err(e) = &synced {
            // Retrying is pointless: after a failed fsync Linux may already have
            // dropped the dirty pages. Count it loudly instead.
            writer.metrics.write_errors.inc();
            tracing::error!(path = %writer.chain.path().display(), error = %e, "audit fsync failed");
        }
        Ok((writer, synced))
    }

    async fn blocking<R: Send + 'static>(
        mut self,
        f: impl FnOnce(&mut Self) -> R + Send + 'static,
    ) -> Result<(Self, R), AuditError> {
        tokio::task::spawn_blocking(move || {
            let result = f(&mut self);
            (self, result)
        })
        .await
        .map_err(|_| AuditError::WriterAborted)
    }
}

/// Enough to find the request, nothing from its content.
fn event_label(event: &AuditEvent) -> String {
    match event {
        AuditEvent::Egress(e) => format!("egress request {}", e.request_id),
        AuditEvent::Admin(e) => format!("admin action {}", e.action),
        AuditEvent::Dns(e) => format!("dns query {}", e.request_id),
    }
}
