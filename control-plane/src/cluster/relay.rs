//! What the shared channels' link works with: the relay context ([`Relay`]: Redis's
//! source and keys, the shards, the scripts, the epochs to move) and the answers it
//! sends to shards (publishers, presence questions, publications handed back).
//!
//! The link itself (connecting, subscribing, records, presence janitor) is
//! [`super::link`]; the publishing task is [`super::publisher`]. Does not own the
//! owner shards' side ([`switchboard_engine::cluster`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_engine::cluster::{
    ChannelPush, ClusterBatch, ClusterMsg, PresenceOp, SharedPublish,
};
use switchboard_engine::mesh::Sequenced;
use switchboard_engine::{streams as engine_streams, PublishReply, Refused, ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;

use super::presence::{self as union, Union};
use super::pushes::UserPush;
use super::streams::ChannelKeys;
use super::ClusterState;

/// What the relay needs besides its queues.
#[derive(Clone)]
pub(super) struct Relay {
    pub(super) source: super::source::Source,
    pub(super) prefix: String,
    pub(super) state: Arc<ClusterState>,
    pub(super) shards: ShardSender,
    /// How long Redis remembers an idempotency key (`engine.dedupe_window_ms`).
    pub(super) dedupe_ms: u64,
    /// Some namespace is `sync`.
    pub(super) sync_namespaces: bool,
    /// Replicas a `sync` publication waits for (`WAIT`), and for how long.
    pub(super) sync_replicas: u32,
    pub(super) sync_timeout_ms: u64,
    /// Channels whose epoch must move before anything else is sequenced on them.
    pub(super) moves: Arc<Mutex<HashSet<Arc<str>>>>,
    /// Mixed into the epochs of streams that start here.
    seed: u64,
    /// `engine.personal_namespace` (pushes to users go on their personal channel).
    pub(super) personal: String,
    /// `socketio.recovery_ms`: how long Redis keeps an ended session's record.
    pub(super) sio_recovery_ms: u64,
    /// Presence as the union of every node.
    pub(super) union: Arc<Union>,
    /// Inbox cursors and receipts of every node.
    pub(super) marks: Arc<super::marks::Marks>,
    /// What this node stated of its presence since the link came up, while that is
    /// being collected (the rest of its old entries are dropped a few seconds after;
    /// then `None`, nothing more is kept).
    pub(super) restated: Arc<Mutex<Option<union::Stated>>>,
    /// Where letters to this node go.
    pub(super) peers: super::Peers,
    /// The store the nodes share, for the shared publications this node published.
    pub(super) journal: Option<switchboard_engine::journal::JournalLink>,
    /// The AI pipelines' tap: this node's shared publications go to their namespace's
    /// fail-open pipeline once Redis sequenced them (on this node only).
    pub(super) ai: Option<switchboard_engine::ai_tap::AiTap>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Relay {
    pub(super) fn new(
        source: super::source::Source,
        prefix: &str,
        state: Arc<ClusterState>,
        shards: ShardSender,
        dedupe_ms: u64,
        (sync_namespaces, sync_replicas, sync_timeout_ms): (bool, u32, u64),
    ) -> Relay {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Relay {
            source,
            prefix: prefix.to_string(),
            state,
            shards,
            dedupe_ms,
            sync_namespaces,
            sync_replicas,
            sync_timeout_ms,
            moves: Arc::default(),
            seed: u64::from_le_bytes(b),
            personal: String::new(),
            sio_recovery_ms: 0,
            union: Arc::new(Union::new(prefix)),
            marks: Arc::default(),
            restated: Arc::default(),
            peers: Default::default(),
            journal: None,
            ai: None,
        }
    }

    /// Where an ended Socket.IO session's record waits (its own slot on a cluster).
    pub(super) fn sio_key(&self, pid: u128) -> String {
        format!("{{{}:sio:{pid:032x}}}", self.prefix)
    }

    /// This node's mailbox topic.
    pub(super) fn mailbox(&self) -> String {
        super::mail::topic(&self.prefix, &self.state.node_id)
    }

    pub(super) fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.prefix, channel)
    }

    /// A new epoch (for a stream that starts, or moves, here).
    pub(super) fn epoch(&self, channel: &str, n: u64) -> u64 {
        let h = engine_streams::owner(channel, usize::MAX) as u64;
        splitmix(self.seed ^ h ^ splitmix(n ^ crate::clock::now_ms()))
    }

    /// The home shard of `channel` (where its records go).
    pub(super) fn owner(&self, channel: &str) -> usize {
        self.shards.home_of(channel)
    }

    /// The shard that owns `user`'s rate-limit budget (a hash of the id).
    pub(super) fn user_owner(&self, user: &str) -> usize {
        engine_streams::owner(user, self.shards.shards()) as usize
    }

    /// Send `msg` to `shard`, waiting (without blocking the thread) while its inbox is
    /// full; dropped after 5 s (a stopped shard).
    pub(super) async fn tell(&self, shard: usize, msg: ShardMsg) {
        let mut msg = msg;
        for _ in 0..5_000 {
            match self.shards.send(shard, msg) {
                Ok(()) => return,
                Err(back) => msg = back,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::warn!(
            shard,
            "shard inbox full for 5 s; a cluster message is dropped"
        );
    }

    pub(super) async fn tell_all(&self, msg: impl Fn() -> ClusterMsg) {
        for shard in 0..self.shards.shards() {
            self.tell(shard, ShardMsg::Cluster(Box::new(msg()))).await;
        }
    }

    pub(super) async fn answer(&self, reply: PublishReply, result: Sequenced) {
        let mut reply = reply;
        while let PublishReply::Tee(inner, tx) = reply {
            let _ = tx.send(result.clone());
            reply = *inner;
        }
        match reply {
            PublishReply::None => {}
            PublishReply::Client {
                shard,
                conn,
                req_id,
                quiet,
            } => {
                let msg = ShardMsg::Published {
                    conn,
                    req_id,
                    result,
                    quiet,
                };
                self.tell(shard as usize, msg).await;
            }
            PublishReply::Api(tx) => {
                let _ = tx.send(result);
            }
            // Unwrapped above.
            PublishReply::Tee(..) => {}
        }
    }

    pub(super) async fn answer_presence(
        &self,
        answer: switchboard_engine::mesh::Answer<switchboard_engine::presence::PresenceList>,
        result: Result<switchboard_engine::presence::PresenceList, Refused>,
    ) {
        use switchboard_engine::mesh::{Answer, ReplyBody};
        match answer {
            Answer::Client {
                shard,
                conn,
                req_id,
            } => {
                let msg = ShardMsg::Reply {
                    conn,
                    req_id,
                    command: switchboard_engine::metrics::CommandKind::Presence,
                    result: result.map(ReplyBody::Presence),
                };
                self.tell(shard as usize, msg).await;
            }
            Answer::Api(tx) => {
                if let Ok(list) = result {
                    let _ = tx.send(list);
                }
            }
        }
    }

    /// Redis could not take `p`: its owner sequences it alone.
    pub(super) async fn fall_back(&self, p: SharedPublish) {
        let owner = self.owner(&p.channel);
        self.tell(owner, ShardMsg::Cluster(Box::new(ClusterMsg::Fallback(p))))
            .await;
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Work for the publishing task.
#[derive(Default)]
pub(super) struct Work {
    pub(super) moves: Vec<Arc<str>>,
    pub(super) publishes: Vec<SharedPublish>,
    pub(super) pushes: Vec<UserPush>,
    pub(super) presence: Vec<PresenceOp>,
    pub(super) channel_pushes: Vec<ChannelPush>,
    pub(super) marks: Vec<switchboard_engine::journal::MarkRecord>,
    pub(super) sio_put: Vec<switchboard_engine::journal::SessionRecord>,
    pub(super) sio_del: Vec<u128>,
    /// Letters to other nodes.
    pub(super) mail: Vec<(Arc<str>, Vec<u8>)>,
    /// Users' use of per-user rate limits here, for the other nodes.
    pub(super) spent: Vec<switchboard_engine::cluster::UserSpent>,
}

/// A batch that arrived while Redis is away: publications go back to their owner;
/// moves wait for the link; links and unlinks are made again at `Up`.
pub(super) async fn unlinked(relay: &Relay, b: ClusterBatch) {
    {
        let mut moves = relay.moves.lock().unwrap_or_else(|e| e.into_inner());
        moves.extend(b.moves);
    }
    for p in b.publishes {
        relay.fall_back(p).await;
    }
    for ask in b.presence_asks {
        let refused = Refused {
            code: ErrorCode::Unavailable,
            message: "Redis is unreachable; retry".into(),
        };
        relay.answer_presence(ask.answer, Err(refused)).await;
    }
}
