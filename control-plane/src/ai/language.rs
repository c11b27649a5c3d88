//! Which language a message is in, with a confidence: the `whatlang` crate's trigram
//! detector, restricted to the languages a deployment expects (a short message is
//! otherwise easily taken for a neighbour language).
//!
//! Owns mapping the configured codes (ISO 639-1 like `en`, or ISO 639-3 like `eng`) to
//! the detector's and back. Does not own what is done with the answer.

use whatlang::{Detector, Lang};

use super::ConfigError;

/// A language detected in a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Language {
    /// ISO 639-1 code where the language has one (`en`, `es`), else ISO 639-3.
    pub code: &'static str,
    /// 0 to 1: how sure the detector is (whatlang's confidence).
    pub confidence: f64,
}

/// ISO 639-1 codes of the languages most deployments name, with whatlang's language.
const TWO_LETTER: [(&str, Lang); 12] = [
    ("en", Lang::Eng),
    ("es", Lang::Spa),
    ("pt", Lang::Por),
    ("fr", Lang::Fra),
    ("de", Lang::Deu),
    ("it", Lang::Ita),
    ("nl", Lang::Nld),
    ("ru", Lang::Rus),
    ("zh", Lang::Cmn),
    ("ar", Lang::Ara),
    ("hi", Lang::Hin),
    ("ja", Lang::Jpn),
];

fn lang_of(code: &str) -> Option<Lang> {
    TWO_LETTER
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map(|&(_, l)| l)
        .or_else(|| Lang::from_code(code.to_ascii_lowercase()))
}

fn code_of(lang: Lang) -> &'static str {
    TWO_LETTER
        .iter()
        .find(|&&(_, l)| l == lang)
        .map_or(lang.code(), |&(c, _)| c)
}

/// The English name of a language code (`es` → `Spanish`), if it is one.
pub fn name_of(code: &str) -> Option<&'static str> {
    lang_of(code).map(|l| l.eng_name())
}

/// A language detector for a set of expected languages.
#[derive(Debug)]
pub struct LanguageDetector {
    detector: Detector,
}

impl LanguageDetector {
    /// A detector choosing among `languages` (at least two; `key` names them in
    /// errors); empty: English and Spanish.
    pub fn new(languages: &[String], key: &str) -> Result<LanguageDetector, ConfigError> {
        let mut allow = Vec::new();
        for (i, code) in languages.iter().enumerate() {
            let lang = lang_of(code).ok_or_else(|| ConfigError {
                key: format!("{key}[{i}]"),
                message: format!(
                    "{code:?} is not a language code (ISO 639-1 like \"en\", or 639-3)"
                ),
            })?;
            allow.push(lang);
        }
        if allow.is_empty() {
            allow = vec![Lang::Eng, Lang::Spa];
        }
        allow.sort_by_key(|l| l.code());
        allow.dedup();
        if allow.len() < 2 {
            return Err(ConfigError {
                key: key.into(),
                message: "name at least two languages to choose among".into(),
            });
        }
        Ok(LanguageDetector {
            detector: Detector::with_allowlist(allow),
        })
    }

    /// The language of `text`, if it has enough letters to tell.
    pub fn detect(&self, text: &str) -> Option<Language> {
        let info = self.detector.detect(text)?;
        Some(Language {
            code: code_of(info.lang()),
            confidence: info.confidence(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_and_spanish_are_told_apart_with_a_confidence() {
        let d = LanguageDetector::new(&[], "ai.languages").unwrap();
        let en = d
            .detect("I was in a car accident last week and I need to talk to a lawyer")
            .unwrap();
        assert_eq!(en.code, "en");
        assert!(en.confidence > 0.5, "{en:?}");
        let es = d
            .detect("Tuve un accidente de coche la semana pasada y necesito hablar con un abogado")
            .unwrap();
        assert_eq!(es.code, "es");
        assert!(es.confidence > 0.5, "{es:?}");
        assert_eq!(d.detect("12345 !!"), None, "no letters, no language");
    }

    #[test]
    fn configured_languages_are_checked_and_named_in_errors() {
        let d = LanguageDetector::new(&["eng".into(), "fr".into()], "k").unwrap();
        assert_eq!(
            d.detect("Bonjour, je voudrais prendre rendez-vous avec un avocat demain")
                .unwrap()
                .code,
            "fr"
        );
        let e =
            LanguageDetector::new(&["en".into(), "klingon".into()], "ai.languages").unwrap_err();
        assert_eq!(e.key, "ai.languages[1]");
        let e = LanguageDetector::new(&["en".into(), "eng".into()], "ai.languages").unwrap_err();
        assert!(e.message.contains("at least two"), "{e}");
    }
}
