//! Wall-clock time for the control plane.
//!
//! Owns reading the system clock as Unix milliseconds (due times, audit entries, call
//! and notification times). Does not own timers: each worker waits on its own queue
//! with a timeout computed from these times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
