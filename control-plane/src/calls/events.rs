//! The `call` pushes a client gets: `{"push": "call", "event": ..., "call": id, ...}`.
//!
//! Owns their shape. Does not own when they are sent (`book`).

use serde::Serialize;
use serde_json::Value;
use switchboard_engine::control::{self, Frames, PeerId};
use switchboard_engine::Refused;
use switchboard_protocol::ErrorCode;

/// What a client is told, pushed as `{"push": "call", "event": ..., "call": id, ...}`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Event<'a> {
    pub(super) push: &'static str,
    pub(super) event: &'static str,
    pub(super) call: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<Who<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) by: Option<Who<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) media: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Who<'a> {
    pub(super) user: &'a str,
    /// `shard.slot.generation`, after `node/` for a connection of another node.
    #[serde(serialize_with = "display")]
    pub(super) client: &'a PeerId,
}

pub(super) fn display<S: serde::Serializer>(c: &&PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

/// An event, encoded once per format for connections here, and as JSON for letters
/// to other nodes.
#[derive(Debug)]
pub(super) struct Said {
    pub(super) frames: Frames,
    pub(super) value: Value,
}

impl Said {
    pub(super) fn of<T: Serialize>(e: &T) -> Said {
        Said {
            frames: control::frames(e),
            value: serde_json::to_value(e).unwrap_or(Value::Null),
        }
    }
}

pub(super) fn event(name: &'static str, call: u64) -> Event<'static> {
    Event {
        push: "call",
        event: name,
        call,
        ..Default::default()
    }
}

pub(super) fn refuse(code: ErrorCode, message: &str) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

pub(super) fn not_found() -> Refused {
    refuse(ErrorCode::NotFound, "no such call (or it is over)")
}
