//! What shards ask the control plane about tokens, and what they get back.
//!
//! Owns the request and answer types and the channel-permission check applied on the
//! shard ([`Identity::may_use`]). Does not verify tokens: that runs on control-plane
//! threads so a burst of connects never stalls a shard.

use std::sync::Arc;

use switchboard_protocol::ErrorCode;

use crate::core::ConnKey;

/// A request from a shard to the control plane.
#[derive(Debug)]
pub enum ControlRequest {
    /// Verify `token` and answer `ShardMsg::AuthDone` to `shard`.
    Authenticate {
        /// Shard to answer.
        shard: u16,
        /// Connection that sent `connect`.
        conn: ConnKey,
        /// Id of the `connect` command.
        req_id: u32,
        /// The JWT.
        token: String,
    },
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id (the token's `sub`).
    pub user: Arc<str>,
    /// Channel patterns the connection may use (`*` matches any run of characters);
    /// `None` means every channel.
    pub channels: Option<Vec<String>>,
    /// Token expiry, Unix seconds.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// Whether the connection may subscribe and publish to `channel`.
    pub fn may_use(&self, channel: &str) -> bool {
        match &self.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, channel)),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// `Unauthorized`, `TokenExpired` or `Overloaded`.
    pub code: ErrorCode,
    /// Human-readable detail, sent to the client.
    pub message: String,
}

/// Match `text` against `pattern`, where `*` matches any run of characters (including
/// none) and every other character matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("room:*", "room:1"));
        assert!(glob_match("room:*", "room:"));
        assert!(!glob_match("room:*", "rooms:1"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("chat:*:public", "chat:team:public"));
        assert!(!glob_match("chat:*:public", "chat:team:private"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
