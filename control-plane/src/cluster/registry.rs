//! The node registry in Redis: every node's entry, and the list of live nodes.
//!
//! Owns the registry's keys and commands. `{P}:node:<id>` holds a node's entry (JSON,
//! expiring `node_ttl_ms` after its last refresh); the sorted set `{P}:nodes` scores
//! each id by its last refresh (Unix ms), so listing is one range query and a dead
//! node's id is pruned by the next node that refreshes. The braces keep every key in
//! one Redis Cluster slot, so each heartbeat is one pipelined round trip. Node clocks
//! are assumed within a second of each other. Does not own the link to Redis
//! ([`super`]).

use std::time::Duration;

use super::conn::Link;
use redis::RedisResult;
use serde::{Deserialize, Serialize};

/// A node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (`cluster.node_id`).
    pub id: String,
    /// Its WebSocket address.
    pub ws: String,
    /// Its admin/server API address.
    pub admin: String,
    /// Its shards.
    pub shards: usize,
    /// Open connections (Socket.IO sessions included).
    pub connections: usize,
    /// Its `engine.max_connections`.
    pub max_connections: usize,
    /// `connections / max_connections`.
    pub load: f64,
    /// When it started, Unix ms.
    pub started_ms: u64,
    /// Its last refresh, Unix ms (its own clock).
    pub heartbeat_ms: u64,
    /// Its version.
    pub version: String,
    /// Its tag: the number call ids held by it carry (`super::mail`; 0: none yet).
    #[serde(default)]
    pub tag: u32,
}

/// The registry's key names.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// The user's prefix without braces.
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    fn node(&self, id: &str) -> String {
        format!("{{{}}}:node:{id}", self.prefix)
    }
}

/// This node's registration.
#[derive(Debug)]
pub(super) struct Registry {
    pub(super) keys: Keys,
    pub(super) me: NodeInfo,
    pub(super) ttl: Duration,
}

impl Registry {
    /// Refresh this node's entry, prune the dead, and read every live node (two round
    /// trips: the pipelined refresh and listing, then the entries).
    pub(super) async fn heartbeat(&mut self, conn: &mut Link) -> RedisResult<Vec<NodeInfo>> {
        let now = crate::clock::now_ms();
        self.me.heartbeat_ms = now;
        let ttl = self.ttl.as_millis() as u64;
        let cutoff = now.saturating_sub(ttl);
        let entry = serde_json::to_string(&self.me).expect("serialising to memory cannot fail");
        let (ids,): (Vec<String>,) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&self.me.id))
            .arg(entry)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now)
            .arg(&self.me.id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg(cutoff)
            .arg("+inf")
            .query_async(conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let entries: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(conn).await?;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .flatten()
            .filter_map(|e| serde_json::from_str(&e).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Leave the registry now (a clean stop).
    pub(super) async fn leave(&mut self, conn: &mut Link) -> RedisResult<()> {
        redis::pipe()
            .cmd("DEL")
            .arg(self.keys.node(&self.me.id))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(&self.me.id)
            .ignore()
            .query_async::<()>(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_cluster_slot() {
        let k = Keys::new("sb");
        assert_eq!(k.nodes(), "{sb}:nodes");
        assert_eq!(k.node("a-1"), "{sb}:node:a-1");
    }
}
