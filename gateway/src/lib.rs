//! The Clawgress egress gateway: an explicit forward proxy that identifies
//! the agent, decides by policy, forwards to exactly the address it checked,
//! and records every decision in a hash-chained audit trail and in metrics.
//!
//! | module | job |
//! |---|---|
//! | [`proxy`] | listener and the request pipeline (identify → classify → decide → forward/tunnel → record) |
//! | [`identity`] | agent registry, API keys, JWTs, SPIFFE IDs |
//! | [`mtls`] | the `--listen-tls` listener's client CA, CRL, server certificate, reload |
//! | [`dns`] | host parsing, SSRF address classes, the caching resolver |
//! | [`decision`] | refusal kinds, their reason codes and statuses |
//! | [`response`] | refusals as problem+json responses |
//! | [`record`] | audit line and metrics for each finished request |
//! | [`audit`] | audit events, the hash-chained writer, `verify`, checkpoints, shipping to the audit streams |
//! | [`integrity`] | `--audit-fsync`, `--audit-key`, `--audit-replicas`, `--audit-wal-max-bytes`, `--policy-key` |
//! | [`metrics`] | Prometheus metrics |
//! | [`admin`] | `/metrics`, `/healthz`, `/readyz`, `/dashboard`, the control API |
//! | [`dashboard`] | the built-in dashboard page and its SLO window |
//! | [`reload`] | SIGHUP and file-change reload |
//! | [`store`] | the control plane's store: holding it (`--database`), its snapshots from NATS KV |
//! | [`state`] | the shared state and the policy snapshot |

pub mod admin;
pub mod audit;
pub mod breaker;
pub mod budgets;
pub mod containment;
pub mod context;
pub mod control;
pub mod dashboard;
pub mod decision;
pub mod dns;
pub mod geoip;
pub mod identity;
pub mod inspect;
pub mod integrity;
pub mod limits;
pub mod metrics;
pub mod mtls;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod resources;
pub mod response;
pub mod state;
pub mod stopping;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use state::Gateway;

/// Everything `clawgress gateway` needs to start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub policy: PathBuf,
    pub agents: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub audit: PathBuf,
    /// Audit records that may wait for the writer; past this the gateway
    /// fails closed.
    pub audit_queue: usize,
    pub watch_interval: Duration,
    /// Proxy worker threads, each with its own runtime and listener.
    pub workers: usize,
    /// How long the whole shutdown may take (`--drain-timeout`): in-flight
    /// requests get most of it ([`stopping::in_flight`]), flushing the
    /// audit trail the rest.
    pub drain: Duration,
    /// NATS server whose KV bucket `clawgress-control` holds the runtime
    /// control state. `None`: standalone, state kept in `state_dir` only.
    pub nats_url: Option<String>,
    /// Bearer tokens and roles for the control API; without it the API
    /// refuses everyone.
    pub admin_tokens: Option<PathBuf>,
    /// Where the last-known-good control state is kept.
    pub state_dir: PathBuf,
    /// The interception CA (`clawgress ca init`); needed by `tls: intercept` rules.
    pub ca_dir: Option<PathBuf>,
    /// PEM certificates trusted for upstreams besides the system roots.
    pub upstream_ca_bundle: Option<PathBuf>,
    /// The transparent listener, for connections nftables redirects here.
    pub transparent: Option<SocketAddr>,
    /// How long a client may take to send its request head (or, on the
    /// transparent listener, its first bytes; on the mTLS listener, its
    /// handshake).
    pub header_timeout: Duration,
    /// The proxy over TLS with client certificates (`--listen-tls`).
    pub mtls: Option<mtls::MtlsConfig>,
    /// Client connections (tunnels included) served at once, over every
    /// listener; more wait in the kernel's backlog. Also what the
    /// open-files limit is checked against at start.
    pub max_connections: usize,
    /// Audit durability, checkpoints, shipping, and policy signatures.
    pub integrity: integrity::IntegrityOptions,
    /// The control plane's store this replica holds (`--database`): a
    /// `sqlite:` or `postgres://` URL. `None`: it holds none (it still
    /// applies the store's snapshots from NATS).
    pub database: Option<String>,
    /// Replicas of the KV buckets (and, unless `--audit-replicas` says
    /// otherwise, the audit streams) this gateway creates on NATS.
    pub replicas: clawgress_nats::Replicas,
}

/// A policy's warnings in the log: one summary line with the command that
/// lists them; each in full at debug level (`CLAWGRESS_LOG=debug`).
pub(crate) fn log_policy_warnings(bundle: &clawgress_policies::PolicyBundle) {
    for warning in &bundle.warnings {
        tracing::debug!("{warning}");
    }
    if let Some(summary) = bundle.warnings_summary() {
        tracing::warn!("{summary}");
    }
}

/// Starts the gateway and serves until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish, and flushes the audit trail.
pub async fn run(config: GatewayConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    // Before anything opens a file: every connection needs two.
    let open_files = resources::raise_open_files(config.max_connections);
    let metrics = Arc::new(metrics::GatewayMetrics::new(decision::ALL_REASONS)?);
    let watched = reload::Watched::before_loading(config.policy.clone(), config.agents.clone(), config.watch_interval);
    let policy_keys = config.integrity.policy_keys()?;
    let bundle = integrity::load_policy(&config.policy, policy_keys.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    log_policy_warnings(&bundle);
    let tls = Arc::new(
        tls::TlsKit::new(config.ca_dir.as_deref(), config.upstream_ca_bundle.as_deref())
            .context("cannot set up TLS")?,
    );
    if tls.ca.is_none()
        && let Some(rule) = state::first_intercept_rule(&bundle.document)
    {
        anyhow::bail!(
            "{}:{}: the rule for {} says tls: intercept, but the gateway has no interception CA; \
             create one with `clawgress ca init --dir DIR` and start the gateway with --ca-dir DIR",
            bundle.source,
            rule.domain.line,
            rule.domain.value
        );
    }
    // The token encodings (about 60 MB) load when the first AI request
    // arrives (inspect/ai.rs), not here: a gateway without AI traffic
    // never holds them.
    let snapshot = state::PolicySnapshot::build(&bundle, None)?;
    metrics.record_policy_reload_success(&snapshot.version);
    let identities = Arc::new(identity::IdentityResolver::load(&config.agents).map_err(|e| anyhow::anyhow!("{e}"))?);
    if let Some(dir) = config.audit.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the audit directory {}", dir.display()))?;
    }
    let (audit, writer) = config
        .integrity
        .start_writer(&config.audit, config.audit_queue, metrics.audit())?;
    let shipper = config.nats_url.as_deref().map(|url| {
        config
            .integrity
            .start_shipper(url, config.replicas, &config.audit, &audit, &writer)
    });

    let proxy_listeners = proxy::server::bind_listeners(config.listen, config.workers).with_context(|| {
        format!(
            "cannot listen on {} for the proxy (is something already there? pick another --listen)",
            config.listen
        )
    })?;
    // The mTLS files are read before anything serves: a wrong CA or CRL
    // stops the start with what to fix.
    let mtls = match config.mtls.clone() {
        Some(mtls_config) => {
            let listen = mtls_config.listen;
            let acceptor = mtls::MtlsAcceptor::load(mtls_config, tls.clone(), metrics.registry())
                .context("cannot start the mTLS listener (--listen-tls)")?;
            let listeners = proxy::server::bind_listeners(listen, config.workers)
                .with_context(|| format!("cannot listen on {listen} for mTLS (pick another --listen-tls)"))?;
            Some((Arc::new(acceptor), listeners))
        }
        None => None,
    };
    let transparent_listeners = match config.transparent {
        Some(addr) => Some(proxy::server::bind_listeners(addr, config.workers).with_context(|| {
            format!("cannot listen on {addr} for transparent connections (pick another --transparent)")
        })?),
        None => None,
    };
    let admin_listener = TcpListener::bind(config.admin).await.with_context(|| {
        format!(
            "cannot listen on {} for the admin port (is something already there? pick another --admin)",
            config.admin
        )
    })?;
    let admin_tokens = match &config.admin_tokens {
        Some(path) => admin::auth::AdminTokens::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => admin::auth::AdminTokens::default(),
    };
    let proxy_addr = proxy_listeners[0].local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let control = control::ControlStore::start_with(
        config.nats_url.clone(),
        config.replicas,
        &config.state_dir,
        stopped.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    control.first_sync(Duration::from_secs(5)).await;
    let snapshot_limits = snapshot.containment_limits();
    let gateway_registry = metrics.registry().clone();
    let gateway = Arc::new(Gateway {
        policy: ArcSwap::from_pointee(snapshot),
        identities: ArcSwap::new(identities.clone()),
        store: store::StoreLink::new(
            config.database.clone(),
            config.nats_url.clone(),
            &config.state_dir,
            config.policy.clone(),
            config.agents.clone(),
            identities,
            config.replicas,
        ),
        audit,
        metrics,
        open_tunnels: Default::default(),
        containment: {
            let (concurrent, pending) = snapshot_limits;
            containment::Containment::new(concurrent, pending)
        },
        control,
        admin_tokens,
        audit_path: config.audit.clone(),
        tls,
        budget_store: Arc::new(match &config.nats_url {
            Some(url) => budgets::BudgetStore::nats(url, config.replicas),
            None => budgets::BudgetStore::memory(),
        }),
        dashboard: dashboard::Dashboard::default(),
        policy_trust: integrity::PolicyTrust::new(policy_keys, gateway_registry)?,
        connections: resources::Connections::new(config.max_connections),
    });

    // The store's snapshots (agents, tokens, policy) before the first request.
    let mut store_tasks = store::start(&gateway, stopped.clone()).await;
    store_tasks.push(tokio::spawn(budgets::usage::export(gateway.clone(), stopped.clone())));
    let mut workers = proxy::server::spawn_workers(
        proxy_listeners,
        proxy::server::Role::Proxy {
            header_timeout: config.header_timeout,
        },
        gateway.clone(),
        stopped.clone(),
        stopping::in_flight(config.drain),
    )
    .context("cannot start the proxy workers")?;
    // The start lines of the listeners besides the proxy's.
    let mut listener_lines = Vec::new();
    if let Some(listeners) = transparent_listeners {
        let addr = listeners[0].local_addr()?;
        if !gateway.identities.load().has_sources() {
            tracing::warn!(
                "--transparent: no agent in the agents file has `sources`, so every redirected connection is refused (unknown_source)"
            );
        }
        listener_lines.push(format!("transparent listening on {addr}"));
        workers.extend(
            proxy::server::spawn_workers(
                listeners,
                proxy::server::Role::Transparent {
                    header_timeout: config.header_timeout,
                },
                gateway.clone(),
                stopped.clone(),
                stopping::in_flight(config.drain),
            )
            .context("cannot start the transparent workers")?,
        );
    }
    let mut mtls_watcher = None;
    if let Some((acceptor, listeners)) = mtls {
        let addr = listeners[0].local_addr()?;
        let identities = gateway.identities.load();
        if identities.spiffe_id_count() == 0 {
            tracing::info!("--listen-tls: no agent lists `spiffe_ids`; client certificates name agents by their CN");
        }
        listener_lines.push(format!("mtls listening on {addr}"));
        workers.extend(
            proxy::server::spawn_workers(
                listeners,
                proxy::server::Role::Mtls {
                    header_timeout: config.header_timeout,
                    acceptor: acceptor.clone(),
                },
                gateway.clone(),
                stopped.clone(),
                stopping::in_flight(config.drain),
            )
            .context("cannot start the mTLS workers")?,
        );
        mtls_watcher = Some(tokio::spawn(mtls::watch_files(
            acceptor,
            config.watch_interval,
            stopped.clone(),
        )));
    }
    let admin = tokio::spawn(admin::serve(admin_listener, gateway.clone(), stopped.clone()));
    // The dashboard's anomaly panel follows `clawgress analyze` on NATS.
    let anomalies = config.nats_url.clone().map(|url| {
        tokio::spawn(dashboard::anomalies::follow(
            gateway.dashboard.anomalies.clone(),
            url,
            stopped.clone(),
        ))
    });
    let watcher = tokio::spawn(reload::watch_files(gateway.clone(), watched, stopped));
    // Budget blocks: usage written back, renewed, idle ones given back.
    let budget_blocks = tokio::spawn(gateway.budget_store.clone().maintain(stop.subscribe()));
    // Idle limiter keys are dropped so memory stays bounded; a dropped key
    // comes back with exactly its burst, never more.
    let sweeper = {
        let (gateway, mut stopped) = (gateway.clone(), stop.subscribe());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(10)) => {
                        gateway.policy.load().limits.retain_recent();
                        gateway.dashboard.sample(&gateway);
                        expire_temporary(&gateway).await;
                    }
                    _ = stopped.changed() => return,
                }
            }
        })
    };
    // Machine-readable start lines: scripts and tests read the real ports
    // from here when they asked for port 0. Written without println!: a
    // reader that went away must not take the gateway down with EPIPE.
    let control_line = match &config.nats_url {
        Some(url) => format!(
            "control store nats {} bucket {}",
            control::store::redacted(url),
            control::store::BUCKET
        ),
        None => format!("control store standalone {}", config.state_dir.display()),
    };
    let mut store_lines = Vec::new();
    if let Some(holder) = gateway.store.holder() {
        store_lines.push(format!(
            "store database {} (agents, policies, tokens under /v1/)",
            holder.shown
        ));
    }
    let mut lines = vec![
        format!("proxy listening on {proxy_addr} ({} workers)", config.workers.max(1)),
        format!("admin listening on {admin_addr} (/metrics /dashboard /healthz /readyz /v1/)"),
        control_line,
        format!("audit trail {}", config.audit.display()),
        format!("{}, --max-connections {}", open_files.line(), config.max_connections),
    ];
    lines.extend(store_lines);
    lines.extend(listener_lines);
    announce(&lines);

    shutdown.await;
    // Every step below waits only for what is left of the budget: NATS gone,
    // an upstream hung or a client that never reads cannot hold the
    // process past --drain-timeout.
    let budget = stopping::Budget::start(config.drain);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop.send(true);
    budget.join_threads("the proxy workers", workers).await;
    budget.join("the admin server", admin).await;
    if let Some(anomalies) = anomalies {
        budget.join("the dashboard's anomaly follower", anomalies).await;
    }
    budget.join("the policy file watcher", watcher).await;
    if let Some(mtls_watcher) = mtls_watcher {
        budget.join("the mTLS file watcher", mtls_watcher).await;
    }
    budget.join("the limiter sweeper", sweeper).await;
    for task in store_tasks {
        budget.join("the control store's tasks", task).await;
    }
    // The budget blocks this replica holds go back now rather than when
    // they expire (then they would be charged in full).
    budget.join("the budget block keeper", budget_blocks).await;
    budget
        .bound("giving budget blocks back", gateway.budget_store.release())
        .await;
    // Every request holds an audit slot; once the servers are done and the
    // gateway's last clone is gone, the writer drains and stops.
    drop(gateway);
    let flushed = budget.bound("the audit writer", writer.shutdown()).await;
    // The last records (and the last checkpoint) go to the streams too, if
    // NATS takes them soon; otherwise the next start ships them.
    if let Some(shipper) = shipper {
        let grace = (budget.left() / 2).min(Duration::from_secs(5));
        budget.bound("the audit shipper", shipper.finish(grace)).await;
    }
    match flushed {
        Some(flushed) => flushed.context("the audit trail could not be flushed")?,
        None => {
            tracing::warn!("the audit trail was not flushed within the drain timeout; records still queued are lost")
        }
    }
    Ok(())
}

/// Expired temporary entries (and long-decided requests) leave the control
/// store, each with an audit record by the system actor, reserved first.
async fn expire_temporary(gateway: &Gateway) {
    let swept = gateway
        .control
        .sweep(chrono::Utc::now(), |_| gateway.audit.reserve().ok())
        .await;
    for (item, slot, result) in swept {
        if result.is_err() {
            // Another replica removed it first (or NATS is gone): nothing
            // changed here, so there is nothing to record.
            slot.release();
            continue;
        }
        let (action, id, domain) = match item {
            control::ControlItem::Allow(entry) => ("expire_temp", entry.id, entry.domain),
            control::ControlItem::Request(request) => ("prune_request", request.id, request.domain),
            control::ControlItem::Emergency(block) => ("expire", block.incident_id, String::new()),
            control::ControlItem::Quarantine(held) => ("expire", held.agent_id, String::new()),
        };
        let mut event = audit::AdminEvent::new("clawgress", "system", action);
        event.details.insert("id".to_string(), id);
        event.details.insert("domain".to_string(), domain);
        event.details.insert("outcome".to_string(), "ok".to_string());
        slot.record(event);
    }
}

/// Prints the start lines to stdout, ignoring a closed pipe.
fn announce(lines: &[String]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
