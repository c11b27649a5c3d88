//! What shards ask the control plane about tokens, and what they get back.
//!
//! Owns the request and answer types, the channel-permission check applied on the
//! shard ([`Identity::may_use`]) and the seam for verifying cheap tokens on the shard
//! itself ([`InlineVerifier`]). Does not verify tokens: the control plane does — an
//! HS256 token (an HMAC, about a microsecond) on the shard that got it, through
//! [`InlineVerifier`]; a public-key token (RS256/ES256, tens of microseconds) on the
//! control plane's threads, so a burst of those never stalls a shard.

use std::sync::Arc;

use switchboard_protocol::ErrorCode;

use crate::core::ConnKey;

/// Verifies a token on the shard when that costs less than handing it to another
/// thread and back (two wake-ups per connect): attached once by the control plane
/// ([`crate::Engine::attach_verifier`]).
pub trait InlineVerifier: Send + Sync + std::fmt::Debug {
    /// The verdict on `token` sent by connection `conn` of shard `shard`, or `None`
    /// when it is to go to the control plane's threads (a public-key algorithm).
    fn verify_inline(
        &self,
        token: &str,
        shard: u16,
        conn: ConnKey,
    ) -> Option<Result<Identity, AuthFailure>>;
}

/// A request from a shard to the control plane.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
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
    /// Store a scheduled message and answer [`crate::ShardMsg::Reply`] to `shard`
    /// with its id.
    Schedule {
        /// Shard to answer.
        shard: u16,
        /// Connection that sent `schedule`.
        conn: ConnKey,
        /// Id of the command.
        req_id: u32,
        /// What to publish, where and when.
        job: ScheduleJob,
    },
    /// Cancel a scheduled message of `owner` and answer [`crate::ShardMsg::Reply`].
    Unschedule {
        /// Shard to answer.
        shard: u16,
        /// Connection that sent `unschedule`.
        conn: ConnKey,
        /// Id of the command.
        req_id: u32,
        /// The scheduled message's id.
        id: u64,
        /// User asking: only the user who scheduled it may cancel it.
        owner: Arc<str>,
    },
    /// A command for a control-plane worker (notifications, calls): it answers
    /// [`crate::ShardMsg::Reply`] to `shard`.
    Command {
        /// Shard to answer.
        shard: u16,
        /// Connection that sent it.
        conn: ConnKey,
        /// Id of the command.
        req_id: u32,
        /// Who sent it.
        caller: crate::control::Caller,
        /// What to do.
        cmd: crate::control::ControlCommand,
    },
    /// Read a history page from the store and answer whoever asked
    /// ([`crate::history::HistoryRead`]).
    History(Box<crate::history::HistoryRead>),
    /// Check an edit's or deletion's original in the store (memory no longer keeps
    /// it), then send the revision back to the channel's owner, checked, or refuse it.
    CheckRevision(Box<crate::mesh::SequenceReq>),
    /// Call a Socket.IO backend hook and answer [`crate::ShardMsg::HookDone`].
    Hook(Box<crate::hooks::HookCall>),
    /// A connection that took part in a call has gone (`graceful`: it closed cleanly;
    /// otherwise it dropped and may come back within the call's grace period).
    Gone {
        /// The connection.
        caller: crate::control::Caller,
        /// Closed cleanly.
        graceful: bool,
    },
}

/// A message to publish later.
#[derive(Debug, Clone)]
pub struct ScheduleJob {
    /// Target channel (`inbox:<user>` for a direct message).
    pub channel: String,
    /// Sender of a direct message.
    pub from: Option<Arc<str>>,
    /// Format of `data` and `meta`.
    pub format: switchboard_protocol::Format,
    /// The payload.
    pub data: bytes::Bytes,
    /// Opaque metadata.
    pub meta: Option<bytes::Bytes>,
    /// When to publish, Unix milliseconds.
    pub due_ms: u64,
    /// Who scheduled it (a user id, or `api` for the server API).
    pub owner: Arc<str>,
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
    /// User-id patterns this connection may send direct messages to (the `send_to`
    /// claim); `None` means none.
    pub send_to: Option<Vec<String>>,
    /// Whether the connection may schedule messages (the `schedule` claim).
    pub schedule: bool,
    /// The token's other claims that access rules may name (strings, or lists of
    /// strings; numbers and booleans as text).
    pub claims: Vec<(Box<str>, Vec<Box<str>>)>,
}

impl Identity {
    /// Whether the connection may subscribe and publish to `channel`.
    pub fn may_use(&self, channel: &str) -> bool {
        match &self.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, channel)),
        }
    }

    /// The values of claim `name` (`sub` is the user id); none if absent.
    pub fn claim_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let sub = (name == "sub").then_some(&*self.user);
        let listed = self
            .claims
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &v[..])
            .unwrap_or(&[]);
        sub.into_iter().chain(listed.iter().map(|v| &**v))
    }

    /// Whether the connection may send direct messages to `user`.
    pub fn may_send(&self, user: &str) -> bool {
        self.send_to
            .as_ref()
            .is_some_and(|patterns| patterns.iter().any(|p| glob_match(p, user)))
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
