//! AI on the message path (issue 21, in progress): processors that read a chat message
//! and say what it is, run in the control plane, off the shards.
//!
//! Built so far — the local processors, which need no network: [`language`] (which
//! language, with a confidence), [`entities`] (emails, phone numbers, dates and
//! configured reference patterns such as case numbers) and [`intent`] (keyword rules,
//! the fallback classifier when no model answers). Each is built once from its
//! configuration (errors name the key) and is then a pure function of the text.
//!
//! Not yet: pipelines per namespace, model processors (OpenAI-compatible endpoints),
//! budgets and breakers, escalation hooks; this module will own them too. It does not
//! own delivery: a message reaches its subscribers before and independently of any of
//! this.

pub mod entities;
pub mod intent;
pub mod language;

/// A processor's configuration that cannot be used: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The configuration key, e.g. `ai.entities[2].pattern`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}
