//! Deadlines from the heartbeat wheel.
//!
//! Owns what a due connection gets: handshake, authentication and close timeouts,
//! pings and heartbeat timeouts, reconnect-token renewal. Does not own the wheel
//! ([`crate::wheel`]) or advancing it ([`super::ShardCore::on_tick`]).

use switchboard_protocol::CloseCode;

use super::conn::ConnState;
use super::{ms_to_ticks, ShardCore};
use crate::metrics::CloseKind;

impl ShardCore {
    pub(super) fn visit(&mut self, t: u32, slot: u32, gen: u32) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.gen != gen || conn.next_visit != t {
            return; // stale entry
        }
        let tk = self.ticks;
        if conn.eio.is_some()
            && matches!(
                conn.state,
                ConnState::AwaitingConnect | ConnState::Authenticating { .. } | ConnState::Open
            )
        {
            return self.eio_visit(t, slot);
        }
        match conn.state {
            ConnState::HttpWaiting => {
                // The session answers a poll within a ping interval; this is a
                // session that went away without answering.
                let wait = tk.eio_ping + tk.eio_pong + tk.close;
                if t >= conn.since + wait {
                    self.close_now(slot, Some(CloseKind::HandshakeTimeout));
                } else {
                    let at = conn.since + wait;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Handshaking => {
                if t >= conn.since + tk.handshake {
                    self.close_now(slot, Some(CloseKind::HandshakeTimeout));
                } else {
                    let at = conn.since + tk.handshake;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::AwaitingConnect | ConnState::Authenticating { .. } => {
                if t >= conn.since + tk.auth {
                    self.begin_close(
                        slot,
                        CloseCode::AUTH_TIMEOUT,
                        "authentication timeout",
                        CloseKind::AuthTimeout,
                    );
                } else {
                    let at = conn.since + tk.auth;
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Open => {
                let idle = t.saturating_sub(conn.last_rx);
                if conn.input_paused && idle >= tk.ping {
                    // Paused for a full queue, and nothing written for a ping interval:
                    // a consumer that stopped reading (a slow one still drains, which
                    // counts as heard from, see `written`).
                    return self.slow_consumer(slot);
                }
                if idle >= tk.ping + tk.pong {
                    self.begin_close(
                        slot,
                        CloseCode::HEARTBEAT_TIMEOUT,
                        "heartbeat timeout",
                        CloseKind::HeartbeatTimeout,
                    );
                } else if idle >= tk.ping {
                    let at = conn.last_rx + tk.ping + tk.pong;
                    if !conn.ping_sent {
                        conn.ping_sent = true;
                        let ping = self.ping_frame.clone();
                        self.enqueue(slot, ping);
                    }
                    self.schedule(slot, at as u64);
                } else {
                    let at = conn.last_rx + tk.ping;
                    self.schedule(slot, at as u64);
                }
                // Renew the reconnect token once half its life has passed.
                let half = ms_to_ticks(self.cfg.reconnect_ttl_ms / 2, self.cfg.tick_ms);
                let conn = &self.conns[slot as usize];
                if conn.state == ConnState::Open
                    && conn.token_at != u32::MAX
                    && t.wrapping_sub(conn.token_at) >= half
                {
                    self.push_token(slot);
                }
            }
            ConnState::Closing | ConnState::Draining => {
                // A close still queued (the `disconnect` push and close frame behind a
                // full socket buffer, everything else dropped) waits for the peer to
                // read its way to it, up to a heartbeat timeout (ping interval + pong
                // timeout): a slow reader learns why it was closed. Once written, the
                // peer's reply gets the close timeout.
                let longest = tk.close.max(tk.ping + tk.pong);
                let unwritten = conn.state == ConnState::Closing
                    && !conn.out.is_empty()
                    && t < conn.since + longest;
                if t >= conn.since + tk.close && !unwritten {
                    self.close_now(slot, None);
                } else {
                    let at = (conn.since + tk.close).max(t + 1);
                    self.schedule(slot, at as u64);
                }
            }
            ConnState::Closed => {}
        }
    }
}
