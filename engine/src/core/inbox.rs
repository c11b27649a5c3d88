//! Direct messages, inbox cursors, receipts and scheduled messages.
//!
//! Owns `send` into a user's inbox, `ack` (a device's cursor), `receipt`/`receipts`
//! (kept by the channel's owner, stored, pushed to subscribers) and `schedule`/
//! `unschedule` (handed to the control plane). Does not own storage of marks
//! ([`crate::marks`]) or firing schedules (control plane).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::{ErrorCode, Payload, Position};

use super::fanout::push_frames;
use super::ShardCore;
use crate::access::Action;
use crate::auth::{ControlRequest, ScheduleJob};
use crate::journal::{MarkKind, MarkRecord};
use crate::marks::{DeviceCursor, InboxState, ReceiptList};
use crate::mesh::{MarkUpdate, ReplyBody, ShardMsg};
use crate::metrics::CommandKind;

impl ShardCore {
    /// `send`: a direct message into `user`'s inbox, carrying the sender's user id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_direct(
        &mut self,
        slot: u32,
        id: u32,
        user: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        quiet: bool,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        let channel = match self.dm_target(&identity, user) {
            Ok(c) => c,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        self.route_publish(
            slot,
            id,
            &channel,
            data,
            meta,
            key,
            Some(identity.user.clone()),
            quiet,
        );
    }

    /// `ack`: this device has processed its inbox up to `offset`.
    pub(super) fn ack_inbox(&mut self, slot: u32, id: u32, offset: u64) {
        let conn = &self.conns[slot as usize];
        let Some(device) = conn.device().map(Box::from) else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "connect with a 'device' to keep an inbox cursor",
            );
        };
        let Some(inbox) = conn.identity.as_ref().and_then(|i| self.inbox_of(&i.user)) else {
            return self.reply_err(slot, id, ErrorCode::BadRequest, "direct messages are off");
        };
        self.mark(MarkUpdate {
            channel: inbox.into(),
            kind: MarkKind::Cursor,
            who: device,
            delivered: None,
            read: Some(offset),
        });
        self.reply_ok(slot, id);
    }

    /// `receipt`: this user received / read `channel` up to these offsets.
    pub(super) fn receipt(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
            return self.reply_err(slot, id, code, why);
        }
        let Some(user) = self.conns[slot as usize].identity.as_ref().map(|i| &i.user) else {
            return;
        };
        let update = MarkUpdate {
            channel: channel.into(),
            kind: MarkKind::Receipt,
            who: user.as_ref().into(),
            delivered,
            read,
        };
        self.mark(update);
        self.reply_ok(slot, id);
    }

    /// Apply a cursor or receipt change on the channel's owner (here or there).
    pub(super) fn mark(&mut self, update: MarkUpdate) {
        let owner = self.mesh.home(&update.channel, self.id);
        if owner == self.id {
            self.apply_mark(update);
        } else {
            self.send_to(owner, ShardMsg::Mark(Box::new(update)));
        }
    }

    /// On the owner: move the mark (never beyond what was released), hand the change
    /// to the store, and push a receipt to the channel's subscribers.
    pub(super) fn apply_mark(&mut self, u: MarkUpdate) {
        let top = self.streams.current(&u.channel).unwrap_or_default();
        let clamp = |o: Option<u64>| o.map(|o| o.min(top.offset));
        let at_ms = self.clock.unix_ms;
        match u.kind {
            MarkKind::Cursor => {
                let to = Position {
                    epoch: top.epoch,
                    offset: clamp(u.read).unwrap_or(0),
                };
                if let Some(rec) = self.marks.set_cursor(&u.channel, &u.who, to, at_ms) {
                    self.share_mark(&rec);
                    if self.store.link.is_some() {
                        self.store.marks.push(rec);
                    }
                }
            }
            MarkKind::Receipt => {
                let Some(r) = self.marks.set_receipt(
                    &u.channel,
                    &u.who,
                    top.epoch,
                    clamp(u.delivered),
                    clamp(u.read),
                    at_ms,
                ) else {
                    return;
                };
                let rec = MarkRecord {
                    channel: u.channel.clone(),
                    kind: MarkKind::Receipt,
                    who: u.who.clone(),
                    epoch: r.epoch,
                    delivered: r.delivered,
                    read: r.read,
                    at_ms,
                };
                self.share_mark(&rec);
                if self.store.link.is_some() {
                    self.store.marks.push(rec);
                }
                self.push_receipt(&u.channel, &u.who, r);
            }
        }
    }

    /// Tell `channel`'s subscribers (on every shard) that `user`'s receipt moved.
    pub(super) fn push_receipt(&mut self, channel: &str, user: &str, r: crate::marks::Receipt) {
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        #[derive(serde::Serialize)]
        struct ReceiptPush<'a> {
            push: &'static str,
            channel: &'a str,
            user: &'a str,
            epoch: &'a str,
            delivered: u64,
            read: u64,
            at: u64,
        }
        let position = Position {
            epoch: r.epoch,
            offset: r.read,
        };
        let epoch = position.epoch_hex();
        let push = ReceiptPush {
            push: "receipt",
            channel,
            user,
            epoch: epoch.as_str(),
            delivered: r.delivered,
            read: r.read,
            at: r.at_ms,
        };
        let frames = push_frames(needed, &push);
        let name = self.audience_name(channel);
        self.fan_out(name, position, frames, self.clock.mono, local, remote);
    }

    /// `receipts`: asked of the channel's owner.
    pub(super) fn ask_receipts(&mut self, slot: u32, id: u32, channel: &str) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
            return self.reply_err(slot, id, code, why);
        }
        let answer = self.asker(slot, id);
        let owner = self.mesh.home(channel, self.id);
        if owner == self.id {
            let list = self.receipt_list(channel);
            self.answer_with(answer, list, CommandKind::Receipts, ReplyBody::Receipts);
        } else {
            let channel = channel.into();
            self.send_to(owner, ShardMsg::Receipts { channel, answer });
        }
    }

    /// On the owner: every receipt of `channel`, with its current position.
    /// On an inbox's owner: its devices' cursors and what they have not acknowledged;
    /// with `clear`, every cursor moves to the latest offset (stored and shared like an
    /// `ack`), so no device has anything pending.
    pub(super) fn inbox_state(&mut self, channel: Arc<str>, clear: bool) -> InboxState {
        let top = self.streams.current(&channel).unwrap_or_default();
        let devices: Vec<DeviceCursor> = self
            .marks
            .cursors(&channel)
            .into_iter()
            .map(|(device, at)| DeviceCursor {
                device: device.into(),
                offset: at.offset,
                epoch: at.epoch_hex().as_str().to_string(),
                pending: if at.epoch == top.epoch {
                    top.offset.saturating_sub(at.offset)
                } else {
                    top.offset
                },
            })
            .collect();
        let mut cleared = 0;
        if clear {
            for d in devices.iter().filter(|d| d.pending > 0) {
                self.apply_mark(MarkUpdate {
                    channel: channel.clone(),
                    kind: MarkKind::Cursor,
                    who: d.device.as_str().into(),
                    delivered: None,
                    read: Some(top.offset),
                });
                cleared += 1;
            }
        }
        InboxState {
            channel: channel.to_string(),
            epoch: if top.epoch == 0 && top.offset == 0 {
                String::new()
            } else {
                top.epoch_hex().as_str().to_string()
            },
            offset: top.offset,
            devices,
            cleared,
        }
    }

    pub(super) fn receipt_list(&self, channel: &str) -> ReceiptList {
        let top = self.streams.current(channel);
        ReceiptList {
            channel: channel.to_string(),
            epoch: top.map_or(String::new(), |p| p.epoch_hex().as_str().to_string()),
            offset: top.map_or(0, |p| p.offset),
            receipts: self.marks.receipts(channel),
        }
    }

    /// `schedule`: checked here (the same rights as publishing or sending now, plus the
    /// token's `schedule` claim), stored and fired by the control plane.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn schedule_from(
        &mut self,
        slot: u32,
        id: u32,
        (channel, user): (Option<&str>, Option<&str>),
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        at: Option<u64>,
        delay: Option<u64>,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        if !identity.schedule {
            return self.reply_err(
                slot,
                id,
                ErrorCode::PermissionDenied,
                "scheduling is not allowed by the token",
            );
        }
        let target = match (channel, user) {
            (Some(c), _) => self
                .check_channel(slot, c, Action::Publish)
                .map(|()| (c.to_string(), None)),
            (None, Some(u)) => self
                .dm_target(&identity, u)
                .map(|c| (c, Some(identity.user.clone()))),
            (None, None) => Err((ErrorCode::BadRequest, "schedule needs a channel or a user")),
        };
        let (channel, from) = match target {
            Ok(t) => t,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        let due_ms = match (at, delay) {
            (Some(at), _) => at,
            (None, Some(d)) => self.clock.unix_ms.saturating_add(d),
            (None, None) => self.clock.unix_ms,
        };
        let job = ScheduleJob {
            channel,
            from,
            format: data.format,
            data: Bytes::copy_from_slice(data.raw),
            meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
            due_ms,
            owner: identity.user.clone(),
        };
        let req = ControlRequest::Schedule {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            job,
        };
        self.ask_control(slot, id, req);
    }

    /// `unschedule`: cancelled by the control plane if this user scheduled it.
    pub(super) fn unschedule(&mut self, slot: u32, id: u32, schedule: u64) {
        let conn = &self.conns[slot as usize];
        let Some(owner) = conn.identity.as_ref().map(|i| i.user.clone()) else {
            return;
        };
        let req = ControlRequest::Unschedule {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            id: schedule,
            owner,
        };
        self.ask_control(slot, id, req);
    }
}
