//! The client side: decoding what the server sends and encoding commands.
//!
//! Owns [`ServerMessage`] and [`encode_request`], used by tests, the loadtest and SDKs.
//! Does not run on the server's hot path.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::decode::*;
use super::types::*;
use crate::Error;

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
pub(super) struct ErrorBodyOwned {
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
        Format::Json | Format::SocketIo => {
            serde_json::from_slice(raw).map_err(|e| bad(&e.to_string()))?
        }
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
        since: Option<Position>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reverse: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply: Option<bool>,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to_ms: Option<u64>,
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
        reply: None,
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
        epoch: None,
        after: None,
        from_ms: None,
        to_ms: None,
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
            out.since = *since;
            "subscribe"
        }
        Command::History { channel, page } => {
            out.channel = Some(channel);
            out.epoch = epoch_text(page.epoch);
            out.after = (page.after > 0).then_some(page.after);
            (out.before, out.from_ms, out.to_ms) = (page.before, page.from_ms, page.to_ms);
            (out.limit, out.reverse) = (Some(page.limit), Some(page.reverse));
            "history"
        }
        Command::Unsubscribe { channel } => {
            out.channel = Some(channel);
            "unsubscribe"
        }
        Command::Edit {
            channel,
            offset,
            epoch,
            data: d,
            meta: m,
        } => {
            out.channel = Some(channel);
            out.offset = Some(*offset);
            out.epoch = epoch_text(*epoch);
            (data, meta) = (Some(d), m.as_ref());
            "edit"
        }
        Command::Delete {
            channel,
            offset,
            epoch,
        } => {
            out.channel = Some(channel);
            out.offset = Some(*offset);
            out.epoch = epoch_text(*epoch);
            "delete"
        }
        Command::Publish {
            channel,
            data: d,
            key,
            meta: m,
            reply,
        } => {
            out.channel = Some(channel);
            out.key = key.as_deref();
            out.reply = (!reply).then_some(false);
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
        Format::Json | Format::SocketIo => {
            serde_json::to_vec(&out).expect("serialising to memory cannot fail")
        }
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
            Format::Json | Format::SocketIo => {
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

/// An epoch as the wire writes it (16 hex digits).
fn epoch_text(epoch: Option<u64>) -> Option<String> {
    epoch.map(|epoch| {
        Position { epoch, offset: 0 }
            .epoch_hex()
            .as_str()
            .to_owned()
    })
}
