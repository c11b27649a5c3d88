//! The seam between shards and durable storage.
//!
//! Owns what a shard hands to the store (a [`Batch`] of [`Record`]s per loop turn, on an
//! unbounded channel whose backlog is bounded by an atomic count the shards check
//! before sequencing a durable publication), what the store hands back (the
//! [`SeedStream`]s read at start-up, [`crate::ShardMsg::Committed`] once a batch is
//! stored), and the per-namespace [`Policy`] that decides which publications are
//! stored and when they are acknowledged.
//!
//! Does not own the storage itself: the control plane's store (SQLite by default)
//! implements the other end. Shards never wait on it: a `sync` publication waits in
//! its owner shard's pending queue, not in a blocked thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_protocol::Format;

/// When a publication of a namespace is acknowledged, and whether it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Memory only: acknowledged when sequenced; lost (as a new epoch) by a restart.
    #[default]
    None,
    /// Acknowledged when sequenced, stored by the writer within its backlog bound; an
    /// unclean stop may lose the last ones, so the channel restarts in a new epoch.
    Async,
    /// Acknowledged, and delivered to subscribers, only once stored durably (group
    /// commit); survives SIGKILL with its epoch and offsets.
    Sync,
}

impl std::str::FromStr for Durability {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, crate::Error> {
        match s {
            "none" => Ok(Durability::None),
            "async" => Ok(Durability::Async),
            "sync" => Ok(Durability::Sync),
            _ => Err(crate::Error::config(
                "durability",
                format!("expected none, async or sync, not {s:?}"),
            )),
        }
    }
}

/// The stream settings of one namespace (the part of a channel name before its first
/// `:`), as the engine applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePolicy {
    /// Namespace name (`chat` for `chat:room-1`).
    pub name: String,
    /// When publications are acknowledged and whether they are stored.
    pub durability: Durability,
    /// Publications each channel keeps in memory for fast history and recovery (also
    /// what start-up reloads from the store).
    pub history_size: usize,
    /// Kept publications older than this leave memory (the store keeps them per
    /// `retention`).
    pub history_ttl_ms: u64,
    /// Who may subscribe, publish and read history.
    #[serde(default)]
    pub rules: crate::access::NamespaceRules,
    /// Track who is on each channel (its owner shard keeps the table).
    #[serde(default)]
    pub presence: bool,
    /// Push join, leave and status events to the channel's subscribers (turn off for
    /// big rooms; presence is still tracked and can be asked for).
    #[serde(default)]
    pub presence_events: bool,
    /// Most bytes one channel retains (`inbox.max_bytes` for inboxes); a publish or
    /// send beyond it is refused with 110 until older ones go. 0 = no limit.
    #[serde(default)]
    pub max_channel_bytes: usize,
    /// How long the store keeps each channel's publications (separate from what memory
    /// keeps: `history_size`, `history_ttl_ms`).
    #[serde(default)]
    pub retention: Retention,
    /// Clients may edit and delete publications (theirs, or others' as moderators).
    #[serde(default)]
    pub edits: bool,
}

/// How much of each channel of a namespace the store keeps: publications younger than
/// `max_age_ms` and at most the newest `max_count`; both absent (the default): forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Retention {
    /// Stored publications older than this are deleted.
    pub max_age_ms: Option<u64>,
    /// At most this many of a channel's publications are kept, the newest.
    pub max_count: Option<u64>,
}

impl Retention {
    /// Whether everything is kept.
    pub fn forever(&self) -> bool {
        self.max_age_ms.is_none() && self.max_count.is_none()
    }
}

/// A namespace policy resolved for a shard (ttl in ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// When publications are acknowledged and whether they are stored.
    pub durability: Durability,
    /// Publications kept per channel.
    pub keep: usize,
    /// Age limit of kept publications, in ticks.
    pub ttl: u32,
    /// Most bytes one channel may retain (payloads and bookkeeping); a publication
    /// beyond it is refused with 110. 0 = no limit.
    pub max_bytes: usize,
    /// Clients may edit and delete publications.
    pub edits: bool,
}

/// Every namespace's policy; index 0 is the default for channels whose namespace is
/// not configured.
#[derive(Debug, Clone)]
pub struct Policies {
    list: Vec<Policy>,
    by_name: HashMap<Box<str>, u16>,
}

impl Policies {
    /// `default` for unconfigured namespaces plus one per entry of `namespaces`, with
    /// ages converted to ticks of `tick_ms`.
    pub fn new(default: Policy, namespaces: &[NamespacePolicy], tick_ms: u64) -> Policies {
        let mut list = vec![default];
        let mut by_name = HashMap::new();
        for ns in namespaces {
            by_name.insert(ns.name.as_str().into(), list.len() as u16);
            list.push(Policy {
                durability: ns.durability,
                keep: ns.history_size,
                ttl: crate::core::ms_to_ticks(ns.history_ttl_ms, tick_ms),
                max_bytes: ns.max_channel_bytes,
                edits: ns.edits,
            });
        }
        Policies { list, by_name }
    }

    /// Only the default policy.
    pub fn single(default: Policy) -> Policies {
        Policies::new(default, &[], 1)
    }

    /// The policy index of `channel` (its namespace's, or 0).
    pub fn resolve(&self, channel: &str) -> u16 {
        if self.by_name.is_empty() {
            return 0;
        }
        match channel.split_once(':') {
            Some((ns, _)) => self.by_name.get(ns).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Policy number `i`.
    #[inline]
    pub fn get(&self, i: u16) -> &Policy {
        &self.list[i as usize]
    }

    /// Whether any namespace stores its publications.
    pub fn any_durable(&self) -> bool {
        self.list.iter().any(|p| p.durability != Durability::None)
    }
}

/// One publication to store.
#[derive(Debug, Clone)]
pub struct Record {
    /// Channel name.
    pub channel: Arc<str>,
    /// Epoch of its stream.
    pub epoch: u64,
    /// Its offset.
    pub offset: u64,
    /// Format of `data` and `meta`.
    pub format: Format,
    /// The payload, as published.
    pub data: Bytes,
    /// Opaque metadata, as published.
    pub meta: Option<Bytes>,
    /// Idempotency key, if any.
    pub key: Option<Box<str>>,
    /// Sender's user id, for direct messages.
    pub from: Option<Arc<str>>,
    /// The user who published it (recorded, not shown).
    pub author: Option<Arc<str>>,
    /// The event a backend named it with.
    pub event: Option<Arc<str>>,
    /// It edits or deletes an earlier publication.
    pub revises: Option<switchboard_protocol::Revision>,
    /// Publications the channel keeps (its namespace's `history_size`).
    pub keep: u32,
}

/// A revision as stores keep it in one integer: the original's offset, negative for a
/// deletion.
pub fn revision_code(r: switchboard_protocol::Revision) -> i64 {
    let target = r.target.min(i64::MAX as u64) as i64;
    if r.delete {
        -target
    } else {
        target
    }
}

/// The revision [`revision_code`] stored.
pub fn revision_of(code: i64) -> switchboard_protocol::Revision {
    switchboard_protocol::Revision {
        target: code.unsigned_abs(),
        delete: code < 0,
    }
}

/// What a [`MarkRecord`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// A device's inbox cursor (`who` is the device id; `read` the offset processed).
    Cursor,
    /// A user's delivery and read receipt on a channel (`who` is the user id).
    Receipt,
}

impl MarkKind {
    /// Its code in storage.
    pub fn code(self) -> i64 {
        match self {
            MarkKind::Cursor => 0,
            MarkKind::Receipt => 1,
        }
    }

    /// The kind stored as `code`.
    pub fn from_code(code: i64) -> Option<MarkKind> {
        match code {
            0 => Some(MarkKind::Cursor),
            1 => Some(MarkKind::Receipt),
            _ => None,
        }
    }
}

/// How far someone got in a channel: an inbox cursor or a receipt. The latest one per
/// (channel, kind, who) is kept; written with the owner shard's batches, read back at
/// start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRecord {
    /// Channel name.
    pub channel: Arc<str>,
    /// Cursor or receipt.
    pub kind: MarkKind,
    /// Device id (cursor) or user id (receipt).
    pub who: Box<str>,
    /// Epoch the offsets belong to.
    pub epoch: u64,
    /// Delivered up to this offset.
    pub delivered: u64,
    /// Read (processed) up to this offset.
    pub read: u64,
    /// When it last changed, Unix milliseconds.
    pub at_ms: u64,
}

/// What one shard handed over in one loop turn.
#[derive(Debug)]
pub struct Batch {
    /// The sending shard (owner of every record's channel).
    pub shard: u16,
    /// The shard's batch number (rising by one).
    pub seq: u64,
    /// Whether a `sync` publication waits for this batch: the store then answers
    /// [`crate::ShardMsg::Committed`] once it is durable.
    pub notify: bool,
    /// The publications, in sequencing order.
    pub records: Vec<Record>,
    /// Cursors and receipts that changed (latest state each).
    pub marks: Vec<MarkRecord>,
    /// Socket.IO sessions a clean shutdown leaves recoverable.
    pub sessions: Vec<SessionRecord>,
}

/// A Socket.IO session a clean shutdown left recoverable (connection state recovery):
/// kept by the store until the next start hands it back to its home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's private id.
    pub pid: u128,
    /// The shard that answers for it.
    pub home: u16,
    /// When it ended, Unix milliseconds.
    pub closed_ms: u64,
    /// What recovering it needs (JSON, the engine's own).
    pub body: Vec<u8>,
}

/// A stream read back from the store at start-up, for its owner shard.
#[derive(Debug, Clone)]
pub struct SeedStream {
    /// Channel name.
    pub channel: Arc<str>,
    /// The epoch to continue, or `None` to start a new one (its tail may be lost).
    pub epoch: Option<u64>,
    /// The last stored offset of that epoch.
    pub offset: u64,
    /// The kept publications, oldest first.
    pub entries: Vec<SeedEntry>,
    /// Idle for longer than `engine.stream_idle_ms`: only its position is kept, and the
    /// channel continues from it when next used (its history stays in the store).
    pub dormant: bool,
}

/// A stored publication read back at start-up.
#[derive(Debug, Clone)]
pub struct SeedEntry {
    /// Its offset.
    pub offset: u64,
    /// How long ago it was stored, in milliseconds.
    pub age_ms: u64,
    /// Format of `data` and `meta`.
    pub format: Format,
    /// The payload.
    pub data: Bytes,
    /// Opaque metadata.
    pub meta: Option<Bytes>,
    /// Idempotency key.
    pub key: Option<Box<str>>,
    /// Sender's user id, for direct messages.
    pub from: Option<Box<str>>,
    /// The user who published it.
    pub author: Option<Box<str>>,
    /// The event a backend named it with.
    pub event: Option<Box<str>>,
    /// It edits or deletes an earlier publication.
    pub revises: Option<switchboard_protocol::Revision>,
    /// It was edited or deleted since (its data and meta are the latest).
    pub revised: Option<switchboard_protocol::Revised>,
}

/// The shards' end of the store: where batches go and whether it takes them.
#[derive(Debug, Clone)]
pub struct JournalLink {
    tx: crossbeam_channel::Sender<Batch>,
    state: Arc<JournalState>,
}

/// What shards and the store share about the writer.
#[derive(Debug)]
pub struct JournalState {
    /// Records handed over and not yet stored.
    backlog: AtomicUsize,
    /// Most records handed over and not yet stored; durable publications beyond it
    /// are refused as overloaded.
    capacity: usize,
    /// False while the store cannot write (circuit open): durable publications are
    /// refused as unavailable.
    healthy: AtomicBool,
}

impl JournalState {
    /// Records handed over and not yet stored.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Whether the store is writing.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The store reports whether it can write.
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }

    /// The store stored `n` records.
    pub fn stored(&self, n: usize) {
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Why a durable publication is refused before it is sequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The writer is behind by `capacity` records.
    Behind,
    /// The store cannot write.
    Down,
}

impl JournalLink {
    /// A link whose backlog may reach `capacity` records; the receiver is the store's.
    pub fn new(capacity: usize) -> (JournalLink, crossbeam_channel::Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let state = Arc::new(JournalState {
            backlog: AtomicUsize::new(0),
            capacity: capacity.max(1),
            healthy: AtomicBool::new(true),
        });
        (JournalLink { tx, state }, rx)
    }

    /// The shared state (for the store and for health reports).
    pub fn state(&self) -> &Arc<JournalState> {
        &self.state
    }

    /// Whether one more durable publication may be sequenced now.
    #[inline]
    pub fn admit(&self) -> Result<(), Refusal> {
        if !self.state.healthy.load(Ordering::Relaxed) {
            return Err(Refusal::Down);
        }
        if self.state.backlog.load(Ordering::Relaxed) >= self.state.capacity {
            return Err(Refusal::Behind);
        }
        Ok(())
    }

    /// Hand a batch to the store. Fails only when the store has stopped.
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.records.len();
        self.state.backlog.fetch_add(n, Ordering::Relaxed);
        self.tx.send(batch).map_err(|e| {
            self.state.backlog.fetch_sub(n, Ordering::Relaxed);
            self.state.healthy.store(false, Ordering::Relaxed);
            e.0
        })
    }
}

/// What the engine gets from a store at start: the link, and each stream to continue.
#[derive(Debug)]
pub struct Durable {
    /// Where shards send their batches.
    pub link: JournalLink,
    /// Streams read back from the store (any shard's; each shard takes its own).
    pub seeds: Vec<SeedStream>,
    /// Cursors and receipts read back from the store.
    pub marks: Vec<MarkRecord>,
    /// Socket.IO sessions the last clean shutdown left recoverable.
    pub sessions: Vec<SessionRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_resolve_by_prefix() {
        let default = Policy {
            durability: Durability::None,
            keep: 64,
            ttl: 10,
            max_bytes: 0,
            edits: false,
        };
        let p = Policies::new(
            default,
            &[NamespacePolicy {
                retention: Default::default(),
                edits: false,
                name: "chat".into(),
                durability: Durability::Sync,
                history_size: 5,
                history_ttl_ms: 1000,
                rules: Default::default(),
                presence: false,
                presence_events: false,
                max_channel_bytes: 0,
            }],
            100,
        );
        assert_eq!(p.get(p.resolve("chat:1")).durability, Durability::Sync);
        assert_eq!(p.get(p.resolve("chat:1")).ttl, 10);
        assert_eq!(p.resolve("chatty:1"), 0);
        assert_eq!(p.resolve("chat"), 0);
        assert!(p.any_durable());
        assert!(!Policies::single(default).any_durable());
    }

    #[test]
    fn backlog_bound_and_health_gate_admission() {
        let (link, rx) = JournalLink::new(2);
        assert_eq!(link.admit(), Ok(()));
        let rec = Record {
            channel: "a".into(),
            epoch: 1,
            offset: 1,
            format: Format::Json,
            data: Bytes::from_static(b"1"),
            meta: None,
            key: None,
            from: None,
            author: None,
            event: None,
            revises: None,
            keep: 1,
        };
        let batch = Batch {
            shard: 0,
            seq: 0,
            notify: false,
            records: vec![rec.clone(), rec],
            marks: Vec::new(),
            sessions: Vec::new(),
        };
        link.send(batch).unwrap();
        assert_eq!(link.admit(), Err(Refusal::Behind));
        link.state().stored(2);
        assert_eq!(link.admit(), Ok(()));
        link.state().set_healthy(false);
        assert_eq!(link.admit(), Err(Refusal::Down));
        drop(rx);
        link.state().set_healthy(true);
        let lost = Batch {
            shard: 0,
            seq: 1,
            notify: false,
            records: Vec::new(),
            marks: Vec::new(),
            sessions: Vec::new(),
        };
        assert!(link.send(lost).is_err());
        assert_eq!(link.admit(), Err(Refusal::Down));
    }
}
