//! Publications on the owner shard: positions, durability and publish replies.
//!
//! Owns routing a publication to its channel's owner, sequencing (idempotency keys,
//! encode once per needed format), handing durable publications to the store and
//! releasing `sync` ones when committed, and answering the publisher. Does not own
//! delivery ([`super::fanout`]) or the store (control plane).

use crate::journal::{JournalLink, MarkRecord, SessionRecord};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::envelope;
use switchboard_protocol::{Error as WireError, ErrorCode, Format, Payload, Position, Revision};

use super::ai::Incoming;
use super::conn::{ConnKey, ConnState};
use super::{ms_to_ticks, ShardCore, SPILL_LIMIT};
use crate::access::Action;
use crate::clock::Now;
use crate::journal::{Batch, Durability, Record, Refusal as JournalRefusal};
use crate::mesh::{EncodedFrames, PublishReply, Refused, SequenceReq, Sequenced, ShardMsg};
use crate::metrics::{CommandKind, ShardMetrics};
use crate::streams::Entry;

/// A `sync` publication sequenced and handed to the store, not yet released.
#[derive(Debug)]
pub(super) struct Pending {
    /// The journal batch it went in.
    pub(super) batch: u64,
    pub(super) channel: Arc<str>,
    pub(super) position: Position,
    pub(super) entry: Entry,
    /// Frames encoded when it was sequenced (formats needed then).
    pub(super) frames: EncodedFrames,
    pub(super) created: Instant,
    pub(super) reply: PublishReply,
    /// Retries with its idempotency key that arrived while it waited.
    pub(super) retries: Vec<PublishReply>,
}

/// Publications and marks on their way to the store, and `sync` publications waiting
/// for it.
#[derive(Debug)]
pub(super) struct StoreQueue {
    /// The store's link (when one is attached).
    pub(super) link: Option<JournalLink>,
    /// This turn's publications for the store.
    pub(super) records: Vec<Record>,
    /// This turn's cursor and receipt changes for the store.
    pub(super) marks: Vec<MarkRecord>,
    /// Socket.IO sessions left recoverable by a shutdown, for the store.
    pub(super) sessions: Vec<SessionRecord>,
    /// Number of the batch `records` becomes.
    pub(super) seq: u64,
    /// A `sync` publication waits for the batch being filled.
    pub(super) notify: bool,
    /// `sync` publications waiting for the store, in sequencing order.
    pub(super) pending: VecDeque<Pending>,
}

impl StoreQueue {
    pub(super) fn new(link: Option<JournalLink>) -> StoreQueue {
        StoreQueue {
            link,
            records: Vec::new(),
            marks: Vec::new(),
            sessions: Vec::new(),
            seq: 0,
            notify: false,
            pending: VecDeque::new(),
        }
    }
}

impl ShardCore {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_from(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        quiet: bool,
    ) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Publish) {
            return self.reply_err(slot, id, code, why);
        }
        self.route_publish(slot, id, channel, data, meta, key, None, quiet);
    }

    /// Hand a connection's checked publication to the channel's owner (this shard or
    /// another), which answers its `publish` with the position (`quiet`: only with a
    /// refusal).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_publish(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        from: Option<Arc<str>>,
        quiet: bool,
    ) {
        if self.links.spill.len() >= SPILL_LIMIT {
            return self.reply_err(slot, id, ErrorCode::Overloaded, "server overloaded, retry");
        }
        ShardMetrics::add(&self.metrics.publications, 1);
        let owner = self.mesh.home(channel, self.id);
        let reply = PublishReply::Client {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            quiet,
        };
        let author = self.conns[slot as usize]
            .identity
            .as_ref()
            .map(|i| i.user.clone());
        if owner == self.id {
            let created = self.clock.mono;
            return self.sequence(
                channel, data, meta, created, key, from, author, None, None, reply, false,
            );
        }
        // Another shard owns the channel's stream: it sequences, fans out and tells us
        // the position to answer with.
        let req =
            SequenceReq::new(channel, data, meta, key, from, reply, self.clock.mono).by(author);
        self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
    }

    /// Publish `data` to `channel`: sequenced here if this shard owns the channel,
    /// otherwise handed to the owner (nobody waits for the position then).
    pub fn publish(&mut self, channel: &str, data: Payload<'_>, now: Now) -> Result<(), WireError> {
        self.clock = now;
        // The edge check (see `Payload::validate`): refused here, never at a later read.
        data.validate()
            .map_err(|fault| WireError::Envelope(fault.message().into()))?;
        let owner = self.mesh.home(channel, self.id);
        if owner == self.id {
            self.sequence(
                channel,
                data,
                None,
                self.clock.mono,
                None,
                None,
                None,
                None,
                None,
                PublishReply::None,
                true,
            );
            return Ok(());
        }
        let req = SequenceReq::new(
            channel,
            data,
            None,
            None,
            None,
            PublishReply::None,
            now.mono,
        )
        .screened();
        self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
        Ok(())
    }

    /// Publish `data` to `channel` named `event` for Socket.IO subscribers (a backend
    /// hook's emit to a room or user): sequenced here or by the owner, nobody waits.
    pub(super) fn publish_named(
        &mut self,
        channel: &str,
        data: Payload<'_>,
        event: Arc<str>,
    ) -> Result<(), WireError> {
        data.validate()
            .map_err(|fault| WireError::Envelope(fault.message().into()))?;
        let owner = self.mesh.home(channel, self.id);
        let created = self.clock.mono;
        if owner == self.id {
            self.sequence(
                channel,
                data,
                None,
                created,
                None,
                None,
                None,
                Some(event),
                None,
                PublishReply::None,
                true,
            );
            return Ok(());
        }
        let req = SequenceReq::new(channel, data, None, None, None, PublishReply::None, created)
            .with_event(Some(event))
            .screened();
        self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
        Ok(())
    }

    /// On the channel's owner shard: give the publication the channel's next position,
    /// encode it once per format someone needs, deliver locally, send one message to
    /// each other shard with subscribers, and answer `reply`.
    ///
    /// By the channel's namespace policy: `none` stops there; `async` also hands the
    /// publication to the store (this turn's batch); `sync` hands it to the store and
    /// waits, in `pending`, for [`ShardMsg::Committed`] before it is released to
    /// subscribers, history and the publisher.
    ///
    /// Hot path: one stream lookup; one copy of the payload when it is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn sequence(
        &mut self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        created: Instant,
        key: Option<&str>,
        from: Option<Arc<str>>,
        author: Option<Arc<str>>,
        event: Option<Arc<str>>,
        revises: Option<Revision>,
        reply: PublishReply,
        screened: bool,
    ) {
        debug_assert_eq!(self.mesh.home(channel, self.id), self.id);
        let reply = if screened || revises.is_some() {
            reply
        } else {
            let incoming = Incoming {
                channel,
                data,
                meta,
                key,
                from: &from,
                author: &author,
                created,
            };
            match self.ai_gate(incoming, reply) {
                Some(reply) => reply,
                None => return,
            }
        };
        let (from, event, reply) = if self.shares(channel) {
            // Nodes share Redis: it sequences, and the record comes back to deliver.
            let carried = (&author, revises);
            match self.publish_shared(
                channel, data, meta, created, key, from, event, carried, reply,
            ) {
                Some(back) => back,
                None => return,
            }
        } else {
            (from, event, reply)
        };
        // What the AI tap hands over after delivery (Arc clones, with a pipeline only).
        let tapped = match &self.ai {
            Some(_) => (from.clone(), author.clone()),
            None => (None, None),
        };
        if let Some(key) = key {
            let window = ms_to_ticks(self.cfg.dedupe_window_ms, self.cfg.tick_ms);
            if let Some(original) = self.streams.dedupe(channel, key, self.tick, window) {
                return self.answer_retry(channel, original, reply);
            }
        }
        let (local, remote, needed) = self.audience(channel);
        let (position, pi) = self.streams.next_in(channel, self.tick);
        let policy = *self.streams.policies().get(pi);
        let size = data.raw.len() + meta.map_or(0, |m| m.raw.len());
        if self.streams.over_max_bytes(channel, &policy, size) {
            // A full inbox (or capped channel): refused, never trimmed, so nothing
            // acknowledged to an earlier sender disappears early.
            self.streams.undo(channel);
            let refused = Refused {
                code: ErrorCode::LimitExceeded,
                message: format!("{channel} is full: it holds its limit of bytes; retry later"),
            };
            return self.answer_publish(reply, Err(refused));
        }
        let durable = match (&self.store.link, policy.durability) {
            (Some(link), Durability::Async | Durability::Sync) => {
                if let Err(why) = link.admit() {
                    self.streams.undo(channel);
                    let refused = match why {
                        JournalRefusal::Behind => Refused {
                            code: ErrorCode::Overloaded,
                            message: "the store is behind; retry".into(),
                        },
                        JournalRefusal::Down => Refused {
                            code: ErrorCode::Unavailable,
                            message: "the store cannot write; the publication was not accepted"
                                .into(),
                        },
                    };
                    return self.answer_publish(reply, Err(refused));
                }
                true
            }
            _ => false,
        };
        let mut frames = EncodedFrames::default();
        for f in Format::ALL {
            if needed & (1 << f.index()) != 0 {
                let sender = from.as_deref();
                let named = event.as_deref();
                match self.encode_for(f, channel, position, sender, meta, data, named, revises) {
                    Ok(frame) => frames[f.index()] = Some(frame),
                    Err(e) => {
                        // Refused (does not transcode): the offset was not used.
                        self.streams.undo(channel);
                        let refused = Refused {
                            code: ErrorCode::BadRequest,
                            message: e.to_string(),
                        };
                        return self.answer_publish(reply, Err(refused));
                    }
                }
            }
        }
        if let Some(key) = key {
            self.streams
                .remember(channel, key, position.offset, self.tick);
        }
        if !durable && policy.keep == 0 {
            self.streams.show(channel, position.offset);
        } else {
            let entry = Entry {
                offset: position.offset,
                tick: self.tick,
                data: Bytes::copy_from_slice(data.raw),
                meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
                format: data.format,
                from,
                author,
                event,
                revises,
                revised: None,
            };
            if durable {
                let name = self.streams.name(channel).expect("just sequenced");
                self.store.records.push(Record {
                    channel: name.clone(),
                    epoch: position.epoch,
                    offset: position.offset,
                    format: data.format,
                    data: entry.data.clone(),
                    meta: entry.meta.clone(),
                    key: key.map(Box::from),
                    from: entry.from.clone(),
                    author: entry.author.clone(),
                    event: entry.event.clone(),
                    revises,
                    keep: policy.keep.min(u32::MAX as usize) as u32,
                });
                if policy.durability == Durability::Sync {
                    self.store.notify = true;
                    self.store.pending.push_back(Pending {
                        batch: self.store.seq,
                        channel: name,
                        position,
                        entry,
                        frames,
                        created,
                        reply,
                        retries: Vec::new(),
                    });
                    return;
                }
            }
            self.apply_revision(channel, &entry);
            if policy.keep > 0 {
                self.streams.retain(channel, entry, policy.keep, policy.ttl);
            } else {
                self.streams.show(channel, position.offset);
            }
        }
        if needed != 0 {
            let name = self.audience_name(channel);
            self.fan_out(name, position, frames, created, local, remote);
        }
        self.answer_publish(reply, Ok((position, false)));
        if self.ai.is_some() && revises.is_none() {
            let incoming = Incoming {
                channel,
                data,
                meta,
                key: None,
                from: &tapped.0,
                author: &tapped.1,
                created,
            };
            self.ai_after(incoming, position);
        }
    }

    /// On the owner: a publication handed over by another shard or the server API.
    pub(super) fn sequence_request(&mut self, req: SequenceReq) {
        let SequenceReq {
            channel,
            data,
            format,
            created,
            key,
            meta,
            from,
            author,
            event,
            revision,
            reply,
            screened,
        } = req;
        let meta = meta.as_ref().map(|m| Payload { format, raw: m });
        self.sequence(
            &channel,
            Payload { format, raw: &data },
            meta,
            created,
            key.as_deref(),
            from,
            author,
            event,
            revision.map(|r| r.revises),
            reply,
            screened,
        );
    }

    /// A retry of a publication with the same idempotency key: the original position,
    /// once the original is released (a `sync` one may still wait for the store).
    pub(super) fn answer_retry(&mut self, channel: &str, original: Position, reply: PublishReply) {
        let released = self
            .streams
            .current(channel)
            .is_some_and(|top| top.offset >= original.offset);
        if !released {
            if let Some(p) = self
                .store
                .pending
                .iter_mut()
                .find(|p| p.position == original && &*p.channel == channel)
            {
                p.retries.push(reply);
                return;
            }
        }
        self.answer_publish(reply, Ok((original, true)))
    }

    /// The store has written this shard's batches up to `batch`: release the `sync`
    /// publications that waited for them, in order.
    pub(super) fn committed(&mut self, batch: u64) {
        while self.store.pending.front().is_some_and(|p| p.batch <= batch) {
            let p = self.store.pending.pop_front().expect("just seen");
            let Pending {
                channel,
                position,
                entry,
                mut frames,
                created,
                reply,
                retries,
                ..
            } = p;
            let policy = *self.streams.policy_of(&channel);
            let (format, data, meta) = (entry.format, entry.data.clone(), entry.meta.clone());
            let from = entry.from.clone();
            let event = entry.event.clone();
            let revises = entry.revises;
            let tapped = (self.ai.is_some() && revises.is_none())
                .then(|| (channel.clone(), entry.author.clone()));
            self.apply_revision(&channel, &entry);
            self.streams
                .retain(&channel, entry, policy.keep, policy.ttl);
            let (local, remote, needed) = self.audience(&channel);
            if needed != 0 {
                for f in Format::ALL {
                    if needed & (1 << f.index()) != 0 && frames[f.index()].is_none() {
                        // A subscriber in a new format arrived while it waited; the
                        // payload already passed one encoding, so this rarely fails.
                        let meta = meta.as_ref().map(|m| Payload { format, raw: m });
                        let data = Payload { format, raw: &data };
                        match self.encode_for(
                            f,
                            &channel,
                            position,
                            from.as_deref(),
                            meta,
                            data,
                            event.as_deref(),
                            revises,
                        ) {
                            Ok(frame) => frames[f.index()] = Some(frame),
                            Err(e) => tracing::warn!(
                                channel = &*channel,
                                offset = position.offset,
                                "stored publication does not transcode for new subscribers: {e}"
                            ),
                        }
                    }
                }
                self.fan_out(channel, position, frames, created, local, remote);
            }
            self.answer_publish(reply, Ok((position, false)));
            for r in retries {
                self.answer_publish(r, Ok((position, true)));
            }
            if let Some((channel, author)) = tapped {
                let incoming = Incoming {
                    channel: &channel,
                    data: Payload { format, raw: &data },
                    meta: meta.as_ref().map(|m| Payload { format, raw: m }),
                    key: None,
                    from: &from,
                    author: &author,
                    created,
                };
                self.ai_after(incoming, position);
            }
        }
    }

    pub(super) fn flush_journal(&mut self) {
        let Some(link) = &self.store.link else {
            self.store.records.clear();
            self.store.marks.clear();
            self.store.sessions.clear();
            return;
        };
        let records = std::mem::replace(&mut self.store.records, Vec::with_capacity(64));
        let batch = Batch {
            shard: self.id,
            seq: self.store.seq,
            notify: std::mem::take(&mut self.store.notify),
            records,
            marks: std::mem::take(&mut self.store.marks),
            sessions: std::mem::take(&mut self.store.sessions),
        };
        self.store.seq += 1;
        if link.send(batch).is_err() {
            // The store has stopped: publications waiting for it will never be
            // stored, so their publishers are told (nothing was delivered).
            tracing::error!(
                shard = self.id,
                "the store stopped; refusing waiting publications"
            );
            while let Some(p) = self.store.pending.pop_front() {
                let refused = Refused {
                    code: ErrorCode::Unavailable,
                    message: "the store stopped before the publication was stored".into(),
                };
                self.answer_publish(p.reply, Err(refused.clone()));
                for r in p.retries {
                    self.answer_publish(r, Err(refused.clone()));
                }
            }
        }
    }

    /// A publish reply: the position, and `duplicate: true` for a deduplicated retry.
    pub(super) fn reply_published(&mut self, slot: u32, id: u32, pos: Position, duplicate: bool) {
        if !duplicate {
            return self.reply_position(slot, id, pos);
        }
        #[derive(serde::Serialize)]
        struct Retry<'a> {
            epoch: &'a str,
            offset: u64,
            duplicate: bool,
        }
        let epoch = pos.epoch_hex();
        let r = Retry {
            epoch: epoch.as_str(),
            offset: pos.offset,
            duplicate: true,
        };
        self.metrics.answered(self.answering, None);
        self.send_result(slot, id, &r);
    }

    /// Tell whoever published how it went: a connection here, another shard, or the
    /// server API.
    pub(super) fn answer_publish(&mut self, reply: PublishReply, result: Sequenced) {
        match reply {
            PublishReply::None => {}
            // A position nobody asked for: counted as answered, sent nowhere.
            PublishReply::Client { quiet: true, .. } if result.is_ok() => {
                self.metrics.answered(CommandKind::Publish, None)
            }
            PublishReply::Client {
                shard,
                conn,
                req_id,
                ..
            } if shard == self.id => self.published(conn, req_id, result, false),
            PublishReply::Client {
                shard,
                conn,
                req_id,
                ..
            } => self.send_to(
                shard,
                ShardMsg::Published {
                    conn,
                    req_id,
                    result,
                    quiet: false,
                },
            ),
            PublishReply::Api(tx) => {
                let _ = tx.send(result);
            }
            PublishReply::Tee(inner, tx) => {
                let _ = tx.send(result.clone());
                self.answer_publish(*inner, result)
            }
        }
    }

    /// Answer a connection's `publish`, if it is still open (`quiet`: only a refusal).
    pub(super) fn published(&mut self, conn: ConnKey, req_id: u32, result: Sequenced, quiet: bool) {
        self.answering = CommandKind::Publish;
        if quiet && result.is_ok() {
            return self.metrics.answered(CommandKind::Publish, None);
        }
        let open = self
            .conns
            .get(conn.slot as usize)
            .is_some_and(|c| c.gen == conn.gen && c.state == ConnState::Open);
        if open {
            match result {
                Ok((pos, dup)) => self.reply_published(conn.slot, req_id, pos, dup),
                Err(e) => self.reply_err(conn.slot, req_id, e.code, &e.message),
            }
        }
    }

    pub(super) fn reply_position(&mut self, slot: u32, id: u32, pos: Position) {
        self.metrics.answered(self.answering, None);
        self.send_result(slot, id, &pos);
    }
}

impl ShardCore {
    /// How publications are encoded: with their offset as a Socket.IO event's last
    /// argument when connection state recovery is on.
    /// A publication's frame in format `f`: a revision's own encoding
    /// ([`envelope::encode_revision`]), else [`ShardCore::publication_encoder`]'s.
    #[allow(clippy::too_many_arguments)] // The fields of one publication.
    pub(super) fn encode_for(
        &self,
        f: Format,
        channel: &str,
        position: Position,
        from: Option<&str>,
        meta: Option<Payload<'_>>,
        data: Payload<'_>,
        event: Option<&str>,
        revises: Option<Revision>,
    ) -> Result<Bytes, WireError> {
        match revises {
            Some(r) => {
                let sio_offset = self.cfg.socketio.recovery_ms > 0;
                envelope::encode_revision(f, channel, position, from, meta, data, r, sio_offset)
            }
            None => self.publication_encoder()(f, channel, position, from, meta, data, event),
        }
    }

    pub(super) fn publication_encoder(&self) -> PublicationEncoder {
        if self.cfg.socketio.recovery_ms > 0 {
            envelope::encode_recoverable_publication
        } else {
            envelope::encode_publication_event
        }
    }
}

pub(super) type PublicationEncoder = fn(
    Format,
    &str,
    Position,
    Option<&str>,
    Option<Payload<'_>>,
    Payload<'_>,
    Option<&str>,
) -> Result<Bytes, WireError>;
