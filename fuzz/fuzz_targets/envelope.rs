//! Both envelope decoders (MessagePack and JSON), payload validation and the
//! transcoder, on arbitrary bytes. The first byte picks the format.
//!
//! Checks the promise of docs/RELIABILITY.md "one payload never poisons others'
//! reads": never panics; a command the decoder accepts carries only payloads that
//! every format can serve — its publication push and a `history` answer holding it
//! encode in MessagePack *and* JSON, and a client decodes each back to a payload that
//! is itself valid. The same for raw bytes that pass `Payload::validate` on their own.
//! The client-side decoder and `msgpack_value_len` never panic either.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::envelope::{
    self, decode_request, decode_server_message, encode_publication_full, encode_stream_reply,
    ReplyTo, ServerMessage, StoredPublication,
};
use switchboard_protocol::frame::{self, Check, Role};
use switchboard_protocol::{Command, Format, Payload, Position};

const POS: Position = Position {
    epoch: 0x0123_4567_89ab_cdef,
    offset: 42,
};

/// The payload of the one server frame in `bytes`.
fn unframe(bytes: &[u8]) -> BytesMut {
    let mut buf = BytesMut::from(bytes);
    let Ok(Check::Complete(h)) = frame::check(&buf, Role::Client, usize::MAX) else {
        panic!("the server built a frame it cannot decode");
    };
    let payload = frame::take(&mut buf, &h).payload;
    assert!(buf.is_empty(), "one frame");
    BytesMut::from(&payload[..])
}

/// `data` (and `meta`) are valid: every reader gets them, in a form it can check.
fn serves_everyone(data: Payload<'_>, meta: Option<Payload<'_>>) {
    for format in [Format::MsgPack, Format::Json] {
        let push = encode_publication_full(format, "room:fuzz", POS, Some("u1"), meta, data)
            .unwrap_or_else(|e| panic!("a valid payload does not encode for {format:?}: {e}"));
        let body = unframe(&push);
        match decode_server_message(format, &body) {
            Ok(ServerMessage::Publication {
                data: got,
                meta: got_meta,
                ..
            }) => {
                assert_eq!(got.format, format);
                assert_eq!(got.validate(), Ok(()), "served payload is not valid itself");
                assert_eq!(got_meta.is_some(), meta.is_some());
                if let Some(m) = got_meta {
                    assert_eq!(m.validate(), Ok(()));
                }
            }
            other => panic!("a publication push decodes as {other:?}"),
        }
        let stored = StoredPublication {
            offset: 42,
            from: Some("u1"),
            event: None,
            meta,
            data,
            revises: None,
            revised: None,
        };
        let reply = encode_stream_reply(
            format,
            ReplyTo::Id(7),
            POS,
            Some(true),
            [stored].into_iter(),
            None,
        )
        .unwrap_or_else(|e| panic!("a valid payload fails a history answer ({format:?}): {e}"));
        let body = unframe(&reply);
        assert!(matches!(
            decode_server_message(format, &body),
            Ok(ServerMessage::Result { id: 7, .. })
        ));
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, bytes)) = input.split_first() else {
        return;
    };
    let format = if first & 1 == 0 {
        Format::MsgPack
    } else {
        Format::Json
    };

    // The server's decoder.
    if let Ok(req) = decode_request(format, bytes) {
        match req.command {
            Command::Publish { data, meta, .. }
            | Command::Send { data, meta, .. }
            | Command::Schedule { data, meta, .. } => serves_everyone(data, meta),
            Command::CallSignal { data, .. }
            | Command::Call {
                data: Some(data), ..
            } => serves_everyone(data, None),
            _ => {}
        }
    }

    // A payload on its own (as /api/publish and /api/send take it).
    let payload = Payload { format, raw: bytes };
    if payload.validate().is_ok() {
        serves_everyone(payload, None);
    }

    // The client side and the value scanner.
    let _ = decode_server_message(format, bytes);
    if format == Format::MsgPack {
        if let Ok(n) = envelope::msgpack_value_len(bytes) {
            assert!(n <= bytes.len());
        }
    }
});
