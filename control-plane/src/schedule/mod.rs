//! Scheduled messages: publications and direct messages sent at a later time.
//!
//! Owns the `scheduled` table of the store (its own connection to the store: SQLite's
//! WAL lets it write beside the journal writer; PostgreSQL any number) and one thread that stores requests,
//! cancels them, and fires what is due: it publishes through the engine exactly as the
//! server API does, with the idempotency key `schedule:<id>`, and marks the row fired
//! with the position it got. A scheduled message survives restarts (the row stays
//! pending until a publication was acknowledged); one that was published but not yet
//! marked when the process died is published again at start-up, and the key makes
//! that a duplicate the channel drops when the original is still within the dedupe
//! window (at-least-once, deduplicated within the window).
//!
//! A publication refused because the store or the server is busy (108, 111) is retried
//! a second later; one refused for good (its payload does not transcode, its channel is
//! invalid) is marked failed with the reason.
//!
//! With nodes sharing Redis, new scheduled messages are kept there instead (`shared`):
//! any node lists and cancels them, and one node fires each, even when the node that
//! took it is gone. Messages already in the node's own store still fire from it.
//!
//! Does not own who may schedule (the shards check the token; the server API checks its
//! key).

mod shared;
pub use shared::SharedJobs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use switchboard_engine::auth::ScheduleJob;
use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::metrics::CommandKind;
use switchboard_engine::{ControlRequest, EngineHandle, Refused, ShardSender};
use switchboard_protocol::{ErrorCode, Format, Payload, Position};

use crate::clock::now_ms;
use crate::sql::{args, Db, DbError, Exec};
use crate::worker::WorkerHandle;

/// Most pending scheduled messages one user may have (the server API is not limited).
pub const MAX_PENDING_PER_USER: i64 = 10_000;

/// Owner recorded for messages scheduled through the server API.
pub const API_OWNER: &str = "api";

const PENDING: i64 = 0;
const FIRED: i64 = 1;
const CANCELLED: i64 = 2;
const FAILED: i64 = 3;

/// How long a node sharing the store holds the due messages it claimed.
const CLAIM_LEASE_MS: u64 = 30_000;

/// Where the scheduler thread takes work from (clone freely).
#[derive(Debug, Clone)]
pub struct Scheduler {
    tx: Sender<Work>,
}

/// The running scheduler thread (pending messages stay stored and fire after the next
/// start).
pub type SchedulerHandle = WorkerHandle;

/// Why a cancellation did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelError {
    /// No such id (or not the caller's).
    NotFound,
    /// It already fired, failed or was cancelled.
    NotPending(&'static str),
    /// The store failed.
    Store(String),
}

/// A scheduled message as the server API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledView {
    /// Its id.
    pub id: u64,
    /// When it is (or was) due, Unix milliseconds.
    pub at: u64,
    /// Target channel.
    pub channel: String,
    /// Sender of a direct message.
    pub from: Option<String>,
    /// Who scheduled it (a user id, or `api`).
    pub owner: String,
    /// `pending`, `fired`, `cancelled` or `failed`.
    pub state: &'static str,
    /// When it fired, Unix milliseconds.
    pub fired_at: Option<u64>,
    /// The position it got.
    pub epoch: Option<String>,
    /// The position it got.
    pub offset: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

type Reply<T> = tokio::sync::oneshot::Sender<T>;

enum Work {
    /// From a shard: `Schedule` or `Unschedule`.
    Shard(ControlRequest),
    Add(ScheduleJob, Reply<Result<(u64, u64), String>>),
    Cancel(u64, Reply<Result<(), CancelError>>),
    List(bool, Reply<Result<Vec<ScheduledView>, String>>),
}

impl Scheduler {
    /// Hand a shard's `Schedule` or `Unschedule` request over; the answer goes to the
    /// shard.
    pub fn submit(&self, req: ControlRequest) {
        if self.tx.send(Work::Shard(req)).is_err() {
            tracing::warn!("scheduler stopped; a scheduling request is not answered");
        }
    }

    /// Schedule `job` (server API): its id and due time.
    pub async fn add(&self, job: ScheduleJob) -> Result<(u64, u64), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Work::Add(job, tx))
            .map_err(|_| "scheduler stopped".to_string())?;
        rx.await.map_err(|_| "scheduler stopped".to_string())?
    }

    /// Cancel scheduled message `id` (server API: anyone's).
    pub async fn cancel(&self, id: u64) -> Result<(), CancelError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || CancelError::Store("scheduler stopped".into());
        self.tx.send(Work::Cancel(id, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Scheduled messages, pending only or all recent ones (server API).
    pub async fn list(&self, pending_only: bool) -> Result<Vec<ScheduledView>, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Work::List(pending_only, tx))
            .map_err(|_| "scheduler stopped".to_string())?;
        rx.await.map_err(|_| "scheduler stopped".to_string())?
    }
}

/// Start the scheduler on the store at `at` (already opened and prepared by
/// [`crate::store::open`]), publishing through `engine` and answering shards through
/// `shards`; new jobs go to `shared` (Redis) when nodes share it and each has a store of
/// its own, and stay in the store when the nodes share it (`store_shared`: each node
/// claims what it fires).
pub fn spawn(
    at: &crate::sql::Location,
    engine: Arc<EngineHandle>,
    shards: ShardSender,
    shared: Option<SharedJobs>,
    store_shared: bool,
) -> Result<(Scheduler, SchedulerHandle), crate::Error> {
    let conn = Db::open(at, "the scheduler")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker {
        conn,
        engine,
        shards,
        shared,
        store_shared,
        claimed_at: Instant::now(),
    };
    let handle = WorkerHandle::spawn("scheduler", move |stop| worker.run(&rx, stop))
        .map_err(|e| crate::Error::start("the scheduler", e))?;
    Ok((Scheduler { tx }, handle))
}

struct Worker {
    conn: Db,
    engine: Arc<EngineHandle>,
    shards: ShardSender,
    /// Jobs kept in Redis (nodes sharing it).
    shared: Option<SharedJobs>,
    /// The store is shared by the nodes of a cluster: due jobs are claimed.
    store_shared: bool,
    /// When this node last looked for due jobs in Redis.
    claimed_at: Instant,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Work>, stop: &AtomicBool) {
        let mut wake = Instant::now();
        loop {
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match rx.recv_timeout(wait) {
                Ok(w) => self.handle(w),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {}
            }
            while let Ok(w) = rx.try_recv() {
                self.handle(w);
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
            let retry = self.fire_due();
            wake = match (retry, self.next_due()) {
                (true, _) => Instant::now() + Duration::from_secs(1),
                (false, Some(due)) => {
                    Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()))
                }
                (false, None) => Instant::now() + Duration::from_secs(1),
            };
        }
    }

    fn handle(&mut self, w: Work) {
        match w {
            Work::Shard(ControlRequest::Schedule {
                shard,
                conn,
                req_id,
                job,
            }) => {
                let result = self
                    .insert(&job, true)
                    .map(|(id, at)| ReplyBody::Scheduled { id, at });
                let command = CommandKind::Schedule;
                crate::shards::reply(&self.shards, shard, conn, req_id, command, result);
            }
            Work::Shard(ControlRequest::Unschedule {
                shard,
                conn,
                req_id,
                id,
                owner,
            }) => {
                let result = match self.cancel(id, Some(&owner)) {
                    Ok(()) => Ok(ReplyBody::Empty),
                    Err(e) => Err(cancel_refusal(e)),
                };
                let command = CommandKind::Unschedule;
                crate::shards::reply(&self.shards, shard, conn, req_id, command, result);
            }
            Work::Shard(_) => {}
            Work::Add(job, reply) => {
                let _ = reply.send(self.insert(&job, false).map_err(|e| e.message));
            }
            Work::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(id, None));
            }
            Work::List(pending, reply) => {
                let _ = reply.send(self.list_all(pending));
            }
        }
    }

    fn insert(&mut self, job: &ScheduleJob, limited: bool) -> Result<(u64, u64), Refused> {
        if let Some(shared) = &self.shared {
            return shared.add(job, if limited { MAX_PENDING_PER_USER } else { 0 });
        }
        let store_err = |e: DbError| Refused {
            code: ErrorCode::Unavailable,
            message: format!("cannot store the scheduled message: {e}"),
        };
        if limited {
            let pending: i64 = self
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM scheduled WHERE owner = ?1 AND state = ?2",
                    args![&*job.owner, PENDING],
                    |r| r.get(0),
                )
                .map_err(store_err)?;
            if pending >= MAX_PENDING_PER_USER {
                return Err(Refused {
                    code: ErrorCode::LimitExceeded,
                    message: format!("at most {MAX_PENDING_PER_USER} pending scheduled messages"),
                });
            }
        }
        let id: u64 = self
            .conn
            .query_row(
                "INSERT INTO scheduled (due_ms, channel, sender, format, data, meta, owner,
                     created_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
                args![
                    job.due_ms,
                    job.channel,
                    job.from.as_deref(),
                    job.format.index(),
                    &job.data[..],
                    job.meta.as_deref(),
                    &*job.owner,
                    now_ms(),
                    PENDING
                ],
                |r| r.get(0),
            )
            .map_err(store_err)?;
        Ok((id, job.due_ms))
    }

    fn cancel(&mut self, id: u64, owner: Option<&str>) -> Result<(), CancelError> {
        if id >= shared::FIRST_ID {
            return match &self.shared {
                Some(shared) => shared.cancel(id, owner),
                None => Err(CancelError::NotFound),
            };
        }
        let row: Option<(String, i64)> = self
            .conn
            .query_opt(
                "SELECT owner, state FROM scheduled WHERE id = ?1",
                args![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| CancelError::Store(e.to_string()))?;
        let Some((row_owner, state)) = row else {
            return Err(CancelError::NotFound);
        };
        if owner.is_some_and(|o| o != row_owner) {
            return Err(CancelError::NotFound);
        }
        if state != PENDING {
            return Err(CancelError::NotPending(state_name(state)));
        }
        self.conn
            .execute(
                "UPDATE scheduled SET state = ?1 WHERE id = ?2 AND state = ?3",
                args![CANCELLED, id, PENDING],
            )
            .map_err(|e| CancelError::Store(e.to_string()))?;
        Ok(())
    }

    /// This node's own jobs and those kept in Redis (newest first, or pending ones by
    /// due time).
    fn list_all(&mut self, pending_only: bool) -> Result<Vec<ScheduledView>, String> {
        let mut all = self.list(pending_only).map_err(|e| e.to_string())?;
        if let Some(shared) = &self.shared {
            all.extend(shared.list(pending_only)?);
            if pending_only {
                all.sort_by_key(|v| (v.at, v.id));
            } else {
                all.sort_by_key(|v| std::cmp::Reverse(v.id));
            }
            all.truncate(1000);
        }
        Ok(all)
    }

    fn list(&mut self, pending_only: bool) -> Result<Vec<ScheduledView>, DbError> {
        let sql = if pending_only {
            "SELECT id, due_ms, channel, sender, owner, state, fired_ms, epoch, \"offset\", error
             FROM scheduled WHERE state = 0 ORDER BY due_ms, id LIMIT 1000"
        } else {
            "SELECT id, due_ms, channel, sender, owner, state, fired_ms, epoch, \"offset\", error
             FROM scheduled ORDER BY id DESC LIMIT 1000"
        };
        self.conn.query(sql, args![], |r| {
            Ok(ScheduledView {
                id: r.get(0)?,
                at: r.get(1)?,
                channel: r.get(2)?,
                from: r.get(3)?,
                owner: r.get(4)?,
                state: state_name(r.get(5)?),
                fired_at: r.get(6)?,
                epoch: r.get::<Option<i64>>(7)?.map(shared::epoch_hex),
                offset: r.get(8)?,
                error: r.get(9)?,
            })
        })
    }

    fn next_due(&mut self) -> Option<u64> {
        self.conn
            .query_row(
                "SELECT MIN(due_ms) FROM scheduled WHERE state = ?1",
                args![PENDING],
                |r| r.get::<Option<i64>>(0),
            )
            .ok()
            .flatten()
            .map(|v| v.max(0) as u64)
    }

    /// Publish everything due, here and (at most every 200 ms) in Redis. Returns
    /// whether something must be retried soon.
    fn fire_due(&mut self) -> bool {
        let retry = match self.due_rows() {
            Ok(due) => self.fire(due, false),
            Err(e) => {
                tracing::warn!("scheduler cannot read due messages: {e}");
                true
            }
        };
        let Some(shared) = &self.shared else {
            return retry;
        };
        if self.claimed_at.elapsed() < Duration::from_millis(200) {
            return retry;
        }
        self.claimed_at = Instant::now();
        match shared.claim() {
            Ok(due) if due.is_empty() => retry,
            // Claimed for this node: a job it cannot publish now fires when the
            // lease runs out (here or on another node).
            Ok(due) => self.fire(due, true) || retry,
            Err(e) => {
                tracing::debug!("scheduler cannot claim due messages in Redis: {e}");
                retry
            }
        }
    }

    /// Publish `due` (kept in Redis when `shared`), recording each outcome.
    fn fire(&mut self, due: Vec<Due>, shared: bool) -> bool {
        let mut tickets = Vec::with_capacity(due.len());
        let mut retry = false;
        for d in due {
            let key = format!("schedule:{}", d.id);
            let meta = d.meta.as_ref().map(|m| Payload {
                format: d.format,
                raw: m,
            });
            let data = Payload {
                format: d.format,
                raw: &d.data,
            };
            let from = d.sender.as_deref().map(Arc::from);
            match self
                .engine
                .publish_from(&d.channel, data, meta, Some(&key), from)
            {
                Ok(rx) => tickets.push((d.id, rx)),
                Err(switchboard_engine::Error::InvalidChannel) => {
                    self.settle(shared, d.id, Err("invalid channel name"));
                }
                Err(_) => {
                    retry = true;
                    break;
                }
            }
        }
        for (id, rx) in tickets {
            match rx.blocking_recv() {
                Ok(Ok((pos, _duplicate))) => self.settle(shared, id, Ok(pos)),
                Ok(Err(r)) if matches!(r.code, ErrorCode::Overloaded | ErrorCode::Unavailable) => {
                    retry = true;
                }
                Ok(Err(r)) => self.settle(shared, id, Err(&r.message)),
                // The engine stopped: it stays pending for the next start.
                Err(_) => retry = true,
            }
        }
        retry
    }

    fn due_rows(&mut self) -> Result<Vec<Due>, DbError> {
        // Nodes sharing the store each claim what they fire, for a lease (rows another
        // node holds are skipped, not waited for); a node that dies mid-way leaves its
        // claims to expire, and the idempotency key makes a second firing a duplicate.
        let now = now_ms();
        let (sql, params): (&str, &[&dyn crate::sql::Param]) = if self.store_shared {
            (
                "UPDATE scheduled SET claimed_until = ?3
                 WHERE id IN (SELECT id FROM scheduled
                     WHERE state = ?1 AND due_ms <= ?2
                       AND (claimed_until IS NULL OR claimed_until < ?2)
                     ORDER BY due_ms, id LIMIT 512 FOR UPDATE SKIP LOCKED)
                 RETURNING id, channel, sender, format, data, meta, due_ms",
                args![PENDING, now, now + CLAIM_LEASE_MS],
            )
        } else {
            (
                "SELECT id, channel, sender, format, data, meta, due_ms FROM scheduled
                 WHERE state = ?1 AND due_ms <= ?2 ORDER BY due_ms, id LIMIT 512",
                args![PENDING, now],
            )
        };
        let mut due = self.conn.query(sql, params, |r| {
            let due = Due {
                id: r.get(0)?,
                channel: r.get(1)?,
                sender: r.get(2)?,
                format: if r.get::<i64>(3)? == Format::Json.index() as i64 {
                    Format::Json
                } else {
                    Format::MsgPack
                },
                data: Bytes::from(r.get::<Vec<u8>>(4)?),
                meta: r.get::<Option<Vec<u8>>>(5)?.map(Bytes::from),
            };
            Ok((r.get::<u64>(6)?, due))
        })?;
        // `RETURNING` keeps no order.
        due.sort_by_key(|(at, d)| (*at, d.id));
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    /// Record a due message's outcome where it is kept.
    fn settle(&mut self, shared: bool, id: u64, result: Result<Position, &str>) {
        match (&self.shared, shared) {
            (Some(jobs), true) => jobs.finish(id, result),
            _ => self.finish(id, result),
        }
    }

    /// Mark a due message fired (with its position) or failed.
    fn finish(&mut self, id: u64, result: Result<Position, &str>) {
        let now = now_ms() as i64;
        let r = match result {
            Ok(pos) => self.conn.execute(
                "UPDATE scheduled SET state = ?1, fired_ms = ?2, epoch = ?3, \"offset\" = ?4
                 WHERE id = ?5",
                args![FIRED, now, pos.epoch, pos.offset, id],
            ),
            Err(why) => {
                tracing::warn!(id, "scheduled message failed: {why}");
                self.conn.execute(
                    "UPDATE scheduled SET state = ?1, fired_ms = ?2, error = ?3 WHERE id = ?4",
                    args![FAILED, now, why, id],
                )
            }
        };
        if let Err(e) = r {
            // It stays pending and fires again; its key makes that a duplicate.
            tracing::warn!(id, "cannot record a scheduled message's outcome: {e}");
        }
    }
}

/// A message due to fire.
struct Due {
    id: u64,
    channel: String,
    sender: Option<String>,
    format: Format,
    data: Bytes,
    meta: Option<Bytes>,
}

fn state_name(state: i64) -> &'static str {
    match state {
        PENDING => "pending",
        FIRED => "fired",
        CANCELLED => "cancelled",
        FAILED => "failed",
        _ => "unknown",
    }
}

fn cancel_refusal(e: CancelError) -> Refused {
    match e {
        CancelError::NotFound => Refused {
            code: ErrorCode::NotFound,
            message: "no such scheduled message".into(),
        },
        CancelError::NotPending(state) => Refused {
            code: ErrorCode::NotFound,
            message: format!("the scheduled message is already {state}"),
        },
        CancelError::Store(e) => Refused {
            code: ErrorCode::Unavailable,
            message: format!("cannot cancel: {e}"),
        },
    }
}
