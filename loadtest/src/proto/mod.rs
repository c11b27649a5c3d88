//! The wire protocols the harness speaks, one file each.
//!
//! A protocol is a small sans-IO translator: it says which path and subprotocol to
//! upgrade with, what to send to authenticate, subscribe and publish, and what an
//! incoming message means. The worker owns sockets and timing. Adding a protocol is
//! one file implementing [`Protocol`] plus its line in [`for_scenario`].

mod raw;
mod socketio;
mod switchboard;
mod switchboard_socketio;

pub use raw::Raw;
pub use socketio::SocketIo;
pub use switchboard::Switchboard;
pub use switchboard_socketio::SwitchboardSocketIo;

use crate::scenario::{ProtocolName, Scenario};

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// Text frame (else binary).
    pub text: bool,
    /// Frame payload.
    pub bytes: Vec<u8>,
}

impl Out {
    /// A text message.
    pub fn text(s: impl Into<String>) -> Out {
        Out {
            text: true,
            bytes: s.into().into_bytes(),
        }
    }
}

/// What an incoming message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In<'a> {
    /// Authentication (or the protocol's open handshake) succeeded.
    Opened,
    /// The server refused something (auth, subscribe, publish).
    Refused(String),
    /// Reply to the command with this id.
    Reply(u32),
    /// A published payload (the stamp text).
    Data(&'a [u8]),
    /// Send this back (protocol-level heartbeats, handshake steps).
    Respond(Out),
    /// The server says it will close (`disconnect` push).
    Closing(String),
    /// Nothing to act on.
    Ignore,
}

/// Per-connection facts a protocol may need.
#[derive(Debug, Clone, Default)]
pub struct ConnCtx {
    /// Token for this connection.
    pub token: Option<String>,
    /// Channel joined through the URL (raw protocol).
    pub channel: Option<String>,
}

/// A client protocol.
pub trait Protocol: Send + Sync {
    /// Name for reports.
    fn name(&self) -> String;
    /// Path and query for the upgrade request (`base` is the URL's path).
    fn path(&self, base: &str, ctx: &ConnCtx) -> String;
    /// `Sec-WebSocket-Protocol` to offer.
    fn subprotocol(&self) -> Option<&'static str>;
    /// Messages to send right after the upgrade.
    fn open(&self, ctx: &ConnCtx) -> Vec<Out>;
    /// Whether the connection is usable only after [`In::Opened`].
    fn needs_opened(&self) -> bool;
    /// Join `channel`; `None` if the protocol joined it through the URL. The reply is
    /// [`In::Reply`] with `id`.
    fn subscribe(&self, channel: &str, id: u32) -> Option<Out>;
    /// Publish `stamp` to `channel` (fire and forget: replies, if any, are ignored).
    fn publish(&self, channel: &str, id: u32, stamp: &str) -> Out;
    /// Interpret an incoming message.
    fn incoming<'a>(&self, ctx: &ConnCtx, text: bool, payload: &'a [u8]) -> In<'a>;
    /// Say "typing" in `channel` (protocols without typing: `None`).
    fn typing(&self, _channel: &str, _id: u32) -> Option<Out> {
        None
    }
}

/// The protocol a scenario asks for.
pub fn for_scenario(s: &Scenario) -> Box<dyn Protocol> {
    match s.protocol {
        ProtocolName::Switchboard => {
            Box::new(Switchboard::new(s.format == "json", s.publish_reply))
        }
        ProtocolName::Socketio => Box::new(SocketIo),
        ProtocolName::SwitchboardSocketio => Box::new(SwitchboardSocketIo),
        ProtocolName::Raw => Box::new(Raw),
    }
}
