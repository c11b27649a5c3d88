//! Start-up: the schema (created or migrated) and what the shards continue from —
//! streams, marks, the reconnect key — read back from the file.
//!
//! Owns reading the store once, before the shards start. Does not own writing
//! (`writer`).

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use switchboard_engine::journal::{
    Durability, MarkKind, MarkRecord, NamespacePolicy, SeedEntry, SeedStream, SessionRecord,
};

use super::*;

/// The namespace of `channel` among `namespaces`, if configured.
pub(super) fn namespace_of<'a>(
    channel: &str,
    namespaces: &'a [NamespacePolicy],
) -> Option<&'a NamespacePolicy> {
    let (ns, _) = channel.split_once(':')?;
    namespaces.iter().find(|n| n.name == ns)
}

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

/// Every inbox cursor and receipt.
pub(super) fn read_marks(conn: &Connection) -> rusqlite::Result<Vec<MarkRecord>> {
    let mut q =
        conn.prepare("SELECT channel, kind, who, epoch, delivered, read, at_ms FROM marks")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)? as u64,
            r.get::<_, i64>(4)? as u64,
            r.get::<_, i64>(5)? as u64,
            r.get::<_, i64>(6)? as u64,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (channel, kind, who, epoch, delivered, read, at_ms) = row?;
        let Some(kind) = MarkKind::from_code(kind) else {
            continue;
        };
        out.push(MarkRecord {
            channel: channel.into(),
            kind,
            who: who.into(),
            epoch,
            delivered,
            read,
            at_ms,
        });
    }
    Ok(out)
}

/// Socket.IO sessions the last clean shutdown left recoverable (ended within a day:
/// the longest `socketio.recovery_ms`), taken out of the store: from now on they live
/// in their home shard's memory, and the next clean shutdown stores those still
/// unclaimed again.
pub(super) fn take_sessions(conn: &Connection) -> rusqlite::Result<Vec<SessionRecord>> {
    let oldest = crate::clock::now_ms().saturating_sub(86_400_000) as i64;
    let mut out = Vec::new();
    {
        let mut q = conn
            .prepare("SELECT pid, home, closed_ms, body FROM sio_sessions WHERE closed_ms >= ?1")?;
        let rows = q.query_map([oldest], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        for row in rows {
            let (pid, home, closed_ms, body) = row?;
            let (Ok(pid), Ok(home)) = (u128::from_str_radix(&pid, 16), u16::try_from(home)) else {
                continue;
            };
            out.push(SessionRecord {
                pid,
                home,
                closed_ms: closed_ms.max(0) as u64,
                body,
            });
        }
    }
    conn.execute("DELETE FROM sio_sessions", [])?;
    Ok(out)
}

/// The store's reconnect-token key, created on first use.
pub(super) fn reconnect_key(conn: &Connection) -> rusqlite::Result<Vec<u8>> {
    let hex: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'reconnect_key'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let parse = |h: &str| -> Option<Vec<u8>> {
        (h.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
    };
    if let Some(key) = hex.as_deref().and_then(parse) {
        return Ok(key);
    }
    let hex = crate::ids::random_hex(32);
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('reconnect_key', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [&hex],
    )?;
    Ok(parse(&hex).expect("64 hex digits"))
}

pub(super) fn read_seeds(
    conn: &Connection,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
    clean: bool,
) -> rusqlite::Result<Vec<SeedStream>> {
    let now = crate::clock::now_ms() as i64;
    let since = now.saturating_sub(stream_idle_ms.min(i64::MAX as u64) as i64);
    // Every stream whose namespace is still durable: those active within the idle time
    // with their kept publications, older ones as a position to continue from
    // (dormant), so a conversation resumed next month continues its epoch.
    let mut by_channel: HashMap<String, (SeedStream, Option<&NamespacePolicy>)> = HashMap::new();
    let mut streams = conn.prepare("SELECT channel, epoch, top, updated_ms FROM streams")?;
    let rows = streams.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (channel, epoch, top, updated_ms) = row?;
        let Some(ns) = namespace_of(&channel, namespaces) else {
            // Its namespace is no longer configured (so no longer durable).
            continue;
        };
        let dormant = updated_ms < since;
        // After an unclean stop only `sync` streams are known complete (and those idle
        // long before it: their writes were committed then).
        let continues = match ns.durability {
            Durability::Sync => true,
            Durability::Async => clean || dormant,
            Durability::None => false,
        };
        let seed = SeedStream {
            channel: channel.as_str().into(),
            epoch: Some(epoch),
            offset: top,
            entries: Vec::new(),
            dormant,
        };
        by_channel.insert(channel, (seed, continues.then_some(ns)));
    }
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
            .map(|(e, (ts_ms, key))| SeedEntry {
                offset: e.offset,
                age_ms: now.saturating_sub(ts_ms).max(0) as u64,
                format: e.format,
                data: e.data,
                meta: e.meta,
                key: key.map(String::into_boxed_str),
                from: e.from.map(|f| Box::from(&*f)),
                author: e.author.map(|a| Box::from(&*a)),
                event: e.event.map(|v| Box::from(&*v)),
                revises: e.revises,
                revised: e.revised,
            })
            .collect();
        kept.insert(channel.clone(), list);
    }
    let mut out = Vec::with_capacity(by_channel.len());
    for (channel, (mut seed, ns)) in by_channel {
        if ns.is_none() {
            // A new epoch: its tail may be lost.
            seed.epoch = None;
        } else if let Some(list) = kept.remove(&channel) {
            seed.entries = list;
        }
        out.push(seed);
    }
    Ok(out)
}
