//! Start-up on PostgreSQL: connect, migrate, and read back what the shards continue
//! from — streams with their newest publications, marks, Socket.IO sessions, the
//! reconnect key — before the shards start.
//!
//! Owns reading each stream's newest window (streams in chunks, one statement each: a
//! lateral read of the primary key per stream, revisions joined). The rules shared with
//! SQLite (which streams continue, dormant ones, marks, sessions, keys) are
//! `crate::store::bookkeeping`'s.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_engine::journal::{
    MarkRecord, NamespacePolicy, SeedEntry, SeedStream, SessionRecord,
};

use super::pages::{entry_columns, entry_of};
use crate::sql::{describe, PgError, PgStore};
use crate::store::bookkeeping::{self, Planned};

/// Streams read per statement.
const CHUNK: usize = 512;

/// The newest publications (at most `$4`, stored at or after `$3`) of each stream
/// (`$1` channels in `$2` epochs), newest first per stream.
const WINDOWS: &str = concat!(
    "SELECT w.* FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[])
         AS c (channel, epoch, oldest, lim)
     CROSS JOIN LATERAL (SELECT p.channel AS seed_channel, p.ts_ms AS seed_ts, p.key AS seed_key, ",
    entry_columns!(),
    " WHERE p.channel = c.channel AND p.epoch = c.epoch AND p.ts_ms >= c.oldest
         ORDER BY p.\"offset\" DESC LIMIT c.lim) w"
);

/// What the shards continue from.
#[derive(Debug)]
pub(crate) struct Reading {
    pub clean: bool,
    pub seeds: Vec<SeedStream>,
    pub marks: Vec<MarkRecord>,
    pub sessions: Vec<SessionRecord>,
    pub reconnect_key: Vec<u8>,
}

/// Connect to `url`, bring the schema up to date and read back what `node` (""
/// alone) continues from.
pub(crate) fn open(
    url: &str,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
    node: &str,
) -> Result<(PgStore, Reading), PgError> {
    let mut store = PgStore::connect(url, Duration::from_secs(10))?;
    super::migrate(&mut store)?;
    let target = store.target().to_string();
    super::hold_node_lock(&mut store, node)?;
    let fail = |what: &str, e: String| PgError::Query {
        target: target.clone(),
        message: format!("cannot read {what}: {e}"),
    };
    let clean = bookkeeping::was_clean(&mut store, node)
        .map_err(|e| fail("the run marks", e.to_string()))?;
    let mut planned = bookkeeping::plan_streams(&mut store, namespaces, stream_idle_ms, clean)
        .map_err(|e| fail("streams", e.to_string()))?;
    let kept = windows(&mut store, &mut planned).map_err(|e| fail("streams", describe(&e)))?;
    let seeds = bookkeeping::finish_seeds(planned, kept);
    let marks = bookkeeping::read_marks(&mut store).map_err(|e| fail("marks", e.to_string()))?;
    let sessions = bookkeeping::take_sessions(&mut store, Some(node))
        .map_err(|e| fail("Socket.IO sessions", e.to_string()))?;
    let reconnect_key =
        bookkeeping::reconnect_key(&mut store).map_err(|e| fail("keys", e.to_string()))?;
    Ok((
        store,
        Reading {
            clean,
            seeds,
            marks,
            sessions,
            reconnect_key,
        },
    ))
}

/// The newest publications each continuing, active stream keeps in memory (edits and
/// deletions folded in), oldest first.
fn windows(
    store: &mut PgStore,
    planned: &mut HashMap<String, Planned<'_>>,
) -> Result<HashMap<String, Vec<SeedEntry>>, postgres::Error> {
    let now = crate::clock::now_ms() as i64;
    let wanted: Vec<(&str, i64, i64, i64)> = planned
        .iter()
        .filter_map(|(channel, (seed, ns))| {
            let ns = (*ns)?;
            if ns.history_size == 0 || seed.dormant {
                return None;
            }
            let oldest = now.saturating_sub(ns.history_ttl_ms.min(i64::MAX as u64) as i64);
            let epoch = seed.epoch? as i64;
            Some((
                channel.as_str(),
                epoch,
                oldest,
                ns.history_size.min(i64::MAX as usize) as i64,
            ))
        })
        .collect();
    let mut out: HashMap<String, Vec<SeedEntry>> = HashMap::new();
    let q = store.prepared(WINDOWS)?;
    for chunk in wanted.chunks(CHUNK) {
        let channels: Vec<&str> = chunk.iter().map(|w| w.0).collect();
        let epochs: Vec<i64> = chunk.iter().map(|w| w.1).collect();
        let oldest: Vec<i64> = chunk.iter().map(|w| w.2).collect();
        let limits: Vec<i64> = chunk.iter().map(|w| w.3).collect();
        for r in store
            .client
            .query(&q, &[&channels, &epochs, &oldest, &limits])?
        {
            let channel: String = r.get(0);
            let (ts_ms, key): (i64, Option<String>) = (r.get(1), r.get(2));
            let entry = entry_of(&r, 3);
            out.entry(channel)
                .or_default()
                .push(bookkeeping::seed_entry(entry, ts_ms, key, now));
        }
    }
    for list in out.values_mut() {
        list.reverse();
    }
    Ok(out)
}
