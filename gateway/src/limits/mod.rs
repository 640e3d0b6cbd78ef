//! Rate limits (seed §3): one GCRA limiter per agent, per project, per
//! destination domain and one for the whole gateway, checked together on
//! every request.
//!
//! | module | job |
//! |---|---|
//! | `gcra` | the algorithm: one theoretical arrival time (TAT) per key |
//! | `keyed` | sharded, bounded per-key TAT tables |
//! | `throttle` | `delay`, `queue` and `reject` over a refusal |
//! | `verdict` | the answer and its `RateLimit-*` / `Retry-After` headers |
//! | `clock` | the time source, replaceable in tests |
//!
//! The GCRA is implemented here rather than with `governor` because a
//! request must be counted by all four limiters or by none: governor can only
//! test-and-count one limiter at a time, so a request refused by the domain
//! limiter would already have spent the agent's capacity. Here the three
//! keyed shards are locked together (always agent, project, domain, so two
//! checks never deadlock), all four are tested, and only then does one
//! compare-and-swap count the global limiter and the three stores follow.
//!
//! Policy reload: [`Limits::new`] starts from empty state (every key gets its
//! burst again). [`Limits::reconfigured`] keeps the TATs and queues and only
//! swaps the rates: a TAT is a point in time, so it stays meaningful under
//! new rates; a key in debt waits at most as long as the old rates would
//! have made it wait, and never gets more than the new burst.

mod clock;
mod gcra;
mod keyed;
mod throttle;
mod verdict;

use std::cmp::Reverse;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clawgress_policies::model::{RateLimits, ThrottleAction};
use clawgress_policies::values::Rate;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use gcra::domain_burst;
pub use verdict::{LimitVerdict, RateLimited, Scope, ceil_secs};

use gcra::{Gcra, Outcome, nanos};
use keyed::TatTable;
use throttle::Queues;

#[cfg(test)]
mod tests;

/// Who is asking for what: the keys of the four limiters for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitKey<'a> {
    pub agent: &'a str,
    pub project: &'a str,
    /// The destination host (the domain limiter's key).
    pub domain: &'a str,
    /// The matched rule's `rate_limit` (already capped at
    /// `per_domain.max`); `None` uses `per_domain.default`.
    pub domain_rate: Option<Rate>,
}

impl LimitKey<'_> {
    fn key(&self, scope: Scope) -> &str {
        match scope {
            Scope::Agent => self.agent,
            Scope::Project => self.project,
            Scope::Domain => self.domain,
            Scope::Global => "",
        }
    }
}

/// Sizes of the limiter state; the defaults suit a production gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Most keys held per scope (agents, projects, domains). Past it the key
    /// closest to idle is forgotten and comes back with its burst.
    pub max_keys: usize,
    /// Locks per scope table (rounded up to a power of two).
    pub shards: usize,
    /// Most requests waiting in one `queue` FIFO, the one at its head included.
    pub queue_depth: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_keys: 65_536,
            shards: 64,
            queue_depth: 64,
        }
    }
}

/// The rates in force, from `rate_limits:`.
#[derive(Debug, Clone, Copy)]
struct Config {
    agent: Gcra,
    project: Gcra,
    domain_default: Gcra,
    global: Gcra,
    throttle_action: ThrottleAction,
    throttle_delay: Duration,
}

impl Config {
    fn new(limits: &RateLimits) -> Self {
        let domain = limits.per_domain.default;
        Config {
            agent: Gcra::new(limits.per_agent.default, limits.per_agent.burst),
            project: Gcra::new(limits.per_project.default, limits.per_project.burst),
            domain_default: Gcra::new(domain, domain_burst(domain)),
            global: Gcra::new(limits.global.default, limits.global.burst),
            throttle_action: limits.throttle_action,
            throttle_delay: Duration::from_millis(limits.throttle_delay_ms),
        }
    }

    fn gcra(&self, scope: Scope, key: &LimitKey<'_>) -> Gcra {
        match scope {
            Scope::Agent => self.agent,
            Scope::Project => self.project,
            Scope::Domain => key
                .domain_rate
                .map_or(self.domain_default, |rate| Gcra::new(rate, domain_burst(rate))),
            Scope::Global => self.global,
        }
    }
}

/// Limiter state shared by a [`Limits`] and its reconfigured successors.
struct State {
    /// Agents, projects and domains, indexed by [`Scope::index`].
    keyed: [TatTable; 3],
    global: AtomicU64,
    queues: Queues,
}

/// The gateway's rate limiters. Cheap to share (`Arc<Limits>`); every method
/// takes `&self` and is safe to call from every worker thread at once.
pub struct Limits {
    config: Config,
    state: Arc<State>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// Limiters for `limits` with default sizes on the system clock, all keys fresh.
    pub fn new(limits: &RateLimits) -> Self {
        Self::with_clock(limits, Tuning::default(), Arc::new(SystemClock::new()))
    }

    pub fn with_clock(limits: &RateLimits, tuning: Tuning, clock: Arc<dyn Clock>) -> Self {
        let table = || TatTable::new(tuning.max_keys, tuning.shards);
        Limits {
            config: Config::new(limits),
            state: Arc::new(State {
                keyed: [table(), table(), table()],
                global: AtomicU64::new(0),
                queues: Queues::new(tuning.shards, tuning.queue_depth),
            }),
            clock,
        }
    }

    /// New rates over the same state, for a policy reload that should not
    /// hand every agent a fresh burst.
    pub fn reconfigured(&self, limits: &RateLimits) -> Self {
        Limits {
            config: Config::new(limits),
            state: self.state.clone(),
            clock: self.clock.clone(),
        }
    }

    /// `rate_limits.throttle_action`, for callers of [`Limits::acquire`].
    pub fn throttle_action(&self) -> ThrottleAction {
        self.config.throttle_action
    }

    /// Checks the request against all four limiters and counts it against
    /// all of them if, and only if, every one lets it through.
    pub fn check(&self, key: &LimitKey<'_>) -> LimitVerdict {
        self.evaluate(key, true)
    }

    /// What [`Limits::check`] would answer, counting nothing.
    fn peek(&self, key: &LimitKey<'_>) -> LimitVerdict {
        self.evaluate(key, false)
    }

    fn evaluate(&self, key: &LimitKey<'_>, count: bool) -> LimitVerdict {
        let now = nanos(self.clock.now());
        let [agents, projects, domains] = &self.state.keyed;
        // Locked in this fixed order by every caller; held until the stores
        // below so nothing changes between test and count.
        let mut shards = [
            agents.lock(key.agent),
            projects.lock(key.project),
            domains.lock(key.domain),
        ];
        let mut outcomes = [Outcome::Fail { retry_after: 0 }; 4];
        let mut gcras = [self.config.global; 4];
        for (scope, shard) in Scope::ALL.into_iter().zip(&shards) {
            gcras[scope.index()] = self.config.gcra(scope, key);
            outcomes[scope.index()] = gcras[scope.index()].test(shard.tat(key.key(scope)), now);
        }
        let keyed_pass = outcomes[..3].iter().all(|o| matches!(o, Outcome::Pass { .. }));
        outcomes[Scope::Global.index()] = self.test_global(now, count && keyed_pass);
        if count && matches!(outcomes[Scope::Global.index()], Outcome::Pass { .. }) && keyed_pass {
            for (scope, shard) in Scope::ALL.into_iter().zip(&mut shards) {
                if let Outcome::Pass { tat, .. } = outcomes[scope.index()] {
                    shard.store(key.key(scope), tat, now);
                }
            }
        }
        drop(shards);
        verdict(&gcras, &outcomes)
    }

    /// Tests the global limiter and, when `count`, counts the request in the
    /// same compare-and-swap, so concurrent checks never both take its last slot.
    fn test_global(&self, now: u64, count: bool) -> Outcome {
        let gcra = self.config.global;
        let mut tat = self.state.global.load(Ordering::Acquire);
        loop {
            let outcome = gcra.test(tat, now);
            let Outcome::Pass { tat: next, .. } = outcome else {
                return outcome;
            };
            if !count {
                return outcome;
            }
            match self
                .state
                .global
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return outcome,
                Err(current) => tat = current,
            }
        }
    }

    /// Forgets keys that have their whole burst back. Call it periodically
    /// (every few seconds); it locks one shard at a time.
    pub fn retain_recent(&self) {
        let now = nanos(self.clock.now());
        for table in &self.state.keyed {
            table.retain_recent(now);
        }
    }

    /// Keys currently held for `scope` (always 1 for [`Scope::Global`]).
    pub fn key_count(&self, scope: Scope) -> usize {
        match scope {
            Scope::Global => 1,
            keyed => self.state.keyed[keyed.index()].len(),
        }
    }
}

/// One verdict from the four outcomes: the refusal with the longest wait
/// (the request passes only once that limiter does), or else the pass with
/// the least room left. Ties go to the narrower scope.
fn verdict(gcras: &[Gcra; 4], outcomes: &[Outcome; 4]) -> LimitVerdict {
    let mut refusal: Option<(Scope, u64)> = None;
    // (scope, remaining, reset_after); any real pass has less than u32::MAX left.
    let mut tightest = (Scope::Global, u32::MAX, 0);
    for scope in Scope::ALL {
        match outcomes[scope.index()] {
            Outcome::Fail { retry_after } => {
                if refusal.is_none_or(|(_, longest)| retry_after > longest) {
                    refusal = Some((scope, retry_after));
                }
            }
            Outcome::Pass {
                remaining, reset_after, ..
            } => {
                if (remaining, Reverse(reset_after)) < (tightest.1, Reverse(tightest.2)) {
                    tightest = (scope, remaining, reset_after);
                }
            }
        }
    }
    match refusal {
        Some((scope, retry_after)) => {
            let gcra = gcras[scope.index()];
            LimitVerdict::Limited(RateLimited {
                scope,
                limit: gcra.limit,
                window: gcra.window,
                retry_after: Duration::from_nanos(retry_after),
            })
        }
        None => LimitVerdict::Allow {
            remaining: tightest.1,
            limit: gcras[tightest.0.index()].limit,
            reset_after: Duration::from_nanos(tightest.2),
        },
    }
}
