//! The gateway's shared state: the policy snapshot in force, the agent
//! registry, the audit sink, the metrics and the upstream connection pool.
//!
//! Policy and identities are swapped atomically on reload (`ArcSwap`): a
//! request reads one snapshot at its start and keeps it to its end, so a
//! reload never changes the rules under a request in flight.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use clawgress_policies::CompiledPolicy;
use clawgress_policies::PolicyBundle;
use clawgress_policies::model;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::audit::AuditSink;
use crate::breaker::Breakers;
use crate::decision::Enforcement;
use crate::dns::{Resolver, ResolverConfig};
use crate::identity::IdentityResolver;
use crate::limits::Limits;
use crate::metrics::GatewayMetrics;
use crate::proxy::body::OutboundBody;

/// Longest time to wait for a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most names kept in the DNS cache; bounds memory under a flood of names.
const DNS_CACHE_ENTRIES: usize = 65_536;

pub type UpstreamClient = Client<HttpConnector, OutboundBody>;

pub struct Gateway {
    pub policy: ArcSwap<PolicySnapshot>,
    pub identities: ArcSwap<IdentityResolver>,
    pub audit: AuditSink,
    pub metrics: Arc<GatewayMetrics>,
    /// CONNECT tunnels currently open, across all workers (the drain waits
    /// for them).
    pub open_tunnels: std::sync::atomic::AtomicUsize,
    /// Per-agent concurrency and bytes in flight; lives across reloads.
    pub containment: Arc<crate::containment::Containment>,
    /// Runtime control state shared by every replica (temporary allows,
    /// emergency block).
    pub control: Arc<crate::control::ControlStore>,
    /// Who may use the control API.
    pub admin_tokens: crate::admin::auth::AdminTokens,
    /// The control plane's store: the database when this replica holds it,
    /// and the snapshots (agents, tokens, policy) in force from it.
    pub store: crate::store::StoreLink,
    /// The audit trail, for exports.
    pub audit_path: std::path::PathBuf,
    /// Trusted roots, upstream TLS and the interception CA.
    pub tls: Arc<crate::tls::TlsKit>,
    /// Budget counters: in memory standalone, in NATS KV when replicas share.
    pub budget_store: Arc<crate::budgets::BudgetStore>,
    /// The `/dashboard` page's latest denials and counter snapshots.
    pub dashboard: crate::dashboard::Dashboard,
    /// The keys a policy bundle must be signed by (`--policy-key`), and the
    /// count of bundles refused on reload.
    pub policy_trust: crate::integrity::PolicyTrust,
    /// Client connections (and the tunnels they became) under
    /// `--max-connections`, across every listener.
    pub connections: crate::resources::Connections,
}

/// One loaded policy bundle, compiled, with the resolver its `dns` section
/// describes.
pub struct PolicySnapshot {
    pub compiled: CompiledPolicy,
    pub resolver: Resolver,
    pub version: Arc<str>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub limits: Arc<Limits>,
    pub breakers: Arc<Breakers>,
    /// Exact allowlisted names: the only domains whose breaker state is
    /// exported as a labelled metric (wildcards would make labels unbounded).
    pub exported_breaker_domains: std::collections::HashSet<String>,
    breaker_config: model::CircuitBreaker,
    containment_limits: (u32, u64),
    egress: model::EgressPolicy,
    /// `rate_limits.enabled`.
    pub rate_limits_enabled: bool,
    /// The bundle's allow rules as operators see them (`clawgress egress list`).
    pub rules_listing: Arc<Vec<serde_json::Value>>,
    /// Outbound DLP, compiled once per load; `None` when `dlp.enabled` is off.
    pub dlp: Option<Arc<clawgress_dlp::Engine>>,
    /// `compliance_logging.hash_sensitive`: held bodies' SHA-256 go into the audit.
    pub hash_bodies: bool,
    /// `tls:` as the upstream connections of intercepted tunnels use it.
    pub upstream_tls: crate::tls::UpstreamTlsPolicy,
    /// Token and cost budgets; `None` when the policy sets none.
    pub budgets: Option<Arc<crate::budgets::BudgetPlan>>,
    /// ASN and country databases (`geoip:`); `None` when none are named.
    pub geoip: Option<Arc<crate::geoip::GeoIp>>,
}

impl PolicySnapshot {
    /// `previous` is the snapshot being replaced on reload: limiter state
    /// carries over (a reload must not hand every agent a fresh burst), and
    /// breakers carry over while their configuration is unchanged.
    pub fn build(bundle: &PolicyBundle, previous: Option<&PolicySnapshot>) -> anyhow::Result<Self> {
        let doc = &bundle.document;
        let resolver = Resolver::new(ResolverConfig {
            static_hosts: doc
                .dns
                .static_hosts
                .iter()
                .map(|(name, ip)| (name.clone(), *ip))
                .collect(),
            cache_ttl: doc.dns.cache_ttl.duration(),
            negative_cache_ttl: doc.dns.negative_cache_ttl.duration(),
            nameservers: (!doc.dns.nameservers.is_empty()).then(|| doc.dns.nameservers.clone()),
            max_cache_entries: DNS_CACHE_ENTRIES,
            ..ResolverConfig::default()
        })
        .with_context(|| format!("{}: cannot set up the DNS resolver", bundle.source))?;
        let limits = match previous {
            Some(old) => Arc::new(old.limits.reconfigured(&doc.rate_limits)),
            None => Arc::new(Limits::new(&doc.rate_limits)),
        };
        let breakers = match previous {
            Some(old) if old.breaker_config == doc.circuit_breaker => old.breakers.clone(),
            _ => Arc::new(Breakers::new(&doc.circuit_breaker)),
        };
        let exported_breaker_domains = doc
            .allowlist
            .groups
            .iter()
            .flat_map(|group| group.rules.iter())
            .chain(doc.project_allowlist.iter())
            .filter_map(|rule| match &rule.domain.value {
                clawgress_policies::pattern::DomainPattern::Exact(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        Ok(PolicySnapshot {
            rules_listing: Arc::new(rules_listing(doc)),
            rate_limits_enabled: doc.rate_limits.enabled,
            dlp: crate::inspect::engine_for(&doc.dlp),
            upstream_tls: crate::tls::UpstreamTlsPolicy::new(&doc.tls),
            budgets: crate::budgets::BudgetPlan::new(&doc.budgets),
            geoip: crate::geoip::GeoIp::load(bundle)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .map(Arc::new),
            hash_bodies: doc.compliance_logging.enabled && doc.compliance_logging.hash_sensitive,
            compiled: CompiledPolicy::compile(bundle),
            resolver,
            version: Arc::from(bundle.version.as_str()),
            request_timeout: doc.fault_containment.request_timeout.value.duration(),
            connect_timeout: CONNECT_TIMEOUT,
            limits,
            breakers,
            exported_breaker_domains,
            breaker_config: doc.circuit_breaker.clone(),
            containment_limits: (
                doc.fault_containment.max_concurrent_requests.value,
                doc.fault_containment.max_pending_bytes.as_u64(),
            ),
            egress: doc.egress.clone(),
        })
    }

    /// The containment limits this policy sets.
    pub fn containment_limits(&self) -> (u32, u64) {
        self.containment_limits
    }

    /// What to do for agents in `environment` when a dependency is down.
    pub fn fail_mode_for(&self, environment: &str) -> model::FailMode {
        self.egress.fail_mode_for(environment)
    }

    pub fn enforcement_for(&self, environment: &str) -> Enforcement {
        match self.egress.enforcement_for(environment) {
            model::Enforcement::Enforce => Enforcement::Enforce,
            model::Enforcement::Report => Enforcement::Report,
        }
    }
}

thread_local! {
    /// Each proxy worker thread runs its own single-threaded runtime, so each
    /// keeps its own pool: a request and its upstream connection are then
    /// driven by the same thread, with no cross-thread wake-ups.
    static UPSTREAM: UpstreamClient = upstream_client();
}

/// Every allow rule of the bundle, in file order, with its group.
fn rules_listing(doc: &clawgress_policies::model::PolicyDocument) -> Vec<serde_json::Value> {
    let now = chrono::Utc::now();
    let groups = doc
        .allowlist
        .groups
        .iter()
        .map(|group| (group.name.value.to_string(), &group.rules))
        .chain(std::iter::once((
            clawgress_policies::model::PROJECT_GROUP.to_string(),
            &doc.project_allowlist,
        )));
    let mut listing = Vec::new();
    for (group, rules) in groups {
        for rule in rules {
            let expires = rule.expires.as_ref().map(|e| e.value.ends_at());
            listing.push(serde_json::json!({
                "source": "policy",
                "group": group,
                "domain": rule.domain.value.to_string(),
                "ports": rule.ports,
                "protocols": rule.protocols,
                "expires_at": expires,
                "active": expires.is_none_or(|at| at > now),
            }));
        }
    }
    listing
}

/// The first allow rule that intercepts TLS, if any: such a policy needs the
/// interception CA.
pub fn first_intercept_rule(doc: &model::PolicyDocument) -> Option<&model::AllowRule> {
    doc.allowlist
        .groups
        .iter()
        .flat_map(|group| group.rules.iter())
        .chain(doc.project_allowlist.iter())
        .find(|rule| rule.tls == model::TlsMode::Intercept)
}

/// The calling worker's upstream pool.
pub fn upstream() -> UpstreamClient {
    UPSTREAM.with(UpstreamClient::clone)
}

/// A pool of upstream connections. It only ever dials IP literals (the
/// address the decide phase checked), so it never resolves a name itself.
fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}
