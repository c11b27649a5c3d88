//! Presence and typing.
//!
//! Owns reporting joins, leaves and status changes to a channel's owner, applying them
//! there and pushing the events, and typing indicators (throttled, timed out, sent
//! straight to the subscribers' shards). Does not own the member lists
//! ([`crate::presence`]).

use crate::config::EngineConfig;
use crate::presence::Presence;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use switchboard_protocol::{ErrorCode, Position};

use super::fanout::push_frames;
use super::{ms_to_ticks, ShardCore};
use crate::access::Action;
use crate::mesh::{PresenceKind, PresenceUpdate, Publication, ReplyBody, ShardMsg};
use crate::metrics::CommandKind;
use crate::presence::Event as PresenceEvent;

/// Presence and typing state of the shard.
#[derive(Debug)]
pub(super) struct PresenceRoom {
    /// Who is on the channels this shard owns (namespaces with presence).
    pub(super) members: Presence,
    /// Namespaces with presence, and whether they push events.
    pub(super) namespaces: HashMap<Box<str>, bool>,
    /// The status every connection starts with.
    pub(super) online: Arc<str>,
    /// Typing connections by the tick their typing expires (in order: one timeout).
    pub(super) typing_expiry: VecDeque<(u32, u32, u32)>,
}

impl PresenceRoom {
    pub(super) fn new(cfg: &EngineConfig) -> PresenceRoom {
        PresenceRoom {
            members: Presence::new(),
            namespaces: cfg
                .namespaces
                .iter()
                .filter(|n| n.presence)
                .map(|n| (n.name.as_str().into(), n.presence_events))
                .chain(
                    (!cfg.user_presence_namespace.is_empty())
                        .then(|| (cfg.user_presence_namespace.as_str().into(), true)),
                )
                .collect(),
            online: Arc::from("online"),
            typing_expiry: VecDeque::new(),
        }
    }
}

impl ShardCore {
    /// Whether `channel`'s namespace tracks presence, and if so whether it pushes
    /// events.
    #[inline]
    pub(super) fn presence_events_of(&self, channel: &str) -> Option<bool> {
        if self.presence.namespaces.is_empty() {
            return None;
        }
        let (ns, _) = channel.split_once(':')?;
        self.presence.namespaces.get(ns).copied()
    }

    /// Whether subscribing to `channel` makes a connection present on it (a channel of
    /// a namespace with presence; not the users' own presence channels, which report
    /// their user's connections, not their watchers).
    #[inline]
    pub(super) fn tracks_members(&self, channel: &str) -> bool {
        self.presence_events_of(channel).is_some()
            && !channel
                .strip_prefix(self.cfg.user_presence_namespace.as_str())
                .is_some_and(|rest| {
                    !self.cfg.user_presence_namespace.is_empty() && rest.starts_with(':')
                })
    }

    /// Tell `channel`'s owner that this connection joined, left or changed status.
    pub(super) fn report_presence(&mut self, slot: u32, channel: &Arc<str>, kind: PresenceKind) {
        let conn = &self.conns[slot as usize];
        let Some(identity) = &conn.identity else {
            return;
        };
        let update = PresenceUpdate {
            channel: channel.clone(),
            user: identity.user.clone(),
            client: crate::presence::ClientId {
                shard: self.id,
                slot,
                gen: conn.gen,
            },
            device: conn.device().map(Box::from),
            kind,
        };
        let owner = self.mesh.home(channel, self.id);
        if owner == self.id {
            self.apply_presence(update);
        } else {
            self.send_to(owner, ShardMsg::Presence(Box::new(update)));
        }
    }

    /// On the owner: apply a presence change and push what it means to the members.
    pub(super) fn apply_presence(&mut self, u: PresenceUpdate) {
        let now_ms = self.clock.unix_ms;
        let event = match u.kind {
            PresenceKind::Join { status } => self.presence.members.join(
                &u.channel,
                &u.user,
                u.client,
                u.device.as_deref(),
                &status,
                now_ms,
            ),
            PresenceKind::Leave { linger } => {
                let grace = ms_to_ticks(self.cfg.presence_grace_ms, self.cfg.tick_ms);
                let until = linger.then(|| self.tick.wrapping_add(grace.max(1)));
                self.presence
                    .members
                    .leave(&u.channel, &u.user, u.client, until, now_ms)
            }
            PresenceKind::Status { status } => self
                .presence
                .members
                .status(&u.channel, &u.user, u.client, &status),
        };
        if self.shared.link.is_some() {
            // Nodes share Redis: the union decides what the change means to everyone.
            self.presence_changed(&u.channel, &u.user);
            if self.presence_shared() {
                return;
            }
        }
        if let Some(e) = event {
            self.push_presence(&u.channel, &e);
        }
    }

    /// Push a presence event to `channel`'s subscribers (if its namespace wants them).
    pub(super) fn push_presence(&mut self, channel: &str, event: &PresenceEvent) {
        if self.presence_events_of(channel) != Some(true) {
            return;
        }
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        #[derive(serde::Serialize)]
        struct Push<'a> {
            push: &'static str,
            channel: &'a str,
            event: &'static str,
            user: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            last_seen: Option<u64>,
        }
        let push = match event {
            PresenceEvent::Join { user, status } => Push {
                push: "presence",
                channel,
                event: "join",
                user,
                status: Some(status),
                last_seen: None,
            },
            PresenceEvent::Leave { user, at_ms } => Push {
                push: "presence",
                channel,
                event: "leave",
                user,
                status: None,
                last_seen: Some(*at_ms),
            },
            PresenceEvent::Status { user, status } => Push {
                push: "presence",
                channel,
                event: "status",
                user,
                status: Some(status),
                last_seen: None,
            },
        };
        let frames = push_frames(needed, &push);
        let name = self.audience_name(channel);
        let position = self.streams.current(channel).unwrap_or_default();
        self.fan_out(name, position, frames, self.clock.mono, local, remote);
    }

    /// `status`: this connection's status on every channel it is present on.
    pub(super) fn set_status(&mut self, slot: u32, id: u32, status: &str) {
        let status: Arc<str> = if status == "online" {
            self.presence.online.clone()
        } else {
            status.into()
        };
        self.conns[slot as usize].ext_mut().status = Some(status.clone());
        if !self.presence.namespaces.is_empty() {
            let conn = &self.conns[slot as usize];
            let mut subs = conn.subs.clone();
            subs.retain(|c| self.tracks_members(c));
            subs.extend(conn.presence_self());
            for name in subs {
                let kind = PresenceKind::Status {
                    status: status.clone(),
                };
                self.report_presence(slot, &name, kind);
            }
        }
        self.reply_ok(slot, id);
    }

    /// `presence` / `presence_count`: asked of the channel's owner.
    pub(super) fn ask_presence(&mut self, slot: u32, id: u32, channel: &str, members: bool) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Presence) {
            return self.reply_err(slot, id, code, why);
        }
        if self.presence_events_of(channel).is_none() {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "this channel's namespace does not track presence",
            );
        }
        let answer = self.asker(slot, id);
        let owner = self.mesh.home(channel, self.id);
        if owner == self.id {
            self.answer_presence(channel.into(), members, answer);
        } else {
            let msg = ShardMsg::PresenceQuery {
                channel: channel.into(),
                members,
                answer,
            };
            self.send_to(owner, msg);
        }
    }

    /// On the owner: the channel's presence (the union, when nodes share Redis).
    pub(super) fn answer_presence(
        &mut self,
        channel: Arc<str>,
        members: bool,
        answer: crate::mesh::Answer<crate::presence::PresenceList>,
    ) {
        if let Some(answer) = self.ask_union(channel.clone(), members, answer) {
            let list = self.presence.members.list(&channel, members);
            self.answer_with(answer, list, CommandKind::Presence, ReplyBody::Presence);
        }
    }

    /// `typing`: tell the channel's other subscribers this user started (or stopped)
    /// typing. Never stored or sequenced; sent from this shard straight to the
    /// subscribers' shards. A start is sent at most once per `typing_throttle_ms`
    /// per connection (repeats in between are answered and absorbed); a connection
    /// types in one channel at a time (starting in another stops the first); a start
    /// with no stop within `typing_timeout_ms` of the last one is stopped by the server.
    pub(super) fn typing(&mut self, slot: u32, id: u32, channel: &str, typing: bool) {
        let conn = &self.conns[slot as usize];
        let Some(name) = conn.subs.iter().find(|c| ***c == *channel).cloned() else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::NotSubscribed,
                "typing needs a subscription",
            );
        };
        if !typing {
            if conn.typing_in().is_some_and(|(c, _)| *c == name) {
                self.stop_typing(slot);
            }
            return self.reply_ok(slot, id);
        }
        let throttle = ms_to_ticks(self.cfg.typing_throttle_ms, self.cfg.tick_ms);
        match conn.typing_in() {
            Some((c, at)) if *c == name && self.tick.wrapping_sub(*at) < throttle => {
                return self.reply_ok(slot, id);
            }
            Some((c, _)) if *c != name => self.stop_typing(slot),
            _ => {}
        }
        let gen = self.conns[slot as usize].gen;
        self.conns[slot as usize].ext_mut().typing = Some((name.clone(), self.tick));
        let timeout = ms_to_ticks(self.cfg.typing_timeout_ms, self.cfg.tick_ms).max(1);
        self.presence
            .typing_expiry
            .push_back((self.tick.wrapping_add(timeout), slot, gen));
        self.push_typing(slot, &name, true);
        self.reply_ok(slot, id);
    }

    /// Stop the connection's typing and tell the channel.
    pub(super) fn stop_typing(&mut self, slot: u32) {
        let typing = self.conns[slot as usize]
            .ext
            .as_mut()
            .and_then(|e| e.typing.take());
        if let Some((channel, _)) = typing {
            self.push_typing(slot, &channel, false);
        }
    }

    /// Stop typing whose last start is older than `typing_timeout_ms`.
    pub(super) fn expire_typing(&mut self) {
        let timeout = ms_to_ticks(self.cfg.typing_timeout_ms, self.cfg.tick_ms).max(1);
        while let Some(&(deadline, slot, gen)) = self.presence.typing_expiry.front() {
            if deadline > self.tick {
                break;
            }
            self.presence.typing_expiry.pop_front();
            let expired = self.conns.get(slot as usize).is_some_and(|c| {
                c.gen == gen
                    && c.typing_in()
                        .is_some_and(|(_, at)| self.tick.wrapping_sub(*at) >= timeout)
            });
            if expired {
                self.stop_typing(slot);
            }
        }
    }

    pub(super) fn push_typing(&mut self, slot: u32, channel: &Arc<str>, typing: bool) {
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        let Some(user) = self.conns[slot as usize]
            .identity
            .as_ref()
            .map(|i| i.user.clone())
        else {
            return;
        };
        #[derive(serde::Serialize)]
        struct Push<'a> {
            push: &'static str,
            channel: &'a str,
            user: &'a str,
            typing: bool,
        }
        let push = Push {
            push: "typing",
            channel,
            user: &user,
            typing,
        };
        self.share_typing(channel, &push);
        let frames = push_frames(needed, &push);
        let publication = Arc::new(Publication {
            channel: channel.clone(),
            position: Position::default(),
            frames,
            created: self.clock.mono,
            droppable: true,
        });
        self.fan_out_publication(publication, local, remote);
    }
}
