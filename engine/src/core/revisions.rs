//! Edits and deletions of publications (`edit`, `delete`, the server API's): new
//! publications of the channel that refer to the original's offset.
//!
//! The asking shard checks what the connection may do — the namespace allows edits, it
//! may publish there, whether a `moderate` rule makes it a moderator — and hands the
//! revision to the channel's owner. The owner checks the original: in the channel's
//! epoch, not itself a revision, not deleted, and the editor's own unless a moderator
//! asks. Memory answers for what the stream keeps; for an older original of a stored
//! namespace the store's reader looks (`ControlRequest::CheckRevision`) and sends the
//! revision back checked. Then it is sequenced like any publication: delivered,
//! stored, and applied to the original in what memory keeps (history views show the
//! latest text and when it changed, or that it was deleted).
//!
//! Owns those checks and the hand-offs. Does not own encoding (`envelope`), applying a
//! revision to kept publications (`streams`) or folding stored ones (the store).

use std::sync::Arc;

use crossbeam_channel::TrySendError;
use switchboard_protocol::{ErrorCode, Format, Payload, Revision};

use super::ShardCore;
use crate::access::{Action, Verdict};
use crate::auth::ControlRequest;
use crate::journal::Durability;
use crate::mesh::{PublishReply, Refused, SequenceReq, ShardMsg};
use crate::publications::RevisionReq;
use crate::streams::Entry;

/// `null` in a payload format.
fn null(format: Format) -> &'static [u8] {
    match format {
        Format::MsgPack => b"\xc0",
        Format::Json | Format::SocketIo => b"null",
    }
}

impl ShardCore {
    /// A connection's `edit` (with `data`) or `delete` (without) of the publication at
    /// `target` of `channel`: checked here, then handed to the owner.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn revise_from(
        &mut self,
        slot: u32,
        id: u32,
        channel: &str,
        target: u64,
        epoch: Option<u64>,
        data: Option<Payload<'_>>,
        meta: Option<Payload<'_>>,
    ) {
        if !self.streams.policy_of(channel).edits {
            return self.reply_err(
                slot,
                id,
                ErrorCode::PermissionDenied,
                "edits are off in this namespace",
            );
        }
        if let Err((code, why)) = self.check_channel(slot, channel, Action::Publish) {
            return self.reply_err(slot, id, code, why);
        }
        let conn = &self.conns[slot as usize];
        let Some(identity) = conn.identity.clone() else {
            return;
        };
        let moderator = self.access.check(&identity, channel, Action::Moderate) == Verdict::Allowed;
        let format = match conn.format {
            Format::SocketIo => Format::Json,
            f => f,
        };
        let delete = data.is_none();
        let data = data.unwrap_or(Payload {
            format,
            raw: null(format),
        });
        let reply = PublishReply::Client {
            shard: self.id,
            conn: self.key(slot),
            req_id: id,
            quiet: false,
        };
        let mut req = SequenceReq::new(channel, data, meta, None, None, reply, self.clock.mono)
            .by(Some(identity.user.clone()));
        req.revision = Some(RevisionReq {
            revises: Revision { target, delete },
            epoch,
            moderator,
            checked: false,
        });
        let owner = self.mesh.home(channel, self.id);
        if owner == self.id {
            self.check_revision(req);
        } else {
            self.send_to(owner, ShardMsg::Sequence(Box::new(req)));
        }
    }

    /// On the owner: check a revision's original, then sequence it (or ask the store
    /// to check an original memory no longer keeps).
    pub(super) fn check_revision(&mut self, req: SequenceReq) {
        let Some(r) = req.revision else {
            return self.sequence_request(req);
        };
        let top = self.streams.touch(&req.channel, self.tick);
        let target = r.revises.target;
        let refuse = |code, message: String| Refused { code, message };
        let refusal = if !self.streams.policy_of(&req.channel).edits {
            Some(refuse(
                ErrorCode::PermissionDenied,
                "edits are off in this namespace".into(),
            ))
        } else if r.epoch.is_some_and(|e| e != top.epoch) {
            Some(refuse(
                ErrorCode::BadRequest,
                format!(
                    "the position is from another epoch; the channel's is {}",
                    top.epoch_hex().as_str()
                ),
            ))
        } else if target > top.offset {
            Some(refuse(
                ErrorCode::NotFound,
                format!(
                    "no publication at offset {target} (the latest is {})",
                    top.offset
                ),
            ))
        } else if r.checked {
            None
        } else {
            match self.streams.kept(&req.channel, target) {
                Some(original) => original_refusal(original, &req, r),
                None if r.moderator => None,
                None if self.streams.policy_of(&req.channel).durability != Durability::None => {
                    return self.ask_store_to_check(req, top.epoch);
                }
                None => Some(refuse(
                    ErrorCode::NotFound,
                    format!("offset {target} is older than what this channel keeps"),
                )),
            }
        };
        match refusal {
            Some(refused) => self.answer_publish(req.reply, Err(refused)),
            None => self.sequence_request(req),
        }
    }

    /// A revision being kept: apply it to its original in memory (stored now, so the
    /// time it changed is this moment).
    pub(super) fn apply_revision(&mut self, channel: &str, entry: &Entry) {
        if let Some(rev) = entry.revises {
            let meta = entry.meta.as_ref();
            let at_ms = self.clock.unix_ms;
            self.streams
                .apply_revision(channel, rev, entry.format, &entry.data, meta, at_ms);
        }
    }

    /// Hand a revision whose original only the store holds to the store's reader.
    fn ask_store_to_check(&mut self, mut req: SequenceReq, epoch: u64) {
        if let Some(r) = req.revision.as_mut() {
            r.epoch = Some(epoch);
        }
        match self
            .control
            .try_send(ControlRequest::CheckRevision(Box::new(req)))
        {
            Ok(()) => {}
            Err(TrySendError::Full(ControlRequest::CheckRevision(req)))
            | Err(TrySendError::Disconnected(ControlRequest::CheckRevision(req))) => {
                let refused = Refused {
                    code: ErrorCode::Overloaded,
                    message: "the store's reader is busy, retry".into(),
                };
                self.answer_publish(req.reply, Err(refused));
            }
            Err(_) => {}
        }
    }
}

/// Why a revision of the kept `original` is refused, if it is.
pub(crate) fn original_refusal(
    original: &Entry,
    req: &SequenceReq,
    r: RevisionReq,
) -> Option<Refused> {
    let target = r.revises.target;
    let refuse = |code, message: String| Some(Refused { code, message });
    if original.revises.is_some() {
        return refuse(
            ErrorCode::BadRequest,
            format!("offset {target} is itself an edit or deletion"),
        );
    }
    if original.revised.is_some_and(|x| x.deleted) {
        return refuse(ErrorCode::Conflict, format!("offset {target} is deleted"));
    }
    let own = match (&original.author, &req.author) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    };
    if !own && !r.moderator && req.author.is_some() {
        return refuse(
            ErrorCode::PermissionDenied,
            "only its author or a moderator may change this publication".into(),
        );
    }
    None
}
