//! Edits and deletions applied to what a stream keeps, so history served from memory
//! shows each publication as it is now.
//!
//! Owns looking a kept publication up by offset and applying a revision to it. Does
//! not own checking who may revise (the owner shard's `core::revisions`) or the store's
//! copy (the control plane folds revisions into pages it reads).

use bytes::Bytes;
use switchboard_protocol::{Format, Revised, Revision};

use super::{budget, Entry, Streams};

impl Streams {
    /// The publication at `offset` of `channel`, if memory keeps it.
    pub fn kept(&self, channel: &str, offset: u64) -> Option<&Entry> {
        let s = self.map.get(channel)?;
        let first = s.history.front()?.offset;
        let e = s.history.get(offset.checked_sub(first)? as usize)?;
        // Offsets are contiguous in what a stream keeps; checked all the same.
        (e.offset == offset).then_some(e)
    }

    /// The publications `channel` keeps after `offset`, oldest first.
    pub fn kept_after(&self, channel: &str, offset: u64) -> Vec<Entry> {
        self.map.get(channel).map_or(Vec::new(), |s| {
            s.history
                .iter()
                .filter(|e| e.offset > offset)
                .cloned()
                .collect()
        })
    }

    /// Apply `rev` (stored at `at_ms`, with the revision's `data`, `meta` and format)
    /// to the publication it targets, if memory keeps it: an edit replaces its data
    /// (and meta, when the edit has one); a deletion leaves data `null` and no meta.
    pub fn apply_revision(
        &mut self,
        channel: &str,
        rev: Revision,
        format: Format,
        data: &Bytes,
        meta: Option<&Bytes>,
        at_ms: u64,
    ) {
        let Some(s) = self.map.get_mut(channel) else {
            return;
        };
        let Some(first) = s.history.front().map(|e| e.offset) else {
            return;
        };
        let Some(e) = rev
            .target
            .checked_sub(first)
            .and_then(|i| s.history.get_mut(i as usize))
            .filter(|e| e.offset == rev.target)
        else {
            return;
        };
        let before = budget::cost(e);
        if rev.delete {
            e.data = match e.format {
                Format::MsgPack => Bytes::from_static(b"\xc0"),
                Format::Json | Format::SocketIo => Bytes::from_static(b"null"),
            };
            e.meta = None;
        } else {
            if let Some(m) = meta {
                e.meta = Some(m.clone());
            } else if e.format != format {
                // The kept meta is in the original's format: gone rather than misread.
                e.meta = None;
            }
            e.format = format;
            e.data = data.clone();
        }
        e.revised = Some(Revised {
            at_ms,
            deleted: rev.delete,
        });
        let after = budget::cost(e);
        s.bytes = s.bytes - before + after;
        self.budget.resized(before, after);
    }
}
