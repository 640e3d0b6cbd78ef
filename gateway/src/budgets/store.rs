//! Where budget counters live: in memory for a standalone gateway, in a
//! NATS KV bucket when replicas share them. Every change is a
//! compare-and-set on the counter's revision, so two replicas reserving at
//! once cannot both take the last of a budget. With NATS, replicas take
//! blocks of a budget at a time ([`super::lease`]); a counter carries the
//! blocks each replica holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use clawgress_nats::Replicas;
use serde::{Deserialize, Serialize};

/// The KV bucket every replica shares.
pub const BUCKET: &str = "clawgress-budgets";
/// Counters outlive the longest window (a month) and then expire.
const MAX_AGE: Duration = Duration::from_secs(35 * 24 * 3600);
/// Compare-and-set attempts before giving up; contention this high means
/// hundreds of replicas on one key in the same instant.
const MAX_ATTEMPTS: usize = 64;
/// How long one change waits for the bucket through a failure. On a
/// cluster, `kill -9` of the server that leads the bucket's stream leaves
/// writes unanswered until the others elect a new leader (nats-server's
/// election timeouts are 4–9 s); refusing every AI call meanwhile would
/// turn a survivable one-node outage into one for budgets. Past this the
/// store counts as unreachable and requests are refused (fail closed).
const STORE_WAIT: Duration = Duration::from_secs(12);
/// One JetStream request's timeout: short, so a write lost to the dead
/// leader is retried against the new one soon after it is elected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between attempts after a failure: from the first, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// One budget window's counts. Cost in micro-dollars: integers add up
/// exactly, across replicas, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub tokens_spent: u64,
    pub tokens_reserved: u64,
    pub micros_spent: u64,
    pub micros_reserved: u64,
    /// When throttle mode last let a request past the budget (ms since epoch).
    pub throttled_at_ms: i64,
    /// Blocks of the budget held by replicas, by replica id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leases: BTreeMap<String, Lease>,
}

/// A block of a budget one replica holds: it admits requests from it
/// without asking the store, until it gives it back or it expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub tokens: u64,
    pub micros: u64,
    /// Expiry, ms since the epoch; renewed while the replica is alive.
    pub until_ms: i64,
}

impl Counter {
    /// Tokens in use or held: spent, reserved by single requests, and in
    /// every replica's block.
    pub fn tokens_committed(&self) -> u64 {
        self.tokens_spent + self.tokens_reserved + self.leases.values().map(|l| l.tokens).sum::<u64>()
    }

    pub fn micros_committed(&self) -> u64 {
        self.micros_spent + self.micros_reserved + self.leases.values().map(|l| l.micros).sum::<u64>()
    }

    /// Held in replicas' blocks (for the refusal's "in flight").
    pub fn tokens_leased(&self) -> u64 {
        self.leases.values().map(|l| l.tokens).sum()
    }

    /// Blocks whose replica stopped renewing them (it died, or lost NATS
    /// for longer than a block lives) are charged in full: what it admitted
    /// from them is unknown, and counting it as spent is the answer that
    /// never overspends.
    pub fn expire_leases(&mut self, now_ms: i64) {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.until_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(lease) = self.leases.remove(&id) {
                self.tokens_spent += lease.tokens;
                self.micros_spent += lease.micros;
                tracing::warn!(
                    replica = %id,
                    tokens = lease.tokens,
                    "a budget block expired unreturned (its gateway stopped renewing it); charged in full"
                );
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// NATS is unreachable or the bucket cannot be used.
    Unavailable(String),
    /// Too many replicas raced for the same counter.
    Contended,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "the budget store is unavailable: {why}"),
            StoreError::Contended => f.write_str("the budget counter is too contended"),
        }
    }
}

/// Counters kept in memory before expired windows are swept out.
const SWEEP_AT: usize = 10_000;

/// Writes to the store and how many lost a compare-and-set race.
#[derive(Debug, Default)]
pub struct CasStats {
    pub writes: AtomicU64,
    pub conflicts: AtomicU64,
}

pub struct BudgetStore {
    backend: Backend,
    /// Blocks held by this replica (NATS only, unless asked for).
    pub(super) leases: Option<super::lease::Leases>,
    pub stats: CasStats,
}

enum Backend {
    /// Counter and the end of its window (ms since epoch).
    Memory(std::sync::Arc<Mutex<HashMap<String, (Counter, i64)>>>),
    Nats {
        url: String,
        replicas: Replicas,
        // Boxed: the store handle is large and there is one per gateway.
        kv: Box<tokio::sync::OnceCell<kv::Store>>,
    },
}

impl BudgetStore {
    pub fn memory() -> Self {
        BudgetStore {
            backend: Backend::Memory(Default::default()),
            leases: None,
            stats: CasStats::default(),
        }
    }

    /// Counters in the bucket on `url` (created with `replicas` copies when
    /// missing), admitted from leased blocks.
    pub fn nats(url: &str, replicas: Replicas) -> Self {
        BudgetStore {
            backend: Backend::Nats {
                url: url.to_string(),
                replicas,
                kv: Box::new(tokio::sync::OnceCell::new()),
            },
            leases: Some(super::lease::Leases::new(super::lease::replica_id())),
            stats: CasStats::default(),
        }
    }

    /// Every request a compare-and-set of its own (no blocks): the
    /// behaviour before leases, kept for comparison (`bench-budgets`).
    pub fn without_leases(mut self) -> Self {
        self.leases = None;
        self
    }

    /// Blocks for this store too, held as `replica` (tests: several
    /// replicas on one in-memory store).
    pub fn with_leases(mut self, replica: &str) -> Self {
        self.leases = Some(super::lease::Leases::new(replica.to_string()));
        self
    }

    /// Another replica on the same in-memory counters, with blocks of its
    /// own (tests).
    #[cfg(test)]
    pub(crate) fn another_replica(&self, replica: &str) -> BudgetStore {
        let Backend::Memory(map) = &self.backend else {
            panic!("only in-memory stores are shared in tests")
        };
        BudgetStore {
            backend: Backend::Memory(map.clone()),
            leases: None,
            stats: CasStats::default(),
        }
        .with_leases(replica)
    }

    pub fn leases(&self) -> bool {
        self.leases.is_some()
    }

    /// Opens the bucket now (from the caller's runtime, so the connection
    /// lives there), when there is one.
    pub async fn connect(&self) -> Result<(), StoreError> {
        if let Backend::Nats { url, replicas, kv } = &self.backend {
            kv.get_or_try_init(|| open(url, *replicas))
                .await
                .map_err(StoreError::Unavailable)?;
        }
        Ok(())
    }

    /// Applies `change` to the counter at `key` atomically. `change` sees
    /// the current counter and returns the new one, or `Err` to leave it
    /// as it is; it may run several times under contention.
    pub async fn update<T>(
        &self,
        key: &str,
        window_end_ms: i64,
        mut change: impl FnMut(Counter) -> Result<(Counter, T), T>,
    ) -> Result<Result<T, T>, StoreError> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let current = map.get(key).map(|(counter, _)| counter.clone()).unwrap_or_default();
                Ok(match change(current) {
                    Ok((next, value)) => {
                        self.stats.writes.fetch_add(1, Ordering::Relaxed);
                        if map.len() >= SWEEP_AT {
                            let now = chrono::Utc::now().timestamp_millis();
                            map.retain(|_, (_, end)| *end > now);
                        }
                        map.insert(key.to_string(), (next, window_end_ms));
                        Ok(value)
                    }
                    Err(value) => Err(value),
                })
            }
            Backend::Nats { url, replicas, kv } => {
                let kv = kv
                    .get_or_try_init(|| open(url, *replicas))
                    .await
                    .map_err(StoreError::Unavailable)?;
                let started = tokio::time::Instant::now();
                let mut pause = RETRY_FIRST;
                let mut conflicts = 0;
                // A failure is retried (re-read, recomputed) until
                // `STORE_WAIT`. A write that timed out may still have
                // landed; the retry then applies the change on top of it
                // again, which only ever counts more as used or reserved:
                // the budget errs towards refusing, never overspending.
                let mut failed = |why: String| {
                    let waited = started.elapsed();
                    if waited + pause > STORE_WAIT {
                        return Err(StoreError::Unavailable(format!("{why} (retried for {waited:.1?})")));
                    }
                    tracing::debug!(%key, error = %why, ?waited, "budget store not answering; retrying");
                    let wait = pause;
                    pause = (pause * 2).min(RETRY_MAX);
                    Ok(wait)
                };
                while conflicts < MAX_ATTEMPTS {
                    let (current, revision) = match latest(kv, key).await {
                        Ok(found) => found,
                        Err(error) => {
                            tokio::time::sleep(failed(error)?).await;
                            continue;
                        }
                    };
                    let (next, value) = match change(current) {
                        Ok(done) => done,
                        Err(value) => return Ok(Err(value)),
                    };
                    let bytes = serde_json::to_vec(&next).unwrap_or_default();
                    self.stats.writes.fetch_add(1, Ordering::Relaxed);
                    // Revision 0 for a new key: "no message on this subject
                    // yet", so a lost race to create is a wrong revision too
                    // (`kv.create` re-reads through a replica and can report
                    // it as some other failure).
                    let written = kv
                        .update(key, bytes.into(), revision.unwrap_or(0))
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string()));
                    match written {
                        Ok(()) => return Ok(Ok(value)),
                        // Another replica wrote first: read again and retry.
                        Err((true, _)) => {
                            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            conflicts += 1;
                            continue;
                        }
                        Err((false, why)) => tokio::time::sleep(failed(why)?).await,
                    }
                }
                Err(StoreError::Contended)
            }
        }
    }

    /// Keeps this replica's blocks until `stop`: usage written back, blocks
    /// renewed, idle ones given back ([`super::lease::TICK`]). Also opens
    /// the bucket from this task's runtime, so the NATS connection lives on
    /// it rather than on whichever proxy worker asks first.
    pub async fn maintain(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(leases) = &self.leases else { return };
        let mut tick = tokio::time::interval(super::lease::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.connect().await.is_ok() {
                        leases.tend(&self).await;
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Gives this replica's blocks back (at shutdown).
    pub async fn release(&self) {
        if let Some(leases) = &self.leases {
            leases.release_all(self).await;
        }
    }

    /// The counter at `key` (tests and the admin view).
    pub async fn read(&self, key: &str) -> Result<Counter, StoreError> {
        self.update(key, 0, Err)
            .await
            .map(|read| read.unwrap_or_else(|counter| counter))
    }
}

/// The counter at `key` and its revision, read from the bucket's stream
/// leader. Not `kv.entry`: on a replicated bucket that is a direct get
/// answered by any replica, and a follower that lags (as one does while a
/// server rejoins, or under load) returns an older revision; every
/// compare-and-set on it then fails, and under a burst the retries ran out
/// and refused the requests as if the store were down.
async fn latest(kv: &kv::Store, key: &str) -> Result<(Counter, Option<u64>), String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match kv
        .stream
        .get_last_raw_message_by_subject(&format!("{}{key}", kv.prefix))
        .await
    {
        Ok(message) => {
            let removed = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            let counter = if removed {
                Counter::default()
            } else {
                serde_json::from_slice(&message.payload).unwrap_or_default()
            };
            Ok((counter, Some(message.sequence)))
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((Counter::default(), None)),
        Err(error) => Err(format!("cannot read {key}: {error}")),
    }
}

async fn open(url: &str, replicas: Replicas) -> Result<kv::Store, String> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-gateway-budgets")
        .connection_timeout(Duration::from_secs(5))
        .connect(clawgress_nats::servers(url))
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e}",
                crate::control::store::redacted(url)
            )
        })?;
    let replicas = replicas.resolve(&client);
    let mut js = jetstream::new(client);
    js.set_timeout(REQUEST_TIMEOUT);
    clawgress_nats::open_bucket(
        &js,
        kv::Config {
            bucket: BUCKET.to_string(),
            description: "Clawgress token and cost budget counters".to_string(),
            history: 1,
            max_age: MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
}
