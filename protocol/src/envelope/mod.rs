//! The Switchboard v1 envelopes: client commands, replies, pushes; MessagePack and JSON.
//!
//! Owns the envelope shapes (documented in `docs/PROTOCOL.md`), decoding commands and
//! encoding replies and pushes straight into complete WebSocket frames. Does not own
//! what a command does (the engine) or token checks (the control plane).
//!
//! Every envelope is a map with string keys. The application payload (`data`) is opaque:
//! decoding keeps the raw bytes of that one value ([`Payload`]) and encoding a
//! publication splices them back unchanged, so user data is never re-encoded on the
//! fan-out path. Only a subscriber speaking the *other* format gets a transcoded copy,
//! made once per publication. MessagePack maps are walked with `rmp` (no allocation);
//! JSON maps are read by serde_json into borrowed `RawValue`s.
//!
//! # Layout
//! - [`types`]-level items (re-exported here): formats, payloads, positions, commands,
//!   error codes, name rules. Imports nothing of the other files.
//! - `decode`: a client's command envelope into a [`Request`] (server side).
//! - `encode`: replies, pushes and publications as complete frames (server side).
//! - [`sio`]: replies and pushes as Socket.IO acks and events ([`Format::SocketIo`]).
//! - `client`: decoding server messages and encoding commands (tests, loadtest, SDKs).
//! - `validate`: what payload may be accepted, so every format can read it later;
//!   `attachments`: the shape of `meta.attachments`.
//!
//! Paths stay `envelope::X` for every public item. The subprotocol names live here;
//! `handshake` imports them (one direction only).

mod attachments;
mod client;
mod decode;
mod encode;
pub mod sio;
#[cfg(test)]
mod tests;
pub mod types;
mod validate;

pub use attachments::{check as check_attachments, MAX_ATTACHMENTS};
pub use client::{decode_server_message, encode_request, ServerMessage};
pub use decode::{decode_request, msgpack_value_len};
pub use encode::*;
pub use types::*;
pub use validate::{PayloadFault, MAX_PAYLOAD_DEPTH};
