//! Entities in a message: emails, phone numbers, dates (English and Spanish forms), and
//! whatever reference patterns a deployment configures (case numbers, claim ids), with
//! the `regex` crate.
//!
//! Owns the built-in patterns, compiling the configured ones (an error names the key)
//! and resolving overlaps (the earliest, then the longest, then the first kind listed:
//! a date is not also a phone number). Does not own redaction or what is sent where.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A configured pattern: `kind` names what it finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityPattern {
    /// What the pattern finds (`case_number`).
    pub kind: String,
    /// A regular expression (Rust `regex` syntax; no look-around).
    pub pattern: String,
}

/// An entity found in a text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entity {
    /// `email`, `phone`, `date`, or a configured kind.
    pub kind: String,
    /// The matched text.
    pub text: String,
    /// Byte offsets in the text.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
}

const MONTHS_EN: &str = "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|\
    aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?";
const MONTHS_ES: &str = "enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|\
    setiembre|octubre|noviembre|diciembre";

/// The built-in patterns, dates first (they win an overlap with a phone number).
fn builtin() -> Vec<(&'static str, String)> {
    vec![
        (
            "email",
            r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b".into(),
        ),
        (
            "date",
            format!(
                r"(?i)\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}|(?:{MONTHS_EN})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{MONTHS_EN})\.?,?\s+\d{{4}}|\d{{1,2}}\s+de\s+(?:{MONTHS_ES})(?:\s+(?:de|del)\s+\d{{4}})?)\b"
            ),
        ),
        (
            "phone",
            r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\b\d{2,4})[\s.-]?\d{3,4}[\s.-]?\d{3,4}\b".into(),
        ),
    ]
}

/// Finds entities: the built-in kinds and the configured patterns.
#[derive(Debug)]
pub struct EntityExtractor {
    patterns: Vec<(String, Regex)>,
}

impl EntityExtractor {
    /// The built-in kinds and `extra` (configured under `key`, an error names the entry).
    pub fn new(extra: &[EntityPattern], key: &str) -> Result<EntityExtractor, ConfigError> {
        let mut patterns: Vec<(String, Regex)> = builtin()
            .into_iter()
            .map(|(kind, p)| (kind.to_string(), Regex::new(&p).expect("built-in pattern")))
            .collect();
        for (i, p) in extra.iter().enumerate() {
            if p.kind.is_empty() || p.kind.len() > 64 {
                return Err(ConfigError {
                    key: format!("{key}[{i}].kind"),
                    message: "1 to 64 characters".into(),
                });
            }
            let re = regex::RegexBuilder::new(&p.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| ConfigError {
                    key: format!("{key}[{i}].pattern"),
                    message: e.to_string(),
                })?;
            patterns.push((p.kind.clone(), re));
        }
        Ok(EntityExtractor { patterns })
    }

    /// Every entity in `text`, in order, none overlapping another.
    pub fn extract(&self, text: &str) -> Vec<Entity> {
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        for (rank, (_, re)) in self.patterns.iter().enumerate() {
            for m in re.find_iter(text) {
                if !m.is_empty() {
                    found.push((m.start(), m.end(), rank));
                }
            }
        }
        // Earliest first; at one start the longest, then the kind listed first.
        found.sort_by_key(|&(start, end, rank)| (start, std::cmp::Reverse(end), rank));
        let mut out: Vec<Entity> = Vec::new();
        let mut taken_to = 0;
        for (start, end, rank) in found {
            if start < taken_to {
                continue;
            }
            taken_to = end;
            out.push(Entity {
                kind: self.patterns[rank].0.clone(),
                text: text[start..end].to_string(),
                start,
                end,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(e: &[Entity]) -> Vec<(&str, &str)> {
        e.iter()
            .map(|e| (e.kind.as_str(), e.text.as_str()))
            .collect()
    }

    #[test]
    fn emails_phones_dates_and_configured_references_are_found() {
        let x = EntityExtractor::new(
            &[EntityPattern {
                kind: "case_number".into(),
                pattern: r"\b(?:CASE|CV)-\d{4}-\d{3,6}\b".into(),
            }],
            "ai.entities",
        )
        .unwrap();
        let text = "Write to ana.lopez@example.com or call +1 (555) 123-4567 before \
                    2026-03-15 about CV-2025-00123; the hearing is on March 3rd, 2026.";
        assert_eq!(
            kinds(&x.extract(text)),
            [
                ("email", "ana.lopez@example.com"),
                ("phone", "+1 (555) 123-4567"),
                ("date", "2026-03-15"),
                ("case_number", "CV-2025-00123"),
                ("date", "March 3rd, 2026"),
            ]
        );
        let es = "Mi cita es el 12 de marzo de 2026, mi teléfono es 612 345 678.";
        assert_eq!(
            kinds(&x.extract(es)),
            [("date", "12 de marzo de 2026"), ("phone", "612 345 678")]
        );
        assert_eq!(x.extract("nothing to see here"), vec![]);
    }

    #[test]
    fn a_bad_pattern_is_a_config_error_naming_the_entry() {
        let bad = [EntityPattern {
            kind: "case".into(),
            pattern: "(unclosed".into(),
        }];
        let e = EntityExtractor::new(&bad, "ai.entities").unwrap_err();
        assert_eq!(e.key, "ai.entities[0].pattern");
        let empty = [EntityPattern {
            kind: String::new(),
            pattern: "x".into(),
        }];
        let e = EntityExtractor::new(&empty, "ai.entities").unwrap_err();
        assert_eq!(e.key, "ai.entities[0].kind");
    }
}
