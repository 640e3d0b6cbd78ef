//! `clawgress bench-budgets`: gateway replicas sharing one hot token budget
//! on a real NATS, with leased blocks and with a compare-and-set per
//! request: requests/s, store writes/s and CAS conflicts/s for each.

use std::time::Duration;

use clawgress_gateway::budgets::bench::{self, BenchConfig, BenchReport};

#[derive(Debug, Clone, clap::Args)]
pub struct BudgetsBenchArgs {
    /// NATS server(s), comma-separated (a cluster, or one server).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Gateway replicas, each with its own connection and id.
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// AI requests in flight per replica.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds per mode.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// How long the provider takes to answer each request, in ms.
    #[arg(long, default_value_t = 20)]
    pub provider_ms: u64,
    /// `both` (leases, then a CAS per request), `leases` or `cas`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Print one JSON array.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: BudgetsBenchArgs) -> anyhow::Result<()> {
    let modes: &[bool] = match args.mode.as_str() {
        "both" => &[true, false],
        "leases" => &[true],
        "cas" => &[false],
        other => anyhow::bail!("--mode {other}: give `both`, `leases` or `cas`"),
    };
    let duration = Duration::try_from_secs_f64(args.seconds)
        .map_err(|_| anyhow::anyhow!("--seconds {}: give a positive number of seconds", args.seconds))?;
    let mut reports: Vec<BenchReport> = Vec::new();
    for &leases in modes {
        // A budget no run can use up: the figure is contention, not refusals.
        let report = bench::run(BenchConfig {
            nats_url: args.nats.clone(),
            replicas: args.replicas,
            concurrency: args.concurrency,
            duration,
            provider_latency: Duration::from_millis(args.provider_ms),
            leases,
            budget_tokens: 1_000_000_000_000,
        })
        .await?;
        if !args.json {
            eprintln!(
                "{}: {:.0} requests/s, {:.0} store writes/s, {:.1} CAS conflicts/s ({} conflicts, {} refused, {} store errors)",
                if leases { "leased blocks" } else { "CAS per request" },
                report.requests_per_sec,
                report.writes_per_sec,
                report.conflicts_per_sec,
                report.conflicts,
                report.refused,
                report.unavailable,
            );
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string(&reports)?);
    } else {
        println!(
            "{:<16} {:>8} {:>6} {:>10} {:>10} {:>13} {:>12}",
            "mode", "replicas", "conc", "req/s", "writes/s", "conflicts/s", "spent=used"
        );
        for r in &reports {
            println!(
                "{:<16} {:>8} {:>6} {:>10.0} {:>10.0} {:>13.1} {:>12}",
                if r.leases { "leased blocks" } else { "CAS per request" },
                r.replicas,
                r.concurrency,
                r.requests_per_sec,
                r.writes_per_sec,
                r.conflicts_per_sec,
                if r.spent_tokens == r.used_tokens {
                    "yes".to_string()
                } else {
                    format!("{}≠{}", r.spent_tokens, r.used_tokens)
                },
            );
        }
    }
    Ok(())
}
