//! Carrying escalations out: every one is audited, notifies its users (a
//! notification of kind `escalation` with its priority), is published into its staff
//! channel, and is POSTed to its webhook — signed, retried with backoff on a thread of
//! its own, and dead-lettered (listed in the admin API, audited) when every attempt
//! failed.
//!
//! Owns the webhook thread, the signature (`X-Switchboard-Signature:
//! t=UNIX_MS,v1=HEX(HMAC-SHA256(secret, "UNIX_MS.BODY"))`), retries (network errors,
//! 408, 429 and 5xx; other answers are final), the recent escalations and the dead
//! letters. Does not own deciding what escalates (`super::escalation`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use serde_json::{json, Value};

use super::escalation::{Reasons, Rule};
use super::findings::Findings;
use super::results::Outlet;
use crate::audit::Audit;
use crate::clock::now_ms;
use crate::notify::{NewNotification, Notifier, Recipients};
use crate::worker::WorkerHandle;

/// Recent escalations kept for the admin API.
const RECENT: usize = 200;
/// Dead letters kept for the admin API (all are also in the audit log).
const DEAD_LETTERS: usize = 1_000;
/// Webhook deliveries waiting for the thread.
const QUEUE: usize = 1_024;
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: u64 = 60_000;

/// An escalation as it is sent and shown.
#[derive(Debug, Clone, Serialize)]
pub struct Escalation {
    /// Its id (also the webhook's `X-Switchboard-Delivery`).
    pub id: String,
    /// The rule that fired.
    pub rule: String,
    /// `urgent`, `high` or `normal`.
    pub priority: String,
    /// The pipeline's namespace.
    pub namespace: String,
    /// The message's channel.
    pub channel: String,
    /// The message's position.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
    /// Who wrote it.
    pub author: Option<String>,
    /// Its text (unless the rule leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why it escalated.
    pub reasons: Reasons,
    /// Its language, if detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'static str>,
    /// When (unix ms).
    pub at_ms: u64,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The escalation.
    pub escalation: Escalation,
    /// Attempts made.
    pub attempts: u32,
    /// `pending`, `delivered`, `dead` (or `none`: no webhook).
    pub state: &'static str,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A webhook delivery on its way.
#[derive(Debug)]
struct Job {
    due_ms: u64,
    attempts: u32,
    url: String,
    secret: Vec<u8>,
    max_attempts: u32,
    backoff_ms: u64,
    timeout: Duration,
    body: String,
    escalation: Escalation,
}

/// Counters and lists the admin API and metrics read.
#[derive(Debug, Default)]
pub struct EscalationBook {
    /// Escalations fired.
    pub fired: AtomicU64,
    /// Webhook attempts that failed.
    pub webhook_failures: AtomicU64,
    /// Webhooks delivered.
    pub delivered: AtomicU64,
    /// Webhooks dead-lettered.
    pub dead: AtomicU64,
    recent: Mutex<VecDeque<Delivery>>,
    dead_letters: Mutex<VecDeque<Delivery>>,
}

impl EscalationBook {
    fn note(&self, d: Delivery) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = recent
            .iter_mut()
            .find(|r| r.escalation.id == d.escalation.id)
        {
            *old = d;
            return;
        }
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(d);
    }

    /// The latest escalations, oldest first.
    pub fn recent(&self) -> Vec<Delivery> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<Delivery> {
        let dead = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        dead.iter().cloned().collect()
    }

    fn bury(&self, d: Delivery) {
        let mut dead = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        if dead.len() == DEAD_LETTERS {
            dead.pop_front();
        }
        dead.push_back(d);
    }

    fn exhume(&self, id: &str) -> Option<Delivery> {
        let mut dead = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        let i = dead.iter().position(|d| d.escalation.id == id)?;
        dead.remove(i)
    }
}

/// Carries escalations out (clone freely).
#[derive(Clone)]
pub struct Escalator {
    rules: Arc<[Rule]>,
    jobs: Sender<Job>,
    /// What fired and how deliveries went.
    pub book: Arc<EscalationBook>,
    audit: Arc<Audit>,
    notifier: Notifier,
    outlet: Outlet,
    bot: Arc<str>,
}

impl std::fmt::Debug for Escalator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escalator")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What an escalator needs from the rest of the control plane.
pub struct Hands {
    /// The audit log.
    pub audit: Arc<Audit>,
    /// Notifications.
    pub notifier: Notifier,
    /// The engine.
    pub outlet: Outlet,
}

/// Start the webhook thread for `rules` (none when no rule has a webhook).
pub fn spawn(rules: Vec<Rule>, hands: Hands) -> std::io::Result<(Escalator, Option<WorkerHandle>)> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let book = Arc::new(EscalationBook::default());
    let thread = if rules.iter().any(|r| r.secret.is_some()) {
        let (book, audit) = (book.clone(), hands.audit.clone());
        Some(WorkerHandle::spawn("ai-escalations", move |stop| {
            deliver_all(&rx, &book, &audit, stop)
        })?)
    } else {
        None
    };
    let escalator = Escalator {
        rules: rules.into(),
        jobs: tx,
        book,
        audit: hands.audit,
        notifier: hands.notifier,
        outlet: hands.outlet,
        bot: "escalations".into(),
    };
    Ok((escalator, thread))
}

/// Where a message sits, for an escalation.
pub struct Origin<'a> {
    /// The pipeline's namespace.
    pub namespace: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// The message's position.
    pub position: switchboard_protocol::Position,
    /// Its author.
    pub author: Option<&'a str>,
    /// The pipeline's bot (publishes into staff channels).
    pub bot: &'a str,
}

impl Escalator {
    /// Whether any rule exists.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Fire every rule the message matches.
    pub fn check(&self, at: &Origin<'_>, text: &str, found: &Findings) {
        for rule in self.rules.iter() {
            if let Some(reasons) = rule.matches(at.namespace, text, found) {
                self.fire(rule, at, text, found, reasons);
            }
        }
    }

    fn fire(&self, rule: &Rule, at: &Origin<'_>, text: &str, found: &Findings, reasons: Reasons) {
        let cfg = &rule.cfg;
        let e = Escalation {
            id: crate::ids::random_hex(8),
            rule: cfg.name.clone(),
            priority: cfg.priority.clone(),
            namespace: at.namespace.into(),
            channel: at.channel.into(),
            epoch: at.position.epoch_hex().as_str().into(),
            offset: at.position.offset,
            author: at.author.map(str::to_owned),
            text: cfg.include_text.then(|| text.to_owned()),
            reasons,
            language: found.language.as_ref().map(|l| l.code),
            at_ms: now_ms(),
        };
        self.book.fired.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(rule = %cfg.name, channel = at.channel, id = %e.id, "escalation");
        let detail = serde_json::to_value(&e).unwrap_or(Value::Null);
        let _ = self
            .audit
            .record("ai", "ai.escalation", Some(at.channel), "fired", &detail);
        if !cfg.notify_users.is_empty() {
            self.notifier.create_later(NewNotification {
                to: Recipients::Users(cfg.notify_users.clone()),
                kind: "escalation".into(),
                data: json!({ "priority": cfg.priority, "escalation": detail }),
                key: None,
            });
        }
        if !cfg.notify_channel.is_empty() {
            let meta = json!({"ai": "escalation", "priority": cfg.priority});
            let bot = if at.bot.is_empty() {
                &*self.bot
            } else {
                at.bot
            };
            if let Err(why) = self.outlet.publish(
                &cfg.notify_channel,
                &detail,
                &meta,
                bot,
                Some("ai:escalation"),
            ) {
                tracing::warn!(channel = %cfg.notify_channel, %why, "escalation not published");
            }
        }
        let mut delivery = Delivery {
            escalation: e.clone(),
            attempts: 0,
            state: "none",
            error: None,
        };
        if let Some(secret) = &rule.secret {
            delivery.state = "pending";
            let job = Job {
                due_ms: 0,
                attempts: 0,
                url: cfg.webhook_url.clone(),
                secret: secret.clone(),
                max_attempts: cfg.webhook_attempts,
                backoff_ms: cfg.webhook_backoff_ms,
                timeout: Duration::from_millis(cfg.webhook_timeout_ms),
                body: detail.to_string(),
                escalation: e,
            };
            if let Err(e) = self.jobs.try_send(job) {
                let job = e.into_inner();
                delivery.state = "dead";
                delivery.error = Some("the webhook queue is full".into());
                dead_letter(&self.book, &self.audit, &job, "the webhook queue is full");
            }
        }
        self.book.note(delivery);
    }

    /// Deliver dead letter `id` again (its attempts start over).
    pub fn retry(&self, id: &str) -> bool {
        let Some(d) = self.book.exhume(id) else {
            return false;
        };
        let Some(rule) = self.rules.iter().find(|r| r.cfg.name == d.escalation.rule) else {
            return false;
        };
        let Some(secret) = &rule.secret else {
            return false;
        };
        let job = Job {
            due_ms: 0,
            attempts: 0,
            url: rule.cfg.webhook_url.clone(),
            secret: secret.clone(),
            max_attempts: rule.cfg.webhook_attempts,
            backoff_ms: rule.cfg.webhook_backoff_ms,
            timeout: Duration::from_millis(rule.cfg.webhook_timeout_ms),
            body: serde_json::to_string(&d.escalation).unwrap_or_default(),
            escalation: d.escalation.clone(),
        };
        self.book.note(Delivery {
            state: "pending",
            attempts: 0,
            error: None,
            ..d
        });
        self.jobs.try_send(job).is_ok()
    }
}

/// The signature header's value of `body` sent at `t_ms`.
pub fn signature(secret: &[u8], t_ms: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t_ms.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t_ms},v1={hex}")
}

/// Order jobs by due time (earliest first).
struct Due(Job);

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.0.due_ms == other.0.due_ms
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        self.0.due_ms.cmp(&other.0.due_ms)
    }
}

fn deliver_all(rx: &Receiver<Job>, book: &EscalationBook, audit: &Audit, stop: &AtomicBool) {
    let mut waiting: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    while !stop.load(Ordering::Acquire) {
        let now = now_ms();
        let wait = waiting
            .peek()
            .map_or(200, |Reverse(d)| d.0.due_ms.saturating_sub(now).min(200));
        match rx.recv_timeout(Duration::from_millis(wait)) {
            Ok(job) => waiting.push(Reverse(Due(job))),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while waiting
            .peek()
            .is_some_and(|Reverse(d)| d.0.due_ms <= now_ms())
        {
            let Some(Reverse(Due(job))) = waiting.pop() else {
                break;
            };
            if let Some(job) = attempt(job, book, audit) {
                waiting.push(Reverse(Due(job)));
            }
        }
    }
    // Stopping: what was not delivered is dead-lettered (and audited), not dropped.
    for Reverse(Due(job)) in waiting {
        dead_letter(
            book,
            audit,
            &job,
            "the server stopped before it was delivered",
        );
    }
    while let Ok(job) = rx.try_recv() {
        dead_letter(
            book,
            audit,
            &job,
            "the server stopped before it was delivered",
        );
    }
}

/// One attempt: the job back when it is to be tried again.
fn attempt(mut job: Job, book: &EscalationBook, audit: &Audit) -> Option<Job> {
    job.attempts += 1;
    let t = now_ms();
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(job.timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let sent = agent
        .post(&job.url)
        .header("content-type", "application/json")
        .header(
            "x-switchboard-signature",
            &signature(&job.secret, t, &job.body),
        )
        .header("x-switchboard-delivery", &job.escalation.id)
        .header("x-switchboard-attempt", &job.attempts.to_string())
        .send(job.body.as_str());
    let (retry, error) = match sent {
        Ok(r) if r.status().is_success() => {
            book.delivered.fetch_add(1, Ordering::Relaxed);
            book.note(Delivery {
                escalation: job.escalation,
                attempts: job.attempts,
                state: "delivered",
                error: None,
            });
            return None;
        }
        Ok(r) => {
            let s = r.status().as_u16();
            (s == 408 || s == 429 || s >= 500, format!("answered {s}"))
        }
        Err(e) => (true, e.to_string()),
    };
    book.webhook_failures.fetch_add(1, Ordering::Relaxed);
    if retry && job.attempts < job.max_attempts {
        let backoff = job
            .backoff_ms
            .saturating_mul(1 << (job.attempts - 1).min(16))
            .min(MAX_BACKOFF_MS);
        job.due_ms = now_ms() + backoff;
        book.note(Delivery {
            escalation: job.escalation.clone(),
            attempts: job.attempts,
            state: "pending",
            error: Some(error),
        });
        return Some(job);
    }
    dead_letter(book, audit, &job, &error);
    None
}

fn dead_letter(book: &EscalationBook, audit: &Audit, job: &Job, why: &str) {
    book.dead.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(id = %job.escalation.id, url = %job.url, why, "escalation webhook dead-lettered");
    let d = Delivery {
        escalation: job.escalation.clone(),
        attempts: job.attempts,
        state: "dead",
        error: Some(why.into()),
    };
    let detail = json!({ "delivery": &d, "url": job.url });
    let _ = audit.record(
        "ai",
        "ai.escalation.dead_letter",
        Some(&job.escalation.channel),
        "failed",
        &detail,
    );
    book.note(d.clone());
    book.bury(d);
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_and_body() {
        // Checked against: printf '1700000000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let s = signature(b"key", 1_700_000_000_000, r#"{"a":1}"#);
        assert_eq!(
            s,
            "t=1700000000000,v1=2c8bc12f88d77789404ce0a63cf69acf735ba98832f7a7d36147f537be556f3e"
        );
        assert_ne!(s, signature(b"other", 1_700_000_000_000, r#"{"a":1}"#));
    }
}
