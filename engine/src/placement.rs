//! Which shard is a channel's home: the shard that sequences its publications, keeps
//! its history, presence and inbox cursors, and answers every question about it.
//!
//! A channel's home is the shard that first needs it — the shard of its first
//! subscriber or publisher — so a channel used from one shard (a client publishing to
//! its own channel, a one-to-one conversation whose members landed on one shard) is
//! sequenced where it is used, with no hop between shards and no wake-up of another
//! shard per message. A plain hash of the name would put half of those channels on the
//! other shard of two (docs/BENCHMARKS.md "Against uWebSockets").
//!
//! The placement table is an array of slots indexed by the name's hash; a slot holds
//! `shard + 1`, or 0 while unclaimed. The first claim of a slot wins (compare-and-swap)
//! and **a slot never changes afterwards**, so every shard and thread routes a channel
//! to the same home for the life of the process, without locks, caches to invalidate
//! or messages overtaking each other on a move. Names that share a slot share a home,
//! which is harmless (a home is placement, not identity); as the table fills, new
//! names increasingly find their slot taken and placement drifts back to what a hash
//! gives. Claims from outside the shards (the server API, the cluster link, the store's
//! streams read back at start) claim the name's hash shard, as before placement.
//!
//! Owns the table. Does not own what a home does (`core`, `streams`), nor the owner
//! of a user's rate-limit budget (a plain hash, [`crate::streams::owner`]).

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::streams;

/// Slots in the placement table by default: 4 Mi (4 MiB, pages touched as slots are
/// claimed).
pub const DEFAULT_SLOTS: usize = 1 << 22;

/// The placement table of a process's shards.
#[derive(Debug)]
pub struct Placement {
    /// `shard + 1` per slot, 0 = unclaimed. Empty: placement off (homes by hash).
    slots: Box<[AtomicU8]>,
    shards: usize,
}

impl Placement {
    /// A table of `slots` slots (rounded up to a power of two) for `shards` shards;
    /// `slots` 0, one shard, or more shards than a slot can name: homes by hash.
    pub fn new(shards: usize, slots: usize) -> Placement {
        let on = slots > 0 && shards > 1 && shards < usize::from(u8::MAX);
        let len = if on { slots.next_power_of_two() } else { 0 };
        // Zeroed by the allocator (calloc): untouched pages cost no memory.
        let zeroed = vec![0u8; len].into_boxed_slice();
        // SAFETY: `AtomicU8` has the same size, alignment and bit validity as `u8`, so
        // a boxed slice of `len` zero bytes is a valid boxed slice of `len` unclaimed
        // atomics; the allocation's layout is unchanged.
        let slots = unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [AtomicU8]) };
        Placement { slots, shards }
    }

    /// Whether homes are placed by first use (else by hash).
    pub fn is_on(&self) -> bool {
        !self.slots.is_empty()
    }

    /// `channel`'s home, claimed for `claimant` if nobody has claimed its slot yet.
    #[inline]
    pub fn home(&self, channel: &str, claimant: u16) -> u16 {
        let h = streams::name_hash(channel);
        if self.slots.is_empty() {
            return (h % self.shards.max(1) as u64) as u16;
        }
        let slot = &self.slots[(h as usize) & (self.slots.len() - 1)];
        match slot.load(Relaxed) {
            0 => {
                let mine = claimant as u8 + 1;
                // A read-modify-write sees the latest value: of two claims, both get
                // the winner's.
                match slot.compare_exchange(0, mine, Relaxed, Relaxed) {
                    Ok(_) => claimant,
                    Err(won) => u16::from(won - 1),
                }
            }
            taken => u16::from(taken - 1),
        }
    }

    /// `channel`'s home as asked from outside the shards: its hash shard, if unclaimed.
    #[inline]
    pub fn home_of(&self, channel: &str) -> u16 {
        self.home(channel, streams::owner(channel, self.shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_wins_and_never_moves() {
        let p = Placement::new(4, 1024);
        assert!(p.is_on());
        assert_eq!(p.home("room:1", 3), 3);
        assert_eq!(
            p.home("room:1", 0),
            3,
            "claimed: another claimant gets the home"
        );
        assert_eq!(p.home_of("room:1"), 3);
        // Every channel sharing a slot shares the home.
        let slot = |c: &str| streams::name_hash(c) as usize & 1023;
        let twin = (0..)
            .map(|i| format!("twin:{i}"))
            .find(|c| slot(c) == slot("room:1"))
            .unwrap();
        assert_eq!(p.home(&twin, 1), 3);
    }

    #[test]
    fn claims_race_to_one_home() {
        let p = std::sync::Arc::new(Placement::new(8, 1 << 12));
        let homes: Vec<Vec<u16>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u16)
                .map(|me| {
                    let p = p.clone();
                    s.spawn(move || {
                        (0..2000)
                            .map(|i| p.home(&format!("c:{i}"), me))
                            .collect::<Vec<u16>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for i in 0..2000 {
            let first = homes[0][i];
            assert!(homes.iter().all(|h| h[i] == first), "channel {i}");
        }
    }

    #[test]
    fn off_means_homes_by_hash() {
        for p in [Placement::new(4, 0), Placement::new(300, 1024)] {
            assert!(!p.is_on());
            for c in ["a", "room:7", "user:42"] {
                assert_eq!(p.home(c, 1), streams::owner(c, p.shards));
            }
        }
        let one = Placement::new(1, 1024);
        assert_eq!(one.home("x", 0), 0);
    }
}
