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
use switchboard_protocol::FORMATS;

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
        to: Option<PeerId>,
        /// The data.
        data: serde_json::Value,
        /// A quality report.
        quality: bool,
    },
}

impl ControlCommand {
    /// The client command it came from (counted by kind and result).
    pub fn kind(&self) -> crate::metrics::CommandKind {
        use crate::metrics::CommandKind;
        match self {
            ControlCommand::Notifications { .. } => CommandKind::Notifications,
            ControlCommand::NotificationsRead { .. } => CommandKind::NotificationsRead,
            ControlCommand::Topic { .. } => CommandKind::NotificationsTopic,
            ControlCommand::Call { .. } => CommandKind::Call,
            ControlCommand::CallAction { .. } => CommandKind::CallAction,
            ControlCommand::CallSignal { .. } => CommandKind::CallSignal,
        }
    }

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
pub type Frames = [Bytes; FORMATS];

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
    /// Every open connection (a broadcast).
    All(Frames),
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

/// A connection of a call as clients name it: `shard.slot.generation` on the node that
/// holds the call, or `node/shard.slot.generation` on another node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// Its node (`None`: the node that holds the call).
    pub node: Option<Arc<str>>,
    /// The connection there.
    pub client: ClientId,
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{n}/{}", self.client),
            None => write!(f, "{}", self.client),
        }
    }
}

/// Parse a [`PeerId`]: a client id, optionally after `node/` (a node id of at most
/// 128 bytes).
pub fn parse_peer_id(s: &str) -> Option<PeerId> {
    match s.rsplit_once('/') {
        None => Some(PeerId {
            node: None,
            client: parse_client_id(s)?,
        }),
        Some((node, client)) if !node.is_empty() && node.len() <= 128 => Some(PeerId {
            node: Some(Arc::from(node)),
            client: parse_client_id(client)?,
        }),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_name_a_node_or_not() {
        let p = parse_peer_id("n-2/1.42.7").unwrap();
        assert_eq!(p.node.as_deref(), Some("n-2"));
        assert_eq!(p.to_string(), "n-2/1.42.7");
        assert_eq!(parse_peer_id("1.42.7").unwrap().node, None);
        for bad in ["/1.2.3", "n/1.2", "n/", "a/b/c"] {
            assert_eq!(parse_peer_id(bad), None, "{bad}");
        }
    }

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

/// Which connections an admin action is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One connection.
    Client(ClientId),
    /// Every connection of a user.
    User(Arc<str>),
    /// Every connection.
    All,
}

/// Maintenance mode: new connections are refused with 4010 and the hint; connected
/// clients are told with a `maintenance` push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Maintenance {
    /// What clients are told.
    pub message: String,
    /// When to try again, milliseconds.
    pub retry_after_ms: u32,
}

/// Which connections to list (every condition given must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnFilter {
    /// Of this user.
    pub user: Option<String>,
    /// From this address.
    pub ip: Option<std::net::IpAddr>,
    /// Subscribed to this channel.
    pub channel: Option<String>,
    /// Open at least this long, milliseconds.
    pub min_age_ms: Option<u64>,
    /// This one connection (detail).
    pub client: Option<ClientId>,
    /// Include the subscriptions (detail).
    pub detail: bool,
}

/// A connection as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnView {
    /// Its id.
    #[serde(serialize_with = "as_string")]
    pub client: ClientId,
    /// Its user (absent before `connect`).
    pub user: Option<String>,
    /// Peer address.
    pub ip: String,
    /// `handshaking`, `awaiting_connect`, `authenticating`, `open`, `closing`.
    pub state: &'static str,
    /// `json` or `msgpack`.
    pub format: &'static str,
    /// Open for, milliseconds.
    pub age_ms: u64,
    /// Device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How many channels it is subscribed to.
    pub subscriptions: usize,
    /// Its channels (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Frames waiting to be written.
    pub queued_frames: usize,
    /// Bytes charged to its outbound queue.
    pub queued_bytes: usize,
    /// Commands refused by rate limits in a row.
    pub rate_limited_in_a_row: u32,
}

fn as_string<S: serde::Serializer>(c: &ClientId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

/// A shard's connections by state, and its outbound queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Upgrading (HTTP handshake).
    pub handshaking: u64,
    /// Upgraded, no successful `connect` yet (including a token being checked).
    pub awaiting_connect: u64,
    /// Connected.
    pub open: u64,
    /// Closing (close handshake, draining).
    pub closing: u64,
    /// Frames waiting in outbound queues.
    pub queued_frames: u64,
    /// Bytes charged to outbound queues.
    pub queued_bytes: u64,
    /// The deepest queue, bytes.
    pub max_queued_bytes: u64,
}

/// An admin action for a shard; each answers on its `done` channel.
#[derive(Debug)]
pub enum AdminOp {
    /// Close the target's connections with 4009 and `reason`; when `reconnect`, each
    /// is told to come back after a random delay below `spread_ms`.
    Disconnect {
        /// Which connections.
        who: Target,
        /// Why (sent to the clients).
        reason: Arc<str>,
        /// Whether they should reconnect.
        reconnect: bool,
        /// Spread of the reconnect hints, milliseconds (a drain).
        spread_ms: u32,
        /// How many were closed.
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// Turn maintenance on (`Some`) or off; answers how many connections were told.
    Maintenance {
        /// The mode.
        mode: Option<Arc<Maintenance>>,
        /// How many connections were told.
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// Close a user's connections with 4011 and refuse its reconnect tokens issued
    /// before `before_ms`.
    Revoke {
        /// The user.
        user: Arc<str>,
        /// Revocation time, Unix milliseconds.
        before_ms: u64,
        /// How many connections were closed.
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// When the user was last connected here (now, if it is).
    LastSeen {
        /// The user.
        user: Arc<str>,
        /// Unix milliseconds, if ever seen since the process started.
        done: tokio::sync::oneshot::Sender<Option<u64>>,
    },
    /// Count connections by state and what waits in their outbound queues (`/metrics`).
    Census {
        /// The counts.
        done: tokio::sync::oneshot::Sender<Census>,
    },
    /// Erase a user from this shard's memory (a data request): the publications it
    /// authored or sent that streams keep are redacted (data `null`, meta
    /// `{"redacted": true}`), and its inbox stream, if this shard has it, is dropped.
    Erase {
        /// The user.
        user: Arc<str>,
        /// The user's inbox channel (inboxes on).
        inbox: Option<Arc<str>>,
        /// Publications redacted.
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// List connections.
    List {
        /// Which.
        filter: ConnFilter,
        /// At most this many.
        limit: usize,
        /// The list.
        done: tokio::sync::oneshot::Sender<Vec<ConnView>>,
    },
}
