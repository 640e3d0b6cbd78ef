//! `clawgress analyze`, `clawgress audit search|evidence` and `clawgress
//! policy diff`: the command lines of the analysis crate (`analyze/`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clawgress_analyze::search::{Filter, parse_when};
use clawgress_gateway::admin::formats::{Format, render};

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// The policy whose `monitoring:` and `fault_containment.auto_terminate`
    /// settings apply [default: the built-in defaults, seed 002 §8.2].
    #[arg(long, env = "CLAWGRESS_POLICY")]
    policy: Option<PathBuf>,
    /// Read this audit trail instead of the NATS streams.
    #[arg(long)]
    trail: Option<PathBuf>,
    /// Keep reading the trail as the gateway appends to it.
    #[arg(long, requires = "trail")]
    follow: bool,
    /// NATS: read `audit.>` (unless --trail) and publish anomalies on `alerts.<severity>`.
    #[arg(long, env = "NATS_URL")]
    nats: Option<String>,
    /// The durable consumer's name on the audit streams (one per analyzer).
    #[arg(long, default_value = "clawgress-analyze")]
    durable: String,
    /// A gateway's admin address, for quarantine and rate reduction (any
    /// replica: the change reaches all). Without it those actions are `dry_run`.
    #[arg(long, env = "CLAWGRESS_ADMIN_URL")]
    admin: Option<String>,
    /// Control-API token with the operator role.
    #[arg(long, env = "CLAWGRESS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Write anomaly lines here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write no anomaly lines (NATS only).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    drain: crate::shutdown::DrainArgs,
}

pub fn analyze(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let settings = match &args.policy {
        Some(path) => {
            let bundle = clawgress_policies::load_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            clawgress_analyze::Settings::from_policy(&bundle.document)
        }
        None => clawgress_analyze::Settings::default(),
    };
    let control = match (&args.admin, args.token) {
        (Some(admin), Some(token)) => Some(clawgress_analyze::sink::ControlApi::new(admin, token)),
        (Some(_), None) => anyhow::bail!("--admin needs --token (or CLAWGRESS_ADMIN_TOKEN) with the operator role"),
        (None, _) => None,
    };
    let out: Option<Box<dyn std::io::Write + Send>> = match (&args.out, args.quiet) {
        (_, true) => None,
        (Some(path), false) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {} for anomalies", path.display()))?,
        )),
        (None, false) => Some(Box::new(std::io::stdout())),
    };
    let shutdown = crate::shutdown::Shutdown::install(args.drain.drain_timeout)?;
    let options = clawgress_analyze::run::Options {
        trail: args.trail,
        follow: args.follow,
        nats: args.nats,
        durable: args.durable,
        settings,
        control,
        out,
        stop: Some(shutdown.watch()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = runtime.block_on(async {
        let run = clawgress_analyze::run::run(options);
        tokio::pin!(run);
        tokio::select! {
            ran = &mut run => Some(ran),
            // After a stop the run ends at its next line; an emit stuck on a
            // dead NATS server or control API is cut at the drain timeout.
            () = shutdown.requested() => {
                use clawgress_gateway::stopping::{Budget, in_flight};
                Budget::start(in_flight(shutdown.drain())).bound("the analysis", run).await
            }
        }
    });
    // Blocking tasks stuck on a dead dependency are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match summary {
        Some(summary) => eprintln!("{}", serde_json::to_string(&summary?)?),
        None => eprintln!("analysis stopped before its last anomalies were published (--drain-timeout)"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(long)]
    agent: Option<String>,
    /// Destination host (DNS lines: the name asked for).
    #[arg(long)]
    domain: Option<String>,
    /// allow, deny, rate_limited, would_deny.
    #[arg(long)]
    decision: Option<String>,
    /// Only lines of this type (egress_denied, admin_action, dns_query, checkpoint, ...).
    #[arg(long = "type")]
    kind: Option<String>,
    /// RFC 3339 or relative ("1 hour ago", "30m", "2d").
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
    /// jsonl (the trail's lines), json (one array) or csv.
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Search this trail file.
    #[arg(long, conflicts_with_all = ["nats", "admin"])]
    trail: Option<PathBuf>,
    /// Search the `audit.>` streams on this NATS server.
    #[arg(long, conflicts_with = "admin")]
    nats: Option<String>,
    /// Search through a gateway's control API (`GET /v1/audit`, viewer role).
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, env = "CLAWGRESS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let format = Format::parse(&args.format)
        .with_context(|| format!("--format {} is not one of {}", args.format, Format::NAMES))?;
    let now = chrono::Utc::now();
    let when = |text: &Option<String>, flag: &str| -> anyhow::Result<_> {
        text.as_deref()
            .map(|t| parse_when(t, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    let filter = Filter {
        agent: args.agent.clone(),
        domain: args.domain.clone(),
        decision: args.decision.clone(),
        kind: args.kind.clone(),
        from: when(&args.from, "from")?,
        to: when(&args.to, "to")?,
        limit: args.limit.max(1),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let found = match (&args.trail, &args.nats, &args.admin) {
        (Some(path), _, _) => clawgress_analyze::search::search_trail(path, &filter)
            .with_context(|| format!("cannot read the trail {}", path.display()))?,
        (None, Some(url), _) => runtime.block_on(clawgress_analyze::search::search_streams(url, &filter))?,
        (None, None, Some(admin)) => {
            let lines = runtime.block_on(search_api(admin, args.token.clone(), &args, &filter))?;
            clawgress_analyze::search::Found {
                matched: lines.iter().filter(|b| **b == b'\n').count(),
                lines,
                ..Default::default()
            }
        }
        (None, None, None) => anyhow::bail!("say where to search: --trail FILE, --nats URL or --admin URL"),
    };
    for skipped in &found.skipped {
        eprintln!("{skipped}");
    }
    use std::io::Write as _;
    std::io::stdout().write_all(&render(&found.lines, format))?;
    if found.truncated {
        eprintln!(
            "more records match than --limit {}; narrow the search or raise --limit",
            filter.limit
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The same filters through `GET /v1/audit`; the answer in JSON lines.
async fn search_api(admin: &str, token: Option<String>, args: &SearchArgs, filter: &Filter) -> anyhow::Result<Vec<u8>> {
    let api = crate::egress::Api::new(admin, token);
    let mut query = vec![format!("limit={}", filter.limit.min(100_000))];
    let pairs = [
        ("agent", &args.agent),
        ("domain", &args.domain),
        ("decision", &args.decision),
    ];
    for (key, value) in pairs {
        if let Some(value) = value {
            query.push(format!("{key}={}", crate::egress::encode(value)));
        }
    }
    if let Some(from) = filter.from {
        query.push(format!("from={}", crate::egress::encode(&from.to_rfc3339())));
    }
    if let Some(to) = filter.to {
        query.push(format!("to={}", crate::egress::encode(&to.to_rfc3339())));
    }
    let (status, body) = api
        .call(hyper::Method::GET, &format!("/v1/audit?{}", query.join("&")), None)
        .await?;
    if !status.is_success() {
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        anyhow::bail!(
            "the gateway refused the search ({status}): {}",
            problem["detail"].as_str().unwrap_or("no detail")
        );
    }
    // The API does not filter on type; the CLI does.
    let mut lines = Vec::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(parsed) = clawgress_analyze::Line::parse(line)
            && filter.matches(&parsed)
        {
            lines.extend_from_slice(line);
            lines.push(b'\n');
        }
    }
    Ok(lines)
}

#[derive(clap::Args)]
pub struct EvidenceArgs {
    /// RFC 3339 or relative ("24h", "7d").
    #[arg(long)]
    from: String,
    #[arg(long, default_value = "now")]
    to: String,
    /// A new (or empty) directory for the bundle.
    #[arg(long)]
    out: PathBuf,
    /// The audit trail.
    #[arg(long)]
    trail: PathBuf,
    /// Policy files that may have been in force (repeat); each whose version
    /// the records name is copied into the bundle.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
}

pub fn evidence(args: EvidenceArgs) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    let from = parse_when(&args.from, now).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to = parse_when(&args.to, now).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let manifest = clawgress_analyze::evidence::write(&clawgress_analyze::evidence::Request {
        trail: &args.trail,
        from,
        to,
        out: &args.out,
        policies: &args.policies,
    })?;
    println!(
        "evidence bundle {}: {} records, {} admin actions, {} checkpoints, {} policy versions",
        args.out.display(),
        manifest.records,
        manifest.admin_actions,
        manifest.checkpoints,
        manifest.policy_versions.len()
    );
    for version in &manifest.policy_versions {
        match &version.file {
            Some(file) => println!("  policy {} ({} records): {file}", version.version, version.records),
            None => println!(
                "  policy {} ({} records): no file given has this version (--policy FILE)",
                version.version, version.records
            ),
        }
    }
    for skipped in &manifest.skipped {
        eprintln!("{skipped}");
    }
    println!("check it with: (cd {} && sha256sum -c SHA256SUMS)", args.out.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The candidate policy bundle.
    candidate: PathBuf,
    /// The recorded decisions to replay.
    #[arg(long)]
    trail: PathBuf,
    /// How far back: "24h", "7d", or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// The agents file, for the roles that role-limited groups check.
    #[arg(long, env = "CLAWGRESS_AGENTS")]
    agents: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    let since = parse_when(&args.since, now).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let bundle = match clawgress_policies::load_file(&args.candidate) {
        Ok(bundle) => bundle,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    let roles = match &args.agents {
        Some(path) => clawgress_analyze::replay::roles_from(path)?,
        None => Default::default(),
    };
    let diff = clawgress_analyze::replay::diff(&args.trail, &bundle, since, &roles, now)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        print!("{}", clawgress_analyze::replay::render(&diff));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Write a synthetic trail of this many events here (then run `clawgress
    /// analyze --trail FILE` on one core; see gateway/bench/analyze.sh).
    #[arg(long)]
    generate: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 500)]
    agents: u32,
    /// Microseconds between events (the trail's own clock).
    #[arg(long, default_value_t = 50)]
    gap_us: u64,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::create(&args.generate).with_context(|| format!("cannot create {}", args.generate.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    clawgress_analyze::synth::write_trail(&mut out, args.events, args.agents, args.gap_us)?;
    let bytes = std::fs::metadata(&args.generate)?.len();
    println!(
        "{}: {} events, {} agents, {:.1} MB ({} bytes a line)",
        args.generate.display(),
        args.events,
        args.agents,
        bytes as f64 / 1e6,
        bytes / args.events.max(1)
    );
    Ok(ExitCode::SUCCESS)
}
