//! Rate limits as a command passes: the connection's buckets and its user's.
//!
//! Owns the check-then-take of a command against the connection's and the user's
//! buckets (shared by the shards, or kept here), the 114 reply with when to retry and
//! the close after repeated refusals. With nodes sharing Redis, also what this node's
//! connections take of per-user rules, reported to the other nodes every
//! [`REPORT_MS`], and what the other nodes' reports count against the same users
//! here: a user connected to several nodes has one budget, overdrawn at most by what
//! its other connections take within one report interval. Does not own the rules or
//! the bucket arithmetic ([`crate::limits`]) or carrying the reports (the cluster
//! thread).

use crate::limits::LimitTable;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_protocol::CloseCode;

use super::ShardCore;
use crate::cluster::UserSpent;
use crate::limits::{Buckets, Compiled, LimitEvent, Scope, EVENTS};
use crate::metrics::{CloseKind, ShardMetrics};

/// How often a shard reports its users' use of per-user rules to the other nodes.
pub(super) const REPORT_MS: u64 = 250;

/// Filler for unused entries of a rule list.
const NO_RULE: Compiled = Compiled {
    ms_per_event: 1.0,
    burst: 0.0,
};

/// The message of a 114 reply, per [`LimitEvent`].
const RATE_LIMITED_MESSAGES: [&str; crate::limits::EVENTS] = [
    "rate limit exceeded: commands",
    "rate limit exceeded: publish",
    "rate limit exceeded: send",
    "rate limit exceeded: subscribe",
    "rate limit exceeded: typing",
    "rate limit exceeded: call",
    "rate limit exceeded: notification",
];

/// The rate limits in force and the per-user buckets this shard keeps.
#[derive(Debug)]
pub(super) struct RateLimits {
    /// Rate limits in force (replaced whole at runtime).
    pub(super) table: Arc<LimitTable>,
    /// Per-user rate-limit buckets kept by this shard, for users the shared table
    /// ([`crate::limits::UserBuckets`]) had no room for or with `rate_limit_users = 0`
    /// (made on a user's first limited command, dropped with its last connection here).
    pub(super) user_buckets: HashMap<Arc<str>, Box<Buckets>>,
    /// With nodes sharing Redis: what users took of their per-user rules here since
    /// the last report to the other nodes ([`ShardCore::report_spent`]).
    pub(super) spent: HashMap<Arc<str>, UserSpent>,
    /// Tick of the last report.
    pub(super) spent_at: u32,
}

impl RateLimits {
    pub(super) fn new(table: Arc<LimitTable>) -> RateLimits {
        RateLimits {
            table,
            user_buckets: HashMap::new(),
            spent: HashMap::new(),
            spent_at: 0,
        }
    }
}

impl ShardCore {
    /// Hot path (every command while rules exist): take one event from the
    /// connection's and the user's buckets for `event` and for `command`; when one is
    /// empty, take nothing, answer 114 with when to retry, and close a connection that
    /// keeps at it (4008).
    pub(super) fn within_limits(&mut self, slot: u32, id: u32, event: LimitEvent) -> bool {
        let now_ms = self.tick.wrapping_mul(self.cfg.tick_ms as u32);
        let table = &*self.rate.table;
        let conn = &mut self.conns[slot as usize];
        let Some(identity) = conn.identity.as_ref() else {
            return true;
        };
        let tier = identity
            .claims
            .iter()
            .find(|(k, _)| &**k == "tier")
            .and_then(|(_, v)| v.first())
            .map(|v| &**v);
        let events = [LimitEvent::Command, event];
        let n = if event == LimitEvent::Command { 1 } else { 2 };
        // [connection, user] × [command, event]
        let mut rules = [[None; 2]; 2];
        for (s, scope) in [Scope::Connection, Scope::User].into_iter().enumerate() {
            for i in 0..n {
                rules[s][i] = table.rule(tier, scope, events[i]);
            }
        }
        if rules.iter().flatten().all(Option::is_none) {
            return true;
        }
        // The user-scope rules that apply, and the user's key in the shared buckets
        // (computed once per connection).
        let mut user_rules = [(LimitEvent::Command, NO_RULE); 2];
        let mut user_n = 0;
        for i in 0..n {
            if let Some(r) = rules[1][i] {
                user_rules[user_n] = (events[i], r);
                user_n += 1;
            }
        }
        let users = self.cfg.rate_limit_users as usize;
        let shared = (user_n > 0 && users > 0).then(|| self.mesh.user_buckets(users));
        let user_key = match shared {
            Some(shared) => {
                let state = conn.limits.get_or_insert_with(Default::default);
                if state.user_key == 0 {
                    state.user_key = shared.key(&identity.user);
                }
                state.user_key
            }
            None => 0,
        };
        let user_rules = &user_rules[..user_n];
        // The connection's buckets: checked first, taken only when everything fits.
        let fresh: Buckets = Default::default();
        let mine = conn.limits.as_ref().map_or(&fresh, |l| &l.buckets);
        let mut wait: Option<(u32, LimitEvent)> = None;
        for i in 0..n {
            let Some(r) = rules[0][i] else { continue };
            if let Err(ms) = mine[events[i].index()].check(r, now_ms) {
                if wait.is_none_or(|(w, _)| ms > w) {
                    wait = Some((ms, events[i]));
                }
            }
        }
        // The user's buckets, shared by the shards: taken all or none when the
        // connection's fit; else only read, to say the longest wait.
        let mut on_this_shard = user_n > 0 && shared.is_none();
        if let Some(shared) = shared {
            match wait {
                Some((w, _)) => {
                    let (ms, e) = shared.wait(user_key, user_rules, now_ms);
                    if ms > w {
                        wait = Some((ms, e));
                    }
                }
                None => match shared.take(user_key, user_rules, now_ms, table.user_idle_ms()) {
                    Ok(true) => {}
                    // No room in the shared table: this shard keeps the user's buckets.
                    Ok(false) => on_this_shard = true,
                    Err(refused) => wait = Some(refused),
                },
            }
        }
        if on_this_shard {
            let theirs = self
                .rate
                .user_buckets
                .get(&*identity.user)
                .map_or(&fresh, |b| &**b);
            for &(e, r) in user_rules {
                if let Err(ms) = theirs[e.index()].check(r, now_ms) {
                    if wait.is_none_or(|(w, _)| ms > w) {
                        wait = Some((ms, e));
                    }
                }
            }
        }
        if let Some((ms, e)) = wait {
            ShardMetrics::add(&self.metrics.rate_limited[e.index()], 1);
            let state = conn.limits.get_or_insert_with(Default::default);
            state.refused_in_a_row += 1;
            let limit = self.cfg.rate_limit_disconnect_after;
            if limit > 0 && state.refused_in_a_row >= limit {
                tracing::info!(
                    target: "security",
                    client = %self.client_id(slot),
                    event = e.name(),
                    "closed after repeated rate-limit refusals"
                );
                self.begin_close(
                    slot,
                    CloseCode::RATE_LIMITED,
                    "rate limits exceeded repeatedly",
                    CloseKind::RateLimited,
                );
            } else {
                let why = RATE_LIMITED_MESSAGES[e.index()];
                self.reply_rate_limited(slot, id, why, ms.max(1));
            }
            return false;
        }
        let state = conn.limits.get_or_insert_with(Default::default);
        state.refused_in_a_row = 0;
        let mine = &mut state.buckets;
        for i in 0..n {
            if let Some(r) = rules[0][i] {
                mine[events[i].index()].take(r, now_ms);
            }
        }
        if on_this_shard {
            let user = &identity.user;
            let theirs = match self.rate.user_buckets.get_mut(&**user) {
                Some(b) => b,
                None => self.rate.user_buckets.entry(user.clone()).or_default(),
            };
            for &(e, r) in user_rules {
                theirs[e.index()].take(r, now_ms);
            }
        }
        if self.shared.link.is_some() && user_n > 0 {
            let user = &identity.user;
            let spent = match self.rate.spent.get_mut(&**user) {
                Some(s) => s,
                None => self.rate.spent.entry(user.clone()).or_insert(UserSpent {
                    user: user.clone(),
                    tier: tier.map(Arc::from),
                    counts: [0; EVENTS],
                }),
            };
            for &(e, _) in user_rules {
                spent.counts[e.index()] += 1;
            }
        }
        true
    }

    /// Every [`REPORT_MS`]: hand what users took here to the cluster thread, for the
    /// other nodes (dropped while Redis is away: each node limits alone then).
    pub(super) fn report_spent(&mut self) {
        if self.rate.spent.is_empty() {
            return;
        }
        let every = (REPORT_MS / self.cfg.tick_ms.max(1)).max(1) as u32;
        if self.tick.wrapping_sub(self.rate.spent_at) < every {
            return;
        }
        self.rate.spent_at = self.tick;
        if self.shared.up {
            let out = &mut self.shared.out.spent;
            out.extend(self.rate.spent.drain().map(|(_, s)| s));
        } else {
            self.rate.spent.clear();
        }
    }

    /// Users' use of per-user rules on other nodes: count it here too.
    pub(super) fn charge_spent(&mut self, list: Vec<UserSpent>) {
        let now_ms = self.tick.wrapping_mul(self.cfg.tick_ms as u32);
        let table = self.rate.table.clone();
        if table.is_empty() {
            return;
        }
        let users = self.cfg.rate_limit_users as usize;
        for s in list {
            for e in LimitEvent::ALL {
                let n = s.counts[e.index()];
                let Some(rule) = (n > 0)
                    .then(|| table.rule(s.tier.as_deref(), Scope::User, e))
                    .flatten()
                else {
                    continue;
                };
                if users > 0 {
                    let shared = self.mesh.user_buckets(users);
                    let idle = table.user_idle_ms();
                    shared.charge(shared.key(&s.user), (e, rule), n, now_ms, idle);
                }
                if let Some(b) = self.rate.user_buckets.get_mut(&*s.user) {
                    b[e.index()].charge(rule, n, now_ms);
                }
            }
        }
    }
}
