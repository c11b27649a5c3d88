//! Close codes Switchboard sends and accepts.
//!
//! Owns the numeric codes and whether a code received from a peer is legal
//! (RFC 6455 §7.4). Does not own the decision to close; the engine does.

/// A WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down or restarting; reconnect elsewhere or later.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// RFC 6455 framing violation.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// Text message or close reason with invalid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// Policy violation (for example a connection limit reached after upgrade).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// Frame or message larger than the configured limit.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// The server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// A message that is not a valid v1 command envelope.
    pub const MALFORMED_COMMAND: CloseCode = CloseCode(4000);
    /// The token in `connect` was refused (invalid, forged, expired).
    pub const UNAUTHORIZED: CloseCode = CloseCode(4001);
    /// No successful `connect` within the configured auth timeout.
    pub const AUTH_TIMEOUT: CloseCode = CloseCode(4002);
    /// The client did not read fast enough; its outbound queue overflowed.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4003);
    /// Nothing received from the client within ping interval + pong timeout.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4004);
    /// The client kept exceeding its rate limits after being told.
    pub const RATE_LIMITED: CloseCode = CloseCode(4008);
    /// An operator disconnected the connection (admin API); reconnecting is allowed.
    pub const KICKED: CloseCode = CloseCode(4009);
    /// The server is in maintenance: try again after the hint.
    pub const MAINTENANCE: CloseCode = CloseCode(4010);
    /// The user's tokens were revoked: get a new token before reconnecting.
    pub const REVOKED: CloseCode = CloseCode(4011);

    /// Whether a client should reconnect after being closed with this code.
    pub fn reconnect(self) -> bool {
        matches!(
            self.0,
            1001 | 1011 | 4002 | 4003 | 4004 | 4008 | 4009 | 4010
        )
    }

    /// Whether `code` may appear in a close frame received from a peer.
    pub fn is_valid_received(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
