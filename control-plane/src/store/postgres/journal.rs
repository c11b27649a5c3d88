//! Group commit on PostgreSQL: every waiting batch of the shards' journal in one
//! transaction, so one WAL flush acknowledges them all (`sync` publications wait for it,
//! as on SQLite).
//!
//! Publications go in with one binary `COPY` (a single round trip however many there
//! are; row-by-row statements cost one round trip each), stream tops and marks with one
//! `UNNEST` upsert each, revisions and Socket.IO sessions (rare) one statement each. Owns that SQL. Does not
//! own the thread, retries or commit notices (the store's writer).

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::Client;
use std::collections::HashMap;
use switchboard_engine::journal::{revision_code, Batch};

/// The columns of a publication, in the order of [`TYPES`].
const COPY: &str =
    "COPY publications (channel, epoch, \"offset\", ts_ms, format, data, meta, key, \
                    sender, event, author, revises) FROM STDIN BINARY";

const TYPES: [Type; 12] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::BYTEA,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
];

/// Write `batches` in one transaction, stamped `now_ms` (which never goes back).
///
/// A publication already stored is left as it is: a retried commit whose first try did
/// commit (the connection was lost before the answer), or nodes sharing the database
/// storing the same shared channel. `COPY` cannot skip such rows, so when it meets one
/// the transaction is made again with an `INSERT … ON CONFLICT DO NOTHING` (slower,
/// and only then).
/// `node` names the writing node (its Socket.IO sessions are its own; "" alone).
pub fn write(
    client: &mut Client,
    node: &str,
    batches: &[Batch],
    now_ms: i64,
) -> Result<(), postgres::Error> {
    match write_with(client, node, batches, now_ms, false) {
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
            write_with(client, node, batches, now_ms, true)
        }
        other => other,
    }
}

/// The publications' columns, one array each, for `UNNEST`; what is stored already is
/// skipped.
const INSERT_SKIPPING: &str = "INSERT INTO publications (channel, epoch, \"offset\", ts_ms,
        format, data, meta, key, sender, event, author, revises)
     SELECT c, e, o, $12, f, d, m, k, s, v, a, r
     FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int2[], $5::bytea[], $6::bytea[],
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[])
         AS t (c, e, o, f, d, m, k, s, v, a, r)
     ON CONFLICT DO NOTHING";

/// Add the publications of `batches` to `tx`: one binary `COPY`, or (`skipping`) one
/// `INSERT` that skips those already stored.
fn add_publications(
    tx: &mut postgres::Transaction<'_>,
    batches: &[Batch],
    now_ms: i64,
    skipping: bool,
) -> Result<(), postgres::Error> {
    let records = || batches.iter().flat_map(|b| b.records.iter());
    if skipping {
        let channels: Vec<&str> = records().map(|r| &*r.channel).collect();
        let epochs: Vec<i64> = records().map(|r| r.epoch as i64).collect();
        let offsets: Vec<i64> = records().map(|r| r.offset as i64).collect();
        let formats: Vec<i16> = records().map(|r| r.format.index() as i16).collect();
        let data: Vec<&[u8]> = records().map(|r| &r.data[..]).collect();
        let meta: Vec<Option<&[u8]>> = records().map(|r| r.meta.as_deref()).collect();
        let keys: Vec<Option<&str>> = records().map(|r| r.key.as_deref()).collect();
        let senders: Vec<Option<&str>> = records().map(|r| r.from.as_deref()).collect();
        let events: Vec<Option<&str>> = records().map(|r| r.event.as_deref()).collect();
        let authors: Vec<Option<&str>> = records().map(|r| r.author.as_deref()).collect();
        let revises: Vec<Option<i64>> = records().map(|r| r.revises.map(revision_code)).collect();
        tx.execute(
            INSERT_SKIPPING,
            &[
                &channels, &epochs, &offsets, &formats, &data, &meta, &keys, &senders, &events,
                &authors, &revises, &now_ms,
            ],
        )?;
        return Ok(());
    }
    let sink = tx.copy_in(COPY)?;
    let mut rows = BinaryCopyInWriter::new(sink, &TYPES);
    for r in records() {
        let revises = r.revises.map(revision_code);
        rows.write(&[
            &&*r.channel,
            &(r.epoch as i64),
            &(r.offset as i64),
            &now_ms,
            &(r.format.index() as i16),
            &&r.data[..],
            &r.meta.as_deref(),
            &r.key.as_deref(),
            &r.from.as_deref(),
            &r.event.as_deref(),
            &r.author.as_deref(),
            &revises,
        ])?;
    }
    rows.finish()?;
    Ok(())
}

fn write_with(
    client: &mut Client,
    node: &str,
    batches: &[Batch],
    now_ms: i64,
    skipping: bool,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    add_publications(&mut tx, batches, now_ms, skipping)?;
    let mut tops: HashMap<&str, (i64, i64)> = HashMap::new();
    for r in batches.iter().flat_map(|b| b.records.iter()) {
        tops.insert(&r.channel, (r.epoch as i64, r.offset as i64));
    }
    for r in batches.iter().flat_map(|b| b.records.iter()) {
        if let Some(rev) = r.revises {
            tx.execute(
                "INSERT INTO revisions (channel, epoch, target, \"offset\", ts_ms, deleted, format, data, meta)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (channel, epoch, target) DO UPDATE SET
                     \"offset\" = excluded.\"offset\", ts_ms = excluded.ts_ms,
                     deleted = revisions.deleted OR excluded.deleted, format = excluded.format,
                     data = excluded.data, meta = excluded.meta
                 WHERE excluded.\"offset\" > revisions.\"offset\"",
                &[
                    &&*r.channel,
                    &(r.epoch as i64),
                    &(rev.target as i64),
                    &(r.offset as i64),
                    &now_ms,
                    &rev.delete,
                    &(r.format.index() as i16),
                    &&r.data[..],
                    &r.meta.as_deref(),
                ],
            )?;
        }
    }
    if !tops.is_empty() {
        let (mut channels, mut epochs, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        for (c, (e, o)) in &tops {
            channels.push(*c);
            epochs.push(*e);
            offsets.push(*o);
        }
        tx.execute(
            "INSERT INTO streams (channel, epoch, top, updated_ms)
             SELECT c, e, o, $4 FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS t (c, e, o)
             ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch,
                 top = CASE WHEN streams.epoch = excluded.epoch
                       THEN GREATEST(streams.top, excluded.top) ELSE excluded.top END,
                 updated_ms = excluded.updated_ms",
            &[&channels, &epochs, &offsets, &now_ms],
        )?;
    }
    let marks: Vec<_> = batches.iter().flat_map(|b| b.marks.iter()).collect();
    if !marks.is_empty() {
        let channels: Vec<&str> = marks.iter().map(|m| &*m.channel).collect();
        let kinds: Vec<i16> = marks.iter().map(|m| m.kind.code() as i16).collect();
        let who: Vec<&str> = marks.iter().map(|m| &*m.who).collect();
        let epochs: Vec<i64> = marks.iter().map(|m| m.epoch as i64).collect();
        let delivered: Vec<i64> = marks.iter().map(|m| m.delivered as i64).collect();
        let read: Vec<i64> = marks.iter().map(|m| m.read as i64).collect();
        let at: Vec<i64> = marks.iter().map(|m| m.at_ms as i64).collect();
        // The latest of a (channel, kind, who) wins: one row each per statement.
        tx.execute(
            "INSERT INTO marks (channel, kind, who, epoch, delivered, read, at_ms)
             SELECT DISTINCT ON (c, k, w) c, k, w, e, d, r, a
             FROM UNNEST($1::text[], $2::int2[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                         $7::int8[]) WITH ORDINALITY AS t (c, k, w, e, d, r, a, n)
             ORDER BY c, k, w, n DESC
             ON CONFLICT (channel, kind, who) DO UPDATE SET epoch = excluded.epoch,
                 delivered = excluded.delivered, read = excluded.read, at_ms = excluded.at_ms",
            &[&channels, &kinds, &who, &epochs, &delivered, &read, &at],
        )?;
    }
    for s in batches.iter().flat_map(|b| b.sessions.iter()) {
        tx.execute(
            "INSERT INTO sio_sessions (pid, home, closed_ms, body, node) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pid) DO UPDATE SET home = excluded.home,
                 closed_ms = excluded.closed_ms, body = excluded.body, node = excluded.node",
            &[
                &format!("{:032x}", s.pid),
                &i64::from(s.home),
                &(s.closed_ms.min(i64::MAX as u64) as i64),
                &&s.body[..],
                &node,
            ],
        )?;
    }
    tx.commit()
}
