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
//! Does not own persistence (the store, through [`crate::journal`], writes publications
//! of durable namespaces and seeds streams back at start-up). A stream idle for
//! `engine.stream_idle_ms` is forgotten; the next publication starts a new epoch at
//! offset 1, which tells clients that earlier positions of that channel are gone.
//!
//! Retained publications of all channels share one memory budget per shard
//! (`engine.history_memory_bytes` divided among the shards, see [`budget`]): beyond
//! it, the oldest publication of any channel is evicted first, and expired ones are
//! freed by the sweep even when their channel is quiet.
//!
//! A stream has two tops: `offset`, the last position given out, and `shown`, the last
//! one released to subscribers and history. They differ only while `sync`
//! publications wait for the store; every answer reports `shown`, so a subscriber's
//! starting point never lies beyond what it will be delivered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use switchboard_protocol::{Format, Position};

use crate::hashing::NameHasher;
use crate::journal::{Durability, Policies, Policy, SeedStream};

mod budget;
mod erase;
mod pages;
mod revise;
use budget::HistoryBudget;
pub use pages::{PageClock, Paged};

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
    /// Sender's user id, for direct messages.
    pub from: Option<Arc<str>>,
    /// The user who published it (recorded, not shown).
    pub author: Option<Arc<str>>,
    /// The event a backend named it with, if any.
    pub event: Option<Arc<str>>,
    /// It edits or deletes an earlier publication.
    pub revises: Option<switchboard_protocol::Revision>,
    /// It was edited (`data` and `meta` are the latest) or deleted since.
    pub revised: Option<switchboard_protocol::Revised>,
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

/// FNV-1a of a channel (or user) name: spreads names over shards and placement slots.
#[inline]
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard a name hashes to among `shards` shards: a user's rate-limit owner, and a
/// channel's home when placement is off or the claim comes from outside the shards
/// (see [`crate::mesh::Mesh::home`]).
#[inline]
pub fn owner(channel: &str, shards: usize) -> u16 {
    (name_hash(channel) % shards.max(1) as u64) as u16
}

#[derive(Debug)]
struct Stream {
    epoch: u64,
    offset: u64,
    /// Last offset released to subscribers (see the module doc).
    shown: u64,
    /// Index of its namespace's policy.
    policy: u16,
    /// Tick of the last publication.
    used: u32,
    history: VecDeque<Entry>,
    /// What `history` costs against the budget ([`budget::cost`] of each entry), for
    /// the namespace's `max_bytes`.
    bytes: usize,
    /// Idempotency keys seen within the dedupe window: the offset each got and when.
    keys: HashMap<Box<str>, (u64, u32)>,
}

/// The streams one shard owns.
#[derive(Debug)]
pub struct Streams {
    map: IndexMap<Arc<str>, Stream, NameHasher>,
    /// Mixed into every new epoch, so epochs differ across shards and restarts.
    seed: u64,
    created: u64,
    /// Where the idle sweep continues.
    cursor: usize,
    policies: Arc<Policies>,
    /// Bytes retained across all channels, and which to evict first.
    budget: HistoryBudget,
    /// Most streams kept (0: no limit), and how many were forgotten to stay within it.
    max_streams: usize,
    streams_evicted: u64,
    /// Stored streams put to rest (idle, or evicted): epoch and last offset, so the
    /// channel continues its epoch when used again instead of starting a new one that
    /// would hide its stored history. A name and 16 bytes each.
    dormant: HashMap<Arc<str>, (u64, u64), NameHasher>,
}

/// A well-mixed 64-bit value from `x` (SplitMix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Streams {
    /// Streams with epochs derived from `seed` (random per process and shard), every
    /// channel under one memory-only policy.
    pub fn new(seed: u64) -> Streams {
        let default = Policy {
            durability: Durability::None,
            keep: 64,
            ttl: u32::MAX,
            max_bytes: 0,
            edits: false,
        };
        Streams::with_policies(seed, Arc::new(Policies::single(default)))
    }

    /// Streams whose channels follow their namespace's policy.
    pub fn with_policies(seed: u64, policies: Arc<Policies>) -> Streams {
        Streams {
            map: IndexMap::default(),
            seed,
            created: 0,
            cursor: 0,
            policies,
            budget: HistoryBudget::new(0),
            max_streams: 0,
            streams_evicted: 0,
            dormant: HashMap::default(),
        }
    }

    /// Most streams this shard keeps (0: no limit); see `evict_for_new_stream`.
    pub fn set_max_streams(&mut self, n: usize) {
        self.max_streams = n;
    }

    /// Streams forgotten early to stay within the maximum.
    pub fn streams_evicted(&self) -> u64 {
        self.streams_evicted
    }

    /// Make room for one more stream: forget the least recently used forgettable
    /// stream among a sample of `SAMPLE` from the sweep's cursor (approximate LRU, as
    /// Redis evicts keys: O(1) per new stream). Forgettable: nothing waits for the
    /// store, and it is memory-only or retains nothing (a durable stream that still
    /// retains publications stays; the history budget bounds those). If the sample
    /// has none, the map grows past the maximum for now.
    fn evict_for_new_stream(&mut self, now: u32) {
        const SAMPLE: usize = 16;
        let len = self.map.len();
        let mut best: Option<(usize, u32)> = None;
        for k in 0..SAMPLE.min(len) {
            let i = (self.cursor + k) % len;
            let s = &self.map[i];
            let policy = self.policies.get(s.policy);
            let forgettable = s.shown == s.offset
                && (policy.durability == Durability::None || s.history.is_empty());
            let idle = now.wrapping_sub(s.used);
            if forgettable && best.is_none_or(|(_, b)| idle > b) {
                best = Some((i, idle));
            }
        }
        self.cursor = (self.cursor + SAMPLE) % len.max(1);
        if let Some((i, _)) = best {
            let (name, gone) = self.map.swap_remove_index(i).expect("sampled index");
            for e in &gone.history {
                self.budget.dropped(e);
            }
            self.put_to_rest(name, &gone);
            self.streams_evicted += 1;
        }
    }

    /// Most bytes of retained publications this shard keeps (0: no limit); beyond it
    /// the oldest publications of any channel are evicted.
    pub fn set_history_budget(&mut self, bytes: usize) {
        self.budget.set_limit(bytes);
        self.evict_over_budget();
    }

    /// Bytes of retained publications (payloads, metadata and their fixed cost).
    pub fn history_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Publications evicted to stay within the budget since start.
    pub fn history_evicted(&self) -> u64 {
        self.budget.evicted()
    }

    /// Bytes of publications no longer retained, since the start (a counter).
    pub fn history_freed_bytes(&self) -> u64 {
        self.budget.freed()
    }

    /// Evict the oldest retained publications until the budget holds.
    fn evict_over_budget(&mut self) {
        while self.budget.over() {
            let Some((channel, offset)) = self.budget.oldest() else {
                break;
            };
            // Only ever a stream's oldest publication: what it keeps stays contiguous.
            if let Some(s) = self.map.get_mut(&*channel) {
                if s.history.front().is_some_and(|e| e.offset == offset) {
                    let e = s.history.pop_front().expect("front checked");
                    s.bytes -= budget::cost(&e);
                    self.budget.dropped(&e);
                    self.budget.count_eviction();
                }
            }
        }
        if self.budget.wants_compaction() {
            let map = &self.map;
            self.budget.compact(|c, o| {
                map.get(c)
                    .is_some_and(|s| s.history.binary_search_by_key(&o, |e| e.offset).is_ok())
            });
        }
    }

    /// Whether keeping `data_bytes` more in `channel` would pass its namespace's
    /// `max_bytes` (never when that is 0). What `history_size` and `history_ttl_ms`
    /// would drop to make room still counts: a full inbox stays full until its oldest
    /// messages expire or are pushed out by count.
    pub fn over_max_bytes(&self, channel: &str, policy: &Policy, data_bytes: usize) -> bool {
        policy.max_bytes != 0
            && self.map.get(channel).map_or(0, |s| s.bytes) + budget::ENTRY_OVERHEAD + data_bytes
                > policy.max_bytes
    }

    /// The shared name of `channel`'s stream, if it has one.
    pub fn name(&self, channel: &str) -> Option<Arc<str>> {
        self.map.get_key_value(channel).map(|(k, _)| k.clone())
    }

    /// Every namespace's policy.
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// The policy of `channel`'s namespace.
    #[inline]
    pub fn policy_of(&self, channel: &str) -> &Policy {
        let i = match self.map.get(channel) {
            Some(s) => s.policy,
            None => self.policies.resolve(channel),
        };
        self.policies.get(i)
    }

    /// Continue a stream read back from the store at tick `now` (ticks of `tick_ms`):
    /// its epoch and offset, its kept publications and their idempotency keys. A seed
    /// without an epoch (its tail may have been lost) is skipped: the channel's next
    /// publication starts a new epoch.
    pub fn seed(&mut self, seed: SeedStream, now: u32, tick_ms: u64) {
        let Some(epoch) = seed.epoch else {
            return;
        };
        if seed.dormant {
            if !self.map.contains_key(&*seed.channel) {
                self.dormant.insert(seed.channel, (epoch, seed.offset));
            }
            return;
        }
        self.dormant.remove(&*seed.channel);
        let policy = self.policies.resolve(&seed.channel);
        let mut history = VecDeque::with_capacity(seed.entries.len());
        let mut keys = HashMap::new();
        for e in seed.entries {
            let age = (e.age_ms / tick_ms.max(1)).min(u64::from(u32::MAX / 2)) as u32;
            let tick = now.wrapping_sub(age);
            if let Some(k) = e.key {
                keys.insert(k, (e.offset, tick));
            }
            history.push_back(Entry {
                offset: e.offset,
                tick,
                data: e.data,
                meta: e.meta,
                format: e.format,
                from: e.from.map(Arc::from),
                author: e.author.map(Arc::from),
                event: e.event.map(Arc::from),
                revises: e.revises,
                revised: e.revised,
            });
        }
        let mut bytes = 0;
        for e in &history {
            self.budget.kept(&seed.channel, e);
            bytes += budget::cost(e);
        }
        let replaced = self.map.insert(
            seed.channel,
            Stream {
                epoch,
                offset: seed.offset,
                shown: seed.offset,
                policy,
                used: now,
                history,
                bytes,
                keys,
            },
        );
        for e in replaced.iter().flat_map(|s| &s.history) {
            self.budget.dropped(e);
        }
        self.evict_over_budget();
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
        self.next_in(channel, now).0
    }

    /// Like [`Streams::next`], with the index of the channel's policy.
    #[inline]
    pub fn next_in(&mut self, channel: &str, now: u32) -> (Position, u16) {
        if let Some(s) = self.map.get_mut(channel) {
            s.offset += 1;
            s.used = now;
            let p = Position {
                epoch: s.epoch,
                offset: s.offset,
            };
            return (p, s.policy);
        }
        let p = self.create(channel, 1, now);
        let policy = self.map[channel].policy;
        (p, policy)
    }

    /// Start `channel`'s stream, `ahead` offsets past where it stands (1 for a
    /// publication, 0 to learn the position): a stored channel put to rest continues
    /// its epoch, any other starts a new one at 0.
    fn create(&mut self, channel: &str, ahead: u64, now: u32) -> Position {
        if self.max_streams != 0 && self.map.len() >= self.max_streams {
            self.evict_for_new_stream(now);
        }
        let (epoch, shown) = match self.dormant.remove_entry(channel) {
            Some((_, at)) => at,
            None => {
                self.created += 1;
                (mix(self.seed ^ mix(self.created)), 0)
            }
        };
        let policy = self.policies.resolve(channel);
        // A publication's offset shows only once it is released (see `show`).
        self.map.insert(
            channel.into(),
            Stream {
                epoch,
                offset: shown + ahead,
                shown,
                policy,
                used: now,
                history: VecDeque::new(),
                bytes: 0,
                keys: HashMap::new(),
            },
        );
        Position {
            epoch,
            offset: shown + ahead,
        }
    }

    /// Keep the position of a stored stream being forgotten (see `dormant`).
    fn put_to_rest(&mut self, name: Arc<str>, gone: &Stream) {
        let stored = self.policies.get(gone.policy).durability != Durability::None;
        if stored && gone.offset > 0 {
            self.dormant.insert(name, (gone.epoch, gone.offset));
        }
    }

    /// Stored streams put to rest (only their position kept).
    pub fn dormant_len(&self) -> usize {
        self.dormant.len()
    }

    /// The current position of `channel`, starting its stream (offset 0) if it has
    /// none, so a subscriber always learns the epoch its offsets will belong to.
    pub fn touch(&mut self, channel: &str, now: u32) -> Position {
        if let Some(p) = self.current(channel) {
            return p;
        }
        self.create(channel, 0, now)
    }

    /// Release `offset` of `channel` to subscribers and history answers (without
    /// keeping its publication).
    #[inline]
    pub fn show(&mut self, channel: &str, offset: u64) {
        if let Some(s) = self.map.get_mut(channel) {
            s.shown = s.shown.max(offset);
        }
    }

    /// Release the publication `next` positioned and keep it, within `keep` entries and
    /// `ttl` ticks.
    pub fn retain(&mut self, channel: &str, entry: Entry, keep: usize, ttl: u32) {
        let Some((_, name, s)) = self.map.get_full_mut(channel) else {
            return;
        };
        s.shown = s.shown.max(entry.offset);
        if keep == 0 {
            return;
        }
        let now = entry.tick;
        while s.history.len() >= keep
            || s.history
                .front()
                .is_some_and(|e| now.wrapping_sub(e.tick) > ttl)
        {
            let Some(old) = s.history.pop_front() else {
                break;
            };
            s.bytes -= budget::cost(&old);
            self.budget.dropped(&old);
        }
        self.budget.kept(name, &entry);
        s.bytes += budget::cost(&entry);
        s.history.push_back(entry);
        if self.budget.over() || self.budget.wants_compaction() {
            self.evict_over_budget();
        }
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

    /// An inbox's backlog for a device whose cursor is `cursor`: every retained
    /// publication after it (all retained ones without a cursor, or when the cursor is
    /// from another epoch). `recovered` says whether that is everything the device
    /// has not processed (false when some were already dropped by retention).
    pub fn backlog(
        &mut self,
        channel: &str,
        cursor: Option<Position>,
        keep: usize,
        now: u32,
        ttl: u32,
    ) -> Recovery {
        if let Some(c) = cursor {
            let r = self.recover(channel, c, now, ttl);
            if r.recovered {
                return r;
            }
        }
        let after = cursor
            .filter(|c| {
                self.current(channel)
                    .is_some_and(|top| top.epoch == c.epoch)
            })
            .map_or(0, |c| c.offset);
        let (top, publications) = self.history(channel, after, keep, false, now, ttl);
        let first = publications.first().map_or(top.offset + 1, |e| e.offset);
        Recovery {
            top,
            recovered: cursor.is_none() && first <= after + 1,
            publications,
        }
    }

    /// Take back the position `next` just gave `channel` (the publication was refused
    /// before anyone saw it).
    pub fn undo(&mut self, channel: &str) {
        if let Some(s) = self.map.get_mut(channel) {
            if s.offset > 1 || s.shown > 0 || !s.history.is_empty() {
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

    /// Move `channel`'s stream to `to` as a position sequenced elsewhere (nodes sharing
    /// Redis): the next [`Streams::next_in`] gives `to.offset + 1`. A new epoch drops
    /// the old epoch's kept publications; a stream it does not have is created.
    pub fn advance_to(&mut self, channel: &str, to: Position, now: u32) {
        match self.map.get_mut(channel) {
            Some(s) if s.epoch == to.epoch => {
                s.offset = s.offset.max(to.offset);
                s.shown = s.shown.max(to.offset);
                s.used = now;
            }
            _ => {
                let seed = SeedStream {
                    channel: channel.into(),
                    epoch: Some(to.epoch),
                    offset: to.offset,
                    entries: Vec::new(),
                    dormant: false,
                };
                self.seed(seed, now, 1);
            }
        }
    }

    /// The current position of `channel` (offset 0 in a fresh epoch if it has none).
    pub fn current(&self, channel: &str) -> Option<Position> {
        self.map.get(channel).map(|s| Position {
            epoch: s.epoch,
            offset: s.shown,
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
            // A stream with publications waiting for the store stays, and a stored one
            // stays as long as it retains publications (forgetting it would start a
            // new epoch while the store still serves the old one).
            let policy = self.policies.get(s.policy);
            let idle_for = if policy.durability == Durability::None || s.history.is_empty() {
                idle
            } else {
                idle.max(policy.ttl)
            };
            if now.wrapping_sub(s.used) >= idle_for && s.shown == s.offset {
                let (name, gone) = self
                    .map
                    .swap_remove_index(self.cursor)
                    .expect("cursor within the map");
                for e in &gone.history {
                    self.budget.dropped(e);
                }
                self.put_to_rest(name, &gone);
                dropped += 1;
            } else {
                // Expired publications are freed now, not at the channel's next
                // publication (which may never come).
                while s
                    .history
                    .front()
                    .is_some_and(|e| now.wrapping_sub(e.tick) > policy.ttl)
                {
                    let old = s.history.pop_front().expect("front checked");
                    s.bytes -= budget::cost(&old);
                    self.budget.dropped(&old);
                }
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
mod tests;
