//! Start-up: the schema (created or migrated) and what the shards continue from —
//! streams, marks, the reconnect key — read back from the file.
//!
//! Owns reading the store once, before the shards start. Does not own writing
//! (`writer`).

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection};
use switchboard_engine::journal::{NamespacePolicy, SeedEntry, SeedStream};

use super::*;

/// Why a store file cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// A file SQLite can read that cannot be used, worded for the operator.
    #[error("{0}")]
    Refused(String),
}

fn refusal(why: String) -> PrepareError {
    PrepareError::Refused(why)
}

/// Pragmas and schema; refuses files written by a newer schema.
pub(super) fn prepare(conn: &Connection) -> Result<(), PrepareError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(refusal(format!("journal_mode is {mode}, WAL is required")));
    }
    // FULL: every commit is fsynced (WAL), so a `sync` acknowledgment survives power
    // loss, not only a process crash.
    // SQLite's own WAL checkpoints (every 1,000 pages, on the committing thread). A
    // passive checkpoint on a separate thread was tried: under a sustained 50k
    // publications/s it fell behind, the WAL grew without bound and the tail latency
    // of commits got worse, not better.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(refusal(format!(
            "schema version {version} is newer than this build's {SCHEMA_VERSION} \
             (written by a later Switchboard; run that one, or start from another file)"
        )));
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS streams (
             channel TEXT PRIMARY KEY,
             epoch INTEGER NOT NULL,
             top INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS log (
             id INTEGER PRIMARY KEY,
             channel TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             ts_ms INTEGER NOT NULL,
             format INTEGER NOT NULL,
             data BLOB NOT NULL,
             meta BLOB,
             key TEXT,
             sender TEXT,
             event TEXT
         );
         CREATE TABLE IF NOT EXISTS marks (
             channel TEXT NOT NULL,
             kind INTEGER NOT NULL,
             who TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             delivered INTEGER NOT NULL,
             read INTEGER NOT NULL,
             at_ms INTEGER NOT NULL,
             PRIMARY KEY (channel, kind, who)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sio_sessions (
             pid TEXT PRIMARY KEY,
             home INTEGER NOT NULL,
             closed_ms INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS scheduled (
             id INTEGER PRIMARY KEY,
             due_ms INTEGER NOT NULL,
             channel TEXT NOT NULL,
             sender TEXT,
             format INTEGER NOT NULL,
             data BLOB NOT NULL,
             meta BLOB,
             owner TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             state INTEGER NOT NULL,
             fired_ms INTEGER,
             epoch INTEGER,
             offset INTEGER,
             error TEXT
         );
         CREATE INDEX IF NOT EXISTS scheduled_pending ON scheduled (state, due_ms);
         CREATE INDEX IF NOT EXISTS scheduled_owner ON scheduled (owner, state);
         CREATE TABLE IF NOT EXISTS notifications (
             id INTEGER PRIMARY KEY,
             key TEXT UNIQUE,
             topic TEXT,
             kind TEXT NOT NULL,
             data TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS notification_recipients (
             user TEXT NOT NULL,
             id INTEGER NOT NULL,
             read_ms INTEGER,
             PRIMARY KEY (user, id)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS notification_recipients_id ON notification_recipients (id);
         CREATE TABLE IF NOT EXISTS notification_topics (
             topic TEXT NOT NULL,
             user TEXT NOT NULL,
             PRIMARY KEY (topic, user)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS notification_topics_user ON notification_topics (user);
         CREATE TABLE IF NOT EXISTS calls (
             id INTEGER PRIMARY KEY,
             caller TEXT NOT NULL,
             callee TEXT,
             room TEXT,
             media TEXT,
             created_ms INTEGER NOT NULL,
             answered_ms INTEGER,
             ended_ms INTEGER,
             outcome TEXT,
             reason TEXT,
             participants TEXT
         );
         CREATE INDEX IF NOT EXISTS calls_caller ON calls (caller, id);
         CREATE INDEX IF NOT EXISTS calls_callee ON calls (callee, id);
         CREATE TABLE IF NOT EXISTS call_quality (
             call INTEGER NOT NULL,
             user TEXT NOT NULL,
             at_ms INTEGER NOT NULL,
             data TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS call_quality_call ON call_quality (call);
         CREATE TABLE IF NOT EXISTS revocations (
             user TEXT PRIMARY KEY,
             at_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS audit (
             id INTEGER PRIMARY KEY,
             at_ms INTEGER NOT NULL,
             actor TEXT NOT NULL,
             action TEXT NOT NULL,
             target TEXT,
             result TEXT NOT NULL,
             detail TEXT NOT NULL
         );
         COMMIT;",
    )?;
    // Version 4: publications leave the log's tail for the archive, clustered by
    // channel and position (`archive`); a version-3 file's log is moved by the writer's
    // first passes.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS archive (
             channel TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             ts_ms INTEGER NOT NULL,
             format INTEGER NOT NULL,
             data BLOB NOT NULL,
             meta BLOB,
             key TEXT,
             sender TEXT,
             event TEXT,
             author TEXT,
             revises INTEGER,
             PRIMARY KEY (channel, epoch, offset)
         ) WITHOUT ROWID;",
    )?;
    // Version 1 files: the log had no sender column.
    let has_sender = conn
        .prepare("SELECT 1 FROM pragma_table_info('log') WHERE name = 'sender'")?
        .exists([])?;
    if !has_sender {
        conn.execute_batch("ALTER TABLE log ADD COLUMN sender TEXT")?;
    }
    // Files before issue 17: no event column (publications a backend named).
    let has_event = conn
        .prepare("SELECT 1 FROM pragma_table_info('log') WHERE name = 'event'")?
        .exists([])?;
    if !has_event {
        conn.execute_batch("ALTER TABLE log ADD COLUMN event TEXT")?;
    }
    // Version 5: who published each publication (edit rights, data requests), and
    // edits and deletions (`revises`; the latest per original in `revisions`).
    for table in ["log", "archive"] {
        for (column, kind) in [("author", "TEXT"), ("revises", "INTEGER")] {
            let has = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
                ))?
                .exists([])?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
            }
        }
    }
    conn.execute_batch(super::revisions::SCHEMA)?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    Ok(())
}

/// Every stream to continue, with the newest publications of those that keep a
/// window (from the archive's clustered rows and the log's tail; edits and deletions
/// folded in).
pub(super) fn read_seeds(
    conn: &mut Connection,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
    clean: bool,
) -> Result<Vec<SeedStream>, crate::sql::DbError> {
    let now = crate::clock::now_ms() as i64;
    let mut by_channel = bookkeeping::plan_streams(conn, namespaces, stream_idle_ms, clean)?;
    // The log's tail (rows not yet archived: seconds of writes, or a version-3 file's
    // whole log), per stream of this epoch.
    let archived = archive::archived_upto(conn)?;
    let mut tails: HashMap<String, Vec<archive::Row>> = HashMap::new();
    {
        let mut log = conn.prepare(&format!(
            "SELECT {} FROM log WHERE id > ?1 ORDER BY id",
            archive::COLUMNS
        ))?;
        let mut rows = log.query([archived])?;
        while let Some(r) = rows.next()? {
            let row = archive::Row::read(r, 0)?;
            let Some((seed, _)) = by_channel.get(&row.channel) else {
                continue;
            };
            if seed.epoch != Some(row.epoch as u64) {
                continue;
            }
            tails.entry(row.channel.clone()).or_default().push(row);
        }
    }
    // Per stream, from the archive's clustered rows (a range, never a scan): the top
    // offset where the row lags, and the newest publications the memory window keeps.
    let mut top =
        conn.prepare("SELECT MAX(offset) FROM archive WHERE channel = ?1 AND epoch = ?2")?;
    let mut newest = conn.prepare(&format!(
        "SELECT {} FROM archive WHERE channel = ?1 AND epoch = ?2 AND ts_ms >= ?3
         ORDER BY offset DESC LIMIT ?4",
        archive::COLUMNS
    ))?;
    let mut kept: HashMap<String, Vec<SeedEntry>> = HashMap::new();
    for (channel, (seed, ns)) in by_channel.iter_mut() {
        let Some(epoch) = seed.epoch else { continue };
        let tail = tails.remove(channel.as_str()).unwrap_or_default();
        let stored: Option<i64> = top.query_row(params![channel, epoch as i64], |r| r.get(0))?;
        let tail_top = tail.iter().map(|r| r.offset).max();
        seed.offset = seed.offset.max(stored.max(tail_top).unwrap_or(0) as u64);
        let Some(ns) = ns else { continue };
        if ns.history_size == 0 || seed.dormant {
            continue;
        }
        let oldest = now.saturating_sub(ns.history_ttl_ms.min(i64::MAX as u64) as i64);
        let limit = ns.history_size.min(i64::MAX as usize) as i64;
        let mut from_archive = newest
            .query_map(params![channel, epoch as i64, oldest, limit], |r| {
                archive::Row::read(r, 0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        from_archive.reverse();
        let tail: Vec<archive::Row> = tail.into_iter().filter(|r| r.ts_ms >= oldest).collect();
        let rows = archive::merge_tail(from_archive, tail);
        let skip = rows.len().saturating_sub(ns.history_size);
        let rows: Vec<archive::Row> = rows.into_iter().skip(skip).collect();
        // As history shows them: edits and deletions folded in.
        let stamps: Vec<(i64, Option<String>)> =
            rows.iter().map(|r| (r.ts_ms, r.key.clone())).collect();
        let mut entries: Vec<_> = rows.into_iter().map(revisions::entry_of).collect();
        revisions::fold(conn, channel, epoch, &mut entries)?;
        let list = entries
            .into_iter()
            .zip(stamps)
            .map(|(e, (ts_ms, key))| bookkeeping::seed_entry(e, ts_ms, key, now))
            .collect();
        kept.insert(channel.clone(), list);
    }
    Ok(bookkeeping::finish_seeds(by_channel, kept))
}
