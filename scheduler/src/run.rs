//! The scheduler: pulls jobs (high before normal before low), runs them on
//! a bounded pool with per-domain concurrency and politeness, and decides
//! from the outcome what happens next: a result, a Nak with a delay, or the
//! dead-letter queue. No job is lost: a message is acked only after its
//! result (or dead letter) is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Context, Message};
use clawgress_workers::chromium::ChromiumPool;
use clawgress_workers::http::HttpFetcher;
use clawgress_workers::job::{FetchMode, Job, JobKind};
use clawgress_workers::outcome::{Disposition, FetchError};
use clawgress_workers::steel::SteelPool;
use clawgress_workers::{JobError, parse_job};
use futures_util::StreamExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::metrics::SchedulerMetrics;
use crate::result::{DeadLetter, JobResult, ResultError, ResultStatus};
use crate::streams;

mod fetch;

use fetch::{Done, execute};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Jobs running at once.
    pub concurrency: usize,
    /// Jobs running at once against one host.
    pub per_domain: usize,
    /// Least time between two job starts against one host.
    pub politeness: Duration,
    /// How long in-flight jobs may finish after a stop; the rest are Nak'ed.
    pub drain: Duration,
    /// How long JetStream waits for an ack (or a progress ack) before it
    /// hands a job to another scheduler: the delay before the jobs of a
    /// crashed scheduler run again.
    pub ack_wait: Duration,
    /// Fetch nothing: valid jobs are answered `ok` with tier `dry-run`.
    pub dry_run: bool,
    /// Serve Prometheus metrics here (`GET /metrics`).
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            concurrency: 32,
            per_domain: 4,
            politeness: Duration::ZERO,
            drain: Duration::from_secs(30),
            ack_wait: streams::ACK_WAIT,
            dry_run: false,
            metrics: None,
        }
    }
}

/// Per-host limits: a semaphore and the time of the last start.
#[derive(Default)]
struct Hosts {
    slots: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    last_start: Mutex<HashMap<String, Instant>>,
}

impl Hosts {
    fn semaphore(&self, host: &str, per_domain: usize) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: idle hosts (no permit taken) are forgotten.
        if slots.len() > 10_000 {
            slots.retain(|_, s| s.available_permits() < per_domain);
        }
        slots
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(per_domain.max(1))))
            .clone()
    }

    async fn polite(&self, host: &str, gap: Duration) {
        if gap.is_zero() {
            return;
        }
        let wait = {
            let mut last = self.last_start.lock().await;
            let now = Instant::now();
            let start = last.get(host).map_or(now, |t| (*t + gap).max(now));
            last.insert(host.to_string(), start);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
}

struct Shared {
    js: Context,
    backends: Backends,
    config: SchedulerConfig,
    hosts: Hosts,
    /// For `auto`: the tier that worked last for each host, so later jobs
    /// start there.
    tiers: std::sync::Mutex<HashMap<String, Tier>>,
    /// Waits the gateway asked for (rate limits, open breakers), per stream
    /// message, with when the first was seen: they are redeliveries but not
    /// attempts. Kept in memory; another scheduler's count is not known, so
    /// after a hand-over attempts are counted conservatively.
    waits: std::sync::Mutex<HashMap<u64, (u32, Instant)>>,
    metrics: Arc<SchedulerMetrics>,
}

/// How long a job may keep waiting for the gateway's rate limits or breakers
/// before it is dead-lettered.
const MAX_GATEWAY_WAIT: Duration = Duration::from_secs(3600);

/// The fetch backends this scheduler's workers have.
#[derive(Clone)]
pub struct Backends {
    pub http: Arc<HttpFetcher>,
    pub chromium: Option<Arc<ChromiumPool>>,
    pub steel: Option<Arc<SteelPool>>,
}

/// A job's place in the scheduler's global pool. A job that waits for
/// something other than this scheduler's capacity (a Steel server) gives it
/// back, so jobs for other backends keep running.
pub(super) struct Slot(std::sync::Mutex<Option<OwnedSemaphorePermit>>);

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Slot {
        Slot(std::sync::Mutex::new(Some(permit)))
    }

    pub(super) fn release(&self) {
        if let Ok(mut permit) = self.0.lock() {
            permit.take();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Http,
    Chromium,
    Steel,
}

/// Runs until `stop` turns true, then drains.
pub async fn run(
    js: Context,
    backends: Backends,
    config: SchedulerConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), streams::SetupError> {
    let metrics = Arc::new(SchedulerMetrics::new(backends.steel.clone()));
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    if let Some(addr) = config.metrics {
        let listener = crate::metrics::bind(addr).await.map_err(streams::SetupError::Listen)?;
        tracing::info!(%addr, "scheduler metrics on /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone(), metrics_stopped));
    }
    streams::ensure_streams(&js).await?;
    let consumers = streams::consumers(&js, config.ack_wait).await?;
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let (cancel_tx, cancel) = watch::channel(false);
    let shared = Arc::new(Shared {
        js,
        backends,
        config,
        hosts: Hosts::default(),
        tiers: Default::default(),
        waits: Default::default(),
        metrics,
    });
    let mut running = JoinSet::new();
    tracing::info!(concurrency = shared.config.concurrency, "scheduler pulling jobs");
    'pull: loop {
        if *stop.borrow() {
            break;
        }
        // Wait for room before pulling, so nothing pulled sits unstarted.
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let mut pulled = false;
        for (priority, consumer) in &consumers {
            let messages = match fetch_now(consumer, permits.len()).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, priority = priority.as_str(), "pulling jobs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'pull;
                }
            };
            for message in messages {
                let Some(permit) = permits.pop() else { break };
                pulled = true;
                let (shared, cancel) = (shared.clone(), cancel.clone());
                running.spawn(async move {
                    handle(&shared, message, cancel, Slot::new(permit)).await;
                });
            }
            // Something of this priority ran: look at the higher ones again
            // before any lower one.
            if pulled {
                break;
            }
        }
        drop(permits);
        while running.try_join_next().is_some() {}
        if !pulled {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {}
            }
        }
    }
    tracing::info!(in_flight = running.len(), "scheduler draining");
    let deadline = tokio::time::sleep(shared.config.drain);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = running.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                // Jobs still running are handed back to the stream.
                let _ = cancel_tx.send(true);
                while running.join_next().await.is_some() {}
                break;
            }
        }
    }
    if let Some(chromium) = &shared.backends.chromium {
        chromium.shutdown().await;
    }
    if let Some(steel) = &shared.backends.steel {
        steel.shutdown(Duration::from_secs(5)).await;
    }
    let _ = metrics_stop.send(true);
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Whatever is waiting now, up to `max`, without waiting for more.
async fn fetch_now(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    max: usize,
) -> Result<Vec<Message>, String> {
    // Bounded twice: the server expires the pull, and the client stops
    // waiting, so a server that dies mid-pull cannot stall the scheduler.
    let pull = async {
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => messages.push(message),
                // What arrived is run; the rest stays in the stream.
                Err(error) if messages.is_empty() => return Err(error.to_string()),
                Err(_) => break,
            }
        }
        Ok(messages)
    };
    tokio::time::timeout(Duration::from_secs(5), pull)
        .await
        .unwrap_or_else(|_| Err("the pull timed out".to_string()))
}

/// The job's type, from its subject (`jobs.<type>.<priority>`), so even a
/// job that does not parse can be answered on the right subject.
fn kind_of(subject: &str) -> JobKind {
    match subject.split('.').nth(1) {
        Some("agent") => JobKind::Agent,
        _ => JobKind::Scrape,
    }
}

async fn handle(shared: &Shared, message: Message, cancel: watch::Receiver<bool>, slot: Slot) {
    let started = Instant::now();
    let (delivered, sequence) = message
        .info()
        .map(|info| (info.delivered.max(1) as u32, info.stream_sequence))
        .unwrap_or((1, 0));
    let kind = kind_of(message.subject.as_str());
    let job = match parse_job(&message.payload, |agent| shared.backends.http.serves(agent))
        .and_then(|job| supported(job, &shared.backends))
    {
        Ok(job) => job,
        Err(error) => {
            // An id that cannot be a subject token cannot address a result.
            let id = error
                .job_id
                .clone()
                .filter(|id| clawgress_workers::job::valid_id(id))
                .unwrap_or_else(|| format!("invalid-{sequence}"));
            let result = invalid(kind, &id, &error, delivered, started);
            finish(shared, &message, &result, None).await;
            return;
        }
    };
    // The job's span continues the publisher's trace (its `traceparent`
    // travels in the message headers); fetches and the gateway's decisions
    // become its children.
    let span = tracing::debug_span!(
        target: "clawgress_scheduler::job",
        "job",
        otel.kind = "consumer",
        job.id = %job.id(),
        job.kind = ?kind,
        job.attempt = delivered,
    );
    clawgress_telemetry::adopt(
        &span,
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(clawgress_telemetry::TRACEPARENT))
            .map(|v| v.as_str()),
    );
    run_job(shared, &message, job, delivered, started, cancel, &slot)
        .instrument(span)
        .await;
}

async fn run_job(
    shared: &Shared,
    message: &Message,
    job: Job,
    delivered: u32,
    started: Instant,
    mut cancel: watch::Receiver<bool>,
    slot: &Slot,
) {
    // Long jobs tell JetStream they are alive, so it does not redeliver
    // them; the ticks run in this task, so nothing outlives the job.
    let every = shared.config.ack_wait / 3;
    let mut alive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let work = execute(shared, &job, slot);
    let cancelled = async {
        let _ = cancel.wait_for(|c| *c).await;
    };
    tokio::pin!(work, cancelled);
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            _ = alive.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            () = &mut cancelled => break None,
        }
    };
    let Some(outcome) = outcome else {
        // Stopped mid-job: another scheduler takes it.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    decide(shared, message, &job, outcome, delivered, started).await;
}

/// Refuses jobs this worker cannot run, with the field that asks for it.
fn supported(job: Job, backends: &Backends) -> Result<Job, JobError> {
    let refuse = |field: &str, problem: &str, hint: &str| JobError {
        field: field.to_string(),
        problem: problem.to_string(),
        hint: hint.to_string(),
        job_id: Some(job.id().to_string()),
    };
    let no_browser =
        "start the workers with Chromium installed (./deploy/local/prereqs.sh chromium), or use \"fetch\": \"http\"";
    let any_browser = backends.chromium.is_some() || backends.steel.is_some();
    match &job {
        Job::Scrape(scrape) if scrape.fetch == FetchMode::Steel && backends.steel.is_none() => Err(refuse(
            "fetch",
            "this worker has no Steel Browser server configured",
            "start the scheduler with --steel URL[,URL...] (or STEEL_URL), or use \"chromium\" or \"auto\"",
        )),
        Job::Scrape(scrape) if scrape.fetch == FetchMode::Chromium && backends.chromium.is_none() => {
            Err(refuse("fetch", "this worker has no Chromium", no_browser))
        }
        Job::Scrape(scrape) if scrape.wait_for.is_some() && !any_browser => Err(refuse(
            "wait_for",
            "waiting for a selector needs a browser (Chromium or Steel), which this worker lacks",
            no_browser,
        )),
        Job::Scrape(scrape) if scrape.screenshot && !any_browser => Err(refuse(
            "screenshot",
            "a screenshot needs a browser (Chromium or Steel), which this worker lacks",
            no_browser,
        )),
        Job::Agent(agent) if backends.chromium.is_none() && clawgress_workers::agent::needs_browser(agent) => {
            Err(refuse(
                "steps",
                "these steps need Chromium, which this worker lacks",
                no_browser,
            ))
        }
        Job::Agent(_) => Ok(job),
        Job::Scrape(_) => Ok(job),
    }
}

async fn decide(
    shared: &Shared,
    message: &Message,
    job: &Job,
    outcome: Result<Done, FetchError>,
    delivered: u32,
    started: Instant,
) {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
    let attempts = real_attempts(shared, sequence, delivered);
    let mut result = JobResult::finished(job.id(), job.kind(), ResultStatus::Ok, attempts, started);
    result.agent = Some(job.agent().to_string());
    let error = match outcome {
        Ok(done) => {
            result.fetch = done.summary;
            result.data = done.data;
            result.screenshot = done.screenshot;
            finish(shared, message, &result, None).await;
            return;
        }
        Err(error) => error,
    };
    let described = describe(&error);
    match error.disposition() {
        Disposition::Deny => {
            result.status = ResultStatus::Denied;
            result.error = Some(described);
            finish(shared, message, &result, None).await;
        }
        // The gateway (or a busy Steel pool) said when: waiting is not a
        // failed attempt.
        Disposition::Retry { after: Some(delay) }
            if matches!(
                error,
                FetchError::RateLimited { .. } | FetchError::BreakerOpen { .. } | FetchError::SteelBusy
            ) && note_wait(shared, sequence) < MAX_GATEWAY_WAIT =>
        {
            tracing::info!(job = job.id(), ?delay, error = %error, "waiting, not failing");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Disposition::Retry { after } if attempts < job.retry().max_attempts => {
            let delay = after.unwrap_or_else(|| crate::retry::backoff(job.retry().base_delay, attempts));
            tracing::info!(job = job.id(), attempt = attempts, ?delay, error = %error, "retrying later");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Disposition::Retry { .. } | Disposition::Fail => {
            result.status = ResultStatus::Failed;
            result.error = Some(described.clone());
            let dead = DeadLetter {
                job_id: job.id().to_string(),
                kind: job.kind(),
                job: serde_json::from_slice(&message.payload).unwrap_or_default(),
                attempts,
                last_error: described,
                failed_at: chrono::Utc::now(),
            };
            finish(shared, message, &result, Some(dead)).await;
        }
    }
}

/// Deliveries minus the gateway-directed waits this scheduler saw.
fn real_attempts(shared: &Shared, sequence: u64, delivered: u32) -> u32 {
    let waits = shared
        .waits
        .lock()
        .map(|w| w.get(&sequence).map_or(0, |(n, _)| *n))
        .unwrap_or(0);
    delivered.saturating_sub(waits).max(1)
}

/// Counts one more wait for this message; returns how long it has waited.
fn note_wait(shared: &Shared, sequence: u64) -> Duration {
    let Ok(mut waits) = shared.waits.lock() else {
        return Duration::ZERO;
    };
    if waits.len() > 100_000 {
        waits.retain(|_, (_, since)| since.elapsed() < MAX_GATEWAY_WAIT);
    }
    let entry = waits.entry(sequence).or_insert((0, Instant::now()));
    entry.0 += 1;
    entry.1.elapsed()
}

fn describe(error: &FetchError) -> ResultError {
    let (reason, policy_id) = match error {
        FetchError::Denied { reason, policy_id, .. } => (Some(reason.clone()), Some(policy_id.clone())),
        FetchError::Gateway { reason, .. } => (Some(reason.clone()), None),
        _ => (None, None),
    };
    ResultError {
        code: error.code().to_string(),
        message: error.to_string(),
        field: None,
        hint: None,
        reason,
        policy_id,
    }
}

fn invalid(kind: JobKind, id: &str, error: &JobError, attempts: u32, started: Instant) -> JobResult {
    let mut result = JobResult::finished(id, kind, ResultStatus::Invalid, attempts, started);
    result.error = Some(ResultError {
        code: "validation".to_string(),
        message: format!("{}: {}", error.field, error.problem),
        field: Some(error.field.clone()),
        hint: Some(error.hint.clone()),
        reason: None,
        policy_id: None,
    });
    result
}

/// Stores the dead letter (if any) and the result, and only then acks; if
/// either cannot be stored, the job goes back to the stream.
async fn finish(shared: &Shared, message: &Message, result: &JobResult, dead: Option<DeadLetter>) {
    // Ids per delivery of this stream message: a redelivery after a lost
    // ack republishes without duplicating, and a replayed job (a new stream
    // message) is never mistaken for the old one.
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
    if let Some(dead) = dead {
        let subject = streams::dlq_subject(dead.kind);
        let payload = serde_json::to_vec(&dead).unwrap_or_default();
        let id = format!("{}-dlq-{sequence}", dead.job_id);
        if let Err(error) = publish(&shared.js, subject, Some(id), payload).await {
            tracing::error!(job = %result.job_id, %error, "cannot store the dead letter; the job goes back to the stream");
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    }
    let subject = streams::result_subject(result.kind, &result.job_id);
    let payload = serde_json::to_vec(result).unwrap_or_default();
    let id = format!("{}-{sequence}-{}", result.job_id, result.attempts);
    if let Err(error) = publish(&shared.js, subject, Some(id), payload).await {
        tracing::error!(job = %result.job_id, %error, "cannot store the result; the job goes back to the stream");
        let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        return;
    }
    if let Ok(mut waits) = shared.waits.lock() {
        waits.remove(&sequence);
    }
    shared
        .metrics
        .job_finished(result.kind.as_str(), result.status.as_str());
    if let Err(error) = message.double_ack().await {
        // The result is stored; a redelivery republishes the same result.
        tracing::warn!(job = %result.job_id, %error, "ack not confirmed");
    }
}

async fn publish(js: &Context, subject: String, id: Option<String>, payload: Vec<u8>) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
