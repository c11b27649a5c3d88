//! One circuit breaker per model endpoint: closed (calls go through), open (calls fail
//! at once, the pipelines fall back) and half-open (after the cooldown, one call
//! probes; its success closes the breaker, its failure opens it again).
//!
//! Owns the breaker's state, lock-free so any worker and the admin API can read and
//! change it. Does not own what a caller does when refused (the pipeline falls back or
//! holds) or the clock (callers pass milliseconds).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call (the breaker is closed).
    Call,
    /// Call as the probe of a half-open breaker: report how it went.
    Probe,
    /// Do not call (open, or another caller is probing).
    Refuse,
}

/// The breaker's state, as `/admin/breakers` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls fail at once until the cooldown is over.
    Open,
    /// The cooldown is over: the next call probes.
    HalfOpen,
}

impl State {
    /// The name used in the admin API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Failures in a row that open it (0: never opens).
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    /// 0: closed; else the time the cooldown ends.
    open_until_ms: AtomicU64,
    /// A probe call is in flight.
    probing: AtomicBool,
    /// Times it opened.
    opened: AtomicU64,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row, for
    /// `cooldown_ms`.
    pub fn new(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker {
            threshold,
            cooldown_ms: cooldown_ms.max(1),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    /// Its state at `now_ms`.
    pub fn state(&self, now_ms: u64) -> State {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => State::Closed,
            until if now_ms < until => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// May a call be made at `now_ms`?
    pub fn admit(&self, now_ms: u64) -> Admit {
        match self.state(now_ms) {
            State::Closed => Admit::Call,
            State::Open => Admit::Refuse,
            State::HalfOpen => {
                if self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Admit::Probe
                } else {
                    Admit::Refuse
                }
            }
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// A call failed at `now_ms`: a probe's failure opens the breaker again, and so
    /// does the `threshold`th failure in a row. Gives whether it opened now.
    pub fn failure(&self, now_ms: u64) -> bool {
        if self.probing.swap(false, Ordering::AcqRel) {
            self.open(now_ms);
            return true;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.threshold > 0 && n >= self.threshold && self.state(now_ms) == State::Closed {
            self.open(now_ms);
            return true;
        }
        false
    }

    fn open(&self, now_ms: u64) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until_ms
            .store(now_ms + self.cooldown_ms, Ordering::Release);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// An operator closed it: gives the state it was in.
    pub fn reset(&self, now_ms: u64) -> State {
        let was = self.state(now_ms);
        self.success();
        was
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Times it opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_failures_in_a_row_and_a_probe_closes_it() {
        let b = Breaker::new(3, 1_000);
        assert_eq!(b.admit(0), Admit::Call);
        assert!(!b.failure(0));
        assert!(!b.failure(1));
        b.success();
        assert!(!b.failure(2));
        assert!(!b.failure(3));
        assert!(b.failure(4), "third failure in a row");
        assert_eq!(b.state(5), State::Open);
        assert_eq!(b.admit(500), Admit::Refuse);
        assert_eq!(b.state(1_004), State::HalfOpen);
        assert_eq!(b.admit(1_004), Admit::Probe);
        assert_eq!(b.admit(1_005), Admit::Refuse, "one probe at a time");
        b.success();
        assert_eq!(b.state(1_006), State::Closed);
        assert_eq!(b.opened(), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_reset_closes_it() {
        let b = Breaker::new(1, 100);
        assert!(b.failure(0));
        assert_eq!(b.admit(100), Admit::Probe);
        assert!(b.failure(100));
        assert_eq!(b.state(150), State::Open);
        assert_eq!(b.state(200), State::HalfOpen);
        assert_eq!(b.reset(150), State::Open);
        assert_eq!(b.admit(150), Admit::Call);
        assert_eq!(b.opened(), 2);
    }

    #[test]
    fn a_threshold_of_zero_never_opens() {
        let b = Breaker::new(0, 100);
        for t in 0..10 {
            assert!(!b.failure(t));
        }
        assert_eq!(b.admit(10), Admit::Call);
    }
}
