//! Which local connections subscribe to which channel, and which other shards care.
//!
//! Owns, for one shard: channel → local subscriber slots (an insertion-ordered set, so
//! fan-out walks a dense array and removal is O(1)), per-format subscriber counts, and
//! the interest other shards announced (bit masks of shards per format). Does not own
//! connections or queues.

use crate::hashing::NameMap;
use std::sync::Arc;

use indexmap::IndexSet;
use switchboard_protocol::{Format, Position, FORMATS};

/// Local subscribers of one channel.
#[derive(Debug, Default)]
pub struct ChannelEntry {
    /// Connection slots, dense for the fan-out loop.
    pub subscribers: IndexSet<u32>,
    /// Subscribers per `Format::index()`.
    per_format: [u32; FORMATS],
    /// With Socket.IO recovery on: the last publication given to the subscribers here
    /// (or the position a subscription started at, if later), with its number in the
    /// shard's delivery log.
    pub last: Option<(u64, Position)>,
}

impl ChannelEntry {
    /// Bit mask of formats with at least one local subscriber.
    pub fn formats(&self) -> u8 {
        let mut mask = 0;
        for (i, &n) in self.per_format.iter().enumerate() {
            mask |= ((n > 0) as u8) << i;
        }
        mask
    }
}

/// Outcome of a subscription change: the shard's format mask before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Formats with local subscribers before the change.
    pub before: u8,
    /// Formats with local subscribers after it.
    pub after: u8,
}

/// The shard's channel index.
#[derive(Debug, Default)]
pub struct ChannelIndex {
    local: NameMap<Arc<str>, ChannelEntry>,
    /// Other shards with subscribers: channel → shard bit mask per format.
    remote: NameMap<Arc<str>, [u64; FORMATS]>,
}

impl ChannelIndex {
    /// Add `slot` to `channel`. `None` if it was already subscribed.
    pub fn subscribe(
        &mut self,
        channel: &str,
        slot: u32,
        format: Format,
    ) -> Option<(Arc<str>, Change)> {
        let (name, entry) = match self.local.get_key_value(channel) {
            Some((k, _)) => {
                let k = k.clone();
                let e = self.local.get_mut(channel).expect("just found");
                (k, e)
            }
            None => {
                let k: Arc<str> = self
                    .remote
                    .get_key_value(channel)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| channel.into());
                (k.clone(), self.local.entry(k).or_default())
            }
        };
        let before = entry.formats();
        if !entry.subscribers.insert(slot) {
            return None;
        }
        entry.per_format[format.index()] += 1;
        let after = entry.formats();
        Some((name, Change { before, after }))
    }

    /// Remove `slot` from `channel`. `None` if it was not subscribed.
    pub fn unsubscribe(&mut self, channel: &str, slot: u32, format: Format) -> Option<Change> {
        let entry = self.local.get_mut(channel)?;
        let before = entry.formats();
        if !entry.subscribers.swap_remove(&slot) {
            return None;
        }
        entry.per_format[format.index()] -= 1;
        let after = entry.formats();
        if entry.subscribers.is_empty() {
            self.local.remove(channel);
        }
        Some(Change { before, after })
    }

    /// Local subscribers of `channel`.
    #[inline]
    pub fn local(&self, channel: &str) -> Option<&ChannelEntry> {
        self.local.get(channel)
    }

    /// Local subscribers of `channel`, to update.
    #[inline]
    pub fn local_mut(&mut self, channel: &str) -> Option<&mut ChannelEntry> {
        self.local.get_mut(channel)
    }

    /// The interned name of `channel`, if anyone (local or remote) subscribes.
    pub fn name(&self, channel: &str) -> Option<Arc<str>> {
        self.local
            .get_key_value(channel)
            .map(|(k, _)| k.clone())
            .or_else(|| self.remote.get_key_value(channel).map(|(k, _)| k.clone()))
    }

    /// Record that shard `shard` has subscribers in `formats` for `channel`.
    pub fn set_remote(&mut self, channel: Arc<str>, shard: u16, formats: u8) {
        let bit = 1u64 << shard;
        let entry = self.remote.entry(channel.clone()).or_insert([0; FORMATS]);
        for (i, mask) in entry.iter_mut().enumerate() {
            if formats & (1 << i) != 0 {
                *mask |= bit;
            } else {
                *mask &= !bit;
            }
        }
        if entry.iter().all(|&m| m == 0) {
            self.remote.remove(&channel);
        }
    }

    /// Other shards with subscribers to `channel`, per format.
    #[inline]
    pub fn remote(&self, channel: &str) -> [u64; FORMATS] {
        self.remote.get(channel).copied().unwrap_or([0; FORMATS])
    }

    /// Channels with local subscribers.
    pub fn local_channels(&self) -> usize {
        self.local.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_masks_follow_subscribers() {
        let mut ix = ChannelIndex::default();
        let (_, c) = ix.subscribe("a", 1, Format::MsgPack).unwrap();
        assert_eq!(
            c,
            Change {
                before: 0,
                after: 1
            }
        );
        assert!(ix.subscribe("a", 1, Format::MsgPack).is_none());
        let (_, c) = ix.subscribe("a", 2, Format::Json).unwrap();
        assert_eq!(
            c,
            Change {
                before: 1,
                after: 3
            }
        );
        assert_eq!(
            ix.unsubscribe("a", 1, Format::MsgPack),
            Some(Change {
                before: 3,
                after: 2
            })
        );
        assert_eq!(ix.unsubscribe("a", 1, Format::MsgPack), None);
        assert_eq!(
            ix.unsubscribe("a", 2, Format::Json),
            Some(Change {
                before: 2,
                after: 0
            })
        );
        assert!(ix.local("a").is_none());
    }

    #[test]
    fn remote_interest() {
        let mut ix = ChannelIndex::default();
        ix.set_remote("a".into(), 3, 0b01);
        ix.set_remote("a".into(), 1, 0b11);
        assert_eq!(ix.remote("a"), [0b1010, 0b0010, 0]);
        assert!(ix.name("a").is_some());
        ix.set_remote("a".into(), 3, 0);
        ix.set_remote("a".into(), 1, 0);
        assert_eq!(ix.remote("a"), [0, 0, 0]);
        assert!(ix.name("a").is_none());
    }
}
