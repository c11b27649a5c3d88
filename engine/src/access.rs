//! Who may do what on a channel: per-namespace rules over the token's claims.
//!
//! Owns the rule model and its evaluation. A namespace may list, per action
//! (`subscribe`, `publish`, `history`), rules of which any one must hold; a rule holds
//! when all its conditions do: a `channel` template (`case:{team}:*`: `{name}` is the
//! value of the token's claim `name`, any of them for a list, `{sub}` the user id; `*`
//! any run of characters) and claims that must have one of the given values
//! (`role = ["provider", "admin"]`). An action without rules falls back to the token's
//! `channels` claim, so namespaces without rules behave as before.
//!
//! Templates are parsed once at start-up; a check walks the template against the
//! channel name without allocating.
//!
//! Does not own inboxes and personal channels (the shard decides those first: only
//! their owner may read them) or the identity (verified by the control plane).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::auth::Identity;

/// The actions rules decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `subscribe` (and receipts, which need read access).
    Subscribe,
    /// `publish` (and `schedule` to a channel).
    Publish,
    /// `history`.
    History,
    /// `presence` and `presence_count`.
    Presence,
    /// `edit` and `delete` of others' publications (without rules: nobody; authors
    /// may always change their own where the namespace allows edits).
    Moderate,
}

impl Action {
    /// Its name in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::History => "history",
            Action::Presence => "presence",
            Action::Moderate => "moderate",
        }
    }
}

/// One rule as configured: `channel` template and required claim values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleConfig {
    /// Channel template (`chat:{sub}:*`); absent: any channel of the namespace.
    pub channel: Option<String>,
    /// Claims that must hold one of the listed values (`role` → `["admin"]`).
    pub claims: Vec<(String, Vec<String>)>,
}

/// A namespace's rules per action, as configured (`None`: no rules for that action).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRules {
    /// Who may subscribe.
    pub subscribe: Option<Vec<RuleConfig>>,
    /// Who may publish.
    pub publish: Option<Vec<RuleConfig>>,
    /// Who may read history (default: the subscribe rules).
    pub history: Option<Vec<RuleConfig>>,
    /// Who may see who is present (default: the subscribe rules).
    #[serde(default)]
    pub presence: Option<Vec<RuleConfig>>,
    /// Who may edit and delete others' publications (default: nobody).
    #[serde(default)]
    pub moderate: Option<Vec<RuleConfig>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    Claim(Box<str>),
    Star,
}

#[derive(Debug, Clone)]
struct Rule {
    template: Option<Vec<Seg>>,
    claims: Vec<(Box<str>, Vec<Box<str>>)>,
}

#[derive(Debug, Clone, Default)]
struct Compiled {
    subscribe: Option<Vec<Rule>>,
    publish: Option<Vec<Rule>>,
    history: Option<Vec<Rule>>,
    presence: Option<Vec<Rule>>,
    moderate: Option<Vec<Rule>>,
}

/// Every namespace's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Access {
    by_ns: HashMap<Box<str>, Compiled>,
}

/// What the rules say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A rule allows it.
    Allowed,
    /// The namespace has rules for this action and none allows it.
    Denied,
    /// The namespace has no rules for this action: the token's `channels` claim
    /// decides.
    NoRules,
}

/// Parse a channel template; the error says what is wrong.
fn parse_template(t: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if !lit.is_empty() {
                    segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
                }
                segs.push(Seg::Star);
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                            name.push(c)
                        }
                        Some(c) => return Err(format!("{c:?} is not allowed in a {{claim}} name")),
                        None => return Err("unclosed '{'".into()),
                    }
                }
                if name.is_empty() {
                    return Err("empty {} in the template".into());
                }
                if !lit.is_empty() {
                    segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
                }
                segs.push(Seg::Claim(name.into()));
            }
            '}' => return Err("'}' without '{'".into()),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        segs.push(Seg::Lit(lit.into()));
    }
    Ok(segs)
}

fn compile(rules: &Option<Vec<RuleConfig>>) -> Result<Option<Vec<Rule>>, String> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let template = match &r.channel {
                Some(t) => Some(parse_template(t).map_err(|e| format!("[{i}].channel: {e}"))?),
                None => None,
            };
            let claims = r
                .claims
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().into(),
                        v.iter().map(|s| s.as_str().into()).collect(),
                    )
                })
                .collect();
            Ok(Rule { template, claims })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// Whether `text` matches `segs` with `identity`'s claims substituted.
fn matches(segs: &[Seg], text: &str, identity: &Identity) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return text.is_empty();
    };
    match first {
        Seg::Lit(l) => text
            .strip_prefix(&**l)
            .is_some_and(|t| matches(rest, t, identity)),
        Seg::Claim(name) => identity.claim_values(name).any(|v| {
            !v.is_empty()
                && text
                    .strip_prefix(v)
                    .is_some_and(|t| matches(rest, t, identity))
        }),
        Seg::Star => {
            if rest.is_empty() {
                return true;
            }
            (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .any(|i| matches(rest, &text[i..], identity))
        }
    }
}

impl Rule {
    fn allows(&self, identity: &Identity, channel: &str) -> bool {
        self.claims.iter().all(|(name, wanted)| {
            identity
                .claim_values(name)
                .any(|v| wanted.iter().any(|w| &**w == v))
        }) && self
            .template
            .as_ref()
            .is_none_or(|t| matches(t, channel, identity))
    }
}

impl Access {
    /// Compile every namespace's rules; the error names the namespace, action and rule.
    pub fn new<'a>(
        namespaces: impl IntoIterator<Item = (&'a str, &'a NamespaceRules)>,
    ) -> Result<Access, crate::Error> {
        let mut by_ns = HashMap::new();
        for (name, r) in namespaces {
            let at = |action: &str, e: String| {
                // `e` is `[i].field: what` from the rule's compiler.
                let (place, message) = e.split_once(": ").unwrap_or((&e, "invalid"));
                crate::Error::config(format!("namespaces.{name}.{action}{place}"), message)
            };
            let c = Compiled {
                subscribe: compile(&r.subscribe).map_err(|e| at("subscribe", e))?,
                publish: compile(&r.publish).map_err(|e| at("publish", e))?,
                history: compile(&r.history).map_err(|e| at("history", e))?,
                presence: compile(&r.presence).map_err(|e| at("presence", e))?,
                moderate: compile(&r.moderate).map_err(|e| at("moderate", e))?,
            };
            if c.subscribe.is_some()
                || c.publish.is_some()
                || c.history.is_some()
                || c.presence.is_some()
                || c.moderate.is_some()
            {
                by_ns.insert(name.into(), c);
            }
        }
        Ok(Access { by_ns })
    }

    /// Whether any namespace has rules.
    pub fn is_empty(&self) -> bool {
        self.by_ns.is_empty()
    }

    /// What the rules of `channel`'s namespace say about `identity` doing `action`.
    pub fn check(&self, identity: &Identity, channel: &str, action: Action) -> Verdict {
        if self.by_ns.is_empty() {
            return Verdict::NoRules;
        }
        let Some(c) = channel
            .split_once(':')
            .and_then(|(ns, _)| self.by_ns.get(ns))
        else {
            return Verdict::NoRules;
        };
        let rules = match action {
            Action::Subscribe => c.subscribe.as_ref(),
            Action::Publish => c.publish.as_ref(),
            // Without their own rules, reading history and presence follows subscribe.
            Action::History => c.history.as_ref().or(c.subscribe.as_ref()),
            Action::Presence => c.presence.as_ref().or(c.subscribe.as_ref()),
            Action::Moderate => c.moderate.as_ref(),
        };
        match rules {
            None => Verdict::NoRules,
            Some(list) if list.iter().any(|r| r.allows(identity, channel)) => Verdict::Allowed,
            Some(_) => Verdict::Denied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(user: &str, claims: &[(&str, &[&str])]) -> Identity {
        Identity {
            user: Arc::from(user),
            channels: None,
            expires_at: None,
            send_to: None,
            schedule: false,
            claims: claims
                .iter()
                .map(|(k, v)| ((*k).into(), v.iter().map(|s| (*s).into()).collect()))
                .collect(),
        }
    }

    fn rule(channel: Option<&str>, claims: &[(&str, &[&str])]) -> RuleConfig {
        RuleConfig {
            channel: channel.map(str::to_string),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn templates_claims_and_fallback() {
        let case = NamespaceRules {
            subscribe: Some(vec![
                rule(Some("case:{team}:*"), &[]),
                rule(None, &[("role", &["admin"])]),
            ]),
            publish: Some(vec![rule(
                Some("case:{team}:*"),
                &[("role", &["provider", "admin"])],
            )]),
            history: None,
            presence: None,
            moderate: None,
        };
        let chat = NamespaceRules {
            subscribe: Some(vec![rule(Some("chat:{sub}:*"), &[])]),
            ..Default::default()
        };
        let a = Access::new([("case", &case), ("chat", &chat)]).unwrap();
        let nurse = id("n1", &[("team", &["t1", "t2"]), ("role", &["nurse"])]);
        let doc = id("d1", &[("team", &["t1"]), ("role", &["provider"])]);
        let admin = id("root", &[("role", &["admin"])]);
        use Action::*;
        use Verdict::*;
        assert_eq!(a.check(&nurse, "case:t2:42", Subscribe), Allowed);
        assert_eq!(a.check(&nurse, "case:t3:42", Subscribe), Denied);
        assert_eq!(
            a.check(&nurse, "case:t1:42", Publish),
            Denied,
            "nurses read only"
        );
        assert_eq!(a.check(&doc, "case:t1:42", Publish), Allowed);
        assert_eq!(a.check(&doc, "case:t2:42", Publish), Denied, "another team");
        assert_eq!(a.check(&admin, "case:any:1", Subscribe), Allowed);
        assert_eq!(
            a.check(&nurse, "case:t1:42", History),
            Allowed,
            "history follows subscribe"
        );
        assert_eq!(a.check(&nurse, "case:t3:42", History), Denied);
        assert_eq!(a.check(&doc, "chat:d1:x", Subscribe), Allowed);
        assert_eq!(
            a.check(&doc, "chat:d10:x", Subscribe),
            Denied,
            "{{sub}} is exact"
        );
        assert_eq!(a.check(&doc, "chat:d1:x", Publish), NoRules);
        assert_eq!(a.check(&doc, "room:1", Subscribe), NoRules);
        // A claim value that is empty or absent never matches.
        let empty = id("", &[("team", &[""])]);
        assert_eq!(a.check(&empty, "case::x", Subscribe), Denied);
    }

    #[test]
    fn bad_templates_name_the_rule() {
        for (t, want) in [
            ("case:{team", "unclosed"),
            ("case:{}", "empty"),
            ("case:}", "without"),
            ("case:{te am}", "not allowed"),
        ] {
            let r = NamespaceRules {
                publish: Some(vec![rule(None, &[]), rule(Some(t), &[])]),
                ..Default::default()
            };
            let e = Access::new([("case", &r)]).unwrap_err().to_string();
            assert!(e.starts_with("namespaces.case.publish[1].channel"), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }
}
