//! Shared channels over Redis: the cluster thread's half of cross-node fan-out (the
//! link).
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
use std::sync::Arc;
use std::time::Duration;

use switchboard_engine::cluster::{ChannelPush, ClusterBatch, ClusterMsg, LinkReq, PresenceAsk};
use switchboard_engine::control::{Push, PushTo};
use switchboard_engine::{Refused, ShardMsg};
use switchboard_protocol::ErrorCode;
use tokio::sync::mpsc;

use super::conn::{Link, Subscribing};
use super::presence as union;
use super::pushes::{self, Outbound};
use super::relay::{unlinked, Relay, Work};
use super::streams::{self, Sequencer};

/// Work for the subscribing task.
enum SubOp {
    Link(LinkReq),
    Unlink(Arc<str>),
}

/// The relay: link, relay until the link fails or the node stops, link again.
pub(super) async fn run(
    relay: Relay,
    mut batches: mpsc::Receiver<ClusterBatch>,
    mut pushes: Option<mpsc::Receiver<Outbound>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut gen = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let linked = async {
            let mut conn = relay.source.link().await?;
            let sequencer = Sequencer::new(conn.sharded());
            sequencer.load(&mut conn).await?;
            relay.union.load(&mut conn).await?;
            relay.marks.load(&mut conn).await?;
            let (mut sink, records) = relay.source.subscriber().await?.split();
            sink.subscribe(vec![relay.mailbox()], true).await?;
            sink.subscribe(vec![super::spent::topic(&relay.prefix)], false)
                .await?;
            Ok::<_, redis::RedisError>((conn, sink, records, Arc::new(sequencer)))
        }
        .await;
        let (conn, sink, mut records, sequencer) = match linked {
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
                        // Redis away: a push reaches this node's connections only.
                        _ = next_push(&mut pushes) => {}
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
        let publisher = tokio::spawn(super::publisher::publish_loop(
            relay.clone(),
            sequencer,
            conn.clone(),
            work_rx,
            fail_tx.clone(),
        ));
        let subscriber = tokio::spawn(subscribe_loop(
            relay.clone(),
            sink,
            conn.clone(),
            ops_rx,
            fail_tx,
            gen,
        ));
        *relay.restated.lock().unwrap_or_else(|e| e.into_inner()) = Some(Default::default());
        let janitor = tokio::spawn(janitor(relay.clone(), conn.clone()));
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
                ..Default::default()
            });
        }
        let stopping = loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        for ask in b.presence_asks {
                            tokio::spawn(answer_presence(relay.clone(), conn.clone(), ask));
                        }
                        for ask in b.sio_asks {
                            tokio::spawn(take_session(relay.clone(), conn.clone(), ask));
                        }
                        let w = Work {
                            moves: b.moves,
                            publishes: b.publishes,
                            presence: b.presence,
                            channel_pushes: b.pushes,
                            marks: b.marks,
                            sio_put: b.sio_put,
                            sio_del: b.sio_del,
                            spent: b.spent,
                            ..Default::default()
                        };
                        if !w.moves.is_empty() || !w.publishes.is_empty() || !w.presence.is_empty() || !w.channel_pushes.is_empty() || !w.marks.is_empty() || !w.sio_put.is_empty() || !w.sio_del.is_empty() || !w.spent.is_empty() {
                            let _ = work_tx.send(w);
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
                p = next_push(&mut pushes) => {
                    let w = match p {
                        Outbound::User(p) => Work { pushes: vec![p], ..Default::default() },
                        Outbound::Channel(p) => Work { channel_pushes: vec![p], ..Default::default() },
                        Outbound::Mail(node, letter) => Work { mail: vec![(node, letter)], ..Default::default() },
                    };
                    let _ = work_tx.send(w);
                }
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
        janitor.abort();
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
async fn check_durability(relay: &Relay, conn: &mut Link) {
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

/// Answer a presence question with the union of the live nodes.
async fn answer_presence(relay: Relay, mut conn: Link, ask: PresenceAsk) {
    let live: HashSet<String> = relay.state.nodes().into_iter().map(|n| n.id).collect();
    let result = relay
        .union
        .read(&mut conn, &ask.channel, ask.members, &live)
        .await
        .map_err(|e| Refused {
            code: ErrorCode::Unavailable,
            message: format!("Redis could not be read: {e}"),
        });
    relay.answer_presence(ask.answer, result).await;
}

/// A reconnecting Socket.IO client's session record, taken from Redis (so no other
/// node recovers it too), for the shard that asked.
async fn take_session(relay: Relay, mut conn: Link, ask: switchboard_engine::cluster::SioAsk) {
    let got: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GETDEL")
        .arg(relay.sio_key(ask.pid))
        .query_async(&mut conn)
        .await;
    let record = got.ok().flatten().and_then(|v| {
        let text_end = v.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&v[..text_end]).ok()?;
        let (home, closed) = head.split_once(':')?;
        Some(switchboard_engine::journal::SessionRecord {
            pid: ask.pid,
            home: home.parse().ok()?,
            closed_ms: closed.parse().ok()?,
            body: v[text_end + 1..].to_vec(),
        })
    });
    let msg = ClusterMsg::SioRecord {
        ask: ask.ask,
        record,
    };
    relay
        .tell(ask.shard as usize, ShardMsg::Cluster(Box::new(msg)))
        .await;
}

/// Every second: remove the presence entries of nodes gone from the registry (killed:
/// their users' `leave` events go out) — missing from two reads in a row — and, once
/// after the link came up, this node's own entries it did not state again.
async fn janitor(relay: Relay, mut conn: Link) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut restated_at = 0u32;
    let mut absent: HashSet<String> = HashSet::new();
    loop {
        tick.tick().await;
        restated_at += 1;
        let now = crate::clock::now_ms();
        if restated_at == 3 {
            let keep = relay
                .restated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            let me = relay.state.node_id.clone();
            if let Err(e) = relay.union.purge(&mut conn, &me, Some(&keep), now).await {
                tracing::warn!("presence: cannot drop this node's stale entries: {e}");
            }
        }
        let live: HashSet<String> = relay.state.nodes().into_iter().map(|n| n.id).collect();
        if live.is_empty() {
            continue;
        }
        let Ok(nodes) = relay.union.nodes(&mut conn).await else {
            continue;
        };
        // A node is gone when two registry reads a second apart both miss it: one
        // that just started may state its users before this node has read its entry.
        let missing: HashSet<String> = nodes
            .into_iter()
            .filter(|n| *n != relay.state.node_id && !live.contains(n))
            .collect();
        let gone: Vec<String> = missing.intersection(&absent).cloned().collect();
        absent = missing;
        for n in gone {
            {
                match relay.union.purge(&mut conn, &n, None, now).await {
                    Ok(users) => {
                        tracing::info!(node = %n, users, "presence: a gone node's entries removed")
                    }
                    Err(e) => {
                        tracing::warn!(node = %n, "presence: cannot remove a gone node's entries: {e}")
                    }
                }
            }
        }
    }
}

/// The next push for other nodes (never, for a relay without them).
async fn next_push(pushes: &mut Option<mpsc::Receiver<Outbound>>) -> Outbound {
    match pushes {
        Some(rx) => match rx.recv().await {
            Some(p) => p,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A record from a channel's topic: to the channel's owner shard (a push: to every
/// shard).
async fn relay_record(relay: &Relay, m: &redis::Msg) {
    let topic = m.get_channel_name();
    if topic.ends_with(relay.state.node_id.as_str()) && topic == relay.mailbox() {
        return relay.peers.deliver(m.get_payload_bytes());
    }
    if topic.ends_with(":spent") && topic == super::spent::topic(&relay.prefix) {
        return spent_elsewhere(relay, m.get_payload_bytes()).await;
    }
    let Some(channel) = streams::channel_of(&relay.prefix, topic) else {
        return;
    };
    let payload = m.get_payload_bytes();
    if payload.starts_with(b"M:") {
        let name: Arc<str> = Arc::from(channel);
        if let Some((origin, mark)) = super::marks::decode(&name, payload) {
            if origin != relay.state.node_id {
                let msg = ClusterMsg::Mark(mark);
                relay
                    .tell(relay.owner(channel), ShardMsg::Cluster(Box::new(msg)))
                    .await;
            }
        }
        return;
    }
    if let Some(event) = union::decode_event(payload) {
        let msg = ClusterMsg::Presence {
            channel: Arc::from(channel),
            event,
        };
        return relay
            .tell(relay.owner(channel), ShardMsg::Cluster(Box::new(msg)))
            .await;
    }
    if let Some((origin, frames)) = union::decode_push(payload) {
        if origin != relay.state.node_id {
            let msg = ClusterMsg::Push(ChannelPush {
                channel: Arc::from(channel),
                frames,
            });
            relay
                .tell(relay.owner(channel), ShardMsg::Cluster(Box::new(msg)))
                .await;
        }
        return;
    }
    if let Some((origin, coalesce, frames)) = pushes::decode(payload) {
        let user = channel
            .strip_prefix(relay.personal.as_str())
            .and_then(|u| u.strip_prefix(':'));
        if let (Some(user), false) = (user, origin == relay.state.node_id) {
            let push = Arc::new(Push {
                to: PushTo::Users(vec![(Arc::from(user), frames)]),
                coalesce,
            });
            for shard in 0..relay.shards.shards() {
                relay.tell(shard, ShardMsg::Push(push.clone())).await;
            }
        }
        return;
    }
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

/// Another node's report of its users' rate-limit use: to each user's owner shard.
async fn spent_elsewhere(relay: &Relay, payload: &[u8]) {
    let Some((origin, users)) = super::spent::decode(payload) else {
        return tracing::warn!("a rate-limit report that does not decode, ignored");
    };
    if origin == relay.state.node_id {
        return;
    }
    let mut by_shard: Vec<Vec<switchboard_engine::cluster::UserSpent>> =
        (0..relay.shards.shards()).map(|_| Vec::new()).collect();
    for u in users {
        by_shard[relay.user_owner(&u.user)].push(u);
    }
    for (shard, list) in by_shard.into_iter().enumerate() {
        if !list.is_empty() {
            let msg = ClusterMsg::Spent(list);
            relay.tell(shard, ShardMsg::Cluster(Box::new(msg))).await;
        }
    }
}

/// Subscribe and unsubscribe in order (consecutive subscriptions as one command),
/// then read each linked channel's stream and hand it to its owner.
async fn subscribe_loop(
    relay: Relay,
    mut sink: Subscribing,
    mut conn: Link,
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
                        ok &= sink
                            .subscribe(std::mem::take(&mut topics), true)
                            .await
                            .is_ok();
                    }
                    ok &= sink
                        .unsubscribe(relay.keys(&channel).topic, true)
                        .await
                        .is_ok();
                }
            }
        }
        if !topics.is_empty() {
            ok &= sink.subscribe(topics, true).await.is_ok();
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
                let read = streams::read(&mut conn, &keys, epoch, l.ttl_ms).await;
                (l, read)
            }
        });
        for (l, read) in futures_util::future::join_all(reads).await {
            let owner = relay.owner(&l.channel);
            let msg = match read {
                Ok((top, records, marks)) => ClusterMsg::Linked {
                    marks: marks
                        .iter()
                        .filter_map(|(f, v)| super::marks::parse(&l.channel, f, v))
                        .collect(),
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
