//! What the call code shares: the call states and their allowed moves, the views the
//! HTTP API shows, and the work the call thread takes.
//!
//! Owns these types. Does not own any call.

use serde::Serialize;
use serde_json::Value;
use switchboard_engine::control::{Caller, ControlCommand};
use switchboard_engine::ConnKey;

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, not yet rung.
    Initiating,
    /// The callee's devices (or the room) ring.
    Ringing,
    /// Answered; signaling under way.
    Accepted,
    /// Both sides exchanged signaling data.
    InProgress,
    /// Declined by the callee.
    Rejected,
    /// Not answered in time.
    Missed,
    /// Hung up (or cancelled while ringing).
    Ended,
    /// Broke: a participant dropped and did not come back, or the server restarted.
    Failed,
}

impl State {
    /// Whether the call is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Rejected | State::Missed | State::Ended | State::Failed
        )
    }
}

/// The transitions the state machine allows.
pub fn allowed(from: State, to: State) -> bool {
    use State::*;
    matches!(
        (from, to),
        (Initiating, Ringing | Failed)
            | (Ringing, Accepted | Rejected | Missed | Ended | Failed)
            | (Accepted, InProgress | Ended | Failed)
            | (InProgress, Ended | Failed)
    )
}

/// A participant of a call, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// The user.
    pub user: String,
    /// Its connection (`shard.slot.generation`).
    pub client: String,
    /// Its device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Its connection dropped; it has until the grace period ends to come back.
    pub lost: bool,
    /// Its last quality report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Value>,
}

/// An active call, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    /// Its id.
    pub id: u64,
    /// Where it is.
    pub state: State,
    /// Who called.
    pub caller: String,
    /// Who was called (user calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<String>,
    /// The room (room calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Media label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// Started, Unix milliseconds.
    pub created: u64,
    /// Answered, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<u64>,
    /// Who is in it.
    pub participants: Vec<ParticipantView>,
}

/// One finished (or active) call in the log.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Its id.
    pub id: u64,
    /// Who called.
    pub caller: String,
    /// Who was called.
    pub callee: Option<String>,
    /// The room.
    pub room: Option<String>,
    /// Media label.
    pub media: Option<String>,
    /// Started, Unix milliseconds.
    pub created: u64,
    /// Answered.
    pub answered: Option<u64>,
    /// Ended.
    pub ended: Option<u64>,
    /// From answer to end, milliseconds.
    pub duration_ms: Option<u64>,
    /// `completed`, `cancelled`, `rejected`, `missed` or `failed` (absent: active).
    pub outcome: Option<String>,
    /// Why it ended, when someone said.
    pub reason: Option<String>,
    /// Users who took part.
    pub participants: Vec<String>,
}

pub(super) type Reply<T> = tokio::sync::oneshot::Sender<T>;

pub(super) enum Work {
    Shard {
        shard: u16,
        conn: ConnKey,
        req_id: u32,
        caller: Caller,
        cmd: ControlCommand,
    },
    Gone(Caller, bool),
    /// A letter from another node's call worker.
    Letter(Vec<u8>),
    Active(Reply<Vec<CallView>>),
    Log(Option<String>, u32, Reply<Result<Vec<LogEntry>, String>>),
}
