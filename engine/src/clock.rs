//! The engine's clock: the one place in the engine that reads time.
//!
//! Owns [`Now`], a monotonic instant and the wall-clock time in Unix milliseconds read
//! together. Does not own timers (the backends' loops) or ticks (the shard core counts
//! them from [`ShardCore::on_tick`](crate::ShardCore::on_tick)).
//!
//! The shard core reads no clock: its backend reads a [`Now`] once per event (or per
//! batch of completions) and passes it in with every call, so the same core runs on a
//! virtual clock in tests (`Now::at`, `Now::later`) exactly as it runs on this one.
//! `engine/clippy.toml` refuses `Instant::now` and `SystemTime::now` everywhere else.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A moment, as the shard core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time (latency, deadlines, rate buckets).
    pub mono: Instant,
    /// Wall-clock time in Unix milliseconds (token expiry, receipts, last seen,
    /// schedules); 0 if the system clock is before 1970.
    pub unix_ms: u64,
}

impl Now {
    /// Read the system's clocks.
    #[allow(clippy::disallowed_methods)] // The one sanctioned reading of both clocks.
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// A virtual moment: `mono` with the wall clock at `unix_ms` (tests, simulations).
    pub fn at(mono: Instant, unix_ms: u64) -> Now {
        Now { mono, unix_ms }
    }

    /// This moment advanced by `ms` on both clocks (a virtual clock's step).
    pub fn later(self, ms: u64) -> Now {
        Now {
            mono: self.mono + Duration::from_millis(ms),
            unix_ms: self.unix_ms + ms,
        }
    }
}

/// Times the core's own work for the command-time histogram (one command in
/// `COMMAND_SAMPLE`). Its reading is only recorded, never acted on, so a core under a
/// virtual clock behaves the same.
#[derive(Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    /// Start timing.
    #[allow(clippy::disallowed_methods)] // Measures CPU time; never decides behaviour.
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }

    /// Microseconds since [`Stopwatch::start`].
    pub fn elapsed_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// Monotonic time now, for code outside the shard core (startup, drain deadlines,
/// the control plane's calls into the engine).
#[allow(clippy::disallowed_methods)] // Outside the core: deadlines of the engine's own threads.
pub fn mono() -> Instant {
    Instant::now()
}
