//! The scheduler: pulls jobs (high before normal before low), runs them on
//! a bounded pool with per-host concurrency and politeness (shared by every
//! scheduler, see [`crate::hosts`]), and decides from the outcome what
//! happens next: a result, a Nak with a delay, or the dead-letter queue
//! (`outcome`). No job is lost: a message is acked only after its result
//! (or dead letter) is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Context, Message};
use clawgress_nats::Replicas;
use clawgress_workers::chromium::ChromiumPool;
use clawgress_workers::http::HttpFetcher;
use clawgress_workers::job::{FetchMode, Job, JobKind};
use clawgress_workers::steel::SteelPool;
use clawgress_workers::{JobError, parse_job};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::hosts::{HostLimits, Hosts};
use crate::metrics::SchedulerMetrics;
use crate::streams;

mod fetch;
mod outcome;

use fetch::execute;
use outcome::{decide, finish, invalid};

/// Where per-host limits hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolitenessScope {
    /// Across every scheduler on the NATS cluster (KV `clawgress-hosts`).
    #[default]
    Shared,
    /// In this process only.
    Local,
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Jobs running at once.
    pub concurrency: usize,
    /// Jobs running at once against one host.
    pub per_domain: usize,
    /// Least time between two job starts against one host.
    pub politeness: Duration,
    /// Whether those two hold across schedulers or in this process.
    pub politeness_scope: PolitenessScope,
    /// Jobs that may wait for one host here; more go back to the stream.
    pub host_queue: usize,
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
    /// Replicas of the streams and the hosts bucket when they are created.
    pub replicas: Replicas,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            concurrency: 32,
            per_domain: 4,
            politeness: Duration::ZERO,
            politeness_scope: PolitenessScope::Shared,
            host_queue: 256,
            drain: Duration::from_secs(30),
            ack_wait: streams::ACK_WAIT,
            dry_run: false,
            metrics: None,
            replicas: Replicas::Auto,
        }
    }
}

struct Shared {
    js: Context,
    backends: Backends,
    config: SchedulerConfig,
    hosts: Arc<Hosts>,
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
/// something other than this scheduler's capacity (a Steel server, its
/// host's slot or politeness gap) gives it back, so jobs for other backends
/// and hosts keep running, and takes one again before it runs.
pub(crate) struct Slot {
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    pool: Arc<Semaphore>,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, pool: Arc<Semaphore>) -> Slot {
        Slot {
            permit: std::sync::Mutex::new(Some(permit)),
            pool,
        }
    }

    pub(crate) fn release(&self) {
        if let Ok(mut permit) = self.permit.lock() {
            permit.take();
        }
    }

    /// Takes a place in the pool again after [`Slot::release`] (waiting in
    /// line with the pull loop, which asks for places the same way).
    pub(crate) async fn reacquire(&self) {
        if self.permit.lock().is_ok_and(|p| p.is_some()) {
            return;
        }
        if let Ok(permit) = self.pool.clone().acquire_owned().await
            && let Ok(mut slot) = self.permit.lock()
        {
            *slot = Some(permit);
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
    let metrics = Arc::new(SchedulerMetrics::new(backends.steel.clone(), backends.chromium.clone()));
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    if let Some(addr) = config.metrics {
        let listener = crate::metrics::bind(addr).await.map_err(streams::SetupError::Listen)?;
        tracing::info!(%addr, "scheduler metrics on /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone(), metrics_stopped));
    }
    let replicas = streams::ensure_streams(&js, config.replicas).await?;
    tracing::info!("{}", clawgress_nats::describe(&js.client().server_info(), replicas));
    let consumers = streams::consumers(&js, config.ack_wait).await?;
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let (cancel_tx, cancel) = watch::channel(false);
    let host_slots = match config.politeness_scope {
        PolitenessScope::Shared => Some(crate::hosts::shared::SharedSlots::open(&js, replicas).await.map_err(
            |reason| streams::SetupError::Create {
                name: crate::hosts::shared::BUCKET.to_string(),
                reason: format!("{reason} (or run with --politeness-scope local)"),
            },
        )?),
        PolitenessScope::Local => None,
    };
    let hosts = Hosts::new(
        HostLimits {
            per_domain: config.per_domain,
            politeness: config.politeness,
            queue: config.host_queue,
        },
        host_slots,
    );
    let (tend_stop, tend_stopped) = watch::channel(false);
    let tending = tokio::spawn(tend(hosts.clone(), tend_stopped));
    let shared = Arc::new(Shared {
        js,
        backends,
        config,
        hosts,
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
                let pool = slots.clone();
                running.spawn(async move {
                    handle(&shared, message, cancel, Slot::new(permit, pool)).await;
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
    let _ = tend_stop.send(true);
    let _ = tending.await;
    // Slots held for hosts go back now rather than when their holds expire.
    shared.hosts.give_back_all().await;
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

/// Keeps the held host slots in order ([`Hosts::tend`]) and follows the
/// hosts bucket, so jobs waiting for a host hear at once when another
/// scheduler gives a slot back.
async fn tend(hosts: Arc<Hosts>, mut stop: watch::Receiver<bool>) {
    let Some(shared) = hosts.shared().cloned() else { return };
    let follow = {
        let (hosts, stop) = (hosts.clone(), stop.clone());
        async move { shared.follow(|key| hosts.changed(key), stop).await }
    };
    let ticks = async {
        let mut tick = tokio::time::interval(crate::hosts::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => hosts.tend().await,
                _ = stop.changed() => return,
            }
        }
    };
    tokio::join!(follow, ticks);
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
