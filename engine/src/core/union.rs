//! Presence, typing, inbox cursors and receipts across nodes sharing Redis.
//!
//! Owns what the owner shard of a presence channel tells Redis (each user's
//! connections on this node, whenever they change, for the cluster-wide union), how it
//! answers presence questions then (asked of the union), and pushing the union's
//! events (join when a user's first connection anywhere arrives, leave when the last
//! one anywhere is gone, status) to its subscribers here; and typing indicators sent
//! to the channel's subscribers on the other nodes. While Redis is away, presence and
//! typing are this node's alone (as on a node by itself), and when it is back the node
//! restates every user present here.
//!
//! Does not own the local member lists ([`crate::presence`]), the events' wire form
//! ([`super::presence`]) or Redis.

use std::sync::Arc;

use switchboard_protocol::EVERY_FORMAT;

use super::ShardCore;
use crate::cluster::{ChannelPush, PresenceAsk, PresenceOp};
use crate::mesh::{Answer, EncodedFrames, Publication};
use crate::presence::PresenceList;

impl ShardCore {
    /// Whether presence is the cluster's union (nodes share Redis and it is up).
    #[inline]
    pub(super) fn presence_shared(&self) -> bool {
        self.shared.link.is_some() && self.shared.up
    }

    /// On the owner, after a presence change of `user` on `channel` here: tell the
    /// union what the user's connections here are now.
    pub(super) fn presence_changed(&mut self, channel: &Arc<str>, user: &Arc<str>) {
        if self.shared.link.is_none() {
            return;
        }
        let view = self.presence.members.user_view(channel, user);
        let status: Arc<str> = view.as_ref().map_or_else(
            || self.presence.online.clone(),
            |v| v.status.as_str().into(),
        );
        let view = view.and_then(|v| serde_json::to_string(&v).ok());
        if self.shared.up {
            self.shared.out.presence.push(PresenceOp {
                channel: channel.clone(),
                user: user.clone(),
                view,
                status,
            });
        }
    }

    /// Redis is back: state every user present on the channels this shard owns (the
    /// union then drops what this node no longer has).
    pub(super) fn restate_presence(&mut self) {
        let channels: Vec<Arc<str>> = self.presence.members.channels().cloned().collect();
        for channel in channels {
            for user in self.presence.members.users(&channel) {
                self.presence_changed(&channel, &user);
            }
        }
    }

    /// Ask the union (Redis up); given back to be answered here otherwise.
    pub(super) fn ask_union(
        &mut self,
        channel: Arc<str>,
        members: bool,
        answer: Answer<PresenceList>,
    ) -> Option<Answer<PresenceList>> {
        if !self.presence_shared() {
            return Some(answer);
        }
        self.shared.out.presence_asks.push(PresenceAsk {
            channel,
            members,
            answer,
        });
        None
    }

    /// A typing push for the channel's subscribers on the other nodes.
    pub(super) fn share_typing(&mut self, channel: &Arc<str>, push: &impl serde::Serialize) {
        if !self.presence_shared() {
            return;
        }
        let frames = super::fanout::push_frames(EVERY_FORMAT, push);
        let Some(frames) = all_formats(frames) else {
            return;
        };
        self.shared.out.pushes.push(ChannelPush {
            channel: channel.clone(),
            frames,
        });
    }

    /// A push from another node (typing): to the channel's subscribers here, dropped
    /// first under backpressure.
    pub(super) fn remote_push(&mut self, p: ChannelPush) {
        let (local, remote, needed) = self.audience(&p.channel);
        if needed == 0 {
            return;
        }
        let mut frames = EncodedFrames::default();
        for (i, f) in p.frames.into_iter().enumerate() {
            frames[i] = Some(f);
        }
        let publication = Arc::new(Publication {
            channel: self.audience_name(&p.channel),
            position: Default::default(),
            frames,
            created: self.clock.mono,
            droppable: true,
        });
        self.fan_out_publication(publication, local, remote);
    }
}

impl ShardCore {
    /// On the owner: a cursor or receipt moved here; every node learns it.
    pub(super) fn share_mark(&mut self, m: &crate::journal::MarkRecord) {
        if self.presence_shared() {
            self.shared.out.marks.push(m.clone());
        }
    }

    /// On the owner: a cursor or receipt moved on another node (already merged in
    /// Redis): raised here too, and a receipt pushed to the subscribers here.
    pub(super) fn remote_mark(&mut self, m: crate::journal::MarkRecord) {
        use crate::journal::MarkKind;
        match m.kind {
            MarkKind::Cursor => {
                let to = switchboard_protocol::Position {
                    epoch: m.epoch,
                    offset: m.read,
                };
                self.marks.set_cursor(&m.channel, &m.who, to, m.at_ms);
            }
            MarkKind::Receipt => {
                let moved = self.marks.set_receipt(
                    &m.channel,
                    &m.who,
                    m.epoch,
                    Some(m.delivered),
                    Some(m.read),
                    m.at_ms,
                );
                if let Some(r) = moved {
                    self.push_receipt(&m.channel, &m.who, r);
                }
            }
        }
    }
}

/// Every format's frame, when each was encoded.
fn all_formats(frames: EncodedFrames) -> Option<[bytes::Bytes; switchboard_protocol::FORMATS]> {
    let [a, b, c] = frames;
    Some([a?, b?, c?])
}
