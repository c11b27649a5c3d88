//! The frame decoder (`frame::check` + `frame::take`) and message reassembly
//! (`MessageAssembler`), fed arbitrary client bytes in arbitrary read sizes, as a
//! shard's read path does.
//!
//! Checks: never panics; `check` asks for more bytes than it has before it answers
//! `Complete`, and a complete frame fits the buffer and the frame limit; `take`
//! consumes exactly the frame; every text message and close reason is valid UTF-8,
//! every message within the message limit, every close code one a peer may send;
//! re-encoding a frame and decoding it again gives the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::frame::{self, Check, Role};
use switchboard_protocol::{Message, MessageAssembler};

const MAX_FRAME: usize = 64 * 1024;
const MAX_MESSAGE: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    // Read sizes of 1..=64 bytes, or everything at once.
    let chunk = match first & 0x3f {
        0 => data.len().max(1),
        n => n as usize,
    };
    let mut buf = BytesMut::new();
    let mut assembler = MessageAssembler::default();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let header = match frame::check(&buf, Role::Server, MAX_FRAME) {
                Ok(Check::Complete(h)) => h,
                Ok(Check::Incomplete { needed }) => {
                    assert!(
                        needed > buf.len(),
                        "asks for {needed} with {} held",
                        buf.len()
                    );
                    break;
                }
                Err(_) => return, // the connection is closed with the error's code
            };
            assert!(header.frame_len() <= buf.len());
            assert!(header.payload_len <= MAX_FRAME);
            let before = buf.len();
            let f = frame::take(&mut buf, &header);
            assert_eq!(before - buf.len(), header.frame_len());
            assert_eq!(f.payload.len(), header.payload_len);
            // Round trip: the same frame, masked again, decodes to the same frame.
            let again = frame::encode_masked(f.fin, f.opcode, &f.payload, [7, 1, 2, 9]);
            let mut again = BytesMut::from(&again[..]);
            let Ok(Check::Complete(h2)) = frame::check(&again, Role::Server, MAX_FRAME) else {
                panic!("a frame we accepted does not decode after re-encoding");
            };
            assert_eq!(frame::take(&mut again, &h2), f);
            match assembler.push(f, MAX_MESSAGE) {
                Ok(Some(Message::Text(t))) => {
                    assert!(t.len() <= MAX_MESSAGE);
                    assert!(std::str::from_utf8(&t).is_ok());
                }
                Ok(Some(Message::Binary(b))) => assert!(b.len() <= MAX_MESSAGE),
                Ok(Some(Message::Close { code, reason })) => {
                    assert!(std::str::from_utf8(&reason).is_ok());
                    if let Some(c) = code {
                        assert!(
                            matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999),
                            "close code {c} accepted"
                        );
                    }
                }
                Ok(Some(Message::Ping(p) | Message::Pong(p))) => assert!(p.len() <= 125),
                Ok(None) => assert!(assembler.in_progress()),
                Err(_) => return,
            }
        }
    }
});
