//! AI on the message path (issue 21, in progress): processors that read a chat message
//! and say what it is, run in the control plane, off the shards.
//!
//! Built so far — the local processors, which need no network: [`language`] (which
//! language, with a confidence), [`entities`] (emails, phone numbers, dates and
//! configured reference patterns such as case numbers) and [`intent`] (keyword rules,
//! the fallback classifier when no model answers). Each is built once from its
//! configuration (errors name the key) and is then a pure function of the text. And
//! [`chat_wire`]: the OpenAI chat-completions wire format, sans I/O (requests, whole
//! answers, streamed answers fed as bytes arrive, error statuses), and [`model`], the
//! client that calls an OpenAI-compatible endpoint with it (whole or streamed, one
//! timeout per call, errors by kind).
//!
//! Not yet: pipelines per namespace, the model processors (prompts from config files),
//! budgets and breakers, escalation hooks; this module will own them too. It does not
//! own delivery: a message reaches its subscribers before and independently of any of
//! this.

pub mod chat_wire;
pub mod entities;
pub mod intent;
pub mod language;
pub mod model;

/// `[ai]`: the local processors' settings (pipelines that use them come next).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    /// Languages the detector chooses among (ISO 639-1 or 639-3 codes; at least two;
    /// empty: English and Spanish).
    pub languages: Vec<String>,
    /// Reference patterns found besides emails, phone numbers and dates:
    /// `[[ai.entities]] kind = "case_number", pattern = "…"`.
    pub entities: Vec<entities::EntityPattern>,
    /// Keyword rules, the fallback classifier:
    /// `[[ai.intents]] intent = "emergency", keywords = ["911", "emergencia"]`.
    pub intents: Vec<intent::IntentRule>,
}

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

impl AiConfig {
    /// Build the processors; an error names the key.
    pub fn processors(&self) -> Result<Processors, ConfigError> {
        Ok(Processors {
            language: language::LanguageDetector::new(&self.languages, "ai.languages")?,
            entities: entities::EntityExtractor::new(&self.entities, "ai.entities")?,
            intents: intent::IntentRules::new(&self.intents, "ai.intents")?,
        })
    }
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
