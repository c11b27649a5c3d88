//! Intent by keyword rules: the fallback classifier when no model answers, and the
//! first pass for rules that must never depend on one (an emergency).
//!
//! A rule names an intent and its keywords or phrases (any language; matched as whole
//! words, ignoring case). The intent with the most distinct keywords found wins; its
//! confidence is its share of all keywords found times `hits / (hits + 1)`, so one
//! keyword alone is 0.5, two are 0.67, and keywords of other intents lower it. Owns
//! compiling the rules (an error names the key) and scoring.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A configured rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentRule {
    /// The intent it signals (`personal_injury`, `emergency`).
    pub intent: String,
    /// Words or phrases that signal it.
    pub keywords: Vec<String>,
}

/// An intent classified from a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intent {
    /// The winning rule's intent.
    pub intent: String,
    /// 0 to 1, see the module.
    pub confidence: f64,
    /// The keywords found, as configured.
    pub matched: Vec<String>,
}

/// The pattern of a keyword or phrase: whole words, any case, spaces in a phrase
/// matching any run of spaces (the intent rules' and the escalation rules').
pub fn keyword_regex(keyword: &str) -> Result<Regex, regex::Error> {
    let escaped = regex::escape(keyword.trim()).replace(' ', r"\s+");
    Regex::new(&format!(r"(?i)(?:^|\b|\W){escaped}(?:$|\b|\W)"))
}

/// Compiled rules.
#[derive(Debug)]
pub struct IntentRules {
    rules: Vec<(String, Vec<(String, Regex)>)>,
}

impl IntentRules {
    /// Compile `rules` (configured under `key`).
    pub fn new(rules: &[IntentRule], key: &str) -> Result<IntentRules, ConfigError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            if r.intent.is_empty() || r.intent.len() > 64 {
                return Err(ConfigError {
                    key: format!("{key}[{i}].intent"),
                    message: "1 to 64 characters".into(),
                });
            }
            if r.keywords.is_empty() {
                return Err(ConfigError {
                    key: format!("{key}[{i}].keywords"),
                    message: "at least one keyword".into(),
                });
            }
            let mut words = Vec::with_capacity(r.keywords.len());
            for (j, k) in r.keywords.iter().enumerate() {
                if k.trim().is_empty() {
                    return Err(ConfigError {
                        key: format!("{key}[{i}].keywords[{j}]"),
                        message: "must not be empty".into(),
                    });
                }
                let re = keyword_regex(k).map_err(|e| ConfigError {
                    key: format!("{key}[{i}].keywords[{j}]"),
                    message: e.to_string(),
                })?;
                words.push((k.clone(), re));
            }
            out.push((r.intent.clone(), words));
        }
        Ok(IntentRules { rules: out })
    }

    /// The intents the rules name, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(n, _)| n.as_str())
    }

    /// The intent of `text`, if any rule's keywords are in it.
    pub fn classify(&self, text: &str) -> Option<Intent> {
        let mut total = 0usize;
        let mut best: Option<(usize, Vec<String>)> = None;
        for (i, (_, words)) in self.rules.iter().enumerate() {
            let matched: Vec<String> = words
                .iter()
                .filter(|(_, re)| re.is_match(text))
                .map(|(k, _)| k.clone())
                .collect();
            total += matched.len();
            if !matched.is_empty() && best.as_ref().is_none_or(|(_, m)| matched.len() > m.len()) {
                best = Some((i, matched));
            }
        }
        let (i, matched) = best?;
        let hits = matched.len() as f64;
        Some(Intent {
            intent: self.rules[i].0.clone(),
            confidence: hits / total as f64 * hits / (hits + 1.0),
            matched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> IntentRules {
        let r: Vec<IntentRule> = toml::from_str::<toml::Table>(
            r#"
            [[rule]]
            intent = "personal_injury"
            keywords = ["accident", "accidente", "injury", "lesión", "car crash"]
            [[rule]]
            intent = "immigration"
            keywords = ["visa", "green card", "asilo", "deportación"]
            [[rule]]
            intent = "emergency"
            keywords = ["911", "bleeding", "emergencia"]
            "#,
        )
        .unwrap()["rule"]
            .clone()
            .try_into()
            .unwrap();
        IntentRules::new(&r, "ai.intents").unwrap()
    }

    #[test]
    fn the_intent_with_most_keywords_wins_with_a_confidence() {
        let r = rules();
        let i = r
            .classify("I had a car  crash and an injury to my back")
            .unwrap();
        assert_eq!(i.intent, "personal_injury");
        assert_eq!(i.matched, ["injury", "car crash"]);
        assert!((i.confidence - 2.0 / 3.0).abs() < 1e-9, "{i:?}");
        let i = r.classify("Necesito ayuda con mi ASILO").unwrap();
        assert_eq!((i.intent.as_str(), i.confidence), ("immigration", 0.5));
        // Another intent's keyword lowers the confidence.
        let i = r
            .classify("accident after my visa interview, injury")
            .unwrap();
        assert_eq!(i.intent, "personal_injury");
        assert!((i.confidence - 2.0 / 3.0 * 2.0 / 3.0).abs() < 1e-9, "{i:?}");
        assert_eq!(r.classify("hello there"), None);
        assert_eq!(r.classify("visas"), None, "whole words only");
    }

    #[test]
    fn bad_rules_name_the_key() {
        let e = IntentRules::new(
            &[IntentRule {
                intent: "x".into(),
                keywords: vec![],
            }],
            "ai.intents",
        )
        .unwrap_err();
        assert_eq!(e.key, "ai.intents[0].keywords");
        let e = IntentRules::new(
            &[IntentRule {
                intent: "x".into(),
                keywords: vec!["ok".into(), " ".into()],
            }],
            "ai.intents",
        )
        .unwrap_err();
        assert_eq!(e.key, "ai.intents[0].keywords[1]");
    }
}
