//! The configuration file, its environment overrides and validation.
//!
//! Owns reading `--config FILE` (TOML), applying `SWITCHBOARD_<SECTION>__<KEY>`
//! environment variables on top, refusing unknown keys and bad values with a message
//! that names the key. The environment is read through [`Env`] so tests never touch the
//! real one. Does not own command-line flags (`main`), which override both.

mod sections;
pub use sections::*;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use switchboard_engine::journal::Retention;
use switchboard_engine::{Durability, EngineConfig, NamespacePolicy};
use switchboard_protocol::envelope::valid_topic;

use crate::error::Error;
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
    /// Durable storage (SQLite or PostgreSQL).
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
    /// The Socket.IO endpoint on the engine's port (`docs/SOCKETIO.md`).
    pub socketio: switchboard_engine::sio_config::SocketIoConfig,
    /// Nodes sharing one service through Redis (`docs/SCALING.md`); off by default.
    pub cluster: crate::cluster::ClusterConfig,
    /// Processors that read chat messages (language, entities, intent rules).
    pub ai: crate::ai::AiConfig,
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
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, Error> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_text(&text, file, env)
    }

    /// Parse the text of a config file (`file` names it in errors), apply environment
    /// overrides, validate. Any text gets a config or an error naming the key: never a
    /// panic (fuzzed by `fuzz/fuzz_targets/config.rs`).
    pub fn from_text(text: &str, file: Option<&Path>, env: &dyn Env) -> Result<Config, Error> {
        let mut value = text
            .parse::<toml::Table>()
            .map_err(|e| Error::ConfigParse {
                path: file.map(Path::to_owned),
                message: e.to_string(),
            })?;
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
                    | "socketio"
                    | "cluster"
            ) {
                return Err(Error::ConfigEnv {
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
                .ok_or_else(|| Error::ConfigEnv {
                    var: var.clone(),
                    message: "section is not a table".into(),
                })?;
            table.insert(key, parsed);
        }
        let mut config: Config =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| Error::ConfigParse {
                    path: file.map(Path::to_owned),
                    message: e.to_string(),
                })?;
        // Socket.IO always has its main namespace: a file that lists others keeps it.
        config
            .socketio
            .namespaces
            .entry(switchboard_protocol::socketio::MAIN_NAMESPACE.to_string())
            .or_default();
        config.validate()?;
        Ok(config)
    }

    /// The namespaces an AI pipeline may name: the configured ones and the inbox's.
    pub fn ai_namespaces(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.namespaces.keys().map(String::as_str).collect();
        if self.inbox.enabled {
            names.push(&self.inbox.namespace);
        }
        names
    }

    /// The engine settings with the namespaces' stream policies filled in.
    pub fn engine_config(&self) -> EngineConfig {
        let mut engine = self.engine.clone();
        engine.socketio = self.socketio.clone();
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
                max_channel_bytes: ns.max_channel_bytes,
                edits: ns.edits,
                retention: Retention {
                    max_age_ms: ns.retain_ms,
                    max_count: ns.retain_count,
                },
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
                max_channel_bytes: self.inbox.max_bytes,
                edits: false,
                retention: Retention {
                    max_age_ms: Some(self.inbox.retain_ms.unwrap_or(self.inbox.history_ttl_ms)),
                    max_count: self.inbox.retain_count,
                },
            });
        }
        engine
    }

    /// Check ranges; the message names the key.
    pub fn validate(&self) -> Result<(), Error> {
        for name in self.namespaces.keys() {
            if !valid_namespace(name) {
                return Err(Error::config(
                    format!("namespaces.{name}"),
                    "a namespace name is 1 to 64 of A-Z a-z 0-9 _ - .",
                ));
            }
        }
        if self.inbox.enabled {
            let ns = &self.inbox.namespace;
            if !valid_namespace(ns) {
                return Err(Error::invalid(
                    "inbox.namespace: a namespace name is 1 to 64 of A-Z a-z 0-9 _ - .",
                ));
            }
            if self.namespaces.contains_key(ns) {
                return Err(Error::config(
                    format!("namespaces.{ns}"),
                    "this is the inbox namespace; set it in [inbox]",
                ));
            }
            if self.inbox.durability == Durability::None {
                return Err(Error::invalid(
                    "inbox.durability must be sync or async (inboxes are stored)",
                ));
            }
            if self.inbox.history_size == 0 || self.inbox.history_ttl_ms == 0 {
                return Err(Error::invalid(
                    "inbox.history_size and inbox.history_ttl_ms must be greater than 0",
                ));
            }
            let message = self.engine.max_message_bytes;
            if self.inbox.max_bytes != 0 && self.inbox.max_bytes < message {
                return Err(Error::invalid(format!(
                    "inbox.max_bytes must be 0 or at least engine.max_message_bytes ({message})"
                )));
            }
        }
        if self.inbox.retain_ms == Some(0) || self.inbox.retain_count == Some(0) {
            return Err(Error::invalid(
                "inbox.retain_ms and inbox.retain_count must be greater than 0",
            ));
        }
        for (name, ns) in &self.namespaces {
            for (key, v) in [
                ("retain_ms", ns.retain_ms),
                ("retain_count", ns.retain_count),
            ] {
                match v {
                    Some(0) => {
                        return Err(Error::config(
                            format!("namespaces.{name}.{key}"),
                            "must be greater than 0 (leave it out to keep publications forever)",
                        ))
                    }
                    Some(_) if ns.durability == Durability::None => {
                        return Err(Error::config(
                            format!("namespaces.{name}.{key}"),
                            "applies to stored namespaces: set durability to async or sync",
                        ))
                    }
                    _ => {}
                }
            }
            let message = self.engine.max_message_bytes;
            if ns.max_channel_bytes != 0 && ns.max_channel_bytes < message {
                return Err(Error::config(
                    format!("namespaces.{name}.max_channel_bytes"),
                    format!("must be 0 or at least engine.max_message_bytes ({message})"),
                ));
            }
        }
        self.engine_config().validate()?;
        self.store.validate().map_err(Error::invalid)?;
        self.ai
            .check(&self.ai_namespaces())
            .map_err(|e| Error::invalid(e.to_string()))?;
        if self.cluster.enabled()
            && self.store.backend == crate::store::Backend::Postgres
            && self.cluster.node_id.is_empty()
        {
            return Err(Error::invalid(
                "cluster.node_id must be set when the nodes share a PostgreSQL store \
                 (store.backend = \"postgres\"): each node's run marks and sessions are \
                 kept under it",
            ));
        }
        self.cluster.validate().map_err(Error::invalid)?;
        let n = &self.notifications;
        for (i, t) in n.public_topics.iter().enumerate() {
            if t.is_empty() || !valid_topic(&t.replace('*', "x")) {
                return Err(Error::invalid(format!(
                    "notifications.public_topics[{i}]: a topic pattern is 1 to 128 letters, digits, _ - . : @ and *"
                )));
            }
        }
        if n.max_per_user == 0 || n.ttl_ms == 0 || n.max_recipients == 0 {
            return Err(Error::invalid("notifications.max_per_user, notifications.ttl_ms and notifications.max_recipients must be greater than 0"));
        }
        if let Some(p) = self.alerts.problem() {
            return Err(Error::invalid(p));
        }
        let c = &self.calls;
        if c.ring_timeout_ms == 0 || c.grace_ms == 0 || c.max_per_user == 0 {
            return Err(Error::invalid("calls.ring_timeout_ms, calls.grace_ms and calls.max_per_user must be greater than 0"));
        }
        if self.auth.threads == 0 {
            return Err(Error::invalid("auth.threads must be greater than 0"));
        }
        if self.auth.queue_capacity == 0 {
            return Err(Error::invalid("auth.queue_capacity must be greater than 0"));
        }
        if let Some(s) = &self.auth.hmac_secret {
            if s.len() < 16 {
                return Err(Error::invalid("auth.hmac_secret must be at least 16 bytes"));
            }
        }
        if let Some(k) = &self.admin.jwt_secret {
            if k.len() < 16 {
                return Err(Error::invalid("admin.jwt_secret must be at least 16 bytes"));
            }
            if self.auth.hmac_secret.as_ref() == Some(k) {
                return Err(Error::invalid("admin.jwt_secret must differ from auth.hmac_secret (a client token must never pass as an admin's)"));
            }
        }
        for (i, k) in self.admin.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(Error::invalid(format!(
                    "admin.api_keys[{i}].key must be at least 16 bytes"
                )));
            }
            if k.name.is_empty() {
                return Err(Error::invalid(format!(
                    "admin.api_keys[{i}].name must not be empty"
                )));
            }
            if let Some(bad) = k.scopes.iter().find(|s| !API_SCOPES.contains(&s.as_str())) {
                return Err(Error::invalid(format!(
                    "admin.api_keys[{i}].scopes: unknown scope {bad:?} (publish, send, read, users, *)"
                )));
            }
        }
        if self.admin.role.is_empty() {
            return Err(Error::invalid("admin.role must not be empty"));
        }
        if let Some(k) = &self.admin.api_key {
            if k.len() < 16 {
                return Err(Error::invalid("admin.api_key must be at least 16 bytes"));
            }
        }
        if self.admin.max_body_bytes == 0 {
            return Err(Error::invalid(
                "admin.max_body_bytes must be greater than 0",
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

    /// In dev mode, what a newcomer tries first works without a config file: `room:*`
    /// channels track presence, and `demo:*` channels are stored (`sync`), with
    /// presence and edits. Namespaces the configuration names are left as they are.
    /// Gives the namespaces added.
    pub fn add_dev_namespaces(&mut self) -> Vec<&'static str> {
        if !self.dev_mode() {
            return Vec::new();
        }
        let mut added = Vec::new();
        if !self.namespaces.contains_key("room") {
            self.namespaces.insert(
                "room".into(),
                NamespaceConfig {
                    presence: true,
                    ..Default::default()
                },
            );
            added.push("room");
        }
        if !self.namespaces.contains_key("demo") {
            self.namespaces.insert(
                "demo".into(),
                NamespaceConfig {
                    durability: Durability::Sync,
                    presence: true,
                    edits: true,
                    ..Default::default()
                },
            );
            added.push("demo");
        }
        added
    }
}
