//! Rate limits: token buckets per connection and per user, per kind of command, with
//! tiers chosen by a JWT claim.
//!
//! Owns the rules ([`LimitRule`], from config and changed at runtime by the admin API),
//! their compiled form ([`LimitTable`], shared by every shard and replaced whole when
//! the rules change) and the bucket arithmetic ([`Bucket`]). A bucket holds what a
//! connection (or a user) has used, not what it has left, so a zeroed bucket is a full
//! one and a rule change keeps what was used.
//!
//! Per-user buckets are kept per shard: a user whose connections land on `n` shards may
//! reach `n` times a per-user rate. Connection rules bound each connection exactly.
//!
//! Does not own where the buckets live (the shard: connection buckets in the
//! connection, user buckets in its user index) or the replies.
//!
//! Hot path: [`LimitTable::rule`] and [`Bucket::take`] run for every command when any
//! rule exists: an array index, a short scan for the tier, float arithmetic.

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
}

impl LimitTable {
    /// Compile `rules`; a later rule for the same tier, scope and event replaces an
    /// earlier one. Errors name the rule (`rules[i]`).
    pub fn new(rules: Vec<LimitRule>) -> Result<LimitTable, String> {
        let mut rows: Vec<(Option<Box<str>>, Row)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if let Some(p) = r.problem() {
                return Err(format!("rules[{i}]: {p}"));
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
        Ok(LimitTable { rules, rows })
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
        self.at_ms = now_ms;
    }

    #[inline]
    fn current(&self, rule: Compiled, now_ms: u32) -> f32 {
        let elapsed = now_ms.wrapping_sub(self.at_ms) as f32;
        (self.used - elapsed / rule.ms_per_event).max(0.0)
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
            .starts_with("rules[0]"));
        bad.rate = 1;
        bad.burst = Some(0);
        assert!(LimitTable::new(vec![bad]).is_err());
    }
}
