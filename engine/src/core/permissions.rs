//! Who may do what on which channel.
//!
//! Owns the rules for inboxes (one's own, read only), personal channels and the
//! namespaces' access rules or the token's `channels` claim, and the inbox and
//! personal channel names of a user. Does not own the rule language
//! ([`crate::access`]).

use switchboard_protocol::envelope;
use switchboard_protocol::ErrorCode;

use super::ShardCore;
use crate::access::{Action, Verdict};
use crate::auth::Identity;

impl ShardCore {
    /// The inbox channel of `user`, when direct messages are on.
    pub(super) fn inbox_of(&self, user: &str) -> Option<String> {
        let ns = self.cfg.inbox.as_deref()?;
        let channel = format!("{ns}:{user}");
        envelope::valid_channel(&channel).then_some(channel)
    }

    /// The user whose inbox `channel` is, if it is one.
    pub(super) fn inbox_user<'c>(&self, channel: &'c str) -> Option<&'c str> {
        let ns = self.cfg.inbox.as_deref()?;
        channel.strip_prefix(ns)?.strip_prefix(':')
    }

    /// The user whose personal channel `channel` is, if it is one.
    pub(super) fn personal_user<'c>(&self, channel: &'c str) -> Option<&'c str> {
        let ns = &self.cfg.personal_namespace;
        if ns.is_empty() {
            return None;
        }
        channel.strip_prefix(ns.as_str())?.strip_prefix(':')
    }

    /// Whether `channel` is one the server joins on its own (the connection's inbox
    /// or personal channel): they do not count against the subscription limit and are
    /// not named in reconnect tokens.
    pub(super) fn automatic(&self, channel: &str) -> bool {
        self.inbox_user(channel).is_some() || self.personal_user(channel).is_some()
    }

    /// Whether the connection may do `action` on `channel`. Inboxes: only one's own,
    /// read only (`send` writes them). Personal channels: one's own may be read;
    /// writing needs the namespace's publish rules. Elsewhere the namespace's rules for
    /// the action decide, and where it has none, the token's `channels` claim.
    pub(super) fn check_channel(
        &self,
        slot: u32,
        channel: &str,
        action: Action,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if !envelope::valid_channel(channel) {
            return Err((ErrorCode::BadRequest, "invalid channel name"));
        }
        let Some(identity) = self.conns[slot as usize].identity.as_deref() else {
            return Err((ErrorCode::NotConnected, "send connect first"));
        };
        let denied = |why| Err((ErrorCode::PermissionDenied, why));
        if let Some(owner) = self.inbox_user(channel) {
            return match (action, &*identity.user == owner) {
                (Action::Publish, _) => denied("write to an inbox with send"),
                (_, true) => Ok(()),
                (_, false) => denied("not your inbox"),
            };
        }
        let verdict = self.access.check(identity, channel, action);
        if let Some(owner) = self.personal_user(channel) {
            return match (action, &*identity.user == owner, verdict) {
                (Action::Publish, _, Verdict::Allowed) => Ok(()),
                (Action::Publish, ..) => {
                    denied("not allowed by the personal namespace's publish rules")
                }
                (Action::Subscribe, true, _) => Err((
                    ErrorCode::AlreadySubscribed,
                    "every connection is on its personal channel",
                )),
                (_, true, _) => Ok(()),
                (_, false, _) => denied("not your personal channel"),
            };
        }
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied => denied(match action {
                Action::Subscribe => "not allowed by the namespace's subscribe rules",
                Action::Publish => "not allowed by the namespace's publish rules",
                Action::History => "not allowed by the namespace's history rules",
                Action::Presence => "not allowed by the namespace's presence rules",
                Action::Moderate => "not allowed by the namespace's moderate rules",
            }),
            Verdict::NoRules if identity.may_use(channel) => Ok(()),
            Verdict::NoRules => denied("channel not allowed by token"),
        }
    }

    /// The inbox channel a connection of `identity` may send to for `user`.
    pub(super) fn dm_target(
        &self,
        identity: &Identity,
        user: &str,
    ) -> Result<String, (ErrorCode, &'static str)> {
        if self.cfg.inbox.is_none() {
            return Err((ErrorCode::BadRequest, "direct messages are off"));
        }
        if !identity.may_send(user) {
            return Err((
                ErrorCode::PermissionDenied,
                "sending to this user is not allowed by the token",
            ));
        }
        self.inbox_of(user)
            .ok_or((ErrorCode::BadRequest, "invalid user id"))
    }
}
