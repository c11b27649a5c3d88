//! Socket.IO on an Engine.IO session: namespaces, CONNECT, events, acks, attachments.
//!
//! Owns a session's Socket.IO state ([`SioState`]): the namespaces joined, a binary
//! packet collecting its attachments, CONNECTs waiting for a token's verdict or the
//! connect hook (or a recovery's answer), the session's recovery pid; the answers
//! (`40` with the namespace's socket id and, with recovery on, the pid; `44` with a
//! reason the client shows as `connect_error`); events to the vocabulary or the
//! namespace's hook. Does not own what vocabulary events do (the features), the hooks'
//! calls and answers ([`super::sio_hooks`]), recovery ([`super::resume`]) or Engine.IO
//! ([`super::packets`]).

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::TrySendError;
use switchboard_protocol::envelope::{self, sio};
use switchboard_protocol::frame::{self, OpCode};
use switchboard_protocol::socketio::{self, PacketKind};
use switchboard_protocol::{sio_events, Format};

use super::recovery::{Pid, Recovering};
use super::sio_hooks::emit_frames;
use super::Sid;
use crate::auth::{AuthFailure, ControlRequest, Identity};
use crate::core::conn::{ConnKey, ConnState};
use crate::core::ShardCore;
use crate::hooks::{HookEmit, HookKind};
use crate::metrics::ShardMetrics;

/// A session's Socket.IO state: 16 bytes, the rest allocated by the few sessions that
/// need it.
#[derive(Debug, Default)]
pub(in crate::core) struct SioState {
    /// Namespaces joined, a bit per index in the configuration (at most 64).
    joined: u64,
    /// What only some sessions use.
    rare: Option<Box<SioRare>>,
}

/// The parts of a session's Socket.IO state only some sessions use.
#[derive(Debug, Default)]
struct SioRare {
    /// Token from the handshake (`token` query or `Authorization: Bearer`), used by a
    /// CONNECT whose `auth` has none.
    token: Option<Box<str>>,
    /// A binary packet waiting for its attachments.
    partial: Option<Partial>,
    /// CONNECTs waiting for the token's verdict (or a recovery's answer).
    waiting: Vec<Waiting>,
    /// Frames held back until a tick (`connect_emit_delay_ms`), and that tick.
    deferred: Option<(u32, Vec<Bytes>)>,
    /// Connection state recovery: the session's pid and subscriptions' starts.
    recovering: Option<Recovering>,
}

impl SioState {
    fn rare_mut(&mut self) -> &mut SioRare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// Keep the handshake's token for a CONNECT without one.
    pub(in crate::core) fn set_token(&mut self, token: Option<String>) {
        if let Some(t) = token {
            self.rare_mut().token = Some(t.into());
        }
    }

    fn token(&self) -> Option<&str> {
        self.rare.as_ref()?.token.as_deref()
    }

    fn joined(&self, index: u8) -> bool {
        index < 64 && self.joined & (1 << index) != 0
    }

    /// When held-back frames are due, if any.
    pub(in crate::core) fn deferred_due(&self) -> Option<u32> {
        self.rare.as_ref()?.deferred.as_ref().map(|(due, _)| *due)
    }

    fn partial(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.partial.is_some())
    }

    pub(in crate::core) fn recovering_mut(&mut self) -> Option<&mut Recovering> {
        self.rare.as_mut()?.recovering.as_mut()
    }

    pub(in crate::core) fn take_recovering(&mut self) -> Option<Recovering> {
        self.rare.as_mut()?.recovering.take()
    }

    pub(in crate::core) fn recovering(&self) -> Option<&Recovering> {
        self.rare.as_ref()?.recovering.as_ref()
    }

    pub(in crate::core) fn set_recovering(&mut self, r: Recovering) {
        self.rare_mut().recovering = Some(r);
    }

    /// A CONNECT to namespace `index` asks to recover `pid`: it waits, first of the
    /// CONNECTs waiting, for the home shard's answer.
    pub(in crate::core) fn start_recovering(&mut self, pid: Pid, index: u8, auth: &str) {
        let rare = self.rare_mut();
        rare.recovering = Some(Recovering {
            pid,
            starts: Vec::new(),
        });
        rare.waiting.insert(0, (index, auth.into()));
    }

    /// The answer came: the CONNECT that asked, and the others that waited behind it.
    pub(in crate::core) fn end_recovering(&mut self) -> (u8, Box<str>, Vec<Waiting>) {
        let mut waiting = std::mem::take(&mut self.rare_mut().waiting);
        let (index, auth) = waiting.remove(0);
        (index, auth, waiting)
    }
}

/// A CONNECT waiting: its namespace and `auth` payload.
pub(in crate::core) type Waiting = (u8, Box<str>);

/// A packet whose attachments are still arriving.
#[derive(Debug)]
struct Partial {
    /// The packet's text (without the Engine.IO `4`).
    text: Bytes,
    /// How many attachments it announced.
    expected: u32,
    /// Those received so far.
    attachments: Vec<Bytes>,
}

impl ShardCore {
    /// A Socket.IO packet's text.
    pub(in crate::core) fn sio_text(&mut self, slot: u32, data: &Bytes) {
        let max = self.cfg.socketio.max_attachments;
        let Some(e) = self.conns[slot as usize].eio.as_mut() else {
            return;
        };
        if e.sio.partial() {
            return self.eio_fail(slot, "text packet while attachments were expected");
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return self.eio_fail(slot, "invalid Socket.IO packet");
        };
        let packet = match socketio::decode(text, max) {
            Ok(p) => p,
            Err(_) => return self.eio_fail(slot, "invalid Socket.IO packet"),
        };
        if packet.kind.is_binary() && packet.attachments > 0 {
            e.sio.rare_mut().partial = Some(Partial {
                text: data.clone(),
                expected: packet.attachments,
                attachments: Vec::with_capacity(packet.attachments as usize),
            });
            return;
        }
        self.sio_packet(slot, data, Vec::new());
    }

    /// A binary message: the next attachment of the packet waiting for them.
    pub(in crate::core) fn sio_binary(&mut self, slot: u32, data: Bytes) {
        let Some(e) = self.conns[slot as usize].eio.as_mut() else {
            return;
        };
        let Some(partial) = e.sio.rare.as_mut().and_then(|r| r.partial.as_mut()) else {
            return self.eio_fail(slot, "binary message without a packet announcing it");
        };
        partial.attachments.push(data);
        if partial.attachments.len() < partial.expected as usize {
            return;
        }
        let Partial {
            text, attachments, ..
        } = e.sio.rare_mut().partial.take().expect("checked above");
        self.sio_packet(slot, &text, attachments);
    }

    /// A complete packet with its attachments.
    fn sio_packet(&mut self, slot: u32, text: &Bytes, attachments: Vec<Bytes>) {
        let max = self.cfg.socketio.max_attachments;
        // Checked by `sio_text` already.
        let Ok(p) = std::str::from_utf8(text)
            .map_err(|_| ())
            .and_then(|t| socketio::decode(t, max).map_err(|_| ()))
        else {
            return;
        };
        let index = self.cfg.socketio.namespace_index(p.namespace);
        match p.kind {
            PacketKind::Connect => match index {
                Some(i) => self.sio_connect(slot, i, p.data),
                None => self.sio_connect_error(slot, p.namespace, "Invalid namespace", None),
            },
            PacketKind::Disconnect => {
                if let (Some(i), Some(e)) = (index, self.conns[slot as usize].eio.as_mut()) {
                    if i < 64 {
                        e.sio.joined &= !(1 << i);
                    }
                }
            }
            PacketKind::Event | PacketKind::BinaryEvent => {
                let Some(i) = index.filter(|&i| self.sio_joined(slot, i)) else {
                    return; // Not joined: ignored, as Socket.IO servers do.
                };
                self.sio_event(slot, i, p.id, p.data, attachments);
            }
            // Acks of server emits: the server asks for none yet.
            PacketKind::Ack | PacketKind::BinaryAck | PacketKind::ConnectError => {}
        }
    }

    fn sio_joined(&self, slot: u32, index: u8) -> bool {
        self.conns[slot as usize]
            .eio
            .as_ref()
            .is_some_and(|e| e.sio.joined(index))
    }

    /// A CONNECT to namespace `index` with `auth` (JSON object text, or empty): a
    /// reconnecting client's recovery asked of its session's home shard, or
    /// [`Self::sio_connect_plain`].
    fn sio_connect(&mut self, slot: u32, index: u8, auth: &str) {
        let auth: Box<str> = if auth.is_empty() {
            "{}".into()
        } else {
            auth.into()
        };
        let conn = &self.conns[slot as usize];
        let recoverable = self.sio_main(index)
            && conn.identity.is_none()
            && conn.state == ConnState::AwaitingConnect
            && auth.contains("\"pid\"");
        if recoverable && self.try_recover(slot, index, &auth) {
            return;
        }
        self.sio_connect_plain(slot, index, auth);
    }

    /// A CONNECT authenticated by its token (or anonymous where allowed).
    pub(super) fn sio_connect_plain(&mut self, slot: u32, index: u8, auth: Box<str>) {
        let conn = &self.conns[slot as usize];
        if conn.identity.is_some() {
            return self.sio_accept(slot, index, auth);
        }
        if let ConnState::Authenticating { .. } = conn.state {
            if let Some(e) = self.conns[slot as usize].eio.as_mut() {
                e.sio.rare_mut().waiting.push((index, auth));
            }
            return;
        }
        let field = self
            .cfg
            .socketio
            .namespace(index)
            .map_or("", |(_, ns)| ns.auth_token_field.as_str());
        let from_auth = if field.is_empty() {
            None
        } else {
            serde_json::from_str::<std::collections::HashMap<&str, &serde_json::value::RawValue>>(
                &auth,
            )
            .ok()
            .and_then(|m| {
                m.get(field)
                    .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            })
        };
        let token = from_auth.or_else(|| {
            conn.eio
                .as_ref()
                .and_then(|e| e.sio.token())
                .map(str::to_string)
        });
        let anonymous = self
            .cfg
            .socketio
            .namespace(index)
            .is_some_and(|(_, ns)| ns.anonymous);
        match token {
            Some(token) => {
                let request = ControlRequest::Authenticate {
                    shard: self.id,
                    conn: self.key(slot),
                    req_id: u32::from(index),
                    token,
                };
                match self.control.try_send(request) {
                    Ok(()) => {
                        let conn = &mut self.conns[slot as usize];
                        conn.state = ConnState::Authenticating {
                            req_id: u32::from(index),
                        };
                        if let Some(e) = conn.eio.as_mut() {
                            e.sio.rare_mut().waiting.push((index, auth));
                        }
                    }
                    Err(TrySendError::Full(_)) => {
                        let name = self.sio_namespace_name(index);
                        self.sio_connect_error(
                            slot,
                            &name,
                            "authentication is busy, retry",
                            Some(113),
                        );
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        let name = self.sio_namespace_name(index);
                        self.sio_connect_error(
                            slot,
                            &name,
                            "authentication unavailable",
                            Some(500),
                        );
                    }
                }
            }
            None if anonymous => {
                let sid = self.sio_sid(slot);
                let identity = Arc::new(Identity {
                    user: format!("anonymous:{sid}").into(),
                    channels: Some(Vec::new()),
                    expires_at: None,
                    send_to: None,
                    schedule: false,
                    claims: Vec::new(),
                });
                self.sio_identified(slot, identity);
                self.sio_accept(slot, index, auth);
            }
            None => {
                let name = self.sio_namespace_name(index);
                self.sio_connect_error(slot, &name, "unauthorized: a token is required", Some(101));
            }
        }
    }

    /// The control plane's verdict on a session's token.
    pub(in crate::core) fn sio_auth_done(
        &mut self,
        slot: u32,
        result: Result<Arc<Identity>, AuthFailure>,
    ) {
        let waiting = match self.conns[slot as usize].eio.as_mut() {
            Some(e) => e
                .sio
                .rare
                .as_mut()
                .map(|r| std::mem::take(&mut r.waiting))
                .unwrap_or_default(),
            None => return,
        };
        match result {
            Ok(identity) => {
                self.sio_identified(slot, identity);
                for (index, auth) in waiting {
                    self.sio_accept(slot, index, auth);
                }
            }
            Err(failure) => {
                self.conns[slot as usize].state = ConnState::AwaitingConnect;
                for (index, _) in waiting {
                    let name = self.sio_namespace_name(index);
                    let code = failure.code as u16;
                    self.sio_connect_error(slot, &name, &failure.message, Some(code));
                }
            }
        }
        self.resume_input(slot);
    }

    /// The session has an identity: it counts as authenticated, reachable as its user.
    pub(super) fn sio_identified(&mut self, slot: u32, identity: Arc<Identity>) {
        let conn = &mut self.conns[slot as usize];
        conn.identity = Some(identity.clone());
        conn.state = ConnState::Open;
        ShardMetrics::add(&self.metrics.authenticated, 1);
        let conns = self.users.conns.entry(identity.user.clone()).or_default();
        let first = conns.slots().is_empty();
        conns.add(slot);
        if first {
            self.user_interest(&identity.user, true);
        }
    }

    /// An authenticated CONNECT: asked of the connect hook, or accepted.
    pub(super) fn sio_accept(&mut self, slot: u32, index: u8, auth: Box<str>) {
        let hooked = self
            .cfg
            .socketio
            .namespace(index)
            .is_some_and(|(_, ns)| !ns.connect_url.is_empty());
        if !hooked {
            return self.sio_connected(slot, index, &[]);
        }
        let kind = HookKind::Connect { auth: auth.into() };
        if let Err(why) = self.sio_call_hook(slot, index, kind) {
            let name = self.sio_namespace_name(index);
            self.sio_connect_error(slot, &name, why, Some(113));
        }
    }

    /// The namespace is joined: `40` with its socket id, then the hook's emits, in
    /// the same write.
    pub(super) fn sio_connected(&mut self, slot: u32, index: u8, emits: &[HookEmit]) {
        let name = self.sio_namespace_name(index);
        let sid = self.sio_sid(slot);
        if let Some(e) = self.conns[slot as usize].eio.as_mut() {
            if index < 64 {
                e.sio.joined |= 1 << index;
            }
        }
        let pid = if self.sio_main(index) {
            self.sio_pid(slot)
        } else {
            None
        };
        let mut data = Vec::with_capacity(72);
        data.extend_from_slice(b"{\"sid\":");
        let socket_id = format!("{sid}{index:02x}");
        serde_json::to_writer(&mut data, &socket_id).expect("writing to memory cannot fail");
        if let Some(pid) = pid {
            data.extend_from_slice(b",\"pid\":\"");
            data.extend_from_slice(pid.as_bytes()); // URL-safe base64: nothing to escape.
            data.push(b'"');
        }
        data.push(b'}');
        let data = String::from_utf8(data).expect("JSON is UTF-8");
        self.sio_send(slot, PacketKind::Connect, &name, None, &data, &[]);
        let delay = self.cfg.socketio.connect_emit_delay_ms;
        if delay == 0 || emits.is_empty() {
            for emit in emits {
                self.sio_emit(slot, &name, emit);
            }
            return;
        }
        let mut frames = Vec::new();
        for emit in emits {
            frames.extend(emit_frames(&name, emit));
        }
        let due = self.tick + super::super::ms_to_ticks(delay, self.cfg.tick_ms);
        if let Some(e) = self.conns[slot as usize].eio.as_mut() {
            match &mut e.sio.rare_mut().deferred {
                Some((_, held)) => held.extend(frames),
                slot => *slot = Some((due, frames)),
            }
        }
        self.eio_schedule(slot);
    }

    /// Write the frames held back whose tick has come.
    pub(in crate::core) fn sio_release_deferred(&mut self, t: u32, slot: u32) {
        let Some(e) = self.conns[slot as usize].eio.as_mut() else {
            return;
        };
        if e.sio.deferred_due().is_none_or(|due| t < due) {
            return;
        }
        let (_, frames) = e.sio.rare_mut().deferred.take().expect("checked above");
        for f in frames {
            self.enqueue(slot, f);
        }
    }

    /// `44` refusing a CONNECT; `code` (a Switchboard error code) goes in its data.
    pub(super) fn sio_connect_error(
        &mut self,
        slot: u32,
        namespace: &str,
        message: &str,
        code: Option<u16>,
    ) {
        let body = match code {
            Some(code) => serde_json::json!({ "message": message, "data": { "code": code } }),
            None => serde_json::json!({ "message": message }),
        };
        self.sio_send(
            slot,
            PacketKind::ConnectError,
            namespace,
            None,
            &body.to_string(),
            &[],
        );
    }

    /// An event on a joined namespace: to the namespace's events hook, or refused.
    fn sio_event(
        &mut self,
        slot: u32,
        index: u8,
        id: Option<u64>,
        data: &str,
        attachments: Vec<Bytes>,
    ) {
        let Some(event) = socketio::event_name(data).map(|e| e.into_owned()) else {
            return;
        };
        if self.sio_vocabulary(slot, index, id, data, &event) {
            return;
        }
        let hooked = self
            .cfg
            .socketio
            .namespace(index)
            .is_some_and(|(_, ns)| !ns.events_url.is_empty());
        if !hooked {
            return self.sio_refuse(slot, index, id, &event, 404, "unknown event");
        }
        let args = match socketio::args(data) {
            Ok(a) => {
                let mut out = String::with_capacity(data.len());
                out.push('[');
                for (i, v) in a.iter().skip(1).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(v.get());
                }
                out.push(']');
                out
            }
            Err(_) => return,
        };
        let kind = HookKind::Event {
            event: event.clone(),
            args,
            attachments,
            ack: id,
        };
        if let Err(why) = self.sio_call_hook(slot, index, kind) {
            self.sio_refuse(slot, index, id, &event, 113, why);
        }
    }

    /// A vocabulary event on the main namespace: the native command(s) it maps to,
    /// dispatched as a native client's would be (the reply is its ack). False: not
    /// vocabulary (or not the main namespace).
    fn sio_vocabulary(
        &mut self,
        slot: u32,
        index: u8,
        id: Option<u64>,
        data: &str,
        event: &str,
    ) -> bool {
        if Some(index) != self.cfg.socketio.namespace_index(socketio::MAIN_NAMESPACE) {
            return false;
        }
        let Ok(args) = socketio::args(data) else {
            return false;
        };
        let req_id = match id {
            None => sio::NO_ACK,
            Some(id) if id < u64::from(sio::NO_ACK) => id as u32,
            Some(_) => {
                self.sio_refuse(
                    slot,
                    index,
                    id,
                    event,
                    104,
                    "ack ids from 2^32-1 on are not supported",
                );
                return true;
            }
        };
        let Some(envelopes) = sio_events::envelopes(event, req_id, sio::NO_ACK, &args[1..]) else {
            return false;
        };
        match envelopes {
            Ok(list) => {
                for env in list {
                    match envelope::decode_request(Format::Json, &env) {
                        Ok(req) => self.dispatch(slot, req),
                        Err(_) => {
                            self.sio_refuse(slot, index, id, event, 104, sio_events::BAD_ARGS)
                        }
                    }
                    if !self
                        .conns
                        .get(slot as usize)
                        .is_some_and(|c| c.state == ConnState::Open)
                    {
                        break;
                    }
                }
            }
            Err(why) => self.sio_refuse(slot, index, id, event, 104, why),
        }
        true
    }

    /// An event's refusal: its ack (`[{"error":{…}}]`) when it asked for one, else an
    /// `error` event naming it.
    pub(super) fn sio_refuse(
        &mut self,
        slot: u32,
        index: u8,
        id: Option<u64>,
        event: &str,
        code: u16,
        message: &str,
    ) {
        let name = self.sio_namespace_name(index);
        let mut error = serde_json::json!({ "code": code, "message": message });
        if !event.is_empty() {
            error["event"] = event.into();
        }
        match id {
            Some(id) => {
                let ack = format!("[{{\"error\":{error}}}]");
                self.sio_send(slot, PacketKind::Ack, &name, Some(id), &ack, &[]);
            }
            None => {
                let mut data = Vec::new();
                socketio::event_data("error", &[&error.to_string()], &mut data);
                let data = String::from_utf8(data).expect("JSON is UTF-8");
                self.sio_send(slot, PacketKind::Event, &name, None, &data, &[]);
            }
        }
    }

    /// Queue a packet (its binary type when it has attachments, then each attachment
    /// as a binary message).
    pub(super) fn sio_send(
        &mut self,
        slot: u32,
        kind: PacketKind,
        namespace: &str,
        id: Option<u64>,
        data: &str,
        attachments: &[Bytes],
    ) {
        for f in packet_frames(kind, namespace, id, data, attachments) {
            self.enqueue(slot, f);
        }
    }

    pub(super) fn sio_namespace_name(&self, index: u8) -> String {
        self.cfg
            .socketio
            .namespace(index)
            .map_or_else(|| "/".to_string(), |(n, _)| n.to_string())
    }

    /// The session's Engine.IO id.
    pub(in crate::core) fn sio_sid(&self, slot: u32) -> String {
        let conn = &self.conns[slot as usize];
        Sid {
            shard: self.id,
            conn: ConnKey {
                slot,
                gen: conn.gen,
            },
            nonce: conn.eio.as_ref().map_or(0, |e| e.nonce),
        }
        .encode()
    }
}

/// A packet's frames: its text (the binary type when it has attachments), then each
/// attachment as a binary message.
pub(super) fn packet_frames(
    kind: PacketKind,
    namespace: &str,
    id: Option<u64>,
    data: &str,
    attachments: &[Bytes],
) -> Vec<Bytes> {
    let kind = match (kind, attachments.is_empty()) {
        (PacketKind::Event, false) => PacketKind::BinaryEvent,
        (PacketKind::Ack, false) => PacketKind::BinaryAck,
        (k, _) => k,
    };
    let mut text = Vec::with_capacity(data.len() + namespace.len() + 24);
    text.push(b'4');
    socketio::encode(
        kind,
        namespace,
        attachments.len() as u32,
        id,
        data,
        &mut text,
    );
    let mut frames = Vec::with_capacity(1 + attachments.len());
    frames.push(frame::encode(OpCode::Text, &text));
    for a in attachments {
        frames.push(frame::encode(OpCode::Binary, a));
    }
    frames
}
