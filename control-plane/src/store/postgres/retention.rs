//! Retention on PostgreSQL: each channel loses what is beyond its namespace's
//! `retain_ms` / `retain_count` (rules and arithmetic in `crate::store::retention`),
//! a few channels between commits.
//!
//! A channel costs one statement when nothing goes (its epochs with their ends and the
//! first row inside the age limit: a loose index scan over the primary key and a seek
//! of the time index per epoch), and one transaction more when something does (the
//! publications and their revisions deleted). Owns that SQL.

use postgres::types::ToSql;
use switchboard_engine::journal::NamespacePolicy;

use crate::sql::PgStore;
use crate::store::retention::{cut, keep_of, Ends, Keep};

/// Channels one pruning step visits here (fewer than on SQLite: every statement is a
/// round trip, and commits wait for the step).
pub(crate) const PRUNE_CHANNELS: i64 = 32;

/// Every epoch of `$1` with its first and last (offset, time), and the first offset
/// stored at or after `$2` (NULL when none is).
const EPOCHS: &str = "WITH RECURSIVE e (epoch) AS (
     (SELECT epoch FROM publications WHERE channel = $1 ORDER BY epoch LIMIT 1)
     UNION ALL
     SELECT (SELECT p.epoch FROM publications p WHERE p.channel = $1 AND p.epoch > e.epoch
             ORDER BY p.epoch LIMIT 1)
     FROM e WHERE e.epoch IS NOT NULL
 )
 SELECT e.epoch, f.\"offset\", f.ts_ms, l.\"offset\", l.ts_ms,
     (SELECT q.\"offset\" FROM publications q
      WHERE q.channel = $1 AND q.epoch = e.epoch AND q.ts_ms >= $2
      ORDER BY q.ts_ms, q.\"offset\" LIMIT 1)
 FROM e
 CROSS JOIN LATERAL (SELECT \"offset\", ts_ms FROM publications
     WHERE channel = $1 AND epoch = e.epoch ORDER BY \"offset\" LIMIT 1) f
 CROSS JOIN LATERAL (SELECT \"offset\", ts_ms FROM publications
     WHERE channel = $1 AND epoch = e.epoch ORDER BY \"offset\" DESC LIMIT 1) l
 WHERE e.epoch IS NOT NULL";

/// Prune the channels after `after` at time `now`; how many publications went, and the
/// last channel (None when the round is complete).
pub(crate) fn prune_channels(
    store: &mut PgStore,
    namespaces: &[NamespacePolicy],
    after: &str,
    now: i64,
) -> Result<(usize, Option<String>), postgres::Error> {
    let next = store
        .prepared("SELECT channel FROM streams WHERE channel > $1 ORDER BY channel LIMIT $2")?;
    let channels: Vec<String> = store
        .client
        .query(&next, &[&after, &PRUNE_CHANNELS])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut gone = 0;
    for channel in &channels {
        let keep = keep_of(channel, namespaces, now);
        if !keep.everything() {
            gone += prune(store, channel, keep)?;
        }
    }
    let last = (channels.len() as i64 == PRUNE_CHANNELS)
        .then(|| channels.into_iter().next_back())
        .flatten();
    Ok((gone, last))
}

/// Delete `channel`'s publications (and their revisions) beyond `keep`; how many went.
pub(crate) fn prune(
    store: &mut PgStore,
    channel: &str,
    keep: Keep,
) -> Result<usize, postgres::Error> {
    let epochs = store.prepared(EPOCHS)?;
    let cutoff = keep.cutoff_ms.unwrap_or(i64::MAX);
    let rows = store.client.query(&epochs, &[&channel, &cutoff])?;
    let mut spans = Vec::with_capacity(rows.len());
    let mut inside = std::collections::HashMap::new();
    for r in &rows {
        let epoch = r.get::<_, i64>(0) as u64;
        let ends = Ends {
            first: (r.get::<_, i64>(1) as u64, r.get(2)),
            last: (r.get::<_, i64>(3) as u64, r.get(4)),
        };
        if let Some(first) = r.get::<_, Option<i64>>(5) {
            inside.insert(epoch, first as u64);
        }
        spans.push((epoch, ends));
    }
    let cuts = cut(spans, keep, |epoch, ends, _| {
        Ok::<_, postgres::Error>(inside.get(&epoch).copied().unwrap_or(ends.last.0 + 1))
    })?;
    if cuts.is_empty() {
        return Ok(0);
    }
    let (epochs, upto): (Vec<i64>, Vec<i64>) = cuts
        .iter()
        .map(|&(e, from)| (e as i64, from.min(i64::MAX as u64) as i64))
        .unzip();
    let params: [&(dyn ToSql + Sync); 3] = [&channel, &epochs, &upto];
    let mut tx = store.client.transaction()?;
    let gone = tx.execute(
        "DELETE FROM publications p USING UNNEST($2::int8[], $3::int8[]) AS c (epoch, upto)
         WHERE p.channel = $1 AND p.epoch = c.epoch AND p.\"offset\" < c.upto",
        &params,
    )?;
    tx.execute(
        "DELETE FROM revisions r USING UNNEST($2::int8[], $3::int8[]) AS c (epoch, upto)
         WHERE r.channel = $1 AND r.epoch = c.epoch AND r.target < c.upto",
        &params,
    )?;
    tx.commit()?;
    Ok(gone as usize)
}
