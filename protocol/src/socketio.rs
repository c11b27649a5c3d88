//! Socket.IO v5 packets, carried in Engine.IO message packets (issue 17), sans-IO.
//!
//! Owns the seven packet types and their text encoding:
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`, e.g. `2["chat","hi"]`,
//! `2/admin,13["ping"]`, `51-["upload",{"_placeholder":true,"num":0}]`, and the checks
//! the protocol puts on each type's data (a CONNECT's data is an object or absent, an
//! EVENT's an array whose first element is an event name, an ACK's an array...).
//! A packet with binary attachments is its text packet followed by that many binary
//! Engine.IO messages; the attachments stay where the client put them
//! (`{"_placeholder":true,"num":N}`) and travel beside the JSON as bytes.
//!
//! Does not own namespaces' meaning, acks' bookkeeping or collecting attachments (the
//! engine's session does that), nor the Engine.IO framing around a packet
//! ([`crate::engineio`]).

use serde_json::value::RawValue;

/// The main namespace.
pub const MAIN_NAMESPACE: &str = "/";

/// A Socket.IO packet's type, the digit that starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// `0`: join a namespace (client, with its `auth` object) or the server's yes
    /// (with `{"sid":…}`).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event: `["name", args…]`.
    Event,
    /// `3`: the answer to an event that asked for one: `[args…]`.
    Ack,
    /// `4`: the server refuses a CONNECT: `{"message":…}` (the client's `connect_error`).
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketKind {
    /// The digit of this type.
    pub fn digit(self) -> u8 {
        b'0' + self as u8
    }

    fn from_digit(d: u8) -> Option<PacketKind> {
        Some(match d {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    /// Whether packets of this type are followed by binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// One decoded Socket.IO packet, borrowing the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// What it is.
    pub kind: PacketKind,
    /// Its namespace (`/` when the packet names none).
    pub namespace: &'a str,
    /// How many binary attachments follow it (binary types only).
    pub attachments: u32,
    /// The ack id: an EVENT that wants an answer, or the event an ACK answers.
    pub id: Option<u64>,
    /// The JSON data as sent (empty when absent), checked against the type.
    pub data: &'a str,
}

/// Why text is not a valid Socket.IO packet. The protocol's answer to every one of
/// them is to close the Engine.IO session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// No type digit, or one outside 0–6.
    #[error("unknown Socket.IO packet type")]
    UnknownType,
    /// A binary type without a valid `<n>-` attachment count.
    #[error("bad attachment count")]
    Attachments,
    /// More attachments than allowed.
    #[error("too many attachments")]
    TooManyAttachments,
    /// An ack id that is not a number, or too long.
    #[error("bad ack id")]
    AckId,
    /// A namespace that is not `/…` followed by `,` or the end.
    #[error("bad namespace")]
    Namespace,
    /// Data that is not JSON.
    #[error("data is not JSON")]
    Json,
    /// JSON of the wrong shape for the type (an EVENT without a name, a CONNECT with an
    /// array, a DISCONNECT with data, a reserved event name…).
    #[error("data does not fit the packet type")]
    Payload,
    /// A server-only type (CONNECT_ERROR) sent by a client.
    #[error("packet type not allowed from a client")]
    NotFromClient,
}

/// Event names a client may not emit (they name the client library's own events).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Most digits in an ack id (JavaScript's safe integers have 16).
const MAX_ID_DIGITS: usize = 16;

/// Decode a packet a client sent, with at most `max_attachments` attachments.
///
/// Hot path for EVENT packets: the data is checked by borrowing JSON (no tree built).
pub fn decode(text: &str, max_attachments: u32) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let (&first, _) = bytes.split_first().ok_or(PacketError::UnknownType)?;
    let kind = PacketKind::from_digit(first).ok_or(PacketError::UnknownType)?;
    if kind == PacketKind::ConnectError {
        return Err(PacketError::NotFromClient);
    }
    let mut at = 1;
    let mut attachments = 0;
    if kind.is_binary() {
        let dash = bytes[at..]
            .iter()
            .position(|&b| b == b'-')
            .ok_or(PacketError::Attachments)?;
        let digits = &text[at..at + dash];
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PacketError::Attachments);
        }
        attachments = digits.parse().map_err(|_| PacketError::Attachments)?;
        if attachments > max_attachments {
            return Err(PacketError::TooManyAttachments);
        }
        at += dash + 1;
    }
    let mut namespace = MAIN_NAMESPACE;
    if bytes.get(at) == Some(&b'/') {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b',')
            .map_or(bytes.len(), |i| at + i);
        namespace = &text[at..end];
        if namespace.bytes().any(|b| b.is_ascii_control()) {
            return Err(PacketError::Namespace);
        }
        at = (end + 1).min(bytes.len());
    }
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let id = if digits == 0 {
        None
    } else if digits > MAX_ID_DIGITS {
        return Err(PacketError::AckId);
    } else {
        let id = text[at..at + digits]
            .parse()
            .map_err(|_| PacketError::AckId)?;
        at += digits;
        Some(id)
    };
    let data = &text[at..];
    check_data(kind, id, data)?;
    Ok(Packet {
        kind,
        namespace,
        attachments,
        id,
        data,
    })
}

/// The protocol's rules for each type's data (socket.io-parser's `isPayloadValid`).
fn check_data(kind: PacketKind, id: Option<u64>, data: &str) -> Result<(), PacketError> {
    match kind {
        PacketKind::Connect => {
            if !data.is_empty() && !is_object(data)? {
                return Err(PacketError::Payload);
            }
        }
        PacketKind::Disconnect => {
            if !data.is_empty() {
                return Err(PacketError::Payload);
            }
        }
        PacketKind::Event | PacketKind::BinaryEvent => {
            let args = args(data)?;
            let Some(name) = args.first() else {
                return Err(PacketError::Payload);
            };
            match serde_json::from_str::<String>(name.get()) {
                Ok(n) if !RESERVED_EVENTS.contains(&n.as_str()) => {}
                // A number as the name is allowed by the protocol (socket.io-parser).
                Err(_)
                    if name
                        .get()
                        .starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {}
                _ => return Err(PacketError::Payload),
            }
        }
        PacketKind::Ack | PacketKind::BinaryAck => {
            if id.is_none() {
                return Err(PacketError::AckId);
            }
            args(data)?;
        }
        PacketKind::ConnectError => return Err(PacketError::NotFromClient),
    }
    Ok(())
}

fn is_object(data: &str) -> Result<bool, PacketError> {
    let raw: &RawValue = serde_json::from_str(data).map_err(|_| PacketError::Json)?;
    Ok(raw.get().starts_with('{'))
}

/// The elements of a JSON array, borrowed (`[]` for an empty array). An error for
/// anything that is not an array.
pub fn args(data: &str) -> Result<Vec<&RawValue>, PacketError> {
    if !data.trim_start().starts_with('[') {
        return Err(if data.is_empty() {
            PacketError::Payload
        } else {
            match serde_json::from_str::<&RawValue>(data) {
                Ok(_) => PacketError::Payload,
                Err(_) => PacketError::Json,
            }
        });
    }
    serde_json::from_str(data).map_err(|_| PacketError::Json)
}

/// The event name of a decoded EVENT or BINARY_EVENT's data (numbers as their text).
pub fn event_name(data: &str) -> Option<std::borrow::Cow<'_, str>> {
    let args = args(data).ok()?;
    let first: &str = args.first()?.get();
    Some(match serde_json::from_str::<&str>(first) {
        Ok(n) => std::borrow::Cow::Borrowed(n),
        // Escapes in the name: it must be unescaped into a new string.
        Err(_) => match serde_json::from_str::<String>(first) {
            Ok(n) => std::borrow::Cow::Owned(n),
            Err(_) => std::borrow::Cow::Borrowed(first),
        },
    })
}

/// Append a packet's text: type, attachment count (binary types), namespace (when not
/// `/`), ack id, then `data` (JSON, written as given).
pub fn encode(
    kind: PacketKind,
    namespace: &str,
    attachments: u32,
    id: Option<u64>,
    data: &str,
    out: &mut Vec<u8>,
) {
    out.push(kind.digit());
    if kind.is_binary() {
        push_number(out, u64::from(attachments));
        out.push(b'-');
    }
    if namespace != MAIN_NAMESPACE {
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        push_number(out, id);
    }
    out.extend_from_slice(data.as_bytes());
}

/// Append `["event", args…]`: the data of an EVENT whose arguments are the JSON
/// texts `args`.
pub fn event_data(event: &str, args: &[&str], out: &mut Vec<u8>) {
    out.push(b'[');
    serde_json::to_writer(&mut *out, event).expect("writing to memory cannot fail");
    for a in args {
        out.push(b',');
        out.extend_from_slice(a.as_bytes());
    }
    out.push(b']');
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: PacketKind, nsp: &str, att: u32, id: Option<u64>, data: &str) -> String {
        let mut out = Vec::new();
        encode(kind, nsp, att, id, data, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_protocols_examples_decode_and_encode_back() {
        use PacketKind::*;
        for (text, kind, nsp, att, id, data) in [
            ("0", Connect, "/", 0, None, ""),
            (
                "0{\"token\":\"123\"}",
                Connect,
                "/",
                0,
                None,
                "{\"token\":\"123\"}",
            ),
            ("0/admin,", Connect, "/admin", 0, None, ""),
            (
                "0/admin,{\"token\":\"1\"}",
                Connect,
                "/admin",
                0,
                None,
                "{\"token\":\"1\"}",
            ),
            ("1/admin,", Disconnect, "/admin", 0, None, ""),
            ("2[\"hello\",1]", Event, "/", 0, None, "[\"hello\",1]"),
            (
                "2/admin,456[\"project:delete\",123]",
                Event,
                "/admin",
                0,
                Some(456),
                "[\"project:delete\",123]",
            ),
            ("3/admin,456[]", Ack, "/admin", 0, Some(456), "[]"),
            (
                "51-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
                BinaryEvent,
                "/",
                1,
                None,
                "[\"hello\",{\"_placeholder\":true,\"num\":0}]",
            ),
            (
                "61-/admin,456[{\"_placeholder\":true,\"num\":0}]",
                BinaryAck,
                "/admin",
                1,
                Some(456),
                "[{\"_placeholder\":true,\"num\":0}]",
            ),
        ] {
            let p = decode(text, 10).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                p,
                Packet {
                    kind,
                    namespace: nsp,
                    attachments: att,
                    id,
                    data
                },
                "{text}"
            );
            let back = enc(kind, nsp, att, id, data);
            // The encoder writes a namespace's comma even when nothing follows.
            assert_eq!(
                back.trim_end_matches(','),
                text.trim_end_matches(','),
                "{text}"
            );
        }
        // A namespace at the very end, with no comma (the conformance suite's `40/random`).
        assert_eq!(decode("0/random", 0).unwrap().namespace, "/random");
        assert_eq!(decode("1/custom", 0).unwrap().namespace, "/custom");
    }

    #[test]
    fn the_conformance_suites_invalid_packets_are_refused() {
        assert_eq!(decode("4abc", 0), Err(PacketError::NotFromClient));
        assert_eq!(decode("abc", 0), Err(PacketError::UnknownType));
        assert_eq!(decode("", 0), Err(PacketError::UnknownType));
        assert_eq!(decode("2{}", 0), Err(PacketError::Payload));
        assert_eq!(
            decode("2abc[\"message-with-ack\",1]", 0),
            Err(PacketError::Json)
        );
        assert_eq!(decode("2[]", 0), Err(PacketError::Payload));
        assert_eq!(decode("2[\"connect\"]", 0), Err(PacketError::Payload));
        assert_eq!(decode("2[{}]", 0), Err(PacketError::Payload));
        assert_eq!(decode("2[\"a\"", 0), Err(PacketError::Json));
        assert_eq!(decode("0[]", 0), Err(PacketError::Payload));
        assert_eq!(decode("0{", 0), Err(PacketError::Json));
        assert_eq!(decode("1{}", 0), Err(PacketError::Payload));
        assert_eq!(decode("3[]", 0), Err(PacketError::AckId));
        assert_eq!(decode("3123{}", 0), Err(PacketError::Payload));
        assert_eq!(decode("5[\"a\"]", 0), Err(PacketError::Attachments));
        assert_eq!(decode("5x-[\"a\"]", 0), Err(PacketError::Attachments));
        assert_eq!(
            decode("53-[\"a\"]", 2),
            Err(PacketError::TooManyAttachments)
        );
        assert_eq!(
            decode("212345678901234567[\"a\"]", 0),
            Err(PacketError::AckId)
        );
        assert_eq!(decode("0/a\u{1},", 0), Err(PacketError::Namespace));
    }

    #[test]
    fn event_names_and_args_are_borrowed() {
        let data = "[\"message:send\",{\"channel\":\"room:1\"},2]";
        assert_eq!(event_name(data).unwrap(), "message:send");
        assert!(matches!(
            event_name(data),
            Some(std::borrow::Cow::Borrowed(_))
        ));
        assert_eq!(event_name("[\"a\\\"b\"]").unwrap(), "a\"b");
        assert_eq!(event_name("[42,1]").unwrap(), "42");
        let a = args(data).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].get(), "{\"channel\":\"room:1\"}");
        assert!(decode("2[42]", 0).is_ok());
    }

    #[test]
    fn server_packets_encode() {
        let mut data = Vec::new();
        event_data("message-back", &["1", "\"2\"", "{\"3\":[true]}"], &mut data);
        let data = String::from_utf8(data).unwrap();
        assert_eq!(
            enc(PacketKind::Event, "/", 0, None, &data),
            "2[\"message-back\",1,\"2\",{\"3\":[true]}]"
        );
        assert_eq!(
            enc(
                PacketKind::ConnectError,
                "/random",
                0,
                None,
                "{\"message\":\"Invalid namespace\"}"
            ),
            "4/random,{\"message\":\"Invalid namespace\"}"
        );
        assert_eq!(
            enc(PacketKind::BinaryAck, "/", 2, Some(789), "[1]"),
            "62-789[1]"
        );
        assert_eq!(enc(PacketKind::Ack, "/", 0, Some(0), "[]"), "30[]");
        assert_eq!(
            enc(PacketKind::Ack, "/", 0, Some(u64::MAX), "[]"),
            format!("3{}[]", u64::MAX)
        );
    }
}
