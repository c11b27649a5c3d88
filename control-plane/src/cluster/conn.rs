//! The connections to Redis: one server (found directly or through Sentinel) or a
//! Redis Cluster, behind one type each for commands ([`Link`]) and for pub/sub
//! ([`Subscriber`]).
//!
//! On a Redis Cluster, commands go through one cluster connection (one socket per
//! master, however many slots: `redis::cluster_async`), channels' topics use sharded
//! pub/sub (`SSUBSCRIBE`/`SPUBLISH`: a record is sent only to the master that owns the
//! channel's slot and the nodes subscribed there), and a batch of commands whose keys
//! span slots is sent as concurrent requests rather than one pipeline (Redis Cluster
//! refuses cross-slot pipelines); on one server it is one pipeline, one round trip.
//!
//! Does not own finding the server ([`super::source`]) or what is sent.

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Msg, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// A connection for commands.
#[derive(Clone)]
pub(super) enum Link {
    /// One server: pipelined, multiplexed.
    Single(MultiplexedConnection),
    /// A Redis Cluster: one socket per master.
    Cluster(ClusterConnection),
}

impl Link {
    /// Whether channels use sharded pub/sub (a Redis Cluster).
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// Run `cmds` (keys in any slots) and return the answers of those marked `true`,
    /// in order: one pipeline on one server, concurrent requests on a cluster.
    pub(super) async fn batch(&mut self, cmds: Vec<(Cmd, bool)>) -> RedisResult<Vec<Value>> {
        match self {
            Link::Single(c) => {
                let mut pipe = Pipeline::with_capacity(cmds.len());
                for (cmd, keep) in cmds {
                    pipe.add_command(cmd);
                    if !keep {
                        pipe.ignore();
                    }
                }
                if pipe.is_empty() {
                    return Ok(Vec::new());
                }
                pipe.query_async(c).await
            }
            Link::Cluster(c) => {
                let answers = join_all(cmds.iter().map(|(cmd, _)| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                }))
                .await;
                let mut kept = Vec::new();
                for ((_, keep), a) in cmds.iter().zip(answers) {
                    let v = a?;
                    if *keep {
                        kept.push(v);
                    }
                }
                Ok(kept)
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// A pub/sub connection: subscribe, unsubscribe, and the messages in order.
pub(super) enum Subscriber {
    /// One server.
    Single(PubSubSink, PubSubStream),
    /// A Redis Cluster (RESP3 pushes), channels' topics sharded.
    Cluster(ClusterConnection, UnboundedReceiver<redis::PushInfo>),
}

/// The subscribing half of a [`Subscriber`], usable while the other half reads.
#[derive(Clone)]
pub(super) enum Subscribing {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

/// The reading half of a [`Subscriber`].
pub(super) enum Messages {
    Single(PubSubStream),
    Cluster(UnboundedReceiver<redis::PushInfo>),
}

impl Subscriber {
    /// Its two halves.
    pub(super) fn split(self) -> (Subscribing, Messages) {
        match self {
            Subscriber::Single(sink, stream) => {
                (Subscribing::Single(sink), Messages::Single(stream))
            }
            Subscriber::Cluster(c, rx) => (Subscribing::Cluster(c), Messages::Cluster(rx)),
        }
    }
}

impl Subscribing {
    /// Subscribe to `topics`: channels' topics (`sharded` on a cluster) or the
    /// control channel (never sharded: every node hears it).
    pub(super) async fn subscribe(
        &mut self,
        topics: Vec<String>,
        sharded: bool,
    ) -> RedisResult<()> {
        match self {
            Subscribing::Single(s) => s.subscribe(topics).await,
            Subscribing::Cluster(c) if sharded => c.ssubscribe(topics).await,
            Subscribing::Cluster(c) => c.subscribe(topics).await,
        }
    }

    /// Leave `topic`.
    pub(super) async fn unsubscribe(&mut self, topic: String, sharded: bool) -> RedisResult<()> {
        match self {
            Subscribing::Single(s) => s.unsubscribe(topic).await,
            Subscribing::Cluster(c) if sharded => c.sunsubscribe(topic).await,
            Subscribing::Cluster(c) => c.unsubscribe(topic).await,
        }
    }
}

impl Messages {
    /// The next message; `None` when the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Msg> {
        match self {
            Messages::Single(s) => futures_util::StreamExt::next(s).await,
            Messages::Cluster(rx) => loop {
                let push = rx.recv().await?;
                if push.kind == redis::PushKind::Disconnection {
                    // One master's socket dropped: the cluster connection reconnects
                    // and subscribes again; records missed meanwhile show as gaps.
                    continue;
                }
                if let Some(m) = Msg::from_push_info(push) {
                    return Some(m);
                }
            },
        }
    }
}
