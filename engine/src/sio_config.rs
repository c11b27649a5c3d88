//! Settings of the Socket.IO endpoint (the `[socketio]` table of the config file).
//!
//! Owns the Engine.IO parameters (path, heartbeat, payload limit), the namespaces a
//! client may join and what each allows (anonymous connections, backend hooks). Does
//! not own calling the hooks (the control plane's) or sessions (`core::eio`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The Socket.IO endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Serve Socket.IO clients on the engine's port.
    pub enabled: bool,
    /// The Engine.IO path (socket.io-client's `path` option), with its slashes.
    pub path: String,
    /// How often the server pings each session (`pingInterval`).
    pub ping_interval_ms: u64,
    /// How long after a ping a silent session is closed (`pingTimeout`).
    pub ping_timeout_ms: u64,
    /// Largest packet over WebSocket, and largest polling body, in bytes
    /// (`maxPayload`); more closes the session (polling: HTTP 413).
    pub max_payload_bytes: usize,
    /// Most binary attachments one packet may announce.
    pub max_attachments: u32,
    /// Most packets in one polling body.
    pub max_polling_packets: usize,
    /// A session that has joined no namespace this long after opening is closed.
    pub connect_timeout_ms: u64,
    /// Emits a connect hook asks for are written this long after the CONNECT reply
    /// (at the wheel's resolution, `engine.tick_ms`) instead of in the same write.
    /// 0 (the default): together. Clients that lose a second message arriving in the
    /// same read as the first while they still await the first (the conformance
    /// suite's helper over ws 8.5) need a delay.
    pub connect_emit_delay_ms: u64,
    /// Connection state recovery (socket.io-client 4.6+): a client whose session ended
    /// gets, when it reconnects within this long, its main-namespace session back —
    /// identity and subscriptions — and every publication it missed; the CONNECT reply
    /// carries a `pid` and each publication event its offset as a last argument.
    /// 0 (the default): off, and events carry no offset.
    pub recovery_ms: u64,
    /// The namespaces clients may join, by name (`/` is the main one); a CONNECT to
    /// any other is refused with `Invalid namespace`.
    pub namespaces: BTreeMap<String, SioNamespace>,
    /// A raw Engine.IO endpoint that echoes every message (the Engine.IO conformance
    /// suite's server); test-only, set by the example that runs that suite.
    #[serde(skip)]
    pub echo_path: Option<String>,
}

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SioNamespace {
    /// A CONNECT without a token is accepted (as an anonymous user); otherwise it is
    /// refused with `connect_error` "unauthorized".
    pub anonymous: bool,
    /// The field of the CONNECT's `auth` object that carries the JWT
    /// (`io(url, { auth: { token } })`); empty: the `auth` object is the
    /// application's alone and the token comes only from the handshake's `token`
    /// query parameter or `Authorization: Bearer` header.
    pub auth_token_field: String,
    /// Backend hook for events outside the vocabulary (`docs/SOCKETIO.md`): they are
    /// POSTed here and the answer becomes the ack and emits. Empty: such events are
    /// answered with an `unknown_event` error.
    pub events_url: String,
    /// Backend hook asked on every CONNECT to this namespace; it may refuse
    /// (`connect_error`), emit on connect, or enrich the session. Empty: none.
    pub connect_url: String,
    /// How long a hook call may take before its ack is an error (and the connect is
    /// refused).
    pub hook_timeout_ms: u64,
    /// Most hook calls in flight for this namespace; more are answered `overloaded`.
    pub hook_concurrency: usize,
    /// Failures in a row that open the hook's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before trying again.
    pub breaker_cooldown_ms: u64,
}

impl Default for SioNamespace {
    fn default() -> Self {
        SioNamespace {
            anonymous: false,
            auth_token_field: "token".into(),
            events_url: String::new(),
            connect_url: String::new(),
            hook_timeout_ms: 5_000,
            hook_concurrency: 64,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
        }
    }
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            path: "/socket.io/".into(),
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload_bytes: 1_000_000,
            max_attachments: 10,
            max_polling_packets: 256,
            connect_timeout_ms: 45_000,
            connect_emit_delay_ms: 0,
            recovery_ms: 0,
            namespaces: BTreeMap::from([("/".to_string(), SioNamespace::default())]),
            echo_path: None,
        }
    }
}

impl SocketIoConfig {
    /// Check values that would make the endpoint misbehave; the error names the key.
    pub fn validate(&self, tick_ms: u64) -> Result<(), Error> {
        if !self.path.starts_with('/') || !self.path.ends_with('/') || self.path.len() < 2 {
            return Err(Error::config(
                "socketio.path",
                "must start and end with '/' (like \"/socket.io/\")",
            ));
        }
        for (key, ms) in [
            ("socketio.ping_interval_ms", self.ping_interval_ms),
            ("socketio.ping_timeout_ms", self.ping_timeout_ms),
            ("socketio.connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if ms < tick_ms {
                return Err(Error::config(
                    key,
                    format!("must be at least engine.tick_ms ({tick_ms} ms)"),
                ));
            }
        }
        if self.recovery_ms != 0 && !(tick_ms..=86_400_000).contains(&self.recovery_ms) {
            return Err(Error::config(
                "socketio.recovery_ms",
                format!(
                    "must be 0 (off) or from engine.tick_ms ({tick_ms} ms) to 86400000 (a day)"
                ),
            ));
        }
        if self.max_payload_bytes < 64 {
            return Err(Error::config(
                "socketio.max_payload_bytes",
                "must be at least 64",
            ));
        }
        if self.max_polling_packets == 0 {
            return Err(Error::config(
                "socketio.max_polling_packets",
                "must be greater than 0",
            ));
        }
        if self.namespaces.len() > 255 {
            return Err(Error::config(
                "socketio.namespaces",
                "at most 255 namespaces",
            ));
        }
        for (name, ns) in &self.namespaces {
            let key = |k: &str| format!("socketio.namespaces.\"{name}\".{k}");
            if !name.starts_with('/')
                || name.contains(',')
                || name.bytes().any(|b| b.is_ascii_control())
            {
                return Err(Error::config(
                    format!("socketio.namespaces.\"{name}\""),
                    "a namespace starts with '/' and has no ',' or control characters",
                ));
            }
            for (k, url) in [
                ("events_url", &ns.events_url),
                ("connect_url", &ns.connect_url),
            ] {
                if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::config(key(k), "must be an http:// or https:// URL"));
                }
            }
            if ns.hook_timeout_ms == 0 {
                return Err(Error::config(
                    key("hook_timeout_ms"),
                    "must be greater than 0",
                ));
            }
            if ns.hook_concurrency == 0 {
                return Err(Error::config(
                    key("hook_concurrency"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }

    /// The index of namespace `name` (at most 64 namespaces).
    pub fn namespace_index(&self, name: &str) -> Option<u8> {
        self.namespaces
            .keys()
            .position(|n| n == name)
            .map(|i| i as u8)
    }

    /// Namespace number `index`.
    pub fn namespace(&self, index: u8) -> Option<(&str, &SioNamespace)> {
        self.namespaces
            .iter()
            .nth(index as usize)
            .map(|(n, ns)| (n.as_str(), ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        let c = SocketIoConfig::default();
        c.validate(100).unwrap();
        assert_eq!(c.namespace_index("/"), Some(0));
        let mut bad = c.clone();
        bad.path = "socket.io".into();
        assert!(bad
            .validate(100)
            .unwrap_err()
            .to_string()
            .contains("socketio.path"));
        let mut bad = c.clone();
        bad.ping_timeout_ms = 10;
        assert!(bad
            .validate(100)
            .unwrap_err()
            .to_string()
            .contains("socketio.ping_timeout_ms"));
        let mut bad = c.clone();
        bad.namespaces.insert(
            "/chat".into(),
            SioNamespace {
                events_url: "ftp://x".into(),
                ..Default::default()
            },
        );
        let e = bad.validate(100).unwrap_err().to_string();
        assert!(
            e.contains("socketio.namespaces.\"/chat\".events_url"),
            "{e}"
        );
        let mut bad = c;
        bad.namespaces
            .insert("chat".into(), SioNamespace::default());
        assert!(bad.validate(100).is_err());
    }
}
