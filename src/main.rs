//! The `clawgress` command line. It only parses arguments and calls into the
//! crates; behaviour lives in `gateway/`, `policies/` and friends.

mod analyze;
mod bench;
mod control;
mod dns;
mod egress;
mod integrity;
mod pipeline;
mod policy_compile;
mod shutdown;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clawgress",
    version,
    about = "Queue-driven scraping and AI-agent egress, through one governed gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the egress gateway (explicit HTTP forward proxy).
    Gateway(Box<GatewayArgs>),
    /// The DNS control server: allowlisted names resolve, every other name
    /// is NXDOMAIN, every query is audited.
    Dns(dns::DnsArgs),
    /// Work with policy bundles.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Behavior analysis of the audit trail (seed 001 §5.7): baselines per
    /// agent, anomalies on `alerts.<severity>`, quarantine through the control API.
    Analyze(analyze::AnalyzeArgs),
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Ed25519 keys for signed policy bundles and audit checkpoints.
    Keys {
        #[command(subcommand)]
        command: integrity::KeysCommand,
    },
    /// The interception CA that `tls: intercept` rules use.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Operate the gateway: temporary allows, requests and approvals, the
    /// emergency block, audit export (talks to the admin port's /v1/ API).
    Egress(egress::EgressArgs),
    /// The control plane's store (a gateway started with --database):
    /// agents, policy versions, quotas, tokens, change history.
    Control(control::ControlArgs),
    /// Everything on a laptop: NATS (if none answers), the gateway, the
    /// scheduler and its workers; `--demo` adds a site and a job.
    Up(up::UpArgs),
    /// Run the scheduler and its http workers: pull jobs from NATS, fetch
    /// through the gateway, publish results.
    Scheduler(pipeline::SchedulerArgs),
    /// Publish jobs (JSON lines, or one --url) and optionally wait for results.
    Submit(pipeline::SubmitArgs),
    /// Print results (`--follow` for new ones).
    Results(pipeline::ResultsArgs),
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: pipeline::DlqCommand,
    },
    /// Synthetic checks: scrape targets through the pipeline, an illegal
    /// destination, a rate-limit burst (human summary, JUnit, exit code).
    Synthetic {
        #[command(subcommand)]
        command: SyntheticCommand,
    },
    /// Load-test a proxy (or a direct target): p50/p99 latency and requests/s.
    Bench(bench::BenchArgs),
    /// Time an emergency block from one replica's API to the first denial on another.
    BenchControl(bench::control::ControlBenchArgs),
    /// Serve fixed-size responses, as the target for `clawgress bench`.
    BenchTarget(bench::TargetArgs),
    /// Write a synthetic audit trail for `clawgress analyze`'s benchmark.
    BenchAnalyze(analyze::BenchArgs),
    /// DLP scan throughput on one core over a chat-completion body.
    BenchDlp(bench::dlp::DlpBenchArgs),
    /// What the AI analyzer costs: a prompt's token estimate, a whole request read.
    BenchTokens(bench::tokens::TokensBenchArgs),
    /// Gateway replicas on one hot token budget over NATS: CAS conflicts/s
    /// with leased blocks and with a compare-and-set per request.
    BenchBudgets(bench::budgets::BudgetsBenchArgs),
}

#[derive(clap::Subcommand)]
enum SyntheticCommand {
    /// Run the checks in FILE (e.g. synthetic/checks.yaml). Exit code 0 when
    /// all pass, 1 when one fails or cannot run, 2 when FILE is wrong.
    Run {
        file: PathBuf,
        /// Also write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Serve the file's fixture sites (`fixtures.listen`) during the run.
        #[arg(long)]
        serve_fixtures: bool,
        /// Only these checks: scrape, illegal_destination, rate_limit.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// The policy bundle (YAML), e.g. policies/default.yaml.
    #[arg(long, env = "CLAWGRESS_POLICY")]
    policy: PathBuf,
    /// The agent registry (YAML), e.g. policies/agents.example.yaml.
    #[arg(long, env = "CLAWGRESS_AGENTS")]
    agents: PathBuf,
    /// Proxy address. Port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:3128")]
    listen: SocketAddr,
    /// Admin address: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9128")]
    admin: SocketAddr,
    /// The hash-chained audit trail [default: <state dir>/audit.jsonl].
    #[arg(long)]
    audit: Option<PathBuf>,
    /// State directory [default: $CLAWGRESS_STATE_DIR, else $XDG_STATE_HOME/clawgress, else ~/.local/state/clawgress].
    #[arg(long, env = "CLAWGRESS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Audit records that may wait for the writer before the gateway fails closed.
    #[arg(long, default_value_t = 65_536)]
    audit_queue: usize,
    /// Proxy worker threads [default: one per CPU].
    #[arg(long)]
    workers: Option<usize>,
    /// How often the policy and agent files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    /// NATS holding the shared state (KV buckets `clawgress-control` and
    /// `clawgress-budgets`, the audit streams), e.g. nats://127.0.0.1:4222;
    /// a cluster's servers comma-separated. Without it the gateway runs standalone.
    #[arg(long, env = "NATS_URL", value_name = "URL[,URL...]")]
    nats: Option<String>,
    /// Replicas of the KV buckets (control, budgets) and audit streams the
    /// gateway creates: `auto` (3 on a NATS cluster of 3 or more servers,
    /// else 1) or a number. Existing ones with fewer are reported.
    #[arg(long, env = "CLAWGRESS_NATS_REPLICAS", default_value = "auto")]
    replicas: clawgress_nats::Replicas,
    /// Control API tokens and roles (YAML; see policies/admin-tokens.example.yaml).
    #[arg(long, env = "CLAWGRESS_ADMIN_TOKENS")]
    admin_tokens: Option<PathBuf>,
    /// The interception CA for `tls: intercept` rules (from `clawgress ca init`)
    /// [default: <state dir>/ca, when it exists].
    #[arg(long, env = "CLAWGRESS_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// PEM certificates to trust for upstreams, besides the system roots.
    #[arg(long, env = "CLAWGRESS_UPSTREAM_CA_BUNDLE")]
    upstream_ca_bundle: Option<PathBuf>,
    /// Also accept connections nftables redirected here (the host edge):
    /// the agent is the source address (`sources` in the agents file), the
    /// destination the connection's original one. See `policy compile
    /// --target nftables`.
    #[arg(long, value_name = "ADDR")]
    transparent: Option<SocketAddr>,
    /// Seconds a client may take to send its request head (or, on the
    /// transparent listener, its first bytes) before it is refused.
    #[arg(long, default_value_t = 30)]
    header_timeout_secs: u64,
    /// Client connections (and tunnels) served at once over every
    /// listener; more wait in the kernel's backlog. Each needs two open
    /// files: the soft limit is raised to the hard one at start, with a
    /// warning when even that is short.
    #[arg(long, default_value_t = clawgress_gateway::resources::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    #[command(flatten)]
    integrity: integrity::IntegrityArgs,
    #[command(flatten)]
    drain: shutdown::DrainArgs,
    /// Hold the control plane's store and serve its API (agents, policy
    /// versions, tokens, history) on the admin port. Alone: SQLite in the
    /// state directory (control.db); or sqlite:///PATH, or
    /// postgres://USER@HOST/DB (several gateways may hold one PostgreSQL).
    #[arg(long, env = "CLAWGRESS_DATABASE", value_name = "URL", num_args = 0..=1, default_missing_value = "sqlite")]
    database: Option<String>,
    /// Also serve the proxy over TLS here, requiring a client certificate
    /// from --client-ca: the certificate names the agent (a SPIFFE ID in
    /// the agents' `spiffe_ids`, or its CN as the agent id).
    #[arg(long, value_name = "ADDR", requires = "client_ca")]
    listen_tls: Option<SocketAddr>,
    /// PEM: the CA that issues the agents' client certificates (--listen-tls).
    #[arg(long, value_name = "FILE", env = "CLAWGRESS_CLIENT_CA", requires = "listen_tls")]
    client_ca: Option<PathBuf>,
    /// PEM CRL(s) of the client CA; reloaded on change and on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CLAWGRESS_CRL", requires = "listen_tls")]
    crl: Option<PathBuf>,
    /// PEM certificate chain of the mTLS listener [default: minted from the
    /// interception CA for localhost, this host's name or the address].
    #[arg(long, value_name = "FILE", env = "CLAWGRESS_SERVER_CERT", requires_all = ["listen_tls", "server_key"])]
    server_cert: Option<PathBuf>,
    /// PEM private key of --server-cert.
    #[arg(long, value_name = "FILE", env = "CLAWGRESS_SERVER_KEY", requires_all = ["listen_tls", "server_cert"])]
    server_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the interception CA (refuses to replace one without --force).
    Init {
        /// Where to keep it [default: <state dir>/ca].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing CA; agents must then trust the new one.
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for agents to trust.
    Export {
        /// Where it is kept [default: <state dir>/ca].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy bundle and print a summary; exits non-zero if invalid.
    Check { file: PathBuf },
    /// Render the policy for a network layer (`--target nftables`).
    Compile(policy_compile::CompileArgs),
    /// Replay recorded decisions under a candidate policy: which (agent,
    /// destination) pairs would newly be denied or allowed.
    Diff(analyze::DiffArgs),
    /// Sign a bundle: the signature becomes its last line (a YAML comment).
    Sign {
        /// The private key (`clawgress keys init`: policy.key).
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Check a bundle's signature; exits 1 if missing, unknown or wrong.
    Verify {
        /// A trusted public key (policy.pub); repeat for several.
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; reports the first edited, removed or reordered
    /// line, and a torn tail left by a crash. With --key, also the signed
    /// checkpoints: a replaced file fails, unsigned trailing records are listed.
    Verify {
        file: PathBuf,
        /// A trusted public key (audit.pub); repeat for several.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Records by agent, domain, decision and time, from a trail, the
    /// `audit.>` streams or a gateway's control API (jsonl, json, csv).
    Search(analyze::SearchArgs),
    /// A bundle of records, checkpoints, policy versions and admin actions
    /// with a SHA-256 manifest (seed 002 §9.2).
    Evidence(analyze::EvidenceArgs),
}

/// jemalloc, with its background threads purging freed pages: after a storm
/// of 3,000 tunnels a gateway was back to 28.5 MB within 30 s, where glibc
/// malloc kept 103.7 MB for good (its arenas hold freed chunks), and idle
/// and throughput were no worse (BENCHMARKS.md, issue 16).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Before anything else: started by a worker as a browser launcher, this
    // process becomes the browser (workers/src/chromium/process.rs).
    if let Some(failed) = clawgress_workers::chromium::exec_browser_if_asked() {
        return failed;
    }
    let cli = Cli::parse();
    // Held to the end of main: dropping it flushes queued spans.
    let _telemetry = clawgress_telemetry::init(service_name(&cli.command));
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The OTLP `service.name` of this process.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Gateway(_) => "clawgress-gateway",
        Command::Scheduler(_) => "clawgress-scheduler",
        Command::Submit(_) => "clawgress-submit",
        Command::Synthetic { .. } => "clawgress-synthetic",
        Command::Dns(_) => "clawgress-dns",
        Command::Analyze(_) => "clawgress-analyze",
        _ => "clawgress",
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Gateway(args) => {
            let args = *args;
            let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
            let ca_dir = args.ca_dir.or_else(|| {
                let dir = state_dir.join("ca");
                dir.join(clawgress_gateway::tls::ca::CA_CERT_FILE)
                    .exists()
                    .then_some(dir)
            });
            let database = args
                .database
                .as_deref()
                .map(|url| clawgress_gateway::store::database_url(url, &state_dir));
            let config = clawgress_gateway::GatewayConfig {
                ca_dir,
                upstream_ca_bundle: args.upstream_ca_bundle,
                policy: args.policy,
                agents: args.agents,
                listen: args.listen,
                admin: args.admin,
                audit: args.audit.unwrap_or_else(|| state_dir.join("audit.jsonl")),
                audit_queue: args.audit_queue.max(1),
                watch_interval: Duration::from_millis(args.watch_interval_ms.max(10)),
                workers: args
                    .workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                drain: args.drain.drain_timeout,
                nats_url: args.nats,
                replicas: args.replicas,
                admin_tokens: args.admin_tokens,
                state_dir,
                transparent: args.transparent,
                header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
                max_connections: args.max_connections.max(1),
                integrity: args.integrity.options(),
                database,
                mtls: match (args.listen_tls, args.client_ca) {
                    (Some(listen), Some(client_ca)) => Some(clawgress_gateway::mtls::MtlsConfig {
                        listen,
                        client_ca,
                        crl: args.crl,
                        server_cert: args.server_cert,
                        server_key: args.server_key,
                    }),
                    _ => None,
                },
            };
            let shutdown = shutdown::Shutdown::install(config.drain)?;
            shutdown::block_on(clawgress_gateway::run(
                config,
                async move { shutdown.requested().await },
            ))??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Egress(args) => egress::run(args),
        Command::Control(args) => control::run(args),
        Command::Analyze(args) => analyze::analyze(args),
        Command::BenchAnalyze(args) => analyze::bench(args),
        Command::Audit {
            command: AuditCommand::Search(args),
        } => analyze::search(args),
        Command::Audit {
            command: AuditCommand::Evidence(args),
        } => analyze::evidence(args),
        Command::Policy {
            command: PolicyCommand::Diff(args),
        } => analyze::diff(args),
        Command::Synthetic {
            command:
                SyntheticCommand::Run {
                    file,
                    junit,
                    serve_fixtures,
                    only,
                },
        } => synthetic(
            clawgress_synthetic::Options {
                file,
                serve_fixtures,
                only,
            },
            junit,
        ),
        Command::Ca { command } => ca(command),
        Command::Up(args) => up::up(args),
        Command::Scheduler(args) => pipeline::scheduler(args),
        Command::Submit(args) => pipeline::submit(args),
        Command::Results(args) => pipeline::results(args),
        Command::Dlq { command } => pipeline::dlq(command),
        Command::Dns(args) => dns::run(args),
        Command::Policy {
            command: PolicyCommand::Compile(args),
        } => policy_compile::run(args),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match clawgress_policies::load_file(&file) {
            Ok(bundle) => {
                println!("{}", clawgress_policies::summary(&bundle));
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Audit {
            command: AuditCommand::Verify { file, key },
        } => integrity::audit_verify(&file, &key),
        Command::Keys { command } => integrity::keys(command),
        Command::Policy {
            command: PolicyCommand::Sign { key, file },
        } => integrity::policy_sign(&key, &file),
        Command::Policy {
            command: PolicyCommand::Verify { key, file },
        } => integrity::policy_verify(&key, &file),
        // The load generator and the target each take one core at most, so
        // on a small machine the process under test keeps the rest.
        Command::Bench(args) => {
            single_thread_runtime()?.block_on(bench::run_bench(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchControl(args) => {
            single_thread_runtime()?.block_on(bench::control::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchTarget(args) => {
            single_thread_runtime()?.block_on(bench::run_target(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchDlp(args) => {
            bench::dlp::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchTokens(args) => {
            bench::tokens::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        // Every replica's tasks on one core, as the other load generators.
        Command::BenchBudgets(args) => {
            single_thread_runtime()?.block_on(bench::budgets::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn synthetic(options: clawgress_synthetic::Options, junit: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    println!("synthetic checks from {}", options.file.display());
    let outcome = match runtime()?.block_on(clawgress_synthetic::run(&options)) {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{}", outcome.summary());
    if let Some(path) = junit {
        std::fs::write(&path, outcome.junit())
            .map_err(|e| anyhow::anyhow!("cannot write the JUnit report {}: {e}", path.display()))?;
        println!("JUnit report: {}", path.display());
    }
    Ok(if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
    let default_dir = || default_state_dir().join("ca");
    match command {
        CaCommand::Init { dir, force } => {
            let dir = dir.unwrap_or_else(default_dir);
            let cert = clawgress_gateway::tls::ca::init(&dir, force)?;
            println!("created the interception CA in {}", dir.display());
            println!(
                "agents trust it with: clawgress ca export --dir {} > clawgress-ca.pem",
                dir.display()
            );
            println!("certificate: {}", cert.display());
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Export { dir } => {
            let dir = dir.unwrap_or_else(default_dir);
            let path = dir.join(clawgress_gateway::tls::ca::CA_CERT_FILE);
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {} ({e}); create the CA with `clawgress ca init --dir {}`",
                    path.display(),
                    dir.display()
                )
            })?;
            print!("{pem}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("clawgress");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/clawgress"),
        None => PathBuf::from(".clawgress"),
    }
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
