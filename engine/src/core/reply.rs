//! Answering a client: results, errors, values computed elsewhere.
//!
//! Owns queueing a frame on a connection and the reply helpers every feature uses, so
//! replies are encoded for the connection's wire format in one place, and the results
//! counted by command. Does not own what the reply says.

use bytes::Bytes;
use serde::Serialize;
use switchboard_protocol::envelope::{self, Empty};

use switchboard_protocol::{CloseCode, ErrorCode, Format, Payload};

use super::conn::{mark_dirty, ConnKey, ConnState};
use super::ShardCore;
use crate::mesh::{Answer, Refused, ReplyBody, ReplyKind, ShardMsg, StreamReply};
use crate::metrics::CommandKind;

impl ShardCore {
    /// Whether command `id` of the connection in `slot` asked for no answer on success:
    /// a Socket.IO event emitted without an ack.
    pub(super) fn asked_no_ack(&self, slot: u32, id: u32) -> bool {
        id == envelope::sio::NO_ACK && self.conns[slot as usize].format == Format::SocketIo
    }

    /// The key of the connection in `slot` (for answers that come back later).
    pub(super) fn key(&self, slot: u32) -> ConnKey {
        ConnKey {
            slot,
            gen: self.conns[slot as usize].gen,
        }
    }

    /// Where the answer to command `id` of `slot` goes, from whichever shard computes it.
    pub(super) fn asker<T>(&self, slot: u32, id: u32) -> Answer<T> {
        Answer::Client {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
        }
    }

    pub(super) fn enqueue(&mut self, slot: u32, frame: Bytes) {
        let conn = &mut self.conns[slot as usize];
        if conn.out.push(frame, self.cfg.max_outbound_bytes).is_err() {
            return self.slow_consumer(slot);
        }
        mark_dirty(conn, slot, &mut self.dirty);
    }

    /// Answer command `id` with an empty result.
    pub(super) fn reply_ok(&mut self, slot: u32, id: u32) {
        self.metrics.answered(self.answering, None);
        self.send_result(slot, id, &Empty {});
    }

    /// Answer command `id` with `value` (counted by the caller).
    pub(super) fn send_result<T: Serialize>(&mut self, slot: u32, id: u32, value: &T) {
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, value));
    }

    /// Queue a push (an object with a `push` field) for the connection.
    pub(super) fn send_push<T: Serialize>(&mut self, slot: u32, push: &T) {
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_push(format, push));
    }

    /// Answer command `id` with error 114 and when to retry.
    pub(super) fn reply_rate_limited(&mut self, slot: u32, id: u32, why: &str, retry_ms: u32) {
        self.metrics
            .answered(self.answering, Some(ErrorCode::RateLimited as u16));
        let format = self.conns[slot as usize].format;
        self.enqueue(
            slot,
            envelope::encode_rate_limited(format, id, why, retry_ms),
        );
    }

    /// The `disconnect` push before a close frame (application codes and 1001).
    pub(super) fn disconnect_frame(
        &self,
        slot: u32,
        code: CloseCode,
        reason: &str,
        reconnect: bool,
        reconnect_after_ms: Option<u32>,
    ) -> Bytes {
        let format = self.conns[slot as usize].format;
        let after = reconnect_after_ms.filter(|_| reconnect);
        envelope::encode_disconnect_after(format, code.0, reason, reconnect, after)
    }

    pub(super) fn reply_err(&mut self, slot: u32, id: u32, code: ErrorCode, message: &str) {
        self.metrics.answered(self.answering, Some(code as u16));
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_error(format, id, code, message));
    }

    /// Send a value computed here (the owner) where it was asked for: a connection's
    /// command (here or on another shard), or the server API.
    pub(super) fn answer_with<T>(
        &mut self,
        answer: Answer<T>,
        value: T,
        command: CommandKind,
        wrap: fn(T) -> ReplyBody,
    ) {
        match answer {
            Answer::Client {
                shard,
                conn,
                req_id,
            } => {
                let result = Ok(wrap(value));
                if shard == self.id {
                    self.replied(conn, req_id, command, result);
                } else {
                    self.send_to(
                        shard,
                        ShardMsg::Reply {
                            conn,
                            req_id,
                            command,
                            result,
                        },
                    );
                }
            }
            Answer::Api(tx) => {
                let _ = tx.send(value);
            }
        }
    }

    /// Answer a connection's command with a result computed elsewhere.
    pub(super) fn replied(
        &mut self,
        conn: ConnKey,
        req_id: u32,
        command: CommandKind,
        result: Result<ReplyBody, Refused>,
    ) {
        let open = self
            .conns
            .get(conn.slot as usize)
            .is_some_and(|c| c.gen == conn.gen && c.state == ConnState::Open);
        if !open {
            return;
        }
        let format = self.conns[conn.slot as usize].format;
        if result.is_ok() {
            self.metrics.answered(command, None);
        }
        let frame = match result {
            Ok(ReplyBody::Empty) => envelope::encode_result(format, req_id, &Empty {}),
            Ok(ReplyBody::Scheduled { id, at }) => {
                #[derive(serde::Serialize)]
                struct Scheduled {
                    schedule: u64,
                    at: u64,
                }
                let s = Scheduled { schedule: id, at };
                envelope::encode_result(format, req_id, &s)
            }
            Ok(ReplyBody::Receipts(list)) => envelope::encode_result(format, req_id, &list),
            Ok(ReplyBody::Presence(list)) => envelope::encode_result(format, req_id, &list),
            Ok(ReplyBody::Value(v)) => envelope::encode_result(format, req_id, &v),
            Err(e) => {
                self.metrics.answered(command, Some(e.code as u16));
                envelope::encode_error(format, req_id, e.code, &e.message)
            }
        };
        self.enqueue(conn.slot, frame);
    }

    /// A stream answer carrying publications (history, recovery, an inbox backlog),
    /// as a reply to a command or as a push; one that cannot be encoded in the
    /// connection's format is refused.
    pub(super) fn send_stream(&mut self, slot: u32, r: &StreamReply) {
        let format = self.conns[slot as usize].format;
        let to = match r.to {
            ReplyKind::Command(id) => envelope::ReplyTo::Id(id),
            ReplyKind::Resumed | ReplyKind::Server => envelope::ReplyTo::Push {
                push: "subscribed",
                channel: &r.channel,
            },
            ReplyKind::Inbox => envelope::ReplyTo::Push {
                push: "inbox",
                channel: &r.channel,
            },
        };
        let pubs = r.publications.iter().map(|e| envelope::StoredPublication {
            offset: e.offset,
            from: e.from.as_deref(),
            event: e.event.as_deref(),
            meta: e.meta.as_ref().map(|m| Payload {
                format: e.format,
                raw: m,
            }),
            data: Payload {
                format: e.format,
                raw: &e.data,
            },
            revises: e.revises,
            revised: e.revised,
        });
        match envelope::encode_stream_reply(
            format,
            to,
            r.top,
            r.recovered,
            pubs,
            r.cursor.as_deref(),
        ) {
            Ok(frame) => {
                // Unbounded: the client asked for it, and `history_size` (a page: 1,000
                // publications) bounds it.
                let conn = &mut self.conns[slot as usize];
                conn.out.push_unbounded(frame);
                mark_dirty(conn, slot, &mut self.dirty);
            }
            Err(e) => {
                let channel = r.channel.clone();
                self.refuse(slot, r.to, &channel, ErrorCode::BadRequest, &e.to_string())
            }
        }
    }
}
