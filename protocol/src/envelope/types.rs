//! The envelope types: formats, payloads, positions, commands, error codes, limits.
//!
//! Owns the shapes every side agrees on (`docs/PROTOCOL.md`) and the validity rules of
//! names (channels, topics, keys). Does not decode or encode anything.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::frame::OpCode;
use crate::Error;

/// The subprotocol names, in the server's order of preference.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";
/// The JSON flavour of the same envelopes.
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";

/// Envelope encoding, fixed per connection by the negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `switchboard.v1.msgpack`, binary frames.
    MsgPack,
    /// `switchboard.v1.json`, text frames.
    Json,
    /// A Socket.IO session's: replies are acks (`43<id>[…]`), pushes and publications
    /// are events (`42["message:new",{…}]`), JSON inside, text frames
    /// ([`crate::envelope::sio`]). Never negotiated by subprotocol and never a
    /// payload's format (a Socket.IO client's payloads are JSON).
    SocketIo,
}

/// How many wire formats a publication may be encoded in: the width of every
/// per-format array (frames, subscriber counts, interest masks).
pub const FORMATS: usize = 3;

/// A bit per format, every format set.
pub const EVERY_FORMAT: u8 = (1 << FORMATS) - 1;

impl Format {
    /// Every format, for encode-once-per-format loops.
    pub const ALL: [Format; FORMATS] = [Format::MsgPack, Format::Json, Format::SocketIo];

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::MsgPack => SUBPROTOCOL_MSGPACK,
            Format::Json => SUBPROTOCOL_JSON,
            Format::SocketIo => "socket.io",
        }
    }

    /// The frame opcode used for this format's messages.
    pub fn opcode(self) -> OpCode {
        match self {
            Format::MsgPack => OpCode::Binary,
            Format::Json | Format::SocketIo => OpCode::Text,
        }
    }

    /// Index of this format in [`Format::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An opaque application payload: the raw encoding of one value in `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// Format the value is encoded in.
    pub format: Format,
    /// Raw bytes of exactly one MessagePack value or one JSON value.
    pub raw: &'a [u8],
}

impl Payload<'_> {
    /// The value, decoded (for the control plane, which re-encodes it in each format;
    /// off the hot path). MessagePack binary and extension values have no JSON
    /// equivalent and are refused.
    pub fn to_value(&self) -> Result<serde_json::Value, Error> {
        match self.format {
            Format::Json | Format::SocketIo => serde_json::from_slice(self.raw)
                .map_err(|e| Error::Envelope(format!("'data' is not JSON: {e}"))),
            Format::MsgPack => rmp_serde::from_slice(self.raw)
                .map_err(|e| Error::Envelope(format!("'data' has no JSON equivalent: {e}"))),
        }
    }
}

/// A publication that changes an earlier one of the same channel and epoch: an edit
/// (its data, and meta if it has any, replace the original's in history views) or a
/// deletion (the original reads as deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision {
    /// The original's offset.
    pub target: u64,
    /// A deletion (else an edit).
    pub delete: bool,
}

/// What happened to a publication since it was published, as history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revised {
    /// When the latest edit or the deletion was stored, Unix milliseconds.
    pub at_ms: u64,
    /// Deleted (else edited).
    pub deleted: bool,
}

/// Where a publication sits in its channel's stream: offsets rise by one per
/// publication; the epoch changes only when the stream's earlier positions are lost
/// (so a client can tell a gap from a quiet channel). On the wire the epoch is a
/// 16-digit lowercase hex string (safe in JSON numbers' 53 bits or not) and the offset
/// an unsigned integer; the first publication of an epoch has offset 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// Stream incarnation.
    pub epoch: u64,
    /// Publications in this epoch up to and including this one.
    pub offset: u64,
}

impl Position {
    /// The epoch as it travels: 16 lowercase hex digits.
    pub fn epoch_hex(&self) -> EpochHex {
        let mut b = [0u8; 16];
        let digits = b"0123456789abcdef";
        for (i, out) in b.iter_mut().enumerate() {
            *out = digits[((self.epoch >> (60 - 4 * i)) & 0xf) as usize];
        }
        EpochHex(b)
    }

    /// Parse the wire form of an epoch.
    pub fn parse_epoch(hex: &str) -> Option<u64> {
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }
}

/// An epoch's 16 hex digits, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochHex([u8; 16]);

impl EpochHex {
    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Position", 2)?;
        st.serialize_field("epoch", self.epoch_hex().as_str())?;
        st.serialize_field("offset", &self.offset)?;
        st.end()
    }
}

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Authenticate with a JWT.
    Connect {
        /// The JWT; absent when the upgrade request carried `Authorization: Bearer`, or
        /// when the client resumes with `reconnect`.
        token: Option<Cow<'a, str>>,
        /// A reconnect token from an earlier session: resume it instead of verifying a
        /// JWT (subscriptions restored, missed publications recovered).
        reconnect: Option<Cow<'a, str>>,
        /// The client's device id (per-device inbox cursor).
        device: Option<Cow<'a, str>>,
        /// With `reconnect`: the last position the client saw on each channel.
        positions: Vec<(String, Position)>,
    },
    /// Send a direct message to a user's inbox.
    Send {
        /// Recipient user id.
        user: Cow<'a, str>,
        /// The opaque payload.
        data: Payload<'a>,
        /// Message id: a retry with the same id within the dedupe window is not
        /// delivered twice.
        key: Option<Cow<'a, str>>,
        /// Opaque metadata.
        meta: Option<Payload<'a>>,
    },
    /// Replace an earlier publication's data (and meta), as a new publication of the
    /// channel that refers to it (its author, or a moderator).
    Edit {
        /// Channel name.
        channel: Cow<'a, str>,
        /// The original's offset.
        offset: u64,
        /// The original's epoch (default: the channel's current one).
        epoch: Option<u64>,
        /// The new data.
        data: Payload<'a>,
        /// The new metadata (absent: the original's stays).
        meta: Option<Payload<'a>>,
    },
    /// Delete an earlier publication, as a new publication of the channel that refers
    /// to it (its author, or a moderator).
    Delete {
        /// Channel name.
        channel: Cow<'a, str>,
        /// The original's offset.
        offset: u64,
        /// The original's epoch (default: the channel's current one).
        epoch: Option<u64>,
    },
    /// This device has processed its inbox up to `offset`.
    Ack {
        /// Inbox offset.
        offset: u64,
    },
    /// Record (and tell the channel's members) how far this user has received and read
    /// a channel.
    Receipt {
        /// Channel name.
        channel: Cow<'a, str>,
        /// Delivered up to this offset.
        delivered: Option<u64>,
        /// Read up to this offset.
        read: Option<u64>,
    },
    /// Who has received and read a channel up to where.
    Receipts {
        /// Channel name.
        channel: Cow<'a, str>,
    },
    /// Publish to a channel, or send to a user, at a later time.
    Schedule {
        /// Target channel (exactly one of `channel` and `user`).
        channel: Option<Cow<'a, str>>,
        /// Target user's inbox.
        user: Option<Cow<'a, str>>,
        /// The opaque payload.
        data: Payload<'a>,
        /// Opaque metadata.
        meta: Option<Payload<'a>>,
        /// When, Unix milliseconds (or use `delay`).
        at: Option<u64>,
        /// In how many milliseconds.
        delay: Option<u64>,
    },
    /// Set this connection's presence status (`online`, `away`, `busy`, `in_call`,
    /// or any other 1–32 bytes) on every channel it is present on.
    Status {
        /// The status.
        status: Cow<'a, str>,
    },
    /// This user started (or stopped) typing in a subscribed channel.
    Typing {
        /// Channel name.
        channel: Cow<'a, str>,
        /// Started (true, the default) or stopped.
        typing: bool,
    },
    /// Who is on a channel: users, their connections and statuses.
    Presence {
        /// Channel name.
        channel: Cow<'a, str>,
    },
    /// How many users and connections are on a channel (cheap on big channels).
    PresenceCount {
        /// Channel name.
        channel: Cow<'a, str>,
    },
    /// Cancel a scheduled message.
    Unschedule {
        /// Its id, as the `schedule` reply gave it.
        schedule: u64,
    },
    /// Start receiving a channel's publications.
    Subscribe {
        /// Channel name.
        channel: Cow<'a, str>,
        /// Recover from this position: the reply carries every publication after it
        /// that the server still has, then the subscription continues live.
        since: Option<Position>,
    },
    /// Read a channel's retained publications.
    History {
        /// Channel name.
        channel: Cow<'a, str>,
        /// Which publications: bounds by position and time, direction, size (a
        /// `cursor` in the request is decoded into the page it continues).
        page: crate::history::Page,
    },
    /// Stop receiving a channel's publications.
    Unsubscribe {
        /// Channel name.
        channel: Cow<'a, str>,
    },
    /// Publish `data` to every subscriber of `channel`.
    Publish {
        /// Channel name.
        channel: Cow<'a, str>,
        /// The opaque payload.
        data: Payload<'a>,
        /// Idempotency key: a retry with the same key within the dedupe window gets the
        /// original position and is not delivered again.
        key: Option<Cow<'a, str>>,
        /// Opaque metadata (attachments, content type, client-side id), carried next to
        /// `data` in publications and history, never interpreted.
        meta: Option<Payload<'a>>,
        /// `false` (`"reply": false`): answer only a refusal, not the position — a
        /// fire-and-forget publish, as a Socket.IO emit without ack.
        reply: bool,
    },
    /// This user's notifications, newest first, and the unread count.
    Notifications {
        /// Most notifications in the reply (default 50, at most 500).
        limit: u32,
        /// Only notifications with an id below this one (paging).
        before: Option<u64>,
        /// Only unread ones.
        unread: bool,
    },
    /// Mark one notification, or all of them, as read (on every device of the user).
    NotificationsRead {
        /// The notification's id; `None`: all.
        notification: Option<u64>,
    },
    /// Subscribe this user to a notification topic, or unsubscribe.
    NotificationsTopic {
        /// Topic name.
        topic: Cow<'a, str>,
        /// Subscribe (true) or unsubscribe.
        subscribe: bool,
    },
    /// Start a call to a user (every device rings) or a room (its subscribers ring).
    Call {
        /// Callee user id (exactly one of `user` and `channel`).
        user: Option<Cow<'a, str>>,
        /// Room channel.
        channel: Option<Cow<'a, str>>,
        /// `audio`, `video` or another label of at most 32 bytes, passed on.
        media: Option<Cow<'a, str>>,
        /// Opaque data for the callee (shown while ringing).
        data: Option<Payload<'a>>,
    },
    /// Accept, reject or end a call.
    CallAction {
        /// The call's id.
        call: u64,
        /// What to do.
        action: CallAction,
        /// Why (rejections and ends), at most 128 bytes.
        reason: Option<Cow<'a, str>>,
    },
    /// Relay signaling data (SDP offer or answer, ICE candidate) to the other
    /// participant(s) of a call, or record a quality report.
    CallSignal {
        /// The call's id.
        call: u64,
        /// Client id of one participant (rooms); default: every other participant.
        to: Option<Cow<'a, str>>,
        /// The signaling data or report.
        data: Payload<'a>,
        /// A quality report (stored, not relayed) instead of signaling data.
        quality: bool,
    },
    /// Round trip; the reply is empty.
    Ping,
    /// Decodable envelope with an `id` but an unknown command or a missing or mistyped
    /// field: answered with error [`ErrorCode::BadRequest`], the connection stays open.
    Invalid(&'static str),
}

/// What `call_accept`, `call_reject` and `call_end` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAction {
    /// Answer a ringing call (or join a room call).
    Accept,
    /// Decline a ringing call.
    Reject,
    /// Hang up (or cancel a call still ringing).
    End,
}

/// A command with the id its reply carries back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Client-chosen id, echoed in the reply.
    pub id: u32,
    /// The command.
    pub command: Command<'a>,
}

/// Numeric error codes carried in error replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// Unexpected server failure.
    Internal = 100,
    /// The token is invalid (bad signature, malformed, wrong issuer/audience, not yet valid).
    Unauthorized = 101,
    /// A command other than `connect`/`ping` before a successful `connect`.
    NotConnected = 102,
    /// The token's `channels` claim does not allow this channel.
    PermissionDenied = 103,
    /// Unknown command, missing or mistyped field, invalid channel name.
    BadRequest = 104,
    /// `connect` on a connection that is already connected.
    AlreadyConnected = 105,
    /// `subscribe` to a channel already subscribed.
    AlreadySubscribed = 106,
    /// `unsubscribe` from a channel not subscribed.
    NotSubscribed = 107,
    /// The server cannot take this now (queues full); retry with backoff.
    Overloaded = 108,
    /// The token has expired; get a fresh one.
    TokenExpired = 109,
    /// A per-connection limit was reached (for example subscriptions).
    LimitExceeded = 110,
    /// The store cannot write now: a publication that must be stored was not
    /// accepted; retry later.
    Unavailable = 111,
    /// No such thing (a scheduled message that does not exist, is not the caller's,
    /// or has already fired or been cancelled).
    NotFound = 112,
    /// The state of the thing forbids it now: a call already answered on another
    /// device, ended, or not in a state that allows this transition.
    Conflict = 113,
    /// A rate limit was exceeded; `retry_after_ms` says when the next one fits.
    RateLimited = 114,
}

/// Result of a successful `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// Server-assigned id of this connection.
    pub client: String,
    /// User id (the token's `sub`).
    pub user: String,
    /// Shard (core) serving the connection.
    pub shard: u16,
    /// Interval at which the server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// Token expiry, Unix seconds, if the token has one.
    pub expires_at: Option<u64>,
    /// The device id given in `connect`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A signed token that resumes this session (`connect` with `reconnect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_token: Option<String>,
    /// When `reconnect_token` expires, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_expires_at: Option<u64>,
    /// Whether this `connect` resumed an earlier session.
    #[serde(default)]
    pub resumed: bool,
}

/// Result of commands that return nothing but success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Empty {}

/// Longest presence status, in bytes.
pub const MAX_STATUS_BYTES: usize = 32;

/// Longest call media label, in bytes.
pub const MAX_MEDIA_BYTES: usize = 32;

/// Longest reason given to reject or end a call, in bytes.
pub const MAX_REASON_BYTES: usize = 128;

/// Longest notification topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 128;

/// Whether `topic` is a valid notification topic: 1 to 128 bytes of ASCII letters,
/// digits and `_ - . : @`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b))
}

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Whether `name` is a valid channel name: 1 to 255 bytes, no whitespace or control
/// characters.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}
