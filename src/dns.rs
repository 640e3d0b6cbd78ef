//! `clawgress dns`: the DNS control server (issue 13 §4). The server itself
//! is `clawgress_gateway::dns::server`; this only reads the command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clawgress_gateway::dns::server::{DnsServerConfig, run as serve};

#[derive(clap::Args)]
pub struct DnsArgs {
    /// Where to answer, UDP and TCP, e.g. 127.0.0.1:5353. Port 0 picks a
    /// free port (printed at start).
    #[arg(long)]
    listen: SocketAddr,
    /// The resolver that allowed names are forwarded to: IP or IP:PORT
    /// (port 53 when none is given).
    #[arg(long, value_parser = parse_upstream)]
    upstream: SocketAddr,
    /// The policy bundle (YAML), e.g. policies/default.yaml.
    #[arg(long, env = "CLAWGRESS_POLICY")]
    policy: PathBuf,
    /// The agent registry (YAML); agents are told apart by their `sources`.
    #[arg(long, env = "CLAWGRESS_AGENTS")]
    agents: PathBuf,
    /// The hash-chained audit trail of `dns_query` lines [default: <state dir>/dns-audit.jsonl].
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Serve /metrics and /healthz here, e.g. 127.0.0.1:9153.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// NATS server holding the shared control state (KV bucket `clawgress-control`):
    /// temporary allows and emergency blocks, followed live. Without it the
    /// gateway's last-known-good copy in the state directory is read at start.
    #[arg(long, env = "NATS_URL")]
    nats: Option<String>,
    /// State directory [default: $CLAWGRESS_STATE_DIR, else $XDG_STATE_HOME/clawgress, else ~/.local/state/clawgress].
    #[arg(long, env = "CLAWGRESS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How often the policy and agent files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    /// UDP worker threads, each with its own socket on the port [default: one per CPU].
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    drain: crate::shutdown::DrainArgs,
}

pub fn run(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args.state_dir.unwrap_or_else(crate::default_state_dir);
    // Following NATS, the server keeps its own last-known-good copy: two
    // processes must not rewrite one file. Standalone it only reads the
    // gateway's.
    let control_dir = match args.nats {
        Some(_) => state_dir.join("dns"),
        None => state_dir.clone(),
    };
    let config = DnsServerConfig {
        listen: args.listen,
        upstream: args.upstream,
        policy: args.policy,
        agents: args.agents,
        audit: args.audit.unwrap_or_else(|| state_dir.join("dns-audit.jsonl")),
        metrics: args.metrics,
        nats_url: args.nats,
        control_dir,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(10)),
        drain: args.drain.drain_timeout,
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let shutdown = crate::shutdown::Shutdown::install(config.drain)?;
    crate::shutdown::block_on(serve(config, async move { shutdown.requested().await }))??;
    Ok(ExitCode::SUCCESS)
}

fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("'{text}' is not an address; write an IP with an optional port, like 10.0.0.2 or 127.0.0.1:5353")
        })
}
