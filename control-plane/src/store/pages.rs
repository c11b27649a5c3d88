//! History pages read from the store: a channel's archived publications (a range of the
//! clustered `archive`, never a scan), the log's tail where the page reaches it, and the
//! publications the owner shard keeps in memory, merged into one page.
//!
//! Time bounds become offset bounds first, by binary search over the archive's primary
//! key ([`first_at_or_after`]: about 20 point reads for a million rows). The log's tail (what the writer has not yet archived: up to
//! `store.archive_after_ms` of writes) is unindexed; it is read only when the page
//! reaches past the archive's newest row and short of the owner's kept publications.
//! Everything is read in one transaction: one snapshot, however the writer moves rows
//! meanwhile.
//!
//! Owns the SQL of a page. Does not own deciding that memory cannot answer (the owner
//! shard) or the thread that runs it (`reader`).

use rusqlite::{params, Connection, Transaction};
use switchboard_engine::streams::Entry;
use switchboard_protocol::history::Page;
use switchboard_protocol::Position;

use super::archive::{self, ends, first_at_or_after, Row, COLUMNS};
use super::revisions;

/// A page read.
#[derive(Debug)]
pub(super) struct PageOut {
    /// The position of the page's epoch: the channel's latest for the current one, the
    /// last stored for an older one.
    pub top: Position,
    /// The publications, in the page's order.
    pub entries: Vec<Entry>,
    /// Whether another page follows.
    pub more: bool,
}

/// Why a page cannot be read.
#[derive(Debug)]
pub(super) enum PageError {
    /// The epoch is neither the channel's current one nor stored.
    UnknownEpoch(u64, Position),
    /// SQLite failed.
    Store(rusqlite::Error),
    /// Another database failed (in its words).
    Failed(String),
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::UnknownEpoch(epoch, _) => write!(f, "epoch {epoch:016x} is not stored"),
            PageError::Store(e) => write!(f, "{e}"),
            PageError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<rusqlite::Error> for PageError {
    fn from(e: rusqlite::Error) -> Self {
        PageError::Store(e)
    }
}

/// Read `page` (its epoch named) of `channel`, whose owner is at `top` and keeps `kept`
/// (the current epoch's publications within the page's bounds, oldest first).
pub(super) fn read(
    conn: &mut Connection,
    channel: &str,
    page: &Page,
    top: Position,
    kept: &[Entry],
) -> Result<PageOut, PageError> {
    let tx = conn.transaction()?;
    let epoch = page.epoch.unwrap_or(top.epoch);
    let current = epoch == top.epoch;
    let ends = ends(&tx, channel, epoch)?;
    let archived = archive::archived_upto(&tx)?;
    let mut tail: Option<Vec<Row>> = None;
    let top = if current {
        top
    } else {
        let rows = tail.insert(tail_rows(&tx, archived, channel, epoch)?);
        let last = rows.iter().map(|r| r.offset as u64).max();
        match ends.map(|e| e.last.0).max(last) {
            Some(offset) => Position { epoch, offset },
            None => return Err(PageError::UnknownEpoch(epoch, top)),
        }
    };
    // Offset bounds, exclusive at both ends, narrowed by the time bounds.
    let mut lo = page.after;
    let mut hi = page.before.unwrap_or(u64::MAX);
    if let Some(e) = ends {
        if let Some(from) = page.from_ms.map(as_ms) {
            lo = lo.max(if from > e.last.1 {
                e.last.0
            } else {
                first_at_or_after(&tx, channel, epoch, e, from)?.saturating_sub(1)
            });
        }
        if let Some(to) = page.to_ms.map(as_ms) {
            if to < e.first.1 {
                hi = hi.min(e.first.0);
            } else if to < e.last.1 {
                hi = hi.min(first_at_or_after(&tx, channel, epoch, e, to + 1)?);
            }
        }
    }
    let want = page.limit as usize + 1;
    let fits = |offset: u64, ts: i64| {
        offset > lo && offset < hi && page.admits(offset) && page.admits_time(ts.max(0) as u64)
    };
    let mut rows = archive_range(&tx, channel, epoch, (lo, hi), page.reverse, want)?;
    rows.retain(|r| fits(r.offset as u64, r.ts_ms));
    // The tail holds what is newer than the archive's newest row; read it when the page
    // reaches there before the kept publications begin.
    let kept = if current { kept } else { &[] };
    let kept_from = kept.first().map_or(top.offset + 1, |e| e.offset);
    let archive_to = ends.map_or(0, |e| e.last.0);
    if hi.min(kept_from) > archive_to + 1 && (page.reverse || rows.len() < want) {
        let tail = match tail.take() {
            Some(t) => t,
            None => tail_rows(&tx, archived, channel, epoch)?,
        };
        rows.extend(tail.into_iter().filter(|r| fits(r.offset as u64, r.ts_ms)));
    }
    let mut entries: Vec<Entry> = rows.into_iter().map(revisions::entry_of).collect();
    entries.extend(kept.iter().cloned());
    entries.sort_unstable_by_key(|e| e.offset);
    entries.dedup_by_key(|e| e.offset);
    // Edits and deletions: each original as it is now.
    revisions::fold(&tx, channel, epoch, &mut entries)?;
    tx.commit()?;
    if page.reverse {
        entries.reverse();
    }
    entries.truncate(want);
    let more = entries.len() == want;
    entries.truncate(want - 1);
    Ok(PageOut { top, entries, more })
}

fn as_ms(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

/// Up to `want` archived rows of `channel` in `epoch` strictly between the bounds,
/// oldest first (newest first with `reverse`).
fn archive_range(
    tx: &Transaction<'_>,
    channel: &str,
    epoch: u64,
    (lo, hi): (u64, u64),
    reverse: bool,
    want: usize,
) -> rusqlite::Result<Vec<Row>> {
    let order = if reverse { "DESC" } else { "ASC" };
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM archive WHERE channel = ?1 AND epoch = ?2
         AND offset > ?3 AND offset < ?4 ORDER BY offset {order} LIMIT ?5"
    ))?;
    let hi = hi.min(i64::MAX as u64) as i64;
    let rows = stmt.query_map(
        params![channel, epoch as i64, lo as i64, hi, want as i64],
        |r| Row::read(r, 0),
    )?;
    rows.collect()
}

/// The log's rows of `channel` in `epoch` after `archived` (a scan of the tail).
fn tail_rows(
    tx: &Transaction<'_>,
    archived: i64,
    channel: &str,
    epoch: u64,
) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM log WHERE id > ?1 AND channel = ?2 AND epoch = ?3"
    ))?;
    let rows = stmt.query_map(params![archived, channel, epoch as i64], |r| {
        Row::read(r, 0)
    })?;
    rows.collect()
}
