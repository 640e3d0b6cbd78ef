//! What happens to a request over its limit (`rate_limits.throttle_action`):
//! `reject` answers at once, `delay` waits a little for capacity, `queue`
//! lines requests up per limiter key and lets them through in arrival order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clawgress_policies::model::ThrottleAction;
use tokio::sync::oneshot;

use super::clock::within;
use super::keyed::Sharded;
use super::{LimitKey, LimitVerdict, Limits, RateLimited, Scope};

impl Limits {
    /// [`Limits::check`] with the throttle `action` applied to a refusal.
    ///
    /// - `Reject`: the check's answer, at once.
    /// - `Delay`: waits for capacity for up to `throttle_delay_ms` (and at
    ///   most `max_wait`); answers 429 at once when capacity would not come
    ///   in that time, since waiting would only delay the same answer.
    /// - `Queue`: waits in the FIFO of the limiter that refused it, behind
    ///   the requests already there; answers 429 when that FIFO is full or
    ///   the wait would take longer than `max_wait` (the rest of the
    ///   request's timeout).
    ///
    /// Dropping the future (client gone) leaves its queue place at once.
    pub async fn acquire(&self, key: &LimitKey<'_>, action: ThrottleAction, max_wait: Duration) -> LimitVerdict {
        match action {
            ThrottleAction::Reject => self.check(key),
            ThrottleAction::Delay => {
                let budget = self.config.throttle_delay.min(max_wait);
                self.wait_for_capacity(key, budget, self.clock.now()).await
            }
            ThrottleAction::Queue => self.queue(key, max_wait).await,
        }
    }

    /// Checks, sleeping until capacity returns, while that fits in `budget`
    /// counted from `start`.
    async fn wait_for_capacity(&self, key: &LimitKey<'_>, budget: Duration, start: Duration) -> LimitVerdict {
        loop {
            let verdict = self.check(key);
            let LimitVerdict::Limited(limited) = verdict else {
                return verdict;
            };
            let spent = self.clock.now().saturating_sub(start);
            if limited.retry_after > budget.saturating_sub(spent) {
                return verdict;
            }
            self.clock.sleep(limited.retry_after).await;
        }
    }

    async fn queue(&self, key: &LimitKey<'_>, max_wait: Duration) -> LimitVerdict {
        let start = self.clock.now();
        let queues = &self.state.queues;
        // A request must not overtake those already waiting on one of its
        // limiters, even when capacity happens to be free this instant.
        let scope = match queues.busy(key) {
            Some(scope) => scope,
            None => match self.check(key) {
                LimitVerdict::Limited(limited) => limited.scope,
                allowed => return allowed,
            },
        };
        let Some(mut ticket) = queues.join(scope, key.key(scope)) else {
            return self.refusal(key, scope, queues.depth);
        };
        let first = match self.peek(key) {
            LimitVerdict::Limited(limited) => limited.retry_after,
            LimitVerdict::Allow { .. } => Duration::ZERO,
        };
        let interval = Duration::from_nanos(self.config.gcra(scope, key).interval());
        let predicted = first.saturating_add(interval.saturating_mul(u32::try_from(ticket.ahead).unwrap_or(u32::MAX)));
        if predicted > max_wait {
            return self.refusal(key, scope, ticket.ahead);
        }
        let left = max_wait.saturating_sub(self.clock.now().saturating_sub(start));
        if within(&*self.clock, left, ticket.turn()).await != Some(true) {
            return self.refusal(key, scope, ticket.ahead);
        }
        let verdict = self.wait_for_capacity(key, max_wait, start).await;
        // Leaving hands the turn to the next in line.
        drop(ticket);
        verdict
    }

    /// The 429 for a request that could not wait in `scope`'s queue: the
    /// limiters' own refusal when there is one, else (capacity is free but
    /// promised to the `ahead` requests in front) their turns' worth.
    fn refusal(&self, key: &LimitKey<'_>, scope: Scope, ahead: usize) -> LimitVerdict {
        match self.peek(key) {
            limited @ LimitVerdict::Limited(_) => limited,
            LimitVerdict::Allow { .. } => {
                let gcra = self.config.gcra(scope, key);
                let turns = u64::try_from(ahead.max(1)).unwrap_or(u64::MAX);
                LimitVerdict::Limited(RateLimited {
                    scope,
                    limit: gcra.limit,
                    window: gcra.window,
                    retry_after: Duration::from_nanos(gcra.interval().saturating_mul(turns)),
                })
            }
        }
    }
}

/// The `queue` FIFOs: one per limiter key that has requests waiting.
pub(super) struct Queues {
    /// Indexed by [`Scope::index`].
    pub(super) fifos: [Sharded<Fifo>; 4],
    /// Requests waiting in any FIFO; lets the common case (nobody queued)
    /// skip the FIFO lookups.
    pub(super) waiting: AtomicUsize,
    pub depth: usize,
}

/// One key's line. The head holds the turn while it waits for capacity; the
/// others wait for the head to hand it on.
#[derive(Default)]
pub(super) struct Fifo {
    /// Head included; removed from its map when this reaches 0.
    queued: usize,
    head_taken: bool,
    /// Senders of requests that gave up stay until reached, then are skipped.
    behind: VecDeque<oneshot::Sender<()>>,
}

impl Fifo {
    fn pass_turn(&mut self) {
        while let Some(next) = self.behind.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        self.head_taken = false;
    }
}

impl Queues {
    pub fn new(shards: usize, depth: usize) -> Self {
        let fifos = || Sharded::new(shards);
        Queues {
            fifos: [fifos(), fifos(), fifos(), fifos()],
            waiting: AtomicUsize::new(0),
            depth: depth.max(1),
        }
    }

    /// The first of the request's limiters (agent, project, domain, global)
    /// with requests waiting.
    fn busy(&self, key: &LimitKey<'_>) -> Option<Scope> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return None;
        }
        Scope::ALL.into_iter().find(|scope| {
            let id = key.key(*scope);
            self.fifos[scope.index()].lock(id).contains_key(id)
        })
    }

    /// Takes a place at the back of `scope`/`id`'s line; `None` when full.
    fn join(&self, scope: Scope, id: &str) -> Option<Ticket<'_>> {
        let mut shard = self.fifos[scope.index()].lock(id);
        let fifo = shard.entry(Box::from(id)).or_default();
        if fifo.queued >= self.depth {
            return None;
        }
        let ahead = fifo.queued;
        fifo.queued += 1;
        let place = if fifo.head_taken {
            let (turn, wait) = oneshot::channel();
            fifo.behind.push_back(turn);
            Place::Behind(wait)
        } else {
            fifo.head_taken = true;
            Place::Head
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Some(Ticket {
            queues: self,
            scope,
            id: Box::from(id),
            ahead,
            place,
        })
    }
}

enum Place {
    Head,
    Behind(oneshot::Receiver<()>),
}

/// A place in one line; dropping it leaves the line (handing on the turn
/// if it held it), whether the request passed, gave up or was cancelled.
struct Ticket<'a> {
    queues: &'a Queues,
    scope: Scope,
    id: Box<str>,
    /// Requests in the line when this one joined.
    ahead: usize,
    place: Place,
}

impl Ticket<'_> {
    /// Waits to reach the head; false if the line vanished (never expected).
    async fn turn(&mut self) -> bool {
        if let Place::Behind(wait) = &mut self.place {
            if wait.await.is_err() {
                return false;
            }
            self.place = Place::Head;
        }
        true
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut shard = self.queues.fifos[self.scope.index()].lock(&self.id);
        let Some(fifo) = shard.get_mut(&*self.id) else {
            return;
        };
        let holds_turn = match &mut self.place {
            Place::Head => true,
            Place::Behind(wait) => {
                // The turn may have been handed over just as this request
                // gave up; under the lock, closing settles which happened.
                wait.close();
                wait.try_recv().is_ok()
            }
        };
        if holds_turn {
            fifo.pass_turn();
        }
        fifo.queued -= 1;
        if fifo.queued == 0 {
            shard.remove(&*self.id);
        }
        self.queues.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
