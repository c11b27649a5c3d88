//! Socket.IO connection state recovery: a client that lost its session gets it back,
//! with exactly the publications it missed, when it reconnects within
//! `socketio.recovery_ms`.
//!
//! How it maps onto the engine. Each session on the main namespace gets a private id,
//! the `pid` of its CONNECT reply, naming its *home* shard (where it was first
//! accepted) and 128 random bits. Every shard logs the publications it delivers to
//! Socket.IO subscribers ([`DeliveryLog`]: channel and position under a rising
//! sequence number, one entry per publication per shard, not per subscriber) and
//! keeps, per local channel, the last one ([`ChannelEntry::last`]); each publication
//! event carries its `"<offset>.<epoch>.<channel>"` as a last argument, the offset
//! socket.io-client keeps. When the session ends, its shard writes a [`Record`] —
//! identity, each subscription with where it started and the last publication it was
//! given, and the log's recent entries for its channels — and sends it home. A client
//! reconnecting with `{pid, offset}` is answered by the home shard: the offset says
//! how far along the log the client got, hence, for each channel, the position after
//! which it missed everything; the new session is subscribed from those positions,
//! the channels' streams replay what follows (as events with offsets), and the CONNECT
//! reply carries the same `pid`, which tells the client `recovered`. Anything the
//! record cannot place exactly (an offset it does not know, a miss older than the
//! record's window, a stream that no longer retains the publications) is not
//! recovered: the client gets a new `pid` (or, for a stream that fell short, its
//! session is closed and the next attempt is plain), never a silent gap.
//!
//! Owns the log, the records, pids and the recovery exchange between shards. Does not
//! own subscriptions and stream recovery (`core::subscriptions`, `crate::streams`),
//! the CONNECT flow (`super::sio`) or offsets on the wire (`envelope::sio`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use switchboard_protocol::Position;

use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::core::conn::ConnKey;
use crate::journal::SessionRecord;

/// Entries a shard's delivery log keeps (32 bytes each: 2 MiB when full).
const LOG_ENTRIES: usize = 1 << 16;
/// How far back a closing session's record looks into the log: what the client may
/// not have read when its connection ended (frames queued, in socket buffers, on the
/// wire). A client that missed more than this is not recovered.
const RECORD_WINDOW: u64 = 4_096;
/// Most of those a record keeps (the session's own, newest): 24 bytes each, so a
/// record stays under 12 KiB however busy its channels.
const RECORD_RECENT: usize = 512;
/// The `channel` of a [`Recent`] entry from the user's personal channel.
const PERSONAL: u16 = u16::MAX;
/// Most records a shard keeps (the oldest go first).
const MAX_RECORDS: usize = 100_000;
/// Most live sessions a shard knows the place of (about 40 bytes each).
const MAX_LIVE: usize = 1 << 20;

/// A session's private id: its home shard and 128 random bits. 18 bytes in URL-safe
/// base64 on the wire (24 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::core) struct Pid {
    /// The shard that keeps its record.
    pub(in crate::core) home: u16,
    /// Random: what a client proves the session is its own with.
    pub(in crate::core) id: u128,
}

impl Pid {
    /// A new pid homed on `home`.
    pub(in crate::core) fn new(home: u16) -> Pid {
        let mut b = [0u8; 16];
        // Without an entropy source pids are guessable: refuse to run blind.
        getrandom::getrandom(&mut b).expect("the OS entropy source is available");
        Pid {
            home,
            id: u128::from_le_bytes(b),
        }
    }

    pub(in crate::core) fn encode(&self) -> String {
        let mut raw = [0u8; 18];
        raw[..2].copy_from_slice(&self.home.to_be_bytes());
        raw[2..].copy_from_slice(&self.id.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub(in crate::core) fn parse(s: &str) -> Option<Pid> {
        if s.len() != 24 {
            return None;
        }
        let mut raw = [0u8; 18];
        if URL_SAFE_NO_PAD.decode_slice(s, &mut raw).ok()? != 18 {
            return None;
        }
        Some(Pid {
            home: u16::from_be_bytes([raw[0], raw[1]]),
            id: u128::from_be_bytes(raw[2..].try_into().ok()?),
        })
    }
}

/// A recoverable session's state: its pid, and where each subscription started on
/// the delivery log (publications logged at or before that were not its).
#[derive(Debug)]
pub(in crate::core) struct Recovering {
    pub(in crate::core) pid: Pid,
    pub(in crate::core) starts: Vec<(Arc<str>, u64)>,
}

/// The publications a shard delivered to Socket.IO subscribers, in delivery order
/// (which is the order every subscriber here was given them in).
#[derive(Debug)]
pub(in crate::core) struct DeliveryLog {
    entries: VecDeque<(Arc<str>, Position)>,
    /// Sequence number of `entries[0]` (numbers start at 1).
    base: u64,
}

impl Default for DeliveryLog {
    fn default() -> Self {
        DeliveryLog {
            entries: VecDeque::new(),
            base: 1,
        }
    }
}

impl DeliveryLog {
    /// Log a delivery; its sequence number.
    ///
    /// Hot path (once per publication per shard with Socket.IO subscribers): a
    /// refcount bump, no allocation once the ring is full.
    #[inline]
    pub(in crate::core) fn push(&mut self, channel: &Arc<str>, pos: Position) -> u64 {
        if self.entries.len() == LOG_ENTRIES {
            self.entries.pop_front();
            self.base += 1;
        }
        self.entries.push_back((channel.clone(), pos));
        self.top()
    }

    /// The last sequence number given (0 before any).
    pub(in crate::core) fn top(&self) -> u64 {
        self.base + self.entries.len() as u64 - 1
    }

    /// The entries from `from` on, with their sequence numbers, newest first.
    fn since(&self, from: u64) -> impl Iterator<Item = (u64, &(Arc<str>, Position))> {
        let skip = from.saturating_sub(self.base) as usize;
        let top = self.top();
        self.entries
            .iter()
            .skip(skip)
            .rev()
            .enumerate()
            .map(move |(i, e)| (top - i as u64, e))
    }
}

/// One subscription of an ended session.
#[derive(Debug, Clone)]
pub(in crate::core) struct ChannelMark {
    pub(in crate::core) channel: Arc<str>,
    /// The log's sequence number when the subscription started.
    pub(in crate::core) start: u64,
    /// The last publication the shard gave its subscribers here, with its sequence
    /// number (a subscription's starting position counts, at the number it started
    /// at); `None`: unknown, and the session cannot be recovered.
    pub(in crate::core) last: Option<(u64, Position)>,
}

/// One delivery a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::core) struct Recent {
    /// Its sequence number, less the record's `window`.
    at: u32,
    /// Its channel: an index into the record's `channels`, or [`PERSONAL`].
    channel: u16,
    pos: Position,
}

/// What recovering an ended session needs, kept by its home shard.
#[derive(Debug)]
pub(in crate::core) struct Record {
    /// When the session ended, Unix milliseconds.
    pub(in crate::core) closed_ms: u64,
    pub(in crate::core) identity: Arc<Identity>,
    pub(in crate::core) channels: Vec<ChannelMark>,
    /// The user's personal channel (its deliveries place an offset).
    personal: Option<Arc<str>>,
    /// The first sequence number `recent` covers.
    window: u64,
    /// The session's deliveries from `window` on, oldest first.
    recent: Vec<Recent>,
}

impl Record {
    /// A record of a session subscribed to `channels`, with the log's recent entries
    /// for them and for its user's `personal` channel (whose publications it gets
    /// without subscribing: they place an offset, but are not replayed).
    pub(in crate::core) fn new(
        identity: Arc<Identity>,
        channels: Vec<ChannelMark>,
        personal: Option<&str>,
        log: &DeliveryLog,
        closed_ms: u64,
    ) -> Record {
        let mut window = log.top().saturating_sub(RECORD_WINDOW - 1).max(log.base);
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        let mut newest: Vec<(u64, u16, Position)> = Vec::new();
        for (seq, (c, p)) in log.since(window) {
            let channel = if personal.is_some_and(|p| **c == *p) {
                Some(PERSONAL)
            } else {
                channels
                    .iter()
                    .position(|m| seq > m.start && same(&m.channel, c))
                    .map(|i| i as u16)
            };
            if let Some(channel) = channel {
                if newest.len() == RECORD_RECENT {
                    // Kept only from here on: the window starts after what is dropped.
                    window = seq + 1;
                    break;
                }
                newest.push((seq, channel, *p));
            }
        }
        let recent = newest
            .into_iter()
            .rev()
            .map(|(seq, channel, pos)| Recent {
                at: (seq - window) as u32,
                channel,
                pos,
            })
            .collect();
        Record {
            closed_ms,
            identity,
            channels,
            personal: personal.map(Arc::from),
            window,
            recent,
        }
    }

    /// The recent deliveries: sequence number, channel name, position.
    fn recent(&self) -> impl Iterator<Item = (u64, &str, Position)> + '_ {
        self.recent.iter().map(|r| {
            let name = match r.channel {
                PERSONAL => self.personal.as_deref().unwrap_or(""),
                i => &self.channels[i as usize].channel,
            };
            (self.window + u64::from(r.at), name, r.pos)
        })
    }

    /// Where to resume each channel for a client whose last publication was `offset`
    /// (`None`: it got none): the position after which it missed everything. `None`
    /// when that cannot be told exactly.
    pub(in crate::core) fn resume_points(
        &self,
        offset: Option<(&str, Position)>,
    ) -> Option<Vec<(Arc<str>, Position)>> {
        // How far along the log the client got.
        let seen = match offset {
            None => 0,
            Some((channel, pos)) => self
                .channels
                .iter()
                .find_map(|m| match m.last {
                    Some((seq, p)) if p == pos && *m.channel == *channel => Some(seq),
                    _ => None,
                })
                .or_else(|| {
                    self.recent()
                        .find(|&(_, c, p)| p == pos && c == channel)
                        .map(|(seq, ..)| seq)
                })?,
        };
        let mut points = Vec::with_capacity(self.channels.len());
        for m in &self.channels {
            let (last_seq, last) = m.last?;
            let seen = seen.max(m.start);
            if last_seq <= seen {
                points.push((m.channel.clone(), last));
                continue;
            }
            if seen + 1 < self.window {
                return None; // Missed more than the record saw.
            }
            let first_missed = self
                .recent()
                .find(|&(seq, c, _)| seq > seen && c == &*m.channel);
            points.push(match first_missed {
                Some((_, _, p)) if p.offset > 0 => (
                    m.channel.clone(),
                    Position {
                        epoch: p.epoch,
                        offset: p.offset - 1,
                    },
                ),
                Some(_) => return None,
                // Only the subscription's start moved it: nothing missed.
                None => (m.channel.clone(), last),
            });
        }
        Some(points)
    }
}

/// A subscription's last publication as stored: sequence number, epoch, offset.
type StoredLast = (u64, u64, u64);

/// A record as the store keeps it across a restart.
#[derive(Serialize, Deserialize)]
struct Stored {
    user: String,
    #[serde(default)]
    patterns: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    send_to: Option<Vec<String>>,
    #[serde(default)]
    schedule: bool,
    #[serde(default)]
    claims: Vec<(String, Vec<String>)>,
    /// `(channel, start, last: (seq, epoch, offset))`.
    subs: Vec<(String, u64, Option<StoredLast>)>,
    #[serde(default)]
    personal: Option<String>,
    window: u64,
    /// `(seq - window, channel index, epoch, offset)`.
    recent: Vec<(u32, u16, u64, u64)>,
}

impl Record {
    /// The record as the store keeps it (JSON).
    pub(in crate::core) fn to_stored(&self) -> Vec<u8> {
        let id = &self.identity;
        let stored = Stored {
            user: id.user.to_string(),
            patterns: id.channels.clone(),
            expires_at: id.expires_at,
            send_to: id.send_to.clone(),
            schedule: id.schedule,
            claims: id
                .claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            subs: self
                .channels
                .iter()
                .map(|m| {
                    let last = m.last.map(|(seq, p)| (seq, p.epoch, p.offset));
                    (m.channel.to_string(), m.start, last)
                })
                .collect(),
            personal: self.personal.as_deref().map(str::to_string),
            window: self.window,
            recent: self
                .recent
                .iter()
                .map(|r| (r.at, r.channel, r.pos.epoch, r.pos.offset))
                .collect(),
        };
        serde_json::to_vec(&stored).expect("serialising to memory cannot fail")
    }

    /// A record the store kept; `None` if it does not read as one.
    pub(in crate::core) fn from_stored(body: &[u8], closed_ms: u64) -> Option<Record> {
        let s: Stored = serde_json::from_slice(body).ok()?;
        let identity = Arc::new(Identity {
            user: s.user.into(),
            channels: s.patterns,
            expires_at: s.expires_at,
            send_to: s.send_to,
            schedule: s.schedule,
            claims: s
                .claims
                .into_iter()
                .map(|(k, v)| (k.into(), v.into_iter().map(Into::into).collect()))
                .collect(),
        });
        let pos = |epoch, offset| Position { epoch, offset };
        Some(Record {
            closed_ms,
            identity,
            channels: s
                .subs
                .into_iter()
                .map(|(c, start, last)| ChannelMark {
                    channel: c.into(),
                    start,
                    last: last.map(|(seq, e, o)| (seq, pos(e, o))),
                })
                .collect(),
            personal: s.personal.map(Arc::from),
            window: s.window,
            recent: s
                .recent
                .into_iter()
                .map(|(at, channel, e, o)| Recent {
                    at,
                    channel,
                    pos: pos(e, o),
                })
                .collect(),
        })
        .filter(|r| {
            // Every entry names one of its channels (the store's copy is trusted only
            // that far).
            let n = r.channels.len();
            r.recent
                .iter()
                .all(|e| (e.channel as usize) < n || e.channel == PERSONAL)
        })
    }
}

/// A shard's recovery state: its delivery log and the records of sessions homed here.
#[derive(Debug, Default)]
pub(in crate::core) struct Recovery {
    pub(in crate::core) log: DeliveryLog,
    records: HashMap<u128, (Box<Record>, u32)>,
    order: VecDeque<(u128, u32)>,
    /// Where the live sessions homed here are (a record replaces the entry).
    pub(in crate::core) live: HashMap<u128, (u16, ConnKey)>,
}

impl Recovery {
    /// Note where the live session of `pid` is (up to [`MAX_LIVE`] sessions: beyond,
    /// a half-open one is not replaced).
    pub(in crate::core) fn live_at(&mut self, pid: u128, shard: u16, conn: ConnKey) {
        if self.live.len() < MAX_LIVE || self.live.contains_key(&pid) {
            self.live.insert(pid, (shard, conn));
        }
    }

    /// Keep `record` for `pid` at tick `now`, forgetting those older than `ttl` ticks.
    pub(in crate::core) fn keep(&mut self, pid: u128, record: Box<Record>, now: u32, ttl: u32) {
        self.live.remove(&pid);
        self.expire(now, ttl);
        if self.records.len() >= MAX_RECORDS {
            if let Some((old, _)) = self.order.pop_front() {
                self.records.remove(&old);
            }
        }
        self.records.insert(pid, (record, now));
        self.order.push_back((pid, now));
    }

    /// Records a clean shutdown left in the store (`now_ms` is this start's clock;
    /// ticks count from 0 at start): those younger than `ttl` ticks, kept as if they
    /// had been here all along.
    pub(in crate::core) fn seed(
        &mut self,
        sessions: Vec<SessionRecord>,
        now_ms: u64,
        tick_ms: u64,
        ttl: u32,
    ) {
        let mut sessions: Vec<_> = sessions
            .into_iter()
            .filter_map(|s| {
                let age = now_ms.saturating_sub(s.closed_ms) / tick_ms.max(1);
                let age = u32::try_from(age).ok().filter(|&a| a <= ttl)?;
                Some((s.pid, Record::from_stored(&s.body, s.closed_ms)?, age))
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.2));
        for (pid, record, age) in sessions {
            self.records
                .insert(pid, (Box::new(record), 0u32.wrapping_sub(age)));
            self.order.push_back((pid, 0u32.wrapping_sub(age)));
        }
    }

    /// Every record kept (for the store, at a clean shutdown).
    pub(in crate::core) fn drain(&mut self) -> Vec<(u128, Box<Record>)> {
        self.order.clear();
        self.records.drain().map(|(pid, (r, _))| (pid, r)).collect()
    }

    /// Take the record of `pid`, if kept within `ttl` ticks of `now`.
    pub(in crate::core) fn take(&mut self, pid: u128, now: u32, ttl: u32) -> Option<Box<Record>> {
        self.expire(now, ttl);
        self.records.remove(&pid).map(|(r, _)| r)
    }

    fn expire(&mut self, now: u32, ttl: u32) {
        while let Some(&(pid, at)) = self.order.front() {
            if now.wrapping_sub(at) <= ttl {
                break;
            }
            self.order.pop_front();
            if self.records.get(&pid).is_some_and(|r| r.1 == at) {
                self.records.remove(&pid);
            }
        }
    }

    /// Records kept.
    #[cfg(test)]
    pub(in crate::core) fn records(&self) -> usize {
        self.records.len()
    }
}

/// Recovery messages between shards.
#[derive(Debug)]
pub enum RecoveryMsg {
    /// For the home shard: a session ended; keep its record.
    Record {
        /// The session's pid.
        pid: u128,
        /// What recovering it needs.
        record: Box<RecordBox>,
    },
    /// For the home shard: a client reconnects with this pid and offset.
    Ask(Box<Ask>),
    /// For the home shard: the session of `pid` is live on `shard` as `conn` (a new
    /// session, or one just recovered there).
    Live {
        /// The pid.
        pid: u128,
        /// Where the session is.
        shard: u16,
        /// The session.
        conn: ConnKey,
    },
    /// For the home shard: the session of `pid` ended without a record.
    Gone {
        /// The pid.
        pid: u128,
    },
    /// For the shard holding the live session of a pid its client is recovering
    /// elsewhere (the old connection is half-open: the heartbeat has not caught it
    /// yet): end it, so its record goes home, then ask again.
    Replace {
        /// The live session.
        conn: ConnKey,
        /// The question to ask again.
        ask: Box<Ask>,
    },
    /// The home shard's answer: the identity and where to resume each channel, or
    /// `None` (not recoverable).
    Answer {
        /// The new session.
        conn: ConnKey,
        /// What to resume.
        resumed: Option<Box<Resumed>>,
    },
}

/// A reconnecting client's question.
#[derive(Debug)]
pub struct Ask {
    pub(in crate::core) pid: Pid,
    /// The last publication the client saw, if any.
    pub(in crate::core) offset: Option<(Box<str>, Position)>,
    /// The new session's shard.
    pub(in crate::core) shard: u16,
    /// The new session.
    pub(in crate::core) conn: ConnKey,
    /// Asked again after its old session was ended: do not end anything again.
    pub(in crate::core) again: bool,
}

/// A record in transit (opaque outside the core).
#[derive(Debug)]
pub struct RecordBox(pub(in crate::core) Record);

/// A recoverable session's identity and resume points.
#[derive(Debug)]
pub struct Resumed {
    pub(in crate::core) identity: Arc<Identity>,
    pub(in crate::core) points: Vec<(Arc<str>, Position)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> Position {
        Position { epoch: 7, offset }
    }

    fn identity() -> Arc<Identity> {
        Arc::new(Identity {
            user: "ann".into(),
            channels: None,
            expires_at: None,
            send_to: None,
            schedule: false,
            claims: Vec::new(),
        })
    }

    #[test]
    fn pids_round_trip_and_refuse_garbage() {
        let pid = Pid::new(3);
        assert_eq!(Pid::parse(&pid.encode()), Some(pid));
        assert_eq!(pid.encode().len(), 24);
        assert_eq!(Pid::parse("short"), None);
        assert_eq!(Pid::parse("!!!!!!!!!!!!!!!!!!!!!!!!"), None);
    }

    /// Two channels; the client read up to `a` 2 and then lost `b` 1 and `a` 3.
    #[test]
    fn the_offset_places_every_channel() {
        let (a, b): (Arc<str>, Arc<str>) = ("room:a".into(), "room:b".into());
        let mut log = DeliveryLog::default();
        let start = log.top();
        log.push(&a, pos(1));
        let other: Arc<str> = "room:other".into();
        log.push(&other, pos(9));
        log.push(&a, pos(2));
        let b1 = log.push(&b, pos(1));
        let a3 = log.push(&a, pos(3));
        let marks = vec![
            ChannelMark {
                channel: a.clone(),
                start,
                last: Some((a3, pos(3))),
            },
            ChannelMark {
                channel: b.clone(),
                start,
                last: Some((b1, pos(1))),
            },
        ];
        let r = Record::new(identity(), marks, None, &log, 0);
        assert_eq!(r.recent.len(), 4, "only the session's channels");
        assert_eq!(std::mem::size_of::<Recent>(), 24);
        let points = r.resume_points(Some(("room:a", pos(2)))).unwrap();
        assert_eq!(points, vec![(a.clone(), pos(2)), (b.clone(), pos(0))]);
        // Everything read: resume after the last of each.
        let points = r.resume_points(Some(("room:a", pos(3)))).unwrap();
        assert_eq!(points, vec![(a.clone(), pos(3)), (b.clone(), pos(1))]);
        // Nothing read: from each subscription's start.
        let points = r.resume_points(None).unwrap();
        assert_eq!(points, vec![(a.clone(), pos(0)), (b.clone(), pos(0))]);
        // An offset the record does not know is not guessed at.
        assert_eq!(r.resume_points(Some(("room:a", pos(9)))), None);
        assert_eq!(r.resume_points(Some(("room:other", pos(9)))), None);
    }

    #[test]
    fn a_miss_older_than_the_window_is_not_recovered() {
        let a: Arc<str> = "room:a".into();
        let quiet: Arc<str> = "room:quiet".into();
        let mut log = DeliveryLog::default();
        let q = log.push(&quiet, pos(5));
        let mut last = 0;
        for i in 1..=RECORD_WINDOW + 10 {
            last = log.push(&a, pos(i));
        }
        let marks = vec![
            ChannelMark {
                channel: a.clone(),
                start: 0,
                last: Some((last, pos(RECORD_WINDOW + 10))),
            },
            ChannelMark {
                channel: quiet.clone(),
                start: 0,
                last: Some((q, pos(5))),
            },
        ];
        let r = Record::new(identity(), marks, None, &log, 0);
        // Read the quiet channel's last, then nothing of `a`: too far back.
        assert_eq!(r.resume_points(Some(("room:quiet", pos(5)))), None);
        // Read all but the last 3 of `a`: recovered, quiet channel included.
        let at = pos(RECORD_WINDOW + 7);
        let points = r.resume_points(Some(("room:a", at))).unwrap();
        assert_eq!(points, vec![(a.clone(), at), (quiet.clone(), pos(5))]);
        // The record keeps the session's last RECORD_RECENT deliveries: a client
        // whose last one is among them is recovered, one older is not.
        assert_eq!(r.recent.len(), RECORD_RECENT);
        let n = RECORD_WINDOW + 10;
        let oldest_kept = pos(n - RECORD_RECENT as u64 + 1);
        let points = r.resume_points(Some(("room:a", oldest_kept))).unwrap();
        assert_eq!(points[0], (a, oldest_kept));
        let before = pos(n - RECORD_RECENT as u64);
        assert_eq!(r.resume_points(Some(("room:a", before))), None);
    }

    #[test]
    fn records_survive_the_store_and_expire_by_their_age() {
        let a: Arc<str> = "room:a".into();
        let mut log = DeliveryLog::default();
        log.push(&a, pos(3));
        let seq = log.push(&a, pos(4));
        let marks = vec![ChannelMark {
            channel: a.clone(),
            start: 0,
            last: Some((seq, pos(4))),
        }];
        let r = Record::new(identity(), marks, Some("user:ann"), &log, 1_000);
        let back = Record::from_stored(&r.to_stored(), 1_000).unwrap();
        assert_eq!(back.identity, r.identity);
        assert_eq!(back.recent, r.recent);
        assert_eq!(
            back.resume_points(Some(("room:a", pos(3)))),
            Some(vec![(a, pos(3))])
        );
        let mut rec = Recovery::default();
        rec.keep(7, Box::new(back), 0, 100);
        let stored: Vec<SessionRecord> = rec
            .drain()
            .into_iter()
            .map(|(pid, r)| SessionRecord {
                pid,
                home: 1,
                closed_ms: r.closed_ms,
                body: r.to_stored(),
            })
            .collect();
        assert_eq!(rec.records(), 0);
        // Ticks of 10 ms, 100 ticks to live: 900 ms old is kept, 1,100 ms is not.
        let mut next = Recovery::default();
        next.seed(stored.clone(), 1_900, 10, 100);
        assert!(next.take(7, 5, 100).is_some());
        let mut late = Recovery::default();
        late.seed(stored, 2_100, 10, 100);
        assert!(late.take(7, 0, 100).is_none());
        assert!(Record::from_stored(b"not json", 0).is_none());
    }

    #[test]
    fn records_expire_and_are_taken_once() {
        let mut rec = Recovery::default();
        let r = || {
            Box::new(Record::new(
                identity(),
                Vec::new(),
                None,
                &DeliveryLog::default(),
                0,
            ))
        };
        rec.keep(1, r(), 10, 5);
        rec.keep(2, r(), 14, 5);
        assert!(rec.take(1, 16, 5).is_none(), "expired");
        assert!(rec.take(2, 16, 5).is_some());
        assert!(rec.take(2, 16, 5).is_none(), "taken once");
        assert_eq!(rec.records(), 0);
    }
}
