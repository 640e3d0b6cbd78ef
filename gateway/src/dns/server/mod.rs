//! `clawgress dns`: the DNS control server (seed 002 §6). Workloads whose
//! port 53 the host edge redirects here, or that are pointed here, can
//! resolve exactly the names the policy allows and nothing else.
//!
//! | module | job |
//! |---|---|
//! | [`handler`] | one query: read → identify (source address) → decide → answer → record |
//! | `policy` | the policy snapshot: name verdicts, TTL caps, the answer cache |
//! | `upstream` | forwarding to `--upstream`: UDP, TCP on truncation, answers checked against the question |
//! | `answer` | upstream answers with capped TTLs, and the addresses they point at |
//! | `reply` | encoding replies (hickory-server's response builder) |
//! | `name` | the question's name for policy and audit; exfiltration-shaped labels |
//! | `listen` | UDP and TCP loops with bounded work and a drain |
//! | [`metrics`] | `dns_*` metrics and the `/metrics` listener |
//!
//! Answers: allowlisted names (any live rule or temporary entry) are
//! forwarded, or answered from `dns.static_hosts`; every other name is
//! NXDOMAIN from here, never forwarded. Unknown source addresses are
//! REFUSED (fail closed), as are answers that rebind a public name to an
//! internal address (DNS rebinding), ANY queries and emergency blocks.

mod answer;
pub mod handler;
mod listen;
pub mod metrics;
mod name;
mod policy;
mod reply;
mod upstream;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use handler::DnsHandler;
pub use metrics::DnsMetrics;
pub use upstream::Upstream;

use crate::identity::IdentityResolver;
use crate::reload::{self, Reload};
use policy::DnsSnapshot;

/// Audit records that may wait for the writer; past this queries are
/// answered SERVFAIL rather than served unaudited.
const AUDIT_QUEUE: usize = 65_536;

/// Everything `clawgress dns` needs to start.
#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// UDP and TCP, same address and port. Port 0 picks one (printed).
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub policy: PathBuf,
    pub agents: PathBuf,
    /// The hash-chained audit trail of `dns_query` lines (its own file: a
    /// trail has one writer).
    pub audit: PathBuf,
    /// `/metrics` and `/healthz`; none without it.
    pub metrics: Option<SocketAddr>,
    /// NATS whose KV bucket `clawgress-control` holds temporary allows and
    /// emergency blocks, followed live. Without it the control state is read
    /// once from `control_dir`.
    pub nats_url: Option<String>,
    /// Where the control state's last-known-good copy is kept (with NATS)
    /// or read from (standalone).
    pub control_dir: PathBuf,
    pub watch_interval: Duration,
    /// How long queries in flight may take after a shutdown signal.
    pub drain: Duration,
    /// UDP worker threads, each with its own socket on the port.
    pub workers: usize,
}

impl Reload for DnsHandler {
    fn reload_policy(&self, path: &Path) -> bool {
        match DnsSnapshot::load(path) {
            Ok((snapshot, bundle)) => {
                for warning in &bundle.warnings {
                    tracing::warn!("{warning}");
                }
                let version = snapshot.version.clone();
                self.policy.store(Arc::new(snapshot));
                self.metrics.cache_entries.set(0);
                self.metrics.record_reload(false, true);
                tracing::info!(%version, "policy reloaded");
                true
            }
            Err(message) => {
                self.metrics.record_reload(false, false);
                tracing::error!(
                    "policy reload refused; version {} stays in force. {}",
                    self.policy.load().version,
                    message.replace('\n', " | ")
                );
                false
            }
        }
    }

    fn reload_agents(&self, path: &Path) -> bool {
        let loaded = reload::load_agents(path);
        self.metrics.record_reload(true, loaded.is_some());
        match loaded {
            Some(resolver) => {
                warn_without_sources(&resolver);
                self.identities.store(Arc::new(resolver));
                true
            }
            None => false,
        }
    }
}

/// Serves until `shutdown` resolves; then stops taking queries, lets those
/// in flight finish (at most `drain`), and flushes the audit trail.
pub async fn run(config: DnsServerConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(DnsMetrics::new()?);
    let watched = reload::Watched::before_loading(config.policy.clone(), config.agents.clone(), config.watch_interval);
    let (snapshot, bundle) = DnsSnapshot::load(&config.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    for warning in &bundle.warnings {
        tracing::warn!("{warning}");
    }
    let identities = IdentityResolver::load(&config.agents).map_err(|e| anyhow::anyhow!("{e}"))?;
    warn_without_sources(&identities);
    if let Some(dir) = config.audit.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the audit directory {}", dir.display()))?;
    }
    let (audit, writer) = crate::audit::start_writer(&config.audit, AUDIT_QUEUE, metrics.audit())
        .with_context(|| format!("cannot open the audit trail {}", config.audit.display()))?;
    // With NATS the trail goes to the `audit.dns` stream as well. Streams it
    // has to create get one replica: in a cluster, let the gateways
    // (`--audit-replicas 3`) create them first.
    let shipper = config.nats_url.as_deref().map(|url| {
        crate::audit::ship::Shipper::start(
            crate::audit::ship::ShipConfig {
                nats_url: url.to_string(),
                trail: config.audit.clone(),
                replicas: clawgress_nats::Replicas::Fixed(1),
                wal_max_bytes: crate::integrity::WAL_MAX_BYTES,
            },
            writer.written(),
            audit.backlog().clone(),
            audit.metrics().clone(),
        )
    });
    let (udp, tcp) = listen::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (UDP and TCP) for DNS (is something already there? pick another --listen)",
            config.listen
        )
    })?;
    let dns_addr = udp.local_addr()?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for metrics (is something already there? pick another --metrics)")
        })?),
        None => None,
    };

    let (stop, stopped) = watch::channel(false);
    let control = crate::control::ControlStore::start(config.nats_url.clone(), &config.control_dir, stopped.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    control.first_sync(Duration::from_secs(5)).await;
    let handler = Arc::new(DnsHandler {
        policy: ArcSwap::from_pointee(snapshot),
        identities: ArcSwap::from_pointee(identities),
        control,
        audit,
        metrics: metrics.clone(),
        upstream: Upstream::new(config.upstream),
    });

    let udp_slots = Arc::new(Semaphore::new(listen::MAX_IN_FLIGHT as usize));
    let tcp_slots = Arc::new(Semaphore::new(listen::MAX_TCP_CONNECTIONS as usize));
    let mut udp_sockets = vec![udp.into_std()?];
    udp_sockets.extend(listen::more_udp(dns_addr, config.workers.max(1) - 1)?);
    let udp_workers = listen::spawn_udp_workers(
        udp_sockets,
        &handler,
        &udp_slots,
        &stopped,
        crate::stopping::in_flight(config.drain),
    )
    .context("cannot start the DNS workers")?;
    let tcp_loop = tokio::spawn(listen::serve_tcp(
        tcp,
        handler.clone(),
        tcp_slots.clone(),
        stopped.clone(),
    ));
    let mut lines = vec![format!(
        "dns listening on {dns_addr} (udp, tcp) upstream {}",
        config.upstream
    )];
    let metrics_task = match metrics_listener {
        Some(listener) => {
            lines.push(metrics::describe(listener.local_addr()?));
            Some(tokio::spawn(metrics::serve(listener, metrics.clone(), stopped.clone())))
        }
        None => None,
    };
    let watcher = tokio::spawn(reload::watch_files(handler.clone(), watched, stopped));
    lines.push(match &config.nats_url {
        Some(url) => format!(
            "control store nats {} bucket {}",
            crate::control::store::redacted(url),
            crate::control::store::BUCKET
        ),
        None => format!("control store standalone {}", config.control_dir.display()),
    });
    lines.push(format!("audit trail {}", config.audit.display()));
    announce(&lines);

    shutdown.await;
    // Within --drain-timeout whatever NATS or the upstream resolver do.
    let budget = crate::stopping::Budget::start(config.drain);
    tracing::info!("shutting down: no new queries, draining those in flight");
    let _ = stop.send(true);
    budget.join_threads("the UDP workers", udp_workers).await;
    budget.join("the TCP listener", tcp_loop).await;
    let in_flight = crate::stopping::in_flight(config.drain).min(budget.left());
    let udp_done = listen::drained(&udp_slots, listen::MAX_IN_FLIGHT, in_flight).await;
    let tcp_done = listen::drained(&tcp_slots, listen::MAX_TCP_CONNECTIONS, in_flight.min(budget.left())).await;
    if !(udp_done && tcp_done) {
        tracing::warn!("queries still in flight after the drain; their audit lines may be missing");
    }
    if let Some(task) = metrics_task {
        budget.join("the metrics server", task).await;
    }
    budget.join("the policy file watcher", watcher).await;
    drop(handler);
    // Slots still held by queries that outlived the drain would hold the
    // writer up; what is queued is written either way.
    let flushed = budget.bound("the audit writer", writer.shutdown()).await;
    if let Some(shipper) = shipper {
        let grace = (budget.left() / 2).min(Duration::from_secs(5));
        budget.bound("the audit shipper", shipper.finish(grace)).await;
    }
    match flushed {
        Some(result) => result.context("the audit trail could not be flushed")?,
        None => tracing::warn!("the audit trail was not flushed in time"),
    }
    Ok(())
}

fn warn_without_sources(identities: &IdentityResolver) {
    if !identities.has_sources() {
        tracing::warn!(
            "no agent in the agents file has `sources`, so every DNS query is refused (unknown_source); \
             give each agent its CIDRs"
        );
    }
}

/// Machine-readable start lines on stdout (tests and scripts read the real
/// ports from them), ignoring a reader that went away.
fn announce(lines: &[String]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
