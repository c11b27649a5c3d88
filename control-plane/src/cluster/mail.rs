//! Letters between nodes: what a worker of one node asks of, or tells, a worker of
//! another — today the call worker's commands, replies and pushes for calls held by
//! another node (`crate::calls`).
//!
//! Every node listens on its own mailbox topic, `{P}:mail:<node id>` (pub/sub; sharded
//! on a Redis Cluster), subscribed with the link's channel topics; a letter is one
//! Redis message, sent with the relay's next pipeline. Delivery is best effort, as
//! pub/sub is: a letter to a node that is gone, or sent while Redis is away, is lost,
//! so whoever waits for an answer keeps a deadline. Every node also takes a small
//! number, its *tag* (`INCR {P}:tags` when it first reaches Redis, shown in the
//! registry), which the call worker puts in call ids so any node can tell which node
//! holds a call.
//!
//! Owns [`Peers`] (the workers' view of the other nodes) and the mailbox topic. Does
//! not own what letters say (their readers) or Redis (`super::relay`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use super::pushes::RemotePushes;
use super::ClusterState;

/// Whoever reads this node's letters.
type Reader = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The workers' view of the other nodes: who this node is, which nodes are alive,
/// and letters to and from them. Does nothing for a node alone (clone freely).
#[derive(Clone, Default)]
pub struct Peers {
    remote: RemotePushes,
    state: Arc<OnceLock<Arc<ClusterState>>>,
    reader: Arc<OnceLock<Reader>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node", &self.state.get().map(|s| s.node_id.as_str()))
            .finish()
    }
}

impl Peers {
    /// Peers whose letters leave through `remote`'s queue.
    pub fn new(remote: RemotePushes) -> Peers {
        Peers {
            remote,
            ..Default::default()
        }
    }

    /// This node's id and tag (0 until Redis gave it one); `None` for a node alone.
    pub fn me(&self) -> Option<(&str, u32)> {
        let s = self.state.get()?;
        Some((&s.node_id, s.tag.load(Ordering::Relaxed)))
    }

    /// The live node whose tag is `tag`, as the registry was last read.
    pub fn node_by_tag(&self, tag: u32) -> Option<Arc<str>> {
        let s = self.state.get()?;
        let nodes = s.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .find(|n| n.tag == tag && tag != 0)
            .map(|n| Arc::from(n.id.as_str()))
    }

    /// Whether `node` is in the registry as last read (`true` before the first read:
    /// nothing is known to be gone).
    pub fn live(&self, node: &str) -> bool {
        let Some(s) = self.state.get() else {
            return false;
        };
        let nodes = s.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.is_empty() || nodes.iter().any(|n| n.id == node)
    }

    /// Send `letter` to `node`; whether it left this node's queue (not: no cluster,
    /// or Redis far behind).
    pub fn send(&self, node: Arc<str>, letter: Vec<u8>) -> bool {
        self.state.get().is_some() && self.remote.mail(node, letter)
    }

    /// Who reads this node's letters (once, when the call worker starts).
    pub fn read_with(&self, reader: impl Fn(&[u8]) + Send + Sync + 'static) {
        let _ = self.reader.set(Box::new(reader));
    }

    /// The cluster thread started (once).
    pub(super) fn attach(&self, state: Arc<ClusterState>) {
        let _ = self.state.set(state);
    }

    /// A letter arrived for this node.
    pub(super) fn deliver(&self, letter: &[u8]) {
        match self.reader.get() {
            Some(read) => read(letter),
            None => tracing::debug!("a letter arrived before its reader started; dropped"),
        }
    }
}

/// The mailbox topic of `node`.
pub fn topic(prefix: &str, node: &str) -> String {
    format!("{{{prefix}}}:mail:{node}")
}

/// The key whose increments hand out tags.
pub(super) fn tags_key(prefix: &str) -> String {
    format!("{{{prefix}}}:tags")
}

/// The tag of the `n`th increment: 1 to 2²⁰−1, around again after a million starts
/// (by then the calls of a node that held the same tag are long over).
pub(super) fn tag_of(n: u64) -> u32 {
    ((n.saturating_sub(1) % ((1 << 20) - 1)) + 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_never_zero_and_wrap() {
        assert_eq!(tag_of(1), 1);
        assert_eq!(tag_of(0), 1);
        assert_eq!(tag_of((1 << 20) - 1), (1 << 20) - 1);
        assert_eq!(tag_of(1 << 20), 1);
        assert_eq!(topic("sb", "n1"), "{sb}:mail:n1");
    }
}
