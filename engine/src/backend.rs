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
//! 5. calls `retry_spill` each turn, and calls `record_flush_latency` after writing.
//!
//! The epoll backend ([`crate::epoll`]) does this with tokio's current-thread runtime;
//! the io_uring backend ([`crate::uring`]) does the same with completions. A
//! completion-based backend hands frames to the kernel before they are written, so it
//! pins them ([`OutQueue::pin`](crate::outq::OutQueue::pin)): pinned frames count as
//! started and survive a slow-consumer discard, and the backend holds its own clones
//! until the completion arrives.
//!
//! [`select`] picks the backend for `engine.io`: `auto` probes io_uring and falls back
//! to epoll with the reason; `uring` turns a failed probe into a start-up error.

use crate::config::{EngineConfig, IoMode};
use crate::epoll::{self, ShardSetup};
use crate::error::Error;
use crate::uring;

/// An I/O backend for the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Readiness-based I/O: tokio current-thread runtime over epoll.
    Epoll,
    /// Completion-based I/O: one io_uring per shard, multishot accept and receive,
    /// provided buffers, batched sends.
    Uring,
}

impl Backend {
    /// Name shown in logs, health and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Uring => "io_uring",
        }
    }

    /// Run one shard on the current thread until it has shut down.
    pub(crate) fn run(self, setup: ShardSetup) {
        match self {
            Backend::Epoll => epoll::run(setup),
            Backend::Uring => uring::run(setup),
        }
    }
}

/// Whether io_uring can run here with `cfg`'s buffer settings, and if not, why.
pub fn probe_io_uring(cfg: &EngineConfig) -> Result<(), Error> {
    uring::probe(cfg).map_err(|message| Error::Backend {
        backend: "io_uring",
        message,
    })
}

/// The backend chosen for `cfg.io`, and why io_uring was not used when `auto` fell
/// back to epoll. A `uring` that cannot run is an error carrying the probe's reason.
pub fn select(cfg: &EngineConfig) -> Result<(Backend, Option<String>), Error> {
    match cfg.io {
        IoMode::Epoll => Ok((Backend::Epoll, None)),
        IoMode::Uring => uring::probe(cfg)
            .map(|()| (Backend::Uring, None))
            .map_err(|why| Error::Backend {
                backend: "io_uring",
                message: format!("engine.io = \"uring\" but io_uring cannot run here: {why}"),
            }),
        IoMode::Auto => match uring::probe(cfg) {
            Ok(()) => Ok((Backend::Uring, None)),
            Err(why) => Ok((Backend::Epoll, Some(why))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_the_mode_and_the_probe() {
        let mut cfg = EngineConfig {
            io: IoMode::Epoll,
            ..EngineConfig::default()
        };
        assert_eq!(select(&cfg).unwrap(), (Backend::Epoll, None));
        let probe = probe_io_uring(&cfg);
        cfg.io = IoMode::Auto;
        match &probe {
            Ok(()) => assert_eq!(select(&cfg).unwrap(), (Backend::Uring, None)),
            Err(ref why) => {
                let Error::Backend { message, .. } = why else {
                    panic!("{why}")
                };
                assert_eq!(
                    select(&cfg).unwrap(),
                    (Backend::Epoll, Some(message.clone()))
                )
            }
        }
        cfg.io = IoMode::Uring;
        match probe {
            Ok(()) => assert_eq!(select(&cfg).unwrap(), (Backend::Uring, None)),
            Err(Error::Backend { message: why, .. }) => {
                let e = select(&cfg).unwrap_err().to_string();
                assert!(e.contains(&why) && e.contains("engine.io"), "{e}");
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn io_mode_parses_from_flags_and_config() {
        assert_eq!("auto".parse::<IoMode>().unwrap(), IoMode::Auto);
        assert_eq!("uring".parse::<IoMode>().unwrap(), IoMode::Uring);
        assert_eq!("io_uring".parse::<IoMode>().unwrap(), IoMode::Uring);
        assert_eq!("epoll".parse::<IoMode>().unwrap(), IoMode::Epoll);
        let e = "kqueue".parse::<IoMode>().unwrap_err().to_string();
        assert!(e.contains("kqueue") && e.contains("engine.io"), "{e}");
    }
}
