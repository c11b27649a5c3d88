//! The history reader: a thread with its own connection to the store that reads
//! the pages owner shards hand over ([`HistoryRead`]) and answers whoever asked, and
//! checks the stored originals of edits and deletions memory no longer keeps (sending
//! each revision back to its channel's owner, checked, or refusing it).
//!
//! On SQLite, WAL lets it read beside the writer without either waiting; PostgreSQL
//! serves any number of readers. Its queue is bounded: work that finds it full is
//! refused at once as overloaded (the client retries), never held by a shard. Owns the
//! thread and its queue; the SQL is in `pages` and `revisions` (SQLite) and
//! `crate::store::postgres::pages` (PostgreSQL).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use switchboard_engine::history::{Answer, HistoryRead};
use switchboard_engine::mesh::{Refused, SequenceReq};
use switchboard_engine::publications::RevisionReq;
use switchboard_engine::{ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;

use super::pages::{self, PageError};
use super::revisions;
use super::StoreStats;
use crate::sql::{Db, Location};
use crate::worker::WorkerHandle;

/// Pages waiting for the reader beyond which new ones are refused.
const QUEUE: usize = 1024;

/// What the reader does.
#[derive(Debug)]
enum Work {
    Page(Box<HistoryRead>),
    Revision(Box<SequenceReq>),
}

/// Where shards' history pages and revision checks go (clone freely).
#[derive(Debug, Clone)]
pub struct HistoryReader {
    tx: Sender<Work>,
    shards: ShardSender,
}

impl HistoryReader {
    /// Hand a page over; refused at once if the reader is behind or stopped.
    pub fn submit(&self, read: Box<HistoryRead>) {
        self.hand(Work::Page(read));
    }

    /// Hand a revision's check over; refused at once if the reader is behind or
    /// stopped.
    pub fn check_revision(&self, req: Box<SequenceReq>) {
        self.hand(Work::Revision(req));
    }

    fn hand(&self, work: Work) {
        let (work, code, why) = match self.tx.try_send(work) {
            Ok(()) => return,
            Err(TrySendError::Full(w)) => (
                w,
                ErrorCode::Overloaded,
                "the store's reader is busy, retry",
            ),
            Err(TrySendError::Disconnected(w)) => {
                (w, ErrorCode::Unavailable, "the store's reader has stopped")
            }
        };
        match work {
            Work::Page(read) => fail(&self.shards, *read, code, why.into()),
            Work::Revision(req) => refuse(&self.shards, *req, code, why.into()),
        }
    }
}

/// A page the store cannot read: refused to whoever asked; a recovery goes back to its
/// owner as incomplete (the subscription starts, `recovered: false`).
fn fail(shards: &ShardSender, read: HistoryRead, code: ErrorCode, why: String) {
    if read.recovery {
        let owner = shards.home_of(&read.channel) as u16;
        let mut r = read.recovered(Vec::new());
        r.complete = false;
        let msg = ShardMsg::Recovered(Box::new(r));
        crate::shards::send_patiently(shards, owner, msg, "a recovery read");
    } else {
        deliver(shards, read.refuse(code, why));
    }
}

/// Refuse a revision to whoever asked for it.
fn refuse(shards: &ShardSender, req: SequenceReq, code: ErrorCode, message: String) {
    if let Some((shard, msg)) = req.reply.refuse(Refused { code, message }) {
        crate::shards::send_patiently(shards, shard, msg, "a revision's refusal");
    }
}

/// Check a revision's stored original; send it back to its owner checked, or refuse it.
fn check(db: &mut Db, shards: &ShardSender, mut req: SequenceReq) {
    let Some(r) = req.revision else { return };
    let epoch = r.epoch.unwrap_or_default();
    let (target, author) = (r.revises.target, req.author.as_deref());
    let verdict = match db {
        Db::Sqlite(conn) => {
            revisions::check_original(conn, &req.channel, epoch, target, author, r.moderator)
                .map_err(|e| e.to_string())
        }
        Db::Postgres(store) => reconnecting(store, |store| {
            crate::store::postgres::pages::original(store, &req.channel, epoch, target)
        })
        .map(|(found, deleted)| revisions::verdict(found, deleted, target, author, r.moderator)),
    };
    match verdict {
        Ok(None) => {
            req.revision = Some(RevisionReq { checked: true, ..r });
            let owner = shards.home_of(&req.channel) as u16;
            let msg = ShardMsg::Sequence(Box::new(req));
            crate::shards::send_patiently(shards, owner, msg, "a checked revision");
        }
        Ok(Some(refused)) => refuse(shards, req, refused.code, refused.message),
        Err(e) => {
            tracing::warn!(error = %e, "a revision's original could not be read from the store");
            let why = "the store could not be read; retry".to_string();
            refuse(shards, req, ErrorCode::Unavailable, why);
        }
    }
}

/// `read` on PostgreSQL; a connection found lost (the server restarted, failed over
/// or ended the session) is made again and `read` tried once more.
fn reconnecting<T>(
    store: &mut crate::sql::PgStore,
    mut read: impl FnMut(&mut crate::sql::PgStore) -> Result<T, postgres::Error>,
) -> Result<T, String> {
    store.reconnect_if_closed().map_err(|e| e.to_string())?;
    match read(store) {
        Err(_) if store.client.is_closed() => {
            store.reconnect_if_closed().map_err(|e| e.to_string())?;
            read(store).map_err(|e| crate::sql::describe(&e))
        }
        other => other.map_err(|e| crate::sql::describe(&e)),
    }
}

/// A page from either database.
fn read_page(db: &mut Db, read: &HistoryRead) -> Result<pages::PageOut, PageError> {
    match db {
        Db::Sqlite(conn) => pages::read(conn, &read.channel, &read.page, read.top, &read.kept),
        Db::Postgres(store) => {
            let (channel, page, kept) = (&read.channel, &read.page, &read.kept[..]);
            let result = reconnecting(store, |store| {
                crate::store::postgres::pages::read(store, channel, page, read.top, kept)
            });
            match result {
                Ok(Some(p)) => Ok(pages::PageOut {
                    top: p.top,
                    entries: p.entries,
                    more: p.more,
                }),
                Ok(None) => Err(PageError::UnknownEpoch(
                    read.page.epoch.unwrap_or(read.top.epoch),
                    read.top,
                )),
                Err(e) => Err(PageError::Failed(e)),
            }
        }
    }
}

/// Start the reader on the store at `at`.
pub fn spawn(
    at: &Location,
    shards: ShardSender,
    stats: Arc<StoreStats>,
) -> Result<(HistoryReader, WorkerHandle), crate::Error> {
    let mut conn = Db::open(at, "the history reader")?;
    let (tx, rx): (Sender<Work>, Receiver<Work>) = crossbeam_channel::bounded(QUEUE);
    let out = shards.clone();
    let handle = WorkerHandle::spawn("sb-history", move |stop| {
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let read = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Work::Page(read)) => *read,
                Ok(Work::Revision(req)) => {
                    check(&mut conn, &out, *req);
                    continue;
                }
                Err(_) => continue,
            };
            let started = Instant::now();
            let result = read_page(&mut conn, &read);
            let answer = match result {
                Ok(p) if read.recovery => {
                    // Back to the channel's owner, which adds what it sequenced since.
                    stats.pages_read.fetch_add(1, Relaxed);
                    let owner = out.home_of(&read.channel) as u16;
                    let msg = ShardMsg::Recovered(Box::new(read.recovered(p.entries)));
                    crate::shards::send_patiently(&out, owner, msg, "a recovery read");
                    Answer::Delivered
                }
                Ok(p) => {
                    stats.pages_read.fetch_add(1, Relaxed);
                    read.answer(p.top, p.entries, p.more)
                }
                Err(PageError::UnknownEpoch(epoch, top)) => {
                    let why = format!(
                        "epoch {epoch:016x} of this channel is not stored; its epoch is {}",
                        top.epoch_hex().as_str()
                    );
                    fail(&out, read, ErrorCode::NotFound, why);
                    Answer::Delivered
                }
                Err(e) => {
                    stats.page_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "a history page could not be read from the store");
                    let why = "the store could not be read; retry".to_string();
                    fail(&out, read, ErrorCode::Unavailable, why);
                    Answer::Delivered
                }
            };
            stats
                .last_page_us
                .store(started.elapsed().as_micros() as u64, Relaxed);
            deliver(&out, answer);
        }
    })
    .map_err(|e| crate::Error::start("the history reader", e))?;
    Ok((HistoryReader { tx, shards }, handle))
}

fn deliver(shards: &ShardSender, answer: Answer) {
    if let Answer::ToShard(shard, msg) = answer {
        crate::shards::send_patiently(shards, shard, msg, "a history page");
    }
}
