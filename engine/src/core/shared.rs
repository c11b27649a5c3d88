//! Shared channels: a channel's stream when nodes share Redis (see [`crate::cluster`]).
//!
//! Every channel is shared, a user's personal channel too: a node receives it while
//! the user has a connection there (each shard tells the channel's owner when the
//! user's first connection arrives and its last one leaves).
//!
//! Owns, on each channel's owner shard, what the node knows of the channel's
//! cluster-wide stream: whether this node has subscribers (and so receives the
//! channel's records from Redis), whether the local stream mirrors Redis's (`Live`),
//! the records and stream questions held while it is being read (hold-then-answer: a
//! subscriber's position always comes from Redis's stream, so nothing published after
//! the answer can miss it), and which channels were published on this node alone
//! while Redis was away (their epoch moves when it is back, so subscribers see the
//! gap). Delivering a record is the owner's usual fan-out: encoded once per format,
//! one message per other shard.
//!
//! Does not own Redis, the cluster thread, or sequencing a channel alone
//! ([`super::publish`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::{ErrorCode, Format, Payload, Position, Revision, EVERY_FORMAT};

use super::ShardCore;
use crate::cluster::{ClusterBatch, ClusterLink, ClusterMsg, LinkReq, RemoteRecord, SharedPublish};
use crate::journal::{Durability, SeedEntry, SeedStream};
use crate::mesh::{EncodedFrames, PublishReply, Refused, ShardMsg, StreamQuery, StreamReply};
use crate::streams::Entry;

/// Most live records held for one channel while its stream is read.
const HOLD_LIMIT: usize = 4096;

/// See [`ShardCore::shared_ttl_ms`].
fn stream_ttl_ms(
    streams: &crate::streams::Streams,
    cfg: &crate::config::EngineConfig,
    channel: &str,
) -> u64 {
    let policies = streams.policies();
    let ttl_ticks = u64::from(policies.get(policies.resolve(channel)).ttl);
    let history = ttl_ticks.saturating_mul(cfg.tick_ms);
    cfg.stream_idle_ms
        .max(history.min(u64::from(u32::MAX) * 1000))
}

/// A publication's sender, event and reply, given back to be sequenced here.
pub(super) type GivenBack = (Option<Arc<str>>, Option<Arc<str>>, PublishReply);

/// Whether the local stream mirrors Redis's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mirror {
    /// Not read (or Redis is away).
    #[default]
    Off,
    /// Asked for; records and questions are held.
    Linking,
    /// Read, and kept current by its records.
    Live,
}

/// One shared channel this shard owns, as the node sees it.
#[derive(Debug, Default)]
struct SharedChannel {
    /// This node has subscribers: Redis sends it the channel's records.
    subscribed: bool,
    mirror: Mirror,
    /// Was live before: a later read delivers what this node missed.
    was_live: bool,
    /// Records that arrived while the stream was read.
    held: Vec<RemoteRecord>,
    /// Stream questions waiting for the read.
    waiting: Vec<StreamQuery>,
    /// Published here while Redis was away: its epoch moves when Redis is back.
    forked: bool,
}

impl SharedChannel {
    fn idle(&self) -> bool {
        !self.subscribed && !self.forked && self.waiting.is_empty()
    }
}

/// The owner's side of shared channels.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) link: Option<ClusterLink>,
    /// Redis is reachable (as the cluster thread last said).
    pub(super) up: bool,
    /// Link generation of `up`.
    gen: u64,
    chans: HashMap<Arc<str>, SharedChannel>,
    /// This turn's batch for the cluster thread.
    pub(super) out: ClusterBatch,
}

impl Shared {
    /// Optimistic at start: publications and reads queue for the link, which says
    /// `Down` at once if its first attempt fails.
    pub(super) fn new(link: Option<ClusterLink>) -> Shared {
        Shared {
            up: link.is_some(),
            link,
            ..Default::default()
        }
    }
}

impl ShardCore {
    /// Whether `channel` is shared with the other nodes (every channel, when nodes
    /// share Redis).
    #[inline]
    pub(super) fn shares(&self, _channel: &str) -> bool {
        self.shared.link.is_some()
    }

    /// A user's first connection on this shard arrived, or its last one left: the
    /// owner of the user's personal channel learns whether this shard wants its
    /// records (a node receives a personal channel while the user is connected to it).
    pub(super) fn user_interest(&mut self, user: &str, here: bool) {
        if self.shared.link.is_none() || self.cfg.personal_namespace.is_empty() {
            return;
        }
        let channel: Arc<str> = format!("{}:{user}", self.cfg.personal_namespace).into();
        let owner = self.mesh.home(&channel, self.id);
        if owner == self.id {
            return self.shared_interest(&channel);
        }
        let msg = ShardMsg::Interest {
            channel,
            from: self.id,
            formats: if here { EVERY_FORMAT } else { 0 },
            ack: false,
        };
        self.send_to(owner, msg);
    }

    /// How long Redis keeps `channel`'s stream after its last use, ms: the longer of
    /// `engine.stream_idle_ms` and the namespace's history age limit (an idle stream
    /// is forgotten, as on one node: the next publication starts a new epoch).
    pub(super) fn shared_ttl_ms(&self, channel: &str) -> u64 {
        stream_ttl_ms(&self.streams, &self.cfg, channel)
    }

    /// On the owner: hand a publication of a shared channel to Redis (when it is up);
    /// given back when this shard must sequence it itself (Redis away).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_shared(
        &mut self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        created: Instant,
        key: Option<&str>,
        from: Option<Arc<str>>,
        event: Option<Arc<str>>,
        (author, revises): (&Option<Arc<str>>, Option<Revision>),
        reply: PublishReply,
    ) -> Option<GivenBack> {
        let policies = self.streams.policies();
        let policy = *policies.get(policies.resolve(channel));
        let sync = policy.durability == Durability::Sync;
        if !self.shared.up {
            if sync {
                let refused = Refused {
                    code: ErrorCode::Unavailable,
                    message: "Redis is unreachable: a sync publication cannot be stored; retry"
                        .into(),
                };
                self.answer_publish(reply, Err(refused));
                return None;
            }
            // Served on this node alone; its epoch moves when Redis is back.
            if let Some(link) = &self.shared.link {
                link.stats().local_only.fetch_add(1, Ordering::Relaxed);
            }
            let name = self.audience_name(channel);
            self.shared.chans.entry(name).or_default().forked = true;
            return Some((from, event, reply));
        }
        let name = self.audience_name(channel);
        self.shared.out.publishes.push(SharedPublish {
            channel: name,
            data: Bytes::copy_from_slice(data.raw),
            meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
            format: data.format,
            from,
            event,
            author: author.clone(),
            revises,
            key: key.map(Box::from),
            keep: policy.keep.min(u32::MAX as usize) as u32,
            ttl_ms: self.shared_ttl_ms(channel),
            sync,
            stored: policy.durability != Durability::None,
            created,
            reply,
        });
        None
    }

    /// On the owner: whether the node has subscribers of `channel` changed? Subscribe
    /// to (or leave) its records in Redis.
    pub(super) fn shared_interest(&mut self, channel: &Arc<str>) {
        if !self.shares(channel) || self.mesh.home(channel, self.id) != self.id {
            return;
        }
        let wanted = self.channels.local(channel).is_some()
            || self.channels.remote(channel).iter().any(|&s| s != 0)
            || self
                .personal_user(channel)
                .is_some_and(|u| self.users.conns.contains_key(u));
        let up = self.shared.up;
        let c = self.shared.chans.entry(channel.clone()).or_default();
        if wanted == c.subscribed {
            return;
        }
        c.subscribed = wanted;
        if wanted {
            if up {
                c.mirror = Mirror::Linking;
                let ttl_ms = self.shared_ttl_ms(channel);
                self.shared.out.links.push(LinkReq {
                    channel: channel.clone(),
                    subscribe: true,
                    ttl_ms,
                });
            }
        } else {
            if c.mirror == Mirror::Live {
                c.mirror = Mirror::Off;
            }
            c.held.clear();
            if up {
                self.shared.out.unlinks.push(channel.clone());
            }
            if c.idle() {
                self.shared.chans.remove(channel);
            }
        }
    }

    /// On the owner: hold a stream question about a shared channel until its stream is
    /// read from Redis; given back when it can be answered now.
    pub(super) fn park(&mut self, q: StreamQuery) -> Option<StreamQuery> {
        if !self.shared.up || !self.shares(&q.channel) {
            return Some(q);
        }
        let known = self.streams.current(&q.channel).is_some();
        let ttl_ms = self.shared_ttl_ms(&q.channel);
        let c = self.shared.chans.entry(q.channel.clone()).or_default();
        if c.mirror == Mirror::Live && known {
            return Some(q);
        }
        if c.mirror != Mirror::Linking {
            c.mirror = Mirror::Linking;
            self.shared.out.links.push(LinkReq {
                channel: q.channel.clone(),
                subscribe: c.subscribed,
                ttl_ms,
            });
        }
        c.waiting.push(q);
        None
    }

    /// A message from the cluster thread.
    pub(super) fn on_cluster(&mut self, msg: ClusterMsg) {
        match msg {
            ClusterMsg::Up { gen } => self.cluster_up(gen),
            ClusterMsg::Down { gen } => self.cluster_down(gen),
            ClusterMsg::Linked {
                channel,
                gen,
                subscribed,
                top,
                records,
                marks,
            } => {
                if gen == self.shared.gen && self.shared.up {
                    for m in marks {
                        self.marks.seed(m);
                    }
                }
                self.linked(channel, gen, subscribed, top, records)
            }
            ClusterMsg::LinkFailed { channel } => {
                let waiting = match self.shared.chans.get_mut(&channel) {
                    Some(c) => {
                        c.mirror = Mirror::Off;
                        c.held.clear();
                        std::mem::take(&mut c.waiting)
                    }
                    None => Vec::new(),
                };
                for q in waiting {
                    self.answer_query(q);
                }
                if self.shared.chans.get(&channel).is_some_and(|c| c.idle()) {
                    self.shared.chans.remove(&channel);
                }
            }
            ClusterMsg::Record { channel, record } => self.on_record(channel, record),
            ClusterMsg::Presence { channel, event } => self.push_presence(&channel, &event),
            ClusterMsg::Push(p) => self.remote_push(p),
            ClusterMsg::Mark(m) => self.remote_mark(m),
            ClusterMsg::SioRecord { ask, record } => self.sio_record_from_cluster(ask, record),
            ClusterMsg::Spent(list) => self.charge_spent(list),
            ClusterMsg::Fallback(p) => {
                let SharedPublish {
                    channel,
                    data,
                    meta,
                    format,
                    from,
                    event,
                    author,
                    revises,
                    key,
                    created,
                    reply,
                    ..
                } = p;
                // The link failed with it in flight (`Down` follows, and no `Up` comes
                // before this): sequenced here.
                self.shared.up = false;
                self.sequence_request(crate::mesh::SequenceReq {
                    channel,
                    data,
                    format,
                    created,
                    key,
                    meta,
                    from,
                    author,
                    event,
                    // Checked before it was handed to Redis.
                    revision: revises.map(|revises| crate::publications::RevisionReq {
                        revises,
                        epoch: None,
                        moderator: false,
                        checked: true,
                    }),
                    reply,
                    // Past the AI gate before it was handed to Redis.
                    screened: true,
                });
            }
        }
    }

    fn cluster_up(&mut self, gen: u64) {
        self.shared.up = true;
        self.shared.gen = gen;
        let out = &mut self.shared.out;
        let (streams, cfg) = (&self.streams, &self.cfg);
        for (name, c) in self.shared.chans.iter_mut() {
            if c.forked {
                c.forked = false;
                out.moves.push(name.clone());
            }
            if c.subscribed || !c.waiting.is_empty() {
                c.mirror = Mirror::Linking;
                out.links.push(LinkReq {
                    channel: name.clone(),
                    subscribe: c.subscribed,
                    ttl_ms: stream_ttl_ms(streams, cfg, name),
                });
            } else {
                c.mirror = Mirror::Off;
            }
        }
        self.shared.chans.retain(|_, c| !c.idle());
        self.restate_presence();
    }

    fn cluster_down(&mut self, gen: u64) {
        if gen < self.shared.gen {
            return;
        }
        self.shared.up = false;
        let mut waiting = Vec::new();
        for c in self.shared.chans.values_mut() {
            c.mirror = Mirror::Off;
            c.held.clear();
            waiting.append(&mut c.waiting);
        }
        // Answered from what this node holds: the best it can do alone.
        for q in waiting {
            self.answer_query(q);
        }
    }

    fn linked(
        &mut self,
        channel: Arc<str>,
        gen: u64,
        subscribed: bool,
        top: Option<Position>,
        records: Vec<RemoteRecord>,
    ) {
        if gen != self.shared.gen || !self.shared.up {
            return;
        }
        let Some(c) = self.shared.chans.get_mut(&channel) else {
            return;
        };
        if c.subscribed && !subscribed {
            // A one-off read overtaken by a subscription: that link answers.
            return;
        }
        let was_live = c.was_live && self.streams.current(&channel).is_some();
        let held = std::mem::take(&mut c.held);
        let waiting = std::mem::take(&mut c.waiting);
        c.mirror = if subscribed {
            Mirror::Live
        } else {
            Mirror::Off
        };
        c.was_live |= subscribed;
        if was_live {
            // Catch up: what Redis kept beyond what this node delivered, in order (a
            // jump in offsets, or a new epoch, is what subscribers see of the rest).
            for r in records {
                self.deliver_record(&channel, r, true);
            }
            if let Some(top) = top {
                self.streams.advance_to(&channel, top, self.tick);
            }
        } else {
            let now_ms = self.clock.unix_ms;
            let top = top.unwrap_or(Position {
                epoch: self.streams.touch(&channel, self.tick).epoch,
                offset: 0,
            });
            let entries = records
                .into_iter()
                .filter(|r| r.position.epoch == top.epoch)
                .map(|r| SeedEntry {
                    offset: r.position.offset,
                    age_ms: now_ms.saturating_sub(r.sent_ms),
                    format: r.format,
                    data: r.data,
                    meta: r.meta,
                    key: None,
                    from: r.from.map(|f| Box::from(&*f)),
                    author: None,
                    event: r.event.map(|e| Box::from(&*e)),
                    revises: None,
                    revised: None,
                })
                .collect();
            let seed = SeedStream {
                channel: channel.clone(),
                epoch: Some(top.epoch),
                offset: top.offset,
                entries,
                dormant: false,
            };
            self.streams.seed(seed, self.tick, self.cfg.tick_ms);
        }
        for r in held {
            self.on_record(channel.clone(), r);
        }
        for q in waiting {
            self.answer_query(q);
        }
        if self.shared.chans.get(&channel).is_some_and(|c| c.idle()) {
            // A one-off read (a history question): nothing to keep.
            self.shared.chans.remove(&channel);
        }
    }

    /// A live record: delivered if it is the next of the stream, dropped if already
    /// delivered; a gap or a new epoch has the stream read again (records held).
    fn on_record(&mut self, channel: Arc<str>, record: RemoteRecord) {
        let up = self.shared.up;
        let top = self.streams.current(&channel);
        let Some(c) = self.shared.chans.get_mut(&channel) else {
            return;
        };
        if !c.subscribed || !up {
            return;
        }
        match c.mirror {
            Mirror::Linking => {
                if c.held.len() < HOLD_LIMIT {
                    c.held.push(record);
                }
                return;
            }
            Mirror::Off => {}
            Mirror::Live => match top {
                Some(t) if t.epoch == record.position.epoch => {
                    if record.position.offset <= t.offset {
                        return;
                    }
                    if record.position.offset == t.offset + 1 {
                        return self.deliver_record(&channel, record, false);
                    }
                }
                _ => {}
            },
        }
        // A gap, a new epoch or a forgotten stream: read it again.
        if let Some(link) = &self.shared.link {
            link.stats().relinks.fetch_add(1, Ordering::Relaxed);
        }
        c.mirror = Mirror::Linking;
        c.held.push(record);
        let ttl_ms = self.shared_ttl_ms(&channel);
        self.shared.out.links.push(LinkReq {
            channel,
            subscribe: true,
            ttl_ms,
        });
    }

    /// Deliver a record Redis sequenced: kept in the local stream, encoded once per
    /// format this node's subscribers need, fanned out. With `catch_up`, any record
    /// beyond the local stream's position is taken (a jump or a new epoch).
    fn deliver_record(&mut self, channel: &Arc<str>, r: RemoteRecord, catch_up: bool) {
        let pos = r.position;
        if let Some(t) = self.streams.current(channel) {
            if t.epoch == pos.epoch && pos.offset <= t.offset {
                return;
            }
        }
        if catch_up {
            let before = Position {
                epoch: pos.epoch,
                offset: pos.offset - 1,
            };
            self.streams.advance_to(channel, before, self.tick);
        }
        let (position, pi) = self.streams.next_in(channel, self.tick);
        debug_assert_eq!(position, pos);
        if let Some(link) = &self.shared.link {
            link.stats().records.fetch_add(1, Ordering::Relaxed);
        }
        let policy = *self.streams.policies().get(pi);
        let (local, remote, needed) = self.audience(channel);
        let mut frames = EncodedFrames::default();
        for f in Format::ALL {
            if needed & (1 << f.index()) == 0 {
                continue;
            }
            let data = Payload {
                format: r.format,
                raw: &r.data,
            };
            let meta = r.meta.as_ref().map(|m| Payload {
                format: r.format,
                raw: m,
            });
            let (from, event) = (r.from.as_deref(), r.event.as_deref());
            match self.encode_for(f, channel, pos, from, meta, data, event, r.revises) {
                Ok(frame) => frames[f.index()] = Some(frame),
                Err(e) => tracing::warn!(
                    channel = &**channel,
                    offset = pos.offset,
                    "a publication from another node does not transcode: {e}"
                ),
            }
        }
        let entry = Entry {
            offset: pos.offset,
            tick: self.tick,
            data: r.data,
            meta: r.meta,
            format: r.format,
            from: r.from,
            author: r.author,
            event: r.event,
            revises: r.revises,
            revised: None,
        };
        self.apply_revision(channel, &entry);
        if policy.keep > 0 {
            self.streams.retain(channel, entry, policy.keep, policy.ttl);
        } else {
            self.streams.show(channel, pos.offset);
        }
        if needed != 0 {
            let created = self.clock.mono;
            self.fan_out(channel.clone(), pos, frames, created, local, remote);
        }
    }

    /// Answer a stream question on the owner: to a connection here, another shard or
    /// the server API.
    pub(super) fn answer_query(&mut self, mut q: StreamQuery) {
        let shard = q.shard;
        let Some(reply) = self.answer(&mut q) else {
            return;
        };
        let api = q.api.take();
        self.route_reply(shard, api, reply)
    }

    /// Send a stream answer to the server API's request or the asking shard.
    pub(super) fn route_reply(
        &mut self,
        shard: u16,
        api: Option<tokio::sync::oneshot::Sender<StreamReply>>,
        reply: StreamReply,
    ) {
        match api {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None if shard == self.id => self.on_stream_reply(reply),
            None => self.send_to(shard, ShardMsg::StreamReply(Box::new(reply))),
        }
    }

    /// End of turn: hand this turn's batch to the cluster thread. A full queue refuses
    /// the publications (`Overloaded`) and keeps the rest for the next turn.
    pub(super) fn flush_shared(&mut self) {
        let Some(link) = &self.shared.link else {
            return;
        };
        let mut batch = std::mem::take(&mut self.shared.out);
        batch.shard = self.id;
        if let Err(mut back) = link.send(batch) {
            for p in back.publishes.drain(..) {
                let refused = Refused {
                    code: ErrorCode::Overloaded,
                    message: "the cluster link is behind; retry".into(),
                };
                self.answer_publish(p.reply, Err(refused));
            }
            self.shared.out = *back;
        }
    }

    /// Whether the cluster thread has something to take this turn.
    #[inline]
    pub(super) fn shared_pending(&self) -> bool {
        !self.shared.out.is_empty()
    }
}
