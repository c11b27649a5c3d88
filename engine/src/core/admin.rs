//! Admin operations on this shard's connections.
//!
//! Owns disconnecting (with reconnect hints), maintenance pushes, token revocation,
//! the census and connection lists of the admin API. Does not own the admin API itself
//! (control plane) or closing ([`super::closing`]).

use switchboard_protocol::{CloseCode, Format};

use super::conn::ConnState;
use super::ShardCore;
use crate::control::{AdminOp, ConnFilter, ConnView, Maintenance, Target};
use crate::metrics::CloseKind;
use crate::presence::ClientId;

impl ShardCore {
    pub(super) fn on_admin(&mut self, op: AdminOp) {
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
                        let mix = slot.wrapping_mul(2_654_435_761) ^ self.tick.rotate_left(13);
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
                self.users.revoked.insert(user, before_ms);
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
                        ConnState::Handshaking | ConnState::HttpWaiting => c.handshaking += 1,
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
                let seen = if self.users.conns.contains_key(&*user) {
                    Some(self.clock.unix_ms)
                } else {
                    self.users.last_seen.get(&*user).copied()
                };
                let _ = done.send(seen);
            }
            AdminOp::Erase { user, inbox, done } => {
                if let Some(inbox) = inbox {
                    self.streams.forget(&inbox);
                }
                let _ = done.send(self.streams.redact(&user));
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
    pub(super) fn targets(&self, who: &Target) -> Vec<u32> {
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
            Target::User(u) => self
                .users
                .conns
                .get(&**u)
                .map_or(vec![], |u| u.slots().to_vec()),
            Target::All => self
                .conns
                .iter()
                .filter(|(_, c)| c.state == ConnState::Open)
                .map(|(slot, _)| slot as u32)
                .collect(),
        }
    }

    pub(super) fn list_connections(&self, f: &ConnFilter, limit: usize) -> Vec<ConnView> {
        let tick = self.cfg.tick_ms;
        let mut out = Vec::new();
        for (slot, c) in self.conns.iter() {
            if out.len() >= limit {
                break;
            }
            let user = c.identity.as_ref().map(|i| &*i.user);
            let age_ms = self.tick.wrapping_sub(c.since) as u64 * tick;
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
                    ConnState::HttpWaiting => "polling",
                    ConnState::AwaitingConnect => "awaiting_connect",
                    ConnState::Authenticating { .. } => "authenticating",
                    ConnState::Open => "open",
                    ConnState::Closing | ConnState::Draining => "closing",
                    ConnState::Closed => "closed",
                },
                format: match c.format {
                    Format::Json => "json",
                    Format::SocketIo => "socket.io",
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
}
