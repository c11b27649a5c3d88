//! Server-side decoding: a client's command envelope into a [`Request`].
//!
//! Owns reading an envelope's known keys in either format without allocating
//! (MessagePack walked with `rmp`, JSON read into borrowed `RawValue`s), the field
//! readers, and the checks every command's fields pass. Does not encode (see
//! [`super::encode`]) or decode what the server sends (see [`super::client`]).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::types::*;
use crate::history::{Page, PageFields, LIMIT};
use crate::Error;

/// Declares the known top-level keys of an envelope once: [`RawFields`] (the raw value
/// bytes of each), its lookup by key for MessagePack, and the borrowed serde struct
/// JSON envelopes are read into.
macro_rules! envelope_fields {
    ($($name:ident),* $(,)?) => {
        /// The raw value bytes of the known top-level keys of an envelope.
        #[derive(Debug, Default, Clone, Copy)]
        pub(super) struct RawFields<'a> {
            $(pub(super) $name: Option<&'a [u8]>,)*
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
    reply,
    after,
    from_ms,
    to_ms,
    cursor,
);

/// A key that is present holds a value, even `null` (plain `Option` would turn a
/// `null` payload into "missing").
pub(super) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

pub(super) fn fields(format: Format, bytes: &[u8]) -> Result<RawFields<'_>, Error> {
    match format {
        Format::Json | Format::SocketIo => {
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

/// The page a `history` command asks for, from its fields (or its cursor).
fn history_page(format: Format, f: &RawFields<'_>, channel: &str) -> Result<Page, &'static str> {
    let offset = |raw: Option<&[u8]>, why| raw.map(|r| read_u64(format, r).ok_or(why)).transpose();
    let limit = f
        .limit
        .map(|r| read_u64(format, r).ok_or(LIMIT))
        .transpose()?;
    let cursor = f
        .cursor
        .map(|r| read_str(format, r).ok_or("'cursor' must be a string"));
    let cursor = cursor.transpose()?;
    let epoch = f
        .epoch
        .map(|r| read_str(format, r).ok_or("'epoch' must be 16 hex digits"));
    let epoch = epoch.transpose()?;
    let reverse = f
        .reverse
        .map(|r| read_bool(format, r).ok_or("'reverse' must be a boolean"));
    let asked = PageFields {
        since: offset(f.since, "'since' must be an offset (integer)")?,
        after: offset(f.after, "'after' must be an offset (integer)")?,
        before: offset(f.before, "'before' must be an offset (integer)")?,
        epoch: epoch.as_deref(),
        from_ms: offset(f.from_ms, "'from_ms' must be a time in Unix milliseconds")?,
        to_ms: offset(f.to_ms, "'to_ms' must be a time in Unix milliseconds")?,
        limit,
        reverse: reverse.transpose()?,
        cursor: cursor.as_deref(),
    };
    asked.page(channel)
}

pub(super) fn read_u64(format: Format, raw: &[u8]) -> Option<u64> {
    match format {
        Format::MsgPack => {
            let mut r = raw;
            rmp::decode::read_int::<u64, _>(&mut r).ok()
        }
        Format::Json | Format::SocketIo => serde_json::from_slice::<u64>(raw).ok(),
    }
}

pub(super) fn read_bool(format: Format, raw: &[u8]) -> Option<bool> {
    match format {
        Format::MsgPack => {
            let mut r = raw;
            rmp::decode::read_bool(&mut r).ok()
        }
        Format::Json | Format::SocketIo => serde_json::from_slice::<bool>(raw).ok(),
    }
}

pub(super) fn read_str(format: Format, raw: &[u8]) -> Option<Cow<'_, str>> {
    match format {
        Format::MsgPack => rmp::decode::read_str_from_slice(raw)
            .ok()
            .map(|(s, _)| Cow::Borrowed(s)),
        Format::Json | Format::SocketIo => match serde_json::from_slice::<&str>(raw) {
            Ok(s) => Some(Cow::Borrowed(s)),
            // Escapes in the string: it cannot be borrowed.
            Err(_) => serde_json::from_slice::<String>(raw).ok().map(Cow::Owned),
        },
    }
}

pub(super) fn read_position(format: Format, raw: &[u8]) -> Option<Position> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        epoch: Cow<'a, str>,
        offset: u64,
    }
    let w: Wire<'_> = match format {
        Format::MsgPack => rmp_serde::from_slice(raw).ok()?,
        Format::Json | Format::SocketIo => serde_json::from_slice(raw).ok()?,
    };
    Some(Position {
        epoch: Position::parse_epoch(&w.epoch)?,
        offset: w.offset,
    })
}

pub(super) fn read_positions(format: Format, raw: &[u8]) -> Option<Vec<(String, Position)>> {
    #[derive(Deserialize)]
    struct Wire {
        epoch: String,
        offset: u64,
    }
    let map: std::collections::BTreeMap<String, Wire> = match format {
        Format::MsgPack => rmp_serde::from_slice(raw).ok()?,
        Format::Json | Format::SocketIo => serde_json::from_slice(raw).ok()?,
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
        Some(which @ ("edit" | "delete")) => {
            let offset = f.offset.map(|r| read_u64(format, r));
            let epoch = f
                .epoch
                .map(|r| read_str(format, r).and_then(|hex| Position::parse_epoch(&hex)));
            match (str_field(f.channel), offset, epoch) {
                (None, ..) => Command::Invalid("edit and delete need a 'channel' string"),
                (_, None | Some(None) | Some(Some(0)), _) => Command::Invalid(
                    "'offset' must be the offset (from 1) of the publication to change",
                ),
                (_, _, Some(None)) => Command::Invalid("'epoch' must be 16 hex digits"),
                (Some(channel), Some(Some(offset)), epoch) if which == "delete" => {
                    Command::Delete {
                        channel,
                        offset,
                        epoch: epoch.flatten(),
                    }
                }
                (Some(channel), Some(Some(offset)), epoch) => match f.data {
                    None => Command::Invalid("edit needs the new 'data'"),
                    Some(raw) => Command::Edit {
                        channel,
                        offset,
                        epoch: epoch.flatten(),
                        data: Payload { format, raw },
                        meta: f.meta.map(|raw| Payload { format, raw }),
                    },
                },
            }
        }
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
        Some("history") => match str_field(f.channel) {
            None => Command::Invalid("history needs a 'channel' string"),
            Some(channel) => match history_page(format, &f, &channel) {
                Ok(page) => Command::History { channel, page },
                Err(why) => Command::Invalid(why),
            },
        },
        Some("unsubscribe") => match str_field(f.channel) {
            Some(channel) => Command::Unsubscribe { channel },
            None => Command::Invalid("unsubscribe needs a 'channel' string"),
        },
        Some("publish") => match (
            str_field(f.channel),
            f.data,
            f.key.map(|r| read_str(format, r)),
            f.reply.map(|r| read_bool(format, r)),
        ) {
            (_, _, Some(None), _) => Command::Invalid("'key' must be a string"),
            (_, _, Some(Some(k)), _) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
                Command::Invalid("'key' must be 1 to 128 bytes")
            }
            (.., Some(None)) => Command::Invalid("'reply' must be a boolean"),
            (Some(channel), Some(raw), key, reply) => Command::Publish {
                channel,
                data: Payload { format, raw },
                key: key.flatten(),
                meta: f.meta.map(|raw| Payload { format, raw }),
                reply: reply.flatten().unwrap_or(true),
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
    Ok(Request {
        id,
        command: with_valid_payloads(command),
    })
}

/// The command, or [`Command::Invalid`] naming the fault when a payload it carries
/// could not be read back in every format later (see [`Payload::validate`]): refused
/// here, at the edge, so nothing stored can fail a later read.
fn with_valid_payloads(command: Command<'_>) -> Command<'_> {
    let (data, meta) = match &command {
        Command::Publish { data, meta, .. }
        | Command::Edit { data, meta, .. }
        | Command::Send { data, meta, .. }
        | Command::Schedule { data, meta, .. } => (Some(*data), *meta),
        Command::Call { data, .. } => (*data, None),
        Command::CallSignal { data, .. } => (Some(*data), None),
        _ => return command,
    };
    let fault = data
        .iter()
        .chain(meta.iter())
        .find_map(|p| p.validate().err());
    if let Some(fault) = fault {
        return Command::Invalid(fault.message());
    }
    match meta.map(super::attachments::check) {
        Some(Err(why)) => Command::Invalid(why),
        _ => command,
    }
}
