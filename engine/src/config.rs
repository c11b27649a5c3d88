//! Engine settings. Every key has a default and a unit in its name; `tuning/default.toml`
//! documents when to change each one.

use crate::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which I/O backend the shards use (`engine.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the start-up probe passes, else epoll with one log line saying why.
    #[default]
    Auto,
    /// io_uring; a failed probe is a start-up error.
    Uring,
    /// epoll (tokio), never io_uring.
    Epoll,
}

impl std::str::FromStr for IoMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            _ => Err(Error::config(
                "engine.io",
                format!("expected auto, uring or epoll, not {s:?}"),
            )),
        }
    }
}

/// Settings of the shards (the `[engine]` table of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// WebSocket listen address; every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Number of shards (threads); 0 means one per available core.
    pub shards: usize,
    /// Pin shard `i` to core `i`.
    pub pin_cores: bool,
    /// I/O backend of the shards: `auto` (io_uring when the kernel allows it, else
    /// epoll), `uring` (io_uring or a start-up error) or `epoll`.
    pub io: IoMode,
    /// io_uring: provided receive buffers per shard (a power of two, at most 32768).
    pub uring_buffers: usize,
    /// io_uring: size of each provided receive buffer, in bytes.
    pub uring_buffer_bytes: usize,
    /// io_uring: how long a sleeping shard lets completions gather before it wakes for
    /// fewer than a batch of them, in microseconds (the kernel's `min_wait`, 6.12+);
    /// 0 wakes for the first completion. Trades that much latency for fewer wake-ups.
    pub uring_coalesce_us: u32,
    /// Listen backlog per shard socket.
    pub backlog: u32,
    /// Most connections the process holds; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Most connections from one IP address; 0 means no limit. More get HTTP 429.
    pub max_connections_per_ip: u32,
    /// Largest upgrade request, in bytes (431 beyond).
    pub max_handshake_bytes: usize,
    /// Most header lines in an upgrade request (431 beyond).
    pub max_handshake_headers: usize,
    /// Largest single frame payload accepted, in bytes (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Largest reassembled message, in bytes (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Bound of a connection's outbound queue, in bytes (each queued frame also counts
    /// 32 bytes of bookkeeping). Past half of it the connection's input is paused until
    /// it drains below an eighth; a client that lets it fill is closed with 4003.
    pub max_outbound_bytes: usize,
    /// Most channels one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// A connection must complete its upgrade request within this time.
    pub handshake_timeout_ms: u64,
    /// A connection must complete `connect` within this time after the upgrade (close 4002).
    pub auth_timeout_ms: u64,
    /// A connection silent for this long is sent a ping.
    pub ping_interval_ms: u64,
    /// After a ping, a connection still silent for this long is closed (4004).
    pub pong_timeout_ms: u64,
    /// After the server sends a close frame, how long it waits for the peer to close.
    pub close_timeout_ms: u64,
    /// On shutdown, how long shards wait for clients to finish the close handshake.
    pub drain_timeout_ms: u64,
    /// Resolution of the heartbeat wheel (and of every timeout above).
    pub tick_ms: u64,
    /// Size of each shard's shared read buffer, in bytes.
    pub read_buffer_bytes: usize,
    /// Capacity of each shard's inbox (messages from other shards and the control plane).
    pub inbox_capacity: usize,
    /// Slots of the table placing each channel on the shard that first uses it
    /// ([`crate::placement`]); 0: channels placed by a hash of their name.
    pub channel_homes: usize,
    /// A channel with no publication for this long forgets its stream position; its
    /// next publication starts a new epoch.
    pub stream_idle_ms: u64,
    /// Publications each channel keeps in memory for `history` and recovery (0: none).
    pub history_size: usize,
    /// Retained publications older than this are not served.
    pub history_ttl_ms: u64,
    /// Most bytes of retained publications the process keeps in memory, all channels
    /// and inboxes together (split evenly among the shards; 0: no limit). Beyond it the
    /// oldest publications of any channel are evicted first.
    pub history_memory_bytes: usize,
    /// Most channels with a live stream (epoch, offset, history) the process keeps,
    /// split evenly among the shards; 0: no limit. Beyond it, creating one forgets the
    /// least recently used of a sample of forgettable ones (memory-only, or durable
    /// with nothing retained), whose next publication starts a new epoch.
    pub max_streams: usize,
    /// How long a publish's idempotency key is remembered: a retry with the same key
    /// within this window gets the original position and is not delivered again.
    pub dedupe_window_ms: u64,
    /// Per-namespace stream settings (durability, retention), set by the control plane
    /// from its `[namespaces.*]` tables; channels of other namespaces use the values
    /// above with durability `none`.
    #[serde(skip)]
    pub namespaces: Vec<crate::journal::NamespacePolicy>,
    /// How long a reconnect token is valid after it was issued (a connection gets a
    /// fresh one before the last expires); 0 turns reconnect tokens off.
    pub reconnect_ttl_ms: u64,
    /// Key of reconnect tokens, set by the control plane (from the store, so every
    /// process sharing it accepts them); random per process when absent.
    #[serde(skip)]
    pub reconnect_secret: Option<Arc<[u8]>>,
    /// Namespace of users' inboxes (`inbox` makes `inbox:<user>`), set by the control
    /// plane when direct messages are on.
    #[serde(skip)]
    pub inbox: Option<String>,
    /// Namespace of users' personal channels (`user` makes `user:<id>`), joined by
    /// every connection of the user automatically; empty turns them off.
    pub personal_namespace: String,
    /// A connection that drops without a goodbye stays present this long, so a
    /// reconnect within it does not flap presence.
    pub presence_grace_ms: u64,
    /// Namespace of users' own presence (`online` makes `online:<user>`): every
    /// connection is reported there, so contacts subscribe to `online:<user>` for join,
    /// leave and status events and ask `presence` for the current state. Empty (the
    /// default) turns user presence off: it costs a message to another shard per
    /// connect and close.
    pub user_presence_namespace: String,
    /// A connection's typing starts reach the channel at most this often.
    pub typing_throttle_ms: u64,
    /// A typing start with no stop (and no new start) for this long is stopped by the
    /// server.
    pub typing_timeout_ms: u64,
    /// New connections per second one address may open (bursts of as many; 0: no
    /// limit). Refused with HTTP 429 and `Retry-After`.
    pub max_connection_rate_per_ip: u32,
    /// Origins browsers may open WebSockets from (`*` matches any run of characters,
    /// `https://*.example.com`); empty: any. An upgrade whose `Origin` matches none is
    /// refused with 403. Clients that send no `Origin` (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// Rate limits (token buckets per connection and per user); empty: none. Changed
    /// at runtime through [`crate::EngineHandle::set_limits`].
    pub rate_limits: Vec<crate::limits::LimitRule>,
    /// A connection refused by a rate limit this many times in a row is closed with
    /// 4008 (0: never).
    pub rate_limit_disconnect_after: u32,
    /// Users whose per-user buckets the shards share at once (a table of twice as many
    /// 64-byte slots, made when a user rule first applies). Users beyond it, and every
    /// user with 0, have their buckets kept per shard (up to `n` times the rate on `n`
    /// shards).
    pub rate_limit_users: u32,
    /// The Socket.IO endpoint, set by the control plane from its `[socketio]` table.
    #[serde(skip)]
    pub socketio: crate::sio_config::SocketIoConfig,
}

/// The rate limits a server starts with: far above what a person or a well-behaved
/// backend does, low enough that one token cannot flood a shard, the store or other
/// users' inboxes (issue 16). `tuning/default.toml` lists them; the admin API changes
/// them at runtime.
pub fn default_rate_limits() -> Vec<crate::limits::LimitRule> {
    use crate::limits::{LimitEvent as E, LimitRule, Scope};
    vec![
        LimitRule::new(Scope::Connection, E::Command, 2000, 1000),
        LimitRule::new(Scope::User, E::Publish, 1000, 1000),
        LimitRule::new(Scope::User, E::Send, 100, 1000),
        LimitRule::new(Scope::User, E::Subscribe, 500, 1000),
        LimitRule::new(Scope::User, E::Typing, 50, 1000),
        LimitRule::new(Scope::User, E::Call, 20, 1000),
        LimitRule::new(Scope::User, E::Notification, 50, 1000),
    ]
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            shards: 0,
            pin_cores: true,
            io: IoMode::Auto,
            uring_buffers: 512,
            uring_buffer_bytes: 2048,
            uring_coalesce_us: 0,
            backlog: 4096,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            max_handshake_bytes: 8192,
            max_handshake_headers: 32,
            max_frame_bytes: 65_536,
            max_message_bytes: 1_048_576,
            max_outbound_bytes: 262_144,
            max_subscriptions_per_connection: 256,
            handshake_timeout_ms: 5_000,
            auth_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            close_timeout_ms: 2_000,
            drain_timeout_ms: 10_000,
            tick_ms: 100,
            read_buffer_bytes: 65_536,
            inbox_capacity: 65_536,
            channel_homes: crate::placement::DEFAULT_SLOTS,
            stream_idle_ms: 3_600_000,
            history_size: 64,
            history_ttl_ms: 300_000,
            history_memory_bytes: 512 << 20,
            max_streams: 1_000_000,
            dedupe_window_ms: 120_000,
            namespaces: Vec::new(),
            reconnect_ttl_ms: 300_000,
            reconnect_secret: None,
            inbox: None,
            personal_namespace: "user".into(),
            presence_grace_ms: 5_000,
            user_presence_namespace: String::new(),
            typing_throttle_ms: 1_000,
            typing_timeout_ms: 6_000,
            allowed_origins: Vec::new(),
            max_connection_rate_per_ip: 1_000,
            rate_limits: default_rate_limits(),
            rate_limit_disconnect_after: 20,
            rate_limit_users: 32_768,
            socketio: Default::default(),
        }
    }
}

impl EngineConfig {
    /// The namespaces' access rules, compiled; the error names the rule.
    pub fn access(&self) -> Result<crate::access::Access, Error> {
        crate::access::Access::new(self.namespaces.iter().map(|n| (n.name.as_str(), &n.rules)))
    }

    /// The rate limits, compiled; the error names the rule.
    pub fn limits(&self) -> Result<crate::limits::LimitTable, Error> {
        crate::limits::LimitTable::new(self.rate_limits.clone()).map_err(|e| match e {
            Error::Config { key, message } => Error::Config {
                key: format!("engine.rate_limits{}", key.trim_start_matches("rules")),
                message,
            },
            other => other,
        })
    }

    /// Check values that would make the engine misbehave; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        self.limits()?;
        self.socketio.validate(self.tick_ms)?;
        if self.rate_limit_users > 1 << 22 {
            return Err(Error::config("engine.rate_limit_users", "at most 4194304"));
        }
        if self.channel_homes > 1 << 30 {
            return Err(Error::config("engine.channel_homes", "at most 1073741824"));
        }
        let positive = [
            ("engine.max_connections", self.max_connections as u64),
            (
                "engine.max_handshake_bytes",
                self.max_handshake_bytes as u64,
            ),
            (
                "engine.max_handshake_headers",
                self.max_handshake_headers as u64,
            ),
            ("engine.max_frame_bytes", self.max_frame_bytes as u64),
            ("engine.max_message_bytes", self.max_message_bytes as u64),
            ("engine.max_outbound_bytes", self.max_outbound_bytes as u64),
            ("engine.handshake_timeout_ms", self.handshake_timeout_ms),
            ("engine.auth_timeout_ms", self.auth_timeout_ms),
            ("engine.ping_interval_ms", self.ping_interval_ms),
            ("engine.pong_timeout_ms", self.pong_timeout_ms),
            ("engine.tick_ms", self.tick_ms),
            ("engine.read_buffer_bytes", self.read_buffer_bytes as u64),
            ("engine.inbox_capacity", self.inbox_capacity as u64),
            ("engine.stream_idle_ms", self.stream_idle_ms),
            ("engine.history_ttl_ms", self.history_ttl_ms),
            ("engine.dedupe_window_ms", self.dedupe_window_ms),
            ("engine.backlog", self.backlog as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be greater than 0"));
            }
        }
        self.access()?;
        if self.personal_namespace.contains(':') {
            return Err(Error::config(
                "engine.personal_namespace",
                "must not contain ':'",
            ));
        }
        if self.user_presence_namespace.contains(':') {
            return Err(Error::config(
                "engine.user_presence_namespace",
                "must not contain ':'",
            ));
        }
        for ns in &self.namespaces {
            if ns.history_ttl_ms == 0 {
                return Err(Error::config(
                    format!("namespaces.{}.history_ttl_ms", ns.name),
                    "must be greater than 0",
                ));
            }
            if ns.durability != crate::journal::Durability::None && ns.history_size == 0 {
                return Err(Error::config(
                    format!("namespaces.{}.history_size", ns.name),
                    "must be greater than 0 when durability is not none",
                ));
            }
        }
        if self.shards > 64 {
            return Err(Error::config("engine.shards", "must be at most 64"));
        }
        if self.max_message_bytes < self.max_frame_bytes {
            return Err(Error::config(
                "engine.max_message_bytes",
                "must be at least engine.max_frame_bytes",
            ));
        }
        if !self.uring_buffers.is_power_of_two() || self.uring_buffers > 32_768 {
            return Err(Error::config(
                "engine.uring_buffers",
                "must be a power of two from 1 to 32768",
            ));
        }
        if self.uring_coalesce_us > 100_000 {
            return Err(Error::config(
                "engine.uring_coalesce_us",
                "must be from 0 to 100000 (0.1 s)",
            ));
        }
        if !(512..=1 << 20).contains(&self.uring_buffer_bytes) {
            return Err(Error::config(
                "engine.uring_buffer_bytes",
                "must be from 512 to 1048576",
            ));
        }
        if self.read_buffer_bytes < 4096 {
            return Err(Error::config(
                "engine.read_buffer_bytes",
                "must be at least 4096",
            ));
        }
        for (key, ms) in [
            ("engine.handshake_timeout_ms", self.handshake_timeout_ms),
            ("engine.auth_timeout_ms", self.auth_timeout_ms),
            ("engine.ping_interval_ms", self.ping_interval_ms),
            ("engine.pong_timeout_ms", self.pong_timeout_ms),
        ] {
            if ms < self.tick_ms {
                return Err(Error::config(
                    key,
                    format!("must be at least engine.tick_ms ({} ms)", self.tick_ms),
                ));
            }
        }
        Ok(())
    }

    /// The shard count after resolving 0 to the number of cores.
    pub fn resolved_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(64)
        }
    }
}
