//! Why the server closed recent connections, told to clients that resume.
//!
//! Owns, per shard, the code and reason of each connection this shard closed with an
//! application code (4000–4999) or 1001, for one reconnect-token lifetime, and the
//! `closed` push a resuming client gets about its previous connection (asked of the
//! shard that closed it when that is another). A client that could not read its
//! `disconnect` push — it had stopped reading, or its close frame sat behind a full
//! socket buffer — learns why on its next `connect`. Does not own closing
//! ([`super::closing`]) or reconnect tokens ([`super::sessions`]).
//!
//! Kept in memory only: after a restart there is nothing to tell.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use switchboard_protocol::CloseCode;

use super::conn::ConnKey;
use super::ShardCore;
use crate::mesh::ShardMsg;
use crate::presence::ClientId;

/// Most notes a shard keeps (the oldest go first): about 64 bytes each.
const MAX_CLOSE_NOTES: usize = 16_384;

/// Recent closes of this shard's connections, by slot and generation.
#[derive(Debug, Default)]
pub(super) struct CloseNotes {
    /// Code, reason and tick of each noted close.
    notes: HashMap<(u32, u32), (u16, Box<str>, u32)>,
    /// The same keys, oldest first, for expiry.
    order: VecDeque<((u32, u32), u32)>,
}

impl CloseNotes {
    /// Note a close at tick `now`, forgetting notes older than `ttl` ticks.
    fn record(&mut self, key: (u32, u32), code: u16, reason: &str, now: u32, ttl: u32) {
        while let Some(&(old, at)) = self.order.front() {
            if self.order.len() < MAX_CLOSE_NOTES && now.wrapping_sub(at) <= ttl {
                break;
            }
            self.order.pop_front();
            if self.notes.get(&old).is_some_and(|n| n.2 == at) {
                self.notes.remove(&old);
            }
        }
        self.notes.insert(key, (code, reason.into(), now));
        self.order.push_back((key, now));
    }

    /// The close of `key`, if noted within `ttl` ticks of `now`.
    fn find(&self, key: (u32, u32), now: u32, ttl: u32) -> Option<(u16, &str)> {
        let (code, reason, at) = self.notes.get(&key)?;
        (now.wrapping_sub(*at) <= ttl).then_some((*code, &**reason))
    }
}

/// `{"push":"closed","client":…,"code":…,"reason":…}`.
#[derive(Serialize)]
struct ClosedPush<'a> {
    push: &'static str,
    client: &'a str,
    code: u16,
    reason: &'a str,
}

impl ShardCore {
    fn close_note_ttl(&self) -> u32 {
        super::ms_to_ticks(self.cfg.reconnect_ttl_ms, self.cfg.tick_ms)
    }

    /// Note why the server closed the connection in `slot` (called as it closes).
    pub(super) fn note_close(&mut self, slot: u32, code: CloseCode, reason: &str) {
        if code.0 < 4000 && code != CloseCode::GOING_AWAY {
            return;
        }
        let gen = self.conns[slot as usize].gen;
        let (now, ttl) = (self.tick, self.close_note_ttl());
        self.close_notes
            .record((slot, gen), code.0, reason, now, ttl);
    }

    /// A client resumed on `slot` with a token of the connection `previous`: tell it
    /// why that one was closed, if the server closed it.
    pub(super) fn tell_previous_close(&mut self, slot: u32, previous: ClientId) {
        if previous.shard == self.id {
            return self.answer_close_note(previous, self.id, self.key(slot));
        }
        if usize::from(previous.shard) < self.mesh.shards() {
            let to = self.key(slot);
            self.send_to(
                previous.shard,
                ShardMsg::CloseNoteQuery {
                    previous,
                    shard: self.id,
                    to,
                },
            );
        }
    }

    /// Look up `previous` (a connection of this shard) and send what is noted to the
    /// connection `to` on `shard`.
    pub(super) fn answer_close_note(&mut self, previous: ClientId, shard: u16, to: ConnKey) {
        let ttl = self.close_note_ttl();
        let Some((code, reason)) =
            self.close_notes
                .find((previous.slot, previous.gen), self.tick, ttl)
        else {
            return;
        };
        let note = ShardMsg::CloseNote {
            to,
            previous,
            code,
            reason: reason.into(),
        };
        if shard == self.id {
            self.on_close_note(note);
        } else {
            self.send_to(shard, note);
        }
    }

    /// Push a close note to the resumed connection it is for.
    pub(super) fn on_close_note(&mut self, note: ShardMsg) {
        let ShardMsg::CloseNote {
            to,
            previous,
            code,
            reason,
        } = note
        else {
            return;
        };
        if self
            .conns
            .get(to.slot as usize)
            .is_none_or(|c| c.gen != to.gen)
        {
            return;
        }
        let client = previous.to_string();
        self.send_push(
            to.slot,
            &ClosedPush {
                push: "closed",
                client: &client,
                code,
                reason: &reason,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_expire_and_are_bounded() {
        let mut n = CloseNotes::default();
        n.record((1, 1), 4003, "slow consumer", 10, 100);
        assert_eq!(n.find((1, 1), 50, 100), Some((4003, "slow consumer")));
        assert_eq!(n.find((1, 2), 50, 100), None);
        assert_eq!(n.find((1, 1), 111, 100), None);
        n.record((2, 1), 4004, "heartbeat timeout", 200, 100);
        assert_eq!(n.notes.len(), 1, "the expired note is forgotten");
        for i in 0..(MAX_CLOSE_NOTES as u32 + 10) {
            n.record((i, 9), 4003, "x", 300, 100);
        }
        assert_eq!(n.notes.len(), MAX_CLOSE_NOTES);
        assert_eq!(n.order.len(), MAX_CLOSE_NOTES);
    }
}
