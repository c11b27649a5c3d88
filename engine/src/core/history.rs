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
use crate::history::HistoryRead;
use crate::journal::Durability;
use crate::mesh::{StreamQuery, StreamReply};
use crate::streams::{PageClock, Paged};

impl ShardCore {
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
