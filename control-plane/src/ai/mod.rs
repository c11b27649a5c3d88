//! AI on the message path: processors that read a chat message and say what it is,
//! run in the control plane, off the shards, in pipelines per namespace.
//!
//! - [`config`]: `[ai]` (local processors, model endpoints, pipelines) and its checks;
//! - local processors, which need no network: [`language`] (which language, with a
//!   confidence), [`entities`] (emails, phone numbers, dates and configured reference
//!   patterns such as case numbers) and [`intent`] (keyword rules, the fallback
//!   classifier when no model answers); each is built once from its configuration and
//!   is then a pure function of the text;
//! - the model: [`chat_wire`] (the OpenAI chat-completions wire format, sans I/O),
//!   [`model`] (the client, whole or streamed, one timeout per call, errors by kind),
//!   [`breaker`] (one circuit breaker per endpoint, half-open probing), [`prompts`]
//!   (the conversations sent, redaction, bounded history);
//! - [`models`]: the configured endpoints, each called through its breaker;
//! - [`pipeline`]: the workers that take the shards' tapped publications, run the
//!   processors ([`findings`]) and publish what they found ([`results`]: annotations,
//!   streamed bot replies), fail-open or fail-closed ([`held`]: messages held for
//!   moderation); [`stats`]: their metrics;
//! - [`escalation`]: rules on what was found (intent, keywords, entity kinds) and
//!   [`escalator`]: carrying them out (signed webhooks with retries and dead letters,
//!   notifications, staff channels, the audit log).
//!
//! It does not own delivery: in a fail-open namespace a message reaches its
//! subscribers before and independently of any of this (`switchboard_engine::ai_tap`).

pub mod breaker;
pub mod chat_wire;
pub mod config;
pub mod entities;
pub mod escalation;
pub mod escalator;
pub mod findings;
pub mod held;
pub mod intent;
pub mod language;
pub mod model;
pub mod models;
pub mod pipeline;
pub mod prompts;
pub mod results;
pub mod stats;

pub use config::AiConfig;

/// The local processors, built from `[ai]`.
#[derive(Debug)]
pub struct Processors {
    /// Language detection.
    pub language: language::LanguageDetector,
    /// Entity extraction.
    pub entities: entities::EntityExtractor,
    /// Intent rules.
    pub intents: intent::IntentRules,
}

/// A processor's configuration that cannot be used: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The configuration key, e.g. `ai.entities[2].pattern`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// The error of `key`.
    pub fn new(key: impl Into<String>, message: String) -> ConfigError {
        ConfigError {
            key: key.into(),
            message,
        }
    }
}
