//! The open-file budget: how many connections the process's file limit allows.
//!
//! Owns the start-up check of `RLIMIT_NOFILE` against `engine.max_connections`: the
//! soft limit is raised to the hard one when more is needed, and a fixed reserve is
//! kept for what is not a client connection (listeners, the admin and health HTTP
//! server's connections, the store's files, eventfds and rings), so the process never
//! runs out of descriptors before it reaches its connection cap — connections past the
//! cap are answered 503 and health keeps answering. Also owns [`Throttled`], the
//! rate-limited log line for errors that can repeat thousands of times a second
//! (`accept` failing with EMFILE). Does not own accepting (the backends).

use std::time::{Duration, Instant};

/// Descriptors kept for everything but client connections.
pub const RESERVED_FILES: u64 = 256;

/// What the file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// The soft `RLIMIT_NOFILE` now (after raising it, if it was raised).
    pub limit: u64,
    /// The soft limit found at start, when it was raised.
    pub raised_from: Option<u64>,
    /// Most client connections: `max_connections`, or fewer when the limit less
    /// [`RESERVED_FILES`] is lower.
    pub connections: usize,
}

/// Check (and raise, up to the hard limit) the open-file limit for `max_connections`.
pub fn plan(max_connections: usize) -> FileBudget {
    let need = max_connections as u64 + RESERVED_FILES;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return FileBudget {
            limit: u64::MAX,
            raised_from: None,
            connections: max_connections,
        };
    }
    let mut raised_from = None;
    if lim.rlim_cur < need && lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: need.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            raised_from = Some(lim.rlim_cur);
            lim.rlim_cur = want.rlim_cur;
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED_FILES);
    FileBudget {
        limit: lim.rlim_cur,
        raised_from,
        connections: (max_connections as u64).min(room) as usize,
    }
}

/// A log line for an error that may repeat very often: the first occurrence at once,
/// then at most one line per interval saying how many were suppressed.
#[derive(Debug)]
pub struct Throttled {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Throttled {
        Throttled {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log an occurrence at `now`; `Some(n)` with the occurrences
    /// suppressed since the last line.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.duration_since(at) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve() {
        let b = plan(1000);
        assert!(
            b.limit >= 1000 + RESERVED_FILES || b.connections < 1000,
            "{b:?}"
        );
        assert_eq!(
            b.connections as u64,
            1000u64.min(b.limit.saturating_sub(RESERVED_FILES))
        );
    }

    #[test]
    fn throttled_lines_count_what_they_suppress() {
        let mut t = Throttled::new(Duration::from_secs(10));
        let t0 = crate::clock::mono();
        assert_eq!(t.allow(t0), Some(0));
        for _ in 0..999 {
            assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), Some(999));
    }
}
