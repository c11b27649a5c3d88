//! The shard core (sans-IO) serving Socket.IO clients fed arbitrary operations: polling
//! handshakes, polls and posts for known and made-up sids, WebSockets with and without
//! a sid (upgrades), arbitrary Engine.IO / Socket.IO packets in text and binary frames,
//! raw bytes, ends of stream, and time passing. Token checks are answered as the
//! control plane would; hook calls fail as an unreachable backend's would.
//!
//! Input: operations, each an opcode byte then its arguments: `0` a polling handshake;
//! `1 s` a poll for sid `s % known` (or a made-up one); `2 s n bytes` a POST of `n`
//! bytes; `3 s` a WebSocket (`s` even: a new session on `/socket.io/`, odd: upgrading
//! sid `s / 2`, and `s & 64` the test-only echo endpoint); `4 c n bytes` a text frame
//! on WebSocket `c`; `5 c n bytes` a binary frame; `6 n` `n` ticks pass; `7 c` the
//! peer of connection `c` ends; `8 c n bytes` raw bytes on connection `c`; `9 c p` a
//! CONNECT on WebSocket `c` recovering pid `p % known` (connection state recovery is
//! on: a live session is replaced, an ended one recovered), with no offset, a
//! made-up one or garbage.
//!
//! Checks: never panics; every connection first gets one HTTP response (after a
//! `101`, server frames a client decodes: text is an Engine.IO packet); a polling
//! answer's body is a payload that decodes; when every peer has gone and the
//! timeouts have run out, no connection or session is left (socketless sessions too).
#![no_main]

use std::io::IoSlice;
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_engine::auth::{ControlRequest, Identity};
use switchboard_engine::core::{ConnKey, ConnState};
use switchboard_engine::hooks::HookDone;
use switchboard_engine::sio_config::SioNamespace;
use switchboard_engine::{EngineConfig, Mesh, Now, ShardCore, ShardMetrics, ShardMsg};
use switchboard_protocol::engineio;
use switchboard_protocol::frame::{self, Check, OpCode, Role};

const MAX_OPEN: usize = 12;
const TICK_MS: u64 = 10;

struct Peer {
    key: ConnKey,
    /// What the server wrote and the client has not parsed yet.
    inbound: BytesMut,
    /// The 101 came: frames follow.
    websocket: bool,
}

struct World {
    core: ShardCore,
    mesh: Arc<Mesh>,
    control: crossbeam_channel::Receiver<ControlRequest>,
    peers: Vec<Peer>,
    clock: Now,
    start: Now,
    tick: u64,
    /// Session ids seen in open packets.
    sids: Vec<String>,
    /// Recovery pids seen in CONNECT replies.
    pids: Vec<String>,
}

fn config() -> EngineConfig {
    let mut cfg = EngineConfig {
        shards: 1,
        tick_ms: TICK_MS,
        handshake_timeout_ms: 100,
        close_timeout_ms: 100,
        max_outbound_bytes: 16 * 1024,
        max_message_bytes: 64 * 1024,
        max_frame_bytes: 64 * 1024,
        rate_limit_users: 64,
        max_connections: 64,
        max_streams: 8,
        history_memory_bytes: 32 * 1024,
        ..EngineConfig::default()
    };
    cfg.socketio.ping_interval_ms = 50;
    cfg.socketio.ping_timeout_ms = 50;
    cfg.socketio.connect_timeout_ms = 200;
    cfg.socketio.max_payload_bytes = 4096;
    cfg.socketio.max_polling_packets = 16;
    cfg.socketio.echo_path = Some("/engine.io/".into());
    cfg.socketio.recovery_ms = 500;
    cfg.socketio.namespaces.insert(
        "/".into(),
        SioNamespace {
            anonymous: true,
            events_url: "http://127.0.0.1:9/events".into(),
            ..Default::default()
        },
    );
    cfg.socketio.namespaces.insert(
        "/private".into(),
        SioNamespace {
            connect_url: "http://127.0.0.1:9/connect".into(),
            ..Default::default()
        },
    );
    cfg
}

impl World {
    fn new() -> World {
        let cfg = config();
        cfg.validate().expect("fuzz config is valid");
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
            clock: start,
            start,
            tick: 0,
            sids: Vec::new(),
            pids: Vec::new(),
        }
    }

    /// A new TCP connection that sends `request`.
    fn connect(&mut self, request: &[u8]) {
        if self.peers.len() >= MAX_OPEN {
            return;
        }
        let Ok(key) = self.core.admit("127.0.0.1".parse().unwrap(), self.clock) else {
            return;
        };
        self.peers.push(Peer {
            key,
            inbound: BytesMut::new(),
            websocket: false,
        });
        let i = self.peers.len() - 1;
        self.read(i, request);
    }

    fn read(&mut self, i: usize, bytes: &[u8]) {
        let key = self.peers[i].key;
        if !self.core.wants_input(key.slot) {
            return;
        }
        let mut buf = BytesMut::from(bytes);
        self.core.on_read(key.slot, &mut buf, self.clock);
    }

    fn sid(&self, s: u8) -> String {
        if self.sids.is_empty() || s == 255 {
            "AAAAAAAAAAAAAAAAAAAAAAAA".into()
        } else {
            self.sids[s as usize % self.sids.len()].clone()
        }
    }

    /// What a backend (and the control plane) does after the core ran.
    fn pump(&mut self) {
        for _ in 0..4 {
            while let Some(msg) = self.mesh.inbox(0).pop() {
                self.core.on_message(msg, self.clock);
            }
            while let Ok(req) = self.control.try_recv() {
                let msg = match req {
                    ControlRequest::Authenticate {
                        conn,
                        req_id,
                        token,
                        ..
                    } => ShardMsg::AuthDone {
                        conn,
                        req_id,
                        result: Ok(Arc::new(Identity {
                            user: token.as_str().into(),
                            channels: None,
                            expires_at: None,
                            send_to: None,
                            schedule: false,
                            claims: Vec::new(),
                        })),
                    },
                    ControlRequest::Hook(call) => ShardMsg::HookDone(Box::new(HookDone {
                        conn: call.conn,
                        namespace_index: call.namespace_index,
                        ack: match call.kind {
                            switchboard_engine::hooks::HookKind::Event { ack, .. } => ack,
                            _ => None,
                        },
                        connect: matches!(
                            call.kind,
                            switchboard_engine::hooks::HookKind::Connect { .. }
                        ),
                        result: Err("the backend is unreachable".into()),
                    })),
                    _ => continue,
                };
                self.core.on_message(msg, self.clock);
            }
            self.core.end_turn();
        }
        let mut dirty = Vec::new();
        self.core.take_dirty(&mut dirty);
        let mut wake = Vec::new();
        self.core.take_wake(&mut wake);
        for i in 0..self.peers.len() {
            self.write_out(i);
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

    /// The client's view: HTTP responses (polling), or one 101 then server frames.
    fn parse_inbound(&mut self, i: usize) {
        loop {
            let p = &mut self.peers[i];
            if !p.websocket {
                let Some(end) = p.inbound.windows(4).position(|w| w == b"\r\n\r\n") else {
                    assert!(p.inbound.is_empty() || p.inbound.starts_with(b"HTTP/1.1 "));
                    return;
                };
                assert!(p.inbound.starts_with(b"HTTP/1.1 "), "not an HTTP response");
                let head = p.inbound.split_to(end + 4);
                let head = String::from_utf8(head.to_vec()).expect("an ASCII head");
                if head.starts_with("HTTP/1.1 101 ") {
                    p.websocket = true;
                    continue;
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if p.inbound.len() < len {
                    return;
                }
                let body = p.inbound.split_to(len);
                if head.starts_with("HTTP/1.1 200 ") && body.as_ref() != b"ok" && !body.is_empty() {
                    let packets = engineio::decode_payload(&body, usize::MAX)
                        .unwrap_or_else(|e| panic!("a polling answer that is not a payload: {e}"));
                    for packet in &packets {
                        if let engineio::Data::Text(t) = packet.data {
                            if packet.kind == engineio::PacketType::Message {
                                note_pid(&mut self.pids, t);
                            }
                        }
                    }
                    if let Some(open) = packets.first() {
                        if let engineio::Data::Text(t) = open.data {
                            if open.kind == engineio::PacketType::Open {
                                let v: serde_json::Value =
                                    serde_json::from_str(t).expect("the open packet is JSON");
                                let sid = v["sid"].as_str().expect("a sid").to_string();
                                self.sids.push(sid);
                            }
                        }
                    }
                }
                continue;
            }
            let h = match frame::check(&p.inbound, Role::Client, usize::MAX) {
                Ok(Check::Complete(h)) => h,
                Ok(Check::Incomplete { .. }) => return,
                Err(e) => panic!("the server wrote a bad frame: {e}"),
            };
            let f = frame::take(&mut p.inbound, &h);
            if f.opcode == OpCode::Text {
                let text = std::str::from_utf8(&f.payload).expect("text frames are UTF-8");
                let packet = engineio::decode_text(text).expect("an Engine.IO packet");
                if let (engineio::PacketType::Message, engineio::Data::Text(t)) =
                    (packet.kind, &packet.data)
                {
                    note_pid(&mut self.pids, t);
                }
                if packet.kind == engineio::PacketType::Open {
                    if let engineio::Data::Text(t) = packet.data {
                        let v: serde_json::Value = serde_json::from_str(t).expect("JSON");
                        self.sids
                            .push(v["sid"].as_str().expect("a sid").to_string());
                    }
                }
            }
        }
    }

    fn advance(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick += 1;
            self.clock = self.start.later(self.tick * TICK_MS);
            self.core.on_tick(self.tick, self.clock);
            self.pump();
        }
    }
}

/// A main-namespace CONNECT reply's pid (`0{"sid":…,"pid":…}`), kept.
fn note_pid(pids: &mut Vec<String>, text: &str) {
    let Some(json) = text.strip_prefix('0') else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    if let Some(pid) = v["pid"].as_str() {
        if pids.len() < 64 {
            pids.push(pid.to_string());
        }
    }
}

fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    frame::encode_masked(true, opcode, payload, [7, 1, 2, 9]).to_vec()
}

fuzz_target!(|input: &[u8]| {
    let mut w = World::new();
    let mut ops = input;
    let take = |ops: &mut &[u8], n: usize| -> Vec<u8> {
        let n = n.min(ops.len());
        let (a, b) = ops.split_at(n);
        *ops = b;
        a.to_vec()
    };
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let arg = |ops: &mut &[u8]| -> u8 {
            let (&a, rest) = ops.split_first().unwrap_or((&0, &[]));
            *ops = rest;
            a
        };
        match op % 10 {
            0 => w.connect(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"),
            1 => {
                let sid = w.sid(arg(&mut ops));
                let req = format!(
                    "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n"
                );
                w.connect(req.as_bytes());
            }
            2 => {
                let sid = w.sid(arg(&mut ops));
                let n = arg(&mut ops) as usize;
                let body = take(&mut ops, n);
                let mut req = format!(
                    "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(&body);
                w.connect(&req);
            }
            3 => {
                let s = arg(&mut ops);
                let path = if s & 64 != 0 {
                    "engine.io"
                } else {
                    "socket.io"
                };
                let query = if s % 2 == 0 {
                    String::new()
                } else {
                    format!("&sid={}", w.sid(s / 2))
                };
                let req = format!(
                    "GET /{path}/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                );
                w.connect(req.as_bytes());
            }
            4 | 5 => {
                let c = arg(&mut ops) as usize;
                let n = arg(&mut ops) as usize;
                let payload = take(&mut ops, n);
                if w.peers.is_empty() {
                    continue;
                }
                let i = c % w.peers.len();
                let opcode = if op % 10 == 4 {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                w.read(i, &masked(opcode, &payload));
            }
            6 => {
                let n = arg(&mut ops) as u64 % 32;
                w.advance(n);
            }
            7 => {
                let c = arg(&mut ops) as usize;
                if !w.peers.is_empty() {
                    let i = c % w.peers.len();
                    let slot = w.peers[i].key.slot;
                    w.core.on_eof(slot, w.clock);
                }
            }
            9 => {
                let c = arg(&mut ops) as usize;
                let p = arg(&mut ops);
                if w.peers.is_empty() {
                    continue;
                }
                let pid = if w.pids.is_empty() {
                    "AAAAAAAAAAAAAAAAAAAAAAAA".to_string()
                } else {
                    w.pids[p as usize % w.pids.len()].clone()
                };
                let offset = match p >> 6 {
                    0 => String::new(),
                    1 => r#","offset":"1.0000000000000001.room:x""#.into(),
                    2 => r#","offset":"garbage""#.into(),
                    _ => r#","offset":7"#.into(),
                };
                let text = format!(r#"40{{"pid":"{pid}"{offset},"token":"fuzz"}}"#);
                let i = c % w.peers.len();
                w.read(i, &masked(OpCode::Text, text.as_bytes()));
            }
            _ => {
                let c = arg(&mut ops) as usize;
                let n = arg(&mut ops) as usize;
                let raw = take(&mut ops, n);
                if !w.peers.is_empty() {
                    let i = c % w.peers.len();
                    w.read(i, &raw);
                }
            }
        }
        w.pump();
    }
    // Every peer goes; after the longest timeout nothing is left, sessions included.
    for i in 0..w.peers.len() {
        let slot = w.peers[i].key.slot;
        w.core.on_eof(slot, w.clock);
    }
    w.pump();
    w.advance(64);
    assert_eq!(
        w.core.connections(),
        0,
        "connections or sessions left behind"
    );
});
