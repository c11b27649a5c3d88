//! Data requests on the streams a shard keeps: a user's publications redacted in
//! memory, a stream forgotten entirely.
//!
//! Owns what an erasure does to memory. Does not own the store's copy (the control
//! plane redacts it) or revoking the user (done first, so nothing new arrives).

use bytes::Bytes;
use switchboard_protocol::Format;

use super::{budget, Streams};

/// A redacted publication's metadata, in each format.
fn redacted_meta(format: Format) -> Bytes {
    match format {
        // {"redacted": true}
        Format::MsgPack => Bytes::from_static(b"\x81\xa8redacted\xc3"),
        Format::Json | Format::SocketIo => Bytes::from_static(b"{\"redacted\":true}"),
    }
}

/// `null`, in each format.
fn null(format: Format) -> Bytes {
    match format {
        Format::MsgPack => Bytes::from_static(b"\xc0"),
        Format::Json | Format::SocketIo => Bytes::from_static(b"null"),
    }
}

impl Streams {
    /// Redact every kept publication `user` authored or sent: its data becomes `null`,
    /// its meta `{"redacted": true}`, its sender and author are dropped. How many.
    pub fn redact(&mut self, user: &str) -> usize {
        let mut n = 0;
        let kept = &mut self.budget;
        for (_, s) in self.map.iter_mut() {
            for e in s.history.iter_mut() {
                let theirs = e.author.as_deref() == Some(user) || e.from.as_deref() == Some(user);
                if !theirs {
                    continue;
                }
                let before = budget::cost(e);
                e.data = null(e.format);
                e.meta = Some(redacted_meta(e.format));
                e.author = None;
                e.from = None;
                let after = budget::cost(e);
                s.bytes = s.bytes - before + after;
                kept.resized(before, after);
                n += 1;
            }
        }
        n
    }

    /// Forget `channel`'s stream and its kept publications entirely (an erased user's
    /// inbox): its next use starts a new epoch.
    pub fn forget(&mut self, channel: &str) {
        self.dormant.remove(channel);
        if let Some(gone) = self.map.swap_remove(channel) {
            for e in &gone.history {
                self.budget.dropped(e);
            }
        }
    }
}
