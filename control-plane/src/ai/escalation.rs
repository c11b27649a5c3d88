//! Escalation rules: which messages a human must see now (an emergency, a case
//! number), decided from what a pipeline found — an intent (with a least confidence),
//! keywords, or entity kinds — and what each rule does: a signed webhook, a
//! notification to users, a publication into a staff channel.
//!
//! Owns `[[ai.escalations]]`, its checks (errors name the key) and matching. Does not
//! own carrying an escalation out (`super::escalator`).

use regex::Regex;
use serde::Serialize;

use super::findings::{Findings, FoundIntent};
use super::ConfigError;

/// `[[ai.escalations]]`: one rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EscalationConfig {
    /// Its name (in webhooks, notifications, the audit log).
    pub name: String,
    /// The pipelines' namespaces it watches (empty: every pipeline).
    pub namespaces: Vec<String>,
    /// Fires on any of these intents…
    pub intents: Vec<String>,
    /// …classified with at least this confidence.
    pub min_confidence: f64,
    /// Fires on any of these words or phrases (whole words, any case).
    pub keywords: Vec<String>,
    /// Fires when an entity of any of these kinds is found.
    pub entity_kinds: Vec<String>,
    /// POSTs the escalation here (signed with HMAC-SHA256).
    pub webhook_url: String,
    /// The environment variable holding the webhook's signing secret.
    pub webhook_secret_env: String,
    /// Attempts per webhook delivery before it is dead-lettered.
    pub webhook_attempts: u32,
    /// The first retry's delay; each next one doubles (at most a minute).
    pub webhook_backoff_ms: u64,
    /// Most time one attempt may take.
    pub webhook_timeout_ms: u64,
    /// Users notified (a notification of kind `escalation` with the priority).
    pub notify_users: Vec<String>,
    /// A channel the escalation is published into (a staff room), as the bot.
    pub notify_channel: String,
    /// `urgent`, `high` or `normal`.
    pub priority: String,
    /// Send the message's text in the webhook and notification (false: only what was
    /// found and where).
    pub include_text: bool,
}

impl Default for EscalationConfig {
    fn default() -> EscalationConfig {
        EscalationConfig {
            name: String::new(),
            namespaces: Vec::new(),
            intents: Vec::new(),
            min_confidence: 0.0,
            keywords: Vec::new(),
            entity_kinds: Vec::new(),
            webhook_url: String::new(),
            webhook_secret_env: String::new(),
            webhook_attempts: 5,
            webhook_backoff_ms: 500,
            webhook_timeout_ms: 5_000,
            notify_users: Vec::new(),
            notify_channel: String::new(),
            priority: "high".into(),
            include_text: true,
        }
    }
}

/// Priorities an escalation may carry.
const PRIORITIES: [&str; 3] = ["urgent", "high", "normal"];

/// A checked rule.
#[derive(Debug)]
pub struct Rule {
    /// Its configuration.
    pub cfg: EscalationConfig,
    keywords: Vec<(String, Regex)>,
    /// The webhook's signing secret.
    pub secret: Option<Vec<u8>>,
}

/// Why a message matched a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reasons {
    /// The intent that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<FoundIntent>,
    /// The keywords found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// The entity kinds found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entity_kinds: Vec<String>,
}

impl EscalationConfig {
    /// Check rule `i`, reading its webhook secret from the environment; `pipelines`
    /// are the namespaces with a pipeline.
    pub fn check(&self, i: usize, pipelines: &[&str]) -> Result<Rule, ConfigError> {
        let key = |k: &str| format!("ai.escalations[{i}].{k}");
        let bad = |k: &str, m: &str| Err(ConfigError::new(key(k), m.into()));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad("name", "1 to 64 characters");
        }
        for (j, ns) in self.namespaces.iter().enumerate() {
            if !pipelines.contains(&ns.as_str()) {
                return Err(ConfigError::new(
                    key(&format!("namespaces[{j}]")),
                    format!("{ns:?} has no [ai.pipelines.{ns}]"),
                ));
            }
        }
        if self.intents.is_empty() && self.keywords.is_empty() && self.entity_kinds.is_empty() {
            return bad(
                "intents",
                "a rule needs a condition: intents, keywords or entity_kinds",
            );
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("min_confidence", "0 to 1");
        }
        if self.webhook_url.is_empty()
            && self.notify_users.is_empty()
            && self.notify_channel.is_empty()
        {
            return bad(
                "webhook_url",
                "a rule needs an action: webhook_url, notify_users or notify_channel",
            );
        }
        if !PRIORITIES.contains(&self.priority.as_str()) {
            return bad("priority", "\"urgent\", \"high\" or \"normal\"");
        }
        let mut secret = None;
        if !self.webhook_url.is_empty() {
            if !(self.webhook_url.starts_with("http://")
                || self.webhook_url.starts_with("https://"))
            {
                return bad("webhook_url", "an http(s) URL");
            }
            if self.webhook_attempts == 0 || self.webhook_timeout_ms == 0 {
                return bad(
                    "webhook_attempts",
                    "attempts and timeout must be greater than 0",
                );
            }
            if self.webhook_secret_env.is_empty() {
                return bad(
                    "webhook_secret_env",
                    "a webhook is signed: name the variable holding its secret",
                );
            }
            match std::env::var(&self.webhook_secret_env) {
                Ok(v) if v.len() >= 16 => secret = Some(v.into_bytes()),
                _ => {
                    return Err(ConfigError::new(
                        key("webhook_secret_env"),
                        format!(
                            "the environment variable {} must hold a secret of at least 16 bytes",
                            self.webhook_secret_env
                        ),
                    ))
                }
            }
        }
        for (j, u) in self.notify_users.iter().enumerate() {
            if !crate::notify::valid_user_id(u) {
                return Err(ConfigError::new(
                    key(&format!("notify_users[{j}]")),
                    "a user id of 1 to 128 bytes".into(),
                ));
            }
        }
        if !self.notify_channel.is_empty()
            && !switchboard_protocol::envelope::valid_channel(&self.notify_channel)
        {
            return bad("notify_channel", "a channel name");
        }
        let mut keywords = Vec::with_capacity(self.keywords.len());
        for (j, k) in self.keywords.iter().enumerate() {
            if k.trim().is_empty() {
                return Err(ConfigError::new(
                    key(&format!("keywords[{j}]")),
                    "must not be empty".into(),
                ));
            }
            let re = super::intent::keyword_regex(k)
                .map_err(|e| ConfigError::new(key(&format!("keywords[{j}]")), e.to_string()))?;
            keywords.push((k.clone(), re));
        }
        Ok(Rule {
            cfg: self.clone(),
            keywords,
            secret,
        })
    }
}

impl Rule {
    /// Whether the message of `namespace` with `text` and `found` matches, and why.
    pub fn matches(&self, namespace: &str, text: &str, found: &Findings) -> Option<Reasons> {
        let cfg = &self.cfg;
        if !cfg.namespaces.is_empty() && !cfg.namespaces.iter().any(|n| n == namespace) {
            return None;
        }
        let intent = found
            .intent
            .as_ref()
            .filter(|i| {
                cfg.intents
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(&i.intent))
                    && i.confidence >= cfg.min_confidence
            })
            .cloned();
        let keywords: Vec<String> = self
            .keywords
            .iter()
            .filter(|(_, re)| re.is_match(text))
            .map(|(k, _)| k.clone())
            .collect();
        let mut entity_kinds: Vec<String> = found
            .entities
            .iter()
            .filter(|e| cfg.entity_kinds.contains(&e.kind))
            .map(|e| e.kind.clone())
            .collect();
        entity_kinds.dedup();
        if intent.is_none() && keywords.is_empty() && entity_kinds.is_empty() {
            return None;
        }
        Some(Reasons {
            intent,
            keywords,
            entity_kinds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::entities::Entity;

    fn rule(edit: impl FnOnce(&mut EscalationConfig)) -> Result<Rule, ConfigError> {
        let mut cfg = EscalationConfig {
            name: "emergency".into(),
            intents: vec!["emergency".into()],
            min_confidence: 0.5,
            notify_users: vec!["oncall".into()],
            ..Default::default()
        };
        edit(&mut cfg);
        cfg.check(0, &["intake"])
    }

    fn found(intent: &str, confidence: f64) -> Findings {
        Findings {
            intent: Some(FoundIntent {
                intent: intent.into(),
                confidence,
                source: "rules",
                matched: Vec::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn intents_keywords_and_entity_kinds_match() {
        let r = rule(|c| {
            c.keywords = vec!["hurt".into()];
            c.entity_kinds = vec!["case_number".into()];
        })
        .unwrap();
        assert!(r
            .matches("intake", "hello", &found("emergency", 0.9))
            .is_some());
        assert!(r
            .matches("intake", "hello", &found("emergency", 0.2))
            .is_none());
        assert!(r
            .matches("intake", "hello", &found("immigration", 0.9))
            .is_none());
        let why = r
            .matches("intake", "I am HURT", &Findings::default())
            .unwrap();
        assert_eq!(why.keywords, ["hurt"]);
        let mut f = Findings::default();
        f.entities.push(Entity {
            kind: "case_number".into(),
            text: "CV-2026-001".into(),
            start: 0,
            end: 11,
        });
        assert_eq!(
            r.matches("chat", "x", &f).unwrap().entity_kinds,
            ["case_number"]
        );
        let only_intake = rule(|c| c.namespaces = vec!["intake".into()]).unwrap();
        assert!(only_intake
            .matches("chat", "x", &found("emergency", 1.0))
            .is_none());
    }

    #[test]
    fn bad_rules_name_the_key() {
        let key = |edit: fn(&mut EscalationConfig)| rule(edit).unwrap_err().key;
        assert_eq!(key(|c| c.name.clear()), "ai.escalations[0].name");
        assert_eq!(key(|c| c.intents.clear()), "ai.escalations[0].intents");
        assert_eq!(
            key(|c| c.notify_users.clear()),
            "ai.escalations[0].webhook_url"
        );
        assert_eq!(
            key(|c| c.priority = "soon".into()),
            "ai.escalations[0].priority"
        );
        assert_eq!(
            key(|c| c.min_confidence = 2.0),
            "ai.escalations[0].min_confidence"
        );
        assert_eq!(
            key(|c| c.namespaces = vec!["chat".into()]),
            "ai.escalations[0].namespaces[0]"
        );
        assert_eq!(
            key(|c| c.webhook_url = "http://127.0.0.1:9/hook".into()),
            "ai.escalations[0].webhook_secret_env"
        );
        assert_eq!(
            key(|c| {
                c.webhook_url = "http://127.0.0.1:9/hook".into();
                c.webhook_secret_env = "SB_TEST_SURELY_UNSET_SECRET".into();
            }),
            "ai.escalations[0].webhook_secret_env"
        );
        assert_eq!(
            key(|c| c.notify_channel = "bad channel".into()),
            "ai.escalations[0].notify_channel"
        );
    }
}
