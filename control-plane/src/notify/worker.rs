//! The notification thread: stores notifications (with coalescing keys and per-user
//! limits), keeps unread counts, pushes to every connected device of a user, answers
//! commands and the server API, prunes old ones.
//!
//! Owns the `notifications` and topic tables of the store. Does not own who may
//! notify whom (the shards and the server API check) or the handle (`super`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;
use serde_json::Value;
use switchboard_engine::auth::glob_match;
use switchboard_engine::control::{self, Caller, ControlCommand, Push, PushTo};
use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::{Refused, ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;

use crate::clock::now_ms;
use crate::config::NotificationsConfig;
use crate::sql::{args, Db, DbError, Exec};

use super::*;

/// Users whose unread counts are cached at most (then the cache starts over).
pub(super) const MAX_CACHED_COUNTS: usize = 100_000;

/// How often old notifications and those over a user's limit are deleted.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Worker {
    pub(super) conn: Db,
    pub(super) shards: ShardSender,
    /// Users connected to other nodes.
    pub(super) remote: crate::cluster::RemotePushes,
    pub(super) cfg: NotificationsConfig,
    pub(super) unread: HashMap<String, u64>,
    /// Other nodes write this store's notifications too (a shared PostgreSQL store):
    /// unread counts are read each time, never cached.
    pub(super) store_shared: bool,
    /// Notifications kept in Redis (nodes sharing it) instead of the store.
    pub(super) shared: Option<super::shared::SharedNotes>,
}

impl Worker {
    pub(super) fn run(&mut self, rx: &Receiver<Work>, stop: &AtomicBool) {
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

    pub(super) fn handle(&mut self, w: Work) {
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
            Work::Erase(user, reply) => {
                let _ = reply.send(self.erase(&user));
            }
        }
    }

    /// Delete `user`'s notification rows and topic subscriptions, and the
    /// notifications nobody else received.
    pub(super) fn erase(&mut self, user: &str) -> Result<usize, Refusal> {
        if self.shared.is_some() {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "erasing notifications kept in Redis (nodes sharing it) is not built yet",
            ));
        }
        let mut tx = self.conn.transaction().map_err(Refusal::store)?;
        let ids: Vec<i64> = tx
            .query(
                "SELECT id FROM notification_recipients WHERE \"user\" = ?1",
                args![user],
                |r| r.get(0),
            )
            .map_err(Refusal::store)?;
        tx.execute(
            "DELETE FROM notification_recipients WHERE \"user\" = ?1",
            args![user],
        )
        .map_err(Refusal::store)?;
        tx.execute(
            "DELETE FROM notification_topics WHERE \"user\" = ?1",
            args![user],
        )
        .map_err(Refusal::store)?;
        for id in &ids {
            tx.execute(
                "DELETE FROM notifications WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM notification_recipients WHERE id = ?1)",
                &[id],
            )
            .map_err(Refusal::store)?;
        }
        tx.commit().map_err(Refusal::store)?;
        self.unread.remove(user);
        Ok(ids.len())
    }

    pub(super) fn command(
        &mut self,
        caller: &Caller,
        cmd: ControlCommand,
    ) -> Result<Value, Refusal> {
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

    pub(super) fn unread_of(&mut self, user: &str) -> Result<u64, Refusal> {
        if let Some(&n) = self.unread.get(user) {
            return Ok(n);
        }
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM notification_recipients
                 WHERE \"user\" = ?1 AND read_ms IS NULL",
                args![user],
                |r| r.get(0),
            )
            .map_err(Refusal::store)?;
        if self.store_shared {
            return Ok(n as u64);
        }
        if self.unread.len() >= MAX_CACHED_COUNTS {
            self.unread.clear();
        }
        self.unread.insert(user.to_string(), n as u64);
        Ok(n as u64)
    }

    pub(super) fn create(&mut self, n: &NewNotification) -> Result<Created, Refusal> {
        check(n).map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
        let users: Vec<String> = match &n.to {
            Recipients::Users(u) => {
                let mut u = u.clone();
                u.sort();
                u.dedup();
                u
            }
            Recipients::Topic(t) if self.shared.is_some() => {
                let shared = self.shared.as_ref().expect("checked");
                shared.topic_users(t)?
            }
            Recipients::Topic(t) => self
                .conn
                .query(
                    "SELECT \"user\" FROM notification_topics WHERE topic = ?1",
                    &[t],
                    |r| r.get(0),
                )
                .map_err(Refusal::store)?,
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
        if self.shared.is_some() {
            return self.create_shared(n, &users, topic);
        }
        let now = now_ms() as i64;
        let data = n.data.to_string();
        let mut tx = self.conn.transaction().map_err(Refusal::store)?;
        let existing: Option<(i64, i64)> = match &n.key {
            Some(k) => tx
                .query_opt(
                    "SELECT id, created_ms FROM notifications WHERE key = ?1",
                    &[k],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(Refusal::store)?,
            None => None,
        };
        let (id, created) = match existing {
            Some((id, created)) => {
                tx.execute(
                    "UPDATE notifications SET kind = ?2, data = ?3, updated_ms = ?4,
                         topic = COALESCE(?5, topic)
                     WHERE id = ?1",
                    args![id, n.kind, data, now, topic],
                )
                .map_err(Refusal::store)?;
                (id, created)
            }
            None => {
                let id = tx
                    .query_row(
                        "INSERT INTO notifications (key, topic, kind, data, created_ms, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING id",
                        args![n.key.as_deref(), topic, n.kind, data, now],
                        |r| r.get(0),
                    )
                    .map_err(Refusal::store)?;
                (id, now)
            }
        };
        // Who had it unread already (an update leaves their count as it is).
        let mut newly_unread = Vec::with_capacity(users.len());
        for u in &users {
            let unread_before: Option<bool> = if existing.is_some() {
                tx.query_opt(
                    "SELECT read_ms IS NULL FROM notification_recipients
                     WHERE \"user\" = ?1 AND id = ?2",
                    &[u, &id],
                    |r| r.get(0),
                )
                .map_err(Refusal::store)?
            } else {
                None
            };
            tx.execute(
                "INSERT INTO notification_recipients (\"user\", id, read_ms) VALUES (?1, ?2, NULL)
                 ON CONFLICT (\"user\", id) DO UPDATE SET read_ms = NULL",
                &[u, &id],
            )
            .map_err(Refusal::store)?;
            newly_unread.push(unread_before != Some(true));
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
        self.push_created(n, pushes);
        Ok(Created {
            id: id as u64,
            recipients: users.len(),
            updated: existing.is_some(),
        })
    }

    /// Push a created notification to its users (`pushes`: each user's frames).
    fn push_created(&self, n: &NewNotification, pushes: Vec<(Arc<str>, control::Frames)>) {
        let coalesce = n
            .key
            .as_ref()
            .map(|k| Arc::from(format!("notification:{k}")));
        self.push(PushTo::Users(pushes), coalesce);
    }

    /// [`Worker::create`] with the notifications kept in Redis.
    fn create_shared(
        &mut self,
        n: &NewNotification,
        users: &[String],
        topic: Option<&str>,
    ) -> Result<Created, Refusal> {
        let shared = self.shared.as_ref().expect("shared notifications");
        let now = now_ms();
        let (id, created, existed) = shared.id_for(n.key.as_deref(), now, self.cfg.ttl_ms)?;
        let view = NotificationView {
            id,
            kind: n.kind.clone(),
            topic: topic.map(String::from),
            key: n.key.clone(),
            data: n.data.clone(),
            created,
            updated: now,
            read: false,
        };
        let counts = shared.put(users, &view, self.cfg.max_per_user, self.cfg.ttl_ms)?;
        let pushes = users
            .iter()
            .zip(counts)
            .map(|(u, unread)| {
                let push = NotificationPush {
                    push: "notification",
                    notification: &view,
                    unread,
                };
                (Arc::from(u.as_str()), control::frames(&push))
            })
            .collect();
        self.push_created(n, pushes);
        Ok(Created {
            id,
            recipients: users.len(),
            updated: existed,
        })
    }

    pub(super) fn list(
        &mut self,
        user: &str,
        limit: u32,
        before: Option<u64>,
        unread_only: bool,
    ) -> Result<Listing, Refusal> {
        if let Some(shared) = &self.shared {
            let cutoff = now_ms().saturating_sub(self.cfg.ttl_ms);
            let (notifications, unread) = shared.list(user, limit, before, unread_only, cutoff)?;
            return Ok(Listing {
                notifications,
                unread,
            });
        }
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let notifications = self
            .conn
            .query(
                "SELECT n.id, n.kind, n.topic, n.key, n.data, n.created_ms, n.updated_ms,
                        r.read_ms IS NOT NULL
                 FROM notification_recipients r JOIN notifications n ON n.id = r.id
                 WHERE r.\"user\" = ?1 AND r.id < ?2 AND (?3 = 0 OR r.read_ms IS NULL)
                 ORDER BY r.id DESC LIMIT ?4",
                args![user, before, unread_only, limit.min(500)],
                |r| {
                    let data: String = r.get(4)?;
                    Ok(NotificationView {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        topic: r.get(2)?,
                        key: r.get(3)?,
                        data: serde_json::from_str(&data).unwrap_or(Value::Null),
                        created: r.get(5)?,
                        updated: r.get(6)?,
                        read: r.get(7)?,
                    })
                },
            )
            .map_err(Refusal::store)?;
        Ok(Listing {
            notifications,
            unread: self.unread_of(user)?,
        })
    }

    /// Mark read; tell every device of the user.
    pub(super) fn read(&mut self, user: &str, id: Option<u64>) -> Result<u64, Refusal> {
        let now = now_ms() as i64;
        let changed = match (id, &self.shared) {
            (_, Some(shared)) => {
                let (changed, unread) = shared.read(user, id)?;
                let Some(changed) = changed else {
                    return Err(Refusal::new(
                        ErrorCode::NotFound,
                        "no such notification for this user",
                    ));
                };
                self.tell_read(user, id, changed as usize, unread);
                return Ok(unread);
            }
            (id, None) => id,
        };
        let changed = match changed {
            Some(id) => {
                let exists: Option<bool> = self
                    .conn
                    .query_opt(
                        "SELECT read_ms IS NULL FROM notification_recipients
                         WHERE \"user\" = ?1 AND id = ?2",
                        args![user, id],
                        |r| r.get(0),
                    )
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
                             WHERE \"user\" = ?1 AND id = ?2",
                            args![user, id, now],
                        )
                        .map_err(Refusal::store)? as usize,
                }
            }
            None => self
                .conn
                .execute(
                    "UPDATE notification_recipients SET read_ms = ?2
                     WHERE \"user\" = ?1 AND read_ms IS NULL",
                    args![user, now],
                )
                .map_err(Refusal::store)? as usize,
        };
        self.unread.remove(user);
        let unread = self.unread_of(user)?;
        self.tell_read(user, id, changed, unread);
        Ok(unread)
    }

    /// Tell every device of `user` that `changed` notifications were marked read.
    fn tell_read(&self, user: &str, id: Option<u64>, changed: usize, unread: u64) {
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
    }

    pub(super) fn change_topics(
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
        if let Some(shared) = &self.shared {
            return shared.change_topics(user, subscribe, unsubscribe);
        }
        let mut tx = self.conn.transaction().map_err(Refusal::store)?;
        for t in subscribe {
            tx.execute(
                "INSERT INTO notification_topics (topic, \"user\") VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                &[t, &user],
            )
            .map_err(Refusal::store)?;
        }
        for t in unsubscribe {
            tx.execute(
                "DELETE FROM notification_topics WHERE topic = ?1 AND \"user\" = ?2",
                &[t, &user],
            )
            .map_err(Refusal::store)?;
        }
        tx.commit().map_err(Refusal::store)?;
        self.conn
            .query(
                "SELECT topic FROM notification_topics WHERE \"user\" = ?1 ORDER BY topic",
                args![user],
                |r| r.get(0),
            )
            .map_err(Refusal::store)
    }

    /// Delete notifications older than the TTL and each user's beyond the limit.
    pub(super) fn prune(&mut self) -> Result<(), DbError> {
        if self.shared.is_some() {
            // Redis expires and trims its own (`super::shared`).
            return Ok(());
        }
        let cutoff = now_ms().saturating_sub(self.cfg.ttl_ms) as i64;
        let mut tx = self.conn.transaction()?;
        let old = tx.execute(
            "DELETE FROM notification_recipients WHERE id IN
                 (SELECT id FROM notifications WHERE updated_ms < ?1)",
            args![cutoff],
        )?;
        let over = tx.execute(
            "DELETE FROM notification_recipients WHERE (\"user\", id) IN (
                 SELECT \"user\", id FROM (
                     SELECT \"user\", id,
                            ROW_NUMBER() OVER (PARTITION BY \"user\" ORDER BY id DESC) AS n
                     FROM notification_recipients
                     WHERE \"user\" IN (SELECT \"user\" FROM notification_recipients
                                        GROUP BY \"user\" HAVING COUNT(*) > ?1)) AS ranked
                 WHERE n > ?1)",
            args![self.cfg.max_per_user],
        )?;
        tx.execute(
            "DELETE FROM notifications WHERE updated_ms < ?1
                 OR NOT EXISTS (SELECT 1 FROM notification_recipients r WHERE r.id = notifications.id)",
            args![cutoff],
        )?;
        tx.commit()?;
        if old + over > 0 {
            self.unread.clear();
            tracing::debug!(old, over, "notifications pruned");
        }
        Ok(())
    }

    pub(super) fn push(&self, to: PushTo, coalesce: Option<Arc<str>>) {
        self.remote.send(&to, &coalesce);
        let push = Arc::new(Push { to, coalesce });
        for shard in 0..self.shards.shards() {
            let msg = ShardMsg::Push(push.clone());
            crate::shards::send_patiently(&self.shards, shard as u16, msg, "a notification push");
        }
    }
}

#[derive(Serialize)]
pub(super) struct NotificationPush<'a> {
    pub(super) push: &'static str,
    pub(super) notification: &'a NotificationView,
    pub(super) unread: u64,
}

#[derive(Serialize)]
pub(super) struct ReadPush {
    pub(super) push: &'static str,
    pub(super) notification: Option<u64>,
    pub(super) all: bool,
    pub(super) unread: u64,
}

#[derive(Serialize)]
pub(super) struct Unread {
    pub(super) unread: u64,
}

#[derive(Serialize)]
pub(super) struct Topics {
    pub(super) topics: Vec<String>,
}
