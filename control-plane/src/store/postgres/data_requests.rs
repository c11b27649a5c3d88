//! Data requests on PostgreSQL: a user's stored publications exported, or erased
//! (redacted in place; the user's inbox and receipts deleted), in one transaction.
//!
//! The same results as the SQLite store's (`crate::store::data_requests`, which owns
//! what an export shows and what a redaction leaves); publications are one indexed
//! table here (author and sender each have a partial index), with no log tail or
//! archive pass to wait for. Owns that SQL.

use std::time::Duration;

use postgres::types::ToSql;
use switchboard_engine::journal::MarkKind;
use switchboard_protocol::Format;

use crate::sql::{describe, PgStore};
use crate::store::archive::Row;
use crate::store::data_requests::{redacted, Erased};

fn connect(url: &str) -> Result<PgStore, String> {
    PgStore::connect(url, Duration::from_secs(10)).map_err(|e| e.to_string())
}

/// Every stored publication `user` authored or sent, by channel and position.
pub(crate) fn export_user(url: &str, user: &str) -> Result<Vec<Row>, String> {
    crate::sql::off_runtime(|| export(url, user))
}

fn export(url: &str, user: &str) -> Result<Vec<Row>, String> {
    let mut store = connect(url)?;
    let rows = store
        .client
        .query(
            "SELECT channel, epoch, \"offset\", ts_ms, format, data, meta, key, sender, event,
                    author, revises
             FROM publications WHERE author = $1 OR sender = $1
             ORDER BY channel, epoch, \"offset\"",
            &[&user],
        )
        .map_err(|e| describe(&e))?;
    Ok(rows
        .iter()
        .map(|r| Row {
            channel: r.get(0),
            epoch: r.get(1),
            offset: r.get(2),
            ts_ms: r.get(3),
            format: i64::from(r.get::<_, i16>(4)),
            data: r.get(5),
            meta: r.get(6),
            key: r.get(7),
            sender: r.get(8),
            event: r.get(9),
            author: r.get(10),
            revises: r.get(11),
        })
        .collect())
}

/// Redact `user`'s stored publications (and the revisions they made), delete its inbox
/// (`inbox`: the channel) and its receipts.
pub(crate) fn erase_user(url: &str, user: &str, inbox: Option<&str>) -> Result<Erased, String> {
    crate::sql::off_runtime(|| {
        let mut store = connect(url)?;
        erase(&mut store, user, inbox).map_err(|e| describe(&e))
    })
}

fn erase(store: &mut PgStore, user: &str, inbox: Option<&str>) -> Result<Erased, postgres::Error> {
    let msgpack = Format::MsgPack.index() as i16;
    let (mp_data, mp_meta) = redacted(Format::MsgPack);
    let (json_data, json_meta) = redacted(Format::Json);
    let mut total = Erased::default();
    let mut tx = store.client.transaction()?;
    let blank: [&(dyn ToSql + Sync); 4] = [&user, &msgpack, &mp_data, &json_data];
    tx.execute(
        "UPDATE revisions SET data = CASE revisions.format WHEN $2 THEN $3::bytea ELSE $4::bytea END,
             meta = NULL
         FROM publications t
         WHERE t.channel = revisions.channel AND t.epoch = revisions.epoch
           AND t.\"offset\" = revisions.\"offset\" AND (t.author = $1 OR t.sender = $1)",
        &blank,
    )?;
    total.redacted = tx.execute(
        "UPDATE publications SET data = CASE format WHEN $2 THEN $3::bytea ELSE $4::bytea END,
             meta = CASE format WHEN $2 THEN $5::bytea ELSE $6::bytea END,
             author = NULL, sender = NULL, key = NULL
         WHERE author = $1 OR sender = $1",
        &[&user, &msgpack, &mp_data, &json_data, &mp_meta, &json_meta],
    )? as usize;
    if let Some(inbox) = inbox {
        total.inbox_deleted =
            tx.execute("DELETE FROM publications WHERE channel = $1", &[&inbox])? as usize;
        tx.execute("DELETE FROM revisions WHERE channel = $1", &[&inbox])?;
        tx.execute("DELETE FROM streams WHERE channel = $1", &[&inbox])?;
        total.marks_deleted +=
            tx.execute("DELETE FROM marks WHERE channel = $1", &[&inbox])? as usize;
    }
    total.marks_deleted += tx.execute(
        "DELETE FROM marks WHERE kind = $1 AND who = $2",
        &[&(MarkKind::Receipt.code() as i16), &user],
    )? as usize;
    tx.commit()?;
    Ok(total)
}
