//! The configuration file, its environment overrides and validation.
//!
//! Owns reading `--config FILE` (TOML), applying `SWITCHBOARD_<SECTION>__<KEY>`
//! environment variables on top, refusing unknown keys and bad values with a message
//! that names the key. The environment is read through [`Env`] so tests never touch the
//! real one. Does not own command-line flags (`main`), which override both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchboard_engine::access::{NamespaceRules, RuleConfig};
use switchboard_engine::{Durability, EngineConfig, NamespacePolicy};
use switchboard_protocol::envelope::valid_topic;

use crate::store::StoreConfig;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Shards, sockets, limits and timeouts.
    pub engine: EngineConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// The admin/server HTTP API.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Durable storage (SQLite).
    pub store: StoreConfig,
    /// Per-namespace settings, `[namespaces.NAME]`: a channel's namespace is the part
    /// of its name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Users' inboxes (direct messages).
    pub inbox: InboxConfig,
    /// Stored notifications and topics.
    pub notifications: NotificationsConfig,
    /// Call signaling.
    pub calls: CallsConfig,
    /// Alerts evaluated inside the server.
    pub alerts: crate::alerts::AlertsConfig,
}

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
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            namespace: "inbox".into(),
            durability: Durability::Sync,
            history_size: 1000,
            history_ttl_ms: 7 * 24 * 3600 * 1000,
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
    /// Kept publications older than this are not served and are deleted (default:
    /// `engine.history_ttl_ms`).
    pub history_ttl_ms: Option<u64>,
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
    /// Track who is on each channel (`presence`, `presence_count`, the server API).
    pub presence: bool,
    /// Push join, leave and status events to the members (default true; turn off for
    /// big rooms, where counts are what members want).
    pub presence_events: Option<bool>,
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

/// The process environment, behind a trait so tests can supply their own.
pub trait Env {
    /// Every variable.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// A configuration problem, naming the file and key where it can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key is unknown or mistyped.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if the problem is in one.
        path: Option<PathBuf>,
        /// What the parser says, including the key.
        message: String,
    },
    /// An environment override names no known key or has a bad value.
    #[error("invalid environment override {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config value: {0}")]
    Invalid(String),
}

const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Whether `name` may name a namespace: 1 to 64 of `A-Z a-z 0-9 _ - .` (no `:`).
fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Config {
    /// Load `file` (or the defaults), apply environment overrides, validate.
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: Some(path.to_owned()),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut vars = env.vars();
        vars.sort();
        for (var, raw) in vars {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            if !matches!(
                section.as_str(),
                "engine"
                    | "auth"
                    | "admin"
                    | "log"
                    | "store"
                    | "inbox"
                    | "notifications"
                    | "calls"
                    | "alerts"
            ) {
                return Err(ConfigError::Env {
                    var,
                    message: format!("unknown section '{section}'"),
                });
            }
            // A value that parses as a TOML value (number, bool, array) is taken as
            // such; anything else is a string.
            let parsed = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            let table = value
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    message: "section is not a table".into(),
                })?;
            table.insert(key, parsed);
        }
        let config: Config =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: file.map(Path::to_owned),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The engine settings with the namespaces' stream policies filled in.
    pub fn engine_config(&self) -> EngineConfig {
        let mut engine = self.engine.clone();
        engine.namespaces = self
            .namespaces
            .iter()
            .map(|(name, ns)| NamespacePolicy {
                name: name.clone(),
                durability: ns.durability,
                history_size: ns.history_size.unwrap_or(self.engine.history_size),
                history_ttl_ms: ns.history_ttl_ms.unwrap_or(self.engine.history_ttl_ms),
                rules: ns.rules(),
                presence: ns.presence,
                presence_events: ns.presence && ns.presence_events.unwrap_or(true),
            })
            .collect();
        if self.inbox.enabled {
            engine.inbox = Some(self.inbox.namespace.clone());
            engine.namespaces.push(NamespacePolicy {
                name: self.inbox.namespace.clone(),
                durability: self.inbox.durability,
                history_size: self.inbox.history_size,
                history_ttl_ms: self.inbox.history_ttl_ms,
                rules: Default::default(),
                presence: false,
                presence_events: false,
            });
        }
        engine
    }

    /// Check ranges; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in self.namespaces.keys() {
            if !valid_namespace(name) {
                return Err(ConfigError::Invalid(format!(
                    "namespaces.{name}: a namespace name is 1 to 64 of A-Z a-z 0-9 _ - ."
                )));
            }
        }
        if self.inbox.enabled {
            let ns = &self.inbox.namespace;
            if !valid_namespace(ns) {
                return Err(ConfigError::Invalid(
                    "inbox.namespace: a namespace name is 1 to 64 of A-Z a-z 0-9 _ - .".into(),
                ));
            }
            if self.namespaces.contains_key(ns) {
                return Err(ConfigError::Invalid(format!(
                    "namespaces.{ns}: this is the inbox namespace; set it in [inbox]"
                )));
            }
            if self.inbox.durability == Durability::None {
                return Err(ConfigError::Invalid(
                    "inbox.durability must be sync or async (inboxes are stored)".into(),
                ));
            }
            if self.inbox.history_size == 0 || self.inbox.history_ttl_ms == 0 {
                return Err(ConfigError::Invalid(
                    "inbox.history_size and inbox.history_ttl_ms must be greater than 0".into(),
                ));
            }
        }
        self.engine_config()
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.store.validate().map_err(ConfigError::Invalid)?;
        let n = &self.notifications;
        for (i, t) in n.public_topics.iter().enumerate() {
            if t.is_empty() || !valid_topic(&t.replace('*', "x")) {
                return Err(ConfigError::Invalid(format!(
                    "notifications.public_topics[{i}]: a topic pattern is 1 to 128 letters, digits, _ - . : @ and *"
                )));
            }
        }
        if n.max_per_user == 0 || n.ttl_ms == 0 || n.max_recipients == 0 {
            return Err(ConfigError::Invalid(
                "notifications.max_per_user, notifications.ttl_ms and notifications.max_recipients must be greater than 0".into(),
            ));
        }
        if let Some(p) = self.alerts.problem() {
            return Err(ConfigError::Invalid(p));
        }
        let c = &self.calls;
        if c.ring_timeout_ms == 0 || c.grace_ms == 0 || c.max_per_user == 0 {
            return Err(ConfigError::Invalid(
                "calls.ring_timeout_ms, calls.grace_ms and calls.max_per_user must be greater than 0".into(),
            ));
        }
        if self.auth.threads == 0 {
            return Err(ConfigError::Invalid(
                "auth.threads must be greater than 0".into(),
            ));
        }
        if self.auth.queue_capacity == 0 {
            return Err(ConfigError::Invalid(
                "auth.queue_capacity must be greater than 0".into(),
            ));
        }
        if let Some(s) = &self.auth.hmac_secret {
            if s.len() < 16 {
                return Err(ConfigError::Invalid(
                    "auth.hmac_secret must be at least 16 bytes".into(),
                ));
            }
        }
        if let Some(k) = &self.admin.jwt_secret {
            if k.len() < 16 {
                return Err(ConfigError::Invalid(
                    "admin.jwt_secret must be at least 16 bytes".into(),
                ));
            }
            if self.auth.hmac_secret.as_ref() == Some(k) {
                return Err(ConfigError::Invalid(
                    "admin.jwt_secret must differ from auth.hmac_secret (a client token must never pass as an admin's)".into(),
                ));
            }
        }
        for (i, k) in self.admin.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "admin.api_keys[{i}].key must be at least 16 bytes"
                )));
            }
            if k.name.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "admin.api_keys[{i}].name must not be empty"
                )));
            }
            if let Some(bad) = k.scopes.iter().find(|s| !API_SCOPES.contains(&s.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "admin.api_keys[{i}].scopes: unknown scope {bad:?} (publish, send, read, users, *)"
                )));
            }
        }
        if self.admin.role.is_empty() {
            return Err(ConfigError::Invalid("admin.role must not be empty".into()));
        }
        if let Some(k) = &self.admin.api_key {
            if k.len() < 16 {
                return Err(ConfigError::Invalid(
                    "admin.api_key must be at least 16 bytes".into(),
                ));
            }
        }
        if self.admin.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "admin.max_body_bytes must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// Whether no verification key is configured (dev mode).
    pub fn dev_mode(&self) -> bool {
        self.auth.hmac_secret.is_none()
            && self.auth.rsa_public_key_file.is_none()
            && self.auth.ec_public_key_file.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper (no extra crate for one use).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> TempPath {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("sb-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_and_shipped_profile_load() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c, Config::default());
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/default.toml");
        let from_file = Config::load(Some(&shipped), &env(&[])).unwrap();
        assert_eq!(
            from_file,
            Config::default(),
            "tuning/default.toml documents the defaults"
        );
    }

    #[test]
    fn env_overrides() {
        let c = Config::load(
            None,
            &env(&[
                ("SWITCHBOARD_ENGINE__MAX_FRAME_BYTES", "1024"),
                ("SWITCHBOARD_ENGINE__MAX_MESSAGE_BYTES", "4096"),
                ("SWITCHBOARD_AUTH__HMAC_SECRET", "0123456789abcdef0123"),
                ("SWITCHBOARD_ADMIN__LISTEN", "127.0.0.1:9000"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.engine.max_frame_bytes, 1024);
        assert_eq!(c.auth.hmac_secret.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.admin.listen.port(), 9000);
    }

    #[test]
    fn errors_name_the_key() {
        let f = write("[engine]\nmax_frame_bytes = \"lots\"\n");
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("max_frame_bytes"), "{e}");
        let f = write("[engine]\nmax_fram_bytes = 10\n");
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("max_fram_bytes"), "{e}");
        let f = write("[engine\n");
        assert!(matches!(
            Config::load(Some(&f.0), &env(&[])),
            Err(ConfigError::Parse { .. })
        ));
        let e = Config::load(None, &env(&[("SWITCHBOARD_ENGINE__TICK_MS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.tick_ms"), "{e}");
        let e = Config::load(None, &env(&[("SWITCHBOARD_NOPE__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SWITCHBOARD_NOPE__X"), "{e}");
        let e = Config::load(None, &env(&[("SWITCHBOARD_AUTH__HMAC_SECRET", "short")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.hmac_secret"), "{e}");
        // The keys of the io_uring backend and of channel streams.
        let f = write("[engine]\nio = \"kqueue\"\n");
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("io") && e.contains("kqueue"), "{e}");
        for (var, value, key) in [
            ("SWITCHBOARD_ENGINE__IO", "fast", "engine.io"),
            (
                "SWITCHBOARD_ENGINE__URING_BUFFERS",
                "1000",
                "engine.uring_buffers",
            ),
            (
                "SWITCHBOARD_ENGINE__URING_BUFFER_BYTES",
                "100",
                "engine.uring_buffer_bytes",
            ),
            (
                "SWITCHBOARD_ENGINE__STREAM_IDLE_MS",
                "0",
                "engine.stream_idle_ms",
            ),
            (
                "SWITCHBOARD_ENGINE__HISTORY_TTL_MS",
                "0",
                "engine.history_ttl_ms",
            ),
            (
                "SWITCHBOARD_ENGINE__DEDUPE_WINDOW_MS",
                "0",
                "engine.dedupe_window_ms",
            ),
            ("SWITCHBOARD_ENGINE__HISTORY_SIZE", "-1", "history_size"),
            // Every section can be set from the environment.
            (
                "SWITCHBOARD_ALERTS__CA_FILE",
                "/nonexistent/ca.pem",
                "alerts.ca_file",
            ),
            (
                "SWITCHBOARD_ALERTS__WEBHOOKS",
                r#"["ftp://relay/x"]"#,
                "alerts.webhooks[0]",
            ),
            (
                "SWITCHBOARD_CALLS__RING_TIMEOUT_MS",
                "0",
                "calls.ring_timeout_ms",
            ),
            (
                "SWITCHBOARD_NOTIFICATIONS__MAX_PER_USER",
                "0",
                "notifications.max_per_user",
            ),
        ] {
            let e = Config::load(None, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent.toml")), &env(&[])),
            Err(ConfigError::Read { .. })
        ));
        // Notifications and calls.
        for (text, key) in [
            (
                "[notifications]\npublic_topics = [\"news\", \"a b\"]\n",
                "notifications.public_topics[1]",
            ),
            (
                "[notifications]\nmax_per_user = 0\n",
                "notifications.max_per_user",
            ),
            ("[notifications]\nttl_ms = -1\n", "ttl_ms"),
            ("[notifications]\ntopics = []\n", "topics"),
            ("[calls]\nring_timeout_ms = 0\n", "calls.ring_timeout_ms"),
            ("[calls]\ngrace_ms = \"soon\"\n", "grace_ms"),
            ("[calls]\nmax_calls = 1\n", "max_calls"),
            (
                "[[engine.rate_limits]]\nscope = \"user\"\nevent = \"publish\"\nrate = 0\nper_ms = 1000\n",
                "engine.rate_limits[0]",
            ),
            (
                "[[engine.rate_limits]]\nscope = \"user\"\nevent = \"chat\"\nrate = 1\nper_ms = 1000\n",
                "chat",
            ),
            (
                "[[engine.rate_limits]]\nscope = \"room\"\nevent = \"publish\"\nrate = 1\nper_ms = 1000\n",
                "room",
            ),
            ("[engine]\nmax_connection_rate_per_ip = -1\n", "max_connection_rate_per_ip"),
            ("[engine]\nallowed_origins = \"https://a\"\n", "allowed_origins"),
            ("[engine]\nrate_limit_disconnect_after = \"x\"\n", "rate_limit_disconnect_after"),
            ("[engine]\nrate_limit_users = 9999999\n", "engine.rate_limit_users"),
            ("[engine]\nrate_limit_users = -1\n", "rate_limit_users"),
            (
                "[[admin.api_keys]]\nname = \"a\"\nkey = \"short\"\nscopes = [\"read\"]\n",
                "admin.api_keys[0].key",
            ),
            (
                "[[admin.api_keys]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nscopes = [\"write\"]\n",
                "admin.api_keys[0].scopes",
            ),
            ("[admin]\njwt_secret = \"short\"\n", "admin.jwt_secret"),
            (
                "[auth]\nhmac_secret = \"same-secret-0123456789\"\n[admin]\njwt_secret = \"same-secret-0123456789\"\n",
                "admin.jwt_secret",
            ),
            ("[admin]\nrole = \"\"\n", "admin.role"),
            ("[log]\nformat = \"xml\"\n", "xml"),
            ("[alerts]\ninterval_ms = 0\n", "alerts.interval_ms"),
            ("[alerts]\nwebhooks = [\"hooks.example.com/x\"]\n", "alerts.webhooks[0]"),
            ("[alerts]\nca_file = \"/nonexistent/ca.pem\"\n", "alerts.ca_file"),
            (
                "[[alerts.rules]]\nname = \"x\"\nmetric = \"cpu\"\nabove = 1.0\nlevel = \"warning\"\n",
                "cpu",
            ),
            (
                "[[alerts.rules]]\nname = \"x\"\nmetric = \"connections\"\nabove = 1.0\nlevel = \"loud\"\n",
                "loud",
            ),
        ] {
            let f = write(text);
            let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn store_and_namespaces_load_and_bad_values_name_the_key() {
        let f = write(
            "[store]\npath = \"/var/lib/sb/x.db\"\n[namespaces.ledger]\ndurability = \"sync\"\nhistory_size = 500\n[namespaces.chat]\ndurability = \"async\"\n",
        );
        let c = Config::load(Some(&f.0), &env(&[("SWITCHBOARD_STORE__MAX_BATCH", "128")])).unwrap();
        assert_eq!(c.store.path, PathBuf::from("/var/lib/sb/x.db"));
        assert_eq!(c.store.max_batch, 128);
        let engine = c.engine_config();
        let ledger = engine
            .namespaces
            .iter()
            .find(|n| n.name == "ledger")
            .unwrap();
        assert_eq!(
            (ledger.durability, ledger.history_size),
            (Durability::Sync, 500)
        );
        let chat = engine.namespaces.iter().find(|n| n.name == "chat").unwrap();
        assert_eq!(
            chat.history_size, c.engine.history_size,
            "inherits the engine's"
        );
        for (text, key) in [
            ("[namespaces.x]\ndurability = \"maybe\"\n", "durability"),
            (
                "[namespaces.x]\nhistory_ttl_ms = 0\n",
                "namespaces.x.history_ttl_ms",
            ),
            (
                "[namespaces.x]\ndurability = \"sync\"\nhistory_size = 0\n",
                "namespaces.x.history_size",
            ),
            ("[namespaces.\"a:b\"]\n", "namespaces.a:b"),
            ("[namespaces.x]\nretention = 3\n", "retention"),
            ("[inbox]\ndurability = \"none\"\n", "inbox.durability"),
            (
                "[namespaces.case]\nsubscribe = [{ role = \"a\" }, { channel = \"case:{team\" }]\n",
                "namespaces.case.subscribe[1].channel",
            ),
            (
                "[engine]\npersonal_namespace = \"a:b\"\n",
                "engine.personal_namespace",
            ),
            (
                "[engine]\nuser_presence_namespace = \"a:b\"\n",
                "engine.user_presence_namespace",
            ),
            (
                "[namespaces.x]\npresence_events = \"yes\"\n",
                "presence_events",
            ),
            ("[namespaces.x]\npublish = [{ role = 3 }]\n", "publish"),
            ("[inbox]\nnamespace = \"a:b\"\n", "inbox.namespace"),
            ("[inbox]\nhistory_size = 0\n", "inbox.history_size"),
            (
                "[namespaces.inbox]\ndurability = \"sync\"\n",
                "namespaces.inbox",
            ),
            ("[store]\nmax_backlog = 0\n", "store.max_backlog"),
            ("[store]\npath = \"\"\n", "store.path"),
        ] {
            let f = write(text);
            let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
