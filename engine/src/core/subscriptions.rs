//! Subscriptions: joining and leaving channels, history and recovery.
//!
//! Owns subscribe and unsubscribe (limits, cross-shard interest rounds so nothing
//! published after the reply is missed), stream questions to the channel's owner and
//! their answers (positions, recovery, inbox backlogs, history), and server-side
//! subscriptions. Does not own the channel index ([`crate::channels`]) or stream
//! storage ([`crate::streams`]).

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::envelope;
use switchboard_protocol::{ErrorCode, Format, Position};

use super::conn::{ConnKey, ConnState};
use super::ShardCore;
use crate::access::Action;
use crate::mesh::{
    PresenceKind, QueryKind, ReplyKind, ShardMsg, StreamQuery, StreamReply, UserSubscription,
};
use crate::metrics::CommandKind;

/// Subscriptions on their way in.
#[derive(Debug, Default)]
pub(super) struct Joining {
    /// Per channel, the round of interest announcements to other shards a new
    /// subscription waits for.
    pub(super) interest: HashMap<Arc<str>, InterestRound>,
    /// Per channel, the connections whose subscribe waits for the owner's answer
    /// (position, recovery): live publications are held back from them meanwhile.
    pub(super) starting: HashMap<Arc<str>, Vec<u32>>,
}

/// Subscribers waiting until every other shard has learned about new interest.
#[derive(Debug, Default)]
pub(super) struct InterestRound {
    /// Acknowledgments still expected.
    pub(super) acks_left: usize,
    /// `(slot, gen, how to answer, recover since)` of subscriptions to answer when
    /// done.
    pub(super) waiters: Vec<(u32, u32, ReplyKind, Option<Position>)>,
}

impl ShardCore {
    /// Subscribe the connection to `channel`; the answer goes as `to` says (a command
    /// reply, or a push for a restored subscription or the inbox).
    pub(super) fn subscribe(
        &mut self,
        slot: u32,
        to: ReplyKind,
        channel: &str,
        since: Option<Position>,
    ) {
        // The server API subscribes whom it wants; everyone else is checked.
        if to != ReplyKind::Server {
            if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
                return self.refuse(slot, to, channel, code, why);
            }
        } else if !envelope::valid_channel(channel) {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::BadRequest,
                "invalid channel name",
            );
        }
        let conn = &self.conns[slot as usize];
        // The server's own channels do not count against the limit.
        let counted = conn.subs.iter().filter(|c| !self.automatic(c)).count();
        if to != ReplyKind::Inbox && counted >= self.cfg.max_subscriptions_per_connection {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::LimitExceeded,
                "too many subscriptions",
            );
        }
        let (format, gen) = (conn.format, conn.gen);
        let Some((name, change)) = self.channels.subscribe(channel, slot, format) else {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::AlreadySubscribed,
                "already subscribed",
            );
        };
        self.conns[slot as usize].subs.push(name.clone());
        if change.before == 0 {
            self.shared_interest(&name);
        }
        if self.tracks_members(&name) {
            let status = self.conns[slot as usize]
                .ext()
                .and_then(|e| e.status.clone());
            let status = status.unwrap_or_else(|| self.presence.online.clone());
            self.report_presence(slot, &name, PresenceKind::Join { status });
        }
        self.joining
            .starting
            .entry(name.clone())
            .or_default()
            .push(slot);
        let others = self.mesh.shards() - 1;
        if change.before != change.after && others > 0 {
            // Answer only once every other shard routes this channel's publications
            // here, so nothing published after the reply can miss this subscriber.
            self.announce(&name, change.after, true);
            let round = self.joining.interest.entry(name).or_default();
            round.acks_left += others;
            round.waiters.push((slot, gen, to, since));
        } else if let Some(round) = self.joining.interest.get_mut(&name) {
            round.waiters.push((slot, gen, to, since));
        } else {
            self.ask_owner(slot, gen, to, name, subscribe_kind(to, since));
        }
    }

    /// An error for a command, or an error push about `channel` for what the server
    /// did on its own (a restored subscription, the inbox).
    pub(super) fn refuse(
        &mut self,
        slot: u32,
        to: ReplyKind,
        channel: &str,
        code: ErrorCode,
        why: &str,
    ) {
        if to == ReplyKind::Resumed && self.conns[slot as usize].format == Format::SocketIo {
            // A restored Socket.IO subscription: the client was told it recovered.
            return self.recovery_incomplete(slot);
        }
        let push = match to {
            ReplyKind::Command(id) => return self.reply_err(slot, id, code, why),
            ReplyKind::Resumed | ReplyKind::Server => "subscribed",
            ReplyKind::Inbox => "inbox",
        };
        #[derive(serde::Serialize)]
        struct Failed<'a> {
            push: &'a str,
            channel: &'a str,
            error: FailedBody<'a>,
        }
        #[derive(serde::Serialize)]
        struct FailedBody<'a> {
            code: u16,
            message: &'a str,
        }
        let body = Failed {
            push,
            channel,
            error: FailedBody {
                code: code as u16,
                message: why,
            },
        };
        self.send_push(slot, &body);
    }

    /// Send a stream question to the channel's owner (answered at once if that is us).
    pub(super) fn ask_owner(
        &mut self,
        slot: u32,
        gen: u32,
        to: ReplyKind,
        channel: Arc<str>,
        kind: QueryKind,
    ) {
        let device = match kind {
            QueryKind::Inbox => self.conns[slot as usize].device().map(Arc::from),
            _ => None,
        };
        let q = StreamQuery {
            channel,
            kind,
            shard: self.id,
            conn: ConnKey { slot, gen },
            to,
            device,
            api: None,
        };
        let owner = self.mesh.home(&q.channel, self.id);
        if owner == self.id {
            if let Some(q) = self.park(q) {
                self.answer_query(q);
            }
        } else {
            self.send_to(owner, ShardMsg::StreamQuery(Box::new(q)));
        }
    }

    /// On the owner: a stream question from another shard or the server API.
    pub(super) fn stream_query(&mut self, q: StreamQuery) {
        if let Some(q) = self.park(q) {
            self.answer_query(q);
        }
    }

    /// Shard `from` has (or no longer has) subscribers to `channel` in `formats`;
    /// with `ack`, a subscription there waits for our acknowledgment.
    pub(super) fn interest(&mut self, channel: Arc<str>, from: u16, formats: u8, ack: bool) {
        self.channels.set_remote(channel.clone(), from, formats);
        self.shared_interest(&channel);
        if ack {
            self.send_to(from, ShardMsg::InterestAck { channel });
        }
    }

    /// Another shard routes `channel` here now; when all have, the subscriptions that
    /// waited ask the owner for their position.
    pub(super) fn interest_acked(&mut self, channel: Arc<str>) {
        let done = match self.joining.interest.get_mut(&channel) {
            Some(round) => {
                round.acks_left = round.acks_left.saturating_sub(1);
                round.acks_left == 0
            }
            None => false,
        };
        if !done {
            return;
        }
        let round = self.joining.interest.remove(&channel).expect("just seen");
        for (slot, gen, to, since) in round.waiters {
            let open = self
                .conns
                .get(slot as usize)
                .is_some_and(|c| c.gen == gen && c.state == ConnState::Open);
            if open {
                let name = channel.clone();
                self.ask_owner(slot, gen, to, name, subscribe_kind(to, since));
            }
        }
    }

    /// On the owner: answer a stream question.
    /// `None` when a history page went to the store, which answers it.
    pub(super) fn answer(&mut self, q: &mut StreamQuery) -> Option<StreamReply> {
        let policy = *self.streams.policy_of(&q.channel);
        let ttl = policy.ttl;
        let (top, recovered, publications, subscribe) = match q.kind {
            QueryKind::Subscribe { since: None } => (
                self.streams.touch(&q.channel, self.tick),
                None,
                Vec::new(),
                true,
            ),
            QueryKind::Subscribe { since: Some(since) } => {
                let r = self.streams.recover(&q.channel, since, self.tick, ttl);
                if !r.recovered && self.recover_from_store(q, since, r.top) {
                    return None;
                }
                (r.top, Some(r.recovered), r.publications, true)
            }
            QueryKind::Inbox => {
                let cursor = q
                    .device
                    .as_deref()
                    .and_then(|d| self.marks.cursor(&q.channel, d));
                let r = self
                    .streams
                    .backlog(&q.channel, cursor, policy.keep, self.tick, ttl);
                // A device away for longer than memory keeps: the store has the rest.
                if let Some(c) = cursor.filter(|_| !r.recovered) {
                    if self.recover_from_store(q, c, r.top) {
                        return None;
                    }
                }
                (r.top, Some(r.recovered), r.publications, true)
            }
            QueryKind::History { page } => return self.answer_page(q, page),
        };
        Some(StreamReply {
            channel: q.channel.clone(),
            conn: q.conn,
            to: q.to,
            subscribe,
            top,
            recovered,
            publications,
            cursor: None,
            refused: None,
        })
    }

    /// On the asking shard: answer the command (or push); a subscription goes live.
    pub(super) fn on_stream_reply(&mut self, r: StreamReply) {
        self.answering = if r.subscribe {
            CommandKind::Subscribe
        } else {
            CommandKind::History
        };
        let slot = r.conn.slot;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.gen != r.conn.gen || conn.state != ConnState::Open {
            return;
        }
        if r.subscribe {
            // Absent if the client unsubscribed meanwhile; the subscribe still gets
            // its answer.
            self.stop_holding(&r.channel, slot);
            if self.recovery.is_some() {
                self.recovery_subscribed(slot, &r.channel, r.top);
            }
        }
        if let (Some((code, why)), ReplyKind::Command(id)) = (&r.refused, r.to) {
            return self.reply_err(slot, id, *code, why);
        }
        if r.to == ReplyKind::Resumed && self.conns[slot as usize].format == Format::SocketIo {
            return self.sio_replay(slot, &r);
        }
        if let ReplyKind::Command(id) = r.to {
            if r.subscribe && r.recovered.is_none() {
                // A plain subscribe: the position the subscription starts after.
                return self.reply_position(slot, id, r.top);
            }
        }
        self.send_stream(slot, &r);
    }

    pub(super) fn history(&mut self, slot: u32, id: u32, channel: &str, kind: QueryKind) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::History) {
            return self.reply_err(slot, id, code, why);
        }
        let gen = self.conns[slot as usize].gen;
        let name = self
            .channels
            .name(channel)
            .unwrap_or_else(|| Arc::from(channel));
        self.ask_owner(slot, gen, ReplyKind::Command(id), name, kind);
    }

    pub(super) fn unsubscribe(&mut self, slot: u32, id: u32, channel: &str) {
        if !self.leave(slot, channel) {
            return self.reply_err(slot, id, ErrorCode::NotSubscribed, "not subscribed");
        }
        self.reply_ok(slot, id);
    }

    /// Take the connection off `channel`; false if it was not subscribed.
    pub(super) fn leave(&mut self, slot: u32, channel: &str) -> bool {
        let format = self.conns[slot as usize].format;
        let Some(change) = self.channels.unsubscribe(channel, slot, format) else {
            return false;
        };
        let subs = &mut self.conns[slot as usize].subs;
        let pos = subs
            .iter()
            .position(|c| &**c == channel)
            .expect("index and conn agree");
        let name = subs.swap_remove(pos);
        // A subscribe still waiting is answered when the owner's reply arrives.
        self.stop_holding(&name, slot);
        if self.recovery.is_some() {
            self.recovery_left(slot, &name);
        }
        if change.before != change.after {
            self.announce(&name, change.after, false);
        }
        if change.after == 0 {
            self.shared_interest(&name);
        }
        if self.tracks_members(&name) {
            self.report_presence(slot, &name, PresenceKind::Leave { linger: false });
        }
        true
    }

    /// The server API subscribes (or unsubscribes) every connection of a user on this
    /// shard (found through the user's personal channel); each is told with a push.
    pub(super) fn user_subscription(&mut self, u: UserSubscription) {
        let slots: Vec<u32> = self
            .users
            .conns
            .get(&*u.user)
            .map(|c| c.slots().to_vec())
            .unwrap_or_default();
        let mut affected = 0;
        for slot in slots {
            let open = self
                .conns
                .get(slot as usize)
                .is_some_and(|c| c.state == ConnState::Open);
            if !open {
                continue;
            }
            if u.join {
                let already = self.conns[slot as usize]
                    .subs
                    .iter()
                    .any(|c| **c == *u.channel);
                if !already {
                    self.subscribe(slot, ReplyKind::Server, &u.channel, u.since);
                    affected += 1;
                }
            } else if self.leave(slot, &u.channel) {
                #[derive(serde::Serialize)]
                struct Left<'a> {
                    push: &'static str,
                    channel: &'a str,
                }

                let push = Left {
                    push: "unsubscribed",
                    channel: &u.channel,
                };
                self.send_push(slot, &push);
                affected += 1;
            }
        }
        if let Some(done) = u.done {
            let _ = done.send(affected);
        }
    }

    /// `slot`'s subscription to `channel` is no longer waiting for the owner.
    pub(super) fn stop_holding(&mut self, channel: &str, slot: u32) {
        if self.joining.starting.is_empty() {
            return;
        }
        if let Some(v) = self.joining.starting.get_mut(channel) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                self.joining.starting.remove(channel);
            }
        }
    }

    pub(super) fn announce(&mut self, channel: &Arc<str>, formats: u8, ack: bool) {
        for shard in 0..self.mesh.shards() as u16 {
            if shard != self.id {
                let msg = ShardMsg::Interest {
                    channel: channel.clone(),
                    from: self.id,
                    formats,
                    ack,
                };
                self.send_to(shard, msg);
            }
        }
    }
}

/// What a subscription asks its channel's owner.
pub(super) fn subscribe_kind(to: ReplyKind, since: Option<Position>) -> QueryKind {
    match to {
        ReplyKind::Inbox => QueryKind::Inbox,
        _ => QueryKind::Subscribe { since },
    }
}
