//! The AI tap: how publications of namespaces with an AI pipeline reach the control
//! plane, which runs the pipeline off the shards.
//!
//! Owns [`AiTap`] (one bounded queue per pipeline worker, chosen by the channel's hash
//! so one channel's messages are processed in order), [`AiItem`] (what a shard hands
//! over), [`AiMode`] and the tap's counters. A shard never waits on it: a full queue
//! means the item is dropped (fail-open: the message was already delivered) or the
//! publisher is refused (fail-closed: nothing was delivered or acknowledged).
//!
//! Does not own the pipelines (control plane, `ai::pipeline`) or where the shard taps
//! (`core::ai`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use switchboard_protocol::{Format, Position};

use crate::publications::PublishReply;

/// What a namespace's AI pipeline may do to its messages' delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AiMode {
    /// No pipeline.
    #[default]
    Off,
    /// Fail-open: a message is delivered first; the pipeline reads it afterwards, and
    /// when the pipeline cannot (queue full, model down) the message simply has no
    /// annotations.
    Open,
    /// Fail-closed: a message is delivered once its pipeline has run; while the
    /// pipeline cannot run it, the message is held for moderation (released when the
    /// model is back or by an operator), never delivered unscreened.
    Closed,
}

/// A publication handed to a pipeline.
#[derive(Debug)]
pub struct AiItem {
    /// Namespace of the pipeline (its configured name).
    pub pipeline: u16,
    /// Channel name.
    pub channel: Arc<str>,
    /// Where it was sequenced; `None` for a fail-closed message not yet delivered.
    pub position: Option<Position>,
    /// Payload and its format.
    pub data: Bytes,
    /// Format of `data` and `meta`.
    pub format: Format,
    /// Metadata, in `format`.
    pub meta: Option<Bytes>,
    /// Idempotency key the publisher gave (fail-closed: kept for the release).
    pub key: Option<Box<str>>,
    /// Sender's user id (direct messages).
    pub from: Option<Arc<str>>,
    /// The publishing user.
    pub author: Option<Arc<str>>,
    /// The publisher's answer (fail-closed: answered when the message is released or
    /// rejected; [`PublishReply::None`] otherwise).
    pub reply: PublishReply,
    /// When the publication entered the server.
    pub created: Instant,
}

/// How many items the tap handed over and why others were not.
#[derive(Debug, Default)]
pub struct AiTapStats {
    /// Items queued for a pipeline.
    pub queued: AtomicU64,
    /// Fail-open items dropped because the pipeline's queue was full (the message was
    /// delivered without AI).
    pub dropped: AtomicU64,
    /// Fail-closed publications refused because the pipeline's queue was full.
    pub refused: AtomicU64,
}

/// One pipeline as the shards see it.
#[derive(Debug)]
struct TapPipeline {
    namespace: Box<str>,
    mode: AiMode,
    /// The bot user whose publications (annotations, replies) are not tapped again.
    bot: Arc<str>,
    /// One queue per worker.
    queues: Box<[Sender<Box<AiItem>>]>,
}

/// Where shards hand publications of AI namespaces (clone freely).
#[derive(Debug, Clone)]
pub struct AiTap {
    pipelines: Arc<[TapPipeline]>,
    stats: Arc<AiTapStats>,
}

/// A pipeline's side of the tap: one receiver per worker.
#[derive(Debug)]
pub struct AiQueues {
    /// The namespace.
    pub namespace: String,
    /// Its workers' queues.
    pub receivers: Vec<Receiver<Box<AiItem>>>,
}

/// One pipeline to tap: its namespace, mode, bot user, worker count and the bound of
/// each worker's queue.
#[derive(Debug, Clone)]
pub struct TapSpec {
    /// Namespace name (`chat` for `chat:room-1`).
    pub namespace: String,
    /// Fail-open or fail-closed.
    pub mode: AiMode,
    /// The pipeline's bot user.
    pub bot: String,
    /// Workers (the pipeline's concurrency cap).
    pub workers: usize,
    /// Items each worker's queue holds.
    pub queue: usize,
}

impl AiTap {
    /// A tap for `specs`, and each pipeline's receivers (same order).
    pub fn new(specs: &[TapSpec]) -> (AiTap, Vec<AiQueues>) {
        let mut pipelines = Vec::with_capacity(specs.len());
        let mut sides = Vec::with_capacity(specs.len());
        for s in specs {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..s.workers.max(1))
                .map(|_| crossbeam_channel::bounded(s.queue.max(1)))
                .unzip();
            pipelines.push(TapPipeline {
                namespace: s.namespace.as_str().into(),
                mode: s.mode,
                bot: s.bot.as_str().into(),
                queues: txs.into(),
            });
            sides.push(AiQueues {
                namespace: s.namespace.clone(),
                receivers: rxs,
            });
        }
        (
            AiTap {
                pipelines: pipelines.into(),
                stats: Arc::default(),
            },
            sides,
        )
    }

    /// The tap's counters.
    pub fn stats(&self) -> &Arc<AiTapStats> {
        &self.stats
    }

    /// The pipeline of namespace `name`, if one is tapped.
    pub fn pipeline_of(&self, name: &str) -> Option<u16> {
        self.pipelines
            .iter()
            .position(|p| &*p.namespace == name)
            .map(|i| i as u16)
    }

    /// Pipeline `i`'s mode.
    pub fn mode(&self, i: u16) -> AiMode {
        self.pipelines
            .get(i as usize)
            .map_or(AiMode::Off, |p| p.mode)
    }

    /// Whether a publication sent as `from` is the pipeline's own (not tapped again).
    pub fn is_bot(&self, i: u16, from: Option<&str>) -> bool {
        match (self.pipelines.get(i as usize), from) {
            (Some(p), Some(f)) => &*p.bot == f,
            _ => false,
        }
    }

    /// Whether pipeline `i`'s queue for a channel of hash `channel_hash` is full (a
    /// caller checks before building an item it would only drop).
    pub fn is_full(&self, i: u16, channel_hash: u64) -> bool {
        self.pipelines
            .get(i as usize)
            .is_none_or(|p| p.queues[(channel_hash % p.queues.len() as u64) as usize].is_full())
    }

    /// Count a fail-open item dropped because its queue was full.
    pub fn dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Hand `item` to its pipeline's worker for its channel; given back when that
    /// queue is full (the caller counts it as dropped or refuses the publisher).
    pub fn offer(&self, item: Box<AiItem>, channel_hash: u64) -> Result<(), Box<AiItem>> {
        let Some(p) = self.pipelines.get(item.pipeline as usize) else {
            return Err(item);
        };
        let q = &p.queues[(channel_hash % p.queues.len() as u64) as usize];
        match q.try_send(item) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(item)) | Err(TrySendError::Disconnected(item)) => Err(item),
        }
    }

    /// A fail-open namespace's publication sequenced outside the shards (a shared
    /// channel of nodes sharing Redis, once Redis gave it `position`): handed to its
    /// pipeline like [`crate::core`]'s tap does, dropped and counted when the queue is
    /// full. Nothing happens for channels without a fail-open pipeline or for the
    /// pipeline's own publications.
    #[allow(clippy::too_many_arguments)]
    pub fn after_shared(
        &self,
        channel: &Arc<str>,
        position: Position,
        data: &Bytes,
        format: Format,
        meta: Option<&Bytes>,
        from: Option<&Arc<str>>,
        author: Option<&Arc<str>>,
        created: Instant,
    ) {
        let Some((ns, _)) = channel.split_once(':') else {
            return;
        };
        let Some(pipeline) = self.pipeline_of(ns) else {
            return;
        };
        if self.mode(pipeline) != AiMode::Open || self.is_bot(pipeline, from.map(|f| &**f)) {
            return;
        }
        let hash = channel_hash(channel);
        if self.is_full(pipeline, hash) {
            return self.dropped();
        }
        let item = Box::new(AiItem {
            pipeline,
            channel: channel.clone(),
            position: Some(position),
            data: data.clone(),
            format,
            meta: meta.cloned(),
            key: None,
            from: from.cloned(),
            author: author.cloned(),
            reply: PublishReply::None,
            created,
        });
        if self.offer(item, hash).is_err() {
            self.dropped();
        }
    }

    /// Items waiting in each pipeline's queues (namespace, depth).
    pub fn depths(&self) -> Vec<(&str, usize)> {
        self.pipelines
            .iter()
            .map(|p| (&*p.namespace, p.queues.iter().map(|q| q.len()).sum()))
            .collect()
    }
}

/// A channel's hash, choosing its pipeline worker (one channel, one worker, in order).
pub fn channel_hash(channel: &str) -> u64 {
    // FNV-1a: stable across shards and nodes (a channel may be sequenced by different
    // shards over its life), no per-process seed needed, a few ns for a channel name.
    channel.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_hashes_the_same_everywhere() {
        assert_eq!(channel_hash("chat:a"), channel_hash("chat:a"));
        assert_ne!(channel_hash("chat:a"), channel_hash("chat:b"));
        assert_eq!(channel_hash(""), 0xcbf2_9ce4_8422_2325);
    }

    fn item(pipeline: u16) -> Box<AiItem> {
        Box::new(AiItem {
            pipeline,
            channel: "chat:a".into(),
            position: None,
            data: Bytes::from_static(b"\"hi\""),
            format: Format::Json,
            meta: None,
            key: None,
            from: None,
            author: None,
            reply: PublishReply::None,
            created: crate::clock::mono(),
        })
    }

    #[test]
    fn a_full_queue_gives_the_item_back_and_channels_keep_their_worker() {
        let spec = TapSpec {
            namespace: "chat".into(),
            mode: AiMode::Open,
            bot: "bot".into(),
            workers: 2,
            queue: 1,
        };
        let (tap, sides) = AiTap::new(&[spec]);
        assert_eq!(tap.pipeline_of("chat"), Some(0));
        assert_eq!(tap.pipeline_of("other"), None);
        assert!(tap.offer(item(0), 4).is_ok());
        assert!(tap.offer(item(0), 4).is_err(), "worker 0's queue holds one");
        assert!(tap.is_full(0, 4) && !tap.is_full(0, 5));
        assert!(tap.offer(item(0), 5).is_ok(), "worker 1 has room");
        assert!(
            tap.is_full(0, 5) && tap.is_full(7, 5),
            "no such pipeline: full"
        );
        assert_eq!(sides[0].receivers[0].len(), 1);
        assert_eq!(sides[0].receivers[1].len(), 1);
        assert_eq!(tap.depths(), vec![("chat", 2)]);
        assert!(tap.is_bot(0, Some("bot")));
        assert!(!tap.is_bot(0, Some("alice")));
        assert!(!tap.is_bot(0, None));
        assert!(tap.offer(item(3), 1).is_err(), "no such pipeline");
    }
}
