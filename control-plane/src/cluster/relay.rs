//! Shared channels over Redis: the cluster thread's half of cross-node fan-out.
//!
//! Owns the links that carry channels between nodes: one multiplexed connection for
//! the sequencing scripts ([`super::streams`]; every batch of publications the owner
//! shards hand over in a turn, and whatever queued meanwhile, goes as one pipeline:
//! one round trip however many publications), and one pub/sub connection subscribed to
//! the topic of every channel this node has subscribers for (one Redis message per
//! publication per interested node). Records it receives go to the channel's owner
//! shard, which delivers them like its own. Subscribing reads the channel's stream
//! after the subscription is confirmed, so the owner can answer subscribers with a
//! position no later record can fall before.
//!
//! When Redis goes away it tells every shard (`Down`: they sequence shared channels
//! alone), hands back the publications it held (`Fallback`), and links again with
//! backoff; once back (`Up`, a new generation) the shards re-read their channels and
//! move the epoch of those published alone meanwhile — kept here until done, even if
//! the link fails again first.
//!
//! Does not own the owner shards' side ([`switchboard_engine::cluster`]), the node
//! registry or the admin bus.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use switchboard_engine::cluster::{ClusterBatch, ClusterMsg, LinkReq, SharedPublish};
use switchboard_engine::mesh::Sequenced;
use switchboard_engine::{streams as engine_streams, PublishReply, Refused, ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;
use tokio::sync::mpsc;

use super::streams::{self, ChannelKeys, Sequence, Sequencer};
use super::ClusterState;

/// Most publications in one pipeline.
const MAX_PIPELINE: usize = 1024;

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
    moves: Arc<Mutex<HashSet<Arc<str>>>>,
    /// Mixed into the epochs of streams that start here.
    seed: u64,
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
        }
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.prefix, channel)
    }

    /// A new epoch (for a stream that starts, or moves, here).
    fn epoch(&self, channel: &str, n: u64) -> u64 {
        let h = engine_streams::owner(channel, usize::MAX) as u64;
        splitmix(self.seed ^ h ^ splitmix(n ^ crate::clock::now_ms()))
    }

    fn owner(&self, channel: &str) -> usize {
        engine_streams::owner(channel, self.shards.shards()) as usize
    }

    /// Send `msg` to `shard`, waiting (without blocking the thread) while its inbox is
    /// full; dropped after 5 s (a stopped shard).
    async fn tell(&self, shard: usize, msg: ShardMsg) {
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

    async fn tell_all(&self, msg: impl Fn() -> ClusterMsg) {
        for shard in 0..self.shards.shards() {
            self.tell(shard, ShardMsg::Cluster(Box::new(msg()))).await;
        }
    }

    async fn answer(&self, reply: PublishReply, result: Sequenced) {
        match reply {
            PublishReply::None => {}
            PublishReply::Client {
                shard,
                conn,
                req_id,
            } => {
                let msg = ShardMsg::Published {
                    conn,
                    req_id,
                    result,
                };
                self.tell(shard as usize, msg).await;
            }
            PublishReply::Api(tx) => {
                let _ = tx.send(result);
            }
        }
    }

    /// Redis could not take `p`: its owner sequences it alone.
    async fn fall_back(&self, p: SharedPublish) {
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
struct Work {
    moves: Vec<Arc<str>>,
    publishes: Vec<SharedPublish>,
}

/// Work for the subscribing task.
enum SubOp {
    Link(LinkReq),
    Unlink(Arc<str>),
}

/// The relay: link, relay until the link fails or the node stops, link again.
pub(super) async fn run(
    relay: Relay,
    mut batches: mpsc::Receiver<ClusterBatch>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let sequencer = Arc::new(Sequencer::new(false));
    let mut gen = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let linked = async {
            let client = relay.source.client().await?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            sequencer.load(&mut conn).await?;
            let (sink, stream) = client.get_async_pubsub().await?.split();
            Ok::<_, redis::RedisError>((conn, sink, stream))
        }
        .await;
        let (conn, sink, mut records) = match linked {
            Ok(l) => l,
            Err(e) => {
                if gen == 0 && backoff == Duration::from_millis(100) {
                    // The shards started expecting the link: they serve alone now.
                    tracing::warn!("shared channels: Redis unreachable, serving alone: {e}");
                    relay.tell_all(|| ClusterMsg::Down { gen: 0 }).await;
                }
                let wait = tokio::time::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        b = batches.recv() => match b {
                            Some(b) => unlinked(&relay, b).await,
                            None => return,
                        },
                        _ = stop.changed() => return,
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        gen += 1;
        relay.state.fanout_gen.store(gen, Ordering::Relaxed);
        if relay.sync_namespaces {
            let mut c = conn.clone();
            check_durability(&relay, &mut c).await;
        }
        relay.tell_all(|| ClusterMsg::Up { gen }).await;
        let (fail_tx, mut failed) = mpsc::channel::<()>(1);
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_loop(
            relay.clone(),
            sequencer.clone(),
            conn.clone(),
            work_rx,
            fail_tx.clone(),
        ));
        let subscriber = tokio::spawn(subscribe_loop(
            relay.clone(),
            sink,
            conn,
            ops_rx,
            fail_tx,
            gen,
        ));
        // Moves left from an earlier link go before anything else.
        let moves: Vec<Arc<str>> = relay
            .moves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if !moves.is_empty() {
            let _ = work_tx.send(Work {
                moves,
                publishes: Vec::new(),
            });
        }
        let stopping = loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        if !b.moves.is_empty() || !b.publishes.is_empty() {
                            let _ = work_tx.send(Work { moves: b.moves, publishes: b.publishes });
                        }
                        for l in b.links {
                            let _ = ops_tx.send(SubOp::Link(l));
                        }
                        for u in b.unlinks {
                            let _ = ops_tx.send(SubOp::Unlink(u));
                        }
                    }
                    None => break true,
                },
                m = records.next() => match m {
                    Some(m) => relay_record(&relay, &m).await,
                    None => break false,
                },
                _ = failed.recv() => break false,
                _ = stop.changed() => break true,
            }
        };
        // The publisher answers (or hands back) everything it was given, then ends.
        drop(work_tx);
        drop(ops_tx);
        subscriber.abort();
        if stopping {
            publisher.abort();
            return;
        }
        relay.state.fanout_gen.store(0, Ordering::Relaxed);
        tracing::warn!("shared channels: the link to Redis failed; serving alone until it is back");
        relay.tell_all(|| ClusterMsg::Down { gen }).await;
        let _ = publisher.await;
    }
}

/// `sync` namespaces promise that an acknowledged publication survives a crash: with
/// Redis as their store that needs `appendonly yes` + `appendfsync always` on the
/// master, or `cluster.sync_replicas` replicas confirming each one (`WAIT`). Checked
/// at every link; a shortfall is logged as an error and shown in `/health/ready`.
async fn check_durability(relay: &Relay, conn: &mut MultiplexedConnection) {
    let answer: redis::RedisResult<Vec<(String, String)>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let warning = match answer {
        Ok(pairs) => {
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let (aof, fsync) = (get("appendonly"), get("appendfsync"));
            if relay.sync_replicas > 0 || (aof == "yes" && fsync == "always") {
                String::new()
            } else {
                format!(
                    "Redis has appendonly={aof:?} appendfsync={fsync:?} and \
                     cluster.sync_replicas is 0: a `sync` publication acknowledged now can \
                     be lost if Redis crashes (set appendonly yes + appendfsync always, or \
                     cluster.sync_replicas)"
                )
            }
        }
        Err(e) => format!(
            "cannot read Redis's persistence settings (CONFIG GET: {e}); `sync` \
             namespaces rely on them being appendonly yes + appendfsync always"
        ),
    };
    if !warning.is_empty() {
        tracing::error!("sync durability NOT guaranteed: {warning}");
    }
    *relay
        .state
        .sync_warning
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = warning;
}

/// A batch that arrived while Redis is away: publications go back to their owner;
/// moves wait for the link; links and unlinks are made again at `Up`.
async fn unlinked(relay: &Relay, b: ClusterBatch) {
    {
        let mut moves = relay.moves.lock().unwrap_or_else(|e| e.into_inner());
        moves.extend(b.moves);
    }
    for p in b.publishes {
        relay.fall_back(p).await;
    }
}

/// A record from a channel's topic: to the channel's owner shard.
async fn relay_record(relay: &Relay, m: &redis::Msg) {
    let topic = m.get_channel_name();
    let Some(channel) = streams::channel_of(&relay.prefix, topic) else {
        return;
    };
    let Some(record) = streams::decode(m.get_payload_bytes()) else {
        tracing::warn!(
            topic,
            "shared channels: a record that does not decode, ignored"
        );
        return;
    };
    let msg = ClusterMsg::Record {
        channel: Arc::from(channel),
        record,
    };
    relay
        .tell(relay.owner(channel), ShardMsg::Cluster(Box::new(msg)))
        .await;
}

/// Sequence publications in order, as few pipelines as possible.
async fn publish_loop(
    relay: Relay,
    sequencer: Arc<Sequencer>,
    mut conn: MultiplexedConnection,
    mut work: mpsc::UnboundedReceiver<Work>,
    fail: mpsc::Sender<()>,
) {
    let mut broken = false;
    let mut n = 0u64;
    while let Some(first) = work.recv().await {
        let mut moves = first.moves;
        let mut publishes = first.publishes;
        while publishes.len() < MAX_PIPELINE {
            match work.try_recv() {
                Ok(w) => {
                    moves.extend(w.moves);
                    publishes.extend(w.publishes);
                }
                Err(_) => break,
            }
        }
        if broken {
            unlinked(
                &relay,
                ClusterBatch {
                    moves,
                    publishes,
                    ..Default::default()
                },
            )
            .await;
            continue;
        }
        let mut pipe = redis::pipe();
        for m in &moves {
            n += 1;
            sequencer.add_move(&mut pipe, &relay.keys(m), relay.epoch(m, n));
        }
        let now = crate::clock::now_ms();
        let any_sync = publishes.iter().any(|p| p.sync);
        let keys: Vec<ChannelKeys> = publishes.iter().map(|p| relay.keys(&p.channel)).collect();
        let payloads: Vec<Vec<u8>> = publishes
            .iter()
            .map(|p| streams::encode_payload(p, now))
            .collect();
        for (i, p) in publishes.iter().enumerate() {
            n += 1;
            let s = Sequence {
                keys: &keys[i],
                epoch_seed: relay.epoch(&p.channel, n),
                keep: p.keep,
                payload: &payloads[i],
                key: p.key.as_deref().map(|k| (k, relay.dedupe_ms)),
            };
            sequencer.add(&mut pipe, s);
        }
        let wait = any_sync && relay.sync_replicas > 0;
        if wait {
            pipe.cmd("WAIT")
                .arg(relay.sync_replicas)
                .arg(relay.sync_timeout_ms);
        }
        let mut answer = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
        if matches!(&answer, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // The scripts were flushed: load them again, once.
            if sequencer.load(&mut conn).await.is_ok() {
                answer = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
            }
        }
        match answer {
            Ok(mut values) => {
                relay.state.pipelines.fetch_add(1, Ordering::Relaxed);
                relay
                    .state
                    .sequenced
                    .fetch_add(publishes.len() as u64, Ordering::Relaxed);
                {
                    let mut pending = relay.moves.lock().unwrap_or_else(|e| e.into_inner());
                    for m in &moves {
                        pending.remove(m);
                    }
                }
                let replicated = if wait {
                    values
                        .pop()
                        .and_then(|v| redis::from_redis_value::<u32>(v).ok())
                        .unwrap_or(0)
                } else {
                    u32::MAX
                };
                for (p, v) in publishes.into_iter().zip(values) {
                    let result = match streams::parse_sequenced(v) {
                        Ok(_) if p.sync && replicated < relay.sync_replicas => Err(Refused {
                            code: ErrorCode::Unavailable,
                            message: format!(
                                "published, but not confirmed by {} Redis replicas in time; \
                                 retry with the same key",
                                relay.sync_replicas
                            ),
                        }),
                        Ok(sequenced) => Ok(sequenced),
                        Err(e) => Err(Refused {
                            code: ErrorCode::Unavailable,
                            message: format!("Redis refused the publication: {e}"),
                        }),
                    };
                    relay.answer(p.reply, result).await;
                }
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                broken = true;
                relay.state.redis_errors.fetch_add(1, Ordering::Relaxed);
                let _ = fail.try_send(());
                unlinked(
                    &relay,
                    ClusterBatch {
                        moves,
                        publishes,
                        ..Default::default()
                    },
                )
                .await;
            }
            Err(e) => {
                // Redis is there but refuses (out of memory, a read-only replica…):
                // nothing was published.
                relay.state.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("shared channels: Redis refused a batch of publications: {e}");
                for p in publishes {
                    let refused = Refused {
                        code: ErrorCode::Unavailable,
                        message: format!("Redis refused the publication: {e}"),
                    };
                    relay.answer(p.reply, Err(refused)).await;
                }
            }
        }
    }
}

/// Subscribe and unsubscribe in order (consecutive subscriptions as one command),
/// then read each linked channel's stream and hand it to its owner.
async fn subscribe_loop(
    relay: Relay,
    mut sink: redis::aio::PubSubSink,
    mut conn: MultiplexedConnection,
    mut ops: mpsc::UnboundedReceiver<SubOp>,
    fail: mpsc::Sender<()>,
    gen: u64,
) {
    let mut n = 0u64;
    while let Some(first) = ops.recv().await {
        let mut all = vec![first];
        while let Ok(op) = ops.try_recv() {
            all.push(op);
        }
        let mut topics: Vec<String> = Vec::new();
        let mut reads: Vec<LinkReq> = Vec::new();
        let mut ok = true;
        for op in all {
            match op {
                SubOp::Link(l) => {
                    if l.subscribe {
                        topics.push(relay.keys(&l.channel).topic);
                    }
                    reads.push(l);
                }
                SubOp::Unlink(channel) => {
                    if !topics.is_empty() {
                        ok &= sink.subscribe(std::mem::take(&mut topics)).await.is_ok();
                    }
                    ok &= sink.unsubscribe(relay.keys(&channel).topic).await.is_ok();
                }
            }
        }
        if !topics.is_empty() {
            ok &= sink.subscribe(topics).await.is_ok();
        }
        if !ok {
            let _ = fail.try_send(());
            return;
        }
        let reads = reads.into_iter().map(|l| {
            n += 1;
            let epoch = relay.epoch(&l.channel, n);
            let mut conn = conn.clone();
            let keys = relay.keys(&l.channel);
            async move {
                let read = streams::read(&mut conn, &keys, epoch).await;
                (l, read)
            }
        });
        for (l, read) in futures_util::future::join_all(reads).await {
            let owner = relay.owner(&l.channel);
            let msg = match read {
                Ok((top, records)) => ClusterMsg::Linked {
                    channel: l.channel,
                    gen,
                    subscribed: l.subscribe,
                    top: Some(top),
                    records,
                },
                Err(e) => {
                    tracing::warn!(channel = &*l.channel, "shared channels: cannot read: {e}");
                    ClusterMsg::LinkFailed { channel: l.channel }
                }
            };
            relay.tell(owner, ShardMsg::Cluster(Box::new(msg))).await;
        }
        let _ = &mut conn;
    }
}
