//! The archive: where stored publications live once they leave the log's tail, clustered
//! by channel and position so a channel's history is read as one range.
//!
//! The log takes every group commit as appended rows with no index, so a commit writes
//! a few sequential pages however many channels it touches. Indexing the log instead
//! makes every commit dirty one page per channel and index: 1,024 publications over
//! 1,000 channels went from 1.5–2.0 ms to 53–57 ms a commit (`cargo bench --bench
//! hot_paths -- group_commit`, `publications_over_1000_channels`). So the writer moves the
//! log's tail into `archive` in passes, sorted by channel first: a channel's rows of a
//! whole pass land on the same pages. A pass starts once [`ROWS_PER_CHANNEL`] rows wait
//! per channel that has any, or [`ARCHIVE_ROWS`] rows in all, or the oldest has waited
//! `store.archive_after_ms`. A pass costs 30 µs a row when each of 1,000 channels has one
//! row in it and 6.7 µs at 16 (`group_commit/archive_pass_over_1000_channels`), against
//! ~1.4 µs a row for the commit itself. A pass is written in chunks of whole channels (about
//! [`CHUNK_ROWS`] rows), each its own transaction, so group commits go on in between;
//! `INSERT OR IGNORE` makes a chunk written again after a crash harmless. The last step
//! deletes those log rows and records the last moved log id in `meta.archived` (0 when
//! the log is left empty: its next row is numbered 1 again).
//!
//! The archive has no time index (it would double the pages a pass writes); what is too
//! old is found per epoch by binary search on offsets ([`first_at_or_after`], [`prune`]).
//!
//! Readers take a channel's rows from the archive and from the log after `archived` (the
//! tail: up to `store.archive_after_ms` of writes), one row per offset ([`merge_tail`]).
//!
//! Owns the pass and the reading helpers. Does not own the group commit (`writer`) or
//! what start-up makes of the rows (`startup`).

use rusqlite::{params, Connection, OptionalExtension};

use super::retention::{cut, Ends, Keep};

/// A pass starts once this many rows wait per channel with rows waiting: each channel's
/// rows of a pass share the pages they land on, so the fewer channels a pass spreads
/// over, the cheaper each row (`group_commit/archive_pass_*` benches). Otherwise after
/// `store.archive_after_ms`.
pub(super) const ROWS_PER_CHANNEL: usize = 16;
/// A pass starts early once this many rows wait, and moves at most this many.
pub(super) const ARCHIVE_ROWS: usize = 65_536;
/// Rows per transaction of a pass, rounded up to whole channels.
pub(super) const CHUNK_ROWS: usize = 8_192;

/// The columns of a stored publication, in the order both tables and every reader use.
pub(super) const COLUMNS: &str =
    "channel, epoch, offset, ts_ms, format, data, meta, key, sender, event, author, revises";

/// One stored publication as a pass carries it (and as data requests export it).
#[derive(Debug)]
pub(crate) struct Row {
    pub channel: String,
    pub epoch: i64,
    pub offset: i64,
    pub ts_ms: i64,
    pub format: i64,
    pub data: Vec<u8>,
    pub meta: Option<Vec<u8>>,
    pub key: Option<String>,
    pub sender: Option<String>,
    pub event: Option<String>,
    pub author: Option<String>,
    /// The offset an edit changes (positive) or a deletion removes (negative).
    pub revises: Option<i64>,
}

impl Row {
    /// A row read with [`COLUMNS`] from column `at` on.
    pub(super) fn read(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
        Ok(Row {
            channel: r.get(at)?,
            epoch: r.get(at + 1)?,
            offset: r.get(at + 2)?,
            ts_ms: r.get(at + 3)?,
            format: r.get(at + 4)?,
            data: r.get(at + 5)?,
            meta: r.get(at + 6)?,
            key: r.get(at + 7)?,
            sender: r.get(at + 8)?,
            event: r.get(at + 9)?,
            author: r.get(at + 10)?,
            revises: r.get(at + 11)?,
        })
    }
}

/// A revision as stored in the `revises` column (see `journal::revision_code`).
pub(super) fn revises_code(r: switchboard_protocol::Revision) -> i64 {
    switchboard_engine::journal::revision_code(r)
}

/// The revision a `revises` column holds.
pub(super) fn revises_of(code: Option<i64>) -> Option<switchboard_protocol::Revision> {
    code.map(switchboard_engine::journal::revision_of)
}

/// A pass in progress: the rows it moves, sorted, and how far it got.
#[derive(Debug)]
pub(super) struct Pass {
    /// The last log id the pass moves.
    top: i64,
    rows: Vec<Row>,
    next: usize,
}

impl Pass {
    /// Rows the pass moves.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The last log id the pass moves; once complete, what `meta.archived` says.
    pub(super) fn top(&self) -> i64 {
        self.top
    }
}

/// The log id up to which rows are archived (0 before the first pass).
pub(super) fn archived_upto(conn: &Connection) -> rusqlite::Result<i64> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'archived'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Take up to [`ARCHIVE_ROWS`] log rows after `from`, sorted by channel and position;
/// `None` when the log has none.
pub(super) fn begin(conn: &Connection, from: i64) -> rusqlite::Result<Option<Pass>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, {COLUMNS} FROM log WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let mut top = from;
    let mut rows = Vec::new();
    let mut q = stmt.query(params![from, ARCHIVE_ROWS as i64])?;
    while let Some(r) = q.next()? {
        top = r.get(0)?;
        rows.push(Row::read(r, 1)?);
    }
    if rows.is_empty() {
        return Ok(None);
    }
    rows.sort_unstable_by(|a, b| {
        (a.channel.as_str(), a.epoch, a.offset).cmp(&(b.channel.as_str(), b.epoch, b.offset))
    });
    Ok(Some(Pass { top, rows, next: 0 }))
}

/// Write the pass's next chunk; `true` when the pass is complete (its rows archived,
/// the log rows deleted, `archived` moved on).
pub(super) fn step(conn: &mut Connection, pass: &mut Pass) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    if pass.next < pass.rows.len() {
        // Whole channels: a channel's rows of the pass are written together.
        let mut end = (pass.next + CHUNK_ROWS).min(pass.rows.len());
        while end < pass.rows.len() && pass.rows[end].channel == pass.rows[end - 1].channel {
            end += 1;
        }
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO archive ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?;
            for r in &pass.rows[pass.next..end] {
                insert.execute(params![
                    r.channel, r.epoch, r.offset, r.ts_ms, r.format, r.data, r.meta, r.key,
                    r.sender, r.event, r.author, r.revises
                ])?;
            }
        }
        tx.commit()?;
        pass.next = end;
        return Ok(false);
    }
    tx.execute("DELETE FROM log WHERE id <= ?1", params![pass.top])?;
    // An emptied log numbers its next row 1 again (a rowid table without
    // AUTOINCREMENT takes the largest id left, plus one): the progress starts over.
    let left: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM log)", [], |r| r.get(0))?;
    pass.top = if left { pass.top } else { 0 };
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('archived', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![pass.top.to_string()],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Delete `channel`'s archived publications beyond `keep`, in every epoch it has; how
/// many went. Epochs are taken newest first (by their newest row's time) for the
/// count, whose offsets are dense within an epoch (every sequenced publication of a
/// stored namespace is stored), so the boundary is arithmetic; the age boundary is a
/// binary search ([`first_at_or_after`]). Work is two seeks an epoch plus the deletes.
pub(super) fn prune(conn: &Connection, channel: &str, keep: Keep) -> rusqlite::Result<usize> {
    // Each epoch by one seek past the previous one (a DISTINCT would read every row).
    let mut next_epoch = conn.prepare_cached(
        "SELECT epoch FROM archive WHERE channel = ?1 AND epoch > ?2 ORDER BY epoch LIMIT 1",
    )?;
    let mut spans = Vec::new();
    let mut epoch = i64::MIN;
    loop {
        let found: Option<i64> = next_epoch
            .query_row(params![channel, epoch], |r| r.get(0))
            .optional()?;
        let Some(e) = found else { break };
        if let Some(ends) = ends(conn, channel, e as u64)? {
            spans.push((e as u64, ends));
        }
        if e == i64::MAX {
            break;
        }
        epoch = e;
    }
    let cuts = cut(spans, keep, |epoch, ends, cutoff| {
        first_at_or_after(conn, channel, epoch, ends, cutoff)
    })?;
    let mut delete = conn
        .prepare_cached("DELETE FROM archive WHERE channel = ?1 AND epoch = ?2 AND offset < ?3")?;
    // Revisions of what goes, too (they are shown only with their original).
    let mut revisions = conn.prepare_cached(
        "DELETE FROM revisions WHERE channel = ?1 AND epoch = ?2 AND target < ?3",
    )?;
    let mut gone = 0;
    for (epoch, from) in cuts {
        let to = from.min(i64::MAX as u64) as i64;
        gone += delete.execute(params![channel, epoch as i64, to])?;
        revisions.execute(params![channel, epoch as i64, to])?;
    }
    Ok(gone)
}

/// The archive's oldest and newest row of `channel` in `epoch` (two seeks).
pub(super) fn ends(conn: &Connection, channel: &str, epoch: u64) -> rusqlite::Result<Option<Ends>> {
    let end = |order: &str| -> rusqlite::Result<Option<(u64, i64)>> {
        conn.prepare_cached(&format!(
            "SELECT offset, ts_ms FROM archive WHERE channel = ?1 AND epoch = ?2
             ORDER BY offset {order} LIMIT 1"
        ))?
        .query_row(params![channel, epoch as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })
        .optional()
    };
    Ok(match (end("ASC")?, end("DESC")?) {
        (Some(first), Some(last)) => Some(Ends { first, last }),
        _ => None,
    })
}

/// The first archived offset of `channel` in `epoch` stored at or after `ms` (the
/// newest row's offset when none is, so callers compare `ms` with `ends` first).
///
/// Within an epoch stored times never go back (the writer stamps commits with a clock
/// that only moves forward, and a channel's publications are committed in offset
/// order), so this is a binary search over offsets, each probe one seek: about 20 for
/// a million rows, where a filter on time would read every row before it.
pub(super) fn first_at_or_after(
    conn: &Connection,
    channel: &str,
    epoch: u64,
    ends: Ends,
    ms: i64,
) -> rusqlite::Result<u64> {
    let mut probe = conn.prepare_cached(
        "SELECT offset, ts_ms FROM archive WHERE channel = ?1 AND epoch = ?2 AND offset >= ?3
         ORDER BY offset LIMIT 1",
    )?;
    bisect_time(ends.first.0, ends.last.0, ms, |mid| {
        probe.query_row(params![channel, epoch as i64, mid as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
        })
    })
}

/// The first offset in `first..=last` stored at or after `ms`, given `probe(o)`: the
/// (offset, time) of the first row at or after offset `o`. Stored times never go back
/// within an epoch, so a binary search.
fn bisect_time<E>(
    first: u64,
    last: u64,
    ms: i64,
    mut probe: impl FnMut(u64) -> Result<(u64, i64), E>,
) -> Result<u64, E> {
    let (mut lo, mut hi) = (first, last);
    while lo < hi {
        let (offset, ts) = probe(lo + (hi - lo) / 2)?;
        if ts >= ms {
            hi = offset;
        } else {
            lo = offset + 1;
        }
    }
    Ok(lo)
}

/// Merge a channel's archived rows (ascending offsets) with its rows still in the log's
/// tail (ascending): one row per offset, ascending. A row can be in both when a pass was
/// cut short by a crash after its chunk and before its last step.
pub(super) fn merge_tail(archived: Vec<Row>, tail: Vec<Row>) -> Vec<Row> {
    let mut out = Vec::with_capacity(archived.len() + tail.len());
    let (mut a, mut t) = (archived.into_iter().peekable(), tail.into_iter().peekable());
    loop {
        let take_archived = match (a.peek(), t.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) if x.offset == y.offset => {
                t.next();
                true
            }
            (Some(x), Some(y)) => x.offset < y.offset,
        };
        let next = if take_archived { a.next() } else { t.next() };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Connection, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sb-archive-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = Connection::open(dir.join("t.db")).unwrap();
        super::super::startup::prepare(&conn).unwrap();
        (conn, dir)
    }

    fn append(conn: &Connection, rows: &[(&str, i64)]) {
        for (channel, offset) in rows {
            conn.execute(
                "INSERT INTO log (channel, epoch, offset, ts_ms, format, data) VALUES (?1, 7, ?2, ?2, 0, x'00')",
                params![channel, offset],
            )
            .unwrap();
        }
    }

    fn offsets(conn: &Connection, table: &str, channel: &str) -> Vec<i64> {
        conn.prepare(&format!(
            "SELECT offset FROM {table} WHERE channel = ?1 ORDER BY offset"
        ))
        .unwrap()
        .query_map([channel], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    #[test]
    fn a_pass_moves_the_tail_by_channel_and_empties_the_log() {
        let (mut conn, dir) = store();
        let interleaved: Vec<(&str, i64)> = (1..=30)
            .map(|i| (["a:1", "a:2", "a:3"][(i % 3) as usize], i))
            .collect();
        append(&conn, &interleaved);
        let mut pass = begin(&conn, archived_upto(&conn).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(pass.len(), 30);
        while !step(&mut conn, &mut pass).unwrap() {}
        // The log is empty, so its ids start over: so does the progress.
        assert_eq!(archived_upto(&conn).unwrap(), 0);
        assert_eq!(offsets(&conn, "log", "a:1"), Vec::<i64>::new());
        assert_eq!(
            offsets(&conn, "archive", "a:1"),
            (1..=30).filter(|i| i % 3 == 0).collect::<Vec<_>>()
        );
        assert!(begin(&conn, 0).unwrap().is_none(), "nothing left to move");
        // The next rows are found by the next pass.
        append(&conn, &[("a:1", 31), ("a:2", 32)]);
        let mut pass = begin(&conn, 0).unwrap().unwrap();
        assert_eq!((pass.len(), pass.top()), (2, 2));
        // Rows that arrive during a pass stay in the log, and the progress says so.
        assert!(!step(&mut conn, &mut pass).unwrap());
        append(&conn, &[("a:1", 33)]);
        assert!(step(&mut conn, &mut pass).unwrap());
        assert_eq!(archived_upto(&conn).unwrap(), 2);
        assert_eq!(offsets(&conn, "log", "a:1"), [33]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pass_cut_short_and_run_again_leaves_each_publication_once() {
        let (mut conn, dir) = store();
        let rows: Vec<(&str, i64)> = (1..=20).map(|i| ("a:1", i)).collect();
        append(&conn, &rows);
        let mut pass = begin(&conn, 0).unwrap().unwrap();
        // The chunk is written, then the process dies before the last step.
        assert!(!step(&mut conn, &mut pass).unwrap());
        assert_eq!(archived_upto(&conn).unwrap(), 0);
        // Readers see the row in both tables; merged, once.
        let read = |table: &str| -> Vec<Row> {
            conn.prepare(&format!("SELECT {COLUMNS} FROM {table} ORDER BY offset"))
                .unwrap()
                .query_map([], |r| Row::read(r, 0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let merged = merge_tail(read("archive"), read("log"));
        assert_eq!(
            merged.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        // After the restart the pass runs again from the recorded progress.
        let mut again = begin(&conn, archived_upto(&conn).unwrap())
            .unwrap()
            .unwrap();
        while !step(&mut conn, &mut again).unwrap() {}
        assert_eq!(
            offsets(&conn, "archive", "a:1"),
            (1..=20).collect::<Vec<_>>()
        );
        assert!(offsets(&conn, "log", "a:1").is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pruning_deletes_each_epochs_old_prefix_only() {
        let (mut conn, dir) = store();
        for (epoch, offset, ts) in [
            (-5i64, 1i64, 10i64),
            (-5, 2, 20),
            (-5, 3, 30),
            (9, 1, 5),
            (9, 2, 6),
            (i64::MAX, 1, 100),
        ] {
            conn.execute(
                "INSERT INTO archive (channel, epoch, offset, ts_ms, format, data) VALUES ('a:1', ?1, ?2, ?3, 0, x'00')",
                params![epoch, offset, ts],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO archive (channel, epoch, offset, ts_ms, format, data) VALUES ('a:2', 9, 1, 1, 0, x'00')",
            [],
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        let by_age = Keep {
            cutoff_ms: Some(25),
            count: None,
        };
        assert_eq!(prune(&tx, "a:1", by_age).unwrap(), 4);
        tx.commit().unwrap();
        let left: Vec<(i64, i64)> = conn
            .prepare(
                "SELECT epoch, offset FROM archive WHERE channel = 'a:1' ORDER BY epoch, offset",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, [(-5, 3), (i64::MAX, 1)]);
        assert_eq!(
            offsets(&conn, "archive", "a:2"),
            [1],
            "another channel is untouched"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pruning_by_count_keeps_the_newest_across_epochs() {
        let (mut conn, dir) = store();
        // Epoch 7 (older, times 1..=10) then epoch 3 (newer, times 100..=104).
        for (epoch, offsets, t0) in [(7i64, 1..=10i64, 0i64), (3, 1..=5, 99)] {
            for o in offsets {
                conn.execute(
                    "INSERT INTO archive (channel, epoch, offset, ts_ms, format, data) VALUES ('c:1', ?1, ?2, ?3, 0, x'00')",
                    params![epoch, o, t0 + o],
                )
                .unwrap();
            }
        }
        let keep = |count| Keep {
            cutoff_ms: None,
            count: Some(count),
        };
        let tx = conn.transaction().unwrap();
        assert_eq!(prune(&tx, "c:1", keep(8)).unwrap(), 7);
        tx.commit().unwrap();
        let left = |conn: &Connection| -> Vec<(i64, i64)> {
            conn.prepare("SELECT epoch, offset FROM archive ORDER BY ts_ms")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            left(&conn),
            [
                (7, 8),
                (7, 9),
                (7, 10),
                (3, 1),
                (3, 2),
                (3, 3),
                (3, 4),
                (3, 5)
            ]
        );
        // Count and age together: the stricter wins.
        let tx = conn.transaction().unwrap();
        let both = Keep {
            cutoff_ms: Some(103),
            count: Some(4),
        };
        assert_eq!(prune(&tx, "c:1", both).unwrap(), 6);
        tx.commit().unwrap();
        assert_eq!(left(&conn), [(3, 4), (3, 5)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn merging_keeps_order_and_the_tail_beyond_the_archive() {
        let row = |offset| Row {
            channel: "a:1".into(),
            epoch: 7,
            offset,
            ts_ms: 0,
            format: 0,
            data: vec![],
            meta: None,
            key: None,
            sender: None,
            author: None,
            revises: None,
            event: None,
        };
        let merged = merge_tail(vec![row(1), row(2), row(4)], vec![row(3), row(4), row(5)]);
        assert_eq!(
            merged.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(merge_tail(vec![], vec![]).is_empty());
    }
}
