//! One shard's connections and everything they do, without sockets.
//!
//! Owns the connection slab (each connection's explicit [`ConnState`], reassembly state
//! and outbound queue), the channel index, the heartbeat wheel, the pending
//! cross-shard interest rounds and the spill queue for full inboxes. Does not own
//! sockets, the reactor or the clock: a backend (`epoll`, later io_uring) feeds it
//! bytes ([`ShardCore::on_read`]), end of stream, mesh messages and timer ticks, and
//! takes from it the connections with frames to write ([`ShardCore::take_dirty`]) and
//! those to wake ([`ShardCore::take_wake`]). Runs on its shard thread only.
//!
//! Connection lifecycle:
//! `Handshaking → AwaitingConnect → Authenticating → Open → Closing → Draining → Closed`.
//! `Closing` has a close frame queued; `Draining` has flushed it and shut the write
//! side, waiting for the peer's end of stream; `Closed` tells the backend to drop the
//! socket and call [`ShardCore::remove`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Sender, TrySendError};
use slab::Slab;
use switchboard_protocol::envelope::{self, ConnectResult, Empty};
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use switchboard_protocol::handshake::{self, HandshakeLimits, Parse, Upgrade};
use switchboard_protocol::{
    CloseCode, Command, Error as WireError, ErrorCode, Format, Message, MessageAssembler, Payload,
    Position,
};

use crate::auth::{ControlRequest, Identity};
use crate::channels::ChannelIndex;
use crate::config::EngineConfig;
use crate::journal::{
    Batch, Durability, JournalLink, Policies, Policy, Record, Refusal as JournalRefusal,
};
use crate::mesh::{
    Mesh, Publication, PublishReply, QueryKind, Refusal, Refused, SequenceReq, Sequenced, ShardMsg,
    StreamQuery, StreamReply,
};
use crate::metrics::{CloseKind, ShardMetrics};
use crate::outq::OutQueue;
use crate::streams::{self, Entry, Streams};
use crate::wheel::HeartbeatWheel;

/// Most messages kept waiting for full inboxes of other shards before publishes are
/// refused with `Overloaded`.
const SPILL_LIMIT: usize = 65_536;
/// Most publish-to-flush samples kept per loop turn.
const LATENCY_SAMPLES_PER_TURN: usize = 256;

/// Identifies a connection across threads: its slab slot and a generation, so an
/// answer for a connection that has gone (and whose slot was reused) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Slab slot on its shard.
    pub slot: u32,
    /// Generation of the connection in that slot.
    pub gen: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Reading the HTTP upgrade request.
    Handshaking,
    /// Upgraded; waiting for `connect`.
    AwaitingConnect,
    /// `connect` sent to the control plane; waiting for its verdict.
    Authenticating {
        /// Id of the `connect` command to answer.
        req_id: u32,
    },
    /// Authenticated; commands allowed.
    Open,
    /// A close frame (or HTTP error) is queued; nothing more is read or queued.
    Closing,
    /// Everything is flushed and the write side shut; waiting for the peer to end.
    Draining,
    /// The backend must drop the socket and call `remove`.
    Closed,
}

/// What the backend does after a connection's queue emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    /// Nothing.
    Nothing,
    /// The close frame went out: shut down the write side of the socket.
    ShutdownWrite,
}

/// One connection's state on its shard.
#[derive(Debug)]
pub struct Conn {
    /// Generation, matched against [`ConnKey::gen`].
    gen: u32,
    /// Lifecycle state.
    state: ConnState,
    /// Envelope format chosen by the subprotocol.
    format: Format,
    /// Peer address, released from the per-IP count on removal.
    peer: IpAddr,
    /// Tick the current phase began (accept, upgrade, close).
    since: u32,
    /// Tick of the last bytes received (liveness).
    last_rx: u32,
    /// Tick at which this connection's single valid wheel entry is due.
    next_visit: u32,
    /// A ping was sent and nothing has been received since.
    ping_sent: bool,
    /// Listed in the shard's dirty list.
    dirty: bool,
    /// Bytes of an incomplete request or frame (allocated only while incomplete).
    pending_in: Option<BytesMut>,
    /// Fragmented message state (a pointer while idle).
    assembler: MessageAssembler,
    /// Frames waiting for the socket.
    out: OutQueue,
    /// Channels subscribed, for cleanup on close.
    subs: Vec<Arc<str>>,
    /// Set once authenticated.
    identity: Option<Arc<Identity>>,
    /// Token from `Authorization: Bearer` on the upgrade, used by a token-less `connect`.
    bearer: Option<Box<str>>,
}

/// Subscribers waiting until every other shard has learned about new interest.
#[derive(Debug, Default)]
struct InterestRound {
    /// Acknowledgments still expected.
    acks_left: usize,
    /// `(slot, gen, request id, recover since)` of subscribe commands to answer when
    /// done.
    waiters: Vec<(u32, u32, u32, Option<Position>)>,
}

/// A `sync` publication sequenced and handed to the store, not yet released.
#[derive(Debug)]
struct Pending {
    /// The journal batch it went in.
    batch: u64,
    channel: Arc<str>,
    position: Position,
    entry: Entry,
    /// Frames encoded when it was sequenced (formats needed then).
    frames: [Option<Bytes>; 2],
    created: Instant,
    reply: PublishReply,
    /// Retries with its idempotency key that arrived while it waited.
    retries: Vec<PublishReply>,
}

/// Timeouts converted to ticks.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    handshake: u32,
    auth: u32,
    ping: u32,
    pong: u32,
    close: u32,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardCore {
    id: u16,
    cfg: Arc<EngineConfig>,
    limits: HandshakeLimits,
    ticks: Ticks,
    conns: Slab<Conn>,
    next_gen: u32,
    channels: ChannelIndex,
    wheel: HeartbeatWheel,
    /// Current tick.
    now: u32,
    /// Wheel entries due this tick (reused).
    due: Vec<(u64, (u32, u32))>,
    /// Connections with frames to write.
    dirty: Vec<u32>,
    /// Connections whose backend task must run (closed, or must change interest).
    wake: Vec<u32>,
    /// Subscribers whose queue overflowed during a fan-out (reused).
    overflowed: Vec<u32>,
    mesh: Arc<Mesh>,
    control: Sender<ControlRequest>,
    metrics: Arc<ShardMetrics>,
    /// The one ping frame every connection is sent.
    ping_frame: Bytes,
    interest: HashMap<Arc<str>, InterestRound>,
    /// Messages for other shards whose inbox was full, in order.
    spill: VecDeque<(u16, ShardMsg)>,
    /// Creation times of publications delivered this turn.
    latency: Vec<Instant>,
    shutting_down: bool,
    /// Positions of the channels this shard owns.
    streams: Streams,
    /// Per channel, the connections whose subscribe waits for the owner's answer
    /// (position, recovery): live publications are held back from them meanwhile.
    starting: HashMap<Arc<str>, Vec<u32>>,
    /// The store's link (when one is attached).
    journal: Option<JournalLink>,
    /// This turn's publications for the store.
    journal_buf: Vec<Record>,
    /// Number of the batch `journal_buf` becomes.
    journal_seq: u64,
    /// A `sync` publication waits for the batch being filled.
    journal_notify: bool,
    /// `sync` publications waiting for the store, in sequencing order.
    pending: VecDeque<Pending>,
    /// The backend wakes other shards (see [`ShardCore::defer_wakes`]).
    defer_wakes: bool,
    /// Shards to wake, a bit each.
    wakes: u64,
}

/// A seed for new epochs that differs per process start and per shard.
fn stream_seed(shard: u16) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // No entropy source: the clock and pid still differ across restarts.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()) << 32).to_le_bytes();
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
    ) -> Self {
        let t = cfg.tick_ms;
        let ticks = Ticks {
            handshake: ms_to_ticks(cfg.handshake_timeout_ms, t),
            auth: ms_to_ticks(cfg.auth_timeout_ms, t),
            ping: ms_to_ticks(cfg.ping_interval_ms, t),
            pong: ms_to_ticks(cfg.pong_timeout_ms, t),
            close: ms_to_ticks(cfg.close_timeout_ms, t),
        };
        let horizon = [
            ticks.handshake,
            ticks.auth,
            ticks.ping + ticks.pong,
            ticks.close,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let default = Policy {
            durability: Durability::None,
            keep: cfg.history_size,
            ttl: ms_to_ticks(cfg.history_ttl_ms, t),
        };
        let policies = Arc::new(Policies::new(default, &cfg.namespaces, t));
        let mut streams = Streams::with_policies(stream_seed(id), policies);
        let journal = mesh.journal().cloned();
        for seed in mesh.take_seeds(id) {
            streams.seed(seed, 0, t);
        }
        ShardCore {
            id,
            limits: HandshakeLimits {
                max_request_bytes: cfg.max_handshake_bytes,
                max_headers: cfg.max_handshake_headers,
            },
            ticks,
            conns: Slab::new(),
            next_gen: 0,
            channels: ChannelIndex::default(),
            wheel: HeartbeatWheel::new((horizon as usize + 2).min(4096)),
            now: 0,
            due: Vec::new(),
            dirty: Vec::new(),
            wake: Vec::new(),
            overflowed: Vec::new(),
            mesh,
            control,
            metrics,
            ping_frame: frame::encode(OpCode::Ping, b""),
            interest: HashMap::new(),
            spill: VecDeque::new(),
            latency: Vec::new(),
            shutting_down: false,
            streams,
            journal,
            journal_buf: Vec::new(),
            journal_seq: 0,
            journal_notify: false,
            pending: VecDeque::new(),
            starting: HashMap::new(),
            defer_wakes: false,
            wakes: 0,
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
    pub fn admit(&mut self, peer: IpAddr) -> Result<ConnKey, Refusal> {
        if self.shutting_down {
            return Err(Refusal::ServerFull);
        }
        if let Err(r) = self.mesh.admit(
            peer,
            self.cfg.max_connections,
            self.cfg.max_connections_per_ip,
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
            since: self.now,
            last_rx: self.now,
            next_visit: 0,
            ping_sent: false,
            dirty: false,
            pending_in: None,
            assembler: MessageAssembler::default(),
            out: OutQueue::default(),
            subs: Vec::new(),
            identity: None,
            bearer: None,
        }) as u32;
        self.schedule(slot, self.now as u64 + self.ticks.handshake as u64);
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

    // ---- input -------------------------------------------------------------------

    /// New bytes arrived for `slot` in the shard's shared read buffer `buf`; `buf` is
    /// left empty (bytes of an incomplete request or frame move to the connection).
    ///
    /// Hot path: complete frames are parsed straight out of the shared buffer.
    pub fn on_read(&mut self, slot: u32, buf: &mut BytesMut) {
        let now = self.now;
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

    fn keep_leftover(&mut self, slot: u32, leftover: BytesMut) {
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

    fn process(&mut self, slot: u32, src: &mut BytesMut) {
        loop {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            match conn.state {
                ConnState::Handshaking => match handshake::parse(src, &self.limits) {
                    Ok(Parse::Incomplete) => return,
                    Ok(Parse::Complete(up)) => {
                        src.advance(up.consumed);
                        self.upgraded(slot, up);
                        continue;
                    }
                    Err(e) => {
                        src.clear();
                        self.reject_handshake(slot, &e);
                        return;
                    }
                },
                ConnState::Closing | ConnState::Draining | ConnState::Closed => {
                    src.clear();
                    return;
                }
                _ => {}
            }
            let header = match frame::check(src, Role::Server, self.cfg.max_frame_bytes) {
                Ok(Check::Incomplete { needed }) => {
                    src.reserve(needed.saturating_sub(src.len()));
                    return;
                }
                Ok(Check::Complete(h)) => h,
                Err(e) => {
                    src.clear();
                    self.fail(slot, &e);
                    return;
                }
            };
            let frame = frame::take(src, &header);
            ShardMetrics::add(&self.metrics.frames_in, 1);
            match conn.assembler.push(frame, self.cfg.max_message_bytes) {
                Ok(None) => {}
                Ok(Some(msg)) => self.handle_message(slot, msg),
                Err(e) => {
                    src.clear();
                    self.fail(slot, &e);
                    return;
                }
            }
        }
    }

    fn upgraded(&mut self, slot: u32, up: Upgrade) {
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        conn.format = up.format;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        conn.bearer = up.bearer.as_deref().map(Box::from);
        conn.out.push_unbounded(Bytes::from(up.response()));
        mark_dirty(conn, slot, &mut self.dirty);
        ShardMetrics::add(&self.metrics.upgraded, 1);
        self.schedule(slot, now as u64 + self.ticks.auth as u64);
    }

    fn reject_handshake(&mut self, slot: u32, e: &WireError) {
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        conn.out
            .push_unbounded(Bytes::from(handshake::error_response(
                e.http_status(),
                e.close_reason(),
            )));
        conn.state = ConnState::Closing;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.metrics.closed(CloseKind::HandshakeRejected);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// A wire-format violation: close with the matching code.
    fn fail(&mut self, slot: u32, e: &WireError) {
        let kind = match e {
            WireError::InvalidUtf8 => CloseKind::InvalidUtf8,
            WireError::TooBig { .. } => CloseKind::TooBig,
            WireError::Envelope(_) => CloseKind::MalformedCommand,
            _ => CloseKind::ProtocolError,
        };
        self.begin_close(slot, CloseCode(e.close_code()), e.close_reason(), kind);
    }

    fn handle_message(&mut self, slot: u32, msg: Message) {
        match msg {
            Message::Ping(payload) => self.enqueue(slot, frame::encode(OpCode::Pong, &payload)),
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                let conn = &mut self.conns[slot as usize];
                if matches!(
                    conn.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                ) {
                    return;
                }
                self.detach(slot);
                self.metrics.closed(CloseKind::ClientClose);
                let now = self.now;
                let conn = &mut self.conns[slot as usize];
                // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty one.
                conn.out.push_unbounded(match code {
                    Some(c) => frame::encode_close(c, ""),
                    None => frame::encode(OpCode::Close, b""),
                });
                conn.state = ConnState::Closing;
                conn.since = now;
                mark_dirty(conn, slot, &mut self.dirty);
                self.schedule(slot, now as u64 + self.ticks.close as u64);
            }
            Message::Text(payload) | Message::Binary(payload) => {
                self.handle_command(slot, &payload)
            }
        }
    }

    fn handle_command(&mut self, slot: u32, payload: &Bytes) {
        let conn = &mut self.conns[slot as usize];
        let format = conn.format;
        let req = match envelope::decode_request(format, payload) {
            Ok(r) => r,
            Err(e) => return self.fail(slot, &e),
        };
        let id = req.id;
        let state = conn.state;
        match req.command {
            Command::Ping => self.reply_ok(slot, id),
            Command::Invalid(why) => self.reply_err(slot, id, ErrorCode::BadRequest, why),
            Command::Connect { token } => match state {
                ConnState::AwaitingConnect => {
                    let token = match token {
                        Some(t) => t.into_owned(),
                        None => match conn.bearer.take() {
                            Some(t) => t.into(),
                            None => {
                                return self.reply_err(
                                    slot,
                                    id,
                                    ErrorCode::BadRequest,
                                    "connect needs a token",
                                );
                            }
                        },
                    };
                    let key = ConnKey {
                        slot,
                        gen: conn.gen,
                    };
                    let request = ControlRequest::Authenticate {
                        shard: self.id,
                        conn: key,
                        req_id: id,
                        token,
                    };
                    match self.control.try_send(request) {
                        Ok(()) => {
                            self.conns[slot as usize].state =
                                ConnState::Authenticating { req_id: id }
                        }
                        Err(TrySendError::Full(_)) => self.reply_err(
                            slot,
                            id,
                            ErrorCode::Overloaded,
                            "authentication is busy, retry",
                        ),
                        Err(TrySendError::Disconnected(_)) => self.reply_err(
                            slot,
                            id,
                            ErrorCode::Internal,
                            "authentication unavailable",
                        ),
                    }
                }
                ConnState::Authenticating { .. } => self.reply_err(
                    slot,
                    id,
                    ErrorCode::AlreadyConnected,
                    "connect already in progress",
                ),
                _ => self.reply_err(slot, id, ErrorCode::AlreadyConnected, "already connected"),
            },
            _ if state != ConnState::Open => {
                self.reply_err(slot, id, ErrorCode::NotConnected, "send connect first")
            }
            Command::Subscribe { channel, since } => self.subscribe(slot, id, &channel, since),
            Command::History {
                channel,
                since,
                limit,
                reverse,
            } => self.history(
                slot,
                id,
                &channel,
                QueryKind::History {
                    since,
                    limit,
                    reverse,
                },
            ),
            Command::Unsubscribe { channel } => self.unsubscribe(slot, id, &channel),
            Command::Publish {
                channel,
                data,
                key,
                meta,
            } => self.publish_from(slot, id, &channel, data, meta, key.as_deref()),
        }
    }

    fn check_channel(&self, slot: u32, channel: &str) -> Result<(), (ErrorCode, &'static str)> {
        if !envelope::valid_channel(channel) {
            return Err((ErrorCode::BadRequest, "invalid channel name"));
        }
        let allowed = self.conns[slot as usize]
            .identity
            .as_ref()
            .is_some_and(|i| i.may_use(channel));
        if !allowed {
            return Err((ErrorCode::PermissionDenied, "channel not allowed by token"));
        }
        Ok(())
    }

    fn subscribe(&mut self, slot: u32, id: u32, channel: &str, since: Option<Position>) {
        if let Err((code, why)) = self.check_channel(slot, channel) {
            return self.reply_err(slot, id, code, why);
        }
        let conn = &mut self.conns[slot as usize];
        if conn.subs.len() >= self.cfg.max_subscriptions_per_connection {
            return self.reply_err(slot, id, ErrorCode::LimitExceeded, "too many subscriptions");
        }
        let (format, gen) = (conn.format, conn.gen);
        let Some((name, change)) = self.channels.subscribe(channel, slot, format) else {
            return self.reply_err(slot, id, ErrorCode::AlreadySubscribed, "already subscribed");
        };
        self.conns[slot as usize].subs.push(name.clone());
        self.starting.entry(name.clone()).or_default().push(slot);
        let others = self.mesh.shards() - 1;
        if change.before != change.after && others > 0 {
            // Answer only once every other shard routes this channel's publications
            // here, so nothing published after the reply can miss this subscriber.
            self.announce(&name, change.after, true);
            let round = self.interest.entry(name).or_default();
            round.acks_left += others;
            round.waiters.push((slot, gen, id, since));
        } else if let Some(round) = self.interest.get_mut(&name) {
            round.waiters.push((slot, gen, id, since));
        } else {
            self.ask_owner(slot, gen, id, name, QueryKind::Subscribe { since });
        }
    }

    /// Send a stream question to the channel's owner (answered at once if that is us).
    fn ask_owner(&mut self, slot: u32, gen: u32, id: u32, channel: Arc<str>, kind: QueryKind) {
        let q = StreamQuery {
            channel,
            kind,
            shard: self.id,
            conn: ConnKey { slot, gen },
            req_id: id,
            api: None,
        };
        let owner = streams::owner(&q.channel, self.mesh.shards());
        if owner == self.id {
            let reply = self.answer(q);
            self.on_stream_reply(reply);
        } else {
            self.send_to(owner, ShardMsg::StreamQuery(Box::new(q)));
        }
    }

    /// On the owner: answer a stream question.
    fn answer(&mut self, q: StreamQuery) -> StreamReply {
        let policy = *self.streams.policy_of(&q.channel);
        let ttl = policy.ttl;
        let (top, recovered, publications, subscribe) = match q.kind {
            QueryKind::Subscribe { since: None } => (
                self.streams.touch(&q.channel, self.now),
                None,
                Vec::new(),
                true,
            ),
            QueryKind::Subscribe { since: Some(since) } => {
                let r = self.streams.recover(&q.channel, since, self.now, ttl);
                (r.top, Some(r.recovered), r.publications, true)
            }
            QueryKind::History {
                since,
                limit,
                reverse,
            } => {
                let limit = (limit as usize).min(policy.keep);
                let (top, h) = self
                    .streams
                    .history(&q.channel, since, limit, reverse, self.now, ttl);
                (top, None, h, false)
            }
        };
        StreamReply {
            channel: q.channel,
            conn: q.conn,
            req_id: q.req_id,
            subscribe,
            top,
            recovered,
            publications,
        }
    }

    /// On the asking shard: answer the command; a subscription goes live.
    fn on_stream_reply(&mut self, r: StreamReply) {
        let slot = r.conn.slot;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.gen != r.conn.gen || conn.state != ConnState::Open {
            return;
        }
        let format = conn.format;
        if r.subscribe {
            // Absent if the client unsubscribed meanwhile; the subscribe still gets
            // its answer.
            self.stop_holding(&r.channel, slot);
        }
        if r.subscribe && r.recovered.is_none() {
            // A plain subscribe: the position the subscription starts after.
            return self.reply_position(slot, r.req_id, r.top);
        }
        let pubs = r.publications.iter().map(|e| {
            (
                e.offset,
                e.meta.as_ref().map(|m| Payload {
                    format: e.format,
                    raw: m,
                }),
                Payload {
                    format: e.format,
                    raw: &e.data,
                },
            )
        });
        match envelope::encode_stream_reply(format, r.req_id, r.top, r.recovered, pubs) {
            Ok(frame) => {
                // Unbounded: the client asked for it, and `history_size` bounds it.
                let conn = &mut self.conns[slot as usize];
                conn.out.push_unbounded(frame);
                mark_dirty(conn, slot, &mut self.dirty);
            }
            Err(e) => self.reply_err(slot, r.req_id, ErrorCode::BadRequest, &e.to_string()),
        }
    }

    fn history(&mut self, slot: u32, id: u32, channel: &str, kind: QueryKind) {
        if let Err((code, why)) = self.check_channel(slot, channel) {
            return self.reply_err(slot, id, code, why);
        }
        let gen = self.conns[slot as usize].gen;
        let name = self
            .channels
            .name(channel)
            .unwrap_or_else(|| Arc::from(channel));
        self.ask_owner(slot, gen, id, name, kind);
    }

    fn unsubscribe(&mut self, slot: u32, id: u32, channel: &str) {
        let format = self.conns[slot as usize].format;
        let Some(change) = self.channels.unsubscribe(channel, slot, format) else {
            return self.reply_err(slot, id, ErrorCode::NotSubscribed, "not subscribed");
        };
        let subs = &mut self.conns[slot as usize].subs;
        let pos = subs
            .iter()
            .position(|c| &**c == channel)
            .expect("index and conn agree");
        let name = subs.swap_remove(pos);
        // A subscribe still waiting is answered when the owner's reply arrives.
        self.stop_holding(&name, slot);
        if change.before != change.after {
            self.announce(&name, change.after, false);
        }
        self.reply_ok(slot, id);
    }

    fn publish_from(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
    ) {
        if let Err((code, why)) = self.check_channel(slot, channel) {
            return self.reply_err(slot, id, code, why);
        }
        if self.spill.len() >= SPILL_LIMIT {
            return self.reply_err(slot, id, ErrorCode::Overloaded, "server overloaded, retry");
        }
        ShardMetrics::add(&self.metrics.publications, 1);
        let owner = streams::owner(channel, self.mesh.shards());
        let gen = self.conns[slot as usize].gen;
        let reply = PublishReply::Client {
            shard: self.id,
            conn: ConnKey { slot, gen },
            req_id: id,
        };
        if owner == self.id {
            return self.sequence(channel, data, meta, Instant::now(), key, reply);
        }
        // Another shard owns the channel's stream: it sequences, fans out and tells us
        // the position to answer with.
        let req = SequenceReq::new(channel, data, meta, key, reply);
        self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
    }

    fn reply_position(&mut self, slot: u32, id: u32, pos: Position) {
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, &pos));
    }

    /// A publish reply: the position, and `duplicate: true` for a deduplicated retry.
    fn reply_published(&mut self, slot: u32, id: u32, pos: Position, duplicate: bool) {
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
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, &r));
    }

    /// Tell whoever published how it went: a connection here, another shard, or the
    /// server API.
    fn answer_publish(&mut self, reply: PublishReply, result: Sequenced) {
        match reply {
            PublishReply::None => {}
            PublishReply::Client {
                shard,
                conn,
                req_id,
            } if shard == self.id => self.published(conn, req_id, result),
            PublishReply::Client {
                shard,
                conn,
                req_id,
            } => self.send_to(
                shard,
                ShardMsg::Published {
                    conn,
                    req_id,
                    result,
                },
            ),
            PublishReply::Api(tx) => {
                let _ = tx.send(result);
            }
        }
    }

    /// Answer a connection's `publish`, if it is still open.
    fn published(&mut self, conn: ConnKey, req_id: u32, result: Sequenced) {
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

    /// Publish `data` to `channel`: sequenced here if this shard owns the channel,
    /// otherwise handed to the owner (nobody waits for the position then).
    pub fn publish(&mut self, channel: &str, data: Payload<'_>) -> Result<(), WireError> {
        let owner = streams::owner(channel, self.mesh.shards());
        if owner == self.id {
            // Checked first, so a refusal is returned rather than dropped.
            envelope::encode_publication_with_meta(
                data.format,
                channel,
                Position::default(),
                None,
                data,
            )?;
            self.sequence(
                channel,
                data,
                None,
                Instant::now(),
                None,
                PublishReply::None,
            );
            return Ok(());
        }
        let req = SequenceReq::new(channel, data, None, None, PublishReply::None);
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
    pub fn sequence(
        &mut self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        created: Instant,
        key: Option<&str>,
        reply: PublishReply,
    ) {
        debug_assert_eq!(streams::owner(channel, self.mesh.shards()), self.id);
        if let Some(key) = key {
            let window = ms_to_ticks(self.cfg.dedupe_window_ms, self.cfg.tick_ms);
            if let Some(original) = self.streams.dedupe(channel, key, self.now, window) {
                return self.answer_retry(channel, original, reply);
            }
        }
        let local = self.channels.local(channel).map_or(0, |e| e.formats());
        let remote = self.channels.remote(channel);
        let needed = local | (remote[0] != 0) as u8 | ((remote[1] != 0) as u8) << 1;
        let (position, pi) = self.streams.next_in(channel, self.now);
        let policy = *self.streams.policies().get(pi);
        let durable = match (&self.journal, policy.durability) {
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
        let mut frames = [None, None];
        for f in Format::ALL {
            if needed & (1 << f.index()) != 0 {
                match envelope::encode_publication_with_meta(f, channel, position, meta, data) {
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
                .remember(channel, key, position.offset, self.now);
        }
        if !durable && policy.keep == 0 {
            self.streams.show(channel, position.offset);
        } else {
            let entry = Entry {
                offset: position.offset,
                tick: self.now,
                data: Bytes::copy_from_slice(data.raw),
                meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
                format: data.format,
            };
            if durable {
                let name = self.streams.name(channel).expect("just sequenced");
                self.journal_buf.push(Record {
                    channel: name.clone(),
                    epoch: position.epoch,
                    offset: position.offset,
                    format: data.format,
                    data: entry.data.clone(),
                    meta: entry.meta.clone(),
                    key: key.map(Box::from),
                    keep: policy.keep.min(u32::MAX as usize) as u32,
                });
                if policy.durability == Durability::Sync {
                    self.journal_notify = true;
                    self.pending.push_back(Pending {
                        batch: self.journal_seq,
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
            if policy.keep > 0 {
                self.streams.retain(channel, entry, policy.keep, policy.ttl);
            } else {
                self.streams.show(channel, position.offset);
            }
        }
        if needed != 0 {
            let name = self.channels.name(channel).expect("someone subscribes");
            self.fan_out(name, position, frames, created, local, remote);
        }
        self.answer_publish(reply, Ok((position, false)));
    }

    /// A retry of a publication with the same idempotency key: the original position,
    /// once the original is released (a `sync` one may still wait for the store).
    fn answer_retry(&mut self, channel: &str, original: Position, reply: PublishReply) {
        let released = self
            .streams
            .current(channel)
            .is_some_and(|top| top.offset >= original.offset);
        if !released {
            if let Some(p) = self
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

    /// Deliver locally and send one message to each other shard with subscribers.
    fn fan_out(
        &mut self,
        channel: Arc<str>,
        position: Position,
        frames: [Option<Bytes>; 2],
        created: Instant,
        local: u8,
        remote: [u64; 2],
    ) {
        let publication = Arc::new(Publication {
            channel,
            position,
            frames,
            created,
        });
        if local != 0 {
            self.deliver(&publication);
        }
        let mut targets = remote[0] | remote[1];
        while targets != 0 {
            let shard = targets.trailing_zeros() as u16;
            targets &= targets - 1;
            self.send_to(shard, ShardMsg::Publish(publication.clone()));
        }
    }

    /// The store has written this shard's batches up to `batch`: release the `sync`
    /// publications that waited for them, in order.
    fn committed(&mut self, batch: u64) {
        while self.pending.front().is_some_and(|p| p.batch <= batch) {
            let p = self.pending.pop_front().expect("just seen");
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
            self.streams
                .retain(&channel, entry, policy.keep, policy.ttl);
            let local = self.channels.local(&channel).map_or(0, |e| e.formats());
            let remote = self.channels.remote(&channel);
            let needed = local | (remote[0] != 0) as u8 | ((remote[1] != 0) as u8) << 1;
            if needed != 0 {
                for f in Format::ALL {
                    if needed & (1 << f.index()) != 0 && frames[f.index()].is_none() {
                        // A subscriber in a new format arrived while it waited; the
                        // payload already passed one encoding, so this rarely fails.
                        let meta = meta.as_ref().map(|m| Payload { format, raw: m });
                        let data = Payload { format, raw: &data };
                        match envelope::encode_publication_with_meta(
                            f, &channel, position, meta, data,
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
        }
    }

    /// End of a loop turn: hand this turn's durable publications to the store, and
    /// retry messages that found an inbox full. Returns whether some still wait.
    pub fn end_turn(&mut self) -> bool {
        if !self.journal_buf.is_empty() {
            self.flush_journal();
        }
        self.retry_spill()
    }

    fn flush_journal(&mut self) {
        let Some(link) = &self.journal else {
            self.journal_buf.clear();
            return;
        };
        let records = std::mem::replace(&mut self.journal_buf, Vec::with_capacity(64));
        let batch = Batch {
            shard: self.id,
            seq: self.journal_seq,
            notify: std::mem::take(&mut self.journal_notify),
            records,
        };
        self.journal_seq += 1;
        if link.send(batch).is_err() {
            // The store has stopped: publications waiting for it will never be
            // stored, so their publishers are told (nothing was delivered).
            tracing::error!(
                shard = self.id,
                "the store stopped; refusing waiting publications"
            );
            while let Some(p) = self.pending.pop_front() {
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

    /// Queue a publication's frame on every local subscriber (a refcount bump each).
    ///
    /// Hot path: no allocation, no lock, no syscall; a subscriber whose queue is full
    /// is disconnected as a slow consumer afterwards.
    pub fn deliver(&mut self, p: &Publication) {
        let Some(entry) = self.channels.local(&p.channel) else {
            return;
        };
        let limit = self.cfg.max_outbound_bytes;
        let mut delivered = 0u64;
        // Subscribers whose subscribe awaits the owner's answer get nothing yet (the
        // answer covers it). Looked up once per publication, and only when some
        // subscription on this shard is starting, to keep the per-subscriber loop as
        // it was.
        let holding: &[u32] = if self.starting.is_empty() {
            &[]
        } else {
            self.starting.get(&p.channel).map_or(&[], |v| &v[..])
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

    fn slow_consumer(&mut self, slot: u32) {
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

    // ---- output ------------------------------------------------------------------

    fn enqueue(&mut self, slot: u32, frame: Bytes) {
        let conn = &mut self.conns[slot as usize];
        if conn.out.push(frame, self.cfg.max_outbound_bytes).is_err() {
            return self.slow_consumer(slot);
        }
        mark_dirty(conn, slot, &mut self.dirty);
    }

    fn reply_ok(&mut self, slot: u32, id: u32) {
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, &Empty {}));
    }

    fn reply_err(&mut self, slot: u32, id: u32, code: ErrorCode, message: &str) {
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_error(format, id, code, message));
    }

    /// Start the close handshake: unsubscribe, queue a `disconnect` push (application
    /// codes and 1001) and the close frame, and give the peer `close_timeout_ms`.
    fn begin_close(&mut self, slot: u32, code: CloseCode, reason: &str, kind: CloseKind) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        match conn.state {
            ConnState::Closing | ConnState::Draining | ConnState::Closed => return,
            ConnState::Handshaking => return self.close_now(slot, Some(kind)),
            _ => {}
        }
        self.detach(slot);
        self.metrics.closed(kind);
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        if code.0 >= 4000 || code == CloseCode::GOING_AWAY {
            conn.out.push_unbounded(envelope::encode_disconnect(
                conn.format,
                code.0,
                reason,
                code.reconnect(),
            ));
        }
        conn.out.push_unbounded(frame::encode_close(code.0, reason));
        conn.state = ConnState::Closing;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// End a connection at once (no close handshake possible or needed).
    fn close_now(&mut self, slot: u32, kind: Option<CloseKind>) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        if conn.state == ConnState::Closed {
            return;
        }
        self.detach(slot);
        if let Some(kind) = kind {
            self.metrics.closed(kind);
        }
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Closed;
        conn.out.clear();
        conn.pending_in = None;
        self.wake.push(slot);
    }

    /// Remove a connection from every channel it subscribed.
    fn detach(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        let subs = std::mem::take(&mut conn.subs);
        let format = conn.format;
        for name in subs {
            self.stop_holding(&name, slot);
            if let Some(change) = self.channels.unsubscribe(&name, slot, format) {
                if change.before != change.after {
                    self.announce(&name, change.after, false);
                }
            }
        }
    }

    /// `slot`'s subscription to `channel` is no longer waiting for the owner.
    fn stop_holding(&mut self, channel: &str, slot: u32) {
        if self.starting.is_empty() {
            return;
        }
        if let Some(v) = self.starting.get_mut(channel) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                self.starting.remove(channel);
            }
        }
    }

    fn announce(&mut self, channel: &Arc<str>, formats: u8, ack: bool) {
        for shard in 0..self.mesh.shards() as u16 {
            if shard != self.id {
                let msg = ShardMsg::Interest {
                    channel: channel.clone(),
                    from: self.id,
                    formats,
                    ack,
                };
                self.send_to(shard, msg);
            }
        }
    }

    fn send_to(&mut self, shard: u16, msg: ShardMsg) {
        ShardMetrics::add(&self.metrics.mesh_sent, 1);
        if !self.spill.is_empty() {
            self.spill.push_back((shard, msg));
            return;
        }
        self.push_to(shard, msg);
    }

    /// Push to `shard`'s inbox and wake it now, or (with deferred wake-ups) note it
    /// for the backend; a full inbox spills.
    #[inline]
    fn push_to(&mut self, shard: u16, msg: ShardMsg) -> bool {
        match self.push_and_wake(shard, msg) {
            Ok(()) => true,
            Err(msg) => {
                ShardMetrics::add(&self.metrics.mesh_spilled, 1);
                self.spill.push_back((shard, msg));
                false
            }
        }
    }

    /// Push to `shard`'s inbox; if it needs waking, wake it now or note it for the
    /// backend. Gives the message back if the inbox is full.
    #[inline]
    fn push_and_wake(&mut self, shard: u16, msg: ShardMsg) -> Result<(), ShardMsg> {
        let inbox = self.mesh.inbox(shard as usize);
        if inbox.push_quiet(msg)? {
            if self.defer_wakes {
                self.wakes |= 1 << shard;
            } else {
                inbox.wake();
            }
        }
        Ok(())
    }

    /// Let the backend wake other shards itself (batched with its own I/O):
    /// [`ShardCore::take_wakes`] then lists the shards to wake.
    pub fn defer_wakes(&mut self) {
        self.defer_wakes = true;
    }

    /// Shards (bit per shard) pushed to since the last call that must be woken.
    pub fn take_wakes(&mut self) -> u64 {
        std::mem::take(&mut self.wakes)
    }

    /// Retry messages that found another shard's inbox full. Returns whether some
    /// are still waiting.
    pub fn retry_spill(&mut self) -> bool {
        while let Some((shard, msg)) = self.spill.pop_front() {
            if let Err(msg) = self.push_and_wake(shard, msg) {
                self.spill.push_front((shard, msg));
                return true;
            }
        }
        false
    }

    // ---- backend interface -------------------------------------------------------

    /// Move the list of connections with frames to write into `into` (cleared first).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.dirty);
        for &slot in into.iter() {
            if let Some(c) = self.conns.get_mut(slot as usize) {
                c.dirty = false;
            }
        }
    }

    /// Whether any connection has frames to write.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Move the list of connections whose backend task must run into `into`.
    pub fn take_wake(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.wake);
    }

    /// The outbound queue of `slot` (the backend writes from it and advances it).
    pub fn out_mut(&mut self, slot: u32) -> Option<&mut OutQueue> {
        self.conns.get_mut(slot as usize).map(|c| &mut c.out)
    }

    /// `bytes` of `slot`'s queue were written by one syscall.
    pub fn written(&mut self, slot: u32, bytes: usize) {
        if let Some(c) = self.conns.get_mut(slot as usize) {
            let frames = c.out.advance(bytes);
            ShardMetrics::add(&self.metrics.frames_out, frames as u64);
            ShardMetrics::add(&self.metrics.bytes_out, bytes as u64);
            ShardMetrics::add(&self.metrics.writes, 1);
        }
    }

    /// `slot`'s queue is empty after writing: a queued close has gone out.
    pub fn flushed(&mut self, slot: u32) -> AfterFlush {
        match self.conns.get_mut(slot as usize) {
            Some(c) if c.state == ConnState::Closing && c.out.is_empty() => {
                c.state = ConnState::Draining;
                AfterFlush::ShutdownWrite
            }
            _ => AfterFlush::Nothing,
        }
    }

    /// The peer ended its side of the stream.
    pub fn on_eof(&mut self, slot: u32) {
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
    pub fn on_io_error(&mut self, slot: u32) {
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
    pub fn record_flush_latency(&mut self) {
        if self.latency.is_empty() {
            return;
        }
        let now = Instant::now();
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
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
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

    /// Handle a message from another shard or the control plane.
    pub fn on_message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(p) => self.deliver(&p),
            ShardMsg::StreamQuery(mut q) => {
                let shard = q.shard;
                let api = q.api.take();
                let reply = self.answer(*q);
                match api {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => self.send_to(shard, ShardMsg::StreamReply(Box::new(reply))),
                }
            }
            ShardMsg::StreamReply(r) => self.on_stream_reply(*r),
            ShardMsg::Sequence(req) => {
                let SequenceReq {
                    channel,
                    data,
                    format,
                    created,
                    key,
                    meta,
                    reply,
                } = *req;
                let meta = meta.as_ref().map(|m| Payload { format, raw: m });
                self.sequence(
                    &channel,
                    Payload { format, raw: &data },
                    meta,
                    created,
                    key.as_deref(),
                    reply,
                );
            }
            ShardMsg::Committed { batch } => self.committed(batch),
            ShardMsg::Published {
                conn,
                req_id,
                result,
            } => self.published(conn, req_id, result),
            ShardMsg::Interest {
                channel,
                from,
                formats,
                ack,
            } => {
                self.channels.set_remote(channel.clone(), from, formats);
                if ack {
                    self.send_to(from, ShardMsg::InterestAck { channel });
                }
            }
            ShardMsg::InterestAck { channel } => {
                let done = match self.interest.get_mut(&channel) {
                    Some(round) => {
                        round.acks_left = round.acks_left.saturating_sub(1);
                        round.acks_left == 0
                    }
                    None => false,
                };
                if done {
                    let round = self.interest.remove(&channel).expect("just seen");
                    for (slot, gen, id, since) in round.waiters {
                        let open = self
                            .conns
                            .get(slot as usize)
                            .is_some_and(|c| c.gen == gen && c.state == ConnState::Open);
                        if open {
                            let name = channel.clone();
                            self.ask_owner(slot, gen, id, name, QueryKind::Subscribe { since });
                        }
                    }
                }
            }
            ShardMsg::AuthDone {
                conn,
                req_id,
                result,
            } => self.auth_done(conn, req_id, result),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn auth_done(
        &mut self,
        key: ConnKey,
        req_id: u32,
        result: Result<Arc<Identity>, crate::auth::AuthFailure>,
    ) {
        let Some(conn) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if conn.gen != key.gen || conn.state != (ConnState::Authenticating { req_id }) {
            return;
        }
        match result {
            Ok(identity) => {
                conn.state = ConnState::Open;
                let reply = ConnectResult {
                    client: format!("{}.{}.{}", self.id, key.slot, key.gen),
                    user: identity.user.to_string(),
                    shard: self.id,
                    ping_interval_ms: self.cfg.ping_interval_ms,
                    expires_at: identity.expires_at,
                };
                conn.identity = Some(identity);
                let frame = envelope::encode_result(conn.format, req_id, &reply);
                self.enqueue(key.slot, frame);
                let at = self.now as u64 + self.ticks.ping as u64;
                self.schedule(key.slot, at);
            }
            Err(failure) => {
                self.reply_err(key.slot, req_id, failure.code, &failure.message);
                if failure.code == ErrorCode::Overloaded {
                    self.conns[key.slot as usize].state = ConnState::AwaitingConnect;
                } else {
                    let reason = if failure.code == ErrorCode::TokenExpired {
                        "token expired"
                    } else {
                        "unauthorized"
                    };
                    self.begin_close(
                        key.slot,
                        CloseCode::UNAUTHORIZED,
                        reason,
                        CloseKind::Unauthorized,
                    );
                }
            }
        }
    }

    /// The timer fired: advance the wheel to `tick` and act on every connection due.
    pub fn on_tick(&mut self, tick: u64) {
        let mut due = std::mem::take(&mut self.due);
        let horizon = self.wheel.len() as u64;
        if tick > self.wheel.now() + horizon {
            // The shard stalled past the horizon: every entry is due, once.
            self.now = (tick - 1) as u32;
            self.wheel.advance(tick - 1, |_, t, e| due.push((t, e)));
            for &(t, (slot, gen)) in &due {
                self.visit(t as u32, slot, gen);
            }
            due.clear();
        }
        // Tick by tick, so a visit rescheduled within this window still fires on time.
        while self.wheel.now() < tick {
            let t = self.wheel.now() + 1;
            self.now = t as u32;
            self.wheel.advance(t, |_, t, e| due.push((t, e)));
            for &(t, (slot, gen)) in &due {
                self.visit(t as u32, slot, gen);
            }
            due.clear();
        }
        self.now = tick as u32;
        self.due = due;
        let idle = ms_to_ticks(self.cfg.stream_idle_ms, self.cfg.tick_ms);
        let window = ms_to_ticks(self.cfg.dedupe_window_ms, self.cfg.tick_ms);
        self.streams.sweep(self.now, idle, window, 256);
    }

    fn visit(&mut self, t: u32, slot: u32, gen: u32) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.gen != gen || conn.next_visit != t {
            return; // stale entry
        }
        let tk = self.ticks;
        match conn.state {
            ConnState::Handshaking => {
                if t >= conn.since + tk.handshake {
                    self.close_now(slot, Some(CloseKind::HandshakeTimeout));
                } else {
                    let at = conn.since + tk.handshake;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::AwaitingConnect | ConnState::Authenticating { .. } => {
                if t >= conn.since + tk.auth {
                    self.begin_close(
                        slot,
                        CloseCode::AUTH_TIMEOUT,
                        "authentication timeout",
                        CloseKind::AuthTimeout,
                    );
                } else {
                    let at = conn.since + tk.auth;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Open => {
                let idle = t.saturating_sub(conn.last_rx);
                if idle >= tk.ping + tk.pong {
                    self.begin_close(
                        slot,
                        CloseCode::HEARTBEAT_TIMEOUT,
                        "heartbeat timeout",
                        CloseKind::HeartbeatTimeout,
                    );
                } else if idle >= tk.ping {
                    let at = conn.last_rx + tk.ping + tk.pong;
                    if !conn.ping_sent {
                        conn.ping_sent = true;
                        let ping = self.ping_frame.clone();
                        self.enqueue(slot, ping);
                    }
                    self.schedule(slot, at as u64);
                } else {
                    let at = conn.last_rx + tk.ping;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Closing | ConnState::Draining => {
                if t >= conn.since + tk.close {
                    self.close_now(slot, None);
                } else {
                    let at = conn.since + tk.close;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Closed => {}
        }
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
        let key = self.admit(peer).expect("within limits");
        let conn = &mut self.conns[key.slot as usize];
        conn.state = ConnState::Open;
        conn.format = format;
        conn.identity = Some(identity);
        key
    }

    /// Subscribe an open connection without a command (benches and tests).
    #[doc(hidden)]
    pub fn subscribe_for_test(&mut self, key: ConnKey, channel: &str) {
        self.subscribe(key.slot, 0, channel, None);
    }
}

#[inline]
fn mark_dirty(conn: &mut Conn, slot: u32, dirty: &mut Vec<u32>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use std::io::IoSlice;
    use switchboard_protocol::envelope::ServerMessage;

    const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n";

    struct Harness {
        core: ShardCore,
        control: crossbeam_channel::Receiver<ControlRequest>,
    }

    fn harness(tweak: impl FnOnce(&mut EngineConfig)) -> Harness {
        let mut cfg = EngineConfig {
            shards: 1,
            tick_ms: 10,
            ping_interval_ms: 100,
            pong_timeout_ms: 50,
            auth_timeout_ms: 200,
            handshake_timeout_ms: 100,
            close_timeout_ms: 100,
            ..EngineConfig::default()
        };
        tweak(&mut cfg);
        let (tx, rx) = crossbeam_channel::bounded(8);
        let core = ShardCore::new(
            0,
            Arc::new(cfg),
            Mesh::new(1, 64).unwrap(),
            tx,
            Arc::new(ShardMetrics::default()),
        );
        Harness { core, control: rx }
    }

    impl Harness {
        fn read(&mut self, key: ConnKey, bytes: &[u8]) {
            let mut buf = BytesMut::from(bytes);
            self.core.on_read(key.slot, &mut buf);
            assert!(buf.is_empty());
        }

        /// Everything queued for `key`, as written to a socket.
        fn written(&mut self, key: ConnKey) -> Vec<u8> {
            let mut out = Vec::new();
            while !self.core.out_mut(key.slot).unwrap().is_empty() {
                let len = {
                    let q = self.core.out_mut(key.slot).unwrap();
                    let mut slices = [IoSlice::new(&[]); 64];
                    let n = q.fill(&mut slices);
                    for s in &slices[..n] {
                        out.extend_from_slice(s);
                    }
                    slices[..n].iter().map(|s| s.len()).sum::<usize>()
                };
                self.core.written(key.slot, len);
            }
            self.core.flushed(key.slot);
            out
        }

        fn open(&mut self) -> ConnKey {
            let key = self.core.admit("127.0.0.1".parse().unwrap()).unwrap();
            self.read(key, UPGRADE);
            assert!(self.written(key).starts_with(b"HTTP/1.1 101"));
            self.read(
                key,
                &frame::encode_masked(
                    true,
                    OpCode::Text,
                    br#"{"id":1,"cmd":"connect","token":"t"}"#,
                    [9, 8, 7, 6],
                ),
            );
            let ControlRequest::Authenticate {
                conn,
                req_id,
                token,
                ..
            } = self.control.try_recv().unwrap();
            assert_eq!((conn, req_id, token.as_str()), (key, 1, "t"));
            let identity = Identity {
                user: "u".into(),
                channels: None,
                expires_at: None,
            };
            self.core.on_message(ShardMsg::AuthDone {
                conn: key,
                req_id: 1,
                result: Ok(Arc::new(identity)),
            });
            assert_eq!(self.core.state(key), Some(ConnState::Open));
            let _ = self.written(key);
            key
        }
    }

    /// Server frames in `bytes`: (opcode, payload).
    fn frames(bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Ok(Check::Complete(h)) = frame::check(&buf, Role::Client, usize::MAX) {
            let f = frame::take(&mut buf, &h);
            out.push((f.opcode, f.payload.to_vec()));
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn ping_then_heartbeat_timeout() {
        let mut h = harness(|_| {});
        let key = h.open();
        h.core.on_tick(5);
        assert!(h.written(key).is_empty(), "nothing due yet");
        h.core.on_tick(10); // ping interval (100 ms = 10 ticks) of silence
        assert_eq!(frames(&h.written(key)), vec![(OpCode::Ping, vec![])]);
        h.core.on_tick(14);
        assert!(h.written(key).is_empty(), "one ping per silence");
        h.core.on_tick(15); // + pong timeout
        let f = frames(&h.written(key));
        assert_eq!(f.len(), 2);
        assert!(matches!(
            envelope::decode_server_message(Format::Json, &f[0].1).unwrap(),
            ServerMessage::Disconnect { code: 4004, .. }
        ));
        assert_eq!(f[1].0, OpCode::Close);
        assert_eq!(&f[1].1[..2], &4004u16.to_be_bytes());
        assert_eq!(h.core.state(key), Some(ConnState::Draining));
        h.core.on_tick(30); // close timeout: give up on the peer
        assert_eq!(h.core.state(key), Some(ConnState::Closed));
        h.core.remove(key.slot);
        assert_eq!(h.core.connections(), 0);
    }

    #[test]
    fn activity_postpones_the_ping() {
        let mut h = harness(|_| {});
        let key = h.open();
        for tick in [6, 12, 18, 24] {
            h.core.on_tick(tick);
            h.read(
                key,
                &frame::encode_masked(true, OpCode::Pong, b"", [1, 1, 1, 1]),
            );
            assert!(
                h.written(key).is_empty(),
                "no ping at tick {tick}: the client is talking"
            );
        }
        h.core.on_tick(34);
        assert_eq!(frames(&h.written(key)), vec![(OpCode::Ping, vec![])]);
    }

    #[test]
    fn handshake_and_auth_timeouts() {
        let mut h = harness(|_| {});
        let trickle = h.core.admit("127.0.0.1".parse().unwrap()).unwrap();
        h.read(trickle, b"GET / HTTP/1.1\r\n");
        let idle = h.core.admit("127.0.0.2".parse().unwrap()).unwrap();
        h.read(idle, UPGRADE);
        let _ = h.written(idle);
        h.core.on_tick(10);
        assert_eq!(
            h.core.state(trickle),
            Some(ConnState::Closed),
            "handshake timeout"
        );
        assert_eq!(h.core.state(idle), Some(ConnState::AwaitingConnect));
        h.core.on_tick(20);
        let f = frames(&h.written(idle));
        assert_eq!(&f.last().unwrap().1[..2], &4002u16.to_be_bytes());
    }

    #[test]
    fn bytes_split_anywhere_make_the_same_commands() {
        let mut h = harness(|_| {});
        let key = h.open();
        let sub = frame::encode_masked(
            true,
            OpCode::Text,
            br#"{"id":2,"cmd":"subscribe","channel":"a"}"#,
            [1, 2, 3, 4],
        );
        let publ = frame::encode_masked(
            true,
            OpCode::Text,
            br#"{"id":3,"cmd":"publish","channel":"a","data":[1]}"#,
            [5, 6, 7, 8],
        );
        let stream: Vec<u8> = [sub, publ].concat();
        for b in stream.chunks(3) {
            h.read(key, b);
        }
        let f = frames(&h.written(key));
        let texts: Vec<String> = f
            .iter()
            .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
            .collect();
        // The epoch is random per shard start; the offset is the channel's first.
        let epoch = texts[2]
            .split("\"epoch\":\"")
            .nth(1)
            .and_then(|r| r.get(..16))
            .expect("the publish reply carries the position")
            .to_string();
        assert_eq!(
            texts,
            vec![
                format!(r#"{{"id":2,"result":{{"epoch":"{epoch}","offset":0}}}}"#),
                format!(
                    r#"{{"push":"publication","channel":"a","epoch":"{epoch}","offset":1,"data":[1]}}"#
                ),
                format!(r#"{{"id":3,"result":{{"epoch":"{epoch}","offset":1}}}}"#),
            ]
        );
    }
}
