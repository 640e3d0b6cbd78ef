//! The policy as the DNS control server reads it: which names are answered,
//! for how long answers are cached, and the cache itself.
//!
//! A reload builds a new snapshot with an empty cache: cached answers were
//! kept under the old `cache_ttl`, and the decision for each query is taken
//! again anyway (the cache holds what upstream said, never a verdict).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clawgress_policies::matcher::{DenyReason, MatchOutcome};
use clawgress_policies::{CompiledPolicy, PolicyBundle, model};

use super::answer::CachedResponse;
use crate::control::ControlSnapshot;
use crate::dns::cache::AnswerCache;

/// Most question keys (name and type) cached at once.
const MAX_CACHE_ENTRIES: usize = 10_000;

/// The verdict for one name.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum NameVerdict {
    Allowed {
        /// `allowlist.core[0]`, or `control.allow.<id>` for a temporary entry.
        policy_id: Arc<str>,
        /// The rule lets the name point at private addresses.
        private_ok: bool,
        /// `dns.static_hosts` pins the name: answered from the policy.
        pinned: Option<IpAddr>,
    },
    Denied {
        reason: DenyReason,
        policy_id: Arc<str>,
    },
}

pub(super) struct DnsSnapshot {
    compiled: CompiledPolicy,
    pub version: Arc<str>,
    /// `dns.cache_ttl`: the longest TTL handed out, and the longest a
    /// positive answer is kept.
    pub cache_ttl: Duration,
    /// `dns.negative_cache_ttl`: how long NXDOMAIN and NODATA are kept.
    pub negative_ttl: Duration,
    /// `dns.query_logging`: off, routine answers are counted but not
    /// written to the audit trail (refusals and alerts always are).
    pub query_logging: bool,
    egress: model::EgressPolicy,
    cache: Mutex<AnswerCache<Arc<CachedResponse>>>,
}

impl DnsSnapshot {
    /// Reads and checks the bundle at `path`; the error says where and what.
    pub(super) fn load(path: &std::path::Path) -> Result<(DnsSnapshot, PolicyBundle), String> {
        let bundle = clawgress_policies::load_file(path).map_err(|e| e.to_string())?;
        Ok((DnsSnapshot::new(&bundle), bundle))
    }

    pub(super) fn new(bundle: &PolicyBundle) -> DnsSnapshot {
        let dns = &bundle.document.dns;
        DnsSnapshot {
            compiled: CompiledPolicy::compile(bundle),
            version: Arc::from(bundle.version.as_str()),
            cache_ttl: dns.cache_ttl.duration(),
            negative_ttl: dns.negative_cache_ttl.duration(),
            query_logging: dns.query_logging,
            egress: bundle.document.egress.clone(),
            cache: Mutex::new(AnswerCache::new(MAX_CACHE_ENTRIES)),
        }
    }

    /// Block patterns and the blocklist first, then any allow rule, then a
    /// live temporary entry (which never lifts a block).
    pub(super) fn decide(&self, host: &str, now: DateTime<Utc>, control: &ControlSnapshot) -> NameVerdict {
        match self.compiled.evaluate_name(host, now) {
            MatchOutcome::Allow(allowed) => NameVerdict::Allowed {
                policy_id: allowed.policy_id,
                private_ok: allowed.private_ok,
                pinned: self.compiled.static_host(host),
            },
            MatchOutcome::Deny(denial) if denial.reason.is_open_to_temporary() => {
                match control.allows_name(host, now) {
                    Some(entry) => NameVerdict::Allowed {
                        policy_id: Arc::from(format!("control.allow.{}", entry.id)),
                        private_ok: false,
                        pinned: self.compiled.static_host(host),
                    },
                    None => NameVerdict::Denied {
                        reason: denial.reason,
                        policy_id: denial.policy_id,
                    },
                }
            }
            MatchOutcome::Deny(denial) => NameVerdict::Denied {
                reason: denial.reason,
                policy_id: denial.policy_id,
            },
        }
    }

    pub(super) fn reports_only(&self, environment: &str) -> bool {
        self.egress.enforcement_for(environment) == model::Enforcement::Report
    }

    pub(super) fn fails_closed(&self, environment: &str) -> bool {
        self.egress.fail_mode_for(environment) == model::FailMode::Closed
    }

    pub(super) fn cached(&self, key: &str, now: Instant) -> Option<Arc<CachedResponse>> {
        lock(&self.cache).get(key, now)
    }

    pub(super) fn remember(&self, key: &str, response: Arc<CachedResponse>, lifetime: Duration, now: Instant) {
        lock(&self.cache).insert(key, response, lifetime, now);
    }

    pub(super) fn cache_len(&self) -> usize {
        lock(&self.cache).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache is consistent between calls; a panic elsewhere must not
    // take DNS down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
