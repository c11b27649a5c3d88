//! The memory budget of one shard's retained publications, across all its channels.
//!
//! Owns the byte count of every retained publication (payload, metadata and the fixed
//! cost of keeping it) and the order they were retained in, oldest first, so the
//! shard can evict the oldest publication of *any* channel when the budget is spent.
//! Does not own the publications (each stream's history does) and never removes one
//! itself: [`super::Streams`] asks it which to evict and tells it what it dropped.
//!
//! The order is kept lazily: a publication dropped by its stream (by count, age or a
//! forgotten stream) stays in the order until it reaches the front, where it is
//! recognised as gone and skipped; the order is compacted when stale entries
//! outnumber live ones. A stream only ever loses its *oldest* publication, so what it
//! keeps is always a contiguous run up to its top, and recovery stays exact.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Entry;

/// What keeping one publication costs besides its payload and metadata: the entry,
/// its slot in the order, and the allocator's headers of the two payload buffers.
pub(super) const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Entry>() + std::mem::size_of::<(Arc<str>, u64)>() + 32;

/// The bytes one retained publication counts for.
pub(super) fn cost(e: &Entry) -> usize {
    ENTRY_OVERHEAD + e.data.len() + e.meta.as_ref().map_or(0, |m| m.len())
}

/// Retained bytes and their order (see the module doc).
#[derive(Debug)]
pub(super) struct HistoryBudget {
    /// Most bytes retained at once; 0 = no limit.
    limit: usize,
    /// Bytes retained now.
    used: usize,
    /// Publications retained now.
    live: usize,
    /// Channel and offset of every retained publication, oldest first (with stale
    /// ones, see the module doc).
    order: VecDeque<(Arc<str>, u64)>,
    /// Publications evicted for the budget since start.
    evicted: u64,
    /// Bytes of publications no longer retained, ever (expired, pushed out, evicted,
    /// forgotten): what the allocator got back, for returning it to the system.
    freed: u64,
}

impl HistoryBudget {
    pub(super) fn new(limit: usize) -> HistoryBudget {
        HistoryBudget {
            limit,
            used: 0,
            live: 0,
            order: VecDeque::new(),
            evicted: 0,
            freed: 0,
        }
    }

    pub(super) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// A publication of `channel` was retained. Hot path: a push onto a ring (an atomic
    /// increment for the name), no allocation once the ring has grown.
    #[inline]
    pub(super) fn kept(&mut self, channel: &Arc<str>, e: &Entry) {
        self.used += cost(e);
        self.live += 1;
        self.order.push_back((channel.clone(), e.offset));
    }

    /// A retained publication changed size in place (redacted): it now costs `after`
    /// instead of `before`.
    pub(super) fn resized(&mut self, before: usize, after: usize) {
        self.used = self.used - before + after;
    }

    /// A retained publication was dropped (by count, age, eviction or a forgotten
    /// stream).
    #[inline]
    pub(super) fn dropped(&mut self, e: &Entry) {
        let c = cost(e);
        self.used -= c;
        self.freed += c as u64;
        self.live -= 1;
    }

    /// Whether more is retained than the budget allows.
    #[inline]
    pub(super) fn over(&self) -> bool {
        self.limit != 0 && self.used > self.limit
    }

    /// The oldest entry of the order, taken off it: the channel and offset to evict
    /// if that stream still holds it at its front. `None` when the order is empty.
    pub(super) fn oldest(&mut self) -> Option<(Arc<str>, u64)> {
        self.order.pop_front()
    }

    pub(super) fn count_eviction(&mut self) {
        self.evicted += 1;
    }

    /// Whether stale entries outnumber live ones enough to compact the order.
    pub(super) fn wants_compaction(&self) -> bool {
        self.order.len() > 2 * self.live + 1024
    }

    /// Keep only the order's entries for which `live` holds, in their order.
    pub(super) fn compact(&mut self, mut live: impl FnMut(&str, u64) -> bool) {
        self.order.retain(|(c, o)| live(c, *o));
        self.order.shrink_to(2 * self.order.len().max(512));
    }

    pub(super) fn used(&self) -> usize {
        self.used
    }

    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Bytes no longer retained, since the start.
    pub(super) fn freed(&self) -> u64 {
        self.freed
    }
}
