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
/// (exclusive), and stored between `$5` and `$6` (inclusive; Unix ms): the time bounds
/// become offsets with one seek each of the time index (an InitPlan each), so the
/// page itself is one range of the primary key whatever the bounds.
const PAGE: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " WHERE p.channel = $1 AND p.epoch = $2
   AND p.\"offset\" > GREATEST($3, COALESCE((SELECT q.\"offset\" FROM publications q
        WHERE q.channel = $1 AND q.epoch = $2 AND q.ts_ms >= $5
        ORDER BY q.ts_ms, q.\"offset\" LIMIT 1), 9223372036854775807) - 1)
   AND p.\"offset\" < LEAST($4, COALESCE((SELECT q.\"offset\" FROM publications q
        WHERE q.channel = $1 AND q.epoch = $2 AND q.ts_ms <= $6
        ORDER BY q.ts_ms DESC, q.\"offset\" DESC LIMIT 1), -1) + 1)
 ORDER BY p.\"offset\" "
);

fn page_sql(reverse: bool) -> String {
    format!(
        "{PAGE}{}",
        if reverse {
            "DESC LIMIT $7"
        } else {
            "ASC LIMIT $7"
        }
    )
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
    let sql = store.prepared_owned(page_sql(page.reverse))?;
    let rows = store.client.query(
        &sql,
        &[
            &channel,
            &(epoch as i64),
            &lo,
            &hi,
            &page.from_ms.map_or(i64::MIN, as_ms),
            &page.to_ms.map_or(i64::MAX, as_ms),
            &(want as i64),
        ],
    )?;
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
