//! Command → feature: the one table every authenticated command passes.
//!
//! Owns decoding a request from a connection's format, the per-command metrics, the
//! `connect`-first and rate-limit gates, and which feature method answers each
//! command. Does not own any feature's logic.

use std::borrow::Cow;

use bytes::Bytes;
use crossbeam_channel::TrySendError;
use switchboard_protocol::envelope::{self, CallAction};
use switchboard_protocol::{Command, ErrorCode};

use super::conn::{ConnKey, ConnState};
use super::ShardCore;
use crate::auth::ControlRequest;
use crate::control::ControlCommand;
use crate::limits::LimitEvent;
use crate::mesh::{QueryKind, ReplyKind};
use crate::metrics::{CommandKind, ShardMetrics};

impl ShardCore {
    pub(super) fn dispatch_command(&mut self, slot: u32, payload: &Bytes) {
        let conn = &mut self.conns[slot as usize];
        let format = conn.format;
        let req = match envelope::decode_request(format, payload) {
            Ok(r) => r,
            Err(e) => return self.fail(slot, &e),
        };
        let id = req.id;
        let state = conn.state;
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
            } => match state {
                ConnState::AwaitingConnect => {
                    if let Some(d) = device {
                        conn.ext_mut().device = Some(d.as_ref().into());
                    }
                    if let Some(rt) = reconnect {
                        return self.resume(slot, id, &rt, &positions);
                    }
                    let token = match token {
                        Some(t) => t.into_owned(),
                        None => match conn.ext.as_mut().and_then(|e| e.bearer.take()) {
                            Some(t) => t.into(),
                            None => {
                                return self.reply_err(
                                    slot,
                                    id,
                                    ErrorCode::BadRequest,
                                    "connect needs a token",
                                );
                            }
                        },
                    };
                    let key = ConnKey {
                        slot,
                        gen: conn.gen,
                    };
                    let request = ControlRequest::Authenticate {
                        shard: self.id,
                        conn: key,
                        req_id: id,
                        token,
                    };
                    match self.control.try_send(request) {
                        Ok(()) => {
                            self.conns[slot as usize].state =
                                ConnState::Authenticating { req_id: id }
                        }
                        Err(TrySendError::Full(_)) => self.reply_err(
                            slot,
                            id,
                            ErrorCode::Overloaded,
                            "authentication is busy, retry",
                        ),
                        Err(TrySendError::Disconnected(_)) => self.reply_err(
                            slot,
                            id,
                            ErrorCode::Internal,
                            "authentication unavailable",
                        ),
                    }
                }
                ConnState::Authenticating { .. } => self.reply_err(
                    slot,
                    id,
                    ErrorCode::AlreadyConnected,
                    "connect already in progress",
                ),
                _ => self.reply_err(slot, id, ErrorCode::AlreadyConnected, "already connected"),
            },
            _ if state != ConnState::Open => {
                self.reply_err(slot, id, ErrorCode::NotConnected, "send connect first")
            }
            _ if !self.rate_limits.is_empty() && !self.within_limits(slot, id, event) => {}
            Command::Subscribe { channel, since } => {
                self.subscribe(slot, ReplyKind::Command(id), &channel, since)
            }
            Command::History {
                channel,
                since,
                limit,
                reverse,
            } => self.history(
                slot,
                id,
                &channel,
                QueryKind::History {
                    since,
                    limit,
                    reverse,
                },
            ),
            Command::Unsubscribe { channel } => self.unsubscribe(slot, id, &channel),
            Command::Publish {
                channel,
                data,
                key,
                meta,
            } => self.publish_from(slot, id, &channel, data, meta, key.as_deref()),
            Command::Send {
                user,
                data,
                key,
                meta,
            } => self.send_direct(slot, id, &user, data, meta, key.as_deref()),
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
            } => self.schedule_from(
                slot,
                id,
                channel.as_deref(),
                user.as_deref(),
                data,
                meta,
                at,
                delay,
            ),
            Command::Unschedule { schedule } => self.unschedule(slot, id, schedule),
            Command::Status { status } => self.set_status(slot, id, &status),
            Command::Typing { channel, typing } => self.typing(slot, id, &channel, typing),
            Command::Presence { channel } => self.ask_presence(slot, id, &channel, true),
            Command::PresenceCount { channel } => self.ask_presence(slot, id, &channel, false),
            Command::Notifications {
                limit,
                before,
                unread,
            } => self.forward(
                slot,
                id,
                ControlCommand::Notifications {
                    limit,
                    before,
                    unread,
                },
            ),
            Command::NotificationsRead { notification } => self.forward(
                slot,
                id,
                ControlCommand::NotificationsRead { id: notification },
            ),
            Command::NotificationsTopic { topic, subscribe } => {
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
            } => {
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
            Command::CallSignal {
                call,
                to,
                data,
                quality,
            } => {
                let to = match to.as_deref().map(crate::control::parse_client_id) {
                    Some(None) => {
                        return self.reply_err(
                            slot,
                            id,
                            ErrorCode::BadRequest,
                            "'to' is not a client id (shard.slot.generation)",
                        )
                    }
                    to => to.flatten(),
                };
                let data = match data.to_value() {
                    Ok(v) => v,
                    Err(e) => {
                        return self.reply_err(slot, id, ErrorCode::BadRequest, &e.to_string())
                    }
                };
                let cmd = ControlCommand::CallSignal {
                    call,
                    to,
                    data,
                    quality,
                };
                self.forward(slot, id, cmd)
            }
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
    }
}

/// What a command counts against in the rate limits (besides `command`).
fn limit_event(cmd: &Command<'_>) -> LimitEvent {
    match cmd {
        Command::Publish { .. } | Command::Schedule { user: None, .. } => LimitEvent::Publish,
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
