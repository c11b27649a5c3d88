//! Presence as the union of every node, in Redis.
//!
//! Owns the keys and the script. Per presence channel, under the channel's hash tag:
//! `…:pn` (hash: `<node>|<user>` → the user's connections on that node, JSON),
//! `…:pu` (hash: user → nodes it is present on), `…:ps` (hash: user → status),
//! `…:pl` (sorted set: who left, by when; the newest 256 kept). One script per change
//! (a node's view of a user) keeps them and decides what the change means to everyone
//! — `join` when the user's first node arrives, `leave` when its last node is gone,
//! `status` — and publishes that as an unsequenced record (`V:<event>\n<user>\n<status
//! or ms>`) on the channel's topic, which every node with subscribers pushes to them.
//! `{P}:pnodes` and `{P}:pnode:<node>` name the nodes with entries and their channels,
//! so that the entries of a node that died are removed (with their `leave` events) by
//! the others once it is gone from the registry, and a node that was cut off drops
//! what it no longer has when it is back.
//!
//! Also owns the other unsequenced channel record: a push from a node to the
//! channel's subscribers everywhere (typing), `C:<origin>\n` and the push per format.
//!
//! Does not own the link ([`super::relay`]) or the local member lists (the engine).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use redis::RedisResult;
use switchboard_engine::presence::{Event, PresenceList, UserView};

use super::conn::Link;
use super::streams::ChannelKeys;

/// What a union read gets: the entries, statuses and who left when.
type Read = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, u64)>,
);

/// `(channel, user)` pairs.
pub type Stated = HashSet<(Arc<str>, Arc<str>)>;

/// Most "last seen" entries kept per channel.
const LAST_SEEN: isize = 256;

/// Set (with a view) or remove (without) one node's view of a user (KEYS: pn, pu, ps,
/// pl, topic; ARGV: node, user, view or '', status, now ms, sharded pub/sub).
const CHANGE: &str = r"
local field = ARGV[1] .. '|' .. ARGV[2]
local user = ARGV[2]
local pub = 'PUBLISH'
if ARGV[6] == '1' then pub = 'SPUBLISH' end
if ARGV[3] ~= '' then
  local new = redis.call('HSET', KEYS[1], field, ARGV[3])
  if new == 1 then
    local n = redis.call('HINCRBY', KEYS[2], user, 1)
    if n == 1 then
      redis.call('HSET', KEYS[3], user, ARGV[4])
      redis.call('ZREM', KEYS[4], user)
      redis.call(pub, KEYS[5], 'V:join\n' .. user .. '\n' .. ARGV[4])
      return 1
    end
  end
  local old = redis.call('HGET', KEYS[3], user)
  if old ~= ARGV[4] then
    redis.call('HSET', KEYS[3], user, ARGV[4])
    redis.call(pub, KEYS[5], 'V:status\n' .. user .. '\n' .. ARGV[4])
  end
  return 1
end
if redis.call('HDEL', KEYS[1], field) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], user, -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[2], user)
    redis.call('HDEL', KEYS[3], user)
    redis.call('ZADD', KEYS[4], ARGV[5], user)
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -257)
    redis.call('PEXPIRE', KEYS[4], 2592000000)
    redis.call(pub, KEYS[5], 'V:leave\n' .. user .. '\n' .. ARGV[5])
  end
end
return 0
";

/// A channel's presence keys (beside its stream's).
#[derive(Debug, Clone)]
pub struct PresenceKeys {
    nodes: String,
    users: String,
    status: String,
    left: String,
    topic: String,
}

impl PresenceKeys {
    /// The presence keys of `channel` under `prefix`.
    pub fn new(prefix: &str, channel: &str) -> PresenceKeys {
        let k = ChannelKeys::new(prefix, channel);
        PresenceKeys {
            nodes: format!("{}:pn", k.stream),
            users: format!("{}:pu", k.stream),
            status: format!("{}:ps", k.stream),
            left: format!("{}:pl", k.stream),
            topic: k.topic,
        }
    }
}

/// The presence script.
#[derive(Debug)]
pub struct Union {
    script: redis::Script,
    prefix: String,
}

impl Union {
    /// The union under `prefix`.
    pub fn new(prefix: &str) -> Union {
        Union {
            script: redis::Script::new(CHANGE),
            prefix: prefix.to_string(),
        }
    }

    /// Load the script (once per link; on a Redis Cluster, on every master).
    pub async fn load<C: redis::aio::ConnectionLike>(&self, conn: &mut C) -> RedisResult<()> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CHANGE)
            .query_async::<redis::Value>(conn)
            .await
            .map(|_| ())
    }

    fn node_channels(&self, node: &str) -> String {
        format!("{{{}}}:pnode:{node}", self.prefix)
    }

    fn all_nodes(&self) -> String {
        format!("{{{}}}:pnodes", self.prefix)
    }

    /// One change (node `node`'s view of `user` on `channel`; `None`: gone), with the
    /// bookkeeping of which node has entries where: commands for [`Link::batch`]
    /// (answers ignored; keys in several slots).
    #[allow(clippy::too_many_arguments)]
    pub fn cmds(
        &self,
        node: &str,
        channel: &str,
        user: &str,
        view: Option<&str>,
        status: &str,
        now_ms: u64,
        sharded: bool,
    ) -> Vec<(redis::Cmd, bool)> {
        let k = PresenceKeys::new(&self.prefix, channel);
        let mut change = redis::cmd("EVALSHA");
        change
            .arg(self.script.get_hash())
            .arg(5)
            .arg(&k.nodes)
            .arg(&k.users)
            .arg(&k.status)
            .arg(&k.left)
            .arg(&k.topic)
            .arg(node)
            .arg(user)
            .arg(view.unwrap_or(""))
            .arg(status)
            .arg(now_ms)
            .arg(if sharded { "1" } else { "0" });
        let mut out = vec![(change, false)];
        if view.is_some() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.node_channels(node)).arg(channel);
            out.push((sadd, false));
            let mut nodes = redis::cmd("SADD");
            nodes.arg(self.all_nodes()).arg(node);
            out.push((nodes, false));
        }
        out
    }

    /// Remove node `node`'s entries (all of them, or those whose `(channel, user)` is
    /// not in `keep`), each with the events it means.
    pub(super) async fn purge(
        &self,
        conn: &mut Link,
        node: &str,
        keep: Option<&Stated>,
        now_ms: u64,
    ) -> RedisResult<usize> {
        let sharded = conn.sharded();
        let channels: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.node_channels(node))
            .query_async(conn)
            .await?;
        let mut removed = 0;
        for channel in &channels {
            let k = PresenceKeys::new(&self.prefix, channel);
            let fields: Vec<String> = redis::cmd("HKEYS").arg(&k.nodes).query_async(conn).await?;
            let mut cmds = Vec::new();
            let mut left = 0;
            for f in &fields {
                let Some((n, user)) = f.split_once('|') else {
                    continue;
                };
                if n != node {
                    continue;
                }
                left += 1;
                let kept =
                    keep.is_some_and(|k| k.contains(&(Arc::from(&**channel), Arc::from(user))));
                if kept {
                    continue;
                }
                cmds.extend(self.cmds(node, channel, user, None, "", now_ms, sharded));
                removed += 1;
            }
            if left == 0 || keep.is_none() {
                let mut srem = redis::cmd("SREM");
                srem.arg(self.node_channels(node)).arg(channel);
                cmds.push((srem, false));
            }
            conn.batch(cmds).await?;
        }
        if keep.is_none() {
            let mut del = redis::cmd("DEL");
            del.arg(self.node_channels(node));
            let mut srem = redis::cmd("SREM");
            srem.arg(self.all_nodes()).arg(node);
            conn.batch(vec![(del, false), (srem, false)]).await?;
        }
        Ok(removed)
    }

    /// Nodes with entries.
    pub async fn nodes<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(self.all_nodes())
            .query_async(conn)
            .await
    }

    /// `channel`'s presence on every node in `live` (every node when empty).
    pub async fn read<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        channel: &str,
        members: bool,
        live: &HashSet<String>,
    ) -> RedisResult<PresenceList> {
        let k = PresenceKeys::new(&self.prefix, channel);
        let (entries, statuses, left): Read = redis::pipe()
            .cmd("HGETALL")
            .arg(&k.nodes)
            .cmd("HGETALL")
            .arg(&k.status)
            .cmd("ZREVRANGE")
            .arg(&k.left)
            .arg(0)
            .arg(LAST_SEEN - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        let statuses: BTreeMap<String, String> = statuses.into_iter().collect();
        let mut users: BTreeMap<String, UserView> = BTreeMap::new();
        for (field, json) in entries {
            let Some((node, user)) = field.split_once('|') else {
                continue;
            };
            if !live.is_empty() && !live.contains(node) {
                continue;
            }
            let Ok(view) = serde_json::from_str::<UserView>(&json) else {
                continue;
            };
            let u = users.entry(user.to_string()).or_insert_with(|| UserView {
                user: user.to_string(),
                status: statuses
                    .get(user)
                    .cloned()
                    .unwrap_or_else(|| view.status.clone()),
                connections: Vec::new(),
            });
            u.connections
                .extend(view.connections.into_iter().map(|mut c| {
                    c.client = format!("{node}/{}", c.client);
                    c
                }));
        }
        let connections = users.values().map(|u| u.connections.len()).sum();
        Ok(PresenceList {
            channel: channel.to_string(),
            users: users.len(),
            connections,
            last_seen: members.then_some(left),
            members: members.then(|| users.into_values().collect()),
        })
    }
}

/// A presence event record (`V:…`) as the engine pushes it; `None` if `b` is not one.
pub fn decode_event(b: &[u8]) -> Option<Event> {
    let rest = std::str::from_utf8(b.strip_prefix(b"V:")?).ok()?;
    let mut parts = rest.splitn(3, '\n');
    let (kind, user, arg) = (parts.next()?, parts.next()?, parts.next()?);
    let user: Arc<str> = user.into();
    Some(match kind {
        "join" => Event::Join {
            user,
            status: arg.into(),
        },
        "status" => Event::Status {
            user,
            status: arg.into(),
        },
        "leave" => Event::Leave {
            user,
            at_ms: arg.parse().ok()?,
        },
        _ => return None,
    })
}

/// The record of a push to a channel's subscribers everywhere, from `origin`.
pub fn encode_push(origin: &str, frames: &[Bytes]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(3 + origin.len() + frames.iter().map(|f| 4 + f.len()).sum::<usize>());
    out.extend_from_slice(b"C:");
    out.extend_from_slice(origin.as_bytes());
    out.push(b'\n');
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A channel push record: its origin and frames; `None` if `b` is not one.
pub fn decode_push(b: &[u8]) -> Option<(&str, [Bytes; switchboard_protocol::FORMATS])> {
    let rest = b.strip_prefix(b"C:")?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let origin = std::str::from_utf8(&rest[..nl]).ok()?;
    let mut rest = &rest[nl + 1..];
    let mut frames: [Bytes; switchboard_protocol::FORMATS] = Default::default();
    for f in frames.iter_mut() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        *f = Bytes::copy_from_slice(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some((origin, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_and_push_records_decode() {
        assert_eq!(
            decode_event(b"V:join\nbob\naway"),
            Some(Event::Join {
                user: "bob".into(),
                status: "away".into()
            })
        );
        assert_eq!(
            decode_event(b"V:leave\nbob\n42"),
            Some(Event::Leave {
                user: "bob".into(),
                at_ms: 42
            })
        );
        assert!(decode_event(b"V:leave\nbob\nx").is_none());
        assert!(decode_event(b"V:other\nbob\nx").is_none());
        let frames = [
            Bytes::from_static(b"a"),
            Bytes::from_static(b"bc"),
            Bytes::new(),
        ];
        let rec = encode_push("n1", &frames);
        let (origin, back) = decode_push(&rec).unwrap();
        assert_eq!(origin, "n1");
        assert_eq!(back, frames);
        assert!(decode_push(&rec[..rec.len() - 1]).is_none());
    }
}
