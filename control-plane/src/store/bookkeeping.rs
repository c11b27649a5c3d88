//! What start-up reads and the run marks the same way on either database: whether the
//! last stop was clean, which streams continue (and which are dormant), inbox cursors
//! and receipts, Socket.IO sessions left recoverable, the reconnect-token key.
//!
//! Owns those statements (written once, through [`crate::sql::Exec`]) and the rules
//! that turn `streams` rows into the shards' seeds. Does not own reading each stream's
//! newest publications (per database: `startup` for SQLite, `crate::store::postgres::startup`).

use std::collections::HashMap;

use switchboard_engine::journal::{
    Durability, MarkKind, MarkRecord, NamespacePolicy, SeedEntry, SeedStream, SessionRecord,
};
use switchboard_engine::streams::Entry;

use crate::sql::{args, DbError, Exec};

/// The namespace of `channel` among `namespaces`, if configured.
pub(crate) fn namespace_of<'a>(
    channel: &str,
    namespaces: &'a [NamespacePolicy],
) -> Option<&'a NamespacePolicy> {
    let (ns, _) = channel.split_once(':')?;
    namespaces.iter().find(|n| n.name == ns)
}

/// The `meta` key of `node`'s run mark: `clean` alone, `clean:<node>` for a node of a
/// cluster sharing the database.
fn clean_key(node: &str) -> String {
    if node.is_empty() {
        "clean".into()
    } else {
        format!("clean:{node}")
    }
}

/// Whether `node`'s previous run stopped cleanly (or the store is new to it).
pub(crate) fn was_clean(db: &mut impl Exec, node: &str) -> Result<bool, DbError> {
    Ok(db
        .query_opt(
            "SELECT value FROM meta WHERE key = ?1",
            args![clean_key(node)],
            |r| r.get::<String>(0),
        )?
        .is_none_or(|v| v == "1"))
}

/// Record that `node`'s run started (a crash from now on is seen as unclean), or, with
/// `clean`, that it stopped cleanly.
pub(crate) fn mark_clean(db: &mut impl Exec, node: &str, clean: bool) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![clean_key(node), if clean { "1" } else { "0" }],
    )?;
    Ok(())
}

/// Every inbox cursor and receipt.
pub(crate) fn read_marks(db: &mut impl Exec) -> Result<Vec<MarkRecord>, DbError> {
    let rows = db.query(
        "SELECT channel, kind, who, epoch, delivered, read, at_ms FROM marks",
        args![],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<i64>(1)?,
                r.get::<String>(2)?,
                r.get::<u64>(3)?,
                r.get::<u64>(4)?,
                r.get::<u64>(5)?,
                r.get::<u64>(6)?,
            ))
        },
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|(channel, kind, who, epoch, delivered, read, at_ms)| {
            Some(MarkRecord {
                channel: channel.into(),
                kind: MarkKind::from_code(kind)?,
                who: who.into(),
                epoch,
                delivered,
                read,
                at_ms,
            })
        })
        .collect())
}

/// Socket.IO sessions the last clean shutdown left recoverable (ended within a day:
/// the longest `socketio.recovery_ms`), taken out of the store: from now on they live
/// in their home shard's memory, and the next clean shutdown stores those still
/// unclaimed again. `node`: only those of this node of a cluster sharing the database
/// (PostgreSQL); `None`: every one (the SQLite file is one node's).
pub(crate) fn take_sessions(
    db: &mut impl Exec,
    node: Option<&str>,
) -> Result<Vec<SessionRecord>, DbError> {
    let oldest = crate::clock::now_ms().saturating_sub(86_400_000);
    let read = |r: &crate::sql::Row<'_>| {
        Ok((
            r.get::<String>(0)?,
            r.get::<i64>(1)?,
            r.get::<i64>(2)?,
            r.get::<Vec<u8>>(3)?,
        ))
    };
    let rows = match node {
        None => db.query(
            "SELECT pid, home, closed_ms, body FROM sio_sessions WHERE closed_ms >= ?1",
            args![oldest],
            read,
        )?,
        Some(node) => db.query(
            "SELECT pid, home, closed_ms, body FROM sio_sessions
             WHERE closed_ms >= ?1 AND node = ?2",
            args![oldest, node],
            read,
        )?,
    };
    match node {
        None => db.execute("DELETE FROM sio_sessions", args![])?,
        Some(node) => db.execute("DELETE FROM sio_sessions WHERE node = ?1", args![node])?,
    };
    Ok(rows
        .into_iter()
        .filter_map(|(pid, home, closed_ms, body)| {
            Some(SessionRecord {
                pid: u128::from_str_radix(&pid, 16).ok()?,
                home: u16::try_from(home).ok()?,
                closed_ms: closed_ms.max(0) as u64,
                body,
            })
        })
        .collect())
}

/// The store's reconnect-token key, created on first use.
pub(crate) fn reconnect_key(db: &mut impl Exec) -> Result<Vec<u8>, DbError> {
    let hex: Option<String> = db.query_opt(
        "SELECT value FROM meta WHERE key = 'reconnect_key'",
        args![],
        |r| r.get(0),
    )?;
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
    // Nodes sharing a database may start together: the first key written wins.
    let hex = crate::ids::random_hex(32);
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('reconnect_key', ?1) ON CONFLICT (key) DO NOTHING",
        args![hex],
    )?;
    let stored: String = db.query_row(
        "SELECT value FROM meta WHERE key = 'reconnect_key'",
        args![],
        |r| r.get(0),
    )?;
    match parse(&stored) {
        Some(key) => Ok(key),
        None => {
            db.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'reconnect_key'",
                args![hex],
            )?;
            Ok(parse(&hex).expect("64 hex digits"))
        }
    }
}

/// A stream to seed, and the namespace whose window it keeps when it continues in its
/// epoch (`None`: it starts a new epoch).
pub(crate) type Planned<'a> = (SeedStream, Option<&'a NamespacePolicy>);

/// Every stream in `streams` whose namespace is still configured: those active within
/// `stream_idle_ms` to continue (with their kept publications, read next), older ones
/// as a position to continue from (dormant), so a conversation resumed next month
/// continues its epoch. After an unclean stop only `sync` streams (and those idle long
/// before it) continue their epoch.
pub(crate) fn plan_streams<'a>(
    db: &mut impl Exec,
    namespaces: &'a [NamespacePolicy],
    stream_idle_ms: u64,
    clean: bool,
) -> Result<HashMap<String, Planned<'a>>, DbError> {
    let now = crate::clock::now_ms() as i64;
    let since = now.saturating_sub(stream_idle_ms.min(i64::MAX as u64) as i64);
    let rows = db.query(
        "SELECT channel, epoch, top, updated_ms FROM streams",
        args![],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<u64>(1)?,
                r.get::<u64>(2)?,
                r.get::<i64>(3)?,
            ))
        },
    )?;
    let mut out = HashMap::with_capacity(rows.len());
    for (channel, epoch, top, updated_ms) in rows {
        let Some(ns) = namespace_of(&channel, namespaces) else {
            continue;
        };
        let dormant = updated_ms < since;
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
        out.insert(channel, (seed, continues.then_some(ns)));
    }
    Ok(out)
}

/// A publication read back for a seed: stored at `ts_ms` (now `now_ms`), with its
/// idempotency key.
pub(crate) fn seed_entry(e: Entry, ts_ms: i64, key: Option<String>, now_ms: i64) -> SeedEntry {
    SeedEntry {
        offset: e.offset,
        age_ms: now_ms.saturating_sub(ts_ms).max(0) as u64,
        format: e.format,
        data: e.data,
        meta: e.meta,
        key: key.map(String::into_boxed_str),
        from: e.from.map(|f| Box::from(&*f)),
        author: e.author.map(|a| Box::from(&*a)),
        event: e.event.map(|v| Box::from(&*v)),
        revises: e.revises,
        revised: e.revised,
    }
}

/// The seeds: streams that do not continue start a new epoch (their tail may be
/// lost); the others carry what `kept` read for them.
pub(crate) fn finish_seeds(
    planned: HashMap<String, Planned<'_>>,
    mut kept: HashMap<String, Vec<SeedEntry>>,
) -> Vec<SeedStream> {
    let mut out = Vec::with_capacity(planned.len());
    for (channel, (mut seed, ns)) in planned {
        if ns.is_none() {
            seed.epoch = None;
        } else if let Some(list) = kept.remove(&channel) {
            seed.entries = list;
        }
        out.push(seed);
    }
    out
}
