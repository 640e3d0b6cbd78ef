//! The audit queue and the writer that drains it into the chained file.
//!
//! The request path reserves a slot before it serves, and later moves its
//! event into it. Serialization, hashing and file I/O happen on the writer's
//! own thread (with a small runtime of its own, so its `write(2)` and
//! `fsync(2)` block nobody else), so a slow disk fills the queue instead of
//! stalling requests, and a full queue refuses new requests instead of
//! serving them unaudited.
//!
//! Group commit: the writer takes everything queued (up to [`MAX_BATCH`]
//! records) and appends it with one `write(2)` (plus one `fdatasync(2)`
//! under `--audit-fsync every`), then confirms every record of the batch at
//! once. Records that arrive while a batch is being written form the next
//! one, so the rate of writes adapts to the load by itself.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until};

use super::chain::{self, ChainHash};
use super::chain_file::ChainFile;
use super::checkpoint::{self, CheckpointConfig};
use super::confirm::{Confirmation, FsyncPolicy};
use super::event::AuditEvent;
use super::metrics::AuditMetrics;
use super::verify::LineProblem;

/// Records taken from the queue per batch (one write call each).
const MAX_BATCH: usize = 512;
/// Longest a written line waits for `fsync` under `--audit-fsync interval`.
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(100);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Once shutdown is asked for, a failing disk gets this many more tries: a
/// shutdown must end.
const RETRIES_WHILE_STOPPING: u32 = 3;

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Slots that may be reserved or queued at once.
    pub capacity: usize,
    pub fsync: FsyncPolicy,
    /// Signed checkpoints (`--audit-key`); none without a key.
    pub checkpoints: Option<CheckpointConfig>,
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
    #[error("cannot start the audit writer thread: {0}")]
    Thread(io::Error),
    #[error("audit write failed: {0}")]
    Write(io::Error),
    #[error("audit fsync failed: {0}")]
    Sync(io::Error),
    #[error("the audit writer thread panicked")]
    WriterAborted,
}

/// Why a request cannot be given an audit slot; the request must then be
/// refused (or, for [`AuditUnavailable::BacklogFull`] under `fail_mode:
/// open`, served with [`AuditSink::reserve_past_backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit writer has stopped")]
    WriterStopped,
    #[error("the audit backlog not yet shipped to the audit streams is at its bound")]
    BacklogFull,
}

/// One record on its way to the writer, with whoever waits for it.
pub(crate) struct Queued {
    event: AuditEvent,
    confirm: Option<oneshot::Sender<()>>,
}

/// Whether the unshipped backlog is at its bound; set by the shipper, read
/// by every reservation.
#[derive(Debug, Default)]
pub struct Backlog {
    full: AtomicBool,
}

impl Backlog {
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }
}

/// The request path's handle on the audit queue.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Queued>,
    metrics: AuditMetrics,
    backlog: Arc<Backlog>,
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
        if self.backlog.is_full() {
            return Err(AuditUnavailable::BacklogFull);
        }
        self.reserve_past_backlog()
    }

    /// [`AuditSink::reserve`] whatever the backlog: for `fail_mode: open`,
    /// which keeps writing the file past its bound rather than drop or
    /// refuse anything.
    pub fn reserve_past_backlog(&self) -> Result<AuditSlot, AuditUnavailable> {
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

    /// The flag the shipper raises when the backlog is at its bound.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }
}

/// A reserved place in the audit queue. Recording never blocks and never fails.
#[must_use = "a request that was served must record its audit event"]
pub struct AuditSlot {
    permit: Option<mpsc::OwnedPermit<Queued>>,
    abandoned: prometheus::IntCounter,
}

impl fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSlot").finish_non_exhaustive()
    }
}

impl AuditSlot {
    /// Queues the record; nobody waits for it to be written.
    pub fn record(self, event: impl Into<AuditEvent>) {
        self.send(event.into(), false).detach();
    }

    /// Queues the record; the confirmation resolves once it is written (as
    /// `--audit-fsync` defines it). A response's last bytes wait for it.
    pub fn record_confirmed(self, event: impl Into<AuditEvent>) -> Confirmation {
        self.send(event.into(), true)
    }

    fn send(mut self, event: AuditEvent, confirmed: bool) -> Confirmation {
        match self.permit.take() {
            Some(permit) => {
                let (confirm, confirmation) = if confirmed {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Confirmation::waiting(rx))
                } else {
                    (None, Confirmation::done())
                };
                permit.send(Queued { event, confirm });
                confirmation
            }
            // The fail-open slot: the trail cannot take the record, so the
            // log keeps it (as JSON, so it can be re-imported).
            None => {
                match serde_json::to_string(&event) {
                    Ok(line) => tracing::warn!(target: "clawgress::audit_fallback", "{line}"),
                    Err(error) => tracing::error!("cannot serialize a fail-open audit record: {error}"),
                }
                Confirmation::done()
            }
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

/// Owns the writer thread.
#[derive(Debug)]
pub struct AuditWriterHandle {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<Result<(), AuditError>>,
    thread: std::thread::JoinHandle<()>,
    written: watch::Receiver<u64>,
}

impl AuditWriterHandle {
    /// Stops taking new reservations, waits until every slot already reserved has
    /// been recorded (or dropped), writes everything queued, signs a last
    /// checkpoint (with a key), fsyncs and returns. Slots held by requests
    /// still in flight delay it: wrap it in a timeout if that can be long.
    pub async fn shutdown(self) -> Result<(), AuditError> {
        self.stop.send_replace(true);
        self.done.await.map_err(|_| AuditError::WriterAborted)?
    }

    /// The writer has stopped (after an unrecoverable error, or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The file's length up to the end of the last complete batch written:
    /// everything before it is whole lines. The shipper reads up to here.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }
}

/// Opens (or continues) the chained file at `path` and starts the writer
/// with `--audit-fsync interval` and no checkpoints.
pub fn start_writer(
    path: &Path,
    capacity: usize,
    metrics: AuditMetrics,
) -> Result<(AuditSink, AuditWriterHandle), AuditError> {
    start_writer_with(
        path,
        WriterOptions {
            capacity,
            fsync: FsyncPolicy::Interval,
            checkpoints: None,
        },
        metrics,
    )
}

/// Opens (or continues) the chained file at `path` and starts its writer.
pub fn start_writer_with(
    path: &Path,
    options: WriterOptions,
    metrics: AuditMetrics,
) -> Result<(AuditSink, AuditWriterHandle), AuditError> {
    if options.capacity == 0 {
        return Err(AuditError::ZeroCapacity);
    }
    let (mut chain, torn) = ChainFile::open(path)?;
    if let Some(torn) = torn {
        tracing::warn!(
            path = %path.display(),
            torn_lines = torn.lines,
            torn_bytes = torn.bytes,
            "audit file ended in a torn write; left it in place and resumed the chain after the last complete record",
        );
    }
    let checkpoints = match options.checkpoints {
        Some(config) => {
            let lines = chain.count_lines().map_err(|source| AuditError::Open {
                path: path.to_owned(),
                source,
            })?;
            // Records an earlier run left unsigned (it crashed, or ran
            // without a key) are covered by this run's first checkpoint.
            let unsigned = lines > 0 && !chain.ends_signed;
            Some(Checkpointing {
                lines,
                config,
                since_last: u64::from(unsigned),
                first_unsigned_at: unsigned.then(Instant::now),
            })
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(options.capacity);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (written_tx, written_rx) = watch::channel(chain.len());
    let (done_tx, done_rx) = oneshot::channel();
    let writer = Writer {
        chain,
        events: Vec::with_capacity(MAX_BATCH),
        confirms: Vec::with_capacity(MAX_BATCH),
        buf: Vec::new(),
        metrics: metrics.clone(),
        fsync: options.fsync,
        dirty_since: None,
        checkpoints,
        written: written_tx,
    };
    let thread = std::thread::Builder::new()
        .name("clawgress-audit".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(runtime) => runtime.block_on(writer.run(rx, stop_rx)),
                Err(error) => Err(AuditError::Thread(error)),
            };
            if let Err(error) = &result {
                tracing::error!(%error, "the audit writer stopped");
            }
            let _ = done_tx.send(result);
        })
        .map_err(AuditError::Thread)?;
    Ok((
        AuditSink {
            tx,
            metrics,
            backlog: Arc::default(),
        },
        AuditWriterHandle {
            stop: stop_tx,
            done: done_rx,
            thread,
            written: written_rx,
        },
    ))
}

fn used_slots(max: usize, free: usize) -> i64 {
    i64::try_from(max.saturating_sub(free)).unwrap_or(i64::MAX)
}

struct Writer {
    chain: ChainFile,
    events: Vec<Queued>,
    /// Whoever waits for the records of the batch being written.
    confirms: Vec<oneshot::Sender<()>>,
    buf: Vec<u8>,
    metrics: AuditMetrics,
    fsync: FsyncPolicy,
    /// When the oldest line not yet fsynced was written.
    dirty_since: Option<Instant>,
    checkpoints: Option<Checkpointing>,
    written: watch::Sender<u64>,
}

struct Checkpointing {
    config: CheckpointConfig,
    /// Lines in the file: the next checkpoint's `seq` is the last of them.
    lines: u64,
    since_last: u64,
    first_unsigned_at: Option<Instant>,
}

enum Step {
    Received(usize),
    SyncDue,
    CheckpointDue,
    StopRequested,
    HandleDropped,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>, mut stop: watch::Receiver<bool>) -> Result<(), AuditError> {
        let mut watching_stop = true;
        loop {
            let sync_at = match self.fsync {
                FsyncPolicy::Interval => self.dirty_since.map(|since| since + FSYNC_INTERVAL),
                FsyncPolicy::Every | FsyncPolicy::Never => None,
            };
            let checkpoint_at = self
                .checkpoints
                .as_ref()
                .and_then(|c| c.first_unsigned_at.map(|at| at + c.config.interval));
            let step = tokio::select! {
                received = rx.recv_many(&mut self.events, MAX_BATCH) => Step::Received(received),
                () = sleep_until(sync_at.unwrap_or_else(Instant::now)), if sync_at.is_some() => Step::SyncDue,
                () = sleep_until(checkpoint_at.unwrap_or_else(Instant::now)), if checkpoint_at.is_some() => Step::CheckpointDue,
                changed = stop.changed(), if watching_stop => match changed {
                    Ok(()) => Step::StopRequested,
                    Err(_) => Step::HandleDropped,
                },
            };
            match step {
                // Zero means closed and drained: every sender and permit is gone,
                // or shutdown closed the queue and everything in it was taken.
                Step::Received(0) => break,
                Step::Received(_) => {
                    self.metrics
                        .queue_depth
                        .set(used_slots(rx.max_capacity(), rx.capacity()));
                    self.write_batch(&stop, false).await?;
                    // A failed fsync is counted and logged in `sync`.
                    if sync_at.is_some_and(|at| Instant::now() >= at) {
                        let _ = self.sync();
                    }
                }
                Step::SyncDue => {
                    let _ = self.sync();
                }
                Step::CheckpointDue => self.write_batch(&stop, true).await?,
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
        // A clean stop leaves no record unsigned.
        self.write_batch(&stop, true).await?;
        self.dirty_since.get_or_insert_with(Instant::now);
        self.sync().map_err(AuditError::Sync)
    }

    /// Serializes and chains the queued records (and a checkpoint when one
    /// is due, or `force_checkpoint` and anything is unsigned), appends them
    /// with one write, and confirms them. A failed write is retried (after
    /// cutting off whatever part of it landed) until it succeeds, so nothing
    /// is lost while the disk recovers; meanwhile the queue fills up and new
    /// requests are refused.
    async fn write_batch(&mut self, stop: &watch::Receiver<bool>, force_checkpoint: bool) -> Result<(), AuditError> {
        let (new_hash, records) = self.encode_batch(force_checkpoint);
        if self.buf.is_empty() {
            self.confirms.clear();
            return Ok(());
        }
        let mut delay = RETRY_FIRST;
        let mut retries_while_stopping = 0;
        while let Err(e) = self.chain.append(&self.buf) {
            self.metrics.write_errors.inc();
            tracing::error!(
                path = %self.chain.path().display(),
                error = %e,
                records,
                "audit write failed; holding the batch and retrying",
            );
            if *stop.borrow() {
                retries_while_stopping += 1;
                if retries_while_stopping > RETRIES_WHILE_STOPPING {
                    tracing::error!(records, "audit writer stopping with a batch it could not write");
                    return Err(AuditError::Write(e));
                }
            }
            sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
        self.chain.last_hash = new_hash;
        self.metrics.lines_written.inc_by(records);
        match self.fsync {
            FsyncPolicy::Every => {
                self.dirty_since.get_or_insert_with(Instant::now);
                if self.sync().is_err() {
                    // Not durable as promised: whoever waits is told so.
                    self.confirms.clear();
                }
            }
            FsyncPolicy::Interval | FsyncPolicy::Never => {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
        }
        for confirm in self.confirms.drain(..) {
            let _ = confirm.send(());
        }
        self.written.send_replace(self.chain.len());
        Ok(())
    }

    /// Fills `buf` with the sealed lines of the queued records; returns the
    /// hash of the last line and how many records there are. Does not move
    /// `last_hash`: that happens only once the bytes are written.
    fn encode_batch(&mut self, force_checkpoint: bool) -> (ChainHash, u64) {
        self.buf.clear();
        let mut prev = self.chain.last_hash;
        let mut records = 0;
        for Queued { event, confirm } in self.events.drain(..) {
            let start = self.buf.len();
            let sealed = match serde_json::to_writer(&mut self.buf, &event) {
                Ok(()) => chain::seal(&mut self.buf, start, &prev),
                Err(_) => None,
            };
            let Some(hash) = sealed else {
                // Unreachable with the derived shapes; never silently, though.
                // Its waiter (if any) learns it was not written.
                self.buf.truncate(start);
                self.metrics.write_errors.inc();
                tracing::error!(event = ?event_label(&event), "audit event could not be serialized; dropped");
                continue;
            };
            prev = hash;
            records += 1;
            self.confirms.extend(confirm);
            if let Some(c) = self.checkpoints.as_mut() {
                c.lines += 1;
                c.since_last += 1;
                c.first_unsigned_at.get_or_insert_with(Instant::now);
                if c.since_last >= c.config.every_records {
                    prev = append_checkpoint(c, &mut self.buf, &prev, &self.metrics);
                }
            }
        }
        if force_checkpoint && let Some(c) = self.checkpoints.as_mut().filter(|c| c.since_last > 0) {
            prev = append_checkpoint(c, &mut self.buf, &prev, &self.metrics);
        }
        (prev, records)
    }

    /// fsyncs if anything is unsynced. A failure is counted and logged, not
    /// retried: after a failed fsync Linux may already have dropped the
    /// dirty pages.
    fn sync(&mut self) -> io::Result<()> {
        if self.dirty_since.take().is_none() {
            return Ok(());
        }
        let synced = self.chain.sync();
        if let Err(e) = &synced {
            self.metrics.write_errors.inc();
            tracing::error!(path = %self.chain.path().display(), error = %e, "audit fsync failed");
        }
        synced
    }
}

/// Appends a checkpoint covering everything so far; returns the new last hash.
fn append_checkpoint(c: &mut Checkpointing, buf: &mut Vec<u8>, prev: &ChainHash, metrics: &AuditMetrics) -> ChainHash {
    let start = buf.len();
    match checkpoint::append(buf, &c.config.key, c.lines, prev, &Utc::now()) {
        Some(hash) => {
            c.lines += 1;
            c.since_last = 0;
            c.first_unsigned_at = None;
            metrics.checkpoints.inc();
            hash
        }
        None => {
            buf.truncate(start);
            metrics.write_errors.inc();
            tracing::error!("an audit checkpoint could not be serialized; the records stay unsigned until the next");
            *prev
        }
    }
}

/// Enough to find the request, nothing from its content.
fn event_label(event: &AuditEvent) -> String {
    match event {
        AuditEvent::Egress(e) => format!("egress request {}", e.request_id),
        AuditEvent::Admin(e) => format!("admin action {}", e.action),
        AuditEvent::Dns(e) => format!("dns query {}", e.request_id),
        AuditEvent::Policy(e) => format!("policy rejected {}", e.file),
    }
}
