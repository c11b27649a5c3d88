//! The one error type of this crate.
//!
//! Every variant maps to what the peer is told: a WebSocket close code for frame and
//! message errors ([`Error::close_code`]), an HTTP status for handshake errors
//! ([`Error::http_status`]).

/// A wire-format violation, each variant naming its cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455 framing rules (unmasked client frame, reserved bits,
    /// unknown opcode, fragmented or oversized control frame, bad continuation).
    /// Close code 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not valid UTF-8. Close code 1007.
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// A frame or a reassembled message exceeds the configured limit. Close code 1009.
    #[error("message too big: limit is {limit} bytes")]
    TooBig {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// A message decoded as a frame but not as a v1 envelope. Close code 4000.
    #[error("malformed envelope: {0}")]
    Envelope(String),
    /// The HTTP upgrade request was refused; `status` is the HTTP status to answer.
    #[error("handshake refused ({status}): {reason}")]
    Handshake {
        /// HTTP status code to answer with (400, 426 or 431).
        status: u16,
        /// Short human-readable reason, sent as the response body.
        reason: &'static str,
    },
}

impl Error {
    /// The close code to send for this error on an open WebSocket.
    pub fn close_code(&self) -> u16 {
        use crate::close::CloseCode;
        match self {
            Error::Protocol(_) | Error::Handshake { .. } => CloseCode::PROTOCOL_ERROR.0,
            Error::InvalidUtf8 => CloseCode::INVALID_PAYLOAD.0,
            Error::TooBig { .. } => CloseCode::TOO_BIG.0,
            Error::Envelope(_) => CloseCode::MALFORMED_COMMAND.0,
        }
    }

    /// The close reason (short, fits a control frame) for this error.
    pub fn close_reason(&self) -> &str {
        match self {
            Error::Protocol(why) => why,
            Error::InvalidUtf8 => "invalid utf-8",
            Error::TooBig { .. } => "message too big",
            Error::Envelope(_) => "malformed command",
            Error::Handshake { reason, .. } => reason,
        }
    }

    /// The HTTP status for a handshake error, 400 for anything else.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Handshake { status, .. } => *status,
            _ => 400,
        }
    }
}
