//! Edits and deletions in the store: the latest revision of each original, folded into
//! what history reads, and the check of an original memory no longer keeps.
//!
//! A revision is a publication like any other (in the log, then the archive, its
//! `revises` column naming the original: positive for an edit, negative for a
//! deletion). The writer also keeps the latest one per original in `revisions`
//! (primary key channel, epoch, original), so a page folds its originals with one range
//! read: an edited one shows the latest data (and meta, when the edit had one) and when
//! it changed; a deleted one shows `null` and when. Owns that table's SQL, folding and
//! the original's check. Does not own who may revise (the owner shard decides, with the
//! original's author this check reads).

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use switchboard_engine::mesh::Refused;
use switchboard_engine::streams::Entry;
use switchboard_protocol::{ErrorCode, Format, Revised};

use super::archive;

/// The `revisions` table (schema 5).
pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS revisions (
         channel TEXT NOT NULL,
         epoch INTEGER NOT NULL,
         target INTEGER NOT NULL,
         offset INTEGER NOT NULL,
         ts_ms INTEGER NOT NULL,
         deleted INTEGER NOT NULL,
         format INTEGER NOT NULL,
         data BLOB NOT NULL,
         meta BLOB,
         PRIMARY KEY (channel, epoch, target)
     ) WITHOUT ROWID;";

/// Record a revision as its original's latest (a later one wins; a deletion stays).
pub(super) const UPSERT: &str = "INSERT INTO revisions
         (channel, epoch, target, offset, ts_ms, deleted, format, data, meta)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
     ON CONFLICT (channel, epoch, target) DO UPDATE SET
         offset = excluded.offset, ts_ms = excluded.ts_ms,
         deleted = MAX(revisions.deleted, excluded.deleted), format = excluded.format,
         data = excluded.data, meta = excluded.meta
     WHERE excluded.offset > revisions.offset";

/// Fold the latest revisions into `entries` (publications of `channel` in `epoch`, any
/// order) that do not show one yet.
pub(super) fn fold(
    conn: &Connection,
    channel: &str,
    epoch: u64,
    entries: &mut [Entry],
) -> rusqlite::Result<()> {
    let (Some(lo), Some(hi)) = (
        entries.iter().map(|e| e.offset).min(),
        entries.iter().map(|e| e.offset).max(),
    ) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT target, ts_ms, deleted, format, data, meta FROM revisions
         WHERE channel = ?1 AND epoch = ?2 AND target BETWEEN ?3 AND ?4",
    )?;
    let mut rows = stmt.query(params![channel, epoch as i64, lo as i64, hi as i64])?;
    while let Some(r) = rows.next()? {
        let target = r.get::<_, i64>(0)? as u64;
        let Some(e) = entries
            .iter_mut()
            .find(|e| e.offset == target && e.revised.is_none())
        else {
            continue;
        };
        let revised = Revised {
            at_ms: r.get::<_, i64>(1)?.max(0) as u64,
            deleted: r.get(2)?,
        };
        let format = super::format_from(r.get(3)?);
        let (data, meta): (Vec<u8>, Option<Vec<u8>>) = (r.get(4)?, r.get(5)?);
        apply(e, revised, format, data, meta);
    }
    Ok(())
}

/// Show `e` as its latest revision left it (any store's): an edit's data, and its meta
/// when it has one (else the original's, unless in another format); a deletion's
/// `null` and no meta.
pub(crate) fn apply(
    e: &mut Entry,
    revised: Revised,
    format: Format,
    data: Vec<u8>,
    meta: Option<Vec<u8>>,
) {
    if revised.deleted {
        e.data = null(e.format);
        e.meta = None;
    } else {
        match meta {
            Some(m) => e.meta = Some(Bytes::from(m)),
            None if e.format != format => e.meta = None,
            None => {}
        }
        e.format = format;
        e.data = Bytes::from(data);
    }
    e.revised = Some(revised);
}

fn null(format: Format) -> Bytes {
    match format {
        Format::MsgPack => Bytes::from_static(b"\xc0"),
        Format::Json | Format::SocketIo => Bytes::from_static(b"null"),
    }
}

/// Why a revision by `author` (a moderator when `moderator`) of the stored original at
/// `target` of `channel` in `epoch` is refused, if it is: it must exist, not be a
/// revision itself, not be deleted, and be the author's own unless a moderator asks.
pub(super) fn check_original(
    conn: &mut Connection,
    channel: &str,
    epoch: u64,
    target: u64,
    author: Option<&str>,
    moderator: bool,
) -> rusqlite::Result<Option<Refused>> {
    let tx = conn.transaction()?;
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(Option<String>, Option<i64>)> {
        Ok((r.get(0)?, r.get(1)?))
    };
    let mut found = tx
        .prepare_cached(
            "SELECT author, revises FROM archive WHERE channel = ?1 AND epoch = ?2 AND offset = ?3",
        )?
        .query_row(params![channel, epoch as i64, target as i64], read)
        .optional()?;
    if found.is_none() {
        let archived = archive::archived_upto(&tx)?;
        found = tx
            .prepare_cached(
                "SELECT author, revises FROM log
                 WHERE id > ?1 AND channel = ?2 AND epoch = ?3 AND offset = ?4 LIMIT 1",
            )?
            .query_row(
                params![archived, channel, epoch as i64, target as i64],
                read,
            )
            .optional()?;
    }
    let deleted: Option<bool> = tx
        .prepare_cached(
            "SELECT deleted FROM revisions WHERE channel = ?1 AND epoch = ?2 AND target = ?3",
        )?
        .query_row(params![channel, epoch as i64, target as i64], |r| r.get(0))
        .optional()?;
    tx.commit()?;
    Ok(verdict(found, deleted, target, author, moderator))
}

/// The original a revision targets as stored, if it is: its author and `revises` code.
pub(crate) type Original = Option<(Option<String>, Option<i64>)>;

/// Why a revision is refused, given what the store holds at `target`: the original's
/// author and `revises` code (if it is stored) and whether it is deleted.
pub(crate) fn verdict(
    found: Original,
    deleted: Option<bool>,
    target: u64,
    author: Option<&str>,
    moderator: bool,
) -> Option<Refused> {
    let refuse = |code, message: String| Some(Refused { code, message });
    let Some((original_author, revises)) = found else {
        return refuse(
            ErrorCode::NotFound,
            format!("no stored publication at offset {target} (pruned, or never stored)"),
        );
    };
    if revises.is_some() {
        return refuse(
            ErrorCode::BadRequest,
            format!("offset {target} is itself an edit or deletion"),
        );
    }
    if deleted == Some(true) {
        return refuse(ErrorCode::Conflict, format!("offset {target} is deleted"));
    }
    let own = original_author.is_some() && original_author.as_deref() == author;
    if !own && !moderator && author.is_some() {
        return refuse(
            ErrorCode::PermissionDenied,
            "only its author or a moderator may change this publication".into(),
        );
    }
    None
}

/// An entry read back from a stored row.
pub(super) fn entry_of(r: archive::Row) -> Entry {
    Entry {
        offset: r.offset as u64,
        tick: 0,
        data: Bytes::from(r.data),
        meta: r.meta.map(Bytes::from),
        format: super::format_from(r.format),
        from: r.sender.map(Arc::from),
        author: r.author.map(Arc::from),
        event: r.event.map(Arc::from),
        revises: archive::revises_of(r.revises),
        revised: None,
    }
}
