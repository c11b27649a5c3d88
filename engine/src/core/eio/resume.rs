//! Connection state recovery on the shards: logging deliveries, writing a session's
//! record when it ends, answering a reconnecting client from the record, and
//! restoring the session.
//!
//! Owns the flow ([`super::recovery`] explains the scheme and owns its data). Does not
//! own the CONNECT packet ([`super::sio`]) or subscriptions (`core::subscriptions`).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::envelope::{self, sio};
use switchboard_protocol::{CloseCode, Format, Payload, Position};

use super::recovery::{Ask, ChannelMark, Pid, Record, RecordBox, Recovering, RecoveryMsg, Resumed};
use crate::core::conn::{ConnKey, ConnState};
use crate::core::ShardCore;
use crate::journal::SessionRecord;
use crate::mesh::{Publication, ReplyKind, ShardMsg, StreamReply};
use crate::metrics::{CloseKind, ShardMetrics};

/// The `req_id` of a session whose CONNECT waits for its home shard's answer.
pub(super) const RECOVERING: u32 = u32::MAX - 1;

impl ShardCore {
    /// Log a publication delivered here if Socket.IO subscribers get it (recovery on),
    /// and note it as its channel's last.
    ///
    /// Hot path, once per publication per shard: a lookup or two and a log entry.
    #[inline]
    pub(in crate::core) fn log_delivery(&mut self, p: &Publication) {
        if self.recovery.is_none() || p.droppable {
            return;
        }
        let sio = 1u8 << Format::SocketIo.index();
        let to_sio = match self.personal_user(&p.channel) {
            Some(user) => self
                .users
                .conns
                .get(user)
                .is_some_and(|u| self.formats_of(u) & sio != 0),
            None => self
                .channels
                .local(&p.channel)
                .is_some_and(|e| e.formats() & sio != 0),
        };
        if !to_sio {
            return;
        }
        let log = &mut self.recovery.as_mut().expect("checked above").log;
        let seq = log.push(&p.channel, p.position);
        if let Some(e) = self.channels.local_mut(&p.channel) {
            e.last = Some((seq, p.position));
        }
    }

    /// A subscription went live at `top`: every subscriber here has what came before
    /// it (the owner answers after the publications it sent), and a recoverable
    /// session's subscription starts at this point of the log.
    pub(in crate::core) fn recovery_subscribed(
        &mut self,
        slot: u32,
        channel: &Arc<str>,
        top: Position,
    ) {
        let Some(r) = self.recovery.as_ref() else {
            return;
        };
        let seq = r.log.top();
        if let Some(e) = self.channels.local_mut(channel) {
            let behind = e
                .last
                .is_none_or(|(_, p)| p.epoch != top.epoch || p.offset < top.offset);
            if behind {
                e.last = Some((seq, top));
            }
        }
        if let Some(rec) = self.recovering_mut(slot) {
            rec.starts.retain(|(c, _)| c != channel);
            rec.starts.push((channel.clone(), seq));
        }
    }

    /// A recoverable session left `channel`.
    pub(in crate::core) fn recovery_left(&mut self, slot: u32, channel: &str) {
        if let Some(rec) = self.recovering_mut(slot) {
            rec.starts.retain(|(c, _)| **c != *channel);
        }
    }

    fn recovering_mut(&mut self, slot: u32) -> Option<&mut Recovering> {
        self.conns
            .get_mut(slot as usize)?
            .eio
            .as_mut()?
            .sio
            .recovering_mut()
    }

    /// A recoverable session ends (before it leaves its channels): its record goes to
    /// its home shard.
    pub(in crate::core) fn recovery_ended(&mut self, slot: u32) {
        let Some(r) = self.recovery.as_ref() else {
            return;
        };
        let Some(rec) = self.conns[slot as usize]
            .eio
            .as_mut()
            .and_then(|e| e.sio.take_recovering())
        else {
            return;
        };
        let conn = &self.conns[slot as usize];
        let Some(identity) = conn.identity.clone() else {
            return;
        };
        let marks = rec
            .starts
            .iter()
            .filter(|(c, _)| conn.subs.contains(c) && !self.automatic(c))
            .map(|(c, start)| ChannelMark {
                channel: c.clone(),
                start: *start,
                last: self.channels.local(c).and_then(|e| e.last),
            })
            .collect();
        let personal = (!self.cfg.personal_namespace.is_empty())
            .then(|| format!("{}:{}", self.cfg.personal_namespace, identity.user));
        let record = Record::new(
            identity,
            marks,
            personal.as_deref(),
            &r.log,
            self.clock.unix_ms,
        );
        let pid = rec.pid;
        let home = self.home_of(pid);
        if self.shutting_down {
            // Straight to the store: the home shard may stop before it would arrive.
            self.store_record(pid.id, pid.home, &record);
        } else if home == self.id {
            self.keep_record(pid.id, record);
        } else {
            let record = Box::new(RecordBox(record));
            let msg = RecoveryMsg::Record {
                pid: pid.id,
                record,
            };
            self.send_to(home, ShardMsg::Recovery(Box::new(msg)));
        }
    }

    /// A clean shutdown: the records kept here go to the store, for the next start.
    pub(in crate::core) fn persist_recovery(&mut self) {
        let home = self.id;
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        for (pid, record) in r.drain() {
            self.store_record(pid, home, &record);
        }
    }

    /// Hand a record to the store for the next start — if the next start can recover
    /// it: every channel must be in a durable namespace (a memory-only stream starts
    /// over in a new epoch, and a recovery would only end in `recovery incomplete`).
    fn store_record(&mut self, pid: u128, home: u16, record: &Record) {
        let durable = record.channels.iter().all(|m| {
            self.streams.policy_of(&m.channel).durability != crate::journal::Durability::None
        });
        if durable {
            self.store.sessions.push(SessionRecord {
                pid,
                home,
                closed_ms: record.closed_ms,
                body: record.to_stored(),
            });
        }
    }

    fn keep_record(&mut self, pid: u128, record: Record) {
        if self.shutting_down {
            return self.store_record(pid, self.id, &record);
        }
        if self.presence_shared() {
            // Nodes share Redis: the client may come back through any node.
            self.shared.out.sio_put.push(SessionRecord {
                pid,
                home: self.id,
                closed_ms: record.closed_ms,
                body: record.to_stored(),
            });
        }
        let ttl = self.recovery_ticks();
        let now = self.tick;
        if let Some(r) = self.recovery.as_mut() {
            r.keep(pid, Box::new(record), now, ttl);
        }
    }

    /// The shard answering for `pid` (its home, modulo the shards of this process:
    /// a pid from a run with more shards).
    fn home_of(&self, pid: Pid) -> u16 {
        (pid.home as usize % self.mesh.shards().max(1)) as u16
    }

    fn recovery_ticks(&self) -> u32 {
        crate::core::ms_to_ticks(self.cfg.socketio.recovery_ms, self.cfg.tick_ms)
    }

    /// A CONNECT to the main namespace whose `auth` names a `pid` (and maybe the
    /// `offset` of the last publication the client saw): ask the pid's home shard.
    /// False when there is nothing to recover (recovery off, no or malformed pid).
    pub(super) fn try_recover(&mut self, slot: u32, index: u8, auth: &str) -> bool {
        if self.recovery.is_none() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Asks<'a> {
            #[serde(borrow, default)]
            pid: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            offset: Option<std::borrow::Cow<'a, str>>,
        }
        let Ok(Asks {
            pid: Some(pid),
            offset,
        }) = serde_json::from_str::<Asks<'_>>(auth)
        else {
            return false;
        };
        let Some(pid) = Pid::parse(&pid) else {
            return false;
        };
        let offset = match offset.as_deref().map(sio::parse_offset) {
            None => None,
            Some(Some((channel, pos))) => Some((Box::from(channel), pos)),
            Some(None) => return false, // Not ours: not placed, not recovered.
        };
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Authenticating { req_id: RECOVERING };
        let Some(e) = conn.eio.as_mut() else {
            return false;
        };
        e.sio.start_recovering(pid, index, auth);
        let ask = Box::new(Ask {
            pid,
            offset,
            shard: self.id,
            conn: self.key(slot),
            again: false,
        });
        self.send_home(pid, RecoveryMsg::Ask(ask));
        true
    }

    /// Send `msg` to `pid`'s home shard (or handle it here).
    fn send_home(&mut self, pid: Pid, msg: RecoveryMsg) {
        let home = self.home_of(pid);
        if home == self.id {
            self.on_recovery(msg);
        } else {
            self.send_to(home, ShardMsg::Recovery(Box::new(msg)));
        }
    }

    /// A recovery message from another shard (or this one).
    pub(in crate::core) fn on_recovery(&mut self, msg: RecoveryMsg) {
        match msg {
            RecoveryMsg::Record { pid, record } => self.keep_record(pid, record.0),
            RecoveryMsg::Ask(ask) => self.answer_ask(ask),
            RecoveryMsg::Answer { conn, resumed } => self.recovery_answered(conn, resumed),
            RecoveryMsg::Live { pid, shard, conn } => {
                if let Some(r) = self.recovery.as_mut() {
                    r.live_at(pid, shard, conn);
                }
            }
            RecoveryMsg::Gone { pid } => {
                if let Some(r) = self.recovery.as_mut() {
                    r.live.remove(&pid);
                }
            }
            RecoveryMsg::Replace { conn, ask } => self.replace_session(conn, ask),
        }
    }

    /// On the home shard: answer from the record; with none, but the session still
    /// live (its connection half-open), end that session first and ask again.
    fn answer_ask(&mut self, ask: Box<Ask>) {
        let ttl = self.recovery_ticks();
        let now = self.tick;
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        let record = r.take(ask.pid.id, now, ttl);
        if record.is_none() && !ask.again {
            if let Some((shard, conn)) = r.live.remove(&ask.pid.id) {
                let msg = RecoveryMsg::Replace { conn, ask };
                if shard == self.id {
                    return self.on_recovery(msg);
                }
                return self.send_to(shard, ShardMsg::Recovery(Box::new(msg)));
            }
        }
        let shared = self.presence_shared();
        if record.is_none() && shared {
            // Not ended here: perhaps on another node, whose record is in Redis.
            let (pid, shard) = (ask.pid.id, self.id);
            self.shared
                .out
                .sio_asks
                .push(crate::cluster::SioAsk { pid, shard, ask });
            return;
        }
        if record.is_some() && shared {
            // Recovered here: the copy in Redis must not be recovered elsewhere.
            self.shared.out.sio_del.push(ask.pid.id);
        }
        self.answer_with_record(&ask, record);
    }

    /// On the home shard: a record from Redis (the session ended on another node).
    pub(in crate::core) fn sio_record_from_cluster(
        &mut self,
        ask: Box<Ask>,
        record: Option<SessionRecord>,
    ) {
        let ttl = u64::from(self.recovery_ticks()) * self.cfg.tick_ms;
        let record = record.and_then(|s| {
            let fresh = self.clock.unix_ms.saturating_sub(s.closed_ms) <= ttl;
            fresh
                .then(|| Record::from_stored(&s.body, s.closed_ms))
                .flatten()
                .map(Box::new)
        });
        self.answer_with_record(&ask, record);
    }

    /// Answer `ask` from `record` (none: not recoverable).
    fn answer_with_record(&mut self, ask: &Ask, record: Option<Box<Record>>) {
        let resumed = record.and_then(|r| {
            let points = r.resume_points(ask.offset.as_ref().map(|(c, p)| (&**c, *p)))?;
            Some(Box::new(Resumed {
                identity: r.identity,
                points,
            }))
        });
        let answer = RecoveryMsg::Answer {
            conn: ask.conn,
            resumed,
        };
        if ask.shard == self.id {
            self.on_recovery(answer);
        } else {
            self.send_to(ask.shard, ShardMsg::Recovery(Box::new(answer)));
        }
    }

    /// End the live session `conn` of a pid whose client is recovering it elsewhere:
    /// its record goes home, and the question after it (in order on the mesh).
    fn replace_session(&mut self, conn: ConnKey, mut ask: Box<Ask>) {
        let ours = self.conns.get(conn.slot as usize).is_some_and(|c| {
            c.gen == conn.gen
                && c.eio
                    .as_ref()
                    .and_then(|e| e.sio.recovering())
                    .is_some_and(|r| r.pid == ask.pid)
        });
        if ours {
            tracing::debug!(
                client = %self.client_id(conn.slot),
                "Socket.IO session replaced by its recovery"
            );
            self.sio_end(
                conn.slot,
                "replaced by a recovered session",
                CloseKind::Replaced,
            );
        }
        ask.again = true;
        let pid = ask.pid;
        self.send_home(pid, RecoveryMsg::Ask(ask));
    }

    /// End a Socket.IO session (the client may reconnect).
    fn sio_end(&mut self, slot: u32, reason: &str, kind: CloseKind) {
        if self.conns[slot as usize].socketless() {
            self.eio_end(slot, kind, false);
        } else {
            self.begin_close(slot, CloseCode::GOING_AWAY, reason, kind);
        }
    }

    /// The home shard's answer for a reconnecting session: restore it, or go on with
    /// a plain CONNECT (the `auth` token decides).
    fn recovery_answered(&mut self, key: ConnKey, resumed: Option<Box<Resumed>>) {
        let Some(conn) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        let waiting_here = conn.state == (ConnState::Authenticating { req_id: RECOVERING });
        if conn.gen != key.gen || !waiting_here {
            return;
        }
        let slot = key.slot;
        let Some(e) = conn.eio.as_mut() else {
            return;
        };
        let (index, auth, others) = e.sio.end_recovering();
        let now_s = self.clock.unix_ms / 1000;
        let resumed = resumed.filter(|r| {
            // Revoked or expired since: the token in `auth` decides instead.
            !self.users.revoked.contains_key(&*r.identity.user)
                && r.identity.expires_at.is_none_or(|at| at > now_s)
        });
        match resumed {
            Some(r) => {
                ShardMetrics::add(&self.metrics.sio_recovered, 1);
                if let Some(pid) = self.conns[slot as usize]
                    .eio
                    .as_ref()
                    .and_then(|e| e.sio.recovering())
                    .map(|r| r.pid)
                {
                    let live = RecoveryMsg::Live {
                        pid: pid.id,
                        shard: self.id,
                        conn: key,
                    };
                    self.send_home(pid, live);
                }
                self.sio_identified(slot, r.identity);
                self.sio_connected(slot, index, &[]);
                for (channel, since) in r.points {
                    self.subscribe(slot, ReplyKind::Resumed, &channel, Some(since));
                }
                for (index, auth) in others {
                    self.sio_accept(slot, index, auth);
                }
            }
            None => {
                ShardMetrics::add(&self.metrics.sio_not_recovered, 1);
                if let Some(e) = self.conns[slot as usize].eio.as_mut() {
                    e.sio.take_recovering();
                }
                self.conns[slot as usize].state = ConnState::AwaitingConnect;
                self.sio_connect_plain(slot, index, auth);
                for (index, auth) in others {
                    self.sio_connect_plain(slot, index, auth);
                }
            }
        }
        self.resume_input(slot);
    }

    /// A restored subscription's missed publications, as the events they were, each
    /// with its offset; a stream that no longer holds them all ends the session (the
    /// client was told it recovered), without a record, so the next attempt is plain.
    pub(in crate::core) fn sio_replay(&mut self, slot: u32, r: &StreamReply) {
        if r.recovered == Some(false) {
            return self.recovery_incomplete(slot);
        }
        let mut frames: Vec<Bytes> = Vec::with_capacity(r.publications.len());
        for e in &r.publications {
            let pos = Position {
                epoch: r.top.epoch,
                offset: e.offset,
            };
            let meta = e.meta.as_ref().map(|m| Payload {
                format: e.format,
                raw: m,
            });
            let data = Payload {
                format: e.format,
                raw: &e.data,
            };
            match envelope::encode_recoverable_publication(
                Format::SocketIo,
                &r.channel,
                pos,
                e.from.as_deref(),
                meta,
                data,
                e.event.as_deref(),
            ) {
                Ok(f) => frames.push(f),
                Err(_) => return self.recovery_incomplete(slot),
            }
        }
        let conn = &mut self.conns[slot as usize];
        for f in frames {
            // Unbounded: what was missed, bounded by the channel's history.
            conn.out.push_unbounded(f);
        }
        crate::core::conn::mark_dirty(conn, slot, &mut self.dirty);
    }

    /// A restored subscription could not be (the stream lost what was missed, or the
    /// channel is no longer allowed): the session ends, without a record.
    pub(in crate::core) fn recovery_incomplete(&mut self, slot: u32) {
        let rec = self.conns[slot as usize]
            .eio
            .as_mut()
            .and_then(|e| e.sio.take_recovering());
        if let Some(rec) = rec {
            self.send_home(rec.pid, RecoveryMsg::Gone { pid: rec.pid.id });
        }
        tracing::debug!(client = %self.client_id(slot), "Socket.IO recovery incomplete");
        self.sio_end(slot, "recovery incomplete", CloseKind::RecoveryIncomplete);
    }

    /// Whether namespace `index` is the main one (`/`, where publications arrive and
    /// sessions are recovered).
    pub(super) fn sio_main(&self, index: u8) -> bool {
        self.cfg
            .socketio
            .namespace(index)
            .is_some_and(|(name, _)| name == switchboard_protocol::socketio::MAIN_NAMESPACE)
    }

    /// The pid to put in a main-namespace CONNECT reply (a new one unless the session
    /// was just restored), when recovery is on.
    pub(super) fn sio_pid(&mut self, slot: u32) -> Option<String> {
        self.recovery.as_ref()?;
        let home = self.id;
        let key = self.key(slot);
        let e = self.conns[slot as usize].eio.as_mut()?;
        if let Some(r) = e.sio.recovering_mut() {
            return Some(r.pid.encode());
        }
        let pid = Pid::new(home);
        e.sio.set_recovering(Recovering {
            pid,
            starts: Vec::new(),
        });
        if let Some(r) = self.recovery.as_mut() {
            r.live_at(pid.id, home, key);
        }
        Some(pid.encode())
    }
}
