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
//! With nodes sharing Redis, notifications are kept there instead (`shared`): created
//! through any node, listed, counted and marked read on every node.
//!
//! Does not own who may create notifications (the server API checks its key) or
//! delivery (the shards queue the pushes; a device offline lists what it missed).

mod shared;
#[cfg(test)]
mod tests;
mod worker;
pub use shared::SharedNotes;

use std::collections::HashMap;
use worker::Worker;

use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::Value;
use switchboard_engine::control::{Caller, ControlCommand};
use switchboard_engine::{ControlRequest, ShardSender};
use switchboard_protocol::ErrorCode;

use crate::config::NotificationsConfig;
use crate::sql::{Db, Location};
use crate::worker::WorkerHandle;

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

    fn store(e: crate::sql::DbError) -> Refusal {
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
    Erase(String, Reply<Result<usize, Refusal>>),
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

    /// Remove a user's notifications and topic subscriptions (a data request): how
    /// many notifications it had.
    pub async fn erase(&self, user: String) -> Result<usize, Refusal> {
        self.ask(|tx| Work::Erase(user, tx)).await
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

/// Where notifications are kept.
#[derive(Debug)]
pub enum Keeping {
    /// In the store, this node's alone.
    Store,
    /// In the store the nodes of a cluster share (PostgreSQL): counts are read each
    /// time, other nodes change them.
    SharedStore,
    /// In Redis (nodes sharing it, each with a store of its own).
    Redis(SharedNotes),
}

/// Start the notification thread on the store at `at` (already prepared by
/// [`crate::store::open`]), keeping notifications as `keeping` says, pushing and
/// answering through `shards`.
pub fn spawn(
    at: &Location,
    shards: ShardSender,
    cfg: NotificationsConfig,
    remote: crate::cluster::RemotePushes,
    keeping: Keeping,
) -> Result<(Notifier, NotifierHandle), crate::Error> {
    let conn = Db::open(at, "notifications")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker {
        conn,
        shards,
        remote,
        cfg,
        unread: HashMap::new(),
        store_shared: matches!(keeping, Keeping::SharedStore),
        shared: match keeping {
            Keeping::Redis(notes) => Some(notes),
            Keeping::Store | Keeping::SharedStore => None,
        },
    };
    let handle = WorkerHandle::spawn("notifications", move |stop| worker.run(&rx, stop))
        .map_err(|e| crate::Error::start("the notification worker", e))?;
    Ok((Notifier { tx }, handle))
}
