//! Channel streams: the position (epoch, offset) of each channel's publications.
//!
//! Every channel has one owner shard ([`owner`], a hash of its name), and only the
//! owner sequences the channel's publications: a publish on another shard is forwarded
//! to it. So offsets rise by exactly one per publication, whichever connection or API
//! call published, with no lock and no shared counter.
//!
//! Owns, on the owner shard, each active channel's epoch and last offset. Does not own
//! history or persistence (a later layer keeps publications by position). A stream idle
//! for `engine.stream_idle_ms` is forgotten; the next publication starts a new epoch at
//! offset 1, which tells clients that earlier positions of that channel are gone.

use std::sync::Arc;

use indexmap::IndexMap;
use switchboard_protocol::Position;

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

#[derive(Debug, Clone, Copy)]
struct Stream {
    epoch: u64,
    offset: u64,
    /// Tick of the last publication.
    used: u32,
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
        self.created += 1;
        let epoch = mix(self.seed ^ mix(self.created));
        self.map.insert(
            channel.into(),
            Stream {
                epoch,
                offset: 1,
                used: now,
            },
        );
        Position { epoch, offset: 1 }
    }

    /// Take back the position `next` just gave `channel` (the publication was refused
    /// before anyone saw it).
    pub fn undo(&mut self, channel: &str) {
        if let Some(s) = self.map.get_mut(channel) {
            if s.offset > 1 {
                s.offset -= 1;
            } else {
                self.map.swap_remove(channel);
            }
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
    pub fn sweep(&mut self, now: u32, idle: u32, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.map.len()) {
            if self.cursor >= self.map.len() {
                self.cursor = 0;
            }
            let used = self.map[self.cursor].used;
            if now.wrapping_sub(used) >= idle {
                self.map.swap_remove_index(self.cursor);
                dropped += 1;
            } else {
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
        assert_eq!(s.sweep(100, 50, 10), 1);
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
