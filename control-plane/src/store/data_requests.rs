//! Data requests on the store: a user's stored messages exported, or erased.
//!
//! Export reads every stored publication the user authored or sent (the `author` and
//! `sender` columns: a scan of the archive and the log's tail, rare and admin-only, on
//! its own connection beside the writer). Erase redacts those publications in place
//! (data `null`, meta `{"redacted": true}`, author, sender and idempotency key
//! cleared: the positions stay, so nobody's history has a gap), deletes the user's
//! inbox (its publications, stream row and cursors) and the user's receipts. An
//! archive pass in flight holds copies of log rows in memory and may write them after
//! the first sweep, so erase waits for that pass and sweeps again.
//!
//! Owns the SQL of data requests on SQLite (PostgreSQL's, without a log and passes, is
//! `crate::store::postgres::data_requests`) and what an export shows. Does not own revoking the user (first, by the caller:
//! nothing new arrives), shards' memory or notifications (their own owners), or the
//! audit record (the admin API).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};
use switchboard_engine::journal::MarkKind;
use switchboard_protocol::{Format, Position};

use super::archive::{self, Row, COLUMNS};
use crate::error::Error;
use crate::sql::Location;

/// What an erasure removed from the store.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Erased {
    /// Publications redacted (authored or sent by the user).
    pub redacted: usize,
    /// Inbox publications deleted.
    pub inbox_deleted: usize,
    /// Inbox cursors and receipts deleted.
    pub marks_deleted: usize,
}

/// Longest an erasure waits for the archive pass in flight.
const PASS_WAIT: Duration = Duration::from_secs(30);

fn open(path: &Path) -> Result<Connection, Error> {
    crate::sql::open_file(path, "a data request")
}

fn failed(path: &Path, e: rusqlite::Error) -> Error {
    Error::Store {
        path: path.to_owned(),
        message: format!("a data request failed: {e}"),
    }
}

/// A stored payload (one MessagePack or JSON value) as JSON; `null` if unreadable.
pub fn payload_json(format: Format, raw: &[u8]) -> Value {
    match format {
        Format::Json | Format::SocketIo => serde_json::from_slice(raw),
        Format::MsgPack => rmp_serde::from_slice(raw).map_err(serde::de::Error::custom),
    }
    .unwrap_or(Value::Null)
}

/// Every stored publication `user` authored or sent, oldest first per channel, as
/// JSON objects (`channel`, `epoch`, `offset`, `at_ms`, `data`, and `meta`, `event`,
/// `from` when present).
pub fn export_user(at: &Location, user: &str) -> Result<Vec<Value>, Error> {
    let path = match at {
        Location::File(path) => path.as_path(),
        Location::Postgres { url, target } => {
            return crate::store::postgres::data_requests::export_user(url, user)
                .map(|rows| rows.into_iter().map(exported).collect())
                .map_err(|message| Error::Store {
                    path: target.into(),
                    message: format!("a data request failed: {message}"),
                })
        }
    };
    let conn = open(path)?;
    let read = || -> rusqlite::Result<Vec<Row>> {
        let archived = archive::archived_upto(&conn)?;
        let mut rows: Vec<Row> = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM archive WHERE author = ?1 OR sender = ?1"
            ))?
            .query_map(params![user], |r| Row::read(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        let tail = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM log WHERE id > ?2 AND (author = ?1 OR sender = ?1)"
            ))?
            .query_map(params![user, archived], |r| Row::read(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.extend(tail);
        Ok(rows)
    };
    let mut rows = read().map_err(|e| failed(path, e))?;
    rows.sort_by(|a, b| (&a.channel, a.epoch, a.offset).cmp(&(&b.channel, b.epoch, b.offset)));
    rows.dedup_by(|a, b| (&a.channel, a.epoch, a.offset) == (&b.channel, b.epoch, b.offset));
    Ok(rows.into_iter().map(exported).collect())
}

/// A stored publication as a data export shows it.
fn exported(r: Row) -> Value {
    let format = super::format_from(r.format);
    let epoch = Position {
        epoch: r.epoch as u64,
        offset: 0,
    }
    .epoch_hex();
    let mut v = json!({
        "channel": r.channel,
        "epoch": epoch.as_str(),
        "offset": r.offset,
        "at_ms": r.ts_ms,
        "data": payload_json(format, &r.data),
    });
    if let Some(meta) = &r.meta {
        v["meta"] = payload_json(format, meta);
    }
    if let Some(event) = r.event {
        v["event"] = json!(event);
    }
    if let Some(from) = r.sender {
        v["from"] = json!(from);
    }
    if let Some(rev) = archive::revises_of(r.revises) {
        v[if rev.delete { "delete" } else { "edit" }] = json!(rev.target);
    }
    v
}

/// Redact `user`'s stored publications and delete its inbox (`inbox`: the channel)
/// and receipts; on SQLite, waits for the archive pass in flight and sweeps again.
pub fn erase_user(at: &Location, user: &str, inbox: Option<&str>) -> Result<Erased, Error> {
    let path = match at {
        Location::File(path) => path.as_path(),
        Location::Postgres { url, target } => {
            return crate::store::postgres::data_requests::erase_user(url, user, inbox).map_err(
                |message| Error::Store {
                    path: target.into(),
                    message: format!("a data request failed: {message}"),
                },
            )
        }
    };
    let mut conn = open(path)?;
    let mut total = Erased::default();
    // The log's newest row when swept: once it has left the log, every pass that took
    // rows before the sweep is complete (passes run in order).
    type Newest = Option<(i64, String, i64, i64)>;
    let sweep = |conn: &mut Connection, total: &mut Erased| -> rusqlite::Result<Newest> {
        let tx = conn.transaction()?;
        // The user's edits, as the latest revision of their originals: redacted too.
        for table in ["archive", "log"] {
            tx.execute(
                &format!(
                    "UPDATE revisions SET
                         data = CASE format WHEN ?2 THEN x'c0' ELSE CAST('null' AS BLOB) END,
                         meta = NULL
                     WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.channel = revisions.channel
                         AND t.epoch = revisions.epoch AND t.offset = revisions.offset
                         AND (t.author = ?1 OR t.sender = ?1))"
                ),
                params![user, Format::MsgPack.index() as i64],
            )?;
        }
        let top: Newest = tx
            .query_row(
                "SELECT id, channel, epoch, offset FROM log ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        for table in ["archive", "log"] {
            total.redacted += tx.execute(
                &format!(
                    "UPDATE {table} SET
                         data = CASE format WHEN ?2 THEN x'c0' ELSE CAST('null' AS BLOB) END,
                         meta = CASE format WHEN ?2 THEN x'81a87265646163746564c3'
                                ELSE CAST('{{\"redacted\":true}}' AS BLOB) END,
                         author = NULL, sender = NULL, key = NULL
                     WHERE author = ?1 OR sender = ?1"
                ),
                params![user, Format::MsgPack.index() as i64],
            )?;
            if let Some(inbox) = inbox {
                total.inbox_deleted +=
                    tx.execute(&format!("DELETE FROM {table} WHERE channel = ?1"), [inbox])?;
            }
        }
        if let Some(inbox) = inbox {
            tx.execute("DELETE FROM streams WHERE channel = ?1", [inbox])?;
            total.marks_deleted += tx.execute("DELETE FROM marks WHERE channel = ?1", [inbox])?;
        }
        total.marks_deleted += tx.execute(
            "DELETE FROM marks WHERE kind = ?1 AND who = ?2",
            params![MarkKind::Receipt.code(), user],
        )?;
        tx.commit()?;
        Ok(top)
    };
    let top = sweep(&mut conn, &mut total).map_err(|e| failed(path, e))?;
    // A pass that took log rows before the sweep writes them to the archive as they
    // were: once the archive covers `top`, sweep it again.
    let deadline = Instant::now() + PASS_WAIT;
    while let Some((id, channel, epoch, offset)) = &top {
        let still: bool = conn
            .prepare_cached(
                "SELECT 1 FROM log WHERE id = ?1 AND channel = ?2 AND epoch = ?3 AND offset = ?4",
            )
            .and_then(|mut st| st.exists(params![id, channel, epoch, offset]))
            .map_err(|e| failed(path, e))?;
        if !still || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = Erased::default();
    sweep(&mut conn, &mut again).map_err(|e| failed(path, e))?;
    total.inbox_deleted += again.inbox_deleted;
    total.marks_deleted += again.marks_deleted;
    Ok(total)
}

/// The redacted payload and meta of each format: `null` and `{"redacted": true}`.
pub(crate) fn redacted(format: Format) -> (&'static [u8], &'static [u8]) {
    match format {
        Format::MsgPack => (b"\xc0", b"\x81\xa8redacted\xc3"),
        Format::Json | Format::SocketIo => (b"null", b"{\"redacted\":true}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactions_read_as_null_and_redacted_in_both_formats_and_both_databases() {
        for format in [Format::MsgPack, Format::Json] {
            let (data, meta) = redacted(format);
            assert_eq!(payload_json(format, data), Value::Null);
            assert_eq!(payload_json(format, meta), json!({"redacted": true}));
        }
        // The SQLite sweep writes these bytes as literals.
        let conn = Connection::open_in_memory().unwrap();
        let (data, meta): (Vec<u8>, Vec<u8>) = conn
            .query_row("SELECT x'c0', x'81a87265646163746564c3'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((&data[..], &meta[..]), redacted(Format::MsgPack));
    }
}
