//! What a pipeline finds in one message: its language, entities, intent and
//! translations, from the local processors and, where configured, the model.
//!
//! Owns running the processors in order and the rule of failure: in a fail-open
//! pipeline a model that cannot answer is replaced by the local rules (intent) or
//! left out (translations); in a fail-closed one it makes the message unscreened (the
//! caller holds it). Does not own publishing the findings (`super::results`).

use serde::Serialize;

use super::config::{IntentSource, PipelineConfig, Prompts};
use super::entities::Entity;
use super::language::{self, Language};
use super::model::CallOptions;
use super::models::{Failure, Model};
use super::prompts;
use super::stats::PipelineStats;
use super::Processors;

/// An intent and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoundIntent {
    /// The intent.
    pub intent: String,
    /// 0 to 1.
    pub confidence: f64,
    /// `rules` or `model`.
    pub source: &'static str,
    /// The keywords found (rules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
}

/// A translation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Translation {
    /// Into this language (its code).
    pub language: String,
    /// The text.
    pub text: String,
}

/// What was found in a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    /// Its language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<FoundLanguage>,
    /// Its intent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<FoundIntent>,
    /// Its entities.
    pub entities: Vec<Entity>,
    /// Its translations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<Translation>,
    /// The model could not answer and local rules stood in.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// A detected language.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoundLanguage {
    /// ISO 639-1 (or 639-3) code.
    pub code: &'static str,
    /// 0 to 1.
    pub confidence: f64,
}

impl From<Language> for FoundLanguage {
    fn from(l: Language) -> FoundLanguage {
        FoundLanguage {
            code: l.code,
            confidence: l.confidence,
        }
    }
}

/// Everything the processors need.
pub struct Analyst<'a> {
    /// The pipeline's settings.
    pub cfg: &'a PipelineConfig,
    /// Its prompts.
    pub prompts: &'a Prompts,
    /// The local processors.
    pub local: &'a Processors,
    /// Its model, if it uses one.
    pub model: Option<&'a Model>,
    /// Its counters.
    pub stats: &'a PipelineStats,
}

/// Why a fail-closed message could not be screened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unscreened(pub String);

impl Analyst<'_> {
    /// Run the processors on `text`. `strict` (fail-closed): a model failure is an
    /// error instead of a fallback.
    pub fn analyze(&self, text: &str, strict: bool) -> Result<Findings, Unscreened> {
        let cfg = self.cfg;
        let mut f = Findings::default();
        let detected = self.local.language.detect(text);
        let entities = self.local.entities.extract(text);
        if cfg.language {
            f.language = detected.clone().map(FoundLanguage::from);
        }
        let rules = || {
            self.local.intents.classify(text).map(|i| FoundIntent {
                intent: i.intent,
                confidence: i.confidence,
                source: "rules",
                matched: i.matched,
            })
        };
        let model = self.model.filter(|_| cfg.send_to_model);
        let redacted = prompts::redact(text, &entities, &cfg.redact);
        f.intent = match (cfg.intent, model, &self.prompts.intent) {
            (IntentSource::Off, ..) => None,
            (IntentSource::Model, Some(m), Some(prompt)) => {
                let names: Vec<&str> = self.local.intents.names().collect();
                let asked = prompts::intent_conversation(prompt, &names, &redacted);
                let options = CallOptions {
                    max_tokens: Some(100),
                    json: true,
                    temperature: Some(0.0),
                };
                match m.call(&asked, options, None) {
                    Ok(c) => {
                        prompts::parse_intent(&c.content, &names).map(|(intent, confidence)| {
                            FoundIntent {
                                intent,
                                confidence,
                                source: "model",
                                matched: Vec::new(),
                            }
                        })
                    }
                    Err(e) => {
                        self.failed(strict, "intent", &e)?;
                        f.fallback = true;
                        rules()
                    }
                }
            }
            _ => rules(),
        };
        if let (Some(m), Some(prompt)) = (model, &self.prompts.translate) {
            let source = detected.as_ref().map_or("", |l| l.code);
            let source_name = language::name_of(source).unwrap_or("an unknown language");
            for target in &cfg.translate_to {
                if target.eq_ignore_ascii_case(source) {
                    continue;
                }
                let name = language::name_of(target).unwrap_or(target);
                let asked = prompts::translate_conversation(prompt, name, source_name, &redacted);
                let options = CallOptions {
                    max_tokens: Some(cfg.max_tokens.max(text.len() as u32 / 2)),
                    json: false,
                    temperature: Some(0.0),
                };
                match m.call(&asked, options, None) {
                    Ok(c) => f.translations.push(Translation {
                        language: target.clone(),
                        text: c.content,
                    }),
                    Err(e) => {
                        self.failed(strict, "translation", &e)?;
                        f.fallback = true;
                    }
                }
            }
        }
        if cfg.entities {
            f.entities = entities;
        }
        if f.fallback {
            PipelineStats::bump(&self.stats.fallbacks);
        }
        Ok(f)
    }

    fn failed(&self, strict: bool, what: &str, e: &Failure) -> Result<(), Unscreened> {
        if strict {
            return Err(Unscreened(format!("{what}: {e}")));
        }
        tracing::debug!(model = ?self.model.map(|m| &m.name), error = %e, "{what} fell back");
        Ok(())
    }
}
