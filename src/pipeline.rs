//! `clawgress scheduler | submit | results | dlq`: the job pipeline's
//! commands, clients of NATS JetStream.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clawgress_scheduler::result::{DeadLetter, JobResult, ResultStatus};
use clawgress_scheduler::streams;
use clawgress_workers::credentials::Credentials;
use clawgress_workers::http::HttpFetcher;
use clawgress_workers::job::{ExtractSpec, FetchMode, Job, Priority, RetryPolicy, ScrapeJob, Take};
use futures_util::StreamExt;

/// Where NATS is, for every pipeline command.
#[derive(clap::Args, Clone)]
pub struct NatsArgs {
    #[arg(
        id = "nats",
        long = "nats",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
}

#[derive(clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The gateway every fetch goes through, or `none` for workers behind
    /// the host edge (nftables sends their traffic to the transparent
    /// gateway, which knows the agent by the worker's address).
    #[arg(long, env = "CLAWGRESS_GATEWAY", default_value = "http://127.0.0.1:3128")]
    pub gateway: String,
    /// Agent credentials (YAML `agents: {id: key}`); also CLAWGRESS_AGENT_KEY_<ID>.
    #[arg(long, env = "CLAWGRESS_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Jobs at once against one host.
    #[arg(long, default_value_t = 4)]
    pub per_domain: usize,
    /// Least milliseconds between two job starts against one host.
    #[arg(long, default_value_t = 0)]
    pub politeness_ms: u64,
    /// Largest response body a worker reads.
    #[arg(long, default_value_t = 10 << 20)]
    pub max_body: usize,
    /// Seconds JetStream waits for a running job's (progress) ack before
    /// giving it to another scheduler; set when the consumers are created.
    #[arg(long, default_value_t = 60)]
    pub ack_wait_secs: u64,
    /// The Chromium for `chromium` and `auto` jobs: a path, `auto` (Debian's
    /// chromium-headless-shell, else chromium) or `none`.
    #[arg(long, env = "CLAWGRESS_CHROMIUM", default_value = "auto")]
    pub chromium: String,
    /// Pages open at once in Chromium.
    #[arg(long, default_value_t = 8)]
    pub browser_pages: usize,
    /// Jobs one Chromium process serves before it is replaced (0: never;
    /// 1: a fresh browser per job). Bounds what a long-lived browser leaks.
    #[arg(long, default_value_t = 0)]
    pub browser_jobs: u64,
    /// Validate and dispatch jobs but fetch nothing: each valid job is
    /// answered `ok` with `fetch.tier: "dry-run"`. For testing a pipeline's
    /// plumbing and measuring dispatch.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub steel: SteelArgs,
    /// Serve the scheduler's Prometheus metrics here (`GET /metrics`), e.g.
    /// 127.0.0.1:9129.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Steel Browser servers for `steel` jobs (`scheduler` and `up`).
#[derive(clap::Args, Clone, Debug)]
pub struct SteelArgs {
    /// Steel Browser servers for `steel` jobs, comma-separated, e.g.
    /// http://127.0.0.1:3000. Each serves one session at a time.
    #[arg(
        long = "steel",
        env = "STEEL_URL",
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    pub servers: Vec<String>,
    /// The gateway as the Steel servers reach it [default: the workers' gateway].
    #[arg(long, value_name = "URL")]
    pub steel_gateway: Option<String>,
    /// Jobs that may wait for a Steel server, per server; more go back to
    /// the queue for another scheduler.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub steel_queue: usize,
    /// How each Steel page is checked: `audit` (the gateway's audit trail
    /// must show the navigation, read with CLAWGRESS_ADMIN_TOKEN, role
    /// viewer) or `off`.
    #[arg(long, default_value = "audit", value_parser = ["audit", "off"])]
    pub steel_verify: String,
    /// The gateways' admin addresses read for that check, comma-separated
    /// [default: the gateway's host, port 9128].
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub gateway_admin: Vec<String>,
}

/// `--gateway none`: workers behind the host edge.
pub const NO_GATEWAY: &str = "none";

/// Where the token for the Steel check comes from.
pub const ADMIN_TOKEN_ENV: &str = "CLAWGRESS_ADMIN_TOKEN";

/// The Steel pool the flags describe, or none without `--steel`.
/// `fallback_token` is a viewer token the caller knows (`up` with the demo
/// tokens), used when CLAWGRESS_ADMIN_TOKEN is not set.
pub async fn steel_pool(
    args: &SteelArgs,
    gateway: &str,
    credentials: &Credentials,
    fallback_token: Option<&str>,
) -> anyhow::Result<Option<Arc<clawgress_workers::steel::SteelPool>>> {
    use clawgress_workers::steel::{SteelConfig, SteelPool, Witness};
    let servers: Vec<String> = args
        .servers
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Ok(None);
    }
    let witness = match args.steel_verify.as_str() {
        "off" => {
            tracing::warn!("--steel-verify off: Steel pages are not checked against the gateway's audit trail");
            None
        }
        _ => {
            let admins = if args.gateway_admin.is_empty() {
                vec![default_admin(args.steel_gateway.as_deref().unwrap_or(gateway))?]
            } else {
                args.gateway_admin.clone()
            };
            let token = std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .or(fallback_token.map(str::to_string))
                .with_context(|| {
                    format!(
                        "--steel checks every page against the gateway's audit trail, which needs a control-API \
                         token with the viewer role: set {ADMIN_TOKEN_ENV} (or --steel-verify off to skip the check)"
                    )
                })?;
            Some(Witness::new(&admins, token).map_err(anyhow::Error::msg)?)
        }
    };
    let pool = SteelPool::new(
        SteelConfig {
            servers,
            gateway: args.steel_gateway.clone().unwrap_or_else(|| gateway.to_string()),
            queue_per_server: args.steel_queue,
            witness,
        },
        credentials.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    pool.discover(true).await;
    for server in pool.servers() {
        if server.reachable().await {
            tracing::info!(server = server.url(), "steel jobs run on this Steel Browser server");
        } else {
            tracing::warn!(
                server = server.url(),
                "no Steel Browser server answers there (yet); its jobs fail steel_unavailable until one does"
            );
        }
    }
    Ok(Some(Arc::new(pool)))
}

/// The admin address beside a gateway: its host, port 9128.
fn default_admin(gateway: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(gateway).with_context(|| format!("the gateway URL {gateway}"))?;
    let host = url
        .host_str()
        .with_context(|| format!("the gateway URL {gateway} has no host"))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!("http://{host}:9128"))
}

/// The Chromium the workers use.
pub struct Browsers<'a> {
    /// The executable, or `none`.
    pub path: &'a str,
    pub pages: usize,
    pub jobs_per_browser: u64,
}

/// The workers' backends: http always, Chromium when it is installed,
/// Steel when servers are given.
pub fn backends(
    gateway: &str,
    credentials: Credentials,
    max_body: usize,
    browsers: Browsers<'_>,
    steel: Option<Arc<clawgress_workers::steel::SteelPool>>,
) -> clawgress_scheduler::Backends {
    let path = match browsers.path {
        "auto" => clawgress_workers::chromium::find_browser().unwrap_or_default(),
        path => std::path::PathBuf::from(path),
    };
    let edge = gateway == NO_GATEWAY;
    let chromium = if browsers.path != "none" && path.exists() {
        tracing::info!(browser = %path.display(), "chromium jobs run in this browser");
        let config = clawgress_workers::chromium::ChromiumConfig {
            executable: path,
            max_pages: browsers.pages,
            jobs_per_browser: browsers.jobs_per_browser,
        };
        Some(Arc::new(if edge {
            clawgress_workers::chromium::ChromiumPool::behind_edge(credentials.clone(), config)
        } else {
            clawgress_workers::chromium::ChromiumPool::new(gateway.to_string(), credentials.clone(), config)
        }))
    } else {
        let chromium = browsers.path;
        if chromium != "none" {
            tracing::warn!(
                path = chromium,
                "Chromium not found: chromium jobs will be answered invalid (./deploy/local/prereqs.sh chromium)"
            );
        }
        None
    };
    if edge {
        tracing::info!("--gateway none: fetches go out directly; the host edge's transparent gateway names the agent");
    }
    clawgress_scheduler::Backends {
        http: Arc::new(if edge {
            HttpFetcher::behind_edge(credentials, max_body)
        } else {
            HttpFetcher::new(gateway.to_string(), credentials, max_body)
        }),
        chromium,
        steel,
    }
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// JSON-lines file of jobs (`-` for standard input).
    pub file: Option<PathBuf>,
    /// Or one scrape job for this URL.
    #[arg(long, conflicts_with = "file")]
    pub url: Option<String>,
    /// `name=css` to extract (text of the first match); repeat.
    #[arg(long = "select", value_name = "NAME=CSS")]
    pub selects: Vec<String>,
    #[arg(long, default_value = "scraper-001")]
    pub agent: String,
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// With --url: how to fetch it: http, chromium, steel or auto.
    #[arg(long, default_value = "http", value_parser = ["http", "chromium", "steel", "auto"], requires = "url")]
    pub fetch: String,
    /// With --url: wait for this CSS selector before taking the page (a browser fetch).
    #[arg(long, value_name = "CSS", requires = "url")]
    pub wait_for: Option<String>,
    /// Wait for every job's result and print them.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
}

#[derive(clap::Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Keep printing new results.
    #[arg(long)]
    pub follow: bool,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Publish a dead job again (a fresh set of attempts) and drop its dead letter.
    Replay {
        #[command(flatten)]
        nats: NatsArgs,
        /// The job id.
        id: String,
    },
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<(async_nats::Client, Context)> {
    let (client, js) = streams::connect(&nats.nats_url).await?;
    streams::ensure_streams(&js).await?;
    Ok((client, js))
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let credentials = Credentials::load(args.credentials.as_deref()).map_err(anyhow::Error::msg)?;
        if credentials.agents().next().is_none() && args.gateway != NO_GATEWAY {
            tracing::warn!("no agent credentials: every job will be answered invalid (give --credentials FILE)");
        }
        let (client, js) = connect(&args.nats).await?;
        let steel = steel_pool(&args.steel, &args.gateway, &credentials, None).await?;
        let backends = backends(
            &args.gateway,
            credentials,
            args.max_body,
            Browsers {
                path: &args.chromium,
                pages: args.browser_pages,
                jobs_per_browser: args.browser_jobs,
            },
            steel,
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let config = clawgress_scheduler::SchedulerConfig {
            concurrency: args.concurrency,
            per_domain: args.per_domain,
            politeness: Duration::from_millis(args.politeness_ms),
            ack_wait: Duration::from_secs(args.ack_wait_secs.max(3)),
            dry_run: args.dry_run,
            metrics: args.metrics,
            ..Default::default()
        };
        clawgress_scheduler::run(js, backends, config, stop).await?;
        // The last Naks and acks must reach the server before we exit.
        let _ = client.flush().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Builds the jobs to submit, checking each the way a worker will (except
/// for credentials, which only workers hold).
fn jobs_to_submit(args: &SubmitArgs) -> anyhow::Result<Vec<Job>> {
    if let Some(url) = &args.url {
        let mut extract = std::collections::BTreeMap::new();
        for select in &args.selects {
            let (name, css) = select
                .split_once('=')
                .with_context(|| format!("--select {select}: write NAME=CSS, e.g. title=h1"))?;
            extract.insert(
                name.to_string(),
                ExtractSpec {
                    selector: css.to_string(),
                    take: Take::Text,
                    list: false,
                    required: false,
                },
            );
        }
        let priority = match args.priority.as_str() {
            "high" => Priority::High,
            "low" => Priority::Low,
            "normal" => Priority::Normal,
            other => bail!("--priority {other}: use high, normal or low"),
        };
        let job = Job::Scrape(ScrapeJob {
            id: clawgress_gateway::control::new_id("cli"),
            agent: args.agent.clone(),
            url: url.clone(),
            method: "GET".to_string(),
            headers: Default::default(),
            body: None,
            fetch: match args.fetch.as_str() {
                "chromium" => FetchMode::Chromium,
                "steel" => FetchMode::Steel,
                "auto" => FetchMode::Auto,
                _ => FetchMode::Http,
            },
            extract,
            wait_for: args.wait_for.clone(),
            screenshot: false,
            timeout: Duration::from_secs(30),
            priority,
            retry: RetryPolicy::default(),
        });
        clawgress_workers::parse_job(&job.to_json(), |_| true).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(vec![job]);
    }
    let Some(file) = &args.file else {
        bail!("give a JSON-lines file of jobs (or -), or --url URL");
    };
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut jobs = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let job = clawgress_workers::parse_job(line.as_bytes(), |_| true)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), index + 1))?;
        jobs.push(job);
    }
    Ok(jobs)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let jobs = jobs_to_submit(&args)?;
    runtime()?.block_on(async move {
        let (_client, js) = connect(&args.nats).await?;
        // Subscribe before publishing, so no result is missed.
        let mut results = if args.wait { Some(result_stream(&js, None, true).await?) } else { None };
        let mut progress = Progress::new(jobs.len(), args.wait);
        // Acks are awaited in a sliding window: pipelined, yet below the
        // client's cap on acks in flight (5,000), past which publishing
        // would wait forever for acks nobody reads.
        const WINDOW: usize = 1024;
        let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
        let mut duplicates = Vec::new();
        for (index, job) in jobs.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", job.id());
            let subject = streams::job_subject(job.kind(), job.priority());
            // The job's trace starts here; the worker continues it.
            let span = tracing::debug_span!(
                target: "clawgress::submit",
                "publish",
                otel.kind = "producer",
                job.id = %job.id(),
                messaging.destination = %subject,
            );
            if let Some(traceparent) = clawgress_telemetry::traceparent(&span) {
                headers.insert(clawgress_telemetry::TRACEPARENT, traceparent.as_str());
            }
            acks.push_back((job, js.publish_with_headers(subject, headers, job.to_json().into()).await?));
            let last = index + 1 == jobs.len();
            while acks.len() >= WINDOW || (last && !acks.is_empty()) {
                let Some((acked, ack)) = acks.pop_front() else { break };
                if ack.await?.duplicate {
                    duplicates.push(acked);
                } else {
                    progress.published += 1;
                }
                progress.show(false);
            }
        }
        let Some(results) = results.as_mut() else {
            progress.finish(duplicates.len());
            return Ok(ExitCode::SUCCESS);
        };
        let wanted: std::collections::HashSet<&str> = jobs.iter().map(|j| j.id()).collect();
        let mut answered = std::collections::HashSet::new();
        // A duplicate is not run again; its result may exist already.
        let results_stream = js.get_stream(streams::RESULTS).await?;
        for job in &duplicates {
            let subject = streams::result_subject(job.kind(), job.id());
            if let Ok(message) = results_stream.get_last_raw_message_by_subject(&subject).await
                && let Ok(result) = serde_json::from_slice::<JobResult>(&message.payload)
                && answered.insert(result.job_id.clone())
            {
                progress.count(&result);
                println!("{}", serde_json::to_string(&result)?);
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(args.wait_secs));
        tokio::pin!(deadline);
        while answered.len() < wanted.len() {
            let message = tokio::select! {
                m = results.next() => m,
                () = &mut deadline => {
                    progress.show(true);
                    eprintln!("\ngave up waiting after {}s: {} of {} results", args.wait_secs, answered.len(), wanted.len());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                // An ordered consumer recreates itself; a hiccup is not the end.
                Some(Err(error)) => {
                    tracing::debug!(%error, "results stream hiccup");
                    continue;
                }
                None => bail!("the results stream ended"),
            };
            let Ok(result) = serde_json::from_slice::<JobResult>(&message.payload) else { continue };
            // Counted once per job, even if a redelivery republished it.
            if !wanted.contains(result.job_id.as_str()) || !answered.insert(result.job_id.clone()) {
                continue;
            }
            progress.count(&result);
            println!("{}", serde_json::to_string(&result)?);
        }
        progress.finish(duplicates.len());
        Ok(if progress.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// `submit`'s progress on standard error: a bar redrawn in place on a
/// terminal (at most ten times a second), one summary line otherwise.
struct Progress {
    total: usize,
    waiting: bool,
    published: usize,
    done: usize,
    failed: usize,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(total: usize, waiting: bool) -> Progress {
        Progress {
            total,
            waiting,
            published: 0,
            done: 0,
            failed: 0,
            started: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn count(&mut self, result: &JobResult) {
        if result.status == ResultStatus::Ok {
            self.done += 1;
        } else {
            self.failed += 1;
        }
        self.show(false);
    }

    fn line(&self) -> String {
        const WIDTH: usize = 24;
        let finished = if self.waiting {
            self.done + self.failed
        } else {
            self.published
        };
        let filled = (finished * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let rate = finished as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut line = format!(
            "[{}{}] {finished}/{}  published {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.total,
            self.published
        );
        if self.waiting {
            line.push_str(&format!("  done {}  failed {}", self.done, self.failed));
        }
        line.push_str(&format!("  {rate:.1} jobs/s"));
        line
    }

    fn show(&mut self, force: bool) {
        if !self.terminal {
            return;
        }
        let due = self.drawn.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if force || due {
            self.drawn = Some(Instant::now());
            eprint!("\r{}", self.line());
        }
    }

    fn finish(&mut self, duplicates: usize) {
        if self.terminal {
            self.show(true);
            eprintln!();
        } else {
            eprintln!("{}", self.line());
        }
        if duplicates > 0 {
            eprintln!("{duplicates} duplicate job id(s) were not published again");
        }
    }
}

/// An ordered view of the results stream (all of it, or one job's).
async fn result_stream(
    js: &Context,
    job: Option<&str>,
    only_new: bool,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
    let stream = js.get_stream(streams::RESULTS).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: match job {
                Some(id) => format!("results.*.{id}"),
                None => "results.>".to_string(),
            },
            deliver_policy: if only_new {
                DeliverPolicy::New
            } else {
                DeliverPolicy::All
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

pub fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (_client, js) = connect(&args.nats).await?;
        let pending = js.get_stream(streams::RESULTS).await?.info().await?.state.messages;
        let mut messages = result_stream(&js, args.job.as_deref(), false).await?;
        let mut seen = 0u64;
        let stdout = std::io::stdout();
        loop {
            if !args.follow && seen >= pending {
                break;
            }
            let next = if args.follow {
                messages.next().await
            } else {
                match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let Some(message) = next else { break };
            let message = message?;
            seen += 1;
            let mut out = stdout.lock();
            out.write_all(&message.payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn dead_letters(js: &Context) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let stream = js.get_stream(streams::DLQ).await?;
    let count = stream.clone().info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "dlq.>".to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut letters = Vec::new();
    while (letters.len() as u64) < count {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await else {
            break;
        };
        let message = message?;
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) {
            letters.push((sequence, letter));
        }
    }
    Ok(letters)
}

pub fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        match command {
            DlqCommand::List { nats } => {
                let (_client, js) = connect(&nats).await?;
                let letters = dead_letters(&js).await?;
                if letters.is_empty() {
                    println!("the dead-letter queue is empty");
                }
                for (_, letter) in letters {
                    println!(
                        "{}  {}  {} attempt(s)  {}: {}",
                        letter.failed_at.format("%Y-%m-%d %H:%M:%S"),
                        letter.job_id,
                        letter.attempts,
                        letter.last_error.code,
                        letter.last_error.message
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Replay { nats, id } => {
                let (_client, js) = connect(&nats).await?;
                let letters = dead_letters(&js).await?;
                let Some((sequence, letter)) = letters.into_iter().rev().find(|(_, l)| l.job_id == id) else {
                    bail!("no dead letter for job {id}; see `clawgress dlq list`");
                };
                let payload = serde_json::to_vec(&letter.job)?;
                let job = clawgress_workers::parse_job(&payload, |_| true).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut headers = async_nats::HeaderMap::new();
                // A fresh message id: the original is inside the dedup window.
                headers.insert("Nats-Msg-Id", format!("{id}-replay-{sequence}").as_str());
                js.publish_with_headers(
                    streams::job_subject(job.kind(), job.priority()),
                    headers,
                    payload.into(),
                )
                .await?
                .await?;
                js.get_stream(streams::DLQ).await?.delete_message(sequence).await?;
                println!("job {id} published again; its dead letter is removed");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
