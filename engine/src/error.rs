//! The engine's one error type.
//!
//! Owns every way starting, configuring or publishing into the engine can fail, each
//! variant naming the configuration key or the component that failed. Refusals a
//! client gets (error codes, close codes) are the protocol's, not errors of the engine.

use std::net::SocketAddr;

/// Why the engine could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid: `key` names it (`engine.max_frame_bytes`,
    /// `namespaces.chat.subscribe[0].channel`, `rules[2]`), `message` says what is wrong.
    #[error("{key}: {message}")]
    Config {
        /// The key, as written in the configuration file (or the rule's index).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address that failed.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// An OS resource of the shards (eventfd, thread, randomness) could not be had.
    #[error("cannot start shards: {0}")]
    Io(#[from] std::io::Error),
    /// The I/O backend (`backend`: `io_uring` or `epoll`) cannot run here, or a shard
    /// could not set up its I/O.
    #[error("cannot start the {backend} backend: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Why.
        message: String,
    },
    /// The store's link: a second store attached to the same shards.
    #[error("store: {0}")]
    Store(&'static str),
    /// Publishing from the server API: the channel name is empty, too long or has
    /// whitespace or control characters.
    #[error("invalid channel name")]
    InvalidChannel,
    /// Publishing from the server API: the payload cannot be encoded for subscribers.
    #[error("invalid payload: {0}")]
    Payload(String),
    /// Publishing from the server API: the inbox of the channel's owner shard is full.
    #[error("overloaded: the channel's shard cannot take more publications now, retry")]
    Overloaded,
}

impl Error {
    /// A [`Error::Config`] for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The engine's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
