//! The open-model send schedule of one publisher.
//!
//! Owns when message k is *intended*: `t0 + offset + k × interval`, independent of when
//! earlier messages actually went out. A publisher that falls behind sends the overdue
//! messages at once, each still stamped with its own intended time, so the latency it
//! records includes every moment the server (or the generator) made it wait.

/// One publisher's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Start of the run, CLOCK_MONOTONIC ns.
    t0: u64,
    /// This publisher's phase within one interval, ns.
    offset: u64,
    /// Time between messages, ns.
    interval: u64,
    /// End of the run: no message is intended at or after it.
    end: u64,
}

impl Schedule {
    /// `rate` messages per second from `t0` until `end`; `phase_seed` (the publisher's
    /// index) spreads publishers over the interval so they do not all fire at once.
    pub fn new(t0: u64, end: u64, rate: f64, phase_seed: u64) -> Schedule {
        let interval = ((1e9 / rate) as u64).max(1);
        Schedule {
            t0,
            offset: phase_seed.wrapping_mul(2_654_435_761) % interval,
            interval,
            end,
        }
    }

    /// When message `k` is intended, or `None` if that is past the end of the run.
    pub fn intended(&self, k: u64) -> Option<u64> {
        let at = self.t0 + self.offset + k.checked_mul(self.interval)?;
        (at < self.end).then_some(at)
    }

    /// Messages intended before `now` (those a publisher should have sent by then).
    pub fn due_by(&self, now: u64) -> u64 {
        if now <= self.t0 + self.offset {
            return 0;
        }
        let last = now.min(self.end).saturating_sub(self.t0 + self.offset);
        last.div_ceil(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_from_intended_not_actual_time() {
        let s = Schedule::new(1_000, 1_000 + 1_000_000_000, 100.0, 0);
        assert_eq!(s.intended(0), Some(1_000));
        assert_eq!(s.intended(1), Some(1_000 + 10_000_000));
        assert_eq!(s.intended(99), Some(1_000 + 990_000_000));
        assert_eq!(s.intended(100), None, "the end is exclusive");
        // However late message 5 goes out, message 6 is still intended 10 ms after 5.
        assert_eq!(s.intended(6).unwrap() - s.intended(5).unwrap(), 10_000_000);
        assert_eq!(
            s.due_by(1_000 + 25_000_000),
            3,
            "messages 0, 1 and 2 are overdue at 25 ms"
        );
        assert_eq!(s.due_by(u64::MAX), 100);
    }

    #[test]
    fn publishers_are_spread_over_the_interval() {
        let offsets: Vec<u64> = (0..10)
            .map(|i| Schedule::new(0, u64::MAX, 10.0, i).intended(0).unwrap())
            .collect();
        assert!(offsets.iter().all(|&o| o < 100_000_000));
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert_eq!(distinct.len(), 10);
    }
}
