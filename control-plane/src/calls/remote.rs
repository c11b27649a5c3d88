//! Calls between nodes: a call lives on the node where it was placed (its *home*),
//! and connections on other nodes take part through letters
//! ([`crate::cluster::mail`]).
//!
//! A call's id carries its home's tag (`id >> TAG_SHIFT`), so the call worker of any
//! node tells at once whether a `call_accept`, `call_reject`, `call_end` or
//! `call_signal` is for a call it holds; if not, it forwards the command to the home
//! (with the connection's user, device and, for an accept, its subscriptions) and
//! answers the connection when the home's answer comes back — or with `unavailable`
//! after [`ANSWER_WITHIN`]. The home pushes call events for remote participants back
//! as letters; a participant's departure goes to the home like a local one. A home
//! that leaves the registry ends its calls for the connections here (`failed`); a
//! participant whose node leaves is lost to the home, with the usual grace period.
//!
//! Owns the letters' format, the commands waiting for a home's answer and which local
//! connections take part in calls held elsewhere. Does not own the call states
//! (`super::book`) or the letters' transport.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_engine::control::{self, Caller, ControlCommand, PeerId, Push, PushTo};
use switchboard_engine::metrics::CommandKind;
use switchboard_engine::presence::ClientId;
use switchboard_engine::{ConnKey, Refused, ShardMsg, ShardSender};
use switchboard_protocol::envelope::CallAction;
use switchboard_protocol::ErrorCode;

use super::events::refuse;
use crate::cluster::Peers;

/// Call ids are `tag << TAG_SHIFT | sequence` (below 2⁵³, exact in JavaScript).
pub(super) const TAG_SHIFT: u32 = 33;
/// How long a forwarded command waits for its home's answer.
pub(super) const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// A letter about calls starts with this byte.
const KIND: u8 = b'C';

/// What call workers tell each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Letter {
    /// A command of a connection of `from` for a call held by the addressee.
    Command {
        from: String,
        fwd: u64,
        who: Member,
        cmd: RemoteCmd,
    },
    /// The home's answer to command `fwd`.
    Answer {
        fwd: u64,
        #[serde(default)]
        ok: Option<Value>,
        #[serde(default)]
        err: Option<(ErrorCode, String)>,
    },
    /// A call event for connections of the addressee.
    Push { clients: Vec<String>, push: Value },
    /// A connection of `from` that took part in calls held by the addressee is gone.
    Gone {
        from: String,
        who: Member,
        graceful: bool,
    },
}

/// A connection as letters name it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Member {
    user: String,
    client: String,
    #[serde(default)]
    device: Option<String>,
}

impl Member {
    fn of(c: &Caller) -> Member {
        Member {
            user: c.user.to_string(),
            client: c.client.to_string(),
            device: c.device.as_deref().map(String::from),
        }
    }

    fn caller(&self) -> Option<Caller> {
        Some(Caller {
            user: Arc::from(self.user.as_str()),
            client: control::parse_client_id(&self.client)?,
            device: self.device.as_deref().map(Box::from),
        })
    }
}

/// A call command as letters carry it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub(super) enum RemoteCmd {
    Accept {
        call: u64,
        channels: Vec<String>,
    },
    Reject {
        call: u64,
        reason: Option<String>,
    },
    End {
        call: u64,
        reason: Option<String>,
    },
    Signal {
        call: u64,
        to: Option<String>,
        data: Value,
        quality: bool,
    },
}

impl RemoteCmd {
    fn of(cmd: ControlCommand) -> Option<RemoteCmd> {
        Some(match cmd {
            ControlCommand::CallAction {
                call,
                action,
                reason,
                channels,
            } => match action {
                CallAction::Accept => RemoteCmd::Accept {
                    call,
                    channels: channels.iter().map(|c| c.to_string()).collect(),
                },
                CallAction::Reject => RemoteCmd::Reject { call, reason },
                CallAction::End => RemoteCmd::End { call, reason },
            },
            ControlCommand::CallSignal {
                call,
                to,
                data,
                quality,
            } => RemoteCmd::Signal {
                call,
                to: to.map(|t| t.to_string()),
                data,
                quality,
            },
            _ => return None,
        })
    }

    /// The command to carry out at the home (`None`: a `to` that does not parse).
    pub(super) fn command(self) -> Option<ControlCommand> {
        let action = |call, action, reason, channels| ControlCommand::CallAction {
            call,
            action,
            reason,
            channels,
        };
        Some(match self {
            RemoteCmd::Accept { call, channels } => action(
                call,
                CallAction::Accept,
                None,
                channels.iter().map(|c| Arc::from(c.as_str())).collect(),
            ),
            RemoteCmd::Reject { call, reason } => action(call, CallAction::Reject, reason, vec![]),
            RemoteCmd::End { call, reason } => action(call, CallAction::End, reason, vec![]),
            RemoteCmd::Signal {
                call,
                to,
                data,
                quality,
            } => ControlCommand::CallSignal {
                call,
                to: match to {
                    Some(t) => Some(control::parse_peer_id(&t)?),
                    None => None,
                },
                data,
                quality,
            },
        })
    }
}

/// The call a call command is about (`None` for `call`, which places one).
pub(super) fn call_of(cmd: &ControlCommand) -> Option<u64> {
    match cmd {
        ControlCommand::CallAction { call, .. } | ControlCommand::CallSignal { call, .. } => {
            Some(*call)
        }
        _ => None,
    }
}

/// The letter `l`, ready to send.
pub(super) fn encode(l: &Letter) -> Vec<u8> {
    let mut out = vec![KIND];
    serde_json::to_writer(&mut out, l).expect("serialising to memory cannot fail");
    out
}

/// A call letter; `None` if `b` is not one.
pub(super) fn decode(b: &[u8]) -> Option<Letter> {
    serde_json::from_slice(b.strip_prefix(&[KIND])?).ok()
}

/// A forwarded command waiting for its home's answer.
struct Waiting {
    shard: u16,
    conn: ConnKey,
    req_id: u32,
    kind: CommandKind,
    client: ClientId,
    call: u64,
    /// An end or reject: once answered, the connection is out of the call.
    leaves: bool,
    deadline: Instant,
}

/// This node's side of calls held elsewhere.
#[derive(Debug, Default)]
pub(super) struct Remote {
    pub(super) peers: Peers,
    waiting: HashMap<u64, Waiting>,
    /// Local connections in calls held elsewhere: their homes and calls.
    away: HashMap<ClientId, Vec<(Arc<str>, u64)>>,
    next_fwd: u64,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").field("call", &self.call).finish()
    }
}

impl Remote {
    /// This node's tag (0: alone, or Redis not reached yet).
    pub(super) fn tag(&self) -> u32 {
        self.peers.me().map_or(0, |(_, t)| t)
    }

    /// This node's id in the cluster.
    pub(super) fn me(&self) -> Option<&str> {
        self.peers.me().map(|(n, _)| n)
    }

    /// The home of call `id` when it is another node: `Some(Ok(node))`, or
    /// `Some(Err(..))` when that node is gone; `None` for a call held here.
    pub(super) fn home_of(&self, id: u64) -> Option<Result<Arc<str>, Refused>> {
        let tag = (id >> TAG_SHIFT) as u32;
        if tag == 0 || tag == self.tag() {
            return None;
        }
        Some(
            self.peers
                .node_by_tag(tag)
                .ok_or_else(super::events::not_found),
        )
    }

    /// Forward `cmd` of `caller` to `home`; `Err` to answer the connection now.
    pub(super) fn forward(
        &mut self,
        home: Arc<str>,
        (shard, conn, req_id): (u16, ConnKey, u32),
        caller: &Caller,
        cmd: ControlCommand,
        now: Instant,
    ) -> Result<(), Refused> {
        let kind = cmd.kind();
        let call = call_of(&cmd).unwrap_or(0);
        let leaves = matches!(
            &cmd,
            ControlCommand::CallAction {
                action: CallAction::End | CallAction::Reject,
                ..
            }
        );
        let Some(cmd) = RemoteCmd::of(cmd) else {
            return Err(refuse(ErrorCode::Internal, "not a call command"));
        };
        self.next_fwd += 1;
        let fwd = self.next_fwd;
        let letter = Letter::Command {
            from: self.me().unwrap_or_default().to_string(),
            fwd,
            who: Member::of(caller),
            cmd,
        };
        if !self.peers.send(home.clone(), encode(&letter)) {
            return Err(refuse(
                ErrorCode::Unavailable,
                "the node holding the call cannot be reached; retry",
            ));
        }
        self.waiting.insert(
            fwd,
            Waiting {
                shard,
                conn,
                req_id,
                kind,
                client: caller.client,
                call,
                leaves,
                deadline: now + ANSWER_WITHIN,
            },
        );
        let calls = self.away.entry(caller.client).or_default();
        if !calls.iter().any(|(_, c)| *c == call) {
            calls.push((home, call));
        }
        Ok(())
    }

    /// Answer the connection that forwarded command `fwd`.
    pub(super) fn answered(
        &mut self,
        shards: &ShardSender,
        fwd: u64,
        result: Result<Value, Refused>,
    ) {
        let Some(w) = self.waiting.remove(&fwd) else {
            return;
        };
        if w.leaves && result.is_ok()
            || result
                .as_ref()
                .is_err_and(|e| e.code == ErrorCode::NotFound)
        {
            self.left(w.client, w.call);
        }
        let result = result.map(switchboard_engine::mesh::ReplyBody::Value);
        crate::shards::reply(shards, w.shard, w.conn, w.req_id, w.kind, result);
    }

    /// The local connection `client` is out of call `call`.
    fn left(&mut self, client: ClientId, call: u64) {
        if let Some(calls) = self.away.get_mut(&client) {
            calls.retain(|(_, c)| *c != call);
            if calls.is_empty() {
                self.away.remove(&client);
            }
        }
    }

    /// A push from a home for local connections.
    pub(super) fn pushed(&mut self, shards: &ShardSender, clients: &[String], push: &Value) {
        let frames = control::frames(push);
        let over = matches!(
            push.get("event").and_then(Value::as_str),
            Some("ended" | "rejected" | "missed")
        );
        let call = push.get("call").and_then(Value::as_u64).unwrap_or(0);
        for c in clients.iter().filter_map(|c| control::parse_client_id(c)) {
            if over {
                self.left(c, call);
            }
            send(shards, PushTo::Client(c, frames.clone()));
        }
    }

    /// A local connection is gone: tell the homes of its calls.
    pub(super) fn gone(&mut self, caller: &Caller, graceful: bool) {
        let Some(calls) = self.away.remove(&caller.client) else {
            return;
        };
        let me = self.me().unwrap_or_default().to_string();
        let mut homes: Vec<Arc<str>> = calls.into_iter().map(|(h, _)| h).collect();
        homes.sort();
        homes.dedup();
        for home in homes {
            let letter = Letter::Gone {
                from: me.clone(),
                who: Member::of(caller),
                graceful,
            };
            self.peers.send(home, encode(&letter));
        }
    }

    /// The earliest moment a forwarded command gives up waiting.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.deadline).min()
    }

    /// Answer commands whose home did not, and end, for the connections here, the
    /// calls of homes that left the registry.
    pub(super) fn expire(&mut self, shards: &ShardSender, now: Instant) {
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(f, _)| *f)
            .collect();
        for fwd in late {
            let why = refuse(
                ErrorCode::Unavailable,
                "the node holding the call did not answer; retry",
            );
            self.answered(shards, fwd, Err(why));
        }
        if self.away.is_empty() {
            return;
        }
        let mut ended = Vec::new();
        for (client, calls) in &mut self.away {
            calls.retain(|(home, call)| {
                let live = self.peers.live(home);
                if !live {
                    ended.push((*client, *call));
                }
                live
            });
        }
        self.away.retain(|_, calls| !calls.is_empty());
        for (client, call) in ended {
            let push = serde_json::json!({
                "push": "call", "event": "ended", "call": call,
                "outcome": "failed", "reason": "the node holding the call went away",
            });
            send(shards, PushTo::Client(client, control::frames(&push)));
        }
    }
}

/// `who` of a letter from `from` as the home sees it: the caller and its peer id.
pub(super) fn member(from: &str, who: &Member) -> Option<(Caller, Arc<str>)> {
    Some((who.caller()?, Arc::from(from)))
}

/// Push to local connections.
pub(super) fn send(shards: &ShardSender, to: PushTo) {
    let push = Arc::new(Push { to, coalesce: None });
    let targets: Vec<u16> = match &push.to {
        PushTo::Client(c, _) => vec![c.shard],
        _ => (0..shards.shards() as u16).collect(),
    };
    for shard in targets {
        crate::shards::send_patiently(shards, shard, ShardMsg::Push(push.clone()), "a call push");
    }
}

/// Group `peers` by node: the local ones, and those of each other node.
pub(super) fn by_node(peers: Vec<PeerId>) -> (Vec<ClientId>, HashMap<Arc<str>, Vec<String>>) {
    let mut here = Vec::new();
    let mut there: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    for p in peers {
        match p.node {
            None => here.push(p.client),
            Some(n) => there.entry(n).or_default().push(p.client.to_string()),
        }
    }
    (here, there)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip_and_refuse_garbage() {
        let l = Letter::Command {
            from: "n2".into(),
            fwd: 9,
            who: Member {
                user: "bob".into(),
                client: "0.3.1".into(),
                device: None,
            },
            cmd: RemoteCmd::Signal {
                call: 1 << TAG_SHIFT | 4,
                to: Some("n1/1.2.3".into()),
                data: serde_json::json!({"sdp": "x"}),
                quality: false,
            },
        };
        let back = decode(&encode(&l)).unwrap();
        let Letter::Command { cmd, who, .. } = back else {
            panic!("{back:?}")
        };
        assert_eq!(who.caller().unwrap().client.to_string(), "0.3.1");
        let ControlCommand::CallSignal { to, call, .. } = cmd.command().unwrap() else {
            panic!()
        };
        assert_eq!(call >> TAG_SHIFT, 1);
        assert_eq!(to.unwrap().node.as_deref(), Some("n1"));
        assert!(decode(b"C{\"t\":\"nope\"}").is_none());
        assert!(decode(b"P:n1\n").is_none());
    }
}
