//! Who is on a channel: the presence table a channel's owner shard keeps.
//!
//! Owns, for each channel of a namespace with `presence = true`, one entry per
//! connection grouped by user (a user may be on several devices), each with a status
//! (`online` unless the client set another), the user's status (the one it arrived
//! with, then the last one set by any of its connections), when each joined, and when each user was last seen. Shards
//! report their connections joining, leaving and changing status to the channel's owner,
//! which applies them here and gets back the events to push to the channel's members:
//! `join` when a user's first connection arrives, `leave` when its last one is gone,
//! `status` when its status changes. A connection that drops without a goodbye (no
//! close frame, heartbeat timeout) lingers for the grace period: the user stays present,
//! and a connection of the same user (and device) coming back within it replaces the
//! lingering one without any event, so a network blip does not flap presence.
//!
//! Counts (users, connections) are kept as the table changes, so asking for them costs
//! one lookup however big the channel.
//!
//! Does not own the pushes (the shard encodes and fans them out) or who may look.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A connection, as `connect` names it to its client (`shard.slot.generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// Its shard.
    pub shard: u16,
    /// Its slot there.
    pub slot: u32,
    /// The slot's generation.
    pub gen: u32,
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.slot, self.gen)
    }
}

/// One connection on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Connection id (`shard.slot.generation`, as `connect` returned it).
    pub client: String,
    /// Device id given in `connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Its status.
    pub status: String,
    /// When it joined, Unix milliseconds.
    pub since: u64,
    /// Gone without a goodbye, kept until the grace period ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lingering: bool,
}

/// One user on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// User id.
    pub user: String,
    /// The user's status (the last one set by any of its connections).
    pub status: String,
    /// Its connections.
    pub connections: Vec<MemberView>,
}

/// A channel's presence, as `presence` and the server API report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceList {
    /// Channel name.
    pub channel: String,
    /// Users present.
    pub users: usize,
    /// Connections present (lingering ones included).
    pub connections: usize,
    /// Each user, by id (absent when only counts were asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<UserView>>,
    /// Users who left, with when they were last seen (Unix milliseconds), newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Vec<(String, u64)>>,
}

/// What changed for the channel's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The user's first connection arrived.
    Join {
        /// User id.
        user: Arc<str>,
        /// Its status.
        status: Arc<str>,
    },
    /// The user's last connection is gone.
    Leave {
        /// User id.
        user: Arc<str>,
        /// When, Unix milliseconds.
        at_ms: u64,
    },
    /// The user's status changed.
    Status {
        /// User id.
        user: Arc<str>,
        /// The new status.
        status: Arc<str>,
    },
}

#[derive(Debug)]
struct Member {
    client: ClientId,
    device: Option<Box<str>>,
    status: Arc<str>,
    since_ms: u64,
    /// Tick after which a lingering member is removed.
    lingering_until: Option<u32>,
}

#[derive(Debug, Default)]
struct UserEntry {
    members: Vec<Member>,
    status: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct ChannelPresence {
    users: HashMap<Arc<str>, UserEntry>,
    connections: usize,
    /// Users who left, and when (bounded).
    last_seen: VecDeque<(Arc<str>, u64)>,
}

/// Most "last seen" records kept per channel.
const LAST_SEEN_KEPT: usize = 256;

/// The presence of the channels one shard owns.
#[derive(Debug, Default)]
pub struct Presence {
    channels: HashMap<Arc<str>, ChannelPresence>,
    /// Lingering members by deadline (the grace period is one value, so this is in
    /// order).
    lingering: VecDeque<Lingering>,
}

/// A lingering member: its deadline (tick), channel, user and connection id.
type Lingering = (u32, Arc<str>, Arc<str>, ClientId);

impl Presence {
    /// No one anywhere.
    pub fn new() -> Presence {
        Presence::default()
    }

    /// Connection `client` of `user` joined `channel`. A lingering connection of the
    /// same user and device (or, without a device, any lingering one of the user) is
    /// replaced silently.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        channel: &Arc<str>,
        user: &Arc<str>,
        client: ClientId,
        device: Option<&str>,
        status: &Arc<str>,
        now_ms: u64,
    ) -> Option<Event> {
        let c = self.channels.entry(channel.clone()).or_default();
        let entry = c.users.entry(user.clone()).or_default();
        let was_present = !entry.members.is_empty();
        if let Some(i) = entry.members.iter().position(|m| {
            m.lingering_until.is_some() && (device.is_none() || m.device.as_deref() == device)
        }) {
            entry.members.swap_remove(i);
            c.connections -= 1;
        }
        // Most users are on a channel once: room for exactly one member at first.
        entry.members.reserve_exact(1);
        entry.members.push(Member {
            client,
            device: device.map(Into::into),
            status: status.clone(),
            since_ms: now_ms,
            lingering_until: None,
        });
        c.connections += 1;
        if was_present {
            // Another device of a user already here keeps the user's status.
            return None;
        }
        entry.status = Some(status.clone());
        Some(Event::Join {
            user: user.clone(),
            status: status.clone(),
        })
    }

    /// Connection `client` of `user` left `channel`: at once, or (`linger_until`, a
    /// tick) after the grace period if it does not come back.
    pub fn leave(
        &mut self,
        channel: &str,
        user: &Arc<str>,
        client: ClientId,
        linger_until: Option<u32>,
        now_ms: u64,
    ) -> Option<Event> {
        let c = self.channels.get_mut(channel)?;
        let entry = c.users.get_mut(user)?;
        let i = entry.members.iter().position(|m| m.client == client)?;
        if let Some(deadline) = linger_until {
            entry.members[i].lingering_until = Some(deadline);
            let channel = self.channels.get_key_value(channel)?.0.clone();
            self.lingering
                .push_back((deadline, channel, user.clone(), client));
            return None;
        }
        entry.members.swap_remove(i);
        c.connections -= 1;
        self.remove_if_gone(channel, user, now_ms)
    }

    fn remove_if_gone(&mut self, channel: &str, user: &Arc<str>, now_ms: u64) -> Option<Event> {
        let c = self.channels.get_mut(channel)?;
        if !c.users.get(user)?.members.is_empty() {
            return None;
        }
        c.users.remove(user);
        if c.last_seen.len() == LAST_SEEN_KEPT {
            c.last_seen.pop_back();
        }
        c.last_seen.retain(|(u, _)| u != user);
        c.last_seen.push_front((user.clone(), now_ms));
        if c.users.is_empty() && c.last_seen.is_empty() {
            self.channels.remove(channel);
        }
        Some(Event::Leave {
            user: user.clone(),
            at_ms: now_ms,
        })
    }

    /// Connection `client` of `user` set its status on `channel`.
    pub fn status(
        &mut self,
        channel: &str,
        user: &Arc<str>,
        client: ClientId,
        status: &Arc<str>,
    ) -> Option<Event> {
        let entry = self.channels.get_mut(channel)?.users.get_mut(user)?;
        let m = entry.members.iter_mut().find(|m| m.client == client)?;
        m.status = status.clone();
        let previous = entry.status.replace(status.clone());
        (previous.as_deref() != Some(&**status)).then(|| Event::Status {
            user: user.clone(),
            status: status.clone(),
        })
    }

    /// Remove the lingering connections whose grace ended by tick `now`; the events
    /// of users who are gone with them.
    pub fn expire(&mut self, now: u32, now_ms: u64) -> Vec<(Arc<str>, Event)> {
        let mut out = Vec::new();
        while self
            .lingering
            .front()
            .is_some_and(|(deadline, ..)| *deadline <= now)
        {
            let (deadline, channel, user, client) = self.lingering.pop_front().expect("seen");
            let Some(c) = self.channels.get_mut(&*channel) else {
                continue;
            };
            let Some(entry) = c.users.get_mut(&user) else {
                continue;
            };
            // Only if it still lingers with this deadline (it may have been replaced).
            let Some(i) = entry
                .members
                .iter()
                .position(|m| m.client == client && m.lingering_until == Some(deadline))
            else {
                continue;
            };
            entry.members.swap_remove(i);
            c.connections -= 1;
            if let Some(e) = self.remove_if_gone(&channel, &user, now_ms) {
                out.push((channel, e));
            }
        }
        out
    }

    /// Users and connections on `channel`, in constant time.
    pub fn count(&self, channel: &str) -> (usize, usize) {
        self.channels
            .get(channel)
            .map_or((0, 0), |c| (c.users.len(), c.connections))
    }

    /// One user on `channel` (`None`: not present).
    pub fn user_view(&self, channel: &str, user: &str) -> Option<UserView> {
        let e = self.channels.get(channel)?.users.get(user)?;
        Some(view_of(user, e))
    }

    /// Channels with someone present.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.channels.keys()
    }

    /// Users on `channel`.
    pub fn users(&self, channel: &str) -> Vec<Arc<str>> {
        self.channels
            .get(channel)
            .map(|c| c.users.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Everything about `channel` (`members` false: the counts only).
    pub fn list(&self, channel: &str, members: bool) -> PresenceList {
        let (users, connections) = self.count(channel);
        let c = self.channels.get(channel);
        let members = members.then(|| {
            let mut v: Vec<UserView> = c
                .map(|c| c.users.iter().map(|(user, e)| view_of(user, e)).collect())
                .unwrap_or_default();
            v.sort_by(|a, b| a.user.cmp(&b.user));
            v
        });
        PresenceList {
            channel: channel.to_string(),
            users,
            connections,
            last_seen: members.as_ref().map(|_| {
                c.map(|c| {
                    c.last_seen
                        .iter()
                        .map(|(u, t)| (u.to_string(), *t))
                        .collect()
                })
                .unwrap_or_default()
            }),
            members,
        }
    }
}

fn view_of(user: &str, e: &UserEntry) -> UserView {
    UserView {
        user: user.to_string(),
        status: e.status.as_deref().unwrap_or("online").to_string(),
        connections: e
            .members
            .iter()
            .map(|m| MemberView {
                client: m.client.to_string(),
                device: m.device.as_deref().map(str::to_string),
                status: m.status.to_string(),
                since: m.since_ms,
                lingering: m.lingering_until.is_some(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        s.into()
    }

    fn cid(shard: u16, slot: u32, gen: u32) -> ClientId {
        ClientId { shard, slot, gen }
    }

    #[test]
    fn users_join_once_and_leave_with_their_last_connection() {
        let mut p = Presence::new();
        let (ch, bob, online, away) = (a("room:1"), a("bob"), a("online"), a("away"));
        assert!(matches!(
            p.join(&ch, &bob, cid(0, 1, 1), Some("phone"), &online, 10),
            Some(Event::Join { .. })
        ));
        assert_eq!(
            p.join(&ch, &bob, cid(1, 4, 1), Some("laptop"), &online, 11),
            None
        );
        assert_eq!(p.count("room:1"), (1, 2));
        assert!(matches!(
            p.status("room:1", &bob, cid(1, 4, 1), &away),
            Some(Event::Status { .. })
        ));
        assert_eq!(
            p.status("room:1", &bob, cid(0, 1, 1), &away),
            None,
            "unchanged"
        );
        assert_eq!(p.leave("room:1", &bob, cid(0, 1, 1), None, 20), None);
        assert!(matches!(
            p.leave("room:1", &bob, cid(1, 4, 1), None, 21),
            Some(Event::Leave { at_ms: 21, .. })
        ));
        let l = p.list("room:1", true);
        assert_eq!((l.users, l.connections), (0, 0));
        assert_eq!(l.last_seen.unwrap(), [("bob".to_string(), 21)]);
    }

    #[test]
    fn a_dropped_connection_lingers_and_a_return_is_silent() {
        let mut p = Presence::new();
        let (ch, bob, online) = (a("room:1"), a("bob"), a("online"));
        p.join(&ch, &bob, cid(0, 1, 1), Some("phone"), &online, 10);
        assert_eq!(p.leave("room:1", &bob, cid(0, 1, 1), Some(50), 20), None);
        assert_eq!(p.count("room:1"), (1, 1), "still present while lingering");
        assert!(p.list("room:1", true).members.unwrap()[0].connections[0].lingering);
        // Back on the same device within the grace period: no event at all.
        assert_eq!(
            p.join(&ch, &bob, cid(1, 2, 1), Some("phone"), &online, 30),
            None
        );
        assert!(
            p.expire(60, 60).is_empty(),
            "the replaced one does not expire"
        );
        assert_eq!(p.count("room:1"), (1, 1));
        // Dropped again and not back: gone after the grace period.
        p.leave("room:1", &bob, cid(1, 2, 1), Some(100), 90);
        assert!(p.expire(99, 99).is_empty());
        let gone = p.expire(100, 100);
        assert_eq!(gone.len(), 1);
        assert!(matches!(gone[0].1, Event::Leave { at_ms: 100, .. }));
        assert_eq!(p.count("room:1"), (0, 0));
    }
}
