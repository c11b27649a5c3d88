//! What shards ask an application's backend through hooks, and what comes back.
//!
//! Owns the request and answer types of the Socket.IO backend hooks
//! (`docs/SOCKETIO.md`): a CONNECT to a namespace with a `connect_url`, and events
//! outside the vocabulary on a namespace with an `events_url`. Does not call anything:
//! the control plane's hook workers make the HTTP calls, with timeouts, a concurrency
//! cap and a breaker per namespace, so a slow backend never stalls a shard.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Identity;
use crate::core::ConnKey;

/// A call for a control-plane hook worker; it answers [`crate::ShardMsg::HookDone`].
#[derive(Debug)]
pub struct HookCall {
    /// Shard to answer.
    pub shard: u16,
    /// The session.
    pub conn: ConnKey,
    /// The session's id (`sid` of the Engine.IO handshake).
    pub sid: String,
    /// Namespace name.
    pub namespace: String,
    /// Its index in the configuration (echoed in the answer).
    pub namespace_index: u8,
    /// The session's identity (`None`: anonymous).
    pub identity: Option<Arc<Identity>>,
    /// What happened.
    pub kind: HookKind,
}

/// What a hook is told.
#[derive(Debug)]
pub enum HookKind {
    /// A CONNECT; `auth` is its JSON payload (`{}` when it had none).
    Connect {
        /// The CONNECT's `auth` object.
        auth: String,
    },
    /// An event: `args` is the JSON array of its arguments (after the name), with
    /// binary attachments as placeholders and their bytes in `attachments`.
    Event {
        /// Event name.
        event: String,
        /// JSON array of the arguments.
        args: String,
        /// Binary attachments, in placeholder order.
        attachments: Vec<Bytes>,
        /// The client's ack id, if it wants an answer.
        ack: Option<u64>,
    },
}

/// A hook's answer, checked by the control plane.
#[derive(Debug, Default)]
pub struct HookAnswer {
    /// Connect: accept (`true` unless the backend said `"accept": false`).
    pub accept: bool,
    /// Connect refused: the `connect_error` message.
    pub message: Option<String>,
    /// Connect refused: the `connect_error` data (JSON).
    pub data: Option<String>,
    /// Event: the ack's arguments (a JSON array) and attachments.
    pub ack: Option<(String, Vec<Bytes>)>,
    /// Events to emit to the session.
    pub emits: Vec<HookEmit>,
}

/// One event a hook asks to emit.
#[derive(Debug)]
pub struct HookEmit {
    /// Event name.
    pub event: String,
    /// JSON array of the arguments.
    pub args: String,
    /// Binary attachments the arguments' placeholders point at.
    pub attachments: Vec<Bytes>,
    /// Where it goes: the session that caused the call (`None`), or everyone on a
    /// channel or a user's connections, as a publication named `event` (its data the
    /// one argument, or the array of them).
    pub to: Option<EmitTarget>,
}

/// Where a hook's emit goes besides the calling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitTarget {
    /// Every subscriber of a channel (a room), Socket.IO and native.
    Channel(String),
    /// Every connection of a user (through the user's personal channel).
    User(String),
}

/// A hook's answer for a session.
#[derive(Debug)]
pub struct HookDone {
    /// The session.
    pub conn: ConnKey,
    /// The namespace's index.
    pub namespace_index: u8,
    /// What was asked (its ack id, for events).
    pub ack: Option<u64>,
    /// Whether it answers a connect.
    pub connect: bool,
    /// The answer, or why there is none (timeout, breaker open, a bad answer).
    pub result: Result<HookAnswer, String>,
}
