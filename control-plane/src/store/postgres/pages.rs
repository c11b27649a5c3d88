//! History pages on PostgreSQL: one statement per page — a range of the `publications`
//! primary key (channel, epoch, offset), time bounds turned into offsets by two seeks of
//! the time index inside it, the latest revisions joined in — merged with the owner's
//! kept publications. The same page the SQLite store answers, in one round trip: a
//! transaction or a binary search would cost one round trip per statement, several
//! times the reading itself.
//!
//! Owns that SQL. Does not own deciding that memory cannot answer (the owner shard).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_engine::journal::revision_of;
use switchboard_engine::streams::Entry;
use switchboard_protocol::history::Page;
use switchboard_protocol::{Position, Revised};

use crate::sql::PgStore;
use crate::store::{apply_revision, format_from};

/// A page read: the position of its epoch, the publications, whether more follow.
#[derive(Debug)]
pub struct PgPage {
    /// The position of the page's epoch.
    pub top: Position,
    /// The publications, in the page's order.
    pub entries: Vec<Entry>,
    /// Whether another page follows.
    pub more: bool,
}

/// What [`entry_of`] reads, and from where: publications `p` with their latest
/// revision `r` (a statement adds its `WHERE`).
macro_rules! entry_columns {
    () => {
        "p.\"offset\", p.format, p.data, p.meta, p.sender, p.author, p.event, p.revises,
        r.ts_ms, r.deleted, r.format, r.data, r.meta
 FROM publications p
 LEFT JOIN revisions r ON r.channel = p.channel AND r.epoch = p.epoch AND r.target = p.\"offset\""
    };
}
pub(super) use entry_columns;

/// The page's publications with their latest revision, between offsets `$3` and `$4`
/// (exclusive), at most `$5`; with time bounds, also stored at or after `$6` and at or
/// before `$7` (inclusive; Unix ms): each time bound becomes an offset with one seek of
/// the time index (an InitPlan), so the page itself is one range of the primary key
/// whatever the bounds. Without time bounds no seek is made: stored times are in
/// offset order only within what one writer committed, and nodes sharing the database
/// commit a channel's publications from several writers.
fn page_sql(reverse: bool, from: bool, to: bool) -> String {
    let mut sql = String::from(concat!(
        "SELECT ",
        entry_columns!(),
        " WHERE p.channel = $1 AND p.epoch = $2 AND p.\"offset\" > $3 AND p.\"offset\" < $4"
    ));
    let mut n = 5;
    if from {
        n += 1;
        sql.push_str(&format!(
            " AND p.\"offset\" >= COALESCE((SELECT q.\"offset\" FROM publications q
                WHERE q.channel = $1 AND q.epoch = $2 AND q.ts_ms >= ${n}
                ORDER BY q.ts_ms, q.\"offset\" LIMIT 1), 9223372036854775807)"
        ));
    }
    if to {
        n += 1;
        sql.push_str(&format!(
            " AND p.\"offset\" <= COALESCE((SELECT q.\"offset\" FROM publications q
                WHERE q.channel = $1 AND q.epoch = $2 AND q.ts_ms <= ${n}
                ORDER BY q.ts_ms DESC, q.\"offset\" DESC LIMIT 1), -1)"
        ));
    }
    sql.push_str(if reverse {
        " ORDER BY p.\"offset\" DESC LIMIT $5"
    } else {
        " ORDER BY p.\"offset\" ASC LIMIT $5"
    });
    sql
}

/// Read `page` (its epoch named) of `channel`, whose owner is at `top` and keeps `kept`
/// (the current epoch's publications within the page's bounds, oldest first); `None`
/// when the page's epoch is neither the current one nor stored.
pub fn read(
    store: &mut PgStore,
    channel: &str,
    page: &Page,
    top: Position,
    kept: &[Entry],
) -> Result<Option<PgPage>, postgres::Error> {
    let epoch = page.epoch.unwrap_or(top.epoch);
    let current = epoch == top.epoch;
    let top = if current {
        top
    } else {
        let last = store.prepared(
            "SELECT max(\"offset\") FROM publications WHERE channel = $1 AND epoch = $2",
        )?;
        let row = store
            .client
            .query_one(&last, &[&channel, &(epoch as i64)])?;
        match row.get::<_, Option<i64>>(0) {
            Some(offset) => Position {
                epoch,
                offset: offset as u64,
            },
            None => return Ok(None),
        }
    };
    let lo = page.after.min(i64::MAX as u64) as i64;
    let hi = page.before.unwrap_or(u64::MAX).min(i64::MAX as u64) as i64;
    let as_ms = |ms: u64| ms.min(i64::MAX as u64) as i64;
    let want = page.limit as usize + 1;
    let sql = page_sql(page.reverse, page.from_ms.is_some(), page.to_ms.is_some());
    let sql = store.prepared_owned(sql)?;
    let (epoch_code, limit) = (epoch as i64, want as i64);
    let (from, to) = (page.from_ms.map(as_ms), page.to_ms.map(as_ms));
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        vec![&channel, &epoch_code, &lo, &hi, &limit];
    params.extend(
        from.as_ref()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync)),
    );
    params.extend(
        to.as_ref()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync)),
    );
    let rows = store.client.query(&sql, &params)?;
    let mut entries: Vec<Entry> = rows.iter().map(|r| entry_of(r, 0)).collect();
    if current {
        let within = |e: &&Entry| page.admits(e.offset);
        entries.extend(kept.iter().filter(within).cloned());
        entries.sort_unstable_by_key(|e| e.offset);
        entries.dedup_by_key(|e| e.offset);
        if page.reverse {
            entries.reverse();
        }
    }
    entries.truncate(want);
    let more = entries.len() == want;
    entries.truncate(want - 1);
    Ok(Some(PgPage { top, entries, more }))
}

/// A publication read back (columns of [`entry_columns`] from `at`), its latest
/// revision applied.
pub(super) fn entry_of(r: &postgres::Row, at: usize) -> Entry {
    let mut e = Entry {
        offset: r.get::<_, i64>(at) as u64,
        tick: 0,
        format: format_from(i64::from(r.get::<_, i16>(at + 1))),
        data: Bytes::from(r.get::<_, Vec<u8>>(at + 2)),
        meta: r.get::<_, Option<Vec<u8>>>(at + 3).map(Bytes::from),
        from: r.get::<_, Option<String>>(at + 4).map(Arc::from),
        author: r.get::<_, Option<String>>(at + 5).map(Arc::from),
        event: r.get::<_, Option<String>>(at + 6).map(Arc::from),
        revises: r.get::<_, Option<i64>>(at + 7).map(revision_of),
        revised: None,
    };
    if let Some(when) = r.get::<_, Option<i64>>(at + 8) {
        let revised = Revised {
            at_ms: when.max(0) as u64,
            deleted: r.get(at + 9),
        };
        let format = format_from(i64::from(r.get::<_, i16>(at + 10)));
        apply_revision(&mut e, revised, format, r.get(at + 11), r.get(at + 12));
    }
    e
}

/// What the store holds at `target` of `channel` in `epoch`, for a revision's check:
/// the original's author and `revises` code, if it is stored, and whether it is
/// deleted (one round trip).
pub fn original(
    store: &mut PgStore,
    channel: &str,
    epoch: u64,
    target: u64,
) -> Result<(crate::store::Original, Option<bool>), postgres::Error> {
    let q = store.prepared(
        "SELECT p.author, p.revises, r.deleted FROM publications p
         LEFT JOIN revisions r ON r.channel = p.channel AND r.epoch = p.epoch
             AND r.target = p.\"offset\"
         WHERE p.channel = $1 AND p.epoch = $2 AND p.\"offset\" = $3",
    )?;
    let row = store.client.query_opt(
        &q,
        &[
            &channel,
            &(epoch as i64),
            &(target.min(i64::MAX as u64) as i64),
        ],
    )?;
    Ok(match row {
        Some(r) => (Some((r.get(0), r.get(1))), r.get(2)),
        None => (None, None),
    })
}
