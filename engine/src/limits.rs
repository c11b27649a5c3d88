//! Rate limits: token buckets per connection and per user, per kind of command, with
//! tiers chosen by a JWT claim.
//!
//! Owns the rules ([`LimitRule`], from config and changed at runtime by the admin API),
//! their compiled form ([`LimitTable`], shared by every shard and replaced whole when
//! the rules change) and the bucket arithmetic ([`Bucket`]). A bucket holds what a
//! connection (or a user) has used, not what it has left, so a zeroed bucket is a full
//! one and a rule change keeps what was used.
//!
//! Per-user buckets are shared by the shards ([`UserBuckets`]): a user's budget is one
//! budget however its connections spread over the shards. Connection buckets live in
//! the connection (one shard, no sharing).
//!
//! Does not own where connection buckets live (the connection) or the replies.
//!
//! Hot path: [`LimitTable::rule`] and [`Bucket::take`] run for every command when any
//! rule exists: an array index, a short scan for the tier, float arithmetic. With user
//! rules, [`UserBuckets::take`] adds a probe of a shared table (the user's hash is
//! computed once per connection) and one compare-and-swap per rule.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitEvent {
    /// Every command (besides `connect` and `ping`).
    Command,
    /// `publish` and `schedule` to a channel.
    Publish,
    /// `send` (direct messages) and `schedule` to a user.
    Send,
    /// `subscribe`, `history` and the presence and receipt questions.
    Subscribe,
    /// `typing`, `status`, `receipt`, `ack`.
    Typing,
    /// The call commands.
    Call,
    /// The notification commands.
    Notification,
}

/// How many kinds of events there are.
pub const EVENTS: usize = 7;

impl LimitEvent {
    /// Every event, in index order.
    pub const ALL: [LimitEvent; EVENTS] = [
        LimitEvent::Command,
        LimitEvent::Publish,
        LimitEvent::Send,
        LimitEvent::Subscribe,
        LimitEvent::Typing,
        LimitEvent::Call,
        LimitEvent::Notification,
    ];

    /// Its index in a bucket array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name in rules, errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            LimitEvent::Command => "command",
            LimitEvent::Publish => "publish",
            LimitEvent::Send => "send",
            LimitEvent::Subscribe => "subscribe",
            LimitEvent::Typing => "typing",
            LimitEvent::Call => "call",
            LimitEvent::Notification => "notification",
        }
    }
}

/// Whose bucket a rule fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each connection.
    Connection,
    /// Each user (per shard).
    User,
}

/// One rate limit: at most `rate` events per `per_ms`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Whose bucket.
    pub scope: Scope,
    /// What it counts.
    pub event: LimitEvent,
    /// Events allowed per `per_ms`.
    pub rate: u32,
    /// The window, milliseconds.
    pub per_ms: u64,
    /// Most events at once after a quiet spell (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Applies to tokens whose `tier` claim has this value (absent: to tokens without a
    /// matching tier rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl LimitRule {
    /// `rate` events per `per_ms` in `scope`, bursts of `rate`, for every tier.
    pub fn new(scope: Scope, event: LimitEvent, rate: u32, per_ms: u64) -> LimitRule {
        LimitRule {
            scope,
            event,
            rate,
            per_ms,
            burst: None,
            tier: None,
        }
    }

    /// Why the rule is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.rate == 0 || self.per_ms == 0 {
            return Some("rate and per_ms must be greater than 0".into());
        }
        if self.burst == Some(0) {
            return Some("burst must be greater than 0".into());
        }
        if self
            .tier
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 64)
        {
            return Some("tier must be 1 to 64 bytes".into());
        }
        None
    }
}

/// A rule ready for the hot path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compiled {
    /// Milliseconds for one event's worth of budget to come back.
    pub ms_per_event: f32,
    /// Budget at most (events).
    pub burst: f32,
}

type Row = [[Option<Compiled>; EVENTS]; 2];

/// Every rule, compiled: per tier (the default first), per scope, per event.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    rules: Vec<LimitRule>,
    /// `(tier, rules)`; the default tier is `None` and comes first when present.
    rows: Vec<(Option<Box<str>>, Row)>,
    /// Longest time a user-scope bucket takes to empty from full, ms: a user idle that
    /// long has nothing to remember.
    user_idle_ms: u32,
}

impl LimitTable {
    /// Compile `rules`; a later rule for the same tier, scope and event replaces an
    /// earlier one. Errors name the rule (`rules[i]`).
    pub fn new(rules: Vec<LimitRule>) -> Result<LimitTable, crate::Error> {
        let mut rows: Vec<(Option<Box<str>>, Row)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if let Some(p) = r.problem() {
                return Err(crate::Error::config(format!("rules[{i}]"), p));
            }
            let tier = r.tier.as_deref().map(Box::from);
            let at = match rows.iter().position(|(t, _)| *t == tier) {
                Some(at) => at,
                None => {
                    rows.push((tier, Default::default()));
                    rows.len() - 1
                }
            };
            let scope = r.scope as usize;
            rows[at].1[scope][r.event.index()] = Some(Compiled {
                ms_per_event: r.per_ms as f32 / r.rate as f32,
                burst: r.burst.unwrap_or(r.rate) as f32,
            });
        }
        rows.sort_by_key(|(t, _)| t.is_some());
        let user_idle_ms = rows
            .iter()
            .flat_map(|(_, row)| row[Scope::User as usize].iter().flatten())
            .map(|c| (c.burst * c.ms_per_event).ceil() as u64)
            .max()
            .unwrap_or(0)
            .min(u32::MAX as u64 / 4) as u32;
        Ok(LimitTable {
            rules,
            rows,
            user_idle_ms,
        })
    }

    /// How long a user's buckets take to empty from full at most, ms.
    pub fn user_idle_ms(&self) -> u32 {
        self.user_idle_ms
    }

    /// No rules: nothing to check.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rules, as given.
    pub fn rules(&self) -> &[LimitRule] {
        &self.rules
    }

    /// The rule for `event` in `scope` for a token of `tier`: the tier's own rule, else
    /// the default one.
    #[inline]
    pub fn rule(&self, tier: Option<&str>, scope: Scope, event: LimitEvent) -> Option<Compiled> {
        let (s, e) = (scope as usize, event.index());
        if let Some(tier) = tier {
            let own = self.rows.iter().find(|(t, _)| t.as_deref() == Some(tier));
            if let Some(c) = own.and_then(|(_, row)| row[s][e]) {
                return Some(c);
            }
        }
        match self.rows.first() {
            Some((None, row)) => row[s][e],
            _ => None,
        }
    }
}

/// What a connection or user has used of one rule's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// Events' worth of budget in use.
    used: f32,
    /// When `used` was last brought up to date, ms (wrapping).
    at_ms: u32,
}

impl Bucket {
    /// Whether one more event fits now (`Ok`), or in how many ms it will (`Err`); does
    /// not take it.
    #[inline]
    pub fn check(&self, rule: Compiled, now_ms: u32) -> Result<(), u32> {
        let used = self.current(rule, now_ms);
        if used + 1.0 <= rule.burst {
            Ok(())
        } else {
            Err(((used + 1.0 - rule.burst) * rule.ms_per_event).ceil() as u32)
        }
    }

    /// Take one event's budget (after [`Bucket::check`] said it fits).
    #[inline]
    pub fn take(&mut self, rule: Compiled, now_ms: u32) {
        self.used = self.current(rule, now_ms) + 1.0;
        if !behind(now_ms, self.at_ms) {
            self.at_ms = now_ms;
        }
    }

    /// Count `n` events taken elsewhere (never more than twice the burst in use, so a
    /// burst of reports cannot lock a user out for long).
    pub fn charge(&mut self, rule: Compiled, n: u32, now_ms: u32) {
        self.used = (self.current(rule, now_ms) + n as f32).min(rule.burst * 2.0);
        if !behind(now_ms, self.at_ms) {
            self.at_ms = now_ms;
        }
    }

    #[inline]
    fn current(&self, rule: Compiled, now_ms: u32) -> f32 {
        let elapsed = if behind(now_ms, self.at_ms) {
            0.0
        } else {
            now_ms.wrapping_sub(self.at_ms) as f32
        };
        (self.used - elapsed / rule.ms_per_event).max(0.0)
    }

    /// One word: `used` (f32 bits) high, `at_ms` low.
    #[inline]
    fn pack(self) -> u64 {
        (u64::from(self.used.to_bits()) << 32) | u64::from(self.at_ms)
    }

    #[inline]
    fn unpack(word: u64) -> Bucket {
        Bucket {
            used: f32::from_bits((word >> 32) as u32),
            at_ms: word as u32,
        }
    }
}

/// Whether `now_ms` is a little before `at_ms`: the clock of a shard a tick behind the
/// one that took last (shards tick on their own; a minute of slack is far more than
/// they drift). Anything further back is a clock that wrapped: long ago.
#[inline]
fn behind(now_ms: u32, at_ms: u32) -> bool {
    let d = now_ms.wrapping_sub(at_ms) as i32;
    (-60_000..0).contains(&d)
}

/// Slots looked at for a user before giving up (the caller then keeps the user's
/// buckets per shard).
const PROBES: usize = 16;

/// One user's buckets in [`UserBuckets`]: one cache line, so users on different
/// shards never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    /// The user's hash; 0: free.
    key: AtomicU64,
    /// [`Bucket`]s, packed, one per event.
    buckets: [AtomicU64; EVENTS],
}

impl Slot {
    /// Whether every bucket reads empty by `now_ms` for rules that empty a full
    /// bucket within `idle_ms`: its user has nothing left to remember.
    fn idle(&self, now_ms: u32, idle_ms: u32) -> bool {
        self.buckets.iter().all(|b| {
            let b = Bucket::unpack(b.load(Relaxed));
            b.used == 0.0 || (!behind(now_ms, b.at_ms) && now_ms.wrapping_sub(b.at_ms) > idle_ms)
        })
    }
}

/// Per-user buckets shared by every shard, so a user's budget is one budget however
/// its connections spread.
///
/// Lock-free: an open-addressed table of slots, each claimed by a user's 64-bit hash
/// (SipHash with a per-process random key, so user ids cannot be chosen to collide),
/// each bucket one atomic word updated by compare-and-swap. Slots are never freed: a
/// user arriving takes a free slot or one whose user has been idle longer than every
/// user rule's window (its buckets would read empty anyway). A race between a shard
/// taking from a slot and another reclaiming it charges the newcomer at most one
/// event. Sized at twice `engine.rate_limit_users` (a power of two, 64 bytes a slot),
/// so the table stays under half full; allocated on the first command that meets a
/// user rule.
#[derive(Debug)]
pub struct UserBuckets {
    hasher: std::hash::RandomState,
    slots: Box<[Slot]>,
}

impl UserBuckets {
    /// A table for `users` users at once (twice as many slots, a power of two).
    pub fn new(users: usize) -> UserBuckets {
        let n = (users.max(512) * 2).next_power_of_two();
        UserBuckets {
            hasher: std::hash::RandomState::new(),
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
    }

    /// The key of `user` (never 0).
    pub fn key(&self, user: &str) -> u64 {
        self.hasher.hash_one(user).max(1)
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// The slot of `key`, claiming a free or idle one; `None` when the user's
    /// [`PROBES`] slots are all busy with others.
    fn slot(&self, key: u64, now_ms: u32, idle_ms: u32) -> Option<&Slot> {
        let mask = self.slots.len() - 1;
        let start = key as usize & mask;
        let mut idle = None;
        for i in 0..PROBES {
            let slot = &self.slots[(start + i) & mask];
            let mut k = slot.key.load(Relaxed);
            if k == 0 {
                match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => return Some(Self::claimed(slot)),
                    Err(now) => k = now,
                }
            }
            if k == key {
                return Some(slot);
            }
            if idle.is_none() && slot.idle(now_ms, idle_ms) {
                idle = Some((slot, k));
            }
        }
        let (slot, old) = idle?;
        slot.key
            .compare_exchange(old, key, Relaxed, Relaxed)
            .ok()
            .map(|_| Self::claimed(slot))
    }

    fn claimed(slot: &Slot) -> &Slot {
        for b in &slot.buckets {
            b.store(0, Relaxed);
        }
        slot
    }

    /// Take one event from each of `rules` (`(event, rule)`) for user `key`: all or
    /// none. `Err` says how long until the first one that does not fit would, and
    /// which; `Ok(false)` when the table had no room for the user (nothing taken: keep
    /// its buckets elsewhere).
    pub fn take(
        &self,
        key: u64,
        rules: &[(LimitEvent, Compiled)],
        now_ms: u32,
        idle_ms: u32,
    ) -> Result<bool, (u32, LimitEvent)> {
        let Some(slot) = self.slot(key, now_ms, idle_ms) else {
            return Ok(false);
        };
        for (i, &(event, rule)) in rules.iter().enumerate() {
            let cell = &slot.buckets[event.index()];
            let mut word = cell.load(Relaxed);
            loop {
                let mut b = Bucket::unpack(word);
                if let Err(ms) = b.check(rule, now_ms) {
                    for &(taken, rule) in &rules[..i] {
                        Self::give_back(&slot.buckets[taken.index()], rule, now_ms);
                    }
                    return Err((ms, event));
                }
                b.take(rule, now_ms);
                match cell.compare_exchange_weak(word, b.pack(), Relaxed, Relaxed) {
                    Ok(_) => break,
                    Err(now) => word = now,
                }
            }
        }
        Ok(true)
    }

    /// How long until one more event of each of `rules` fits for user `key` (0: now),
    /// without taking anything.
    pub fn wait(
        &self,
        key: u64,
        rules: &[(LimitEvent, Compiled)],
        now_ms: u32,
    ) -> (u32, LimitEvent) {
        let mut worst = (0, LimitEvent::Command);
        let mask = self.slots.len() - 1;
        let start = key as usize & mask;
        let found = (0..PROBES)
            .map(|i| &self.slots[(start + i) & mask])
            .find(|s| s.key.load(Relaxed) == key);
        if let Some(slot) = found {
            for &(event, rule) in rules {
                let b = Bucket::unpack(slot.buckets[event.index()].load(Relaxed));
                if let Err(ms) = b.check(rule, now_ms) {
                    if ms > worst.0 {
                        worst = (ms, event);
                    }
                }
            }
        }
        worst
    }

    /// Count `n` events of `event` that user `key` took elsewhere (another node)
    /// against its bucket here (claiming a slot for the user as a take would; with no
    /// room, nothing is counted). May fill the bucket past its burst: the user then
    /// waits.
    pub fn charge(
        &self,
        key: u64,
        (event, rule): (LimitEvent, Compiled),
        n: u32,
        now_ms: u32,
        idle_ms: u32,
    ) {
        let Some(slot) = self.slot(key, now_ms, idle_ms) else {
            return;
        };
        let cell = &slot.buckets[event.index()];
        let mut word = cell.load(Relaxed);
        loop {
            let mut b = Bucket::unpack(word);
            b.charge(rule, n, now_ms);
            match cell.compare_exchange_weak(word, b.pack(), Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    fn give_back(cell: &AtomicU64, rule: Compiled, now_ms: u32) {
        let mut word = cell.load(Relaxed);
        loop {
            let mut b = Bucket::unpack(word);
            b.used = (b.current(rule, now_ms) - 1.0).max(0.0);
            if !behind(now_ms, b.at_ms) {
                b.at_ms = now_ms;
            }
            match cell.compare_exchange_weak(word, b.pack(), Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }
}

/// The buckets of one connection or user, one per event.
pub type Buckets = [Bucket; EVENTS];

#[cfg(test)]
mod tests {
    use super::*;

    use LimitRule as R;

    fn rule(scope: Scope, event: LimitEvent, rate: u32, per_ms: u64) -> LimitRule {
        R::new(scope, event, rate, per_ms)
    }

    #[test]
    fn a_bucket_allows_the_burst_then_the_rate() {
        let t = LimitTable::new(vec![rule(Scope::User, LimitEvent::Publish, 30, 60_000)]).unwrap();
        let r = t.rule(None, Scope::User, LimitEvent::Publish).unwrap();
        let mut b = Bucket::default();
        for _ in 0..30 {
            assert_eq!(b.check(r, 1000), Ok(()));
            b.take(r, 1000);
        }
        // One every 2 s after that.
        assert_eq!(b.check(r, 1000), Err(2000));
        assert_eq!(b.check(r, 2500), Err(500));
        assert_eq!(b.check(r, 3000), Ok(()));
        b.take(r, 3000);
        assert!(b.check(r, 3001).is_err());
        // A long quiet spell refills to the burst, no more; the clock may wrap.
        let mut w = Bucket {
            used: 30.0,
            at_ms: u32::MAX - 10,
        };
        assert!(w.check(r, u32::MAX).is_err());
        assert_eq!(w.check(r, 4000), Ok(()));
        w.take(r, 100_000);
        assert_eq!(w.used, 1.0);
    }

    #[test]
    fn tiers_fall_back_to_the_default_and_later_rules_win() {
        let mut premium = rule(Scope::User, LimitEvent::Publish, 300, 60_000);
        premium.tier = Some("premium".into());
        let t = LimitTable::new(vec![
            premium,
            rule(Scope::User, LimitEvent::Publish, 30, 60_000),
            rule(Scope::Connection, LimitEvent::Command, 10, 1000),
            rule(Scope::Connection, LimitEvent::Command, 20, 1000),
        ])
        .unwrap();
        let burst = |tier, scope, event| t.rule(tier, scope, event).map(|c| c.burst);
        assert_eq!(
            burst(Some("premium"), Scope::User, LimitEvent::Publish),
            Some(300.0)
        );
        assert_eq!(burst(None, Scope::User, LimitEvent::Publish), Some(30.0));
        assert_eq!(
            burst(Some("gold"), Scope::User, LimitEvent::Publish),
            Some(30.0)
        );
        assert_eq!(
            burst(Some("premium"), Scope::Connection, LimitEvent::Command),
            Some(20.0),
            "no tier rule: the default"
        );
        assert_eq!(burst(None, Scope::Connection, LimitEvent::Send), None);
        assert!(LimitTable::new(vec![]).unwrap().is_empty());
        let mut bad = rule(Scope::User, LimitEvent::Send, 0, 1000);
        assert!(LimitTable::new(vec![bad.clone()])
            .unwrap_err()
            .to_string()
            .starts_with("rules[0]"));
        bad.rate = 1;
        bad.burst = Some(0);
        assert!(LimitTable::new(vec![bad]).is_err());
    }

    fn per_minute(rate: u32) -> Compiled {
        Compiled {
            ms_per_event: 60_000.0 / rate as f32,
            burst: rate as f32,
        }
    }

    #[test]
    fn shared_user_buckets_are_one_budget_across_threads() {
        let table = std::sync::Arc::new(UserBuckets::new(1000));
        let rules = [(LimitEvent::Publish, per_minute(100))];
        let key = table.key("ann");
        assert_eq!(key, table.key("ann"));
        assert_ne!(key, table.key("bob"));
        // Four shards' threads race for one user's budget of 100: exactly 100 fit.
        let taken: u32 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let table = &table;
                    s.spawn(move || {
                        (0..1000)
                            .filter(|_| table.take(key, &rules, 1000, 60_000) == Ok(true))
                            .count() as u32
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 100);
        let (wait, event) = table.wait(key, &rules, 1000);
        assert_eq!((wait, event), (600, LimitEvent::Publish));
        assert_eq!(
            table.take(key, &rules, 1000, 60_000),
            Err((600, LimitEvent::Publish))
        );
        // A shard whose clock is a tick behind neither refills nor wraps.
        assert!(table.take(key, &rules, 900, 60_000).is_err());
        assert_eq!(table.take(key, &rules, 1600, 60_000), Ok(true));
    }

    #[test]
    fn use_on_other_nodes_counts_against_the_same_budget() {
        let table = UserBuckets::new(10);
        let publish = (LimitEvent::Publish, per_minute(6));
        // Four taken elsewhere: two left here, then refused.
        table.charge(9, publish, 4, 0, 60_000);
        assert_eq!(table.take(9, &[publish], 0, 60_000), Ok(true));
        assert_eq!(table.take(9, &[publish], 0, 60_000), Ok(true));
        assert!(table.take(9, &[publish], 0, 60_000).is_err());
        // A flood of reports overdraws to twice the burst at most (70 s to one more).
        table.charge(9, publish, 1_000, 0, 60_000);
        assert_eq!(table.wait(9, &[publish], 0), (70_000, LimitEvent::Publish));
        let mut b = Bucket::default();
        b.charge(publish.1, 3, 0);
        assert_eq!(b.check(publish.1, 0), Ok(()));
        b.charge(publish.1, 3, 0);
        assert_eq!(b.check(publish.1, 0), Err(10_000));
    }

    #[test]
    fn shared_user_buckets_take_all_or_none() {
        let table = UserBuckets::new(10);
        let command = (LimitEvent::Command, per_minute(10));
        let publish = (LimitEvent::Publish, per_minute(2));
        let both = [command, publish];
        assert_eq!(table.take(7, &both, 0, 60_000), Ok(true));
        assert_eq!(table.take(7, &both, 0, 60_000), Ok(true));
        // The publish rule refuses: the command budget taken first is given back.
        assert_eq!(
            table.take(7, &both, 0, 60_000),
            Err((30_000, LimitEvent::Publish))
        );
        for _ in 0..8 {
            assert_eq!(table.take(7, &[command], 0, 60_000), Ok(true));
        }
        assert_eq!(
            table.take(7, &[command], 0, 60_000),
            Err((6_000, LimitEvent::Command))
        );
    }

    #[test]
    fn shared_user_slots_are_reclaimed_only_from_idle_users() {
        let table = UserBuckets::new(1); // 1024 slots
        let n = table.slots.len() as u64;
        let rules = [(LimitEvent::Publish, per_minute(1))];
        // Seventeen users whose keys start probing at the same slot.
        let keys: Vec<u64> = (1..=17).map(|i| 5 + i * n).collect();
        for &k in &keys[..16] {
            assert_eq!(table.take(k, &rules, 1000, 60_000), Ok(true));
        }
        // No room among the sixteen busy slots: nothing taken, the caller keeps it.
        assert_eq!(table.take(keys[16], &rules, 1000, 60_000), Ok(false));
        // After a minute of quiet, a slot is reclaimed, starting empty; the others keep
        // their users and what they used.
        assert_eq!(table.take(keys[16], &rules, 62_000, 60_000), Ok(true));
        assert_eq!(
            table
                .take(keys[16], &rules, 62_000, 60_000)
                .map_err(|e| e.1),
            Err(LimitEvent::Publish)
        );
        let kept = keys[..16]
            .iter()
            .filter(|&&k| table.take(k, &rules, 1000, 60_000).is_err())
            .count();
        assert_eq!(kept, 15, "one of the sixteen lost its slot");
        assert_eq!(table.bytes(), 1024 * 64);
    }

    #[test]
    fn the_table_knows_how_long_users_take_to_go_idle() {
        let t = LimitTable::new(vec![
            rule(Scope::User, LimitEvent::Publish, 30, 60_000),
            rule(Scope::User, LimitEvent::Command, 10, 1_000),
            rule(Scope::Connection, LimitEvent::Send, 1, 3_600_000),
        ])
        .unwrap();
        assert_eq!(t.user_idle_ms(), 60_000);
        assert_eq!(LimitTable::default().user_idle_ms(), 0);
    }
}
