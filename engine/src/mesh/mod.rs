//! The queues between shards, and from the control plane to shards.
//!
//! Owns one bounded lock-free inbox per shard ([`inbox`]: a crossbeam `ArrayQueue`) and
//! its wake-up: an eventfd the shard's reactor watches. A sender pushes, then writes the
//! eventfd only if the shard has not been woken since it last drained (`notified`),
//! so a burst of messages costs one syscall, and no mutex is ever taken. Also owns the
//! process-wide connection counters that admission checks (atomics).
//!
//! Does not own what a message means (`core`) or the reactor (`epoll`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
// `seeds` only: taken once by each shard at start, never on the message path.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::time::Instant;

use switchboard_protocol::Position;

use crate::auth::{AuthFailure, Identity};
use crate::core::ConnKey;
use crate::journal::{Durable, JournalLink, MarkKind, MarkRecord, SeedStream};
use crate::marks::ReceiptList;
use crate::presence::PresenceList;
use crate::streams::Entry;

mod inbox;

pub use crate::publications::{
    EncodedFrames, Publication, PublishReply, Refused, SequenceReq, Sequenced,
};
pub use inbox::Inbox;

/// A question for a channel's owner shard about its stream.
#[derive(Debug)]
pub struct StreamQuery {
    /// Channel name.
    pub channel: Arc<str>,
    /// What is asked.
    pub kind: QueryKind,
    /// Shard of the asking connection.
    pub shard: u16,
    /// The asking connection.
    pub conn: ConnKey,
    /// How the answer reaches it.
    pub to: ReplyKind,
    /// For an inbox: the device whose cursor the backlog starts after.
    pub device: Option<Arc<str>>,
    /// For the server API: where the answer goes instead of a connection.
    pub api: Option<tokio::sync::oneshot::Sender<StreamReply>>,
}

/// How a stream answer reaches a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The reply to command `id`.
    Command(u32),
    /// A `subscribed` push: a subscription restored by a reconnect token.
    Resumed,
    /// An `inbox` push: the backlog of the connection's inbox.
    Inbox,
    /// A `subscribed` push: the server API subscribed the connection (no access check).
    Server,
}

/// What a [`StreamQuery`] asks.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// A subscription took effect: the position it starts after, and the
    /// publications after `since` if the client is recovering.
    Subscribe {
        /// The client's last seen position.
        since: Option<Position>,
    },
    /// The backlog of an inbox after the device's cursor (all retained publications
    /// for a device without one), then live.
    Inbox,
    /// The `history` command.
    History {
        /// Which publications.
        page: switchboard_protocol::history::Page,
    },
}

/// The owner's answer to a [`StreamQuery`].
#[derive(Debug)]
pub struct StreamReply {
    /// Channel name.
    pub channel: Arc<str>,
    /// The asking connection.
    pub conn: ConnKey,
    /// How the answer reaches it.
    pub to: ReplyKind,
    /// Whether this answers a subscribe (else a history command).
    pub subscribe: bool,
    /// The stream's latest position.
    pub top: Position,
    /// For a recovering subscribe: whether `publications` is everything missed.
    pub recovered: Option<bool>,
    /// The publications.
    pub publications: Vec<Entry>,
    /// For a history page with more after it: the cursor that asks for the next one.
    pub cursor: Option<Box<str>>,
    /// For a history page: why it was refused (bad bounds, an unknown epoch, the store
    /// unavailable).
    pub refused: Option<(switchboard_protocol::ErrorCode, Box<str>)>,
}

/// A message to a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A question for this channel's owner shard.
    StreamQuery(Box<StreamQuery>),
    /// The owner's answer, for the asking connection's shard.
    StreamReply(Box<StreamReply>),
    /// For the owner: what the store read for a recovering subscription.
    Recovered(Box<crate::history::Recovered>),
    /// Deliver to local subscribers of the channel.
    Publish(Arc<Publication>),
    /// Sequence and fan out a publication of a channel this shard owns.
    Sequence(Box<SequenceReq>),
    /// The store has durably written this shard's journal batches up to `batch`:
    /// release the `sync` publications waiting for them.
    Committed {
        /// The last batch stored.
        batch: u64,
    },
    /// The owner sequenced a connection's publication: answer its `publish`.
    Published {
        /// The publishing connection.
        conn: ConnKey,
        /// Id of its `publish` command.
        req_id: u32,
        /// The position, or why the publication was refused.
        result: Sequenced,
        /// The command asked for no position: count it, send nothing on success.
        quiet: bool,
    },
    /// Shard `from` now has subscribers in `formats` (bit per `Format::index()`) for
    /// `channel` (0: none). With `ack`, answer [`ShardMsg::InterestAck`].
    Interest {
        /// Channel name.
        channel: Arc<str>,
        /// Sending shard.
        from: u16,
        /// Bit mask of formats with local subscribers on `from`.
        formats: u8,
        /// Whether `from` waits for an acknowledgment before answering a subscribe.
        ack: bool,
    },
    /// Shard `from` has applied an interest change for `channel`.
    InterestAck {
        /// Channel name.
        channel: Arc<str>,
    },
    /// The control plane's verdict on a token.
    AuthDone {
        /// Connection that asked.
        conn: ConnKey,
        /// Id of the `connect` command to answer.
        req_id: u32,
        /// Identity, or why the token was refused.
        result: Result<Arc<Identity>, AuthFailure>,
    },
    /// For this channel's owner: a cursor or receipt moved.
    Mark(Box<MarkUpdate>),
    /// To every shard: subscribe or unsubscribe every connection of a user.
    UserSubscription(Box<UserSubscription>),
    /// For this channel's owner: a connection joined, left or changed status.
    Presence(Box<PresenceUpdate>),
    /// For this channel's owner: who is on the channel (`members` false: counts).
    PresenceQuery {
        /// Channel name.
        channel: Arc<str>,
        /// List the members, not only count them.
        members: bool,
        /// Where the answer goes.
        answer: Answer<PresenceList>,
    },
    /// For an inbox's owner: its devices' cursors, all moved to the latest offset
    /// when `clear` (the server API).
    InboxState {
        /// The inbox channel.
        channel: Arc<str>,
        /// Move every device's cursor to the latest offset.
        clear: bool,
        /// Where the state goes.
        answer: tokio::sync::oneshot::Sender<crate::marks::InboxState>,
    },
    /// For this channel's owner: list the channel's receipts.
    Receipts {
        /// Channel name.
        channel: Arc<str>,
        /// Where the list goes.
        answer: Answer<ReceiptList>,
    },
    /// The answer to a connection's command, computed elsewhere.
    Reply {
        /// The connection.
        conn: ConnKey,
        /// Id of its command.
        req_id: u32,
        /// What kind of command it answers (counted by kind and result).
        command: crate::metrics::CommandKind,
        /// The result, or why it failed.
        result: Result<ReplyBody, Refused>,
    },
    /// A control-plane push to users, a connection or a channel's subscribers here.
    Push(Arc<crate::control::Push>),
    /// For the shard that closed `previous`: tell the resumed connection `to` on
    /// `shard` why, if it was the server's doing.
    CloseNoteQuery {
        /// The connection the client's reconnect token was issued to.
        previous: crate::presence::ClientId,
        /// The resumed connection's shard.
        shard: u16,
        /// The resumed connection.
        to: ConnKey,
    },
    /// The answer: push `{"push":"closed",…}` to `to`.
    CloseNote {
        /// The resumed connection.
        to: ConnKey,
        /// The connection that was closed.
        previous: crate::presence::ClientId,
        /// Its close code.
        code: u16,
        /// Its close reason.
        reason: Box<str>,
    },
    /// New rate limits (admin API).
    Limits(Arc<crate::limits::LimitTable>),
    /// An admin action on this shard's connections.
    Admin(crate::control::AdminOp),
    /// Stop accepting, close every connection with 1001, exit after the drain time.
    Shutdown,
    /// Engine.IO: a polling request or WebSocket for a session this shard holds, or
    /// the session's answer for the connection that carried it.
    Eio(Box<crate::core::EioMsg>),
    /// A backend hook's answer for a Socket.IO session.
    HookDone(Box<crate::hooks::HookDone>),
    /// Socket.IO connection state recovery: a session's record for its home shard, a
    /// reconnecting client's question, the answer.
    Recovery(Box<crate::core::RecoveryMsg>),
    /// From the cluster thread (nodes sharing Redis).
    Cluster(Box<crate::cluster::ClusterMsg>),
}

/// What the store gave back for one shard at start-up.
#[derive(Debug, Default)]
pub struct ShardSeeds {
    /// Streams this shard owns.
    pub streams: Vec<SeedStream>,
    /// Cursors and receipts of those streams.
    pub marks: Vec<MarkRecord>,
    /// Recoverable Socket.IO sessions homed here.
    pub sessions: Vec<crate::journal::SessionRecord>,
}

/// A connection's presence change, for the channel's owner.
#[derive(Debug)]
pub struct PresenceUpdate {
    /// Channel name.
    pub channel: Arc<str>,
    /// The connection's user.
    pub user: Arc<str>,
    /// The connection.
    pub client: crate::presence::ClientId,
    /// Its device id.
    pub device: Option<Box<str>>,
    /// What happened.
    pub kind: PresenceKind,
}

/// What a [`PresenceUpdate`] reports.
#[derive(Debug, Clone)]
pub enum PresenceKind {
    /// Joined, with this status.
    Join {
        /// The connection's status.
        status: Arc<str>,
    },
    /// Left; with `linger`, without a goodbye (kept for the grace period).
    Leave {
        /// Dropped rather than left.
        linger: bool,
    },
    /// Changed status.
    Status {
        /// The new status.
        status: Arc<str>,
    },
}

/// The server API subscribes (or unsubscribes) every connection of a user.
#[derive(Debug)]
pub struct UserSubscription {
    /// The user.
    pub user: Arc<str>,
    /// The channel.
    pub channel: Arc<str>,
    /// Subscribe (else unsubscribe).
    pub join: bool,
    /// Recover from this position when subscribing.
    pub since: Option<Position>,
    /// Told how many of the user's connections on the shard were changed.
    pub done: Option<tokio::sync::oneshot::Sender<usize>>,
}

/// A cursor or receipt change for a channel's owner.
#[derive(Debug)]
pub struct MarkUpdate {
    /// Channel name.
    pub channel: Arc<str>,
    /// Cursor (`who` is a device) or receipt (`who` is a user).
    pub kind: MarkKind,
    /// Device or user id.
    pub who: Box<str>,
    /// Delivered up to (receipts).
    pub delivered: Option<u64>,
    /// Read or processed up to.
    pub read: Option<u64>,
}

/// Where an answer computed on another shard (or the control plane) goes.
#[derive(Debug)]
pub enum Answer<T> {
    /// A connection's command, answered with [`ShardMsg::Reply`] on its shard.
    Client {
        /// Shard of the connection.
        shard: u16,
        /// The connection.
        conn: ConnKey,
        /// Id of its command.
        req_id: u32,
    },
    /// The server API.
    Api(tokio::sync::oneshot::Sender<T>),
}

/// A command result computed away from the connection's shard.
#[derive(Debug)]
pub enum ReplyBody {
    /// `{}`.
    Empty,
    /// A scheduled message's id and due time.
    Scheduled {
        /// Its id.
        id: u64,
        /// When it fires, Unix milliseconds.
        at: u64,
    },
    /// A channel's receipts.
    Receipts(ReceiptList),
    /// Who is on a channel.
    Presence(PresenceList),
    /// A control-plane worker's answer (encoded in the connection's format).
    Value(serde_json::Value),
}

const IP_BUCKETS: usize = 4096;

/// Buckets of the per-address connection rate (addresses hashing alike share one; more
/// than for counts, so a storm of many addresses rarely trips another's limit).
const RATE_BUCKETS: usize = 65_536;

/// Everything shards share: their inboxes and the admission counters.
#[derive(Debug)]
#[allow(clippy::disallowed_types)] // `seeds`: taken once per shard at start.
pub struct Mesh {
    inboxes: Vec<Inbox>,
    /// Connections held by the whole process.
    connections: AtomicUsize,
    /// Connections per source address, hashed into buckets. Two addresses sharing a
    /// bucket share a count, so the per-IP limit errs on the strict side; with 4096
    /// buckets that needs many distinct addresses near the limit at once.
    per_ip: Box<[AtomicU32]>,
    /// New-connection token buckets per address bucket: high 32 bits the time of the
    /// last take (ms since `epoch`, wrapping), low 32 bits the budget in use
    /// (thousandths of a connection). Shared by the shards, updated by CAS.
    ip_rate: Box<[AtomicU64]>,
    /// Zero of `ip_rate`'s clock.
    epoch: std::time::Instant,
    /// Per-user rate-limit buckets, made on first use.
    user_buckets: OnceLock<crate::limits::UserBuckets>,
    /// Where durable publications go, when a store is attached.
    journal: OnceLock<JournalLink>,
    /// Where shared channels' publications go, when nodes share Redis.
    cluster: OnceLock<crate::cluster::ClusterLink>,
    /// Streams and marks read back from the store, per shard, taken once by each shard.
    seeds: Mutex<Vec<ShardSeeds>>,
    /// Each channel's home shard.
    placement: crate::placement::Placement,
    /// Verifies cheap tokens on the shard, once the control plane attached it.
    verifier: OnceLock<Arc<dyn crate::auth::InlineVerifier>>,
    /// Where publications of namespaces with an AI pipeline go.
    ai: OnceLock<crate::ai_tap::AiTap>,
}

impl Mesh {
    /// The per-user rate-limit buckets shared by the shards, made for `users` users
    /// (`engine.rate_limit_users`) on first use.
    pub fn user_buckets(&self, users: usize) -> &crate::limits::UserBuckets {
        self.user_buckets
            .get_or_init(|| crate::limits::UserBuckets::new(users))
    }

    /// Inboxes for `shards` shards of `capacity` messages each, channels placed by
    /// first use in a table of the default size.
    pub fn new(shards: usize, capacity: usize) -> std::io::Result<Arc<Mesh>> {
        Mesh::with_placement(shards, capacity, crate::placement::DEFAULT_SLOTS)
    }

    /// [`Mesh::new`] with a placement table of `slots` slots (0: homes by hash).
    #[allow(clippy::disallowed_types)] // `seeds` (see the field).
    pub fn with_placement(
        shards: usize,
        capacity: usize,
        slots: usize,
    ) -> std::io::Result<Arc<Mesh>> {
        let inboxes = (0..shards)
            .map(|_| Inbox::new(capacity))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Mesh {
            inboxes,
            connections: AtomicUsize::new(0),
            per_ip: (0..IP_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            ip_rate: (0..RATE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            user_buckets: OnceLock::new(),
            epoch: crate::clock::mono(),
            journal: OnceLock::new(),
            cluster: OnceLock::new(),
            seeds: Mutex::new(Vec::new()),
            placement: crate::placement::Placement::new(shards, slots),
            verifier: OnceLock::new(),
            ai: OnceLock::new(),
        }))
    }

    /// Attach the verifier shards use for cheap tokens (once; later calls are ignored).
    /// Until then every token goes to the control plane's threads.
    pub fn attach_verifier(&self, v: Arc<dyn crate::auth::InlineVerifier>) {
        let _ = self.verifier.set(v);
    }

    /// The attached inline verifier, if any.
    #[inline]
    pub fn verifier(&self) -> Option<&Arc<dyn crate::auth::InlineVerifier>> {
        self.verifier.get()
    }

    /// `channel`'s home shard, claimed for shard `claimant` if it has none yet
    /// ([`crate::placement`]).
    #[inline]
    pub fn home(&self, channel: &str, claimant: u16) -> u16 {
        self.placement.home(channel, claimant)
    }

    /// `channel`'s home shard as asked from outside the shards (server API, cluster
    /// link, store): its hash shard if it has none yet.
    #[inline]
    pub fn home_of(&self, channel: &str) -> u16 {
        self.placement.home_of(channel)
    }

    /// Attach a store before the shards start: its link, and the streams it read back
    /// (each goes to its channel's home shard, claimed for its hash shard).
    pub fn attach(&self, durable: Durable) -> Result<(), crate::Error> {
        let shards = self.shards();
        let mut per_shard: Vec<ShardSeeds> = (0..shards).map(|_| Default::default()).collect();
        for s in durable.seeds {
            per_shard[self.home_of(&s.channel) as usize].streams.push(s);
        }
        for m in durable.marks {
            per_shard[self.home_of(&m.channel) as usize].marks.push(m);
        }
        for s in durable.sessions {
            // With fewer shards than before, a pid's home is asked modulo the count.
            per_shard[s.home as usize % shards].sessions.push(s);
        }
        *self.seeds.lock().unwrap_or_else(|e| e.into_inner()) = per_shard;
        self.journal
            .set(durable.link)
            .map_err(|_| crate::Error::Store("a store is already attached"))
    }

    /// Attach the cluster thread's link before the shards start: channels other than
    /// personal ones are shared with the other nodes from then on.
    pub fn attach_cluster(&self, link: crate::cluster::ClusterLink) -> Result<(), crate::Error> {
        self.cluster
            .set(link)
            .map_err(|_| crate::Error::Store("a cluster link is already attached"))
    }

    /// Attach the AI pipelines' tap before the shards start.
    pub fn attach_ai(&self, tap: crate::ai_tap::AiTap) -> Result<(), crate::Error> {
        self.ai
            .set(tap)
            .map_err(|_| crate::Error::Store("an AI tap is already attached"))
    }

    /// The AI pipelines' tap, if any namespace has a pipeline.
    pub fn ai(&self) -> Option<&crate::ai_tap::AiTap> {
        self.ai.get()
    }

    /// The cluster thread's link, if nodes share Redis.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterLink> {
        self.cluster.get()
    }

    /// The store's link, if one is attached.
    pub fn journal(&self) -> Option<&JournalLink> {
        self.journal.get()
    }

    /// Shard `shard`'s streams, marks and sessions read back from the store (empty
    /// after the first call).
    pub fn take_seeds(&self, shard: u16) -> ShardSeeds {
        let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        seeds
            .get_mut(shard as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Shard `i`'s inbox.
    pub fn inbox(&self, i: usize) -> &Inbox {
        &self.inboxes[i]
    }

    /// Connections held by the process.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn ip_hash(ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(v4) => u32::from(v4).wrapping_mul(0x9E37_79B1),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut h = 0u32;
                for c in o.chunks(4) {
                    h = (h ^ u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .wrapping_mul(0x9E37_79B1);
                }
                h
            }
        }
    }

    fn bucket(&self, ip: IpAddr) -> &AtomicU32 {
        &self.per_ip[(Self::ip_hash(ip) >> 20) as usize % IP_BUCKETS]
    }

    /// Take one new connection from `ip`'s rate bucket (`per_second` a second, bursts
    /// of as many); refused when it is empty.
    fn take_rate(&self, ip: IpAddr, per_second: u32, now: Instant) -> Result<(), Refusal> {
        let now = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let burst = u64::from(per_second) * 1000;
        let b = &self.ip_rate[(Self::ip_hash(ip) >> 16) as usize % RATE_BUCKETS];
        let mut cur = b.load(Ordering::Relaxed);
        loop {
            let (at, used) = ((cur >> 32) as u32, cur & 0xffff_ffff);
            // One connection is 1,000; `per_second` come back per 1,000 ms.
            let refill = u64::from(now.wrapping_sub(at)) * u64::from(per_second);
            let used = used.saturating_sub(refill);
            if used + 1000 > burst {
                return Err(Refusal::TooFastFromIp);
            }
            let next = (u64::from(now) << 32) | (used + 1000);
            match b.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Count a new connection from `ip` if limits allow (`per_second`: the address's
    /// new-connection rate, 0 for none).
    pub fn admit(
        &self,
        ip: IpAddr,
        now: Instant,
        max_total: usize,
        max_per_ip: u32,
        per_second: u32,
    ) -> Result<(), Refusal> {
        if per_second > 0 {
            self.take_rate(ip, per_second, now)?;
        }
        if self.connections.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::ServerFull);
        }
        let b = self.bucket(ip);
        if b.fetch_add(1, Ordering::Relaxed) >= max_per_ip && max_per_ip > 0 {
            b.fetch_sub(1, Ordering::Relaxed);
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TooManyFromIp);
        }
        Ok(())
    }

    /// Release what [`Mesh::admit`] counted.
    pub fn release(&self, ip: IpAddr) {
        self.bucket(ip).fetch_sub(1, Ordering::Relaxed);
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached (HTTP 503).
    ServerFull,
    /// `max_connections_per_ip` reached (HTTP 429).
    TooManyFromIp,
    /// `max_connection_rate_per_ip` exceeded (HTTP 429).
    TooFastFromIp,
}

impl Refusal {
    /// The HTTP status and reason that refuse the connection.
    pub fn http(self) -> (u16, &'static str) {
        match self {
            Refusal::ServerFull => (503, "server is at its connection limit"),
            Refusal::TooManyFromIp => (429, "too many connections from this address"),
            Refusal::TooFastFromIp => (429, "connecting too fast from this address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_inbox_drops_what_it_held_and_what_comes_later() {
        let mesh = Mesh::new(1, 4).unwrap();
        let inbox = mesh.inbox(0);
        let census = || {
            let (done, rx) = tokio::sync::oneshot::channel();
            (
                ShardMsg::Admin(crate::control::AdminOp::Census { done }),
                rx,
            )
        };
        let (queued, mut before) = census();
        assert!(inbox.push(queued).is_ok());
        inbox.close();
        assert!(inbox.is_closed());
        assert!(inbox.pop().is_none(), "closing drops what was queued");
        assert!(matches!(
            before.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        let (late, mut after) = census();
        assert!(inbox.push(late).is_ok(), "a late push is not an overflow");
        assert!(inbox.pop().is_none());
        assert!(matches!(
            after.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn connection_rate_per_address() {
        let mesh = Mesh::new(1, 4).unwrap();
        let t0 = crate::clock::mono();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..5 {
            assert!(mesh.admit(a, t0, 100, 0, 5).is_ok());
            mesh.release(a);
        }
        assert_eq!(mesh.admit(a, t0, 100, 0, 5), Err(Refusal::TooFastFromIp));
        assert_eq!(mesh.connections(), 0, "a refusal counts nothing");
        let b: IpAddr = "10.0.0.10".parse().unwrap();
        assert!(
            mesh.admit(b, t0, 100, 0, 5).is_ok(),
            "another address has its own"
        );
        let later = t0 + std::time::Duration::from_millis(250);
        assert!(
            mesh.admit(a, later, 100, 0, 5).is_ok(),
            "one back after 200 ms"
        );
    }

    #[test]
    fn admission_limits() {
        let mesh = Mesh::new(1, 4).unwrap();
        let t0 = crate::clock::mono();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(mesh.admit(a, t0, 3, 2, 0).is_ok());
        assert!(mesh.admit(a, t0, 3, 2, 0).is_ok());
        assert_eq!(mesh.admit(a, t0, 3, 2, 0), Err(Refusal::TooManyFromIp));
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(mesh.admit(b, t0, 3, 0, 0).is_ok());
        assert_eq!(mesh.admit(b, t0, 3, 0, 0), Err(Refusal::ServerFull));
        mesh.release(a);
        assert!(mesh.admit(a, t0, 3, 2, 0).is_ok());
        assert_eq!(mesh.connections(), 3);
    }

    #[test]
    fn inbox_wakes_once_per_drain() {
        let mesh = Mesh::new(1, 2).unwrap();
        let inbox = mesh.inbox(0);
        assert!(inbox.push(ShardMsg::Shutdown).is_ok());
        assert!(inbox.push(ShardMsg::Shutdown).is_ok());
        assert!(inbox.push(ShardMsg::Shutdown).is_err(), "bounded");
        let mut v = 0u64;
        // SAFETY: reading into a valid u64 from the inbox's eventfd.
        let n = unsafe { libc::read(inbox.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1), "two pushes, one wake-up");
        inbox.clear_wakeup();
        assert!(inbox.pop().is_some());
    }
}
