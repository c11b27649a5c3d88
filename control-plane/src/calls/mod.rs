//! Call signaling: the call state machine, ringing, signaling relay, the call log.
//!
//! Owns every active call (in memory, on one thread, so two accepts or two users
//! calling each other at once are ordered: the first accept wins, and the second
//! `call` of a glare finds the first and answers it instead of ringing back) and the
//! `calls` and `call_quality` tables of the store (the log: who, when, how long, how it
//! ended). A call moves only along [`allowed`]:
//!
//! ```text
//! initiating → ringing → accepted → in_progress → ended
//!                      ↘ rejected     ↘ ended      ↘ failed
//!                      ↘ missed       ↘ failed
//!                      ↘ ended (cancelled by the caller), failed
//! ```
//!
//! A user call rings every device of the callee; a room call rings the room's
//! subscribers and anyone subscribed may join. `in_progress` starts when two
//! participants have exchanged signaling data. A call not answered within
//! `calls.ring_timeout_ms` is `missed` (both sides are told, and the callee gets a
//! `missed_call` notification). A participant whose connection drops without a close
//! has `calls.grace_ms` to come back (`call_accept` again from any of its devices);
//! then the call fails for it. Active calls do not survive a restart: the log records
//! them as failed (`server restarted`).
//!
//! With nodes sharing Redis, a call lives on the node where it was placed and its id
//! names that node; commands for it from connections on other nodes are forwarded
//! there, and its events reach them back (`remote`).
//!
//! Does not own media (clients exchange SDP and ICE through `call_signal`; media flows
//! peer to peer or through the application's TURN/SFU) or who may call whom (the shard
//! checks the token before forwarding).
//!
//! # Layout
//! - this file: the call states, the handle the shards' router and the HTTP API use,
//!   and the worker thread (the only place the call code reads the clock);
//! - `book`: every active call and what each command, departure and deadline does to
//!   it, given the moment ([`switchboard_engine::Now`]) — testable on a virtual clock;
//! - `events`: the `call` pushes clients get;
//! - `remote`: calls held by another node, and the letters between call workers;
//! - `log`: reading the call log.

mod book;
mod state;
use book::CallBook;
use state::Work;
pub use state::{allowed, CallView, LogEntry, ParticipantView, State};
use switchboard_engine::Now;
mod events;
mod log;
mod remote;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use switchboard_engine::{ControlRequest, ShardSender};

use crate::clock::now_ms;
use crate::config::CallsConfig;
use crate::notify::Notifier;
use crate::sql::{args, Db, Exec, Kind, Location};
use crate::worker::WorkerHandle;

/// Where the call thread takes work from (clone freely).
#[derive(Clone)]
pub struct Calls {
    tx: Sender<Work>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Calls")
    }
}

impl Calls {
    /// Hand a shard's call command, or a participant's departure, over.
    pub fn submit(&self, req: ControlRequest) {
        let work = match req {
            ControlRequest::Command {
                shard,
                conn,
                req_id,
                caller,
                cmd,
            } => Work::Shard {
                shard,
                conn,
                req_id,
                caller,
                cmd,
            },
            ControlRequest::Gone { caller, graceful } => Work::Gone(caller, graceful),
            _ => return,
        };
        if self.tx.send(work).is_err() {
            tracing::warn!("call worker stopped; a call command is not answered");
        }
    }

    /// Active calls (admin API).
    pub async fn active(&self) -> Vec<CallView> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Work::Active(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The call log, newest first, of one user or everyone (admin API).
    pub async fn log(&self, user: Option<String>, limit: u32) -> Result<Vec<LogEntry>, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Work::Log(user, limit, tx))
            .map_err(|_| "call worker stopped".to_string())?;
        rx.await.map_err(|_| "call worker stopped".to_string())?
    }
}

/// The running call thread (active calls are logged as failed at the next start).
pub type CallsHandle = WorkerHandle;

/// Start the call thread of `node` ("" alone) on the store at `at`; calls this node
/// left active in its previous run are logged as failed.
pub fn spawn(
    at: &Location,
    shards: ShardSender,
    cfg: CallsConfig,
    notifier: Notifier,
    peers: crate::cluster::Peers,
    pushes: crate::cluster::RemotePushes,
    node: &str,
) -> Result<(Calls, CallsHandle), crate::Error> {
    let mut conn = Db::open(at, "calls")?;
    // Only this node's: in a store the nodes share, the others' calls go on.
    let left = match conn.kind() {
        Kind::Sqlite => conn.execute(
            "UPDATE calls SET ended_ms = ?1, outcome = 'failed', reason = 'server restarted'
             WHERE ended_ms IS NULL",
            args![now_ms()],
        ),
        Kind::Postgres => conn.execute(
            "UPDATE calls SET ended_ms = ?1, outcome = 'failed', reason = 'server restarted'
             WHERE ended_ms IS NULL AND node = ?2",
            args![now_ms(), node],
        ),
    }
    .map_err(|e| crate::Error::Store {
        path: at.name(),
        message: format!("the call log cannot be updated: {e}"),
    })?;
    if left > 0 {
        tracing::warn!(
            calls = left,
            "calls active at the last stop are logged as failed"
        );
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut book = CallBook::new(conn, shards, cfg, notifier, Now::read());
    book.pushes = pushes;
    book.node = node.to_string();
    book.remote.peers = peers.clone();
    let letters = tx.clone();
    peers.read_with(move |letter| {
        let _ = letters.send(Work::Letter(letter.to_vec()));
    });
    let handle = WorkerHandle::spawn("calls", move |stop| run(&mut book, &rx, stop))
        .map_err(|e| crate::Error::start("the call worker", e))?;
    Ok((Calls { tx }, handle))
}

/// The call worker's thread: wait for work or the next deadline (at most 250 ms),
/// reading the clock once per wake-up for everything handled then.
fn run(book: &mut CallBook, rx: &Receiver<Work>, stop: &AtomicBool) {
    loop {
        let wait = book
            .next_deadline()
            .map_or(Duration::from_millis(250), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(250))
            });
        let first = rx.recv_timeout(wait);
        book.at(Now::read());
        match first {
            Ok(w) => book.handle(w),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(w) = rx.try_recv() {
            book.handle(w);
        }
        book.expire();
        if stop.load(Ordering::Acquire) {
            break;
        }
    }
}
