//! Engine.IO v4 packets: the transport under Socket.IO v5 (issue 17), sans-IO.
//!
//! Owns the seven packet types and their two encodings. Over WebSocket each frame is one
//! packet: a text frame is the type's digit then its data (`4hello`, `2probe`), a binary
//! frame is a message packet whose data is the frame's bytes. Over HTTP long-polling a
//! body is a *payload*: packets separated by the record separator `0x1e`, a binary
//! message written as `b` then its bytes in standard base64. Also the open packet's
//! JSON (`sid`, `upgrades`, `pingInterval`, `pingTimeout`, `maxPayload`).
//!
//! Does not own sessions, heartbeats, the upgrade dance or HTTP (the engine's), nor the
//! Socket.IO packets carried inside message packets.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The record separator between the packets of a polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// An Engine.IO packet's type, the digit that starts its text encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `0`: the server's first packet, with the session's parameters.
    Open,
    /// `1`: the transport is closing.
    Close,
    /// `2`: a heartbeat (sent by the server in v4; `2probe` by a client probing a
    /// new transport).
    Ping,
    /// `3`: the answer to a ping (`3probe` to a probe).
    Pong,
    /// `4`: application data (a Socket.IO packet).
    Message,
    /// `5`: the client switches to the probed transport.
    Upgrade,
    /// `6`: nothing; answers a pending poll during an upgrade.
    Noop,
}

impl PacketType {
    /// The digit of this type.
    pub fn digit(self) -> u8 {
        b'0' + self as u8
    }

    /// The type a digit names.
    pub fn from_digit(d: u8) -> Option<PacketType> {
        Some(match d {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }
}

/// A packet's data: text, or bytes (binary message packets only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data<'a> {
    /// Text after the type digit (possibly empty).
    Text(&'a str),
    /// Bytes of a binary message: borrowed from a WebSocket frame, decoded from base64
    /// in a polling payload.
    Binary(Cow<'a, [u8]>),
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// What it is.
    pub kind: PacketType,
    /// What it carries.
    pub data: Data<'a>,
}

impl<'a> Packet<'a> {
    /// A text packet.
    pub fn text(kind: PacketType, data: &'a str) -> Packet<'a> {
        Packet {
            kind,
            data: Data::Text(data),
        }
    }

    /// A binary message packet.
    pub fn binary(bytes: &'a [u8]) -> Packet<'a> {
        Packet {
            kind: PacketType::Message,
            data: Data::Binary(Cow::Borrowed(bytes)),
        }
    }
}

/// Why bytes are not Engine.IO packets; the session is closed (polling: HTTP 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// An empty packet (no type digit).
    #[error("empty Engine.IO packet")]
    Empty,
    /// The first character is not a type digit 0–6.
    #[error("unknown Engine.IO packet type")]
    UnknownType,
    /// A `b` packet of a polling payload that is not standard base64.
    #[error("binary packet is not valid base64")]
    Base64,
    /// A polling payload of more packets than allowed.
    #[error("too many packets in one payload")]
    TooManyPackets,
    /// A polling payload that is not UTF-8 text.
    #[error("payload is not UTF-8 text")]
    NotText,
}

/// The packet in a WebSocket text frame.
pub fn decode_text(frame: &str) -> Result<Packet<'_>, PacketError> {
    let (&first, _) = frame.as_bytes().split_first().ok_or(PacketError::Empty)?;
    let kind = PacketType::from_digit(first).ok_or(PacketError::UnknownType)?;
    // The digit is one ASCII byte: the rest starts on a char boundary.
    Ok(Packet::text(kind, &frame[1..]))
}

/// The packet in a WebSocket binary frame: always a message.
pub fn decode_binary(frame: &[u8]) -> Packet<'_> {
    Packet::binary(frame)
}

/// The packets of a polling payload (a POST body), at most `max_packets`.
pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet<'_>>, PacketError> {
    let body = std::str::from_utf8(body).map_err(|_| PacketError::NotText)?;
    let mut packets = Vec::new();
    for part in body.split(SEPARATOR as char) {
        if packets.len() == max_packets {
            return Err(PacketError::TooManyPackets);
        }
        let packet = match part.strip_prefix('b') {
            Some(b64) => Packet {
                kind: PacketType::Message,
                data: Data::Binary(Cow::Owned(
                    STANDARD.decode(b64).map_err(|_| PacketError::Base64)?,
                )),
            },
            None => decode_text(part)?,
        };
        packets.push(packet);
    }
    Ok(packets)
}

/// Append `packet` as a WebSocket text frame's payload would hold it; binary messages
/// go in binary frames instead (their bytes as they are), so this refuses them.
pub fn encode_text(packet: &Packet<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match &packet.data {
        Data::Text(t) => {
            out.push(packet.kind.digit());
            out.extend_from_slice(t.as_bytes());
            Ok(())
        }
        Data::Binary(_) => Err("a binary message goes in a binary frame"),
    }
}

/// Append `packets` as one polling payload (a GET answer).
pub fn encode_payload(packets: &[Packet<'_>], out: &mut Vec<u8>) {
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match &p.data {
            Data::Text(t) => {
                out.push(p.kind.digit());
                out.extend_from_slice(t.as_bytes());
            }
            Data::Binary(bytes) => {
                out.push(b'b');
                let start = out.len();
                out.resize(
                    start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
                    0,
                );
                let n = STANDARD
                    .encode_slice(bytes, &mut out[start..])
                    .expect("sized by encoded_len");
                out.truncate(start + n);
            }
        }
    }
}

/// The open packet's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open<'a> {
    /// The session id: names the session in every polling request (`sid=`).
    pub sid: &'a str,
    /// Transports the client may upgrade to (`["websocket"]` from polling, `[]` on a
    /// WebSocket).
    pub upgrades: &'a [&'a str],
    /// How often the server pings, milliseconds.
    pub ping_interval_ms: u64,
    /// How long after a ping the server waits for the pong, milliseconds.
    pub ping_timeout_ms: u64,
    /// Most bytes the server accepts in one packet or payload.
    pub max_payload: u64,
}

impl Open<'_> {
    /// The open packet's text (`0{"sid":…}`).
    pub fn encode(&self) -> String {
        let body = serde_json::json!({
            "sid": self.sid,
            "upgrades": self.upgrades,
            "pingInterval": self.ping_interval_ms,
            "pingTimeout": self.ping_timeout_ms,
            "maxPayload": self.max_payload,
        });
        format!("0{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packets_decode_and_encode_back() {
        for (frame, kind, data) in [
            ("4hello", PacketType::Message, "hello"),
            ("2probe", PacketType::Ping, "probe"),
            ("3", PacketType::Pong, ""),
            ("5", PacketType::Upgrade, ""),
            ("6", PacketType::Noop, ""),
            ("1", PacketType::Close, ""),
            ("4é€😀", PacketType::Message, "é€😀"),
        ] {
            let p = decode_text(frame).unwrap();
            assert_eq!(p, Packet::text(kind, data), "{frame}");
            let mut out = Vec::new();
            encode_text(&p, &mut out).unwrap();
            assert_eq!(out, frame.as_bytes());
        }
        assert_eq!(decode_text(""), Err(PacketError::Empty));
        assert_eq!(decode_text("7x"), Err(PacketError::UnknownType));
        assert_eq!(decode_text("éx"), Err(PacketError::UnknownType));
        let mut out = Vec::new();
        assert!(encode_text(&Packet::binary(&[1, 2]), &mut out).is_err());
    }

    #[test]
    fn polling_payloads_split_on_the_separator_with_base64_binary() {
        // The protocol's own example: "4hello", a ping, and the bytes 1 2 3 4.
        let body = b"4hello\x1e2\x1ebAQIDBA==";
        let packets = decode_payload(body, 16).unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::text(PacketType::Message, "hello"),
                Packet::text(PacketType::Ping, ""),
                Packet::binary(&[1, 2, 3, 4]),
            ]
        );
        let mut out = Vec::new();
        encode_payload(&packets, &mut out);
        assert_eq!(out, body);
        let mut one = Vec::new();
        encode_payload(&[Packet::text(PacketType::Noop, "")], &mut one);
        assert_eq!(one, b"6");
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert_eq!(decode_payload(b"", 16), Err(PacketError::Empty));
        assert_eq!(decode_payload(b"4a\x1e", 16), Err(PacketError::Empty));
        assert_eq!(decode_payload(b"9a", 16), Err(PacketError::UnknownType));
        assert_eq!(decode_payload(b"b!!!", 16), Err(PacketError::Base64));
        assert_eq!(decode_payload(b"4\xff", 16), Err(PacketError::NotText));
        assert_eq!(
            decode_payload(b"4a\x1e4b\x1e4c", 2),
            Err(PacketError::TooManyPackets)
        );
    }

    #[test]
    fn a_binary_frame_is_a_message() {
        assert_eq!(decode_binary(&[0xff, 0]), Packet::binary(&[0xff, 0]));
    }

    #[test]
    fn the_open_packet_carries_the_session_parameters() {
        let open = Open {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: &["websocket"],
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload: 1_000_000,
        }
        .encode();
        let (digit, json) = open.split_at(1);
        assert_eq!(digit, "0");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sid": "lv_VI97HAXpY6yYWAAAC", "upgrades": ["websocket"],
                "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000})
        );
    }
}
