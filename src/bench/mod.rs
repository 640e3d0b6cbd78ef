//! `clawgress bench` (the proxy load generator) and `clawgress bench-target`
//! (the origin it fetches from). Both share one 2-core machine with the proxy
//! under test, so both avoid per-request allocation and logging.

pub mod budgets;
pub mod control;
pub mod dlp;
mod endpoint;
mod load;
mod plan;
mod report;
mod stats;
mod target;
pub mod tokens;
mod tunnel;

use std::fmt;
use std::net::SocketAddr;

use anyhow::Context;

use plan::BenchPlan;

/// Largest `--connections`; beyond this the generator, not the proxy, is measured
/// (and the default descriptor limit of 1024 is near).
const MAX_CONNECTIONS: usize = 4096;
/// Largest `--size`: bodies are held in memory once.
const MAX_BODY_SIZE: usize = 64 << 20;

/// Load a proxy (or, without `--proxy`, the target directly) and report
/// throughput and latency percentiles.
#[derive(Clone, clap::Args)]
pub struct BenchArgs {
    /// Forward proxy to measure, `http://host:port`. Without it requests go
    /// straight to the target: the physical limit of this machine.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Proxy credential, sent as `Proxy-Authorization: Basic base64(AGENT:KEY)`.
    #[arg(
        long,
        value_name = "AGENT:KEY",
        env = "CLAWGRESS_BENCH_PROXY_USER",
        hide_env_values = true
    )]
    pub proxy_user: Option<String>,
    /// Origin to fetch, `http://host:port/path`.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Measure CONNECT tunnels: each request opens a new connection to the
    /// proxy, asks for a tunnel, sends one GET through it and closes.
    #[arg(long)]
    pub connect: bool,
    /// Send with a plain reqwest client (one shared pool, `--connections`
    /// concurrent loops) instead of the hand-built hyper connections: the
    /// peer a scraper without Clawgress would be.
    #[arg(long, conflicts_with = "connect")]
    pub reqwest: bool,
    /// With --reqwest: trust these PEM certificates too (an https target's
    /// test CA, or the gateway's interception CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Vec<std::path::PathBuf>,
    /// With --reqwest: POST a body of this many bytes instead of a GET.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub body: usize,
    /// Concurrent connections, each in a closed loop.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub connections: usize,
    /// Measured seconds (after the warmup).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub warmup: f64,
    /// Print one JSON object on stdout (the summary line then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

// Hand-written so a derived Debug in the command-line parser cannot print the key.
impl fmt::Debug for BenchArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchArgs")
            .field("proxy", &self.proxy)
            .field("proxy_user", &self.proxy_user.as_ref().map(|_| "<redacted>"))
            .field("target", &self.target)
            .field("connect", &self.connect)
            .field("reqwest", &self.reqwest)
            .field("connections", &self.connections)
            .field("duration", &self.duration)
            .field("warmup", &self.warmup)
            .field("json", &self.json)
            .finish()
    }
}

/// Serve a fixed body to any request, as the benchmark's origin.
#[derive(Clone, Debug, clap::Args)]
pub struct TargetArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub size: usize,
    /// Answer an HTML page (an `h1`, and a `.price` a script renders) of
    /// about `--size` bytes instead of plain bytes: a site to scrape.
    #[arg(long)]
    pub html: bool,
    /// Serve HTTPS with a certificate for these names (and 127.0.0.1).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Vec<String>,
    /// Where to write the certificate of the CA that signed it, for clients.
    #[arg(long, value_name = "PEM")]
    pub tls_ca_out: Option<std::path::PathBuf>,
}

/// Runs the benchmark and prints its report. Fails (after printing) when not a
/// single request succeeded, so scripts notice a broken setup.
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = BenchPlan::from_args(&args).await?;
    let report = plan.run().await;
    if args.json {
        eprintln!("{}", report.human_line());
        println!("{}", report.json_line()?);
    } else {
        println!("{}", report.human_line());
    }
    if report.requests == 0 {
        anyhow::bail!("no request succeeded in the measured window ({} errors)", report.errors);
    }
    Ok(())
}

/// Serves until Ctrl-C. Best on a current-thread runtime, so the target takes
/// at most one of the machine's cores.
pub async fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    if args.size > MAX_BODY_SIZE {
        anyhow::bail!("--size must be at most {MAX_BODY_SIZE} bytes");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    eprintln!("bench-target listening on {bound}, answering {} bytes", args.size);
    let shutdown = async {
        // If the signal handler cannot be installed, serve until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let canned = if args.html {
        target::CannedResponse::page_of_size(args.size)
    } else {
        target::CannedResponse::of_size(args.size)
    };
    let tls = match (&args.tls_ca_out, args.tls_name.is_empty()) {
        (Some(ca_out), false) => Some(target::tls_acceptor(&args.tls_name, ca_out)?),
        (None, true) => None,
        _ => anyhow::bail!("--tls-name and --tls-ca-out go together"),
    };
    target::serve(listener, canned, tls, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests;
