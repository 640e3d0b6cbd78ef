//! The breakers of all destinations: a sharded map from domain to breaker,
//! created on first use and bounded in number.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use clawgress_policies::model::CircuitBreaker;

use super::clock::{Clock, SystemClock};
use super::machine::{Machine, Outcome};
use super::rules::Rules;
use super::{BreakerOpen, BreakerState};

/// Breakers kept at most by [`Breakers::new`]: far above any real allowlist,
/// yet a few MB at worst.
pub const DEFAULT_MAX_DOMAINS: usize = 10_000;

/// The key of the single breaker used when `per_domain: false`.
pub const ALL_DOMAINS: &str = "*";

/// Independent locks, so threads working on different domains rarely meet.
const SHARDS: usize = 16;

type Breaker = Arc<Mutex<Machine>>;
type Shard = RwLock<HashMap<String, Breaker>>;

/// What tickets need after `admit` returned: shared so a ticket can outlive
/// the borrow of [`Breakers`].
#[derive(Debug)]
struct Core {
    rules: Rules,
    clock: Arc<dyn Clock>,
}

/// The circuit breakers of every destination domain (seed §5.3). Shared by
/// all worker threads; `admit` on a known domain takes one shard read lock
/// and one short per-domain lock, and nothing is held while the request runs.
pub struct Breakers {
    core: Arc<Core>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Breakers in all shards; reserved before an insert so the cap is exact.
    tracked: AtomicUsize,
    max_domains: usize,
    /// One eviction sweep at a time; the others wait and reuse its result.
    sweeping: Mutex<()>,
}

impl Breakers {
    pub fn new(cfg: &CircuitBreaker) -> Self {
        Breakers::with_clock(cfg, Arc::new(SystemClock))
    }

    pub fn with_clock(cfg: &CircuitBreaker, clock: Arc<dyn Clock>) -> Self {
        let rules = Rules::new(cfg, clock.now());
        Breakers {
            core: Arc::new(Core { rules, clock }),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
            tracked: AtomicUsize::new(0),
            max_domains: DEFAULT_MAX_DOMAINS,
            sweeping: Mutex::new(()),
        }
    }

    /// Keep at most `max_domains` breakers (at least 1).
    pub fn with_max_domains(mut self, max_domains: usize) -> Self {
        self.max_domains = max_domains.max(1);
        self
    }

    /// Lets a request to `domain` through, or refuses it fast while the
    /// domain's breaker is open (or half-open with every probe slot taken).
    ///
    /// When the cap is reached and no breaker can be evicted (all open,
    /// half-open or busy), the request passes untracked: the cap bounds
    /// memory, and a breaker protects upstreams rather than enforcing policy.
    pub fn admit(&self, domain: &str) -> Result<Ticket, BreakerOpen> {
        let key = self.key(domain);
        let now = self.core.clock.now();
        let shard = &self.shards[self.shard_of(&key)];
        if let Some(breaker) = read(shard).get(key.as_ref()) {
            return self.admit_on(breaker, now);
        }
        for attempt in 0..2 {
            let mut map = write(shard);
            if let Some(breaker) = map.get(key.as_ref()) {
                return self.admit_on(breaker, now);
            }
            if self.reserve() {
                let breaker = map
                    .entry(key.into_owned())
                    .or_insert_with(|| Arc::new(Mutex::new(Machine::new(now))));
                // Admitted before the shard lock is released, so a sweep can
                // never evict the new breaker between insert and admit.
                return self.admit_on(breaker, now);
            }
            drop(map);
            if attempt == 0 {
                self.make_room(now);
            }
        }
        Ok(Ticket { held: None })
    }

    /// Every tracked breaker and its state now, sorted by domain.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let now = self.core.clock.now();
        let mut states = Vec::new();
        for shard in self.shards.iter() {
            for (domain, breaker) in read(shard).iter() {
                states.push((domain.clone(), lock(breaker).state(&self.core.rules, now)));
            }
        }
        states.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// The state of `domain`'s breaker, `None` when it has none (never used,
    /// or evicted while closed and idle, which is the same as closed).
    pub fn state(&self, domain: &str) -> Option<BreakerState> {
        let key = self.key(domain);
        let now = self.core.clock.now();
        let map = read(&self.shards[self.shard_of(&key)]);
        map.get(key.as_ref())
            .map(|breaker| lock(breaker).state(&self.core.rules, now))
    }

    /// Whether an upstream answering `status` failed, per
    /// `failure_status_codes` (default 502, 503, 504).
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.core.rules.is_failure_status(status)
    }

    /// Breakers currently kept.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::SeqCst)
    }

    fn admit_on(&self, breaker: &Breaker, now: Instant) -> Result<Ticket, BreakerOpen> {
        let generation = lock(breaker).admit(&self.core.rules, now)?;
        Ok(Ticket {
            held: Some(Held {
                core: self.core.clone(),
                breaker: breaker.clone(),
                generation,
            }),
        })
    }

    /// Host names are case-insensitive and may carry the root's trailing dot;
    /// both spellings must land on one breaker.
    fn key<'a>(&self, domain: &'a str) -> Cow<'a, str> {
        if !self.core.rules.per_domain {
            return Cow::Borrowed(ALL_DOMAINS);
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(domain.to_ascii_lowercase())
        } else {
            Cow::Borrowed(domain)
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn reserve(&self) -> bool {
        self.tracked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_domains).then_some(n + 1)
            })
            .is_ok()
    }

    /// Evicts closed, idle breakers down to 90% of the cap, so a flood of new
    /// domains pays for one sweep per tenth of the cap rather than per insert.
    /// Breakers with no outcome in their window go first (nothing is lost),
    /// then the least recently used.
    fn make_room(&self, now: Instant) {
        let _sweep = self.sweeping.lock().unwrap_or_else(PoisonError::into_inner);
        if self.tracked() < self.max_domains {
            return;
        }
        let target = self.max_domains - (self.max_domains / 10).max(1);
        let rules = &self.core.rules;
        let mut candidates = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            for (domain, breaker) in read(shard).iter() {
                let machine = lock(breaker);
                if machine.is_evictable() {
                    let busy = !machine.is_quiet(rules, now);
                    candidates.push((busy, machine.last_activity(), index, domain.clone()));
                }
            }
        }
        candidates.sort_unstable_by_key(|c| (c.0, c.1));
        for (_, _, index, domain) in candidates {
            if self.tracked() <= target {
                break;
            }
            let mut map = write(&self.shards[index]);
            // Re-checked under the write lock: a request may have started
            // since the scan.
            let evictable = map.get(&domain).is_some_and(|breaker| lock(breaker).is_evictable());
            if evictable {
                map.remove(&domain);
                self.tracked.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("rules", &self.core.rules)
            .field("tracked", &self.tracked())
            .field("max_domains", &self.max_domains)
            .finish_non_exhaustive()
    }
}

/// Permission for one request to go upstream. Report its outcome exactly once
/// with [`Ticket::success`] or [`Ticket::failure`]; dropping it unreported
/// counts as neither (and frees a half-open probe slot).
#[must_use = "report the outcome with success() or failure(); dropping the ticket cancels it"]
#[derive(Debug)]
pub struct Ticket {
    /// `None` for a request admitted untracked (the cap was full).
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    core: Arc<Core>,
    breaker: Breaker,
    generation: u64,
}

impl Ticket {
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    pub fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(held) = self.held.take() {
            let now = held.core.clock.now();
            lock(&held.breaker).report(&held.core.rules, now, held.generation, outcome);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

// The machine never panics while locked, so a poisoned lock can only come from
// a panic elsewhere in the holder; its data is still consistent.
fn lock(breaker: &Breaker) -> MutexGuard<'_, Machine> {
    breaker.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read(shard: &Shard) -> RwLockReadGuard<'_, HashMap<String, Breaker>> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashMap<String, Breaker>> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}
