//! The session seam: a connection's bytes become commands.
//!
//! Owns the path from bytes to commands for the Switchboard v1 wire protocol: the HTTP
//! upgrade (origin check, subprotocol → format), WebSocket frames and messages, control
//! frames, and protocol failures → close codes. Does not own what a command does
//! ([`super::dispatch`]) or how replies are encoded ([`super::reply`]). A second wire
//! protocol (Socket.IO) plugs in here as another session kind.

use crate::clock::Stopwatch;

use bytes::{Buf, Bytes, BytesMut};
use switchboard_protocol::envelope;
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use switchboard_protocol::handshake::{self, Parse, Upgrade};
use switchboard_protocol::{CloseCode, Error as WireError, Format, Message};

use super::conn::{mark_dirty, ConnState};

/// The close reason of a text frame on a connection that chose MessagePack.
const TEXT_ON_MSGPACK: &str =
    "text frame on a MessagePack connection: offer switchboard.v1.json or add ?format=json";
use super::ShardCore;
use crate::metrics::{CloseKind, ShardMetrics, COMMAND_SAMPLE};

impl ShardCore {
    pub(super) fn process(&mut self, slot: u32, src: &mut BytesMut) {
        loop {
            if self.conns.get(slot as usize).map(|c| c.state) == Some(ConnState::Handshaking) {
                if let Some(app) = self.eio_route(src) {
                    if self.eio_request(slot, src, app) {
                        continue;
                    }
                    return;
                }
            }
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            match conn.state {
                ConnState::HttpWaiting => {
                    conn.input_paused = true;
                    return;
                }
                ConnState::Handshaking => match handshake::parse(src, &self.handshake_limits) {
                    Ok(Parse::Incomplete) => return,
                    Ok(Parse::Complete(up)) if !self.origin_allowed(up.origin.as_deref()) => {
                        src.clear();
                        let refused = WireError::Handshake {
                            status: 403,
                            reason: "origin not allowed",
                        };
                        self.reject_handshake(slot, &refused);
                        return;
                    }
                    Ok(Parse::Complete(up)) => {
                        src.advance(up.consumed);
                        self.upgraded(slot, up);
                        continue;
                    }
                    Err(e) => {
                        src.clear();
                        self.reject_handshake(slot, &e);
                        return;
                    }
                },
                ConnState::Closing | ConnState::Draining | ConnState::Closed => {
                    src.clear();
                    return;
                }
                _ => {}
            }
            // Input backpressure: a connection whose replies pile up (a pipelining
            // client) or whose `connect` is still being verified runs no more
            // commands now; the rest waits, in order, until it resumes.
            if matches!(conn.state, ConnState::Authenticating { .. })
                || conn.out.charged() >= self.cfg.max_outbound_bytes / 2
            {
                conn.input_paused = true;
                return;
            }
            let header = match frame::check(src, Role::Server, self.cfg.max_frame_bytes) {
                Ok(Check::Incomplete { needed }) => {
                    src.reserve(needed.saturating_sub(src.len()));
                    return;
                }
                Ok(Check::Complete(h)) => h,
                Err(e) => {
                    src.clear();
                    self.fail(slot, &e);
                    return;
                }
            };
            let frame = frame::take(src, &header);
            ShardMetrics::add(&self.metrics.frames_in, 1);
            match conn.assembler.push(frame, self.cfg.max_message_bytes) {
                Ok(None) => {}
                Ok(Some(msg)) => self.handle_message(slot, msg),
                Err(e) => {
                    src.clear();
                    self.fail(slot, &e);
                    return;
                }
            }
        }
    }

    /// Run what a paused connection received meanwhile, if nothing holds it any more
    /// (its queue drained, its `connect` was answered); the backend is told to read
    /// again unless that input paused it once more.
    pub(super) fn resume_input(&mut self, slot: u32) {
        let high = self.cfg.max_outbound_bytes / 2;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if !conn.input_paused
            || matches!(
                conn.state,
                ConnState::Authenticating { .. } | ConnState::HttpWaiting
            )
            || conn.out.charged() >= high
        {
            return;
        }
        conn.input_paused = false;
        if let Some(mut pending) = conn.pending_in.take() {
            self.process(slot, &mut pending);
            self.keep_leftover(slot, pending);
        }
        if self
            .conns
            .get(slot as usize)
            .is_some_and(|c| !c.input_paused && c.state != ConnState::Closed)
        {
            self.resumed.push(slot);
        }
    }

    /// Whether a browser from `origin` may connect (`engine.allowed_origins`).
    pub(super) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let patterns = &self.cfg.allowed_origins;
        match origin {
            None => true,
            Some(o) => {
                patterns.is_empty() || patterns.iter().any(|p| crate::auth::glob_match(p, o))
            }
        }
    }

    pub(super) fn upgraded(&mut self, slot: u32, up: Upgrade) {
        let now = self.tick;
        let conn = &mut self.conns[slot as usize];
        conn.format = up.format;
        // No subprotocol and no `?format=json` (which gives JSON): left to the first
        // message, so a client that forgot to choose is understood either way.
        conn.format_open = !up.subprotocol_offered && up.format == Format::MsgPack;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        if let Some(b) = up.bearer.as_deref() {
            conn.ext_mut().bearer = Some(b.into());
        }
        conn.out.push_unbounded(Bytes::from(up.response()));
        mark_dirty(conn, slot, &mut self.dirty);
        ShardMetrics::add(&self.metrics.upgraded, 1);
        self.schedule(slot, now as u64 + self.ticks.auth as u64);
        if let Some(m) = self.maintenance.clone() {
            let reason = format!("maintenance: {}", m.message);
            self.begin_close_after(
                slot,
                CloseCode::MAINTENANCE,
                &reason,
                CloseKind::Maintenance,
                true,
                Some(m.retry_after_ms),
            );
        }
    }

    pub(super) fn reject_handshake(&mut self, slot: u32, e: &WireError) {
        let now = self.tick;
        let conn = &mut self.conns[slot as usize];
        conn.out
            .push_unbounded(Bytes::from(handshake::error_response(
                e.http_status(),
                e.close_reason(),
            )));
        conn.state = ConnState::Closing;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.metrics.closed(CloseKind::HandshakeRejected);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// A wire-format violation: close with the matching code.
    pub(super) fn fail(&mut self, slot: u32, e: &WireError) {
        let kind = match e {
            WireError::InvalidUtf8 => CloseKind::InvalidUtf8,
            WireError::TooBig { .. } => CloseKind::TooBig,
            WireError::Envelope(_) => CloseKind::MalformedCommand,
            _ => CloseKind::ProtocolError,
        };
        self.begin_close(slot, CloseCode(e.close_code()), e.close_reason(), kind);
    }

    pub(super) fn handle_message(&mut self, slot: u32, msg: Message) {
        match msg {
            Message::Ping(payload) => self.enqueue(slot, frame::encode(OpCode::Pong, &payload)),
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                let conn = &mut self.conns[slot as usize];
                if matches!(
                    conn.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                ) {
                    return;
                }
                self.detach(slot, true);
                self.closed(slot, CloseKind::ClientClose);
                let now = self.tick;
                let conn = &mut self.conns[slot as usize];
                // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty one.
                conn.out.push_unbounded(match code {
                    Some(c) => frame::encode_close(c, ""),
                    None => frame::encode(OpCode::Close, b""),
                });
                conn.state = ConnState::Closing;
                conn.since = now;
                mark_dirty(conn, slot, &mut self.dirty);
                self.schedule(slot, now as u64 + self.ticks.close as u64);
            }
            Message::Text(payload) if self.conns[slot as usize].eio.is_some() => {
                self.eio_ws_message(slot, false, payload)
            }
            Message::Binary(payload) if self.conns[slot as usize].eio.is_some() => {
                self.eio_ws_message(slot, true, payload)
            }
            Message::Text(payload) => {
                self.settle_format(slot, Format::Json);
                if self.conns[slot as usize].format == Format::MsgPack {
                    // Never a MessagePack command (not UTF-8): a client in the wrong
                    // format, told how to choose.
                    let code = CloseCode(WireError::Envelope(String::new()).close_code());
                    return self.begin_close(
                        slot,
                        code,
                        TEXT_ON_MSGPACK,
                        CloseKind::MalformedCommand,
                    );
                }
                self.handle_command(slot, &payload)
            }
            Message::Binary(payload) => {
                self.settle_format(slot, Format::MsgPack);
                self.handle_command(slot, &payload)
            }
        }
    }

    /// A connection that chose no format takes the one its first message is in.
    #[inline]
    fn settle_format(&mut self, slot: u32, format: Format) {
        let conn = &mut self.conns[slot as usize];
        if conn.format_open {
            conn.format = format;
            conn.format_open = false;
        }
    }

    /// Hot path: one command; one in [`COMMAND_SAMPLE`] is timed.
    pub(super) fn handle_command(&mut self, slot: u32, payload: &Bytes) {
        self.commands_seen = self.commands_seen.wrapping_add(1);
        if self.commands_seen % COMMAND_SAMPLE != 0 {
            return self.decode_and_dispatch(slot, payload);
        }
        let watch = Stopwatch::start();
        self.decode_and_dispatch(slot, payload);
        self.metrics.observe_command_us(watch.elapsed_us());
    }

    /// Hot path: a Switchboard v1 envelope in the connection's format becomes a
    /// command; one that does not decode closes the connection (4002 or 1007).
    fn decode_and_dispatch(&mut self, slot: u32, payload: &Bytes) {
        let format = self.conns[slot as usize].format;
        match envelope::decode_request(format, payload) {
            Ok(req) => self.dispatch(slot, req),
            Err(e) => self.fail(slot, &e),
        }
    }
}
