//! The session side of Engine.IO: what a session does with the requests its
//! transports bring, and where its queued frames go.
//!
//! Owns polls (answered at once when packets wait, else parked until some do; a
//! second poll while one waits is refused and ends the session, as the protocol
//! says), posts (their packets run in order), the upgrade (`Attach` lets a WebSocket
//! probe, a parked poll is answered with a noop, `Upgrade` moves the session to it),
//! the heartbeat, handing frames to the poll or the relaying WebSocket, and ending a
//! socketless session. Does not own HTTP ([`super::http`]) or what packets mean
//! ([`super::packets`]).

use bytes::Bytes;
use switchboard_protocol::eio_http::EioError;
use switchboard_protocol::engineio::{self, Data, Packet, PacketType};

use super::{EioAnswer, EioReq, Peer, Transport};
use crate::core::conn::{ConnKey, ConnState};
use crate::core::ShardCore;
use crate::metrics::{CloseKind, ShardMetrics};

/// The noop payload a parked poll gets when the session moves to WebSocket.
const NOOP: &[u8] = b"6";
/// The close packet a parked poll gets when the server ends the session.
const CLOSE: &[u8] = b"1";
/// A Socket.IO DISCONNECT alone (the client closes the transport itself after it; with
/// an Engine.IO close in the same payload it would see the close first and reconnect).
const DISCONNECT_CLOSE: &[u8] = b"41";

impl ShardCore {
    /// A request for the session `key` from the transport `from`.
    pub(super) fn eio_to_session(&mut self, key: ConnKey, nonce: u64, from: Peer, req: EioReq) {
        if self
            .conns
            .get(key.slot as usize)
            .is_some_and(|c| c.gen == key.gen)
        {
            self.eio_check_heartbeat(key.slot);
            let ended = match self.conns[key.slot as usize].eio.as_ref() {
                Some(e) if e.nonce == nonce => match e.transport {
                    Transport::Ended { stay_away } => Some(stay_away),
                    _ => None,
                },
                _ => None,
            };
            if let (Some(stay_away), EioReq::Get) = (ended, &req) {
                let body = if stay_away { DISCONNECT_CLOSE } else { NOOP };
                self.eio_send_answer(from, EioAnswer::Payload(Bytes::from_static(body)));
                return self.eio_finish(key.slot);
            }
        }
        let live = self.conns.get(key.slot as usize).is_some_and(|c| {
            c.gen == key.gen
                && c.eio.as_ref().is_some_and(|e| e.nonce == nonce)
                && !matches!(
                    c.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                )
        });
        if !live {
            let answer = match req {
                EioReq::Get | EioReq::Post(_) | EioReq::Attach => {
                    EioAnswer::Error(EioError::UnknownSid)
                }
                EioReq::Upgrade | EioReq::Packet { .. } => EioAnswer::Close { stay_away: false },
                EioReq::Gone => return,
            };
            return self.eio_send_answer(from, answer);
        }
        let slot = key.slot;
        let transport = self.conns[slot as usize]
            .eio
            .as_ref()
            .map(|e| e.transport)
            .expect("checked above");
        match (req, transport) {
            (
                EioReq::Get,
                Transport::Polling {
                    poller: Some(_), ..
                },
            ) => {
                // Overlapping polls: the protocol's answer is to end the session.
                self.eio_send_answer(from, EioAnswer::Error(EioError::BadRequest));
                self.eio_end(slot, CloseKind::ProtocolError, false);
            }
            (
                EioReq::Get,
                Transport::Polling {
                    poller: None,
                    probe,
                },
            ) => {
                if !self.conns[slot as usize].out.is_empty() {
                    let body = self.polling_payload(slot);
                    self.eio_send_answer(from, EioAnswer::Payload(body));
                } else {
                    // While a WebSocket probes, a poll is answered with a noop at the
                    // next tick, unless the upgrade completes first: then it was sent
                    // after the client's `5` (which travels through another shard)
                    // and is refused, as on a server that saw them in order.
                    self.set_transport(
                        slot,
                        Transport::Polling {
                            poller: Some(from),
                            probe,
                        },
                    );
                    if probe.is_some() {
                        self.eio_schedule(slot);
                    }
                }
            }
            (EioReq::Post(body), Transport::Polling { .. }) => {
                let conn = &mut self.conns[slot as usize];
                conn.last_rx = self.tick;
                conn.ping_sent = false;
                if let Some(e) = conn.eio.as_mut() {
                    e.ping_sent_at = None;
                }
                ShardMetrics::add(&self.metrics.bytes_in, body.len() as u64);
                let max = self.cfg.socketio.max_polling_packets;
                match engineio::decode_payload(&body, max) {
                    Ok(packets) => {
                        for p in packets {
                            if !self.eio_live(key) {
                                break;
                            }
                            self.eio_polling_packet(slot, p);
                        }
                        self.eio_send_answer(from, EioAnswer::PostOk);
                    }
                    Err(_) => {
                        self.eio_send_answer(from, EioAnswer::Error(EioError::BadRequest));
                        self.eio_end(slot, CloseKind::ProtocolError, false);
                    }
                }
            }
            (
                EioReq::Attach,
                Transport::Polling {
                    poller,
                    probe: None,
                },
            ) => {
                self.eio_send_answer(from, EioAnswer::Attached);
                self.set_transport(
                    slot,
                    Transport::Polling {
                        poller: None,
                        probe: Some(from),
                    },
                );
                // The client pauses polling to upgrade: release a parked poll.
                if let Some(p) = poller {
                    self.eio_send_answer(p, EioAnswer::Payload(Bytes::from_static(NOOP)));
                }
            }
            (EioReq::Upgrade, Transport::Polling { poller, probe }) if probe == Some(from) => {
                self.set_transport(slot, Transport::Upgraded(from));
                if let Some(p) = poller {
                    self.eio_send_answer(p, EioAnswer::Error(EioError::BadRequest));
                }
                ShardMetrics::add(&self.metrics.eio_upgrades, 1);
                self.eio_flush(slot);
            }
            (EioReq::Packet { binary, data }, Transport::Upgraded(p)) if p == from => {
                let conn = &mut self.conns[slot as usize];
                conn.last_rx = self.tick;
                conn.ping_sent = false;
                if let Some(e) = conn.eio.as_mut() {
                    e.ping_sent_at = None;
                }
                self.eio_packet(slot, binary, data);
            }
            (EioReq::Gone, Transport::Upgraded(p)) if p == from => {
                self.eio_end(slot, CloseKind::PeerGone, true);
            }
            (EioReq::Gone, Transport::Polling { poller, probe }) if probe == Some(from) => {
                self.set_transport(
                    slot,
                    Transport::Polling {
                        poller,
                        probe: None,
                    },
                );
            }
            (EioReq::Gone, _) => {}
            (EioReq::Upgrade | EioReq::Packet { .. }, _) => {
                self.eio_send_answer(from, EioAnswer::Close { stay_away: false });
            }
            (EioReq::Get | EioReq::Post(_) | EioReq::Attach, _) => {
                // A polling request for a WebSocket session (or one already upgraded),
                // a second probe: refused, the session unharmed.
                self.eio_send_answer(from, EioAnswer::Error(EioError::BadRequest));
            }
        }
    }

    fn eio_live(&self, key: ConnKey) -> bool {
        self.conns.get(key.slot as usize).is_some_and(|c| {
            c.gen == key.gen
                && !matches!(
                    c.state,
                    ConnState::Closing | ConnState::Draining | ConnState::Closed
                )
        })
    }

    fn set_transport(&mut self, slot: u32, t: Transport) {
        if let Some(e) = self.conns[slot as usize].eio.as_mut() {
            e.transport = t;
        }
    }

    /// One packet of a polling body.
    fn eio_polling_packet(&mut self, slot: u32, p: Packet<'_>) {
        match p.data {
            Data::Text(t) => {
                let mut text = Vec::with_capacity(1 + t.len());
                text.push(p.kind.digit());
                text.extend_from_slice(t.as_bytes());
                self.eio_packet(slot, false, Bytes::from(text));
            }
            Data::Binary(b) => self.eio_packet(slot, true, Bytes::from(b.into_owned())),
        }
    }

    /// Every queued frame as one polling payload: a frame's payload is one packet
    /// (a text frame's as it is, a binary frame's as `b` + base64).
    fn polling_payload(&mut self, slot: u32) -> Bytes {
        let frames = self.conns[slot as usize].out.take_all();
        let mut packets = Vec::with_capacity(frames.len());
        for f in &frames {
            let (binary, payload) = frame_payload(f);
            packets.push(if binary {
                Packet::binary(payload)
            } else {
                match std::str::from_utf8(payload) {
                    Ok(t) if !t.is_empty() => {
                        let kind =
                            PacketType::from_digit(t.as_bytes()[0]).unwrap_or(PacketType::Noop);
                        Packet::text(kind, &t[1..])
                    }
                    _ => Packet::text(PacketType::Noop, ""),
                }
            });
        }
        let mut out = Vec::with_capacity(frames.iter().map(|f| f.len()).sum::<usize>() + 8);
        engineio::encode_payload(&packets, &mut out);
        ShardMetrics::add(&self.metrics.frames_out, frames.len() as u64);
        ShardMetrics::add(&self.metrics.bytes_out, out.len() as u64);
        Bytes::from(out)
    }

    /// A socketless session has frames: hand them to its waiting poll or its
    /// WebSocket (otherwise they wait for the next poll).
    pub(in crate::core) fn eio_flush(&mut self, slot: u32) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        if conn.out.is_empty() {
            return;
        }
        let Some(transport) = conn.eio.as_ref().map(|e| e.transport) else {
            return;
        };
        match transport {
            Transport::Polling {
                poller: Some(p),
                probe,
            } => {
                let body = self.polling_payload(slot);
                self.set_transport(
                    slot,
                    Transport::Polling {
                        poller: None,
                        probe,
                    },
                );
                self.eio_send_answer(p, EioAnswer::Payload(body));
            }
            Transport::Upgraded(p) => {
                let frames: Vec<Bytes> = self.conns[slot as usize].out.take_all().into();
                ShardMetrics::add(&self.metrics.frames_out, frames.len() as u64);
                self.eio_send_answer(p, EioAnswer::Frames(frames));
            }
            _ => {}
        }
    }

    /// End a socketless session: its poll learns it (a noop when the client closed, a
    /// Socket.IO DISCONNECT when the server ended it for good, a close packet
    /// otherwise; with no poll waiting the first two wait for the next one), its
    /// WebSocket is closed, and it leaves everything.
    pub(in crate::core) fn eio_end(&mut self, slot: u32, kind: CloseKind, by_client: bool) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        let transport = conn.eio.as_ref().map(|e| e.transport);
        match conn.state {
            ConnState::Closed => return,
            ConnState::Closing if matches!(transport, Some(Transport::Ended { .. })) => {
                return self.eio_finish(slot)
            }
            ConnState::Closing => return,
            _ => {}
        }
        // Closing while its transports hear of it: what they answer finds it gone.
        conn.state = ConnState::Closing;
        let stay_away = !by_client && stays_away(kind);
        match transport {
            Some(Transport::Polling { poller, probe }) => {
                if let Some(p) = poller {
                    let body = match (by_client, stay_away) {
                        (true, _) => NOOP,
                        (false, true) => DISCONNECT_CLOSE,
                        (false, false) => CLOSE,
                    };
                    self.eio_send_answer(p, EioAnswer::Payload(Bytes::from_static(body)));
                }
                if let Some(p) = probe {
                    self.eio_send_answer(p, EioAnswer::Close { stay_away });
                }
            }
            Some(Transport::Upgraded(p)) if !by_client || kind != CloseKind::PeerGone => {
                self.eio_send_answer(p, EioAnswer::Close { stay_away });
            }
            _ => {}
        }
        self.detach(slot, by_client);
        self.closed(slot, kind);
        let unpolled = matches!(transport, Some(Transport::Polling { poller: None, .. }));
        if unpolled && (stay_away || by_client && kind == CloseKind::ClientClose) {
            let now = self.tick;
            self.set_transport(slot, Transport::Ended { stay_away });
            let conn = &mut self.conns[slot as usize];
            conn.since = now;
            conn.out.clear();
            return self.schedule(slot, now as u64 + self.ticks.close as u64);
        }
        self.eio_finish(slot);
    }

    /// The session is gone: its slot is freed at the end of the turn.
    fn eio_finish(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if conn.state == ConnState::Closed {
            return;
        }
        conn.state = ConnState::Closed;
        conn.out.clear();
        self.wake.push(slot);
    }

    /// A poll parked while a WebSocket probes gets its noop (the tick after it came).
    pub(super) fn eio_release_probing_poll(&mut self, slot: u32) {
        let transport = self.conns[slot as usize].eio.as_ref().map(|e| e.transport);
        if let Some(Transport::Polling {
            poller: Some(p),
            probe: Some(probe),
        }) = transport
        {
            self.set_transport(
                slot,
                Transport::Polling {
                    poller: None,
                    probe: Some(probe),
                },
            );
            self.eio_send_answer(p, EioAnswer::Payload(Bytes::from_static(NOOP)));
        }
    }

    /// A relaying WebSocket is closing: its session hears it.
    pub(in crate::core) fn eio_relay_gone(&mut self, slot: u32) {
        let Some(Transport::Relay { owner, nonce, .. }) =
            self.conns[slot as usize].eio.as_ref().map(|e| e.transport)
        else {
            return;
        };
        let from = Peer {
            shard: self.id,
            conn: self.key(slot),
        };
        self.relay_to_owner(owner, nonce, from, EioReq::Gone);
    }

    /// Send a relay's request to its session.
    pub(super) fn relay_to_owner(&mut self, owner: Peer, nonce: u64, from: Peer, req: EioReq) {
        if owner.shard == self.id {
            self.eio_to_session(owner.conn, nonce, from, req);
        } else {
            let msg = super::EioMsg::Request {
                session: owner.conn,
                nonce,
                from,
                req,
            };
            self.send_to(owner.shard, crate::mesh::ShardMsg::Eio(Box::new(msg)));
        }
    }
}

/// Whether a session ended for `kind` must not come back on its own (as a native
/// client is told with `reconnect: false`): its client gets a Socket.IO DISCONNECT.
fn stays_away(kind: CloseKind) -> bool {
    matches!(kind, CloseKind::Unauthorized | CloseKind::Revoked)
}

/// A server frame's payload and whether it is binary (the frame was built by
/// `frame::encode`: unmasked, one fragment).
fn frame_payload(f: &[u8]) -> (bool, &[u8]) {
    if f.len() < 2 {
        return (false, &[]);
    }
    let binary = f[0] & 0x0f == 0x2;
    let start = match f[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (binary, f.get(start..).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::frame::{self, OpCode};

    #[test]
    fn frame_payloads_come_out_of_every_header_size() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let data = vec![b'4'; len];
            let f = frame::encode(OpCode::Text, &data);
            assert_eq!(super::frame_payload(&f), (false, &data[..]), "{len}");
            let f = frame::encode(OpCode::Binary, &data);
            assert_eq!(super::frame_payload(&f), (true, &data[..]), "{len}");
        }
    }
}
