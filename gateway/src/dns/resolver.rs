//! The gateway's own resolver: operator-pinned static hosts first, then a
//! bounded cache, then DNS through hickory with a hard deadline.
//!
//! hickory's internal cache is switched off: it would keep answers for the
//! record TTL regardless of our `cache_ttl`, and it is sized in responses
//! rather than names. Our cache is the only one, so what the operator
//! configures is exactly what happens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clawgress_policies::domain::normalize_domain;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::Name;
use tokio::sync::OnceCell;

use super::cache::{AnswerCache, CachedAnswer};

/// Longest upstream error text kept in [`ResolveError::Failed`].
const MAX_ERROR_MESSAGE: usize = 200;
/// More attempts only multiply the wait on a dead server.
const MAX_ATTEMPTS: usize = 5;

/// How the gateway resolves names.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Names answered without DNS, for test hosts and internal services.
    /// Keys are normalized on load; these entries never expire.
    pub static_hosts: HashMap<String, IpAddr>,
    /// Upper bound for keeping a positive answer (the record TTL may be
    /// shorter, and then it wins).
    pub cache_ttl: Duration,
    /// How long "no such name" / "no addresses" is remembered.
    pub negative_cache_ttl: Duration,
    /// Upstream servers (UDP, TCP for truncated answers); `None` reads the
    /// system configuration (/etc/resolv.conf).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Most names cached at once; the oldest entries go first. 0 disables
    /// the cache.
    pub max_cache_entries: usize,
    /// Deadline for one whole resolution (A and AAAA, every attempt).
    pub timeout: Duration,
    /// Tries per query before giving up, 1..=5; the deadline is shared.
    pub attempts: usize,
}

impl Default for ResolverConfig {
    /// The seed's values (§6.1: cache 300 s, negative 60 s) and hickory's
    /// resolv.conf-like timeout and attempts.
    fn default() -> Self {
        ResolverConfig {
            static_hosts: HashMap::new(),
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(60),
            nameservers: None,
            max_cache_entries: 10_000,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Where an answer came from, for the audit trail and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolveSource {
    Static,
    Cache,
    Dns,
}

impl ResolveSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveSource::Static => "static",
            ResolveSource::Cache => "cache",
            ResolveSource::Dns => "dns",
        }
    }
}

/// The addresses a name resolved to, IPv4 first, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: Arc<[IpAddr]>,
    pub source: ResolveSource,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "'{host}' does not resolve (no such name, or no A/AAAA records); check the spelling, \
         or map the name in dns.static_hosts"
    )]
    NotFound { host: String },
    #[error("resolving '{host}' timed out: the gateway's DNS servers did not answer; try again later")]
    Timeout { host: String },
    #[error("resolving '{host}' failed: {message}")]
    Failed { host: String, message: String },
    /// The resolver itself could not be built from its configuration.
    #[error("the DNS resolver could not be set up: {message}; fix the dns section of the config")]
    Setup { message: String },
}

type Shared = Arc<OnceCell<Result<Resolved, ResolveError>>>;

/// Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Resolver {
    static_hosts: HashMap<String, Arc<[IpAddr]>>,
    cache: Mutex<AnswerCache>,
    /// One shared lookup per uncached name, so a burst of requests for the
    /// same new name sends one query, not one per request.
    in_flight: Mutex<HashMap<String, Shared>>,
    dns: TokioResolver,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    timeout: Duration,
    /// Lookups handed to hickory, so tests can see coalescing at our layer
    /// (hickory also merges identical queries on the wire).
    #[cfg(test)]
    lookups_started: std::sync::atomic::AtomicUsize,
}

impl Resolver {
    pub fn new(cfg: ResolverConfig) -> Result<Self, ResolveError> {
        if cfg.timeout.is_zero() {
            return Err(setup("dns timeout must be greater than zero"));
        }
        if !(1..=MAX_ATTEMPTS).contains(&cfg.attempts) {
            return Err(setup(format!("dns attempts must be between 1 and {MAX_ATTEMPTS}")));
        }
        let mut static_hosts = HashMap::with_capacity(cfg.static_hosts.len());
        for (name, ip) in &cfg.static_hosts {
            let name = normalize_domain(name).map_err(|e| setup(format!("static host {e}")))?;
            static_hosts.insert(name, Arc::from([*ip]));
        }
        Ok(Resolver {
            static_hosts,
            cache: Mutex::new(AnswerCache::new(cfg.max_cache_entries)),
            in_flight: Mutex::new(HashMap::new()),
            dns: build_hickory(&cfg)?,
            cache_ttl: cfg.cache_ttl,
            negative_cache_ttl: cfg.negative_cache_ttl,
            timeout: cfg.timeout,
            #[cfg(test)]
            lookups_started: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Resolves a normalized domain (see [`super::parse_host`]); IP literals
    /// never come here.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, ResolveError> {
        if let Some(addrs) = self.static_hosts.get(host) {
            return Ok(Resolved {
                addrs: addrs.clone(),
                source: ResolveSource::Static,
            });
        }
        if let Some(hit) = self.cached(host) {
            return hit;
        }
        // The guard holds our only reference, which its drop relies on.
        let joined = LeaveInFlight {
            in_flight: &self.in_flight,
            host,
            shared: self.join_in_flight(host),
        };
        joined
            .shared
            .get_or_init(|| self.lookup_and_remember(host))
            .await
            .clone()
    }

    /// Whether the operator pinned this name; such names may point at
    /// internal addresses on purpose.
    pub fn is_static(&self, host: &str) -> bool {
        self.static_hosts.contains_key(host)
    }

    /// Names currently cached (positive and negative), for metrics.
    pub fn cached_entries(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Shared lookups still registered; zero whenever nothing is resolving.
    #[cfg(test)]
    pub(super) fn in_flight_len(&self) -> usize {
        lock(&self.in_flight).len()
    }

    #[cfg(test)]
    pub(super) fn lookups_started(&self) -> usize {
        self.lookups_started.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cached(&self, host: &str) -> Option<Result<Resolved, ResolveError>> {
        let answer = lock(&self.cache).get(host, Instant::now())?;
        Some(match answer {
            CachedAnswer::Found(addrs) => Ok(Resolved {
                addrs,
                source: ResolveSource::Cache,
            }),
            CachedAnswer::NotFound => Err(not_found(host)),
        })
    }

    fn join_in_flight(&self, host: &str) -> Shared {
        lock(&self.in_flight).entry(host.to_string()).or_default().clone()
    }

    async fn lookup_and_remember(&self, host: &str) -> Result<Resolved, ResolveError> {
        // A lookup that finished between our cache check and joining may
        // already have stored the answer.
        if let Some(hit) = self.cached(host) {
            return hit;
        }
        let outcome = self.query(host).await;
        let now = Instant::now();
        match &outcome {
            Ok((addrs, valid_until)) => {
                let ttl = valid_until.saturating_duration_since(now).min(self.cache_ttl);
                let answer = CachedAnswer::Found(addrs.clone());
                lock(&self.cache).insert(host, answer, ttl, now);
            }
            Err(ResolveError::NotFound { .. }) => {
                let ttl = self.negative_cache_ttl;
                lock(&self.cache).insert(host, CachedAnswer::NotFound, ttl, now);
            }
            // Timeouts and server failures are transient: the next request
            // should try again rather than be refused from the cache.
            Err(_) => {}
        }
        outcome.map(|(addrs, _)| Resolved {
            addrs,
            source: ResolveSource::Dns,
        })
    }

    /// One DNS resolution: the addresses and when the records expire.
    async fn query(&self, host: &str) -> Result<(Arc<[IpAddr]>, Instant), ResolveError> {
        if host.is_empty() {
            return Err(failed(host, "the name is empty"));
        }
        // Fully qualified: search domains would turn `api.example.com` into
        // `api.example.com.<cluster suffix>` first, resolving a name the
        // policy never checked.
        let name = Name::from_ascii(format!("{host}.")).map_err(|e| failed(host, e))?;
        #[cfg(test)]
        self.lookups_started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let lookup = match tokio::time::timeout(self.timeout, self.dns.lookup_ip(name)).await {
            Err(_) => return Err(timed_out(host)),
            Ok(Err(e)) => return Err(from_net_error(host, &e)),
            Ok(Ok(lookup)) => lookup,
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        if addrs.is_empty() {
            return Err(not_found(host));
        }
        tracing::debug!(host, count = addrs.len(), "resolved");
        Ok((Arc::from(addrs), lookup.valid_until()))
    }
}

/// Removes the shared lookup once its answer is in (it is in the cache by
/// then) or when the last waiter gives up, so cancelled requests cannot leave
/// entries behind.
struct LeaveInFlight<'a> {
    in_flight: &'a Mutex<HashMap<String, Shared>>,
    host: &'a str,
    shared: Shared,
}

impl Drop for LeaveInFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(self.in_flight);
        let Some(current) = in_flight.get(self.host) else {
            return;
        };
        // Clones are only made under this lock, so the count is exact: the
        // map's reference plus ours means nobody else is waiting.
        let last_waiter = Arc::strong_count(&self.shared) <= 2;
        if Arc::ptr_eq(current, &self.shared) && (self.shared.initialized() || last_waiter) {
            in_flight.remove(self.host);
        }
    }
}

fn build_hickory(cfg: &ResolverConfig) -> Result<TokioResolver, ResolveError> {
    let mut builder = match &cfg.nameservers {
        None => {
            TokioResolver::builder_tokio().map_err(|e| setup(format!("reading the system DNS configuration: {e}")))?
        }
        Some(servers) if servers.is_empty() => {
            return Err(setup("dns nameservers is empty; omit it to use /etc/resolv.conf"));
        }
        Some(servers) => {
            let servers = servers.iter().map(|addr| nameserver(*addr)).collect();
            TokioResolver::builder_with_config(
                HickoryConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    // /etc/hosts is the host's business; the gateway's pinned names are
    // dns.static_hosts, visible in its own config.
    opts.use_hosts_file = ResolveHosts::Never;
    // A first: egress is often IPv4-only, and callers dial in order.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.attempts = cfg.attempts;
    // The per-try timeout shares the overall deadline, which
    // `tokio::time::timeout` enforces regardless.
    opts.timeout = cfg.timeout / cfg.attempts as u32;
    builder
        .build()
        .map_err(|e| setup(format!("building the resolver: {e}")))
}

fn nameserver(addr: SocketAddr) -> NameServerConfig {
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    server
}

fn from_net_error(host: &str, err: &NetError) -> ResolveError {
    match err {
        NetError::Timeout => timed_out(host),
        NetError::Dns(DnsError::NoRecordsFound(no_records))
            if matches!(no_records.response_code, ResponseCode::NXDomain | ResponseCode::NoError) =>
        {
            not_found(host)
        }
        other => failed(host, other),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent at every await-free step, so a panic
    // elsewhere does not make them unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(host: &str) -> ResolveError {
    ResolveError::NotFound { host: host.to_string() }
}

fn timed_out(host: &str) -> ResolveError {
    ResolveError::Timeout { host: host.to_string() }
}

fn failed(host: &str, err: impl std::fmt::Display) -> ResolveError {
    let mut message = err.to_string();
    if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    ResolveError::Failed {
        host: host.to_string(),
        message,
    }
}

fn setup(message: impl Into<String>) -> ResolveError {
    ResolveError::Setup {
        message: message.into(),
    }
}
