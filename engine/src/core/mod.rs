//! One shard's connections and everything they do, without sockets.
//!
//! This module holds [`ShardCore`] and the contract a backend (`epoll`, `uring`) drives
//! it by; each feature lives in a file of its own below. Owns the connection slab, the
//! channel index, the heartbeat wheel and the per-shard state of every feature. Does
//! not own sockets, the reactor or the clock: a backend feeds it bytes
//! ([`ShardCore::on_read`]), end of stream ([`ShardCore::on_eof`]), mesh messages
//! ([`ShardCore::on_message`]) and timer ticks ([`ShardCore::on_tick`]), and takes from
//! it the connections with frames to write ([`ShardCore::take_dirty`],
//! [`ShardCore::out_mut`], [`ShardCore::written`], [`ShardCore::flushed`]) and those
//! to wake ([`ShardCore::take_wake`]); [`ShardCore::end_turn`] closes each loop turn.
//! Runs on its shard thread only.
//!
//! # Rooms
//! - [`conn`]: one connection's state ([`Conn`], [`ConnState`], [`ConnKey`]).
//! - [`wire`]: the session seam: bytes → handshake → frames → commands, per wire
//!   protocol (Switchboard v1 in MessagePack and JSON today).
//! - [`dispatch`]: command → feature, as one table.
//! - [`reply`]: answering a client (results, errors, pushes), the one place replies
//!   are encoded for a connection's wire format.
//! - [`sessions`]: `connect`, authentication verdicts, reconnect tokens and resume.
//! - [`permissions`]: who may do what on which channel (inboxes, personal channels).
//! - [`subscriptions`]: subscribe, unsubscribe, history and recovery with the owner
//!   shard, cross-shard interest.
//! - [`publish`]: sequencing on the owner shard, durability with the store,
//!   publish replies.
//! - [`fanout`]: encode once, deliver to local subscribers, one message per other
//!   shard; slow consumers.
//! - [`shared`]: shared channels when nodes share Redis (positions from Redis,
//!   records from other nodes).
//! - [`presence`]: presence and typing; [`union`]: both across nodes.
//! - [`inbox`]: direct messages, inbox cursors, receipts, schedules.
//! - [`control`]: commands handed to control-plane workers (notifications, calls)
//!   and their pushes.
//! - [`limits`]: rate limits per connection and per user.
//! - [`admin`]: admin operations (disconnect, maintenance, revoke, census, lists).
//! - [`closing`]: the close handshake and detaching a connection from everything.
//! - [`links`]: messages to other shards (inbox pushes, spill, deferred wake-ups).
//! - [`timers`]: heartbeat and lifecycle deadlines from the wheel.
//! - [`handoff`]: what the backend takes after each call (connections to write, wake
//!   or read again) and hands back (bytes written, queues flushed).
//! - [`eio`]: Engine.IO sessions (Socket.IO clients), over WebSocket or polling.
//!
//! Connection lifecycle:
//! `Handshaking → AwaitingConnect → Authenticating → Open → Closing → Draining → Closed`.
//! `Closing` has a close frame queued; `Draining` has flushed it and shut the write
//! side, waiting for the peer's end of stream; `Closed` tells the backend to drop the
//! socket and call [`ShardCore::remove`].

mod admin;
mod ai;
mod close_notes;
mod closing;
mod conn;
mod control;
mod dispatch;
mod eio;
mod fanout;
mod handoff;
mod history;
mod inbox;
mod limits;
mod links;
mod permissions;
mod presence;
mod publish;
mod reply;
mod revisions;
mod sessions;
mod shared;
mod subscriptions;
#[cfg(test)]
mod tests;
mod timers;
mod union;
mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use slab::Slab;
use switchboard_protocol::frame::{self, OpCode};
use switchboard_protocol::handshake::HandshakeLimits;
use switchboard_protocol::{CloseCode, Format, MessageAssembler};

use crate::access::Access;
use crate::auth::{ControlRequest, Identity};
use crate::channels::ChannelIndex;
use crate::clock::Now;
use crate::config::EngineConfig;
use crate::control::Maintenance;
use crate::journal::{Durability, Policies, Policy};
use crate::limits::LimitTable;
use crate::marks::Marks;
use crate::mesh::{Mesh, Refusal, ReplyBody, ReplyKind, ShardMsg, ShardSeeds};
use crate::metrics::{CloseKind, CommandKind, ShardMetrics};
use crate::outq::OutQueue;
use crate::session::Sessions;
use crate::streams::Streams;
use crate::wheel::HeartbeatWheel;
use conn::Users;
pub use conn::{AfterFlush, Conn, ConnKey, ConnState};
pub use eio::{Ask, EioAnswer, EioMsg, EioReq, Peer, RecordBox, RecoveryMsg, Resumed};
use limits::RateLimits;
use links::Links;
use presence::PresenceRoom;
use publish::StoreQueue;
use subscriptions::Joining;

/// Most messages kept waiting for full inboxes of other shards before publishes are
/// refused with `Overloaded`.
const SPILL_LIMIT: usize = 65_536;
/// Most publish-to-flush samples kept per loop turn.
const LATENCY_SAMPLES_PER_TURN: usize = 256;

/// Most users whose last-seen time a shard remembers.
const MAX_LAST_SEEN: usize = 200_000;

/// Timeouts converted to ticks.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    handshake: u32,
    auth: u32,
    ping: u32,
    pong: u32,
    close: u32,
    /// Engine.IO: `socketio.ping_interval_ms`, `ping_timeout_ms`, `connect_timeout_ms`.
    eio_ping: u32,
    eio_pong: u32,
    eio_connect: u32,
}

/// One shard's state: the connections, and one room per feature.
#[derive(Debug)]
pub struct ShardCore {
    // ---- the shard and what it was given ----
    id: u16,
    cfg: Arc<EngineConfig>,
    mesh: Arc<Mesh>,
    control: Sender<ControlRequest>,
    metrics: Arc<ShardMetrics>,
    /// A bit per shard of the process.
    all_shards: u64,
    shutting_down: bool,
    /// Maintenance mode (admin API): new connections are refused.
    maintenance: Option<Arc<Maintenance>>,

    // ---- time ----
    /// Timeouts converted to ticks.
    ticks: Ticks,
    /// Current tick.
    tick: u32,
    /// The moment of the call being handled, passed in by the backend (the core reads
    /// no clock).
    clock: Now,
    wheel: HeartbeatWheel,
    /// Wheel entries due this tick (reused).
    due: Vec<(u64, (u32, u32))>,

    // ---- connections (conn, wire, reply) ----
    conns: Slab<Conn>,
    next_gen: u32,
    handshake_limits: HandshakeLimits,
    /// Connections with frames to write.
    dirty: Vec<u32>,
    /// Connections whose backend task must run (closed, or must change interest).
    wake: Vec<u32>,
    /// Connections whose input was paused and may be read again.
    resumed: Vec<u32>,
    /// Why this shard recently closed connections, for clients that resume.
    close_notes: close_notes::CloseNotes,
    /// The one ping frame every connection is sent.
    ping_frame: Bytes,
    /// The one Engine.IO ping (`2`) every Engine.IO session is sent.
    eio_ping_frame: Bytes,
    /// Commands handled (picks the sampled ones).
    commands_seen: u32,
    /// The kind of command whose replies are being written now (for
    /// `switchboard_command_results_total`): set where a command is dispatched and
    /// where an answer computed elsewhere comes back.
    answering: CommandKind,
    /// Each user's connections here, last seen times, revocations.
    users: Users,

    // ---- channels (subscriptions, publish, fanout) ----
    channels: ChannelIndex,
    /// Positions and history of the channels this shard owns.
    streams: Streams,
    /// Subscriptions waiting for other shards or the owner.
    joining: Joining,
    /// Publications on their way to the store.
    store: StoreQueue,
    /// Shared channels, when nodes share Redis.
    shared: shared::Shared,
    /// Subscribers whose queue overflowed during a fan-out (reused).
    overflowed: Vec<u32>,
    /// Creation times of publications delivered this turn.
    latency: Vec<Instant>,

    // ---- features ----
    /// Inbox cursors and receipts of the channels this shard owns.
    marks: Marks,
    /// Presence and typing.
    presence: PresenceRoom,
    /// Reconnect tokens (absent when `reconnect_ttl_ms` is 0).
    sessions: Option<Sessions>,
    /// The namespaces' access rules.
    access: Access,
    /// Rate limits and the buckets kept here.
    rate: RateLimits,
    /// Connections a control-plane push goes to (reused).
    push_slots: Vec<u32>,
    /// Messages to other shards.
    links: Links,
    /// Socket.IO connection state recovery (absent when `socketio.recovery_ms` is 0).
    recovery: Option<Box<eio::Recovery>>,
    /// The AI pipelines' tap (absent when no namespace has a pipeline).
    ai: Option<ai::ShardAi>,
}

/// A seed for new epochs that differs per process start and per shard.
fn stream_seed(shard: u16, now: Now) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // No entropy source: the start time and pid still differ across restarts.
        b = (now.unix_ms ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    u64::from_le_bytes(b) ^ u64::from(shard)
}

pub(crate) fn ms_to_ticks(ms: u64, tick_ms: u64) -> u32 {
    ms.div_ceil(tick_ms).max(1).min(u32::MAX as u64) as u32
}

impl ShardCore {
    /// A shard core; `control` carries token checks to the control plane.
    pub fn new(
        id: u16,
        cfg: Arc<EngineConfig>,
        mesh: Arc<Mesh>,
        control: Sender<ControlRequest>,
        metrics: Arc<ShardMetrics>,
        now: Now,
    ) -> Self {
        let t = cfg.tick_ms;
        let ticks = Ticks {
            handshake: ms_to_ticks(cfg.handshake_timeout_ms, t),
            auth: ms_to_ticks(cfg.auth_timeout_ms, t),
            ping: ms_to_ticks(cfg.ping_interval_ms, t),
            pong: ms_to_ticks(cfg.pong_timeout_ms, t),
            close: ms_to_ticks(cfg.close_timeout_ms, t),
            eio_ping: ms_to_ticks(cfg.socketio.ping_interval_ms, t),
            eio_pong: ms_to_ticks(cfg.socketio.ping_timeout_ms, t),
            eio_connect: ms_to_ticks(cfg.socketio.connect_timeout_ms, t),
        };
        let horizon = [
            ticks.handshake,
            ticks.auth,
            ticks.ping + ticks.pong,
            ticks.close,
            ticks.eio_ping + ticks.eio_pong,
            ticks.eio_connect,
            ticks.eio_ping + ticks.eio_pong + ticks.close,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let default = Policy {
            durability: Durability::None,
            keep: cfg.history_size,
            ttl: ms_to_ticks(cfg.history_ttl_ms, t),
            max_bytes: 0,
            edits: false,
        };
        let policies = Arc::new(Policies::new(default, &cfg.namespaces, t));
        let mut streams = Streams::with_policies(stream_seed(id, now), policies);
        streams.set_history_budget(cfg.history_memory_bytes / mesh.shards().max(1));
        streams.set_max_streams(cfg.max_streams.div_ceil(mesh.shards().max(1)));
        let journal = mesh.journal().cloned();
        let cluster = mesh.cluster().cloned();
        let ai = mesh
            .ai()
            .cloned()
            .map(|tap| ai::ShardAi::new(tap, cfg.namespaces.iter().map(|n| n.name.as_str())));
        let mesh_shards = mesh.shards();
        let ShardSeeds {
            streams: seeds,
            marks: seeded_marks,
            sessions: seeded_sessions,
        } = mesh.take_seeds(id);
        for seed in seeds {
            streams.seed(seed, 0, t);
        }
        let mut marks = Marks::new();
        for m in seeded_marks {
            marks.seed(m);
        }
        let sessions = match (&cfg.reconnect_secret, cfg.reconnect_ttl_ms) {
            (Some(key), ttl) if ttl > 0 => Some(Sessions::new(key)),
            _ => None,
        };
        let recovery = (cfg.socketio.recovery_ms > 0).then(|| {
            let mut r = Box::<eio::Recovery>::default();
            let ttl = ms_to_ticks(cfg.socketio.recovery_ms, t);
            r.seed(seeded_sessions, now.unix_ms, t, ttl);
            r
        });
        ShardCore {
            id,
            mesh,
            control,
            metrics,
            all_shards: if mesh_shards >= 64 {
                u64::MAX
            } else {
                (1u64 << mesh_shards) - 1
            },
            shutting_down: false,
            maintenance: None,
            ticks,
            tick: 0,
            clock: now,
            wheel: HeartbeatWheel::new((horizon as usize + 2).min(4096)),
            due: Vec::new(),
            conns: Slab::new(),
            next_gen: 0,
            handshake_limits: HandshakeLimits {
                max_request_bytes: cfg.max_handshake_bytes,
                max_headers: cfg.max_handshake_headers,
            },
            dirty: Vec::new(),
            wake: Vec::new(),
            resumed: Vec::new(),
            close_notes: Default::default(),
            ping_frame: frame::encode(OpCode::Ping, b""),
            eio_ping_frame: frame::encode(OpCode::Text, b"2"),
            commands_seen: 0,
            answering: CommandKind::Ping,
            users: Users::default(),
            channels: ChannelIndex::default(),
            streams,
            joining: Joining::default(),
            store: StoreQueue::new(journal),
            shared: shared::Shared::new(cluster),
            overflowed: Vec::new(),
            latency: Vec::new(),
            marks,
            presence: PresenceRoom::new(&cfg),
            sessions,
            // Compiled by `EngineConfig::validate` first, which refuses bad rules.
            access: cfg.access().unwrap_or_default(),
            // Compiled by `EngineConfig::validate` first, which refuses bad rules.
            rate: RateLimits::new(Arc::new(cfg.limits().unwrap_or_default())),
            push_slots: Vec::new(),
            links: Links::default(),
            recovery,
            ai,
            cfg,
        }
    }

    /// The engine settings this shard runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// This shard's index.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Connections held.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// A connection's state, if `key` is current.
    pub fn state(&self, key: ConnKey) -> Option<ConnState> {
        self.conns
            .get(key.slot as usize)
            .filter(|c| c.gen == key.gen)
            .map(|c| c.state)
    }

    /// Admit a new TCP connection from `peer`, if limits allow.
    pub fn admit(&mut self, peer: IpAddr, now: Now) -> Result<ConnKey, Refusal> {
        self.clock = now;
        if self.shutting_down {
            return Err(Refusal::ServerFull);
        }
        if let Err(r) = self.mesh.admit(
            peer,
            now.mono,
            self.cfg.max_connections,
            self.cfg.max_connections_per_ip,
            self.cfg.max_connection_rate_per_ip,
        ) {
            self.metrics.closed(CloseKind::LimitReached);
            return Err(r);
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let slot = self.conns.insert(Conn {
            gen,
            state: ConnState::Handshaking,
            format: Format::MsgPack,
            peer,
            since: self.tick,
            last_rx: self.tick,
            next_visit: 0,
            ping_sent: false,
            dirty: false,
            input_paused: false,
            format_open: false,
            pending_in: None,
            assembler: MessageAssembler::default(),
            out: OutQueue::default(),
            subs: Vec::new(),
            identity: None,
            token_at: u32::MAX,
            ext: None,
            limits: None,
            eio: None,
        }) as u32;
        self.schedule(slot, self.tick as u64 + self.ticks.handshake as u64);
        ShardMetrics::add(&self.metrics.accepted, 1);
        self.metrics.connections.store(
            self.conns.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(ConnKey { slot, gen })
    }

    /// Drop a `Closed` connection's state (the backend has dropped the socket).
    pub fn remove(&mut self, slot: u32) {
        if let Some(conn) = self.conns.try_remove(slot as usize) {
            debug_assert!(conn.subs.is_empty());
            if conn.identity.is_some() {
                self.metrics
                    .authenticated
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.mesh.release(conn.peer);
            self.metrics.connections.store(
                self.conns.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Make `at` the connection's one valid wheel visit (earlier entries become stale).
    fn schedule(&mut self, slot: u32, at: u64) {
        if let Some(c) = self.conns.get_mut(slot as usize) {
            c.next_visit = self.wheel.schedule(at, (slot, c.gen)) as u32;
        }
    }

    /// New bytes arrived for `slot` in the shard's shared read buffer `buf`; `buf` is
    /// left empty (bytes of an incomplete request or frame move to the connection).
    ///
    /// Hot path: complete frames are parsed straight out of the shared buffer.
    pub fn on_read(&mut self, slot: u32, buf: &mut BytesMut, now: Now) {
        self.clock = now;
        let now = self.tick;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            buf.clear();
            return;
        };
        ShardMetrics::add(&self.metrics.bytes_in, buf.len() as u64);
        conn.last_rx = now;
        conn.ping_sent = false;
        if matches!(
            conn.state,
            ConnState::Closing | ConnState::Draining | ConnState::Closed
        ) {
            buf.clear();
            return;
        }
        if conn.input_paused {
            // Bytes the backend had read before it stopped: kept, in order, for when
            // input resumes (a bounded amount: the backend reads no more meanwhile).
            conn.pending_in
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(buf);
            buf.clear();
            return;
        }
        match conn.pending_in.take() {
            Some(mut pending) => {
                pending.extend_from_slice(buf);
                buf.clear();
                self.process(slot, &mut pending);
                self.keep_leftover(slot, pending);
            }
            None => {
                self.process(slot, buf);
                if !buf.is_empty() {
                    let leftover = BytesMut::from(&buf[..]);
                    buf.clear();
                    self.keep_leftover(slot, leftover);
                }
            }
        }
    }

    pub(super) fn keep_leftover(&mut self, slot: u32, leftover: BytesMut) {
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            if !leftover.is_empty()
                && !matches!(
                    conn.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                )
            {
                conn.pending_in = Some(leftover);
            }
        }
    }

    /// Handle a message from another shard or the control plane.
    pub fn on_message(&mut self, msg: ShardMsg, now: Now) {
        self.clock = now;
        match msg {
            ShardMsg::Publish(p) => self.deliver(&p),
            ShardMsg::StreamQuery(q) => self.stream_query(*q),
            ShardMsg::StreamReply(r) => self.on_stream_reply(*r),
            ShardMsg::Recovered(r) => self.recovered_from_store(*r),
            ShardMsg::Sequence(req) => self.check_revision(*req),
            ShardMsg::Mark(update) => self.apply_mark(*update),
            ShardMsg::UserSubscription(u) => self.user_subscription(*u),
            ShardMsg::Presence(u) => self.apply_presence(*u),
            ShardMsg::PresenceQuery {
                channel,
                members,
                answer,
            } => self.answer_presence(channel, members, answer),
            ShardMsg::InboxState {
                channel,
                clear,
                answer,
            } => {
                let _ = answer.send(self.inbox_state(channel, clear));
            }
            ShardMsg::Receipts { channel, answer } => {
                let list = self.receipt_list(&channel);
                self.answer_with(answer, list, CommandKind::Receipts, ReplyBody::Receipts);
            }
            ShardMsg::Reply {
                conn,
                req_id,
                command,
                result,
            } => self.replied(conn, req_id, command, result),
            ShardMsg::Committed { batch } => self.committed(batch),
            ShardMsg::CloseNoteQuery {
                previous,
                shard,
                to,
            } => self.answer_close_note(previous, shard, to),
            note @ ShardMsg::CloseNote { .. } => self.on_close_note(note),
            ShardMsg::Published {
                conn,
                req_id,
                result,
                quiet,
            } => self.published(conn, req_id, result, quiet),
            ShardMsg::Interest {
                channel,
                from,
                formats,
                ack,
            } => self.interest(channel, from, formats, ack),
            ShardMsg::InterestAck { channel } => self.interest_acked(channel),
            ShardMsg::AuthDone {
                conn,
                req_id,
                result,
            } => self.auth_done(conn, req_id, result),
            ShardMsg::Push(p) => self.on_push(&p),
            ShardMsg::Limits(table) => self.set_rate_limits(table),
            ShardMsg::Admin(op) => self.on_admin(op),
            ShardMsg::Shutdown => self.begin_shutdown(now),
            ShardMsg::Eio(m) => self.on_eio(*m),
            ShardMsg::HookDone(done) => self.on_hook_done(*done),
            ShardMsg::Recovery(m) => self.on_recovery(*m),
            ShardMsg::Cluster(m) => self.on_cluster(*m),
        }
    }

    /// The timer fired: advance the wheel to `tick` and act on every connection due.
    pub fn on_tick(&mut self, tick: u64, now: Now) {
        self.clock = now;
        let mut due = std::mem::take(&mut self.due);
        let horizon = self.wheel.len() as u64;
        if tick > self.wheel.now() + horizon {
            // The shard stalled past the horizon: every entry is due, once.
            self.tick = (tick - 1) as u32;
            self.wheel.advance(tick - 1, |_, t, e| due.push((t, e)));
            for &(t, (slot, gen)) in &due {
                self.visit(t as u32, slot, gen);
            }
            due.clear();
        }
        // Tick by tick, so a visit rescheduled within this window still fires on time.
        while self.wheel.now() < tick {
            let t = self.wheel.now() + 1;
            self.tick = t as u32;
            self.wheel.advance(t, |_, t, e| due.push((t, e)));
            for &(t, (slot, gen)) in &due {
                self.visit(t as u32, slot, gen);
            }
            due.clear();
        }
        self.tick = tick as u32;
        self.due = due;
        let idle = ms_to_ticks(self.cfg.stream_idle_ms, self.cfg.tick_ms);
        let window = ms_to_ticks(self.cfg.dedupe_window_ms, self.cfg.tick_ms);
        self.streams.sweep(self.tick, idle, window, 256);
        let m = &self.metrics;
        m.history_bytes.store(
            self.streams.history_bytes() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.history_evicted.store(
            self.streams.history_evicted(),
            std::sync::atomic::Ordering::Relaxed,
        );
        m.history_freed_bytes.store(
            self.streams.history_freed_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        m.streams.store(
            self.streams.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.streams_evicted.store(
            self.streams.streams_evicted(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.expire_typing();
        self.report_spent();
        if !self.presence.namespaces.is_empty() {
            for (channel, event) in self.presence.members.expire(self.tick, self.clock.unix_ms) {
                if let crate::presence::Event::Leave { user, .. } = &event {
                    self.presence_changed(&channel, user);
                }
                if !self.presence_shared() {
                    self.push_presence(&channel, &event);
                }
            }
        }
    }

    /// End of a loop turn: hand this turn's durable publications to the store, and
    /// retry messages that found an inbox full. Returns whether some still wait.
    pub fn end_turn(&mut self) -> bool {
        if !self.store.records.is_empty()
            || !self.store.marks.is_empty()
            || !self.store.sessions.is_empty()
        {
            self.flush_journal();
        }
        if self.shared_pending() {
            self.flush_shared();
        }
        self.retry_spill()
    }

    /// The peer ended its side of the stream.
    pub fn on_eof(&mut self, slot: u32, now: Now) {
        self.clock = now;
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        let kind = match conn.state {
            ConnState::Closing | ConnState::Draining => None,
            ConnState::Handshaking => Some(CloseKind::PeerGone),
            _ => Some(CloseKind::PeerGone),
        };
        self.close_now(slot, kind);
    }

    /// A read or write on `slot`'s socket failed.
    pub fn on_io_error(&mut self, slot: u32, now: Now) {
        self.clock = now;
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        let kind = match conn.state {
            ConnState::Closing | ConnState::Draining => None,
            _ => Some(CloseKind::IoError),
        };
        self.close_now(slot, kind);
    }

    /// Publication creation times delivered since the last call (for latency metrics).
    pub fn take_latency_samples(&mut self) -> std::vec::Drain<'_, Instant> {
        self.latency.drain(..)
    }

    /// The backend has written this turn's frames: record publish-to-flush latency
    /// for the publications delivered since the last call.
    pub fn record_flush_latency(&mut self, now: Now) {
        self.clock = now;
        if self.latency.is_empty() {
            return;
        }
        let now = now.mono;
        for created in self.latency.drain(..) {
            self.metrics
                .observe_latency_us(now.saturating_duration_since(created).as_micros() as u64);
        }
    }

    /// The shard's metrics.
    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    /// Begin graceful shutdown: refuse new connections, close every connection with
    /// 1001.
    pub fn begin_shutdown(&mut self, now: Now) {
        self.clock = now;
        self.shutting_down = true;
        self.persist_recovery();
        let slots: Vec<u32> = self.conns.iter().map(|(s, _)| s as u32).collect();
        for slot in slots {
            self.begin_close(
                slot,
                CloseCode::GOING_AWAY,
                "server shutting down",
                CloseKind::Shutdown,
            );
        }
    }

    /// Replace the rate limits (admin API); buckets keep what they used.
    pub fn set_rate_limits(&mut self, table: Arc<LimitTable>) {
        self.rate.table = table;
    }

    /// Put a connection straight into `Open` with `identity` (benches and tests of the
    /// fan-out path, which need many subscribers and no sockets).
    #[doc(hidden)]
    pub fn open_for_test(
        &mut self,
        peer: IpAddr,
        format: Format,
        identity: Arc<Identity>,
    ) -> ConnKey {
        let key = self.admit(peer, self.clock).expect("within limits");
        let conn = &mut self.conns[key.slot as usize];
        conn.state = ConnState::Open;
        conn.format = format;
        self.users
            .conns
            .entry(identity.user.clone())
            .or_default()
            .add(key.slot);
        self.conns[key.slot as usize].identity = Some(identity);
        ShardMetrics::add(&self.metrics.authenticated, 1);
        key
    }

    /// Subscribe an open connection without a command (benches and tests).
    #[doc(hidden)]
    pub fn subscribe_for_test(&mut self, key: ConnKey, channel: &str) {
        self.subscribe(key.slot, ReplyKind::Command(0), channel, None);
    }
}
