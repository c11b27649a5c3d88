//! Command → feature: the one table every authenticated command passes.
//!
//! Owns decoding a request from a connection's format, the per-command metrics, the
//! `connect`-first and rate-limit gates, and which feature method answers each
//! command. Does not own any feature's logic.

use switchboard_protocol::envelope::Request;
use switchboard_protocol::{Command, ErrorCode};

use super::conn::ConnState;
use super::ShardCore;
use crate::control::ControlCommand;
use crate::limits::LimitEvent;
use crate::mesh::{QueryKind, ReplyKind};
use crate::metrics::{CommandKind, ShardMetrics};

impl ShardCore {
    /// Hot path: one decoded command of an open (or connecting) connection, whatever
    /// its wire protocol, to the feature that answers it.
    pub(super) fn dispatch(&mut self, slot: u32, req: Request<'_>) {
        let id = req.id;
        let state = self.conns[slot as usize].state;
        let event = limit_event(&req.command);
        self.answering = command_kind(&req.command);
        ShardMetrics::add(&self.metrics.commands[self.answering as usize], 1);
        match req.command {
            Command::Ping => self.reply_ok(slot, id),
            Command::Invalid(why) => self.reply_err(slot, id, ErrorCode::BadRequest, why),
            Command::Connect {
                token,
                reconnect,
                device,
                positions,
            } => self.connect(slot, id, token, reconnect, device, &positions),
            _ if state != ConnState::Open => {
                self.reply_err(slot, id, ErrorCode::NotConnected, "send connect first")
            }
            _ if !self.rate.table.is_empty() && !self.within_limits(slot, id, event) => {}
            Command::Subscribe { channel, since } => {
                self.subscribe(slot, ReplyKind::Command(id), &channel, since)
            }
            Command::History { channel, page } => {
                self.history(slot, id, &channel, QueryKind::History { page })
            }
            Command::Unsubscribe { channel } => self.unsubscribe(slot, id, &channel),
            Command::Edit {
                channel,
                offset,
                epoch,
                data,
                meta,
            } => self.revise_from(slot, id, &channel, offset, epoch, Some(data), meta),
            Command::Delete {
                channel,
                offset,
                epoch,
            } => self.revise_from(slot, id, &channel, offset, epoch, None, None),
            Command::Publish {
                channel,
                data,
                key,
                meta,
                reply,
            } => {
                let quiet = !reply || self.asked_no_ack(slot, id);
                self.publish_from(slot, id, &channel, data, meta, key.as_deref(), quiet)
            }
            Command::Send {
                user,
                data,
                key,
                meta,
            } => {
                let quiet = self.asked_no_ack(slot, id);
                self.send_direct(slot, id, &user, data, meta, key.as_deref(), quiet)
            }
            Command::Ack { offset } => self.ack_inbox(slot, id, offset),
            Command::Receipt {
                channel,
                delivered,
                read,
            } => self.receipt(slot, id, &channel, delivered, read),
            Command::Receipts { channel } => self.ask_receipts(slot, id, &channel),
            Command::Schedule {
                channel,
                user,
                data,
                meta,
                at,
                delay,
            } => {
                let to = (channel.as_deref(), user.as_deref());
                self.schedule_from(slot, id, to, data, meta, at, delay)
            }
            Command::Unschedule { schedule } => self.unschedule(slot, id, schedule),
            Command::Status { status } => self.set_status(slot, id, &status),
            Command::Typing { channel, typing } => self.typing(slot, id, &channel, typing),
            Command::Presence { channel } => self.ask_presence(slot, id, &channel, true),
            Command::PresenceCount { channel } => self.ask_presence(slot, id, &channel, false),
            Command::Notifications {
                limit,
                before,
                unread,
            } => {
                let cmd = ControlCommand::Notifications {
                    limit,
                    before,
                    unread,
                };
                self.forward(slot, id, cmd)
            }
            Command::NotificationsRead { notification } => {
                let cmd = ControlCommand::NotificationsRead { id: notification };
                self.forward(slot, id, cmd)
            }
            Command::NotificationsTopic { topic, subscribe } => {
                self.notifications_topic(slot, id, topic, subscribe)
            }
            Command::Call {
                user,
                channel,
                media,
                data,
            } => self.call(slot, id, user.as_deref(), channel.as_deref(), media, data),
            Command::CallAction {
                call,
                action,
                reason,
            } => self.call_action(slot, id, call, action, reason),
            Command::CallSignal {
                call,
                to,
                data,
                quality,
            } => self.call_signal(slot, id, call, to.as_deref(), data, quality),
        }
    }
}

/// The kind of a command (its name in [`crate::metrics::COMMANDS`]).
fn command_kind(cmd: &Command<'_>) -> CommandKind {
    match cmd {
        Command::Connect { .. } => CommandKind::Connect,
        Command::Ping => CommandKind::Ping,
        Command::Invalid(_) => CommandKind::Invalid,
        Command::Subscribe { .. } => CommandKind::Subscribe,
        Command::Unsubscribe { .. } => CommandKind::Unsubscribe,
        Command::Publish { .. } => CommandKind::Publish,
        Command::History { .. } => CommandKind::History,
        Command::Send { .. } => CommandKind::Send,
        Command::Ack { .. } => CommandKind::Ack,
        Command::Receipt { .. } => CommandKind::Receipt,
        Command::Receipts { .. } => CommandKind::Receipts,
        Command::Schedule { .. } => CommandKind::Schedule,
        Command::Unschedule { .. } => CommandKind::Unschedule,
        Command::Status { .. } => CommandKind::Status,
        Command::Typing { .. } => CommandKind::Typing,
        Command::Presence { .. } => CommandKind::Presence,
        Command::PresenceCount { .. } => CommandKind::PresenceCount,
        Command::Notifications { .. } => CommandKind::Notifications,
        Command::NotificationsRead { .. } => CommandKind::NotificationsRead,
        Command::NotificationsTopic { .. } => CommandKind::NotificationsTopic,
        Command::Call { .. } => CommandKind::Call,
        Command::CallAction { .. } => CommandKind::CallAction,
        Command::CallSignal { .. } => CommandKind::CallSignal,
        Command::Edit { .. } => CommandKind::Edit,
        Command::Delete { .. } => CommandKind::Delete,
    }
}

/// What a command counts against in the rate limits (besides `command`).
fn limit_event(cmd: &Command<'_>) -> LimitEvent {
    match cmd {
        Command::Publish { .. }
        | Command::Edit { .. }
        | Command::Delete { .. }
        | Command::Schedule { user: None, .. } => LimitEvent::Publish,
        Command::Send { .. } | Command::Schedule { .. } => LimitEvent::Send,
        Command::Subscribe { .. }
        | Command::History { .. }
        | Command::Presence { .. }
        | Command::PresenceCount { .. }
        | Command::Receipts { .. } => LimitEvent::Subscribe,
        Command::Typing { .. }
        | Command::Status { .. }
        | Command::Receipt { .. }
        | Command::Ack { .. } => LimitEvent::Typing,
        Command::Call { .. } | Command::CallAction { .. } | Command::CallSignal { .. } => {
            LimitEvent::Call
        }
        Command::Notifications { .. }
        | Command::NotificationsRead { .. }
        | Command::NotificationsTopic { .. } => LimitEvent::Notification,
        Command::Connect { .. }
        | Command::Ping
        | Command::Invalid(_)
        | Command::Unsubscribe { .. }
        | Command::Unschedule { .. } => LimitEvent::Command,
    }
}
