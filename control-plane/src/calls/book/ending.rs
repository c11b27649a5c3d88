//! How calls end: hang-ups, departures, ringing deadlines and grace periods.
//!
//! Owns ending a call — telling its participants, logging the end, the missed-call
//! notification — and losing participants whose connection or node went away. Does
//! not own starting, answering or relaying within a call (`super`).

use std::sync::Arc;
use std::time::Duration;

use crate::sql::{args, Exec};
use serde_json::Value;
use switchboard_engine::control::{Caller, PeerId, PushTo};
use switchboard_engine::Refused;
use switchboard_protocol::ErrorCode;

use super::{clients_except, move_to, peer, CallBook};
use crate::calls::events::*;
use crate::calls::state::*;
use crate::notify::{NewNotification, Recipients};

impl CallBook {
    pub(super) fn end(
        &mut self,
        caller: &Caller,
        node: &Option<Arc<str>>,
        id: u64,
        reason: Option<&str>,
    ) -> Result<Value, Refused> {
        let call = self.calls.get(&id).ok_or_else(not_found)?;
        let Some(i) = call.participant(&peer(caller, node)) else {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                "not in this call (a callee that has not answered uses call_reject)",
            ));
        };
        if call.state == State::Ringing {
            self.stop_ringing(id, State::Ended, "cancelled", reason);
            return Ok(serde_json::json!({ "call": id, "state": State::Ended }));
        }
        self.leave(id, i, State::Ended, reason);
        let duration = self.calls.get(&id).map_or_else(
            || crate::calls::log::logged_duration(&mut self.conn, id),
            |c| c.answered_ms.map(|a| self.now.unix_ms.saturating_sub(a)),
        );
        let state = self.calls.get(&id).map_or(State::Ended, |c| c.state);
        Ok(serde_json::json!({ "call": id, "state": state, "duration_ms": duration }))
    }

    /// Participant `i` leaves: a user call ends (with `state`); a room call goes on
    /// until its last participant leaves.
    pub(super) fn leave(&mut self, id: u64, i: usize, state: State, reason: Option<&str>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let outcome = if state == State::Failed {
            "failed"
        } else {
            "completed"
        };
        if call.room.is_some() && call.participants.len() > 1 {
            let p = call.participants.remove(i);
            let mut e = event("left", id);
            e.from = Some(Who::of(&p));
            e.reason = reason;
            let said = Said::of(&e);
            let others = clients_except(call, &p.client);
            self.push_clients(others, &said);
            return;
        }
        let duration = call.answered_ms.map(|a| self.now.unix_ms.saturating_sub(a));
        let p = call.participants[i].clone();
        let mut e = event("ended", id);
        e.by = Some(Who::of(&p));
        e.outcome = Some(outcome);
        e.reason = reason;
        e.duration_ms = duration;
        let said = Said::of(&e);
        self.finish(id, state, outcome, reason, said, false);
    }

    /// End a call that is still ringing (the caller cancelled or was lost): the
    /// caller's connection and everyone ringing get `ended` with the outcome.
    pub(super) fn stop_ringing(
        &mut self,
        id: u64,
        state: State,
        outcome: &'static str,
        reason: Option<&str>,
    ) {
        let mut e = event("ended", id);
        e.outcome = Some(outcome);
        e.reason = reason;
        let said = Said::of(&e);
        self.finish(id, state, outcome, reason, said, true);
    }

    /// End call `id`: tell its participants (and, while it rang, the callee's devices
    /// or the room) with `said`, and log it.
    pub(super) fn finish(
        &mut self,
        id: u64,
        state: State,
        outcome: &str,
        reason: Option<&str>,
        said: Said,
        ringing: bool,
    ) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        move_to(&mut call, state);
        let clients: Vec<PeerId> = call.participants.iter().map(|p| p.client.clone()).collect();
        self.push_clients(clients, &said);
        let frames = said.frames;
        if ringing {
            match (&call.callee, &call.room) {
                (Some(u), _) => self.push(PushTo::Users(vec![(Arc::from(u.as_str()), frames)])),
                (None, Some(r)) => self.push(PushTo::Channel {
                    channel: Arc::from(r.as_str()),
                    except: call
                        .participants
                        .first()
                        .filter(|p| p.client.node.is_none())
                        .map(|p| p.client.client),
                    frames,
                }),
                (None, None) => {}
            }
        }
        let users: Vec<&str> = call.joined.iter().map(|u| &**u).collect();
        let participants = serde_json::to_string(&users).unwrap_or_default();
        if let Err(e) = self.conn.execute(
            "UPDATE calls SET ended_ms = ?2, outcome = ?3, reason = ?4, participants = ?5
             WHERE id = ?1",
            args![id, self.now.unix_ms, outcome, reason, participants],
        ) {
            tracing::warn!(call = id, "cannot log the end of a call: {e}");
        }
        if state == State::Missed {
            if let Some(callee) = &call.callee {
                self.notifier.create_later(NewNotification {
                    to: Recipients::Users(vec![callee.clone()]),
                    kind: "missed_call".into(),
                    data: serde_json::json!({
                        "call": id,
                        "from": &*call.caller,
                        "media": call.media,
                        "at": call.created_ms,
                    }),
                    key: None,
                });
            }
        }
    }

    /// A connection that sent call commands has gone.
    pub(super) fn gone(&mut self, caller: &Caller, node: &Option<Arc<str>>, graceful: bool) {
        let me = peer(caller, node);
        let ids: Vec<u64> = self
            .calls
            .values()
            .filter(|c| c.participant(&me).is_some())
            .map(|c| c.id)
            .collect();
        for id in ids {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            let Some(i) = call.participant(&me) else {
                continue;
            };
            if graceful {
                if call.state == State::Ringing && i == 0 {
                    self.stop_ringing(id, State::Ended, "cancelled", Some("caller left"));
                } else {
                    self.leave(id, i, State::Ended, Some("left"));
                }
                continue;
            }
            call.participants[i].lost = Some(self.now.mono);
            let mut e = event("participant_lost", id);
            e.from = Some(Who::of(&call.participants[i]));
            let said = Said::of(&e);
            let others = clients_except(call, &me);
            self.push_clients(others, &said);
        }
    }

    /// Ringing calls past their timeout are missed; participants lost for longer than
    /// the grace period leave (a user call fails).
    pub(in crate::calls) fn expire(&mut self) {
        let now = self.now.mono;
        self.remote.expire(&self.shards, now);
        self.lose_gone_nodes();
        let grace = Duration::from_millis(self.cfg.grace_ms);
        let missed: Vec<u64> = self
            .calls
            .values()
            .filter(|c| c.state == State::Ringing && c.ring_deadline <= now)
            .map(|c| c.id)
            .collect();
        for id in missed {
            let said = Said::of(&event("missed", id));
            self.finish(id, State::Missed, "missed", None, said, true);
        }
        let lost: Vec<(u64, PeerId)> = self
            .calls
            .values()
            .flat_map(|c| {
                c.participants
                    .iter()
                    .filter(|p| p.lost.is_some_and(|l| l + grace <= now))
                    .map(|p| (c.id, p.client.clone()))
            })
            .collect();
        for (id, client) in lost {
            let Some(i) = self.calls.get(&id).and_then(|c| c.participant(&client)) else {
                continue;
            };
            let ringing = self
                .calls
                .get(&id)
                .is_some_and(|c| c.state == State::Ringing);
            if ringing {
                self.stop_ringing(id, State::Failed, "failed", Some("caller lost"));
            } else {
                self.leave(id, i, State::Failed, Some("participant lost"));
            }
        }
    }

    /// Participants on nodes that left the registry are lost (the grace period runs).
    fn lose_gone_nodes(&mut self) {
        let gone: Vec<(u64, PeerId, Arc<str>)> = self
            .calls
            .values()
            .flat_map(|c| {
                c.participants
                    .iter()
                    .filter(|p| p.lost.is_none())
                    .filter(|p| {
                        p.client
                            .node
                            .as_deref()
                            .is_some_and(|n| !self.remote.peers.live(n))
                    })
                    .map(|p| (c.id, p.client.clone(), p.user.clone()))
            })
            .collect();
        for (_, peer, user) in gone {
            let caller = Caller {
                user,
                client: peer.client,
                device: None,
            };
            self.gone(&caller, &peer.node, false);
        }
    }
}
