//! The shard's side of the AI tap: which publications go to a pipeline, and when.
//!
//! Owns the two places a publication meets its namespace's pipeline: fail-closed
//! namespaces' publications are handed over *instead of* being sequenced (the
//! pipeline releases them back, `screened`), fail-open ones *after* they were
//! delivered and answered. Neither waits: a full queue drops the fail-open item (the
//! message went out without AI) or refuses the fail-closed publisher (nothing was
//! delivered or acknowledged). Does not own the queues ([`crate::ai_tap`]) or the
//! pipelines (control plane).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::{ErrorCode, Payload, Position};

use super::ShardCore;
use crate::ai_tap::{channel_hash, AiItem, AiMode, AiTap};
use crate::journal::Policies;
use crate::mesh::{PublishReply, Refused};

/// Marks a policy without a pipeline in [`ShardAi::by_policy`].
const NO_PIPELINE: u16 = u16::MAX;

/// The tap and which policy (namespace) feeds which pipeline.
#[derive(Debug)]
pub(super) struct ShardAi {
    tap: AiTap,
    /// Pipeline of each policy index, or [`NO_PIPELINE`].
    by_policy: Box<[u16]>,
}

impl ShardAi {
    /// The tap as seen by a shard whose namespaces are `names` (policy `i + 1` is
    /// `names[i]`; policy 0, unconfigured namespaces, never has a pipeline).
    pub(super) fn new<'a>(tap: AiTap, names: impl Iterator<Item = &'a str>) -> ShardAi {
        let by_policy = std::iter::once(NO_PIPELINE)
            .chain(names.map(|n| tap.pipeline_of(n).unwrap_or(NO_PIPELINE)))
            .collect();
        ShardAi { tap, by_policy }
    }

    fn pipeline(&self, policies: &Policies, channel: &str) -> Option<u16> {
        let p = *self.by_policy.get(policies.resolve(channel) as usize)?;
        (p != NO_PIPELINE).then_some(p)
    }
}

/// A publication as the owner shard received it.
pub(super) struct Incoming<'a> {
    pub(super) channel: &'a str,
    pub(super) data: Payload<'a>,
    pub(super) meta: Option<Payload<'a>>,
    pub(super) key: Option<&'a str>,
    pub(super) from: &'a Option<Arc<str>>,
    pub(super) author: &'a Option<Arc<str>>,
    pub(super) created: Instant,
}

impl ShardCore {
    /// A fail-closed namespace's publication, not yet screened: hand it to its pipeline
    /// with its publisher's `reply` (`None`: taken, or refused because the pipeline's
    /// queue is full). Anything else gives `reply` back to be sequenced now.
    pub(super) fn ai_gate(&mut self, p: Incoming<'_>, reply: PublishReply) -> Option<PublishReply> {
        let Some(ai) = &self.ai else {
            return Some(reply);
        };
        let pipeline = match ai.pipeline(self.streams.policies(), p.channel) {
            Some(i) if ai.tap.mode(i) == AiMode::Closed => i,
            _ => return Some(reply),
        };
        if ai.tap.is_bot(pipeline, p.from.as_deref()) {
            return Some(reply);
        }
        let item = Box::new(AiItem {
            pipeline,
            channel: p.channel.into(),
            position: None,
            data: Bytes::copy_from_slice(p.data.raw),
            format: p.data.format,
            meta: p.meta.map(|m| Bytes::copy_from_slice(m.raw)),
            key: p.key.map(Box::from),
            from: p.from.clone(),
            author: p.author.clone(),
            reply,
            created: p.created,
        });
        if let Err(item) = ai.tap.offer(item, channel_hash(p.channel)) {
            ai.tap.stats().refused.fetch_add(1, Ordering::Relaxed);
            let refused = Refused {
                code: ErrorCode::Overloaded,
                message: "the channel's AI moderation queue is full; retry".into(),
            };
            self.answer_publish(item.reply, Err(refused));
        }
        None
    }

    /// A fail-open namespace's publication was delivered at `position`: hand a copy to
    /// its pipeline (dropped, and counted, when the pipeline's queue is full).
    pub(super) fn ai_after(&mut self, p: Incoming<'_>, position: Position) {
        let Some(ai) = &self.ai else {
            return;
        };
        let pipeline = match ai.pipeline(self.streams.policies(), p.channel) {
            Some(i) if ai.tap.mode(i) == AiMode::Open => i,
            _ => return,
        };
        if ai.tap.is_bot(pipeline, p.from.as_deref()) {
            return;
        }
        let hash = channel_hash(p.channel);
        if ai.tap.is_full(pipeline, hash) {
            // The pipeline is behind (a slow model): nothing is built only to be dropped.
            return ai.tap.dropped();
        }
        // One copy of the payload for the control plane; only in namespaces with a
        // pipeline, whose work costs orders of magnitude more.
        let item = Box::new(AiItem {
            pipeline,
            channel: p.channel.into(),
            position: Some(position),
            data: Bytes::copy_from_slice(p.data.raw),
            format: p.data.format,
            meta: p.meta.map(|m| Bytes::copy_from_slice(m.raw)),
            key: None,
            from: p.from.clone(),
            author: p.author.clone(),
            reply: PublishReply::None,
            created: p.created,
        });
        if ai.tap.offer(item, hash).is_err() {
            ai.tap.dropped();
        }
    }
}
