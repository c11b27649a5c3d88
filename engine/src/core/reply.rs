//! Answering a client: results, errors, values computed elsewhere.
//!
//! Owns queueing a frame on a connection and the reply helpers every feature uses, so
//! replies are encoded for the connection's wire format in one place, and the results
//! counted by command. Does not own what the reply says.

use bytes::Bytes;
use switchboard_protocol::envelope::{self, Empty};
use switchboard_protocol::ErrorCode;

use super::conn::{mark_dirty, ConnKey, ConnState};
use super::ShardCore;
use crate::mesh::{Answer, Refused, ReplyBody, ShardMsg};
use crate::metrics::CommandKind;

impl ShardCore {
    pub(super) fn enqueue(&mut self, slot: u32, frame: Bytes) {
        let conn = &mut self.conns[slot as usize];
        if conn.out.push(frame, self.cfg.max_outbound_bytes).is_err() {
            return self.slow_consumer(slot);
        }
        mark_dirty(conn, slot, &mut self.dirty);
    }

    pub(super) fn reply_ok(&mut self, slot: u32, id: u32) {
        self.metrics.answered(self.answering, None);
        let format = self.conns[slot as usize].format;
        self.enqueue(slot, envelope::encode_result(format, id, &Empty {}));
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
}
