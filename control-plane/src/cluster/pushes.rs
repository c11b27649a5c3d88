//! Pushes to users connected to other nodes: notifications and call signaling that a
//! worker of this node addresses to a user or a channel, and letters to one node
//! ([`super::mail`]), on one queue to the relay.
//!
//! A node receives a user's personal channel while the user is connected to it (see
//! `switchboard_engine::cluster`), so a push for the user goes as one Redis message on
//! that channel's topic: an unsequenced record, `P:<origin node>\n` then the coalescing
//! key and the push encoded once per wire format. Every node with the user's
//! connections hands it to its shards; the origin skips its own (its workers pushed
//! locally already). Best effort, as pushes are on one node: a user connected nowhere
//! gets nothing (notifications stay stored for later), and while Redis is away pushes
//! reach local connections only.
//!
//! Owns [`RemotePushes`] (the workers' end) and the record format. Does not own
//! Redis (`super::relay`) or what a push says (the workers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use switchboard_engine::cluster::ChannelPush;
use switchboard_engine::control::{Frames, PushTo};

/// Pushes waiting for Redis (beyond: dropped, counted).
const QUEUE: usize = 65_536;

/// One push for one user, on its way to the other nodes.
#[derive(Debug)]
pub struct UserPush {
    /// The user.
    pub user: Arc<str>,
    /// The push, encoded once per format.
    pub frames: Frames,
    /// Its coalescing key (progress notifications).
    pub coalesce: Option<Arc<str>>,
}

/// What the workers hand the relay for other nodes.
#[derive(Debug)]
pub enum Outbound {
    /// A push to a user's connections.
    User(UserPush),
    /// A push to a channel's subscribers (a room call ringing).
    Channel(ChannelPush),
    /// A letter to one node.
    Mail(Arc<str>, Vec<u8>),
}

/// The workers' way to users on other nodes; does nothing for a node alone.
#[derive(Debug, Clone, Default)]
pub struct RemotePushes {
    tx: Arc<OnceLock<tokio::sync::mpsc::Sender<Outbound>>>,
    dropped: Arc<AtomicU64>,
}

impl RemotePushes {
    /// Send the per-user and per-channel pushes of `to` to the other nodes (pushes to
    /// one connection or to everyone stay local).
    pub fn send(&self, to: &PushTo, coalesce: &Option<Arc<str>>) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        match to {
            PushTo::Users(list) => {
                for (user, frames) in list {
                    let p = UserPush {
                        user: user.clone(),
                        frames: frames.clone(),
                        coalesce: coalesce.clone(),
                    };
                    self.queue(tx, Outbound::User(p));
                }
            }
            PushTo::Channel {
                channel, frames, ..
            } => {
                let p = ChannelPush {
                    channel: channel.clone(),
                    frames: frames.clone(),
                };
                self.queue(tx, Outbound::Channel(p));
            }
            PushTo::Client(..) | PushTo::All(_) => {}
        }
    }

    /// Send `letter` to `node`; whether it was queued (not: no cluster, or Redis too
    /// far behind).
    pub fn mail(&self, node: Arc<str>, letter: Vec<u8>) -> bool {
        match self.tx.get() {
            Some(tx) => self.queue(tx, Outbound::Mail(node, letter)),
            None => false,
        }
    }

    fn queue(&self, tx: &tokio::sync::mpsc::Sender<Outbound>, out: Outbound) -> bool {
        let queued = tx.try_send(out).is_ok();
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Pushes dropped because Redis was too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The relay's end (once, when the cluster thread starts).
    pub(super) fn attach(&self) -> Option<tokio::sync::mpsc::Receiver<Outbound>> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        self.tx.set(tx).ok().map(|_| rx)
    }
}

/// The record of `p` from node `origin`.
pub fn encode(origin: &str, p: &UserPush) -> Vec<u8> {
    let key = p.coalesce.as_deref().unwrap_or("").as_bytes();
    let size: usize = p.frames.iter().map(|f| 4 + f.len()).sum();
    let mut out = Vec::with_capacity(4 + origin.len() + 2 + key.len() + size);
    out.extend_from_slice(b"P:");
    out.extend_from_slice(origin.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&(key.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&key[..key.len().min(u16::MAX as usize)]);
    for f in &p.frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A push record: its origin, coalescing key and frames; `None` if `b` is not one.
pub fn decode(b: &[u8]) -> Option<(&str, Option<Arc<str>>, Frames)> {
    let rest = b.strip_prefix(b"P:")?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let origin = std::str::from_utf8(&rest[..nl]).ok()?;
    let rest = &rest[nl + 1..];
    let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
    let key = (!key.is_empty()).then(|| Arc::from(key));
    let mut rest = &rest[2 + n..];
    let mut frames: Frames = Default::default();
    for f in frames.iter_mut() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        *f = Bytes::copy_from_slice(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some((origin, key, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_records_round_trip_and_are_told_from_publications() {
        let p = UserPush {
            user: "bob".into(),
            frames: [
                Bytes::from_static(b"\x82\x01"),
                Bytes::from_static(b"{\"push\":1}"),
                Bytes::from_static(b"42[\"x\"]"),
            ],
            coalesce: Some("job:7".into()),
        };
        let rec = encode("n1", &p);
        let (origin, key, frames) = decode(&rec).unwrap();
        assert_eq!(origin, "n1");
        assert_eq!(key.as_deref(), Some("job:7"));
        assert_eq!(frames, p.frames);
        assert!(decode(&rec[..rec.len() - 1]).is_none());
        assert!(decode(b"00000000000000ab:1:x").is_none());
    }
}
