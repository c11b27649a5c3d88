//! Closing connections.
//!
//! Owns the close handshake (a `disconnect` push with reconnect hints, the close frame,
//! the close timeout), ending a connection at once, and detaching a closing connection
//! from channels, presence, typing, calls and its user. Does not own sockets: the
//! backend shuts and drops them when told.

use switchboard_protocol::frame;
use switchboard_protocol::CloseCode;

use super::conn::{mark_dirty, ConnState};
use super::{ShardCore, MAX_LAST_SEEN};
use crate::auth::ControlRequest;
use crate::mesh::PresenceKind;
use crate::metrics::CloseKind;

impl ShardCore {
    /// Start the close handshake: unsubscribe, queue a `disconnect` push (application
    /// codes and 1001) and the close frame, and give the peer `close_timeout_ms`.
    pub(super) fn begin_close(
        &mut self,
        slot: u32,
        code: CloseCode,
        reason: &str,
        kind: CloseKind,
    ) {
        self.begin_close_after(slot, code, reason, kind, code.reconnect(), None);
    }

    /// [`Self::begin_close`], saying in the `disconnect` push whether to reconnect and
    /// after how long.
    pub(super) fn begin_close_after(
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
            ConnState::Handshaking | ConnState::HttpWaiting => {
                return self.close_now(slot, Some(kind))
            }
            _ if conn.socketless() => return self.eio_end(slot, kind, false),
            _ => {}
        }
        let eio = conn.eio.is_some();
        self.detach(slot, false);
        self.closed(slot, kind);
        self.note_close(slot, code, reason);
        let now = self.tick;
        // A Socket.IO session told to stay away gets a DISCONNECT packet (no automatic
        // reconnect); one that may come back just sees the transport close.
        let notice = (if eio {
            // As for a socketless session (`eio::owner::stays_away`).
            code == CloseCode::REVOKED || code == CloseCode::UNAUTHORIZED
        } else {
            code.0 >= 4000 || code == CloseCode::GOING_AWAY
        })
        .then(|| self.disconnect_frame(slot, code, reason, reconnect, reconnect_after_ms));
        let conn = &mut self.conns[slot as usize];
        if conn.input_paused {
            // Nothing more is run; reading again lets the peer's close reply arrive.
            conn.input_paused = false;
            conn.pending_in = None;
            self.resumed.push(slot);
        }
        let conn = &mut self.conns[slot as usize];
        if let Some(notice) = notice {
            conn.out.push_unbounded(notice);
        }
        conn.out.push_unbounded(frame::encode_close(code.0, reason));
        conn.state = ConnState::Closing;
        conn.since = now;
        mark_dirty(conn, slot, &mut self.dirty);
        self.schedule(slot, now as u64 + self.ticks.close as u64);
    }

    /// The id `connect` gave the connection in `slot` (`shard.slot.generation`).
    pub(super) fn client_id(&self, slot: u32) -> crate::presence::ClientId {
        crate::presence::ClientId {
            shard: self.id,
            slot,
            gen: self.conns[slot as usize].gen,
        }
    }

    /// Count a connection's close, and log it (debug) under the connection's client id,
    /// the correlation id its `connect` reply, the admin API and security events use.
    pub(super) fn closed(&self, slot: u32, kind: CloseKind) {
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
    pub(super) fn close_now(&mut self, slot: u32, kind: Option<CloseKind>) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        if conn.state == ConnState::Closed {
            return;
        }
        if conn.socketless() {
            return self.eio_end(slot, kind.unwrap_or(CloseKind::PeerGone), false);
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
    pub(super) fn detach(&mut self, slot: u32, graceful: bool) {
        if self.conns[slot as usize].eio.is_some() {
            self.eio_relay_gone(slot);
            if self.recovery.is_some() {
                self.recovery_ended(slot);
            }
        }
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
        if !self.presence.namespaces.is_empty() {
            let conn = &self.conns[slot as usize];
            let mut subs = conn.subs.clone();
            subs.retain(|c| self.tracks_members(c));
            subs.extend(conn.presence_self());
            for name in subs {
                let kind = PresenceKind::Leave { linger: !graceful };
                self.report_presence(slot, &name, kind);
            }
        }
        let mut left = None;
        let conn = &mut self.conns[slot as usize];
        if let Some(identity) = &conn.identity {
            if let Some(u) = self.users.conns.get_mut(&*identity.user) {
                if u.remove(slot) {
                    self.users.conns.remove(&*identity.user);
                    left = Some(identity.user.clone());
                    self.rate.user_buckets.remove(&*identity.user);
                    if self.users.last_seen.len() >= MAX_LAST_SEEN {
                        // Best effort, bounded: start over rather than grow.
                        self.users.last_seen.clear();
                    }
                    self.users
                        .last_seen
                        .insert(identity.user.clone(), self.clock.unix_ms);
                }
            }
        }
        let subs = std::mem::take(&mut conn.subs);
        let format = conn.format;
        if let Some(user) = left {
            self.user_interest(&user, false);
        }
        for name in subs {
            self.stop_holding(&name, slot);
            if let Some(change) = self.channels.unsubscribe(&name, slot, format) {
                if change.before != change.after {
                    self.announce(&name, change.after, false);
                }
                if change.after == 0 {
                    self.shared_interest(&name);
                }
            }
        }
    }
}
