//! Actions both APIs offer: disconnecting connections and revoking a user's tokens.
//!
//! Owns answering them for the admin API and the server API's user routes alike: done
//! here (`crate::admin_ops`), then told to the other nodes of a cluster (a user's or
//! every connection; a single connection lives on one node). Does not own authorising
//! them (each API checks its own credentials).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::{error, overloaded};
use super::state::HttpState;
use crate::admin_ops::{self, ActionError};
use crate::cluster::ClusterAction;
use axum::http::StatusCode;
use axum::response::Response;
use switchboard_engine::control::Target;

fn answer(e: ActionError) -> Response {
    match e {
        ActionError::Overloaded => overloaded(),
        ActionError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e),
    }
}

/// Close the target's connections (4009) and record it as `actor`'s action; how many
/// closed here. Shared by the admin API and the server API.
pub async fn disconnect_target(
    s: &HttpState,
    actor: &str,
    target: Target,
    reason: String,
    reconnect: bool,
    spread_ms: u32,
) -> Result<usize, Response> {
    // A user's or every connection: on every node; one connection lives on one.
    let everywhere = match &target {
        Target::User(u) => Some(Some(u.to_string())),
        Target::All => Some(None),
        Target::Client(_) => None,
    };
    if let (Some(c), Some(user)) = (&s.cluster, everywhere) {
        let action = ClusterAction::Disconnect {
            all: user.is_none(),
            user,
            reason: reason.clone(),
            reconnect,
            spread_ms,
        };
        c.broadcast(actor, action);
    }
    admin_ops::disconnect(
        &s.engine, &s.audit, actor, target, &reason, reconnect, spread_ms,
    )
    .await
    .map_err(answer)
}

/// Revoke `user`'s tokens issued before now and close its connections (4011), here
/// and on every other node; the revocation time and how many connections closed here.
/// Shared by the admin API and the server API.
pub async fn revoke_user(s: &HttpState, actor: &str, user: &str) -> Result<(u64, usize), Response> {
    let at_ms = crate::clock::now_ms();
    let n = admin_ops::revoke(&s.engine, &s.audit, &s.revocations, actor, user, at_ms)
        .await
        .map_err(answer)?;
    if let Some(c) = &s.cluster {
        c.broadcast(
            actor,
            ClusterAction::Revoke {
                user: user.to_string(),
                at_ms,
            },
        );
    }
    Ok((at_ms, n))
}
