//! The application payload every measured message carries.
//!
//! Owns its text form: `"<publisher>.<seq>.<intended_send_ns>.<actual_send_ns>."` padded
//! with `x` to the scenario's payload size. Text, so the same payload travels as a MessagePack string, a
//! JSON string, a raw text frame or a Socket.IO event argument. `intended_send_ns` is
//! when the schedule wanted the message sent (not when it was), which is what corrects
//! coordinated omission. `actual_send_ns` is when it was really written, so the report
//! can also show the server's own share (service latency) and the generator's lateness.

/// What a received payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Global index of the publishing connection.
    pub publisher: u32,
    /// Sequence number of the message from that publisher (from 0).
    pub seq: u64,
    /// CLOCK_MONOTONIC time the schedule intended it to be sent.
    pub intended_ns: u64,
    /// CLOCK_MONOTONIC time it was handed to the socket.
    pub actual_ns: u64,
}

impl Stamp {
    /// The payload text, padded to at least `size` bytes.
    pub fn encode(&self, size: usize) -> String {
        let mut s = format!(
            "{}.{}.{}.{}.",
            self.publisher, self.seq, self.intended_ns, self.actual_ns
        );
        if s.len() < size {
            s.extend(std::iter::repeat_n('x', size - s.len()));
        }
        s
    }

    /// Parse a payload; `None` if it is not one of ours.
    pub fn parse(text: &[u8]) -> Option<Stamp> {
        let mut parts = text.splitn(5, |&b| b == b'.');
        let mut num = || -> Option<u64> { std::str::from_utf8(parts.next()?).ok()?.parse().ok() };
        let publisher = u32::try_from(num()?).ok()?;
        let seq = num()?;
        let intended_ns = num()?;
        let actual_ns = num()?;
        Some(Stamp {
            publisher,
            seq,
            intended_ns,
            actual_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = Stamp {
            publisher: 7,
            seq: 123,
            intended_ns: 9_876_543_210,
            actual_ns: 9_876_600_000,
        };
        let text = s.encode(64);
        assert_eq!(text.len(), 64);
        assert_eq!(Stamp::parse(text.as_bytes()), Some(s));
        assert!(s.encode(4).len() > 4, "never truncated");
        assert_eq!(Stamp::parse(b"hello"), None);
        assert_eq!(Stamp::parse(b"1.2"), None);
        assert_eq!(Stamp::parse(b"1.2.3.xx"), None);
    }
}
