//! The HTTP side of the Engine.IO endpoint, on whichever shard a request lands.
//!
//! Owns reading a request to the endpoint (head, then a POST's body), the checks made
//! before any session is looked at (version, transport, method, origin, sizes),
//! opening sessions (a polling handshake makes a socketless session here; a WebSocket
//! without `sid` becomes the session itself), sending the rest to the session's owner
//! ([`super::owner`]) and writing its answer: a polling payload, `ok`, an error, or the
//! `101` of a WebSocket that will relay an upgraded session. Does not own sessions.

use bytes::{Buf, Bytes, BytesMut};
use switchboard_protocol::eio_http::{self, EioError, HeadParse, Method, Transport as Via};
use switchboard_protocol::engineio::Open;
use switchboard_protocol::frame::{self, OpCode};
use switchboard_protocol::handshake::{self, Parse, Upgrade};
use switchboard_protocol::{CloseCode, Format};

use super::{App, EioAnswer, EioMsg, EioReq, EioSession, Peer, Sid, Transport};
use crate::core::conn::{mark_dirty, ConnKey, ConnState};
use crate::core::ShardCore;
use crate::mesh::ShardMsg;
use crate::metrics::{CloseKind, ShardMetrics};

/// The request an HTTP connection is answering.
#[derive(Debug)]
pub(in crate::core) struct HttpCtx {
    /// The `Origin` to allow in the answer's CORS headers (an allowed one).
    origin: Option<Box<str>>,
    /// Keep the connection for the next request.
    keep_alive: bool,
    /// A WebSocket waiting for its session's consent to relay it.
    upgrade: Option<Box<Upgrade>>,
    /// Which endpoint it asked.
    app: App,
    /// The session a WebSocket asked to relay.
    sid: Option<Sid>,
}

impl ShardCore {
    /// Which Engine.IO endpoint the request buffered in `src` asks for, once its
    /// request line is in (`None`: not ours, or not known yet).
    pub(in crate::core) fn eio_route(&self, src: &[u8]) -> Option<App> {
        let sio = &self.cfg.socketio;
        let path = eio_http::request_path(src)?;
        let path = path.split(|&b| b == b'?').next().unwrap_or(path);
        let matches = |p: &str| {
            let p = p.as_bytes();
            path == p || path == &p[..p.len() - 1]
        };
        if sio.enabled && matches(&sio.path) {
            return Some(App::SocketIo);
        }
        match &sio.echo_path {
            Some(p) if matches(p) => Some(App::Echo),
            _ => None,
        }
    }

    /// Serve the request at the front of `src`. Returns whether the connection may
    /// go on reading `src` now (false: it waits for more bytes or for an answer).
    pub(in crate::core) fn eio_request(&mut self, slot: u32, src: &mut BytesMut, app: App) -> bool {
        let head = match eio_http::parse_head(src, &self.handshake_limits) {
            Ok(HeadParse::Incomplete) => return false,
            Ok(HeadParse::Complete(h)) => h,
            Ok(HeadParse::Refused { error, origin, .. }) => {
                src.clear();
                let origin = self.cors_origin(origin.as_deref()).ok().flatten();
                self.http_final(slot, eio_http::error_response(error, origin, false));
                return false;
            }
            Err(e) => {
                src.clear();
                self.reject_handshake(slot, &e);
                return false;
            }
        };
        let origin = match self.cors_origin(head.origin.as_deref()) {
            Ok(o) => o.map(Box::<str>::from),
            Err(()) => {
                src.clear();
                let body = eio_http::error_response(EioError::Forbidden, None, false);
                self.http_final(slot, body);
                return false;
            }
        };
        let sio = &self.cfg.socketio;
        if head.method == Method::Post && head.content_length > sio.max_payload_bytes {
            src.clear();
            let body = eio_http::status_response(
                413,
                "payload larger than maxPayload",
                origin.as_deref(),
                false,
            );
            self.http_final(slot, body);
            return false;
        }
        if head.method == Method::Post && src.len() < head.consumed + head.content_length {
            src.reserve(head.consumed + head.content_length - src.len());
            return false;
        }
        let keep_alive = head.keep_alive;
        let ctx = HttpCtx {
            origin,
            keep_alive,
            upgrade: None,
            app,
            sid: None,
        };
        if head.method == Method::Options {
            src.advance(head.consumed);
            let body = eio_http::preflight_response(
                ctx.origin.as_deref(),
                head.request_headers.as_deref(),
                keep_alive,
            );
            return self.http_answered(slot, body, keep_alive);
        }
        let sid = match head.sid.as_deref() {
            None => None,
            Some(s) => match Sid::parse(s) {
                Some(sid) if (sid.shard as usize) < self.mesh.shards() => Some(sid),
                _ => {
                    src.clear();
                    let body = eio_http::error_response(
                        EioError::UnknownSid,
                        ctx.origin.as_deref(),
                        false,
                    );
                    self.http_final(slot, body);
                    return false;
                }
            },
        };
        let token = head.token.clone().or(head.bearer.clone());
        match (head.transport, head.method, sid) {
            (Via::WebSocket, _, sid) => {
                let up = match handshake::parse(src, &self.handshake_limits) {
                    Ok(Parse::Complete(up)) => up,
                    Ok(Parse::Incomplete) => return false,
                    Err(e) => {
                        src.clear();
                        self.reject_handshake(slot, &e);
                        return false;
                    }
                };
                src.advance(up.consumed);
                match sid {
                    None => {
                        self.open_websocket_session(slot, &up, app, token);
                        true
                    }
                    Some(sid) => {
                        let conn = &mut self.conns[slot as usize];
                        conn.ext_mut().http = Some(Box::new(HttpCtx {
                            upgrade: Some(Box::new(up)),
                            sid: Some(sid),
                            ..ctx
                        }));
                        self.http_wait(slot);
                        self.eio_route_request(slot, sid, EioReq::Attach);
                        self.http_ready(slot)
                    }
                }
            }
            (Via::Polling, Method::Get, None) => {
                src.advance(head.consumed);
                let body = self.open_polling_session(slot, app, token);
                match body {
                    Ok(open) => {
                        let answer = eio_http::ok_response(
                            open.as_bytes(),
                            ctx.origin.as_deref(),
                            keep_alive,
                        );
                        self.http_answered(slot, answer, keep_alive)
                    }
                    Err((status, reason)) => {
                        let body =
                            eio_http::status_response(status, reason, ctx.origin.as_deref(), false);
                        self.http_final(slot, body);
                        false
                    }
                }
            }
            (Via::Polling, method, Some(sid)) => {
                let mut request = src.split_to(head.consumed + head.content_length);
                let body = request.split_off(head.consumed).freeze();
                let req = if method == Method::Post {
                    EioReq::Post(body)
                } else {
                    EioReq::Get
                };
                self.conns[slot as usize].ext_mut().http = Some(Box::new(ctx));
                self.http_wait(slot);
                self.eio_route_request(slot, sid, req);
                self.http_ready(slot)
            }
            (Via::Polling, _, None) => {
                // `parse_head` refuses a POST without sid; nothing else reaches here.
                src.clear();
                let body = eio_http::error_response(EioError::BadHandshakeMethod, None, false);
                self.http_final(slot, body);
                false
            }
        }
    }

    /// The origin to name in CORS headers: `Ok(None)` without an `Origin`, `Err` for
    /// one `engine.allowed_origins` does not allow.
    fn cors_origin<'o>(&self, origin: Option<&'o str>) -> Result<Option<&'o str>, ()> {
        match origin {
            None => Ok(None),
            Some(o) if self.origin_allowed(Some(o)) => Ok(Some(o)),
            Some(_) => Err(()),
        }
    }

    /// The connection waits for its session's answer, reading nothing meanwhile.
    fn http_wait(&mut self, slot: u32) {
        let now = self.tick;
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::HttpWaiting;
        conn.since = now;
        conn.input_paused = true;
        let wait = self.ticks.eio_ping + self.ticks.eio_pong + self.ticks.close;
        self.schedule(slot, now as u64 + wait as u64);
    }

    /// Whether the answer came at once (the session is here) and reading goes on.
    fn http_ready(&self, slot: u32) -> bool {
        self.conns
            .get(slot as usize)
            .is_some_and(|c| c.state == ConnState::Handshaking && !c.input_paused)
    }

    /// Queue a complete answer; the connection reads its next request, or closes.
    fn http_answered(&mut self, slot: u32, answer: Vec<u8>, keep_alive: bool) -> bool {
        if !keep_alive {
            self.http_final(slot, answer);
            return false;
        }
        let now = self.tick;
        let conn = &mut self.conns[slot as usize];
        conn.out.push_unbounded(Bytes::from(answer));
        conn.state = ConnState::Handshaking;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.schedule(slot, now as u64 + self.ticks.handshake as u64);
        true
    }

    /// Queue a last answer and close the connection after it.
    fn http_final(&mut self, slot: u32, answer: Vec<u8>) {
        let now = self.tick;
        let conn = &mut self.conns[slot as usize];
        conn.out.push_unbounded(Bytes::from(answer));
        conn.state = ConnState::Closing;
        conn.since = now;
        conn.pending_in = None;
        mark_dirty(conn, slot, &mut self.dirty);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// Send `req` from the connection in `slot` to the session `sid` names.
    fn eio_route_request(&mut self, slot: u32, sid: Sid, req: EioReq) {
        let from = Peer {
            shard: self.id,
            conn: self.key(slot),
        };
        if sid.shard == self.id {
            self.eio_to_session(sid.conn, sid.nonce, from, req);
        } else {
            ShardMetrics::add(&self.metrics.eio_forwarded, 1);
            let msg = EioMsg::Request {
                session: sid.conn,
                nonce: sid.nonce,
                from,
                req,
            };
            self.send_to(sid.shard, ShardMsg::Eio(Box::new(msg)));
        }
    }

    /// Send `answer` to the connection `to` (here or on another shard).
    pub(super) fn eio_send_answer(&mut self, to: Peer, answer: EioAnswer) {
        if to.shard == self.id {
            self.eio_answer(to.conn, answer);
        } else {
            let msg = EioMsg::Answer {
                to: to.conn,
                answer,
            };
            self.send_to(to.shard, ShardMsg::Eio(Box::new(msg)));
        }
    }

    /// An Engine.IO message from another shard.
    pub(in crate::core) fn on_eio(&mut self, msg: EioMsg) {
        match msg {
            EioMsg::Request {
                session,
                nonce,
                from,
                req,
            } => self.eio_to_session(session, nonce, from, req),
            EioMsg::Answer { to, answer } => self.eio_answer(to, answer),
        }
    }

    /// A session's answer for the connection `to`: an HTTP request's, or frames and
    /// the end for a relaying WebSocket.
    pub(super) fn eio_answer(&mut self, to: ConnKey, answer: EioAnswer) {
        let Some(conn) = self.conns.get_mut(to.slot as usize) else {
            return;
        };
        if conn.gen != to.gen {
            return;
        }
        match answer {
            EioAnswer::Frames(frames) => {
                for f in frames {
                    if self.conns[to.slot as usize].state == ConnState::Closing {
                        break;
                    }
                    self.enqueue(to.slot, f);
                }
                return;
            }
            EioAnswer::Close { stay_away } => {
                // A code a client may come back after, unless the session ended for good.
                let code = if stay_away {
                    CloseCode::REVOKED
                } else {
                    CloseCode::GOING_AWAY
                };
                return self.begin_close(to.slot, code, "session closed", CloseKind::Kicked);
            }
            _ => {}
        }
        if conn.state != ConnState::HttpWaiting {
            return;
        }
        let Some(ctx) = conn.ext.as_mut().and_then(|e| e.http.take()) else {
            return;
        };
        let origin = ctx.origin.as_deref();
        let keep = ctx.keep_alive;
        match answer {
            EioAnswer::Payload(body) => {
                let a = eio_http::ok_response(&body, origin, keep);
                self.http_answered(to.slot, a, keep);
            }
            EioAnswer::PostOk => {
                let a = eio_http::ok_response(b"ok", origin, keep);
                self.http_answered(to.slot, a, keep);
            }
            EioAnswer::Error(EioError::BadRequest) if ctx.upgrade.is_some() => {
                // A WebSocket for a session that cannot take it (already upgraded, or
                // probing elsewhere): opened, then closed at once, as engine.io does.
                let up = ctx.upgrade.as_deref().expect("checked by the guard");
                let mut answer = up.response();
                answer.extend_from_slice(&frame::encode_close(
                    CloseCode::POLICY.0,
                    "session already upgraded",
                ));
                self.http_final(to.slot, answer);
            }
            EioAnswer::Error(e) => {
                let a = eio_http::error_response(e, origin, false);
                self.http_final(to.slot, a);
            }
            EioAnswer::Attached => {
                let (Some(up), Some(sid)) = (ctx.upgrade, ctx.sid) else {
                    return self.close_now(to.slot, Some(CloseKind::ProtocolError));
                };
                self.relay_start(to.slot, &up, ctx.app, sid);
            }
            EioAnswer::Frames(_) | EioAnswer::Close { .. } => unreachable!("handled above"),
        }
        // Read again what arrived while it waited (the shared input gate).
        if !matches!(
            self.conns[to.slot as usize].state,
            ConnState::Closing | ConnState::Closed
        ) {
            self.resume_input(to.slot);
        }
    }

    /// A WebSocket without `sid`: the connection becomes the session.
    fn open_websocket_session(&mut self, slot: u32, up: &Upgrade, app: App, token: Option<String>) {
        let now = self.tick;
        let mut session = EioSession::new(Transport::WebSocket, app, now);
        session.sio.set_token(token);
        let sid = Sid {
            shard: self.id,
            conn: self.key(slot),
            nonce: session.nonce,
        };
        let open = self.open_packet(&sid, &[]);
        let conn = &mut self.conns[slot as usize];
        conn.eio = Some(Box::new(session));
        conn.format = Format::SocketIo;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        conn.out.push_unbounded(Bytes::from(up.response()));
        conn.out
            .push_unbounded(frame::encode(OpCode::Text, open.as_bytes()));
        mark_dirty(conn, slot, &mut self.dirty);
        ShardMetrics::add(&self.metrics.upgraded, 1);
        ShardMetrics::add(&self.metrics.eio_sessions, 1);
        self.eio_schedule(slot);
    }

    /// A polling handshake: a socketless session on this shard; the open packet, or
    /// the HTTP status that refuses it.
    fn open_polling_session(
        &mut self,
        slot: u32,
        app: App,
        token: Option<String>,
    ) -> Result<String, (u16, &'static str)> {
        let peer = self.conns[slot as usize].peer;
        let key = self.admit(peer, self.clock).map_err(|r| r.http())?;
        let now = self.tick;
        let transport = Transport::Polling {
            poller: None,
            probe: None,
        };
        let mut session = EioSession::new(transport, app, now);
        session.sio.set_token(token);
        let sid = Sid {
            shard: self.id,
            conn: key,
            nonce: session.nonce,
        };
        let conn = &mut self.conns[key.slot as usize];
        conn.eio = Some(Box::new(session));
        conn.format = Format::SocketIo;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        ShardMetrics::add(&self.metrics.eio_sessions, 1);
        self.eio_schedule(key.slot);
        Ok(self.open_packet(&sid, &["websocket"]))
    }

    /// The open packet of session `sid`.
    fn open_packet(&self, sid: &Sid, upgrades: &[&str]) -> String {
        let sio = &self.cfg.socketio;
        Open {
            sid: &sid.encode(),
            upgrades,
            ping_interval_ms: sio.ping_interval_ms,
            ping_timeout_ms: sio.ping_timeout_ms,
            max_payload: sio.max_payload_bytes as u64,
        }
        .encode()
    }

    /// The session `sid` let this WebSocket probe: answer 101; it relays from now on.
    fn relay_start(&mut self, slot: u32, up: &Upgrade, app: App, sid: Sid) {
        let now = self.tick;
        let owner = Peer {
            shard: sid.shard,
            conn: sid.conn,
        };
        let nonce = sid.nonce;
        let mut relay = EioSession::new(
            Transport::Relay {
                owner,
                nonce,
                upgraded: false,
            },
            app,
            now,
        );
        relay.nonce = nonce;
        let conn = &mut self.conns[slot as usize];
        conn.eio = Some(Box::new(relay));
        // Its own notices (a DISCONNECT before a close) are Socket.IO packets.
        conn.format = Format::SocketIo;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        conn.out.push_unbounded(Bytes::from(up.response()));
        mark_dirty(conn, slot, &mut self.dirty);
        ShardMetrics::add(&self.metrics.upgraded, 1);
        self.eio_schedule(slot);
    }
}
