//! Notifications: created by the server API for users or a topic, stored per user,
//! pushed live to every connected device, listed, counted and marked read by clients.
//!
//! Owns the `notifications`, `notification_recipients` and `notification_topics`
//! tables of the store (its own SQLite connection; WAL lets it write beside the
//! journal writer) and one thread that serves the shards' commands and the server API
//! in order, so a count never races a mark. A notification is stored once with one row
//! per recipient holding its read state; the unread count of a user is the number of
//! its unread rows (cached per user, loaded from the table on first use, so it is
//! right after a restart and on every device).
//!
//! A notification with a `key` is one notification that changes: creating another
//! with the same key updates it in place (same id, new data, unread again for its
//! recipients) and its pushes carry the key as a coalescing key, so a connection that
//! has not yet read the previous push gets the latest one instead of both. Progress
//! events (`kind = "progress"`) must carry a key and a typed payload.
//!
//! Does not own who may create notifications (the server API checks its key) or
//! delivery (the shards queue the pushes; a device offline lists what it missed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use switchboard_engine::auth::glob_match;
use switchboard_engine::control::{self, Caller, ControlCommand, Push, PushTo};
use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::{ControlRequest, Refused, ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;

use crate::clock::now_ms;
use crate::config::NotificationsConfig;
use crate::worker::{open_store, WorkerHandle};

/// Whether `user` is a usable user id: 1 to 128 bytes (the server API's check).
pub fn valid_user_id(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128
}

/// Longest notification key or kind, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Largest notification payload (its JSON text), in bytes.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

/// Who gets a new notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// These users.
    Users(Vec<String>),
    /// Every user subscribed to the topic now.
    Topic(String),
}

/// A notification to create (server API).
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Who gets it.
    pub to: Recipients,
    /// Its type: `progress` (typed, see [`check`]) or any other label.
    pub kind: String,
    /// Its payload.
    pub data: Value,
    /// One notification that changes (progress of one task): same key, same id.
    pub key: Option<String>,
}

/// A notification as a user sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationView {
    /// Its id.
    pub id: u64,
    /// Its type.
    pub kind: String,
    /// The topic it was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its payload.
    pub data: Value,
    /// Created, Unix milliseconds.
    pub created: u64,
    /// Last changed, Unix milliseconds.
    pub updated: u64,
    /// Read by this user (on any device).
    pub read: bool,
}

/// What creating a notification did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Created {
    /// The notification's id.
    pub id: u64,
    /// How many users got it.
    pub recipients: usize,
    /// An existing notification with the same key was updated.
    pub updated: bool,
}

/// A user's notifications.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    /// Newest first.
    pub notifications: Vec<NotificationView>,
    /// Unread notifications in all.
    pub unread: u64,
}

/// Why a request was refused: an HTTP status (server API) and a message; the code is
/// what a client's command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Error code for a client.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn store(e: rusqlite::Error) -> Refusal {
        Refusal::new(ErrorCode::Unavailable, format!("notification store: {e}"))
    }

    /// The HTTP status the server API answers with.
    pub fn status(&self) -> u16 {
        match self.code {
            ErrorCode::NotFound => 404,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::BadRequest | ErrorCode::LimitExceeded => 400,
            _ => 503,
        }
    }
}

/// Check a notification's kind, key and payload: a `progress` notification needs a
/// key and `data` of the form `{"percent": 0..=100, "state": "running" | "complete" |
/// "failed", ...}` (`state` defaults to `running`); other kinds take any JSON value.
pub fn check(n: &NewNotification) -> Result<(), String> {
    if n.kind.is_empty() || n.kind.len() > MAX_KEY_BYTES {
        return Err("kind: 1 to 128 bytes".into());
    }
    if let Some(k) = &n.key {
        if k.is_empty() || k.len() > MAX_KEY_BYTES {
            return Err("key: 1 to 128 bytes".into());
        }
    }
    let size = serde_json::to_vec(&n.data).map_or(usize::MAX, |v| v.len());
    if size > MAX_DATA_BYTES {
        return Err(format!("data: at most {MAX_DATA_BYTES} bytes of JSON"));
    }
    match &n.to {
        Recipients::Users(u) if u.is_empty() => return Err("users: at least one user".into()),
        Recipients::Users(u) => {
            if let Some(bad) = u.iter().position(|u| !valid_user_id(u)) {
                return Err(format!("users[{bad}]: a user id is 1 to 128 bytes"));
            }
        }
        Recipients::Topic(t) if !switchboard_protocol::envelope::valid_topic(t) => {
            return Err("topic: 1 to 128 letters, digits and _ - . : @".into())
        }
        Recipients::Topic(_) => {}
    }
    if n.kind == "progress" {
        if n.key.is_none() {
            return Err("key: a progress notification needs a key (the task it tracks)".into());
        }
        let percent = n.data.get("percent").and_then(Value::as_f64);
        if !percent.is_some_and(|p| (0.0..=100.0).contains(&p)) {
            return Err("data.percent: a number from 0 to 100".into());
        }
        match n.data.get("state") {
            None => {}
            Some(Value::String(s)) if ["running", "complete", "failed"].contains(&&s[..]) => {}
            Some(_) => return Err("data.state: running, complete or failed".into()),
        }
    }
    Ok(())
}

type Reply<T> = tokio::sync::oneshot::Sender<T>;

enum Work {
    Shard {
        shard: u16,
        conn: switchboard_engine::ConnKey,
        req_id: u32,
        caller: Caller,
        cmd: ControlCommand,
    },
    /// Without a reply channel: from another worker, a refusal is logged.
    Create(NewNotification, Option<Reply<Result<Created, Refusal>>>),
    List(
        String,
        u32,
        Option<u64>,
        bool,
        Reply<Result<Listing, Refusal>>,
    ),
    Read(String, Option<u64>, Reply<Result<u64, Refusal>>),
    Topics(
        String,
        Vec<String>,
        Vec<String>,
        Reply<Result<Vec<String>, Refusal>>,
    ),
}

/// Where the notification thread takes work from (clone freely).
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Sender<Work>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("notification work")
    }
}

/// The running notification thread (everything it answered is stored).
pub type NotifierHandle = WorkerHandle;

impl Notifier {
    /// Hand a shard's notification command over; the answer goes to the shard.
    pub fn submit(&self, req: ControlRequest) {
        let ControlRequest::Command {
            shard,
            conn,
            req_id,
            caller,
            cmd,
        } = req
        else {
            return;
        };
        let work = Work::Shard {
            shard,
            conn,
            req_id,
            caller,
            cmd,
        };
        if self.tx.send(work).is_err() {
            tracing::warn!("notification worker stopped; a command is not answered");
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<Result<T, Refusal>>) -> Work,
    ) -> Result<T, Refusal> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || Refusal::new(ErrorCode::Unavailable, "notification worker stopped");
        self.tx.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Create (or, with a known key, update) a notification and push it.
    pub async fn create(&self, n: NewNotification) -> Result<Created, Refusal> {
        self.ask(|tx| Work::Create(n, Some(tx))).await
    }

    /// Create a notification without waiting for the answer (from another worker);
    /// a refusal is logged.
    pub fn create_later(&self, n: NewNotification) {
        if self.tx.send(Work::Create(n, None)).is_err() {
            tracing::warn!("notification worker stopped; a notification is lost");
        }
    }

    /// A user's notifications, newest first.
    pub async fn list(
        &self,
        user: String,
        limit: u32,
        before: Option<u64>,
        unread: bool,
    ) -> Result<Listing, Refusal> {
        self.ask(|tx| Work::List(user, limit, before, unread, tx))
            .await
    }

    /// Mark one (or all) of a user's notifications read: the unread count after.
    pub async fn read(&self, user: String, id: Option<u64>) -> Result<u64, Refusal> {
        self.ask(|tx| Work::Read(user, id, tx)).await
    }

    /// Change a user's topic subscriptions: the topics after.
    pub async fn topics(
        &self,
        user: String,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
    ) -> Result<Vec<String>, Refusal> {
        self.ask(|tx| Work::Topics(user, subscribe, unsubscribe, tx))
            .await
    }
}

/// Start the notification thread on the store at `path` (already prepared by
/// [`crate::store::open`]), pushing and answering through `shards`.
pub fn spawn(
    path: &std::path::Path,
    shards: ShardSender,
    cfg: NotificationsConfig,
) -> anyhow::Result<(Notifier, NotifierHandle)> {
    let conn = open_store(path, "notifications")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker {
        conn,
        shards,
        cfg,
        unread: HashMap::new(),
    };
    let handle = WorkerHandle::spawn("notifications", move |stop| worker.run(&rx, stop))?;
    Ok((Notifier { tx }, handle))
}

/// Users whose unread counts are cached at most (then the cache starts over).
const MAX_CACHED_COUNTS: usize = 100_000;

/// How often old notifications and those over a user's limit are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct Worker {
    conn: Connection,
    shards: ShardSender,
    cfg: NotificationsConfig,
    unread: HashMap<String, u64>,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Work>, stop: &AtomicBool) {
        let mut next_prune = Instant::now();
        loop {
            if Instant::now() >= next_prune {
                if let Err(e) = self.prune() {
                    tracing::warn!("cannot prune notifications: {e}");
                }
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(w) => self.handle(w),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Acquire) {
                while let Ok(w) = rx.try_recv() {
                    self.handle(w);
                }
                break;
            }
        }
    }

    fn handle(&mut self, w: Work) {
        match w {
            Work::Shard {
                shard,
                conn,
                req_id,
                caller,
                cmd,
            } => {
                let command = cmd.kind();
                let result = self.command(&caller, cmd).map_err(|r| Refused {
                    code: r.code,
                    message: r.message,
                });
                let result = result.map(ReplyBody::Value);
                crate::shards::reply(&self.shards, shard, conn, req_id, command, result);
            }
            Work::Create(n, reply) => {
                let result = self.create(&n);
                match (reply, result) {
                    (Some(reply), result) => {
                        let _ = reply.send(result);
                    }
                    (None, Err(e)) => {
                        tracing::warn!(kind = %n.kind, "a notification was refused: {}", e.message)
                    }
                    (None, Ok(_)) => {}
                }
            }
            Work::List(user, limit, before, unread, reply) => {
                let _ = reply.send(self.list(&user, limit, before, unread));
            }
            Work::Read(user, id, reply) => {
                let _ = reply.send(self.read(&user, id));
            }
            Work::Topics(user, sub, unsub, reply) => {
                let _ = reply.send(self.change_topics(&user, &sub, &unsub));
            }
        }
    }

    fn command(&mut self, caller: &Caller, cmd: ControlCommand) -> Result<Value, Refusal> {
        let user = &*caller.user;
        let value = match cmd {
            ControlCommand::Notifications {
                limit,
                before,
                unread,
            } => serde_json::to_value(self.list(user, limit, before, unread)?),
            ControlCommand::NotificationsRead { id } => {
                let unread = self.read(user, id)?;
                serde_json::to_value(Unread { unread })
            }
            ControlCommand::Topic {
                topic,
                subscribe,
                allowed,
            } => {
                let permitted = self
                    .cfg
                    .public_topics
                    .iter()
                    .chain(&allowed)
                    .any(|p| glob_match(p, &topic));
                if subscribe && !permitted {
                    return Err(Refusal::new(
                        ErrorCode::PermissionDenied,
                        "this topic is not public and not in the token's topics",
                    ));
                }
                let (sub, unsub) = if subscribe {
                    (vec![topic], vec![])
                } else {
                    (vec![], vec![topic])
                };
                let topics = self.change_topics(user, &sub, &unsub)?;
                serde_json::to_value(Topics { topics })
            }
            _ => {
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "not a notification command",
                ))
            }
        };
        value.map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))
    }

    fn unread_of(&mut self, user: &str) -> Result<u64, Refusal> {
        if let Some(&n) = self.unread.get(user) {
            return Ok(n);
        }
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM notification_recipients WHERE user = ?1 AND read_ms IS NULL",
                params![user],
                |r| r.get(0),
            )
            .map_err(Refusal::store)?;
        if self.unread.len() >= MAX_CACHED_COUNTS {
            self.unread.clear();
        }
        self.unread.insert(user.to_string(), n as u64);
        Ok(n as u64)
    }

    fn create(&mut self, n: &NewNotification) -> Result<Created, Refusal> {
        check(n).map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
        let users: Vec<String> = match &n.to {
            Recipients::Users(u) => {
                let mut u = u.clone();
                u.sort();
                u.dedup();
                u
            }
            Recipients::Topic(t) => {
                let mut q = self
                    .conn
                    .prepare_cached("SELECT user FROM notification_topics WHERE topic = ?1")
                    .map_err(Refusal::store)?;
                let rows = q
                    .query_map(params![t], |r| r.get::<_, String>(0))
                    .map_err(Refusal::store)?;
                rows.collect::<Result<_, _>>().map_err(Refusal::store)?
            }
        };
        if users.len() > self.cfg.max_recipients as usize {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} recipients; at most {} (notifications.max_recipients)",
                    users.len(),
                    self.cfg.max_recipients
                ),
            ));
        }
        let topic = match &n.to {
            Recipients::Topic(t) => Some(t.as_str()),
            Recipients::Users(_) => None,
        };
        let now = now_ms() as i64;
        let data = n.data.to_string();
        let tx = self.conn.transaction().map_err(Refusal::store)?;
        let existing: Option<(i64, i64)> = match &n.key {
            Some(k) => tx
                .query_row(
                    "SELECT id, created_ms FROM notifications WHERE key = ?1",
                    params![k],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(Refusal::store)?,
            None => None,
        };
        let (id, created) = match existing {
            Some((id, created)) => {
                tx.execute(
                    "UPDATE notifications SET kind = ?2, data = ?3, updated_ms = ?4,
                         topic = COALESCE(?5, topic)
                     WHERE id = ?1",
                    params![id, &n.kind, &data, now, topic],
                )
                .map_err(Refusal::store)?;
                (id, created)
            }
            None => {
                tx.execute(
                    "INSERT INTO notifications (key, topic, kind, data, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![n.key.as_deref(), topic, &n.kind, &data, now],
                )
                .map_err(Refusal::store)?;
                (tx.last_insert_rowid(), now)
            }
        };
        // Who had it unread already (an update leaves their count as it is).
        let mut newly_unread = Vec::with_capacity(users.len());
        {
            let mut was = tx
                .prepare_cached(
                    "SELECT read_ms IS NULL FROM notification_recipients WHERE user = ?1 AND id = ?2",
                )
                .map_err(Refusal::store)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO notification_recipients (user, id, read_ms) VALUES (?1, ?2, NULL)
                     ON CONFLICT (user, id) DO UPDATE SET read_ms = NULL",
                )
                .map_err(Refusal::store)?;
            for u in &users {
                let unread_before: Option<bool> = if existing.is_some() {
                    was.query_row(params![u, id], |r| r.get(0))
                        .optional()
                        .map_err(Refusal::store)?
                } else {
                    None
                };
                put.execute(params![u, id]).map_err(Refusal::store)?;
                newly_unread.push(unread_before != Some(true));
            }
        }
        tx.commit().map_err(Refusal::store)?;
        let view = NotificationView {
            id: id as u64,
            kind: n.kind.clone(),
            topic: topic.map(String::from),
            key: n.key.clone(),
            data: n.data.clone(),
            created: created as u64,
            updated: now as u64,
            read: false,
        };
        let mut pushes = Vec::with_capacity(users.len());
        for (u, fresh) in users.iter().zip(newly_unread) {
            if fresh {
                if let Some(c) = self.unread.get_mut(u.as_str()) {
                    *c += 1;
                }
            }
            let unread = self.unread_of(u)?;
            let push = NotificationPush {
                push: "notification",
                notification: &view,
                unread,
            };
            pushes.push((Arc::from(u.as_str()), control::frames(&push)));
        }
        let coalesce = n
            .key
            .as_ref()
            .map(|k| Arc::from(format!("notification:{k}")));
        self.push(PushTo::Users(pushes), coalesce);
        Ok(Created {
            id: id as u64,
            recipients: users.len(),
            updated: existing.is_some(),
        })
    }

    fn list(
        &mut self,
        user: &str,
        limit: u32,
        before: Option<u64>,
        unread_only: bool,
    ) -> Result<Listing, Refusal> {
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT n.id, n.kind, n.topic, n.key, n.data, n.created_ms, n.updated_ms,
                        r.read_ms IS NOT NULL
                 FROM notification_recipients r JOIN notifications n ON n.id = r.id
                 WHERE r.user = ?1 AND r.id < ?2 AND (?3 = 0 OR r.read_ms IS NULL)
                 ORDER BY r.id DESC LIMIT ?4",
            )
            .map_err(Refusal::store)?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = q
            .query_map(
                params![user, before, unread_only as i64, limit.min(500) as i64],
                |r| {
                    let data: String = r.get(4)?;
                    Ok(NotificationView {
                        id: r.get::<_, i64>(0)? as u64,
                        kind: r.get(1)?,
                        topic: r.get(2)?,
                        key: r.get(3)?,
                        data: serde_json::from_str(&data).unwrap_or(Value::Null),
                        created: r.get::<_, i64>(5)? as u64,
                        updated: r.get::<_, i64>(6)? as u64,
                        read: r.get(7)?,
                    })
                },
            )
            .map_err(Refusal::store)?;
        let notifications = rows.collect::<Result<_, _>>().map_err(Refusal::store)?;
        drop(q);
        Ok(Listing {
            notifications,
            unread: self.unread_of(user)?,
        })
    }

    /// Mark read; tell every device of the user.
    fn read(&mut self, user: &str, id: Option<u64>) -> Result<u64, Refusal> {
        let now = now_ms() as i64;
        let changed = match id {
            Some(id) => {
                let exists: Option<bool> = self
                    .conn
                    .query_row(
                        "SELECT read_ms IS NULL FROM notification_recipients
                         WHERE user = ?1 AND id = ?2",
                        params![user, id as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(Refusal::store)?;
                match exists {
                    None => {
                        return Err(Refusal::new(
                            ErrorCode::NotFound,
                            "no such notification for this user",
                        ))
                    }
                    Some(false) => 0,
                    Some(true) => self
                        .conn
                        .execute(
                            "UPDATE notification_recipients SET read_ms = ?3
                             WHERE user = ?1 AND id = ?2",
                            params![user, id as i64, now],
                        )
                        .map_err(Refusal::store)?,
                }
            }
            None => self
                .conn
                .execute(
                    "UPDATE notification_recipients SET read_ms = ?2
                     WHERE user = ?1 AND read_ms IS NULL",
                    params![user, now],
                )
                .map_err(Refusal::store)?,
        };
        self.unread.remove(user);
        let unread = self.unread_of(user)?;
        if changed > 0 {
            let push = ReadPush {
                push: "notifications_read",
                notification: id,
                all: id.is_none(),
                unread,
            };
            self.push(
                PushTo::Users(vec![(Arc::from(user), control::frames(&push))]),
                None,
            );
        }
        Ok(unread)
    }

    fn change_topics(
        &mut self,
        user: &str,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Result<Vec<String>, Refusal> {
        if let Some(bad) = subscribe
            .iter()
            .chain(unsubscribe)
            .find(|t| !switchboard_protocol::envelope::valid_topic(t))
        {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("invalid topic {bad:?}: 1 to 128 letters, digits and _ - . : @"),
            ));
        }
        let tx = self.conn.transaction().map_err(Refusal::store)?;
        for t in subscribe {
            tx.execute(
                "INSERT OR IGNORE INTO notification_topics (topic, user) VALUES (?1, ?2)",
                params![t, user],
            )
            .map_err(Refusal::store)?;
        }
        for t in unsubscribe {
            tx.execute(
                "DELETE FROM notification_topics WHERE topic = ?1 AND user = ?2",
                params![t, user],
            )
            .map_err(Refusal::store)?;
        }
        tx.commit().map_err(Refusal::store)?;
        let mut q = self
            .conn
            .prepare_cached("SELECT topic FROM notification_topics WHERE user = ?1 ORDER BY topic")
            .map_err(Refusal::store)?;
        let rows = q
            .query_map(params![user], |r| r.get::<_, String>(0))
            .map_err(Refusal::store)?;
        rows.collect::<Result<_, _>>().map_err(Refusal::store)
    }

    /// Delete notifications older than the TTL and each user's beyond the limit.
    fn prune(&mut self) -> rusqlite::Result<()> {
        let cutoff = now_ms().saturating_sub(self.cfg.ttl_ms) as i64;
        let tx = self.conn.transaction()?;
        let old = tx.execute(
            "DELETE FROM notification_recipients WHERE id IN
                 (SELECT id FROM notifications WHERE updated_ms < ?1)",
            params![cutoff],
        )?;
        let over = tx.execute(
            "DELETE FROM notification_recipients WHERE (user, id) IN (
                 SELECT user, id FROM (
                     SELECT user, id, ROW_NUMBER() OVER (PARTITION BY user ORDER BY id DESC) AS n
                     FROM notification_recipients
                     WHERE user IN (SELECT user FROM notification_recipients
                                    GROUP BY user HAVING COUNT(*) > ?1))
                 WHERE n > ?1)",
            params![self.cfg.max_per_user as i64],
        )?;
        tx.execute(
            "DELETE FROM notifications WHERE updated_ms < ?1
                 OR NOT EXISTS (SELECT 1 FROM notification_recipients r WHERE r.id = notifications.id)",
            params![cutoff],
        )?;
        tx.commit()?;
        if old + over > 0 {
            self.unread.clear();
            tracing::debug!(old, over, "notifications pruned");
        }
        Ok(())
    }

    fn push(&self, to: PushTo, coalesce: Option<Arc<str>>) {
        let push = Arc::new(Push { to, coalesce });
        for shard in 0..self.shards.shards() {
            let msg = ShardMsg::Push(push.clone());
            crate::shards::send_patiently(&self.shards, shard as u16, msg, "a notification push");
        }
    }
}

#[derive(Serialize)]
struct NotificationPush<'a> {
    push: &'static str,
    notification: &'a NotificationView,
    unread: u64,
}

#[derive(Serialize)]
struct ReadPush {
    push: &'static str,
    notification: Option<u64>,
    all: bool,
    unread: u64,
}

#[derive(Serialize)]
struct Unread {
    unread: u64,
}

#[derive(Serialize)]
struct Topics {
    topics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(kind: &str, data: Value, key: Option<&str>) -> NewNotification {
        NewNotification {
            to: Recipients::Users(vec!["u".into()]),
            kind: kind.into(),
            data,
            key: key.map(String::from),
        }
    }

    #[test]
    fn progress_payloads_are_typed() {
        assert!(check(&n("progress", json!({"percent": 40}), Some("a"))).is_ok());
        let done = json!({"percent": 100, "state": "complete"});
        assert!(check(&n("progress", done, Some("a"))).is_ok());
        for (data, key, field) in [
            (json!({"percent": 40}), None, "key"),
            (json!({"percent": 140}), Some("a"), "data.percent"),
            (json!({"percent": "40"}), Some("a"), "data.percent"),
            (
                json!({"percent": 1, "state": "paused"}),
                Some("a"),
                "data.state",
            ),
        ] {
            let e = check(&n("progress", data, key)).unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
        assert!(check(&n("", json!(1), None))
            .unwrap_err()
            .starts_with("kind"));
        let big = json!("x".repeat(MAX_DATA_BYTES));
        assert!(check(&n("k", big, None)).unwrap_err().starts_with("data"));
        let mut none = n("k", json!(1), None);
        none.to = Recipients::Users(vec![]);
        assert!(check(&none).unwrap_err().starts_with("users"));
        none.to = Recipients::Topic("a b".into());
        assert!(check(&none).unwrap_err().starts_with("topic"));
    }
}
