//! Socket.IO backend hooks on the shard: calling a namespace's hook, and what its
//! answer does (the CONNECT accepted or refused, the ack, emits to the session, a
//! room or a user).
//!
//! Owns the shard's side of hooks. Does not own calling them over HTTP (the control
//! plane's `hooks`) or the packets ([`super::sio`]).

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::TrySendError;
use switchboard_protocol::envelope;
use switchboard_protocol::socketio::{self, PacketKind};
use switchboard_protocol::{Format, Payload};

use super::sio::packet_frames;
use crate::auth::ControlRequest;
use crate::core::conn::{ConnKey, ConnState};
use crate::core::ShardCore;
use crate::hooks::{EmitTarget, HookAnswer, HookCall, HookDone, HookEmit, HookKind};
use crate::metrics::ShardMetrics;

impl ShardCore {
    pub(super) fn sio_call_hook(
        &mut self,
        slot: u32,
        index: u8,
        kind: HookKind,
    ) -> Result<(), &'static str> {
        let call = HookCall {
            shard: self.id,
            conn: self.key(slot),
            sid: self.sio_sid(slot),
            namespace: self.sio_namespace_name(index),
            namespace_index: index,
            identity: self.conns[slot as usize].identity.clone(),
            kind,
        };
        ShardMetrics::add(&self.metrics.hook_calls, 1);
        match self.control.try_send(ControlRequest::Hook(Box::new(call))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err("the application's backend is busy, retry"),
            Err(TrySendError::Disconnected(_)) => Err("the application's backend is unavailable"),
        }
    }

    /// A hook's answer.
    pub(in crate::core) fn on_hook_done(&mut self, done: HookDone) {
        let ConnKey { slot, gen } = done.conn;
        let live = self.conns.get(slot as usize).is_some_and(|c| {
            c.gen == gen
                && c.eio.is_some()
                && !matches!(
                    c.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                )
        });
        if !live {
            return;
        }
        let index = done.namespace_index;
        let name = self.sio_namespace_name(index);
        match (done.connect, done.result) {
            (true, Ok(answer)) if answer.accept => self.sio_connected(slot, index, &answer.emits),
            (true, Ok(answer)) => {
                let message = answer
                    .message
                    .as_deref()
                    .unwrap_or("refused by the application");
                let body = match answer.data {
                    Some(data) => format!(
                        "{{\"message\":{},\"data\":{data}}}",
                        serde_json::Value::from(message)
                    ),
                    None => serde_json::json!({ "message": message }).to_string(),
                };
                self.sio_send(slot, PacketKind::ConnectError, &name, None, &body, &[]);
            }
            (true, Err(why)) => {
                let message = format!("connect hook failed: {why}");
                self.sio_connect_error(slot, &name, &message, Some(503));
            }
            (false, Ok(HookAnswer { ack, emits, .. })) => {
                if let Some(id) = done.ack {
                    let (args, attachments) = ack.unwrap_or_else(|| ("[]".into(), Vec::new()));
                    self.sio_send(slot, PacketKind::Ack, &name, Some(id), &args, &attachments);
                }
                for emit in &emits {
                    self.sio_emit(slot, &name, emit);
                }
            }
            (false, Err(why)) => {
                self.sio_refuse(slot, index, done.ack, "", 503, &why);
            }
        }
    }

    /// Emit `emit` to the session on namespace `name`, or publish it to its room or
    /// user as a publication named by its event.
    pub(super) fn sio_emit(&mut self, slot: u32, name: &str, emit: &HookEmit) {
        let channel = match &emit.to {
            None => {
                for f in emit_frames(name, emit) {
                    self.enqueue(slot, f);
                }
                return;
            }
            Some(EmitTarget::Channel(c)) => c.clone(),
            Some(EmitTarget::User(u)) => {
                format!("{}:{u}", self.cfg.personal_namespace)
            }
        };
        // One argument is the data; several travel as the array of them.
        let data = match socketio::args(&emit.args) {
            Ok(a) if a.len() == 1 => a[0].get().to_string(),
            _ => emit.args.clone(),
        };
        let payload = Payload {
            format: Format::Json,
            raw: data.as_bytes(),
        };
        let valid = envelope::valid_channel(&channel) && payload.validate().is_ok();
        if !valid
            || self
                .publish_named(&channel, payload, Arc::from(emit.event.as_str()))
                .is_err()
        {
            tracing::warn!(
                channel,
                event = emit.event,
                "a hook's emit to a room or user was refused"
            );
        }
    }
}

/// The frames of an emit on namespace `name`.
pub(super) fn emit_frames(name: &str, emit: &HookEmit) -> Vec<Bytes> {
    let args = emit.args.trim();
    let inner = args
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or("")
        .trim();
    let mut data = Vec::with_capacity(emit.event.len() + args.len() + 8);
    let parts: &[&str] = if inner.is_empty() { &[] } else { &[inner] };
    socketio::event_data(&emit.event, parts, &mut data);
    let data = String::from_utf8(data).expect("JSON is UTF-8");
    packet_frames(PacketKind::Event, name, None, &data, &emit.attachments)
}
