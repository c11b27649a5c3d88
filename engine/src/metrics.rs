//! Counters each shard keeps about itself.
//!
//! Owns one cache-line-aligned block of relaxed atomics per shard. Only that shard
//! writes them (no contention, no lock); the control plane reads them to render
//! `/metrics` and readiness. Does not own the exposition format.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why a connection ended; one counter per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseKind {
    /// The client sent a close frame.
    ClientClose = 0,
    /// The TCP connection ended without a close frame.
    PeerGone,
    /// A read or write failed.
    IoError,
    /// The upgrade request was refused with an HTTP error.
    HandshakeRejected,
    /// The upgrade request did not complete in time.
    HandshakeTimeout,
    /// Refused at accept: process or per-IP limit.
    LimitReached,
    /// RFC 6455 violation (1002).
    ProtocolError,
    /// Invalid UTF-8 (1007).
    InvalidUtf8,
    /// Frame or message too big (1009).
    TooBig,
    /// Malformed envelope (4000).
    MalformedCommand,
    /// Token refused (4001).
    Unauthorized,
    /// No connect in time (4002).
    AuthTimeout,
    /// Outbound queue overflow (4003).
    SlowConsumer,
    /// Silent past ping interval + pong timeout (4004).
    HeartbeatTimeout,
    /// Server shutdown (1001).
    Shutdown,
    /// Kept exceeding its rate limits (4008).
    RateLimited,
    /// Disconnected by an operator (4009).
    Kicked,
    /// Refused or told to leave for maintenance (4010).
    Maintenance,
    /// Its user's tokens were revoked (4011).
    Revoked,
    /// A recovered Socket.IO session whose missed publications were no longer all
    /// retained (1001; the client reconnects without recovery).
    RecoveryIncomplete,
    /// A Socket.IO session whose client reconnected and recovered it elsewhere while
    /// its old connection was still open (half-open: 1001).
    Replaced,
}

impl CloseKind {
    /// Every kind, in counter order.
    pub const ALL: [CloseKind; 21] = [
        CloseKind::ClientClose,
        CloseKind::PeerGone,
        CloseKind::IoError,
        CloseKind::HandshakeRejected,
        CloseKind::HandshakeTimeout,
        CloseKind::LimitReached,
        CloseKind::ProtocolError,
        CloseKind::InvalidUtf8,
        CloseKind::TooBig,
        CloseKind::MalformedCommand,
        CloseKind::Unauthorized,
        CloseKind::AuthTimeout,
        CloseKind::SlowConsumer,
        CloseKind::HeartbeatTimeout,
        CloseKind::Shutdown,
        CloseKind::RateLimited,
        CloseKind::Kicked,
        CloseKind::Maintenance,
        CloseKind::Revoked,
        CloseKind::RecoveryIncomplete,
        CloseKind::Replaced,
    ];

    /// Label value used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseKind::ClientClose => "client_close",
            CloseKind::PeerGone => "peer_gone",
            CloseKind::IoError => "io_error",
            CloseKind::HandshakeRejected => "handshake_rejected",
            CloseKind::HandshakeTimeout => "handshake_timeout",
            CloseKind::LimitReached => "limit_reached",
            CloseKind::ProtocolError => "protocol_error",
            CloseKind::InvalidUtf8 => "invalid_utf8",
            CloseKind::TooBig => "too_big",
            CloseKind::MalformedCommand => "malformed_command",
            CloseKind::Unauthorized => "unauthorized",
            CloseKind::AuthTimeout => "auth_timeout",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::HeartbeatTimeout => "heartbeat_timeout",
            CloseKind::Shutdown => "shutdown",
            CloseKind::RateLimited => "rate_limited",
            CloseKind::Kicked => "kicked",
            CloseKind::Maintenance => "maintenance",
            CloseKind::Revoked => "revoked",
            CloseKind::RecoveryIncomplete => "recovery_incomplete",
            CloseKind::Replaced => "replaced",
        }
    }
}

/// Upper bounds, in microseconds, of the publish-to-flush latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Kinds of client command, indexing [`COMMANDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CommandKind {
    Connect,
    Ping,
    Invalid,
    Subscribe,
    Unsubscribe,
    Publish,
    History,
    Send,
    Ack,
    Receipt,
    Receipts,
    Schedule,
    Unschedule,
    Status,
    Typing,
    Presence,
    PresenceCount,
    Notifications,
    NotificationsRead,
    NotificationsTopic,
    Call,
    CallAction,
    CallSignal,
    Edit,
    Delete,
}

/// Command names, as counted in [`ShardMetrics::commands`] (the `command` label),
/// indexed by [`CommandKind`].
pub const COMMANDS: [&str; 25] = [
    "connect",
    "ping",
    "invalid",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "send",
    "ack",
    "receipt",
    "receipts",
    "schedule",
    "unschedule",
    "status",
    "typing",
    "presence",
    "presence_count",
    "notifications",
    "notifications_read",
    "notifications_topic",
    "call",
    "call_action",
    "call_signal",
    "edit",
    "delete",
];

/// Error codes counted (100 to 100 + this − 1).
pub const ERROR_CODES: usize = 16;

/// Result classes of replies to commands, as counted in
/// [`ShardMetrics::command_results`] (the `result` label): a result; refused because
/// of the request or the caller's rights (`rejected`: 101–107, 109, 110, 112, 113); a
/// rate limit (114); the server could not (`failed`: 100 internal, 108 overloaded,
/// 111 store unavailable).
pub const RESULTS: [&str; 4] = ["ok", "rejected", "rate_limited", "failed"];

/// The [`RESULTS`] class of an error reply's code.
pub fn result_class(code: u16) -> usize {
    match code {
        114 => 2,
        100 | 108 | 111 => 3,
        _ => 1,
    }
}

/// One command in this many has its handling time measured (two clock reads).
pub const COMMAND_SAMPLE: u32 = 64;

/// One shard's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    /// The shard's accept loop is running (readiness).
    pub accepting: AtomicBool,
    /// Connections currently held.
    pub connections: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Upgrades completed.
    pub upgraded: AtomicU64,
    /// Engine.IO sessions opened (Socket.IO clients, both transports).
    pub eio_sessions: AtomicU64,
    /// Engine.IO sessions moved from polling to WebSocket.
    pub eio_upgrades: AtomicU64,
    /// Engine.IO requests sent to the shard holding their session.
    pub eio_forwarded: AtomicU64,
    /// Socket.IO backend hook calls made.
    pub hook_calls: AtomicU64,
    /// Socket.IO sessions restored by connection state recovery.
    pub sio_recovered: AtomicU64,
    /// Socket.IO reconnects with a pid that could not be recovered.
    pub sio_not_recovered: AtomicU64,
    /// Closes, indexed by [`CloseKind`].
    pub closes: [AtomicU64; 21],
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Frames fully written.
    pub frames_out: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
    /// Write syscalls made (frames_out / writes = batching factor).
    pub writes: AtomicU64,
    /// Publications accepted from clients of this shard.
    pub publications: AtomicU64,
    /// Publication frames queued to subscribers on this shard.
    pub deliveries: AtomicU64,
    /// Ephemeral pushes (typing) skipped for subscribers with half-full queues.
    pub ephemeral_dropped: AtomicU64,
    /// Control-plane pushes (progress notifications) that replaced an older one still
    /// queued for a slow connection.
    pub coalesced: AtomicU64,
    /// Commands refused by a rate limit (114), per [`crate::limits::LimitEvent`].
    pub rate_limited: [AtomicU64; crate::limits::EVENTS],
    /// Sessions resumed with a reconnect token.
    pub resumes: AtomicU64,
    /// Reconnect tokens refused (forged, malformed or expired).
    pub resumes_refused: AtomicU64,
    /// io_uring: receives that found the shard's provided-buffer ring empty and were
    /// re-armed (raise `engine.uring_buffers` if this climbs steadily).
    pub uring_buffers_exhausted: AtomicU64,
    /// Bytes of retained publications (history) this shard keeps (a gauge, set each
    /// tick; bounded by its share of `engine.history_memory_bytes`).
    pub history_bytes: AtomicU64,
    /// Retained publications evicted to stay within the history memory budget.
    pub history_evicted: AtomicU64,
    /// Bytes of publications no longer retained (expired, pushed out, evicted), ever;
    /// set each tick.
    pub history_freed_bytes: AtomicU64,
    /// Channels with a live stream position on this shard (a gauge, set each tick).
    pub streams: AtomicU64,
    /// Streams forgotten early to stay within `engine.max_streams`.
    pub streams_evicted: AtomicU64,
    /// Messages sent to other shards.
    pub mesh_sent: AtomicU64,
    /// Messages that found another shard's inbox full and waited in the spill queue.
    pub mesh_spilled: AtomicU64,
    /// Connections that completed `connect` and are still held.
    pub authenticated: AtomicU64,
    /// Commands received, per [`COMMANDS`] name.
    pub commands: [AtomicU64; COMMANDS.len()],
    /// Error replies, per error code (index `code - 100`).
    pub command_errors: [AtomicU64; ERROR_CODES],
    /// Replies per [`COMMANDS`] name and [`RESULTS`] class.
    pub command_results: [[AtomicU64; RESULTS.len()]; COMMANDS.len()],
    /// Command handling time (decode to reply queued) of one command in
    /// [`COMMAND_SAMPLE`], per [`LATENCY_BUCKETS_US`] bucket (+Inf last).
    pub command_latency_buckets: [AtomicU64; 15],
    /// Sum of the sampled command handling times, microseconds.
    pub command_latency_sum_us: AtomicU64,
    /// Number of sampled command handling times.
    pub command_latency_count: AtomicU64,
    /// Publish-to-flush latency histogram, cumulative counts per bucket (+Inf last).
    pub latency_buckets: [AtomicU64; 15],
    /// Sum of observed publish-to-flush latencies, microseconds.
    pub latency_sum_us: AtomicU64,
    /// Number of observed publish-to-flush latencies.
    pub latency_count: AtomicU64,
}

impl ShardMetrics {
    /// Add `n` to a counter (shard thread only).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Count one close of `kind`.
    #[inline]
    pub fn closed(&self, kind: CloseKind) {
        self.closes[kind as usize].fetch_add(1, Relaxed);
    }

    /// Count a reply to a command of kind `command`: a result,
    /// or an error reply with `code` (also counted by code).
    #[inline]
    pub fn answered(&self, command: CommandKind, code: Option<u16>) {
        let class = match code {
            None => 0,
            Some(code) => {
                if let Some(c) = self.command_errors.get(code.wrapping_sub(100) as usize) {
                    c.fetch_add(1, Relaxed);
                }
                result_class(code)
            }
        };
        if let Some(row) = self.command_results.get(command as usize) {
            row[class].fetch_add(1, Relaxed);
        }
    }

    /// Record one sampled command handling time.
    pub fn observe_command_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.command_latency_buckets[i].fetch_add(1, Relaxed);
        self.command_latency_sum_us.fetch_add(us, Relaxed);
        self.command_latency_count.fetch_add(1, Relaxed);
    }

    /// Record one publish-to-flush latency.
    pub fn observe_latency_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency_buckets[i].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
