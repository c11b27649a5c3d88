//! Fan-out: one encoded publication to every subscriber.
//!
//! Owns who a channel's publications go to (local formats, other shards), delivering
//! a frame to every local subscriber (a refcount bump each), ephemeral pushes that
//! backpressure drops first, and slow consumers. Does not own sequencing
//! ([`super::publish`]) or sockets.

use std::sync::Arc;
use std::time::Instant;

use switchboard_protocol::envelope;
use switchboard_protocol::{CloseCode, Format, Position, EVERY_FORMAT, FORMATS};

use super::conn::{mark_dirty, UserConns};
use super::{ShardCore, LATENCY_SAMPLES_PER_TURN};
use crate::mesh::{EncodedFrames, Publication, ShardMsg};
use crate::metrics::{CloseKind, ShardMetrics};

impl ShardCore {
    /// Who receives `channel`'s publications: the formats of this shard's subscribers
    /// (a bit per `Format::index()`), the other shards with subscribers per format, and
    /// the formats to encode. A personal channel goes to every shard in both formats
    /// (other shards do not announce interest in personal channels: a user's
    /// connections come and go too often for that to pay), and here to the user's
    /// connections.
    ///
    /// Hot path: one lookup for a channel, two for a personal one.
    #[inline]
    pub(super) fn audience(&self, channel: &str) -> (u8, [u64; FORMATS], u8) {
        if let Some(user) = self.personal_user(channel) {
            let local = self.users.conns.get(user).map_or(0, |u| self.formats_of(u));
            let others = self.all_shards & !(1u64 << self.id);
            let remote = [others; FORMATS];
            let needed = local | if others != 0 { EVERY_FORMAT } else { 0 };
            return (local, remote, needed);
        }
        let local = self.channels.local(channel).map_or(0, |e| e.formats());
        let remote = self.channels.remote(channel);
        let mut needed = local;
        for (i, &shards) in remote.iter().enumerate() {
            needed |= ((shards != 0) as u8) << i;
        }
        (local, remote, needed)
    }

    /// The shared name of a channel with an audience (subscribers, or a stream).
    pub(super) fn audience_name(&self, channel: &str) -> Arc<str> {
        self.channels
            .name(channel)
            .or_else(|| self.streams.name(channel))
            .unwrap_or_else(|| Arc::from(channel))
    }

    /// The formats of a user's connections here.
    pub(super) fn formats_of(&self, u: &UserConns) -> u8 {
        u.slots().iter().fold(0, |acc, &slot| {
            acc | self
                .conns
                .get(slot as usize)
                .map_or(0, |c| 1 << c.format.index())
        })
    }

    /// Deliver locally and send one message to each other shard with subscribers.
    pub(super) fn fan_out(
        &mut self,
        channel: Arc<str>,
        position: Position,
        frames: EncodedFrames,
        created: Instant,
        local: u8,
        remote: [u64; FORMATS],
    ) {
        let publication = Arc::new(Publication {
            channel,
            position,
            frames,
            created,
            droppable: false,
        });
        self.fan_out_publication(publication, local, remote);
    }

    /// Deliver a built publication locally and to the other shards in `remote`.
    pub(super) fn fan_out_publication(
        &mut self,
        publication: Arc<Publication>,
        local: u8,
        remote: [u64; FORMATS],
    ) {
        if local != 0 {
            self.deliver(&publication);
        }
        let mut targets = remote.iter().fold(0, |all, shards| all | shards);
        while targets != 0 {
            let shard = targets.trailing_zeros() as u16;
            targets &= targets - 1;
            self.send_to(shard, ShardMsg::Publish(publication.clone()));
        }
    }

    /// Queue a publication's frame on every local subscriber (a refcount bump each).
    ///
    /// Hot path: no allocation, no lock, no syscall; a subscriber whose queue is full
    /// is disconnected as a slow consumer afterwards.
    pub fn deliver(&mut self, p: &Publication) {
        if self.recovery.is_some() {
            self.log_delivery(p);
        }
        if let Some(user) = self.personal_user(&p.channel) {
            return self.deliver_to_user(user, p);
        }
        let Some(entry) = self.channels.local(&p.channel) else {
            return;
        };
        if p.droppable {
            return self.deliver_droppable(p);
        }
        let limit = self.cfg.max_outbound_bytes;
        let mut delivered = 0u64;
        // Subscribers whose subscribe awaits the owner's answer get nothing yet (the
        // answer covers it). Looked up once per publication, and only when some
        // subscription on this shard is starting, to keep the per-subscriber loop as
        // it was.
        let holding: &[u32] = if self.joining.starting.is_empty() {
            &[]
        } else {
            self.joining
                .starting
                .get(&p.channel)
                .map_or(&[], |v| &v[..])
        };
        for &slot in entry.subscribers.iter() {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            let Some(frame) = &p.frames[conn.format.index()] else {
                continue;
            };
            if !holding.is_empty() && holding.contains(&slot) {
                continue;
            }
            if conn.out.push(frame.clone(), limit).is_err() {
                self.overflowed.push(slot);
                continue;
            }
            delivered += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(slot);
            }
        }
        ShardMetrics::add(&self.metrics.deliveries, delivered);
        if self.latency.len() < LATENCY_SAMPLES_PER_TURN {
            self.latency.push(p.created);
        }
        while let Some(slot) = self.overflowed.pop() {
            self.slow_consumer(slot);
        }
    }

    /// An ephemeral push (typing): queued only on subscribers whose queue is under half
    /// its limit; the others skip it rather than being closed as slow consumers, so it
    /// is what backpressure drops first. Not counted in delivery latency.
    pub(super) fn deliver_droppable(&mut self, p: &Publication) {
        let Some(entry) = self.channels.local(&p.channel) else {
            return;
        };
        let limit = self.cfg.max_outbound_bytes / 2;
        let holding: &[u32] = self
            .joining
            .starting
            .get(&p.channel)
            .map_or(&[], |v| &v[..]);
        let mut delivered = 0;
        for &slot in entry.subscribers.iter() {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            let Some(frame) = &p.frames[conn.format.index()] else {
                continue;
            };
            if holding.contains(&slot) || conn.out.push(frame.clone(), limit).is_err() {
                ShardMetrics::add(&self.metrics.ephemeral_dropped, 1);
                continue;
            }
            delivered += 1;
            mark_dirty(conn, slot, &mut self.dirty);
        }
        ShardMetrics::add(&self.metrics.deliveries, delivered);
    }

    /// A personal channel's publication: to every connection of the user here.
    pub(super) fn deliver_to_user(&mut self, user: &str, p: &Publication) {
        let Some(u) = self.users.conns.get(user) else {
            return;
        };
        let limit = self.cfg.max_outbound_bytes;
        let mut delivered = 0;
        for &slot in u.slots() {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            let Some(frame) = &p.frames[conn.format.index()] else {
                continue;
            };
            if conn.out.push(frame.clone(), limit).is_err() {
                self.overflowed.push(slot);
                continue;
            }
            delivered += 1;
            mark_dirty(conn, slot, &mut self.dirty);
        }
        ShardMetrics::add(&self.metrics.deliveries, delivered);
        while let Some(slot) = self.overflowed.pop() {
            self.slow_consumer(slot);
        }
    }

    pub(super) fn slow_consumer(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            // What was queued is dropped (but a frame partly written is finished, so the
            // close that follows is readable); the client is told and may reconnect.
            conn.out.discard_unstarted();
        }
        self.begin_close(
            slot,
            CloseCode::SLOW_CONSUMER,
            "slow consumer",
            CloseKind::SlowConsumer,
        );
    }
}

/// A push encoded once for each format in `needed` (a bit per `Format::index()`).
pub(super) fn push_frames<T: serde::Serialize>(needed: u8, push: &T) -> EncodedFrames {
    let mut frames = EncodedFrames::default();
    for f in Format::ALL {
        if needed & (1 << f.index()) != 0 {
            frames[f.index()] = Some(envelope::encode_push(f, push));
        }
    }
    frames
}
