//! Engine.IO packets: what a session does with each, and its heartbeat.
//!
//! Owns the packet types' meaning on the server (a message goes to the application,
//! `1` ends the session, `2probe`/`5` drive a relaying WebSocket's upgrade), the
//! test-only echo application, the heartbeat (a `2` every `ping_interval_ms`, the
//! session ended when no packet follows within `ping_timeout_ms`) and the connect
//! timeout. Does not own Socket.IO ([`super::sio`]) or the transports ([`super::owner`],
//! [`super::http`]).

use bytes::Bytes;
use switchboard_protocol::engineio::{self, PacketType};
use switchboard_protocol::frame::{self, OpCode};
use switchboard_protocol::CloseCode;

use super::{App, EioReq, Peer, Transport};
use crate::core::conn::ConnState;
use crate::core::ShardCore;
use crate::metrics::CloseKind;

impl ShardCore {
    /// Hot path: a WebSocket message of an Engine.IO connection (a session, or a
    /// relay of one).
    pub(in crate::core) fn eio_ws_message(&mut self, slot: u32, binary: bool, payload: Bytes) {
        let Some(transport) = self.conns[slot as usize].eio.as_ref().map(|e| e.transport) else {
            return;
        };
        match transport {
            Transport::Relay {
                owner,
                nonce,
                upgraded,
            } => self.relay_message(slot, owner, nonce, upgraded, binary, payload),
            _ => {
                if let Some(e) = self.conns[slot as usize].eio.as_mut() {
                    e.ping_sent_at = None;
                }
                self.eio_packet(slot, binary, payload)
            }
        }
    }

    /// A relaying WebSocket's message: the probe is answered here; after `5` every
    /// packet goes to the session.
    fn relay_message(
        &mut self,
        slot: u32,
        owner: Peer,
        nonce: u64,
        upgraded: bool,
        binary: bool,
        payload: Bytes,
    ) {
        let from = Peer {
            shard: self.id,
            conn: self.key(slot),
        };
        if upgraded {
            return self.relay_to_owner(
                owner,
                nonce,
                from,
                EioReq::Packet {
                    binary,
                    data: payload,
                },
            );
        }
        match &payload[..] {
            b"2probe" if !binary => {
                self.enqueue(slot, frame::encode(OpCode::Text, b"3probe"));
            }
            b"5" if !binary => {
                if let Some(e) = self.conns[slot as usize].eio.as_mut() {
                    e.transport = Transport::Relay {
                        owner,
                        nonce,
                        upgraded: true,
                    };
                }
                self.conns[slot as usize].state = ConnState::Open;
                self.relay_to_owner(owner, nonce, from, EioReq::Upgrade);
            }
            // Anything else before the upgrade completes is a broken client.
            _ => self.begin_close(
                slot,
                CloseCode::PROTOCOL_ERROR,
                "unexpected packet during upgrade",
                CloseKind::ProtocolError,
            ),
        }
    }

    /// Hot path: one packet of session `slot`, from whichever transport.
    pub(in crate::core) fn eio_packet(&mut self, slot: u32, binary: bool, payload: Bytes) {
        if binary {
            return self.eio_message(slot, false, payload);
        }
        let packet = std::str::from_utf8(&payload)
            .ok()
            .and_then(|t| engineio::decode_text(t).ok());
        let Some(packet) = packet else {
            return self.eio_fail(slot, "malformed Engine.IO packet");
        };
        match packet.kind {
            PacketType::Message => {
                let text = payload.slice(1..);
                self.eio_message(slot, true, text)
            }
            PacketType::Pong | PacketType::Noop => {}
            PacketType::Ping => {
                let mut pong = payload.to_vec();
                pong[0] = b'3';
                self.eio_enqueue_text(slot, &pong);
            }
            PacketType::Close => {
                if self.conns[slot as usize].socketless() {
                    self.eio_end(slot, CloseKind::ClientClose, true);
                } else {
                    self.begin_close(
                        slot,
                        CloseCode::NORMAL,
                        "client closed the session",
                        CloseKind::ClientClose,
                    );
                }
            }
            PacketType::Open | PacketType::Upgrade => {
                self.eio_fail(slot, "unexpected Engine.IO packet")
            }
        }
    }

    /// A message packet: text (`Some`, without its `4`) or binary.
    fn eio_message(&mut self, slot: u32, text: bool, data: Bytes) {
        let app = self.conns[slot as usize].eio.as_ref().map(|e| e.app);
        match (app, text) {
            (Some(App::Echo), true) => {
                let mut echo = Vec::with_capacity(1 + data.len());
                echo.push(b'4');
                echo.extend_from_slice(&data);
                self.eio_enqueue_text(slot, &echo);
            }
            (Some(App::Echo), false) => self.enqueue(slot, frame::encode(OpCode::Binary, &data)),
            (Some(App::SocketIo), true) => self.sio_text(slot, &data),
            (Some(App::SocketIo), false) => self.sio_binary(slot, data),
            (None, _) => {}
        }
    }

    /// Queue an Engine.IO text packet (its frame; a polling answer unwraps it).
    pub(in crate::core) fn eio_enqueue_text(&mut self, slot: u32, packet: &[u8]) {
        self.enqueue(slot, frame::encode(OpCode::Text, packet));
    }

    /// A protocol violation: the session ends (1002 on its WebSocket).
    pub(in crate::core) fn eio_fail(&mut self, slot: u32, why: &str) {
        if self.conns[slot as usize].socketless() {
            self.eio_end(slot, CloseKind::ProtocolError, false);
        } else {
            self.begin_close(
                slot,
                CloseCode::PROTOCOL_ERROR,
                why,
                CloseKind::ProtocolError,
            );
        }
    }

    /// Schedule the session's next heartbeat visit.
    pub(in crate::core) fn eio_schedule(&mut self, slot: u32) {
        let tk = self.ticks;
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        let Some(e) = conn.eio.as_ref() else {
            return;
        };
        let mut at = match e.transport {
            // A relay's session pings through it: the relay only needs to notice a
            // peer gone silent.
            Transport::Relay { .. } => conn.last_rx + tk.eio_ping + tk.eio_pong,
            _ if conn.ping_sent => e.ping_tick + tk.eio_pong,
            _ => e.ping_tick + tk.eio_ping,
        };
        if conn.state == ConnState::AwaitingConnect {
            at = at.min(conn.since + tk.eio_connect);
        }
        if let Some(due) = e.sio.deferred_due() {
            at = at.min(due);
        }
        if let Transport::Polling {
            poller: Some(_),
            probe: Some(_),
        } = e.transport
        {
            at = at.min(self.tick + 1);
        }
        let at = at.max(self.tick + 1);
        self.schedule(slot, at as u64);
    }

    /// A heartbeat visit: connect timeout, ping timeout, or time to ping.
    pub(in crate::core) fn eio_visit(&mut self, t: u32, slot: u32) {
        let tk = self.ticks;
        let conn = &self.conns[slot as usize];
        let Some(e) = conn.eio.as_ref() else {
            return;
        };
        if e.sio.deferred_due().is_some() {
            self.sio_release_deferred(t, slot);
        }
        self.eio_release_probing_poll(slot);
        let conn = &self.conns[slot as usize];
        let Some(e) = conn.eio.as_ref() else {
            return;
        };
        if let Transport::Relay { .. } = e.transport {
            if t >= conn.last_rx + tk.eio_ping + tk.eio_pong {
                return self.begin_close(
                    slot,
                    CloseCode::HEARTBEAT_TIMEOUT,
                    "ping timeout",
                    CloseKind::HeartbeatTimeout,
                );
            }
            return self.eio_schedule(slot);
        }
        if conn.state == ConnState::AwaitingConnect && t >= conn.since + tk.eio_connect {
            return self.eio_timeout(slot, "connect timeout", CloseKind::AuthTimeout);
        }
        if conn.ping_sent && t >= e.ping_tick + tk.eio_pong {
            return self.eio_timeout(slot, "ping timeout", CloseKind::HeartbeatTimeout);
        }
        if !conn.ping_sent && t >= e.ping_tick + tk.eio_ping {
            let now = self.clock.mono;
            let conn = &mut self.conns[slot as usize];
            conn.ping_sent = true;
            if let Some(e) = conn.eio.as_mut() {
                e.ping_tick = t;
                e.ping_sent_at = Some(now);
            }
            let ping = self.eio_ping_frame.clone();
            self.enqueue(slot, ping);
        }
        self.eio_schedule(slot);
    }

    fn eio_timeout(&mut self, slot: u32, why: &str, kind: CloseKind) {
        if self.conns[slot as usize].socketless() {
            self.eio_end(slot, kind, false);
        } else {
            self.begin_close(slot, CloseCode::HEARTBEAT_TIMEOUT, why, kind);
        }
    }

    /// Before a request reaches a socketless session: if its pong is overdue by the
    /// clock (the wheel ticks a little late), it has timed out already.
    pub(super) fn eio_check_heartbeat(&mut self, slot: u32) {
        let timeout = std::time::Duration::from_millis(self.cfg.socketio.ping_timeout_ms);
        let overdue = self.conns.get(slot as usize).is_some_and(|c| {
            c.ping_sent
                && c.socketless()
                && c.eio
                    .as_ref()
                    .and_then(|e| e.ping_sent_at)
                    .is_some_and(|at| self.clock.mono.saturating_duration_since(at) >= timeout)
        });
        if overdue {
            self.eio_end(slot, CloseKind::HeartbeatTimeout, false);
        }
    }
}
