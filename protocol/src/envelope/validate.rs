//! Payload validation at the edge: what may be accepted into a channel or an inbox.
//!
//! Owns the rule that every accepted payload (`data`, `meta`) can later be served in
//! *every* format: nested at most [`MAX_PAYLOAD_DEPTH`] levels, MessagePack without
//! extension types, with valid UTF-8 strings and map keys JSON can carry (strings or
//! integers), JSON that parses as a value MessagePack can carry (no lone surrogates).
//! A payload that passes is never the reason a later `history`, recovery or inbox
//! backlog fails. Does not decide what to do with a refusal (the engine answers 104).
//!
//! Hot path (once per accepted publish or send, never per subscriber): the MessagePack
//! walk is iterative over a fixed-size stack and allocates nothing; JSON is checked for
//! depth by a byte scan, then transcoded once into a sink (`io::sink`, no output kept)
//! with the same code a MessagePack reader's copy is made with later, so "it will
//! transcode" is checked by the thing that transcodes.

use super::types::{Format, Payload};

/// The deepest nesting of arrays and maps a payload may have (the payload itself is
/// level 1 when it is an array or map). Deep enough for any document a chat, visit or
/// notification carries; shallow enough that no reader's recursion limit is reached
/// (serde_json stops at 128).
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// Why a payload was refused; [`PayloadFault::message`] is the error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadFault {
    /// Arrays or maps nested deeper than [`MAX_PAYLOAD_DEPTH`].
    TooDeep,
    /// A MessagePack extension type (JSON has no equivalent).
    Extension,
    /// A MessagePack string that is not valid UTF-8.
    InvalidUtf8,
    /// A MessagePack map key that is not a string or an integer.
    MapKey,
    /// Not one well-formed value, or not expressible in the other format.
    Malformed,
}

impl PayloadFault {
    /// The error message sent to the client (static: no allocation on refusal).
    pub fn message(self) -> &'static str {
        match self {
            PayloadFault::TooDeep => "payload nested deeper than 32 levels",
            PayloadFault::Extension => {
                "payload holds a MessagePack extension type, which JSON cannot carry"
            }
            PayloadFault::InvalidUtf8 => "payload holds a string that is not valid UTF-8",
            PayloadFault::MapKey => "payload holds a map key that is not a string or integer",
            PayloadFault::Malformed => {
                "payload is not one value both formats can carry (bad number or escape?)"
            }
        }
    }
}

impl std::fmt::Display for PayloadFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl Payload<'_> {
    /// Whether this payload may be accepted: see the module doc.
    pub fn validate(&self) -> Result<(), PayloadFault> {
        match self.format {
            Format::MsgPack => validate_msgpack(self.raw),
            Format::Json | Format::SocketIo => validate_json(self.raw),
        }
    }
}

/// One open container of the MessagePack walk.
#[derive(Clone, Copy, Default)]
struct Open {
    /// Items still to read (a map counts keys and values).
    left: u32,
    /// Whether it is a map (then every other item is a key).
    map: bool,
}

fn validate_msgpack(buf: &[u8]) -> Result<(), PayloadFault> {
    use rmp::Marker as M;
    let malformed = PayloadFault::Malformed;
    let be = |at: usize, n: usize| -> Result<usize, PayloadFault> {
        let b = buf.get(at..at + n).ok_or(malformed)?;
        Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize))
    };
    let mut stack = [Open::default(); MAX_PAYLOAD_DEPTH];
    let mut depth = 0usize;
    let mut pos = 0usize;
    // The top-level value, then until every open container is complete.
    let mut first = true;
    while first || depth > 0 {
        // Whether this item is a map key: the open container is a map and an even
        // number of its items remain.
        let key = depth > 0 && stack[depth - 1].map && stack[depth - 1].left % 2 == 0;
        if depth > 0 {
            stack[depth - 1].left -= 1;
        }
        first = false;
        let marker = M::from_u8(*buf.get(pos).ok_or(malformed)?);
        pos += 1;
        let (skip, items, map, text) = match marker {
            M::FixPos(_) | M::FixNeg(_) => (0, 0, false, false),
            M::U8 | M::I8 => (1, 0, false, false),
            M::U16 | M::I16 => (2, 0, false, false),
            M::U32 | M::I32 => (4, 0, false, false),
            M::U64 | M::I64 => (8, 0, false, false),
            M::Null | M::True | M::False | M::F32 | M::F64 | M::Bin8 | M::Bin16 | M::Bin32
                if key =>
            {
                return Err(PayloadFault::MapKey)
            }
            M::Null | M::True | M::False => (0, 0, false, false),
            M::F32 => (4, 0, false, false),
            M::F64 => (8, 0, false, false),
            M::FixStr(n) => (n as usize, 0, false, true),
            M::Str8 => (1 + be(pos, 1)?, 0, false, true),
            M::Str16 => (2 + be(pos, 2)?, 0, false, true),
            M::Str32 => (4 + be(pos, 4)?, 0, false, true),
            M::Bin8 => (1 + be(pos, 1)?, 0, false, false),
            M::Bin16 => (2 + be(pos, 2)?, 0, false, false),
            M::Bin32 => (4 + be(pos, 4)?, 0, false, false),
            M::FixArray(_) | M::Array16 | M::Array32 | M::FixMap(_) | M::Map16 | M::Map32
                if key =>
            {
                return Err(PayloadFault::MapKey)
            }
            M::FixArray(n) => (0, n as usize, false, false),
            M::Array16 => (2, be(pos, 2)?, false, false),
            M::Array32 => (4, be(pos, 4)?, false, false),
            M::FixMap(n) => (0, 2 * n as usize, true, false),
            M::Map16 => (2, 2 * be(pos, 2)?, true, false),
            M::Map32 => (4, 2 * be(pos, 4)?, true, false),
            M::FixExt1
            | M::FixExt2
            | M::FixExt4
            | M::FixExt8
            | M::FixExt16
            | M::Ext8
            | M::Ext16
            | M::Ext32 => return Err(PayloadFault::Extension),
            M::Reserved => return Err(malformed),
        };
        let end = pos
            .checked_add(skip)
            .filter(|&p| p <= buf.len())
            .ok_or(malformed)?;
        if text {
            // The string's bytes are the last `len` of the `skip` bytes (after its length).
            let len_bytes = match marker {
                M::Str8 => 1,
                M::Str16 => 2,
                M::Str32 => 4,
                _ => 0,
            };
            if std::str::from_utf8(&buf[pos + len_bytes..end]).is_err() {
                return Err(PayloadFault::InvalidUtf8);
            }
        }
        pos = end;
        if matches!(
            marker,
            M::FixArray(_) | M::Array16 | M::Array32 | M::FixMap(_) | M::Map16 | M::Map32
        ) {
            // Every item takes at least one byte: a count larger than what is left lies.
            if items > buf.len() - pos {
                return Err(malformed);
            }
            // This container is level depth + 1, empty or not.
            if depth == MAX_PAYLOAD_DEPTH {
                return Err(PayloadFault::TooDeep);
            }
            if items > 0 {
                stack[depth] = Open {
                    left: items as u32,
                    map,
                };
                depth += 1;
            }
        }
        // Close every container this item completed.
        while depth > 0 && stack[depth - 1].left == 0 {
            depth -= 1;
        }
    }
    if pos != buf.len() {
        return Err(malformed);
    }
    Ok(())
}

fn validate_json(raw: &[u8]) -> Result<(), PayloadFault> {
    // Depth first, by a scan that only tracks strings: it runs before any recursive
    // parser sees the bytes.
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_PAYLOAD_DEPTH {
                    return Err(PayloadFault::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // Then the real transcoder, into nothing: whatever it refuses (lone surrogates,
    // numbers out of range) would fail a MessagePack reader's copy later.
    let mut de = serde_json::Deserializer::from_slice(raw);
    let mut ser = rmp_serde::Serializer::new(std::io::sink()).with_struct_map();
    serde_transcode::transcode(&mut de, &mut ser).map_err(|_| PayloadFault::Malformed)?;
    de.end().map_err(|_| PayloadFault::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<(), PayloadFault> {
        Payload {
            format: Format::Json,
            raw: s.as_bytes(),
        }
        .validate()
    }

    fn msgpack(v: &[u8]) -> Result<(), PayloadFault> {
        Payload {
            format: Format::MsgPack,
            raw: v,
        }
        .validate()
    }

    fn nested_json(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    fn nested_msgpack(depth: usize) -> Vec<u8> {
        let mut v = vec![0x91; depth - 1];
        v.push(0x90);
        v
    }

    #[test]
    fn json_values_both_formats_carry_pass() {
        for ok in [
            r#"{"text":"hi","n":[1,2.5,-3,null,true],"deep":{"a":{"b":"\u00e9\ud83d\ude00"}}}"#,
            "\"just a string\"",
            "42",
            "null",
            r#""[not a bracket]{""#,
            &nested_json(MAX_PAYLOAD_DEPTH),
        ] {
            assert_eq!(json(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn json_too_deep_or_unrepresentable_is_refused() {
        assert_eq!(
            json(&nested_json(MAX_PAYLOAD_DEPTH + 1)),
            Err(PayloadFault::TooDeep)
        );
        assert_eq!(json(&nested_json(100_000)), Err(PayloadFault::TooDeep));
        assert_eq!(json(r#""\ud800""#), Err(PayloadFault::Malformed));
        assert_eq!(json("[1,2"), Err(PayloadFault::Malformed));
        assert_eq!(json("1 2"), Err(PayloadFault::Malformed));
    }

    #[test]
    fn msgpack_values_both_formats_carry_pass() {
        let value = rmp_serde::to_vec_named(&serde_json::json!({
            "text": "hi", "n": [1, 2.5, -3, null, true], "deep": {"a": {"b": "é"}}
        }))
        .unwrap();
        assert_eq!(msgpack(&value), Ok(()));
        // bin (becomes an array of byte values in JSON), an integer key, empty containers.
        assert_eq!(
            msgpack(&[0x82, 0xa1, b'b', 0xc4, 0x02, 1, 2, 0x01, 0x90]),
            Ok(())
        );
        assert_eq!(msgpack(&nested_msgpack(MAX_PAYLOAD_DEPTH)), Ok(()));
        assert_eq!(msgpack(&[0x80]), Ok(()));
    }

    #[test]
    fn msgpack_faults_are_named() {
        assert_eq!(
            msgpack(&nested_msgpack(MAX_PAYLOAD_DEPTH + 1)),
            Err(PayloadFault::TooDeep)
        );
        assert_eq!(msgpack(&nested_msgpack(60_000)), Err(PayloadFault::TooDeep));
        // fixext1 type 5 inside an array.
        assert_eq!(msgpack(&[0x91, 0xd4, 5, 0]), Err(PayloadFault::Extension));
        // A string with a lone continuation byte.
        assert_eq!(msgpack(&[0xa2, b'a', 0x80]), Err(PayloadFault::InvalidUtf8));
        assert_eq!(
            msgpack(&[0xd9, 2, 0xff, 0xfe]),
            Err(PayloadFault::InvalidUtf8)
        );
        // Keys: nil, an array, bin.
        assert_eq!(msgpack(&[0x81, 0xc0, 1]), Err(PayloadFault::MapKey));
        assert_eq!(msgpack(&[0x81, 0x90, 1]), Err(PayloadFault::MapKey));
        assert_eq!(msgpack(&[0x81, 0xc4, 1, 7, 1]), Err(PayloadFault::MapKey));
        // Truncated, trailing bytes, a count that lies.
        assert_eq!(msgpack(&[0xa3, b'a']), Err(PayloadFault::Malformed));
        assert_eq!(msgpack(&[0x01, 0x02]), Err(PayloadFault::Malformed));
        assert_eq!(
            msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(PayloadFault::Malformed)
        );
        assert_eq!(msgpack(&[]), Err(PayloadFault::Malformed));
    }

    /// What passes really transcodes both ways (the promise the module makes).
    #[test]
    fn accepted_payloads_transcode() {
        let samples: [&[u8]; 3] = [
            &[0x82, 0xa1, b'b', 0xc4, 0x02, 1, 2, 0x01, 0x90],
            &[0x81, 0x05, 0xa1, b'x'],
            &nested_msgpack(MAX_PAYLOAD_DEPTH),
        ];
        for raw in samples {
            assert_eq!(msgpack(raw), Ok(()));
            let mut de = rmp_serde::Deserializer::from_read_ref(raw);
            let mut ser = serde_json::Serializer::new(Vec::new());
            serde_transcode::transcode(&mut de, &mut ser).unwrap();
        }
    }
}
