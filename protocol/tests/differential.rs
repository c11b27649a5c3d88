//! Differential test: the same byte streams go to our frame decoder and to
//! fastwebsockets (server role); the frames (fin, opcode, unmasked payload) and the
//! accept/reject outcome must agree. Our decoder is also fed the stream in random
//! pieces, as a socket would deliver it.

use bytes::BytesMut;
use fastwebsockets::{OpCode as FwOp, Role as FwRole, WebSocket};
use proptest::prelude::*;
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use tokio::io::AsyncWriteExt;

const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Our decoder, fed in pieces cut at `cuts`.
fn ours(stream: &[u8], cuts: &[usize]) -> (Vec<Seen>, bool) {
    let mut buf = BytesMut::new();
    let mut out = vec![];
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    points.sort();
    points.push(stream.len());
    for end in points {
        if end < start {
            continue;
        }
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match frame::check(&buf, Role::Server, MAX_FRAME) {
                Ok(Check::Incomplete { .. }) => break,
                Ok(Check::Complete(h)) => {
                    let f = frame::take(&mut buf, &h);
                    out.push(Seen {
                        fin: f.fin,
                        opcode: f.opcode as u8,
                        payload: f.payload.to_vec(),
                    });
                }
                Err(_) => return (out, false),
            }
        }
    }
    (out, buf.is_empty())
}

/// fastwebsockets reading the same stream as a server.
fn theirs(stream: &[u8]) -> (Vec<Seen>, bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 22);
        client.write_all(stream).await.unwrap();
        drop(client);
        let mut ws = WebSocket::after_handshake(server, FwRole::Server);
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        ws.set_max_message_size(MAX_FRAME);
        let mut out = vec![];
        loop {
            match ws.read_frame().await {
                Ok(f) => {
                    let op = match f.opcode {
                        FwOp::Continuation => 0,
                        FwOp::Text => 1,
                        FwOp::Binary => 2,
                        FwOp::Close => 8,
                        FwOp::Ping => 9,
                        FwOp::Pong => 10,
                    };
                    out.push(Seen {
                        fin: f.fin,
                        opcode: op,
                        payload: f.payload.to_vec(),
                    });
                }
                // End of stream after whole frames is a clean end; anything else a rejection.
                Err(fastwebsockets::WebSocketError::UnexpectedEOF) => return (out, true),
                Err(fastwebsockets::WebSocketError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return (out, true)
                }
                Err(_) => return (out, false),
            }
        }
    })
}

#[derive(Debug, Clone)]
struct Spec {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
    key: [u8; 4],
    /// Flip a reserved bit or use a reserved opcode.
    corrupt: Option<u8>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        prop_oneof![
            Just(OpCode::Binary),
            Just(OpCode::Continuation),
            Just(OpCode::Ping),
            Just(OpCode::Pong)
        ],
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..130),
            proptest::collection::vec(any::<u8>(), 120..70_000)
        ],
        any::<[u8; 4]>(),
        prop_oneof![8 => Just(None), 1 => (0u8..4).prop_map(Some)],
    )
        .prop_map(|(fin, opcode, mut payload, key, corrupt)| {
            if opcode.is_control() {
                // Oversized control frames are covered by `oversized_pong_divergence`.
                payload.truncate(125);
            }
            Spec {
                fin,
                opcode,
                payload,
                key,
                corrupt,
            }
        })
}

fn encode(s: &Spec) -> Vec<u8> {
    let mut bytes = frame::encode_masked(s.fin, s.opcode, &s.payload, s.key);
    match s.corrupt {
        Some(0) => bytes[0] |= 0x40,                   // RSV1
        Some(1) => bytes[0] |= 0x20,                   // RSV2
        Some(2) => bytes[0] = (bytes[0] & 0xf0) | 0x3, // reserved data opcode
        Some(_) => bytes[0] = (bytes[0] & 0xf0) | 0xB, // reserved control opcode
        None => {}
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn same_frames_as_fastwebsockets(specs in proptest::collection::vec(spec(), 1..6),
                                     cuts in proptest::collection::vec(0usize..200_000, 0..8)) {
        let stream: Vec<u8> = specs.iter().flat_map(encode).collect();
        let (our_frames, our_ok) = ours(&stream, &cuts);
        let (their_frames, their_ok) = theirs(&stream);
        prop_assert_eq!(our_ok, their_ok, "accept/reject differs");
        prop_assert_eq!(our_frames, their_frames);
    }
}

#[test]
fn rejects_what_fastwebsockets_rejects() {
    // Fragmented ping, oversized ping: both refuse.
    for bad in [
        frame::encode_masked(false, OpCode::Ping, b"x", [1, 2, 3, 4]),
        {
            let mut b = vec![0x89, 0xFE, 0x00, 0x7E, 1, 2, 3, 4];
            b.extend(vec![0u8; 126]);
            b
        },
    ] {
        assert!(!ours(&bad, &[]).1);
        assert!(!theirs(&bad).1);
    }
}

/// The one known divergence: RFC 6455 §5.5 limits every control frame to 125 bytes.
/// fastwebsockets 0.10 enforces that for pings only; we refuse oversized pongs too.
#[test]
fn oversized_pong_divergence() {
    let pong = frame::encode_masked(true, OpCode::Pong, &[7u8; 126], [1, 2, 3, 4]);
    assert!(!ours(&pong, &[]).1, "we follow the RFC");
    assert!(
        theirs(&pong).1,
        "fastwebsockets accepts it; if this changes, fold it into the property"
    );
}
