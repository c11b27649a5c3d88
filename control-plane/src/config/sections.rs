//! The configuration's sections beyond the engine's and the store's: notifications,
//! calls, inbox, namespaces, auth, admin (API keys), logs — each with its defaults.
//!
//! Owns these types and their defaults. Does not own loading or validating the file
//! (`super`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use switchboard_engine::access::{NamespaceRules, RuleConfig};
use switchboard_engine::Durability;

/// `[notifications]`: notifications created by the server API, stored per user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Topics any client may subscribe itself to (`*` matches any run of
    /// characters); a token's `topics` claim adds more. The server API may subscribe
    /// users to any topic.
    pub public_topics: Vec<String>,
    /// Notifications kept per user (older ones are deleted first).
    pub max_per_user: u32,
    /// Notifications older than this are deleted (default 30 days).
    pub ttl_ms: u64,
    /// Most recipients of one notification (a topic with more subscribers is
    /// refused: use a channel for broadcasts).
    pub max_recipients: u32,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            public_topics: Vec::new(),
            max_per_user: 1000,
            ttl_ms: 30 * 24 * 3600 * 1000,
            max_recipients: 100_000,
        }
    }
}

/// `[calls]`: the call state machine's timers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// A call nobody answers within this becomes `missed` (default 30 s).
    pub ring_timeout_ms: u64,
    /// A participant whose connection dropped (no close) may come back within this
    /// before the call ends for them (default 15 s).
    pub grace_ms: u64,
    /// Most calls one user may be ringing or in at once.
    pub max_per_user: u32,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_ms: 30_000,
            grace_ms: 15_000,
            max_per_user: 8,
        }
    }
}

/// `[inbox]`: every user's durable inbox, the channel `NAMESPACE:<user id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Direct messages on: `send`, inbox backlogs on connect, per-device cursors.
    pub enabled: bool,
    /// The inbox namespace (not configurable again in `[namespaces]`).
    pub namespace: String,
    /// `sync` (default: a `send` is acknowledged once stored) or `async`.
    pub durability: Durability,
    /// Messages kept per inbox (the backlog a device gets).
    pub history_size: usize,
    /// Messages older than this expire (default 7 days).
    pub history_ttl_ms: u64,
    /// How long the store keeps inbox messages (default: `history_ttl_ms`, the
    /// backlog a device can still get).
    pub retain_ms: Option<u64>,
    /// At most this many messages per inbox in the store, the newest (default: no
    /// count limit).
    pub retain_count: Option<u64>,
    /// Most bytes one inbox holds (payloads and bookkeeping, in its owner shard's
    /// memory); a `send` beyond it is refused with 110 until older messages expire or
    /// are pushed out by `history_size`. 0 = no limit (default 16 MiB).
    pub max_bytes: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            namespace: "inbox".into(),
            durability: Durability::Sync,
            history_size: 1000,
            history_ttl_ms: 7 * 24 * 3600 * 1000,
            retain_ms: None,
            retain_count: None,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[namespaces.NAME]`: how the channels `NAME:*` behave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `none` (memory only), `async` (acknowledged when sequenced, stored within the
    /// writer's backlog bound) or `sync` (acknowledged and delivered once stored).
    pub durability: Durability,
    /// Publications kept per channel for history and recovery (default:
    /// `engine.history_size`).
    pub history_size: Option<usize>,
    /// Kept publications older than this leave memory (default:
    /// `engine.history_ttl_ms`); history older than that is read from the store.
    pub history_ttl_ms: Option<u64>,
    /// Stored publications older than this are deleted (stored namespaces only;
    /// absent: no age limit). With neither this nor `retain_count`, the store keeps a
    /// channel's publications forever.
    pub retain_ms: Option<u64>,
    /// At most this many publications per channel stay in the store, the newest
    /// (stored namespaces only; absent: no count limit).
    pub retain_count: Option<u64>,
    /// Who may subscribe: rules of which one must hold (absent: the token's `channels`
    /// claim decides). A rule is a table: `channel` (a template such as
    /// `"case:{team}:*"`) and claims with the value(s) they must have
    /// (`role = ["provider", "admin"]`).
    pub subscribe: Option<Vec<BTreeMap<String, OneOrMany>>>,
    /// Who may publish, as `subscribe`.
    pub publish: Option<Vec<BTreeMap<String, OneOrMany>>>,
    /// Who may read history (absent: the `subscribe` rules).
    pub history: Option<Vec<BTreeMap<String, OneOrMany>>>,
    /// Who may see who is present (absent: the `subscribe` rules).
    pub presence_rules: Option<Vec<BTreeMap<String, OneOrMany>>>,
    /// Clients may edit and delete publications (`edit`, `delete`): their own, and
    /// others' where a `moderate` rule holds.
    pub edits: bool,
    /// Who may edit and delete others' publications (absent: nobody).
    pub moderate: Option<Vec<BTreeMap<String, OneOrMany>>>,
    /// Track who is on each channel (`presence`, `presence_count`, the server API).
    pub presence: bool,
    /// Push join, leave and status events to the members (default true; turn off for
    /// big rooms, where counts are what members want).
    pub presence_events: Option<bool>,
    /// Most bytes one channel of the namespace retains in memory; a publish beyond it
    /// is refused with 110 until older publications go. 0 (default) = no limit.
    pub max_channel_bytes: usize,
}

/// A rule value: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Any of these values.
    Many(Vec<String>),
}

impl NamespaceConfig {
    /// The rules as the engine takes them.
    pub fn rules(&self) -> NamespaceRules {
        let convert = |rules: &Option<Vec<BTreeMap<String, OneOrMany>>>| {
            rules.as_ref().map(|list| {
                list.iter()
                    .map(|table| {
                        let mut rule = RuleConfig::default();
                        for (k, v) in table {
                            let values = match v {
                                OneOrMany::One(s) => vec![s.clone()],
                                OneOrMany::Many(l) => l.clone(),
                            };
                            if k == "channel" {
                                rule.channel = values.into_iter().next();
                            } else {
                                rule.claims.push((k.clone(), values));
                            }
                        }
                        rule
                    })
                    .collect()
            })
        };
        NamespaceRules {
            subscribe: convert(&self.subscribe),
            publish: convert(&self.publish),
            history: convert(&self.history),
            presence: convert(&self.presence_rules),
            moderate: convert(&self.moderate),
        }
    }
}

/// `[auth]`: how tokens are verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret. Unset (and no key files): dev mode with a generated secret.
    pub hmac_secret: Option<String>,
    /// PEM file with an RSA public key: accept RS256 tokens.
    pub rsa_public_key_file: Option<PathBuf>,
    /// PEM file with an EC P-256 public key: accept ES256 tokens.
    pub ec_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Threads verifying tokens (off the shards).
    pub threads: usize,
    /// Verification requests that may wait; beyond it `connect` gets `Overloaded`.
    pub queue_capacity: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            rsa_public_key_file: None,
            ec_public_key_file: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
            require_exp: true,
            threads: 1,
            queue_capacity: 16_384,
        }
    }
}

/// `[admin]`: the HTTP API for operators and backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listen address (health, metrics, server API).
    pub listen: SocketAddr,
    /// Key required by `/api/*` (as `Authorization: Bearer KEY` or `X-Api-Key: KEY`).
    /// Unset: generated in dev mode, otherwise the API answers 403.
    pub api_key: Option<String>,
    /// Largest request body accepted by the API, in bytes.
    pub max_body_bytes: usize,
    /// More server API keys, each limited to scopes: `publish` (publish, broadcast,
    /// schedule), `send` (direct messages, notifications), `read` (every GET),
    /// `users` (server-side subscriptions, topics, disconnect, revoke), `*` (all).
    /// `api_key` has every scope.
    pub api_keys: Vec<ApiKeyConfig>,
    /// HS256 key of admin tokens (`/admin/*`), at least 16 bytes and not the clients'
    /// `auth.hmac_secret`. Unset: generated in dev mode, otherwise `/admin/*` answers 403.
    pub jwt_secret: Option<String>,
    /// The value an admin token's `role` claim must have (or contain).
    pub role: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            api_key: None,
            max_body_bytes: 1_048_576,
            api_keys: Vec::new(),
            jwt_secret: None,
            role: "admin".into(),
        }
    }
}

/// `[[admin.api_keys]]`: a server API key limited to some scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who uses it (shown in the audit log).
    pub name: String,
    /// The key (at least 16 bytes).
    pub key: String,
    /// What it may do.
    pub scopes: Vec<String>,
}

/// The scopes an API key may have.
pub const API_SCOPES: [&str; 5] = ["publish", "send", "read", "users", "*"];

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `switchboard=debug,warn`); `RUST_LOG` wins if set.
    pub level: String,
    /// `text` (for people) or `json` (one object per line, for log pipelines: the
    /// target, the span's fields such as `request_id`, and each event's fields).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
