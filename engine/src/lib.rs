//! Switchboard's engine: thread-per-core shards holding WebSocket connections.
//!
//! # Layout
//! - [`config`]: the engine's settings; [`sio_config`]: the Socket.IO endpoint's.
//! - [`core`]: one shard's connections, commands, fan-out and timers, without sockets.
//! - [`backend`]: the seam between a core and its socket I/O, and the contract.
//! - [`epoll`]: the backend that drives a core with a single-threaded tokio runtime
//!   (epoll); [`uring`]: the backend that drives the same core with an io_uring.
//! - [`mesh`]: lock-free bounded inboxes between shards and from the control plane;
//!   [`publications`]: what travels on them when a channel publishes.
//! - [`channels`], [`outq`], [`wheel`]: the channel index, per-connection outbound
//!   queues, the heartbeat wheel.
//! - [`clock`]: [`Now`], the one place the engine reads time (the core is passed it).
//! - [`auth`]: what shards ask the control plane about tokens; [`hooks`]: what they
//!   ask an application's backend (Socket.IO hooks).
//! - [`journal`]: the seam to durable storage (batches out, seeds and commits back);
//!   [`cluster`]: the seam to the cluster thread (nodes sharing Redis).
//! - [`metrics`]: per-shard counters.
//! - [`error`]: the crate's one error type, [`Error`].
//!
//! Each shard is a thread pinned to a core, with its own listener on the shared port
//! (SO_REUSEPORT). Nothing per connection is shared between threads; crossing threads
//! is a message on a [`mesh::Inbox`]. The engine does not verify tokens, serve HTTP or
//! read configuration files: the control plane does.

pub mod access;
pub mod ai_tap;
pub mod auth;
pub mod backend;
pub mod channels;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod epoll;
pub mod error;
pub mod files;
pub mod hashing;
pub mod history;
pub mod hooks;
pub mod journal;
pub mod limits;
pub mod marks;
pub mod mesh;
pub mod metrics;
pub mod outq;
pub mod placement;
pub mod presence;
pub mod publications;
pub mod session;
pub mod sio_config;
pub mod streams;
pub mod uring;
pub mod wheel;

mod engine;

pub use auth::{AuthFailure, ControlRequest, Identity};
pub use backend::Backend;
pub use clock::Now;
pub use config::{EngineConfig, IoMode};
pub use core::{ConnKey, ShardCore};
pub use engine::{Engine, EngineHandle, PublishTicket, ShardSender};
pub use error::{Error, Result};
pub use journal::{Durability, NamespacePolicy};
pub use mesh::{
    EncodedFrames, Mesh, Publication, PublishReply, Refused, SequenceReq, ShardMsg, StreamReply,
};
pub use metrics::{CloseKind, ShardMetrics};
