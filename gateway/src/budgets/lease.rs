//! Blocks of a budget held by one replica, so a hot budget is not a
//! compare-and-set round trip (and a race with every other replica) on
//! every request.
//!
//! A replica that admits a request against a budget takes a block of it
//! from the shared counter (one compare-and-set): at most [`BLOCK_REQUESTS`]
//! times the request's reservation and at most a [`LEASE_SHARE`]th of what
//! is free, never less than the request needs. Further requests are
//! admitted from the block in memory. Each request's actual usage is
//! written back in batches ([`TICK`]), which also renews the block.
//!
//! Never overspent: a replica admits a request only from capacity its block
//! holds in the store, and the store grants a block only from what no one
//! has spent, reserved or holds. What is given up for that is reach: a
//! block held but not used by one replica cannot serve another. The worst
//! case over-reservation is every replica's unused block at once: per
//! budget, `replicas × min(16 × a request's reservation, free / 8)`, where
//! the free part shrinks as the budget fills, so near the limit blocks are
//! one request each and the behaviour is that of a compare-and-set per
//! request. Unused blocks go back when idle for [`IDLE_RETURN`] and at
//! shutdown; a block whose replica stops renewing it (killed, or cut off
//! from NATS) expires after [`LEASE_TTL`] and is charged in full, since what
//! it admitted is unknown; its replica stops admitting from it
//! [`USABLE_MARGIN`] before that (the margin also bounds tolerated clock
//! skew between replicas).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::store::{BudgetStore, Counter, Lease, StoreError};

/// A block not renewed for this long expires in the store.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// A replica stops admitting from a block this long before it expires.
pub const USABLE_MARGIN: Duration = Duration::from_secs(3);
/// How often usage is written back and blocks are renewed.
pub const TICK: Duration = Duration::from_millis(200);
/// A block with nothing in flight goes back after this long unused.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);
/// A block holds at most this many of the asking request's reservations...
pub const BLOCK_REQUESTS: u64 = 16;
/// ... and at most this share of what is free.
pub const LEASE_SHARE: u64 = 8;

/// This gateway's name in the counters: unique per process.
pub fn replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("gw-{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What one request needs from one budget, and the budget's limits.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub tokens: u64,
    pub micros: u64,
    pub limit_tokens: Option<u64>,
    pub limit_micros: Option<u64>,
}

/// This replica's view of its block of one counter.
#[derive(Debug, Clone, Copy)]
struct State {
    /// The block as the store holds it.
    cap_tokens: u64,
    cap_micros: u64,
    /// Reservations of requests not answered yet.
    in_flight_tokens: u64,
    in_flight_micros: u64,
    /// Usage of answered requests not written to the store yet.
    used_tokens: u64,
    used_micros: u64,
    /// No admission from the block from then on.
    usable_until: Instant,
    last_used: Instant,
    written_at: Instant,
    /// Bumped when the block was lost (expired in the store): reservations
    /// of an older generation were charged in full with it.
    generation: u64,
}

impl State {
    fn new() -> State {
        let now = Instant::now();
        State {
            cap_tokens: 0,
            cap_micros: 0,
            in_flight_tokens: 0,
            in_flight_micros: 0,
            used_tokens: 0,
            used_micros: 0,
            usable_until: now,
            last_used: now,
            written_at: now,
            generation: 0,
        }
    }

    fn free(&self) -> (u64, u64) {
        (
            self.cap_tokens.saturating_sub(self.in_flight_tokens + self.used_tokens),
            self.cap_micros.saturating_sub(self.in_flight_micros + self.used_micros),
        )
    }

    fn fits(&self, need: &Need) -> bool {
        let (tokens, micros) = self.free();
        Instant::now() < self.usable_until
            && (need.limit_tokens.is_none() || need.tokens <= tokens)
            && (need.limit_micros.is_none() || need.micros <= micros)
    }

    fn holds_something(&self) -> bool {
        self.cap_tokens > 0 || self.cap_micros > 0 || self.used_tokens > 0 || self.used_micros > 0
    }
}

struct Held {
    window_end_ms: i64,
    state: Mutex<State>,
    /// One store operation at a time for this block.
    writer: tokio::sync::Mutex<()>,
}

/// The blocks this replica holds, by counter key.
pub struct Leases {
    me: String,
    held: Mutex<HashMap<String, Arc<Held>>>,
}

/// What a write of the block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// The block in the store afterwards.
    pub(crate) lease: Lease,
    /// The store no longer had this replica's block: it expired and was
    /// charged in full.
    pub(crate) lost: bool,
    /// Enough was granted for the asking request (`true` without one).
    pub(crate) granted: bool,
}

/// The change to the counter: expired blocks charged, this replica's usage
/// written (`used`), its block grown for `need` if asked and there is room,
/// renewed, or given back (`keep: false`). Pure, for the tests; the pairs
/// are (tokens, micros) and a struct per call would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_block(
    counter: &mut Counter,
    me: &str,
    held: (u64, u64),
    in_flight: (u64, u64),
    used: (u64, u64),
    need: Option<&Need>,
    keep: bool,
    now_ms: i64,
) -> Written {
    counter.expire_leases(now_ms);
    let lost = (held.0 > 0 || held.1 > 0) && !counter.leases.contains_key(me);
    let mut mine = counter.leases.remove(me).unwrap_or_default();
    if !lost {
        counter.tokens_spent += used.0;
        counter.micros_spent += used.1;
        mine.tokens = mine.tokens.saturating_sub(used.0);
        mine.micros = mine.micros.saturating_sub(used.1);
    }
    // A lost block's reservations were charged with it.
    let in_flight = if lost { (0, 0) } else { in_flight };
    let mut granted = true;
    if let Some(need) = need {
        let grant = |limit: Option<u64>, committed: u64, have: u64, in_flight: u64, ask: u64| -> Option<u64> {
            let Some(limit) = limit else { return Some(0) };
            let missing = (in_flight + ask).saturating_sub(have);
            if missing == 0 {
                return Some(0);
            }
            let free = limit.saturating_sub(committed);
            let block = missing.max((BLOCK_REQUESTS * ask).min(free / LEASE_SHARE)).min(free);
            (block >= missing).then_some(block)
        };
        // This replica's own block is out of the map here: counted by hand.
        let tokens = grant(
            need.limit_tokens,
            counter.tokens_committed() + mine.tokens,
            mine.tokens,
            in_flight.0,
            need.tokens,
        );
        let micros = grant(
            need.limit_micros,
            counter.micros_committed() + mine.micros,
            mine.micros,
            in_flight.1,
            need.micros,
        );
        match (tokens, micros) {
            (Some(tokens), Some(micros)) => {
                mine.tokens += tokens;
                mine.micros += micros;
            }
            _ => granted = false,
        }
    }
    mine.until_ms = now_ms + LEASE_TTL.as_millis() as i64;
    let keep = keep && (mine.tokens > 0 || mine.micros > 0);
    if keep {
        counter.leases.insert(me.to_string(), mine);
    } else {
        mine = Lease::default();
    }
    Written {
        lease: mine,
        lost,
        granted,
    }
}

impl Leases {
    pub fn new(me: String) -> Leases {
        Leases {
            me,
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    fn held(&self, key: &str, window_end_ms: i64) -> Arc<Held> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Held {
                    window_end_ms,
                    state: Mutex::new(State::new()),
                    writer: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Admits `need` from this replica's block of `key`, growing the block
    /// when it is short. `Some(generation)` when admitted; `None` when the
    /// budget has no room for it (the caller then decides by the budget's
    /// mode, with a compare-and-set of its own).
    pub async fn reserve(
        &self,
        store: &BudgetStore,
        key: &str,
        window_end_ms: i64,
        need: Need,
    ) -> Result<Option<u64>, StoreError> {
        let held = self.held(key, window_end_ms);
        if let Some(generation) = take(&held, &need) {
            return Ok(Some(generation));
        }
        // One write per block at a time: requests that arrive meanwhile
        // wait for it and are admitted from what it brought.
        let _writer = held.writer.lock().await;
        if let Some(generation) = take(&held, &need) {
            return Ok(Some(generation));
        }
        let written = self.write(store, key, &held, Some(&need), true).await?;
        Ok(if written.granted { take(&held, &need) } else { None })
    }

    /// One write of the block (the caller holds its writer lock).
    async fn write(
        &self,
        store: &BudgetStore,
        key: &str,
        held: &Held,
        need: Option<&Need>,
        keep: bool,
    ) -> Result<Written, StoreError> {
        let started = Instant::now();
        let before = *held.state.lock().unwrap_or_else(|p| p.into_inner());
        let written = store
            .update(key, held.window_end_ms, |mut counter| {
                let written = write_block(
                    &mut counter,
                    &self.me,
                    (before.cap_tokens, before.cap_micros),
                    (before.in_flight_tokens, before.in_flight_micros),
                    (before.used_tokens, before.used_micros),
                    need,
                    keep,
                    now_ms(),
                );
                Ok::<_, Written>((counter, written))
            })
            .await?
            .unwrap_or_else(|unwritten| unwritten);
        let mut state = held.state.lock().unwrap_or_else(|p| p.into_inner());
        if written.lost {
            tracing::warn!(
                key,
                "this replica's budget block had expired in the store (charged in full); taking a new one"
            );
            state.generation += 1;
            state.in_flight_tokens = 0;
            state.in_flight_micros = 0;
            state.used_tokens = 0;
            state.used_micros = 0;
        } else {
            // What was written is spent now; usage settled since stays.
            state.used_tokens = state.used_tokens.saturating_sub(before.used_tokens);
            state.used_micros = state.used_micros.saturating_sub(before.used_micros);
        }
        state.cap_tokens = written.lease.tokens;
        state.cap_micros = written.lease.micros;
        state.written_at = Instant::now();
        state.usable_until = if keep {
            started + LEASE_TTL - USABLE_MARGIN
        } else {
            Instant::now()
        };
        Ok(written)
    }

    /// The request's answer is known: its reservation becomes its usage.
    pub fn settle(&self, key: &str, generation: u64, reserved: (u64, u64), used: (u64, u64)) {
        let held = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.get(key).cloned()
        };
        let Some(held) = held else { return };
        let mut state = held.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.generation != generation {
            return;
        }
        state.in_flight_tokens = state.in_flight_tokens.saturating_sub(reserved.0);
        state.in_flight_micros = state.in_flight_micros.saturating_sub(reserved.1);
        state.used_tokens += used.0;
        state.used_micros += used.1;
        state.last_used = Instant::now();
    }

    /// Writes usage back and renews blocks in use; gives idle ones back.
    /// Runs every [`TICK`].
    pub async fn tend(&self, store: &BudgetStore) {
        let all: Vec<(String, Arc<Held>)> = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.iter().map(|(k, h)| (k.clone(), h.clone())).collect()
        };
        for (key, held) in all {
            let state = *held.state.lock().unwrap_or_else(|p| p.into_inner());
            let idle =
                state.in_flight_tokens == 0 && state.in_flight_micros == 0 && state.last_used.elapsed() >= IDLE_RETURN;
            if idle && !state.holds_something() {
                self.forget(&key, &held);
                continue;
            }
            let renew = (state.cap_tokens > 0 || state.cap_micros > 0)
                && state.usable_until.saturating_duration_since(Instant::now()) < LEASE_TTL / 2;
            let flush = state.used_tokens > 0 || state.used_micros > 0;
            if !(idle || renew || flush) {
                continue;
            }
            let Ok(_writer) = held.writer.try_lock() else { continue };
            let keep = !(idle && close_if_idle(&held));
            if let Err(error) = self.write(store, &key, &held, None, keep).await {
                tracing::debug!(%key, %error, "cannot write a budget block back yet");
            }
        }
    }

    /// Gives every block back (at shutdown, once requests have drained):
    /// what is still in flight is charged as used.
    pub async fn release_all(&self, store: &BudgetStore) {
        let all: Vec<(String, Arc<Held>)> = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.iter().map(|(k, h)| (k.clone(), h.clone())).collect()
        };
        for (key, held) in all {
            let _writer = held.writer.lock().await;
            {
                let mut state = held.state.lock().unwrap_or_else(|p| p.into_inner());
                if !state.holds_something() {
                    continue;
                }
                state.usable_until = Instant::now();
                state.used_tokens += std::mem::take(&mut state.in_flight_tokens);
                state.used_micros += std::mem::take(&mut state.in_flight_micros);
            }
            if let Err(error) = self.write(store, &key, &held, None, false).await {
                tracing::warn!(%key, %error, "a budget block could not be given back; it is charged in full when it expires");
            }
        }
    }

    fn forget(&self, key: &str, held: &Arc<Held>) {
        let mut table = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if table.get(key).is_some_and(|h| Arc::ptr_eq(h, held)) && Arc::strong_count(held) <= 2 {
            table.remove(key);
        }
    }
}

/// Admits `need` from the block as it is, if it fits.
fn take(held: &Held, need: &Need) -> Option<u64> {
    let mut state = held.state.lock().unwrap_or_else(|p| p.into_inner());
    if !state.fits(need) {
        return None;
    }
    state.in_flight_tokens += need.tokens;
    state.in_flight_micros += need.micros;
    state.last_used = Instant::now();
    Some(state.generation)
}

/// Stops admissions from an idle block before it is given back; `false`
/// when a request arrived meanwhile (the block stays).
fn close_if_idle(held: &Held) -> bool {
    let mut state = held.state.lock().unwrap_or_else(|p| p.into_inner());
    if state.in_flight_tokens > 0 || state.in_flight_micros > 0 || state.last_used.elapsed() < IDLE_RETURN {
        return false;
    }
    state.usable_until = Instant::now();
    true
}
