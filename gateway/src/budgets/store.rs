//! Where budget counters live: in memory for a standalone gateway, in a
//! NATS KV bucket when replicas share them. Every change is a
//! compare-and-set on the counter's revision, so two replicas reserving at
//! once cannot both take the last of a budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

/// The KV bucket every replica shares.
pub const BUCKET: &str = "clawgress-budgets";
/// Counters outlive the longest window (a month) and then expire.
const MAX_AGE: Duration = Duration::from_secs(35 * 24 * 3600);
/// Compare-and-set attempts before giving up; contention this high means
/// hundreds of replicas on one key in the same instant.
const MAX_ATTEMPTS: usize = 64;

/// One budget window's counts. Cost in micro-dollars: integers add up
/// exactly, across replicas, in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub tokens_spent: u64,
    pub tokens_reserved: u64,
    pub micros_spent: u64,
    pub micros_reserved: u64,
    /// When throttle mode last let a request past the budget (ms since epoch).
    pub throttled_at_ms: i64,
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

pub enum BudgetStore {
    /// Counter and the end of its window (ms since epoch).
    Memory(Mutex<HashMap<String, (Counter, i64)>>),
    Nats {
        url: String,
        // Boxed: the store handle is large and there is one per gateway.
        kv: Box<tokio::sync::OnceCell<kv::Store>>,
    },
}

impl BudgetStore {
    pub fn memory() -> Self {
        BudgetStore::Memory(Mutex::new(HashMap::new()))
    }

    pub fn nats(url: &str) -> Self {
        BudgetStore::Nats {
            url: url.to_string(),
            kv: Box::new(tokio::sync::OnceCell::new()),
        }
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
        match self {
            BudgetStore::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let current = map.get(key).map(|(counter, _)| *counter).unwrap_or_default();
                Ok(match change(current) {
                    Ok((next, value)) => {
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
            BudgetStore::Nats { url, kv } => {
                let kv = kv
                    .get_or_try_init(|| open(url))
                    .await
                    .map_err(StoreError::Unavailable)?;
                for _ in 0..MAX_ATTEMPTS {
                    let entry = kv
                        .entry(key)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    let (current, revision) = match &entry {
                        Some(entry) if entry.operation == kv::Operation::Put => (
                            serde_json::from_slice(&entry.value).unwrap_or_default(),
                            Some(entry.revision),
                        ),
                        Some(entry) => (Counter::default(), Some(entry.revision)),
                        None => (Counter::default(), None),
                    };
                    let (next, value) = match change(current) {
                        Ok(done) => done,
                        Err(value) => return Ok(Err(value)),
                    };
                    let bytes = serde_json::to_vec(&next).unwrap_or_default();
                    let written = match revision {
                        Some(revision) => kv
                            .update(key, bytes.into(), revision)
                            .await
                            .map(|_| ())
                            .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
                        None => kv
                            .create(key, bytes.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
                    };
                    match written {
                        Ok(()) => return Ok(Ok(value)),
                        // Another replica wrote first: read again and retry.
                        Err((true, _)) => continue,
                        Err((false, why)) => return Err(StoreError::Unavailable(why)),
                    }
                }
                Err(StoreError::Contended)
            }
        }
    }

    /// The counter at `key` (tests and the admin view).
    pub async fn read(&self, key: &str) -> Result<Counter, StoreError> {
        self.update(key, 0, Err)
            .await
            .map(|read| read.unwrap_or_else(|counter| counter))
    }
}

async fn open(url: &str) -> Result<kv::Store, String> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-gateway-budgets")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e}",
                crate::control::store::redacted(url)
            )
        })?;
    let js = jetstream::new(client);
    match js.get_key_value(BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.to_string(),
                description: "Clawgress token and cost budget counters".to_string(),
                history: 1,
                max_age: MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open the KV bucket {BUCKET}: {e}")),
    }
}
