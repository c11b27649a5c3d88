//! The shard core (sans-IO) fed arbitrary operations: connections open, send frames
//! (well-formed with arbitrary contents, or raw bytes), stop and start reading, end;
//! the clock advances. Token checks are answered as the control plane would.
//!
//! Input: a sequence of operations, each an opcode byte then its arguments:
//! `0 f` open (f & 1: JSON, else MessagePack) and `connect` with token `u<n>`
//! (token `bad…` is refused); `1 c lo hi bytes` a text frame of `lo | hi << 8`
//! bytes from connection `c % open`; `2 …` the same as binary; `3 c n bytes` `n` raw
//! bytes; `4 n` advance `n` ticks; `5 c` toggle whether connection `c` reads what the
//! server writes; `6 c` the peer ends (EOF); `7 c` the peer sends a close frame; `8 s` the wall clock steps by `s as i8` ten-minute
//! steps (monotonic time does not).
//!
//! Checks: never panics; everything written before the 101 is one HTTP response, and
//! after it unmasked server frames that a client decodes (text is UTF-8 and a JSON
//! envelope, binary a MessagePack one); a connection's queue never grows past twice
//! `max_outbound_bytes` (it is closed as a slow consumer before); after every
//! connection ended and timers ran out, no connection is left.
#![no_main]

use std::io::IoSlice;
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_engine::auth::{AuthFailure, ControlRequest, Identity};
use switchboard_engine::core::{ConnKey, ConnState};
use switchboard_engine::{
    Durability, EngineConfig, Mesh, NamespacePolicy, Now, ShardCore, ShardMetrics, ShardMsg,
};
use switchboard_protocol::envelope::decode_server_message;
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use switchboard_protocol::{ErrorCode, Format};

const MAX_OPEN: usize = 8;
const TICK_MS: u64 = 10;

struct Peer {
    key: ConnKey,
    format: Format,
    /// What the server wrote and the client has not parsed yet.
    inbound: BytesMut,
    upgraded: bool,
    /// Whether the client reads (else the server's queue fills).
    reading: bool,
}

struct World {
    core: ShardCore,
    mesh: Arc<Mesh>,
    control: crossbeam_channel::Receiver<ControlRequest>,
    peers: Vec<Peer>,
    start: Now,
    clock: Now,
    /// How far the wall clock was stepped from the monotonic one (op 8).
    wall_shift_ms: i64,
    tick: u64,
    max_outbound: usize,
}

fn config() -> EngineConfig {
    EngineConfig {
        shards: 1,
        tick_ms: TICK_MS,
        ping_interval_ms: 200,
        pong_timeout_ms: 100,
        auth_timeout_ms: 200,
        handshake_timeout_ms: 100,
        close_timeout_ms: 100,
        max_outbound_bytes: 16 * 1024,
        max_message_bytes: 64 * 1024,
        max_frame_bytes: 64 * 1024,
        history_memory_bytes: 32 * 1024,
        max_streams: 8,
        // Small tables: each run builds a core, and ASan makes big zeroed tables slow.
        rate_limit_users: 64,
        max_connections: 64,
        max_subscriptions_per_connection: 16,
        reconnect_ttl_ms: 60_000,
        reconnect_secret: Some(Arc::from(&b"fuzz-reconnect-secret-0123456789"[..])),
        namespaces: vec![NamespacePolicy {
            retention: Default::default(),
            edits: false,
            name: "room".into(),
            durability: Durability::None,
            history_size: 16,
            history_ttl_ms: 1_000,
            rules: Default::default(),
            presence: true,
            presence_events: true,
            max_channel_bytes: 8 * 1024,
        }],
        ..EngineConfig::default()
    }
}

impl World {
    fn new() -> World {
        let cfg = config();
        cfg.validate().expect("fuzz config is valid");
        let max_outbound = cfg.max_outbound_bytes;
        let (tx, rx) = crossbeam_channel::bounded(64);
        let start = Now::at(switchboard_engine::clock::mono(), 1_800_000_000_000);
        let mesh = Mesh::new(1, 256).expect("mesh");
        let core = ShardCore::new(
            0,
            Arc::new(cfg),
            mesh.clone(),
            tx,
            Arc::new(ShardMetrics::default()),
            start,
        );
        World {
            core,
            mesh,
            control: rx,
            peers: Vec::new(),
            start,
            clock: start,
            wall_shift_ms: 0,
            tick: 0,
            max_outbound,
        }
    }

    fn read(&mut self, i: usize, bytes: &[u8]) {
        let key = self.peers[i].key;
        if !self.core.wants_input(key.slot) {
            // Paused: the bytes wait in the socket (dropped here; the peer is slowed).
            return;
        }
        let mut buf = BytesMut::from(bytes);
        self.core.on_read(key.slot, &mut buf, self.clock);
    }

    /// What a backend does after the core ran: answer the control plane, deliver
    /// mesh messages, write to reading peers, drop closed connections.
    fn pump(&mut self) {
        for _ in 0..4 {
            while let Some(msg) = self.mesh.inbox(0).pop() {
                self.core.on_message(msg, self.clock);
            }
            while let Ok(req) = self.control.try_recv() {
                if let ControlRequest::Authenticate {
                    conn,
                    req_id,
                    token,
                    ..
                } = req
                {
                    let result = if token.is_empty() || token.starts_with("bad") {
                        Err(AuthFailure {
                            code: ErrorCode::Unauthorized,
                            message: "refused".into(),
                        })
                    } else {
                        Ok(Arc::new(Identity {
                            user: token.as_str().into(),
                            channels: None,
                            expires_at: None,
                            send_to: Some(vec!["*".into()]),
                            schedule: false,
                            claims: Vec::new(),
                        }))
                    };
                    self.core.on_message(
                        ShardMsg::AuthDone {
                            conn,
                            req_id,
                            result,
                        },
                        self.clock,
                    );
                }
            }
            self.core.end_turn();
        }
        let mut dirty = Vec::new();
        self.core.take_dirty(&mut dirty);
        for i in 0..self.peers.len() {
            let slot = self.peers[i].key.slot;
            if let Some(q) = self.core.out_mut(slot) {
                assert!(
                    q.charged() <= 2 * self.max_outbound + 64 * 1024,
                    "queue of {} bytes",
                    q.charged()
                );
            }
            if self.peers[i].reading {
                self.write_out(i);
            }
        }
        let mut resumed = Vec::new();
        self.core.take_resumed(&mut resumed);
        let mut i = 0;
        while i < self.peers.len() {
            match self.core.state(self.peers[i].key) {
                Some(ConnState::Closed) | None => {
                    self.core.remove(self.peers[i].key.slot);
                    self.peers.swap_remove(i);
                }
                _ => i += 1,
            }
        }
    }

    fn write_out(&mut self, i: usize) {
        let slot = self.peers[i].key.slot;
        loop {
            let Some(q) = self.core.out_mut(slot) else {
                return;
            };
            if q.is_empty() {
                break;
            }
            let mut slices = [IoSlice::new(&[]); 64];
            let n = q.fill(&mut slices);
            let mut len = 0;
            for s in &slices[..n] {
                self.peers[i].inbound.extend_from_slice(s);
                len += s.len();
            }
            self.core.written(slot, len);
        }
        self.core.flushed(slot);
        self.parse_inbound(i);
    }

    /// The client's view: one HTTP response, then server frames it can decode.
    fn parse_inbound(&mut self, i: usize) {
        let p = &mut self.peers[i];
        if !p.upgraded {
            let Some(end) = p.inbound.windows(4).position(|w| w == b"\r\n\r\n") else {
                assert!(p.inbound.is_empty() || p.inbound.starts_with(b"HTTP/1.1 "));
                return;
            };
            assert!(p.inbound.starts_with(b"HTTP/1.1 "), "not an HTTP response");
            let head = p.inbound.split_to(end + 4);
            if head.starts_with(b"HTTP/1.1 101 ") {
                p.upgraded = true;
            } else {
                // An HTTP error: a body follows and the connection ends.
                p.inbound.clear();
                return;
            }
        }
        loop {
            let h = match frame::check(&p.inbound, Role::Client, usize::MAX) {
                Ok(Check::Complete(h)) => h,
                Ok(Check::Incomplete { .. }) => return,
                Err(e) => panic!("the server wrote a bad frame: {e}"),
            };
            let f = frame::take(&mut p.inbound, &h);
            let format = match f.opcode {
                OpCode::Text => Format::Json,
                OpCode::Binary => Format::MsgPack,
                _ => continue,
            };
            assert_eq!(format, p.format, "a frame in the other format");
            if let Err(e) = decode_server_message(format, &f.payload) {
                panic!(
                    "a client cannot decode what the server sent: {e}: {:?}",
                    &f.payload[..]
                );
            }
        }
    }

    fn open(&mut self, json: bool, n: usize) {
        if self.peers.len() >= MAX_OPEN {
            return;
        }
        let Ok(key) = self.core.admit("127.0.0.1".parse().unwrap(), self.clock) else {
            return;
        };
        let (format, proto) = if json {
            (Format::Json, "switchboard.v1.json")
        } else {
            (Format::MsgPack, "switchboard.v1.msgpack")
        };
        self.peers.push(Peer {
            key,
            format,
            inbound: BytesMut::new(),
            upgraded: false,
            reading: true,
        });
        let i = self.peers.len() - 1;
        let upgrade = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {proto}\r\n\r\n"
        );
        self.read(i, upgrade.as_bytes());
        let token = if n % 5 == 4 {
            format!("bad{n}")
        } else {
            format!("u{}", n % 3)
        };
        let connect = match format {
            Format::Json | Format::SocketIo => frame::encode_masked(
                true,
                OpCode::Text,
                format!(r#"{{"id":1,"cmd":"connect","token":"{token}"}}"#).as_bytes(),
                [1, 2, 3, 4],
            ),
            Format::MsgPack => {
                let mut m = vec![0x83, 0xa2, b'i', b'd', 0x01, 0xa3, b'c', b'm', b'd', 0xa7];
                m.extend_from_slice(b"connect");
                m.extend_from_slice(&[0xa5]);
                m.extend_from_slice(b"token");
                m.push(0xa0 | token.len() as u8);
                m.extend_from_slice(token.as_bytes());
                frame::encode_masked(true, OpCode::Binary, &m, [1, 2, 3, 4])
            }
        };
        self.read(i, &connect);
    }

    /// The virtual moment: ticks on the monotonic clock, the wall clock shifted.
    fn now(&mut self) -> Now {
        let mut now = self.start.later(self.tick * TICK_MS);
        now.unix_ms = now.unix_ms.saturating_add_signed(self.wall_shift_ms);
        self.clock = now;
        now
    }

    fn advance(&mut self, ticks: u64) {
        self.now();
        for _ in 0..ticks {
            self.tick += 1;
            let now = self.now();
            self.core.on_tick(self.tick, now);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut w = World::new();
    let mut at = 0;
    let byte = |at: &mut usize| -> Option<u8> {
        let b = input.get(*at).copied();
        *at += 1;
        b
    };
    let mut opened = 0;
    while let Some(op) = byte(&mut at) {
        let pick = |w: &World, c: u8| (!w.peers.is_empty()).then(|| c as usize % w.peers.len());
        match op % 9 {
            0 => {
                let f = byte(&mut at).unwrap_or(0);
                w.open(f & 1 == 1, opened);
                opened += 1;
            }
            op @ (1 | 2) => {
                let (Some(c), Some(lo), Some(hi)) = (byte(&mut at), byte(&mut at), byte(&mut at))
                else {
                    break;
                };
                let len = (lo as usize | (hi as usize) << 8).min(input.len().saturating_sub(at));
                let body = &input[at..at + len];
                at += len;
                if let Some(i) = pick(&w, c) {
                    let opcode = if op == 1 {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    let f = frame::encode_masked(true, opcode, body, [0x5a, 0x17, 0x00, 0xff]);
                    w.read(i, &f);
                }
            }
            3 => {
                let (Some(c), Some(n)) = (byte(&mut at), byte(&mut at)) else {
                    break;
                };
                let len = (n as usize).min(input.len().saturating_sub(at));
                let body = &input[at..at + len];
                at += len;
                if let Some(i) = pick(&w, c) {
                    w.read(i, body);
                }
            }
            4 => {
                let n = byte(&mut at).unwrap_or(1);
                w.advance(n as u64);
            }
            5 => {
                if let Some(i) = byte(&mut at).and_then(|c| pick(&w, c)) {
                    w.peers[i].reading = !w.peers[i].reading;
                }
            }
            6 => {
                if let Some(i) = byte(&mut at).and_then(|c| pick(&w, c)) {
                    let slot = w.peers[i].key.slot;
                    w.core.on_eof(slot, w.clock);
                }
            }
            8 => {
                // The wall clock steps (NTP): by a signed number of ten-minute steps.
                let steps = byte(&mut at).unwrap_or(0) as i8 as i64;
                w.wall_shift_ms += steps * 600_000;
                w.advance(0);
            }
            _ => {
                if let Some(i) = byte(&mut at).and_then(|c| pick(&w, c)) {
                    let close =
                        frame::encode_masked(true, OpCode::Close, &[0x03, 0xe8], [9, 9, 9, 9]);
                    w.read(i, &close);
                }
            }
        }
        w.pump();
    }
    // Every peer ends; after the longest timer nothing is left.
    for i in 0..w.peers.len() {
        w.peers[i].reading = true;
        let slot = w.peers[i].key.slot;
        w.core.on_eof(slot, w.clock);
    }
    w.pump();
    w.advance(100);
    w.pump();
    assert!(
        w.peers.is_empty(),
        "connections left after every peer ended"
    );
    assert_eq!(w.core.connections(), 0);
});
