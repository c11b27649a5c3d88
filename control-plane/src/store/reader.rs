//! The history reader: a thread with its own connection to the store file that reads
//! the pages owner shards hand over ([`HistoryRead`]) and answers whoever asked.
//!
//! WAL lets it read beside the writer without either waiting. Its queue is bounded: a
//! page that finds it full is refused at once as overloaded (the client retries), never
//! held by a shard. Owns the thread and its queue; the SQL is in `pages`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use switchboard_engine::history::{Answer, HistoryRead};
use switchboard_engine::ShardSender;
use switchboard_protocol::ErrorCode;

use super::pages::{self, PageError};
use super::StoreStats;
use crate::worker::{open_store, WorkerHandle};

/// Pages waiting for the reader beyond which new ones are refused.
const QUEUE: usize = 1024;

/// Where shards' history pages go (clone freely).
#[derive(Debug, Clone)]
pub struct HistoryReader {
    tx: Sender<Box<HistoryRead>>,
    shards: ShardSender,
}

impl HistoryReader {
    /// Hand a page over; refused at once if the reader is behind or stopped.
    pub fn submit(&self, read: Box<HistoryRead>) {
        let (read, code, why) = match self.tx.try_send(read) {
            Ok(()) => return,
            Err(TrySendError::Full(r)) => (
                r,
                ErrorCode::Overloaded,
                "the store's reader is busy, retry",
            ),
            Err(TrySendError::Disconnected(r)) => {
                (r, ErrorCode::Unavailable, "the store's reader has stopped")
            }
        };
        deliver(&self.shards, read.refuse(code, why.into()));
    }
}

/// Start the reader on the store file at `path`.
pub fn spawn(
    path: &std::path::Path,
    shards: ShardSender,
    stats: Arc<StoreStats>,
) -> Result<(HistoryReader, WorkerHandle), crate::Error> {
    let mut conn = open_store(path, "the history reader")?;
    let (tx, rx): (Sender<Box<HistoryRead>>, Receiver<Box<HistoryRead>>) =
        crossbeam_channel::bounded(QUEUE);
    let out = shards.clone();
    let handle = WorkerHandle::spawn("sb-history", move |stop| {
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let Ok(read) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let started = Instant::now();
            let read = *read;
            let result = pages::read(&mut conn, &read.channel, &read.page, read.top, &read.kept);
            let answer = match result {
                Ok(p) => {
                    stats.pages_read.fetch_add(1, Relaxed);
                    read.answer(p.top, p.entries, p.more)
                }
                Err(PageError::UnknownEpoch(epoch, top)) => read.refuse(
                    ErrorCode::NotFound,
                    format!(
                        "epoch {epoch:016x} of this channel is not stored; its epoch is {}",
                        top.epoch_hex().as_str()
                    ),
                ),
                Err(PageError::Store(e)) => {
                    stats.page_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "a history page could not be read from the store");
                    read.refuse(
                        ErrorCode::Unavailable,
                        "the store could not be read; retry".into(),
                    )
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
