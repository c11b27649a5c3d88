//! Publications on their way: encoded frames, a publication handed to its channel's
//! owner for sequencing, and where its position goes.
//!
//! Owns [`Publication`] (encoded once per wire format, shared by every subscriber and
//! shard), [`SequenceReq`] and [`PublishReply`]. Does not own sequencing or fan-out
//! (`core::publish`, `core::fanout`) or the queues they travel on ([`crate::mesh`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::{ErrorCode, Format, Payload, Position, FORMATS};

use crate::core::ConnKey;

/// One message's complete WebSocket frames, indexed by `Format::index()`; `None`
/// where nobody needs that format.
pub type EncodedFrames = [Option<Bytes>; FORMATS];

/// A publication encoded once per wire format that has subscribers.
#[derive(Debug)]
pub struct Publication {
    /// Channel name.
    pub channel: Arc<str>,
    /// Its position in the channel's stream (assigned by the channel's owner shard).
    pub position: Position,
    /// Complete WebSocket frames, indexed by `Format::index()`; `None` where no
    /// subscriber needs that format.
    pub frames: EncodedFrames,
    /// When the publication entered the server (for publish-to-flush latency).
    pub created: Instant,
    /// An ephemeral push (typing): skipped for subscribers whose queue is half full
    /// instead of closing them, and not counted in delivery latency.
    pub droppable: bool,
}

/// A publication for the channel's owner shard to sequence and fan out.
#[derive(Debug)]
pub struct SequenceReq {
    /// Channel name.
    pub channel: Arc<str>,
    /// The payload: the raw bytes of one value in `format`.
    pub data: Bytes,
    /// Format of `data`.
    pub format: Format,
    /// When the publication entered the server.
    pub created: Instant,
    /// Idempotency key, if the publisher gave one.
    pub key: Option<Box<str>>,
    /// Opaque metadata, in `format`.
    pub meta: Option<Bytes>,
    /// Sender's user id, for direct messages.
    pub from: Option<Arc<str>>,
    /// The user who published it (a client's token; `None` for the server API):
    /// recorded with the publication, not shown (edit rights, data requests).
    pub author: Option<Arc<str>>,
    /// The event a backend named it with (Socket.IO subscribers get that event).
    pub event: Option<Arc<str>>,
    /// An edit or deletion of an earlier publication, to be checked by the owner.
    pub revision: Option<RevisionReq>,
    /// Who learns the position.
    pub reply: PublishReply,
    /// Past its namespace's AI gate (released by a fail-closed pipeline, or published
    /// by the server itself): sequenced without being handed to the pipeline first.
    pub screened: bool,
}

/// An edit or deletion on its way to the channel's owner, which checks it before
/// sequencing (see `core::revisions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionReq {
    /// What it changes.
    pub revises: switchboard_protocol::Revision,
    /// The epoch the client named (must be the channel's).
    pub epoch: Option<u64>,
    /// The editor may change others' publications (a namespace `moderate` rule).
    pub moderator: bool,
    /// The store has checked the original (its author, that it is not itself a
    /// revision, not deleted): the owner sequences it without looking again.
    pub checked: bool,
}

/// A sequenced publication's position, and whether it was a retry of an earlier one
/// (same idempotency key within the window: not delivered again).
pub type Sequenced = Result<(Position, bool), Refused>;

/// Why a publication was not sequenced: the error code and message the publisher gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Error code of the `publish` reply.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl SequenceReq {
    /// A publication to hand to the channel's owner: the payload (and metadata) are
    /// copied out of the caller's buffer, stamped with `created`.
    pub fn new(
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        from: Option<Arc<str>>,
        reply: PublishReply,
        created: Instant,
    ) -> SequenceReq {
        SequenceReq {
            channel: channel.into(),
            data: Bytes::copy_from_slice(data.raw),
            format: data.format,
            created,
            key: key.map(Box::from),
            meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
            from,
            author: None,
            event: None,
            revision: None,
            reply,
            screened: false,
        }
    }

    /// The same publication, past its namespace's AI gate.
    pub fn screened(mut self) -> SequenceReq {
        self.screened = true;
        self
    }

    /// The same publication, recorded as published by `author`.
    pub fn by(mut self, author: Option<Arc<str>>) -> SequenceReq {
        self.author = author;
        self
    }

    /// The same publication, named `event` for Socket.IO subscribers.
    pub fn with_event(mut self, event: Option<Arc<str>>) -> SequenceReq {
        self.event = event;
        self
    }
}

/// Where the position of a sequenced publication goes.
#[derive(Debug)]
pub enum PublishReply {
    /// Nobody waits.
    None,
    /// A client's `publish` command on shard `shard`.
    Client {
        /// Shard of the publishing connection.
        shard: u16,
        /// The publishing connection.
        conn: ConnKey,
        /// Id of its `publish` command.
        req_id: u32,
        /// Answer only a refusal (`"reply": false`, a Socket.IO emit without ack): a
        /// position is not sent, so it does not cross back from another shard either.
        quiet: bool,
    },
    /// The server API.
    Api(tokio::sync::oneshot::Sender<Sequenced>),
    /// Both: the publisher (a fail-closed message released by its AI pipeline), and
    /// the pipeline, which links its annotations to the position.
    Tee(Box<PublishReply>, tokio::sync::oneshot::Sender<Sequenced>),
}

impl PublishReply {
    /// Refuse from outside the shards (the control plane checked and said no): the
    /// message to send to the publisher's shard, if one waits there.
    pub fn refuse(self, refused: Refused) -> Option<(u16, crate::mesh::ShardMsg)> {
        match self {
            PublishReply::None => None,
            PublishReply::Client {
                shard,
                conn,
                req_id,
                ..
            } => Some((
                shard,
                crate::mesh::ShardMsg::Published {
                    conn,
                    req_id,
                    result: Err(refused),
                    quiet: false,
                },
            )),
            PublishReply::Api(tx) => {
                let _ = tx.send(Err(refused));
                None
            }
            PublishReply::Tee(inner, tx) => {
                let _ = tx.send(Err(refused.clone()));
                inner.refuse(refused)
            }
        }
    }
}
