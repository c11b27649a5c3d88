//! `[ai]`: the local processors' settings, the model endpoints and the pipelines per
//! namespace, and checking them (every error names its key).
//!
//! Owns the configuration's shape and its checks, including reading the prompt files.
//! Does not own what the settings do ([`super::pipeline`], [`super::model`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use switchboard_engine::ai_tap::AiMode;

use super::{entities, intent, language, ConfigError};

/// `[ai]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// OpenAI-compatible chat-completions endpoints by name: `[ai.models.NAME]`.
    pub models: BTreeMap<String, ModelConfig>,
    /// Pipelines by namespace: `[ai.pipelines.NAMESPACE]`.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Escalation rules: `[[ai.escalations]]`.
    pub escalations: Vec<super::escalation::EscalationConfig>,
}

/// `[ai.models.NAME]`: one endpoint, its budget and its breaker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// E.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model name the endpoint knows.
    pub model: String,
    /// The environment variable holding the API key (empty: no key is sent).
    pub api_key_env: String,
    /// Most time one call may take, streamed or not.
    pub timeout_ms: u64,
    /// Failed calls in a row that open the breaker (calls then fail at once and the
    /// pipelines fall back) for `breaker_cooldown_ms`; then one call probes.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before a probe.
    pub breaker_cooldown_ms: u64,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            base_url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            timeout_ms: 10_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
        }
    }
}

/// How a pipeline classifies intent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentSource {
    /// Not at all.
    Off,
    /// The keyword rules of `[[ai.intents]]`.
    #[default]
    Rules,
    /// The model (a JSON answer), the rules when it cannot answer.
    Model,
}

/// `[ai.pipelines.NAMESPACE.prompts]`: prompt files (text with `{placeholders}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptFiles {
    /// Intent classification (`{intents}`: the intents to choose among).
    pub intent: Option<PathBuf>,
    /// The bot's replies (`{bot}`, `{channel}`, `{language}`).
    pub reply: Option<PathBuf>,
    /// Translation (`{target_language}`, `{language}`).
    pub translate: Option<PathBuf>,
}

/// `[ai.pipelines.NAMESPACE]`: what runs on the namespace's messages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// `open` (deliver first, AI after; the default) or `closed` (deliver once the
    /// pipeline ran; hold for moderation while it cannot).
    pub mode: AiMode,
    /// The user the pipeline publishes as (annotations and replies).
    pub bot: String,
    /// Publish an annotation linked to each message.
    pub annotate: bool,
    /// Detect the language.
    pub language: bool,
    /// Extract entities.
    pub entities: bool,
    /// `off`, `rules` or `model`.
    pub intent: IntentSource,
    /// Translate each message into these languages (those it is not already in).
    pub translate_to: Vec<String>,
    /// Reply as `bot`, streamed, with the channel's recent history as context.
    pub reply: bool,
    /// The `[ai.models]` entry model processors use.
    pub model: String,
    /// The prompt files.
    pub prompts: PromptFiles,
    /// Most earlier messages of the channel given to the reply as context.
    pub history: usize,
    /// Most tokens of context (history and message; estimated at 4 bytes a token).
    pub context_tokens: usize,
    /// Most tokens of a reply.
    pub max_tokens: u32,
    /// Entity kinds replaced by `[kind]` in what is sent to the model (e.g.
    /// `["email", "phone"]`).
    pub redact: Vec<String>,
    /// Send messages to the model at all (false: local processors only, the opt-out).
    pub send_to_model: bool,
    /// Workers (calls at once); each channel's messages go to one of them, in order.
    pub concurrency: usize,
    /// Messages each worker's queue holds; beyond, fail-open drops the AI work and
    /// fail-closed refuses the publication.
    pub queue: usize,
    /// The reply published when the model cannot answer.
    pub fallback_reply: String,
    /// How often a streamed reply's text is pushed (coalesced in between).
    pub stream_every_ms: u64,
    /// Fail-closed: most messages held at once; beyond, publications are refused.
    pub max_held: usize,
    /// Fail-closed: how often held messages are tried again.
    pub retry_held_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            mode: AiMode::Open,
            bot: "assistant".into(),
            annotate: true,
            language: true,
            entities: true,
            intent: IntentSource::Rules,
            translate_to: Vec::new(),
            reply: false,
            model: String::new(),
            prompts: PromptFiles::default(),
            history: 20,
            context_tokens: 2_000,
            max_tokens: 300,
            redact: Vec::new(),
            send_to_model: true,
            concurrency: 4,
            queue: 256,
            fallback_reply: "Thank you for your message. A member of our team will answer \
                             shortly."
                .into(),
            stream_every_ms: 100,
            max_held: 1_000,
            retry_held_ms: 5_000,
        }
    }
}

/// A pipeline's prompts, read from their files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    /// Intent classification.
    pub intent: Option<String>,
    /// Replies.
    pub reply: Option<String>,
    /// Translation.
    pub translate: Option<String>,
}

/// Largest prompt file read, in bytes.
const MAX_PROMPT_BYTES: u64 = 64 * 1024;

impl PipelineConfig {
    /// Whether any processor calls the model.
    pub fn uses_model(&self) -> bool {
        self.send_to_model
            && (self.intent == IntentSource::Model || self.reply || !self.translate_to.is_empty())
    }

    /// Check the pipeline of `namespace` against the known `models` and read its
    /// prompts; an error names the key.
    pub fn check(
        &self,
        namespace: &str,
        models: &BTreeMap<String, ModelConfig>,
    ) -> Result<Prompts, ConfigError> {
        let key = |k: &str| format!("ai.pipelines.{namespace}.{k}");
        let bad = |k: &str, m: String| Err(ConfigError::new(key(k), m));
        if self.bot.is_empty() || self.bot.len() > 128 {
            return bad("bot", "a user id of 1 to 128 bytes".into());
        }
        if !(1..=256).contains(&self.concurrency) {
            return bad("concurrency", "1 to 256 workers".into());
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return bad("queue", "1 to 1000000 messages".into());
        }
        if self.stream_every_ms == 0 || self.retry_held_ms == 0 {
            let k = if self.stream_every_ms == 0 {
                "stream_every_ms"
            } else {
                "retry_held_ms"
            };
            return bad(k, "must be greater than 0".into());
        }
        if self.max_tokens == 0 || self.context_tokens == 0 {
            let k = if self.max_tokens == 0 {
                "max_tokens"
            } else {
                "context_tokens"
            };
            return bad(k, "must be greater than 0".into());
        }
        if self.fallback_reply.is_empty() && self.reply {
            return bad("fallback_reply", "a reply needs a fallback text".into());
        }
        for (i, l) in self.translate_to.iter().enumerate() {
            if language::name_of(l).is_none() {
                return bad(
                    &format!("translate_to[{i}]"),
                    format!("{l:?} is not an ISO 639-1 or 639-3 language code"),
                );
            }
        }
        for (i, kind) in self.redact.iter().enumerate() {
            if kind.is_empty() {
                return bad(&format!("redact[{i}]"), "an entity kind".into());
            }
        }
        let mut prompts = Prompts::default();
        if !self.uses_model() {
            return Ok(prompts);
        }
        if !models.contains_key(&self.model) {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            return bad(
                "model",
                format!(
                    "{:?} is not an [ai.models] entry (known: {known:?}); the pipeline's \
                     model processors need one",
                    self.model
                ),
            );
        }
        let read = |which: &str, path: &Option<PathBuf>| -> Result<String, ConfigError> {
            let k = key(&format!("prompts.{which}"));
            let Some(path) = path else {
                return Err(ConfigError::new(k, "a prompt file is required".into()));
            };
            read_prompt(path).map_err(|m| ConfigError::new(k, m))
        };
        if self.intent == IntentSource::Model {
            prompts.intent = Some(read("intent", &self.prompts.intent)?);
        }
        if self.reply {
            prompts.reply = Some(read("reply", &self.prompts.reply)?);
        }
        if !self.translate_to.is_empty() {
            prompts.translate = Some(read("translate", &self.prompts.translate)?);
        }
        Ok(prompts)
    }
}

fn read_prompt(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PROMPT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {} as UTF-8 text: {e}", path.display()))?;
    if text.len() as u64 > MAX_PROMPT_BYTES {
        return Err(format!(
            "{} is larger than {MAX_PROMPT_BYTES} bytes",
            path.display()
        ));
    }
    if text.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}

impl ModelConfig {
    /// Check the endpoint `name`; an error names the key.
    pub fn check(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("ai.models.{name}.{k}");
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(ConfigError::new(
                key("base_url"),
                format!("{:?} is not an http(s) URL", self.base_url),
            ));
        }
        if self.model.is_empty() {
            return Err(ConfigError::new(key("model"), "a model name".into()));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new(
                key("timeout_ms"),
                "must be greater than 0".into(),
            ));
        }
        if self.breaker_cooldown_ms == 0 {
            return Err(ConfigError::new(
                key("breaker_cooldown_ms"),
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// The API key from the environment (`None` without `api_key_env`); an error when
    /// the variable is named but not set.
    pub fn api_key(&self, name: &str) -> Result<Option<String>, ConfigError> {
        if self.api_key_env.is_empty() {
            return Ok(None);
        }
        match std::env::var(&self.api_key_env) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(ConfigError::new(
                format!("ai.models.{name}.api_key_env"),
                format!("the environment variable {} is not set", self.api_key_env),
            )),
        }
    }
}

impl AiConfig {
    /// Check everything; `namespaces` are the configured ones (a pipeline's namespace
    /// must be one of them). Gives each pipeline's prompts, by namespace.
    pub fn check(&self, namespaces: &[&str]) -> Result<BTreeMap<String, Prompts>, ConfigError> {
        self.checked(namespaces).map(|(prompts, _)| prompts)
    }

    /// [`AiConfig::check`], also giving the checked escalation rules.
    pub fn checked(
        &self,
        namespaces: &[&str],
    ) -> Result<(BTreeMap<String, Prompts>, Vec<super::escalation::Rule>), ConfigError> {
        self.processors()?;
        for (name, m) in &self.models {
            m.check(name)?;
        }
        let mut prompts = BTreeMap::new();
        for (ns, p) in &self.pipelines {
            if !namespaces.contains(&ns.as_str()) {
                return Err(ConfigError::new(
                    format!("ai.pipelines.{ns}"),
                    format!(
                        "namespace {ns:?} is not configured: add [namespaces.{ns}] (or name \
                         the inbox namespace)"
                    ),
                ));
            }
            if p.mode == AiMode::Off {
                return Err(ConfigError::new(
                    format!("ai.pipelines.{ns}.mode"),
                    "\"open\" or \"closed\" (remove the pipeline to turn it off)".into(),
                ));
            }
            prompts.insert(ns.clone(), p.check(ns, &self.models)?);
        }
        let pipelines: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
        let rules = self
            .escalations
            .iter()
            .enumerate()
            .map(|(i, e)| e.check(i, &pipelines))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((prompts, rules))
    }

    /// Build the local processors; an error names the key.
    pub fn processors(&self) -> Result<super::Processors, ConfigError> {
        Ok(super::Processors {
            language: language::LanguageDetector::new(&self.languages, "ai.languages")?,
            entities: entities::EntityExtractor::new(&self.entities, "ai.entities")?,
            intents: intent::IntentRules::new(&self.intents, "ai.intents")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ai(toml_text: &str) -> AiConfig {
        toml::from_str(toml_text).expect("parses")
    }

    fn key_of(cfg: &AiConfig, namespaces: &[&str]) -> String {
        cfg.check(namespaces).expect_err("refused").key
    }

    #[test]
    fn errors_name_the_key() {
        let prompt = std::env::temp_dir().join(format!("sb-prompt-{}.txt", std::process::id()));
        std::fs::write(&prompt, "Classify: {intents}").unwrap();
        let good = format!(
            r#"
            [models.m]
            base_url = "http://127.0.0.1:9/v1"
            model = "x"
            [pipelines.intake]
            intent = "model"
            model = "m"
            prompts.intent = {prompt:?}
            "#
        );
        assert!(ai(&good).check(&["intake"]).is_ok());
        assert_eq!(key_of(&ai(&good), &["chat"]), "ai.pipelines.intake");
        let cases = [
            (
                "model = \"m\"",
                "model = \"nope\"",
                "ai.pipelines.intake.model",
            ),
            (
                &format!("prompts.intent = {prompt:?}"),
                "",
                "ai.pipelines.intake.prompts.intent",
            ),
            (
                &format!("prompts.intent = {prompt:?}"),
                "prompts.intent = \"/no/such/file.txt\"",
                "ai.pipelines.intake.prompts.intent",
            ),
            (
                "intent = \"model\"",
                "intent = \"model\"\nconcurrency = 0",
                "ai.pipelines.intake.concurrency",
            ),
            (
                "intent = \"model\"",
                "intent = \"model\"\ntranslate_to = [\"xx\"]",
                "ai.pipelines.intake.translate_to[0]",
            ),
            (
                "intent = \"model\"",
                "intent = \"model\"\nmode = \"off\"",
                "ai.pipelines.intake.mode",
            ),
            (
                "intent = \"model\"",
                "intent = \"model\"\nbot = \"\"",
                "ai.pipelines.intake.bot",
            ),
            (
                "base_url = \"http://127.0.0.1:9/v1\"",
                "base_url = \"ftp://x\"",
                "ai.models.m.base_url",
            ),
            ("model = \"x\"", "model = \"\"", "ai.models.m.model"),
        ];
        for (from, to, key) in cases {
            let text = good.replacen(from, to, 1);
            assert_eq!(key_of(&ai(&text), &["intake"]), key, "{text}");
        }
        // The local processors' errors too.
        let text = format!("{good}\n[[intents]]\nintent = \"\"\nkeywords = [\"a\"]\n");
        assert_eq!(key_of(&ai(&text), &["intake"]), "ai.intents[0].intent");
        // A pipeline without model processors needs no model or prompt.
        assert!(ai("[pipelines.intake]\n").check(&["intake"]).is_ok());
        let opted_out = good.replacen(
            "intent = \"model\"",
            "intent = \"model\"\nsend_to_model = false",
            1,
        );
        let prompts = ai(&opted_out).check(&["intake"]).unwrap();
        assert_eq!(
            prompts["intake"],
            Prompts::default(),
            "opted out: nothing read"
        );
        std::fs::remove_file(&prompt).unwrap();
    }

    #[test]
    fn a_named_key_variable_must_be_set() {
        let m = ModelConfig {
            api_key_env: "SB_TEST_SURELY_UNSET_KEY_VAR".into(),
            ..Default::default()
        };
        assert_eq!(m.api_key("m").unwrap_err().key, "ai.models.m.api_key_env");
        assert_eq!(ModelConfig::default().api_key("m"), Ok(None));
    }
}
