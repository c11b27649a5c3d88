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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Sender, TrySendError};
use slab::Slab;
use switchboard_protocol::envelope::{self, CallAction, ConnectResult, Empty};
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use switchboard_protocol::handshake::{self, HandshakeLimits, Parse, Upgrade};
use switchboard_protocol::{
    CloseCode, Command, Error as WireError, ErrorCode, Format, Message, MessageAssembler, Payload,
    Position,
};

use crate::access::{Access, Action, Verdict};
use crate::auth::{ControlRequest, Identity, ScheduleJob};
use crate::channels::ChannelIndex;
use crate::config::EngineConfig;
use crate::control::{
    AdminOp, CallTarget, Caller, ConnFilter, ConnView, ControlCommand, Frames, Maintenance, Push,
    PushTo, Target,
};
use crate::journal::{
    Batch, Durability, JournalLink, MarkKind, MarkRecord, Policies, Policy, Record,
    Refusal as JournalRefusal,
};
use crate::limits::{Buckets, Compiled, LimitEvent, LimitTable, Scope};
use crate::marks::{Marks, ReceiptList};
use crate::mesh::{
    Answer, MarkUpdate, Mesh, PresenceKind, PresenceUpdate, Publication, PublishReply, QueryKind,
    Refusal, Refused, ReplyBody, ReplyKind, SequenceReq, Sequenced, ShardMsg, StreamQuery,
    StreamReply, UserSubscription,
};
use crate::metrics::{CloseKind, CommandKind, ShardMetrics, COMMAND_SAMPLE};
use crate::outq::OutQueue;
use crate::presence::{ClientId, Event as PresenceEvent, Presence};
use crate::session::Sessions;
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
    /// Tick the last reconnect token was issued (`u32::MAX`: none yet).
    token_at: u32,
    /// What only some connections use, allocated on first use (keeps a plain
    /// subscriber small).
    ext: Option<Box<ConnExt>>,
    /// Its rate-limit state, made on its first command while connection rules exist
    /// (64 bytes; kept out of `ext` so a limited connection does not pay for all of it).
    limits: Option<Box<ConnLimits>>,
}

/// A connection's rate-limit state.
#[derive(Debug, Default)]
struct ConnLimits {
    /// Its buckets, one per event.
    buckets: Buckets,
    /// Commands refused by a rate limit in a row.
    refused_in_a_row: u32,
    /// Its user's key in the shared user buckets (0: not looked up yet).
    user_key: u64,
}

/// Filler for unused entries of a rule list.
const NO_RULE: Compiled = Compiled {
    ms_per_event: 1.0,
    burst: 0.0,
};

/// The parts of a connection's state only some connections use.
#[derive(Debug, Default)]
struct ConnExt {
    /// Token from `Authorization: Bearer` on the upgrade, used by a token-less `connect`.
    bearer: Option<Box<str>>,
    /// Device id given in `connect` (its inbox cursor).
    device: Option<Box<str>>,
    /// Presence status set with `status` (`None`: online).
    status: Option<Arc<str>>,
    /// The channel this connection is typing in, and the tick its start was last sent.
    typing: Option<(Arc<str>, u32)>,
    /// The channel its user's own presence is reported on (`online:<user>`), when
    /// user presence is on.
    presence_self: Option<Arc<str>>,
    /// It sent a call command: the call worker hears when it goes.
    in_call: bool,
    /// Coalescing keys of control-plane pushes sent to it, with the last frame of each
    /// (replaced in the queue by the next one while still unwritten). At most
    /// [`MAX_COALESCE_KEYS`], oldest dropped.
    coalesced: Vec<(Arc<str>, Bytes)>,
}

/// Most users whose last-seen time a shard remembers.
const MAX_LAST_SEEN: usize = 200_000;

/// Most coalescing keys remembered per connection.
const MAX_COALESCE_KEYS: usize = 8;

impl Conn {
    fn ext(&self) -> Option<&ConnExt> {
        self.ext.as_deref()
    }

    fn ext_mut(&mut self) -> &mut ConnExt {
        self.ext.get_or_insert_with(Default::default)
    }

    fn device(&self) -> Option<&str> {
        self.ext()?.device.as_deref()
    }

    fn typing_in(&self) -> Option<&(Arc<str>, u32)> {
        self.ext()?.typing.as_ref()
    }

    fn presence_self(&self) -> Option<Arc<str>> {
        self.ext()?.presence_self.clone()
    }
}

/// Subscribers waiting until every other shard has learned about new interest.
#[derive(Debug, Default)]
struct InterestRound {
    /// Acknowledgments still expected.
    acks_left: usize,
    /// `(slot, gen, how to answer, recover since)` of subscriptions to answer when
    /// done.
    waiters: Vec<(u32, u32, ReplyKind, Option<Position>)>,
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
    /// Connections a control-plane push goes to (reused).
    push_slots: Vec<u32>,
    /// Commands handled (picks the sampled ones).
    commands_seen: u32,
    /// Rate limits in force (replaced whole at runtime).
    rate_limits: Arc<LimitTable>,
    /// Per-user rate-limit buckets kept by this shard, for users the shared table
    /// ([`crate::limits::UserBuckets`]) had no room for or with `rate_limit_users = 0`
    /// (made on a user's first limited command, dropped with its last connection here).
    user_buckets: HashMap<Arc<str>, Box<Buckets>>,
    /// Maintenance mode (admin API): new connections are refused.
    maintenance: Option<Arc<Maintenance>>,
    /// When users whose last connection here closed were last seen (Unix ms; at most
    /// [`MAX_LAST_SEEN`] users, then it starts over).
    last_seen: HashMap<Arc<str>, u64>,
    /// Users whose tokens were revoked, and when (reconnect tokens issued before are
    /// refused).
    revoked: HashMap<Arc<str>, u64>,
    mesh: Arc<Mesh>,
    control: Sender<ControlRequest>,
    metrics: Arc<ShardMetrics>,
    /// The kind of command whose replies are being written now (for
    /// `switchboard_command_results_total`): set where a command is dispatched and
    /// where an answer computed elsewhere comes back.
    answering: CommandKind,
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
    /// Inbox cursors and receipts of the channels this shard owns.
    marks: Marks,
    /// This turn's cursor and receipt changes for the store.
    journal_marks: Vec<MarkRecord>,
    /// Reconnect tokens (absent when `reconnect_ttl_ms` is 0).
    sessions: Option<Sessions>,
    /// The namespaces' access rules.
    access: Access,
    /// Each user's open connections on this shard (personal channels, server-side
    /// subscriptions, notifications and calls).
    users: HashMap<Arc<str>, UserConns>,
    /// A bit per shard of the process.
    all_shards: u64,
    /// Who is on the channels this shard owns (namespaces with presence).
    presence: Presence,
    /// Namespaces with presence, and whether they push events.
    presence_ns: HashMap<Box<str>, bool>,
    /// The status every connection starts with.
    online: Arc<str>,
    /// Typing connections by the tick their typing expires (in order: one timeout).
    typing_expiry: VecDeque<(u32, u32, u32)>,
}

/// A user's connections on one shard: one inline (the common case), more in a list.
#[derive(Debug, Default)]
enum UserConns {
    #[default]
    None,
    One([u32; 1]),
    Many(Vec<u32>),
}

impl UserConns {
    fn slots(&self) -> &[u32] {
        match self {
            UserConns::None => &[],
            UserConns::One(s) => s,
            UserConns::Many(v) => v,
        }
    }

    fn add(&mut self, slot: u32) {
        *self = match std::mem::take(self) {
            UserConns::None => UserConns::One([slot]),
            UserConns::One([a]) => UserConns::Many(vec![a, slot]),
            UserConns::Many(mut v) => {
                v.push(slot);
                UserConns::Many(v)
            }
        };
    }

    /// Remove `slot`; true when none is left.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            UserConns::None => true,
            UserConns::One([a]) => *a == slot,
            UserConns::Many(v) => {
                v.retain(|&s| s != slot);
                if v.len() == 1 {
                    *self = UserConns::One([v[0]]);
                }
                false
            }
        }
    }
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
        let mesh_shards = mesh.shards();
        let (seeds, seeded_marks) = mesh.take_seeds(id);
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
            push_slots: Vec::new(),
            commands_seen: 0,
            // Compiled by `EngineConfig::validate` first, which refuses bad rules.
            rate_limits: Arc::new(cfg.limits().unwrap_or_default()),
            user_buckets: HashMap::new(),
            maintenance: None,
            revoked: HashMap::new(),
            last_seen: HashMap::new(),
            mesh,
            control,
            metrics,
            answering: CommandKind::Ping,
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
            marks,
            journal_marks: Vec::new(),
            sessions,
            // Compiled by `EngineConfig::validate` first, which refuses bad rules.
            access: cfg.access().unwrap_or_default(),
            users: HashMap::new(),
            presence: Presence::new(),
            presence_ns: cfg
                .namespaces
                .iter()
                .filter(|n| n.presence)
                .map(|n| (n.name.as_str().into(), n.presence_events))
                .chain(
                    (!cfg.user_presence_namespace.is_empty())
                        .then(|| (cfg.user_presence_namespace.as_str().into(), true)),
                )
                .collect(),
            online: Arc::from("online"),
            typing_expiry: VecDeque::new(),
            all_shards: if mesh_shards >= 64 {
                u64::MAX
            } else {
                (1u64 << mesh_shards) - 1
            },
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
            token_at: u32::MAX,
            ext: None,
            limits: None,
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
                    Ok(Parse::Complete(up)) if !self.origin_allowed(up.origin.as_deref()) => {
                        src.clear();
                        let refused = WireError::Handshake {
                            status: 403,
                            reason: "origin not allowed",
                        };
                        self.reject_handshake(slot, &refused);
                        return;
                    }
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

    /// Whether a browser from `origin` may connect (`engine.allowed_origins`).
    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let patterns = &self.cfg.allowed_origins;
        match origin {
            None => true,
            Some(o) => {
                patterns.is_empty() || patterns.iter().any(|p| crate::auth::glob_match(p, o))
            }
        }
    }

    fn upgraded(&mut self, slot: u32, up: Upgrade) {
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        conn.format = up.format;
        conn.state = ConnState::AwaitingConnect;
        conn.since = now;
        if let Some(b) = up.bearer.as_deref() {
            conn.ext_mut().bearer = Some(b.into());
        }
        conn.out.push_unbounded(Bytes::from(up.response()));
        mark_dirty(conn, slot, &mut self.dirty);
        ShardMetrics::add(&self.metrics.upgraded, 1);
        self.schedule(slot, now as u64 + self.ticks.auth as u64);
        if let Some(m) = self.maintenance.clone() {
            let reason = format!("maintenance: {}", m.message);
            self.begin_close_after(
                slot,
                CloseCode::MAINTENANCE,
                &reason,
                CloseKind::Maintenance,
                true,
                Some(m.retry_after_ms),
            );
        }
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
                self.detach(slot, true);
                self.closed(slot, CloseKind::ClientClose);
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

    /// Hot path: one command; one in [`COMMAND_SAMPLE`] is timed.
    fn handle_command(&mut self, slot: u32, payload: &Bytes) {
        self.commands_seen = self.commands_seen.wrapping_add(1);
        if self.commands_seen % COMMAND_SAMPLE != 0 {
            return self.dispatch_command(slot, payload);
        }
        let start = Instant::now();
        self.dispatch_command(slot, payload);
        self.metrics
            .observe_command_us(start.elapsed().as_micros() as u64);
    }

    fn dispatch_command(&mut self, slot: u32, payload: &Bytes) {
        let conn = &mut self.conns[slot as usize];
        let format = conn.format;
        let req = match envelope::decode_request(format, payload) {
            Ok(r) => r,
            Err(e) => return self.fail(slot, &e),
        };
        let id = req.id;
        let state = conn.state;
        let event = limit_event(&req.command);
        self.answering = command_kind(&req.command);
        ShardMetrics::add(&self.metrics.commands[self.answering as usize], 1);
        match req.command {
            Command::Ping => self.reply_ok(slot, id),
            Command::Invalid(why) => self.reply_err(slot, id, ErrorCode::BadRequest, why),
            Command::Connect {
                token,
                reconnect,
                device,
                positions,
            } => match state {
                ConnState::AwaitingConnect => {
                    if let Some(d) = device {
                        conn.ext_mut().device = Some(d.as_ref().into());
                    }
                    if let Some(rt) = reconnect {
                        return self.resume(slot, id, &rt, &positions);
                    }
                    let token = match token {
                        Some(t) => t.into_owned(),
                        None => match conn.ext.as_mut().and_then(|e| e.bearer.take()) {
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
            _ if !self.rate_limits.is_empty() && !self.within_limits(slot, id, event) => {}
            Command::Subscribe { channel, since } => {
                self.subscribe(slot, ReplyKind::Command(id), &channel, since)
            }
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
            Command::Send {
                user,
                data,
                key,
                meta,
            } => self.send_direct(slot, id, &user, data, meta, key.as_deref()),
            Command::Ack { offset } => self.ack_inbox(slot, id, offset),
            Command::Receipt {
                channel,
                delivered,
                read,
            } => self.receipt(slot, id, &channel, delivered, read),
            Command::Receipts { channel } => self.ask_receipts(slot, id, &channel),
            Command::Schedule {
                channel,
                user,
                data,
                meta,
                at,
                delay,
            } => self.schedule_from(
                slot,
                id,
                channel.as_deref(),
                user.as_deref(),
                data,
                meta,
                at,
                delay,
            ),
            Command::Unschedule { schedule } => self.unschedule(slot, id, schedule),
            Command::Status { status } => self.set_status(slot, id, &status),
            Command::Typing { channel, typing } => self.typing(slot, id, &channel, typing),
            Command::Presence { channel } => self.ask_presence(slot, id, &channel, true),
            Command::PresenceCount { channel } => self.ask_presence(slot, id, &channel, false),
            Command::Notifications {
                limit,
                before,
                unread,
            } => self.forward(
                slot,
                id,
                ControlCommand::Notifications {
                    limit,
                    before,
                    unread,
                },
            ),
            Command::NotificationsRead { notification } => self.forward(
                slot,
                id,
                ControlCommand::NotificationsRead { id: notification },
            ),
            Command::NotificationsTopic { topic, subscribe } => {
                let allowed = self.conns[slot as usize]
                    .identity
                    .as_ref()
                    .map(|i| i.claim_values("topics").map(String::from).collect())
                    .unwrap_or_default();
                let cmd = ControlCommand::Topic {
                    topic: topic.into_owned(),
                    subscribe,
                    allowed,
                };
                self.forward(slot, id, cmd)
            }
            Command::Call {
                user,
                channel,
                media,
                data,
            } => self.call(slot, id, user.as_deref(), channel.as_deref(), media, data),
            Command::CallAction {
                call,
                action,
                reason,
            } => {
                let channels = match action {
                    CallAction::Accept => self.conns[slot as usize].subs.to_vec(),
                    _ => Vec::new(),
                };
                let cmd = ControlCommand::CallAction {
                    call,
                    action,
                    reason: reason.map(Cow::into_owned),
                    channels,
                };
                self.forward(slot, id, cmd)
            }
            Command::CallSignal {
                call,
                to,
                data,
                quality,
            } => {
                let to = match to.as_deref().map(crate::control::parse_client_id) {
                    Some(None) => {
                        return self.reply_err(
                            slot,
                            id,
                            ErrorCode::BadRequest,
                            "'to' is not a client id (shard.slot.generation)",
                        )
                    }
                    to => to.flatten(),
                };
                let data = match data.to_value() {
                    Ok(v) => v,
                    Err(e) => {
                        return self.reply_err(slot, id, ErrorCode::BadRequest, &e.to_string())
                    }
                };
                let cmd = ControlCommand::CallSignal {
                    call,
                    to,
                    data,
                    quality,
                };
                self.forward(slot, id, cmd)
            }
        }
    }

    // ---- admin actions ---------------------------------------------------------------

    fn on_admin(&mut self, op: AdminOp) {
        match op {
            AdminOp::Disconnect {
                who,
                reason,
                reconnect,
                spread_ms,
                done,
            } => {
                let slots = self.targets(&who);
                for &slot in &slots {
                    let hint = (spread_ms > 0).then(|| {
                        let mix = slot.wrapping_mul(2_654_435_761) ^ self.now.rotate_left(13);
                        mix % spread_ms
                    });
                    self.begin_close_after(
                        slot,
                        CloseCode::KICKED,
                        &reason,
                        CloseKind::Kicked,
                        reconnect,
                        hint,
                    );
                }
                let _ = done.send(slots.len());
            }
            AdminOp::Maintenance { mode, done } => {
                self.maintenance = mode.clone();
                #[derive(serde::Serialize)]
                struct Push<'a> {
                    push: &'static str,
                    on: bool,
                    #[serde(flatten)]
                    mode: Option<&'a Maintenance>,
                }
                let push = Push {
                    push: "maintenance",
                    on: mode.is_some(),
                    mode: mode.as_deref(),
                };
                let frames = crate::control::frames(&push);
                let slots = self.targets(&Target::All);
                for &slot in &slots {
                    self.push_control(slot, &frames, None);
                }
                while let Some(slot) = self.overflowed.pop() {
                    self.slow_consumer(slot);
                }
                let _ = done.send(slots.len());
            }
            AdminOp::Revoke {
                user,
                before_ms,
                done,
            } => {
                let slots = self.targets(&Target::User(user.clone()));
                self.revoked.insert(user, before_ms);
                for &slot in &slots {
                    self.begin_close(
                        slot,
                        CloseCode::REVOKED,
                        "token revoked",
                        CloseKind::Revoked,
                    );
                }
                let _ = done.send(slots.len());
            }
            AdminOp::Census { done } => {
                let mut c = crate::control::Census::default();
                for (_, conn) in self.conns.iter() {
                    match conn.state {
                        ConnState::Handshaking => c.handshaking += 1,
                        ConnState::AwaitingConnect | ConnState::Authenticating { .. } => {
                            c.awaiting_connect += 1
                        }
                        ConnState::Open => c.open += 1,
                        ConnState::Closing | ConnState::Draining | ConnState::Closed => {
                            c.closing += 1
                        }
                    }
                    let bytes = conn.out.charged() as u64;
                    c.queued_frames += conn.out.len() as u64;
                    c.queued_bytes += bytes;
                    c.max_queued_bytes = c.max_queued_bytes.max(bytes);
                }
                let _ = done.send(c);
            }
            AdminOp::LastSeen { user, done } => {
                let seen = if self.users.contains_key(&*user) {
                    Some(unix_ms())
                } else {
                    self.last_seen.get(&*user).copied()
                };
                let _ = done.send(seen);
            }
            AdminOp::List {
                filter,
                limit,
                done,
            } => {
                let _ = done.send(self.list_connections(&filter, limit));
            }
        }
    }

    /// The open connections an admin action names, on this shard.
    fn targets(&self, who: &Target) -> Vec<u32> {
        match who {
            Target::Client(c) => {
                let here = c.shard == self.id
                    && self
                        .conns
                        .get(c.slot as usize)
                        .is_some_and(|x| x.gen == c.gen && x.state == ConnState::Open);
                if here {
                    vec![c.slot]
                } else {
                    vec![]
                }
            }
            Target::User(u) => self.users.get(&**u).map_or(vec![], |u| u.slots().to_vec()),
            Target::All => self
                .conns
                .iter()
                .filter(|(_, c)| c.state == ConnState::Open)
                .map(|(slot, _)| slot as u32)
                .collect(),
        }
    }

    fn list_connections(&self, f: &ConnFilter, limit: usize) -> Vec<ConnView> {
        let tick = self.cfg.tick_ms;
        let mut out = Vec::new();
        for (slot, c) in self.conns.iter() {
            if out.len() >= limit {
                break;
            }
            let user = c.identity.as_ref().map(|i| &*i.user);
            let age_ms = self.now.wrapping_sub(c.since) as u64 * tick;
            let keep = c.state != ConnState::Closed
                && f.user.as_deref().is_none_or(|u| user == Some(u))
                && f.ip.is_none_or(|ip| ip == c.peer)
                && f.channel
                    .as_deref()
                    .is_none_or(|ch| c.subs.iter().any(|s| **s == *ch))
                && f.min_age_ms.is_none_or(|m| age_ms >= m)
                && f.client
                    .is_none_or(|id| id.slot == slot as u32 && id.gen == c.gen);
            if !keep {
                continue;
            }
            out.push(ConnView {
                client: ClientId {
                    shard: self.id,
                    slot: slot as u32,
                    gen: c.gen,
                },
                user: user.map(String::from),
                ip: c.peer.to_string(),
                state: match c.state {
                    ConnState::Handshaking => "handshaking",
                    ConnState::AwaitingConnect => "awaiting_connect",
                    ConnState::Authenticating { .. } => "authenticating",
                    ConnState::Open => "open",
                    ConnState::Closing | ConnState::Draining => "closing",
                    ConnState::Closed => "closed",
                },
                format: match c.format {
                    Format::Json => "json",
                    Format::MsgPack => "msgpack",
                },
                age_ms,
                device: c.device().map(String::from),
                subscriptions: c.subs.len(),
                channels: f
                    .detail
                    .then(|| c.subs.iter().map(|s| s.to_string()).collect()),
                queued_frames: c.out.len(),
                queued_bytes: c.out.charged(),
                rate_limited_in_a_row: c.limits.as_ref().map_or(0, |l| l.refused_in_a_row),
            });
        }
        out
    }

    // ---- rate limits ---------------------------------------------------------------

    /// Hot path (every command while rules exist): take one event from the
    /// connection's and the user's buckets for `event` and for `command`; when one is
    /// empty, take nothing, answer 114 with when to retry, and close a connection that
    /// keeps at it (4008).
    fn within_limits(&mut self, slot: u32, id: u32, event: LimitEvent) -> bool {
        let now_ms = self.now.wrapping_mul(self.cfg.tick_ms as u32);
        let table = &*self.rate_limits;
        let conn = &mut self.conns[slot as usize];
        let Some(identity) = conn.identity.as_ref() else {
            return true;
        };
        let tier = identity
            .claims
            .iter()
            .find(|(k, _)| &**k == "tier")
            .and_then(|(_, v)| v.first())
            .map(|v| &**v);
        let events = [LimitEvent::Command, event];
        let n = if event == LimitEvent::Command { 1 } else { 2 };
        // [connection, user] × [command, event]
        let mut rules = [[None; 2]; 2];
        for (s, scope) in [Scope::Connection, Scope::User].into_iter().enumerate() {
            for i in 0..n {
                rules[s][i] = table.rule(tier, scope, events[i]);
            }
        }
        if rules.iter().flatten().all(Option::is_none) {
            return true;
        }
        // The user-scope rules that apply, and the user's key in the shared buckets
        // (computed once per connection).
        let mut user_rules = [(LimitEvent::Command, NO_RULE); 2];
        let mut user_n = 0;
        for i in 0..n {
            if let Some(r) = rules[1][i] {
                user_rules[user_n] = (events[i], r);
                user_n += 1;
            }
        }
        let users = self.cfg.rate_limit_users as usize;
        let shared = (user_n > 0 && users > 0).then(|| self.mesh.user_buckets(users));
        let user_key = match shared {
            Some(shared) => {
                let state = conn.limits.get_or_insert_with(Default::default);
                if state.user_key == 0 {
                    state.user_key = shared.key(&identity.user);
                }
                state.user_key
            }
            None => 0,
        };
        let user_rules = &user_rules[..user_n];
        // The connection's buckets: checked first, taken only when everything fits.
        let fresh: Buckets = Default::default();
        let mine = conn.limits.as_ref().map_or(&fresh, |l| &l.buckets);
        let mut wait: Option<(u32, LimitEvent)> = None;
        for i in 0..n {
            let Some(r) = rules[0][i] else { continue };
            if let Err(ms) = mine[events[i].index()].check(r, now_ms) {
                if wait.is_none_or(|(w, _)| ms > w) {
                    wait = Some((ms, events[i]));
                }
            }
        }
        // The user's buckets, shared by the shards: taken all or none when the
        // connection's fit; else only read, to say the longest wait.
        let mut on_this_shard = user_n > 0 && shared.is_none();
        if let Some(shared) = shared {
            match wait {
                Some((w, _)) => {
                    let (ms, e) = shared.wait(user_key, user_rules, now_ms);
                    if ms > w {
                        wait = Some((ms, e));
                    }
                }
                None => match shared.take(user_key, user_rules, now_ms, table.user_idle_ms()) {
                    Ok(true) => {}
                    // No room in the shared table: this shard keeps the user's buckets.
                    Ok(false) => on_this_shard = true,
                    Err(refused) => wait = Some(refused),
                },
            }
        }
        if on_this_shard {
            let theirs = self
                .user_buckets
                .get(&*identity.user)
                .map_or(&fresh, |b| &**b);
            for &(e, r) in user_rules {
                if let Err(ms) = theirs[e.index()].check(r, now_ms) {
                    if wait.is_none_or(|(w, _)| ms > w) {
                        wait = Some((ms, e));
                    }
                }
            }
        }
        if let Some((ms, e)) = wait {
            ShardMetrics::add(&self.metrics.rate_limited[e.index()], 1);
            let format = conn.format;
            let state = conn.limits.get_or_insert_with(Default::default);
            state.refused_in_a_row += 1;
            let limit = self.cfg.rate_limit_disconnect_after;
            if limit > 0 && state.refused_in_a_row >= limit {
                tracing::info!(
                    target: "security",
                    client = %self.client_id(slot),
                    event = e.name(),
                    "closed after repeated rate-limit refusals"
                );
                self.begin_close(
                    slot,
                    CloseCode::RATE_LIMITED,
                    "rate limits exceeded repeatedly",
                    CloseKind::RateLimited,
                );
            } else {
                self.metrics
                    .answered(self.answering, Some(ErrorCode::RateLimited as u16));
                let why = RATE_LIMITED_MESSAGES[e.index()];
                self.enqueue(
                    slot,
                    envelope::encode_rate_limited(format, id, why, ms.max(1)),
                );
            }
            return false;
        }
        let state = conn.limits.get_or_insert_with(Default::default);
        state.refused_in_a_row = 0;
        let mine = &mut state.buckets;
        for i in 0..n {
            if let Some(r) = rules[0][i] {
                mine[events[i].index()].take(r, now_ms);
            }
        }
        if on_this_shard {
            let user = &identity.user;
            let theirs = match self.user_buckets.get_mut(&**user) {
                Some(b) => b,
                None => self.user_buckets.entry(user.clone()).or_default(),
            };
            for &(e, r) in user_rules {
                theirs[e.index()].take(r, now_ms);
            }
        }
        true
    }

    /// Replace the rate limits (admin API); buckets keep what they used.
    pub fn set_rate_limits(&mut self, table: Arc<LimitTable>) {
        self.rate_limits = table;
    }

    // ---- notifications and calls -------------------------------------------------

    /// `call`: the caller's right to call the user (the token's `send_to`, as for
    /// direct messages) or to publish in the room is checked here; the call worker
    /// does the rest.
    fn call(
        &mut self,
        slot: u32,
        id: u32,
        user: Option<&str>,
        channel: Option<&str>,
        media: Option<Cow<'_, str>>,
        data: Option<Payload<'_>>,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        let to = match (user, channel) {
            (Some(u), _) if u.is_empty() || u.len() > envelope::MAX_KEY_BYTES => {
                Err((ErrorCode::BadRequest, "invalid user id"))
            }
            (Some(u), _) if *u == *identity.user => {
                Err((ErrorCode::BadRequest, "a user cannot call themselves"))
            }
            (Some(u), _) if !identity.may_send(u) => Err((
                ErrorCode::PermissionDenied,
                "calling this user is not allowed by the token",
            )),
            (Some(u), _) => Ok(CallTarget::User(u.to_string())),
            (None, Some(c)) => self
                .check_channel(slot, c, Action::Publish)
                .map(|()| CallTarget::Room(c.to_string())),
            (None, None) => Err((ErrorCode::BadRequest, "call needs a user or a channel")),
        };
        let to = match to {
            Ok(t) => t,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        let data = match data.map(|d| d.to_value()).transpose() {
            Ok(d) => d,
            Err(e) => return self.reply_err(slot, id, ErrorCode::BadRequest, &e.to_string()),
        };
        let cmd = ControlCommand::Call {
            to,
            media: media.map(Cow::into_owned),
            data,
        };
        self.forward(slot, id, cmd);
    }

    /// The caller of `slot`'s commands, as the control plane sees it.
    fn caller(&self, slot: u32) -> Option<Caller> {
        let conn = &self.conns[slot as usize];
        Some(Caller {
            user: conn.identity.as_ref()?.user.clone(),
            client: ClientId {
                shard: self.id,
                slot,
                gen: conn.gen,
            },
            device: conn.device().map(Box::from),
        })
    }

    /// Hand a notification or call command to its control-plane worker.
    fn forward(&mut self, slot: u32, id: u32, cmd: ControlCommand) {
        let Some(caller) = self.caller(slot) else {
            return;
        };
        if cmd.is_call() {
            self.conns[slot as usize].ext_mut().in_call = true;
        }
        let req = ControlRequest::Command {
            shard: self.id,
            conn: ConnKey {
                slot,
                gen: caller.client.gen,
            },
            req_id: id,
            caller,
            cmd,
        };
        self.ask_control(slot, id, req);
    }

    /// A control-plane push: to users' connections here, one connection, or a
    /// channel's local subscribers.
    fn on_push(&mut self, push: &Push) {
        let coalesce = push.coalesce.as_ref();
        let mut slots = std::mem::take(&mut self.push_slots);
        match &push.to {
            PushTo::Users(list) => {
                for (user, frames) in list {
                    let Some(u) = self.users.get(&**user) else {
                        continue;
                    };
                    slots.clear();
                    slots.extend_from_slice(u.slots());
                    for &slot in &slots {
                        self.push_control(slot, frames, coalesce);
                    }
                }
            }
            PushTo::All(frames) => {
                slots.clear();
                slots.extend(
                    self.conns
                        .iter()
                        .filter(|(_, c)| c.state == ConnState::Open)
                        .map(|(slot, _)| slot as u32),
                );
                for &slot in &slots {
                    self.push_control(slot, frames, coalesce);
                }
            }
            PushTo::Client(client, frames) => {
                let here = client.shard == self.id
                    && self
                        .conns
                        .get(client.slot as usize)
                        .is_some_and(|c| c.gen == client.gen);
                if here {
                    self.push_control(client.slot, frames, coalesce);
                }
            }
            PushTo::Channel {
                channel,
                except,
                frames,
            } => {
                let skip = except.filter(|c| c.shard == self.id).map(|c| c.slot);
                slots.clear();
                if let Some(entry) = self.channels.local(channel) {
                    slots.extend(entry.subscribers.iter().filter(|&&s| Some(s) != skip));
                }
                for &slot in &slots {
                    self.push_control(slot, frames, coalesce);
                }
            }
        }
        self.push_slots = slots;
        while let Some(slot) = self.overflowed.pop() {
            self.slow_consumer(slot);
        }
    }

    /// Queue a control-plane push on `slot`; with a coalescing key, replace the
    /// previous frame of that key if it is still waiting unwritten.
    fn push_control(&mut self, slot: u32, frames: &Frames, coalesce: Option<&Arc<str>>) {
        let limit = self.cfg.max_outbound_bytes;
        let conn = &mut self.conns[slot as usize];
        if conn.state != ConnState::Open {
            return;
        }
        let frame = &frames[conn.format.index()];
        if let Some(key) = coalesce {
            let Conn { ext, out, .. } = conn;
            let ext = ext.get_or_insert_with(Default::default);
            if let Some(i) = ext.coalesced.iter().position(|(k, _)| k == key) {
                if out.replace_unstarted(&ext.coalesced[i].1, frame.clone()) {
                    ext.coalesced[i].1 = frame.clone();
                    ShardMetrics::add(&self.metrics.coalesced, 1);
                    return;
                }
                ext.coalesced.remove(i);
            }
        }
        if conn.out.push(frame.clone(), limit).is_err() {
            self.overflowed.push(slot);
            return;
        }
        if let Some(key) = coalesce {
            let ext = conn.ext_mut();
            if ext.coalesced.len() == MAX_COALESCE_KEYS {
                ext.coalesced.remove(0);
            }
            ext.coalesced.push((key.clone(), frame.clone()));
        }
        ShardMetrics::add(&self.metrics.deliveries, 1);
        mark_dirty(conn, slot, &mut self.dirty);
    }

    // ---- sessions ----------------------------------------------------------------

    /// `connect` with a reconnect token: checked here (no control-plane round trip);
    /// the session's subscriptions are restored, each recovering from the position
    /// the client names in `positions`. A refused token leaves the connection waiting
    /// for another `connect`.
    fn resume(&mut self, slot: u32, id: u32, token: &str, positions: &[(String, Position)]) {
        let Some(sessions) = &self.sessions else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "reconnect tokens are off; connect with a token",
            );
        };
        if positions.len() > self.cfg.max_subscriptions_per_connection {
            return self.reply_err(
                slot,
                id,
                ErrorCode::LimitExceeded,
                "more positions than max_subscriptions_per_connection",
            );
        }
        let resumed = match sessions.check(token, unix_ms()) {
            Ok(r) => r,
            Err(f) => {
                ShardMetrics::add(&self.metrics.resumes_refused, 1);
                return self.reply_err(slot, id, f.code, &f.message);
            }
        };
        let revoked_at = self.revoked.get(&*resumed.identity.user).copied();
        let ttl = self.cfg.reconnect_ttl_ms;
        if revoked_at.is_some_and(|at| resumed.expires_ms <= at.saturating_add(ttl)) {
            ShardMetrics::add(&self.metrics.resumes_refused, 1);
            return self.reply_err(
                slot,
                id,
                ErrorCode::Unauthorized,
                "reconnect token revoked; connect with a new token",
            );
        }
        ShardMetrics::add(&self.metrics.resumes, 1);
        let conn = &mut self.conns[slot as usize];
        if conn.device().is_none() {
            if let Some(d) = resumed.device {
                conn.ext_mut().device = Some(d.into());
            }
        }
        // The token's channels (as of its last renewal) and the ones the client names.
        let mut channels = resumed.channels;
        for (c, _) in positions {
            if !channels.contains(c) {
                channels.push(c.clone());
            }
        }
        self.opened(slot, id, resumed.identity, &channels, true);
        for channel in &channels {
            let since = positions
                .iter()
                .find(|(c, _)| c == channel)
                .map(|(_, p)| *p);
            self.subscribe(slot, ReplyKind::Resumed, channel, since);
        }
    }

    /// The connection is authenticated: answer `connect` (with a reconnect token for
    /// `channels`), start its heartbeat, and, for a device (a `connect` that named its
    /// device id), subscribe its inbox with the backlog after the device's cursor.
    /// Connections without a device id pay nothing for inboxes.
    fn opened(
        &mut self,
        slot: u32,
        req_id: u32,
        identity: Arc<Identity>,
        channels: &[String],
        resumed: bool,
    ) {
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Open;
        conn.identity = Some(identity.clone());
        ShardMetrics::add(&self.metrics.authenticated, 1);
        let peer = conn.peer;
        let device = conn.device().map(str::to_string);
        let client = self.client_id(slot);
        tracing::debug!(
            client = %client,
            user = &*identity.user,
            peer = %peer,
            resumed,
            "connection opened"
        );
        let token = self.issue_token(slot, channels.iter().map(String::as_str));
        let reply = ConnectResult {
            client: client.to_string(),
            user: identity.user.to_string(),
            shard: self.id,
            ping_interval_ms: self.cfg.ping_interval_ms,
            expires_at: identity.expires_at,
            device,
            reconnect_expires_at: token.as_ref().map(|t| t.1),
            reconnect_token: token.map(|t| t.0),
            resumed,
        };
        self.metrics.answered(CommandKind::Connect, None);
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, req_id, &reply));
        let at = self.now as u64 + self.ticks.ping as u64;
        self.schedule(slot, at);
        // Indexed even with the personal channel off: notifications and calls reach
        // users through it.
        self.users
            .entry(identity.user.clone())
            .or_default()
            .add(slot);
        let ns = &self.cfg.user_presence_namespace;
        if !ns.is_empty() {
            let channel = format!("{ns}:{}", identity.user);
            if envelope::valid_channel(&channel) {
                let channel: Arc<str> = channel.into();
                self.conns[slot as usize].ext_mut().presence_self = Some(channel.clone());
                let status = self.online.clone();
                self.report_presence(slot, &channel, PresenceKind::Join { status });
            }
        }
        if self.conns[slot as usize].device().is_some() {
            if let Some(inbox) = self.inbox_of(&identity.user) {
                self.subscribe(slot, ReplyKind::Inbox, &inbox, None);
            }
        }
    }

    /// A reconnect token for the connection's identity, device and `channels`.
    fn issue_token<'c>(
        &mut self,
        slot: u32,
        channels: impl Iterator<Item = &'c str>,
    ) -> Option<(String, u64)> {
        let sessions = self.sessions.as_ref()?;
        let conn = &mut self.conns[slot as usize];
        let identity = conn.identity.as_ref()?;
        conn.token_at = self.now;
        let expires = unix_ms() + self.cfg.reconnect_ttl_ms;
        Some(sessions.issue(identity, conn.device(), channels, expires))
    }

    /// Push a fresh reconnect token naming the connection's current subscriptions
    /// (once half of the last one's life has passed: the only unrequested push, every
    /// `reconnect_ttl_ms / 2` at most).
    fn push_token(&mut self, slot: u32) {
        if self.sessions.is_none() {
            return;
        }
        let subs: Vec<Arc<str>> = self.conns[slot as usize]
            .subs
            .iter()
            .filter(|c| !self.automatic(c))
            .cloned()
            .collect();
        let Some((token, expires_at)) = self.issue_token(slot, subs.iter().map(|c| &**c)) else {
            return;
        };
        #[derive(serde::Serialize)]
        struct TokenPush<'a> {
            push: &'static str,
            token: &'a str,
            expires_at: u64,
        }
        let format = self.conns[slot as usize].format;
        let push = TokenPush {
            push: "reconnect",
            token: &token,
            expires_at,
        };
        self.enqueue(slot, envelope::encode_push(format, &push));
    }

    /// The inbox channel of `user`, when direct messages are on.
    fn inbox_of(&self, user: &str) -> Option<String> {
        let ns = self.cfg.inbox.as_deref()?;
        let channel = format!("{ns}:{user}");
        envelope::valid_channel(&channel).then_some(channel)
    }

    /// The user whose inbox `channel` is, if it is one.
    fn inbox_user<'c>(&self, channel: &'c str) -> Option<&'c str> {
        let ns = self.cfg.inbox.as_deref()?;
        channel.strip_prefix(ns)?.strip_prefix(':')
    }

    /// The user whose personal channel `channel` is, if it is one.
    fn personal_user<'c>(&self, channel: &'c str) -> Option<&'c str> {
        let ns = &self.cfg.personal_namespace;
        if ns.is_empty() {
            return None;
        }
        channel.strip_prefix(ns.as_str())?.strip_prefix(':')
    }

    /// Whether `channel` is one the server joins on its own (the connection's inbox
    /// or personal channel): they do not count against the subscription limit and are
    /// not named in reconnect tokens.
    fn automatic(&self, channel: &str) -> bool {
        self.inbox_user(channel).is_some() || self.personal_user(channel).is_some()
    }

    /// Whether the connection may do `action` on `channel`. Inboxes: only one's own,
    /// read only (`send` writes them). Personal channels: one's own may be read;
    /// writing needs the namespace's publish rules. Elsewhere the namespace's rules for
    /// the action decide, and where it has none, the token's `channels` claim.
    fn check_channel(
        &self,
        slot: u32,
        channel: &str,
        action: Action,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if !envelope::valid_channel(channel) {
            return Err((ErrorCode::BadRequest, "invalid channel name"));
        }
        let Some(identity) = self.conns[slot as usize].identity.as_deref() else {
            return Err((ErrorCode::NotConnected, "send connect first"));
        };
        let denied = |why| Err((ErrorCode::PermissionDenied, why));
        if let Some(owner) = self.inbox_user(channel) {
            return match (action, &*identity.user == owner) {
                (Action::Publish, _) => denied("write to an inbox with send"),
                (_, true) => Ok(()),
                (_, false) => denied("not your inbox"),
            };
        }
        let verdict = self.access.check(identity, channel, action);
        if let Some(owner) = self.personal_user(channel) {
            return match (action, &*identity.user == owner, verdict) {
                (Action::Publish, _, Verdict::Allowed) => Ok(()),
                (Action::Publish, ..) => {
                    denied("not allowed by the personal namespace's publish rules")
                }
                (Action::Subscribe, true, _) => Err((
                    ErrorCode::AlreadySubscribed,
                    "every connection is on its personal channel",
                )),
                (_, true, _) => Ok(()),
                (_, false, _) => denied("not your personal channel"),
            };
        }
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied => denied(match action {
                Action::Subscribe => "not allowed by the namespace's subscribe rules",
                Action::Publish => "not allowed by the namespace's publish rules",
                Action::History => "not allowed by the namespace's history rules",
                Action::Presence => "not allowed by the namespace's presence rules",
            }),
            Verdict::NoRules if identity.may_use(channel) => Ok(()),
            Verdict::NoRules => denied("channel not allowed by token"),
        }
    }

    /// Subscribe the connection to `channel`; the answer goes as `to` says (a command
    /// reply, or a push for a restored subscription or the inbox).
    fn subscribe(&mut self, slot: u32, to: ReplyKind, channel: &str, since: Option<Position>) {
        // The server API subscribes whom it wants; everyone else is checked.
        if to != ReplyKind::Server {
            if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
                return self.refuse(slot, to, channel, code, why);
            }
        } else if !envelope::valid_channel(channel) {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::BadRequest,
                "invalid channel name",
            );
        }
        let conn = &self.conns[slot as usize];
        // The server's own channels do not count against the limit.
        let counted = conn.subs.iter().filter(|c| !self.automatic(c)).count();
        if to != ReplyKind::Inbox && counted >= self.cfg.max_subscriptions_per_connection {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::LimitExceeded,
                "too many subscriptions",
            );
        }
        let (format, gen) = (conn.format, conn.gen);
        let Some((name, change)) = self.channels.subscribe(channel, slot, format) else {
            return self.refuse(
                slot,
                to,
                channel,
                ErrorCode::AlreadySubscribed,
                "already subscribed",
            );
        };
        self.conns[slot as usize].subs.push(name.clone());
        if self.tracks_members(&name) {
            let status = self.conns[slot as usize]
                .ext()
                .and_then(|e| e.status.clone());
            let status = status.unwrap_or_else(|| self.online.clone());
            self.report_presence(slot, &name, PresenceKind::Join { status });
        }
        self.starting.entry(name.clone()).or_default().push(slot);
        let others = self.mesh.shards() - 1;
        if change.before != change.after && others > 0 {
            // Answer only once every other shard routes this channel's publications
            // here, so nothing published after the reply can miss this subscriber.
            self.announce(&name, change.after, true);
            let round = self.interest.entry(name).or_default();
            round.acks_left += others;
            round.waiters.push((slot, gen, to, since));
        } else if let Some(round) = self.interest.get_mut(&name) {
            round.waiters.push((slot, gen, to, since));
        } else {
            self.ask_owner(slot, gen, to, name, subscribe_kind(to, since));
        }
    }

    /// An error for a command, or an error push about `channel` for what the server
    /// did on its own (a restored subscription, the inbox).
    fn refuse(&mut self, slot: u32, to: ReplyKind, channel: &str, code: ErrorCode, why: &str) {
        let push = match to {
            ReplyKind::Command(id) => return self.reply_err(slot, id, code, why),
            ReplyKind::Resumed | ReplyKind::Server => "subscribed",
            ReplyKind::Inbox => "inbox",
        };
        #[derive(serde::Serialize)]
        struct Failed<'a> {
            push: &'a str,
            channel: &'a str,
            error: FailedBody<'a>,
        }
        #[derive(serde::Serialize)]
        struct FailedBody<'a> {
            code: u16,
            message: &'a str,
        }
        let body = Failed {
            push,
            channel,
            error: FailedBody {
                code: code as u16,
                message: why,
            },
        };
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_push(format, &body));
    }

    /// Send a stream question to the channel's owner (answered at once if that is us).
    fn ask_owner(
        &mut self,
        slot: u32,
        gen: u32,
        to: ReplyKind,
        channel: Arc<str>,
        kind: QueryKind,
    ) {
        let device = match kind {
            QueryKind::Inbox => self.conns[slot as usize].device().map(Arc::from),
            _ => None,
        };
        let q = StreamQuery {
            channel,
            kind,
            shard: self.id,
            conn: ConnKey { slot, gen },
            to,
            device,
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
            QueryKind::Inbox => {
                let cursor = q
                    .device
                    .as_deref()
                    .and_then(|d| self.marks.cursor(&q.channel, d));
                let r = self
                    .streams
                    .backlog(&q.channel, cursor, policy.keep, self.now, ttl);
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
            to: q.to,
            subscribe,
            top,
            recovered,
            publications,
        }
    }

    /// On the asking shard: answer the command (or push); a subscription goes live.
    fn on_stream_reply(&mut self, r: StreamReply) {
        self.answering = if r.subscribe {
            CommandKind::Subscribe
        } else {
            CommandKind::History
        };
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
        let to = match r.to {
            ReplyKind::Command(id) if r.subscribe && r.recovered.is_none() => {
                // A plain subscribe: the position the subscription starts after.
                return self.reply_position(slot, id, r.top);
            }
            ReplyKind::Command(id) => envelope::ReplyTo::Id(id),
            ReplyKind::Resumed | ReplyKind::Server => envelope::ReplyTo::Push {
                push: "subscribed",
                channel: &r.channel,
            },
            ReplyKind::Inbox => envelope::ReplyTo::Push {
                push: "inbox",
                channel: &r.channel,
            },
        };
        let pubs = r.publications.iter().map(|e| envelope::StoredPublication {
            offset: e.offset,
            from: e.from.as_deref(),
            meta: e.meta.as_ref().map(|m| Payload {
                format: e.format,
                raw: m,
            }),
            data: Payload {
                format: e.format,
                raw: &e.data,
            },
        });
        match envelope::encode_stream_reply(format, to, r.top, r.recovered, pubs) {
            Ok(frame) => {
                // Unbounded: the client asked for it, and `history_size` bounds it.
                let conn = &mut self.conns[slot as usize];
                conn.out.push_unbounded(frame);
                mark_dirty(conn, slot, &mut self.dirty);
            }
            Err(e) => {
                let channel = r.channel.clone();
                self.refuse(slot, r.to, &channel, ErrorCode::BadRequest, &e.to_string())
            }
        }
    }

    fn history(&mut self, slot: u32, id: u32, channel: &str, kind: QueryKind) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::History) {
            return self.reply_err(slot, id, code, why);
        }
        let gen = self.conns[slot as usize].gen;
        let name = self
            .channels
            .name(channel)
            .unwrap_or_else(|| Arc::from(channel));
        self.ask_owner(slot, gen, ReplyKind::Command(id), name, kind);
    }

    fn unsubscribe(&mut self, slot: u32, id: u32, channel: &str) {
        if !self.leave(slot, channel) {
            return self.reply_err(slot, id, ErrorCode::NotSubscribed, "not subscribed");
        }
        self.reply_ok(slot, id);
    }

    /// Take the connection off `channel`; false if it was not subscribed.
    fn leave(&mut self, slot: u32, channel: &str) -> bool {
        let format = self.conns[slot as usize].format;
        let Some(change) = self.channels.unsubscribe(channel, slot, format) else {
            return false;
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
        if self.tracks_members(&name) {
            self.report_presence(slot, &name, PresenceKind::Leave { linger: false });
        }
        true
    }

    /// The server API subscribes (or unsubscribes) every connection of a user on this
    /// shard (found through the user's personal channel); each is told with a push.
    fn user_subscription(&mut self, u: UserSubscription) {
        let slots: Vec<u32> = self
            .users
            .get(&*u.user)
            .map(|c| c.slots().to_vec())
            .unwrap_or_default();
        let mut affected = 0;
        for slot in slots {
            let open = self
                .conns
                .get(slot as usize)
                .is_some_and(|c| c.state == ConnState::Open);
            if !open {
                continue;
            }
            if u.join {
                let already = self.conns[slot as usize]
                    .subs
                    .iter()
                    .any(|c| **c == *u.channel);
                if !already {
                    self.subscribe(slot, ReplyKind::Server, &u.channel, u.since);
                    affected += 1;
                }
            } else if self.leave(slot, &u.channel) {
                #[derive(serde::Serialize)]
                struct Left<'a> {
                    push: &'static str,
                    channel: &'a str,
                }
                let format = self.conns[slot as usize].format;
                let push = Left {
                    push: "unsubscribed",
                    channel: &u.channel,
                };
                self.enqueue(slot, envelope::encode_push(format, &push));
                affected += 1;
            }
        }
        if let Some(done) = u.done {
            let _ = done.send(affected);
        }
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
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Publish) {
            return self.reply_err(slot, id, code, why);
        }
        self.route_publish(slot, id, channel, data, meta, key, None);
    }

    /// Hand a connection's checked publication to the channel's owner (this shard or
    /// another), which answers its `publish` with the position.
    #[allow(clippy::too_many_arguments)]
    fn route_publish(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        from: Option<Arc<str>>,
    ) {
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
            return self.sequence(channel, data, meta, Instant::now(), key, from, reply);
        }
        // Another shard owns the channel's stream: it sequences, fans out and tells us
        // the position to answer with.
        let req = SequenceReq::new(channel, data, meta, key, from, reply);
        self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
    }

    // ---- presence ---------------------------------------------------------------------

    /// Whether `channel`'s namespace tracks presence, and if so whether it pushes
    /// events.
    #[inline]
    fn presence_events_of(&self, channel: &str) -> Option<bool> {
        if self.presence_ns.is_empty() {
            return None;
        }
        let (ns, _) = channel.split_once(':')?;
        self.presence_ns.get(ns).copied()
    }

    /// Whether subscribing to `channel` makes a connection present on it (a channel of
    /// a namespace with presence; not the users' own presence channels, which report
    /// their user's connections, not their watchers).
    #[inline]
    fn tracks_members(&self, channel: &str) -> bool {
        self.presence_events_of(channel).is_some()
            && !channel
                .strip_prefix(self.cfg.user_presence_namespace.as_str())
                .is_some_and(|rest| {
                    !self.cfg.user_presence_namespace.is_empty() && rest.starts_with(':')
                })
    }

    /// Tell `channel`'s owner that this connection joined, left or changed status.
    fn report_presence(&mut self, slot: u32, channel: &Arc<str>, kind: PresenceKind) {
        let conn = &self.conns[slot as usize];
        let Some(identity) = &conn.identity else {
            return;
        };
        let update = PresenceUpdate {
            channel: channel.clone(),
            user: identity.user.clone(),
            client: crate::presence::ClientId {
                shard: self.id,
                slot,
                gen: conn.gen,
            },
            device: conn.device().map(Box::from),
            kind,
        };
        let owner = streams::owner(channel, self.mesh.shards());
        if owner == self.id {
            self.apply_presence(update);
        } else {
            self.send_to(owner, ShardMsg::Presence(Box::new(update)));
        }
    }

    /// On the owner: apply a presence change and push what it means to the members.
    fn apply_presence(&mut self, u: PresenceUpdate) {
        let now_ms = unix_ms();
        let event = match u.kind {
            PresenceKind::Join { status } => self.presence.join(
                &u.channel,
                &u.user,
                u.client,
                u.device.as_deref(),
                &status,
                now_ms,
            ),
            PresenceKind::Leave { linger } => {
                let grace = ms_to_ticks(self.cfg.presence_grace_ms, self.cfg.tick_ms);
                let until = linger.then(|| self.now.wrapping_add(grace.max(1)));
                self.presence
                    .leave(&u.channel, &u.user, u.client, until, now_ms)
            }
            PresenceKind::Status { status } => {
                self.presence.status(&u.channel, &u.user, u.client, &status)
            }
        };
        if let Some(e) = event {
            self.push_presence(&u.channel, &e);
        }
    }

    /// Push a presence event to `channel`'s subscribers (if its namespace wants them).
    fn push_presence(&mut self, channel: &str, event: &PresenceEvent) {
        if self.presence_events_of(channel) != Some(true) {
            return;
        }
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        #[derive(serde::Serialize)]
        struct Push<'a> {
            push: &'static str,
            channel: &'a str,
            event: &'static str,
            user: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            last_seen: Option<u64>,
        }
        let push = match event {
            PresenceEvent::Join { user, status } => Push {
                push: "presence",
                channel,
                event: "join",
                user,
                status: Some(status),
                last_seen: None,
            },
            PresenceEvent::Leave { user, at_ms } => Push {
                push: "presence",
                channel,
                event: "leave",
                user,
                status: None,
                last_seen: Some(*at_ms),
            },
            PresenceEvent::Status { user, status } => Push {
                push: "presence",
                channel,
                event: "status",
                user,
                status: Some(status),
                last_seen: None,
            },
        };
        let frames = push_frames(needed, &push);
        let name = self.audience_name(channel);
        let position = self.streams.current(channel).unwrap_or_default();
        self.fan_out(name, position, frames, Instant::now(), local, remote);
    }

    /// `status`: this connection's status on every channel it is present on.
    fn set_status(&mut self, slot: u32, id: u32, status: &str) {
        let status: Arc<str> = if status == "online" {
            self.online.clone()
        } else {
            status.into()
        };
        self.conns[slot as usize].ext_mut().status = Some(status.clone());
        if !self.presence_ns.is_empty() {
            let conn = &self.conns[slot as usize];
            let mut subs = conn.subs.clone();
            subs.retain(|c| self.tracks_members(c));
            subs.extend(conn.presence_self());
            for name in subs {
                let kind = PresenceKind::Status {
                    status: status.clone(),
                };
                self.report_presence(slot, &name, kind);
            }
        }
        self.reply_ok(slot, id);
    }

    /// `presence` / `presence_count`: asked of the channel's owner.
    fn ask_presence(&mut self, slot: u32, id: u32, channel: &str, members: bool) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Presence) {
            return self.reply_err(slot, id, code, why);
        }
        if self.presence_events_of(channel).is_none() {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "this channel's namespace does not track presence",
            );
        }
        let answer = Answer::Client {
            shard: self.id,
            conn: ConnKey {
                slot,
                gen: self.conns[slot as usize].gen,
            },
            req_id: id,
        };
        let owner = streams::owner(channel, self.mesh.shards());
        if owner == self.id {
            let list = self.presence.list(channel, members);
            self.answer_with(answer, list, CommandKind::Presence, ReplyBody::Presence);
        } else {
            let msg = ShardMsg::PresenceQuery {
                channel: channel.into(),
                members,
                answer,
            };
            self.send_to(owner, msg);
        }
    }

    // ---- typing -------------------------------------------------------------------------

    /// `typing`: tell the channel's other subscribers this user started (or stopped)
    /// typing. Never stored or sequenced; sent from this shard straight to the
    /// subscribers' shards. A start is sent at most once per `typing_throttle_ms`
    /// per connection (repeats in between are answered and absorbed); a connection
    /// types in one channel at a time (starting in another stops the first); a start
    /// with no stop within `typing_timeout_ms` of the last one is stopped by the server.
    fn typing(&mut self, slot: u32, id: u32, channel: &str, typing: bool) {
        let conn = &self.conns[slot as usize];
        let Some(name) = conn.subs.iter().find(|c| ***c == *channel).cloned() else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::NotSubscribed,
                "typing needs a subscription",
            );
        };
        if !typing {
            if conn.typing_in().is_some_and(|(c, _)| *c == name) {
                self.stop_typing(slot);
            }
            return self.reply_ok(slot, id);
        }
        let throttle = ms_to_ticks(self.cfg.typing_throttle_ms, self.cfg.tick_ms);
        match conn.typing_in() {
            Some((c, at)) if *c == name && self.now.wrapping_sub(*at) < throttle => {
                return self.reply_ok(slot, id);
            }
            Some((c, _)) if *c != name => self.stop_typing(slot),
            _ => {}
        }
        let gen = self.conns[slot as usize].gen;
        self.conns[slot as usize].ext_mut().typing = Some((name.clone(), self.now));
        let timeout = ms_to_ticks(self.cfg.typing_timeout_ms, self.cfg.tick_ms).max(1);
        self.typing_expiry
            .push_back((self.now.wrapping_add(timeout), slot, gen));
        self.push_typing(slot, &name, true);
        self.reply_ok(slot, id);
    }

    /// Stop the connection's typing and tell the channel.
    fn stop_typing(&mut self, slot: u32) {
        let typing = self.conns[slot as usize]
            .ext
            .as_mut()
            .and_then(|e| e.typing.take());
        if let Some((channel, _)) = typing {
            self.push_typing(slot, &channel, false);
        }
    }

    /// Stop typing whose last start is older than `typing_timeout_ms`.
    fn expire_typing(&mut self) {
        let timeout = ms_to_ticks(self.cfg.typing_timeout_ms, self.cfg.tick_ms).max(1);
        while let Some(&(deadline, slot, gen)) = self.typing_expiry.front() {
            if deadline > self.now {
                break;
            }
            self.typing_expiry.pop_front();
            let expired = self.conns.get(slot as usize).is_some_and(|c| {
                c.gen == gen
                    && c.typing_in()
                        .is_some_and(|(_, at)| self.now.wrapping_sub(*at) >= timeout)
            });
            if expired {
                self.stop_typing(slot);
            }
        }
    }

    fn push_typing(&mut self, slot: u32, channel: &Arc<str>, typing: bool) {
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        let Some(user) = self.conns[slot as usize]
            .identity
            .as_ref()
            .map(|i| i.user.clone())
        else {
            return;
        };
        #[derive(serde::Serialize)]
        struct Push<'a> {
            push: &'static str,
            channel: &'a str,
            user: &'a str,
            typing: bool,
        }
        let push = Push {
            push: "typing",
            channel,
            user: &user,
            typing,
        };
        let frames = push_frames(needed, &push);
        let publication = Arc::new(Publication {
            channel: channel.clone(),
            position: Position::default(),
            frames,
            created: Instant::now(),
            droppable: true,
        });
        self.fan_out_publication(publication, local, remote);
    }

    // ---- inboxes, receipts, scheduling ---------------------------------------------

    /// `send`: a direct message into `user`'s inbox, carrying the sender's user id.
    fn send_direct(
        &mut self,
        slot: u32,
        id: u32,
        user: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        let channel = match self.dm_target(&identity, user) {
            Ok(c) => c,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        self.route_publish(
            slot,
            id,
            &channel,
            data,
            meta,
            key,
            Some(identity.user.clone()),
        );
    }

    /// The inbox channel a connection of `identity` may send to for `user`.
    fn dm_target(
        &self,
        identity: &Identity,
        user: &str,
    ) -> Result<String, (ErrorCode, &'static str)> {
        if self.cfg.inbox.is_none() {
            return Err((ErrorCode::BadRequest, "direct messages are off"));
        }
        if !identity.may_send(user) {
            return Err((
                ErrorCode::PermissionDenied,
                "sending to this user is not allowed by the token",
            ));
        }
        self.inbox_of(user)
            .ok_or((ErrorCode::BadRequest, "invalid user id"))
    }

    /// `ack`: this device has processed its inbox up to `offset`.
    fn ack_inbox(&mut self, slot: u32, id: u32, offset: u64) {
        let conn = &self.conns[slot as usize];
        let Some(device) = conn.device().map(Box::from) else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "connect with a 'device' to keep an inbox cursor",
            );
        };
        let Some(inbox) = conn.identity.as_ref().and_then(|i| self.inbox_of(&i.user)) else {
            return self.reply_err(slot, id, ErrorCode::BadRequest, "direct messages are off");
        };
        self.mark(MarkUpdate {
            channel: inbox.into(),
            kind: MarkKind::Cursor,
            who: device,
            delivered: None,
            read: Some(offset),
        });
        self.reply_ok(slot, id);
    }

    /// `receipt`: this user received / read `channel` up to these offsets.
    fn receipt(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
            return self.reply_err(slot, id, code, why);
        }
        let Some(user) = self.conns[slot as usize].identity.as_ref().map(|i| &i.user) else {
            return;
        };
        let update = MarkUpdate {
            channel: channel.into(),
            kind: MarkKind::Receipt,
            who: user.as_ref().into(),
            delivered,
            read,
        };
        self.mark(update);
        self.reply_ok(slot, id);
    }

    /// Apply a cursor or receipt change on the channel's owner (here or there).
    fn mark(&mut self, update: MarkUpdate) {
        let owner = streams::owner(&update.channel, self.mesh.shards());
        if owner == self.id {
            self.apply_mark(update);
        } else {
            self.send_to(owner, ShardMsg::Mark(Box::new(update)));
        }
    }

    /// On the owner: move the mark (never beyond what was released), hand the change
    /// to the store, and push a receipt to the channel's subscribers.
    fn apply_mark(&mut self, u: MarkUpdate) {
        let top = self.streams.current(&u.channel).unwrap_or_default();
        let clamp = |o: Option<u64>| o.map(|o| o.min(top.offset));
        let at_ms = unix_ms();
        match u.kind {
            MarkKind::Cursor => {
                let to = Position {
                    epoch: top.epoch,
                    offset: clamp(u.read).unwrap_or(0),
                };
                if let Some(rec) = self.marks.set_cursor(&u.channel, &u.who, to, at_ms) {
                    if self.journal.is_some() {
                        self.journal_marks.push(rec);
                    }
                }
            }
            MarkKind::Receipt => {
                let Some(r) = self.marks.set_receipt(
                    &u.channel,
                    &u.who,
                    top.epoch,
                    clamp(u.delivered),
                    clamp(u.read),
                    at_ms,
                ) else {
                    return;
                };
                if self.journal.is_some() {
                    self.journal_marks.push(MarkRecord {
                        channel: u.channel.clone(),
                        kind: MarkKind::Receipt,
                        who: u.who.clone(),
                        epoch: r.epoch,
                        delivered: r.delivered,
                        read: r.read,
                        at_ms,
                    });
                }
                self.push_receipt(&u.channel, &u.who, r);
            }
        }
    }

    /// Who receives `channel`'s publications: the formats of this shard's subscribers
    /// (a bit per `Format::index()`), the other shards with subscribers per format, and
    /// the formats to encode. A personal channel goes to every shard in both formats
    /// (other shards do not announce interest in personal channels: a user's
    /// connections come and go too often for that to pay), and here to the user's
    /// connections.
    ///
    /// Hot path: one lookup for a channel, two for a personal one.
    #[inline]
    fn audience(&self, channel: &str) -> (u8, [u64; 2], u8) {
        if let Some(user) = self.personal_user(channel) {
            let local = self.users.get(user).map_or(0, |u| self.formats_of(u));
            let others = self.all_shards & !(1u64 << self.id);
            let remote = [others, others];
            let needed = local | if others != 0 { 0b11 } else { 0 };
            return (local, remote, needed);
        }
        let local = self.channels.local(channel).map_or(0, |e| e.formats());
        let remote = self.channels.remote(channel);
        let needed = local | (remote[0] != 0) as u8 | ((remote[1] != 0) as u8) << 1;
        (local, remote, needed)
    }

    /// The shared name of a channel with an audience (subscribers, or a stream).
    fn audience_name(&self, channel: &str) -> Arc<str> {
        self.channels
            .name(channel)
            .or_else(|| self.streams.name(channel))
            .unwrap_or_else(|| Arc::from(channel))
    }

    /// The formats of a user's connections here.
    fn formats_of(&self, u: &UserConns) -> u8 {
        u.slots().iter().fold(0, |acc, &slot| {
            acc | self
                .conns
                .get(slot as usize)
                .map_or(0, |c| 1 << c.format.index())
        })
    }

    /// Tell `channel`'s subscribers (on every shard) that `user`'s receipt moved.
    fn push_receipt(&mut self, channel: &str, user: &str, r: crate::marks::Receipt) {
        let (local, remote, needed) = self.audience(channel);
        if needed == 0 {
            return;
        }
        #[derive(serde::Serialize)]
        struct ReceiptPush<'a> {
            push: &'static str,
            channel: &'a str,
            user: &'a str,
            epoch: &'a str,
            delivered: u64,
            read: u64,
            at: u64,
        }
        let position = Position {
            epoch: r.epoch,
            offset: r.read,
        };
        let epoch = position.epoch_hex();
        let push = ReceiptPush {
            push: "receipt",
            channel,
            user,
            epoch: epoch.as_str(),
            delivered: r.delivered,
            read: r.read,
            at: r.at_ms,
        };
        let frames = push_frames(needed, &push);
        let name = self.audience_name(channel);
        self.fan_out(name, position, frames, Instant::now(), local, remote);
    }

    /// `receipts`: asked of the channel's owner.
    fn ask_receipts(&mut self, slot: u32, id: u32, channel: &str) {
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Subscribe) {
            return self.reply_err(slot, id, code, why);
        }
        let answer = Answer::Client {
            shard: self.id,
            conn: ConnKey {
                slot,
                gen: self.conns[slot as usize].gen,
            },
            req_id: id,
        };
        let owner = streams::owner(channel, self.mesh.shards());
        if owner == self.id {
            let list = self.receipt_list(channel);
            self.answer_with(answer, list, CommandKind::Receipts, ReplyBody::Receipts);
        } else {
            let channel = channel.into();
            self.send_to(owner, ShardMsg::Receipts { channel, answer });
        }
    }

    /// On the owner: every receipt of `channel`, with its current position.
    fn receipt_list(&self, channel: &str) -> ReceiptList {
        let top = self.streams.current(channel);
        ReceiptList {
            channel: channel.to_string(),
            epoch: top.map_or(String::new(), |p| p.epoch_hex().as_str().to_string()),
            offset: top.map_or(0, |p| p.offset),
            receipts: self.marks.receipts(channel),
        }
    }

    /// Send a value computed here (the owner) where it was asked for: a connection's
    /// command (here or on another shard), or the server API.
    fn answer_with<T>(
        &mut self,
        answer: Answer<T>,
        value: T,
        command: CommandKind,
        wrap: fn(T) -> ReplyBody,
    ) {
        match answer {
            Answer::Client {
                shard,
                conn,
                req_id,
            } => {
                let result = Ok(wrap(value));
                if shard == self.id {
                    self.replied(conn, req_id, command, result);
                } else {
                    self.send_to(
                        shard,
                        ShardMsg::Reply {
                            conn,
                            req_id,
                            command,
                            result,
                        },
                    );
                }
            }
            Answer::Api(tx) => {
                let _ = tx.send(value);
            }
        }
    }

    /// Answer a connection's command with a result computed elsewhere.
    fn replied(
        &mut self,
        conn: ConnKey,
        req_id: u32,
        command: CommandKind,
        result: Result<ReplyBody, Refused>,
    ) {
        let open = self
            .conns
            .get(conn.slot as usize)
            .is_some_and(|c| c.gen == conn.gen && c.state == ConnState::Open);
        if !open {
            return;
        }
        let format = self.conns[conn.slot as usize].format;
        if result.is_ok() {
            self.metrics.answered(command, None);
        }
        let frame = match result {
            Ok(ReplyBody::Empty) => envelope::encode_result(format, req_id, &Empty {}),
            Ok(ReplyBody::Scheduled { id, at }) => {
                #[derive(serde::Serialize)]
                struct Scheduled {
                    schedule: u64,
                    at: u64,
                }
                let s = Scheduled { schedule: id, at };
                envelope::encode_result(format, req_id, &s)
            }
            Ok(ReplyBody::Receipts(list)) => envelope::encode_result(format, req_id, &list),
            Ok(ReplyBody::Presence(list)) => envelope::encode_result(format, req_id, &list),
            Ok(ReplyBody::Value(v)) => envelope::encode_result(format, req_id, &v),
            Err(e) => {
                self.metrics.answered(command, Some(e.code as u16));
                envelope::encode_error(format, req_id, e.code, &e.message)
            }
        };
        self.enqueue(conn.slot, frame);
    }

    /// `schedule`: checked here (the same rights as publishing or sending now, plus the
    /// token's `schedule` claim), stored and fired by the control plane.
    #[allow(clippy::too_many_arguments)]
    fn schedule_from(
        &mut self,
        slot: u32,
        id: u32,
        channel: Option<&str>,
        user: Option<&str>,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        at: Option<u64>,
        delay: Option<u64>,
    ) {
        let Some(identity) = self.conns[slot as usize].identity.clone() else {
            return;
        };
        if !identity.schedule {
            return self.reply_err(
                slot,
                id,
                ErrorCode::PermissionDenied,
                "scheduling is not allowed by the token",
            );
        }
        let target = match (channel, user) {
            (Some(c), _) => self
                .check_channel(slot, c, Action::Publish)
                .map(|()| (c.to_string(), None)),
            (None, Some(u)) => self
                .dm_target(&identity, u)
                .map(|c| (c, Some(identity.user.clone()))),
            (None, None) => Err((ErrorCode::BadRequest, "schedule needs a channel or a user")),
        };
        let (channel, from) = match target {
            Ok(t) => t,
            Err((code, why)) => return self.reply_err(slot, id, code, why),
        };
        let due_ms = match (at, delay) {
            (Some(at), _) => at,
            (None, Some(d)) => unix_ms().saturating_add(d),
            (None, None) => unix_ms(),
        };
        let job = ScheduleJob {
            channel,
            from,
            format: data.format,
            data: Bytes::copy_from_slice(data.raw),
            meta: meta.map(|m| Bytes::copy_from_slice(m.raw)),
            due_ms,
            owner: identity.user.clone(),
        };
        let conn = ConnKey {
            slot,
            gen: self.conns[slot as usize].gen,
        };
        let req = ControlRequest::Schedule {
            shard: self.id,
            conn,
            req_id: id,
            job,
        };
        self.ask_control(slot, id, req);
    }

    /// `unschedule`: cancelled by the control plane if this user scheduled it.
    fn unschedule(&mut self, slot: u32, id: u32, schedule: u64) {
        let conn = &self.conns[slot as usize];
        let Some(owner) = conn.identity.as_ref().map(|i| i.user.clone()) else {
            return;
        };
        let req = ControlRequest::Unschedule {
            shard: self.id,
            conn: ConnKey {
                slot,
                gen: conn.gen,
            },
            req_id: id,
            id: schedule,
            owner,
        };
        self.ask_control(slot, id, req);
    }

    /// Hand a request to the control plane; it answers with [`ShardMsg::Reply`].
    fn ask_control(&mut self, slot: u32, id: u32, req: ControlRequest) {
        match self.control.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.reply_err(
                slot,
                id,
                ErrorCode::Overloaded,
                "the control plane is busy, retry",
            ),
            Err(TrySendError::Disconnected(_)) => self.reply_err(
                slot,
                id,
                ErrorCode::Internal,
                "the control plane is unavailable",
            ),
        }
    }

    fn reply_position(&mut self, slot: u32, id: u32, pos: Position) {
        self.metrics.answered(self.answering, None);
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
        self.metrics.answered(self.answering, None);
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
        self.answering = CommandKind::Publish;
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
            envelope::encode_publication(data.format, channel, Position::default(), data)?;
            self.sequence(
                channel,
                data,
                None,
                Instant::now(),
                None,
                None,
                PublishReply::None,
            );
            return Ok(());
        }
        let req = SequenceReq::new(channel, data, None, None, None, PublishReply::None);
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
        reply: PublishReply,
    ) {
        debug_assert_eq!(streams::owner(channel, self.mesh.shards()), self.id);
        if let Some(key) = key {
            let window = ms_to_ticks(self.cfg.dedupe_window_ms, self.cfg.tick_ms);
            if let Some(original) = self.streams.dedupe(channel, key, self.now, window) {
                return self.answer_retry(channel, original, reply);
            }
        }
        let (local, remote, needed) = self.audience(channel);
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
                let sender = from.as_deref();
                match envelope::encode_publication_full(f, channel, position, sender, meta, data) {
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
                from,
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
                    from: entry.from.clone(),
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
            let name = self.audience_name(channel);
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
            droppable: false,
        });
        self.fan_out_publication(publication, local, remote);
    }

    /// Deliver a built publication locally and to the other shards in `remote`.
    fn fan_out_publication(&mut self, publication: Arc<Publication>, local: u8, remote: [u64; 2]) {
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
            let from = entry.from.clone();
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
                        match envelope::encode_publication_full(
                            f,
                            &channel,
                            position,
                            from.as_deref(),
                            meta,
                            data,
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
        if !self.journal_buf.is_empty() || !self.journal_marks.is_empty() {
            self.flush_journal();
        }
        self.retry_spill()
    }

    fn flush_journal(&mut self) {
        let Some(link) = &self.journal else {
            self.journal_buf.clear();
            self.journal_marks.clear();
            return;
        };
        let records = std::mem::replace(&mut self.journal_buf, Vec::with_capacity(64));
        let batch = Batch {
            shard: self.id,
            seq: self.journal_seq,
            notify: std::mem::take(&mut self.journal_notify),
            records,
            marks: std::mem::take(&mut self.journal_marks),
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

    /// An ephemeral push (typing): queued only on subscribers whose queue is under half
    /// its limit; the others skip it rather than being closed as slow consumers, so it
    /// is what backpressure drops first. Not counted in delivery latency.
    fn deliver_droppable(&mut self, p: &Publication) {
        let Some(entry) = self.channels.local(&p.channel) else {
            return;
        };
        let limit = self.cfg.max_outbound_bytes / 2;
        let holding: &[u32] = self.starting.get(&p.channel).map_or(&[], |v| &v[..]);
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
    fn deliver_to_user(&mut self, user: &str, p: &Publication) {
        let Some(u) = self.users.get(user) else {
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
        self.metrics.answered(self.answering, None);
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, &Empty {}));
    }

    fn reply_err(&mut self, slot: u32, id: u32, code: ErrorCode, message: &str) {
        self.metrics.answered(self.answering, Some(code as u16));
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_error(format, id, code, message));
    }

    /// Start the close handshake: unsubscribe, queue a `disconnect` push (application
    /// codes and 1001) and the close frame, and give the peer `close_timeout_ms`.
    fn begin_close(&mut self, slot: u32, code: CloseCode, reason: &str, kind: CloseKind) {
        self.begin_close_after(slot, code, reason, kind, code.reconnect(), None);
    }

    /// [`Self::begin_close`], saying in the `disconnect` push whether to reconnect and
    /// after how long.
    fn begin_close_after(
        &mut self,
        slot: u32,
        code: CloseCode,
        reason: &str,
        kind: CloseKind,
        reconnect: bool,
        reconnect_after_ms: Option<u32>,
    ) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        match conn.state {
            ConnState::Closing | ConnState::Draining | ConnState::Closed => return,
            ConnState::Handshaking => return self.close_now(slot, Some(kind)),
            _ => {}
        }
        self.detach(slot, false);
        self.closed(slot, kind);
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        if code.0 >= 4000 || code == CloseCode::GOING_AWAY {
            conn.out.push_unbounded(envelope::encode_disconnect_after(
                conn.format,
                code.0,
                reason,
                reconnect,
                reconnect_after_ms.filter(|_| reconnect),
            ));
        }
        conn.out.push_unbounded(frame::encode_close(code.0, reason));
        conn.state = ConnState::Closing;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// The id `connect` gave the connection in `slot` (`shard.slot.generation`).
    fn client_id(&self, slot: u32) -> crate::presence::ClientId {
        crate::presence::ClientId {
            shard: self.id,
            slot,
            gen: self.conns[slot as usize].gen,
        }
    }

    /// Count a connection's close, and log it (debug) under the connection's client id,
    /// the correlation id its `connect` reply, the admin API and security events use.
    fn closed(&self, slot: u32, kind: CloseKind) {
        self.metrics.closed(kind);
        let conn = &self.conns[slot as usize];
        tracing::debug!(
            client = %self.client_id(slot),
            user = conn.identity.as_ref().map(|i| &*i.user),
            peer = %conn.peer,
            reason = kind.label(),
            "connection closed"
        );
    }

    /// End a connection at once (no close handshake possible or needed).
    fn close_now(&mut self, slot: u32, kind: Option<CloseKind>) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        if conn.state == ConnState::Closed {
            return;
        }
        self.detach(slot, false);
        if let Some(kind) = kind {
            self.closed(slot, kind);
        }
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Closed;
        conn.out.clear();
        conn.pending_in = None;
        self.wake.push(slot);
    }

    /// Remove a connection from every channel it subscribed.
    /// Take a closing connection off everything. `graceful`: the client said goodbye
    /// (a close frame); otherwise its presence lingers for the grace period.
    fn detach(&mut self, slot: u32, graceful: bool) {
        if self.conns[slot as usize].typing_in().is_some() {
            self.stop_typing(slot);
        }
        if self.conns[slot as usize].ext().is_some_and(|e| e.in_call) {
            if let Some(caller) = self.caller(slot) {
                // With the control plane's queue full the notice is lost and the
                // call stays up until the other side ends it: rare, so said loudly.
                if self
                    .control
                    .try_send(ControlRequest::Gone { caller, graceful })
                    .is_err()
                {
                    tracing::warn!(
                        client = %self.client_id(slot),
                        "control plane busy: a call participant's departure is lost"
                    );
                }
            }
        }
        if !self.presence_ns.is_empty() {
            let conn = &self.conns[slot as usize];
            let mut subs = conn.subs.clone();
            subs.retain(|c| self.tracks_members(c));
            subs.extend(conn.presence_self());
            for name in subs {
                let kind = PresenceKind::Leave { linger: !graceful };
                self.report_presence(slot, &name, kind);
            }
        }
        let conn = &mut self.conns[slot as usize];
        if let Some(identity) = &conn.identity {
            if let Some(u) = self.users.get_mut(&*identity.user) {
                if u.remove(slot) {
                    self.users.remove(&*identity.user);
                    self.user_buckets.remove(&*identity.user);
                    if self.last_seen.len() >= MAX_LAST_SEEN {
                        // Best effort, bounded: start over rather than grow.
                        self.last_seen.clear();
                    }
                    self.last_seen.insert(identity.user.clone(), unix_ms());
                }
            }
        }
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
                    from,
                    reply,
                } = *req;
                let meta = meta.as_ref().map(|m| Payload { format, raw: m });
                self.sequence(
                    &channel,
                    Payload { format, raw: &data },
                    meta,
                    created,
                    key.as_deref(),
                    from,
                    reply,
                );
            }
            ShardMsg::Mark(update) => self.apply_mark(*update),
            ShardMsg::UserSubscription(u) => self.user_subscription(*u),
            ShardMsg::Presence(u) => self.apply_presence(*u),
            ShardMsg::PresenceQuery {
                channel,
                members,
                answer,
            } => {
                let list = self.presence.list(&channel, members);
                self.answer_with(answer, list, CommandKind::Presence, ReplyBody::Presence);
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
                    for (slot, gen, to, since) in round.waiters {
                        let open = self
                            .conns
                            .get(slot as usize)
                            .is_some_and(|c| c.gen == gen && c.state == ConnState::Open);
                        if open {
                            let name = channel.clone();
                            self.ask_owner(slot, gen, to, name, subscribe_kind(to, since));
                        }
                    }
                }
            }
            ShardMsg::AuthDone {
                conn,
                req_id,
                result,
            } => self.auth_done(conn, req_id, result),
            ShardMsg::Push(p) => self.on_push(&p),
            ShardMsg::Limits(table) => self.set_rate_limits(table),
            ShardMsg::Admin(op) => self.on_admin(op),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn auth_done(
        &mut self,
        key: ConnKey,
        req_id: u32,
        result: Result<Arc<Identity>, crate::auth::AuthFailure>,
    ) {
        self.answering = CommandKind::Connect;
        let Some(conn) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if conn.gen != key.gen || conn.state != (ConnState::Authenticating { req_id }) {
            return;
        }
        match result {
            Ok(identity) => self.opened(key.slot, req_id, identity, &[], false),
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
        self.expire_typing();
        if !self.presence_ns.is_empty() {
            for (channel, event) in self.presence.expire(self.now, unix_ms()) {
                self.push_presence(&channel, &event);
            }
        }
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
                // Renew the reconnect token once half its life has passed.
                let half = ms_to_ticks(self.cfg.reconnect_ttl_ms / 2, self.cfg.tick_ms);
                let conn = &self.conns[slot as usize];
                if conn.state == ConnState::Open
                    && conn.token_at != u32::MAX
                    && t.wrapping_sub(conn.token_at) >= half
                {
                    self.push_token(slot);
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
        self.users
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

/// The kind of a command (its name in [`crate::metrics::COMMANDS`]).
fn command_kind(cmd: &Command<'_>) -> CommandKind {
    match cmd {
        Command::Connect { .. } => CommandKind::Connect,
        Command::Ping => CommandKind::Ping,
        Command::Invalid(_) => CommandKind::Invalid,
        Command::Subscribe { .. } => CommandKind::Subscribe,
        Command::Unsubscribe { .. } => CommandKind::Unsubscribe,
        Command::Publish { .. } => CommandKind::Publish,
        Command::History { .. } => CommandKind::History,
        Command::Send { .. } => CommandKind::Send,
        Command::Ack { .. } => CommandKind::Ack,
        Command::Receipt { .. } => CommandKind::Receipt,
        Command::Receipts { .. } => CommandKind::Receipts,
        Command::Schedule { .. } => CommandKind::Schedule,
        Command::Unschedule { .. } => CommandKind::Unschedule,
        Command::Status { .. } => CommandKind::Status,
        Command::Typing { .. } => CommandKind::Typing,
        Command::Presence { .. } => CommandKind::Presence,
        Command::PresenceCount { .. } => CommandKind::PresenceCount,
        Command::Notifications { .. } => CommandKind::Notifications,
        Command::NotificationsRead { .. } => CommandKind::NotificationsRead,
        Command::NotificationsTopic { .. } => CommandKind::NotificationsTopic,
        Command::Call { .. } => CommandKind::Call,
        Command::CallAction { .. } => CommandKind::CallAction,
        Command::CallSignal { .. } => CommandKind::CallSignal,
    }
}

/// The message of a 114 reply, per [`LimitEvent`].
const RATE_LIMITED_MESSAGES: [&str; crate::limits::EVENTS] = [
    "rate limit exceeded: commands",
    "rate limit exceeded: publish",
    "rate limit exceeded: send",
    "rate limit exceeded: subscribe",
    "rate limit exceeded: typing",
    "rate limit exceeded: call",
    "rate limit exceeded: notification",
];

/// What a command counts against in the rate limits (besides `command`).
fn limit_event(cmd: &Command<'_>) -> LimitEvent {
    match cmd {
        Command::Publish { .. } | Command::Schedule { user: None, .. } => LimitEvent::Publish,
        Command::Send { .. } | Command::Schedule { .. } => LimitEvent::Send,
        Command::Subscribe { .. }
        | Command::History { .. }
        | Command::Presence { .. }
        | Command::PresenceCount { .. }
        | Command::Receipts { .. } => LimitEvent::Subscribe,
        Command::Typing { .. }
        | Command::Status { .. }
        | Command::Receipt { .. }
        | Command::Ack { .. } => LimitEvent::Typing,
        Command::Call { .. } | Command::CallAction { .. } | Command::CallSignal { .. } => {
            LimitEvent::Call
        }
        Command::Notifications { .. }
        | Command::NotificationsRead { .. }
        | Command::NotificationsTopic { .. } => LimitEvent::Notification,
        Command::Connect { .. }
        | Command::Ping
        | Command::Invalid(_)
        | Command::Unsubscribe { .. }
        | Command::Unschedule { .. } => LimitEvent::Command,
    }
}

/// A push encoded once for each format in `needed` (a bit per `Format::index()`).
fn push_frames<T: serde::Serialize>(needed: u8, push: &T) -> [Option<Bytes>; 2] {
    let mut frames = [None, None];
    for f in Format::ALL {
        if needed & (1 << f.index()) != 0 {
            frames[f.index()] = Some(envelope::encode_push(f, push));
        }
    }
    frames
}

/// What a subscription asks its channel's owner.
fn subscribe_kind(to: ReplyKind, since: Option<Position>) -> QueryKind {
    match to {
        ReplyKind::Inbox => QueryKind::Inbox,
        _ => QueryKind::Subscribe { since },
    }
}

/// Wall-clock time, Unix milliseconds (token expiry, receipt times).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            let Ok(ControlRequest::Authenticate {
                conn,
                req_id,
                token,
                ..
            }) = self.control.try_recv()
            else {
                panic!("expected an authentication request")
            };
            assert_eq!((conn, req_id, token.as_str()), (key, 1, "t"));
            let identity = Identity {
                user: "u".into(),
                channels: None,
                expires_at: None,
                send_to: None,
                schedule: false,
                claims: Vec::new(),
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

    /// A masked client text frame with `json`.
    fn cmd(json: &str) -> Vec<u8> {
        frame::encode_masked(true, OpCode::Text, json.as_bytes(), [1, 2, 3, 4])
    }

    #[test]
    fn typing_is_dropped_first_under_backpressure() {
        let mut h = harness(|c| c.max_outbound_bytes = 4096);
        let (typist, slow) = (h.open(), h.open());
        for k in [typist, slow] {
            h.read(k, &cmd(r#"{"id":2,"cmd":"subscribe","channel":"room:1"}"#));
            let _ = h.written(k);
        }
        // Fill the slow subscriber's queue past half its limit (nothing is written).
        let pad = "x".repeat(700);
        for i in 0..4 {
            let publish = format!(
                r#"{{"id":{},"cmd":"publish","channel":"room:1","data":"{pad}"}}"#,
                10 + i
            );
            h.read(typist, &cmd(&publish));
        }
        let _ = h.written(typist);
        assert!(h.core.out_mut(slow.slot).unwrap().charged() > 2048);
        h.read(
            typist,
            &cmd(r#"{"id":20,"cmd":"typing","channel":"room:1"}"#),
        );
        assert_eq!(
            h.core.state(slow),
            Some(ConnState::Open),
            "not a slow consumer"
        );
        assert_eq!(
            h.core
                .metrics()
                .ephemeral_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let typed = h.written(typist);
        assert!(
            String::from_utf8_lossy(&typed).contains(r#""typing":true"#),
            "the typist's own connection (queue empty) gets it"
        );
        // The slow one gets its publications, and no typing.
        let out = String::from_utf8_lossy(&h.written(slow)).into_owned();
        assert_eq!(out.matches(r#""push":"publication""#).count(), 4);
        assert!(!out.contains("typing"), "{out}");
    }

    #[test]
    fn control_pushes_reach_users_clients_and_channels_and_coalesce() {
        let mut h = harness(|_| {});
        let (a, b) = (h.open(), h.open());
        h.read(b, &cmd(r#"{"id":2,"cmd":"subscribe","channel":"room:1"}"#));
        let _ = h.written(b);
        let push = |to: PushTo, key: Option<&str>| {
            ShardMsg::Push(Arc::new(Push {
                to,
                coalesce: key.map(Arc::from),
            }))
        };
        let f = |n: u32| crate::control::frames(&serde_json::json!({"push": "x", "n": n}));
        let ns = |bytes: Vec<u8>| -> Vec<u64> {
            frames(&bytes)
                .iter()
                .map(|(_, p)| {
                    let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                    v["n"].as_u64().unwrap()
                })
                .collect()
        };
        // Every connection of a user.
        h.core
            .on_message(push(PushTo::Users(vec![(Arc::from("u"), f(1))]), None));
        assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![1], vec![1]));
        h.core
            .on_message(push(PushTo::Users(vec![(Arc::from("v"), f(9))]), None));
        // One connection, and only while it is the same connection.
        let client = |k: ConnKey, gen: u32| ClientId {
            shard: 0,
            slot: k.slot,
            gen,
        };
        h.core
            .on_message(push(PushTo::Client(client(a, a.gen), f(2)), None));
        h.core
            .on_message(push(PushTo::Client(client(a, a.gen + 1), f(3)), None));
        assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![2], vec![]));
        // A channel's subscribers, but the one left out.
        let channel = |except| PushTo::Channel {
            channel: Arc::from("room:1"),
            except,
            frames: f(4),
        };
        h.core
            .on_message(push(channel(Some(client(b, b.gen))), None));
        assert!(h.written(b).is_empty());
        h.core.on_message(push(channel(None), None));
        assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![], vec![4]));
        // Coalescing: while unwritten, each push of a key replaces the previous one.
        for n in 5..=7 {
            h.core.on_message(push(
                PushTo::Users(vec![(Arc::from("u"), f(n))]),
                Some("progress"),
            ));
        }
        assert_eq!(ns(h.written(a)), vec![7]);
        let metrics = h.core.metrics().clone();
        let coalesced = &metrics.coalesced;
        assert_eq!(coalesced.load(std::sync::atomic::Ordering::Relaxed), 4);
        h.core.on_message(push(
            PushTo::Users(vec![(Arc::from("u"), f(8))]),
            Some("progress"),
        ));
        assert_eq!(ns(h.written(a)), vec![8], "written ones are not replaced");
        assert_eq!(
            ns(h.written(b)),
            vec![8],
            "b, still not written, gets the latest"
        );
        assert_eq!(coalesced.load(std::sync::atomic::Ordering::Relaxed), 5);
    }

    #[test]
    fn call_commands_are_forwarded_and_departures_reported() {
        let mut h = harness(|_| {});
        let a = h.open();
        h.read(a, &cmd(r#"{"id":2,"cmd":"call_accept","call":7}"#));
        let Ok(ControlRequest::Command { caller, cmd: c, .. }) = h.control.try_recv() else {
            panic!("expected a forwarded command")
        };
        assert_eq!((&*caller.user, caller.client.slot), ("u", a.slot));
        assert!(matches!(
            c,
            ControlCommand::CallAction {
                call: 7,
                action: CallAction::Accept,
                ..
            }
        ));
        h.read(
            a,
            &cmd(r#"{"id":3,"cmd":"call_signal","call":7,"to":"0.1","data":1}"#),
        );
        assert!(String::from_utf8_lossy(&h.written(a)).contains("104"));
        h.core.on_eof(a.slot);
        let Ok(ControlRequest::Gone { caller, graceful }) = h.control.try_recv() else {
            panic!("expected a departure")
        };
        assert_eq!((caller.client.slot, graceful), (a.slot, false));
        // A connection that never took part in a call is not reported.
        let b = h.open();
        h.core.on_eof(b.slot);
        assert!(h.control.try_recv().is_err());
    }

    #[test]
    fn rate_limits_refuse_with_retry_after_share_user_buckets_and_disconnect() {
        // User buckets in the table the shards share, and kept by the shard.
        for users in [32_768, 0] {
            rate_limits_with(users);
        }
    }

    fn rate_limits_with(users: u32) {
        use crate::limits::LimitRule;
        let rule = LimitRule::new;
        let mut h = harness(|c| {
            c.rate_limits = vec![
                rule(Scope::Connection, LimitEvent::Publish, 3, 90),
                rule(Scope::User, LimitEvent::Command, 5, 1000),
            ];
            c.rate_limit_disconnect_after = 3;
            c.rate_limit_users = users;
        });
        let (a, b) = (h.open(), h.open());
        let publish = |id: u32| {
            cmd(&format!(
                r#"{{"id":{id},"cmd":"publish","channel":"room:1","data":1}}"#
            ))
        };
        let reply = |h: &mut Harness, k: ConnKey| -> serde_json::Value {
            let out = h.written(k);
            let f = frames(&out);
            serde_json::from_slice(&f.last().expect("a reply").1).unwrap()
        };
        for id in 10..13 {
            h.read(a, &publish(id));
            assert!(reply(&mut h, a).get("result").is_some());
        }
        h.read(a, &publish(13));
        let r = reply(&mut h, a);
        assert_eq!(r["error"]["code"], 114, "{r}");
        assert_eq!(r["error"]["retry_after_ms"], 30, "{r}");
        assert_eq!(r["error"]["message"], "rate limit exceeded: publish");
        // 30 ms later one publish fits again (the refused one took nothing).
        h.core.on_tick(3);
        h.read(a, &publish(14));
        assert!(reply(&mut h, a).get("result").is_some());
        // The user's bucket is shared by its connections: b has its own connection
        // bucket but the user has used 4 of 5 commands.
        h.read(b, &publish(15));
        assert!(reply(&mut h, b).get("result").is_some());
        h.read(b, &publish(16));
        let r = reply(&mut h, b);
        assert_eq!(
            r["error"]["message"], "rate limit exceeded: commands",
            "{r}"
        );
        assert!(r["error"]["retry_after_ms"].as_u64().unwrap() > 100, "{r}");
        // Refused three times in a row: closed with 4008.
        h.read(b, &publish(17));
        assert_eq!(reply(&mut h, b)["error"]["code"], 114);
        h.read(b, &publish(18));
        let out = h.written(b);
        let f = frames(&out);
        assert_eq!(f.last().unwrap().0, OpCode::Close);
        assert_eq!(&f.last().unwrap().1[..2], &4008u16.to_be_bytes());
        assert_eq!(
            h.core.metrics().closes[CloseKind::RateLimited as usize]
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            h.core.metrics().rate_limited[LimitEvent::Command.index()]
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        // New rules at runtime: none, and a publishes freely.
        h.core
            .on_message(ShardMsg::Limits(Arc::new(LimitTable::default())));
        for id in 20..30 {
            h.read(a, &publish(id));
            assert!(reply(&mut h, a).get("result").is_some());
        }
    }

    #[test]
    fn user_connections_inline_then_listed() {
        let mut u = UserConns::default();
        u.add(3);
        assert_eq!(u.slots(), [3]);
        u.add(5);
        u.add(7);
        assert_eq!(u.slots(), [3, 5, 7]);
        assert!(!u.remove(5));
        assert!(!u.remove(3));
        assert!(matches!(u, UserConns::One([7])));
        assert!(!u.remove(9), "another slot leaves it");
        assert!(u.remove(7));
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
