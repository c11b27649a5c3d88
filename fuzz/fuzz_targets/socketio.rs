//! The Socket.IO endpoint's decoders on arbitrary bytes: the HTTP head of a request to
//! the Engine.IO endpoint, Engine.IO packets (a WebSocket frame's text, a polling
//! body), Socket.IO packets, the event vocabulary's translation into native
//! commands, and connection state recovery offsets.
//!
//! Checks: never panics; a polling body decodes to at most the allowed packets and
//! encodes back to a body that decodes to the same packets; a Socket.IO packet the
//! decoder accepts encodes back to text that decodes to the same packet; every
//! envelope the vocabulary builds from an accepted EVENT decodes as a native request
//! (never a malformed envelope: the event's own faults are `Command::Invalid`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::eio_http::{self, HeadParse};
use switchboard_protocol::envelope::{decode_request, encode_recoverable_publication, sio};
use switchboard_protocol::frame::{self, Check, Role};
use switchboard_protocol::handshake::HandshakeLimits;
use switchboard_protocol::socketio::{self, PacketKind};
use switchboard_protocol::{engineio, sio_events, Format, Payload};

fuzz_target!(|input: &[u8]| {
    // The HTTP side.
    let limits = HandshakeLimits::default();
    if let Ok(HeadParse::Complete(h)) = eio_http::parse_head(input, &limits) {
        assert!(h.consumed <= input.len());
    }
    let _ = eio_http::request_path(input);

    // A polling body.
    if let Ok(packets) = engineio::decode_payload(input, 16) {
        assert!(packets.len() <= 16);
        let mut body = Vec::new();
        engineio::encode_payload(&packets, &mut body);
        let again = engineio::decode_payload(&body, 16).expect("an encoded body decodes");
        assert_eq!(again, packets);
    }

    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // A recovery offset as a client sends it back: one that parses is written back
    // the same, inside an event that is valid JSON.
    if let Some((channel, pos)) = sio::parse_offset(text) {
        let data = Payload {
            format: Format::Json,
            raw: b"1",
        };
        let frame =
            encode_recoverable_publication(Format::SocketIo, channel, pos, None, None, data, None)
                .expect("a valid channel encodes");
        let h = match frame::check(&frame, Role::Client, usize::MAX) {
            Ok(Check::Complete(h)) => h,
            other => panic!("the encoder wrote a bad frame: {other:?}"),
        };
        let payload = &frame[h.header_len..];
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&payload[2..]).expect("an event is a JSON array");
        let back = v
            .last()
            .and_then(|o| o.as_str())
            .expect("the offset argument");
        assert_eq!(sio::parse_offset(back), Some((channel, pos)));
    }
    // A WebSocket frame's Engine.IO packet, and the Socket.IO packet in a message.
    if let Ok(p) = engineio::decode_text(text) {
        let mut out = Vec::new();
        engineio::encode_text(&p, &mut out).expect("text packets encode");
        assert_eq!(out, input);
    }
    let Ok(p) = socketio::decode(text, 8) else {
        return;
    };
    assert!(p.attachments <= 8);
    let mut out = Vec::new();
    socketio::encode(p.kind, p.namespace, p.attachments, p.id, p.data, &mut out);
    let back = std::str::from_utf8(&out).expect("encoded packets are UTF-8");
    assert_eq!(socketio::decode(back, 8), Ok(p.clone()));
    if matches!(p.kind, PacketKind::Event | PacketKind::BinaryEvent) {
        let name = socketio::event_name(p.data).expect("an accepted event has a name");
        let args = socketio::args(p.data).expect("an accepted event has arguments");
        if let Some(Ok(envelopes)) = sio_events::envelopes(&name, 7, u32::MAX, &args[1..]) {
            for e in envelopes {
                if let Err(err) = decode_request(Format::Json, &e) {
                    panic!(
                        "the vocabulary built a bad envelope {:?}: {err}",
                        String::from_utf8_lossy(&e)
                    );
                }
            }
        }
    }
});
