//! Sessions: authentication verdicts, reconnect tokens and resume.
//!
//! Owns what happens between a `connect` and an open connection: the control plane's
//! verdict, resuming with a reconnect token (checked here, no round trip), the
//! `connect` reply, and issuing and renewing reconnect tokens. Does not verify JWTs
//! (control plane) or sign tokens ([`crate::session`]).

use std::borrow::Cow;
use std::sync::Arc;

use crossbeam_channel::TrySendError;

use switchboard_protocol::envelope::{self, ConnectResult};
use switchboard_protocol::{CloseCode, ErrorCode, Position};

use super::conn::{ConnKey, ConnState};
use super::ShardCore;
use crate::auth::{ControlRequest, Identity};
use crate::mesh::{PresenceKind, ReplyKind};
use crate::metrics::{CloseKind, CommandKind, ShardMetrics};

impl ShardCore {
    /// `connect`: with a reconnect token, resumed here; otherwise the JWT (from the
    /// command or the upgrade's `Authorization: Bearer`) goes to the control plane,
    /// whose verdict comes back as [`ShardMsg::AuthDone`](crate::mesh::ShardMsg).
    pub(super) fn connect(
        &mut self,
        slot: u32,
        id: u32,
        token: Option<Cow<'_, str>>,
        reconnect: Option<Cow<'_, str>>,
        device: Option<Cow<'_, str>>,
        positions: &[(String, Position)],
    ) {
        let conn = &mut self.conns[slot as usize];
        match conn.state {
            ConnState::AwaitingConnect => {}
            ConnState::Authenticating { .. } => {
                return self.reply_err(
                    slot,
                    id,
                    ErrorCode::AlreadyConnected,
                    "connect already in progress",
                )
            }
            _ => return self.reply_err(slot, id, ErrorCode::AlreadyConnected, "already connected"),
        }
        if let Some(d) = device {
            conn.ext_mut().device = Some(d.as_ref().into());
        }
        if let Some(rt) = reconnect {
            return self.resume(slot, id, &rt, positions);
        }
        let token = match token {
            Some(t) => t.into_owned(),
            None => match conn.ext.as_mut().and_then(|e| e.bearer.take()) {
                Some(t) => t.into(),
                None => {
                    return self.reply_err(slot, id, ErrorCode::BadRequest, "connect needs a token")
                }
            },
        };
        if let Some(v) = self.mesh.verifier().cloned() {
            let key = self.key(slot);
            if let Some(verdict) = v.verify_inline(&token, self.id, key) {
                self.conns[slot as usize].state = ConnState::Authenticating { req_id: id };
                return self.auth_done(key, id, verdict.map(Arc::new));
            }
        }
        let request = ControlRequest::Authenticate {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            token,
        };
        match self.control.try_send(request) {
            Ok(()) => self.conns[slot as usize].state = ConnState::Authenticating { req_id: id },
            Err(TrySendError::Full(_)) => self.reply_err(
                slot,
                id,
                ErrorCode::Overloaded,
                "authentication is busy, retry",
            ),
            Err(TrySendError::Disconnected(_)) => {
                self.reply_err(slot, id, ErrorCode::Internal, "authentication unavailable")
            }
        }
    }

    pub(super) fn auth_done(
        &mut self,
        key: ConnKey,
        req_id: u32,
        result: Result<Arc<Identity>, crate::auth::AuthFailure>,
    ) {
        self.answering = CommandKind::Connect;
        let Some(conn) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if conn.gen != key.gen || conn.state != (ConnState::Authenticating { req_id }) {
            return;
        }
        if conn.eio.is_some() {
            return self.sio_auth_done(key.slot, result);
        }
        match result {
            Ok(identity) => self.opened(key.slot, req_id, identity, &[], false),
            Err(failure) => {
                self.reply_err(key.slot, req_id, failure.code, &failure.message);
                if failure.code == ErrorCode::Overloaded {
                    self.conns[key.slot as usize].state = ConnState::AwaitingConnect;
                } else {
                    let reason = if failure.code == ErrorCode::TokenExpired {
                        "token expired"
                    } else {
                        "unauthorized"
                    };
                    self.begin_close(
                        key.slot,
                        CloseCode::UNAUTHORIZED,
                        reason,
                        CloseKind::Unauthorized,
                    );
                }
            }
        }
        // Commands sent right behind `connect` waited for this verdict: they run now,
        // in order (refused with 102 if it was a refusal).
        self.resume_input(key.slot);
    }

    /// `connect` with a reconnect token: checked here (no control-plane round trip);
    /// the session's subscriptions are restored, each recovering from the position
    /// the client names in `positions`. A refused token leaves the connection waiting
    /// for another `connect`.
    pub(super) fn resume(
        &mut self,
        slot: u32,
        id: u32,
        token: &str,
        positions: &[(String, Position)],
    ) {
        let Some(sessions) = &self.sessions else {
            return self.reply_err(
                slot,
                id,
                ErrorCode::BadRequest,
                "reconnect tokens are off; connect with a token",
            );
        };
        if positions.len() > self.cfg.max_subscriptions_per_connection {
            return self.reply_err(
                slot,
                id,
                ErrorCode::LimitExceeded,
                "more positions than max_subscriptions_per_connection",
            );
        }
        let resumed = match sessions.check(token, self.clock.unix_ms) {
            Ok(r) => r,
            Err(f) => {
                ShardMetrics::add(&self.metrics.resumes_refused, 1);
                return self.reply_err(slot, id, f.code, &f.message);
            }
        };
        let revoked_at = self.users.revoked.get(&*resumed.identity.user).copied();
        let ttl = self.cfg.reconnect_ttl_ms;
        if revoked_at.is_some_and(|at| resumed.expires_ms <= at.saturating_add(ttl)) {
            ShardMetrics::add(&self.metrics.resumes_refused, 1);
            return self.reply_err(
                slot,
                id,
                ErrorCode::Unauthorized,
                "reconnect token revoked; connect with a new token",
            );
        }
        ShardMetrics::add(&self.metrics.resumes, 1);
        let conn = &mut self.conns[slot as usize];
        if conn.device().is_none() {
            if let Some(d) = resumed.device {
                conn.ext_mut().device = Some(d.into());
            }
        }
        // The token's channels (as of its last renewal) and the ones the client names.
        let mut channels = resumed.channels;
        for (c, _) in positions {
            if !channels.contains(c) {
                channels.push(c.clone());
            }
        }
        self.opened(slot, id, resumed.identity, &channels, true);
        if let Some(previous) = resumed.origin {
            self.tell_previous_close(slot, previous);
        }
        for channel in &channels {
            let since = positions
                .iter()
                .find(|(c, _)| c == channel)
                .map(|(_, p)| *p);
            self.subscribe(slot, ReplyKind::Resumed, channel, since);
        }
    }

    /// The connection is authenticated: answer `connect` (with a reconnect token for
    /// `channels`), start its heartbeat, and, for a device (a `connect` that named its
    /// device id), subscribe its inbox with the backlog after the device's cursor.
    /// Connections without a device id pay nothing for inboxes.
    pub(super) fn opened(
        &mut self,
        slot: u32,
        req_id: u32,
        identity: Arc<Identity>,
        channels: &[String],
        resumed: bool,
    ) {
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Open;
        conn.identity = Some(identity.clone());
        ShardMetrics::add(&self.metrics.authenticated, 1);
        let peer = conn.peer;
        let device = conn.device().map(str::to_string);
        let client = self.client_id(slot);
        tracing::debug!(
            client = %client,
            user = &*identity.user,
            peer = %peer,
            resumed,
            "connection opened"
        );
        let token = self.issue_token(slot, channels.iter().map(String::as_str));
        let reply = ConnectResult {
            client: client.to_string(),
            user: identity.user.to_string(),
            shard: self.id,
            ping_interval_ms: self.cfg.ping_interval_ms,
            expires_at: identity.expires_at,
            device,
            reconnect_expires_at: token.as_ref().map(|t| t.1),
            reconnect_token: token.map(|t| t.0),
            resumed,
        };
        self.metrics.answered(CommandKind::Connect, None);
        self.send_result(slot, req_id, &reply);
        let at = self.tick as u64 + self.ticks.ping as u64;
        self.schedule(slot, at);
        // Indexed even with the personal channel off: notifications and calls reach
        // users through it.
        let conns = self.users.conns.entry(identity.user.clone()).or_default();
        let first = conns.slots().is_empty();
        conns.add(slot);
        if first {
            self.user_interest(&identity.user, true);
        }
        let ns = &self.cfg.user_presence_namespace;
        if !ns.is_empty() {
            let channel = format!("{ns}:{}", identity.user);
            if envelope::valid_channel(&channel) {
                let channel: Arc<str> = channel.into();
                self.conns[slot as usize].ext_mut().presence_self = Some(channel.clone());
                let status = self.presence.online.clone();
                self.report_presence(slot, &channel, PresenceKind::Join { status });
            }
        }
        if self.conns[slot as usize].device().is_some() {
            if let Some(inbox) = self.inbox_of(&identity.user) {
                self.subscribe(slot, ReplyKind::Inbox, &inbox, None);
            }
        }
    }

    /// A reconnect token for the connection's identity, device and `channels`.
    pub(super) fn issue_token<'c>(
        &mut self,
        slot: u32,
        channels: impl Iterator<Item = &'c str>,
    ) -> Option<(String, u64)> {
        let origin = self.client_id(slot);
        let sessions = self.sessions.as_ref()?;
        let conn = &mut self.conns[slot as usize];
        let identity = conn.identity.as_ref()?;
        conn.token_at = self.tick;
        let expires = self.clock.unix_ms + self.cfg.reconnect_ttl_ms;
        Some(sessions.issue(identity, conn.device(), channels, expires, Some(origin)))
    }

    /// Push a fresh reconnect token naming the connection's current subscriptions
    /// (once half of the last one's life has passed: the only unrequested push, every
    /// `reconnect_ttl_ms / 2` at most).
    pub(super) fn push_token(&mut self, slot: u32) {
        if self.sessions.is_none() {
            return;
        }
        let subs: Vec<Arc<str>> = self.conns[slot as usize]
            .subs
            .iter()
            .filter(|c| !self.automatic(c))
            .cloned()
            .collect();
        let Some((token, expires_at)) = self.issue_token(slot, subs.iter().map(|c| &**c)) else {
            return;
        };
        #[derive(serde::Serialize)]
        struct TokenPush<'a> {
            push: &'static str,
            token: &'a str,
            expires_at: u64,
        }

        let push = TokenPush {
            push: "reconnect",
            token: &token,
            expires_at,
        };
        self.send_push(slot, &push);
    }
}
