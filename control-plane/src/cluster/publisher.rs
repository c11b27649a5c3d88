//! The publishing task of the shared channels' link: sequences publications in order,
//! as few round trips as possible (everything queued while a round trip is in flight
//! goes in the next one), with the presence changes, pushes and epoch moves of the
//! same turns; answers each publisher, hands the stored ones to the store the nodes
//! share (PostgreSQL: each publication once, by the node that published it), and hands
//! back what a failed link could not take.
//!
//! Does not own the link's lifecycle or records ([`super::relay`]) or the scripts
//! ([`super::streams`], [`super::presence`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_engine::cluster::{ClusterBatch, SharedPublish};
use switchboard_engine::journal::{Batch, Record};
use switchboard_engine::Refused;
use switchboard_protocol::{ErrorCode, Position};
use tokio::sync::mpsc;

use super::conn::Link;
use super::presence as union;
use super::pushes;
use super::relay::{unlinked, Relay, Work};
use super::streams::{self, Sequence, Sequencer};

/// Most publications in one pipeline.
const MAX_PIPELINE: usize = 1024;

/// The link failed: the publications go back to their owners, the moves wait for the
/// next link.
async fn hand_back(
    relay: &Relay,
    moves: Vec<Arc<str>>,
    publishes: Vec<switchboard_engine::cluster::SharedPublish>,
) {
    let batch = ClusterBatch {
        moves,
        publishes,
        ..Default::default()
    };
    unlinked(relay, batch).await;
}

/// Sequence publications in order, as few pipelines as possible.
pub(super) async fn publish_loop(
    relay: Relay,
    sequencer: Arc<Sequencer>,
    mut conn: Link,
    mut work: mpsc::UnboundedReceiver<Work>,
    fail: mpsc::Sender<()>,
) {
    let mut broken = false;
    let mut n = 0u64;
    while let Some(first) = work.recv().await {
        let mut moves = first.moves;
        let mut publishes = first.publishes;
        let mut user_pushes = first.pushes;
        let mut presence = first.presence;
        let mut channel_pushes = first.channel_pushes;
        let mut marks = first.marks;
        let mut sio_put = first.sio_put;
        let mut sio_del = first.sio_del;
        let mut mail = first.mail;
        let mut spent = first.spent;
        while publishes.len() + user_pushes.len() + presence.len() < MAX_PIPELINE {
            match work.try_recv() {
                Ok(w) => {
                    moves.extend(w.moves);
                    publishes.extend(w.publishes);
                    user_pushes.extend(w.pushes);
                    presence.extend(w.presence);
                    channel_pushes.extend(w.channel_pushes);
                    marks.extend(w.marks);
                    sio_put.extend(w.sio_put);
                    sio_del.extend(w.sio_del);
                    mail.extend(w.mail);
                    spent.extend(w.spent);
                }
                Err(_) => break,
            }
        }
        if broken {
            hand_back(&relay, moves, publishes).await;
            continue;
        }
        // Commands, and whether their answer is wanted (one pipeline on one server,
        // concurrent requests by slot on a Redis Cluster).
        let mut cmds: Vec<(redis::Cmd, bool)> = Vec::with_capacity(publishes.len() + moves.len());
        for m in &moves {
            n += 1;
            cmds.push((sequencer.move_cmd(&relay.keys(m), relay.epoch(m, n)), false));
        }
        let now = crate::clock::now_ms();
        let any_sync = publishes.iter().any(|p| p.sync);
        for p in &publishes {
            n += 1;
            let keys = relay.keys(&p.channel);
            let payload = streams::encode_payload(p, now);
            let s = Sequence {
                keys: &keys,
                epoch_seed: relay.epoch(&p.channel, n),
                keep: p.keep,
                payload: &payload,
                key: p.key.as_deref().map(|k| (k, relay.dedupe_ms)),
                ttl_ms: p.ttl_ms,
            };
            cmds.push((sequencer.cmd(s), true));
        }
        let publish = sequencer.publish_cmd();
        for p in &user_pushes {
            let topic = relay.keys(&format!("{}:{}", relay.personal, p.user)).topic;
            let mut c = redis::cmd(publish);
            c.arg(topic).arg(pushes::encode(&relay.state.node_id, p));
            cmds.push((c, false));
        }
        if !spent.is_empty() {
            // Classic pub/sub: every node hears it.
            let mut c = redis::cmd("PUBLISH");
            c.arg(super::spent::topic(&relay.prefix))
                .arg(super::spent::encode(&relay.state.node_id, &spent));
            cmds.push((c, false));
        }
        for (node, letter) in &mail {
            let mut c = redis::cmd(publish);
            c.arg(super::mail::topic(&relay.prefix, node)).arg(letter);
            cmds.push((c, false));
        }
        for p in &channel_pushes {
            let mut c = redis::cmd(publish);
            c.arg(relay.keys(&p.channel).topic)
                .arg(union::encode_push(&relay.state.node_id, &p.frames));
            cmds.push((c, false));
        }
        if !presence.is_empty() {
            let mut restated = relay.restated.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(stated) = restated.as_mut() {
                for op in &presence {
                    if op.view.is_some() {
                        stated.insert((op.channel.clone(), op.user.clone()));
                    }
                }
            }
        }
        for op in &presence {
            cmds.extend(relay.union.cmds(
                &relay.state.node_id,
                &op.channel,
                &op.user,
                op.view.as_deref(),
                &op.status,
                now,
                conn.sharded(),
            ));
        }
        for m in &marks {
            let keys = relay.keys(&m.channel);
            cmds.push((
                relay.marks.cmd(
                    &keys.marks,
                    &keys.topic,
                    m,
                    &relay.state.node_id,
                    conn.sharded(),
                ),
                false,
            ));
        }
        for r in &sio_put {
            let mut value = format!("{}:{}\n", r.home, r.closed_ms).into_bytes();
            value.extend_from_slice(&r.body);
            let mut c = redis::cmd("SET");
            c.arg(relay.sio_key(r.pid))
                .arg(value)
                .arg("PX")
                .arg(relay.sio_recovery_ms.max(1));
            cmds.push((c, false));
        }
        for pid in &sio_del {
            let mut c = redis::cmd("DEL");
            c.arg(relay.sio_key(*pid));
            cmds.push((c, false));
        }
        // WAIT covers the connection's writes: one server only (on a Redis Cluster,
        // `sync` relies on each master's AOF; see DELIVERY.md).
        let wait = any_sync && relay.sync_replicas > 0 && !conn.sharded();
        if wait {
            let mut c = redis::cmd("WAIT");
            c.arg(relay.sync_replicas).arg(relay.sync_timeout_ms);
            cmds.push((c, true));
        }
        let mut answer = conn.batch(cmds.clone()).await;
        if matches!(&answer, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // The scripts were flushed: load them again, once.
            if relay.union.load(&mut conn).await.is_ok()
                && relay.marks.load(&mut conn).await.is_ok()
                && sequencer.load(&mut conn).await.is_ok()
            {
                answer = conn.batch(cmds).await;
            }
        }
        match answer {
            Ok(mut values) => {
                if !publishes.is_empty() {
                    relay.state.pipelines.fetch_add(1, Ordering::Relaxed);
                }
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
                let mut stored = Vec::new();
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
                    if let (Ok((position, false)), true, Some(_)) =
                        (&result, p.stored, &relay.journal)
                    {
                        stored.push(record_of(&p, *position));
                    }
                    if let (Ok((position, false)), Some(tap), None) =
                        (&result, &relay.ai, p.revises)
                    {
                        let (from, author) = (p.from.as_ref(), p.author.as_ref());
                        let meta = p.meta.as_ref();
                        tap.after_shared(
                            &p.channel, *position, &p.data, p.format, meta, from, author, p.created,
                        );
                    }
                    relay.answer(p.reply, result).await;
                }
                if let (false, Some(journal)) = (stored.is_empty(), &relay.journal) {
                    let batch = Batch {
                        shard: 0,
                        seq: 0,
                        notify: false,
                        records: stored,
                        marks: Vec::new(),
                        sessions: Vec::new(),
                    };
                    if journal.send(batch).is_err() {
                        tracing::warn!("shared channels: the store has stopped; not stored");
                    }
                }
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                broken = true;
                relay.state.redis_errors.fetch_add(1, Ordering::Relaxed);
                let _ = fail.try_send(());
                hand_back(&relay, moves, publishes).await;
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

/// A shared publication Redis sequenced at `position`, as the store keeps it.
fn record_of(p: &SharedPublish, position: Position) -> Record {
    Record {
        channel: p.channel.clone(),
        epoch: position.epoch,
        offset: position.offset,
        format: p.format,
        data: p.data.clone(),
        meta: p.meta.clone(),
        key: p.key.clone(),
        from: p.from.clone(),
        author: p.author.clone(),
        event: p.event.clone(),
        revises: p.revises,
        keep: p.keep,
    }
}
