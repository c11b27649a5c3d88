//! Switchboard wire formats: the WebSocket upgrade, RFC 6455 framing, the v1 envelopes.
//!
//! This crate performs no I/O, spawns nothing and reads no clock. The engine owns
//! sockets and timers; this crate owns bytes: it turns buffered bytes into frames,
//! messages and commands, and commands' answers into complete frames ready to write.
//!
//! # Layout
//! - [`handshake`]: parse an HTTP/1.1 upgrade request, answer 101 or an HTTP error.
//! - [`frame`]: two-step frame decoding ([`frame::check`] then [`frame::take`]) and
//!   encoding of server frames, including frames built in place around an envelope.
//! - [`mask`]: word-at-a-time (un)masking.
//! - [`utf8`]: UTF-8 validation that carries state across fragments.
//! - [`message`]: reassembly of fragmented messages with a size limit, close-frame rules.
//! - [`envelope`]: the Switchboard v1 commands, replies and pushes, MessagePack and JSON.
//! - [`history`]: a history page's bounds and the cursor that continues it.
//! - [`close`]: close codes and reasons used on the wire.
//! - [`engineio`]: Engine.IO v4 packets (WebSocket frames and polling payloads), the
//!   transport under Socket.IO v5.
//! - [`socketio`]: Socket.IO v5 packets (namespaces, events, acks, attachments);
//!   [`sio_events`]: the event vocabulary, mapped onto the native commands.
//! - [`eio_http`]: the HTTP requests of Engine.IO's endpoint (polling, the upgrade's
//!   query) and their answers.
//!
//! What it does not do: permessage-deflate, client-side handshakes.

pub mod close;
pub mod eio_http;
pub mod engineio;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod mask;
pub mod message;
pub mod sio_events;
pub mod socketio;
pub mod utf8;

pub use close::CloseCode;
pub use envelope::{
    Command, ErrorCode, Format, Payload, Position, Request, Revised, Revision, EVERY_FORMAT,
    FORMATS,
};
pub use error::Error;
pub use frame::{FrameHeader, OpCode, Role};
pub use handshake::{HandshakeLimits, Upgrade};
pub use message::{Message, MessageAssembler};
