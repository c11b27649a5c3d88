//! Plain text frames, for simple echo or broadcast servers (such as the Bun and `ws`
//! comparison servers in `loadtest/servers/`): the channel is joined with `?room=` in
//! the URL, a publication is the text frame itself, the server relays it to every
//! connection of the room.

use super::{ConnCtx, In, Out, Protocol};

/// Plain text frames.
#[derive(Debug, Clone, Copy)]
pub struct Raw;

impl Protocol for Raw {
    fn name(&self) -> String {
        "raw".into()
    }

    fn path(&self, base: &str, ctx: &ConnCtx) -> String {
        match &ctx.channel {
            Some(room) => format!("{base}?room={room}"),
            None => base.to_string(),
        }
    }

    fn subprotocol(&self) -> Option<&'static str> {
        None
    }

    fn open(&self, _ctx: &ConnCtx) -> Vec<Out> {
        Vec::new()
    }

    fn needs_opened(&self) -> bool {
        false
    }

    fn subscribe(&self, _channel: &str, _id: u32) -> Option<Out> {
        None
    }

    fn publish(&self, _channel: &str, _id: u32, stamp: &str) -> Out {
        Out::text(stamp)
    }

    fn incoming<'a>(&self, _ctx: &ConnCtx, _text: bool, payload: &'a [u8]) -> In<'a> {
        In::Data(payload)
    }
}
