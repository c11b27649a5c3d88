//! What is sent to the model: a message's text, redacted where configured, inside the
//! conversation each model processor asks with (intent, translation, reply with the
//! channel's recent history, bounded in tokens), and reading the intent's JSON answer.
//!
//! Owns the text of a payload (a string, or an object's `text`/`content`/`message`/
//! `body`), `{placeholder}` filling, redaction and the context budget. Does not own
//! the prompts' wording (configuration files) or the calls ([`super::model`]).

use serde_json::Value;
use switchboard_protocol::Format;

use super::chat_wire::ChatMessage;
use super::entities::Entity;

/// Object fields that carry a chat message's text, in the order looked at.
const TEXT_FIELDS: [&str; 4] = ["text", "content", "message", "body"];

/// A payload as JSON (MessagePack is read into the same value).
pub fn value_of(format: Format, raw: &[u8]) -> Option<Value> {
    match format {
        Format::MsgPack => rmp_serde::from_slice(raw).ok(),
        _ => serde_json::from_slice(raw).ok(),
    }
}

/// The text of a chat message's payload, if it has one.
pub fn text_of(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => TEXT_FIELDS
            .iter()
            .find_map(|f| o.get(*f).and_then(Value::as_str)),
        _ => None,
    }
    .filter(|s| !s.trim().is_empty())
}

/// `text` with the entities of the kinds in `kinds` replaced by `[kind]`.
pub fn redact(text: &str, entities: &[Entity], kinds: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for e in entities {
        if !kinds.contains(&e.kind) || e.start < at || e.end > text.len() {
            continue;
        }
        out.push_str(&text[at..e.start]);
        out.push('[');
        out.push_str(&e.kind);
        out.push(']');
        at = e.end;
    }
    out.push_str(&text[at..]);
    out
}

/// `template` with each `{name}` of `values` replaced.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

fn message(role: &str, content: String) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content,
    }
}

/// The intent classification conversation: answer with a JSON object
/// `{"intent": one of intents or "other", "confidence": 0..1}`.
pub fn intent_conversation(prompt: &str, intents: &[&str], text: &str) -> Vec<ChatMessage> {
    let list = intents.join(", ");
    vec![
        message("system", fill(prompt, &[("intents", &list)])),
        message("user", text.to_owned()),
    ]
}

/// The model's intent, if its answer is the JSON object asked for with one of
/// `intents` (`other` and unknown intents give `None`).
pub fn parse_intent(answer: &str, intents: &[&str]) -> Option<(String, f64)> {
    let v: Value = serde_json::from_str(answer.trim()).ok()?;
    let intent = v.get("intent")?.as_str()?;
    let intent = intents.iter().find(|i| i.eq_ignore_ascii_case(intent))?;
    let confidence = v
        .get("confidence")
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite())
        .unwrap_or(0.5)
        .clamp(0.0, 1.0);
    Some(((*intent).to_owned(), confidence))
}

/// The translation conversation into `target` (a language name).
pub fn translate_conversation(
    prompt: &str,
    target: &str,
    source: &str,
    text: &str,
) -> Vec<ChatMessage> {
    vec![
        message(
            "system",
            fill(prompt, &[("target_language", target), ("language", source)]),
        ),
        message("user", text.to_owned()),
    ]
}

/// One earlier message of the channel, as context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Written by the bot (an `assistant` turn) rather than a person.
    pub bot: bool,
    /// Its text (already redacted).
    pub text: String,
}

/// Bytes per token, for the context budget (the usual estimate for English text).
const BYTES_PER_TOKEN: usize = 4;

/// The reply conversation: the system prompt, as many of the newest `history` turns
/// (oldest first) as fit in `context_tokens` with the message, and the message.
pub fn reply_conversation(
    prompt: &str,
    values: &[(&str, &str)],
    history: &[Turn],
    text: &str,
    context_tokens: usize,
) -> Vec<ChatMessage> {
    let system = fill(prompt, values);
    let mut budget = (context_tokens * BYTES_PER_TOKEN).saturating_sub(system.len() + text.len());
    let mut kept = 0;
    for t in history.iter().rev() {
        if t.text.len() > budget {
            break;
        }
        budget -= t.text.len();
        kept += 1;
    }
    let mut out = Vec::with_capacity(kept + 2);
    out.push(message("system", system));
    for t in &history[history.len() - kept..] {
        out.push(message(
            if t.bot { "assistant" } else { "user" },
            t.text.clone(),
        ));
    }
    out.push(message("user", text.to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(kind: &str, start: usize, end: usize) -> Entity {
        Entity {
            kind: kind.into(),
            text: String::new(),
            start,
            end,
        }
    }

    #[test]
    fn the_text_of_a_payload() {
        let v = value_of(Format::Json, br#"{"text":"hola"}"#).unwrap();
        assert_eq!(text_of(&v), Some("hola"));
        let v = value_of(Format::Json, br#""hi""#).unwrap();
        assert_eq!(text_of(&v), Some("hi"));
        let v = value_of(Format::Json, br#"{"n":1}"#).unwrap();
        assert_eq!(text_of(&v), None);
        let packed = rmp_serde::to_vec(&serde_json::json!({"body": "x"})).unwrap();
        let v = value_of(Format::MsgPack, &packed).unwrap();
        assert_eq!(text_of(&v), Some("x"));
        assert!(value_of(Format::Json, b"{nope").is_none());
    }

    #[test]
    fn only_the_kinds_asked_for_are_redacted() {
        let text = "mail a@b.co or call 555-1234";
        let found = [entity("email", 5, 11), entity("phone", 20, 28)];
        assert_eq!(
            redact(text, &found, &["email".into()]),
            "mail [email] or call 555-1234"
        );
        assert_eq!(
            redact(text, &found, &["email".into(), "phone".into()]),
            "mail [email] or call [phone]"
        );
        assert_eq!(redact(text, &found, &[]), text);
    }

    #[test]
    fn the_intent_answer_must_name_a_known_intent() {
        let intents = ["emergency", "immigration"];
        assert_eq!(
            parse_intent(r#"{"intent":"Emergency","confidence":0.9}"#, &intents),
            Some(("emergency".into(), 0.9))
        );
        assert_eq!(
            parse_intent(r#"{"intent":"immigration"}"#, &intents),
            Some(("immigration".into(), 0.5))
        );
        assert_eq!(parse_intent(r#"{"intent":"other"}"#, &intents), None);
        assert_eq!(parse_intent("emergency", &intents), None);
        assert_eq!(
            parse_intent(r#"{"intent":"emergency","confidence":7}"#, &intents)
                .unwrap()
                .1,
            1.0
        );
    }

    #[test]
    fn the_reply_keeps_the_newest_history_that_fits() {
        let history: Vec<Turn> = (0..10)
            .map(|i| Turn {
                bot: i % 2 == 1,
                text: format!("message number {i:02} ........"),
            })
            .collect();
        let msgs = reply_conversation("You are {bot}.", &[("bot", "Ava")], &history, "now", 30);
        assert_eq!(msgs[0].content, "You are Ava.");
        assert_eq!(msgs.last().unwrap().content, "now");
        let kept = &msgs[1..msgs.len() - 1];
        assert!(
            !kept.is_empty() && kept.len() < 10,
            "bounded: {}",
            kept.len()
        );
        assert!(
            kept.last().unwrap().content.contains("09"),
            "the newest kept"
        );
        assert_eq!(kept.last().unwrap().role, "assistant");
        let all = reply_conversation("p", &[], &history, "now", 10_000);
        assert_eq!(all.len(), 12);
    }
}
