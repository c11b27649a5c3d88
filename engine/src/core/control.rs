//! Work handed to control-plane workers, and what they push back.
//!
//! Owns forwarding notification and call commands (with the caller's identity), the
//! control-plane queue's back-pressure answers, and queueing control-plane pushes on
//! connections (with coalescing keys). Does not own notifications or calls themselves
//! (the control plane's workers).

use std::borrow::Cow;
use std::sync::Arc;

use crossbeam_channel::TrySendError;
use switchboard_protocol::envelope;
use switchboard_protocol::{ErrorCode, Payload};

use super::conn::{mark_dirty, Conn, ConnState, MAX_COALESCE_KEYS};
use super::ShardCore;
use crate::access::Action;
use crate::auth::ControlRequest;
use crate::control::{CallTarget, Caller, ControlCommand, Frames, Push, PushTo};
use crate::metrics::ShardMetrics;
use crate::presence::ClientId;
use switchboard_protocol::envelope::CallAction;

impl ShardCore {
    /// `call`: the caller's right to call the user (the token's `send_to`, as for
    /// direct messages) or to publish in the room is checked here; the call worker
    /// does the rest.
    pub(super) fn call(
        &mut self,
        slot: u32,
        id: u32,
        user: Option<&str>,
        channel: Option<&str>,
        media: Option<Cow<'_, str>>,
        data: Option<Payload<'_>>,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        let to = match (user, channel) {
            (Some(u), _) if u.is_empty() || u.len() > envelope::MAX_KEY_BYTES => {
                Err((ErrorCode::BadRequest, "invalid user id"))
            }
            (Some(u), _) if *u == *identity.user => {
                Err((ErrorCode::BadRequest, "a user cannot call themselves"))
            }
            (Some(u), _) if !identity.may_send(u) => Err((
                ErrorCode::PermissionDenied,
                "calling this user is not allowed by the token",
            )),
            (Some(u), _) => Ok(CallTarget::User(u.to_string())),
            (None, Some(c)) => self
                .check_channel(slot, c, Action::Publish)
                .map(|()| CallTarget::Room(c.to_string())),
            (None, None) => Err((ErrorCode::BadRequest, "call needs a user or a channel")),
        };
        let to = match to {
            Ok(t) => t,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        let data = match data.map(|d| d.to_value()).transpose() {
            Ok(d) => d,
            Err(e) => return self.reply_err(slot, id, ErrorCode::BadRequest, &e.to_string()),
        };
        let cmd = ControlCommand::Call {
            to,
            media: media.map(Cow::into_owned),
            data,
        };
        self.forward(slot, id, cmd);
    }

    /// `notifications_topic`: the token's `topics` claim goes along; the notification
    /// worker decides.
    pub(super) fn notifications_topic(
        &mut self,
        slot: u32,
        id: u32,
        topic: Cow<'_, str>,
        subscribe: bool,
    ) {
        let allowed = self.conns[slot as usize]
            .identity
            .as_ref()
            .map(|i| i.claim_values("topics").map(String::from).collect())
            .unwrap_or_default();
        let cmd = ControlCommand::Topic {
            topic: topic.into_owned(),
            subscribe,
            allowed,
        };
        self.forward(slot, id, cmd)
    }

    /// `call_accept` / `call_reject` / `call_end`: an accepting connection's channels go
    /// along (a room call checks them).
    pub(super) fn call_action(
        &mut self,
        slot: u32,
        id: u32,
        call: u64,
        action: CallAction,
        reason: Option<Cow<'_, str>>,
    ) {
        let channels = match action {
            CallAction::Accept => self.conns[slot as usize].subs.to_vec(),
            _ => Vec::new(),
        };
        let cmd = ControlCommand::CallAction {
            call,
            action,
            reason: reason.map(Cow::into_owned),
            channels,
        };
        self.forward(slot, id, cmd)
    }

    /// `call_signal`: SDP or ICE for the other side, optionally to one client of it.
    pub(super) fn call_signal(
        &mut self,
        slot: u32,
        id: u32,
        call: u64,
        to: Option<&str>,
        data: Payload<'_>,
        quality: bool,
    ) {
        let to = match to.map(crate::control::parse_peer_id) {
            Some(None) => {
                return self.reply_err(
                    slot,
                    id,
                    ErrorCode::BadRequest,
                    "'to' is not a client id ([node/]shard.slot.generation)",
                )
            }
            to => to.flatten(),
        };
        let data = match data.to_value() {
            Ok(v) => v,
            Err(e) => return self.reply_err(slot, id, ErrorCode::BadRequest, &e.to_string()),
        };
        let cmd = ControlCommand::CallSignal {
            call,
            to,
            data,
            quality,
        };
        self.forward(slot, id, cmd)
    }

    /// The caller of `slot`'s commands, as the control plane sees it.
    pub(super) fn caller(&self, slot: u32) -> Option<Caller> {
        let conn = &self.conns[slot as usize];
        Some(Caller {
            user: conn.identity.as_ref()?.user.clone(),
            client: ClientId {
                shard: self.id,
                slot,
                gen: conn.gen,
            },
            device: conn.device().map(Box::from),
        })
    }

    /// Hand a notification or call command to its control-plane worker.
    pub(super) fn forward(&mut self, slot: u32, id: u32, cmd: ControlCommand) {
        let Some(caller) = self.caller(slot) else {
            return;
        };
        if cmd.is_call() {
            self.conns[slot as usize].ext_mut().in_call = true;
        }
        let req = ControlRequest::Command {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            caller,
            cmd,
        };
        self.ask_control(slot, id, req);
    }

    /// Hand a request to the control plane; it answers with [`ShardMsg::Reply`].
    pub(super) fn ask_control(&mut self, slot: u32, id: u32, req: ControlRequest) {
        match self.control.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.reply_err(
                slot,
                id,
                ErrorCode::Overloaded,
                "the control plane is busy, retry",
            ),
            Err(TrySendError::Disconnected(_)) => self.reply_err(
                slot,
                id,
                ErrorCode::Internal,
                "the control plane is unavailable",
            ),
        }
    }

    /// A control-plane push: to users' connections here, one connection, or a
    /// channel's local subscribers.
    pub(super) fn on_push(&mut self, push: &Push) {
        let coalesce = push.coalesce.as_ref();
        let mut slots = std::mem::take(&mut self.push_slots);
        match &push.to {
            PushTo::Users(list) => {
                for (user, frames) in list {
                    let Some(u) = self.users.conns.get(&**user) else {
                        continue;
                    };
                    slots.clear();
                    slots.extend_from_slice(u.slots());
                    for &slot in &slots {
                        self.push_control(slot, frames, coalesce);
                    }
                }
            }
            PushTo::All(frames) => {
                slots.clear();
                slots.extend(
                    self.conns
                        .iter()
                        .filter(|(_, c)| c.state == ConnState::Open)
                        .map(|(slot, _)| slot as u32),
                );
                for &slot in &slots {
                    self.push_control(slot, frames, coalesce);
                }
            }
            PushTo::Client(client, frames) => {
                let here = client.shard == self.id
                    && self
                        .conns
                        .get(client.slot as usize)
                        .is_some_and(|c| c.gen == client.gen);
                if here {
                    self.push_control(client.slot, frames, coalesce);
                }
            }
            PushTo::Channel {
                channel,
                except,
                frames,
            } => {
                let skip = except.filter(|c| c.shard == self.id).map(|c| c.slot);
                slots.clear();
                if let Some(entry) = self.channels.local(channel) {
                    slots.extend(entry.subscribers.iter().filter(|&&s| Some(s) != skip));
                }
                for &slot in &slots {
                    self.push_control(slot, frames, coalesce);
                }
            }
        }
        self.push_slots = slots;
        while let Some(slot) = self.overflowed.pop() {
            self.slow_consumer(slot);
        }
    }

    /// Queue a control-plane push on `slot`; with a coalescing key, replace the
    /// previous frame of that key if it is still waiting unwritten.
    pub(super) fn push_control(&mut self, slot: u32, frames: &Frames, coalesce: Option<&Arc<str>>) {
        let limit = self.cfg.max_outbound_bytes;
        let conn = &mut self.conns[slot as usize];
        if conn.state != ConnState::Open {
            return;
        }
        let frame = &frames[conn.format.index()];
        if let Some(key) = coalesce {
            let Conn { ext, out, .. } = conn;
            let ext = ext.get_or_insert_with(Default::default);
            if let Some(i) = ext.coalesced.iter().position(|(k, _)| k == key) {
                if out.replace_unstarted(&ext.coalesced[i].1, frame.clone()) {
                    ext.coalesced[i].1 = frame.clone();
                    ShardMetrics::add(&self.metrics.coalesced, 1);
                    return;
                }
                ext.coalesced.remove(i);
            }
        }
        if conn.out.push(frame.clone(), limit).is_err() {
            self.overflowed.push(slot);
            return;
        }
        if let Some(key) = coalesce {
            let ext = conn.ext_mut();
            if ext.coalesced.len() == MAX_COALESCE_KEYS {
                ext.coalesced.remove(0);
            }
            ext.coalesced.push((key.clone(), frame.clone()));
        }
        ShardMetrics::add(&self.metrics.deliveries, 1);
        mark_dirty(conn, slot, &mut self.dirty);
    }
}
