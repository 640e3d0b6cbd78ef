//! One destination's breaker: closed → open → half-open → closed, driven by
//! the outcomes its tickets report. Pure: the caller passes the time and
//! holds the lock.

use std::time::{Duration, Instant};

use super::rules::Rules;
use super::window::OutcomeWindow;
use super::{BreakerOpen, BreakerState};

/// What a client is told to wait when all half-open probe slots are taken:
/// nobody knows when the probes will finish, and a short wait lets clients
/// see the verdict soon after it is reached.
pub(super) const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    Failure,
    /// The request ended without an upstream verdict (client went away,
    /// refused later in the pipeline): counts as neither.
    Cancelled,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { since: Instant },
    HalfOpen { probes_in_flight: u32, successes: u32 },
}

#[derive(Debug)]
pub(super) struct Machine {
    phase: Phase,
    /// Bumped on every change of phase; a ticket carries the generation it was
    /// admitted in, so a late report from an earlier phase (a slow request
    /// admitted while closed, a probe of a previous half-open round) cannot
    /// count toward the current one.
    generation: u64,
    /// Tickets of any generation not yet reported; a breaker with some is
    /// never evicted, so their reports are never lost to a stale copy.
    in_flight: u32,
    last_activity: Instant,
    window: OutcomeWindow,
}

impl Machine {
    pub fn new(now: Instant) -> Self {
        Machine {
            phase: Phase::Closed,
            generation: 0,
            in_flight: 0,
            last_activity: now,
            window: OutcomeWindow::default(),
        }
    }

    pub fn admit(&mut self, rules: &Rules, now: Instant) -> Result<u64, BreakerOpen> {
        self.settle(rules, now);
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Open { since } => {
                return Err(BreakerOpen {
                    retry_after: rules.wait.saturating_sub(now.saturating_duration_since(*since)),
                    state: BreakerState::Open,
                });
            }
            Phase::HalfOpen {
                probes_in_flight,
                successes,
            } => {
                // Successful probes keep their slot: the phase lets at most
                // `probe_slots` decisive probes through, not an endless trickle.
                if probes_in_flight.saturating_add(*successes) >= rules.probe_slots {
                    return Err(BreakerOpen {
                        retry_after: HALF_OPEN_RETRY_AFTER,
                        state: BreakerState::HalfOpen,
                    });
                }
                *probes_in_flight += 1;
            }
        }
        self.in_flight = self.in_flight.saturating_add(1);
        self.last_activity = now;
        Ok(self.generation)
    }

    pub fn report(&mut self, rules: &Rules, now: Instant, generation: u64, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_activity = now;
        if generation != self.generation {
            return;
        }
        match &mut self.phase {
            Phase::Closed => {
                if outcome == Outcome::Cancelled {
                    return;
                }
                let tick = rules.tick(now);
                self.window.record(tick, outcome == Outcome::Failure);
                if rules.trips(self.window.totals(tick)) {
                    self.enter(Phase::Open { since: now });
                }
            }
            Phase::HalfOpen {
                probes_in_flight,
                successes,
            } => {
                *probes_in_flight = probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Cancelled => {}
                    Outcome::Success => {
                        *successes += 1;
                        if *successes >= rules.successes_to_close {
                            self.window.clear();
                            self.enter(Phase::Closed);
                        }
                    }
                    Outcome::Failure => self.enter(Phase::Open { since: now }),
                }
            }
            // Nothing is admitted while open, so no ticket carries an open
            // phase's generation.
            Phase::Open { .. } => {}
        }
    }

    /// The state as of `now` (an open breaker whose wait is over is half-open).
    pub fn state(&mut self, rules: &Rules, now: Instant) -> BreakerState {
        self.settle(rules, now);
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Only a closed breaker with nothing in flight may be forgotten: an open
    /// one must keep refusing, and a half-open one must keep its probe limit.
    pub fn is_evictable(&self) -> bool {
        matches!(self.phase, Phase::Closed) && self.in_flight == 0
    }

    /// No outcome in the window: forgetting this breaker loses nothing.
    pub fn is_quiet(&self, rules: &Rules, now: Instant) -> bool {
        self.window.totals(rules.tick(now)).total() == 0
    }

    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// The wait ends lazily, on the next look at the breaker: no timers.
    fn settle(&mut self, rules: &Rules, now: Instant) {
        if let Phase::Open { since } = self.phase
            && now.saturating_duration_since(since) >= rules.wait
        {
            self.enter(Phase::HalfOpen {
                probes_in_flight: 0,
                successes: 0,
            });
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }
}
