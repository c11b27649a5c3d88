//! History pages on the owner shard: from memory, or handed to the store.
//!
//! Owns turning the streams' decision ([`crate::streams::Streams::page`]) into an
//! answer: a memory page with its cursor, a refusal, or a [`HistoryRead`] on the
//! control plane's queue (refused as overloaded or unavailable when that queue cannot
//! take it). Does not own the permission check (the asking shard, before it asked) or
//! reading the store.

use crossbeam_channel::TrySendError;
use switchboard_protocol::history::Page;
use switchboard_protocol::ErrorCode;

use super::ShardCore;
use crate::auth::ControlRequest;
use crate::history::{HistoryRead, Recovered};
use crate::journal::Durability;
use crate::mesh::{StreamQuery, StreamReply};
use crate::streams::{PageClock, Paged};

/// Most publications a recovering subscription may be missing for the store to supply
/// them in its answer (beyond: `recovered: false`, and the client pages `history`).
const RECOVER_FROM_STORE: u64 = 10_000;
/// Reads of one recovery at most (each covers what was published during the one
/// before, when that outran memory); then `recovered: false`.
const MAX_RECOVERY_READS: u8 = 8;

impl ShardCore {
    /// On the owner: a subscription recovering from `since` missed more than memory
    /// keeps; ask the store for the rest when the namespace is stored and the gap is at
    /// most [`RECOVER_FROM_STORE`]. Whether it went (the store's answer comes back here,
    /// [`ShardCore::recovered_from_store`]).
    pub(super) fn recover_from_store(
        &mut self,
        q: &mut StreamQuery,
        since: switchboard_protocol::Position,
        top: switchboard_protocol::Position,
    ) -> bool {
        let policy = *self.streams.policy_of(&q.channel);
        let missed = top.offset.saturating_sub(since.offset);
        if policy.durability == Durability::None
            || since.epoch != top.epoch
            || missed == 0
            || missed > RECOVER_FROM_STORE
        {
            return false;
        }
        let page = Page {
            epoch: Some(top.epoch),
            after: since.offset,
            before: Some(top.offset + 1),
            limit: missed as u32,
            ..Page::default()
        };
        let read = HistoryRead {
            channel: q.channel.clone(),
            page,
            top,
            kept: self.streams.kept_after(&q.channel, since.offset),
            shard: q.shard,
            conn: q.conn,
            to: q.to,
            api: q.api.take(),
            recovery: true,
            prior: Vec::new(),
            round: 1,
        };
        match self
            .control
            .try_send(ControlRequest::History(Box::new(read)))
        {
            Ok(()) => true,
            Err(TrySendError::Full(ControlRequest::History(read)))
            | Err(TrySendError::Disconnected(ControlRequest::History(read))) => {
                q.api = read.api;
                false
            }
            Err(_) => false,
        }
    }

    /// On the owner: the store's part of a recovery is back; add what was sequenced
    /// since (from memory) and answer the subscription, before anything published
    /// later reaches its shard.
    pub(super) fn recovered_from_store(&mut self, r: Recovered) {
        let Recovered {
            mut read,
            entries: read_now,
            mut complete,
        } = r;
        let mut entries = std::mem::take(&mut read.prior);
        entries.extend(read_now);
        let ttl = self.streams.policy_of(&read.channel).ttl;
        let then = read.top;
        let now = self.streams.recover(&read.channel, then, self.tick, ttl);
        if now.recovered {
            entries.extend(now.publications);
        } else if complete && now.top.epoch == then.epoch && read.round < MAX_RECOVERY_READS {
            // More was published during the read than memory keeps: read that too.
            read.page.after = then.offset;
            read.page.before = Some(now.top.offset + 1);
            read.page.limit = (now.top.offset - then.offset).min(u64::from(u32::MAX)) as u32;
            read.top = now.top;
            read.kept = self.streams.kept_after(&read.channel, then.offset);
            read.prior = entries;
            read.round += 1;
            match self
                .control
                .try_send(ControlRequest::History(Box::new(read)))
            {
                Ok(()) => return,
                Err(TrySendError::Full(ControlRequest::History(back)))
                | Err(TrySendError::Disconnected(ControlRequest::History(back))) => {
                    read = *back;
                    entries = Vec::new();
                    complete = false;
                }
                Err(_) => return,
            }
        } else {
            complete = false;
        }
        if !complete {
            entries.clear();
        }
        let reply = StreamReply {
            channel: read.channel,
            conn: read.conn,
            to: read.to,
            subscribe: true,
            top: now.top,
            recovered: Some(complete),
            publications: entries,
            cursor: None,
            refused: None,
        };
        self.route_reply(read.shard, read.api, reply);
    }

    /// On the owner: answer `page` of `q`'s channel from memory, or hand it to the
    /// store (`None`: the store answers; the server API's reply channel went with it).
    pub(super) fn answer_page(&mut self, q: &mut StreamQuery, page: Page) -> Option<StreamReply> {
        let policy = *self.streams.policy_of(&q.channel);
        let stored = policy.durability != Durability::None;
        let clock = PageClock {
            now: self.tick,
            now_ms: self.clock.unix_ms,
            tick_ms: self.cfg.tick_ms,
        };
        let reply = |top, publications, cursor, refused| StreamReply {
            channel: q.channel.clone(),
            conn: q.conn,
            to: q.to,
            subscribe: false,
            top,
            recovered: None,
            publications,
            cursor,
            refused,
        };
        match self
            .streams
            .page(&q.channel, &page, stored, clock, policy.ttl)
        {
            Paged::Memory { top, entries, more } => {
                let cursor = more.then(|| {
                    let last = entries.last().map_or(page.after, |e| e.offset);
                    let next = page.next(top.epoch, last);
                    Box::from(next.cursor(&q.channel))
                });
                Some(reply(top, entries, cursor, None))
            }
            Paged::Refused(why) => {
                let top = self.streams.touch(&q.channel, self.tick);
                Some(reply(
                    top,
                    Vec::new(),
                    None,
                    Some((ErrorCode::BadRequest, why.into())),
                ))
            }
            Paged::Store { top, page, kept } => {
                let read = HistoryRead {
                    channel: q.channel.clone(),
                    page,
                    top,
                    kept,
                    shard: q.shard,
                    conn: q.conn,
                    to: q.to,
                    api: q.api.take(),
                    recovery: false,
                    prior: Vec::new(),
                    round: 0,
                };
                let (back, code, why) = match self
                    .control
                    .try_send(ControlRequest::History(Box::new(read)))
                {
                    Ok(()) => return None,
                    Err(TrySendError::Full(back)) => (
                        back,
                        ErrorCode::Overloaded,
                        "the store's reader is busy, retry",
                    ),
                    Err(TrySendError::Disconnected(back)) => (
                        back,
                        ErrorCode::Unavailable,
                        "the store's reader has stopped",
                    ),
                };
                if let ControlRequest::History(read) = back {
                    q.api = read.api;
                }
                Some(reply(top, Vec::new(), None, Some((code, why.into()))))
            }
        }
    }
}
