//! A simulated network for shard cores: several shards, their mesh, a stand-in for the
//! control plane's authentication, and clients joined to shards by in-memory links, all
//! on a virtual clock. No sockets, no threads, no sleeping (quinn-proto's way of
//! testing a connection: drive both ends, deliver what each sends, advance time).
//!
//! A link carries bytes from a shard to its client and holds up to `link_bytes` of
//! them (the kernel's socket buffers); a client that does not read leaves them there,
//! and the shard's outbound queue grows behind them as it would on a real socket.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use crossbeam_channel::Receiver;
use serde_json::Value;
use switchboard_engine::core::{AfterFlush, ConnKey, ConnState};
use switchboard_engine::{
    ControlRequest, EngineConfig, Identity, Mesh, Now, ShardCore, ShardMetrics, ShardMsg,
};
use switchboard_protocol::frame::{self, Check, OpCode, Role};

/// The HTTP upgrade every simulated client sends (JSON envelopes).
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n";

/// A client's handle: which shard holds it and its key there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRef(usize);

/// One simulated client and its link.
struct Client {
    shard: usize,
    key: ConnKey,
    /// Bytes the shard wrote that the client has not read (the link's buffer).
    link: Vec<u8>,
    /// Whether the client reads what arrives.
    reading: bool,
    /// What it has read, not yet parsed into frames.
    inbuf: BytesMut,
    /// Server frames read, in order: (opcode, payload).
    frames: VecDeque<(OpCode, Vec<u8>)>,
    /// The shard shut its write side and the client has read everything.
    eof: bool,
    /// The client has ended its side (its socket is gone).
    gone: bool,
}

/// Several shards, their clients and a virtual clock.
pub struct Sim {
    pub shards: Vec<ShardCore>,
    mesh: Arc<Mesh>,
    control: Receiver<ControlRequest>,
    clients: Vec<Client>,
    start: Now,
    pub clock: Now,
    tick_ms: u64,
    /// Bytes a link holds before the shard's writes stop (socket buffers).
    pub link_bytes: usize,
}

impl Sim {
    /// `shards` shards with `cfg` (its `shards` is set to match).
    pub fn new(shards: usize, mut cfg: EngineConfig) -> Sim {
        cfg.shards = shards;
        let cfg = Arc::new(cfg);
        let mesh = Mesh::new(shards, 4096).expect("eventfds");
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let start = Now::at(switchboard_engine::clock::mono(), 1_800_000_000_000);
        let cores = (0..shards)
            .map(|i| {
                ShardCore::new(
                    i as u16,
                    cfg.clone(),
                    mesh.clone(),
                    tx.clone(),
                    Arc::new(ShardMetrics::default()),
                    start,
                )
            })
            .collect();
        Sim {
            shards: cores,
            mesh,
            control: rx,
            clients: Vec::new(),
            start,
            clock: start,
            tick_ms: cfg.tick_ms,
            link_bytes: 64 * 1024,
        }
    }

    /// A new TCP connection to `shard`, upgraded to WebSocket (not yet connected).
    pub fn dial(&mut self, shard: usize) -> ClientRef {
        let n = self.clients.len();
        let peer: IpAddr = format!("127.0.0.{}", 1 + n % 250).parse().unwrap();
        let key = self.shards[shard]
            .admit(peer, self.clock)
            .expect("admitted");
        self.clients.push(Client {
            shard,
            key,
            link: Vec::new(),
            reading: true,
            inbuf: BytesMut::new(),
            frames: VecDeque::new(),
            eof: false,
            gone: false,
        });
        let c = ClientRef(n);
        self.send_raw(c, UPGRADE);
        self.settle();
        let c0 = &mut self.clients[n];
        let response = String::from_utf8_lossy(&c0.inbuf).to_string();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        let end = response.find("\r\n\r\n").expect("complete response") + 4;
        let _ = c0.inbuf.split_to(end);
        c
    }

    /// Dial and `connect` as `user` (the stand-in control plane accepts any token and
    /// names the user after it); returns the client and its connect reply.
    pub fn connect(&mut self, shard: usize, user: &str) -> (ClientRef, Value) {
        let c = self.dial(shard);
        self.command(
            c,
            &format!(r#"{{"id":1,"cmd":"connect","token":"{user}"}}"#),
        );
        let reply = self.reply(c, 1);
        (c, reply)
    }

    /// Send a JSON command (one masked text frame).
    pub fn command(&mut self, c: ClientRef, json: &str) {
        let bytes = frame::encode_masked(true, OpCode::Text, json.as_bytes(), [7, 1, 3, 5]);
        self.send_raw(c, &bytes);
        self.settle();
    }

    /// Bytes from the client to its shard.
    pub fn send_raw(&mut self, c: ClientRef, bytes: &[u8]) {
        let client = &self.clients[c.0];
        let mut buf = BytesMut::from(bytes);
        self.shards[client.shard].on_read(client.key.slot, &mut buf, self.clock);
    }

    /// The client goes away without a close frame (its socket ends).
    pub fn drop_client(&mut self, c: ClientRef) {
        let client = &mut self.clients[c.0];
        client.gone = true;
        let (shard, slot) = (client.shard, client.key.slot);
        self.shards[shard].on_eof(slot, self.clock);
        self.settle();
    }

    /// The client stops (or resumes) reading its link.
    pub fn set_reading(&mut self, c: ClientRef, reading: bool) {
        self.clients[c.0].reading = reading;
        self.settle();
    }

    /// Advance the virtual clock by `ms`, tick by tick, settling after each tick.
    pub fn advance(&mut self, ms: u64) {
        let end = self.clock.later(ms);
        while self.clock.mono < end.mono {
            self.clock = self
                .clock
                .later(self.tick_ms.min(end.unix_ms - self.clock.unix_ms));
            let tick = (self.clock.unix_ms - self.start.unix_ms) / self.tick_ms;
            for shard in &mut self.shards {
                shard.on_tick(tick, self.clock);
            }
            self.settle();
        }
    }

    /// Deliver everything in flight until nothing moves: authentication requests,
    /// mesh messages between shards, writes to links, reads by clients.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Ok(req) = self.control.try_recv() {
                moved = true;
                self.authenticate(req);
            }
            for i in 0..self.shards.len() {
                while let Some(msg) = self.mesh.inbox(i).pop() {
                    moved = true;
                    self.shards[i].on_message(msg, self.clock);
                }
                self.shards[i].end_turn();
                moved |= self.flush(i);
            }
            moved |= self.read_links();
            if !moved {
                return;
            }
        }
    }

    /// The stand-in control plane: every token is good and names its user.
    fn authenticate(&mut self, req: ControlRequest) {
        let ControlRequest::Authenticate {
            shard,
            conn,
            req_id,
            token,
        } = req
        else {
            return;
        };
        let identity = Identity {
            user: token.as_str().into(),
            channels: None,
            expires_at: None,
            send_to: None,
            schedule: false,
            claims: Vec::new(),
        };
        let msg = ShardMsg::AuthDone {
            conn,
            req_id,
            result: Ok(Arc::new(identity)),
        };
        self.shards[shard as usize].on_message(msg, self.clock);
    }

    /// Write shard `i`'s queued frames into its clients' links (as far as they have
    /// room), and drop connections the shard closed.
    fn flush(&mut self, i: usize) -> bool {
        let mut moved = false;
        let mut dirty = Vec::new();
        self.shards[i].take_dirty(&mut dirty);
        // Connections with frames left over from a full link are written again too.
        let waiting: Vec<u32> = self
            .clients
            .iter()
            .filter(|c| c.shard == i && !c.gone)
            .map(|c| c.key.slot)
            .collect();
        dirty.extend(waiting);
        dirty.sort_unstable();
        dirty.dedup();
        for slot in dirty {
            let Some(ci) = self
                .clients
                .iter()
                .position(|c| c.shard == i && c.key.slot == slot && !c.gone)
            else {
                continue;
            };
            let room = self.link_bytes.saturating_sub(self.clients[ci].link.len());
            let Some(q) = self.shards[i].out_mut(slot) else {
                continue;
            };
            let mut taken = Vec::new();
            {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = q.fill(&mut slices);
                for s in &slices[..n] {
                    let want = room - taken.len();
                    taken.extend_from_slice(&s[..s.len().min(want)]);
                    if taken.len() == room {
                        break;
                    }
                }
            }
            if !taken.is_empty() {
                moved = true;
                self.shards[i].written(slot, taken.len());
                self.clients[ci].link.extend_from_slice(&taken);
            }
            let empty = self.shards[i].out_mut(slot).is_none_or(|q| q.is_empty());
            if empty && self.shards[i].flushed(slot) == AfterFlush::ShutdownWrite {
                self.clients[ci].eof = true;
            }
        }
        let mut closed = Vec::new();
        self.shards[i].take_wake(&mut closed);
        for slot in closed {
            let key_gen = self
                .clients
                .iter()
                .find(|c| c.shard == i && c.key.slot == slot && !c.gone)
                .map(|c| c.key.gen);
            let state = key_gen.and_then(|gen| self.shards[i].state(ConnKey { slot, gen }));
            if state == Some(ConnState::Closed) || key_gen.is_none() {
                self.shards[i].remove(slot);
                for c in self
                    .clients
                    .iter_mut()
                    .filter(|c| c.shard == i && c.key.slot == slot)
                {
                    c.gone = true;
                }
                moved = true;
            }
        }
        moved
    }

    /// Reading clients take what their links hold; a client that has read its
    /// shard's close ends its side.
    fn read_links(&mut self) -> bool {
        let mut moved = false;
        let mut ending = Vec::new();
        for (n, c) in self.clients.iter_mut().enumerate() {
            if !c.reading || c.link.is_empty() {
                continue;
            }
            moved = true;
            c.inbuf.extend_from_slice(&c.link);
            c.link.clear();
            while let Ok(Check::Complete(h)) = frame::check(&c.inbuf, Role::Client, usize::MAX) {
                let f = frame::take(&mut c.inbuf, &h);
                let done = f.opcode == OpCode::Close;
                c.frames.push_back((f.opcode, f.payload.to_vec()));
                if done && !c.gone {
                    ending.push(n);
                }
            }
        }
        for n in ending {
            // The peer answered our close (or we read theirs): the socket ends.
            let c = &mut self.clients[n];
            c.gone = true;
            let (shard, slot) = (c.shard, c.key.slot);
            self.shards[shard].on_eof(slot, self.clock);
        }
        moved
    }

    /// Every JSON message the client has read (pushes and replies), taken.
    pub fn messages(&mut self, c: ClientRef) -> Vec<Value> {
        let client = &mut self.clients[c.0];
        let mut out = Vec::new();
        let mut rest = VecDeque::new();
        while let Some((op, payload)) = client.frames.pop_front() {
            match op {
                OpCode::Text | OpCode::Binary => {
                    out.push(serde_json::from_slice(&payload).expect("JSON envelope"))
                }
                _ => rest.push_back((op, payload)),
            }
        }
        client.frames = rest;
        out
    }

    /// The reply to command `id` (taken with everything read before it).
    pub fn reply(&mut self, c: ClientRef, id: u64) -> Value {
        let msgs = self.messages(c);
        msgs.into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no reply to command {id}"))
    }

    /// Control frames the client has read (ping, close), taken.
    pub fn control_frames(&mut self, c: ClientRef) -> Vec<(OpCode, Vec<u8>)> {
        let client = &mut self.clients[c.0];
        let (control, data): (VecDeque<_>, VecDeque<_>) =
            client.frames.drain(..).partition(|(op, _)| op.is_control());
        client.frames = data;
        control.into_iter().collect()
    }

    /// The close code the client read, if any.
    pub fn close_code(&mut self, c: ClientRef) -> Option<u16> {
        self.clients[c.0]
            .frames
            .iter()
            .find(|(op, _)| *op == OpCode::Close)
            .and_then(|(_, p)| (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
    }

    /// Whether the shard still holds the client's connection.
    pub fn is_open(&self, c: ClientRef) -> bool {
        let client = &self.clients[c.0];
        self.shards[client.shard].state(client.key) == Some(ConnState::Open)
    }

    /// Whether the connection is gone from its shard (closed and dropped).
    pub fn is_gone(&self, c: ClientRef) -> bool {
        let client = &self.clients[c.0];
        self.shards[client.shard].state(client.key).is_none()
    }

    /// The shard a channel's stream lives on (its home; claimed for its hash shard if
    /// nothing used the channel yet).
    pub fn owner(&self, channel: &str) -> usize {
        self.mesh.home_of(channel) as usize
    }
}
