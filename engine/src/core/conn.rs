//! One connection's state on its shard.
//!
//! Owns [`Conn`] (lifecycle state, reassembly, outbound queue, subscriptions, identity,
//! the rarely used parts boxed aside), [`ConnKey`] and a user's connection list. Does
//! not own what happens to a connection: the feature files of [`super`] do that.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use switchboard_protocol::{Format, MessageAssembler};

use crate::auth::Identity;
use crate::limits::Buckets;
use crate::outq::OutQueue;

/// Identifies a connection across threads: its slab slot and a generation, so an
/// answer for a connection that has gone (and whose slot was reused) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Slab slot on its shard.
    pub slot: u32,
    /// Generation of the connection in that slot.
    pub gen: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Reading the HTTP upgrade request.
    Handshaking,
    /// Upgraded; waiting for `connect`.
    AwaitingConnect,
    /// `connect` sent to the control plane; waiting for its verdict.
    Authenticating {
        /// Id of the `connect` command to answer.
        req_id: u32,
    },
    /// Authenticated; commands allowed.
    Open,
    /// An HTTP request to the Engine.IO endpoint waits for its session's answer (a
    /// poll, a post, a WebSocket's attach); input is paused until it comes.
    HttpWaiting,
    /// A close frame (or HTTP error) is queued; nothing more is read or queued.
    Closing,
    /// Everything is flushed and the write side shut; waiting for the peer to end.
    Draining,
    /// The backend must drop the socket and call `remove`.
    Closed,
}

/// What the backend does after a connection's queue emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    /// Nothing.
    Nothing,
    /// The close frame went out: shut down the write side of the socket.
    ShutdownWrite,
}

/// One connection's state on its shard.
#[derive(Debug)]
pub struct Conn {
    /// Generation, matched against [`ConnKey::gen`].
    pub(super) gen: u32,
    /// Lifecycle state.
    pub(super) state: ConnState,
    /// Envelope format chosen by the subprotocol.
    pub(super) format: Format,
    /// No format was asked for (no subprotocol, no `?format=json`): the first message
    /// decides — a text frame means JSON, a binary frame MessagePack.
    pub(super) format_open: bool,
    /// Peer address, released from the per-IP count on removal.
    pub(super) peer: IpAddr,
    /// Tick the current phase began (accept, upgrade, close).
    pub(super) since: u32,
    /// Tick of the last bytes received (liveness).
    pub(super) last_rx: u32,
    /// Tick at which this connection's single valid wheel entry is due.
    pub(super) next_visit: u32,
    /// A ping was sent and nothing has been received since.
    pub(super) ping_sent: bool,
    /// Listed in the shard's dirty list.
    pub(super) dirty: bool,
    /// Input is paused: its outbound queue is above the high-water mark (half of
    /// `max_outbound_bytes`) or its `connect` is being verified. Bytes that arrive
    /// meanwhile wait in `pending_in` unprocessed, and the backend stops reading the
    /// socket (TCP flow control then slows the client) until the core resumes it.
    pub(super) input_paused: bool,
    /// Bytes of an incomplete request or frame (allocated only while incomplete).
    pub(super) pending_in: Option<BytesMut>,
    /// Fragmented message state (a pointer while idle).
    pub(super) assembler: MessageAssembler,
    /// Frames waiting for the socket.
    pub(super) out: OutQueue,
    /// Channels subscribed, for cleanup on close.
    pub(super) subs: Vec<Arc<str>>,
    /// Set once authenticated.
    pub(super) identity: Option<Arc<Identity>>,
    /// Tick the last reconnect token was issued (`u32::MAX`: none yet).
    pub(super) token_at: u32,
    /// What only some connections use, allocated on first use (keeps a plain
    /// subscriber small).
    pub(super) ext: Option<Box<ConnExt>>,
    /// Its rate-limit state, made on its first command while connection rules exist
    /// (64 bytes; kept out of `ext` so a limited connection does not pay for all of it).
    pub(super) limits: Option<Box<ConnLimits>>,
    /// An Engine.IO session (Socket.IO client) or relay: this connection speaks
    /// Engine.IO packets instead of Switchboard envelopes.
    pub(super) eio: Option<Box<super::eio::EioSession>>,
}

/// A connection's rate-limit state.
#[derive(Debug, Default)]
pub(super) struct ConnLimits {
    /// Its buckets, one per event.
    pub(super) buckets: Buckets,
    /// Commands refused by a rate limit in a row.
    pub(super) refused_in_a_row: u32,
    /// Its user's key in the shared user buckets (0: not looked up yet).
    pub(super) user_key: u64,
}

/// The parts of a connection's state only some connections use.
#[derive(Debug, Default)]
pub(super) struct ConnExt {
    /// Token from `Authorization: Bearer` on the upgrade, used by a token-less `connect`.
    pub(super) bearer: Option<Box<str>>,
    /// Device id given in `connect` (its inbox cursor).
    pub(super) device: Option<Box<str>>,
    /// Presence status set with `status` (`None`: online).
    pub(super) status: Option<Arc<str>>,
    /// The channel this connection is typing in, and the tick its start was last sent.
    pub(super) typing: Option<(Arc<str>, u32)>,
    /// The channel its user's own presence is reported on (`online:<user>`), when
    /// user presence is on.
    pub(super) presence_self: Option<Arc<str>>,
    /// It sent a call command: the call worker hears when it goes.
    pub(super) in_call: bool,
    /// The HTTP request to the Engine.IO endpoint being answered.
    pub(super) http: Option<Box<super::eio::HttpCtx>>,
    /// Coalescing keys of control-plane pushes sent to it, with the last frame of each
    /// (replaced in the queue by the next one while still unwritten). At most
    /// [`MAX_COALESCE_KEYS`], oldest dropped.
    pub(super) coalesced: Vec<(Arc<str>, Bytes)>,
}

/// Most coalescing keys remembered per connection.
pub(super) const MAX_COALESCE_KEYS: usize = 8;

impl Conn {
    /// An Engine.IO session without a socket of its own (polling, or relayed).
    #[inline]
    pub(super) fn socketless(&self) -> bool {
        self.eio.as_ref().is_some_and(|e| e.socketless())
    }

    pub(super) fn ext(&self) -> Option<&ConnExt> {
        self.ext.as_deref()
    }

    pub(super) fn ext_mut(&mut self) -> &mut ConnExt {
        self.ext.get_or_insert_with(Default::default)
    }

    pub(super) fn device(&self) -> Option<&str> {
        self.ext()?.device.as_deref()
    }

    pub(super) fn typing_in(&self) -> Option<&(Arc<str>, u32)> {
        self.ext()?.typing.as_ref()
    }

    pub(super) fn presence_self(&self) -> Option<Arc<str>> {
        self.ext()?.presence_self.clone()
    }
}

/// A user's connections on one shard: one inline (the common case), more in a list.
#[derive(Debug, Default)]
pub(super) enum UserConns {
    #[default]
    None,
    One([u32; 1]),
    Many(Vec<u32>),
}

impl UserConns {
    pub(super) fn slots(&self) -> &[u32] {
        match self {
            UserConns::None => &[],
            UserConns::One(s) => s,
            UserConns::Many(v) => v,
        }
    }

    pub(super) fn add(&mut self, slot: u32) {
        *self = match std::mem::take(self) {
            UserConns::None => UserConns::One([slot]),
            UserConns::One([a]) => UserConns::Many(vec![a, slot]),
            UserConns::Many(mut v) => {
                v.push(slot);
                UserConns::Many(v)
            }
        };
    }

    /// Remove `slot`; true when none is left.
    pub(super) fn remove(&mut self, slot: u32) -> bool {
        match self {
            UserConns::None => true,
            UserConns::One([a]) => *a == slot,
            UserConns::Many(v) => {
                v.retain(|&s| s != slot);
                if v.len() == 1 {
                    *self = UserConns::One([v[0]]);
                }
                false
            }
        }
    }
}

#[inline]
pub(super) fn mark_dirty(conn: &mut Conn, slot: u32, dirty: &mut Vec<u32>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// The users with connections on this shard, and what the shard remembers of users.
#[derive(Debug, Default)]
pub(super) struct Users {
    /// Each user's open connections on this shard (personal channels, server-side
    /// subscriptions, notifications and calls).
    pub(super) conns: HashMap<Arc<str>, UserConns>,
    /// When users whose last connection here closed were last seen (Unix ms; at most
    /// `MAX_LAST_SEEN` users, then it starts over).
    pub(super) last_seen: HashMap<Arc<str>, u64>,
    /// Users whose tokens were revoked, and when (reconnect tokens issued before are
    /// refused).
    pub(super) revoked: HashMap<Arc<str>, u64>,
}
