//! Per-host slots shared by every scheduler, in the NATS KV bucket
//! `clawgress-hosts`: one record per host, holding each scheduler's slots
//! with an expiry, the slots it still wants, and the earliest time of the
//! host's next start.
//!
//! Why KV and not subjects partitioned by host: any scheduler can still
//! take any job (the public `jobs.<type>.<priority>` subjects stay as they
//! are, and nothing has to be re-balanced when a scheduler dies), and the
//! cost is a compare-and-set when a scheduler's share of a host changes,
//! not one per job: a scheduler keeps the slots it holds while it has jobs
//! for the host and gives them back when it has none (or when another
//! scheduler wants its fair share). Holds expire ([`HOLD_TTL`]) unless
//! renewed, so a killed scheduler's slots come back by themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// The bucket every scheduler shares.
pub const BUCKET: &str = "clawgress-hosts";
/// A hold not renewed for this long is gone: a dead scheduler's slots
/// come back after it.
pub const HOLD_TTL: Duration = Duration::from_secs(20);
/// Holds in use are renewed this often (well inside [`HOLD_TTL`], so a few
/// failed renewals during a NATS fail-over do not lose them).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// Records not written for this long are dropped by the bucket (their
/// holds expired long before).
const RECORD_MAX_AGE: Duration = Duration::from_secs(3600);
/// Compare-and-set attempts before an operation gives up for now.
const MAX_ATTEMPTS: usize = 16;

/// One scheduler's share of a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Slots it holds: jobs it may run against the host at once.
    pub slots: u32,
    /// Jobs it has waiting for a slot: holders above their fair share
    /// give slots back when this is not zero.
    #[serde(default)]
    pub wants: u32,
    /// Expiry, ms since the epoch.
    pub until_ms: i64,
}

/// A host's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub holds: BTreeMap<String, Hold>,
    /// No start against the host before this (ms since the epoch): the
    /// politeness gap across schedulers.
    #[serde(default)]
    pub next_start_ms: i64,
}

impl Record {
    /// Drops expired holds and holds of nothing.
    pub fn sweep(&mut self, now_ms: i64) {
        self.holds
            .retain(|_, hold| hold.until_ms > now_ms && (hold.slots > 0 || hold.wants > 0));
    }

    /// Slots held by schedulers other than `me`, live at `now_ms`.
    pub fn held_by_others(&self, me: &str, now_ms: i64) -> u32 {
        self.holds
            .iter()
            .filter(|(id, hold)| id.as_str() != me && hold.until_ms > now_ms)
            .map(|(_, hold)| hold.slots)
            .sum()
    }

    /// Whether another live scheduler waits for a slot here.
    pub fn others_want(&self, me: &str, now_ms: i64) -> bool {
        self.holds
            .iter()
            .any(|(id, hold)| id.as_str() != me && hold.until_ms > now_ms && hold.wants > 0)
    }

    /// `limit` divided among the live schedulers that hold or want slots
    /// (rounded up, at least one).
    pub fn fair_share(&self, me: &str, limit: u32, now_ms: i64) -> u32 {
        let others = self
            .holds
            .iter()
            .filter(|(id, hold)| id.as_str() != me && hold.until_ms > now_ms && (hold.slots > 0 || hold.wants > 0))
            .count() as u32;
        limit.div_ceil(others + 1).max(1)
    }

    /// Sets `me`'s hold as this scheduler counts it (the writer's count is
    /// the truth, so a lost write is corrected by the next).
    pub fn set(&mut self, me: &str, slots: u32, wants: u32, now_ms: i64) {
        self.sweep(now_ms);
        if slots == 0 && wants == 0 {
            self.holds.remove(me);
        } else {
            self.holds.insert(
                me.to_string(),
                Hold {
                    slots,
                    wants,
                    until_ms: now_ms + HOLD_TTL.as_millis() as i64,
                },
            );
        }
    }

    /// One more slot for `me`, which holds `held`, if the live holds leave
    /// room under `limit`; otherwise records that `me` wants `wants`.
    pub fn take(&mut self, me: &str, held: u32, wants: u32, limit: u32, now_ms: i64) -> bool {
        self.sweep(now_ms);
        let room = self.held_by_others(me, now_ms) + held < limit;
        if room {
            self.set(me, held + 1, wants.saturating_sub(1), now_ms);
        } else {
            self.set(me, held, wants.max(1), now_ms);
        }
        room
    }

    /// Reserves the next start: returns how long to wait for it.
    pub fn reserve_start(&mut self, gap: Duration, now_ms: i64) -> Duration {
        let start = self.next_start_ms.max(now_ms);
        self.next_start_ms = start + gap.as_millis() as i64;
        Duration::from_millis((start - now_ms) as u64)
    }
}

/// The KV key of a host: the name itself when the bucket accepts it, else
/// its hex (an IPv6 literal, say).
pub fn key(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let plain = !host.is_empty()
        && !host.starts_with('.')
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.contains("..");
    if plain {
        host
    } else {
        let hex: String = host.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The bucket, this scheduler's id, and what the watch last showed.
pub struct SharedSlots {
    kv: kv::Store,
    /// This scheduler's name in the records.
    pub me: String,
    view: Mutex<HashMap<String, Record>>,
}

impl SharedSlots {
    /// Opens (or creates, with `replicas` copies) the bucket.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<SharedSlots, String> {
        let kv = clawgress_nats::open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_string(),
                description: "Clawgress per-host job slots and politeness, shared by every scheduler".to_string(),
                history: 1,
                max_age: RECORD_MAX_AGE,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let me = format!(
            "sched-{:x}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() & 0xffff_ffff)
        );
        Ok(SharedSlots {
            kv,
            me,
            view: Mutex::new(HashMap::new()),
        })
    }

    /// The host's record as last seen (by the watch or an operation).
    pub fn seen(&self, key: &str) -> Option<Record> {
        self.view.lock().ok()?.get(key).cloned()
    }

    fn remember(&self, key: &str, record: Record) {
        if let Ok(mut view) = self.view.lock() {
            if view.len() > 100_000 {
                let now = now_ms();
                view.retain(|_, r| r.holds.values().any(|h| h.until_ms > now));
            }
            view.insert(key.to_string(), record);
        }
    }

    /// Applies `change` to the record at `key` with compare-and-set; it may
    /// run several times under contention. Returns its last answer.
    pub async fn update<T>(&self, key: &str, mut change: impl FnMut(&mut Record) -> T) -> Result<T, String> {
        for _ in 0..MAX_ATTEMPTS {
            let entry = self.kv.entry(key).await.map_err(|e| e.to_string())?;
            let (mut record, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                Some(entry) => (Record::default(), Some(entry.revision)),
                None => (Record::default(), None),
            };
            let answer = change(&mut record);
            let bytes: bytes::Bytes = serde_json::to_vec(&record).unwrap_or_default().into();
            let written = match revision {
                Some(revision) => self
                    .kv
                    .update(key, bytes, revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
                None => self
                    .kv
                    .create(key, bytes)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
            };
            match written {
                Ok(()) => {
                    self.remember(key, record);
                    return Ok(answer);
                }
                Err((true, _)) => continue,
                Err((false, why)) => return Err(why),
            }
        }
        Err(format!("the record of {key} in {BUCKET} is too contended"))
    }

    /// Follows the bucket until `stop`, calling `changed` with each host key
    /// whose record changed; reconnects after errors.
    pub async fn follow(&self, changed: impl Fn(&str), mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let watch = tokio::select! {
                watch = self.kv.watch_all() => watch,
                _ = stop.changed() => return,
            };
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::debug!(%error, "cannot watch {BUCKET}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let entry = tokio::select! {
                    entry = watch.next() => entry,
                    _ = stop.changed() => return,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let record = match entry.operation {
                            kv::Operation::Put => serde_json::from_slice(&entry.value).unwrap_or_default(),
                            _ => Record::default(),
                        };
                        self.remember(&entry.key, record);
                        changed(&entry.key);
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "the watch of {BUCKET} failed; watching again");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    #[test]
    fn slots_are_taken_only_under_the_limit_across_schedulers() {
        let mut record = Record::default();
        assert!(record.take("a", 0, 1, 2, NOW));
        assert!(record.take("b", 0, 1, 2, NOW));
        // Both slots are held: c only says it wants one.
        assert!(!record.take("c", 0, 3, 2, NOW));
        assert_eq!(
            record.holds["c"],
            Hold {
                slots: 0,
                wants: 3,
                until_ms: NOW + 20_000
            }
        );
        assert!(record.others_want("a", NOW));
        assert_eq!(record.fair_share("a", 2, NOW), 1);
        // a gives its slot back: c gets it.
        record.set("a", 0, 0, NOW);
        assert!(!record.holds.contains_key("a"));
        assert!(record.take("c", 0, 3, 2, NOW));
        assert_eq!(record.holds["c"].slots, 1);
        assert_eq!(record.holds["c"].wants, 2);
    }

    #[test]
    fn a_dead_schedulers_slots_come_back_when_its_hold_expires() {
        let mut record = Record::default();
        assert!(record.take("dead", 0, 1, 1, NOW));
        assert!(!record.take("alive", 0, 1, 1, NOW + 1000));
        let later = NOW + HOLD_TTL.as_millis() as i64 + 1;
        assert!(record.take("alive", 0, 1, 1, later));
        assert!(!record.holds.contains_key("dead"));
    }

    #[test]
    fn starts_are_spaced_by_the_gap_whoever_reserves_them() {
        let mut record = Record::default();
        let gap = Duration::from_millis(100);
        assert_eq!(record.reserve_start(gap, NOW), Duration::ZERO);
        assert_eq!(record.reserve_start(gap, NOW + 10), Duration::from_millis(90));
        assert_eq!(record.reserve_start(gap, NOW + 10), Duration::from_millis(190));
        // Long after, no wait.
        assert_eq!(record.reserve_start(gap, NOW + 10_000), Duration::ZERO);
    }

    #[test]
    fn host_keys_are_names_or_hex() {
        assert_eq!(key("Example.COM"), "example.com");
        assert_eq!(key("a-b.test"), "a-b.test");
        assert_eq!(key("::1"), "x3a3a31");
        assert_eq!(key(""), "x");
    }
}
