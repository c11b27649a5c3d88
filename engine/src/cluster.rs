//! The engine's side of nodes sharing Redis: what a channel's owner shard hands the
//! cluster thread, and what comes back.
//!
//! With a [`ClusterLink`] attached, a channel that is not a user's personal channel is
//! *shared*: its positions come from Redis (one sequence per channel for every node),
//! and its publications reach this node's subscribers as records the cluster thread
//! receives from Redis, on the channel's owner shard, which encodes each once per
//! format and fans it out as it would a local one. The owner hands the cluster thread,
//! once per loop turn, a [`ClusterBatch`]: publications to sequence, channels this
//! node now has (or no longer has) subscribers for, and channels whose epoch must move
//! because they were published here while Redis was away.
//!
//! Owns those types and the bounded queue they travel on. Does not own Redis (the
//! control plane's `cluster` module) or what a shard does with them
//! (`core::shared`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::{Format, Position};

use crate::publications::PublishReply;

/// A publication for Redis to sequence (and keep, and send to every interested node).
#[derive(Debug)]
pub struct SharedPublish {
    /// Channel name.
    pub channel: Arc<str>,
    /// The payload, in `format`.
    pub data: Bytes,
    /// Opaque metadata, in `format`.
    pub meta: Option<Bytes>,
    /// Format of `data` and `meta`.
    pub format: Format,
    /// Sender's user id (direct messages).
    pub from: Option<Arc<str>>,
    /// The event a backend named it with.
    pub event: Option<Arc<str>>,
    /// The user who published it (edit rights, data requests).
    pub author: Option<Arc<str>>,
    /// It edits or deletes an earlier publication of the channel.
    pub revises: Option<switchboard_protocol::Revision>,
    /// Idempotency key (deduplicated across nodes, in Redis).
    pub key: Option<Box<str>>,
    /// How many of the channel's records Redis keeps (its namespace's `keep`).
    pub keep: u32,
    /// How long Redis keeps the channel's stream after its last use, ms: the longer
    /// of `engine.stream_idle_ms` and its namespace's history age limit.
    pub ttl_ms: u64,
    /// The namespace is `sync`: answer only once Redis has it as durably as
    /// configured (`cluster.sync_replicas`).
    pub sync: bool,
    /// The namespace is stored (`async` or `sync`): once sequenced, the node that
    /// published it hands it to the store the nodes share, if they share one.
    pub stored: bool,
    /// When it entered the server.
    pub created: Instant,
    /// Who learns the position.
    pub reply: PublishReply,
}

/// A channel whose stream the owner wants from Redis.
#[derive(Debug, Clone)]
pub struct LinkReq {
    /// Channel name.
    pub channel: Arc<str>,
    /// Keep receiving its records (this node has subscribers); else read once (a
    /// history question).
    pub subscribe: bool,
    /// How long Redis keeps the stream after its last use, ms (as
    /// [`SharedPublish::ttl_ms`]).
    pub ttl_ms: u64,
}

/// A user's presence on a channel as this node sees it, for the cluster-wide union.
#[derive(Debug)]
pub struct PresenceOp {
    /// Channel name.
    pub channel: Arc<str>,
    /// User id.
    pub user: Arc<str>,
    /// The user's connections here, as JSON ([`crate::presence::UserView`]);
    /// `None`: the user is gone from this node.
    pub view: Option<String>,
    /// The user's status here.
    pub status: Arc<str>,
}

/// A presence question about a channel, answered with the union of every node.
#[derive(Debug)]
pub struct PresenceAsk {
    /// Channel name.
    pub channel: Arc<str>,
    /// Members too (else the counts).
    pub members: bool,
    /// Where the answer goes.
    pub answer: crate::mesh::Answer<crate::presence::PresenceList>,
}

/// An unsequenced push to a channel's subscribers on every node (typing).
#[derive(Debug)]
pub struct ChannelPush {
    /// Channel name.
    pub channel: Arc<str>,
    /// The push, encoded for every format.
    pub frames: [Bytes; switchboard_protocol::FORMATS],
}

/// What one shard hands the cluster thread in one loop turn.
#[derive(Debug, Default)]
pub struct ClusterBatch {
    /// The sending shard.
    pub shard: u16,
    /// Channels whose epoch Redis moves before anything else in the batch (they were
    /// published on this node alone while Redis was away).
    pub moves: Vec<Arc<str>>,
    /// Publications to sequence, in order.
    pub publishes: Vec<SharedPublish>,
    /// Channels to read (and subscribe to).
    pub links: Vec<LinkReq>,
    /// Channels this node no longer has subscribers for.
    pub unlinks: Vec<Arc<str>>,
    /// Presence changes for the union.
    pub presence: Vec<PresenceOp>,
    /// Presence questions.
    pub presence_asks: Vec<PresenceAsk>,
    /// Pushes for the channels' subscribers on the other nodes.
    pub pushes: Vec<ChannelPush>,
    /// Inbox cursors and receipts moved here, for every node.
    pub marks: Vec<crate::journal::MarkRecord>,
    /// Socket.IO sessions that ended here, recoverable on any node.
    pub sio_put: Vec<crate::journal::SessionRecord>,
    /// Session records recovered here (or gone): no other node may recover them.
    pub sio_del: Vec<u128>,
    /// Reconnecting Socket.IO clients whose session this node does not know: their
    /// record may be in Redis (the session ended on another node).
    pub sio_asks: Vec<SioAsk>,
    /// What users' connections here used of their per-user rate limits lately (for
    /// the other nodes to count against the same users).
    pub spent: Vec<UserSpent>,
}

/// What one user's connections on a node used of the user's per-user rate limits
/// since the node last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpent {
    /// The user.
    pub user: Arc<str>,
    /// The `tier` claim of its token (which rules apply).
    pub tier: Option<Arc<str>>,
    /// Events taken, per [`crate::limits::LimitEvent`] index.
    pub counts: [u32; crate::limits::EVENTS],
}

/// A reconnecting Socket.IO client's question, for the records in Redis.
#[derive(Debug)]
pub struct SioAsk {
    /// The session's pid.
    pub pid: u128,
    /// The shard that asks (the pid's home here), which gets the answer.
    pub shard: u16,
    /// The question itself (opaque outside the engine's core).
    pub ask: Box<crate::core::Ask>,
}

impl ClusterBatch {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
            && self.publishes.is_empty()
            && self.links.is_empty()
            && self.unlinks.is_empty()
            && self.presence.is_empty()
            && self.presence_asks.is_empty()
            && self.pushes.is_empty()
            && self.marks.is_empty()
            && self.sio_put.is_empty()
            && self.sio_del.is_empty()
            && self.sio_asks.is_empty()
            && self.spent.is_empty()
    }
}

/// One publication as Redis sequenced it, decoded on this node.
#[derive(Debug, Clone)]
pub struct RemoteRecord {
    /// Its position in the channel's cluster-wide stream.
    pub position: Position,
    /// When the publishing node handed it to Redis (Unix ms).
    pub sent_ms: u64,
    /// Format of `data` and `meta`.
    pub format: Format,
    /// The payload.
    pub data: Bytes,
    /// Opaque metadata.
    pub meta: Option<Bytes>,
    /// Sender's user id.
    pub from: Option<Arc<str>>,
    /// Event name.
    pub event: Option<Arc<str>>,
    /// The user who published it.
    pub author: Option<Arc<str>>,
    /// It edits or deletes an earlier publication of the channel.
    pub revises: Option<switchboard_protocol::Revision>,
}

/// What the cluster thread tells a shard.
#[derive(Debug)]
pub enum ClusterMsg {
    /// Redis is reachable (again), link generation `gen`: shared channels are
    /// sequenced by Redis from now on; re-link every channel with subscribers.
    Up {
        /// Link generation (rises with every reconnection).
        gen: u64,
    },
    /// Redis is away: sequence shared channels here (and remember which, to move their
    /// epoch when it is back).
    Down {
        /// The generation that ended.
        gen: u64,
    },
    /// A channel's stream as Redis holds it, after this node subscribed to it (or for
    /// one read): its latest position and kept records, oldest first.
    Linked {
        /// Channel name.
        channel: Arc<str>,
        /// Link generation it was read in.
        gen: u64,
        /// Read after subscribing (else a one-off read).
        subscribed: bool,
        /// Latest position (`None`: never published).
        top: Option<Position>,
        /// Kept records.
        records: Vec<RemoteRecord>,
        /// The channel's inbox cursors and receipts as Redis holds them.
        marks: Vec<crate::journal::MarkRecord>,
    },
    /// The link could not read the channel (Redis error): questions parked for it are
    /// answered from what this node holds.
    LinkFailed {
        /// Channel name.
        channel: Arc<str>,
    },
    /// A live record of a channel this node subscribes to.
    Record {
        /// Channel name.
        channel: Arc<str>,
        /// The record.
        record: RemoteRecord,
    },
    /// Redis could not take this publication (the link went down with it in flight):
    /// sequence it on this node.
    Fallback(SharedPublish),
    /// A change of the channel's presence across the cluster: push it to the
    /// subscribers here.
    Presence {
        /// Channel name.
        channel: Arc<str>,
        /// What changed.
        event: crate::presence::Event,
    },
    /// A push from another node for the channel's subscribers here (typing).
    Push(ChannelPush),
    /// A cursor or receipt moved on another node.
    Mark(crate::journal::MarkRecord),
    /// The answer to a [`SioAsk`]: the record Redis held (taken: no other node gets
    /// it), if any.
    SioRecord {
        /// The question.
        ask: Box<crate::core::Ask>,
        /// The record.
        record: Option<crate::journal::SessionRecord>,
    },
    /// Users' rate-limit use on other nodes, to count here too (this shard is the
    /// users' owner: [`crate::streams::owner`] of the user id).
    Spent(Vec<UserSpent>),
}

/// Counters of the link, read by metrics.
#[derive(Debug, Default)]
pub struct ClusterLinkStats {
    /// Batches refused because the cluster thread's queue was full.
    pub refused: AtomicU64,
    /// Publications sequenced on this node alone because Redis was away.
    pub local_only: AtomicU64,
    /// Records delivered from Redis.
    pub records: AtomicU64,
    /// Times a shard found a gap or a new epoch in a channel's records and re-read it.
    pub relinks: AtomicU64,
}

/// The owner shards' way to the cluster thread: a bounded queue of per-turn batches
/// (one wake-up of the cluster thread per shard turn at most, never a lock on the
/// message path).
#[derive(Debug, Clone)]
pub struct ClusterLink {
    tx: tokio::sync::mpsc::Sender<ClusterBatch>,
    stats: Arc<ClusterLinkStats>,
}

impl ClusterLink {
    /// A link holding at most `capacity` batches, and the cluster thread's end.
    pub fn new(capacity: usize) -> (ClusterLink, tokio::sync::mpsc::Receiver<ClusterBatch>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let link = ClusterLink {
            tx,
            stats: Arc::default(),
        };
        (link, rx)
    }

    /// Hand over a batch; given back when the queue is full or the thread is gone.
    pub fn send(&self, batch: ClusterBatch) -> Result<(), Box<ClusterBatch>> {
        self.tx.try_send(batch).map_err(|e| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(b)
                | tokio::sync::mpsc::error::TrySendError::Closed(b) => Box::new(b),
            }
        })
    }

    /// The link's counters.
    pub fn stats(&self) -> &Arc<ClusterLinkStats> {
        &self.stats
    }
}
