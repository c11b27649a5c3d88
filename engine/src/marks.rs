//! How far readers got: per-device inbox cursors and per-user receipts.
//!
//! Owns, on a channel's owner shard, the latest cursor of each device on the channel
//! (inboxes) and the latest delivery and read offsets of each user (receipts). Marks
//! only move forward within an epoch; a mark in a newer epoch replaces an older one
//! (the stream restarted, the old offsets mean nothing). Every change is handed to the
//! store with the shard's batch (as a [`MarkRecord`]) and read back at start-up.
//!
//! Does not own who may set them (the shard checks the connection's identity) or the
//! pushes that tell a channel's members (`core`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use switchboard_protocol::Position;

use crate::journal::{MarkKind, MarkRecord};

/// One user's receipt on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Receipt {
    /// Epoch of the offsets.
    pub epoch: u64,
    /// Delivered up to this offset.
    pub delivered: u64,
    /// Read up to this offset.
    pub read: u64,
    /// When it last moved, Unix milliseconds.
    pub at_ms: u64,
}

/// A receipt as the `receipts` command and the server API report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptView {
    /// User id.
    pub user: String,
    /// Epoch of the offsets (16 hex digits).
    pub epoch: String,
    /// Delivered up to this offset.
    pub delivered: u64,
    /// Read up to this offset.
    pub read: u64,
    /// When it last moved, Unix milliseconds.
    pub at: u64,
}

/// One device's place in an inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceCursor {
    /// The device name it connects with.
    pub device: String,
    /// Acknowledged up to this offset (of `epoch`).
    pub offset: u64,
    /// Epoch of the offset (16 hex digits).
    pub epoch: String,
    /// Messages after it, not yet acknowledged (all of them after a new epoch).
    pub pending: u64,
}

/// A user's inbox: its position, its devices' cursors, and what a clear did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxState {
    /// The inbox channel.
    pub channel: String,
    /// Its current epoch (16 hex digits), or empty if it has no stream.
    pub epoch: String,
    /// Its latest offset.
    pub offset: u64,
    /// Each device with a cursor, as it was before any clear.
    pub devices: Vec<DeviceCursor>,
    /// Devices whose cursor a clear moved to the latest offset.
    pub cleared: usize,
}

/// Every receipt of a channel, with the channel's current position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptList {
    /// Channel name.
    pub channel: String,
    /// The channel's current epoch (16 hex digits), or empty if it has no stream.
    pub epoch: String,
    /// The channel's latest offset.
    pub offset: u64,
    /// One per user who sent a receipt, by user id.
    pub receipts: Vec<ReceiptView>,
}

#[derive(Debug, Default)]
struct ChannelMarks {
    cursors: HashMap<Box<str>, Position>,
    receipts: HashMap<Box<str>, Receipt>,
}

/// The marks of the channels one shard owns.
#[derive(Debug, Default)]
pub struct Marks {
    channels: HashMap<Arc<str>, ChannelMarks>,
}

impl Marks {
    /// No marks.
    pub fn new() -> Marks {
        Marks::default()
    }

    /// Restore a mark read back from the store.
    pub fn seed(&mut self, m: MarkRecord) {
        let c = self.channels.entry(m.channel).or_default();
        match m.kind {
            MarkKind::Cursor => {
                c.cursors.insert(
                    m.who,
                    Position {
                        epoch: m.epoch,
                        offset: m.read,
                    },
                );
            }
            MarkKind::Receipt => {
                c.receipts.insert(
                    m.who,
                    Receipt {
                        epoch: m.epoch,
                        delivered: m.delivered,
                        read: m.read,
                        at_ms: m.at_ms,
                    },
                );
            }
        }
    }

    /// Device `device`'s cursor on `channel`.
    pub fn cursor(&self, channel: &str, device: &str) -> Option<Position> {
        self.channels.get(channel)?.cursors.get(device).copied()
    }

    /// Every device's cursor on `channel`, by device name.
    pub fn cursors(&self, channel: &str) -> Vec<(Box<str>, Position)> {
        let mut list: Vec<(Box<str>, Position)> = self
            .channels
            .get(channel)
            .map(|c| c.cursors.iter().map(|(d, p)| (d.clone(), *p)).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Move `device`'s cursor on `channel` to `to` if that is forward (or a newer
    /// epoch). Returns the record to store when it moved.
    pub fn set_cursor(
        &mut self,
        channel: &Arc<str>,
        device: &str,
        to: Position,
        at_ms: u64,
    ) -> Option<MarkRecord> {
        let c = self.channels.entry(channel.clone()).or_default();
        match c.cursors.get_mut(device) {
            Some(p) if p.epoch == to.epoch && p.offset >= to.offset => return None,
            Some(p) => *p = to,
            None => {
                c.cursors.insert(device.into(), to);
            }
        }
        Some(MarkRecord {
            channel: channel.clone(),
            kind: MarkKind::Cursor,
            who: device.into(),
            epoch: to.epoch,
            delivered: to.offset,
            read: to.offset,
            at_ms,
        })
    }

    /// Move `user`'s receipt on `channel` forward (either offset may be absent; read
    /// implies delivered). Returns the new receipt when something moved.
    pub fn set_receipt(
        &mut self,
        channel: &Arc<str>,
        user: &str,
        epoch: u64,
        delivered: Option<u64>,
        read: Option<u64>,
        at_ms: u64,
    ) -> Option<Receipt> {
        let c = match self.channels.get_mut(channel) {
            Some(c) => c,
            None => self.channels.entry(channel.clone()).or_default(),
        };
        // Look up before inserting: the key is allocated only for a user's first
        // receipt on the channel.
        if !c.receipts.contains_key(user) {
            c.receipts.insert(user.into(), Receipt::default());
        }
        let r = c.receipts.get_mut(user).expect("just ensured");
        let mut next = if r.epoch == epoch {
            *r
        } else {
            Receipt {
                epoch,
                ..Receipt::default()
            }
        };
        if let Some(d) = delivered {
            next.delivered = next.delivered.max(d);
        }
        if let Some(rd) = read {
            next.read = next.read.max(rd);
            next.delivered = next.delivered.max(rd);
        }
        if next.epoch == r.epoch && next.delivered == r.delivered && next.read == r.read {
            return None;
        }
        next.at_ms = at_ms;
        *r = next;
        Some(next)
    }

    /// Every receipt of `channel`, by user id.
    pub fn receipts(&self, channel: &str) -> Vec<ReceiptView> {
        let Some(c) = self.channels.get(channel) else {
            return Vec::new();
        };
        let mut out: Vec<ReceiptView> = c
            .receipts
            .iter()
            .map(|(user, r)| ReceiptView {
                user: user.to_string(),
                epoch: Position {
                    epoch: r.epoch,
                    offset: 0,
                }
                .epoch_hex()
                .as_str()
                .to_string(),
                delivered: r.delivered,
                read: r.read,
                at: r.at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward_within_an_epoch() {
        let mut m = Marks::new();
        let ch: Arc<str> = "inbox:bob".into();
        let p = |epoch, offset| Position { epoch, offset };
        assert!(m.set_cursor(&ch, "phone", p(1, 5), 10).is_some());
        assert!(
            m.set_cursor(&ch, "phone", p(1, 3), 11).is_none(),
            "backwards"
        );
        assert_eq!(m.cursor("inbox:bob", "phone"), Some(p(1, 5)));
        let rec = m.set_cursor(&ch, "phone", p(2, 1), 12).expect("new epoch");
        assert_eq!((rec.epoch, rec.read, rec.kind), (2, 1, MarkKind::Cursor));
        assert_eq!(m.cursor("inbox:bob", "laptop"), None);
    }

    #[test]
    fn receipts_merge_and_reset_on_a_new_epoch() {
        let mut m = Marks::new();
        let ch: Arc<str> = "chat:1".into();
        let r = m.set_receipt(&ch, "ann", 1, Some(4), None, 1).unwrap();
        assert_eq!((r.delivered, r.read), (4, 0));
        let r = m.set_receipt(&ch, "ann", 1, None, Some(6), 2).unwrap();
        assert_eq!((r.delivered, r.read), (6, 6), "read implies delivered");
        assert!(m.set_receipt(&ch, "ann", 1, Some(5), Some(2), 3).is_none());
        let r = m.set_receipt(&ch, "ann", 2, Some(1), None, 4).unwrap();
        assert_eq!((r.epoch, r.delivered, r.read), (2, 1, 0));
        m.set_receipt(&ch, "al", 2, None, Some(1), 5);
        let list = m.receipts("chat:1");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].user, "al");
        assert_eq!(list[1].epoch, "0000000000000002");
    }
}
