//! The seam between a shard's logic and its socket I/O.
//!
//! Owns the choice of backend and the contract every backend keeps with
//! [`ShardCore`](crate::core::ShardCore), which holds all connection state and never
//! touches a socket. A backend, on its shard thread:
//! 1. accepts on its own SO_REUSEPORT listener and calls `admit(peer)`; a refusal gets
//!    the HTTP error from `handshake::error_response` and the socket is dropped;
//! 2. reads into one per-shard buffer and hands it to `on_read(slot, buf)` (the core
//!    keeps only the bytes of an incomplete request or frame); end of stream is
//!    `on_eof`, a failed read or write `on_io_error`;
//! 3. drains its inbox into `on_message` and calls `on_tick(tick)` once per tick;
//! 4. after any of these, runs the connections in `take_wake` (closed ones: drop the
//!    socket, then `remove(slot)`) and writes the queues of `take_dirty` — all of a
//!    connection's frames in one vectored write or submission — reporting bytes with
//!    `written` and calling `flushed` when a queue empties (`ShutdownWrite` means the
//!    close frame went out: shut down the write side);
//! 5. calls `retry_spill` each turn, and records `take_latency_samples` after writing.
//!
//! The epoll backend ([`crate::epoll`]) does this with tokio's current-thread runtime;
//! an io_uring backend does the same with completions.

use crate::epoll::{self, ShardSetup};

/// An I/O backend for the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Readiness-based I/O: tokio current-thread runtime over epoll.
    Epoll,
}

impl Backend {
    /// Name shown in logs, health and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
        }
    }

    /// Run one shard on the current thread until it has shut down.
    pub(crate) fn run(self, setup: ShardSetup) {
        match self {
            Backend::Epoll => epoll::run(setup),
        }
    }
}
