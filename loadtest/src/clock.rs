//! The one clock every process of a run shares.
//!
//! Owns reading CLOCK_MONOTONIC in nanoseconds. It is system-wide on Linux, so a stamp
//! written by a publisher in one worker process and read by a subscriber in another
//! gives a true end-to-end latency.

/// Nanoseconds on CLOCK_MONOTONIC.
#[inline]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A tokio `Instant` for a CLOCK_MONOTONIC time (tokio's clock is the same clock).
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    let now_ns = mono_ns();
    let now = tokio::time::Instant::now();
    if ns >= now_ns {
        now + std::time::Duration::from_nanos(ns - now_ns)
    } else {
        now.checked_sub(std::time::Duration::from_nanos(now_ns - ns))
            .unwrap_or(now)
    }
}
