//! Engine.IO sessions: the transport of Socket.IO clients, over WebSocket or HTTP
//! long-polling, on any shard.
//!
//! Owns an Engine.IO session's state ([`EioSession`]), its id ([`Sid`], which names
//! the shard, slot and generation that hold it), the messages that carry polling
//! requests and upgrades between shards ([`EioMsg`]) and the heartbeat. A session that
//! opened on a WebSocket *is* that connection. A session opened by polling is a
//! connection without a socket on the shard that answered the handshake; every later
//! request reaches it through the mesh, whichever shard the kernel gave it to, and a
//! WebSocket that upgrades it relays packets to it.
//!
//! # Rooms
//! - [`http`]: the HTTP side, on any shard: requests to the endpoint, their answers.
//! - [`owner`]: the session side: polls, posts, the upgrade, handing queued frames to
//!   whichever transport carries them.
//! - [`packets`]: Engine.IO packets → the application (Socket.IO, or the test-only
//!   echo).
//! - [`sio`]: Socket.IO: namespaces, CONNECT, events, acks, attachments;
//!   [`sio_hooks`]: the backend hooks' calls and answers.
//! - [`recovery`] and [`resume`]: connection state recovery (its data, its flow).
//!
//! Does not own the protocol's bytes (`switchboard_protocol::{engineio, socketio,
//! eio_http}`) or what events mean for channels (the features, through dispatch).

mod http;
mod owner;
mod packets;
mod recovery;
mod resume;
mod sio;
mod sio_hooks;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use switchboard_protocol::eio_http::EioError;

use super::conn::ConnKey;

pub(super) use http::HttpCtx;
pub(in crate::core) use recovery::Recovery;
pub use recovery::{Ask, RecordBox, RecoveryMsg, Resumed};
pub(super) use sio::SioState;

/// The other end of a transport: a connection on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its shard.
    pub shard: u16,
    /// The connection.
    pub conn: ConnKey,
}

/// A session id: where the session lives, and a random part that makes it
/// unguessable (a sid is what a polling request proves itself with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sid {
    pub(super) shard: u16,
    pub(super) conn: ConnKey,
    pub(super) nonce: u64,
}

impl Sid {
    /// 18 bytes in URL-safe base64: 24 characters.
    pub(super) fn encode(&self) -> String {
        let mut raw = [0u8; 18];
        raw[..2].copy_from_slice(&self.shard.to_be_bytes());
        raw[2..6].copy_from_slice(&self.conn.slot.to_be_bytes());
        raw[6..10].copy_from_slice(&self.conn.gen.to_be_bytes());
        raw[10..].copy_from_slice(&self.nonce.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub(super) fn parse(s: &str) -> Option<Sid> {
        if s.len() != 24 {
            return None;
        }
        let mut raw = [0u8; 18];
        let n = URL_SAFE_NO_PAD.decode_slice(s, &mut raw).ok()?;
        if n != 18 {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        Some(Sid {
            shard: u16::from_be_bytes([raw[0], raw[1]]),
            conn: ConnKey {
                slot: u32_at(2),
                gen: u32_at(6),
            },
            nonce: u64::from_be_bytes(raw[10..].try_into().ok()?),
        })
    }
}

/// What a session's messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum App {
    /// Socket.IO (the configured path).
    SocketIo,
    /// Every message echoed back (the test-only `echo_path`).
    Echo,
}

/// How a session's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// This connection's own WebSocket.
    WebSocket,
    /// HTTP long-polling; the session has no socket. `poller`: the connection whose
    /// GET waits for packets; `probe`: a WebSocket probing to take over.
    Polling {
        poller: Option<Peer>,
        probe: Option<Peer>,
    },
    /// Upgraded to the WebSocket `0`, which relays (the session still has no socket).
    Upgraded(Peer),
    /// Polling, ended with no poll waiting: the next poll, for `close_timeout_ms`,
    /// still learns how — a noop when the client closed (its poll raced the close),
    /// a Socket.IO DISCONNECT when the server ended it for good (`stay_away`).
    Ended { stay_away: bool },
    /// This WebSocket carries the session held by `owner` (opened by polling); packets
    /// go there once the client sent `5`.
    Relay {
        owner: Peer,
        nonce: u64,
        upgraded: bool,
    },
}

/// One Engine.IO session (or relay), boxed beside a connection.
#[derive(Debug)]
pub(super) struct EioSession {
    /// The random part of its sid.
    pub(super) nonce: u64,
    /// How its packets travel.
    pub(super) transport: Transport,
    /// What its messages go to.
    pub(super) app: App,
    /// When the last ping was sent (monotonic), while its pong is awaited.
    pub(super) ping_sent_at: Option<std::time::Instant>,
    /// Tick of the last ping sent.
    pub(super) ping_tick: u32,
    /// Socket.IO state.
    pub(super) sio: SioState,
}

impl EioSession {
    pub(super) fn new(transport: Transport, app: App, tick: u32) -> EioSession {
        let mut b = [0u8; 8];
        // Without an entropy source sids are guessable: refuse to run blind.
        getrandom::getrandom(&mut b).expect("the OS entropy source is available");
        EioSession {
            nonce: u64::from_le_bytes(b),
            transport,
            app,
            ping_sent_at: None,
            ping_tick: tick,
            sio: SioState::default(),
        }
    }

    /// Whether the session lives without a socket (polling, or upgraded to a relay).
    pub(super) fn socketless(&self) -> bool {
        matches!(
            self.transport,
            Transport::Polling { .. } | Transport::Upgraded(_) | Transport::Ended { .. }
        )
    }
}

/// An Engine.IO message between shards.
#[derive(Debug)]
pub enum EioMsg {
    /// For the session `session` (checked against `nonce`), from the connection
    /// `from` that carried it.
    Request {
        /// The session.
        session: ConnKey,
        /// Its sid's random part.
        nonce: u64,
        /// The HTTP connection or WebSocket that carried the request.
        from: Peer,
        /// What it asks.
        req: EioReq,
    },
    /// For the connection `to` that carried a request, or relays the session.
    Answer {
        /// The connection.
        to: ConnKey,
        /// The answer.
        answer: EioAnswer,
    },
}

/// What a transport asks of its session.
#[derive(Debug)]
pub enum EioReq {
    /// A poll: answer with packets when there are some.
    Get,
    /// A polling body of packets.
    Post(Bytes),
    /// A WebSocket with this sid wants to probe (answer `Attached` or an error).
    Attach,
    /// The probing WebSocket received `5`: the session moves to it.
    Upgrade,
    /// A packet the upgraded WebSocket received.
    Packet {
        /// A binary frame (else text).
        binary: bool,
        /// Its payload.
        data: Bytes,
    },
    /// The probing or upgraded WebSocket has gone.
    Gone,
}

/// A session's answer.
#[derive(Debug)]
pub enum EioAnswer {
    /// A poll's payload.
    Payload(Bytes),
    /// A POST was taken.
    PostOk,
    /// The request is refused.
    Error(EioError),
    /// The WebSocket may probe: answer its upgrade with 101.
    Attached,
    /// Frames for the upgraded WebSocket to write.
    Frames(Vec<Bytes>),
    /// The session ended: close the WebSocket (`stay_away`: the server ended it for
    /// good — revoked, refused — so the client is told not to reconnect).
    Close {
        /// Send a Socket.IO DISCONNECT first.
        stay_away: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_round_trip_and_refuse_garbage() {
        let sid = Sid {
            shard: 3,
            conn: ConnKey {
                slot: 70_000,
                gen: u32::MAX,
            },
            nonce: 0x0123_4567_89ab_cdef,
        };
        let text = sid.encode();
        assert_eq!(text.len(), 24);
        assert_eq!(Sid::parse(&text), Some(sid));
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("!!!!!!!!!!!!!!!!!!!!!!!!"), None);
        assert_eq!(Sid::parse(&format!("{text}A")), None);
    }
}

#[cfg(test)]
mod size {
    /// What a Socket.IO session adds to a connection (boxed beside it): kept small,
    /// the rarely used parts allocated apart (`SioRare`).
    #[test]
    fn a_session_adds_at_most_80_bytes() {
        assert!(std::mem::size_of::<super::EioSession>() <= 80);
        assert!(std::mem::size_of::<super::SioState>() <= 16);
    }
}
