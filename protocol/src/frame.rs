//! RFC 6455 frames: two-step decoding and server-side encoding.
//!
//! Owns the frame header format, the per-frame rules (RSV bits, opcodes, control-frame
//! limits, masking direction, frame size limit) and building complete frames. Does not
//! own message reassembly ([`crate::message`]) or what a message means.
//!
//! Decoding is two steps, as in mini-redis: [`check`] looks at the buffered bytes and
//! says whether a whole frame is there (validating the header as soon as it is, so an
//! oversized frame is refused before its payload arrives); [`take`] then splits that
//! frame off the buffer and unmasks it in place. Incompleteness is a plain
//! [`Check::Incomplete`] value, not an error.
//!
//! Hot path: every inbound frame goes through `check` + `take`; every outbound frame
//! is built by [`encode`] or [`FrameBuilder`] exactly once (fan-out shares the `Bytes`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{mask, Error};

/// Which side of the connection decodes: the server requires masked frames, the client
/// requires unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server: frames we decode come from a client and must be masked.
    Server,
    /// We are the client: frames we decode come from a server and must not be masked.
    Client,
}

/// Frame opcodes defined by RFC 6455.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation = 0x0,
    /// First frame of a text message.
    Text = 0x1,
    /// First frame of a binary message.
    Binary = 0x2,
    /// Close control frame.
    Close = 0x8,
    /// Ping control frame.
    Ping = 0x9,
    /// Pong control frame.
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of its message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Masking key, present on client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header (2..=14).
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header plus payload, in bytes.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Result of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not a whole frame yet; at least `needed` bytes in total are required.
    Incomplete {
        /// Total bytes the buffer must hold before `check` can succeed (a lower bound
        /// while the header itself is incomplete).
        needed: usize,
    },
    /// A whole frame is buffered; pass the header to [`take`].
    Complete(FrameHeader),
}

/// A decoded, unmasked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Final fragment of its message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Unmasked payload, sharing the read buffer's allocation.
    pub payload: Bytes,
}

/// Step one: is a whole, valid frame at the start of `buf`?
///
/// Refuses, as soon as the header is readable: reserved bits (no extension is
/// negotiated), unknown opcodes, fragmented or >125-byte control frames, a masking
/// direction that does not fit `role`, a 64-bit length with its top bit set, and a
/// payload over `max_frame_bytes`.
#[inline]
pub fn check(buf: &[u8], role: Role, max_frame_bytes: usize) -> Result<Check, Error> {
    if buf.len() < 2 {
        return Ok(Check::Incomplete { needed: 2 });
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(Error::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(Error::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(Error::Protocol("client frame not masked")),
        (Role::Client, true) => return Err(Error::Protocol("server frame masked")),
        _ => {}
    }
    let len7 = (b1 & 0x7f) as usize;
    if opcode.is_control() {
        if !fin {
            return Err(Error::Protocol("fragmented control frame"));
        }
        if len7 > 125 {
            return Err(Error::Protocol("control frame too long"));
        }
    }
    let (payload_len, mut header_len) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(Check::Incomplete { needed: 4 });
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Check::Incomplete { needed: 10 });
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(Error::Protocol("frame length has its top bit set"));
            }
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        n => (n, 2),
    };
    if payload_len > max_frame_bytes {
        return Err(Error::TooBig {
            limit: max_frame_bytes,
        });
    }
    let mask = if masked {
        if buf.len() < header_len + 4 {
            return Ok(Check::Incomplete {
                needed: header_len + 4,
            });
        }
        let key = [
            buf[header_len],
            buf[header_len + 1],
            buf[header_len + 2],
            buf[header_len + 3],
        ];
        header_len += 4;
        Some(key)
    } else {
        None
    };
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    };
    if buf.len() < header.frame_len() {
        return Ok(Check::Incomplete {
            needed: header.frame_len(),
        });
    }
    Ok(Check::Complete(header))
}

/// Step two: split the frame that [`check`] found off the front of `buf`, unmasked.
///
/// The payload shares `buf`'s allocation (no copy).
#[inline]
pub fn take(buf: &mut BytesMut, header: &FrameHeader) -> Frame {
    buf.advance(header.header_len);
    let mut payload = buf.split_to(header.payload_len);
    if let Some(key) = header.mask {
        mask::apply(&mut payload, key);
    }
    Frame {
        fin: header.fin,
        opcode: header.opcode,
        payload: payload.freeze(),
    }
}

/// Largest header of an unmasked (server-to-client) frame.
pub const MAX_SERVER_HEADER: usize = 10;

/// Write the header of an unmasked frame into `out`, returning its length.
#[inline]
pub fn write_header(
    out: &mut [u8; 14],
    fin: bool,
    opcode: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// Encode a complete unmasked frame (server to client) with one allocation.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut hdr = [0u8; 14];
    let n = write_header(&mut hdr, true, opcode, payload.len(), None);
    let mut buf = BytesMut::with_capacity(n + payload.len());
    buf.put_slice(&hdr[..n]);
    buf.put_slice(payload);
    buf.freeze()
}

/// Encode a complete masked frame (client to server): for clients, tests and loadtest.
pub fn encode_masked(fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut hdr = [0u8; 14];
    let n = write_header(&mut hdr, fin, opcode, payload.len(), Some(key));
    let mut buf = Vec::with_capacity(n + payload.len());
    buf.extend_from_slice(&hdr[..n]);
    let start = buf.len();
    buf.extend_from_slice(payload);
    mask::apply(&mut buf[start..], key);
    buf
}

/// Encode a close frame; the reason is cut at a character boundary to fit 123 bytes.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload[..2 + end])
}

/// Builds one unmasked frame in place around a payload written by a serializer, so an
/// envelope is encoded straight into its frame with no second copy.
///
/// `MAX_SERVER_HEADER` bytes are reserved in front; [`FrameBuilder::finish`] writes
/// the real header right before the payload and drops the unused prefix.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
}

impl FrameBuilder {
    /// A builder whose payload is expected to be about `payload_hint` bytes.
    pub fn with_capacity(payload_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + payload_hint);
        buf.put_bytes(0, MAX_SERVER_HEADER);
        FrameBuilder { buf }
    }

    /// Payload bytes written so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - MAX_SERVER_HEADER
    }

    /// Drop payload bytes written after the first `len` (undo a part that failed).
    pub fn truncate_payload(&mut self, len: usize) {
        self.buf.truncate(MAX_SERVER_HEADER + len);
    }

    /// Append payload bytes.
    #[inline]
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A writer for serializers (rmp-serde, serde_json) appending to the payload.
    pub fn writer(&mut self) -> impl std::io::Write + '_ {
        (&mut self.buf).writer()
    }

    /// Finish as a single final frame of `opcode`.
    pub fn finish(mut self, opcode: OpCode) -> Bytes {
        let len = self.payload_len();
        let mut hdr = [0u8; 14];
        let n = write_header(&mut hdr, true, opcode, len, None);
        let start = MAX_SERVER_HEADER - n;
        self.buf[start..MAX_SERVER_HEADER].copy_from_slice(&hdr[..n]);
        self.buf.advance(start);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_one(bytes: &[u8], role: Role) -> Result<Frame, Error> {
        let mut buf = BytesMut::from(bytes);
        match check(&buf, role, 1 << 20)? {
            Check::Complete(h) => Ok(take(&mut buf, &h)),
            Check::Incomplete { .. } => panic!("incomplete"),
        }
    }

    #[test]
    fn rfc_examples() {
        // Unmasked "Hello" (server to client).
        let f = decode_one(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], Role::Client).unwrap();
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (true, OpCode::Text, &b"Hello"[..])
        );
        // Masked "Hello" (client to server).
        let f = decode_one(
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            Role::Server,
        )
        .unwrap();
        assert_eq!(&f.payload[..], b"Hello");
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(
            check(&[0x81, 0x05, 1, 2, 3, 4, 5], Role::Server, 100),
            Err(Error::Protocol("client frame not masked"))
        );
        assert_eq!(
            check(&[0xC1, 0x80], Role::Server, 100),
            Err(Error::Protocol("reserved bits set"))
        );
        assert_eq!(
            check(&[0x83, 0x80], Role::Server, 100),
            Err(Error::Protocol("unknown opcode"))
        );
        assert_eq!(
            check(&[0x09, 0x80], Role::Server, 100),
            Err(Error::Protocol("fragmented control frame"))
        );
        assert_eq!(
            check(&[0x89, 0xFE, 0, 200], Role::Server, 1000),
            Err(Error::Protocol("control frame too long"))
        );
        assert_eq!(
            check(&[0x82, 0xFE, 0x01, 0x00], Role::Server, 255),
            Err(Error::TooBig { limit: 255 })
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            check(&huge, Role::Server, usize::MAX),
            Err(Error::Protocol("frame length has its top bit set"))
        );
    }

    #[test]
    fn incomplete_reports_needed() {
        let frame = encode_masked(true, OpCode::Binary, &[7u8; 300], [1, 2, 3, 4]);
        for cut in 0..frame.len() {
            match check(&frame[..cut], Role::Server, 1 << 20).unwrap() {
                Check::Incomplete { needed } => assert!(needed > cut),
                Check::Complete(_) => panic!("complete at {cut}"),
            }
        }
        assert!(matches!(
            check(&frame, Role::Server, 1 << 20).unwrap(),
            Check::Complete(_)
        ));
    }

    #[test]
    fn builder_matches_encode() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![0xabu8; len];
            let mut b = FrameBuilder::with_capacity(len);
            b.extend(&payload);
            assert_eq!(
                b.finish(OpCode::Binary),
                encode(OpCode::Binary, &payload),
                "len {len}"
            );
        }
    }

    #[test]
    fn close_reason_is_cut_on_char_boundary() {
        let reason = "é".repeat(100);
        let f = encode_close(1000, &reason);
        assert!(f.len() <= 127);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    proptest! {
        #[test]
        fn masked_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                            key in any::<[u8; 4]>(), fin in any::<bool>(), binary in any::<bool>()) {
            let op = if binary { OpCode::Binary } else { OpCode::Text };
            let bytes = encode_masked(fin, op, &payload, key);
            let mut buf = BytesMut::from(&bytes[..]);
            buf.extend_from_slice(b"trailing");
            let Check::Complete(h) = check(&buf, Role::Server, 1 << 20).unwrap() else { panic!() };
            let f = take(&mut buf, &h);
            prop_assert_eq!(f.fin, fin);
            prop_assert_eq!(f.opcode, op);
            prop_assert_eq!(&f.payload[..], &payload[..]);
            prop_assert_eq!(&buf[..], b"trailing");
        }

        #[test]
        fn unmasked_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let bytes = encode(OpCode::Binary, &payload);
            let f = decode_one(&bytes, Role::Client).unwrap();
            prop_assert_eq!(&f.payload[..], &payload[..]);
        }

        #[test]
        fn check_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = check(&bytes, Role::Server, 1000);
            let _ = check(&bytes, Role::Client, 1000);
        }
    }
}
