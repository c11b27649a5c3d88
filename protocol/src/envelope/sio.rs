//! [`Format::SocketIo`]: replies and pushes for a Socket.IO session, as Socket.IO
//! packets in text frames (on the main namespace), each inside an Engine.IO message
//! packet (the leading `4`).
//!
//! Owns how the envelopes a feature answers with become Socket.IO: a result is the ack
//! of the event that asked (`43<id>[result]`), an error the ack
//! `[{"error":{"code":…,"message":…}}]` (or an `error` event when the event asked for
//! no ack), a push an event named by [`push_event`] whose one argument is the push's
//! object without its `push` field. Does not own publications' and stream answers'
//! encoding (`encode`, which calls in here for the wrapping) or the event vocabulary
//! clients send (`crate::sio_events`).

use bytes::Bytes;
use serde::Serialize;

use crate::frame::FrameBuilder;
use crate::Position;

/// The request id of an event that asked for no ack: its result is not sent, its
/// error is an `error` event.
pub const NO_ACK: u32 = u32::MAX;

/// The event a push becomes for Socket.IO clients; `None`: not sent to them
/// (reconnect tokens and the `disconnect` notice are the native protocol's own;
/// Socket.IO has its recovery and its DISCONNECT packet).
pub fn push_event(push: &str) -> Option<&str> {
    Some(match push {
        "publication" => "message:new",
        "inbox" => "message:inbox",
        "receipt" => "message:receipt",
        "presence" => "presence:update",
        "typing" => "typing:update",
        "notification" => "notification:new",
        "notifications_read" => "notification:read",
        "call" => "call:update",
        "ai_reply" => "ai:reply",
        "reconnect" | "disconnect" => return None,
        other => other,
    })
}

/// Start an ack frame for request `id`: `43<id>[` (an Engine.IO message, `4`, carrying
/// a Socket.IO ACK, `3`).
pub(super) fn begin_ack(b: &mut FrameBuilder, id: u32) {
    let mut digits = [0u8; 20];
    b.extend(b"43");
    b.extend(super::encode::decimal(u64::from(id), &mut digits));
    b.extend(b"[");
}

/// Start an event frame: `42["event",` (an Engine.IO message carrying an EVENT).
pub(super) fn begin_event(b: &mut FrameBuilder, event: &str) {
    b.extend(b"42[");
    serde_json::to_writer(b.writer(), event).expect("writing to memory cannot fail");
    b.extend(b",");
}

/// The ack carrying `result` (nothing for [`NO_ACK`]).
pub(super) fn result<T: Serialize>(id: u32, result: &T) -> Bytes {
    if id == NO_ACK {
        return Bytes::new();
    }
    let mut b = FrameBuilder::with_capacity(64);
    begin_ack(&mut b, id);
    serde_json::to_writer(b.writer(), result).expect("serialising to memory cannot fail");
    b.extend(b"]");
    b.finish(crate::OpCode::Text)
}

/// The error of request `id`: its ack `[{"error":body}]`, or an `error` event.
pub(super) fn error<T: Serialize>(id: u32, body: &T) -> Bytes {
    let mut b = FrameBuilder::with_capacity(96);
    if id == NO_ACK {
        begin_event(&mut b, "error");
        serde_json::to_writer(b.writer(), body).expect("serialising to memory cannot fail");
    } else {
        begin_ack(&mut b, id);
        b.extend(b"{\"error\":");
        serde_json::to_writer(b.writer(), body).expect("serialising to memory cannot fail");
        b.extend(b"}");
    }
    b.extend(b"]");
    b.finish(crate::OpCode::Text)
}

/// A push as an event (nothing for pushes Socket.IO clients do not get).
pub(super) fn push<T: Serialize>(push: &T) -> Bytes {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(push) else {
        return Bytes::new();
    };
    let name = match fields.remove("push") {
        Some(serde_json::Value::String(n)) => n,
        _ => return Bytes::new(),
    };
    let Some(event) = push_event(&name) else {
        return Bytes::new();
    };
    let mut b = FrameBuilder::with_capacity(96);
    begin_event(&mut b, event);
    serde_json::to_writer(b.writer(), &fields).expect("serialising to memory cannot fail");
    b.extend(b"]");
    b.finish(crate::OpCode::Text)
}

/// The DISCONNECT packet of the main namespace (`41`): the client's `disconnect`
/// event with reason "io server disconnect" (it does not reconnect on its own).
pub(super) fn disconnect() -> Bytes {
    let mut b = FrameBuilder::with_capacity(4);
    b.extend(b"41");
    b.finish(crate::OpCode::Text)
}

/// `,"<offset>.<epoch>.<channel>"`: a publication's place as the last argument of its
/// event (Socket.IO connection state recovery's offset; the client keeps the last one
/// it saw). Channel names hold no control characters, so only `"` and `\\` need
/// escaping.
pub(super) fn write_offset(b: &mut FrameBuilder, channel: &str, pos: Position) {
    let mut digits = [0u8; 20];
    b.extend(b",\"");
    b.extend(super::encode::decimal(pos.offset, &mut digits));
    b.extend(b".");
    b.extend(pos.epoch_hex().as_str().as_bytes());
    b.extend(b".");
    let mut rest = channel.as_bytes();
    while let Some(i) = rest.iter().position(|&c| c == b'"' || c == b'\\') {
        b.extend(&rest[..i]);
        b.extend(if rest[i] == b'"' { b"\\\"" } else { b"\\\\" });
        rest = &rest[i + 1..];
    }
    b.extend(rest);
    b.extend(b"\"");
}

/// The channel and position an offset from [`write_offset`] names (as the client
/// sends it back, JSON-decoded); `None` for anything else.
pub fn parse_offset(offset: &str) -> Option<(&str, Position)> {
    let mut parts = offset.splitn(3, '.');
    let n: u64 = parts.next()?.parse().ok()?;
    let epoch = Position::parse_epoch(parts.next()?)?;
    let channel = parts.next().filter(|c| crate::envelope::valid_channel(c))?;
    Some((channel, Position { epoch, offset: n }))
}
