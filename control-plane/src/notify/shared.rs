//! Notifications kept in Redis, for nodes that share it: a notification created
//! through any node is listed, counted and marked read on every node, and a user's
//! unread count is one number wherever the user connects.
//!
//! Keys: `{P}:nseq` (ids, from `2⁴⁰` up), `{P}:nk:<key>` (a coalescing key's
//! notification id and creation time, expiring with the notification TTL); per user,
//! in the user's own slot `{P:nu:<user>}`: `:n` (hash: id → the notification as JSON,
//! one copy per recipient so every read touches one slot), `:all` (sorted set of ids),
//! `:unread` (set of unread ids), `:topics` (set); per topic `{P:nt:<topic>}` (set of
//! users). A user's keys expire `notifications.ttl_ms` after the last notification
//! for them; an older one is dropped when listed, and the oldest beyond
//! `notifications.max_per_user` when a new one arrives. Every change to one user is
//! one script (atomic), so a count never races a mark, as on one node.
//!
//! Owns the keys and scripts. Does not own checks, pushes or the thread (`super`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_protocol::ErrorCode;

use super::{NotificationView, Refusal};
use crate::cluster::WorkerLink;

/// Ids of notifications kept in Redis start here.
const FIRST_ID: u64 = 1 << 40;
/// How long the worker waits for Redis.
const WITHIN: Duration = Duration::from_secs(3);

/// KEYS: seq, the key's entry (or the seq again). ARGV: key ('' none), now, ttl ms.
/// Returns {n, created ms, whether it existed}.
const NEW_ID: &str = r"
if ARGV[1] ~= '' then
  local v = redis.call('GET', KEYS[2])
  if v then
    local sep = string.find(v, ':')
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return {string.sub(v, 1, sep - 1), string.sub(v, sep + 1), 1}
  end
end
local n = redis.call('INCR', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[2], n .. ':' .. ARGV[2], 'PX', ARGV[3])
end
return {tostring(n), ARGV[2], 0}
";

/// KEYS: the user's n, all, unread. ARGV: id, body, max per user, ttl ms. Returns
/// the user's unread count.
const PUT: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    redis.call('HDEL', KEYS[1], old)
    redis.call('SREM', KEYS[3], old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ARGV[4]) end
return redis.call('SCARD', KEYS[3])
";

/// KEYS: the user's n, all, unread. ARGV: before id, most, '1' unread only, cutoff
/// ms. Returns body, read ('1'/'0') pairs, newest first, then the unread count.
const LIST: &str = r#"
local out = {}
local most = tonumber(ARGV[2])
for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '-inf')) do
  if #out >= 2 * most then break end
  local body = redis.call('HGET', KEYS[1], id)
  local updated = body and tonumber(string.match(body, '^{"updated":(%d+)'))
  if not updated or updated < tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('SREM', KEYS[3], id)
  else
    local unread = redis.call('SISMEMBER', KEYS[3], id) == 1
    if ARGV[3] ~= '1' or unread then
      table.insert(out, body)
      table.insert(out, unread and '0' or '1')
    end
  end
end
table.insert(out, tostring(redis.call('SCARD', KEYS[3])))
return out
"#;

/// KEYS: the user's n, unread. ARGV: id ('' every one). Returns {marked (-1: no
/// such notification), unread after}.
const READ: &str = r"
if ARGV[1] == '' then
  local c = redis.call('SCARD', KEYS[2])
  redis.call('DEL', KEYS[2])
  return {c, 0}
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, 0} end
local c = redis.call('SREM', KEYS[2], ARGV[1])
return {c, redis.call('SCARD', KEYS[2])}
";

/// A notification as each recipient's copy holds it (`updated` first: the scripts
/// read it without parsing the rest).
#[derive(Serialize, Deserialize)]
struct Stored {
    updated: u64,
    id: u64,
    kind: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    key: Option<String>,
    data: Value,
    created: u64,
}

/// The notifications kept in Redis.
#[derive(Debug, Clone)]
pub struct SharedNotes {
    link: WorkerLink,
    prefix: String,
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("notification store (Redis): {e}"),
    )
}

impl SharedNotes {
    /// Notifications under `[cluster] key_prefix`, reached through `link`.
    pub fn new(link: WorkerLink, prefix: &str) -> SharedNotes {
        SharedNotes {
            link,
            prefix: prefix.to_string(),
        }
    }

    fn user_keys(&self, user: &str) -> [String; 3] {
        let tag = format!("{{{}:nu:{user}}}", self.prefix);
        [
            format!("{tag}:n"),
            format!("{tag}:all"),
            format!("{tag}:unread"),
        ]
    }

    fn user_topics(&self, user: &str) -> String {
        format!("{{{}:nu:{user}}}:topics", self.prefix)
    }

    fn topic_key(&self, topic: &str) -> String {
        format!("{{{}:nt:{topic}}}", self.prefix)
    }

    fn script(script: &str, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }

    /// A new notification's id and creation time, or those of the one `key` names
    /// (and whether it existed).
    pub(super) fn id_for(
        &self,
        key: Option<&str>,
        now: u64,
        ttl_ms: u64,
    ) -> Result<(u64, u64, bool), Refusal> {
        let seq = format!("{{{}}}:nseq", self.prefix);
        let entry = key.map_or_else(|| seq.clone(), |k| format!("{{{}}}:nk:{k}", self.prefix));
        let (now, ttl) = (now.to_string(), ttl_ms.to_string());
        let args: [&[u8]; 3] = [key.unwrap_or("").as_bytes(), now.as_bytes(), ttl.as_bytes()];
        let cmd = Self::script(NEW_ID, &[&seq, &entry], &args);
        let v = self.link.query(cmd, WITHIN).map_err(unavailable)?;
        let (n, created, existed): (u64, u64, u8) =
            redis::from_redis_value(v).map_err(unavailable)?;
        Ok((FIRST_ID + n, created, existed == 1))
    }

    /// Put `view` in every one of `users`' notifications (unread); their unread
    /// counts after, in order.
    pub(super) fn put(
        &self,
        users: &[String],
        view: &NotificationView,
        max_per_user: u32,
        ttl_ms: u64,
    ) -> Result<Vec<u64>, Refusal> {
        let body = serde_json::to_vec(&Stored {
            updated: view.updated,
            id: view.id,
            kind: view.kind.clone(),
            topic: view.topic.clone(),
            key: view.key.clone(),
            data: view.data.clone(),
            created: view.created,
        })
        .map_err(unavailable)?;
        let (id, max, ttl) = (
            view.id.to_string(),
            max_per_user.to_string(),
            ttl_ms.to_string(),
        );
        let cmds = users
            .iter()
            .map(|u| {
                let [n, all, unread] = self.user_keys(u);
                let args: [&[u8]; 4] = [id.as_bytes(), &body, max.as_bytes(), ttl.as_bytes()];
                Self::script(PUT, &[&n, &all, &unread], &args)
            })
            .collect();
        let answers = self.link.query_all(cmds, WITHIN).map_err(unavailable)?;
        answers
            .into_iter()
            .map(|v| redis::from_redis_value::<u64>(v).map_err(unavailable))
            .collect()
    }

    /// `user`'s notifications newest first (ids below `before`), and the unread count.
    pub(super) fn list(
        &self,
        user: &str,
        limit: u32,
        before: Option<u64>,
        unread_only: bool,
        cutoff_ms: u64,
    ) -> Result<(Vec<NotificationView>, u64), Refusal> {
        let [n, all, unread] = self.user_keys(user);
        let before = before.map_or("+inf".to_string(), |b| b.to_string());
        let (most, cutoff) = (limit.clamp(1, 500).to_string(), cutoff_ms.to_string());
        let only: &[u8] = if unread_only { b"1" } else { b"0" };
        let args: [&[u8]; 4] = [before.as_bytes(), most.as_bytes(), only, cutoff.as_bytes()];
        let cmd = Self::script(LIST, &[&n, &all, &unread], &args);
        let v = self.link.query(cmd, WITHIN).map_err(unavailable)?;
        let mut flat: Vec<Vec<u8>> = redis::from_redis_value(v).map_err(unavailable)?;
        let count = flat
            .pop()
            .and_then(|c| String::from_utf8(c).ok()?.parse().ok())
            .unwrap_or(0);
        let views = flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let s: Stored = serde_json::from_slice(&pair[0]).ok()?;
                Some(NotificationView {
                    id: s.id,
                    kind: s.kind,
                    topic: s.topic,
                    key: s.key,
                    data: s.data,
                    created: s.created,
                    updated: s.updated,
                    read: pair[1] == b"1",
                })
            })
            .collect();
        Ok((views, count))
    }

    /// Mark one (or every) notification of `user` read: how many changed (`None`: no
    /// such notification) and the unread count after.
    pub(super) fn read(&self, user: &str, id: Option<u64>) -> Result<(Option<u64>, u64), Refusal> {
        let [n, _, unread] = self.user_keys(user);
        let id = id.map(|i| i.to_string()).unwrap_or_default();
        let cmd = Self::script(READ, &[&n, &unread], &[id.as_bytes()]);
        let v = self.link.query(cmd, WITHIN).map_err(unavailable)?;
        let (marked, after): (i64, u64) = redis::from_redis_value(v).map_err(unavailable)?;
        Ok(((marked >= 0).then_some(marked as u64), after))
    }

    /// The users subscribed to `topic`.
    pub(super) fn topic_users(&self, topic: &str) -> Result<Vec<String>, Refusal> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.topic_key(topic));
        let v = self.link.query(cmd, WITHIN).map_err(unavailable)?;
        let mut users: Vec<String> = redis::from_redis_value(v).map_err(unavailable)?;
        users.sort();
        Ok(users)
    }

    /// Change `user`'s topics; the topics after.
    pub(super) fn change_topics(
        &self,
        user: &str,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Result<Vec<String>, Refusal> {
        let mine = self.user_topics(user);
        let mut cmds = Vec::new();
        for (topics, verb) in [(subscribe, "SADD"), (unsubscribe, "SREM")] {
            for t in topics {
                let mut a = redis::cmd(verb);
                a.arg(self.topic_key(t)).arg(user);
                let mut b = redis::cmd(verb);
                b.arg(&mine).arg(t);
                cmds.extend([a, b]);
            }
        }
        let mut list = redis::cmd("SMEMBERS");
        list.arg(&mine);
        cmds.push(list);
        let mut answers = self.link.query_all(cmds, WITHIN).map_err(unavailable)?;
        let last = answers.pop().ok_or_else(|| unavailable("no answer"))?;
        let mut topics: Vec<String> = redis::from_redis_value(last).map_err(unavailable)?;
        topics.sort();
        Ok(topics)
    }
}
