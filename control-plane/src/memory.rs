//! Giving memory the process no longer uses back to the operating system.
//!
//! Owns one thread that watches how many bytes of retained history the shards let go
//! (the bulk of what the process allocates and frees under load: history expired,
//! pushed out, evicted, or forgotten with its stream) and, once [`TRIM_AFTER_BYTES`]
//! more were let go since the last trim — or at least [`TRIM_TAIL_BYTES`] and the
//! letting go has paused for a look, so the tail of a burst goes back too — or every
//! [`TRIM_AT_LEAST_EVERY`] otherwise, asks glibc's allocator to return free pages
//! (`malloc_trim`). Without it, glibc keeps
//! freed memory in its per-thread arenas for reuse and the resident size of a process
//! that once held gigabytes of history stays there. Does not own what is kept (the
//! history budget, `max_streams` and the queues bound that) nor the allocator.
//!
//! `malloc_trim` walks each arena under its lock: it runs on this thread, rarely, so a
//! shard waits at most for one arena's walk at those moments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_engine::EngineHandle;

use crate::worker::WorkerHandle;

/// Trim once this many bytes of history were let go since the last trim.
pub const TRIM_AFTER_BYTES: u64 = 64 << 20;
/// Trim what was let go since the last trim once the letting go pauses, if this much.
pub const TRIM_TAIL_BYTES: u64 = 4 << 20;
/// Trim at least this often anyway (closed connections free buffers too).
pub const TRIM_AT_LEAST_EVERY: Duration = Duration::from_secs(600);
/// How often the history is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Start the trimming thread.
pub fn spawn(engine: Arc<EngineHandle>) -> std::io::Result<WorkerHandle> {
    WorkerHandle::spawn("memory-trim", move |stop| run(&engine, stop))
}

fn history_freed(engine: &EngineHandle) -> u64 {
    engine
        .metrics()
        .iter()
        .map(|m| m.history_freed_bytes.load(Ordering::Relaxed))
        .sum()
}

fn run(engine: &EngineHandle, stop: &AtomicBool) {
    let mut trimmed_at = history_freed(engine);
    let mut previous = trimmed_at;
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        // Short sleeps, so a stop is seen quickly.
        let mut slept = Duration::ZERO;
        while slept < LOOK_EVERY && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
        let freed = history_freed(engine);
        let pending = freed - trimmed_at;
        let paused = freed == previous;
        previous = freed;
        if pending >= TRIM_AFTER_BYTES
            || (paused && pending >= TRIM_TAIL_BYTES)
            || last.elapsed() >= TRIM_AT_LEAST_EVERY
        {
            let started = Instant::now();
            let released = trim();
            tracing::debug!(
                history_freed_bytes = freed - trimmed_at,
                released,
                took_ms = started.elapsed().as_millis() as u64,
                "returned free memory to the system"
            );
            trimmed_at = freed;
            last = Instant::now();
        }
    }
}

/// Ask the allocator to return free memory; whether it released any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
