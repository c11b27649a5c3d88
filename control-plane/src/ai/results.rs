//! Where a pipeline's results go: annotation publications linked to the message, the
//! bot's reply streamed to the channel as pushes that update one message (coalesced)
//! and then published, and fail-closed messages released to their channel.
//!
//! Owns the shapes clients see (`docs/AI.md`): the annotation
//! (`event = "ai:annotation"`, meta `{"ai":"annotation","re":OFFSET}`), the `ai_reply`
//! push (`{"push":"ai_reply","channel","id","re","from","text","done"}`, Socket.IO
//! event `ai:reply`, coalescing key `ai:CHANNEL:ID` so a slow client gets the latest
//! text, not a backlog) and the reply publication (meta
//! `{"ai":"reply","re":OFFSET,"id":ID}`). Does not own what is found or asked.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use switchboard_engine::control::{frames, Push, PushTo};
use switchboard_engine::mesh::{PublishReply, Refused, Sequenced};
use switchboard_engine::{EngineHandle, ShardMsg, ShardSender};
use switchboard_protocol::{Format, Payload, Position};

use super::findings::Findings;

/// The engine, as a pipeline worker uses it.
#[derive(Clone)]
pub struct Outlet {
    /// For publishing and reading history.
    pub engine: Arc<EngineHandle>,
    /// For pushes and releases.
    pub shards: ShardSender,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outlet")
    }
}

#[derive(Serialize)]
struct Annotation<'a> {
    re: Re,
    #[serde(flatten)]
    findings: &'a Findings,
}

#[derive(Serialize)]
struct Re {
    epoch: String,
    offset: u64,
}

impl From<Position> for Re {
    fn from(p: Position) -> Re {
        Re {
            epoch: p.epoch_hex().as_str().to_owned(),
            offset: p.offset,
        }
    }
}

#[derive(Serialize)]
struct ReplyPush<'a> {
    push: &'static str,
    channel: &'a str,
    id: &'a str,
    re: u64,
    from: &'a str,
    text: &'a str,
    done: bool,
}

/// Wait for a shard's answer (on a worker or blocking thread, never a runtime one):
/// `None` when the shard dropped the question (it stopped).
pub fn wait_for<T>(rx: tokio::sync::oneshot::Receiver<T>) -> Option<T> {
    rx.blocking_recv().ok()
}

/// Wait for a publication's position.
fn wait(rx: tokio::sync::oneshot::Receiver<Sequenced>) -> Result<Position, String> {
    match wait_for(rx) {
        Some(Ok((p, _))) => Ok(p),
        Some(Err(refused)) => Err(refused.message),
        None => Err("the engine stopped".into()),
    }
}

impl Outlet {
    /// Publish `data` (JSON) to `channel` as `bot`, retrying briefly while the owner's
    /// inbox is full; gives the position.
    pub fn publish(
        &self,
        channel: &str,
        data: &serde_json::Value,
        meta: &serde_json::Value,
        bot: &str,
        event: Option<&str>,
    ) -> Result<Position, String> {
        let data = serde_json::to_vec(data).map_err(|e| e.to_string())?;
        let meta = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
        let payload = |raw| Payload {
            format: Format::Json,
            raw,
        };
        for _ in 0..1_000 {
            match self.engine.publish_event(
                channel,
                payload(&data),
                Some(payload(&meta)),
                None,
                Some(bot.into()),
                event.map(Arc::from),
            ) {
                Ok(rx) => return wait(rx),
                Err(switchboard_engine::Error::Overloaded) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the channel's shard stayed overloaded".into())
    }

    /// Publish the annotation of the message at `re`.
    pub fn annotate(
        &self,
        channel: &str,
        re: Position,
        findings: &Findings,
        bot: &str,
    ) -> Result<Position, String> {
        let data = serde_json::to_value(Annotation {
            re: re.into(),
            findings,
        })
        .map_err(|e| e.to_string())?;
        let meta = json!({"ai": "annotation", "re": re.offset});
        self.publish(channel, &data, &meta, bot, Some("ai:annotation"))
    }

    /// Push the reply `id` (to the message at offset `re`) as it stands to the
    /// channel's subscribers on every shard, replacing an unsent earlier state.
    pub fn push_reply(&self, channel: &str, id: &str, re: u64, bot: &str, text: &str, done: bool) {
        let push = ReplyPush {
            push: "ai_reply",
            channel,
            id,
            re,
            from: bot,
            text,
            done,
        };
        let push = Arc::new(Push {
            to: PushTo::Channel {
                channel: channel.into(),
                except: None,
                frames: frames(&push),
            },
            coalesce: Some(format!("ai:{channel}:{id}").into()),
        });
        for shard in 0..self.shards.shards() {
            let msg = ShardMsg::Push(push.clone());
            crate::shards::send_patiently(&self.shards, shard as u16, msg, "an AI reply push");
        }
    }

    /// Publish the finished reply `id` (to the message at `re`) as `bot`.
    pub fn publish_reply(
        &self,
        channel: &str,
        id: &str,
        re: Position,
        bot: &str,
        text: &str,
        fallback: bool,
    ) -> Result<Position, String> {
        let mut meta = json!({"ai": "reply", "re": re.offset, "id": id});
        if fallback {
            meta["fallback"] = json!(true);
        }
        self.publish(channel, &json!({ "text": text }), &meta, bot, None)
    }

    /// Sequence a screened fail-closed message: its publisher gets the position (or
    /// the refusal) as if it had never waited, and so does the caller.
    pub fn release(&self, item: switchboard_engine::ai_tap::AiItem) -> Result<Position, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let payload = |raw| Payload {
            format: item.format,
            raw,
        };
        let reply = PublishReply::Tee(Box::new(item.reply), tx);
        let req = switchboard_engine::mesh::SequenceReq::new(
            &item.channel,
            payload(&item.data),
            item.meta.as_deref().map(payload),
            item.key.as_deref(),
            item.from,
            reply,
            item.created,
        )
        .by(item.author)
        .screened();
        let owner = self.shards.home_of(&item.channel);
        let msg = ShardMsg::Sequence(Box::new(req));
        crate::shards::send_patiently(&self.shards, owner as u16, msg, "a released message");
        wait(rx)
    }

    /// Refuse a held message's publisher (an operator rejected it, or too many are
    /// held).
    pub fn refuse(&self, reply: PublishReply, refused: Refused) {
        if let Some((shard, msg)) = reply.refuse(refused) {
            crate::shards::send_patiently(&self.shards, shard, msg, "a refusal");
        }
    }
}
