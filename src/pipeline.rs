//! `clawgress scheduler | submit | results | dlq`: the job pipeline's
//! commands, clients of NATS JetStream. The scheduler and its backends are
//! here; the client commands in `client.rs`, how they print in `print.rs`.

mod client;
pub mod print;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use clawgress_scheduler::streams;
use clawgress_workers::credentials::Credentials;
use clawgress_workers::http::HttpFetcher;

pub use client::{DlqCommand, ResultsArgs, SubmitArgs, dlq, results, submit};

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
    /// The gateway every fetch goes through; replicas comma-separated
    /// (fetches take them in turn and pass over one that does not answer;
    /// a refusal is final). Or `none` for workers behind the host edge
    /// (nftables sends their traffic to the transparent gateway, which
    /// knows the agent by the worker's address).
    #[arg(
        long,
        env = "CLAWGRESS_GATEWAY",
        default_value = "http://127.0.0.1:3128",
        value_name = "URL[,URL...]"
    )]
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
    /// Where --per-domain and --politeness-ms hold: `shared` by every
    /// scheduler on the NATS cluster (KV bucket `clawgress-hosts`), or
    /// `local` to this process.
    #[arg(long, default_value = "shared", value_parser = ["shared", "local"])]
    pub politeness_scope: String,
    /// Jobs that may wait here for one host's slot (without holding a place
    /// in --concurrency); more go back to the queue for a moment.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub host_queue: usize,
    /// Replicas of the streams and KV buckets created here: `auto` (3 on a
    /// NATS cluster of 3 or more servers, else 1) or a number. Existing ones
    /// with fewer are used as they are, with a warning naming the fix.
    #[arg(long, env = "CLAWGRESS_NATS_REPLICAS", default_value = "auto")]
    pub replicas: clawgress_nats::Replicas,
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
    /// Jobs one warm page serves before it is closed: a browser context of
    /// the job's agent, kept for that agent's next job and wiped in between
    /// (cookies, storage, history). 1: a fresh context per job, which costs
    /// a new renderer process each time (0: no limit).
    #[arg(long, default_value_t = clawgress_workers::chromium::DEFAULT_JOBS_PER_PAGE)]
    pub browser_page_jobs: u64,
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
    /// The whole stop: running jobs get half of it (then they go back to
    /// the queue), closing browsers and the last acks the rest.
    #[command(flatten)]
    pub drain: crate::shutdown::DrainArgs,
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
    /// The gateway as the Steel servers reach it [default: the workers' first gateway].
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
                // Every replica a page may have gone through.
                let gateways = args.steel_gateway.as_deref().unwrap_or(gateway);
                clawgress_workers::gateways::Gateways::new(gateways)
                    .urls()
                    .iter()
                    .map(|g| default_admin(g))
                    .collect::<anyhow::Result<Vec<_>>>()?
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
            // Steel takes one gateway: the first of the workers' list.
            gateway: args
                .steel_gateway
                .clone()
                .unwrap_or_else(|| clawgress_workers::gateways::Gateways::new(gateway).url(0).to_string()),
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
    pub jobs_per_page: u64,
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
            jobs_per_page: browsers.jobs_per_page,
            page_idle: clawgress_workers::chromium::LANE_IDLE,
            // This binary: `main` becomes the browser when asked to, so the
            // browser leads its own process group and dies with us.
            launcher: std::env::current_exe().ok(),
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

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<(async_nats::Client, Context)> {
    let (client, js) = streams::connect(&nats.nats_url).await?;
    streams::ensure_streams(&js, clawgress_nats::Replicas::Auto).await?;
    Ok((client, js))
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown::Shutdown::install(args.drain.drain_timeout)?;
    crate::shutdown::block_on(async move {
        let credentials = Credentials::load(args.credentials.as_deref()).map_err(anyhow::Error::msg)?;
        if credentials.agents().next().is_none() && args.gateway != NO_GATEWAY {
            tracing::warn!("no agent credentials: every job will be answered invalid (give --credentials FILE)");
        }
        if args.gateway != NO_GATEWAY {
            clawgress_workers::gateways::Gateways::check(&args.gateway).map_err(anyhow::Error::msg)?;
        }
        // The streams are created by the scheduler's run, with --replicas.
        let (client, js) = streams::connect(&args.nats.nats_url).await?;
        let steel = steel_pool(&args.steel, &args.gateway, &credentials, None).await?;
        let backends = backends(
            &args.gateway,
            credentials,
            args.max_body,
            Browsers {
                path: &args.chromium,
                pages: args.browser_pages,
                jobs_per_browser: args.browser_jobs,
                jobs_per_page: args.browser_page_jobs,
            },
            steel,
        );
        let drain = shutdown.drain();
        let config = clawgress_scheduler::SchedulerConfig {
            concurrency: args.concurrency,
            per_domain: args.per_domain,
            politeness: Duration::from_millis(args.politeness_ms),
            politeness_scope: match args.politeness_scope.as_str() {
                "local" => clawgress_scheduler::PolitenessScope::Local,
                _ => clawgress_scheduler::PolitenessScope::Shared,
            },
            host_queue: args.host_queue.max(1),
            replicas: args.replicas,
            ack_wait: Duration::from_secs(args.ack_wait_secs.max(3)),
            dry_run: args.dry_run,
            metrics: args.metrics,
            drain: drain / 2,
        };
        let run = clawgress_scheduler::run(js, backends, config, shutdown.watch());
        tokio::pin!(run);
        let ran = tokio::select! {
            ran = &mut run => Some(ran),
            () = shutdown.requested() => None,
        };
        // From the signal on, every wait is bounded (NATS may be gone), and
        // ends before the watchdog's --drain-timeout.
        use clawgress_gateway::stopping::{Budget, in_flight, reserve};
        let ran = match ran {
            Some(ran) => Some(ran),
            None => Budget::start(in_flight(drain)).bound("the scheduler", run).await,
        };
        ran.transpose()?;
        // The last Naks and acks reach the server if it is there to take them.
        Budget::start(reserve(drain) / 2)
            .bound("the last publishes to NATS", client.flush())
            .await;
        Ok(ExitCode::SUCCESS)
    })?
}
