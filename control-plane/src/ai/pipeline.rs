//! The pipelines' workers: each takes its channels' messages from the shards' tap in
//! order, runs the processors and publishes what they found — fail-open after the
//! message was delivered, fail-closed before (releasing it, or holding it for
//! moderation when the model cannot screen it).
//!
//! Owns building the pipelines from `[ai]` ([`prepare`], before the engine starts, so
//! the shards get the tap), the worker threads ([`Prepared::spawn`]), each message's
//! path through a pipeline, retrying held messages, and [`AiView`] — what the admin
//! API and metrics see, and the operator's release and rejection. Does not own the
//! processors, the model calls or the shapes published (`findings`, `models`,
//! `results`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use switchboard_engine::ai_tap::{AiItem, AiMode, AiQueues, AiTap, TapSpec};
use switchboard_engine::mesh::Refused;
use switchboard_engine::{EngineHandle, ShardSender};
use switchboard_protocol::{ErrorCode, Position};

use super::config::{AiConfig, PipelineConfig, Prompts};
use super::escalator::{Escalator, Origin};
use super::findings::{Analyst, Findings, Unscreened};
use super::held::{Held, HeldBook, HeldView};
use super::model::CallOptions;
use super::models::Model;
use super::prompts::{self, Turn};
use super::results::Outlet;
use super::stats::PipelineStats;
use super::{ConfigError, Processors};
use crate::clock::now_ms;
use crate::worker::WorkerHandle;

/// One namespace's pipeline, shared by its workers and the admin API.
#[derive(Debug)]
pub struct Pipeline {
    /// The namespace.
    pub namespace: String,
    /// Its settings.
    pub cfg: PipelineConfig,
    /// Its prompts.
    pub prompts: Prompts,
    /// Its model (when a processor uses one).
    pub model: Option<Arc<Model>>,
    /// Its counters.
    pub stats: PipelineStats,
    /// Its held messages (fail-closed).
    pub held: HeldBook,
}

/// The pipelines built from `[ai]`, waiting for the engine.
pub struct Prepared {
    /// The shards' side, for `Engine::start_shared` (`None`: no pipeline).
    pub tap: Option<AiTap>,
    queues: Vec<AiQueues>,
    pipelines: Vec<Arc<Pipeline>>,
    models: BTreeMap<String, Arc<Model>>,
    local: Arc<Processors>,
    rules: Vec<super::escalation::Rule>,
}

/// Build the pipelines of `cfg`; `namespaces` are the configured ones.
pub fn prepare(cfg: &AiConfig, namespaces: &[&str]) -> Result<Prepared, ConfigError> {
    let (mut prompts, rules) = cfg.checked(namespaces)?;
    let models = super::models::build(&cfg.models)?;
    let local = Arc::new(cfg.processors()?);
    let mut specs = Vec::new();
    let mut pipelines = Vec::new();
    for (ns, p) in &cfg.pipelines {
        specs.push(TapSpec {
            namespace: ns.clone(),
            mode: p.mode,
            bot: p.bot.clone(),
            workers: p.concurrency,
            queue: p.queue,
        });
        pipelines.push(Arc::new(Pipeline {
            namespace: ns.clone(),
            cfg: p.clone(),
            prompts: prompts.remove(ns).unwrap_or_default(),
            model: p
                .uses_model()
                .then(|| models.get(&p.model).cloned())
                .flatten(),
            stats: PipelineStats::default(),
            held: HeldBook::new(ns, p.concurrency, p.max_held),
        }));
    }
    let (tap, queues) = if specs.is_empty() {
        (None, Vec::new())
    } else {
        let (tap, queues) = AiTap::new(&specs);
        (Some(tap), queues)
    };
    Ok(Prepared {
        tap,
        queues,
        pipelines,
        models,
        local,
        rules,
    })
}

/// What the rest of the control plane sees of the pipelines.
#[derive(Debug, Clone, Default)]
pub struct AiView {
    /// The pipelines.
    pub pipelines: Vec<Arc<Pipeline>>,
    /// The model endpoints, by name.
    pub models: BTreeMap<String, Arc<Model>>,
    /// The shards' tap (queue depths, drops).
    pub tap: Option<AiTap>,
    /// Escalations (`None` before the pipelines start).
    pub escalator: Option<Escalator>,
    outlet: Option<Outlet>,
}

impl Prepared {
    /// Start each pipeline's workers (and the escalations' webhook thread).
    pub fn spawn(
        self,
        engine: Arc<EngineHandle>,
        shards: ShardSender,
        audit: Arc<crate::audit::Audit>,
        notifier: crate::notify::Notifier,
    ) -> std::io::Result<(AiView, Vec<WorkerHandle>)> {
        let outlet = Outlet { engine, shards };
        let hands = super::escalator::Hands {
            audit,
            notifier,
            outlet: outlet.clone(),
        };
        let (escalator, webhook_thread) = super::escalator::spawn(self.rules, hands)?;
        let mut handles: Vec<WorkerHandle> = webhook_thread.into_iter().collect();
        for (p, q) in self.pipelines.iter().zip(self.queues) {
            for (w, rx) in q.receivers.into_iter().enumerate() {
                let worker = Worker {
                    p: p.clone(),
                    w,
                    local: self.local.clone(),
                    out: outlet.clone(),
                    escalator: escalator.clone(),
                };
                let name = format!("ai-{}-{w}", p.namespace);
                handles.push(WorkerHandle::spawn(&name, move |stop| {
                    worker.run(&rx, stop)
                })?);
            }
        }
        let view = AiView {
            pipelines: self.pipelines,
            models: self.models,
            tap: self.tap,
            escalator: Some(escalator),
            outlet: Some(outlet),
        };
        Ok((view, handles))
    }
}

/// Why an operator's action on a held message did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldError {
    /// No such held message.
    NotFound,
    /// It was released but its channel refused it.
    Refused(String),
}

impl AiView {
    /// Every held message.
    pub fn held(&self) -> Vec<HeldView> {
        self.pipelines.iter().flat_map(|p| p.held.views()).collect()
    }

    fn take_held(&self, id: u64) -> Option<(&Arc<Pipeline>, Held)> {
        self.pipelines
            .iter()
            .find_map(|p| p.held.take(id).map(|h| (p, h)))
    }

    /// Release held message `id` unscreened (an operator's decision): blocks until its
    /// shard answers.
    pub fn release(&self, id: u64) -> Result<(HeldView, Position), HeldError> {
        let (p, held) = self.take_held(id).ok_or(HeldError::NotFound)?;
        let view = p.held.view(&held);
        let out = self.outlet.as_ref().ok_or(HeldError::NotFound)?;
        PipelineStats::bump(&p.stats.released);
        let position = out.release(*held.item).map_err(HeldError::Refused)?;
        Ok((view, position))
    }

    /// Reject held message `id`: its publisher is told it was refused.
    pub fn reject(&self, id: u64) -> Result<HeldView, HeldError> {
        let (p, held) = self.take_held(id).ok_or(HeldError::NotFound)?;
        let view = p.held.view(&held);
        PipelineStats::bump(&p.stats.rejected);
        if let Some(out) = &self.outlet {
            let refused = Refused {
                code: ErrorCode::PermissionDenied,
                message: "the message was held for moderation and rejected".into(),
            };
            out.refuse(held.item.reply, refused);
        }
        Ok(view)
    }
}

/// One worker of one pipeline.
struct Worker {
    p: Arc<Pipeline>,
    w: usize,
    local: Arc<Processors>,
    out: Outlet,
    escalator: Escalator,
}

/// How long a worker waits for a message before looking at its held ones again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

impl Worker {
    fn run(&self, rx: &Receiver<Box<AiItem>>, stop: &AtomicBool) {
        let mut next_retry = 0u64;
        while !stop.load(Ordering::Acquire) {
            let now = now_ms();
            if !self.p.held.is_empty() && now >= next_retry {
                self.retry_held();
                next_retry = now + self.p.cfg.retry_held_ms;
            }
            match rx.recv_timeout(IDLE_WAIT) {
                Ok(item) => self.handle(item),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Stopping: fail-closed messages not yet screened were never acknowledged;
        // their publishers learn so.
        let refused = || Refused {
            code: ErrorCode::Unavailable,
            message: "the server stopped before the message was screened; retry".into(),
        };
        while let Ok(item) = rx.try_recv() {
            self.out.refuse(item.reply, refused());
        }
        while let Some(h) = self.p.held.take_front(self.w) {
            self.out.refuse(h.item.reply, refused());
        }
    }

    fn analyst(&self) -> Analyst<'_> {
        Analyst {
            cfg: &self.p.cfg,
            prompts: &self.p.prompts,
            local: &self.local,
            model: self.p.model.as_deref(),
            stats: &self.p.stats,
        }
    }

    fn handle(&self, item: Box<AiItem>) {
        PipelineStats::bump(&self.p.stats.processed);
        match item.position {
            Some(position) => {
                let Some(text) = message_text(&item) else {
                    return;
                };
                // Not strict: a model failure falls back, it cannot fail.
                let findings = self.analyst().analyze(&text, false).unwrap_or_default();
                let at = (&*item.channel, item.author.as_deref());
                self.publish_results(at, position, &findings, &text);
            }
            None if self.p.held.holds_channel(self.w, &item.channel) => {
                self.hold(item, "behind an earlier held message of its channel".into())
            }
            None => {
                if let Err((item, why)) = self.screen(item) {
                    self.hold(item, why);
                }
            }
        }
    }

    /// Screen a fail-closed message and release it, or give it back with why not.
    fn screen(&self, item: Box<AiItem>) -> Result<(), (Box<AiItem>, String)> {
        let text = message_text(&item);
        let findings = match &text {
            Some(t) => match self.analyst().analyze(t, true) {
                Ok(f) => f,
                Err(Unscreened(why)) => return Err((item, why)),
            },
            // Nothing to read: nothing to screen.
            None => Findings::default(),
        };
        let (channel, author) = (item.channel.clone(), item.author.clone());
        match self.out.release(*item) {
            Ok(position) => {
                if let Some(t) = &text {
                    let at = (&*channel, author.as_deref());
                    self.publish_results(at, position, &findings, t);
                }
            }
            // Its publisher got the refusal (a full channel, say); nothing to annotate.
            Err(why) => tracing::debug!(channel = %channel, %why, "released message refused"),
        }
        Ok(())
    }

    fn hold(&self, item: Box<AiItem>, why: String) {
        match self.p.held.hold(self.w, item, now_ms(), why) {
            Ok(id) => {
                PipelineStats::bump(&self.p.stats.held);
                tracing::info!(namespace = %self.p.namespace, id, "message held for moderation");
            }
            Err(item) => {
                PipelineStats::bump(&self.p.stats.rejected);
                let refused = Refused {
                    code: ErrorCode::Overloaded,
                    message: "too many messages are held for moderation; retry later".into(),
                };
                self.out.refuse(item.reply, refused);
            }
        }
    }

    /// Try this worker's held messages again, oldest first, until one still fails.
    fn retry_held(&self) {
        while let Some(h) = self.p.held.take_front(self.w) {
            let Held {
                id, since_ms, item, ..
            } = h;
            match self.screen(item) {
                Ok(()) => {
                    PipelineStats::bump(&self.p.stats.released);
                    tracing::info!(namespace = %self.p.namespace, id, "held message released");
                }
                Err((item, why)) => {
                    let held = Held {
                        id,
                        item,
                        since_ms,
                        why,
                    };
                    self.p.held.put_back(self.w, held);
                    return;
                }
            }
        }
    }

    /// Publish what was found in the message of `(channel, author)` at `position`, and
    /// escalate it where a rule says so.
    fn publish_results(
        &self,
        (channel, author): (&str, Option<&str>),
        position: Position,
        f: &Findings,
        text: &str,
    ) {
        let cfg = &self.p.cfg;
        if cfg.annotate {
            match self.out.annotate(channel, position, f, &cfg.bot) {
                Ok(_) => PipelineStats::bump(&self.p.stats.annotations),
                Err(why) => {
                    PipelineStats::bump(&self.p.stats.publish_failures);
                    tracing::warn!(channel, %why, "annotation not published");
                }
            }
        }
        if !self.escalator.is_empty() {
            let at = Origin {
                namespace: &self.p.namespace,
                channel,
                position,
                author,
                bot: &cfg.bot,
            };
            self.escalator.check(&at, text, f);
        }
        if cfg.reply {
            let language = f.language.as_ref().map_or("", |l| l.code);
            self.reply(channel, position, text, language);
        }
    }

    /// The bot's reply to the message at `position`: streamed as pushes, then
    /// published; the fallback text when the model cannot answer (none at all when
    /// the namespace opted out of the model).
    fn reply(&self, channel: &str, position: Position, text: &str, language: &str) {
        let cfg = &self.p.cfg;
        let id = format!("{}-{}", position.epoch_hex().as_str(), position.offset);
        let bot = cfg.bot.as_str();
        // Opted out of the model (`send_to_model = false`): no reply at all.
        let (Some(m), Some(prompt)) = (
            self.p.model.as_deref().filter(|_| cfg.send_to_model),
            &self.p.prompts.reply,
        ) else {
            return;
        };
        let history = self.history(channel, position);
        let redacted = self.redacted(text);
        let values = [("bot", bot), ("channel", channel), ("language", language)];
        let asked =
            prompts::reply_conversation(prompt, &values, &history, &redacted, cfg.context_tokens);
        let every = Duration::from_millis(cfg.stream_every_ms);
        let mut so_far = String::new();
        let mut last = Instant::now();
        let mut on_delta = |d: &str| {
            so_far.push_str(d);
            if last.elapsed() >= every {
                self.out
                    .push_reply(channel, &id, position.offset, bot, &so_far, false);
                last = Instant::now();
            }
        };
        let options = CallOptions {
            max_tokens: Some(cfg.max_tokens),
            json: false,
            temperature: None,
        };
        let answer = m
            .call(&asked, options, Some(&mut on_delta))
            .ok()
            .map(|c| c.content);
        let fallback = answer.is_none();
        let answer = answer.unwrap_or_else(|| cfg.fallback_reply.clone());
        if fallback {
            PipelineStats::bump(&self.p.stats.fallbacks);
        } else {
            PipelineStats::bump(&self.p.stats.replies);
        }
        self.out
            .push_reply(channel, &id, position.offset, bot, &answer, true);
        if let Err(why) = self
            .out
            .publish_reply(channel, &id, position, bot, &answer, fallback)
        {
            PipelineStats::bump(&self.p.stats.publish_failures);
            tracing::warn!(channel, %why, "AI reply not published");
        }
    }

    fn redacted(&self, text: &str) -> String {
        if self.p.cfg.redact.is_empty() {
            return text.to_owned();
        }
        let found = self.local.entities.extract(text);
        prompts::redact(text, &found, &self.p.cfg.redact)
    }

    /// The channel's messages before `position`, oldest first, as reply context
    /// (annotations and revisions left out, redacted as configured).
    fn history(&self, channel: &str, position: Position) -> Vec<Turn> {
        let limit = self
            .p
            .cfg
            .history
            .min(switchboard_protocol::history::MAX_PAGE as usize);
        if limit == 0 || position.offset <= 1 {
            return Vec::new();
        }
        let page = switchboard_protocol::history::Page {
            epoch: Some(position.epoch),
            before: Some(position.offset),
            limit: limit as u32,
            reverse: true,
            ..Default::default()
        };
        let Ok(rx) = self.out.engine.history(channel, page) else {
            return Vec::new();
        };
        let Some(reply) = super::results::wait_for(rx) else {
            return Vec::new();
        };
        let bot = self.p.cfg.bot.as_str();
        let mut turns: Vec<Turn> = reply
            .publications
            .iter()
            .filter(|e| e.revises.is_none() && e.revised.is_none_or(|r| !r.deleted))
            .filter(|e| e.event.as_deref() != Some("ai:annotation"))
            .filter_map(|e| {
                let value = prompts::value_of(e.format, &e.data)?;
                let text = prompts::text_of(&value)?;
                Some(Turn {
                    bot: e.from.as_deref() == Some(bot),
                    text: self.redacted(text),
                })
            })
            .collect();
        turns.reverse();
        turns
    }
}

/// The text of a tapped message, if its payload has one.
fn message_text(item: &AiItem) -> Option<String> {
    let value = prompts::value_of(item.format, &item.data)?;
    prompts::text_of(&value).map(str::to_owned)
}

/// The fail-open/closed mode of a pipeline, as configured.
pub fn mode_name(mode: AiMode) -> &'static str {
    match mode {
        AiMode::Off => "off",
        AiMode::Open => "open",
        AiMode::Closed => "closed",
    }
}
