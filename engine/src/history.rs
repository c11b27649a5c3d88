//! The seam between a channel's owner shard and the store for history pages that
//! memory cannot answer.
//!
//! Owns [`HistoryRead`]: what the owner hands the control plane when a page reaches
//! before the publications it keeps (or into an older epoch) of a stored namespace, and
//! how the answer gets back to whoever asked — the asking connection's shard, or the
//! server API's waiting request. Does not own deciding that (the owner's streams, see
//! [`crate::streams::Streams::page`]) or reading the store (the control plane's reader).

use std::sync::Arc;

use switchboard_protocol::history::Page;
use switchboard_protocol::{ErrorCode, Position};

use crate::core::ConnKey;
use crate::mesh::{ReplyKind, ShardMsg, StreamReply};
use crate::streams::Entry;

/// A history page for the store to read, and where its answer goes.
#[derive(Debug)]
pub struct HistoryRead {
    /// Channel name.
    pub channel: Arc<str>,
    /// The page; its epoch is always named.
    pub page: Page,
    /// The channel's latest position on its owner.
    pub top: Position,
    /// What the owner keeps in memory within the page's bounds, oldest first: the
    /// newest publications, some perhaps not yet stored.
    pub kept: Vec<Entry>,
    /// Shard of the asking connection.
    pub shard: u16,
    /// The asking connection.
    pub conn: ConnKey,
    /// How the answer reaches it.
    pub to: ReplyKind,
    /// For the server API: where the answer goes instead of a connection.
    pub api: Option<tokio::sync::oneshot::Sender<StreamReply>>,
    /// A recovering subscription's missed publications (`page` from its position to
    /// `top`): the answer goes back to the owner ([`Recovered`]), which adds what it
    /// sequenced meanwhile and replies, in order with what it publishes after.
    pub recovery: bool,
    /// For a recovery: what earlier reads of it returned, and how many reads so far
    /// (the owner reads again when more was published during a read than memory keeps).
    pub prior: Vec<Entry>,
    /// Reads of this recovery so far.
    pub round: u8,
}

/// What the store read for a recovering subscription, on its way back to the owner.
#[derive(Debug)]
pub struct Recovered {
    /// The read, as the owner handed it over.
    pub read: HistoryRead,
    /// The publications after the subscriber's position up to `read.top`.
    pub entries: Vec<Entry>,
    /// Whether they are all of them (none pruned or lost).
    pub complete: bool,
}

impl HistoryRead {
    /// The answer with the page read: `top` is the position of the page's epoch (the
    /// channel's latest for the current epoch), `more` whether another page follows.
    pub fn answer(self, top: Position, entries: Vec<Entry>, more: bool) -> Answer {
        let cursor = more.then(|| {
            let last = entries.last().map_or(
                if self.page.reverse {
                    self.page.before.unwrap_or(top.offset + 1)
                } else {
                    self.page.after
                },
                |e| e.offset,
            );
            Box::from(self.page.next(top.epoch, last).cursor(&self.channel))
        });
        let reply = StreamReply {
            channel: self.channel.clone(),
            conn: self.conn,
            to: self.to,
            subscribe: false,
            top,
            recovered: None,
            publications: entries,
            cursor,
            refused: None,
        };
        self.deliver(reply)
    }

    /// The answer refusing the page with `code` and `why`.
    pub fn refuse(self, code: ErrorCode, why: String) -> Answer {
        let reply = StreamReply {
            channel: self.channel.clone(),
            conn: self.conn,
            to: self.to,
            subscribe: false,
            top: self.top,
            recovered: None,
            publications: Vec::new(),
            cursor: None,
            refused: Some((code, why.into())),
        };
        self.deliver(reply)
    }

    fn deliver(self, reply: StreamReply) -> Answer {
        match self.api {
            Some(tx) => {
                let _ = tx.send(reply);
                Answer::Delivered
            }
            None => Answer::ToShard(self.shard, ShardMsg::StreamReply(Box::new(reply))),
        }
    }
}

impl HistoryRead {
    /// The store's answer for a recovering subscription, for its channel's owner:
    /// complete when `entries` run without a gap from the page's start to `top`.
    pub fn recovered(self, entries: Vec<Entry>) -> Recovered {
        let from = self.page.after + 1;
        let complete = entries.len() as u64 == self.top.offset.saturating_sub(self.page.after)
            && entries.first().is_none_or(|e| e.offset == from)
            && entries
                .iter()
                .enumerate()
                .all(|(i, e)| e.offset == from + i as u64);
        Recovered {
            read: self,
            entries,
            complete,
        }
    }
}

/// Where a [`HistoryRead`]'s answer goes.
#[derive(Debug)]
pub enum Answer {
    /// Handed to the server API's waiting request.
    Delivered,
    /// To be sent to this shard (patiently: its inbox may be full for a moment).
    ToShard(u16, ShardMsg),
}
