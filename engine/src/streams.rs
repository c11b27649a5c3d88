//! Channel streams: the position (epoch, offset) of each channel's publications.
//!
//! Every channel has one owner shard ([`owner`], a hash of its name), and only the
//! owner sequences the channel's publications: a publish on another shard is forwarded
//! to it. So offsets rise by exactly one per publication, whichever connection or API
//! call published, with no lock and no shared counter.
//!
//! Owns, on the owner shard, each active channel's epoch, last offset and recent
//! publications (in memory: the last `engine.history_size`, none older than
//! `engine.history_ttl_ms`), which `history` reads and a recovering `subscribe` replays.
//! Does not own persistence. A stream idle for `engine.stream_idle_ms` is forgotten; the
//! next publication starts a new epoch at offset 1, which tells clients that earlier
//! positions of that channel are gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use switchboard_protocol::{Format, Position};

/// One retained publication.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its offset in the stream's epoch.
    pub offset: u64,
    /// Tick it was published at.
    pub tick: u32,
    /// The payload, as published.
    pub data: Bytes,
    /// The publisher's opaque metadata, as published.
    pub meta: Option<Bytes>,
    /// Format of `data`.
    pub format: Format,
}

/// What a recovering subscriber gets.
#[derive(Debug)]
pub struct Recovery {
    /// The stream's latest position.
    pub top: Position,
    /// Whether `publications` are everything after the client's position.
    pub recovered: bool,
    /// The publications after the client's position (empty if not recovered).
    pub publications: Vec<Entry>,
}

/// The shard that sequences `channel` among `shards` shards (FNV-1a of the name).
#[inline]
pub fn owner(channel: &str, shards: usize) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in channel.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as u16
}

#[derive(Debug)]
struct Stream {
    epoch: u64,
    offset: u64,
    /// Tick of the last publication.
    used: u32,
    history: VecDeque<Entry>,
    /// Idempotency keys seen within the dedupe window: the offset each got and when.
    keys: HashMap<Box<str>, (u64, u32)>,
}

/// The streams one shard owns.
#[derive(Debug)]
pub struct Streams {
    map: IndexMap<Arc<str>, Stream>,
    /// Mixed into every new epoch, so epochs differ across shards and restarts.
    seed: u64,
    created: u64,
    /// Where the idle sweep continues.
    cursor: usize,
}

/// A well-mixed 64-bit value from `x` (SplitMix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Streams {
    /// Streams with epochs derived from `seed` (random per process and shard).
    pub fn new(seed: u64) -> Streams {
        Streams {
            map: IndexMap::new(),
            seed,
            created: 0,
            cursor: 0,
        }
    }

    /// Channels with a live stream.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no stream is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The position of a new publication on `channel` at tick `now`.
    ///
    /// Hot path: one hash lookup; an allocation only for a channel's first publication
    /// of an epoch.
    #[inline]
    pub fn next(&mut self, channel: &str, now: u32) -> Position {
        if let Some(s) = self.map.get_mut(channel) {
            s.offset += 1;
            s.used = now;
            return Position {
                epoch: s.epoch,
                offset: s.offset,
            };
        }
        let epoch = self.create(channel, 1, now);
        Position { epoch, offset: 1 }
    }

    fn create(&mut self, channel: &str, offset: u64, now: u32) -> u64 {
        self.created += 1;
        let epoch = mix(self.seed ^ mix(self.created));
        self.map.insert(
            channel.into(),
            Stream {
                epoch,
                offset,
                used: now,
                history: VecDeque::new(),
                keys: HashMap::new(),
            },
        );
        epoch
    }

    /// The current position of `channel`, starting its stream (offset 0) if it has
    /// none, so a subscriber always learns the epoch its offsets will belong to.
    pub fn touch(&mut self, channel: &str, now: u32) -> Position {
        if let Some(p) = self.current(channel) {
            return p;
        }
        let epoch = self.create(channel, 0, now);
        Position { epoch, offset: 0 }
    }

    /// Keep the publication `next` just positioned, within `keep` entries and `ttl`
    /// ticks.
    pub fn retain(&mut self, channel: &str, entry: Entry, keep: usize, ttl: u32) {
        if keep == 0 {
            return;
        }
        let Some(s) = self.map.get_mut(channel) else {
            return;
        };
        let now = entry.tick;
        while s.history.len() >= keep
            || s.history
                .front()
                .is_some_and(|e| now.wrapping_sub(e.tick) > ttl)
        {
            s.history.pop_front();
        }
        s.history.push_back(entry);
    }

    /// Up to `limit` retained publications of `channel` not older than `ttl` ticks:
    /// forward, those after offset `since`; reverse, those before `since` (or the
    /// newest when `since` is 0), newest first. With the stream's latest position.
    pub fn history(
        &mut self,
        channel: &str,
        since: u64,
        limit: usize,
        reverse: bool,
        now: u32,
        ttl: u32,
    ) -> (Position, Vec<Entry>) {
        let top = self.touch(channel, now);
        let s = &self.map[channel];
        let fresh = |e: &&Entry| now.wrapping_sub(e.tick) <= ttl;
        let out = if reverse {
            s.history
                .iter()
                .rev()
                .filter(|e| since == 0 || e.offset < since)
                .filter(fresh)
                .take(limit)
                .cloned()
                .collect()
        } else {
            s.history
                .iter()
                .filter(|e| e.offset > since)
                .filter(fresh)
                .take(limit)
                .cloned()
                .collect()
        };
        (top, out)
    }

    /// What a subscriber that last saw `since` missed: every publication after it, if
    /// the stream is in the same epoch and still retains them all; otherwise nothing,
    /// and `recovered` is false.
    pub fn recover(&mut self, channel: &str, since: Position, now: u32, ttl: u32) -> Recovery {
        let top = self.touch(channel, now);
        let s = &self.map[channel];
        let missed = top.offset.saturating_sub(since.offset);
        let first_fresh = s
            .history
            .iter()
            .find(|e| now.wrapping_sub(e.tick) <= ttl)
            .map(|e| e.offset);
        let complete = since.epoch == top.epoch
            && since.offset <= top.offset
            && (missed == 0 || first_fresh.is_some_and(|first| first <= since.offset + 1));
        if !complete {
            return Recovery {
                top,
                recovered: false,
                publications: Vec::new(),
            };
        }
        let publications = s
            .history
            .iter()
            .filter(|e| e.offset > since.offset)
            .cloned()
            .collect();
        Recovery {
            top,
            recovered: true,
            publications,
        }
    }

    /// Take back the position `next` just gave `channel` (the publication was refused
    /// before anyone saw it).
    pub fn undo(&mut self, channel: &str) {
        if let Some(s) = self.map.get_mut(channel) {
            if s.offset > 1 || !s.history.is_empty() {
                s.offset -= 1;
            } else {
                self.map.swap_remove(channel);
            }
        }
    }

    /// The position a publication with idempotency `key` already got, if it was
    /// published within the last `window` ticks in this epoch.
    pub fn dedupe(&self, channel: &str, key: &str, now: u32, window: u32) -> Option<Position> {
        let s = self.map.get(channel)?;
        let &(offset, tick) = s.keys.get(key)?;
        (now.wrapping_sub(tick) <= window).then_some(Position {
            epoch: s.epoch,
            offset,
        })
    }

    /// Remember that the publication at `offset` carried `key`.
    pub fn remember(&mut self, channel: &str, key: &str, offset: u64, now: u32) {
        if let Some(s) = self.map.get_mut(channel) {
            s.keys.insert(key.into(), (offset, now));
        }
    }

    /// The current position of `channel` (offset 0 in a fresh epoch if it has none).
    pub fn current(&self, channel: &str) -> Option<Position> {
        self.map.get(channel).map(|s| Position {
            epoch: s.epoch,
            offset: s.offset,
        })
    }

    /// Forget up to `budget` streams' worth of checking: those unused for `idle`
    /// ticks at tick `now` are dropped. Returns how many were dropped.
    /// Expired idempotency keys (older than `window` ticks) of the streams checked are
    /// dropped too.
    pub fn sweep(&mut self, now: u32, idle: u32, window: u32, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.map.len()) {
            if self.cursor >= self.map.len() {
                self.cursor = 0;
            }
            let s = &mut self.map[self.cursor];
            if now.wrapping_sub(s.used) >= idle {
                self.map.swap_remove_index(self.cursor);
                dropped += 1;
            } else {
                if !s.keys.is_empty() {
                    s.keys
                        .retain(|_, &mut (_, t)| now.wrapping_sub(t) <= window);
                }
                self.cursor += 1;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_rise_by_one_and_epochs_differ() {
        let mut s = Streams::new(42);
        let a1 = s.next("a", 0);
        let a2 = s.next("a", 1);
        let b1 = s.next("b", 1);
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch);
        assert_eq!(s.current("a"), Some(a2));
        assert_ne!(Streams::new(43).next("a", 0).epoch, a1.epoch);
    }

    #[test]
    fn idle_streams_are_forgotten_and_restart_in_a_new_epoch() {
        let mut s = Streams::new(7);
        let old = s.next("quiet", 0);
        s.next("busy", 0);
        s.next("busy", 90);
        assert_eq!(s.sweep(100, 50, 50, 10), 1);
        assert_eq!(s.len(), 1);
        assert!(s.current("quiet").is_none());
        let new = s.next("quiet", 101);
        assert_eq!(new.offset, 1);
        assert_ne!(
            new.epoch, old.epoch,
            "a new epoch says earlier positions are gone"
        );
        assert_eq!(s.current("busy").unwrap().offset, 2);
    }

    fn entry(offset: u64, tick: u32) -> Entry {
        Entry {
            offset,
            tick,
            data: Bytes::from(offset.to_string()),
            meta: None,
            format: Format::Json,
        }
    }

    #[test]
    fn history_keeps_by_count_and_age_and_recovery_is_all_or_nothing() {
        let mut s = Streams::new(1);
        let e = s.touch("c", 0);
        assert_eq!(
            e.offset, 0,
            "a subscriber learns the epoch before any publication"
        );
        for t in 0..10u32 {
            let p = s.next("c", t);
            assert_eq!(p.epoch, e.epoch);
            s.retain("c", entry(p.offset, t), 5, 100);
        }
        let (top, h) = s.history("c", 0, 100, false, 10, 100);
        assert_eq!(top.offset, 10);
        assert_eq!(
            h.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [6, 7, 8, 9, 10]
        );
        let (_, h) = s.history("c", 0, 2, true, 10, 100);
        assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [10, 9]);
        let (_, h) = s.history("c", 9, 2, true, 10, 100);
        assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [8, 7]);
        let (_, h) = s.history("c", 7, 2, false, 10, 100);
        assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [8, 9]);

        let ok = s.recover(
            "c",
            Position {
                epoch: e.epoch,
                offset: 5,
            },
            10,
            100,
        );
        assert!(ok.recovered);
        assert_eq!(ok.publications.len(), 5);
        let up_to_date = s.recover("c", top, 10, 100);
        assert!(up_to_date.recovered && up_to_date.publications.is_empty());
        let too_old = s.recover(
            "c",
            Position {
                epoch: e.epoch,
                offset: 4,
            },
            10,
            100,
        );
        assert!(!too_old.recovered && too_old.publications.is_empty());
        let other_epoch = s.recover(
            "c",
            Position {
                epoch: e.epoch ^ 1,
                offset: 9,
            },
            10,
            100,
        );
        assert!(!other_epoch.recovered);
        assert_eq!(other_epoch.top, top);
        // Age: at tick 108 entries from ticks 5..7 are older than 100 ticks.
        let (_, h) = s.history("c", 0, 100, false, 108, 100);
        assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [9, 10]);
        assert!(
            !s.recover(
                "c",
                Position {
                    epoch: e.epoch,
                    offset: 6
                },
                108,
                100
            )
            .recovered
        );
        assert!(
            s.recover(
                "c",
                Position {
                    epoch: e.epoch,
                    offset: 8
                },
                108,
                100
            )
            .recovered
        );
    }

    #[test]
    fn owners_spread_and_are_stable() {
        let mut counts = [0; 4];
        for i in 0..4000 {
            counts[owner(&format!("room:{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner("room:1", 4), owner("room:1", 4));
        assert_eq!(owner("anything", 1), 0);
    }
}
