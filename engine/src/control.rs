//! Commands a shard hands to the control plane's feature workers (notifications,
//! calls), and the pushes those workers send back to connections.
//!
//! Owns the request and push types only. The shard checks what it can cheaply
//! (connected, the token's rights on a channel or user) and forwards the rest; the
//! workers own state that spans shards and restarts (stored notifications, the call
//! state machine) and answer with [`crate::ShardMsg::Reply`] and [`Push`]es.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::envelope::{self, CallAction, Format};

use crate::presence::ClientId;

/// Who sent a forwarded command.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's user.
    pub user: Arc<str>,
    /// The connection.
    pub client: ClientId,
    /// The device id it gave in `connect`.
    pub device: Option<Box<str>>,
}

/// A call's callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallTarget {
    /// Every device of a user rings.
    User(String),
    /// Every subscriber of a room channel rings (the caller's rights were checked).
    Room(String),
}

/// A client command carried out by a control-plane worker.
#[derive(Debug, Clone)]
pub enum ControlCommand {
    /// List notifications.
    Notifications {
        /// Most in the reply.
        limit: u32,
        /// Ids below this one.
        before: Option<u64>,
        /// Only unread ones.
        unread: bool,
    },
    /// Mark one notification (or all: `None`) read.
    NotificationsRead {
        /// The id.
        id: Option<u64>,
    },
    /// Subscribe to or unsubscribe from a notification topic.
    Topic {
        /// Topic name (syntax checked).
        topic: String,
        /// Subscribe or unsubscribe.
        subscribe: bool,
        /// Topic patterns the token's `topics` claim allows (besides the configured
        /// public ones).
        allowed: Vec<String>,
    },
    /// Start a call.
    Call {
        /// Who rings.
        to: CallTarget,
        /// Media label.
        media: Option<String>,
        /// Opaque data shown while ringing.
        data: Option<serde_json::Value>,
    },
    /// Accept, reject or end a call.
    CallAction {
        /// The call.
        call: u64,
        /// What to do.
        action: CallAction,
        /// Why.
        reason: Option<String>,
        /// The connection's subscriptions (for `Accept`: joining a room call needs a
        /// subscription to the room).
        channels: Vec<Arc<str>>,
    },
    /// Relay signaling data or record a quality report.
    CallSignal {
        /// The call.
        call: u64,
        /// One participant, or every other one.
        to: Option<ClientId>,
        /// The data.
        data: serde_json::Value,
        /// A quality report.
        quality: bool,
    },
}

impl ControlCommand {
    /// Whether the call worker (not the notification worker) carries it out.
    pub fn is_call(&self) -> bool {
        matches!(
            self,
            ControlCommand::Call { .. }
                | ControlCommand::CallAction { .. }
                | ControlCommand::CallSignal { .. }
        )
    }
}

/// One push's frames, indexed by `Format::index()`.
pub type Frames = [Bytes; 2];

/// Encode `push` once per format.
pub fn frames<T: serde::Serialize>(push: &T) -> Frames {
    Format::ALL.map(|f| envelope::encode_push(f, push))
}

/// A push from the control plane to connections.
#[derive(Debug)]
pub struct Push {
    /// Who gets it.
    pub to: PushTo,
    /// A coalescing key (progress notifications): a frame with the same key still
    /// queued, unwritten, for a connection is replaced by this one instead of queueing
    /// both, so a slow client gets the latest state, not a backlog of stale ones.
    pub coalesce: Option<Arc<str>>,
}

/// Where a [`Push`] goes.
#[derive(Debug)]
pub enum PushTo {
    /// Every connection of each user, each user with its own frames.
    Users(Vec<(Arc<str>, Frames)>),
    /// One connection.
    Client(ClientId, Frames),
    /// Every subscriber of a channel, except one connection.
    Channel {
        /// Channel name.
        channel: Arc<str>,
        /// The connection left out (the sender).
        except: Option<ClientId>,
        /// The frames.
        frames: Frames,
    },
}

/// Parse a client id (`shard.slot.generation`, as `connect` names it).
pub fn parse_client_id(s: &str) -> Option<ClientId> {
    let mut it = s.split('.');
    let id = ClientId {
        shard: it.next()?.parse().ok()?,
        slot: it.next()?.parse().ok()?,
        gen: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_and_refuse_garbage() {
        let id = ClientId {
            shard: 1,
            slot: 42,
            gen: 7,
        };
        assert_eq!(parse_client_id(&id.to_string()), Some(id));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1..3", "70000.1.1", "-1.2.3"] {
            assert_eq!(parse_client_id(bad), None, "{bad}");
        }
    }
}
