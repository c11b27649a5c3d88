//! Server-side encoding: replies, pushes and publications as complete WebSocket frames.
//!
//! Owns encoding straight into frames ([`FrameBuilder`]), splicing opaque payloads
//! back unchanged (transcoding only for a subscriber of the other format), and stream
//! answers with stored publications. Does not decode (see [`super::decode`]).

use bytes::Bytes;
use serde::Serialize;

use super::types::*;
use crate::frame::FrameBuilder;
use crate::Error;

#[derive(Serialize)]
pub(super) struct ResultReply<'a, T: Serialize> {
    id: u32,
    result: &'a T,
}

#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u32>,
}

#[derive(Serialize)]
pub(super) struct ErrorReply<'a> {
    id: u32,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub(super) struct DisconnectPush<'a> {
    push: &'static str,
    code: u16,
    reason: &'a str,
    reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_after_ms: Option<u32>,
}

pub(super) fn encode_serde<T: Serialize>(format: Format, value: &T, hint: usize) -> Bytes {
    let mut b = FrameBuilder::with_capacity(hint);
    match format {
        Format::MsgPack => rmp_serde::encode::write_named(&mut b.writer(), value)
            .expect("serialising to memory cannot fail"),
        Format::Json | Format::SocketIo => {
            serde_json::to_writer(b.writer(), value).expect("serialising to memory cannot fail")
        }
    }
    b.finish(format.opcode())
}

/// A complete frame carrying `{"id": id, "result": result}`.
pub fn encode_result<T: Serialize>(format: Format, id: u32, result: &T) -> Bytes {
    if format == Format::SocketIo {
        return super::sio::result(id, result);
    }
    encode_serde(format, &ResultReply { id, result }, 64)
}

/// A complete frame carrying a push the server composes from a serialisable value
/// (which must include `"push": name`).
pub fn encode_push<T: Serialize>(format: Format, push: &T) -> Bytes {
    if format == Format::SocketIo {
        return super::sio::push(push);
    }
    encode_serde(format, push, 96)
}

/// A complete frame carrying `{"id": id, "error": {"code": code, "message": message}}`.
pub fn encode_error(format: Format, id: u32, code: ErrorCode, message: &str) -> Bytes {
    if format == Format::SocketIo {
        let body = ErrorBody {
            code: code as u16,
            message,
            retry_after_ms: None,
        };
        return super::sio::error(id, &body);
    }
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
    if format == Format::SocketIo {
        let body = ErrorBody {
            code: ErrorCode::RateLimited as u16,
            message,
            retry_after_ms: Some(retry_after_ms),
        };
        return super::sio::error(id, &body);
    }
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
    if format == Format::SocketIo {
        return super::sio::disconnect();
    }
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
    encode_publication_event(format, channel, pos, from, meta, data, None)
}

/// [`encode_publication_full`] for a publication a backend named with an `event`
/// (`POST /api/publish` with `"event"`): Socket.IO subscribers get that event with the
/// data as its one argument (`42["analysis_progress",{…}]`, as a Node server's
/// `io.to(room).emit(event, data)` sent it); native subscribers get the publication
/// with an `"event"` member before `meta` and `data`.
pub fn encode_publication_event(
    format: Format,
    channel: &str,
    pos: Position,
    from: Option<&str>,
    meta: Option<Payload<'_>>,
    data: Payload<'_>,
    event: Option<&str>,
) -> Result<Bytes, Error> {
    encode_publication_with(format, channel, pos, from, meta, data, event, None, false)
}

/// A publication that edits or deletes an earlier one (`revises`): native subscribers
/// get it with an `"edit": N` or `"delete": N` member; Socket.IO subscribers get the
/// event `message:edited` or `message:deleted` with the publication object (and its
/// offset argument when `sio_offset`, as [`encode_recoverable_publication`]).
#[allow(clippy::too_many_arguments)] // The fields of one publication, as the callers hold them.
pub fn encode_revision(
    format: Format,
    channel: &str,
    pos: Position,
    from: Option<&str>,
    meta: Option<Payload<'_>>,
    data: Payload<'_>,
    revises: Revision,
    sio_offset: bool,
) -> Result<Bytes, Error> {
    encode_publication_with(
        format,
        channel,
        pos,
        from,
        meta,
        data,
        None,
        Some(revises),
        sio_offset,
    )
}

/// [`encode_publication_event`] for a server with Socket.IO connection state recovery
/// on: a Socket.IO event carries the publication's offset as its last argument
/// ([`super::sio::write_offset`]), which socket.io-client keeps and sends back when it
/// reconnects. Other formats are as [`encode_publication_event`] writes them.
pub fn encode_recoverable_publication(
    format: Format,
    channel: &str,
    pos: Position,
    from: Option<&str>,
    meta: Option<Payload<'_>>,
    data: Payload<'_>,
    event: Option<&str>,
) -> Result<Bytes, Error> {
    encode_publication_with(format, channel, pos, from, meta, data, event, None, true)
}

#[allow(clippy::too_many_arguments)] // The fields of one publication, as the callers hold them.
fn encode_publication_with(
    format: Format,
    channel: &str,
    pos: Position,
    from: Option<&str>,
    meta: Option<Payload<'_>>,
    data: Payload<'_>,
    event: Option<&str>,
    revises: Option<Revision>,
    sio_offset: bool,
) -> Result<Bytes, Error> {
    let meta_len = meta.map_or(0, |m| 8 + m.raw.len())
        + from.map_or(0, |f| 8 + f.len())
        + event.map_or(0, |e| 10 + e.len())
        + revises.map_or(0, |_| 32);
    // The offset argument: `,"`, up to 20 digits, `.`, 16 hex digits, `.`, the channel.
    let offset_len = if sio_offset { 42 + channel.len() } else { 0 };
    let mut b =
        FrameBuilder::with_capacity(80 + channel.len() + meta_len + data.raw.len() + offset_len);
    let epoch = pos.epoch_hex();
    if let (Format::SocketIo, Some(event)) = (format, event) {
        super::sio::begin_event(&mut b, event);
        write_data(&mut b, format, data)?;
        if sio_offset {
            super::sio::write_offset(&mut b, channel, pos);
        }
        b.extend(b"]");
        return Ok(b.finish(format.opcode()));
    }
    match format {
        Format::MsgPack => {
            let mut w = b.writer();
            let io = |_| Error::Envelope("write to memory failed".into());
            let extra = u32::from(meta.is_some())
                + u32::from(from.is_some())
                + u32::from(event.is_some())
                + u32::from(revises.is_some());
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
            if let Some(event) = event {
                rmp::encode::write_str(&mut w, "event").map_err(io)?;
                rmp::encode::write_str(&mut w, event).map_err(io)?;
            }
            if let Some(r) = revises {
                let key = if r.delete { "delete" } else { "edit" };
                rmp::encode::write_str(&mut w, key).map_err(io)?;
                rmp::encode::write_uint(&mut w, r.target).map_err(io)?;
            }
            drop(w);
            if let Some(meta) = meta {
                rmp::encode::write_str(&mut b.writer(), "meta").map_err(io)?;
                write_data(&mut b, format, meta)?;
            }
            rmp::encode::write_str(&mut b.writer(), "data").map_err(io)?;
            write_data(&mut b, format, data)?;
        }
        Format::Json | Format::SocketIo => {
            if format == Format::SocketIo {
                let name = match revises {
                    None => "message:new",
                    Some(r) if r.delete => "message:deleted",
                    Some(_) => "message:edited",
                };
                super::sio::begin_event(&mut b, name);
                b.extend(b"{\"channel\":");
            } else {
                b.extend(b"{\"push\":\"publication\",\"channel\":");
            }
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
            if let Some(event) = event {
                b.extend(b",\"event\":");
                serde_json::to_writer(b.writer(), event)
                    .map_err(|e| Error::Envelope(e.to_string()))?;
            }
            if let Some(r) = revises {
                number_member(&mut b, if r.delete { "delete" } else { "edit" }, r.target);
            }
            if let Some(meta) = meta {
                b.extend(b",\"meta\":");
                write_data(&mut b, format, meta)?;
            }
            b.extend(b",\"data\":");
            write_data(&mut b, format, data)?;
            b.extend(b"}");
            if format == Format::SocketIo {
                if sio_offset {
                    super::sio::write_offset(&mut b, channel, pos);
                }
                b.extend(b"]");
            }
        }
    }
    Ok(b.finish(format.opcode()))
}

/// Append `data` as one value in `format`: its bytes unchanged when it already is in
/// `format`, else transcoded.
pub(super) fn write_data(
    b: &mut FrameBuilder,
    format: Format,
    data: Payload<'_>,
) -> Result<(), Error> {
    // A Socket.IO session's data is JSON; no payload is in `SocketIo`.
    let json = |f| {
        if f == Format::SocketIo {
            Format::Json
        } else {
            f
        }
    };
    match (json(format), json(data.format)) {
        (Format::MsgPack, Format::MsgPack) | (Format::Json, Format::Json) => b.extend(data.raw),
        (Format::SocketIo, _) | (_, Format::SocketIo) => unreachable!("mapped to JSON above"),
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

/// The mark on a stored publication this format cannot carry (`"data": null,
/// "unreadable": …`): only publications stored before payloads were validated at the
/// edge can have it.
pub const UNREADABLE: &str = "this publication cannot be read in this format";

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
    /// The event a backend named it with, if any.
    pub event: Option<&'p str>,
    /// Opaque metadata.
    pub meta: Option<Payload<'p>>,
    /// The payload.
    pub data: Payload<'p>,
    /// It edits or deletes an earlier publication.
    pub revises: Option<Revision>,
    /// It was edited (`data`/`meta` are the latest) or deleted since.
    pub revised: Option<Revised>,
}

/// A complete frame carrying the answer to a `subscribe` or `history` (or a push of
/// the same fields, see [`ReplyTo`]):
/// `{"id":…,"result":{"epoch":…,"offset":…[,"recovered":…],"publications":[{"offset":…,"data":…},…]}}`
/// where `top` is the channel's latest position and each publication's `data` is
/// spliced in (or transcoded) as in a publication push. A history page that has more
/// after it ends with `"cursor":…`, the text that asks for the next one.
pub fn encode_stream_reply<'p>(
    format: Format,
    to: ReplyTo<'_>,
    top: Position,
    recovered: Option<bool>,
    publications: impl ExactSizeIterator<Item = StoredPublication<'p>> + Clone,
    cursor: Option<&str>,
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
    let fields = 3 + u32::from(recovered.is_some()) + u32::from(cursor.is_some());
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
                let start = b.payload_len();
                let item = |b: &mut FrameBuilder, p: &StoredPublication<'_>| {
                    {
                        let mut w = b.writer();
                        let extra = u32::from(p.meta.is_some())
                            + u32::from(p.from.is_some())
                            + u32::from(p.event.is_some())
                            + u32::from(p.revises.is_some())
                            + u32::from(p.revised.is_some());
                        rmp::encode::write_map_len(&mut w, 2 + extra).map_err(io)?;
                        rmp::encode::write_str(&mut w, "offset").map_err(io)?;
                        rmp::encode::write_uint(&mut w, p.offset).map_err(io)?;
                        if let Some(from) = p.from {
                            rmp::encode::write_str(&mut w, "from").map_err(io)?;
                            rmp::encode::write_str(&mut w, from).map_err(io)?;
                        }
                        if let Some(event) = p.event {
                            rmp::encode::write_str(&mut w, "event").map_err(io)?;
                            rmp::encode::write_str(&mut w, event).map_err(io)?;
                        }
                        if let Some(r) = p.revises {
                            let key = if r.delete { "delete" } else { "edit" };
                            rmp::encode::write_str(&mut w, key).map_err(io)?;
                            rmp::encode::write_uint(&mut w, r.target).map_err(io)?;
                        }
                        match p.revised {
                            Some(r) if r.deleted => {
                                rmp::encode::write_str(&mut w, "deleted_ms").map_err(io)?;
                                rmp::encode::write_uint(&mut w, r.at_ms).map_err(io)?;
                            }
                            Some(r) => {
                                rmp::encode::write_str(&mut w, "edited_ms").map_err(io)?;
                                rmp::encode::write_uint(&mut w, r.at_ms).map_err(io)?;
                            }
                            None => {}
                        }
                    }
                    if let Some(meta) = p.meta {
                        rmp::encode::write_str(&mut b.writer(), "meta").map_err(io)?;
                        write_data(b, format, meta)?;
                    }
                    rmp::encode::write_str(&mut b.writer(), "data").map_err(io)?;
                    write_data(b, format, p.data)
                };
                if item(&mut b, &p).is_err() {
                    // Stored before payloads were validated at the edge and unreadable
                    // in this format: marked, so the rest of the answer still arrives.
                    b.truncate_payload(start);
                    let mut w = b.writer();
                    rmp::encode::write_map_len(&mut w, 3).map_err(io)?;
                    rmp::encode::write_str(&mut w, "offset").map_err(io)?;
                    rmp::encode::write_uint(&mut w, p.offset).map_err(io)?;
                    rmp::encode::write_str(&mut w, "data").map_err(io)?;
                    rmp::encode::write_nil(&mut w)
                        .map_err(|_| Error::Envelope("write to memory failed".into()))?;
                    rmp::encode::write_str(&mut w, "unreadable").map_err(io)?;
                    rmp::encode::write_str(&mut w, UNREADABLE).map_err(io)?;
                }
            }
            if let Some(c) = cursor {
                let mut w = b.writer();
                rmp::encode::write_str(&mut w, "cursor").map_err(io)?;
                rmp::encode::write_str(&mut w, c).map_err(io)?;
            }
        }
        Format::Json | Format::SocketIo => {
            let json = |e: serde_json::Error| Error::Envelope(e.to_string());
            let mut digits = [0u8; 20];
            let sio = format == Format::SocketIo;
            match to {
                ReplyTo::Id(super::sio::NO_ACK) if sio => return Ok(Bytes::new()),
                ReplyTo::Id(id) if sio => {
                    super::sio::begin_ack(&mut b, id);
                    b.extend(b"{\"epoch\":\"");
                }
                ReplyTo::Id(id) => {
                    b.extend(b"{\"id\":");
                    b.extend(decimal(u64::from(id), &mut digits));
                    b.extend(b",\"result\":{\"epoch\":\"");
                }
                ReplyTo::Push { push, channel } => {
                    if sio {
                        let event = super::sio::push_event(push).unwrap_or(push);
                        super::sio::begin_event(&mut b, event);
                        b.extend(b"{\"channel\":");
                    } else {
                        b.extend(b"{\"push\":");
                        serde_json::to_writer(b.writer(), push).map_err(json)?;
                        b.extend(b",\"channel\":");
                    }
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
                let start = b.payload_len();
                let rest = |b: &mut FrameBuilder| {
                    if let Some(from) = p.from {
                        b.extend(b",\"from\":");
                        serde_json::to_writer(b.writer(), from).map_err(json)?;
                    }
                    if let Some(event) = p.event {
                        b.extend(b",\"event\":");
                        serde_json::to_writer(b.writer(), event).map_err(json)?;
                    }
                    if let Some(r) = p.revises {
                        let key = if r.delete { "delete" } else { "edit" };
                        number_member(b, key, r.target);
                    }
                    if let Some(r) = p.revised {
                        let key = if r.deleted { "deleted_ms" } else { "edited_ms" };
                        number_member(b, key, r.at_ms);
                    }
                    if let Some(meta) = p.meta {
                        b.extend(b",\"meta\":");
                        write_data(b, format, meta)?;
                    }
                    b.extend(b",\"data\":");
                    write_data(b, format, p.data)
                };
                if rest(&mut b).is_err() {
                    // As for MessagePack above: marked, not failing the whole answer.
                    b.truncate_payload(start);
                    b.extend(b",\"data\":null,\"unreadable\":\"");
                    b.extend(UNREADABLE.as_bytes());
                    b.extend(b"\"");
                }
                b.extend(b"}");
            }
            b.extend(b"]");
            if let Some(c) = cursor {
                b.extend(b",\"cursor\":");
                serde_json::to_writer(b.writer(), c).map_err(json)?;
            }
            b.extend(match to {
                _ if sio => &b"}]"[..],
                ReplyTo::Id(_) => &b"}}"[..],
                ReplyTo::Push { .. } => &b"}"[..],
            });
        }
    }
    Ok(b.finish(format.opcode()))
}

/// `,"key":n` in a JSON object being written.
fn number_member(b: &mut FrameBuilder, key: &str, n: u64) {
    let mut digits = [0u8; 20];
    b.extend(b",\"");
    b.extend(key.as_bytes());
    b.extend(b"\":");
    b.extend(decimal(n, &mut digits));
}

/// `n` in decimal ASCII, written at the end of `buf` (no allocation).
pub(super) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
