//! Every active call, and what commands, departures and deadlines do to it.
//!
//! Owns the calls in memory, their moves along [`super::allowed`], ringing deadlines
//! and grace periods, and writing the call log. Reads no clock: the worker thread
//! passes the moment in ([`CallBook::at`]), so tests run it on a virtual clock. Does
//! not own the thread (`super`) or the push shapes (`super::events`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sql::{args, Db, Exec, Kind};
use serde_json::Value;
use switchboard_engine::control::{CallTarget, Caller, ControlCommand, PeerId, PushTo};
use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::{Refused, ShardSender};
use switchboard_protocol::envelope::CallAction;
use switchboard_protocol::ErrorCode;

use super::events::*;
use super::remote::{self, Letter, Remote};
use super::state::*;
use crate::config::CallsConfig;
use crate::notify::Notifier;
use switchboard_engine::Now;

mod ending;

#[derive(Debug, Clone)]
pub(super) struct Participant {
    user: Arc<str>,
    /// Its connection (on another node: that node's id with it).
    client: PeerId,
    device: Option<Box<str>>,
    /// When its connection dropped.
    lost: Option<Instant>,
    /// It has sent signaling data.
    signaled: bool,
    quality: Option<Value>,
}

impl Participant {
    fn of(c: &Caller, node: &Option<Arc<str>>) -> Participant {
        Participant {
            user: c.user.clone(),
            client: peer(c, node),
            device: c.device.clone(),
            lost: None,
            signaled: false,
            quality: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Call {
    id: u64,
    state: State,
    caller: Arc<str>,
    callee: Option<String>,
    room: Option<String>,
    media: Option<String>,
    created_ms: u64,
    answered_ms: Option<u64>,
    ring_deadline: Instant,
    /// The caller's connection first, then whoever accepted.
    participants: Vec<Participant>,
    /// Every user who took part (for the log).
    joined: Vec<Arc<str>>,
}

impl Call {
    fn participant(&self, client: &PeerId) -> Option<usize> {
        self.participants.iter().position(|p| p.client == *client)
    }

    /// Whether `user` placed this call or is in it (being rung does not count, so
    /// others ringing a user cannot use up that user's calls).
    fn involves(&self, user: &str) -> bool {
        &*self.caller == user || self.participants.iter().any(|p| &*p.user == user)
    }
}

/// Every active call of the process, on the call worker's thread.
pub(super) struct CallBook {
    /// The call log (`calls`, `call_quality` tables).
    conn: Db,
    /// Where pushes and replies go.
    shards: ShardSender,
    cfg: CallsConfig,
    /// Missed-call notifications.
    notifier: Notifier,
    calls: BTreeMap<u64, Call>,
    /// The moment of the work being handled (set by [`CallBook::at`]).
    now: Now,
    /// Users connected to other nodes (rings and signaling addressed to a user).
    pub(super) pushes: crate::cluster::RemotePushes,
    /// Calls held by other nodes, and letters from them.
    pub(super) remote: Remote,
    /// The next call's sequence number (the low bits of its id).
    next_seq: u64,
    /// This node's id, recorded with its calls in a store the nodes share (PostgreSQL).
    pub(super) node: String,
}

impl CallBook {
    /// A book with no calls, logging to `conn`.
    pub(super) fn new(
        mut conn: Db,
        shards: ShardSender,
        cfg: CallsConfig,
        notifier: Notifier,
        now: Now,
    ) -> CallBook {
        // Sequence numbers go on from the highest this store has used.
        let next_seq = conn
            .query_row(
                "SELECT COALESCE(MAX(id & ?1), 0) FROM calls",
                args![((1i64 << remote::TAG_SHIFT) - 1)],
                |r| r.get::<i64>(0),
            )
            .unwrap_or(0) as u64;
        CallBook {
            conn,
            shards,
            cfg,
            notifier,
            calls: BTreeMap::new(),
            now,
            pushes: Default::default(),
            remote: Default::default(),
            next_seq,
            node: String::new(),
        }
    }

    /// The moment the next work happens at (the thread's clock, or a test's).
    pub(super) fn at(&mut self, now: Now) {
        self.now = now;
    }

    /// The next ringing deadline or grace period end, if any call has one.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let grace = Duration::from_millis(self.cfg.grace_ms);
        self.calls
            .values()
            .flat_map(|c| {
                let ring = (c.state == State::Ringing).then_some(c.ring_deadline);
                let lost = c.participants.iter().filter_map(move |p| p.lost);
                ring.into_iter().chain(lost.map(move |l| l + grace))
            })
            .chain(self.remote.next_deadline())
            .min()
    }

    /// Do one piece of work.
    pub(super) fn handle(&mut self, w: Work) {
        match w {
            Work::Shard {
                shard,
                conn,
                req_id,
                caller,
                cmd,
            } => {
                let command = cmd.kind();
                let home = remote::call_of(&cmd).and_then(|id| self.remote.home_of(id));
                let result = match home {
                    None => self.command(&caller, &None, cmd).map(ReplyBody::Value),
                    Some(home) => {
                        let at = (shard, conn, req_id);
                        match home
                            .and_then(|h| self.remote.forward(h, at, &caller, cmd, self.now.mono))
                        {
                            Ok(()) => return,
                            Err(e) => Err(e),
                        }
                    }
                };
                crate::shards::reply(&self.shards, shard, conn, req_id, command, result);
            }
            Work::Gone(caller, graceful) => {
                self.remote.gone(&caller, graceful);
                self.gone(&caller, &None, graceful)
            }
            Work::Letter(letter) => self.letter(&letter),
            Work::Active(reply) => {
                let _ = reply.send(self.calls.values().map(view).collect());
            }
            Work::Log(user, limit, reply) => {
                let _ = reply.send(
                    super::log::read(&mut self.conn, user.as_deref(), limit)
                        .map_err(|e| e.to_string()),
                );
            }
        }
    }

    /// A letter from another node's call worker.
    fn letter(&mut self, b: &[u8]) {
        let Some(letter) = remote::decode(b) else {
            return tracing::warn!("a call letter that does not decode, ignored");
        };
        match letter {
            Letter::Command {
                from,
                fwd,
                who,
                cmd,
            } => {
                let result = match (remote::member(&from, &who), cmd.command()) {
                    (Some((caller, node)), Some(cmd)) => self.command(&caller, &Some(node), cmd),
                    _ => Err(refuse(
                        ErrorCode::BadRequest,
                        "a malformed forwarded call command",
                    )),
                };
                let (ok, err) = match result {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some((e.code, e.message))),
                };
                let answer = remote::encode(&Letter::Answer { fwd, ok, err });
                self.remote.peers.send(Arc::from(from), answer);
            }
            Letter::Answer { fwd, ok, err } => {
                let result = match err {
                    Some((code, message)) => Err(Refused { code, message }),
                    None => Ok(ok.unwrap_or(Value::Null)),
                };
                self.remote.answered(&self.shards, fwd, result);
            }
            Letter::Push { clients, push } => self.remote.pushed(&self.shards, &clients, &push),
            Letter::Gone {
                from,
                who,
                graceful,
            } => {
                if let Some((caller, node)) = remote::member(&from, &who) {
                    self.gone(&caller, &Some(node), graceful);
                }
            }
        }
    }

    /// Carry out `cmd` of `caller`, a connection of this node (`node` `None`) or of
    /// another.
    fn command(
        &mut self,
        caller: &Caller,
        node: &Option<Arc<str>>,
        cmd: ControlCommand,
    ) -> Result<Value, Refused> {
        match cmd {
            ControlCommand::Call { to, media, data } => self.start(caller, to, media, data),
            ControlCommand::CallAction {
                call,
                action,
                reason,
                channels,
            } => match action {
                CallAction::Accept => self.accept(caller, node, call, &channels),
                CallAction::Reject => self.reject(caller, node, call, reason.as_deref()),
                CallAction::End => self.end(caller, node, call, reason.as_deref()),
            },
            ControlCommand::CallSignal {
                call,
                to,
                data,
                quality,
            } => self.signal(caller, node, call, to, &data, quality),
            _ => Err(refuse(ErrorCode::Internal, "not a call command")),
        }
    }

    fn start(
        &mut self,
        caller: &Caller,
        to: CallTarget,
        media: Option<String>,
        data: Option<Value>,
    ) -> Result<Value, Refused> {
        let mine = self
            .calls
            .values()
            .filter(|c| c.involves(&caller.user))
            .count();
        if mine >= self.cfg.max_per_user as usize {
            return Err(refuse(
                ErrorCode::LimitExceeded,
                "too many calls at once (calls.max_per_user)",
            ));
        }
        let (callee, room) = match to {
            CallTarget::User(u) => (Some(u), None),
            CallTarget::Room(r) => (None, Some(r)),
        };
        // Glare: the callee is ringing us already; answer that call instead.
        if let Some(callee) = &callee {
            let crossing = self.calls.values().find(|c| {
                c.state == State::Ringing
                    && *c.caller == **callee
                    && c.callee.as_deref() == Some(&*caller.user)
            });
            if let Some(id) = crossing.map(|c| c.id) {
                let mut answer = self.accept(caller, &None, id, &[])?;
                answer["glare"] = Value::Bool(true);
                return Ok(answer);
            }
        }
        let now = self.now.unix_ms;
        // The id names this node to the others (its tag in the high bits).
        let seq = (self.next_seq + 1) & ((1 << remote::TAG_SHIFT) - 1);
        let id = (self.remote.tag() as u64) << remote::TAG_SHIFT | seq;
        // A store the nodes share records whose call it is (SQLite's file is one node's).
        let (user, node) = (&*caller.user, &self.node);
        let (to, in_room, with) = (callee.as_deref(), room.as_deref(), media.as_deref());
        let logged = match self.conn.kind() {
            Kind::Sqlite => self.conn.execute(
                "INSERT INTO calls (id, caller, callee, room, media, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args![id, user, to, in_room, with, now],
            ),
            Kind::Postgres => self.conn.execute(
                "INSERT INTO calls (id, caller, callee, room, media, created_ms, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![id, user, to, in_room, with, now, node],
            ),
        };
        logged.map_err(|e| refuse(ErrorCode::Unavailable, &format!("call log: {e}")))?;
        self.next_seq = seq;
        let mut call = Call {
            id,
            state: State::Initiating,
            caller: caller.user.clone(),
            callee,
            room,
            media,
            created_ms: now,
            answered_ms: None,
            ring_deadline: self.now.mono + Duration::from_millis(self.cfg.ring_timeout_ms),
            participants: vec![Participant::of(caller, &None)],
            joined: vec![caller.user.clone()],
        };
        move_to(&mut call, State::Ringing);
        let mut ring = event("ring", id);
        ring.from = Some(Who::of(&call.participants[0]));
        ring.room = call.room.as_deref();
        ring.media = call.media.as_deref();
        ring.data = data.as_ref();
        let frames = Said::of(&ring).frames;
        let to = match (&call.callee, &call.room) {
            (Some(u), _) => PushTo::Users(vec![(Arc::from(u.as_str()), frames)]),
            (None, Some(r)) => PushTo::Channel {
                channel: Arc::from(r.as_str()),
                except: Some(caller.client),
                frames,
            },
            (None, None) => unreachable!("a call has a callee or a room"),
        };
        self.push(to);
        self.calls.insert(id, call);
        Ok(serde_json::json!({ "call": id, "state": State::Ringing }))
    }

    fn accept(
        &mut self,
        caller: &Caller,
        node: &Option<Arc<str>>,
        id: u64,
        channels: &[Arc<str>],
    ) -> Result<Value, Refused> {
        let me = peer(caller, node);
        let call = self.calls.get_mut(&id).ok_or_else(not_found)?;
        // Coming back within the grace period, from any device of a lost participant.
        if let Some(p) = call
            .participants
            .iter_mut()
            .find(|p| p.lost.is_some() && p.user == caller.user)
        {
            let old = p.client.clone();
            *p = Participant {
                signaled: p.signaled,
                ..Participant::of(caller, node)
            };
            let mut back = event("rejoined", id);
            back.from = Some(Who::of(p));
            let said = Said::of(&back);
            let others = clients_except(call, &me);
            tracing::debug!(call = id, %old, new = %me, "call participant came back");
            let answer = answer(call);
            self.push_clients(others, &said);
            return Ok(answer);
        }
        match (&call.callee, &call.room) {
            (Some(callee), _) => {
                if **callee != *caller.user {
                    return Err(refuse(
                        ErrorCode::PermissionDenied,
                        "this call is not for you",
                    ));
                }
                if call.state != State::Ringing {
                    let why = if call.state.is_final() {
                        "the call is over"
                    } else {
                        "the call was answered on another device"
                    };
                    return Err(refuse(ErrorCode::Conflict, why));
                }
            }
            (None, Some(room)) => {
                if call.state.is_final() {
                    return Err(refuse(ErrorCode::Conflict, "the call is over"));
                }
                if !channels.iter().any(|c| **c == **room) {
                    return Err(refuse(
                        ErrorCode::PermissionDenied,
                        "joining a room call needs a subscription to the room",
                    ));
                }
                if call.participant(&me).is_some() {
                    return Err(refuse(ErrorCode::Conflict, "already in this call"));
                }
            }
            (None, None) => unreachable!("a call has a callee or a room"),
        }
        let first = call.state == State::Ringing;
        if first {
            move_to(call, State::Accepted);
            call.answered_ms = Some(self.now.unix_ms);
        }
        call.participants.push(Participant::of(caller, node));
        if !call.joined.contains(&caller.user) {
            call.joined.push(caller.user.clone());
        }
        let joined = call.participants.last().expect("just pushed");
        let mut accepted = event(if first { "accepted" } else { "joined" }, id);
        accepted.by = Some(Who::of(joined));
        let said = Said::of(&accepted);
        let others = clients_except(call, &me);
        let callee = call.callee.clone();
        let answer = answer(call);
        if first {
            let _ = self.conn.execute(
                "UPDATE calls SET answered_ms = ?2 WHERE id = ?1",
                args![id, self.now.unix_ms],
            );
        }
        self.push_clients(others, &said);
        // The callee's other devices stop ringing: they see who answered.
        if let (true, Some(callee)) = (first, callee) {
            self.push(PushTo::Users(vec![(
                Arc::from(callee.as_str()),
                said.frames,
            )]));
        }
        Ok(answer)
    }

    fn reject(
        &mut self,
        caller: &Caller,
        node: &Option<Arc<str>>,
        id: u64,
        reason: Option<&str>,
    ) -> Result<Value, Refused> {
        let call = self.calls.get_mut(&id).ok_or_else(not_found)?;
        if call.room.is_some() {
            // Declining a room call only stops this user's ringing.
            return Ok(serde_json::json!({}));
        }
        if call.callee.as_deref() != Some(&*caller.user) {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                "this call is not for you",
            ));
        }
        if call.state != State::Ringing {
            return Err(refuse(ErrorCode::Conflict, "the call is not ringing"));
        }
        let mut e = event("rejected", id);
        e.reason = reason;
        let me = peer(caller, node);
        e.by = Some(Who {
            user: &caller.user,
            client: &me,
        });
        let said = Said::of(&e);
        self.finish(id, State::Rejected, "rejected", reason, said, true);
        Ok(serde_json::json!({}))
    }

    fn signal(
        &mut self,
        caller: &Caller,
        node: &Option<Arc<str>>,
        id: u64,
        to: Option<PeerId>,
        data: &Value,
        quality: bool,
    ) -> Result<Value, Refused> {
        let me = peer(caller, node);
        // `to` as this node names its peers: its own id names nothing.
        let to = to.map(|mut t| {
            if t.node
                .as_deref()
                .is_some_and(|n| Some(n) == self.remote.me())
            {
                t.node = None;
            }
            t
        });
        let call = self.calls.get_mut(&id).ok_or_else(not_found)?;
        let Some(i) = call.participant(&me) else {
            return Err(refuse(ErrorCode::PermissionDenied, "not in this call"));
        };
        if quality {
            call.participants[i].quality = Some(data.clone());
            let text = data.to_string();
            if let Err(e) = self.conn.execute(
                "INSERT INTO call_quality (call, \"user\", at_ms, data) VALUES (?1, ?2, ?3, ?4)",
                args![id, &*caller.user, self.now.unix_ms, text],
            ) {
                return Err(refuse(ErrorCode::Unavailable, &format!("call log: {e}")));
            }
            return Ok(serde_json::json!({}));
        }
        if !matches!(call.state, State::Accepted | State::InProgress) {
            return Err(refuse(
                ErrorCode::Conflict,
                "signaling data is relayed once the call is answered",
            ));
        }
        let targets: Vec<PeerId> = match to {
            Some(t) if t == me => {
                return Err(refuse(ErrorCode::BadRequest, "'to' is the sender itself"))
            }
            Some(t) if call.participant(&t).is_some() => vec![t],
            Some(_) => return Err(refuse(ErrorCode::NotFound, "'to' is not in this call")),
            None => clients_except(call, &me),
        };
        call.participants[i].signaled = true;
        if call.state == State::Accepted
            && call.participants.iter().filter(|p| p.signaled).count() >= 2
        {
            move_to(call, State::InProgress);
        }
        let mut e = event("signal", id);
        e.from = Some(Who::of(&call.participants[i]));
        e.data = Some(data);
        let said = Said::of(&e);
        let state = call.state;
        self.push_clients(targets, &said);
        Ok(serde_json::json!({ "state": state }))
    }

    /// Push to this node's connections, and to users and channels on other nodes.
    fn push(&self, to: PushTo) {
        self.pushes.send(&to, &None);
        remote::send(&self.shards, to);
    }

    /// Push `said` to call participants here and on other nodes.
    fn push_clients(&self, clients: Vec<PeerId>, said: &Said) {
        let (here, there) = remote::by_node(clients);
        for c in here {
            remote::send(&self.shards, PushTo::Client(c, said.frames.clone()));
        }
        for (node, clients) in there {
            let push = said.value.clone();
            let letter = remote::encode(&Letter::Push { clients, push });
            self.remote.peers.send(node, letter);
        }
    }
}

pub(super) fn move_to(call: &mut Call, to: State) {
    debug_assert!(allowed(call.state, to), "{:?} -> {to:?}", call.state);
    if allowed(call.state, to) {
        call.state = to;
    } else {
        tracing::error!(call = call.id, from = ?call.state, ?to, "call transition refused");
    }
}

pub(super) fn clients_except(call: &Call, me: &PeerId) -> Vec<PeerId> {
    call.participants
        .iter()
        .filter(|p| p.client != *me && p.lost.is_none())
        .map(|p| p.client.clone())
        .collect()
}

/// `caller` as the call names it: on this node (`node` `None`) or another.
fn peer(caller: &Caller, node: &Option<Arc<str>>) -> PeerId {
    PeerId {
        node: node.clone(),
        client: caller.client,
    }
}

/// The reply to `call_accept`: the call and who is in it.
pub(super) fn answer(call: &Call) -> Value {
    let peers: Vec<Who<'_>> = call.participants.iter().map(Who::of).collect();
    serde_json::json!({ "call": call.id, "state": call.state, "participants": peers })
}

pub(super) fn view(c: &Call) -> CallView {
    CallView {
        id: c.id,
        state: c.state,
        caller: c.caller.to_string(),
        callee: c.callee.clone(),
        room: c.room.clone(),
        media: c.media.clone(),
        created: c.created_ms,
        answered: c.answered_ms,
        participants: c
            .participants
            .iter()
            .map(|p| ParticipantView {
                user: p.user.to_string(),
                client: p.client.to_string(),
                device: p.device.as_deref().map(String::from),
                lost: p.lost.is_some(),
                quality: p.quality.clone(),
            })
            .collect(),
    }
}

/// Who a participant is, in pushes.
impl<'a> Who<'a> {
    pub(super) fn of(p: &'a Participant) -> Who<'a> {
        Who {
            user: &p.user,
            client: &p.client,
        }
    }
}
