//! Retention on disk, the same rules on either database: how much of each channel the
//! store keeps (its namespace's `retain_ms` / `retain_count`, or the most generous
//! stored namespace's for a channel whose namespace is no longer durable), where each
//! epoch of a channel is cut, and how long inbox cursors and receipts are kept.
//!
//! Owns those rules and the arithmetic of the cut. Does not own reading a channel's
//! epochs or deleting rows (per database: `archive::prune` for SQLite,
//! `crate::store::postgres::retention` for PostgreSQL).

use switchboard_engine::journal::{Durability, NamespacePolicy, Retention};

use super::bookkeeping::namespace_of;

/// Channels one pruning step visits (bounded, so commits go on in between however
/// many channels there are).
pub(crate) const PRUNE_CHANNELS: usize = 256;

/// Marks (inbox cursors, receipts) not updated for this long are deleted, unless the
/// longest durable `history_ttl_ms` is longer.
const MARKS_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// How much of a channel the store keeps: publications newer than `cutoff_ms` and at
/// most the newest `count` (either absent: no such limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    pub cutoff_ms: Option<i64>,
    pub count: Option<u64>,
}

impl Keep {
    /// Whether it keeps everything.
    pub(crate) fn everything(&self) -> bool {
        self.cutoff_ms.is_none() && self.count.is_none()
    }
}

/// A channel's stored ends in one epoch: (offset, time) of the oldest and newest row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub first: (u64, i64),
    pub last: (u64, i64),
}

/// What the store keeps of `channel` at time `now`.
pub(crate) fn keep_of(channel: &str, namespaces: &[NamespacePolicy], now: i64) -> Keep {
    let retention =
        match namespace_of(channel, namespaces).filter(|n| n.durability != Durability::None) {
            Some(n) => n.retention,
            None => most_generous(namespaces),
        };
    Keep {
        cutoff_ms: retention
            .max_age_ms
            .map(|age| now.saturating_sub(age.min(i64::MAX as u64) as i64)),
        count: retention.max_count,
    }
}

/// Whether any stored namespace keeps less than everything (so pruning rounds run).
pub(crate) fn limited(namespaces: &[NamespacePolicy]) -> bool {
    namespaces
        .iter()
        .filter(|n| n.durability != Durability::None)
        .any(|n| !n.retention.forever())
}

/// Marks last updated before this go.
pub(crate) fn marks_cutoff(namespaces: &[NamespacePolicy], now: i64) -> i64 {
    let ttl = namespaces
        .iter()
        .filter(|n| n.durability != Durability::None)
        .map(|n| n.history_ttl_ms)
        .max();
    let marks_ttl = ttl.unwrap_or(0).max(MARKS_TTL_MS);
    now.saturating_sub(marks_ttl.min(i64::MAX as u64) as i64)
}

/// The retention that keeps the most: a channel whose namespace is no longer configured
/// durable is kept as long as any stored namespace keeps its own (forever if one does).
fn most_generous(namespaces: &[NamespacePolicy]) -> Retention {
    let mut out = Retention::default();
    let mut durable = namespaces
        .iter()
        .filter(|n| n.durability != Durability::None)
        .map(|n| n.retention)
        .peekable();
    if durable.peek().is_none() {
        return out;
    }
    let (mut age, mut count) = (Some(0), Some(0));
    for r in durable {
        age = age.zip(r.max_age_ms).map(|(a, b)| a.max(b));
        count = count.zip(r.max_count).map(|(a, b)| a.max(b));
    }
    (out.max_age_ms, out.max_count) = (age, count);
    out
}

/// Where each epoch of a channel is cut: `(epoch, from)` for every epoch that loses
/// the offsets below `from`. `spans` are the channel's epochs with their ends; the
/// count is taken newest epoch first (by their newest row's time), whose offsets are
/// dense within an epoch (every sequenced publication of a stored namespace is stored),
/// so that boundary is arithmetic; the age boundary is `seek(epoch, ends, cutoff)`: the
/// first offset stored at or after `cutoff`.
pub(crate) fn cut<E>(
    mut spans: Vec<(u64, Ends)>,
    keep: Keep,
    mut seek: impl FnMut(u64, Ends, i64) -> Result<u64, E>,
) -> Result<Vec<(u64, u64)>, E> {
    spans.sort_unstable_by_key(|(_, e)| std::cmp::Reverse(e.last.1));
    let mut left = keep.count.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for (epoch, e) in spans {
        let mut from = e.first.0;
        if let Some(cutoff) = keep.cutoff_ms {
            if e.last.1 < cutoff {
                from = e.last.0 + 1;
            } else if e.first.1 < cutoff {
                from = seek(epoch, e, cutoff)?;
            }
        }
        let span = e.last.0 - e.first.0 + 1;
        from = from.max(e.last.0 + 1 - span.min(left));
        left -= span.min(left);
        if from > e.first.0 {
            out.push((epoch, from));
        }
    }
    Ok(out)
}
