//! The Switchboard v1 envelopes: client commands, replies, pushes; MessagePack and JSON.
//!
//! Owns the envelope shapes (documented in `docs/PROTOCOL.md`), decoding commands and
//! encoding replies and pushes straight into complete WebSocket frames. Does not own
//! what a command does (the engine) or token checks (the control plane).
//!
//! Every envelope is a map with string keys. The application payload (`data`) is opaque:
//! decoding keeps the raw bytes of that one value ([`Payload`]) and encoding a
//! publication splices them back unchanged, so user data is never re-encoded on the
//! fan-out path. Only a subscriber speaking the *other* format gets a transcoded copy,
//! made once per publication. MessagePack maps are walked with `rmp` (no allocation);
//! JSON maps are read by serde_json into borrowed `RawValue`s.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::{FrameBuilder, OpCode};
use crate::handshake::{SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::Error;

/// Envelope encoding, fixed per connection by the negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `switchboard.v1.msgpack`, binary frames.
    MsgPack,
    /// `switchboard.v1.json`, text frames.
    Json,
}

/// How many wire formats a publication may be encoded in: the width of every
/// per-format array (frames, subscriber counts, interest masks). A new format (the
/// Socket.IO session's) widens it here.
pub const FORMATS: usize = 2;

/// A bit per format, every format set.
pub const EVERY_FORMAT: u8 = (1 << FORMATS) - 1;

impl Format {
    /// Every format, for encode-once-per-format loops.
    pub const ALL: [Format; FORMATS] = [Format::MsgPack, Format::Json];

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::MsgPack => SUBPROTOCOL_MSGPACK,
            Format::Json => SUBPROTOCOL_JSON,
        }
    }

    /// The frame opcode used for this format's messages.
    pub fn opcode(self) -> OpCode {
        match self {
            Format::MsgPack => OpCode::Binary,
            Format::Json => OpCode::Text,
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
            Format::Json => serde_json::from_slice(self.raw)
                .map_err(|e| Error::Envelope(format!("'data' is not JSON: {e}"))),
            Format::MsgPack => rmp_serde::from_slice(self.raw)
                .map_err(|e| Error::Envelope(format!("'data' has no JSON equivalent: {e}"))),
        }
    }
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
        /// Forward: publications after this offset; reverse: before it (0: from the end).
        since: u64,
        /// Most publications in the reply.
        limit: u32,
        /// Newest first.
        reverse: bool,
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

/// Declares the known top-level keys of an envelope once: [`RawFields`] (the raw value
/// bytes of each), its lookup by key for MessagePack, and the borrowed serde struct
/// JSON envelopes are read into.
macro_rules! envelope_fields {
    ($($name:ident),* $(,)?) => {
        /// The raw value bytes of the known top-level keys of an envelope.
        #[derive(Debug, Default, Clone, Copy)]
        struct RawFields<'a> {
            $($name: Option<&'a [u8]>,)*
        }

        impl<'a> RawFields<'a> {
            fn slot(&mut self, key: &str) -> Option<&mut Option<&'a [u8]>> {
                Some(match key {
                    $(stringify!($name) => &mut self.$name,)*
                    _ => return None,
                })
            }
        }

        #[derive(Deserialize)]
        struct JsonFields<'a> {
            $(
                #[serde(borrow, default, deserialize_with = "present")]
                $name: Option<&'a RawValue>,
            )*
        }

        impl<'a> JsonFields<'a> {
            fn raw(self) -> RawFields<'a> {
                RawFields {
                    $($name: self.$name.map(|v| v.get().as_bytes()),)*
                }
            }
        }
    };
}

envelope_fields!(
    id,
    cmd,
    token,
    channel,
    data,
    push,
    result,
    error,
    code,
    message,
    reason,
    reconnect,
    offset,
    epoch,
    since,
    limit,
    reverse,
    key,
    meta,
    device,
    positions,
    user,
    delivered,
    read,
    at,
    delay,
    schedule,
    status,
    typing,
    topic,
    before,
    unread,
    all,
    notification,
    call,
    to,
    media,
);

/// A key that is present holds a value, even `null` (plain `Option` would turn a
/// `null` payload into "missing").
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn fields(format: Format, bytes: &[u8]) -> Result<RawFields<'_>, Error> {
    match format {
        Format::Json => {
            // serde's derive would also accept an array as a struct: envelopes are objects.
            if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(Error::Envelope("not a JSON object".into()));
            }
            let f: JsonFields<'_> = serde_json::from_slice(bytes)
                .map_err(|e| Error::Envelope(format!("not a JSON object: {e}")))?;
            Ok(f.raw())
        }
        Format::MsgPack => {
            let mut rest = bytes;
            let n = rmp::decode::read_map_len(&mut rest)
                .map_err(|_| Error::Envelope("not a MessagePack map".into()))?;
            let mut out = RawFields::default();
            for _ in 0..n {
                let (key, after) = rmp::decode::read_str_from_slice(rest)
                    .map_err(|_| Error::Envelope("map key is not a string".into()))?;
                let len = msgpack_value_len(after)?;
                if let Some(slot) = out.slot(key) {
                    *slot = Some(&after[..len]);
                }
                rest = &after[len..];
            }
            if !rest.is_empty() {
                return Err(Error::Envelope("trailing bytes after the envelope".into()));
            }
            Ok(out)
        }
    }
}

/// Length in bytes of the one MessagePack value at the start of `buf`.
///
/// Iterative (a counter of values still to skip), so nesting depth cannot overflow the
/// stack; every declared length is checked against the bytes actually present.
pub fn msgpack_value_len(buf: &[u8]) -> Result<usize, Error> {
    use rmp::Marker as M;
    let truncated = || Error::Envelope("truncated MessagePack value".into());
    let be = |at: usize, n: usize| -> Result<usize, Error> {
        let b = buf.get(at..at + n).ok_or_else(truncated)?;
        Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize))
    };
    let mut pos = 0usize;
    let mut remaining = 1usize;
    while remaining > 0 {
        remaining -= 1;
        let marker = M::from_u8(*buf.get(pos).ok_or_else(truncated)?);
        pos += 1;
        let (skip, items) = match marker {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => (0, 0),
            M::U8 | M::I8 => (1, 0),
            M::U16 | M::I16 => (2, 0),
            M::U32 | M::I32 | M::F32 => (4, 0),
            M::U64 | M::I64 | M::F64 => (8, 0),
            M::FixStr(n) => (n as usize, 0),
            M::Str8 | M::Bin8 => (1 + be(pos, 1)?, 0),
            M::Str16 | M::Bin16 => (2 + be(pos, 2)?, 0),
            M::Str32 | M::Bin32 => (4 + be(pos, 4)?, 0),
            M::FixArray(n) => (0, n as usize),
            M::Array16 => (2, be(pos, 2)?),
            M::Array32 => (4, be(pos, 4)?),
            M::FixMap(n) => (0, 2 * n as usize),
            M::Map16 => (2, 2 * be(pos, 2)?),
            M::Map32 => (4, 2 * be(pos, 4)?),
            M::FixExt1 => (2, 0),
            M::FixExt2 => (3, 0),
            M::FixExt4 => (5, 0),
            M::FixExt8 => (9, 0),
            M::FixExt16 => (17, 0),
            M::Ext8 => (2 + be(pos, 1)?, 0),
            M::Ext16 => (3 + be(pos, 2)?, 0),
            M::Ext32 => (5 + be(pos, 4)?, 0),
            M::Reserved => return Err(Error::Envelope("reserved MessagePack marker".into())),
        };
        pos = pos
            .checked_add(skip)
            .filter(|&p| p <= buf.len())
            .ok_or_else(truncated)?;
        // Every item takes at least one byte: a count larger than what is left is a lie.
        if items > buf.len() - pos {
            return Err(truncated());
        }
        remaining += items;
    }
    Ok(pos)
}

fn read_u64(format: Format, raw: &[u8]) -> Option<u64> {
    match format {
        Format::MsgPack => {
            let mut r = raw;
            rmp::decode::read_int::<u64, _>(&mut r).ok()
        }
        Format::Json => serde_json::from_slice::<u64>(raw).ok(),
    }
}

fn read_bool(format: Format, raw: &[u8]) -> Option<bool> {
    match format {
        Format::MsgPack => {
            let mut r = raw;
            rmp::decode::read_bool(&mut r).ok()
        }
        Format::Json => serde_json::from_slice::<bool>(raw).ok(),
    }
}

fn read_str(format: Format, raw: &[u8]) -> Option<Cow<'_, str>> {
    match format {
        Format::MsgPack => rmp::decode::read_str_from_slice(raw)
            .ok()
            .map(|(s, _)| Cow::Borrowed(s)),
        Format::Json => match serde_json::from_slice::<&str>(raw) {
            Ok(s) => Some(Cow::Borrowed(s)),
            // Escapes in the string: it cannot be borrowed.
            Err(_) => serde_json::from_slice::<String>(raw).ok().map(Cow::Owned),
        },
    }
}

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

fn read_position(format: Format, raw: &[u8]) -> Option<Position> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        epoch: Cow<'a, str>,
        offset: u64,
    }
    let w: Wire<'_> = match format {
        Format::MsgPack => rmp_serde::from_slice(raw).ok()?,
        Format::Json => serde_json::from_slice(raw).ok()?,
    };
    Some(Position {
        epoch: Position::parse_epoch(&w.epoch)?,
        offset: w.offset,
    })
}

fn read_positions(format: Format, raw: &[u8]) -> Option<Vec<(String, Position)>> {
    #[derive(Deserialize)]
    struct Wire {
        epoch: String,
        offset: u64,
    }
    let map: std::collections::BTreeMap<String, Wire> = match format {
        Format::MsgPack => rmp_serde::from_slice(raw).ok()?,
        Format::Json => serde_json::from_slice(raw).ok()?,
    };
    map.into_iter()
        .map(|(channel, w)| {
            Some((
                channel,
                Position {
                    epoch: Position::parse_epoch(&w.epoch)?,
                    offset: w.offset,
                },
            ))
        })
        .collect()
}

/// Decode one client command.
///
/// An envelope that is not a map, or has no numeric `id`, is an [`Error::Envelope`]
/// (the connection is closed with 4000). One with an id but an unknown `cmd` or a bad
/// field decodes to [`Command::Invalid`] so the client gets an error reply.
pub fn decode_request<'a>(format: Format, bytes: &'a [u8]) -> Result<Request<'a>, Error> {
    let f = fields(format, bytes)?;
    let id =
        f.id.and_then(|raw| read_u64(format, raw))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                Error::Envelope("missing or invalid 'id' (unsigned 32-bit integer)".into())
            })?;
    let str_field = |raw: Option<&'a [u8]>| raw.and_then(|r| read_str(format, r));
    let command = match str_field(f.cmd).as_deref() {
        None => Command::Invalid("missing or invalid 'cmd'"),
        Some("connect") => {
            let token = f.token.map(|r| read_str(format, r));
            let reconnect = f.reconnect.map(|r| read_str(format, r));
            let device = f.device.map(|r| read_str(format, r));
            let positions = f.positions.map(|r| read_positions(format, r));
            match (token, reconnect, device, positions) {
                (Some(None), ..) => Command::Invalid("'token' must be a string"),
                (_, Some(None), ..) => Command::Invalid("'reconnect' must be a string"),
                (_, _, Some(None), _) => Command::Invalid("'device' must be a string"),
                (_, _, Some(Some(d)), _) if d.is_empty() || d.len() > MAX_KEY_BYTES => {
                    Command::Invalid("'device' must be 1 to 128 bytes")
                }
                (.., Some(None)) => Command::Invalid(
                    "'positions' must map channel names to {epoch: 16 hex digits, offset: integer}",
                ),
                (token, reconnect, device, positions) => Command::Connect {
                    token: token.flatten(),
                    reconnect: reconnect.flatten(),
                    device: device.flatten(),
                    positions: positions.flatten().unwrap_or_default(),
                },
            }
        }
        Some("send") => match (
            str_field(f.user),
            f.data,
            f.key.map(|r| read_str(format, r)),
        ) {
            (_, _, Some(None)) => Command::Invalid("'key' must be a string"),
            (_, _, Some(Some(k))) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
                Command::Invalid("'key' must be 1 to 128 bytes")
            }
            (Some(user), Some(raw), key) => Command::Send {
                user,
                data: Payload { format, raw },
                key: key.flatten(),
                meta: f.meta.map(|raw| Payload { format, raw }),
            },
            _ => Command::Invalid("send needs a 'user' string and 'data'"),
        },
        Some("ack") => match f.offset.and_then(|r| read_u64(format, r)) {
            Some(offset) => Command::Ack { offset },
            None => Command::Invalid("ack needs an 'offset' (integer)"),
        },
        Some("receipt") => {
            let delivered = f.delivered.map(|r| read_u64(format, r));
            let read = f.read.map(|r| read_u64(format, r));
            match (str_field(f.channel), delivered, read) {
                (None, ..) => Command::Invalid("receipt needs a 'channel' string"),
                (_, Some(None), _) | (_, _, Some(None)) => {
                    Command::Invalid("'delivered' and 'read' must be offsets (integers)")
                }
                (_, None, None) => Command::Invalid("receipt needs 'delivered' or 'read'"),
                (Some(channel), delivered, read) => Command::Receipt {
                    channel,
                    delivered: delivered.flatten(),
                    read: read.flatten(),
                },
            }
        }
        Some("receipts") => match str_field(f.channel) {
            Some(channel) => Command::Receipts { channel },
            None => Command::Invalid("receipts needs a 'channel' string"),
        },
        Some("schedule") => {
            let channel = f.channel.map(|r| read_str(format, r));
            let user = f.user.map(|r| read_str(format, r));
            let at = f.at.map(|r| read_u64(format, r));
            let delay = f.delay.map(|r| read_u64(format, r));
            match (channel, user, at, delay, f.data) {
                (Some(None), ..) | (_, Some(None), ..) => {
                    Command::Invalid("'channel' and 'user' must be strings")
                }
                (Some(_), Some(_), ..) | (None, None, ..) => {
                    Command::Invalid("schedule needs exactly one of 'channel' and 'user'")
                }
                (_, _, Some(None), ..) | (_, _, _, Some(None), _) => {
                    Command::Invalid("'at' and 'delay' must be milliseconds (integers)")
                }
                (_, _, Some(_), Some(_), _) | (_, _, None, None, _) => {
                    Command::Invalid("schedule needs exactly one of 'at' and 'delay'")
                }
                (.., None) => Command::Invalid("schedule needs 'data'"),
                (channel, user, at, delay, Some(raw)) => Command::Schedule {
                    channel: channel.flatten(),
                    user: user.flatten(),
                    data: Payload { format, raw },
                    meta: f.meta.map(|raw| Payload { format, raw }),
                    at: at.flatten(),
                    delay: delay.flatten(),
                },
            }
        }
        Some("status") => match str_field(f.status) {
            Some(s) if !s.is_empty() && s.len() <= MAX_STATUS_BYTES => {
                Command::Status { status: s }
            }
            _ => Command::Invalid("status needs a 'status' string of 1 to 32 bytes"),
        },
        Some("typing") => match (str_field(f.channel), f.typing.map(|r| read_bool(format, r))) {
            (_, Some(None)) => Command::Invalid("'typing' must be a boolean"),
            (Some(channel), typing) => Command::Typing {
                channel,
                typing: typing.flatten().unwrap_or(true),
            },
            (None, _) => Command::Invalid("typing needs a 'channel' string"),
        },
        Some("presence") => match str_field(f.channel) {
            Some(channel) => Command::Presence { channel },
            None => Command::Invalid("presence needs a 'channel' string"),
        },
        Some("presence_count") => match str_field(f.channel) {
            Some(channel) => Command::PresenceCount { channel },
            None => Command::Invalid("presence_count needs a 'channel' string"),
        },
        Some("unschedule") => match f.schedule.and_then(|r| read_u64(format, r)) {
            Some(schedule) => Command::Unschedule { schedule },
            None => Command::Invalid("unschedule needs 'schedule' (the id, an integer)"),
        },
        Some("subscribe") => match (
            str_field(f.channel),
            f.since.map(|r| read_position(format, r)),
        ) {
            (Some(channel), None) => Command::Subscribe {
                channel,
                since: None,
            },
            (Some(channel), Some(Some(p))) => Command::Subscribe {
                channel,
                since: Some(p),
            },
            (Some(_), Some(None)) => {
                Command::Invalid("'since' must be {epoch: 16 hex digits, offset: integer}")
            }
            (None, _) => Command::Invalid("subscribe needs a 'channel' string"),
        },
        Some("history") => {
            let since = f.since.map(|r| read_u64(format, r));
            let limit = f.limit.map(|r| read_u64(format, r));
            let reverse = f.reverse.map(|r| read_bool(format, r));
            match (str_field(f.channel), since, limit, reverse) {
                (None, ..) => Command::Invalid("history needs a 'channel' string"),
                (_, Some(None), ..) => Command::Invalid("'since' must be an offset (integer)"),
                (_, _, Some(None), _) => Command::Invalid("'limit' must be an integer"),
                (.., Some(None)) => Command::Invalid("'reverse' must be a boolean"),
                (Some(channel), since, limit, reverse) => Command::History {
                    channel,
                    since: since.flatten().unwrap_or(0),
                    limit: limit.flatten().unwrap_or(100).min(u64::from(u32::MAX)) as u32,
                    reverse: reverse.flatten().unwrap_or(false),
                },
            }
        }
        Some("unsubscribe") => match str_field(f.channel) {
            Some(channel) => Command::Unsubscribe { channel },
            None => Command::Invalid("unsubscribe needs a 'channel' string"),
        },
        Some("publish") => match (
            str_field(f.channel),
            f.data,
            f.key.map(|r| read_str(format, r)),
        ) {
            (_, _, Some(None)) => Command::Invalid("'key' must be a string"),
            (_, _, Some(Some(k))) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
                Command::Invalid("'key' must be 1 to 128 bytes")
            }
            (Some(channel), Some(raw), key) => Command::Publish {
                channel,
                data: Payload { format, raw },
                key: key.flatten(),
                meta: f.meta.map(|raw| Payload { format, raw }),
            },
            _ => Command::Invalid("publish needs a 'channel' string and 'data'"),
        },
        Some("notifications") => {
            let limit = f.limit.map(|r| read_u64(format, r));
            let before = f.before.map(|r| read_u64(format, r));
            let unread = f.unread.map(|r| read_bool(format, r));
            match (limit, before, unread) {
                (Some(None), ..) | (_, Some(None), _) => {
                    Command::Invalid("'limit' and 'before' must be integers")
                }
                (.., Some(None)) => Command::Invalid("'unread' must be a boolean"),
                (limit, before, unread) => Command::Notifications {
                    limit: limit.flatten().unwrap_or(50).clamp(1, 500) as u32,
                    before: before.flatten(),
                    unread: unread.flatten().unwrap_or(false),
                },
            }
        }
        Some("notifications_read") => {
            let one = f.notification.map(|r| read_u64(format, r));
            let all = f.all.map(|r| read_bool(format, r));
            match (one, all) {
                (Some(Some(n)), None) => Command::NotificationsRead {
                    notification: Some(n),
                },
                (None, Some(Some(true))) => Command::NotificationsRead { notification: None },
                _ => Command::Invalid(
                    "notifications_read needs 'notification' (an id) or 'all': true",
                ),
            }
        }
        Some(cmd @ ("notifications_subscribe" | "notifications_unsubscribe")) => {
            match str_field(f.topic) {
                Some(topic) if valid_topic(&topic) => Command::NotificationsTopic {
                    topic,
                    subscribe: cmd == "notifications_subscribe",
                },
                _ => Command::Invalid("needs a 'topic' of 1 to 128 letters, digits and _ - . : @"),
            }
        }
        Some("call") => {
            let channel = f.channel.map(|r| read_str(format, r));
            let user = f.user.map(|r| read_str(format, r));
            let media = f.media.map(|r| read_str(format, r));
            match (channel, user, media) {
                (Some(None), ..) | (_, Some(None), _) => {
                    Command::Invalid("'channel' and 'user' must be strings")
                }
                (Some(_), Some(_), _) | (None, None, _) => {
                    Command::Invalid("call needs exactly one of 'user' and 'channel'")
                }
                (_, _, Some(None)) => Command::Invalid("'media' must be a string"),
                (_, _, Some(Some(m))) if m.is_empty() || m.len() > MAX_MEDIA_BYTES => {
                    Command::Invalid("'media' must be 1 to 32 bytes")
                }
                (channel, user, media) => Command::Call {
                    user: user.flatten(),
                    channel: channel.flatten(),
                    media: media.flatten(),
                    data: f.data.map(|raw| Payload { format, raw }),
                },
            }
        }
        Some(cmd @ ("call_accept" | "call_reject" | "call_end")) => {
            let call = f.call.map(|r| read_u64(format, r));
            let reason = f.reason.map(|r| read_str(format, r));
            match (call, reason) {
                (None | Some(None), _) => Command::Invalid("needs 'call' (the call's id)"),
                (_, Some(None)) => Command::Invalid("'reason' must be a string"),
                (_, Some(Some(r))) if r.len() > MAX_REASON_BYTES => {
                    Command::Invalid("'reason' must be at most 128 bytes")
                }
                (Some(Some(call)), reason) => Command::CallAction {
                    call,
                    action: match cmd {
                        "call_accept" => CallAction::Accept,
                        "call_reject" => CallAction::Reject,
                        _ => CallAction::End,
                    },
                    reason: reason.flatten(),
                },
            }
        }
        Some(cmd @ ("call_signal" | "call_quality")) => {
            let call = f.call.map(|r| read_u64(format, r));
            let to = f.to.map(|r| read_str(format, r));
            match (call, to, f.data) {
                (None | Some(None), ..) => Command::Invalid("needs 'call' (the call's id)"),
                (_, Some(None), _) => Command::Invalid("'to' must be a client id string"),
                (.., None) => Command::Invalid("needs 'data'"),
                (Some(Some(call)), to, Some(raw)) => Command::CallSignal {
                    call,
                    to: to.flatten(),
                    data: Payload { format, raw },
                    quality: cmd == "call_quality",
                },
            }
        }
        Some("ping") => Command::Ping,
        Some(_) => Command::Invalid("unknown command"),
    };
    Ok(Request { id, command })
}

/// Whether `name` is a valid channel name: 1 to 255 bytes, no whitespace or control
/// characters.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(Serialize)]
struct ResultReply<'a, T: Serialize> {
    id: u32,
    result: &'a T,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u32>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    id: u32,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct DisconnectPush<'a> {
    push: &'static str,
    code: u16,
    reason: &'a str,
    reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_after_ms: Option<u32>,
}

fn encode_serde<T: Serialize>(format: Format, value: &T, hint: usize) -> Bytes {
    let mut b = FrameBuilder::with_capacity(hint);
    match format {
        Format::MsgPack => rmp_serde::encode::write_named(&mut b.writer(), value)
            .expect("serialising to memory cannot fail"),
        Format::Json => {
            serde_json::to_writer(b.writer(), value).expect("serialising to memory cannot fail")
        }
    }
    b.finish(format.opcode())
}

/// A complete frame carrying `{"id": id, "result": result}`.
pub fn encode_result<T: Serialize>(format: Format, id: u32, result: &T) -> Bytes {
    encode_serde(format, &ResultReply { id, result }, 64)
}

/// A complete frame carrying a push the server composes from a serialisable value
/// (which must include `"push": name`).
pub fn encode_push<T: Serialize>(format: Format, push: &T) -> Bytes {
    encode_serde(format, push, 96)
}

/// A complete frame carrying `{"id": id, "error": {"code": code, "message": message}}`.
pub fn encode_error(format: Format, id: u32, code: ErrorCode, message: &str) -> Bytes {
    encode_serde(
        format,
        &ErrorReply {
            id,
            error: ErrorBody {
                code: code as u16,
                message,
                retry_after_ms: None,
            },
        },
        32 + message.len(),
    )
}

/// A complete frame carrying a rate-limit refusal (114) with when to retry.
pub fn encode_rate_limited(format: Format, id: u32, message: &str, retry_after_ms: u32) -> Bytes {
    encode_serde(
        format,
        &ErrorReply {
            id,
            error: ErrorBody {
                code: ErrorCode::RateLimited as u16,
                message,
                retry_after_ms: Some(retry_after_ms),
            },
        },
        48 + message.len(),
    )
}

/// A complete frame carrying the `disconnect` push sent before a close frame.
pub fn encode_disconnect(format: Format, code: u16, reason: &str, reconnect: bool) -> Bytes {
    encode_disconnect_after(format, code, reason, reconnect, None)
}

/// The same, telling a client that should reconnect to wait `reconnect_after_ms` first
/// (maintenance, a drain spreading reconnects).
pub fn encode_disconnect_after(
    format: Format,
    code: u16,
    reason: &str,
    reconnect: bool,
    reconnect_after_ms: Option<u32>,
) -> Bytes {
    encode_serde(
        format,
        &DisconnectPush {
            push: "disconnect",
            code,
            reason,
            reconnect,
            reconnect_after_ms,
        },
        64 + reason.len(),
    )
}

/// A complete frame carrying
/// `{"push":"publication","channel":…,"epoch":…,"offset":…,"data":…}` for subscribers
/// speaking `format`.
///
/// Hot path (once per publication per format, never per subscriber). When `data` is
/// already in `format` its bytes are copied in unchanged; otherwise they are transcoded
/// once (MessagePack `bin` becomes a JSON array of byte values).
pub fn encode_publication(
    format: Format,
    channel: &str,
    pos: Position,
    data: Payload<'_>,
) -> Result<Bytes, Error> {
    encode_publication_full(format, channel, pos, None, None, data)
}

/// [`encode_publication`] with the sender's user id (`from`, set by the server for
/// direct messages) and the publisher's opaque `meta` value, placed before `data`
/// (`{"push":…,"channel":…,"epoch":…,"offset":…,"from":…,"meta":…,"data":…}`).
pub fn encode_publication_full(
    format: Format,
    channel: &str,
    pos: Position,
    from: Option<&str>,
    meta: Option<Payload<'_>>,
    data: Payload<'_>,
) -> Result<Bytes, Error> {
    let meta_len = meta.map_or(0, |m| 8 + m.raw.len()) + from.map_or(0, |f| 8 + f.len());
    let mut b = FrameBuilder::with_capacity(80 + channel.len() + meta_len + data.raw.len());
    let epoch = pos.epoch_hex();
    match format {
        Format::MsgPack => {
            let mut w = b.writer();
            let io = |_| Error::Envelope("write to memory failed".into());
            let extra = u32::from(meta.is_some()) + u32::from(from.is_some());
            rmp::encode::write_map_len(&mut w, 5 + extra).map_err(io)?;
            rmp::encode::write_str(&mut w, "push").map_err(io)?;
            rmp::encode::write_str(&mut w, "publication").map_err(io)?;
            rmp::encode::write_str(&mut w, "channel").map_err(io)?;
            rmp::encode::write_str(&mut w, channel).map_err(io)?;
            rmp::encode::write_str(&mut w, "epoch").map_err(io)?;
            rmp::encode::write_str(&mut w, epoch.as_str()).map_err(io)?;
            rmp::encode::write_str(&mut w, "offset").map_err(io)?;
            rmp::encode::write_uint(&mut w, pos.offset).map_err(io)?;
            if let Some(from) = from {
                rmp::encode::write_str(&mut w, "from").map_err(io)?;
                rmp::encode::write_str(&mut w, from).map_err(io)?;
            }
            drop(w);
            if let Some(meta) = meta {
                rmp::encode::write_str(&mut b.writer(), "meta").map_err(io)?;
                write_data(&mut b, format, meta)?;
            }
            rmp::encode::write_str(&mut b.writer(), "data").map_err(io)?;
            write_data(&mut b, format, data)?;
        }
        Format::Json => {
            b.extend(b"{\"push\":\"publication\",\"channel\":");
            serde_json::to_writer(b.writer(), channel)
                .map_err(|e| Error::Envelope(e.to_string()))?;
            b.extend(b",\"epoch\":\"");
            b.extend(epoch.as_str().as_bytes());
            b.extend(b"\",\"offset\":");
            let mut digits = [0u8; 20];
            b.extend(decimal(pos.offset, &mut digits));
            if let Some(from) = from {
                b.extend(b",\"from\":");
                serde_json::to_writer(b.writer(), from)
                    .map_err(|e| Error::Envelope(e.to_string()))?;
            }
            if let Some(meta) = meta {
                b.extend(b",\"meta\":");
                write_data(&mut b, format, meta)?;
            }
            b.extend(b",\"data\":");
            write_data(&mut b, format, data)?;
            b.extend(b"}");
        }
    }
    Ok(b.finish(format.opcode()))
}

/// Append `data` as one value in `format`: its bytes unchanged when it already is in
/// `format`, else transcoded.
fn write_data(b: &mut FrameBuilder, format: Format, data: Payload<'_>) -> Result<(), Error> {
    match (format, data.format) {
        (Format::MsgPack, Format::MsgPack) | (Format::Json, Format::Json) => b.extend(data.raw),
        (Format::MsgPack, Format::Json) => {
            let mut de = serde_json::Deserializer::from_slice(data.raw);
            let mut ser = rmp_serde::Serializer::new(b.writer()).with_struct_map();
            serde_transcode::transcode(&mut de, &mut ser).map_err(|e| {
                Error::Envelope(format!("payload does not transcode to MessagePack: {e}"))
            })?;
        }
        (Format::Json, Format::MsgPack) => {
            let mut de = rmp_serde::Deserializer::from_read_ref(data.raw);
            let mut ser = serde_json::Serializer::new(b.writer());
            serde_transcode::transcode(&mut de, &mut ser)
                .map_err(|e| Error::Envelope(format!("payload does not transcode to JSON: {e}")))?;
        }
    }
    Ok(())
}

/// Where a stream answer goes: the reply to a command, or a push the server sends on
/// its own (a restored subscription, an inbox backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo<'a> {
    /// `{"id": id, "result": {…}}`.
    Id(u32),
    /// `{"push": push, "channel": channel, …}` with the result's fields inline.
    Push {
        /// Push name (`subscribed`, `inbox`).
        push: &'a str,
        /// Channel the answer is about.
        channel: &'a str,
    },
}

/// One publication of a stream answer, as kept.
#[derive(Debug, Clone, Copy)]
pub struct StoredPublication<'p> {
    /// Its offset.
    pub offset: u64,
    /// The sender's user id, for direct messages.
    pub from: Option<&'p str>,
    /// Opaque metadata.
    pub meta: Option<Payload<'p>>,
    /// The payload.
    pub data: Payload<'p>,
}

/// A complete frame carrying the answer to a `subscribe` or `history` (or a push of
/// the same fields, see [`ReplyTo`]):
/// `{"id":…,"result":{"epoch":…,"offset":…[,"recovered":…],"publications":[{"offset":…,"data":…},…]}}`
/// where `top` is the channel's latest position and each publication's `data` is
/// spliced in (or transcoded) as in a publication push.
pub fn encode_stream_reply<'p>(
    format: Format,
    to: ReplyTo<'_>,
    top: Position,
    recovered: Option<bool>,
    publications: impl ExactSizeIterator<Item = StoredPublication<'p>> + Clone,
) -> Result<Bytes, Error> {
    let hint = 128
        + publications
            .clone()
            .map(|p| {
                32 + p.meta.map_or(0, |m| m.raw.len())
                    + p.from.map_or(0, str::len)
                    + p.data.raw.len()
            })
            .sum::<usize>();
    let mut b = FrameBuilder::with_capacity(hint);
    let epoch = top.epoch_hex();
    let n = publications.len();
    let fields = 3 + u32::from(recovered.is_some());
    match format {
        Format::MsgPack => {
            let io = |_| Error::Envelope("write to memory failed".into());
            {
                let mut w = b.writer();
                match to {
                    ReplyTo::Id(id) => {
                        rmp::encode::write_map_len(&mut w, 2).map_err(io)?;
                        rmp::encode::write_str(&mut w, "id").map_err(io)?;
                        rmp::encode::write_uint(&mut w, u64::from(id)).map_err(io)?;
                        rmp::encode::write_str(&mut w, "result").map_err(io)?;
                        rmp::encode::write_map_len(&mut w, fields).map_err(io)?;
                    }
                    ReplyTo::Push { push, channel } => {
                        rmp::encode::write_map_len(&mut w, 2 + fields).map_err(io)?;
                        rmp::encode::write_str(&mut w, "push").map_err(io)?;
                        rmp::encode::write_str(&mut w, push).map_err(io)?;
                        rmp::encode::write_str(&mut w, "channel").map_err(io)?;
                        rmp::encode::write_str(&mut w, channel).map_err(io)?;
                    }
                }
                rmp::encode::write_str(&mut w, "epoch").map_err(io)?;
                rmp::encode::write_str(&mut w, epoch.as_str()).map_err(io)?;
                rmp::encode::write_str(&mut w, "offset").map_err(io)?;
                rmp::encode::write_uint(&mut w, top.offset).map_err(io)?;
                if let Some(r) = recovered {
                    rmp::encode::write_str(&mut w, "recovered").map_err(io)?;
                    rmp::encode::write_bool(&mut w, r)
                        .map_err(|_| Error::Envelope("write to memory failed".into()))?;
                }
                rmp::encode::write_str(&mut w, "publications").map_err(io)?;
                rmp::encode::write_array_len(&mut w, n as u32).map_err(io)?;
            }
            for p in publications {
                {
                    let mut w = b.writer();
                    let extra = u32::from(p.meta.is_some()) + u32::from(p.from.is_some());
                    rmp::encode::write_map_len(&mut w, 2 + extra).map_err(io)?;
                    rmp::encode::write_str(&mut w, "offset").map_err(io)?;
                    rmp::encode::write_uint(&mut w, p.offset).map_err(io)?;
                    if let Some(from) = p.from {
                        rmp::encode::write_str(&mut w, "from").map_err(io)?;
                        rmp::encode::write_str(&mut w, from).map_err(io)?;
                    }
                }
                if let Some(meta) = p.meta {
                    rmp::encode::write_str(&mut b.writer(), "meta").map_err(io)?;
                    write_data(&mut b, format, meta)?;
                }
                rmp::encode::write_str(&mut b.writer(), "data").map_err(io)?;
                write_data(&mut b, format, p.data)?;
            }
        }
        Format::Json => {
            let json = |e: serde_json::Error| Error::Envelope(e.to_string());
            let mut digits = [0u8; 20];
            match to {
                ReplyTo::Id(id) => {
                    b.extend(b"{\"id\":");
                    b.extend(decimal(u64::from(id), &mut digits));
                    b.extend(b",\"result\":{\"epoch\":\"");
                }
                ReplyTo::Push { push, channel } => {
                    b.extend(b"{\"push\":");
                    serde_json::to_writer(b.writer(), push).map_err(json)?;
                    b.extend(b",\"channel\":");
                    serde_json::to_writer(b.writer(), channel).map_err(json)?;
                    b.extend(b",\"epoch\":\"");
                }
            }
            b.extend(epoch.as_str().as_bytes());
            b.extend(b"\",\"offset\":");
            b.extend(decimal(top.offset, &mut digits));
            if let Some(r) = recovered {
                b.extend(if r {
                    &b",\"recovered\":true"[..]
                } else {
                    &b",\"recovered\":false"[..]
                });
            }
            b.extend(b",\"publications\":[");
            for (i, p) in publications.enumerate() {
                if i > 0 {
                    b.extend(b",");
                }
                b.extend(b"{\"offset\":");
                b.extend(decimal(p.offset, &mut digits));
                if let Some(from) = p.from {
                    b.extend(b",\"from\":");
                    serde_json::to_writer(b.writer(), from).map_err(json)?;
                }
                if let Some(meta) = p.meta {
                    b.extend(b",\"meta\":");
                    write_data(&mut b, format, meta)?;
                }
                b.extend(b",\"data\":");
                write_data(&mut b, format, p.data)?;
                b.extend(b"}");
            }
            b.extend(match to {
                ReplyTo::Id(_) => &b"]}}"[..],
                ReplyTo::Push { .. } => &b"]}"[..],
            });
        }
    }
    Ok(b.finish(format.opcode()))
}

/// `n` in decimal ASCII, written at the end of `buf` (no allocation).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A message from the server, as a client decodes it (tests, loadtest, SDKs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// Successful reply to command `id`; `result` is the raw encoded result value.
    Result {
        /// Id of the command answered.
        id: u32,
        /// Raw result value in the connection's format.
        result: &'a [u8],
    },
    /// Error reply to command `id`.
    Error {
        /// Id of the command answered.
        id: u32,
        /// Numeric error code (see [`ErrorCode`]).
        code: u16,
        /// Human-readable message.
        message: String,
    },
    /// A publication on a subscribed channel.
    Publication {
        /// Channel name.
        channel: Cow<'a, str>,
        /// Its position in the channel's stream (absent from servers before positions).
        position: Option<Position>,
        /// The publisher's opaque metadata, if any.
        meta: Option<Payload<'a>>,
        /// The payload, in the connection's format.
        data: Payload<'a>,
    },
    /// Another push (`inbox`, `subscribed`, `receipt`, `reconnect`): its name and the
    /// whole raw envelope.
    Other {
        /// Push name.
        push: Cow<'a, str>,
        /// The whole message, in the connection's format.
        raw: &'a [u8],
    },
    /// The server is about to close the connection.
    Disconnect {
        /// Close code that follows.
        code: u16,
        /// Reason.
        reason: String,
        /// Whether reconnecting makes sense.
        reconnect: bool,
    },
}

#[derive(Deserialize)]
struct ErrorBodyOwned {
    code: u16,
    message: String,
}

/// Decode one server message (client side).
pub fn decode_server_message(format: Format, bytes: &[u8]) -> Result<ServerMessage<'_>, Error> {
    let f = fields(format, bytes)?;
    let bad = |what: &str| Error::Envelope(format!("server message: {what}"));
    if let Some(push) = f.push.and_then(|r| read_str(format, r)) {
        return match &*push {
            "publication" => Ok(ServerMessage::Publication {
                channel: f
                    .channel
                    .and_then(|r| read_str(format, r))
                    .ok_or_else(|| bad("channel"))?,
                position: match (f.epoch, f.offset) {
                    (Some(e), Some(o)) => Some(Position {
                        epoch: read_str(format, e)
                            .and_then(|e| Position::parse_epoch(&e))
                            .ok_or_else(|| bad("epoch"))?,
                        offset: read_u64(format, o).ok_or_else(|| bad("offset"))?,
                    }),
                    _ => None,
                },
                meta: f.meta.map(|raw| Payload { format, raw }),
                data: Payload {
                    format,
                    raw: f.data.ok_or_else(|| bad("data"))?,
                },
            }),
            "disconnect" => Ok(ServerMessage::Disconnect {
                code: f
                    .code
                    .and_then(|r| read_u64(format, r))
                    .and_then(|c| u16::try_from(c).ok())
                    .ok_or_else(|| bad("code"))?,
                reason: f
                    .reason
                    .and_then(|r| read_str(format, r))
                    .ok_or_else(|| bad("reason"))?
                    .into_owned(),
                reconnect: f
                    .reconnect
                    .and_then(|r| read_bool(format, r))
                    .ok_or_else(|| bad("reconnect"))?,
            }),
            _ => Ok(ServerMessage::Other { push, raw: bytes }),
        };
    }
    let id =
        f.id.and_then(|r| read_u64(format, r))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad("id"))?;
    if let Some(result) = f.result {
        return Ok(ServerMessage::Result { id, result });
    }
    let raw = f.error.ok_or_else(|| bad("neither result nor error"))?;
    let body: ErrorBodyOwned = match format {
        Format::MsgPack => rmp_serde::from_slice(raw).map_err(|e| bad(&e.to_string()))?,
        Format::Json => serde_json::from_slice(raw).map_err(|e| bad(&e.to_string()))?,
    };
    Ok(ServerMessage::Error {
        id,
        code: body.code,
        message: body.message,
    })
}

/// Encode a client command (client side: tests, loadtest, SDKs). `data` of a publish
/// must already be encoded in `format`.
pub fn encode_request(format: Format, req: &Request<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        id: u32,
        cmd: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reverse: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        positions: Option<std::collections::BTreeMap<&'a str, Position>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        delivered: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        at: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        delay: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        schedule: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        typing: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        unread: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        all: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        notification: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        call: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        media: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Since {
        Position(Position),
        Offset(u64),
    }
    let mut out = Out {
        id: req.id,
        cmd: "",
        token: None,
        channel: None,
        since: None,
        limit: None,
        reverse: None,
        key: None,
        reconnect: None,
        device: None,
        positions: None,
        user: None,
        offset: None,
        delivered: None,
        read: None,
        at: None,
        delay: None,
        schedule: None,
        status: None,
        typing: None,
        topic: None,
        before: None,
        unread: None,
        all: None,
        notification: None,
        call: None,
        to: None,
        media: None,
        reason: None,
    };
    let (mut data, mut meta): (Option<&Payload<'_>>, Option<&Payload<'_>>) = (None, None);
    out.cmd = match &req.command {
        Command::Connect {
            token,
            reconnect,
            device,
            positions,
        } => {
            out.token = token.as_deref();
            out.reconnect = reconnect.as_deref();
            out.device = device.as_deref();
            if !positions.is_empty() {
                out.positions = Some(positions.iter().map(|(c, p)| (&**c, *p)).collect());
            }
            "connect"
        }
        Command::Subscribe { channel, since } => {
            out.channel = Some(channel);
            out.since = since.map(Since::Position);
            "subscribe"
        }
        Command::History {
            channel,
            since,
            limit,
            reverse,
        } => {
            out.channel = Some(channel);
            out.since = Some(Since::Offset(*since));
            (out.limit, out.reverse) = (Some(*limit), Some(*reverse));
            "history"
        }
        Command::Unsubscribe { channel } => {
            out.channel = Some(channel);
            "unsubscribe"
        }
        Command::Publish {
            channel,
            data: d,
            key,
            meta: m,
        } => {
            out.channel = Some(channel);
            out.key = key.as_deref();
            (data, meta) = (Some(d), m.as_ref());
            "publish"
        }
        Command::Send {
            user,
            data: d,
            key,
            meta: m,
        } => {
            out.user = Some(user);
            out.key = key.as_deref();
            (data, meta) = (Some(d), m.as_ref());
            "send"
        }
        Command::Ack { offset } => {
            out.offset = Some(*offset);
            "ack"
        }
        Command::Receipt {
            channel,
            delivered,
            read,
        } => {
            out.channel = Some(channel);
            (out.delivered, out.read) = (*delivered, *read);
            "receipt"
        }
        Command::Receipts { channel } => {
            out.channel = Some(channel);
            "receipts"
        }
        Command::Schedule {
            channel,
            user,
            data: d,
            meta: m,
            at,
            delay,
        } => {
            out.channel = channel.as_deref();
            out.user = user.as_deref();
            (out.at, out.delay) = (*at, *delay);
            (data, meta) = (Some(d), m.as_ref());
            "schedule"
        }
        Command::Status { status } => {
            out.status = Some(status);
            "status"
        }
        Command::Presence { channel } => {
            out.channel = Some(channel);
            "presence"
        }
        Command::Typing { channel, typing } => {
            out.channel = Some(channel);
            out.typing = Some(*typing);
            "typing"
        }
        Command::PresenceCount { channel } => {
            out.channel = Some(channel);
            "presence_count"
        }
        Command::Unschedule { schedule } => {
            out.schedule = Some(*schedule);
            "unschedule"
        }
        Command::Notifications {
            limit,
            before,
            unread,
        } => {
            (out.limit, out.before, out.unread) = (Some(*limit), *before, Some(*unread));
            "notifications"
        }
        Command::NotificationsRead { notification } => {
            out.notification = *notification;
            out.all = notification.is_none().then_some(true);
            "notifications_read"
        }
        Command::NotificationsTopic { topic, subscribe } => {
            out.topic = Some(topic);
            if *subscribe {
                "notifications_subscribe"
            } else {
                "notifications_unsubscribe"
            }
        }
        Command::Call {
            user,
            channel,
            media,
            data: d,
        } => {
            (out.user, out.channel) = (user.as_deref(), channel.as_deref());
            out.media = media.as_deref();
            data = d.as_ref();
            "call"
        }
        Command::CallAction {
            call,
            action,
            reason,
        } => {
            (out.call, out.reason) = (Some(*call), reason.as_deref());
            match action {
                CallAction::Accept => "call_accept",
                CallAction::Reject => "call_reject",
                CallAction::End => "call_end",
            }
        }
        Command::CallSignal {
            call,
            to,
            data: d,
            quality,
        } => {
            (out.call, out.to) = (Some(*call), to.as_deref());
            data = Some(d);
            if *quality {
                "call_quality"
            } else {
                "call_signal"
            }
        }
        Command::Ping => "ping",
        Command::Invalid(c) => c,
    };
    let mut bytes = match format {
        Format::MsgPack => {
            rmp_serde::to_vec_named(&out).expect("serialising to memory cannot fail")
        }
        Format::Json => serde_json::to_vec(&out).expect("serialising to memory cannot fail"),
    };
    for (name, value) in [("meta", meta), ("data", data)] {
        let Some(value) = value else { continue };
        // Append the raw value as one more map entry, unchanged.
        match format {
            Format::MsgPack => {
                // The map header is a fixmap (at most 6 entries so far): bump its count.
                bytes[0] += 1;
                rmp::encode::write_str(&mut bytes, name).expect("vec write");
                bytes.extend_from_slice(value.raw);
            }
            Format::Json => {
                bytes.pop();
                bytes.extend_from_slice(b",\"");
                bytes.extend_from_slice(name.as_bytes());
                bytes.extend_from_slice(b"\":");
                bytes.extend_from_slice(value.raw);
                bytes.push(b'}');
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{check, take, Check, Role};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn payload_of(frame: &Bytes) -> Bytes {
        let mut buf = BytesMut::from(&frame[..]);
        let Check::Complete(h) = check(&buf, Role::Client, usize::MAX).unwrap() else {
            panic!()
        };
        take(&mut buf, &h).payload
    }

    #[test]
    fn json_commands() {
        let r = decode_request(
            Format::Json,
            br#"{"id":7,"cmd":"publish","channel":"room:1","data":{"text":"hi"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, 7);
        let Command::Publish { channel, data, .. } = r.command else {
            panic!()
        };
        assert_eq!(channel, "room:1");
        assert_eq!(data.raw, br#"{"text":"hi"}"#);
        let r = decode_request(
            Format::Json,
            br#"{"id":1,"cmd":"subscribe","channel":"a\u0062"}"#,
        )
        .unwrap();
        assert_eq!(
            r.command,
            Command::Subscribe {
                channel: "ab".into(),
                since: None
            }
        );
        let r = decode_request(Format::Json, br#"{"id":1,"cmd":"dance"}"#).unwrap();
        assert_eq!(r.command, Command::Invalid("unknown command"));
        let r = decode_request(Format::Json, br#"{"id":1,"cmd":"subscribe","channel":5}"#).unwrap();
        assert!(matches!(r.command, Command::Invalid(_)));
        assert!(decode_request(Format::Json, br#"{"cmd":"ping"}"#).is_err());
        assert!(decode_request(Format::Json, br#"[1,2]"#).is_err());
        assert!(decode_request(Format::Json, br#"{"id":-1,"cmd":"ping"}"#).is_err());
    }

    #[test]
    fn msgpack_commands_keep_data_raw() {
        let data =
            rmp_serde::to_vec_named(&serde_json::json!({"text": "hi", "n": [1, 2, 3]})).unwrap();
        let meta = rmp_serde::to_vec_named(&serde_json::json!({"type": "image/png"})).unwrap();
        let req = Request {
            id: 42,
            command: Command::Publish {
                channel: "room:1".into(),
                data: Payload {
                    format: Format::MsgPack,
                    raw: &data,
                },
                key: Some("client-msg-17".into()),
                meta: Some(Payload {
                    format: Format::MsgPack,
                    raw: &meta,
                }),
            },
        };
        let bytes = encode_request(Format::MsgPack, &req);
        let back = decode_request(Format::MsgPack, &bytes).unwrap();
        assert_eq!(back, req);
        for bad in [
            &br#"{"id":1,"cmd":"publish","channel":"a","data":1,"key":5}"#[..],
            br#"{"id":1,"cmd":"publish","channel":"a","data":1,"key":""}"#,
        ] {
            assert!(matches!(
                decode_request(Format::Json, bad).unwrap().command,
                Command::Invalid(_)
            ));
        }
        // Unknown keys are skipped.
        let mut extra = rmp_serde::to_vec_named(
            &serde_json::json!({"id": 1, "cmd": "ping", "x": {"deep": [1, {"a": null}]}}),
        )
        .unwrap();
        assert_eq!(
            decode_request(Format::MsgPack, &extra).unwrap().command,
            Command::Ping
        );
        extra.push(0xc0);
        assert!(decode_request(Format::MsgPack, &extra).is_err());
    }

    #[test]
    fn publication_same_and_cross_format() {
        let json = Payload {
            format: Format::Json,
            raw: br#"{"text":"hi","n":1}"#,
        };
        let pos = Position {
            epoch: 0xfeed_0000_0000_beef,
            offset: 12_345_678_901,
        };
        let f = encode_publication(Format::Json, "room:\"1\"", pos, json).unwrap();
        assert_eq!(f[0], 0x81);
        let v: serde_json::Value = serde_json::from_slice(&payload_of(&f)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"push":"publication","channel":"room:\"1\"",
                "epoch":"feed00000000beef","offset":12_345_678_901_u64,"data":{"text":"hi","n":1}})
        );
        let p = payload_of(&f);
        let ServerMessage::Publication { position, .. } =
            decode_server_message(Format::Json, &p).unwrap()
        else {
            panic!()
        };
        assert_eq!(position, Some(pos));

        let f = encode_publication(Format::MsgPack, "room:1", pos, json).unwrap();
        assert_eq!(f[0], 0x82);
        let p = payload_of(&f);
        let ServerMessage::Publication {
            channel,
            position,
            data,
            ..
        } = decode_server_message(Format::MsgPack, &p).unwrap()
        else {
            panic!()
        };
        assert_eq!(channel, "room:1");
        assert_eq!(position, Some(pos));
        let v: serde_json::Value = rmp_serde::from_slice(data.raw).unwrap();
        assert_eq!(v, serde_json::json!({"text":"hi","n":1}));

        let mp = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap();
        let f = encode_publication(
            Format::Json,
            "c",
            pos,
            Payload {
                format: Format::MsgPack,
                raw: &mp,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload_of(&f)).unwrap();
        assert_eq!(v["data"], serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn replies_decode() {
        for format in Format::ALL {
            let f = encode_error(format, 9, ErrorCode::PermissionDenied, "no");
            let p = payload_of(&f);
            assert_eq!(
                decode_server_message(format, &p).unwrap(),
                ServerMessage::Error {
                    id: 9,
                    code: 103,
                    message: "no".into()
                }
            );
            let f = encode_disconnect(format, 4003, "slow consumer", true);
            let p = payload_of(&f);
            assert_eq!(
                decode_server_message(format, &p).unwrap(),
                ServerMessage::Disconnect {
                    code: 4003,
                    reason: "slow consumer".into(),
                    reconnect: true
                }
            );
            let f = encode_result(format, 3, &Empty {});
            let p = payload_of(&f);
            assert!(matches!(
                decode_server_message(format, &p).unwrap(),
                ServerMessage::Result { id: 3, .. }
            ));
        }
    }

    /// The byte-level example in docs/PROTOCOL.md.
    #[test]
    fn documented_publication_frame() {
        let data = [0x81, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i'];
        let f = encode_publication(
            Format::MsgPack,
            "room:1",
            Position {
                epoch: 0x0123_4567_89ab_cdef,
                offset: 7,
            },
            Payload {
                format: Format::MsgPack,
                raw: &data,
            },
        )
        .unwrap();
        let hex: Vec<String> = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "82 4e 85 a4 70 75 73 68 ab 70 75 62 6c 69 63 61 74 69 6f 6e a7 63 68 61 6e 6e 65 6c \
             a6 72 6f 6f 6d 3a 31 a5 65 70 6f 63 68 b0 30 31 32 33 34 35 36 37 38 39 61 62 63 64 \
             65 66 a6 6f 66 66 73 65 74 07 a4 64 61 74 61 81 a4 74 65 78 74 a2 68 69"
        );
        let subscribe = [
            0x83, 0xa2, b'i', b'd', 0x01, 0xa3, b'c', b'm', b'd', 0xa9, b's', b'u', b'b', b's',
            b'c', b'r', b'i', b'b', b'e', 0xa7, b'c', b'h', b'a', b'n', b'n', b'e', b'l', 0xa6,
            b'r', b'o', b'o', b'm', b':', b'1',
        ];
        assert_eq!(subscribe.len(), 34);
        assert_eq!(
            decode_request(Format::MsgPack, &subscribe).unwrap(),
            Request {
                id: 1,
                command: Command::Subscribe {
                    channel: "room:1".into(),
                    since: None
                }
            }
        );
    }

    /// Malformed session, inbox, receipt, schedule, presence and typing commands are
    /// answerable errors (the connection stays open), in both formats.
    #[test]
    fn malformed_new_commands_are_invalid_not_fatal() {
        let long = "d".repeat(129);
        let cases = [
            r#"{"id":1,"cmd":"connect","reconnect":5}"#.to_string(),
            format!(r#"{{"id":1,"cmd":"connect","token":"t","device":"{long}"}}"#),
            r#"{"id":1,"cmd":"connect","token":"t","device":""}"#.to_string(),
            r#"{"id":1,"cmd":"connect","reconnect":"x","positions":{"a":{"epoch":"zz","offset":1}}}"#.to_string(),
            r#"{"id":1,"cmd":"connect","reconnect":"x","positions":[1,2]}"#.to_string(),
            r#"{"id":1,"cmd":"send","data":1}"#.to_string(),
            r#"{"id":1,"cmd":"send","user":"u"}"#.to_string(),
            r#"{"id":1,"cmd":"send","user":"u","data":1,"key":""}"#.to_string(),
            r#"{"id":1,"cmd":"ack"}"#.to_string(),
            r#"{"id":1,"cmd":"ack","offset":"3"}"#.to_string(),
            r#"{"id":1,"cmd":"receipt","channel":"c"}"#.to_string(),
            r#"{"id":1,"cmd":"receipt","channel":"c","read":-1}"#.to_string(),
            r#"{"id":1,"cmd":"receipts"}"#.to_string(),
            r#"{"id":1,"cmd":"schedule","channel":"c","user":"u","data":1,"delay":1}"#.to_string(),
            r#"{"id":1,"cmd":"schedule","data":1,"delay":1}"#.to_string(),
            r#"{"id":1,"cmd":"schedule","channel":"c","data":1}"#.to_string(),
            r#"{"id":1,"cmd":"schedule","channel":"c","data":1,"at":1,"delay":1}"#.to_string(),
            r#"{"id":1,"cmd":"schedule","channel":"c","delay":1}"#.to_string(),
            r#"{"id":1,"cmd":"unschedule"}"#.to_string(),
            r#"{"id":1,"cmd":"status","status":""}"#.to_string(),
            r#"{"id":1,"cmd":"presence"}"#.to_string(),
            r#"{"id":1,"cmd":"presence_count","channel":7}"#.to_string(),
            r#"{"id":1,"cmd":"typing","channel":"c","typing":"yes"}"#.to_string(),
            r#"{"id":1,"cmd":"typing"}"#.to_string(),
            r#"{"id":1,"cmd":"notifications","limit":"x"}"#.to_string(),
            r#"{"id":1,"cmd":"notifications","unread":1}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_read"}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_read","all":false}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_read","notification":1,"all":true}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_subscribe"}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_subscribe","topic":"a b"}"#.to_string(),
            r#"{"id":1,"cmd":"notifications_unsubscribe","topic":""}"#.to_string(),
            r#"{"id":1,"cmd":"call"}"#.to_string(),
            r#"{"id":1,"cmd":"call","user":"u","channel":"c"}"#.to_string(),
            r#"{"id":1,"cmd":"call","user":5}"#.to_string(),
            r#"{"id":1,"cmd":"call","user":"u","media":""}"#.to_string(),
            r#"{"id":1,"cmd":"call_accept"}"#.to_string(),
            r#"{"id":1,"cmd":"call_reject","call":"7"}"#.to_string(),
            r#"{"id":1,"cmd":"call_end","call":7,"reason":3}"#.to_string(),
            r#"{"id":1,"cmd":"call_signal","call":7}"#.to_string(),
            r#"{"id":1,"cmd":"call_signal","call":7,"to":1,"data":{}}"#.to_string(),
            r#"{"id":1,"cmd":"call_quality","data":{}}"#.to_string(),
        ];
        for json in &cases {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            let mp = rmp_serde::to_vec_named(&value).unwrap();
            for (format, bytes) in [(Format::Json, json.as_bytes()), (Format::MsgPack, &mp[..])] {
                let r = decode_request(format, bytes).unwrap_or_else(|e| panic!("{json}: {e}"));
                assert!(
                    matches!(r.command, Command::Invalid(_)),
                    "{format:?} {json}: {:?}",
                    r.command
                );
            }
        }
    }

    #[test]
    fn stream_reply_and_recovery_commands() {
        let top = Position {
            epoch: 0xabc,
            offset: 9,
        };
        let json = Payload {
            format: Format::Json,
            raw: br#"{"t":"x"}"#,
        };
        let mp_raw = rmp_serde::to_vec(&7u8).unwrap();
        let mp = Payload {
            format: Format::MsgPack,
            raw: &mp_raw,
        };
        let pubs = [
            StoredPublication {
                offset: 8,
                from: None,
                meta: None,
                data: json,
            },
            StoredPublication {
                offset: 9,
                from: None,
                meta: Some(json),
                data: mp,
            },
        ];
        for out in Format::ALL {
            let f = encode_stream_reply(out, ReplyTo::Id(5), top, Some(true), pubs.iter().copied())
                .unwrap();
            let p = payload_of(&f);
            let v: serde_json::Value = match out {
                Format::Json => serde_json::from_slice(&p).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            };
            assert_eq!(
                v,
                serde_json::json!({"id": 5, "result": {"epoch": "0000000000000abc", "offset": 9,
                    "recovered": true, "publications": [{"offset": 8, "data": {"t": "x"}},
                    {"offset": 9, "meta": {"t": "x"}, "data": 7}]}})
            );
            let f =
                encode_stream_reply(out, ReplyTo::Id(6), top, None, [].iter().copied()).unwrap();
            let p = payload_of(&f);
            let v: serde_json::Value = match out {
                Format::Json => serde_json::from_slice(&p).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            };
            assert_eq!(
                v,
                serde_json::json!({"id": 6, "result": {"epoch": "0000000000000abc", "offset": 9,
                    "publications": []}})
            );
            let inbox = [StoredPublication {
                offset: 3,
                from: Some("al\"ice"),
                meta: None,
                data: mp,
            }];
            let to = ReplyTo::Push {
                push: "inbox",
                channel: "inbox:bob",
            };
            let f = encode_stream_reply(out, to, top, Some(false), inbox.iter().copied()).unwrap();
            let p = payload_of(&f);
            let v: serde_json::Value = match out {
                Format::Json => serde_json::from_slice(&p).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            };
            assert_eq!(
                v,
                serde_json::json!({"push": "inbox", "channel": "inbox:bob",
                    "epoch": "0000000000000abc", "offset": 9, "recovered": false,
                    "publications": [{"offset": 3, "from": "al\"ice", "data": 7}]})
            );
            let f =
                encode_publication_full(out, "inbox:bob", top, Some("alice"), None, json).unwrap();
            let p = payload_of(&f);
            let v: serde_json::Value = match out {
                Format::Json => serde_json::from_slice(&p).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            };
            assert_eq!(
                v,
                serde_json::json!({"push": "publication", "channel": "inbox:bob",
                    "epoch": "0000000000000abc", "offset": 9, "from": "alice", "data": {"t": "x"}})
            );
        }
        for format in Format::ALL {
            let reqs = [
                Request {
                    id: 1,
                    command: Command::Subscribe {
                        channel: "a".into(),
                        since: Some(top),
                    },
                },
                Request {
                    id: 2,
                    command: Command::History {
                        channel: "a".into(),
                        since: 3,
                        limit: 10,
                        reverse: true,
                    },
                },
            ];
            for r in reqs {
                assert_eq!(
                    decode_request(format, &encode_request(format, &r)).unwrap(),
                    r
                );
            }
        }
        let bad = br#"{"id":1,"cmd":"subscribe","channel":"a","since":{"epoch":"xyz","offset":1}}"#;
        assert!(matches!(
            decode_request(Format::Json, bad).unwrap().command,
            Command::Invalid(_)
        ));
        let dflt = br#"{"id":1,"cmd":"history","channel":"a"}"#;
        assert_eq!(
            decode_request(Format::Json, dflt).unwrap().command,
            Command::History {
                channel: "a".into(),
                since: 0,
                limit: 100,
                reverse: false
            }
        );
    }

    #[test]
    fn value_len_rejects_lies() {
        assert!(msgpack_value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(msgpack_value_len(&[0xda, 0x00, 0x05, b'a']).is_err());
        assert!(msgpack_value_len(&[0xc1]).is_err());
        assert_eq!(
            msgpack_value_len(&[0x92, 0x01, 0xa1, b'x', 0xff]).unwrap(),
            4
        );
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn request_roundtrip(id in any::<u32>(), channel in "[a-z:]{1,20}", value in arb_json(), json in any::<bool>(), offset in any::<u64>()) {
            let format = if json { Format::Json } else { Format::MsgPack };
            let raw = match format {
                Format::Json => serde_json::to_vec(&value).unwrap(),
                Format::MsgPack => rmp_serde::to_vec_named(&value).unwrap(),
            };
            let req = Request { id, command: Command::Publish { channel: channel.clone().into(), data: Payload { format, raw: &raw }, key: None, meta: Some(Payload { format, raw: &raw }) } };
            let bytes = encode_request(format, &req);
            prop_assert_eq!(decode_request(format, &bytes).unwrap(), req);
            // The publication carries the same value to both formats.
            for out in Format::ALL {
                let pos = Position { epoch: offset.wrapping_mul(31), offset };
                let f = encode_publication_full(out, &channel, pos, None, Some(Payload { format, raw: &raw }), Payload { format, raw: &raw }).unwrap();
                let p = payload_of(&f);
                let ServerMessage::Publication { channel: c, position, data, meta } = decode_server_message(out, &p).unwrap() else { panic!() };
                let meta = meta.expect("meta travels");
                prop_assert_eq!(meta.raw, data.raw);
                prop_assert_eq!(position, Some(pos));
                prop_assert_eq!(&c, &channel);
                let back: serde_json::Value = match out {
                    Format::Json => serde_json::from_slice(data.raw).unwrap(),
                    Format::MsgPack => rmp_serde::from_slice(data.raw).unwrap(),
                };
                prop_assert_eq!(&back, &value);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(Format::MsgPack, &bytes);
            let _ = decode_request(Format::Json, &bytes);
            let _ = decode_server_message(Format::MsgPack, &bytes);
        }
    }
}
