//! History pages on the owner shard: answered from the publications a stream keeps in
//! memory when they hold the whole page, otherwise handed to the store.
//!
//! Memory keeps a stream's newest publications (`history_size`, `history_ttl_ms`); a
//! stored namespace keeps far more on disk. A page is answered here when memory holds
//! every publication its bounds could select — the bounds start at or after the oldest
//! one kept (by offset, or by time: times are the stream's ticks turned into Unix
//! milliseconds, to a tick), memory holds the epoch from its first offset, or a page
//! newest first is already full — and is read from the store otherwise. A memory-only
//! namespace answers everything here: what memory lost is gone.
//!
//! Owns that decision and the memory page. Does not own reading the store (the control
//! plane, through [`crate::history::HistoryRead`]) or the permission check (the asking
//! connection's shard).

use switchboard_protocol::history::Page;
use switchboard_protocol::Position;

use super::{Entry, Streams};

/// Where a page is answered from.
#[derive(Debug)]
pub enum Paged {
    /// From memory: the page, and whether another follows.
    Memory {
        /// The stream's latest position.
        top: Position,
        /// The publications, in the page's order.
        entries: Vec<Entry>,
        /// Another page follows (in memory or the store).
        more: bool,
    },
    /// From the store: the page (with its epoch named) and the stream's position.
    Store {
        /// The stream's latest position.
        top: Position,
        /// The page, its epoch named.
        page: Page,
        /// The kept publications within the page's bounds, oldest first (those not yet
        /// stored, of an `async` namespace, are only here).
        kept: Vec<Entry>,
    },
    /// Refused: the page's bounds do not fit the stream.
    Refused(String),
}

/// The shard's clock, to place kept publications in time.
#[derive(Debug, Clone, Copy)]
pub struct PageClock {
    /// The current tick.
    pub now: u32,
    /// Wall-clock time of the current tick, Unix milliseconds.
    pub now_ms: u64,
    /// Milliseconds per tick.
    pub tick_ms: u64,
}

impl PageClock {
    /// When a publication kept at `tick` was sequenced, to a tick.
    fn ms_of(&self, tick: u32) -> u64 {
        let age = u64::from(self.now.wrapping_sub(tick)) * self.tick_ms;
        self.now_ms.saturating_sub(age)
    }
}

impl Streams {
    /// Answer `page` of `channel` from memory, or say it needs the store (`stored`: the
    /// channel's namespace is stored). Kept publications older than `ttl` ticks do not
    /// count.
    pub fn page(
        &mut self,
        channel: &str,
        page: &Page,
        stored: bool,
        clock: PageClock,
        ttl: u32,
    ) -> Paged {
        let top = self.touch(channel, clock.now);
        let mut page = *page;
        match page.epoch {
            Some(e) if e != top.epoch && stored => {
                return Paged::Store {
                    top,
                    page,
                    kept: Vec::new(),
                }
            }
            Some(e) if e != top.epoch => {
                return Paged::Refused(format!(
                    "epoch {:016x} is not the channel's; it is {}",
                    e,
                    top.epoch_hex().as_str()
                ))
            }
            _ => page.epoch = Some(top.epoch),
        }
        if page.after > top.offset {
            return Paged::Refused(format!(
                "'after' {} is beyond the channel's latest offset {}",
                page.after, top.offset
            ));
        }
        if page.before.is_some_and(|b| b > top.offset + 1) {
            return Paged::Refused(format!(
                "'before' {} is beyond the channel's next offset {}",
                page.before.unwrap_or(0),
                top.offset + 1
            ));
        }
        if page.is_empty_range() {
            return Paged::Memory {
                top,
                entries: Vec::new(),
                more: false,
            };
        }
        let s = &self.map[channel];
        let fresh = |e: &Entry| clock.now.wrapping_sub(e.tick) <= ttl;
        let oldest = s.history.iter().find(|e| fresh(e));
        let floor = oldest.map_or(top.offset + 1, |e| e.offset);
        // Every publication the bounds could select is kept: memory holds the epoch
        // from its start, or the bounds begin after the oldest kept (stored times never
        // go back, so one older than the oldest kept is older than all of them).
        let from_floor = !stored
            || floor <= 1
            || page.after + 1 >= floor
            || page.from_ms.is_some_and(|from| {
                oldest.is_some_and(|e| clock.ms_of(e.tick) + clock.tick_ms < from)
            });
        let within =
            |e: &&Entry| fresh(e) && page.admits(e.offset) && page.admits_time(clock.ms_of(e.tick));
        let limit = page.limit as usize;
        let to_store = |page| Paged::Store {
            top,
            page,
            kept: s.history.iter().filter(within).cloned().collect(),
        };
        if !page.reverse && !from_floor {
            return to_store(page);
        }
        let mut entries: Vec<Entry> = if page.reverse {
            s.history
                .iter()
                .rev()
                .filter(within)
                .take(limit + 1)
                .cloned()
                .collect()
        } else {
            s.history
                .iter()
                .filter(within)
                .take(limit + 1)
                .cloned()
                .collect()
        };
        if entries.len() < limit && !from_floor {
            return to_store(page);
        }
        let more = entries.len() > limit || (page.reverse && !from_floor);
        entries.truncate(limit);
        Paged::Memory { top, entries, more }
    }
}
